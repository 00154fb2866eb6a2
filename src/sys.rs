//! The few system calls copas makes itself, with their `unsafe`.
//!
//! Outside any coroutine a socket call blocks the calling thread, as a plain `std::net` call
//! would; the socket stays non-blocking (the dispatcher may use it later), so waiting is a
//! `poll(2)` on its descriptor with the operation's deadline. `socket2` offers no `poll`.

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

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
