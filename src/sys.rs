//! The few system calls copas makes itself, with their `unsafe`.
//!
//! Outside any coroutine a socket call blocks the calling thread, as a plain `std::net` call
//! would; the socket stays non-blocking (the dispatcher may use it later), so waiting is a
//! `poll(2)` on its descriptor with the operation's deadline. `socket2` offers no `poll`.

use std::io;

/// Flags for every `send`: a write to a reset peer must fail with `EPIPE`, not raise
/// `SIGPIPE` (which kills a process that did not ignore it, e.g. under a C host).
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos",
    target_os = "solaris"
))]
pub(crate) const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;

/// Apple platforms have no `MSG_NOSIGNAL`; `socket2` sets `SO_NOSIGPIPE` on their sockets.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos",
    target_os = "solaris"
)))]
pub(crate) const SEND_FLAGS: libc::c_int = 0;
use std::os::fd::RawFd;
use std::time::Instant;

/// Accepts one connection from the non-blocking `listener`, itself non-blocking and
/// close-on-exec. On Linux the flags come with the accept (`accept4(2)`), saving the two
/// `fcntl` calls of `set_nonblocking` for every connection a server takes.
pub(crate) fn accept_nonblocking(listener: &socket2::Socket) -> io::Result<socket2::Socket> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let sock = listener
        .accept4(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)?
        .0;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let sock = {
        let (sock, _) = listener.accept()?;
        sock.set_nonblocking(true)?;
        sock
    };
    Ok(sock)
}

/// One `recv(2)` into `buf`, which need not be initialised: `Ok(n)` means its first `n`
/// bytes were written. Called with the descriptor's number rather than through `socket2`,
/// whose `RefCell`-guarded handle and wrappers are a few dozen instructions and two more code
/// lines on every message (`IoSource::fd`).
#[inline]
pub(crate) fn recv(fd: RawFd, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writing `buf.len()` bytes; `recv` writes at most that many.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `send(2)` of `data` with [`SEND_FLAGS`] (never `SIGPIPE`).
#[inline]
pub(crate) fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice for reading `data.len()` bytes.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), SEND_FLAGS) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The most slices one `sendmsg(2)` takes (`UIO_MAXIOV` on Linux, `IOV_MAX` on the BSDs and
/// macOS); callers pass longer lists in turns.
pub(crate) const MAX_SLICES: usize = 1024;

/// One `sendmsg(2)` of `bufs` (at most [`MAX_SLICES`] of them) with [`SEND_FLAGS`].
#[inline]
pub(crate) fn send_vectored(fd: RawFd, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    let bufs = &bufs[..bufs.len().min(MAX_SLICES)];
    // SAFETY: an all-zero `msghdr` is a valid one (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix; `sendmsg` only reads it.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: `msg` points at `bufs.len()` valid `iovec`s, each valid for reading its length.
    let n = unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Blocks until `fd` is readable (or writable, with `write`), or `deadline` passes.
/// Returns whether it became ready. Interrupted waits are resumed.
pub(crate) fn poll_fd(fd: RawFd, write: bool, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout_ms: libc::c_int = match deadline {
            None => -1,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                let ms = left.as_nanos().div_ceil(1_000_000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events: if write { libc::POLLOUT } else { libc::POLLIN },
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, initialised pollfd and we pass a count of 1.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n > 0 {
            return Ok(true);
        }
        if deadline.is_some_and(|at| Instant::now() >= at) {
            return Ok(false);
        }
    }
}

/// One received datagram.
#[derive(Debug)]
pub(crate) struct Datagram {
    /// The bytes that fitted in the buffer.
    pub(crate) data: Vec<u8>,
    /// The datagram's real length: larger than `data.len()` when it was cut (on Linux the
    /// kernel tells it, through `MSG_TRUNC`; elsewhere only that it was cut, so
    /// `data.len() + 1`).
    pub(crate) len: usize,
    /// The sender.
    pub(crate) from: Option<std::net::SocketAddr>,
}

impl Datagram {
    pub(crate) fn truncated(&self) -> bool {
        self.len > self.data.len()
    }
}

/// Receives one datagram of at most `size` bytes with `recvmsg`, learning whether it was cut
/// (and, on Linux, its real size). `EINTR` is retried.
pub(crate) fn recv_datagram(sock: &socket2::Socket, size: usize) -> io::Result<Datagram> {
    #[cfg(target_os = "linux")]
    const FLAGS: libc::c_int = libc::MSG_TRUNC;
    #[cfg(not(target_os = "linux"))]
    const FLAGS: libc::c_int = 0;
    let mut data: Vec<u8> = Vec::with_capacity(size);
    loop {
        let spare = &mut data.spare_capacity_mut()[..size];
        let mut bufs = [socket2::MaybeUninitSlice::new(spare)];
        match sock.recv_from_vectored_with_flags(&mut bufs, FLAGS) {
            Ok((n, flags, from)) => {
                let got = n.min(size);
                // SAFETY: `recvmsg` wrote the first `min(n, size)` bytes of the spare
                // capacity (with `MSG_TRUNC`, `n` is the datagram's real length, which may
                // exceed what was written, hence the `min`), and `size` is within the
                // capacity reserved above.
                unsafe { data.set_len(got) };
                if got < data.capacity() / 4 {
                    // Sized for the largest datagram, answered by a small one: a caller that
                    // keeps it should not keep the slack (as `Socket::recv_vec`).
                    data.shrink_to_fit();
                }
                let cut = flags.is_truncated() || n > size;
                let len = if cut { n.max(size + 1) } else { got };
                return Ok(Datagram {
                    data,
                    len,
                    from: from.as_socket(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
