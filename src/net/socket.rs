//! `Socket`: a TCP connection with blocking-looking operations that suspend the calling
//! coroutine instead of the thread.
//!
//! Every operation follows one pattern (async-io's, may's): try the system call; if the
//! kernel says it would block, wait for the socket's readiness, then try again. Inside a
//! coroutine the wait suspends it and the dispatcher resumes it on the readiness event, the
//! deadline, or a `close`; outside any coroutine the wait is a `poll(2)` that blocks the
//! thread, so the same code runs in `main` and in handlers.
//!
//! A timeout covers a whole call (as in Copas 4.11), not each chunk: the deadline is taken
//! when the call starts.
//!
//! A TLS connection is the same `Socket`: its `Connection` carries a `TlsLayer`
//! (`net/tls.rs`), and the two places that touch the kernel (`read_waiting`, `send_some`)
//! hand over to it with one branch; buffering, patterns, timeouts and `close` are shared.

use std::cell::{Cell, OnceCell, RefCell};
use std::fmt;
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::dispatcher::{self, IoSource, TaskSocket};
use crate::error::{Error, ErrorKind, Result};
use crate::net::read_buffers;
use crate::net::tls::TlsLayer;

/// The longest line [`Pattern::Line`] accepts by default: 64 KiB.
///
/// The limit counts the line's bytes as they arrive, a CR inside the line too (the limit
/// bounds what the socket holds), but not its ending (LF or CR LF). A peer that never sends
/// a line feed cannot make the socket hold more than this of a line and its ending; the
/// receive fails with [`ErrorKind::LimitExceeded`] and hands over what it had. Change it per
/// socket with [`Socket::set_line_limit`].
pub const DEFAULT_LINE_LIMIT: usize = 64 * 1024;

/// Size of the first read buffer (one of the thread's spare ones, `net/read_buffers.rs`); it
/// grows only as far as a line needs.
const INITIAL_BUFFER: usize = read_buffers::BUFFER_LEN;

/// Free space a buffer fill asks for, so reads are never tiny.
const FILL_MIN: usize = 1024;

/// Chunk size for reading `Pattern::All` and large exact reads straight into the result.
const BULK_CHUNK: usize = 64 * 1024;

/// The largest `receivepartial` read that goes through the thread's scratch buffer.
const SCRATCH_LEN: usize = 16 * 1024;

thread_local! {
    /// Where small `receivepartial` reads land before being copied out at their exact
    /// size (see [`Socket::recv_vec`]). Allocated on first use; never held across a wait.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(Box::default());
}

/// What [`Socket::receive`] reads (LuaSocket's receive patterns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// One line, terminated by LF; the LF and any CR are removed (Copas `"*l"`).
    Line,
    /// Everything until the peer closes the connection (Copas `"*a"`). It holds whatever
    /// the peer sends, so from a peer you do not trust read with a bound instead:
    /// [`Pattern::Exact`], [`Socket::receivepartial`] in a loop, or `Read::take`.
    All,
    /// Exactly this many bytes, counting the prefix (Copas's numeric pattern). Memory is
    /// set aside as the bytes come, so a length taken from the peer costs no more than
    /// what it sends.
    Exact(usize),
}

/// Timeouts of one socket; `None` waits forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Timeouts {
    // Receive and send first: read by every operation (see `Connection`).
    pub(crate) receive: Option<Duration>,
    pub(crate) send: Option<Duration>,
    pub(crate) connect: Option<Duration>,
}

/// A socket's name, generated lazily.
pub(crate) enum SocketName {
    /// `tcp{client}:<fd>`.
    Default,
    /// `<server>:client_<n>` for an accepted connection.
    Client {
        server: Rc<str>,
        n: u64,
    },
    Owned(String),
}

/// The part of a connection shared by all its handles and by the dispatcher's autoclose.
///
/// `repr(C)` with what every send and receive reads first, so that it shares as few cache
/// lines as possible: at 1,000 connections each connection's record is cold on its turn.
#[repr(C)]
pub(crate) struct Connection {
    pub(crate) io: Rc<IoSource>,
    /// The peer closed its sending side; reads return end-of-stream without a system call.
    pub(crate) eof: Cell<bool>,
    /// The error (`errno`) a reset left while a connect was finishing, which reading
    /// `SO_ERROR` cleared: reported by the read that reaches the end of what the peer sent
    /// first, as the kernel would have; 0 when none.
    reset_after_connect: Cell<i32>,
    fd: RawFd,
    /// The TLS session, once a handshake completed (`net/tls.rs`).
    pub(crate) tls: OnceCell<TlsLayer>,
    timeouts: Cell<Timeouts>,
    // Below: what only naming and line reading use.
    line_limit: Cell<usize>,
    name: RefCell<SocketName>,
}

impl Connection {
    /// Registers `sock` (already non-blocking) with this thread's dispatcher.
    pub(crate) fn register(
        sock: socket2::Socket,
        timeouts: Timeouts,
        name: SocketName,
    ) -> Result<Rc<Connection>> {
        let fd = sock.as_raw_fd();
        let io = Rc::new(IoSource::new(sock));
        dispatcher::with_or(dispatcher::destroyed, |d| d.register(&io, None))?;
        let conn = Rc::new(Connection {
            io,
            timeouts: Cell::new(timeouts),
            name: RefCell::new(name),
            line_limit: Cell::new(DEFAULT_LINE_LIMIT),
            eof: Cell::new(false),
            reset_after_connect: Cell::new(0),
            tls: OnceCell::new(),
            fd,
        });
        // Weak, so listings can name the socket without keeping it open.
        let owner: Weak<dyn TaskSocket> = Rc::downgrade(&conn) as Weak<dyn TaskSocket>;
        let _ = conn.io.owner.set(owner);
        Ok(conn)
    }

    pub(crate) fn close(&self) {
        if self.io.is_closed() {
            return;
        }
        if let Some(tls) = self.tls.get() {
            tls.close_notify();
        }
        let done = dispatcher::try_with(|d| d.close_source(&self.io)).is_some();
        if !done {
            // The thread's dispatcher is gone (thread exit): just release the descriptor.
            self.io.take_sock();
        }
    }

    fn name(&self) -> String {
        match &*self.name.borrow() {
            SocketName::Default => format!("tcp{{client}}:{}", self.fd),
            SocketName::Client { server, n } => format!("{server}:client_{n}"),
            SocketName::Owned(s) => s.clone(),
        }
    }

    /// Waits for readiness in one direction until `deadline`. Inlined for the reason given
    /// at `Dispatcher::suspend`.
    #[inline]
    pub(crate) fn wait(&self, write: bool, deadline: Option<Instant>) -> Result<()> {
        crate::net::wait_ready(&self.io, self.fd, write, deadline)
    }

    /// Waits for a non-blocking connect to finish and reports its outcome.
    pub(crate) fn wait_connected(&self, deadline: Option<Instant>) -> Result<()> {
        loop {
            if self.io.writable.get() {
                let sock = self.io.sock();
                let sock = sock.as_ref().ok_or_else(|| Error::new(ErrorKind::Closed))?;
                return match sock.take_error()? {
                    // The handshake completed and the peer reset the connection since,
                    // perhaps after sending. A blocking connect would have succeeded and
                    // read those bytes, then the reset, so this one does too.
                    Some(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                        self.reset_after_connect.set(libc::ECONNRESET);
                        Ok(())
                    }
                    // The same after the peer had closed its side (its FIN came before its
                    // reset): the kernel reads that as the bytes and then a clean end of
                    // stream, so nothing is kept for the reads; writes fail by themselves.
                    Some(e) if e.raw_os_error() == Some(libc::EPIPE) => Ok(()),
                    Some(e) => Err(e.into()),
                    None => Ok(()),
                };
            }
            self.wait(true, deadline)?;
        }
    }

    /// Lets the next coroutine waiting on this socket run if it is still ready. For reading,
    /// the end of the stream counts as ready: every waiting reader must see it.
    #[inline]
    fn pass_on(&self, write: bool) {
        if self.io.waiting.get() == 0 {
            return;
        }
        let ready = if write {
            self.io.writable.get()
        } else {
            // Over TLS, bytes the TLS layer holds are ready too: no edge will announce them.
            // So is the end of the stream, seen (`eof`, plain or a TLS `close_notify`) or
            // announced (`read_closed`): the last bytes and the FIN often come in one event,
            // which woke one reader, and the short read that took those bytes cleared
            // `readable`; no later event comes for the others.
            self.io.readable.get()
                || self.io.read_closed()
                || self.eof.get()
                || self.holds_readable()
        };
        if ready {
            dispatcher::with(|d| d.pass_on(&self.io, write));
        }
    }

    /// One `recv` into `dst` ([`IoSource::recv`]), noting the end of the stream. Always
    /// inlined, as [`Socket::recv_vec`] is, so that `receivepartial` makes the `recv` itself:
    /// each return after a system call to a frame from before it is mispredicted
    /// (`crate::sys::direct`).
    #[inline(always)]
    fn recv_into(&self, dst: &mut [u8]) -> io::Result<usize> {
        let n = self.io.recv_into(dst)?;
        self.ended_if_none(n, dst.len())
    }

    /// Notes the end of the stream when a read of `len` > 0 bytes returned none; returns `n`,
    /// or at that end the reset a connect kept for it.
    #[inline(always)]
    fn ended_if_none(&self, n: usize, len: usize) -> io::Result<usize> {
        if n == 0 && len > 0 {
            self.eof.set(true);
            let reset = self.reset_after_connect.replace(0);
            if reset != 0 {
                return Err(io::Error::from_raw_os_error(reset));
            }
        }
        Ok(n)
    }

    /// Runs `recv` once the socket's readiness says a read will not block, waiting for that
    /// as often as needed; `T::default()` (empty, 0) at end of stream. Not for TLS.
    #[inline]
    fn recv_waiting<T: Default>(
        &self,
        deadline: Option<Instant>,
        mut recv: impl FnMut() -> io::Result<T>,
    ) -> Result<T> {
        loop {
            if self.io.is_closed() {
                return Err(Error::new(ErrorKind::Closed));
            }
            if self.eof.get() {
                return Ok(T::default());
            }
            if self.io.readable.get() || self.io.read_closed() {
                match recv() {
                    Ok(out) => return Ok(out),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.wait(false, deadline)?;
        }
    }

    /// Reads at least one byte into `dst` (or 0 at end of stream), waiting if needed. On the
    /// connection rather than the handle, so that a handle reads into its own buffer in place
    /// (see `Socket::fill_reserving`).
    fn read_waiting(&self, dst: &mut [u8], deadline: Option<Instant>) -> Result<usize> {
        if let Some(tls) = self.tls.get() {
            return tls.read_waiting(self, dst, deadline);
        }
        self.recv_waiting(deadline, || self.recv_into(dst))
    }
}

impl TaskSocket for Connection {
    fn close(&self) {
        Connection::close(self);
    }

    fn name(&self) -> String {
        Connection::name(self)
    }

    fn holds_readable(&self) -> bool {
        self.tls.get().is_some_and(TlsLayer::has_buffered)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

/// A TCP connection driven by copas, plain or TLS.
///
/// Get one from [`connect`](crate::connect), [`connect_tls`](crate::connect_tls), from
/// [`wrap`](crate::wrap), or as the argument of a server handler (a TLS one through
/// [`handler`](crate::handler)); upgrade a plain one to TLS in place with
/// [`Socket::dohandshake`]. Operations look blocking: inside a coroutine they suspend only the
/// calling coroutine; outside any coroutine they block the thread.
///
/// Several handles ([`Socket::share`]) may refer to one connection, so that one coroutine
/// can read while another writes, or close it while others wait: every waiter then wakes
/// with [`ErrorKind::Closed`]. Each handle has its own read buffer: read through one handle
/// at a time. Send from one coroutine at a time, too: a send that waits partway lets another
/// coroutine's send put its bytes in between, and over TLS a record left half-sent belongs
/// to the send that began it.
///
/// Dropping the last handle closes the connection. Writes never raise `SIGPIPE`.
///
/// # Example
///
/// ```no_run
/// use copas::{Pattern, Socket};
///
/// fn greet(mut sock: Socket) -> copas::Result<()> {
///     sock.settimeout(Some(std::time::Duration::from_secs(10)));
///     let name = sock.receive(Pattern::Line)?;
///     sock.send(b"hello, ")?;
///     sock.send(&name)?;
///     sock.send(b"\n")?;
///     Ok(())
/// }
/// ```
pub struct Socket {
    conn: Rc<Connection>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("name", &self.conn.name())
            .field("fd", &self.conn.fd)
            .field("closed", &self.conn.io.is_closed())
            .field("buffered", &(self.end - self.start))
            .field("tls", &self.conn.tls.get().is_some())
            .finish()
    }
}

impl Socket {
    pub(crate) fn from_connection(conn: Rc<Connection>) -> Socket {
        Socket {
            conn,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn connection(&self) -> &Rc<Connection> {
        &self.conn
    }

    /// Another handle to the same connection, with its own (empty) read buffer.
    ///
    /// Closing through any handle closes the connection for all of them, and so do the
    /// timeouts: [`settimeout`](Socket::settimeout) through one handle sets them for every
    /// handle (they belong to the connection, as Copas keys them by the socket). Bytes a
    /// handle has read ahead (a [`Pattern::Line`] reads past the line) stay in that handle:
    /// dropped with it, they are gone; another handle never sees them.
    pub fn share(&self) -> Socket {
        Socket::from_connection(self.conn.clone())
    }

    /// Yields now and then when operations keep completing without waiting, so that a
    /// stream that is always ready does not starve other coroutines.
    #[inline]
    fn fair_share(&self) {
        if dispatcher::spend_budget() {
            yield_share();
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Makes room at the end of the buffer for at least `min` more bytes.
    fn reserve(&mut self, min: usize) {
        if self.buf.len() - self.end >= min {
            return;
        }
        if self.buf.is_empty() && min <= INITIAL_BUFFER {
            // Given up while the socket waited (`wait_readable_unbuffered`): a spare one,
            // already zeroed, rather than a fresh allocation zeroed again.
            self.buf = read_buffers::take();
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < min {
            let want = (self.end + min).max(INITIAL_BUFFER).next_power_of_two();
            self.buf.resize(want, 0);
        }
    }

    /// [`Connection::recv_into`] of up to `max` bytes onto the end of `out`, into its spare
    /// capacity (no zeroing first); `out` grows by what came.
    fn recv_append(&self, out: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        out.reserve(max);
        let len = out.len();
        let spare: &mut [MaybeUninit<u8>] = &mut out.spare_capacity_mut()[..max];
        let n = self.conn.ended_if_none(self.conn.io.recv(spare)?, max)?;
        // SAFETY: `recv(2)` initialised the first `n` bytes of the spare capacity
        // (`IoSource::recv`), and `n` ≤ `max` ≤ what `reserve` made room for.
        unsafe { out.set_len(len + n) };
        Ok(n)
    }

    /// Reads up to `max` (≥ 1) bytes into a new vector, waiting until the socket is
    /// readable; an empty vector at end of stream. Not for TLS (see
    /// [`Connection::read_waiting`]).
    ///
    /// Nothing is held while waiting, and the vector is allocated once the bytes are
    /// there, at their size (see [`Socket::recv_vec`]): the caller frees it soon after, so
    /// the allocator hands the same warm block to the next connection served, where a
    /// per-connection buffer would be one more cold page per message when thousands of
    /// connections take turns.
    #[inline]
    fn recv_vec_waiting(&self, max: usize, deadline: Option<Instant>) -> Result<Vec<u8>> {
        self.conn.recv_waiting(deadline, || self.recv_vec(max))
    }

    /// One `recv` of up to `max` bytes into a vector holding exactly what came.
    ///
    /// Up to [`SCRATCH_LEN`] the bytes land in this thread's scratch buffer, always warm,
    /// and are copied into a vector of their exact size, so a message a handler keeps holds
    /// only its bytes, not `max` (4 KiB in a typical handler), and a small exact allocation
    /// comes from the allocator's per-thread cache. Bigger requests read straight into the
    /// vector, where the copy would cost more than the allocation. Always inlined (see
    /// [`Connection::recv_into`]).
    #[inline(always)]
    fn recv_vec(&self, max: usize) -> io::Result<Vec<u8>> {
        if max <= SCRATCH_LEN {
            let copied = SCRATCH.try_with(|scratch| {
                let Ok(mut scratch) = scratch.try_borrow_mut() else {
                    return None;
                };
                if scratch.is_empty() {
                    *scratch = vec![0; SCRATCH_LEN].into_boxed_slice();
                }
                Some(
                    self.conn
                        .recv_into(&mut scratch[..max])
                        .map(|n| scratch[..n].to_vec()),
                )
            });
            if let Ok(Some(result)) = copied {
                return result;
            }
        }
        let mut out = Vec::with_capacity(max);
        self.recv_append(&mut out, max)?;
        shed_slack(&mut out);
        Ok(out)
    }

    /// Reads at most `max` (≥ 1) bytes onto the end of `out`, waiting if needed; 0 at end
    /// of stream. A plain socket reads into `out`'s spare capacity ([`Socket::recv_append`]),
    /// so a large read costs no zeroing first (`Pattern::All` reads in 64 KiB chunks, often
    /// answered by a few bytes); TLS hands its layer initialised bytes.
    fn read_append(
        &self,
        out: &mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize> {
        if let Some(tls) = self.conn.tls.get() {
            let len = out.len();
            out.resize(len + max, 0);
            let got = tls.read_waiting(&self.conn, &mut out[len..], deadline);
            out.truncate(len + got.as_ref().map_or(0, |&n| n));
            return got;
        }
        self.conn
            .recv_waiting(deadline, || self.recv_append(out, max))
    }

    /// Reads more bytes into the buffer; 0 at end of stream.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<usize> {
        self.fill_at_most(usize::MAX, deadline)
    }

    /// Reads at most `max` (≥ 1) more bytes into the buffer; 0 at end of stream.
    fn fill_at_most(&mut self, max: usize, deadline: Option<Instant>) -> Result<usize> {
        self.fill_reserving(FILL_MIN.min(max), max, deadline)
    }

    /// [`Socket::fill_at_most`] with room for at least `room` bytes set aside, after any
    /// wait (a connection waits holding no buffer).
    fn fill_reserving(
        &mut self,
        room: usize,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<usize> {
        if self.start == self.end {
            self.wait_readable_unbuffered(deadline)?;
        } else if self.buf.len() > INITIAL_BUFFER && self.end - self.start <= INITIAL_BUFFER / 2 {
            self.shrink_buffer();
        }
        self.reserve(room);
        let to = self.buf.len().min(self.end.saturating_add(max));
        // Into the buffer in place, not moved out for the wait: a coroutine removed while it
        // waits is unwound there, and a buffer moved out would be lost with the bytes before
        // `end`, leaving `end` past an empty buffer for the next receive.
        let n = self
            .conn
            .read_waiting(&mut self.buf[self.end..to], deadline)?;
        self.end += n;
        Ok(n)
    }

    /// Moves the few bytes left in a buffer grown for something long (a line near the line
    /// limit) into a small one: a connection that may now wait must not keep the big one for
    /// them (an idle connection holds a few KiB, `docs/manual/13-performance.md`).
    #[cold]
    fn shrink_buffer(&mut self) {
        let mut small = read_buffers::take();
        let len = self.end - self.start;
        small[..len].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf = small;
        self.start = 0;
        self.end = len;
    }

    /// With nothing buffered, waits until a read will not block, having given the buffer
    /// up to the thread's spare ones (`net/read_buffers.rs`): an idle connection then holds
    /// no buffer, and the next one to read takes it warm rather than one more cold page per
    /// message. Over TLS only while the layer is known to hold no decrypted bytes, which
    /// the readiness bits do not show.
    fn wait_readable_unbuffered(&mut self, deadline: Option<Instant>) -> Result<()> {
        let io = &self.conn.io;
        let tls = self.conn.tls.get();
        while !(io.is_closed() || self.conn.eof.get() || io.readable.get() || io.read_closed())
            && tls.is_none_or(TlsLayer::holds_nothing)
        {
            if self.buf.capacity() > 0 {
                read_buffers::give(std::mem::take(&mut self.buf));
                self.start = 0;
                self.end = 0;
            }
            if let Some(tls) = tls {
                tls.release_raw_buffer();
            }
            self.conn.wait(false, deadline)?;
        }
        Ok(())
    }

    /// Removes and returns everything buffered.
    pub(crate) fn take_buffered(&mut self) -> Vec<u8> {
        let out = self.buffered().to_vec();
        self.start = 0;
        self.end = 0;
        out
    }

    /// Receives data according to `pattern` (Copas `receive`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the peer closes before the pattern completes (for
    /// [`Pattern::Line`] and [`Pattern::Exact`]), or when the socket is closed while
    /// waiting; [`ErrorKind::Timeout`] when the receive timeout expires;
    /// [`ErrorKind::LimitExceeded`] for a line longer than the line limit. In every case
    /// the bytes received so far are in [`Error::partial`] and are no longer buffered; for
    /// a line over the limit those are its first `limit` bytes, and the rest of it stays
    /// buffered for the next receive. A line's partial data has its CRs removed, as the
    /// line would have (so a line over the limit gives its first `limit` bytes less their
    /// CRs), so passing it back as the prefix (Copas's idiom, see
    /// [`Socket::receive_with_prefix`]) gives the line an uninterrupted receive gives.
    pub fn receive(&mut self, pattern: Pattern) -> Result<Vec<u8>> {
        self.receive_with_prefix(pattern, &[])
    }

    /// Like [`Socket::receive`], with `prefix` put in front of the data (Copas's `prefix`
    /// argument). For [`Pattern::Exact`] the prefix counts towards the length: a prefix
    /// as long as the pattern is returned as is, without reading. For [`Pattern::Line`] it
    /// counts towards the line limit: a line fed back a piece at a time after each timeout
    /// is refused where the same line received at once would be, and a prefix already over
    /// the limit is refused before anything is read ([`ErrorKind::LimitExceeded`], with the
    /// prefix in [`Error::partial`]).
    ///
    /// # Errors
    ///
    /// As [`Socket::receive`]; where an error hands over bytes in [`Error::partial`], they
    /// begin with `prefix`.
    pub fn receive_with_prefix(&mut self, pattern: Pattern, prefix: &[u8]) -> Result<Vec<u8>> {
        let deadline = super::deadline(self.conn.timeouts.get().receive);
        self.receive_until(pattern, prefix, deadline)
    }

    /// [`Socket::receive`] of a line that waits until `deadline` at most, whatever the
    /// receive timeout: for a protocol reply of several lines under one timeout.
    pub(crate) fn receive_line_until(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>> {
        self.receive_until(Pattern::Line, &[], deadline)
    }

    /// [`Socket::receive_with_prefix`] until `deadline`.
    #[inline]
    fn receive_until(
        &mut self,
        pattern: Pattern,
        prefix: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>> {
        self.refuse_if_closed()?;
        self.fair_share();
        let result = match pattern {
            Pattern::Line => self.receive_line_bytes(prefix, deadline),
            Pattern::All => self.receive_all(prefix, deadline),
            Pattern::Exact(n) => self.receive_exact(prefix, n, deadline),
        };
        self.conn.pass_on(false);
        result
    }

    /// Receives one line as text, without its line ending.
    ///
    /// # Errors
    ///
    /// As [`Socket::receive`]; a line that is not UTF-8 is an [`ErrorKind::Io`] error of
    /// kind `InvalidData` with the line in [`Error::partial`].
    pub fn receive_line(&mut self) -> Result<String> {
        let line = self.receive(Pattern::Line)?;
        String::from_utf8(line).map_err(|e| {
            Error::from(io::Error::new(
                io::ErrorKind::InvalidData,
                "line is not valid UTF-8",
            ))
            .with_partial(e.into_bytes())
        })
    }

    fn receive_line_bytes(&mut self, prefix: &[u8], deadline: Option<Instant>) -> Result<Vec<u8>> {
        // The prefix counts: a partial line fed back after a timeout and the rest of it are
        // held to the limit together, as one uninterrupted receive would hold them (else a
        // peer that pauses past each timeout grows a line without end).
        if prefix.len() > self.conn.line_limit.get() {
            // Already past the limit, whatever follows: refused before anything is read.
            return Err(self.refuse_long_line(prefix, 0));
        }
        let limit = self.conn.line_limit.get() - prefix.len();
        // A line has at most `limit` bytes before its ending, LF or CR LF: look at no more
        // than that and the ending.
        let window = limit.saturating_add(2);
        let mut scanned = 0;
        loop {
            let upto = (self.end - self.start).min(window);
            let fresh = &self.buf[self.start + scanned..self.start + upto];
            if let Some(pos) = find_byte(fresh, b'\n') {
                let line_end = self.start + scanned + pos;
                let text = &self.buf[self.start..line_end];
                // The usual ending is CR LF: that CR is not part of the line, nor counted
                // against the limit. (A longer line shows its LF only at the window's end:
                // `scanned` then reaches the window below, and the line is refused.)
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if text.len() <= limit {
                    let line = line_without_cr(prefix, text);
                    self.start = line_end + 1;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                    return Ok(line);
                }
            }
            scanned = upto;
            // `limit + 1` bytes without a line feed are a line over the limit unless the last
            // is the CR of a CR LF: refused now, as the whole line received at once is. A
            // timeout must not hand them over, since fed back as the prefix (Copas's idiom)
            // they would leave no room to count the line by.
            if scanned >= window || (scanned > limit && self.buf[self.start + limit] != b'\r') {
                return Err(self.refuse_long_line(prefix, limit));
            }
            // Never buffer more of a line than the limit allows.
            let got = self.fill_at_most(window - scanned, deadline);
            match got {
                // At the end of the stream a line one byte over the limit (two or more
                // reached the window above) is refused as any longer one is: `limit` bytes
                // now, the rest at the next receive.
                Ok(0) if self.end - self.start > limit => {
                    return Err(self.refuse_long_line(prefix, limit));
                }
                Ok(0) => {
                    let partial = line_without_cr(prefix, &self.take_buffered());
                    return Err(Error::new(ErrorKind::Closed).with_partial(partial));
                }
                Ok(_) => {}
                Err(e) => {
                    let partial = line_without_cr(prefix, &self.take_buffered());
                    return Err(e.with_partial(partial));
                }
            }
        }
    }

    /// The error for a buffered line longer than `limit` after `prefix`: it hands over the
    /// prefix and the first `limit` bytes and leaves the rest buffered.
    fn refuse_long_line(&mut self, prefix: &[u8], limit: usize) -> Error {
        let partial = line_without_cr(prefix, &self.buf[self.start..self.start + limit]);
        self.start += limit;
        Error::with_message(
            ErrorKind::LimitExceeded,
            format!("line longer than {} bytes", self.conn.line_limit.get()),
        )
        .with_partial(partial)
    }

    fn receive_all(&mut self, prefix: &[u8], deadline: Option<Instant>) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(prefix.len() + self.end - self.start);
        out.extend_from_slice(prefix);
        out.extend_from_slice(self.buffered());
        self.start = 0;
        self.end = 0;
        loop {
            // Into the room already set aside when there is some: asking for a whole chunk
            // more each time doubles a vector that a few bytes went into.
            let room = out.capacity() - out.len();
            let max = if room >= FILL_MIN {
                room.min(BULK_CHUNK)
            } else {
                BULK_CHUNK
            };
            match self.read_append(&mut out, max, deadline) {
                Ok(0) => {
                    shed_slack(&mut out);
                    return Ok(out);
                }
                Ok(_) => {}
                Err(e) => return Err(e.with_partial(out)),
            }
            self.fair_share();
        }
    }

    fn receive_exact(
        &mut self,
        prefix: &[u8],
        n: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>> {
        if prefix.len() >= n {
            return Ok(prefix.to_vec());
        }
        // `n` may come from the peer (a length header): set aside only what is in hand and
        // one bulk chunk, and let the vector grow with the bytes that actually arrive.
        let mut out =
            Vec::with_capacity(n.min(prefix.len() + (self.end - self.start) + BULK_CHUNK));
        out.extend_from_slice(prefix);
        let from_buffer = (n - out.len()).min(self.end - self.start);
        out.extend_from_slice(&self.buf[self.start..self.start + from_buffer]);
        self.start += from_buffer;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        while out.len() < n {
            let missing = n - out.len();
            if missing < INITIAL_BUFFER {
                // Small remainder: read through the buffer so we can read ahead.
                match self.fill(deadline) {
                    Ok(0) => return Err(Error::new(ErrorKind::Closed).with_partial(out)),
                    Ok(_) => {
                        let take = missing.min(self.end - self.start);
                        out.extend_from_slice(&self.buf[self.start..self.start + take]);
                        self.start += take;
                    }
                    Err(e) => return Err(e.with_partial(out)),
                }
            } else {
                match self.read_append(&mut out, missing.min(BULK_CHUNK), deadline) {
                    Ok(0) => return Err(Error::new(ErrorKind::Closed).with_partial(out)),
                    Ok(_) => {}
                    Err(e) => return Err(e.with_partial(out)),
                }
                self.fair_share();
            }
        }
        Ok(out)
    }

    /// Returns as soon as some data is there: up to `max` bytes, at least one, or an empty
    /// vector at end of stream (Copas `receivepartial`; see `docs/copas-to-rust.md`). A `max`
    /// of 0 returns an empty vector at once, without reading: it says nothing about the
    /// end of the stream.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when nothing arrived before the receive timeout,
    /// [`ErrorKind::Closed`] when the socket was closed or reset.
    #[inline]
    pub fn receivepartial(&mut self, max: usize) -> Result<Vec<u8>> {
        // The common case (a plain socket, nothing read ahead, a read of up to 16 KiB) is
        // inlined into the caller, typically a handler's loop: returning from a function
        // after its system call costs a mispredicted return on the path of every message
        // (see `crate::sys`), and inlined there is none. The rest is out of line, reads over
        // 16 KiB included, so that the copy in the caller holds only the scratch-buffer read
        // (`receivepartial_other` runs the same plain path for them, at most `BULK_CHUNK`).
        if max == 0 || max > SCRATCH_LEN || self.start != self.end || self.conn.tls.get().is_some()
        {
            return self.receivepartial_other(max);
        }
        self.receivepartial_plain(max)
    }

    /// `receivepartial` of 1 to [`BULK_CHUNK`] bytes from a plain socket with nothing
    /// buffered: the bytes go from the socket into the vector returned (through the scratch
    /// buffer, see `recv_vec`).
    #[inline(always)]
    fn receivepartial_plain(&mut self, max: usize) -> Result<Vec<u8>> {
        self.refuse_if_closed()?;
        self.fair_share();
        let deadline = super::deadline(self.conn.timeouts.get().receive);
        let out = self.recv_vec_waiting(max, deadline);
        // After an error too: the event that woke this reader woke no other, and what it
        // announced (more bytes, the end of the stream) is the next reader's.
        self.conn.pass_on(false);
        out
    }

    /// `receivepartial` of none, of more than the scratch buffer holds, from the read
    /// buffer or over TLS. Out of line, away from the common case.
    #[inline(never)]
    fn receivepartial_other(&mut self, max: usize) -> Result<Vec<u8>> {
        if max > 0 && self.start == self.end && self.conn.tls.get().is_none() {
            return self.receivepartial_plain(max.min(BULK_CHUNK));
        }
        self.refuse_if_closed()?;
        self.fair_share();
        if max == 0 {
            return Ok(Vec::new());
        }
        self.receivepartial_buffered(max)
    }

    /// `receivepartial` from the read buffer, filling it first if it is empty (TLS); hands
    /// the turn on as `receivepartial` does. Out of line: the plain path stays small.
    #[inline(never)]
    fn receivepartial_buffered(&mut self, max: usize) -> Result<Vec<u8>> {
        let filled = if self.start == self.end {
            let deadline = super::deadline(self.conn.timeouts.get().receive);
            self.start = 0;
            self.end = 0;
            // Room for what was asked (up to a bulk chunk) so big reads stay few, set aside
            // after the wait.
            let want = max.min(BULK_CHUNK);
            self.fill_reserving(want, want, deadline)
        } else {
            Ok(0)
        };
        let out = filled.map(|_| {
            let take = max.min(self.end - self.start);
            self.start += take;
            self.buf[self.start - take..self.start].to_vec()
        });
        self.conn.pass_on(false);
        out
    }

    /// Sends all of `data`, waiting as needed (Copas `send`). Returns `data.len()`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the peer reset the connection or the socket was closed,
    /// [`ErrorKind::Timeout`] when the send timeout expired; [`Error::sent`] tells how
    /// many bytes went out before. Over TLS, after a `Timeout` the next send must start with
    /// the bytes not yet sent, or the connection be closed: the TLS layer has already
    /// committed the record it was writing.
    #[inline(always)]
    pub fn send(&mut self, data: &[u8]) -> Result<usize> {
        // Inlined into the caller with its common case (one system call that takes all of
        // `data`), as `receivepartial` is, for the same reason; always, since a handler
        // that has `receivepartial` inlined is too big for the compiler's own choice. It
        // costs code: 10-15 KiB more text in the `echo` and `http_hello` examples.
        self.refuse_if_closed()?;
        self.fair_share();
        let sent = self.send_all(data);
        // After an error too, as in `receivepartial`: a reset wakes one writer, and every
        // other must learn of it now, not at its timeout.
        self.conn.pass_on(true);
        sent
    }

    /// [`send`](Socket::send) without the hand-over to the next writer.
    #[inline(always)]
    fn send_all(&self, data: &[u8]) -> Result<usize> {
        // The common case in one system call, before any of the general loop: a plain
        // socket last seen writable taking everything at once.
        let mut sent = 0;
        if self.conn.io.writable.get() && !data.is_empty() && self.conn.tls.get().is_none() {
            sent = self.send_once(data)?;
            if sent == data.len() {
                return Ok(sent);
            }
        }
        self.send_remaining(data, sent)
    }

    /// [`Socket::send_rest`] until the send timeout from now: the rest of `send_all`, out
    /// of line.
    #[inline(never)]
    fn send_remaining(&self, data: &[u8], sent: usize) -> Result<usize> {
        let deadline = super::deadline(self.conn.timeouts.get().send);
        self.send_rest(data, sent, deadline)
    }

    /// Sends `data` from byte `sent` on, waiting as needed until `deadline`; returns its
    /// length, or the error with every byte of `data` sent in [`Error::sent`].
    fn send_rest(&self, data: &[u8], mut sent: usize, deadline: Option<Instant>) -> Result<usize> {
        while sent < data.len() {
            match self.send_some(&data[sent..], deadline) {
                Ok(n) => sent += n,
                Err(e) => return Err(e.with_sent(sent)),
            }
        }
        Ok(sent)
    }

    /// Sends all the bytes of `bufs`, in order, waiting as needed: [`send`](Socket::send) of
    /// their concatenation without making it. On a plain socket one `sendmsg(2)` gathers
    /// them (up to 1,024 slices at a time), so a header and a body kept apart go out in one
    /// system call, and in one segment when they fit. Over TLS each slice is sent in turn.
    /// Returns the total length.
    ///
    /// # Errors
    ///
    /// As [`send`](Socket::send); [`Error::sent`] counts the bytes of every slice that went
    /// out before the error.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::io::IoSlice;
    ///
    /// fn respond(sock: &mut copas::Socket, body: &[u8]) -> copas::Result<usize> {
    ///     let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    ///     sock.send_vectored(&[IoSlice::new(head.as_bytes()), IoSlice::new(body)])
    /// }
    /// ```
    pub fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<usize> {
        self.refuse_if_closed()?;
        if self.conn.tls.get().is_some() {
            self.fair_share();
            // One deadline for the whole call, as for `send`: not one per slice.
            let deadline = super::deadline(self.conn.timeouts.get().send);
            let mut sent = 0;
            let mut result = Ok(());
            for buf in bufs {
                match self.send_rest(buf, 0, deadline) {
                    Ok(n) => sent += n,
                    Err(e) => {
                        let before = sent + e.sent();
                        result = Err(e.with_sent(before));
                        break;
                    }
                }
            }
            self.conn.pass_on(true);
            return result.map(|()| sent);
        }
        let Some(bufs) = from_first_byte(bufs) else {
            return Ok(0);
        };
        self.fair_share();
        let sent = self.send_vectored_all(bufs);
        // After an error too (see `send`).
        self.conn.pass_on(true);
        sent
    }

    /// [`send_vectored`](Socket::send_vectored) of a plain socket, `bufs` starting with a
    /// byte, without the hand-over to the next writer.
    fn send_vectored_all(&self, bufs: &[IoSlice<'_>]) -> Result<usize> {
        let total = bufs
            .iter()
            .fold(0usize, |sum, b| sum.saturating_add(b.len()));
        let mut sent = 0;
        if self.conn.io.writable.get() {
            sent = self.send_vectored_once(bufs)?;
            if sent == total {
                return Ok(sent);
            }
        }
        // What is left, as slices that can be advanced past what went out.
        let mut rest: Vec<IoSlice<'_>> = bufs.to_vec();
        let mut rest = &mut rest[..];
        IoSlice::advance_slices(&mut rest, sent);
        let deadline = super::deadline(self.conn.timeouts.get().send);
        while !rest.is_empty() {
            let some = self.send_waiting(deadline, || {
                let slices: &[IoSlice<'_>] = rest;
                self.send_vectored_once(slices)
            });
            match some {
                Ok(n) => {
                    sent += n;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) => return Err(e.with_sent(sent)),
            }
        }
        Ok(sent)
    }

    /// One successful `send` of at least one byte, waiting for writability as needed.
    fn send_some(&self, data: &[u8], deadline: Option<Instant>) -> Result<usize> {
        if let Some(tls) = self.conn.tls.get() {
            return tls.send_some(&self.conn, data, deadline);
        }
        self.send_waiting(deadline, || self.send_once(data))
    }

    /// Runs `attempt` (a send of at least one byte on a plain socket, or 0 when it would
    /// block) while the socket is writable, waiting for writability between, until it sends
    /// something.
    fn send_waiting(
        &self,
        deadline: Option<Instant>,
        mut attempt: impl FnMut() -> Result<usize>,
    ) -> Result<usize> {
        loop {
            while self.conn.io.writable.get() {
                let n = attempt()?;
                if n > 0 {
                    return Ok(n);
                }
            }
            self.conn.wait(true, deadline)?;
        }
    }

    /// [`Socket::send_once`] of several slices: one `sendmsg(2)`.
    fn send_vectored_once(&self, bufs: &[IoSlice<'_>]) -> Result<usize> {
        blocked_as_none(self.conn.io.send_vectored(bufs))
    }

    /// One [`IoSource::send`] of non-empty `data` on a plain socket: the bytes sent, or 0
    /// when it would block (the writable bit is then clear, so the caller waits for the next
    /// edge). Always inlined: `send`'s first attempt is the path of every message.
    #[inline(always)]
    fn send_once(&self, data: &[u8]) -> Result<usize> {
        blocked_as_none(self.conn.io.send(data))
    }

    /// Sets the connect, send and receive timeouts at once (`None`: wait forever;
    /// `Some(Duration::ZERO)`: never wait, fail with `Timeout` when the call would block).
    /// They are the connection's: every handle [`share`](Socket::share) made sees them.
    pub fn settimeout(&self, timeout: Option<Duration>) {
        self.settimeouts(timeout, timeout, timeout);
    }

    /// Sets the connect, send and receive timeouts separately.
    pub fn settimeouts(
        &self,
        connect: Option<Duration>,
        send: Option<Duration>,
        receive: Option<Duration>,
    ) {
        self.conn.timeouts.set(Timeouts {
            connect,
            send,
            receive,
        });
    }

    /// The connect, send and receive timeouts, in that order.
    pub fn gettimeouts(&self) -> (Option<Duration>, Option<Duration>, Option<Duration>) {
        let t = self.conn.timeouts.get();
        (t.connect, t.send, t.receive)
    }

    /// The longest line [`Pattern::Line`] accepts on this connection.
    pub fn line_limit(&self) -> usize {
        self.conn.line_limit.get()
    }

    /// Changes the longest line [`Pattern::Line`] accepts (default [`DEFAULT_LINE_LIMIT`]);
    /// the least is 1 byte, so 0 is taken as 1.
    pub fn set_line_limit(&self, limit: usize) {
        self.conn.line_limit.set(limit.max(1));
    }

    /// Closes the connection for every handle. Every coroutine waiting on it wakes with
    /// [`ErrorKind::Closed`]; later operations fail with it, even those that would need no
    /// system call (bytes a handle had already buffered are dropped, not handed out; an
    /// empty send or receive fails too). Closing twice does nothing.
    /// A TLS connection first sends a `close_notify` alert if the socket takes it at once.
    pub fn close(&self) {
        self.conn.close();
    }

    /// Whether the connection was closed through copas.
    pub fn is_closed(&self) -> bool {
        self.conn.io.is_closed()
    }

    /// `Closed` once the socket is closed, before an operation looks at its buffer or its
    /// arguments: bytes a handle had buffered are not handed out after `close`, and an
    /// empty send or receive fails like any other. A refusal spends from the fair-share
    /// budget like any operation that completes without waiting: a loop that retries a
    /// closed socket must still let the other coroutines run.
    #[inline(always)]
    fn refuse_if_closed(&self) -> Result<()> {
        if self.conn.io.is_closed() {
            return Err(self.refusal());
        }
        Ok(())
    }

    /// The error of an operation on a closed socket, out of the way of the hot paths.
    #[cold]
    #[inline(never)]
    fn refusal(&self) -> Error {
        self.fair_share();
        Error::new(ErrorKind::Closed)
    }

    /// Shuts down the reading side, the writing side, or both (the descriptor stays open).
    /// Over TLS, shutting down the writing side first sends a `close_notify` alert if the
    /// socket takes it at once.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] if the socket was closed, or the system's error.
    pub fn shutdown(&self, how: Shutdown) -> Result<()> {
        if let (Some(tls), Shutdown::Write | Shutdown::Both) = (self.conn.tls.get(), how) {
            tls.close_notify();
        }
        let sock = self.conn.io.sock();
        let sock = sock.as_ref().ok_or_else(|| Error::new(ErrorKind::Closed))?;
        sock.shutdown(how)?;
        Ok(())
    }

    fn with_socket<T>(&self, f: impl FnOnce(&socket2::Socket) -> io::Result<T>) -> Result<T> {
        let sock = self.conn.io.sock();
        let sock = sock.as_ref().ok_or_else(|| Error::new(ErrorKind::Closed))?;
        Ok(f(sock)?)
    }

    /// The address of the remote end.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] after `close`, or the system's error.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        self.with_socket(|s| crate::net::socket_addr(s.peer_addr()?))
    }

    /// The address of the local end.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] after `close`, or the system's error.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.with_socket(|s| crate::net::socket_addr(s.local_addr()?))
    }

    /// Turns Nagle's algorithm off (`true`) or on.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] after `close`, or the system's error.
    pub fn set_nodelay(&self, nodelay: bool) -> Result<()> {
        self.with_socket(|s| s.set_tcp_nodelay(nodelay))
    }

    /// Sets `SO_LINGER`; `Some(Duration::ZERO)` makes `close` reset the connection.
    ///
    /// The kernel counts whole seconds: a positive linger is rounded up to the next one
    /// (passed as it is, 500 ms would become 0 and reset the connection, dropping what was
    /// sent), and one past `i32::MAX` seconds is held there.
    ///
    /// A positive linger makes [`close`](Socket::close) block the whole thread, every
    /// coroutine with it, until the peer has acknowledged what was sent or the linger runs
    /// out: that is the kernel's `close`, which copas cannot wait for in turn. To end a
    /// connection gracefully without blocking, `shutdown(Shutdown::Write)` and read until the
    /// peer closes, then `close`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] after `close`, or the system's error.
    pub fn set_linger(&self, linger: Option<Duration>) -> Result<()> {
        let whole_seconds = linger.map(|d| {
            let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
            Duration::from_secs(secs.min(i32::MAX as u64))
        });
        self.with_socket(|s| s.set_linger(whole_seconds))
    }

    /// The connection's name (Copas `getsocketname`).
    pub fn name(&self) -> String {
        self.conn.name()
    }

    /// Renames the connection (Copas `setsocketname`).
    pub fn set_name(&self, name: &str) {
        *self.conn.name.borrow_mut() = SocketName::Owned(name.to_string());
    }
}

/// No `AsFd`: a `BorrowedFd` must stay open while it lives, and any handle of the connection
/// can `close` it through `&self`. To set an option copas has no method for, borrow it
/// yourself, promising not to close the connection meanwhile:
/// `socket2::SockRef::from(&unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) })`.
impl AsRawFd for Socket {
    /// The descriptor (it stays valid until the connection is closed).
    fn as_raw_fd(&self) -> RawFd {
        self.conn.fd
    }
}

/// `prefix` followed by `text` without its CRs: a line, or what came of one before an error
/// (LuaSocket drops every CR of a line as it reads, so Copas's partial data has none).
fn line_without_cr(prefix: &[u8], text: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(prefix.len() + text.len());
    line.extend_from_slice(prefix);
    if find_byte(text, b'\r').is_some() {
        line.extend(text.iter().filter(|&&b| b != b'\r'));
    } else {
        line.extend_from_slice(text);
    }
    line
}

/// The index of the first `needle` in `hay`, eight bytes at a time: a line protocol looks
/// for the end of every line it receives (with it, `examples/http_hello` spends 665
/// instructions per request receiving its three lines, against 818 searching byte by byte).
pub(crate) fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let pattern = LOW * u64::from(needle);
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        // A byte of `x` is zero where `word` holds `needle`; the lowest such byte is the
        // lowest one with its high bit set in `found` (a borrow only runs upwards).
        let x = u64::from_le_bytes(bytes) ^ pattern;
        let found = x.wrapping_sub(LOW) & !x & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|pos| at + pos)
}

/// A coroutine that used its budget of operations without waiting lets the others run
/// ([`Socket::fair_share`]); nothing outside a coroutine.
#[cold]
#[inline(never)]
fn yield_share() {
    if copas_coro::in_coroutine() {
        dispatcher::with(|d| d.pause(Duration::ZERO));
    }
}

/// A send's outcome with `WouldBlock` as 0 bytes sent (the writable bit is then clear).
#[inline(always)]
fn blocked_as_none(sent: io::Result<usize>) -> Result<usize> {
    match sent {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// `bufs` from its first non-empty slice on; `None` when all are empty. A `sendmsg` window
/// of empty slices would send 0 bytes from a writable socket, again and again.
fn from_first_byte<'a, 'b>(bufs: &'b [IoSlice<'a>]) -> Option<&'b [IoSlice<'a>]> {
    let first = bufs.iter().position(|b| !b.is_empty())?;
    Some(&bufs[first..])
}

fn to_io(e: Error) -> io::Error {
    e.into()
}

impl Socket {
    /// [`Read::read`] with the deadline `deadline` makes of the receive timeout, asked only
    /// when the read must wait: the crate's readers that bound a whole exchange by one
    /// deadline give the same one to each read (`client::http`).
    pub(crate) fn read_within(
        &mut self,
        out: &mut [u8],
        deadline: impl FnOnce(Option<Duration>) -> Option<Instant>,
    ) -> io::Result<usize> {
        self.refuse_if_closed().map_err(to_io)?;
        if out.is_empty() {
            return Ok(0);
        }
        if self.start == self.end && out.len() >= INITIAL_BUFFER {
            self.fair_share();
            let deadline = deadline(self.conn.timeouts.get().receive);
            let read = self.conn.read_waiting(out, deadline).map_err(to_io);
            // Like every receive: bytes left in the kernel are another reader's turn.
            self.conn.pass_on(false);
            return read;
        }
        let available = self.fill_buf_within(deadline)?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }

    /// [`BufRead::fill_buf`] with the deadline `deadline` makes of the receive timeout, as
    /// for [`Socket::read_within`].
    pub(crate) fn fill_buf_within(
        &mut self,
        deadline: impl FnOnce(Option<Duration>) -> Option<Instant>,
    ) -> io::Result<&[u8]> {
        self.refuse_if_closed().map_err(to_io)?;
        if self.start == self.end {
            self.fair_share();
            self.start = 0;
            self.end = 0;
            let deadline = deadline(self.conn.timeouts.get().receive);
            let filled = self.fill(deadline).map_err(to_io);
            self.conn.pass_on(false);
            filled?;
        }
        Ok(&self.buf[self.start..self.end])
    }
}

impl Read for Socket {
    /// Reads what is available (at least one byte), waiting if nothing is; 0 at end of
    /// stream. The receive timeout applies.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.read_within(out, super::deadline)
    }
}

impl BufRead for Socket {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fill_buf_within(super::deadline)
    }

    fn consume(&mut self, amt: usize) {
        self.start = (self.start + amt).min(self.end);
    }
}

impl Write for Socket {
    /// Sends as much of `data` as the kernel takes at once (at least one byte), waiting if
    /// it takes none. The send timeout applies.
    ///
    /// Over TLS a `TimedOut` departs from the trait's "nothing was written": the TLS layer
    /// has encrypted and committed the record it was writing, and sends it with the next
    /// write, which must therefore begin with the same bytes (`data` again, or the rest of
    /// the data from there on), or the connection be closed. Other bytes first would be
    /// lost in their place (as for [`Socket::send`]).
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.refuse_if_closed().map_err(to_io)?;
        if data.is_empty() {
            return Ok(0);
        }
        self.fair_share();
        let deadline = super::deadline(self.conn.timeouts.get().send);
        let sent = self.send_some(data, deadline).map_err(to_io);
        // Like `send`: a socket still writable is another writer's turn.
        self.conn.pass_on(true);
        sent
    }

    /// Sends as much of `bufs` as the kernel takes at once (at least one byte), waiting if
    /// it takes none: one `sendmsg(2)` on a plain socket; over TLS, the first slice that is
    /// not empty.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.refuse_if_closed().map_err(to_io)?;
        if self.conn.tls.get().is_some() {
            let first = from_first_byte(bufs).map_or(&[][..], |bufs| &*bufs[0]);
            return self.write(first);
        }
        let Some(bufs) = from_first_byte(bufs) else {
            return Ok(0);
        };
        self.fair_share();
        let deadline = super::deadline(self.conn.timeouts.get().send);
        let sent = self
            .send_waiting(deadline, || self.send_vectored_once(bufs))
            .map_err(to_io);
        self.conn.pass_on(true);
        sent
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Gives back the room of a vector a read filled to under a quarter (a big request answered
/// by a few bytes, a short stream), so a received message a caller keeps holds only itself.
fn shed_slack(out: &mut Vec<u8>) {
    if out.len() < out.capacity() / 4 {
        out.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::find_byte;

    #[test]
    fn find_byte_finds_the_first_occurrence_as_a_byte_by_byte_search_would() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Bytes drawn from a small alphabet, so needles occur often, with the values that
        // trouble word-at-a-time tricks: 0, 1, the needle plus and minus one, high bits.
        let alphabet = [
            0u8,
            1,
            b'\n' - 1,
            b'\n',
            b'\n' + 1,
            b'\r',
            0x7f,
            0x80,
            0x8a,
            0xff,
        ];
        for len in 0..48 {
            for _ in 0..200 {
                let hay: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                for &needle in &alphabet {
                    let expected = hay.iter().position(|&b| b == needle);
                    assert_eq!(find_byte(&hay, needle), expected, "{hay:?} {needle}");
                }
            }
        }
    }
}
