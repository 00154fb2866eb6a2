//! An FTP client (Copas `copas.ftp`, LuaSocket's `socket.ftp`), on copas sockets.
//!
//! The one-call functions [`get`], [`put`], [`list`] and [`command`] take an `ftp://` URL;
//! [`Client`] is the command interface: one logged-in control connection on which
//! transfers run one after the other. Inside a coroutine every wait suspends only that
//! coroutine, so many transfers run at once; from plain `main` the calls block.
//!
//! * Login is anonymous (`anonymous` / `anonymous@`) unless the URL (`ftp://user:pass@host/`,
//!   percent-decoded) or [`Options`] give a user and password.
//! * Transfers are binary (`TYPE I`; `;type=a` at the end of a URL asks for ASCII) and
//!   passive: `EPSV` first, then `PASV` when the server does not know `EPSV`. The data
//!   connection always goes to the control connection's peer address, with the port the
//!   reply names: the address in a `PASV` reply is not used (as curl's default), so a server
//!   cannot aim the client at a third party, and one behind NAT, which names its private
//!   address, works.
//! * An upload that fails midway (its source fails, a send times out, a [`DataWriter`]
//!   dropped without [`DataWriter::finish`]) is aborted, not ended: the client sends `ABOR`
//!   and resets the data connection, whose normal close would tell the server the file was
//!   complete. What the server keeps of it is the server's choice.
//! * Every reply code is checked; a failing one becomes [`ErrorKind::Rejected`] with the
//!   code in [`Error::reply_code`] (a missing file: `550`). A transfer the server answers
//!   with its completion (`226`) in place of the preliminary `150` has succeeded, as in
//!   LuaSocket: what the data connection carried is the transfer.
//! * Commands and arguments containing CR, LF or NUL are refused before anything is sent
//!   (an [`ErrorKind::InvalidInput`] error).
//!
//! ```no_run
//! use copas::client::ftp;
//!
//! # fn main() -> copas::Result<()> {
//! ftp::put("ftp://user:secret@127.0.0.1:2121/hello.txt", b"hello")?;
//! let data = ftp::get("ftp://user:secret@127.0.0.1:2121/hello.txt")?;
//! assert_eq!(data, b"hello");
//! # Ok(())
//! # }
//! ```

use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::client::reply::{read_reply, Reply};
use crate::error::{Error, ErrorKind, Result};
use crate::net::socket::Socket;

/// The FTP control port used when a URL names none (LuaSocket `PORT`).
pub const DEFAULT_PORT: u16 = 21;

/// The timeout of every connect, send and receive unless [`Options::timeout`] says
/// otherwise (LuaSocket `TIMEOUT`, 60 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The user name of an anonymous login (LuaSocket `USER`; servers know `anonymous`).
pub const ANONYMOUS_USER: &str = "anonymous";

/// The password of an anonymous login (LuaSocket `PASSWORD`).
pub const ANONYMOUS_PASSWORD: &str = "anonymous@";

/// The largest listing [`Client::list`] and [`Client::nlst`] accept: 64 MiB received, and
/// 64 MiB of entries, each counted as its length plus the `String` holding it (24 bytes),
/// so that a listing of millions of short names is bounded too.
pub const MAX_LISTING: usize = 64 * 1024 * 1024;

/// The most bytes [`get`] collects into memory; [`get_to`] and [`Client::retr`] stream
/// without a limit.
pub const MAX_GET_BYTES: u64 = 64 * 1024 * 1024;

const CHUNK: usize = 64 * 1024;

/// How long an aborted upload waits for the server's answer to `ABOR` before it resets
/// the data connection (at most the receive timeout).
pub const ABORT_WAIT: Duration = Duration::from_secs(1);

fn invalid_input(message: impl Into<String>) -> Error {
    Error::with_message(ErrorKind::InvalidInput, message)
}

fn protocol(message: impl Into<String>) -> Error {
    Error::with_message(ErrorKind::Protocol, message)
}

/// Refuses text that would end a command line early (CR, LF) or that no server accepts
/// (NUL), before anything is sent.
fn check_text(what: &str, text: &str) -> Result<()> {
    if text.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(invalid_input(format!(
            "{what} contains CR, LF or NUL: {text:?}"
        )));
    }
    Ok(())
}

// ----- options and URLs ----------------------------------------------------------------------

/// Settings of the one-call functions and [`Client::open`] (Copas's `ftp.PORT`,
/// `ftp.TIMEOUT`, `ftp.USER`, `ftp.PASSWORD`, per call instead of global).
///
/// ```
/// use std::time::Duration;
/// use copas::client::ftp::Options;
///
/// let opts = Options::new()
///     .timeout(Some(Duration::from_secs(5)))
///     .user("user", "secret")
///     .epsv(false);
/// assert_eq!(opts.get_timeout(), Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    timeout: Option<Duration>,
    user: Option<(String, String)>,
    port: u16,
    epsv: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: Some(DEFAULT_TIMEOUT),
            user: None,
            port: DEFAULT_PORT,
            epsv: true,
        }
    }
}

impl Options {
    /// The defaults: a 60 s timeout, anonymous login, port 21, `EPSV` then `PASV`.
    pub fn new() -> Options {
        Options::default()
    }

    /// The timeout of each connect, send and receive (`None`: wait forever); on the control
    /// connection a receive is a whole reply, however many lines it has.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Options {
        self.timeout = timeout;
        self
    }

    /// The configured timeout.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Logs in as `user` with `password` when the URL names no user.
    pub fn user(mut self, user: &str, password: &str) -> Options {
        self.user = Some((user.to_string(), password.to_string()));
        self
    }

    /// The control port used when the URL names none (default [`DEFAULT_PORT`]).
    pub fn port(mut self, port: u16) -> Options {
        self.port = port;
        self
    }

    /// Whether to try `EPSV` before `PASV` (default true). With false only `PASV` is used.
    pub fn epsv(mut self, epsv: bool) -> Options {
        self.epsv = epsv;
        self
    }
}

/// An `ftp://` URL taken apart (Copas `ftp.parseRequest`, which in Copas 4.11.0 builds
/// this table but forgets to return it; here it is returned).
///
/// ```
/// use copas::client::ftp::Request;
///
/// let r = Request::parse("ftp://us%65r:p%40ss@example.com:2121/dir/a%20b.txt").unwrap();
/// assert_eq!(r.host, "example.com");
/// assert_eq!(r.port, Some(2121));
/// assert_eq!(r.user.as_deref(), Some("user"));
/// assert_eq!(r.password.as_deref(), Some("p@ss"));
/// assert_eq!(r.path, "dir/a b.txt");
/// assert!(!r.ascii);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port, when the URL gives one.
    pub port: Option<u16>,
    /// The percent-decoded user name, when the URL gives one.
    pub user: Option<String>,
    /// The percent-decoded password, when the URL gives one.
    pub password: Option<String>,
    /// The percent-decoded path without its leading `/`, relative to the login directory
    /// (as LuaSocket sends it). Empty for `ftp://host/`.
    pub path: String,
    /// `;type=a` asked for an ASCII transfer.
    pub ascii: bool,
}

impl Request {
    /// Parses an `ftp://` URL (the scheme is case-insensitive).
    ///
    /// # Errors
    ///
    /// An [`ErrorKind::InvalidInput`] error for a URL that does not parse, a
    /// scheme other than `ftp`, no host, an unknown `;type=`, percent escapes that are not
    /// UTF-8, or CR, LF or NUL in the user, password or path.
    pub fn parse(url: &str) -> Result<Request> {
        let parsed =
            url::Url::parse(url).map_err(|e| invalid_input(format!("bad URL {url:?}: {e}")))?;
        if parsed.scheme() != "ftp" {
            return Err(invalid_input(format!(
                "not an ftp:// URL: scheme {:?}",
                parsed.scheme()
            )));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(invalid_input(format!("no host in {url:?}"))),
        };
        let user = match parsed.username() {
            "" => None,
            u => Some(percent_decode(u)?),
        };
        let password = parsed.password().map(percent_decode).transpose()?;
        let mut raw_path = parsed.path();
        let mut ascii = false;
        if let Some(pos) = raw_path.rfind(";type=") {
            match &raw_path[pos + 6..] {
                "a" | "A" => ascii = true,
                "i" | "I" => {}
                t => return Err(invalid_input(format!("unknown transfer type {t:?}"))),
            }
            raw_path = &raw_path[..pos];
        }
        let path = percent_decode(raw_path.strip_prefix('/').unwrap_or(raw_path))?;
        for (what, text) in [
            ("user", user.as_deref()),
            ("password", password.as_deref()),
            ("path", Some(path.as_str())),
        ] {
            if let Some(text) = text {
                check_text(what, text)?;
            }
        }
        Ok(Request {
            host,
            // `Url::port` is `None` for the scheme's default, 21, even when written.
            port: parsed.port().or(writes_port(url).then_some(DEFAULT_PORT)),
            user,
            password,
            path,
            ascii,
        })
    }
}

/// Whether `url`'s authority writes a port (`ftp://host:21/`), read from the text: the
/// parsed URL cannot tell `:21` from no port.
fn writes_port(url: &str) -> bool {
    // What `Url::parse` ignores: tabs and line feeds anywhere, controls and spaces around.
    let text: String = url
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let Some((_, rest)) = text.trim_matches(|c: char| c <= ' ').split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or("", |(_, after)| after),
        None => host_port.find(':').map_or("", |i| &host_port[i..]),
    };
    after_host
        .strip_prefix(':')
        .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| invalid_input("percent-decoded URL part is not UTF-8"))
}

// ----- passive-mode replies ----------------------------------------------------------------

/// Parses a `227` reply's text (`Entering Passive Mode (h1,h2,h3,h4,p1,p2)`) into the address
/// and port it names. The six numbers are found anywhere in the text, with or without
/// parentheses (RFC 1123 §4.1.2.6). Never panics.
///
/// ```
/// use std::net::Ipv4Addr;
/// use copas::client::ftp::parse_pasv;
///
/// assert_eq!(
///     parse_pasv("Entering passive mode (127,0,0,1,70,182)."),
///     Some((Ipv4Addr::new(127, 0, 0, 1), 70 * 256 + 182))
/// );
/// assert_eq!(parse_pasv("(127,0,0,1,256,1)"), None); // not a byte
/// assert_eq!(parse_pasv("(127,0,0,1,0,0)"), None); // port 0
/// ```
pub fn parse_pasv(text: &str) -> Option<(Ipv4Addr, u16)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b',') {
            i += 1;
        }
        // A run after a minus sign is a negative number, not an address.
        let negative = start > 0 && bytes[start - 1] == b'-';
        if let Some(found) = six_numbers(&text[start..i]).filter(|_| !negative) {
            return Some(found);
        }
    }
    None
}

fn six_numbers(run: &str) -> Option<(Ipv4Addr, u16)> {
    let mut n = [0u8; 6];
    let mut fields = run.split(',');
    for slot in n.iter_mut() {
        let field = fields.next()?;
        if field.is_empty() || field.len() > 3 {
            return None;
        }
        *slot = field.parse::<u8>().ok()?;
    }
    if fields.next().is_some_and(|f| !f.is_empty()) {
        return None;
    }
    let port = u16::from(n[4]) << 8 | u16::from(n[5]);
    if port == 0 {
        return None;
    }
    Some((Ipv4Addr::new(n[0], n[1], n[2], n[3]), port))
}

/// Parses a `229` reply's text (`Entering Extended Passive Mode (|||port|)`, RFC 2428) into
/// its port. The delimiter may be any printable ASCII character other than a digit, used
/// the same throughout. Never panics.
///
/// ```
/// use copas::client::ftp::parse_epsv;
///
/// assert_eq!(parse_epsv("Entering extended passive mode (|||6446|)."), Some(6446));
/// assert_eq!(parse_epsv("(!!!21!)"), Some(21));
/// assert_eq!(parse_epsv("(|||70000|)"), None);
/// assert_eq!(parse_epsv("(|||0|)"), None);
/// ```
pub fn parse_epsv(text: &str) -> Option<u16> {
    let open = text.find('(')?;
    let rest = &text[open + 1..];
    let close = rest.find(')')?;
    let inner = &rest.as_bytes()[..close];
    let d = *inner.first()?;
    if !(33..=126).contains(&d) || d.is_ascii_digit() {
        return None;
    }
    if inner.len() < 5 || inner[1] != d || inner[2] != d || inner[inner.len() - 1] != d {
        return None;
    }
    let digits = &inner[3..inner.len() - 1];
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let port = digits
        .iter()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    match u16::try_from(port) {
        Ok(p) if p != 0 => Some(p),
        _ => None,
    }
}

/// Where a `227` reply's data connection goes, given the control connection's `peer`:
/// `peer`'s IP with the reply's port, whatever address the reply names.
///
/// The address is not used: a server behind NAT names its private one, and following it
/// would let a server aim the client at a third party. Over IPv6 the reply can only name
/// an IPv4 address; the port is then the one the server listens on at `peer`'s IPv6 address.
///
/// ```
/// use std::net::IpAddr;
/// use copas::client::ftp::pasv_target;
/// use copas::ErrorKind;
///
/// let peer: IpAddr = "203.0.113.5".parse().unwrap();
/// let target = pasv_target("Entering passive mode (10,0,0,9,4,0)", peer).unwrap();
/// assert_eq!(target, "203.0.113.5:1024".parse().unwrap());
/// let err = pasv_target("Entering passive mode (10,0,0,9)", peer).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Protocol);
/// ```
///
/// # Errors
///
/// [`ErrorKind::Protocol`] when the text has no valid address and port.
pub fn pasv_target(text: &str, peer: IpAddr) -> Result<SocketAddr> {
    let (ip, port) =
        parse_pasv(text).ok_or_else(|| protocol(format!("malformed PASV reply: {text:?}")))?;
    let peer_v4 = match peer {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    if !ip.is_unspecified() && Some(ip) != peer_v4 {
        log::debug!("PASV reply names {ip}, not the server {peer}: connecting to {peer}");
    }
    Ok(SocketAddr::new(peer, port))
}

// ----- the client ----------------------------------------------------------------------------

/// Whether the next command first has to read a transfer's final reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// A transfer was abandoned: its final reply (whatever it says) is still to come.
    Discard,
    /// An upload was aborted: what the server still owes, its final reply and `ABOR`'s
    /// (one or two replies, in either order, by server), is read up to a `NOOP`'s.
    Abort,
}

/// One FTP control connection: the command interface (Copas `ftp.command`, and LuaSocket's
/// `ftp.open` object).
///
/// Transfers run one at a time on the connection; each opens its own passive data
/// connection. Dropping the client closes the connection without `QUIT`; call
/// [`Client::quit`] to end politely.
///
/// A reply that cannot be read whole (a timeout, a line over the limit, a malformed reply)
/// or a command sent in part leaves the connection out of step: what the server says next
/// may answer the command before. So does a call abandoned midway, its coroutine removed
/// while it waited or a panic caught around it (a [`DataReader`] or [`DataWriter`] the
/// unwind drops ends only its transfer, as any drop does: a download abandoned, an upload
/// aborted). The client then closes the connection, and every later call fails with
/// [`ErrorKind::Closed`]; connect again. A refusal (a complete reply with a failing code)
/// leaves the client usable.
///
/// ```no_run
/// use copas::client::ftp::Client;
///
/// # fn main() -> copas::Result<()> {
/// let mut ftp = Client::connect("127.0.0.1:2121", None)?;
/// ftp.login("user", "secret")?;
/// ftp.binary()?;
/// ftp.mkd("reports")?;
/// ftp.cwd("reports")?;
/// ftp.stor("q1.csv", &mut &b"a,b\n1,2\n"[..])?;
/// println!("{:?} in {}", ftp.nlst(None)?, ftp.pwd()?);
/// let mut out = Vec::new();
/// ftp.retr("q1.csv", &mut out)?;
/// ftp.dele("q1.csv")?;
/// ftp.quit()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Client {
    ctrl: Socket,
    peer: SocketAddr,
    timeout: Option<Duration>,
    epsv: bool,
    pending: Pending,
    greeting: Reply,
    /// A reply could not be read whole (a timeout, an over-long line, a malformed reply):
    /// what the server sends next may answer an earlier command, so the control connection
    /// was closed and every later command fails.
    out_of_step: bool,
    /// A reply is owed that nothing else accounts for: set before a command goes out (and
    /// while a transfer runs), cleared once its reply is read or handed to `pending`. Still
    /// set when the next command starts, it means the call before was abandoned midway —
    /// its coroutine removed, or a panic caught — and the connection is out of step.
    in_flight: bool,
    /// The final reply of the transfer under way, when the server sent it in place of the
    /// preliminary `1xx` (a transfer it had completed at once).
    early_final: Option<Reply>,
}

impl Client {
    /// Connects to an FTP server and reads its greeting (`220`). `timeout` applies to the
    /// connect and to every later send and receive, on the control and data connections
    /// (`None`: [`DEFAULT_TIMEOUT`]; use [`Client::set_timeout`] for no timeout).
    ///
    /// # Errors
    ///
    /// The connect's errors; [`ErrorKind::Rejected`] when the greeting is not `220` (a
    /// `421` from a full server); the reply reader's errors.
    pub fn connect(addr: impl crate::ToAddrs, timeout: Option<Duration>) -> Result<Client> {
        Client::connect_within(addr, timeout.or(Some(DEFAULT_TIMEOUT)))
    }

    /// [`Client::connect`] with `timeout` as it is: `None` waits for ever, also for the
    /// connect and the greeting.
    fn connect_within(addr: impl crate::ToAddrs, timeout: Option<Duration>) -> Result<Client> {
        let ctrl = crate::connect(addr, timeout)?;
        ctrl.settimeout(timeout);
        let mut ctrl = ctrl;
        let peer = ctrl.peer_addr()?;
        // 120 "ready in n minutes" comes before the 220.
        let mut reply = read_reply(&mut ctrl)?;
        if reply.code() == 120 {
            reply = read_reply(&mut ctrl)?;
        }
        let greeting = reply.expect(&[220])?;
        Ok(Client {
            ctrl,
            peer,
            timeout,
            epsv: true,
            pending: Pending::None,
            greeting,
            out_of_step: false,
            in_flight: false,
            early_final: None,
        })
    }

    /// Connects to the server of `url`, logs in (URL credentials, else those of `opts`, else
    /// anonymous) and selects the URL's transfer type (binary unless `;type=a`). Returns
    /// the client and the parsed URL.
    ///
    /// # Errors
    ///
    /// As [`Request::parse`], [`Client::connect`], [`Client::login`].
    pub fn open(url: &str, opts: &Options) -> Result<(Client, Request)> {
        let req = Request::parse(url)?;
        let port = req.port.unwrap_or(opts.port);
        let mut client = Client::connect_within((req.host.as_str(), port), opts.timeout)?;
        client.epsv = opts.epsv;
        let (user, password) = match (&req.user, &opts.user) {
            (Some(u), _) => (u.as_str(), req.password.as_deref().unwrap_or("")),
            (None, Some((u, p))) => (u.as_str(), p.as_str()),
            (None, None) => (ANONYMOUS_USER, ANONYMOUS_PASSWORD),
        };
        client.login(user, password)?;
        if req.ascii {
            client.ascii()?;
        } else {
            client.binary()?;
        }
        Ok((client, req))
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The control connection's peer: data connections go to its IP.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Changes the timeout of every later send and receive, and of data connects.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
        self.ctrl.settimeout(timeout);
    }

    /// Whether passive mode tries `EPSV` before `PASV` (default true; it turns false by
    /// itself once a server rejects `EPSV`). Over IPv6 `PASV` works with a server that
    /// answers it with an IPv4 address and listens for the data connection on its IPv6
    /// address too: only the port is used, with the control connection's IPv6 address (see
    /// [`pasv_target`]); a server that puts its IPv6 address in the reply gets a
    /// malformed-reply [`ErrorKind::Protocol`] error.
    pub fn set_epsv(&mut self, epsv: bool) {
        self.epsv = epsv;
    }

    fn read(&mut self) -> Result<Reply> {
        let reply = read_reply(&mut self.ctrl).inspect_err(|_| self.give_up())?;
        self.in_flight = false;
        Ok(reply)
    }

    /// Closes the control connection after a failure that leaves it out of step (LuaSocket
    /// closes its connection on any failure too).
    fn give_up(&mut self) {
        self.out_of_step = true;
        self.ctrl.close();
    }

    fn settle(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::None => Ok(()),
            Pending::Discard => {
                self.in_flight = true;
                self.read().map(drop)
            }
            Pending::Abort => self.settle_abort(),
        }
    }

    /// Reads what an aborted upload left owed, up to the answer of a `NOOP` sent as a
    /// marker. Servers differ in what they answer to `ABOR` (`426` and `226`, `225` alone,
    /// a single `226`, the transfer's reply after `ABOR`'s): counting replies would wait a
    /// whole receive timeout for one that never comes, or hand a late one to the next
    /// command. `NOOP`'s `200` is the first reply no abort gives (a server that answers
    /// `ABOR` itself with `200` would still put the client one reply out of step).
    fn settle_abort(&mut self) -> Result<()> {
        self.in_flight = true;
        self.ctrl
            .send(b"NOOP\r\n")
            .inspect_err(|_| self.give_up())?;
        // The transfer's reply, `ABOR`'s, and `NOOP`'s, with one to spare.
        for _ in 0..4 {
            if self.read()?.code() == 200 {
                return Ok(());
            }
            self.in_flight = true;
        }
        self.give_up();
        Err(protocol(
            "FTP replies after an aborted upload did not end with NOOP's 200".to_string(),
        ))
    }

    fn send_line(&mut self, cmd: &str, arg: Option<&str>) -> Result<()> {
        check_text("command", cmd)?;
        if cmd.is_empty() || cmd.contains(' ') {
            return Err(invalid_input(format!("bad command name {cmd:?}")));
        }
        if let Some(arg) = arg {
            check_text("argument", arg)?;
        }
        if self.in_flight && !self.out_of_step {
            // Nothing reads a reply that arrives after its reader is gone.
            self.give_up();
        }
        if self.out_of_step {
            return Err(Error::with_message(
                ErrorKind::Closed,
                "FTP control connection closed after a reply could not be read",
            ));
        }
        self.settle()?;
        let line = match arg {
            Some(arg) => format!("{cmd} {arg}\r\n"),
            None => format!("{cmd}\r\n"),
        };
        self.in_flight = true;
        // A command ends any transfer whose completion came early.
        self.early_final = None;
        // A line sent in part leaves the server waiting for its end.
        self.ctrl
            .send(line.as_bytes())
            .inspect_err(|_| self.give_up())?;
        Ok(())
    }

    /// Sends `cmd` (with `arg`, if any) and returns the server's reply, whatever its code
    /// (Copas `ftp.command`). Use it for commands without a method here (`SITE`, `SIZE`,
    /// `RNFR`/`RNTO`, `FEAT`…).
    ///
    /// # Errors
    ///
    /// An [`ErrorKind::InvalidInput`] error when `cmd` or `arg` contains CR,
    /// LF or NUL (or `cmd` is empty or has a space), before anything is sent; the socket's
    /// and the reply reader's errors.
    pub fn command(&mut self, cmd: &str, arg: Option<&str>) -> Result<Reply> {
        self.send_line(cmd, arg)?;
        self.read()
    }

    /// [`Client::command`], with a reply of class 2 (completion) required.
    fn ok(&mut self, cmd: &str, arg: Option<&str>) -> Result<Reply> {
        self.command(cmd, arg)?.expect_class(2)
    }

    /// Logs in: `USER`, then `PASS` when asked for (`331`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the server's reply (`530` for a wrong password or a
    /// refused anonymous login); an account request (`332`) is rejected too.
    pub fn login(&mut self, user: &str, password: &str) -> Result<Reply> {
        let reply = self.command("USER", Some(user))?;
        match reply.code() {
            230 | 202 => Ok(reply),
            331 => self.command("PASS", Some(password))?.expect(&[230, 202]),
            _ => Err(reply.to_error()),
        }
    }

    /// Changes the working directory (`CWD`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply (`550` for a missing directory).
    pub fn cwd(&mut self, dir: &str) -> Result<Reply> {
        self.ok("CWD", Some(dir))
    }

    /// The working directory (`PWD`), from the quoted path of its `257` reply.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply; [`ErrorKind::Protocol`] when it has no quoted
    /// path.
    pub fn pwd(&mut self) -> Result<String> {
        let reply = self.command("PWD", None)?.expect(&[257])?;
        parse_quoted(&reply.text())
            .ok_or_else(|| protocol(format!("no quoted path in PWD reply {:?}", reply.text())))
    }

    /// Creates a directory (`MKD`); returns the reply.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply (`550` when it exists or is not allowed).
    pub fn mkd(&mut self, dir: &str) -> Result<Reply> {
        self.ok("MKD", Some(dir))
    }

    /// Removes a directory (`RMD`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply.
    pub fn rmd(&mut self, dir: &str) -> Result<Reply> {
        self.ok("RMD", Some(dir))
    }

    /// Deletes a file (`DELE`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply (`550` for a missing file).
    pub fn dele(&mut self, path: &str) -> Result<Reply> {
        self.ok("DELE", Some(path))
    }

    /// The size of a file in bytes (`SIZE`, RFC 3659).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply; [`ErrorKind::Protocol`] when it is no number.
    pub fn size(&mut self, path: &str) -> Result<u64> {
        let reply = self.command("SIZE", Some(path))?.expect(&[213])?;
        reply
            .text()
            .trim()
            .parse()
            .map_err(|_| protocol(format!("bad SIZE reply {:?}", reply.text())))
    }

    /// Binary transfers from now on (`TYPE I`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply.
    pub fn binary(&mut self) -> Result<Reply> {
        self.ok("TYPE", Some("I"))
    }

    /// ASCII transfers from now on (`TYPE A`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply.
    pub fn ascii(&mut self) -> Result<Reply> {
        self.ok("TYPE", Some("A"))
    }

    /// Ends the session (`QUIT`, `221`) and closes the connection.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply; the socket's errors.
    pub fn quit(mut self) -> Result<Reply> {
        let result = self.command("QUIT", None).and_then(|r| r.expect(&[221]));
        self.ctrl.close();
        result
    }

    /// `QUIT` at the end of a one-call function, whose work is done: sent, and its reply
    /// waited for, a second at most each, not a whole timeout (as SMTP's goodbye); the reply
    /// is not needed.
    fn goodbye(self) {
        self.ctrl.settimeout(Some(Duration::from_secs(1)));
        let _ = self.quit();
    }

    /// Opens a passive data connection: `EPSV`, else `PASV`.
    fn passive(&mut self) -> Result<Socket> {
        let target = if self.epsv {
            let reply = self.command("EPSV", None)?;
            match reply.code() {
                229 => {
                    let port = parse_epsv(&reply.text()).ok_or_else(|| {
                        protocol(format!("malformed EPSV reply: {:?}", reply.text()))
                    })?;
                    Some(SocketAddr::new(self.peer.ip(), port))
                }
                // Not understood or not implemented: fall back to PASV from now on.
                500 | 501 | 502 | 504 | 522 => {
                    self.epsv = false;
                    None
                }
                _ => return Err(reply.to_error()),
            }
        } else {
            None
        };
        let target = match target {
            Some(t) => t,
            None => {
                let reply = self.command("PASV", None)?.expect(&[227])?;
                pasv_target(&reply.text(), self.peer.ip())?
            }
        };
        let data = crate::connect(target, self.timeout)?;
        data.settimeout(self.timeout);
        Ok(data)
    }

    /// Opens a data connection and starts `cmd`; on success the server has answered with a
    /// preliminary `1xx` and the data connection is ready, or with a completion `2xx` at
    /// once (kept for `finish_transfer`: the data connection still holds what it sent).
    fn start_transfer(&mut self, cmd: &str, arg: Option<&str>) -> Result<Socket> {
        // Check before PASV so a bad argument sends nothing at all.
        check_text("command", cmd)?;
        if let Some(arg) = arg {
            check_text("argument", arg)?;
        }
        let data = self.passive()?;
        let reply = self.command(cmd, arg)?;
        match reply.class() {
            1 => {
                // The final reply is owed until `finish_transfer` or `abandon`.
                self.in_flight = true;
                Ok(data)
            }
            // LuaSocket takes a completion in place of the 1xx as success too.
            2 => {
                self.early_final = Some(reply);
                Ok(data)
            }
            _ => {
                data.close();
                Err(reply.to_error())
            }
        }
    }

    /// Reads the final reply of a transfer (`226` or `250`).
    fn finish_transfer(&mut self) -> Result<Reply> {
        match self.early_final.take() {
            Some(reply) => Ok(reply),
            None => self.read()?.expect_class(2),
        }
    }

    /// After a failed download: close the data connection and expect a final reply later.
    /// The close is what the server sees, as a failed send (`426`).
    fn abandon(&mut self, data: &Socket) {
        data.close();
        if self.early_final.take().is_none() {
            self.pending = Pending::Discard;
        }
        self.in_flight = false;
    }

    /// After a failed upload: `ABOR`, reset the data connection, and read what the server
    /// answers to both before the next command ([`Client::settle_abort`]). In stream mode a
    /// normal close marks the end of the file: the server would keep the part sent as the
    /// whole and answer `226`. The reset says the transfer failed to a server that reads it
    /// as a failure. `ABOR` tells one that takes a reset for an end of file too
    /// (pyftpdlib), which must act on it before it sees the reset: so the reset waits for
    /// the server's first answer, up to [`ABORT_WAIT`] (a server that reads no command
    /// during a transfer answers only once the reset has ended it).
    fn abort_upload(&mut self, data: &Socket) {
        // Set first: if the wait below is cut short by an unwind (the coroutine removed),
        // the close that comes with dropping the data connection is a reset too.
        // It fails only on a socket closed already, which has nothing left to reset.
        let _ = data.set_linger(Some(Duration::ZERO));
        self.early_final = None;
        let (connect, send, receive) = self.ctrl.gettimeouts();
        // Between commands nothing else is queued on the control connection: the line goes
        // out at once, or the connection is broken.
        self.ctrl
            .settimeouts(connect, Some(Duration::ZERO), receive);
        let sent = self.ctrl.send(b"ABOR\r\n");
        if sent.is_ok() {
            let wait = receive.map_or(ABORT_WAIT, |r| r.min(ABORT_WAIT));
            self.ctrl.settimeouts(connect, send, Some(wait));
            // The answer stays buffered for `settle`; a timeout or a failure here is left
            // for it to meet.
            let _ = self.ctrl.fill_buf();
        }
        self.ctrl.settimeouts(connect, send, receive);
        data.close();
        self.in_flight = false;
        match sent {
            Ok(_) => self.pending = Pending::Abort,
            // A line sent in part (or not at all) leaves the server out of step.
            Err(_) => self.give_up(),
        }
    }

    /// After an upload's data connection failed with `err`. A server that stops an upload
    /// (`426`, `451`, `552`: its disk is full, the file too large) closes the data
    /// connection and says why on the control connection; that refusal is the error to
    /// report, not the reset the sender saw. Any other failure (a timeout: the server may
    /// still be reading) aborts the upload.
    fn upload_failed(&mut self, data: &Socket, err: Error) -> Error {
        // `Closed` with a system error is the peer's doing (a local close has none).
        let reset = err.kind() == ErrorKind::Closed && err.io_error().is_some();
        if !reset {
            self.abort_upload(data);
            return err;
        }
        data.close();
        match self.finish_transfer() {
            Err(refusal) if refusal.kind() == ErrorKind::Rejected => refusal,
            // A completion, or no reply: the reset is all there is to say.
            _ => err,
        }
    }

    /// Downloads `path` (`RETR`) into `out`; returns the number of bytes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply (`550` for a missing file); the data
    /// connection's errors; `out`'s errors (as [`ErrorKind::Io`]).
    pub fn retr(&mut self, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.retr_at_most(path, out, u64::MAX)
    }

    /// [`Client::retr`], failing with [`ErrorKind::LimitExceeded`] past `max` bytes.
    fn retr_at_most(&mut self, path: &str, out: &mut dyn Write, max: u64) -> Result<u64> {
        let mut data = self.start_transfer("RETR", Some(path))?;
        match copy_from_socket(&mut data, out, max) {
            Ok(n) => {
                data.close();
                self.finish_transfer()?;
                Ok(n)
            }
            Err(e) => {
                self.abandon(&data);
                Err(e)
            }
        }
    }

    /// Uploads everything `input` yields to `path` (`STOR`); returns the number of bytes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the reply (`550` when writing is not allowed; `426`,
    /// `451` or `552` when the server stops the upload midway, closing the data connection:
    /// its final reply is reported, not the reset); the data connection's errors; `input`'s
    /// errors (as [`ErrorKind::Io`]).
    pub fn stor(&mut self, path: &str, input: &mut dyn Read) -> Result<u64> {
        // Dropped unfinished (the input failed, or an unwind: the coroutine removed, a
        // panicking source), the writer aborts the upload.
        let mut upload = self.stor_writer(path)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(super::callers_io_error(e, "reading the input")),
            };
            if let Err(e) = upload.data.send(&buf[..n]) {
                upload.finished = true;
                return Err(upload.client.upload_failed(&upload.data, e));
            }
            upload.written += n as u64;
        }
        upload.finish()
    }

    fn listing(&mut self, cmd: &str, path: Option<&str>) -> Result<Vec<String>> {
        let mut data = self.start_transfer(cmd, path)?;
        let mut raw = Vec::new();
        match copy_from_socket(&mut data, &mut raw, MAX_LISTING as u64) {
            Ok(_) => {
                data.close();
                self.finish_transfer()?;
            }
            Err(e) => {
                self.abandon(&data);
                return Err(e);
            }
        }
        // Room for the entries there are, up to what the limit lets through: no doubling
        // past it.
        let lines = raw.iter().filter(|&&b| b == b'\n').count() + 1;
        let mut entries =
            Vec::with_capacity(lines.min(MAX_LISTING / std::mem::size_of::<String>()));
        let mut held = 0usize;
        for line in raw.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            held += std::mem::size_of::<String>() + line.len();
            if held > MAX_LISTING {
                return Err(Error::with_message(
                    ErrorKind::LimitExceeded,
                    format!("{cmd} listing whose entries take more than {MAX_LISTING} bytes"),
                ));
            }
            entries.push(String::from_utf8_lossy(line).into_owned());
        }
        Ok(entries)
    }

    /// The names in a directory (`NLST`; the working directory when `path` is `None`).
    ///
    /// # Errors
    ///
    /// As [`Client::retr`]; [`ErrorKind::LimitExceeded`] beyond [`MAX_LISTING`] bytes.
    pub fn nlst(&mut self, path: Option<&str>) -> Result<Vec<String>> {
        self.listing("NLST", path)
    }

    /// The server's long listing of a directory (`LIST`), one line per entry, in the
    /// server's format (usually `ls -l`'s).
    ///
    /// # Errors
    ///
    /// As [`Client::nlst`].
    pub fn list(&mut self, path: Option<&str>) -> Result<Vec<String>> {
        self.listing("LIST", path)
    }

    /// Starts downloading `path` and returns a [`Read`] over the data (a download of any
    /// size in bounded memory). Call [`DataReader::finish`] after the end to check the
    /// server's final reply.
    ///
    /// # Errors
    ///
    /// As [`Client::retr`].
    pub fn retr_reader(&mut self, path: &str) -> Result<DataReader<'_>> {
        let data = self.start_transfer("RETR", Some(path))?;
        Ok(DataReader {
            client: self,
            data,
            eof: false,
            finished: false,
        })
    }

    /// Starts uploading to `path` and returns a [`Write`] for the data. Call
    /// [`DataWriter::finish`] to end the upload and check the server's final reply.
    ///
    /// # Errors
    ///
    /// As [`Client::stor`].
    pub fn stor_writer(&mut self, path: &str) -> Result<DataWriter<'_>> {
        let data = self.start_transfer("STOR", Some(path))?;
        Ok(DataWriter {
            client: self,
            data,
            written: 0,
            finished: false,
        })
    }
}

/// Copies a data connection into `out` until the server closes it; at most `max` bytes.
fn copy_from_socket(data: &mut Socket, out: &mut dyn Write, max: u64) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let chunk = data.receivepartial(CHUNK)?;
        if chunk.is_empty() {
            return Ok(total);
        }
        total += chunk.len() as u64;
        if total > max {
            return Err(Error::with_message(
                ErrorKind::LimitExceeded,
                format!("data longer than {max} bytes"),
            ));
        }
        out.write_all(&chunk)
            .map_err(|e| super::callers_io_error(e, "writing the data to its destination"))?;
    }
}

/// The text between the first pair of double quotes, with `""` as a quote (RFC 959 257).
fn parse_quoted(text: &str) -> Option<String> {
    let start = text.find('"')? + 1;
    let mut out = String::new();
    let mut chars = text[start..].chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            if chars.peek() == Some(&'"') {
                chars.next();
                out.push('"');
            } else {
                return Some(out);
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// A download in progress ([`Client::retr_reader`]): reads the file's bytes.
///
/// Dropping it before [`DataReader::finish`] abandons the transfer; the client stays usable.
#[derive(Debug)]
pub struct DataReader<'a> {
    client: &'a mut Client,
    data: Socket,
    eof: bool,
    finished: bool,
}

impl Read for DataReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.eof || out.is_empty() {
            return Ok(0);
        }
        let n = self.data.read(out)?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }
}

impl DataReader<'_> {
    /// Ends the download and returns the server's final reply. If not all data was read,
    /// the rest is discarded (the data connection is closed), and the reply says how the
    /// server saw it: a `426` (an error, below) when the close cut its sending short, a
    /// `226` when it had sent everything already. Read to the end (a read of 0) to know
    /// the data is whole.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with a final reply that is not a completion (`426` for an
    /// aborted transfer); the reply reader's errors.
    pub fn finish(mut self) -> Result<Reply> {
        self.finished = true;
        self.data.close();
        self.client.finish_transfer()
    }
}

impl Drop for DataReader<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.client.abandon(&self.data);
        }
    }
}

/// An upload in progress ([`Client::stor_writer`]): writes go to the file.
///
/// Dropping it before [`DataWriter::finish`] aborts the upload (`ABOR`, and the data
/// connection reset rather than closed, so that the server does not take what was written
/// for the whole file); the drop waits up to [`ABORT_WAIT`] for the server's answer. The
/// client stays usable.
#[derive(Debug)]
pub struct DataWriter<'a> {
    client: &'a mut Client,
    data: Socket,
    written: u64,
    finished: bool,
}

impl Write for DataWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.data.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl DataWriter<'_> {
    /// Ends the upload (closes the data connection) and checks the server's final reply;
    /// returns the number of bytes written. After a write failed because the server closed
    /// the data connection, `finish` is still the way to learn why (its final reply, say
    /// `552`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with a final reply that is not a completion; the reply
    /// reader's errors.
    pub fn finish(mut self) -> Result<u64> {
        self.finished = true;
        self.data.close();
        self.client.finish_transfer()?;
        Ok(self.written)
    }
}

impl Drop for DataWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.client.abort_upload(&self.data);
        }
    }
}

// ----- one-call functions --------------------------------------------------------------------

/// Downloads an `ftp://` URL (Copas `ftp.get(url)`).
///
/// ```no_run
/// let readme = copas::client::ftp::get("ftp://127.0.0.1:2121/README").unwrap();
/// println!("{} bytes", readme.len());
/// ```
///
/// # Errors
///
/// As [`get_to`]; [`ErrorKind::LimitExceeded`] for a file longer than [`MAX_GET_BYTES`].
pub fn get(url: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    get_at_most(url, &Options::default(), &mut out, MAX_GET_BYTES)?;
    Ok(out)
}

/// Downloads an `ftp://` URL into any [`Write`] (Copas's `ftp.get{url=…, sink=…}`); returns
/// the number of bytes.
///
/// ```no_run
/// use copas::client::ftp::{self, Options};
///
/// let mut file = std::fs::File::create("big.iso").unwrap();
/// let n = ftp::get_to("ftp://127.0.0.1:2121/big.iso", &Options::new(), &mut file).unwrap();
/// println!("{n} bytes");
/// ```
///
/// # Errors
///
/// As [`Request::parse`], [`Client::open`] and [`Client::retr`]; an empty path is an
/// [`ErrorKind::InvalidInput`] error, before connecting.
pub fn get_to(url: &str, opts: &Options, out: &mut dyn Write) -> Result<u64> {
    get_at_most(url, opts, out, u64::MAX)
}

fn get_at_most(url: &str, opts: &Options, out: &mut dyn Write, max: u64) -> Result<u64> {
    if Request::parse(url)?.path.is_empty() {
        return Err(invalid_input("no file in the URL"));
    }
    let (mut client, req) = Client::open(url, opts)?;
    let n = client.retr_at_most(&req.path, out, max)?;
    client.goodbye();
    Ok(n)
}

/// Uploads `data` to an `ftp://` URL (Copas `ftp.put(url, content)`).
///
/// ```no_run
/// copas::client::ftp::put("ftp://user:secret@127.0.0.1:2121/note.txt", b"hi").unwrap();
/// ```
///
/// # Errors
///
/// As [`put_from`].
pub fn put(url: &str, data: &[u8]) -> Result<()> {
    put_from(url, &Options::default(), &mut &data[..]).map(|_| ())
}

/// Uploads everything `input` yields to an `ftp://` URL (Copas's
/// `ftp.put{url=…, source=…}`); returns the number of bytes.
///
/// ```no_run
/// use copas::client::ftp::{self, Options};
///
/// let mut file = std::fs::File::open("backup.tar").unwrap();
/// let opts = Options::new().user("user", "secret");
/// ftp::put_from("ftp://127.0.0.1:2121/backup.tar", &opts, &mut file).unwrap();
/// ```
///
/// # Errors
///
/// As [`Request::parse`], [`Client::open`] and [`Client::stor`]; an empty path is an
/// [`ErrorKind::InvalidInput`] error, before connecting.
pub fn put_from(url: &str, opts: &Options, input: &mut dyn Read) -> Result<u64> {
    if Request::parse(url)?.path.is_empty() {
        return Err(invalid_input("no file in the URL"));
    }
    let (mut client, req) = Client::open(url, opts)?;
    let n = client.stor(&req.path, input)?;
    client.goodbye();
    Ok(n)
}

/// The names in the directory an `ftp://` URL names (`NLST`; the login directory for
/// `ftp://host/`).
///
/// ```no_run
/// for name in copas::client::ftp::list("ftp://127.0.0.1:2121/pub/").unwrap() {
///     println!("{name}");
/// }
/// ```
///
/// # Errors
///
/// As [`Client::open`] and [`Client::nlst`].
pub fn list(url: &str) -> Result<Vec<String>> {
    let (mut client, req) = Client::open(url, &Options::default())?;
    let path = req.path.trim_end_matches('/');
    let names = client.nlst(if path.is_empty() { None } else { Some(path) })?;
    client.goodbye();
    Ok(names)
}

/// Logs in to the server of an `ftp://` URL, sends one command and returns its reply,
/// whatever its code (Copas `ftp.command{url=…, command=…, argument=…}`).
///
/// ```no_run
/// use copas::client::ftp::{self, Options};
///
/// let reply = ftp::command("ftp://127.0.0.1:2121/", &Options::new(), "SYST", None).unwrap();
/// println!("{} {}", reply.code(), reply.text());
/// ```
///
/// # Errors
///
/// As [`Client::open`] and [`Client::command`].
pub fn command(url: &str, opts: &Options, cmd: &str, arg: Option<&str>) -> Result<Reply> {
    let (mut client, _) = Client::open(url, opts)?;
    let reply = client.command(cmd, arg)?;
    client.goodbye();
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_written_in_the_url_is_kept_even_when_it_is_the_default() {
        let port = |url: &str| Request::parse(url).map(|r| r.port).unwrap();
        assert_eq!(port("ftp://127.0.0.1:21/x"), Some(21));
        assert_eq!(port("ftp://user:p%40ss@127.0.0.1:021/x"), Some(21));
        assert_eq!(port("ftp://[::1]:21/x"), Some(21));
        assert_eq!(port(" FTP://host:21?q"), Some(21));
        assert_eq!(port("ftp://host:2121/x"), Some(2121));
        assert_eq!(port("ftp://host/x"), None);
        assert_eq!(port("ftp://host:/x"), None);
        assert_eq!(port("ftp://[::1]/x:21"), None);
        assert_eq!(port("ftp://us:er@host/x"), None);
    }

    #[test]
    fn pasv_parsing_is_robust() {
        let ip = Ipv4Addr::new(127, 0, 0, 1);
        assert_eq!(
            parse_pasv("Entering Passive Mode (127,0,0,1,4,1)"),
            Some((ip, 1025))
        );
        assert_eq!(
            parse_pasv("Entering Passive Mode 127,0,0,1,4,1"),
            Some((ip, 1025))
        );
        assert_eq!(parse_pasv("=127,0,0,1,255,255"), Some((ip, 65535)));
        // Other digits before the six numbers do not confuse it.
        assert_eq!(parse_pasv("227 ok 1999 (127,0,0,1,4,1)"), Some((ip, 1025)));
        for bad in [
            "",
            "(",
            "()",
            "(127,0,0,1,4)",
            "(127,0,0,1,4,1,9)",
            "(127,0,0,1,4,)",
            "(256,0,0,1,4,1)",
            "(127,0,0,1,4,1000)",
            "(127,0,0,1,0004,1)",
            "(127,0,0,1,0,0)",
            "(-1,0,0,1,4,1)",
            ",,,,,",
            "99999999999999999999,1,1,1,1,1",
            "(é,0,0,1,4,1)",
        ] {
            assert_eq!(parse_pasv(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pasv_connects_to_the_control_peer_whatever_address_it_names() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        for named in ["127,0,0,1", "0,0,0,0", "192,168,1,20", "10,0,0,5"] {
            assert_eq!(
                pasv_target(&format!("({named},4,1)"), peer).unwrap(),
                "127.0.0.1:1025".parse().unwrap(),
                "{named}"
            );
        }
        let err = pasv_target("garbage", peer).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        for v6 in ["::ffff:127.0.0.1", "::1"] {
            let v6: IpAddr = v6.parse().unwrap();
            assert_eq!(
                pasv_target("(127,0,0,1,4,1)", v6).unwrap(),
                SocketAddr::new(v6, 1025)
            );
        }
    }

    #[test]
    fn epsv_parsing_is_robust() {
        assert_eq!(
            parse_epsv("Entering Extended Passive Mode (|||6446|)"),
            Some(6446)
        );
        assert_eq!(parse_epsv("(|||65535|)"), Some(65535));
        assert_eq!(parse_epsv("(###1#)"), Some(1));
        for bad in [
            "",
            "(",
            "(|||",
            "()",
            "(|||6446)",
            "(||6446|)",
            "(|||6446|",
            "(|||65536|)",
            "(|||0|)",
            "(|||-1|)",
            "(|||12a|)",
            "(||||)",
            "(|#|6446|)",
            "(1116461)",
            "(   6446 )",
            "(|||999999999999999999|)",
            "(ééé6446é)",
            ")(|||21|",
        ] {
            assert_eq!(parse_epsv(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes() {
        // A small deterministic fuzz over short strings of the interesting characters.
        let alphabet = ['(', ')', '|', ',', '0', '1', '9', '2', '5', ' ', 'é', '#'];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((seed >> (i % 60)) as usize + i * 7) % alphabet.len()])
                .collect();
            let _ = parse_pasv(&s);
            let _ = parse_epsv(&s);
            let _ = parse_quoted(&s);
            if let Some(port) = parse_epsv(&s) {
                assert_ne!(port, 0);
            }
        }
    }

    #[test]
    fn urls_are_parsed_and_decoded() {
        let r = Request::parse("FTP://a%3Ab:c%2Fd@[::1]/x/y%20z;type=a").unwrap();
        assert_eq!(r.host, "::1");
        assert_eq!(r.port, None);
        assert_eq!(r.user.as_deref(), Some("a:b"));
        assert_eq!(r.password.as_deref(), Some("c/d"));
        assert_eq!(r.path, "x/y z");
        assert!(r.ascii);
        let r = Request::parse("ftp://host").unwrap();
        assert_eq!((r.path.as_str(), r.user.clone()), ("", None));
        for bad in [
            "http://host/x",
            "ftp://",
            "ftp://host/a%0D%0ADELE%20b",
            "ftp://u%0A:p@host/x",
            "ftp://host/x;type=z",
            "ftp://host/%ff",
            "not a url",
        ] {
            let err = Request::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
        assert_eq!(percent_decode("%4").unwrap(), "%4");
        assert_eq!(percent_decode("%").unwrap(), "%");
        assert_eq!(percent_decode("a%41").unwrap(), "aA");
        assert_eq!(percent_decode("%zz").unwrap(), "%zz");
    }

    #[test]
    fn pwd_replies_are_unquoted() {
        assert_eq!(
            parse_quoted("\"/a \"\"b\"\"\" is the current directory").as_deref(),
            Some("/a \"b\"")
        );
        assert_eq!(parse_quoted("no quotes"), None);
        assert_eq!(parse_quoted("\"open"), None);
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(check_text("path", "a\r\nDELE b").is_err());
        assert!(check_text("path", "a\0").is_err());
        assert!(check_text("path", "a b/c").is_ok());
    }
}
