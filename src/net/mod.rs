//! Networking: TCP sockets, servers, client connections, UDP and TLS.

pub(crate) mod connect;
pub(crate) mod server;
pub(crate) mod socket;
pub(crate) mod tls;
pub(crate) mod udp;

/// A socket address from `socket2`'s form; `Unsupported` for non-IP families.
pub(crate) fn socket_addr(addr: socket2::SockAddr) -> std::io::Result<std::net::SocketAddr> {
    addr.as_socket()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Waits until `io` is ready in one direction (`write`), it is closed, or `deadline` passes:
/// inside a coroutine by suspending it, outside by blocking the thread in `poll(2)` on `fd`.
/// Shared by every socket type. Inlined for the reason given at `Dispatcher::suspend`.
#[inline]
pub(crate) fn wait_ready(
    io: &crate::dispatcher::IoSource,
    fd: std::os::fd::RawFd,
    write: bool,
    deadline: Option<std::time::Instant>,
) -> crate::Result<()> {
    use crate::dispatcher::{self, Wake};
    use crate::{Error, ErrorKind};
    if deadline.is_some_and(|at| std::time::Instant::now() >= at) {
        return Err(Error::new(ErrorKind::Timeout));
    }
    if copas_coro::in_coroutine() {
        let wake = dispatcher::with(|d| d.wait_io(io, write, deadline));
        return match wake {
            Wake::Event | Wake::Woken => Ok(()),
            Wake::Timeout => Err(Error::new(ErrorKind::Timeout)),
            Wake::Closed => Err(Error::new(ErrorKind::Closed)),
            Wake::Cancelled => Err(Error::new(ErrorKind::Cancelled)),
        };
    }
    if io.is_closed() {
        return Err(Error::new(ErrorKind::Closed));
    }
    if crate::sys::poll_fd(fd, write, deadline)? {
        if write {
            io.writable.set(true);
        } else {
            io.readable.set(true);
        }
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Timeout))
    }
}
