//! An SMTP client (Copas's `copas.smtp`, LuaSocket's `socket.smtp`): [`send`] a message to
//! several recipients, and a [`Message`] builder for headers, a text body and attachments.
//!
//! Built only on the public [`Socket`] API, so it works inside a coroutine (only that
//! coroutine waits; many sends can be in flight at once) and from plain `main` (blocking).
//!
//! [`send`] greets with `EHLO` (falling back to `HELO` when the server does not know it),
//! upgrades to TLS with `STARTTLS` when the server offers it (or fails when it is
//! [required](StartTls::Required) and not offered), authenticates with `AUTH PLAIN` or
//! `AUTH LOGIN` when given [credentials](Mail::auth), then sends `MAIL FROM`, one
//! `RCPT TO` per recipient and `DATA`, with line endings normalized to CRLF and lines that
//! start with `.` dot-stuffed (RFC 5321 §4.5.2), and `BODY=8BITMIME` announced for a
//! message that is not ASCII when the server offers it. Addresses that are not ASCII
//! (`zoë@example.org`) go with `SMTPUTF8` (RFC 6531) to a server that offers it, and are
//! refused, before `MAIL FROM`, by one that does not. Every reply code is checked: a reply that
//! is not the expected one ends the session (with `QUIT`) and comes back as an
//! [`ErrorKind::Rejected`] error carrying its code ([`Error::reply_code`]) and text.
//!
//! Addresses, the `EHLO` domain and header values containing CR or LF (or NUL) are refused
//! with [`ErrorKind::InvalidInput`] errors *before* anything is connected or sent, so no input
//! can inject SMTP commands or headers.
//!
//! # Example
//!
//! ```no_run
//! use copas::client::smtp::{self, Mail, Message};
//!
//! # fn main() -> copas::Result<()> {
//! let message = Message::new()
//!     .from("Alice <alice@example.org>")
//!     .to("bob@example.org")
//!     .subject("Hello")
//!     .text("Hi Bob,\r\n\r\nsee attached.\r\n")
//!     .attach("notes.txt", "text/plain", b"some notes".to_vec())
//!     .build()?;
//! let reply = smtp::send(
//!     &Mail::new("mail.example.org:25", "alice@example.org")
//!         .to("bob@example.org")
//!         .to("carol@example.org")
//!         .message(message),
//! )?;
//! println!("queued: {reply}");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::client::reply::{read_smtp_reply, Reply};
use crate::error::{Error, ErrorKind, Result};
use crate::native_tls::{Certificate, TlsConnector};
use crate::net::socket::Socket;

/// The default server port (Copas/LuaSocket `smtp.PORT`).
///
/// # Example
///
/// ```
/// use copas::client::smtp::{DOMAIN, PORT, SERVER, TIMEOUT};
///
/// assert_eq!((SERVER, PORT, DOMAIN), ("localhost", 25, "localhost"));
/// assert_eq!(TIMEOUT.as_secs(), 60);
/// ```
pub const PORT: u16 = 25;

/// The default server (Copas/LuaSocket `smtp.SERVER`).
pub const SERVER: &str = "localhost";

/// The default timeout for the connection and for each send and receive (Copas/LuaSocket
/// `smtp.TIMEOUT`, 60 seconds).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The default domain sent with `EHLO`/`HELO` (Copas/LuaSocket `smtp.DOMAIN`, which reads
/// the `SERVER_NAME` environment variable first, as [`Mail::new`] does).
pub const DOMAIN: &str = "localhost";

/// When [`send`] upgrades the connection with `STARTTLS`.
///
/// # Example
///
/// ```
/// use copas::client::smtp::{Mail, StartTls};
///
/// assert_eq!(StartTls::default(), StartTls::WhenOffered);
/// // Never send the mail (or credentials) in plaintext:
/// let _mail = Mail::new("mail.example.org:587", "me@example.org").starttls(StartTls::Required);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartTls {
    /// Use it when the server offers it, else go on in plaintext (the default).
    #[default]
    WhenOffered,
    /// Use it, and fail with [`ErrorKind::Tls`] (before sending any credentials or mail)
    /// when the server does not offer it.
    Required,
    /// Never use it.
    Never,
}

/// Which `AUTH` mechanism [`send`] uses with [`Mail::auth`] credentials.
///
/// # Example
///
/// ```
/// use copas::client::smtp::{AuthMechanism, Mail};
///
/// let _mail = Mail::new("mail.example.org:587", "me@example.org")
///     .auth("me", "secret")
///     .auth_mechanism(AuthMechanism::Login);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMechanism {
    /// `PLAIN` when the server offers it, else `LOGIN` (the default).
    #[default]
    Auto,
    /// `AUTH PLAIN` (RFC 4616).
    Plain,
    /// `AUTH LOGIN` (the older, widely offered form).
    Login,
}

/// What to send, to whom, and how: the options of [`send`] (LuaSocket's `send{...}` table).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use copas::client::smtp::{Mail, StartTls};
///
/// let mail = Mail::new("127.0.0.1:2525", "me@example.org")
///     .to("you@example.org")
///     .message(b"Subject: hi\r\n\r\nhello\r\n".to_vec())
///     .domain("client.example.org")
///     .timeout(Duration::from_secs(10))
///     .starttls(StartTls::Never);
/// assert_eq!(mail.recipients(), ["you@example.org"]);
/// ```
#[derive(Clone)]
pub struct Mail {
    server: String,
    from: String,
    recipients: Vec<String>,
    message: Vec<u8>,
    domain: String,
    timeouts: [Option<Duration>; 3],
    starttls: StartTls,
    connector: Option<TlsConnector>,
    root_certificates: Vec<Certificate>,
    tls_name: Option<String>,
    credentials: Option<(String, String)>,
    mechanism: AuthMechanism,
}

impl fmt::Debug for Mail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("server", &self.server)
            .field("from", &self.from)
            .field("recipients", &self.recipients)
            .field("message_len", &self.message.len())
            .field("domain", &self.domain)
            .field("timeouts", &self.timeouts)
            .field("starttls", &self.starttls)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .finish_non_exhaustive()
    }
}

impl Mail {
    /// A mail to be sent through `server` (`"host"`, `"host:port"` or `"[v6]:port"`; the
    /// port defaults to [`PORT`]) from the envelope sender `from` (an address such as
    /// `alice@example.org`; `""` is the null sender `<>`).
    ///
    /// Defaults: no recipients, an empty message, the `EHLO` domain from `SERVER_NAME` or
    /// [`DOMAIN`], a [`TIMEOUT`] timeout, [`StartTls::WhenOffered`] with the system's
    /// trusted roots, no authentication.
    pub fn new(server: impl Into<String>, from: impl Into<String>) -> Mail {
        Mail {
            server: server.into(),
            from: from.into(),
            recipients: Vec::new(),
            message: Vec::new(),
            domain: std::env::var("SERVER_NAME").unwrap_or_else(|_| DOMAIN.to_string()),
            timeouts: [Some(TIMEOUT); 3],
            starttls: StartTls::default(),
            connector: None,
            root_certificates: Vec::new(),
            tls_name: None,
            credentials: None,
            mechanism: AuthMechanism::default(),
        }
    }

    /// Adds a recipient (one `RCPT TO`); call it once per recipient.
    pub fn to(mut self, recipient: impl Into<String>) -> Mail {
        self.recipients.push(recipient.into());
        self
    }

    /// Adds several recipients.
    pub fn recipients_from<I, S>(mut self, recipients: I) -> Mail
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.recipients
            .extend(recipients.into_iter().map(Into::into));
        self
    }

    /// The recipients so far.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// The message: headers, a blank line and the body, as built by [`Message::build`] or
    /// by hand. Bare LF line endings are sent as CRLF; lines starting with `.` are
    /// dot-stuffed on the wire (the server stores them unchanged).
    pub fn message(mut self, message: impl Into<Vec<u8>>) -> Mail {
        self.message = message.into();
        self
    }

    /// The domain sent with `EHLO`/`HELO`.
    pub fn domain(mut self, domain: impl Into<String>) -> Mail {
        self.domain = domain.into();
        self
    }

    /// The timeout for connecting (and the TLS handshake) and for each send and receive
    /// (`None`: wait forever).
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Mail {
        self.timeouts = [timeout.into(); 3];
        self
    }

    /// The timeouts for connecting (and the TLS handshake), for each send, and for each
    /// reply, separately (`None`: wait forever). A server may take long to answer the end
    /// of the data (RFC 5321 §4.5.3.2 suggests 10 minutes), so the receive timeout is the
    /// one to make generous.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use copas::client::smtp::Mail;
    ///
    /// let s = Duration::from_secs;
    /// let _mail = Mail::new("mail.example.org", "me@example.org")
    ///     .timeouts(Some(s(10)), Some(s(30)), Some(s(600)));
    /// ```
    pub fn timeouts(
        mut self,
        connect: Option<Duration>,
        send: Option<Duration>,
        receive: Option<Duration>,
    ) -> Mail {
        self.timeouts = [connect, send, receive];
        self
    }

    /// When to use `STARTTLS`.
    pub fn starttls(mut self, policy: StartTls) -> Mail {
        self.starttls = policy;
        self
    }

    /// The TLS connector for `STARTTLS` (default: `TlsConnector::new()` with the system's
    /// roots and the [extra roots](Mail::add_root_certificate); verification on).
    pub fn tls_connector(mut self, connector: TlsConnector) -> Mail {
        self.connector = Some(connector);
        self
    }

    /// Trusts `ca` as well as the system's roots, for the default connector.
    pub fn add_root_certificate(mut self, ca: Certificate) -> Mail {
        self.root_certificates.push(ca);
        self
    }

    /// The name the server's certificate must be valid for (default: the host of the
    /// server address).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Mail {
        self.tls_name = Some(name.into());
        self
    }

    /// Authenticates as `user` with `password` (`AUTH PLAIN` or `LOGIN`, see
    /// [`Mail::auth_mechanism`]). Without `STARTTLS` or a TLS server these travel in
    /// plaintext (base64 only); use [`StartTls::Required`] to make sure they do not.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Mail {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Which `AUTH` mechanism to use.
    pub fn auth_mechanism(mut self, mechanism: AuthMechanism) -> Mail {
        self.mechanism = mechanism;
        self
    }

    /// Sends this mail: the same as [`send(&self)`](send).
    ///
    /// # Errors
    ///
    /// As [`send`].
    pub fn send(&self) -> Result<Reply> {
        send(self)
    }
}

/// Sends `mail` and returns the server's reply to the end of the data (`250 …`, often with
/// a queue id).
///
/// # Errors
///
/// * [`ErrorKind::InvalidInput`] before connecting when the sender, a recipient or the domain
///   contains CR, LF or NUL, the sender or a recipient an angle bracket or white space
///   (addresses go inside `<…>`), when there are no recipients, or when the server address is
///   malformed; after the greeting, before `MAIL FROM`, when the sender or a recipient is
///   not ASCII and the server does not offer `SMTPUTF8`.
/// * [`ErrorKind::Protocol`] when the server offers no usable `AUTH` mechanism (neither
///   `PLAIN` nor `LOGIN`, with [`AuthMechanism::Auto`]) or sends a malformed reply.
/// * [`ErrorKind::Rejected`] with the server's [reply code](Error::reply_code) and text
///   for any unexpected reply: a greeting that is not `220`, a refused `HELO`, an `AUTH`
///   failure (`535`), a `530` authentication required, a refused sender or recipient
///   (`550`…), a refused `DATA` or message.
/// * [`ErrorKind::Tls`] when `STARTTLS` is [required](StartTls::Required) and not offered,
///   or the handshake fails (an untrusted certificate…).
/// * [`ErrorKind::LimitExceeded`] for a reply over the reply reader's limits (a line longer
///   than [`MAX_REPLY_LINE`](crate::client::reply::MAX_REPLY_LINE), or too many lines or
///   bytes: see [`read_reply`](crate::client::reply::read_reply)).
/// * The connection's errors: `Refused`, `HostNotFound`, `Timeout`, `Closed`.
///
/// # Example
///
/// ```no_run
/// use copas::client::smtp::{self, Mail, StartTls};
///
/// copas::addthread(|| {
///     let mail = Mail::new("127.0.0.1:2525", "me@example.org")
///         .to("you@example.org")
///         .message(b"Subject: hi\r\n\r\nhello\r\n".to_vec())
///         .starttls(StartTls::Required)
///         .auth("user", "secret");
///     match smtp::send(&mail) {
///         Ok(reply) => println!("sent: {reply}"),
///         Err(e) => eprintln!("failed: {e} (code {:?})", e.reply_code()),
///     }
/// })
/// .unwrap();
/// copas::run().unwrap();
/// ```
pub fn send(mail: &Mail) -> Result<Reply> {
    check_address("sender", &mail.from)?;
    check_line("domain", &mail.domain)?;
    if mail.recipients.is_empty() {
        return Err(invalid("no recipients".to_string()));
    }
    for r in &mail.recipients {
        check_address("recipient", r)?;
        if r.is_empty() {
            return Err(invalid("empty recipient".to_string()));
        }
    }
    if let Some((user, password)) = &mail.credentials {
        if user.contains('\0') || password.contains('\0') {
            return Err(invalid("credentials contain NUL".to_string()));
        }
    }
    let (host, port) = split_server(&mail.server)?;
    // The message and its terminating dot in one write: written apart, the dot waits for
    // the server's delayed ACK of the message (Nagle's algorithm), about 40 ms per mail.
    let mut data = stuff(&mail.message);
    data.extend_from_slice(b".\r\n");

    let [connect, send, receive] = mail.timeouts;
    let mut sock = crate::connect((host.as_str(), port), connect)?;
    sock.settimeouts(connect, send, receive);
    // Every command waits for its reply: a small write must not wait for an ACK (the
    // HTTP client does the same).
    let _ = sock.set_nodelay(true);
    let result = session(&mut sock, mail, &host, &data);
    let polite = matches!(&result, Err(e) if e.kind() == ErrorKind::Rejected);
    if polite && !sock.is_closed() {
        // The server refused something and is waiting for the next command: say goodbye,
        // without waiting long for the answer. (After a timeout or a broken connection
        // there is nobody to talk to.)
        goodbye(&mut sock);
    }
    sock.close();
    result
}

fn session(sock: &mut Socket, mail: &Mail, host: &str, data: &[u8]) -> Result<Reply> {
    read_smtp_reply(sock)?.expect(&[220])?;
    let mut extensions = hello(sock, &mail.domain)?;

    let offered = has_extension(&extensions, "STARTTLS");
    match mail.starttls {
        StartTls::Never => {}
        StartTls::Required if !offered => {
            return Err(Error::with_message(
                ErrorKind::Tls,
                "STARTTLS required but not offered by the server",
            ))
        }
        _ if offered && !sock.is_tls() => {
            command(sock, "STARTTLS")?.expect(&[220])?;
            let connector = match &mail.connector {
                Some(c) => c.clone(),
                None => {
                    let mut builder = TlsConnector::builder();
                    for ca in &mail.root_certificates {
                        builder.add_root_certificate(ca.clone());
                    }
                    builder.build().map_err(|e| {
                        Error::with_message(ErrorKind::Tls, format!("TLS connector: {e}"))
                    })?
                }
            };
            let name = mail.tls_name.as_deref().unwrap_or(host);
            sock.dohandshake(&connector, name)?;
            // RFC 3207 §4.2: forget what was learnt before, greet again.
            extensions = hello(sock, &mail.domain)?;
        }
        _ => {}
    }

    if let Some((user, password)) = &mail.credentials {
        authenticate(sock, &extensions, mail.mechanism, user, password)?;
    }

    // RFC 6152: announce 8-bit content where the server knows the extension.
    let body = if !mail.message.is_ascii() && has_extension(&extensions, "8BITMIME") {
        " BODY=8BITMIME"
    } else {
        ""
    };
    let utf8 = if needs_smtputf8(mail, data) {
        // RFC 6531 §3.2: addresses that are not ASCII go only to a server that offers
        // SMTPUTF8, and then with the parameter. Headers alone (RFC 6532) get it where
        // offered and go as before where not, as servers without it mostly take them.
        let envelope = !mail.from.is_ascii() || mail.recipients.iter().any(|r| !r.is_ascii());
        match has_extension(&extensions, "SMTPUTF8") {
            true => " SMTPUTF8",
            false if envelope => {
                goodbye(sock);
                return Err(invalid(
                    "an address that is not ASCII needs SMTPUTF8, which the server does not offer"
                        .to_string(),
                ));
            }
            false => "",
        }
    } else {
        ""
    };
    command(sock, &format!("MAIL FROM:<{}>{body}{utf8}", mail.from))?.expect(&[250])?;
    for r in &mail.recipients {
        command(sock, &format!("RCPT TO:<{r}>"))?.expect(&[250, 251])?;
    }
    command(sock, "DATA")?.expect(&[354])?;
    sock.send(data)?;
    let done = read_smtp_reply(sock)?.expect(&[250])?;
    // The mail is accepted; a lost goodbye changes nothing, and a server slow to answer
    // it must not hold the caller for a whole receive timeout.
    goodbye(sock);
    Ok(done)
}

/// Whether the envelope or the message's head holds text that is not ASCII (RFC 6531/6532).
/// The head is found in `data`, the message as sent, whose line endings are all CRLF
/// whatever the caller used.
fn needs_smtputf8(mail: &Mail, data: &[u8]) -> bool {
    !mail.from.is_ascii() || mail.recipients.iter().any(|r| !r.is_ascii()) || !head(data).is_ascii()
}

/// The header section of `data` (CRLF line endings), without the blank line that ends it;
/// all of it when there is no blank line, none when it starts with one.
fn head(data: &[u8]) -> &[u8] {
    if data.starts_with(b"\r\n") {
        return &[];
    }
    match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &data[..end],
        None => data,
    }
}

/// Sends `QUIT` and waits a second at most for its reply.
fn goodbye(sock: &mut Socket) {
    sock.settimeout(Some(Duration::from_secs(1)));
    if sock.send(b"QUIT\r\n").is_ok() {
        let _ = read_smtp_reply(sock);
    }
}

/// `EHLO`, or `HELO` when the server refuses `EHLO`; returns the extension lines.
fn hello(sock: &mut Socket, domain: &str) -> Result<Vec<String>> {
    let reply = command(sock, &format!("EHLO {domain}"))?;
    if reply.class() == 2 {
        return Ok(reply.lines().iter().skip(1).cloned().collect());
    }
    if reply.class() == 5 {
        command(sock, &format!("HELO {domain}"))?.expect(&[250])?;
        return Ok(Vec::new());
    }
    Err(reply.to_error())
}

fn has_extension(extensions: &[String], name: &str) -> bool {
    extension(extensions, name).is_some()
}

/// The parameters of extension `name` (upper-cased), if it is offered.
fn extension(extensions: &[String], name: &str) -> Option<Vec<String>> {
    extensions.iter().find_map(|line| {
        let mut words = line.split_whitespace();
        let keyword = words.next()?;
        keyword
            .eq_ignore_ascii_case(name)
            .then(|| words.map(|w| w.to_ascii_uppercase()).collect())
    })
}

fn authenticate(
    sock: &mut Socket,
    extensions: &[String],
    mechanism: AuthMechanism,
    user: &str,
    password: &str,
) -> Result<()> {
    let offered = extension(extensions, "AUTH").unwrap_or_default();
    let plain = offered.iter().any(|m| m == "PLAIN");
    let login = offered.iter().any(|m| m == "LOGIN");
    let use_plain = match mechanism {
        AuthMechanism::Auto if plain => true,
        AuthMechanism::Auto if login => false,
        AuthMechanism::Plain => true,
        AuthMechanism::Login => false,
        AuthMechanism::Auto => {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                format!("the server offers no AUTH PLAIN or LOGIN (AUTH {offered:?})"),
            ))
        }
    };
    if use_plain {
        let token = BASE64.encode(format!("\0{user}\0{password}"));
        command(sock, &format!("AUTH PLAIN {token}"))?.expect(&[235])?;
    } else {
        command(sock, "AUTH LOGIN")?.expect(&[334])?;
        command(sock, &BASE64.encode(user))?.expect(&[334])?;
        command(sock, &BASE64.encode(password))?.expect(&[235])?;
    }
    Ok(())
}

/// Sends one command line and reads its reply.
fn command(sock: &mut Socket, line: &str) -> Result<Reply> {
    let mut buf = Vec::with_capacity(line.len() + 2);
    buf.extend_from_slice(line.as_bytes());
    buf.extend_from_slice(b"\r\n");
    sock.send(&buf)?;
    read_smtp_reply(sock)
}

fn invalid(message: String) -> Error {
    Error::with_message(ErrorKind::InvalidInput, message)
}

/// Refuses `value` when it contains CR, LF or NUL.
fn check_line(what: &str, value: &str) -> Result<()> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(invalid(format!("{what} contains CR, LF or NUL: {value:?}")));
    }
    Ok(())
}

/// Refuses an envelope address that could end its `<…>` early or add to the command:
/// besides CR, LF and NUL, angle brackets and white space (`RCPT TO:<a@b> NOTIFY=…` would
/// pass ESMTP parameters the caller never chose).
fn check_address(what: &str, value: &str) -> Result<()> {
    check_line(what, value)?;
    if value.contains(['<', '>']) || value.contains(char::is_whitespace) {
        return Err(invalid(format!(
            "{what} contains an angle bracket or white space: {value:?}"
        )));
    }
    Ok(())
}

fn split_server(server: &str) -> Result<(String, u16)> {
    let bad = || invalid(format!("malformed server address {server:?}"));
    check_line("server", server)?;
    if let Some(rest) = server.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => PORT,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match server.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Ok((server.to_string(), PORT)),
        Some((host, port)) => Ok((host.to_string(), port.parse().map_err(|_| bad())?)),
        None if server.is_empty() => Ok((SERVER.to_string(), PORT)),
        None => Ok((server.to_string(), PORT)),
    }
}

/// The message as sent after `DATA`: every line ended with CRLF (bare LF and bare CR
/// become CRLF), lines starting with `.` get another `.` in front (RFC 5321 §4.5.2).
/// The terminating `.` line is not included.
///
/// # Example
///
/// ```
/// use copas::client::smtp::stuff;
///
/// assert_eq!(stuff(b"a\n.b\n."), b"a\r\n..b\r\n..\r\n");
/// ```
pub fn stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 4);
    let mut at_line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                at_line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One attachment of a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attachment {
    filename: String,
    content_type: String,
    data: Vec<u8>,
}

/// A message builder (LuaSocket's `smtp.message`, simpler): headers, a text body and
/// attachments. [`build`](Message::build) gives the bytes for [`Mail::message`].
///
/// Without attachments the message is a single `text/plain; charset=utf-8` part; with
/// them it is `multipart/mixed`: the text first, then each attachment base64-encoded in
/// lines of 76 characters. The text goes as it is (`7bit`, or `8bit` when it is not ASCII)
/// unless a line of it is longer than the 998 octets mail allows (RFC 5322 §2.1.1); then it
/// is sent `quoted-printable`, which the reader's mail program decodes back to the same
/// text. `Date` (now, UTC) and `Message-ID` are added unless given;
/// `MIME-Version: 1.0` always.
///
/// Header values are folded at white space into lines of at most 78 octets where they
/// have white space to fold at (RFC 5322 §2.1.1); an address list after each `, `. A value
/// that is not ASCII is sent as RFC 2047 encoded words, except in the address headers
/// (`From`, `To`, `Cc`, and `Reply-To`, `Sender`, `Bcc` and the `Resent-` ones given with
/// [`header`](Message::header)): there each address goes on its own, `<addr>` as given,
/// only a display name that is not ASCII encoded (`Zoë <zoe@example.org>` becomes
/// `=?UTF-8?B?Wm/Dqw==?= <zoe@example.org>`) and one with specials (`.`, `,`, `@`…) quoted.
///
/// # Example
///
/// ```
/// use copas::client::smtp::Message;
///
/// let bytes = Message::new()
///     .from("alice@example.org")
///     .to("bob@example.org")
///     .to("carol@example.org")
///     .subject("Report")
///     .text("Numbers attached.\n")
///     .attach("numbers.csv", "text/csv", b"1,2,3\n".to_vec())
///     .build()
///     .unwrap();
/// let text = String::from_utf8(bytes).unwrap();
/// assert!(text.contains("To: bob@example.org, carol@example.org\r\n"));
/// assert!(text.contains("Content-Type: multipart/mixed;"));
///
/// // A header value with a line break is refused: no header injection.
/// assert!(Message::new().subject("hi\r\nBcc: eve@example.org").build().is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Message {
    from: Option<String>,
    to: Vec<String>,
    cc: Vec<String>,
    subject: Option<String>,
    date: Option<String>,
    message_id: Option<String>,
    headers: Vec<(String, String)>,
    text: String,
    attachments: Vec<Attachment>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Message {
    /// An empty message.
    pub fn new() -> Message {
        Message::default()
    }

    /// The `From` header.
    pub fn from(mut self, from: impl Into<String>) -> Message {
        self.from = Some(from.into());
        self
    }

    /// Adds an address to the `To` header.
    pub fn to(mut self, to: impl Into<String>) -> Message {
        self.to.push(to.into());
        self
    }

    /// Adds an address to the `Cc` header.
    pub fn cc(mut self, cc: impl Into<String>) -> Message {
        self.cc.push(cc.into());
        self
    }

    /// The `Subject` header.
    pub fn subject(mut self, subject: impl Into<String>) -> Message {
        self.subject = Some(subject.into());
        self
    }

    /// The `Date` header, as given (default: the time of [`build`](Message::build), in
    /// RFC 5322 form, UTC).
    pub fn date(mut self, date: impl Into<String>) -> Message {
        self.date = Some(date.into());
        self
    }

    /// The `Message-ID` header, as given, with its angle brackets (default: a unique id).
    pub fn message_id(mut self, id: impl Into<String>) -> Message {
        self.message_id = Some(id.into());
        self
    }

    /// Adds any other header (`X-Mailer`, `Reply-To`…).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The text body (UTF-8; line endings become CRLF).
    pub fn text(mut self, text: impl Into<String>) -> Message {
        self.text = text.into();
        self
    }

    /// Adds an attachment: its file name, MIME type (`application/pdf`…) and content.
    ///
    /// A short ASCII file name goes as `filename="…"`; any other (non-ASCII, with `"` or
    /// `\`, or long) goes percent-encoded per RFC 2231 (`filename*=utf-8''…`, in numbered
    /// pieces when long) so that every header line stays within 78 octets and mail
    /// programs show the name as given.
    pub fn attach(
        mut self,
        filename: impl Into<String>,
        content_type: impl Into<String>,
        data: Vec<u8>,
    ) -> Message {
        self.attachments.push(Attachment {
            filename: filename.into(),
            content_type: content_type.into(),
            data,
        });
        self
    }

    /// The message's bytes: headers, a blank line, the body; CRLF line endings.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when a header name is not a valid field name, a header
    /// value, address, content type or file name contains CR, LF or NUL (or a content type
    /// contains `"`), or a header value has a run without white space to fold at that does
    /// not fit in the 998 octets a line may carry (RFC 5322 §2.1.1; on a header's first
    /// line its name counts too).
    pub fn build(&self) -> Result<Vec<u8>> {
        let mut head: Vec<(String, String)> = Vec::new();
        let from = self.from.clone();
        if let Some(f) = &from {
            head.push(("From".into(), f.clone()));
        }
        if !self.to.is_empty() {
            head.push(("To".into(), self.to.join(", ")));
        }
        if !self.cc.is_empty() {
            head.push(("Cc".into(), self.cc.join(", ")));
        }
        if let Some(s) = &self.subject {
            head.push(("Subject".into(), s.clone()));
        }
        head.push((
            "Date".into(),
            self.date
                .clone()
                .unwrap_or_else(|| rfc5322_date(SystemTime::now())),
        ));
        let domain = from
            .as_deref()
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d.trim_end_matches('>').trim().to_string())
            .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_graphic()))
            .unwrap_or_else(|| DOMAIN.to_string());
        head.push((
            "Message-ID".into(),
            self.message_id
                .clone()
                .unwrap_or_else(|| format!("<{}@{domain}>", unique())),
        ));
        head.extend(self.headers.iter().cloned());
        head.push(("MIME-Version".into(), "1.0".into()));

        let mut out = String::new();
        for (name, value) in &head {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(invalid(format!("invalid header name {name:?}")));
            }
            check_line(name, value)?;
            let value = if is_address_field(name) {
                address_list(value)
            } else {
                unstructured(value)
            };
            out.push_str(&folded(name, &value)?);
        }

        let text = stuffless_crlf(&self.text);
        let (transfer, text) = if text.split("\r\n").any(|l| l.len() > MAX_LINE_OCTETS) {
            ("quoted-printable", quoted_printable(text.as_bytes()))
        } else if text.is_ascii() {
            ("7bit", text)
        } else {
            ("8bit", text)
        };
        if self.attachments.is_empty() {
            out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
            out.push_str(&format!("Content-Transfer-Encoding: {transfer}\r\n\r\n"));
            out.push_str(&text);
            return Ok(out.into_bytes());
        }

        let mut boundary = format!("=_copas_{}", unique());
        while text.contains(&boundary) {
            boundary = format!("=_copas_{}", unique());
        }
        out.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
        ));
        out.push_str("This is a multi-part message in MIME format.\r\n");
        out.push_str(&format!("--{boundary}\r\n"));
        out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        out.push_str(&format!("Content-Transfer-Encoding: {transfer}\r\n\r\n"));
        out.push_str(&text);
        for a in &self.attachments {
            check_line("file name", &a.filename)?;
            check_line("content type", &a.content_type)?;
            if a.content_type.contains('"') {
                return Err(invalid(format!(
                    "content type contains '\"': {:?}",
                    a.content_type
                )));
            }
            out.push_str(&format!("\r\n--{boundary}\r\n"));
            out.push_str(&folded(
                "Content-Type",
                &format!("{}; {}", a.content_type, parameter("name", &a.filename)),
            )?);
            out.push_str(&folded(
                "Content-Disposition",
                &format!("attachment; {}", parameter("filename", &a.filename)),
            )?);
            out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
            let encoded = BASE64.encode(&a.data);
            // Base64 is ASCII: every index is a character boundary.
            for start in (0..encoded.len()).step_by(76) {
                out.push_str(&encoded[start..encoded.len().min(start + 76)]);
                out.push_str("\r\n");
            }
        }
        out.push_str(&format!("\r\n--{boundary}--\r\n"));
        Ok(out.into_bytes())
    }
}

/// CRLF line endings throughout and a final line ending (no dot-stuffing: [`send`] does
/// that on the wire).
fn stuffless_crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    let mut rest = text;
    while let Some(at) = rest.find(['\r', '\n']) {
        out.push_str(&rest[..at]);
        out.push_str("\r\n");
        let ending = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + ending..];
    }
    out.push_str(rest);
    if !out.is_empty() && !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out
}

/// The longest line mail may carry, without its CRLF (RFC 5321 §4.5.3.1.6).
const MAX_LINE_OCTETS: usize = 998;

/// `text` (CRLF line endings) in quoted-printable (RFC 2045 §6.7): lines of at most 76
/// characters, longer ones split with soft breaks (`=` at the end), every byte that is not
/// printable ASCII, and `=`, written as `=XX`, as are a line's trailing space or tab.
fn quoted_printable(text: &[u8]) -> String {
    const MAX: usize = 76;
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut lines = text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && lines.peek().is_none() {
            break; // after the text's last CRLF
        }
        let mut width = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let plain =
                (matches!(b, b'!'..=b'~') && b != b'=') || ((b == b' ' || b == b'\t') && !last);
            let need = if plain { 1 } else { 3 };
            // Room for the soft break's `=` unless this is the line's last character.
            if width + need > MAX - usize::from(!last) {
                out.push_str("=\r\n");
                width = 0;
            }
            if plain {
                out.push(char::from(b));
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('=');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
            width += need;
        }
        out.push_str("\r\n");
    }
    out
}

/// The line length a header should keep to (RFC 5322 §2.1.1), without its CRLF.
const FOLD_AT: usize = 78;

/// `name: value` as header lines ending in CRLF, folded (RFC 5322 §2.2.3) before white
/// space wherever a line would pass [`FOLD_AT`] octets, so that unfolding gives `value`
/// back.
///
/// A line can stay longer only where `value` has no white space to fold at; past
/// [`MAX_LINE_OCTETS`] mail cannot carry it, and it is refused with `InvalidInput`.
fn folded(name: &str, value: &str) -> Result<String> {
    let mut out = format!("{name}: ");
    let mut line = out.len();
    for (i, piece) in fold_pieces(value).into_iter().enumerate() {
        if i > 0 && line + piece.len() > FOLD_AT {
            out.push_str("\r\n");
            line = 0;
        }
        out.push_str(piece);
        line += piece.len();
        if line > MAX_LINE_OCTETS {
            return Err(invalid(format!(
                "header {name} has a line of over {MAX_LINE_OCTETS} octets with no white \
                 space to fold at"
            )));
        }
    }
    out.push_str("\r\n");
    Ok(out)
}

/// `value` cut before each run of spaces or tabs that has more text after it: the places
/// a header may be folded. (Not before trailing white space: a folded line must not be
/// white space alone.)
fn fold_pieces(value: &str) -> Vec<&str> {
    let is_wsp = |b: u8| b == b' ' || b == b'\t';
    let end = value.trim_end_matches([' ', '\t']).len();
    let bytes = value.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    for i in 1..end {
        if is_wsp(bytes[i]) && !is_wsp(bytes[i - 1]) {
            pieces.push(&value[start..i]);
            start = i;
        }
    }
    pieces.push(&value[start..]);
    pieces
}

/// The MIME parameter `name=value` (RFC 2045 §5.1): quoted when `value` is short, printable
/// ASCII with nothing to escape, else RFC 2231's extended form. RFC 2047 words, which some
/// mailers put there, are not allowed inside a quoted string (RFC 2047 §5), and a long
/// quoted value could not be folded within a line; the extended form is cut into numbered
/// pieces (`name*0*=utf-8''…; name*1*=…`) that readers join back.
fn parameter(name: &str, value: &str) -> String {
    /// The longest quoted value, and the most encoded characters in one piece: with the
    /// name, `*NN*=`, `utf-8''` and `; `, a piece stays within a 78-octet line.
    const PIECE: usize = 48;
    let plain = value.len() <= PIECE
        && value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if plain {
        return format!("{name}=\"{value}\"");
    }
    // RFC 2231 §7 attribute-char: a token character other than `*`, `'` and `%`.
    let literal = |b: u8| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b);
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for b in value.bytes() {
        let token = if literal(b) {
            (b as char).to_string()
        } else {
            format!("%{b:02X}")
        };
        if piece.len() + token.len() > PIECE {
            pieces.push(std::mem::take(&mut piece));
        }
        piece.push_str(&token);
    }
    pieces.push(piece);
    if pieces.len() == 1 {
        return format!("{name}*=utf-8''{}", pieces[0]);
    }
    let out: Vec<String> = pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let charset = if i == 0 { "utf-8''" } else { "" };
            format!("{name}*{i}*={charset}{piece}")
        })
        .collect();
    out.join("; ")
}

/// An unstructured value (`Subject`…): as is when it is ASCII, else as RFC 2047 words.
fn unstructured(value: &str) -> String {
    if value.is_ascii() {
        value.to_string()
    } else {
        encoded_words(value)
    }
}

/// `text` as RFC 2047 `=?UTF-8?B?…?=` words separated by spaces, where the header may be
/// folded (readers drop white space between encoded words). Each word holds at most 42
/// bytes of `text`, whole characters: 68 characters, within RFC 2047's 75 and, after a
/// header name such as `Subject: `, within a line of 78.
fn encoded_words(text: &str) -> String {
    const CHUNK: usize = 42;
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + CHUNK).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        words.push(format!("=?UTF-8?B?{}?=", BASE64.encode(&text[start..end])));
        start = end;
    }
    words.join(" ")
}

/// Whether header `name` holds addresses (RFC 5322 §3.6.2, §3.6.3, §3.6.6), whose display
/// names alone may be encoded.
fn is_address_field(name: &str) -> bool {
    const FIELDS: [&str; 11] = [
        "From",
        "Sender",
        "Reply-To",
        "To",
        "Cc",
        "Bcc",
        "Resent-From",
        "Resent-Sender",
        "Resent-To",
        "Resent-Cc",
        "Resent-Bcc",
    ];
    FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// An address header's value: each address of `list` made safe on its own (see
/// [`address`]), joined by `, ` (where the header may be folded).
fn address_list(list: &str) -> String {
    split_addresses(list)
        .into_iter()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(address)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `list` cut at the commas between addresses: not those inside a quoted display name
/// (`"Doe, Jane" <jane@example.org>`), inside `<…>`, or inside a comment
/// (`Jane (work, main) <jane@example.org>`; comments nest, RFC 5322 §3.2.2).
fn split_addresses(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    let mut comment = 0usize;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || comment > 0 => escaped = true,
            '"' if !angle && comment == 0 => quoted = !quoted,
            '(' if !quoted && !angle => comment += 1,
            ')' if !quoted && !angle && comment > 0 => comment -= 1,
            '<' if !quoted && comment == 0 => angle = true,
            '>' if !quoted && comment == 0 => angle = false,
            ',' if !quoted && !angle && comment == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    parts
}

/// One address: `display <addr>` with the display name made a valid phrase (see
/// [`phrase`]) and the `<addr>` as given; a bare address as given. RFC 2047 §5 allows
/// encoded words in a display name only: one around the `<addr>` would hide the address
/// (so an address that is not ASCII, RFC 6532, goes as it is).
fn address(entry: &str) -> String {
    let Some((display, addr)) = entry.strip_suffix('>').and_then(|e| e.rsplit_once('<')) else {
        return entry.to_string();
    };
    match display.trim() {
        "" => format!("<{addr}>"),
        display => format!("{} <{addr}>", phrase(display)),
    }
}

/// A display name as an RFC 5322 phrase: RFC 2047 words when it is not ASCII (never inside
/// quotes, RFC 2047 §5), a quoted string when it has specials (`.`, `,`, `@`…), else as
/// is. A name given in quotes is taken without them first.
fn phrase(display: &str) -> String {
    /// RFC 5322 §3.2.3: the characters an atom cannot hold.
    const SPECIALS: [char; 13] = [
        '(', ')', '<', '>', '[', ']', ':', ';', '@', '\\', ',', '.', '"',
    ];
    let name = unquoted(display);
    if !name.is_ascii() {
        encoded_words(&name)
    } else if name.contains(SPECIALS) {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        name
    }
}

/// The text of `display` when it is a quoted string (without the quotes and backslash
/// escapes), else `display`.
fn unquoted(display: &str) -> String {
    let Some(inner) = display.strip_prefix('"').and_then(|d| d.strip_suffix('"')) else {
        return display.to_string();
    };
    let mut name = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        name.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    name
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}.{:x}.{n}", std::process::id())
}

/// `Sat, 21 Nov 2026 06:40:00 +0000`.
fn rfc5322_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_and_line_endings() {
        assert_eq!(stuff(b".a\n..b\r\nc\r.d"), b"..a\r\n...b\r\nc\r\n..d\r\n");
        assert_eq!(stuff(b""), b"");
        assert_eq!(stuff(b"x\r\n"), b"x\r\n");
        assert_eq!(stuff(b"."), b"..\r\n");
    }

    #[test]
    fn a_body_gets_crlf_endings_whatever_it_had() {
        assert_eq!(stuffless_crlf(""), "");
        assert_eq!(stuffless_crlf("a"), "a\r\n");
        assert_eq!(
            stuffless_crlf("a\nb\rc\r\nd\n\re"),
            "a\r\nb\r\nc\r\nd\r\n\r\ne\r\n"
        );
        assert_eq!(stuffless_crlf("ü\r\n.x\r"), "ü\r\n.x\r\n");
        assert_eq!(stuffless_crlf("\r\n\r\n"), "\r\n\r\n");
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_492_800); // 2026-11-24 04:00:00
        assert_eq!(rfc5322_date(t), "Tue, 24 Nov 2026 04:00:00 +0000");
    }

    #[test]
    fn servers() {
        assert_eq!(split_server("a:26").unwrap(), ("a".into(), 26));
        assert_eq!(split_server("a").unwrap(), ("a".into(), 25));
        assert_eq!(split_server("[::1]:26").unwrap(), ("::1".into(), 26));
        assert_eq!(split_server("::1").unwrap(), ("::1".into(), 25));
        assert!(split_server("a:x").is_err());
        assert!(split_server("a\r\n:25").is_err());
    }

    #[test]
    fn refuses_line_breaks() {
        let e = send(&Mail::new("127.0.0.1:1", "a@b\r\nRCPT TO:<x>").to("c@d")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(Message::new().header("X-A", "1\n2").build().is_err());
        assert!(Message::new().header("Bad Name", "1").build().is_err());
        assert!(Message::new()
            .attach("a.txt", "text/plain\"; x=\"y", vec![])
            .build()
            .is_err());
    }

    /// Short plain names stay quoted; anything else is RFC 2231, in numbered pieces when long,
    /// with no piece splitting a `%XX` escape.
    #[test]
    fn parameters_take_the_rfc_2231_form_when_quoting_will_not_do() {
        assert_eq!(parameter("filename", "a b.txt"), "filename=\"a b.txt\"");
        assert_eq!(
            parameter("filename", "a\".txt"),
            "filename*=utf-8''a%22.txt"
        );
        assert_eq!(parameter("name", "é"), "name*=utf-8''%C3%A9");
        let long = parameter("filename", &"é".repeat(20));
        let pieces: Vec<&str> = long.split("; ").collect();
        assert_eq!(pieces.len(), 3, "{long}");
        assert!(pieces[0].starts_with("filename*0*=utf-8''%C3%A9"));
        assert!(pieces[1].starts_with("filename*1*=%"));
        assert_eq!(long.matches('%').count(), 40);
    }

    #[test]
    fn non_ascii_subject_is_encoded() {
        let m = Message::new().subject("héllo").build().unwrap();
        let s = String::from_utf8(m).unwrap();
        assert!(s.contains("Subject: =?UTF-8?B?aMOpbGxv?=\r\n"), "{s}");
    }
}
