//! Networking: TCP sockets, servers, client connections, UDP and TLS.

pub(crate) mod connect;
pub(crate) mod read_buffers;
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
/// Shared by every socket type.
///
/// Inlined, with only the common case here (a coroutine waiting without a deadline and woken
/// by readiness): every frame between a handler and the switch is one more cold stack line
/// and one more mispredicted return when the coroutine is resumed.
#[inline]
pub(crate) fn wait_ready(
    io: &crate::dispatcher::IoSource,
    fd: std::os::fd::RawFd,
    write: bool,
    deadline: Option<std::time::Instant>,
) -> crate::Result<()> {
    use crate::dispatcher;
    if deadline.is_none() && copas_coro::in_coroutine() {
        return wake_result(dispatcher::with(|d| d.wait_io(io, write, None)));
    }
    wait_ready_slow(io, fd, write, deadline)
}

/// What a coroutine's wait for readiness returns, given why it was woken.
#[inline]
fn wake_result(wake: crate::dispatcher::Wake) -> crate::Result<()> {
    use crate::dispatcher::Wake;
    match wake {
        Wake::Event | Wake::Woken => Ok(()),
        other => Err(wake_error(other)),
    }
}

/// The error a wait that did not end in readiness returns.
#[cold]
#[inline(never)]
fn wake_error(wake: crate::dispatcher::Wake) -> crate::Error {
    use crate::dispatcher::Wake;
    use crate::{Error, ErrorKind};
    Error::new(match wake {
        Wake::Timeout => ErrorKind::Timeout,
        Wake::Closed => ErrorKind::Closed,
        Wake::Event | Wake::Woken | Wake::Cancelled => ErrorKind::Cancelled,
    })
}

/// [`wait_ready`] with a deadline, or outside any coroutine.
#[inline(never)]
fn wait_ready_slow(
    io: &crate::dispatcher::IoSource,
    fd: std::os::fd::RawFd,
    write: bool,
    deadline: Option<std::time::Instant>,
) -> crate::Result<()> {
    use crate::dispatcher;
    use crate::{Error, ErrorKind};
    let out_of_time = deadline.is_some_and(|at| std::time::Instant::now() >= at);
    if copas_coro::in_coroutine() && !out_of_time {
        return wake_result(dispatcher::with(|d| d.wait_io(io, write, deadline)));
    }
    if io.is_closed() {
        return Err(Error::new(ErrorKind::Closed));
    }
    // Out of time (a zero timeout, or one spent), inside a coroutine or not: no waiting,
    // but the readiness bit only says what the dispatcher's events and this socket's last
    // calls have shown, which misses bytes that came since (outside a coroutine, or before
    // it yielded). "Fail when the call would block" needs the kernel's word: `poll_fd`
    // with a passed deadline asks without waiting. Each `true` lets the caller make one
    // more system call, which takes what made the descriptor ready, so this cannot spin.
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

/// When a wait of `timeout` from now ends: `None` for no timeout, or one too long to add to
/// the clock (as good as none).
#[inline]
pub(crate) fn deadline(timeout: Option<std::time::Duration>) -> Option<std::time::Instant> {
    timeout.and_then(|t| std::time::Instant::now().checked_add(t))
}
