//! Client connections: `connect`, `wrap`, and the addresses they take.
//!
//! A connect is non-blocking: the socket is created non-blocking, registered, and the
//! coroutine waits for writability (the kernel's "connect finished"), then reads
//! `SO_ERROR`. Several addresses are tried in turn within one deadline.
//!
//! A host name is resolved with the system resolver (`getaddrinfo`, through std's
//! `ToSocketAddrs`) on a helper thread ([`offload`](crate::offload)), so only the calling
//! coroutine waits for it. An address given as numbers is used as is, without a helper.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::dispatcher::remote;
use crate::error::{Error, ErrorKind, Result};
use crate::net::socket::{Connection, Socket, SocketName, Timeouts};

mod sealed {
    use std::net::SocketAddr;

    /// What an address argument stands for, before resolution.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Target {
        /// Addresses given as numbers: nothing to resolve.
        Addrs(Vec<SocketAddr>),
        /// A host name and a port, to be resolved.
        Host(String, u16),
    }

    pub trait Sealed {
        fn target(&self) -> std::io::Result<Target>;
    }
}

use sealed::Target;

/// An address [`connect`](crate::connect) and
/// [`UdpSocket::setpeername`](crate::UdpSocket::setpeername) accept: a socket address given
/// as numbers, used as is, or a host name with a port, resolved on a helper thread so that
/// only the calling coroutine waits.
///
/// Implemented for the types std's `ToSocketAddrs` takes: `SocketAddr` (and the V4/V6
/// forms), `(IpAddr, u16)` (and the V4/V6 forms), `"host:port"` as `&str` or `String`
/// (`"127.0.0.1:80"` and `"[::1]:80"` are numbers, not names; an IPv6 address needs its
/// brackets here, and `"::1"` or `"fe80::1:2"` without them is `InvalidInput`, where std
/// would read the last group as a port), `(&str, u16)` and `(String, u16)` (`("::1", 80)`
/// needs none), slices and vectors of `SocketAddr`, and references to all of these.
/// It is sealed: the resolution must be one copas knows how to run off the dispatcher.
pub trait ToAddrs: sealed::Sealed {}

impl<T: sealed::Sealed + ?Sized> ToAddrs for T {}

fn numbers(addr: impl Into<SocketAddr>) -> io::Result<Target> {
    Ok(Target::Addrs(vec![addr.into()]))
}

fn host_port(host: &str, port: u16) -> Target {
    match host.parse::<IpAddr>() {
        Ok(ip) => Target::Addrs(vec![SocketAddr::new(ip, port)]),
        Err(_) => Target::Host(host.to_string(), port),
    }
}

impl sealed::Sealed for SocketAddr {
    fn target(&self) -> io::Result<Target> {
        numbers(*self)
    }
}

impl sealed::Sealed for SocketAddrV4 {
    fn target(&self) -> io::Result<Target> {
        numbers(*self)
    }
}

impl sealed::Sealed for SocketAddrV6 {
    fn target(&self) -> io::Result<Target> {
        numbers(*self)
    }
}

impl sealed::Sealed for (IpAddr, u16) {
    fn target(&self) -> io::Result<Target> {
        numbers(*self)
    }
}

impl sealed::Sealed for (Ipv4Addr, u16) {
    fn target(&self) -> io::Result<Target> {
        numbers(*self)
    }
}

impl sealed::Sealed for (Ipv6Addr, u16) {
    fn target(&self) -> io::Result<Target> {
        numbers(*self)
    }
}

impl sealed::Sealed for [SocketAddr] {
    fn target(&self) -> io::Result<Target> {
        Ok(Target::Addrs(self.to_vec()))
    }
}

impl sealed::Sealed for Vec<SocketAddr> {
    fn target(&self) -> io::Result<Target> {
        Ok(Target::Addrs(self.clone()))
    }
}

impl sealed::Sealed for str {
    fn target(&self) -> io::Result<Target> {
        if let Ok(addr) = self.parse::<SocketAddr>() {
            return numbers(addr);
        }
        let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "invalid socket address");
        let (host, port) = self.rsplit_once(':').ok_or_else(invalid)?;
        if host.contains(':') {
            // An IPv6 address without brackets: where it ends and a port begins cannot be
            // told ("::1" is no host ":" with port 1, "fe80::1:2" is an address).
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an IPv6 address with a port is written [address]:port",
            ));
        }
        let port: u16 = port.parse().map_err(|_| invalid())?;
        Ok(host_port(host, port))
    }
}

impl sealed::Sealed for String {
    fn target(&self) -> io::Result<Target> {
        self.as_str().target()
    }
}

impl sealed::Sealed for (&str, u16) {
    fn target(&self) -> io::Result<Target> {
        Ok(host_port(self.0, self.1))
    }
}

impl sealed::Sealed for (String, u16) {
    fn target(&self) -> io::Result<Target> {
        Ok(host_port(&self.0, self.1))
    }
}

impl<T: sealed::Sealed + ?Sized> sealed::Sealed for &T {
    fn target(&self) -> io::Result<Target> {
        (**self).target()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addrs(addrs) => match addrs.as_slice() {
                [one] => write!(f, "{one}"),
                many => write!(f, "{many:?}"),
            },
            Target::Host(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// Resolves `addr` to its addresses; a host name on a helper thread, until `deadline`.
///
/// # Errors
///
/// [`ErrorKind::HostNotFound`] when the name does not resolve (or resolves to nothing),
/// [`ErrorKind::Timeout`] when `deadline` passes first, [`ErrorKind::InvalidInput`] for a
/// malformed `"host:port"` and for an empty list of addresses (as `bind_reuseport`).
pub(crate) fn resolve(
    addr: &(impl ToAddrs + ?Sized),
    deadline: Option<Instant>,
) -> Result<Vec<SocketAddr>> {
    let (host, port) = match addr.target()? {
        Target::Addrs(addrs) if addrs.is_empty() => {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "no address given",
            ))
        }
        Target::Addrs(addrs) => return Ok(addrs),
        Target::Host(host, port) => (host, port),
    };
    let name = host.clone();
    let resolved = remote::offload(
        move || -> io::Result<Vec<SocketAddr>> {
            Ok((host.as_str(), port).to_socket_addrs()?.collect())
        },
        deadline,
        remote::WhenAbandoned::Skip,
    )?;
    match resolved {
        Ok(addrs) if addrs.is_empty() => Err(Error::with_message(ErrorKind::HostNotFound, name)),
        Ok(addrs) => Ok(addrs),
        Err(e) => Err(Error::from_io(ErrorKind::HostNotFound, e, name)),
    }
}

/// Connects to `addr` (each resolved address in turn) with an optional timeout for the
/// whole attempt, resolution included.
pub(crate) fn connect(addr: impl ToAddrs, timeout: Option<Duration>) -> Result<Socket> {
    let deadline = super::deadline(timeout);
    let addrs = resolve(&addr, deadline)?;
    first_connected(addrs, deadline, |addr| connect_one(addr, deadline, timeout))
}

/// Tries `attempt` on each address in turn until one connects. Stops early only when the
/// deadline has passed or the coroutine is cancelled (it must not wait again): a kernel's
/// own connect timeout on one address (`ETIMEDOUT`, also `ErrorKind::Timeout`: SYNs
/// dropped, typically on an IPv6 route that goes nowhere) leaves the next address its turn.
fn first_connected<T>(
    addrs: Vec<SocketAddr>,
    deadline: Option<Instant>,
    mut attempt: impl FnMut(SocketAddr) -> Result<T>,
) -> Result<T> {
    let mut last = None;
    for addr in addrs {
        match attempt(addr) {
            Ok(sock) => return Ok(sock),
            Err(e)
                if e.kind() == ErrorKind::Cancelled
                    || deadline.is_some_and(|at| Instant::now() >= at) =>
            {
                return Err(e)
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::new(ErrorKind::HostNotFound)))
}

fn connect_one(
    addr: SocketAddr,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
) -> Result<Socket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    let pending = match sock.connect(&addr.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
        Err(e) => return Err(e.into()),
    };
    let timeouts = Timeouts {
        connect: timeout,
        ..Timeouts::default()
    };
    let conn = Connection::register(sock, timeouts, SocketName::Default)?;
    conn.io.await_first_event();
    if pending {
        conn.io.writable.set(false);
        conn.wait_connected(deadline)?;
    }
    Ok(Socket::from_connection(conn))
}

/// Takes over a connected std or socket2 TCP stream.
pub(crate) fn wrap(sock: socket2::Socket) -> Result<Socket> {
    // A datagram socket read as a stream loses each datagram's tail beyond the read size;
    // a listener has no stream to read.
    if sock.r#type()? != socket2::Type::STREAM || !crate::sys::is_ip(&sock)? {
        return Err(Error::with_message(
            ErrorKind::InvalidState,
            "wrap takes a TCP stream (use wrapudp for UDP)",
        ));
    }
    if crate::sys::is_listener(&sock)? == Some(true) {
        return Err(Error::with_message(
            ErrorKind::InvalidState,
            "wrap takes a connected TCP stream, not a listener (use addserver)",
        ));
    }
    sock.set_nonblocking(true)?;
    let conn = Connection::register(sock, Timeouts::default(), SocketName::Default)?;
    Ok(Socket::from_connection(conn))
}

#[cfg(test)]
mod tests {
    use super::sealed::Sealed;
    use super::*;

    #[test]
    fn numbers_are_not_names() {
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!("127.0.0.1:80".target().unwrap(), Target::Addrs(vec![v4]));
        assert_eq!("[::1]:80".target().unwrap(), Target::Addrs(vec![v6]));
        assert_eq!(("::1", 80).target().unwrap(), Target::Addrs(vec![v6]));
        assert_eq!(v4.target().unwrap(), Target::Addrs(vec![v4]));
        let by_ref: &SocketAddr = &v4;
        assert_eq!(Sealed::target(&by_ref).unwrap(), Target::Addrs(vec![v4]));
        assert_eq!(
            "localhost:9000".target().unwrap(),
            Target::Host("localhost".into(), 9000)
        );
        assert_eq!(
            ("example.org".to_string(), 443).target().unwrap(),
            Target::Host("example.org".into(), 443)
        );
        assert!("no-port".target().is_err());
        assert!("host:99999".target().is_err());
    }

    #[test]
    fn an_ipv6_address_without_brackets_is_invalid_input_not_a_name() {
        // Before: "::1" was the host ":" with port 1, sent to the resolver.
        for text in ["::1", "fe80::1:2", "::1:80", "2001:db8::7"] {
            let err = text.target().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{text}");
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// `first_connected` over addresses 1, 2, 3 whose attempts fail with `first` (address
    /// 1) and succeed after; returns the outcome and the addresses tried.
    fn attempts(first: ErrorKind, deadline: Option<Instant>) -> (Result<u16>, Vec<u16>) {
        let mut tried = Vec::new();
        let got = first_connected(vec![addr(1), addr(2), addr(3)], deadline, |a| {
            tried.push(a.port());
            match a.port() {
                1 => Err(Error::new(first)),
                port => Ok(port),
            }
        });
        (got, tried)
    }

    #[test]
    fn a_kernel_timeout_on_one_address_leaves_the_next_its_turn() {
        let later = Instant::now().checked_add(Duration::from_secs(3600));
        // Before: the kernel's ETIMEDOUT on the first address ended the whole connect.
        let (got, tried) = attempts(ErrorKind::Timeout, later);
        assert_eq!((got.ok(), tried), (Some(2), vec![1, 2]));
        let (got, tried) = attempts(ErrorKind::Timeout, None);
        assert_eq!((got.ok(), tried), (Some(2), vec![1, 2]));
        let (got, tried) = attempts(ErrorKind::Refused, later);
        assert_eq!((got.ok(), tried), (Some(2), vec![1, 2]));
    }

    #[test]
    fn a_passed_deadline_or_a_cancellation_ends_the_attempts() {
        let passed = Some(Instant::now());
        let (got, tried) = attempts(ErrorKind::Timeout, passed);
        assert_eq!(
            (got.map_err(|e| e.kind()), tried),
            (Err(ErrorKind::Timeout), vec![1])
        );
        let later = Instant::now().checked_add(Duration::from_secs(3600));
        let (got, tried) = attempts(ErrorKind::Cancelled, later);
        assert_eq!(
            (got.map_err(|e| e.kind()), tried),
            (Err(ErrorKind::Cancelled), vec![1])
        );
    }
}
