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

/// Whether `listen(2)` was called on `sock` (`SO_ACCEPTCONN`); `None` where the system
/// cannot say.
pub(crate) fn is_listener(sock: &socket2::Socket) -> io::Result<Option<bool>> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    return sock.is_listener().map(Some);
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let _ = sock;
        Ok(None)
    }
}

/// Whether `sock` is an IPv4 or IPv6 socket (not a Unix-domain one, say): its own
/// address's family.
pub(crate) fn is_ip(sock: &socket2::Socket) -> io::Result<bool> {
    let addr = sock.local_addr()?;
    Ok(addr.is_ipv4() || addr.is_ipv6())
}

/// One `recv(2)` into `buf`, which need not be initialised: `Ok(n)` means its first `n`
/// bytes were written. Called with the descriptor's number rather than through `socket2`,
/// whose `RefCell`-guarded handle and wrappers are a few dozen instructions and two more code
/// lines on every message (`IoSource::fd`); on x86-64 Linux without libc's wrapper either
/// (see [`direct`]).
#[inline]
pub(crate) fn recv(fd: RawFd, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    // SAFETY: `buf` is valid for writing `buf.len()` bytes; `recvfrom` writes at most that
    // many, and no address (both address arguments are null).
    return direct::result(unsafe {
        direct::syscall6(
            libc::SYS_recvfrom,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    });
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        // SAFETY: `buf` is valid for writing `buf.len()` bytes; `recv` writes at most that
        // many.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// One `send(2)` of `data` with [`SEND_FLAGS`] (never `SIGPIPE`); on x86-64 Linux without
/// libc's wrapper (see [`direct`]).
#[inline]
pub(crate) fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    // SAFETY: `data` is valid for reading `data.len()` bytes; `sendto` only reads them, and
    // no address (null, length 0).
    return direct::result(unsafe {
        direct::syscall6(
            libc::SYS_sendto,
            [
                fd as usize,
                data.as_ptr() as usize,
                data.len(),
                SEND_FLAGS as usize,
                0,
                0,
            ],
        )
    });
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        // SAFETY: `data` is a valid slice for reading `data.len()` bytes.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), SEND_FLAGS) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// The per-message system calls (`recv`, `send`) made with the `syscall` instruction where
/// they are called, not through libc's wrappers.
///
/// Why: on the benchmark host every `ret` after a system call to a caller from before it
/// costs 6.7–7.5 ns, measured with `rdtsc` after a loopback `sendto`/`recvfrom` through 0–12
/// extra frames, against under 1 ns with no system call between (`docs/benchmarks.md`,
/// "Run 55"): the size of a mispredicted return, most likely left by the kernel's
/// return-stack mitigations (SRSO's "Safe RET", Spectre v2's RSB filling). libc's wrapper is
/// one such return per call, two per echoed message. The calls are the same ones glibc makes
/// (`recvfrom`, `sendto`); only the thread's `errno` is left alone, the error coming back in
/// the result instead.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod direct {
    use std::io;

    /// Makes system call `nr` with `args`; the kernel's result, a negated `errno` on failure.
    ///
    /// # Safety
    ///
    /// `nr` and `args` must be a system call that is sound to make here: every pointer among
    /// `args` valid for what that call reads or writes through it, for as long as it runs.
    #[inline(always)]
    pub(super) unsafe fn syscall6(nr: libc::c_long, args: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the caller vouches for the call; the `syscall` instruction clobbers only
        // `rcx` and `r11` (declared), does not touch the user stack, and the kernel restores
        // the flags from `r11` on return. Memory is not marked untouched: the kernel may
        // write through the pointers given.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") args[0],
                in("rsi") args[1],
                in("rdx") args[2],
                in("r10") args[3],
                in("r8") args[4],
                in("r9") args[5],
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack, preserves_flags),
            );
        }
        ret
    }

    /// A system call's result as libc's wrapper would give it: a count, or the error
    /// (the kernel returns -4095..=-1 for errors).
    #[inline(always)]
    pub(super) fn result(ret: isize) -> io::Result<usize> {
        if (-4095..0).contains(&ret) {
            Err(io::Error::from_raw_os_error(-ret as i32))
        } else {
            Ok(ret as usize)
        }
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

    /// Copies what fits of the datagram into `buf`: what a receive into `buf` would have got.
    pub(crate) fn land_in(self, buf: &mut [u8]) -> Landed {
        let got = self.data.len().min(buf.len());
        buf[..got].copy_from_slice(&self.data[..got]);
        Landed {
            got,
            len: self.len,
            from: self.from,
        }
    }

    /// The datagram as a receive of at most `size` bytes would have had it from the kernel:
    /// cut to `size`, keeping its real length.
    pub(crate) fn cut_to(mut self, size: usize) -> Datagram {
        if self.data.len() > size {
            self.data.truncate(size);
            self.data.shrink_to_fit();
        }
        self
    }
}

/// The largest UDP payload (65,535 bytes less the UDP header, over IPv6 without jumbograms):
/// what a datagram read without knowing who will take it must have room for.
pub(crate) const MAX_DATAGRAM: usize = 65_527;

/// What [`recv_datagrams`] received.
#[derive(Debug)]
pub(crate) struct Received {
    /// The first datagram, cut to the size asked for.
    pub(crate) first: Datagram,
    /// The datagram queued behind it, whole (up to [`MAX_DATAGRAM`] bytes), if there was one.
    pub(crate) next: Option<Datagram>,
    /// The receive queue was empty after the first: no datagram is left unannounced, so
    /// the next receive can wait for the socket's next edge instead of asking the kernel
    /// only to hear `EAGAIN` (the short-read rule of TCP sockets, for datagrams).
    pub(crate) drained: bool,
}

/// Receives the next datagram, as [`recv_datagram`], and on Linux the one queued behind it
/// in the same system call (`recvmmsg(2)` of two), into `spare` (at least
/// [`MAX_DATAGRAM`] bytes) and then a vector of its size. Fewer than two datagrams means
/// the queue is empty now ([`Received::drained`]). `EINTR` is retried.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn recv_datagrams(
    sock: &socket2::Socket,
    size: usize,
    spare: &mut [u8],
) -> io::Result<Received> {
    let mut first: Vec<u8> = Vec::with_capacity(size);
    // SAFETY: the vector reserved `size` bytes, which live and are unaliased for the call.
    let (head, next, drained) = unsafe { recv_two(sock, first.as_mut_ptr(), size, spare)? };
    // SAFETY: `recv_two` wrote the first `head.got` (≤ `size`) bytes of the reserved
    // capacity.
    unsafe { first.set_len(head.got) };
    Ok(Received {
        first: datagram(first, head.len, head.cut(), size, head.from),
        next,
        drained,
    })
}

/// What a receive into a caller's buffer got of the first datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Landed {
    /// Bytes written into the buffer.
    pub(crate) got: usize,
    /// The datagram's length, as [`Datagram::len`]: larger than `got` when it was cut.
    pub(crate) len: usize,
    /// The sender.
    pub(crate) from: Option<std::net::SocketAddr>,
}

impl Landed {
    /// Whether the datagram was larger than the buffer it landed in.
    pub(crate) fn cut(&self) -> bool {
        self.len > self.got
    }
}

/// [`recv_datagrams`] with the first datagram landing in `buf` instead of a new vector:
/// what it got of it, the datagram queued behind it (in a vector, as there), and whether the
/// queue is empty now.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn recv_datagrams_into(
    sock: &socket2::Socket,
    buf: &mut [u8],
    spare: &mut [u8],
) -> io::Result<(Landed, Option<Datagram>, bool)> {
    // SAFETY: `buf` is `buf.len()` initialised bytes, live and unaliased for the call; the
    // kernel only writes bytes into it.
    unsafe { recv_two(sock, buf.as_mut_ptr(), buf.len(), spare) }
}

/// One `recvmmsg(2)` of up to two datagrams: the first into the `size` bytes at `first`,
/// the second into `spare` and then a vector of its size. `EINTR` is retried.
///
/// # Safety
///
/// `first` must point at `size` bytes (initialised or not) that are valid for writes and
/// not otherwise accessed during the call.
#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn recv_two(
    sock: &socket2::Socket,
    first: *mut u8,
    size: usize,
    spare: &mut [u8],
) -> io::Result<(Landed, Option<Datagram>, bool)> {
    use std::os::fd::AsRawFd;
    debug_assert!(spare.len() >= MAX_DATAGRAM);
    let fd = sock.as_raw_fd();
    loop {
        let mut iov = [
            libc::iovec {
                iov_base: first.cast(),
                iov_len: size,
            },
            libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: spare.len(),
            },
        ];
        let mut lens = [0usize; 2];
        let mut truncated = [false; 2];
        // SAFETY: `try_init` hands each closure a zeroed address storage and its length, and
        // builds the address from what the closure leaves in them; `recvmmsg` writes at most
        // `msg_namelen` bytes of address into each storage and sets `msg_namelen` to the
        // address's length, which is what the closure reports back. The two `iovec`s point
        // at the caller's `size` bytes at `first` (valid for writes and unaliased, by this
        // function's contract) and at all of `spare`. An all-zero `mmsghdr` is valid plain
        // data (null pointers, zero lengths) before the fields are set.
        let got = unsafe {
            socket2::SockAddr::try_init(|addr1, len1| {
                socket2::SockAddr::try_init(|addr2, len2| {
                    let mut msgs: [libc::mmsghdr; 2] = std::mem::zeroed();
                    for (i, (addr, len)) in [(addr1, len1), (addr2, len2)].into_iter().enumerate() {
                        let hdr = &mut msgs[i].msg_hdr;
                        hdr.msg_name = addr.cast();
                        hdr.msg_namelen = *len;
                        hdr.msg_iov = &mut iov[i];
                        hdr.msg_iovlen = 1;
                    }
                    let n = libc::recvmmsg(
                        fd,
                        msgs.as_mut_ptr(),
                        2,
                        libc::MSG_TRUNC,
                        std::ptr::null_mut(),
                    );
                    if n < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    *len1 = msgs[0].msg_hdr.msg_namelen;
                    *len2 = msgs[1].msg_hdr.msg_namelen;
                    for i in 0..2 {
                        lens[i] = msgs[i].msg_len as usize;
                        truncated[i] = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                    }
                    Ok(n as usize)
                })
            })
        };
        match got {
            Ok(((n, addr2), addr1)) => {
                // With `MSG_TRUNC`, `msg_len` is the datagram's real length, which may
                // exceed what was written, hence the `min`.
                let got = lens[0].min(size);
                let head = Landed {
                    got,
                    len: real_len(got, lens[0], truncated[0], size),
                    from: addr1.as_socket(),
                };
                let next = (n >= 2).then(|| {
                    let got = lens[1].min(spare.len());
                    let data = spare[..got].to_vec();
                    datagram(data, lens[1], truncated[1], spare.len(), addr2.as_socket())
                });
                return Ok((head, next, n < 2));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// [`recv_datagram`], where `recvmmsg(2)` is not to be had: one datagram, and no word on
/// what is left.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn recv_datagrams(
    sock: &socket2::Socket,
    size: usize,
    _spare: &mut [u8],
) -> io::Result<Received> {
    Ok(Received {
        first: recv_datagram(sock, size)?,
        next: None,
        drained: false,
    })
}

/// [`recv_datagrams_into`], where `recvmmsg(2)` is not to be had: one datagram, received
/// into a vector and copied into `buf`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn recv_datagrams_into(
    sock: &socket2::Socket,
    buf: &mut [u8],
    _spare: &mut [u8],
) -> io::Result<(Landed, Option<Datagram>, bool)> {
    Ok((recv_datagram(sock, buf.len())?.land_in(buf), None, false))
}

/// A received datagram from what a buffer of `size` bytes took of it (`data`), the length
/// the kernel reported (`n`, the real one with `MSG_TRUNC`) and whether the kernel cut it.
/// Sheds the slack of a buffer sized for the largest datagram and answered by a small one:
/// a caller that keeps it should not keep the slack (as `Socket::recv_vec`).
fn datagram(
    mut data: Vec<u8>,
    n: usize,
    truncated: bool,
    size: usize,
    from: Option<std::net::SocketAddr>,
) -> Datagram {
    let got = data.len();
    if got < data.capacity() / 4 {
        data.shrink_to_fit();
    }
    let len = real_len(got, n, truncated, size);
    Datagram { data, len, from }
}

/// The length of a datagram of which a buffer of `size` bytes took `got`, from the length
/// the kernel reported (`n`, the real one with `MSG_TRUNC`) and whether it cut it: `got`
/// when whole, and at least `size + 1` when cut (elsewhere than Linux the real length is
/// not told).
fn real_len(got: usize, n: usize, truncated: bool, size: usize) -> usize {
    if truncated || n > size {
        n.max(size + 1)
    } else {
        got
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
                return Ok(datagram(
                    data,
                    n,
                    flags.is_truncated(),
                    size,
                    from.as_socket(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A connected loopback pair, both ends non-blocking.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Waits up to 5 s for `fd` to be readable.
    fn readable(fd: RawFd) {
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(
            poll_fd(fd, false, Some(deadline)).unwrap(),
            "not readable within 5 s"
        );
    }

    #[test]
    fn recv_and_send_move_bytes_and_fail_as_libc_would() {
        let (a, b) = pair();
        let mut buf = [MaybeUninit::<u8>::uninit(); 16];
        let empty = recv(b.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(empty.raw_os_error(), Some(libc::EAGAIN));

        assert_eq!(send(a.as_raw_fd(), b"hello").unwrap(), 5);
        readable(b.as_raw_fd());
        let n = recv(b.as_raw_fd(), &mut buf[..3]).unwrap();
        assert_eq!(n, 3, "at most the buffer's length");
        let got: Vec<u8> = buf[..n]
            .iter()
            // SAFETY: `recv` wrote the first `n` bytes.
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert_eq!(got, b"hel");
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 2);

        drop(a);
        readable(b.as_raw_fd());
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 0, "end of stream");

        let closed = recv(-1, &mut buf).unwrap_err();
        assert_eq!(closed.raw_os_error(), Some(libc::EBADF));
        let closed = send(-1, b"x").unwrap_err();
        assert_eq!(closed.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn send_to_a_reset_peer_is_an_error_not_sigpipe() {
        let (a, b) = pair();
        // Linger 0: closing sends a reset instead of a FIN.
        socket2::SockRef::from(&b)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            match send(a.as_raw_fd(), b"x") {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => break e,
            }
            assert!(Instant::now() < deadline, "no error within 5 s");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(
            matches!(err.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
            "{err:?}"
        );
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn direct_results_are_counts_or_negated_errnos() {
        assert_eq!(direct::result(0).unwrap(), 0);
        assert_eq!(direct::result(4096).unwrap(), 4096);
        assert_eq!(direct::result(-1).unwrap_err().raw_os_error(), Some(1));
        assert_eq!(
            direct::result(-(libc::EINTR as isize)).unwrap_err().kind(),
            io::ErrorKind::Interrupted
        );
        assert_eq!(
            direct::result(-4095).unwrap_err().raw_os_error(),
            Some(4095)
        );
    }
}
