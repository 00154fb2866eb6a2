//! Client connections: `connect` and `wrap`.
//!
//! A connect is non-blocking: the socket is created non-blocking, registered, and the
//! coroutine waits for writability (the kernel's "connect finished"), then reads
//! `SO_ERROR`. Several addresses are tried in turn within one deadline.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::net::socket::{Connection, Socket, SocketName, Timeouts};

/// Connects to `addr` (each resolved address in turn) with an optional timeout for the
/// whole attempt.
///
/// Name resolution (`addr` given as `"host:port"`) uses the system resolver and blocks the
/// thread while it runs; pass a `SocketAddr` to avoid it.
pub(crate) fn connect(addr: impl ToSocketAddrs, timeout: Option<Duration>) -> Result<Socket> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last = Error::with_message(ErrorKind::Io, "no address to connect to");
    for addr in addrs {
        match connect_one(addr, deadline, timeout) {
            Ok(sock) => return Ok(sock),
            Err(e) if e.kind() == ErrorKind::Timeout => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
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
    if pending {
        conn.io.writable.set(false);
        conn.wait_connected(deadline)?;
    }
    Ok(Socket::from_connection(conn))
}

/// Takes over a connected std or socket2 TCP stream.
pub(crate) fn wrap(sock: socket2::Socket) -> Result<Socket> {
    sock.set_nonblocking(true)?;
    let conn = Connection::register(sock, Timeouts::default(), SocketName::Default)?;
    Ok(Socket::from_connection(conn))
}
