//! TLS over `native-tls`, non-blocking end to end.
//!
//! A TLS [`Socket`] is the same `Socket` with a [`TlsLayer`] in its connection: a
//! `native_tls::TlsStream` over [`FdIo`], an adapter that implements `Read`/`Write` on the
//! non-blocking descriptor and records which direction blocked. When the TLS layer returns
//! `WouldBlock` the operation waits for exactly that direction: a read may have to wait for
//! writability (the TLS layer has a record to flush first) and a write or a handshake for
//! readability. It never spins and never waits for the wrong direction.
//!
//! Readiness: the adapter honours the socket's readiness bits at the level of the kernel
//! (it does not call `recv` on a socket known to be drained, and a short `recv` marks it
//! drained where the poller reports a FIN on its own, see `IoSource::recv`), but the TLS
//! read path never skips the TLS layer because of those bits: it may hold decrypted bytes,
//! or raw bytes in the adapter's buffer, that need no system call. So every TLS read calls
//! the TLS layer first and waits only when it says `WouldBlock`.
//!
//! The adapter reads the kernel in chunks of up to [`RAW_BUFFER`] bytes (OpenSSL without
//! read-ahead would ask for a 5-byte record header, then the body: two `recv`s per record).
//!
//! Limits of `native-tls`: a server cannot pick its certificate by the SNI name the client
//! sent, nor demand a client certificate. A client sends SNI and may present an identity
//! (`TlsConnectorBuilder::identity`).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use native_tls::{HandshakeError, TlsAcceptor, TlsConnector, TlsStream};

use crate::dispatcher::IoSource;
use crate::error::{Error, ErrorKind, Result};
use crate::net::read_buffers;
use crate::net::socket::{Connection, Socket};

/// How long [`handler`] waits for a client's TLS handshake when the server gave its
/// connections no timeout (see [`ServerOptions::timeout`](crate::ServerOptions::timeout)):
/// 30 s. A client that stalls its handshake must not hold a coroutine forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Size of the adapter's buffer for raw (encrypted) bytes.
const RAW_BUFFER: usize = read_buffers::RAW_LEN;

/// `Read`/`Write` over the connection's non-blocking descriptor, for `native-tls`.
///
/// It never waits: where the descriptor would block it returns `WouldBlock` and remembers
/// the direction in `blocked`, which the caller reads right after the TLS call (nothing
/// runs in between, so the record is that call's).
pub(crate) struct FdIo {
    io: Rc<IoSource>,
    /// Raw bytes read from the kernel that the TLS layer has not taken yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The direction of the last `WouldBlock`: `Some(true)` for writing.
    blocked: Option<bool>,
    /// The kernel reported end of stream.
    eof: bool,
    /// The handshake is still running: an end of stream now is an error for OpenSSL (see
    /// `peer_gone`), since it cannot be the end of a conversation that never began; not
    /// after bytes that are not TLS, whose failure is OpenSSL's to report (`Tls`).
    handshaking: bool,
    /// Where the bytes handed to the TLS layer stand in the record framing: whether an end
    /// of stream came between records or in the middle of one, which OpenSSL does not tell
    /// apart from a clean end here (both are a read of 0).
    framing: Framing,
}

impl fmt::Debug for FdIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdIo")
            .field("buffered", &(self.end - self.start))
            .field("blocked", &self.blocked)
            .field("eof", &self.eof)
            .finish()
    }
}

impl FdIo {
    /// An adapter whose first bytes are `prefill` (bytes already read from the kernel by
    /// the plain socket, e.g. a ClientHello that came right behind a STARTTLS command).
    fn new(io: Rc<IoSource>, prefill: Vec<u8>) -> FdIo {
        let end = prefill.len();
        FdIo {
            io,
            buf: prefill,
            start: 0,
            end,
            blocked: None,
            eof: false,
            handshaking: true,
            framing: Framing::default(),
        }
    }

    /// Which direction the last `WouldBlock` was for (true: writing); resets the record.
    fn take_blocked(&mut self) -> bool {
        let blocked = self.blocked.take();
        debug_assert!(blocked.is_some(), "WouldBlock not from the adapter");
        blocked.unwrap_or(false)
    }

    fn would_block(&mut self, write: bool) -> io::Error {
        self.blocked = Some(write);
        io::Error::from(io::ErrorKind::WouldBlock)
    }

    fn copy_buffered(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.end - self.start);
        dst[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        self.framing.pass(&dst[..n]);
        n
    }

    /// The kernel reported end of stream in the middle of a record.
    fn truncated(&self) -> bool {
        self.eof && !self.framing.between_records()
    }
}

/// Follows the TLS record framing of a byte stream: each record is a 5-byte header whose
/// last two bytes give the length of the body that follows. The first record may instead be
/// an SSL 2.0-style ClientHello (a 2-byte header, its top bit set, then the body), which a
/// server still accepts from old clients.
#[derive(Debug, Default, Clone, Copy)]
struct Framing {
    /// Header bytes seen of the record under way; 0 between records and in a body.
    header: u8,
    /// The header's length field, as far as seen.
    length: u16,
    /// Body bytes still to come.
    body: usize,
    /// At least one byte has been seen.
    started: bool,
    /// The first record has an SSL 2.0 header.
    sslv2: bool,
    /// A record header was seen that no TLS peer sends (a content type outside 20–24, a
    /// major version other than 3): the peer does not speak TLS.
    foreign: bool,
}

impl Framing {
    fn pass(&mut self, mut bytes: &[u8]) {
        while let Some((&byte, rest)) = bytes.split_first() {
            if self.body > 0 {
                let n = self.body.min(bytes.len());
                self.body -= n;
                bytes = &bytes[n..];
                continue;
            }
            bytes = rest;
            if !self.started {
                self.started = true;
                self.sslv2 = byte & 0x80 != 0;
            }
            let header_len = if self.sslv2 { 2 } else { 5 };
            if !self.sslv2 {
                match self.header {
                    0 => self.foreign |= !(20..=24).contains(&byte),
                    1 => self.foreign |= byte != 3,
                    _ => {}
                }
            }
            match (self.sslv2, self.header) {
                (true, 0) => self.length = u16::from(byte & 0x7f) << 8,
                (false, 3) => self.length = u16::from(byte) << 8,
                (_, n) if n == header_len - 1 => self.length |= u16::from(byte),
                _ => {}
            }
            self.header += 1;
            if self.header == header_len {
                self.header = 0;
                self.body = usize::from(self.length);
                self.sslv2 = false;
            }
        }
    }

    fn between_records(&self) -> bool {
        self.header == 0 && self.body == 0
    }
}

impl Read for FdIo {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        if self.start < self.end {
            return Ok(self.copy_buffered(dst));
        }
        let io = self.io.clone();
        if !io.readable.get() && !io.read_closed() {
            // Known to be drained: no system call just to hear EAGAIN.
            return Err(self.would_block(false));
        }
        let direct = dst.len() >= RAW_BUFFER;
        if !direct && self.buf.len() < RAW_BUFFER {
            if self.buf.is_empty() {
                self.buf = read_buffers::take_raw();
            } else {
                self.buf.resize(RAW_BUFFER, 0);
            }
        }
        let target: &mut [u8] = if direct { &mut *dst } else { &mut self.buf };
        match io.recv_into(target) {
            Ok(0) => {
                self.eof = true;
                if self.handshaking && !self.framing.foreign {
                    // Reported as a plain socket reports it, not as a TLS failure: OpenSSL
                    // passes the adapter's own error through.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection during the TLS handshake",
                    ));
                }
                Ok(0)
            }
            Ok(n) if direct => {
                self.framing.pass(&dst[..n]);
                Ok(n)
            }
            Ok(n) => {
                self.start = 0;
                self.end = n;
                Ok(self.copy_buffered(dst))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(self.would_block(false)),
            Err(e) => Err(e),
        }
    }
}

impl Write for FdIo {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let io = self.io.clone();
        if !io.writable.get() {
            return Err(self.would_block(true));
        }
        match io.send(data) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(self.would_block(true)),
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The TLS session of a connection, shared by all its handles.
///
/// The stream is borrowed only for the length of one non-blocking TLS call, never across a
/// wait, so several coroutines may read and write one TLS connection.
pub(crate) struct TlsLayer {
    stream: RefCell<TlsStream<FdIo>>,
    /// A `close_notify` went out (`shutdown` of the writing side, or `close`): OpenSSL
    /// refuses every write from then on, as the kernel does after a plain shutdown.
    write_shut: Cell<bool>,
}

impl fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsLayer").finish_non_exhaustive()
    }
}

impl TlsLayer {
    /// Reads at least one byte into `dst` (or 0 at end of stream), waiting if needed (the
    /// TLS counterpart of `Connection::read_waiting`).
    ///
    /// End of stream is the peer's `close_notify`, or (as LuaSec and `native-tls` have it) a
    /// TCP close without one between records: a protocol that delimits its data by closing
    /// the connection cannot tell that from a truncation. A close in the middle of a record
    /// is an error.
    pub(crate) fn read_waiting(
        &self,
        conn: &Connection,
        dst: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<usize> {
        // The last `SSL_read` blocked writing (a handshake message or key update it owes the
        // peer): the next must be made once the socket takes bytes, input or not.
        let mut flush_pending = false;
        loop {
            if conn.io.is_closed() {
                return Err(Error::new(ErrorKind::Closed));
            }
            if conn.eof.get() {
                return Ok(0);
            }
            if !flush_pending && !dst.is_empty() && self.drained(conn) {
                // `SSL_read` could only answer "want read", and OpenSSL reports that through
                // its error queue: about 1,600 instructions per message of a TLS echo.
                conn.wait(false, deadline)?;
                continue;
            }
            let (result, write, eof, truncated) = {
                let mut stream = self.stream.borrow_mut();
                let result = stream.read(dst);
                let adapter = stream.get_mut();
                (
                    result,
                    adapter.blocked.take(),
                    adapter.eof,
                    adapter.truncated(),
                )
            };
            match result {
                Ok(0) if truncated && !dst.is_empty() => {
                    // OpenSSL reports a TCP close in the middle of a record as a clean end
                    // when the stream is not its own socket: told apart by the framing.
                    let cut = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Err(failure(conn, cut, true));
                }
                Ok(0) => {
                    if !dst.is_empty() {
                        conn.eof.set(true);
                    }
                    return Ok(0);
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    debug_assert!(write.is_some(), "WouldBlock not from the adapter");
                    flush_pending = write.unwrap_or(false);
                    conn.wait(flush_pending, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failure(conn, e, eof)),
            }
        }
    }

    /// One successful TLS write of at least one byte, waiting as needed (the TLS
    /// counterpart of `Socket::send_some`).
    pub(crate) fn send_some(
        &self,
        conn: &Connection,
        data: &[u8],
        deadline: Option<Instant>,
    ) -> Result<usize> {
        loop {
            if conn.io.is_closed() {
                return Err(Error::new(ErrorKind::Closed));
            }
            if self.write_shut.get() {
                // What a plain socket hears from the kernel (OpenSSL's own "protocol is
                // shutdown" read as a TLS failure).
                return Err(Error::from(io::Error::from(io::ErrorKind::BrokenPipe)));
            }
            let (result, write) = {
                let mut stream = self.stream.borrow_mut();
                let result = stream.write(data);
                (result, stream.get_mut().blocked.take())
            };
            match result {
                Ok(0) if !data.is_empty() => {
                    return Err(Error::new(ErrorKind::Closed));
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    debug_assert!(write.is_some(), "WouldBlock not from the adapter");
                    conn.wait(write.unwrap_or(true), deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failure(conn, e, false)),
            }
        }
    }

    /// Whether a read can make progress without the kernel: decrypted bytes in the TLS
    /// layer, raw bytes in the adapter, or the end of stream the adapter saw. `None` while
    /// a TLS call has the stream borrowed (then nobody can tell).
    fn buffered(&self) -> Option<bool> {
        let stream = self.stream.try_borrow().ok()?;
        let adapter = stream.get_ref();
        Some(
            adapter.start < adapter.end
                || adapter.eof
                || stream.buffered_read_size().unwrap_or(0) > 0,
        )
    }

    /// [`TlsLayer::buffered`], false when it cannot tell: whether to wake the next reader.
    pub(crate) fn has_buffered(&self) -> bool {
        self.buffered() == Some(true)
    }

    /// Whether the layer and its adapter are known to hold no bytes for a reader (false
    /// when that cannot be told).
    pub(crate) fn holds_nothing(&self) -> bool {
        self.buffered() == Some(false)
    }

    /// Gives up the adapter's raw buffer (a record's worth, [`RAW_BUFFER`]) to the thread's
    /// spare ones while it holds nothing, so a connection about to wait for its peer keeps
    /// none; the next read takes one back.
    pub(crate) fn release_raw_buffer(&self) {
        if let Ok(mut stream) = self.stream.try_borrow_mut() {
            let adapter = stream.get_mut();
            if adapter.start == adapter.end && adapter.buf.capacity() > 0 {
                read_buffers::give_raw(std::mem::take(&mut adapter.buf));
                adapter.start = 0;
                adapter.end = 0;
            }
        }
    }

    /// Whether a read is sure to wait: the socket known drained (its readiness bit clear, no
    /// end of stream) and nothing in the TLS layer or the adapter; false when that cannot be
    /// told, so an unsure read asks OpenSSL rather than wait for an edge that may not come.
    fn drained(&self, conn: &Connection) -> bool {
        let io = &conn.io;
        !io.readable.get() && !io.read_closed() && self.holds_nothing()
    }

    /// Sends a `close_notify` alert if the socket takes it at once; never waits.
    pub(crate) fn close_notify(&self) {
        if let Ok(mut stream) = self.stream.try_borrow_mut() {
            let _ = stream.shutdown();
            stream.get_mut().blocked = None;
            self.write_shut.set(true);
        }
    }

    fn peer_certificate(&self) -> Result<Option<native_tls::Certificate>> {
        self.stream
            .borrow()
            .peer_certificate()
            .map_err(|e| Error::from_io(ErrorKind::Tls, io::Error::other(e), "peer certificate"))
    }
}

/// The error of a failed TLS read or write; `eof`: a read that met the end of the TCP
/// stream.
fn failure(conn: &Connection, e: io::Error, eof: bool) -> Error {
    if conn.io.is_closed() {
        return Error::new(ErrorKind::Closed);
    }
    if eof {
        // The peer closed the TCP connection in the middle of a TLS record.
        return Error::from(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed the connection in the middle of a TLS record",
        ));
    }
    match e.kind() {
        // OpenSSL's own errors (bad record MAC, unexpected message, …) come as `Other`.
        io::ErrorKind::Other => Error::from_io(ErrorKind::Tls, e, "TLS record failed"),
        _ => Error::from(e),
    }
}

/// The system error behind a handshake that failed because the peer reset or closed the
/// TCP connection (a reset, a broken pipe, or the end of the stream in the middle of the
/// handshake), as a plain socket reports it; `None` when TLS itself failed.
fn peer_gone(e: &native_tls::Error) -> Option<io::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Error::io_kind_closes(io.kind()).then(|| copy_io_error(io));
        }
        cause = err.source();
    }
    None
}

/// A copy of `e`, found inside a `native_tls::Error` (`io::Error` is not `Clone`): the
/// same system error, or kind and text.
fn copy_io_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Which side of the handshake we play.
enum Role<'a> {
    Client {
        connector: &'a TlsConnector,
        server_name: &'a str,
    },
    Server(&'a TlsAcceptor),
}

/// Runs a TLS handshake on `conn` until it completes, fails, or `deadline` passes.
fn handshake(
    conn: &Connection,
    role: Role<'_>,
    prefill: Vec<u8>,
    deadline: Option<Instant>,
) -> Result<TlsLayer> {
    let adapter = FdIo::new(conn.io.clone(), prefill);
    let mut attempt = match role {
        Role::Client {
            connector,
            server_name,
        } => {
            // A fully qualified name's trailing dot (the DNS root) is not part of the name a
            // certificate holds, nor of SNI (RFC 6066 §3): `example.com.` is `example.com`.
            let name = server_name.strip_suffix('.').unwrap_or(server_name);
            connector.connect(name, adapter)
        }
        Role::Server(acceptor) => acceptor.accept(adapter),
    };
    loop {
        match attempt {
            Ok(mut stream) => {
                stream.get_mut().handshaking = false;
                return Ok(TlsLayer {
                    stream: RefCell::new(stream),
                    write_shut: Cell::new(false),
                });
            }
            Err(HandshakeError::Failure(e)) => {
                if conn.io.is_closed() {
                    return Err(Error::new(ErrorKind::Closed));
                }
                if let Some(gone) = peer_gone(&e) {
                    return Err(Error::from_io(
                        ErrorKind::Closed,
                        gone,
                        "TLS handshake cut short",
                    ));
                }
                return Err(Error::from_io(
                    ErrorKind::Tls,
                    io::Error::other(e),
                    "handshake failed",
                ));
            }
            Err(HandshakeError::WouldBlock(mut mid)) => {
                let write = mid.get_mut().take_blocked();
                conn.wait(write, deadline)?;
                attempt = mid.handshake();
            }
        }
    }
}

impl Socket {
    /// Upgrades this connection to TLS as a client, in place (Copas `dohandshake`): the
    /// way to `STARTTLS` in SMTP, FTPS, IMAP… and what [`connect_tls`](crate::connect_tls)
    /// does after connecting.
    ///
    /// The server's certificate must be valid for `server_name`, a host name (sent as SNI)
    /// or an IP address (not sent: RFC 6066 has SNI for names only). A fully qualified
    /// name's trailing dot is dropped: `example.com.` is checked and sent as `example.com`.
    /// Certificates and host names are verified unless the connector was built with
    /// `danger_accept_invalid_certs` or `danger_accept_invalid_hostnames`; add a private CA
    /// with `add_root_certificate`.
    ///
    /// The handshake runs under the socket's connect timeout (see
    /// [`Socket::settimeouts`]), as in Copas. Bytes this handle had already read from the
    /// peer but not handed out are given to the TLS layer (they are the peer's first TLS
    /// bytes), so nothing read from the kernel is lost. Every handle of the connection is
    /// TLS afterwards. On a socket that already is TLS it does nothing. Do not use other
    /// handles of the connection while the handshake runs.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Tls`] when the handshake fails (certificate not trusted, name
    /// mismatch, a peer that does not speak TLS…; `err.io_error()` holds the
    /// `native_tls::Error`), [`ErrorKind::Timeout`] when it stalls past the connect
    /// timeout, [`ErrorKind::Closed`] when the socket is closed meanwhile or the peer resets
    /// or closes the connection before the handshake ends (`err.io_error()` holds the
    /// system error: `ConnectionReset`, `UnexpectedEof`…). After an error
    /// the connection is closed: it never goes on in plaintext (Copas #189).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use copas::native_tls::{Certificate, TlsConnector};
    /// use copas::Pattern;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = Certificate::from_pem(&std::fs::read("ca.pem")?)?;
    /// let connector = TlsConnector::builder().add_root_certificate(ca).build()?;
    /// let mut sock = copas::connect("127.0.0.1:2525", Some(std::time::Duration::from_secs(5)))?;
    /// sock.receive(Pattern::Line)?; // 220 greeting
    /// sock.send(b"STARTTLS\r\n")?;
    /// sock.receive(Pattern::Line)?; // 220 ready
    /// sock.dohandshake(&connector, "mail.example.com")?;
    /// sock.send(b"EHLO me\r\n")?; // encrypted from here on
    /// # Ok(())
    /// # }
    /// ```
    pub fn dohandshake(&mut self, connector: &TlsConnector, server_name: &str) -> Result<()> {
        let deadline = super::deadline(self.gettimeouts().0);
        self.upgrade(
            Role::Client {
                connector,
                server_name,
            },
            deadline,
        )
    }

    /// Upgrades this connection to TLS as a server, in place: the server side of
    /// `STARTTLS`. [`handler`] does this for every accepted connection.
    ///
    /// `native-tls` cannot choose a certificate by the name the client asked for (SNI) nor
    /// demand a client certificate: the acceptor's identity is presented to every client.
    ///
    /// # Errors
    ///
    /// As [`Socket::dohandshake`]; the connection is closed after an error.
    pub fn dohandshake_server(&mut self, acceptor: &TlsAcceptor) -> Result<()> {
        let deadline = super::deadline(self.gettimeouts().0);
        self.upgrade(Role::Server(acceptor), deadline)
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.connection().tls.get().is_some()
    }

    /// The certificate the peer presented, on a TLS connection (`None` on a plain one, or
    /// when the peer presented none).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Tls`] when the certificate cannot be read.
    pub fn peer_certificate(&self) -> Result<Option<native_tls::Certificate>> {
        match self.connection().tls.get() {
            Some(tls) => tls.peer_certificate(),
            None => Ok(None),
        }
    }

    fn upgrade(&mut self, role: Role<'_>, deadline: Option<Instant>) -> Result<()> {
        let conn = self.connection().clone();
        if conn.io.is_closed() {
            return Err(Error::new(ErrorKind::Closed));
        }
        if conn.tls.get().is_some() {
            return Ok(());
        }
        let prefill = self.take_buffered();
        // From here the connection is neither plain nor TLS: closed on every way out but an
        // installed layer, the unwinding of a coroutine removed while the handshake waits
        // too, else another handle would go on in plaintext (Copas #189).
        let unfinished = CloseUnlessUpgraded(Some(&conn));
        let layer = handshake(&conn, role, prefill, deadline)?;
        if conn.tls.set(layer).is_err() {
            return Err(Error::with_message(
                ErrorKind::InvalidState,
                "two TLS handshakes at once on one connection",
            ));
        }
        unfinished.upgraded();
        Ok(())
    }
}

/// Closes a connection whose TLS upgrade began, when dropped before
/// [`CloseUnlessUpgraded::upgraded`].
struct CloseUnlessUpgraded<'a>(Option<&'a Connection>);

impl CloseUnlessUpgraded<'_> {
    fn upgraded(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseUnlessUpgraded<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0 {
            conn.close();
        }
    }
}

/// Connects and does the TLS client handshake, within `timeout` for both.
pub(crate) fn connect_tls(
    sock: Result<Socket>,
    started: Instant,
    server_name: &str,
    connector: &TlsConnector,
    timeout: Option<Duration>,
) -> Result<Socket> {
    let mut sock = sock?;
    let deadline = timeout.and_then(|t| started.checked_add(t));
    sock.upgrade(
        Role::Client {
            connector,
            server_name,
        },
        deadline,
    )?;
    Ok(sock)
}

/// Wraps a connection handler for TLS (Copas `handler(fn, sslparams)`): the returned
/// handler, given to [`addserver`](crate::addserver), does the server side of the TLS
/// handshake on each accepted connection and calls `f` only with an established TLS
/// socket.
///
/// The handshake runs under the connection's connect timeout (set for all connections
/// with [`ServerOptions::timeout`](crate::ServerOptions::timeout)), or
/// [`DEFAULT_HANDSHAKE_TIMEOUT`] when there is none.
///
/// A handshake that fails or times out goes to the coroutine's error handler like a panic
/// (Copas throws "TLS/SSL handshake failed: …"); the socket is closed and `f` never runs
/// (Copas #189). The report is typed: its [`payload`](crate::PanicReport::payload) is a
/// [`copas::Error`](crate::Error) of kind [`ErrorKind::Tls`], [`ErrorKind::Timeout`] or
/// [`ErrorKind::Closed`], and its [`message`](crate::PanicReport::message) is
/// `TLS/SSL handshake failed: <reason>`. The panic hook is not called, so nothing is
/// printed besides what the error handler prints.
///
/// `native-tls` cannot pick a certificate by the client's SNI name or demand client
/// certificates: every client gets the acceptor's identity (Copas's `tls-sni` server case
/// has no equivalent). Nor can it offer TLS 1.3: its OpenSSL acceptor negotiates TLS 1.2
/// at most (manual chapter 7), while copas's TLS clients negotiate 1.3 where offered.
///
/// # Example
///
/// ```no_run
/// use std::net::TcpListener;
/// use copas::native_tls::{Identity, TlsAcceptor};
/// use copas::{Pattern, Socket};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let id = Identity::from_pkcs8(&std::fs::read("cert.pem")?, &std::fs::read("key.pem")?)?;
/// let acceptor = TlsAcceptor::new(id)?;
/// let echo = |mut sock: Socket| {
///     while let Ok(line) = sock.receive(Pattern::Line) {
///         if sock.send(&[&line[..], b"\n"].concat()).is_err() {
///             break;
///         }
///     }
/// };
/// copas::addserver(TcpListener::bind("127.0.0.1:9443")?, copas::handler(echo, acceptor))?;
/// copas::run()?;
/// # Ok(())
/// # }
/// ```
pub fn handler(f: impl Fn(Socket) + 'static, acceptor: TlsAcceptor) -> impl Fn(Socket) + 'static {
    move |mut sock: Socket| {
        let timeout = sock.gettimeouts().0.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
        if let Err(e) = sock.upgrade(Role::Server(&acceptor), super::deadline(Some(timeout))) {
            sock.close();
            drop(sock);
            const FAILED: &str = "TLS/SSL handshake failed";
            let report = match (e.kind(), e.io_error()) {
                // OpenSSL's error is the reason.
                (ErrorKind::Tls, Some(source)) => {
                    Error::with_message(ErrorKind::Tls, format!("{FAILED}: {source}"))
                }
                // A reset or an end of stream keeps its system error, as elsewhere.
                _ => {
                    let message = format!("{FAILED}: {e}");
                    e.reworded(message)
                }
            };
            // Not `panic!`: the failure is reported by the error handler, not the panic hook.
            std::panic::resume_unwind(Box::new(report));
        }
        f(sock)
    }
}

#[cfg(test)]
mod tests {
    use super::Framing;

    /// A record of type 23 with a body of `len` bytes.
    fn record(len: u16) -> Vec<u8> {
        let mut r = vec![23, 3, 3];
        r.extend_from_slice(&len.to_be_bytes());
        r.resize(5 + usize::from(len), 0xaa);
        r
    }

    /// The offsets (bytes passed so far) after each piece of `stream`, passed in pieces of
    /// `piece` bytes, at which the framing stood between records.
    fn boundaries(stream: &[u8], piece: usize) -> Vec<usize> {
        let mut framing = Framing::default();
        let mut passed = 0;
        let mut found = Vec::new();
        for chunk in stream.chunks(piece) {
            framing.pass(chunk);
            passed += chunk.len();
            if framing.between_records() {
                found.push(passed);
            }
        }
        found
    }

    #[test]
    fn framing_finds_record_ends_however_the_bytes_come() {
        let stream = [record(3), record(0), record(300), record(16_384)].concat();
        let ends = [8, 13, 318, stream.len()];
        for piece in [1, 2, 5, 7, 300, 20_000] {
            // Every piece end that is a record end is found, and no other.
            let expected: Vec<usize> = (1..=stream.len())
                .filter(|&at| (at % piece == 0 || at == stream.len()) && ends.contains(&at))
                .collect();
            assert_eq!(boundaries(&stream, piece), expected, "pieces of {piece}");
        }
    }

    #[test]
    fn framing_reads_an_sslv2_style_first_record_then_tls_records() {
        // A 2-byte header (top bit set) giving a body of 0x0131 bytes, then a TLS record.
        let mut stream = vec![0x81, 0x31];
        stream.resize(2 + 0x131, 1);
        let first_end = stream.len();
        stream.extend(record(10));
        assert_eq!(boundaries(&stream, 1), [first_end, stream.len()]);
        assert_eq!(boundaries(&stream, 64), [stream.len()]);
    }
}
