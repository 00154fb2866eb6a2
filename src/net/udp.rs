//! `UdpSocket`: datagrams with blocking-looking operations that suspend the calling
//! coroutine, and `addudpserver`.
//!
//! Readiness works as for TCP (`socket.rs`): try the system call, and when the kernel says
//! it would block, wait for the socket's edge (inside a coroutine) or `poll(2)` (outside).
//! A read says nothing about what is left behind it (each takes one datagram whatever its
//! size), so on Linux a receive asks for two (`recvmmsg(2)`): fewer than two means the
//! queue is empty and clears the readable bit, the rule a short read is for TCP, and saves
//! the `recvmsg` that would only hear `EAGAIN`; a second datagram waits in the socket,
//! whole, for the next receive. Elsewhere only `WouldBlock` clears the bit. A datagram
//! larger than the buffer is not cut silently: it is reported with
//! [`ErrorKind::LimitExceeded`] (the kernel's `MSG_TRUNC`).
//!
//! Writability is asked of the poller only while a send waits for room: a datagram socket
//! reports it each time a datagram it sent is consumed (on loopback, at once), which with
//! the interest always on cost a wake-up and an `epoll_wait` per datagram sent.
//!
//! A UDP echo server answering one client at a time made 4.99 system calls per datagram
//! with neither, 3.00 with both (`recvmmsg`, `sendto`, `epoll_wait`).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::dispatcher::{self, Coroutine, IoSource, TaskName, TaskSocket};
use crate::error::{Error, ErrorKind, Result};
use crate::net::connect::{resolve, ToAddrs};
use crate::net::server::ServerOptions;
use crate::net::socket::Timeouts;
use crate::sys;

/// LuaSocket's default datagram size (`socket._DATAGRAMSIZE`, 8 KiB): a good `size` for
/// [`UdpSocket::receive`] and [`UdpSocket::receivefrom`] unless the protocol says otherwise.
/// The largest UDP payload over IPv4 is 65,507 bytes.
pub const DATAGRAM_SIZE: usize = 8192;

thread_local! {
    /// Where the datagram queued behind the one asked for lands before it is copied out at
    /// its size: one buffer of the largest datagram per thread, not per socket.
    static SPARE: RefCell<Box<[u8]>> = RefCell::new(Box::default());
}

/// Runs `f` with this thread's [`SPARE`] buffer for the datagram behind the one asked for,
/// or with `None` if it is in use (not reached: nothing yields while it is borrowed).
fn with_spare<T>(f: impl FnOnce(Option<&mut [u8]>) -> T) -> T {
    SPARE.with(|spare| match spare.try_borrow_mut() {
        Ok(mut spare) => {
            if spare.is_empty() {
                *spare = vec![0; sys::MAX_DATAGRAM].into_boxed_slice();
            }
            f(Some(&mut spare))
        }
        Err(_) => f(None),
    })
}

/// [`sys::recv_datagrams`] with this thread's [`SPARE`] buffer for the datagram behind.
fn recv_with_spare(sock: &socket2::Socket, size: usize) -> io::Result<sys::Received> {
    // No datagram is longer: a larger `size` (the caller's) would only reserve memory.
    let size = size.min(sys::MAX_DATAGRAM);
    with_spare(|spare| match spare {
        Some(spare) => sys::recv_datagrams(sock, size, spare),
        // One datagram then, as without `recvmmsg`.
        None => sys::recv_datagram(sock, size).map(|first| sys::Received {
            first,
            next: None,
            drained: false,
        }),
    })
}

/// [`sys::recv_datagrams_into`] with this thread's [`SPARE`] buffer for the datagram behind.
fn recv_into_with_spare(
    sock: &socket2::Socket,
    buf: &mut [u8],
) -> io::Result<(sys::Landed, Option<sys::Datagram>, bool)> {
    with_spare(|spare| match spare {
        Some(spare) => sys::recv_datagrams_into(sock, buf, spare),
        // One datagram then, through a vector (a spare on the stack would be 64 KiB).
        None => sys::recv_datagram(sock, buf.len()).map(|d| (d.land_in(buf), None, false)),
    })
}

/// What a receive got: the datagram the receive before it had queued, or what a read from
/// the kernel got.
enum Got<T> {
    Queued(sys::Datagram),
    Read(T),
}

/// The socket shared by the clones of one [`UdpSocket`].
struct UdpInner {
    io: Rc<IoSource>,
    timeouts: Cell<Timeouts>,
    name: RefCell<Option<Rc<str>>>,
    fd: RawFd,
    /// A datagram received behind another in the same system call, for the next receive.
    /// While it is here the socket's readable bit stays set (only a drained queue clears
    /// it), so waiting receivers are handed the turn as for a datagram in the kernel.
    next: Cell<Option<sys::Datagram>>,
}

impl UdpInner {
    fn close(&self) {
        self.next.take();
        if self.io.is_closed() {
            return;
        }
        let done = dispatcher::try_with(|d| d.close_source(&self.io)).is_some();
        if !done {
            // The thread's dispatcher is gone (thread exit): just release the descriptor.
            self.io.take_sock();
        }
    }

    fn name(&self) -> String {
        if let Some(name) = &*self.name.borrow() {
            return name.to_string();
        }
        let connected = self
            .io
            .sock()
            .as_ref()
            .is_some_and(|s| s.peer_addr().is_ok());
        let state = if connected {
            "connected"
        } else {
            "unconnected"
        };
        format!("udp{{{state}}}:{}", self.fd)
    }

    /// Waits for readiness in one direction until `deadline`.
    fn wait(&self, write: bool, deadline: Option<Instant>) -> Result<()> {
        crate::net::wait_ready(&self.io, self.fd, write, deadline)
    }

    /// Lets the next coroutine waiting on this socket run if it is still ready.
    fn pass_on(&self, write: bool) {
        let ready = if write {
            self.io.writable.get()
        } else {
            self.io.readable.get()
        };
        if ready && self.io.waiting.get() > 0 {
            dispatcher::with(|d| d.pass_on(&self.io, write));
        }
    }
}

impl TaskSocket for UdpInner {
    fn close(&self) {
        UdpInner::close(self);
    }

    fn name(&self) -> String {
        UdpInner::name(self)
    }
}

impl Drop for UdpInner {
    fn drop(&mut self) {
        self.close();
    }
}

/// A UDP socket driven by copas (Copas's UDP wrapper).
///
/// Make one with [`UdpSocket::bind`] or [`wrapudp`](crate::wrapudp), or get one as the
/// argument of an [`addudpserver`](crate::addudpserver) handler. Operations look blocking:
/// inside a coroutine they suspend only the calling coroutine; outside any coroutine they
/// block the thread. Each receive takes exactly one datagram.
///
/// Clones are handles to the same socket (one coroutine may receive while another sends);
/// [`close`](UdpSocket::close) through any of them closes it for all and wakes every waiter
/// with [`ErrorKind::Closed`]. Dropping the last handle closes the socket. (Copas's UDP
/// wrapper never closes; here `close` does what it says.)
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// fn ask(server: std::net::SocketAddr) -> copas::Result<Vec<u8>> {
///     let sock = copas::UdpSocket::bind("127.0.0.1:0")?;
///     sock.settimeout(Some(Duration::from_secs(1)));
///     sock.setpeername(server)?;
///     sock.send(b"ping")?;
///     sock.receive(copas::DATAGRAM_SIZE)
/// }
/// ```
#[derive(Clone)]
pub struct UdpSocket {
    inner: Rc<UdpInner>,
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("name", &self.inner.name())
            .field("fd", &self.inner.fd)
            .field("closed", &self.inner.io.is_closed())
            .finish()
    }
}

impl UdpSocket {
    /// Creates a UDP socket bound to `addr` (port 0: any free port), trying each address a
    /// host name resolves to (on a helper thread) until one binds.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::HostNotFound`] for a name that does not resolve,
    /// [`ErrorKind::InvalidInput`] for an address that does not parse or an empty list of
    /// addresses, or the system's error (for example `AddrInUse`) for the last address tried.
    pub fn bind(addr: impl ToAddrs) -> Result<UdpSocket> {
        let mut last = None;
        for addr in resolve(&addr, None)? {
            let bound = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM.nonblocking().cloexec(),
                Some(socket2::Protocol::UDP),
            )
            .and_then(|sock| sock.bind(&addr.into()).map(|()| sock));
            match bound {
                Ok(sock) => return UdpSocket::register(sock),
                Err(e) => last = Some(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| Error::new(ErrorKind::HostNotFound)))
    }

    /// Takes over a UDP socket: made non-blocking and registered with this thread's
    /// dispatcher.
    pub(crate) fn wrap(sock: socket2::Socket) -> Result<UdpSocket> {
        if sock.r#type()? != socket2::Type::DGRAM || !crate::sys::is_ip(&sock)? {
            return Err(Error::with_message(
                ErrorKind::InvalidState,
                "not a UDP socket (use copas::wrap for TCP)",
            ));
        }
        sock.set_nonblocking(true)?;
        UdpSocket::register(sock)
    }

    fn register(sock: socket2::Socket) -> Result<UdpSocket> {
        let fd = sock.as_raw_fd();
        let io = Rc::new(IoSource::new(sock));
        // Writability is asked for only while a send waits (`send_one`).
        io.write_interest.set(false);
        dispatcher::with_or(dispatcher::destroyed, |d| d.register(&io, None))?;
        let inner = Rc::new(UdpInner {
            io,
            timeouts: Cell::new(Timeouts::default()),
            name: RefCell::new(None),
            fd,
            next: Cell::new(None),
        });
        // Weak, so listings can name the socket without keeping it open.
        let owner: Weak<dyn TaskSocket> = Rc::downgrade(&inner) as Weak<dyn TaskSocket>;
        let _ = inner.io.owner.set(owner);
        Ok(UdpSocket { inner })
    }

    /// Yields now and then when operations keep completing without waiting, so that a
    /// flood of datagrams does not starve other coroutines.
    fn fair_share(&self) {
        if dispatcher::spend_budget() && copas_coro::in_coroutine() {
            dispatcher::with(|d| d.pause(Duration::ZERO));
        }
    }

    fn with_socket<T>(&self, f: impl FnOnce(&socket2::Socket) -> io::Result<T>) -> Result<T> {
        let sock = self.inner.io.sock();
        let sock = sock.as_ref().ok_or_else(|| Error::new(ErrorKind::Closed))?;
        Ok(f(sock)?)
    }

    /// Receives one datagram of at most `size` bytes, waiting under the receive timeout.
    fn recv_one(&self, size: usize) -> Result<sys::Datagram> {
        let got = self.recv_one_with(|s| {
            recv_with_spare(s, size).map(|got| (got.first, got.next, got.drained))
        })?;
        Ok(match got {
            Got::Queued(queued) => queued.cut_to(size),
            Got::Read(first) => first,
        })
    }

    /// Receives one datagram, waiting under the receive timeout: the one the last receive
    /// queued, or what `read` gets from the kernel (the next datagram as it lands, the one
    /// behind it, and whether the queue is empty now).
    fn recv_one_with<T>(
        &self,
        mut read: impl FnMut(&socket2::Socket) -> io::Result<(T, Option<sys::Datagram>, bool)>,
    ) -> Result<Got<T>> {
        self.fair_share();
        let deadline = super::deadline(self.inner.timeouts.get().receive);
        let io = &self.inner.io;
        loop {
            if io.is_closed() {
                return Err(Error::new(ErrorKind::Closed));
            }
            if let Some(dgram) = self.inner.next.take() {
                self.inner.pass_on(false);
                return Ok(Got::Queued(dgram));
            }
            if io.readable.get() {
                match self.with_socket(&mut read) {
                    Ok((first, next, drained)) => {
                        if drained {
                            io.readable.set(false);
                        }
                        self.inner.next.set(next);
                        self.inner.pass_on(false);
                        return Ok(Got::Read(first));
                    }
                    Err(e)
                        if e.io_error().map(io::Error::kind) == Some(io::ErrorKind::WouldBlock) =>
                    {
                        io.readable.set(false)
                    }
                    Err(e) => {
                        // The event that woke this receiver woke no other, and a datagram
                        // queued behind the error is the next receiver's.
                        self.inner.pass_on(false);
                        return Err(e);
                    }
                }
            }
            self.inner.wait(false, deadline)?;
        }
    }

    /// Turns a datagram that did not fit into an error carrying what fitted.
    fn whole(dgram: sys::Datagram, size: usize) -> Result<sys::Datagram> {
        if !dgram.truncated() {
            return Ok(dgram);
        }
        Err(Self::too_large(dgram.len, dgram.from, size).with_partial(dgram.data))
    }

    /// The error of a datagram whose sender is not an IP address (not seen on a UDP socket).
    fn not_ip() -> Error {
        Error::with_message(ErrorKind::Io, "datagram from a non-IP sender")
    }

    /// The error of a datagram of `len` bytes (its real length on Linux) from `from` that
    /// did not fit in `size` bytes.
    fn too_large(len: usize, from: Option<SocketAddr>, size: usize) -> Error {
        let from = from.map_or_else(String::new, |a| format!(" from {a}"));
        let message = if cfg!(target_os = "linux") {
            format!("datagram of {len} bytes{from} is larger than the {size}-byte buffer")
        } else {
            format!("datagram{from} is larger than the {size}-byte buffer")
        };
        Error::with_message(ErrorKind::LimitExceeded, message)
    }

    /// Receives one datagram of at most `size` bytes (Copas `receive(size)` on a UDP
    /// socket), waiting under the receive timeout. On a socket with a peer
    /// ([`setpeername`](UdpSocket::setpeername)) only the peer's datagrams arrive.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LimitExceeded`] when the datagram was larger than `size`: the first
    /// `size` bytes are in [`Error::partial`] and the rest is lost (the datagram is consumed);
    /// [`ErrorKind::Timeout`] when nothing arrived in time; [`ErrorKind::Closed`] when the
    /// socket was closed; [`ErrorKind::Refused`] when an earlier datagram to the peer was
    /// refused (an ICMP "port unreachable" reported on a connected socket).
    pub fn receive(&self, size: usize) -> Result<Vec<u8>> {
        let dgram = self.recv_one(size)?;
        Ok(Self::whole(dgram, size)?.data)
    }

    /// Receives one datagram of at most `size` bytes and its sender (Copas `receivefrom`,
    /// which returns `data, ip, port`).
    ///
    /// # Errors
    ///
    /// As [`receive`](UdpSocket::receive); the sender of a datagram that did not fit is
    /// named in the error's message.
    pub fn receivefrom(&self, size: usize) -> Result<(Vec<u8>, SocketAddr)> {
        let dgram = self.recv_one(size)?;
        let dgram = Self::whole(dgram, size)?;
        let from = dgram.from.ok_or_else(Self::not_ip)?;
        Ok((dgram.data, from))
    }

    /// Receives one datagram into `buf` and returns its length and sender, as
    /// `std::net::UdpSocket::recv_from` does, waiting (under the receive timeout) as
    /// [`receivefrom`](UdpSocket::receivefrom) does. Nothing is allocated for a datagram
    /// that arrives alone; one the kernel queued behind another (received with it, in the
    /// same system call) was kept in a vector until now.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::LimitExceeded`] when the datagram was larger than `buf`: its first
    /// `buf.len()` bytes are in `buf` and the rest is lost (std would return the cut
    /// datagram as if whole); otherwise those of [`receive`](UdpSocket::receive).
    pub fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr)> {
        let size = buf.len();
        let landed = match self.recv_one_with(|s| recv_into_with_spare(s, buf))? {
            Got::Read(landed) => landed,
            Got::Queued(queued) => queued.land_in(buf),
        };
        if landed.cut() {
            return Err(Self::too_large(landed.len, landed.from, size));
        }
        let from = landed.from.ok_or_else(Self::not_ip)?;
        Ok((landed.got, from))
    }

    /// Receives one datagram into `buf` and returns its length, as
    /// `std::net::UdpSocket::recv` does (see [`recv_from`](UdpSocket::recv_from)).
    ///
    /// # Errors
    ///
    /// As [`recv_from`](UdpSocket::recv_from).
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        self.recv_from(buf).map(|(n, _)| n)
    }

    /// Sends one datagram, to `to` or to the peer.
    fn send_one(&self, data: &[u8], to: Option<SocketAddr>) -> Result<usize> {
        self.fair_share();
        let deadline = super::deadline(self.inner.timeouts.get().send);
        let io = &self.inner.io;
        loop {
            if io.writable.get() {
                let sent = self.with_socket(|s| loop {
                    let r = match to {
                        Some(addr) => s.send_to(data, &addr.into()),
                        None => s.send(data),
                    };
                    match r {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => return r,
                    }
                });
                match sent {
                    Ok(n) => {
                        if io.write_interest.get() {
                            // The send buffer has room again: back to no reports of it.
                            // Failing, the cost is only those reports.
                            let _ = dispatcher::try_with(|d| d.set_write_interest(io, false));
                        }
                        self.inner.pass_on(true);
                        return Ok(n);
                    }
                    Err(e)
                        if e.io_error().map(io::Error::kind) == Some(io::ErrorKind::WouldBlock) =>
                    {
                        io.writable.set(false);
                        if let Some(Err(e)) =
                            dispatcher::try_with(|d| d.set_write_interest(io, true))
                        {
                            // No event would end the wait.
                            self.inner.pass_on(true);
                            return Err(e);
                        }
                    }
                    Err(e) => {
                        // A one-off error (e.g. an ICMP refusal) is not the next sender's.
                        self.inner.pass_on(true);
                        return Err(e);
                    }
                }
            } else if io.is_closed() {
                return Err(Error::new(ErrorKind::Closed));
            }
            self.inner.wait(true, deadline)?;
        }
    }

    /// Sends `data` as one datagram to the peer set with
    /// [`setpeername`](UdpSocket::setpeername) (Copas `send` on a UDP socket). Returns
    /// `data.len()`. Waits (under the send timeout) only in the rare case that the kernel's
    /// send buffer is full.
    ///
    /// # Errors
    ///
    /// The system's error ([`ErrorKind::Io`]): for example `EDESTADDRREQ` without a peer,
    /// `EMSGSIZE` for a datagram too large to send; [`ErrorKind::Refused`] when an
    /// earlier datagram to the peer was refused; [`ErrorKind::Timeout`],
    /// [`ErrorKind::Closed`].
    pub fn send(&self, data: &[u8]) -> Result<usize> {
        self.send_one(data, None)
    }

    /// Sends `data` as one datagram to `to` (Copas `sendto(data, ip, port)`). As in
    /// LuaSocket, the address is given as numbers: resolve names beforehand (for example
    /// with [`offload`](crate::offload)) so that sending never waits for a resolver.
    ///
    /// # Errors
    ///
    /// As [`send`](UdpSocket::send); on a socket with a peer, some systems refuse another
    /// destination (`EISCONN`).
    pub fn sendto(&self, data: &[u8], to: SocketAddr) -> Result<usize> {
        self.send_one(data, Some(to))
    }

    /// Sets the socket's peer (Copas `setpeername(host, port)`): from now on
    /// [`send`](UdpSocket::send) goes there and only its datagrams arrive; those already
    /// queued before the call (in the kernel, or read ahead by the last receive) are still
    /// delivered, as Linux and `std::net::UdpSocket::connect` do. A host name is resolved on
    /// a helper thread, under the connect timeout; each address it resolves to is tried in
    /// turn.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::HostNotFound`], [`ErrorKind::InvalidInput`] (as for
    /// [`bind`](UdpSocket::bind)), [`ErrorKind::Timeout`] (resolution took longer than the
    /// connect timeout), [`ErrorKind::Closed`], or the system's error.
    pub fn setpeername(&self, addr: impl ToAddrs) -> Result<()> {
        let deadline = super::deadline(self.inner.timeouts.get().connect);
        let mut last = None;
        for addr in resolve(&addr, deadline)? {
            match self.with_socket(|s| s.connect(&addr.into())) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Closed => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new(ErrorKind::HostNotFound)))
    }

    /// Sets the connect, send and receive timeouts at once (`None`: wait forever;
    /// `Some(Duration::ZERO)`: never wait, fail with `Timeout` when the call would block).
    /// The connect timeout bounds the name resolution of
    /// [`setpeername`](UdpSocket::setpeername).
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
        self.inner.timeouts.set(Timeouts {
            connect,
            send,
            receive,
        });
    }

    /// The connect, send and receive timeouts, in that order.
    pub fn gettimeouts(&self) -> (Option<Duration>, Option<Duration>, Option<Duration>) {
        let t = self.inner.timeouts.get();
        (t.connect, t.send, t.receive)
    }

    /// Closes the socket for every handle. Every coroutine waiting on it wakes with
    /// [`ErrorKind::Closed`]; later operations fail with it. Closing twice does nothing.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether the socket was closed through copas.
    pub fn is_closed(&self) -> bool {
        self.inner.io.is_closed()
    }

    /// The local address (Copas `getsockname`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] after `close`, or the system's error.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.with_socket(|s| crate::net::socket_addr(s.local_addr()?))
    }

    /// The peer set with [`setpeername`](UdpSocket::setpeername) (Copas `getpeername`).
    ///
    /// # Errors
    ///
    /// `NotConnected` ([`ErrorKind::Closed`]) without a peer, or the system's error.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        self.with_socket(|s| crate::net::socket_addr(s.peer_addr()?))
    }

    /// Allows sending to broadcast addresses (`SO_BROADCAST`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] after `close`, or the system's error.
    pub fn set_broadcast(&self, on: bool) -> Result<()> {
        self.with_socket(|s| s.set_broadcast(on))
    }

    /// The socket's name (Copas `getsocketname`): the name given, the server's name for an
    /// [`addudpserver`](crate::addudpserver) socket, or `udp{connected}:<fd>` /
    /// `udp{unconnected}:<fd>` (LuaSocket's class names).
    pub fn name(&self) -> String {
        self.inner.name()
    }

    /// Renames the socket (Copas `setsocketname`).
    pub fn set_name(&self, name: &str) {
        *self.inner.name.borrow_mut() = Some(Rc::from(name));
    }
}

impl AsRawFd for UdpSocket {
    /// The descriptor (it stays valid until the socket is closed).
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd
    }
}

/// Registers a UDP socket as a server: one coroutine named `<server>:handler` runs
/// `handler` with it, started at once (from inside a coroutine: in the next step).
pub(crate) fn addudpserver(
    sock: socket2::Socket,
    options: ServerOptions,
    handler: Box<dyn FnOnce(UdpSocket)>,
) -> Result<Coroutine> {
    let udp = UdpSocket::wrap(sock)?;
    let (name, timeout) = options.parts();
    let name: Rc<str> = match name {
        Some(name) => Rc::from(name),
        None => {
            let addr = udp
                .local_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            Rc::from(format!("udp{{server}}:{addr}"))
        }
    };
    *udp.inner.name.borrow_mut() = Some(name.clone());
    if timeout.is_some() {
        udp.settimeout(timeout);
    }
    let task_name = TaskName::Owned(Rc::from(format!("{name}:handler")));
    let socket: Rc<dyn TaskSocket> = udp.inner.clone();
    // Resuming a coroutine from inside another is left to the dispatcher's own loop.
    let start_now = !copas_coro::in_coroutine();
    // The socket lives as long as its handler, whatever `set_autoclose` says: that setting
    // is about accepted TCP connections only, as in Copas.
    dispatcher::with_or(dispatcher::destroyed, |d| {
        d.spawn(task_name, Some(socket), true, start_now, move || {
            handler(udp)
        })
    })
}
