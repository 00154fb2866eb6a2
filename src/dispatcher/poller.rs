//! The readiness source: registering descriptors and waiting for their events.
//!
//! On Linux this talks to epoll directly; elsewhere it uses the `polling` crate. Linux gets its
//! own backend for two reasons, both measured (docs/design.md, "The poller"):
//!
//! * **End of stream.** A short read means the receive queue was drained, so the socket need
//!   not be read again until its next edge — except when the peer's FIN (or a reset) was queued
//!   behind the data: that raises no further edge. epoll reports it as `EPOLLRDHUP`, which
//!   `polling` neither registers nor exposes; with it, a FIN is remembered in a bit of its own
//!   and the short-read rule is safe. Without it (other platforms) only `WouldBlock` may clear
//!   readiness, at the price of one more read per message.
//! * **Cost per wait.** `polling`'s `wait` makes five system calls on Linux (it re-arms a
//!   timerfd and an eventfd each time); here a wait is one system call: `epoll_wait` when
//!   it waits for no deadline or for none at all (the common waits, and the cheaper call:
//!   no timespec to copy in), `epoll_pwait2` for a deadline, to the nanosecond (on kernels
//!   before 5.11 `epoll_wait` again, with the timeout rounded up to a millisecond).
//! * **Long waits on time.** The kernel lets an epoll timeout run late by 0.1 % of its length
//!   (and by at least the thread's timer slack, 50 µs by default): a `pause` of one second woke
//!   1.1 ms late. A wait of [`TIMERFD_FROM`] or more therefore arms a timerfd, which has no
//!   such allowance, and waits for it without a timeout.
//!
//! Every descriptor is registered once, edge-triggered, for both directions.
//!
//! On Linux a registration asks for urgent data too (`EPOLLPRI`): TCP reports the peer's
//! urgent mark (`MSG_OOB`), where a read stops short without having drained the queue, so
//! the short-read rule must not apply until a read hears `WouldBlock` (`reactor.rs`). It
//! costs nothing on ordinary traffic: TCP sets `EPOLLPRI` only while urgent data is
//! pending, listening sockets never, and datagram sockets only for an error queue selected
//! with `SO_SELECT_ERR_QUEUE`, which copas does not set.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// One readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readiness {
    pub(crate) key: u64,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// The peer will send nothing more (FIN, reset, or error): reads no longer block.
    pub(crate) read_closed: bool,
    /// The peer sent urgent data (`MSG_OOB`): a read may stop short at its mark.
    pub(crate) urgent: bool,
}

/// Whether a short read proves the socket drained on this platform (it does when the
/// poller reports end of stream separately; see the module docs).
pub(crate) const SHORT_READ_DRAINS: bool = cfg!(target_os = "linux");

/// Whether registering a descriptor makes the next wait report what it is ready for already
/// (epoll's `EPOLL_CTL_ADD` queues an event for the current state, edge-triggered or not), so
/// a new connection's readiness need not be guessed.
pub(crate) const REGISTRATION_REPORTS_STATE: bool = cfg!(target_os = "linux");

/// The key reserved for the poller's own wake-up descriptor.
pub(crate) const NOTIFY_KEY: u64 = u64::MAX;

/// The key reserved for the poller's timerfd (Linux).
#[cfg(target_os = "linux")]
const TIMER_KEY: u64 = u64::MAX - 1;

/// From how long a wait the Linux poller times it with its timerfd: from where the kernel's
/// allowance for a late epoll timeout (0.1 % of it) exceeds the default timer slack (50 µs).
/// Shorter waits keep the single `epoll_pwait2`; a long one costs one `timerfd_settime` more
/// when its deadline is earlier than the one armed.
#[cfg(target_os = "linux")]
pub(crate) const TIMERFD_FROM: Duration = Duration::from_millis(50);

/// How much later than a wait's deadline an armed timerfd may be and still be kept: the
/// deadline of a wait is recomputed from the clock each time, so the same timer arrives a few
/// microseconds later at each wait, and re-arming for that would be a system call per wait.
#[cfg(target_os = "linux")]
const TIMER_KEPT_WITHIN: Duration = Duration::from_micros(20);

#[cfg(target_os = "linux")]
pub(crate) use linux::{Poller, Waker};

#[cfg(not(target_os = "linux"))]
pub(crate) use portable::{Poller, Waker};

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Once;
    use std::time::Instant;

    use crate::error::{Error, ErrorKind};

    /// How many events one wait can return.
    const EVENT_CAPACITY: usize = 1024;

    /// How many times this process has been forked, as counted in the child: a poller made
    /// before a `fork` shares its epoll instance, eventfd and timerfd with the parent, so in
    /// the child it must touch none of them (the child's timerfd arming and waits stole the
    /// parent's expiries: a parent's `pause` never returned).
    static FORKS: AtomicU32 = AtomicU32::new(0);

    extern "C" fn count_fork_in_child() {
        // An atomic add only: async-signal-safe, as a handler run after `fork` must be.
        FORKS.fetch_add(1, Ordering::Relaxed);
    }

    /// The fork count now, with the handler that counts forks installed (once per process).
    fn forks() -> u32 {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            // SAFETY: registers a handler without arguments that only adds to an atomic;
            // `pthread_atfork` copies the pointers and keeps no reference to our data. If it
            // fails (out of memory), forks go uncounted, as before this guard existed.
            unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
        });
        FORKS.load(Ordering::Relaxed)
    }

    /// An epoll instance with an eventfd for wake-ups from other threads.
    #[derive(Debug)]
    pub(crate) struct Poller {
        epoll: OwnedFd,
        notify: OwnedFd,
        buffer: RefCell<Vec<libc::epoll_event>>,
        /// `epoll_pwait2` is missing (kernel before 5.11) or refused (a seccomp filter that
        /// predates it, as container runtimes' defaults did): use `epoll_wait`.
        no_pwait2: Cell<bool>,
        /// Times long waits (see [`TIMERFD_FROM`]); `None` where it could not be created.
        timer: Option<OwnedFd>,
        /// When the timerfd is set to fire; `None` when it is not set or has fired.
        timer_at: Cell<Option<Instant>>,
        /// A wait took a wake-up from another thread since [`Poller::take_notified`] last
        /// said so.
        notified: Cell<bool>,
        /// [`FORKS`] when it was made: a different count means this is a child's inherited
        /// copy, which refuses every call (see [`Poller::inherited`]).
        made_in: u32,
    }

    fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// Wakes a [`Poller`] from another thread (see [`Poller::waker`]).
    #[derive(Debug)]
    pub(crate) struct Waker {
        notify: OwnedFd,
    }

    impl Waker {
        /// Makes the poller's current or next wait return. Any thread may call it.
        pub(crate) fn wake(&self) -> io::Result<()> {
            write_eventfd(self.notify.as_raw_fd())
        }
    }

    /// Adds one to an eventfd's counter.
    fn write_eventfd(fd: RawFd) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd the caller keeps open.
        let n = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A full counter already guarantees a wake-up.
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The epoll events of a socket's registration: reading, urgent data, end of stream
    /// and, with `write`, writing; edge-triggered.
    fn interest(write: bool) -> u32 {
        let mut events = libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLRDHUP | libc::EPOLLET;
        if write {
            events |= libc::EPOLLOUT;
        }
        events as u32
    }

    impl Poller {
        pub(crate) fn new() -> io::Result<Poller> {
            // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new
            // descriptor that we own.
            let epoll =
                unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
            // SAFETY: as above, for eventfd.
            let notify = unsafe {
                OwnedFd::from_raw_fd(check(libc::eventfd(
                    0,
                    libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
                ))?)
            };
            let mut poller = Poller {
                epoll,
                notify,
                buffer: RefCell::new(Vec::with_capacity(EVENT_CAPACITY)),
                no_pwait2: Cell::new(false),
                timer: None,
                timer_at: Cell::new(None),
                notified: Cell::new(false),
                made_in: forks(),
            };
            poller.ctl(
                libc::EPOLL_CTL_ADD,
                poller.notify.as_raw_fd(),
                (libc::EPOLLIN | libc::EPOLLET) as u32,
                NOTIFY_KEY,
            )?;
            poller.timer = poller.new_timer();
            Ok(poller)
        }

        /// A timerfd registered edge-triggered: each expiry is one event, and the count it
        /// leaves is never read (arming it again resets the count). `None` if the kernel
        /// refuses one (out of descriptors): long waits then use `epoll_pwait2`, less exact.
        fn new_timer(&self) -> Option<OwnedFd> {
            // SAFETY: timerfd_create takes no pointers; a non-negative result is a new
            // descriptor that we own.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
                )
            };
            // SAFETY: as above.
            let timer = unsafe { OwnedFd::from_raw_fd(check(fd).ok()?) };
            let events = (libc::EPOLLIN | libc::EPOLLET) as u32;
            self.ctl(libc::EPOLL_CTL_ADD, timer.as_raw_fd(), events, TIMER_KEY)
                .ok()?;
            Some(timer)
        }

        /// Makes sure the timerfd fires no later than `timeout` from now (within
        /// [`TIMER_KEPT_WITHIN`]). False when it cannot: no timerfd, or arming it failed.
        fn arm_timer(&self, timeout: Duration) -> bool {
            let Some(timer) = &self.timer else {
                return false;
            };
            let Some(at) = Instant::now().checked_add(timeout) else {
                return false;
            };
            // An earlier expiry is kept too: it ends this wait early (nothing is due then,
            // and the next wait arms the timer again), which costs less than re-arming it at
            // every wait while deadlines keep moving later, as receive timeouts do.
            if self
                .timer_at
                .get()
                // (`at` may lie within the tolerance of the clock's end.)
                .is_some_and(|armed| {
                    at.checked_add(TIMER_KEPT_WITHIN)
                        .is_none_or(|latest| armed <= latest)
                })
            {
                return true;
            }
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                    tv_nsec: timeout.subsec_nanos() as libc::c_long,
                },
            };
            // SAFETY: `spec` is a valid itimerspec that outlives the call; the old value is
            // not asked for (null).
            let ret =
                unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
            if ret < 0 {
                return false;
            }
            self.timer_at.set(Some(at));
            true
        }

        /// Refuses a poller inherited through `fork` (without `exec`): its descriptors are
        /// the parent's too, and using them from the child would take the parent's events
        /// and timer expiries, or add and remove the parent's registrations.
        #[inline]
        fn inherited(&self) -> io::Result<()> {
            if FORKS.load(Ordering::Relaxed) == self.made_in {
                return Ok(());
            }
            Err(io::Error::other(Error::with_message(
                ErrorKind::InvalidState,
                "this thread's dispatcher was inherited through fork(); in the child, use \
                 copas on a thread that had not used it before the fork",
            )))
        }

        fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
            self.inherited()?;
            let mut event = libc::epoll_event { events, u64: key };
            // SAFETY: `event` is a valid epoll_event; epoll ignores it for EPOLL_CTL_DEL.
            check(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) })?;
            Ok(())
        }

        /// Registers `fd`, edge-triggered with end-of-stream reports, for reading and, with
        /// `write`, for writing (see `IoSource::write_interest`).
        pub(crate) fn add(&self, fd: RawFd, key: u64, write: bool) -> io::Result<()> {
            self.ctl(libc::EPOLL_CTL_ADD, fd, interest(write), key)
        }

        /// Turns the interest of a registered `fd` in writing on or off. Turned on while
        /// the descriptor is writable already, the poller reports it at once (epoll looks
        /// at the descriptor's state on `EPOLL_CTL_MOD`).
        pub(crate) fn set_write_interest(
            &self,
            fd: RawFd,
            key: u64,
            write: bool,
        ) -> io::Result<()> {
            self.ctl(libc::EPOLL_CTL_MOD, fd, interest(write), key)
        }

        /// Unregisters `fd` (before it is closed).
        pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
            self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
        }

        /// A handle that wakes this poller from any thread: a duplicate of its eventfd, so
        /// it stays valid (writing to it is harmless) even after the poller is gone.
        pub(crate) fn waker(&self) -> io::Result<Waker> {
            Ok(Waker {
                notify: self.notify.try_clone()?,
            })
        }

        /// Waits up to `timeout` (`None`: indefinitely) and appends the events to `out`.
        /// Interrupted waits (`EINTR`) return with no events rather than an error. Returns
        /// whether the wait filled its buffer (more events may be pending).
        pub(crate) fn wait(
            &self,
            out: &mut Vec<Readiness>,
            timeout: Option<Duration>,
        ) -> io::Result<bool> {
            self.inherited()?;
            let mut buffer = self.buffer.borrow_mut();
            buffer.clear();
            let n = self.wait_raw(&mut buffer, timeout)?;
            let full = n == buffer.capacity();
            // SAFETY: the kernel initialised the first `n` entries.
            unsafe { buffer.set_len(n) };
            for ev in buffer.iter() {
                let key = ev.u64;
                if key == NOTIFY_KEY {
                    self.drain_notify();
                    self.notified.set(true);
                    continue;
                }
                if key == TIMER_KEY {
                    self.timer_at.set(None);
                    continue;
                }
                let flags = ev.events as libc::c_int;
                // Urgent data is readable, as a read will not block, but neither an error
                // nor the end of the stream.
                out.push(Readiness {
                    key,
                    readable: flags
                        & (libc::EPOLLIN
                            | libc::EPOLLRDHUP
                            | libc::EPOLLHUP
                            | libc::EPOLLERR
                            | libc::EPOLLPRI)
                        != 0,
                    writable: flags & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) != 0,
                    read_closed: flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0,
                    urgent: flags & libc::EPOLLPRI != 0,
                });
            }
            Ok(full)
        }

        fn wait_raw(
            &self,
            buffer: &mut Vec<libc::epoll_event>,
            timeout: Option<Duration>,
        ) -> io::Result<usize> {
            let epfd = self.epoll.as_raw_fd();
            let max = buffer.capacity() as libc::c_int;
            let events = buffer.as_mut_ptr();
            let ms = match timeout {
                // No deadline, or none left (coroutines are ready): plain `epoll_wait`, with
                // no timespec to copy in and no generic `syscall` wrapper. A step that finds
                // nothing to do costs little more than this call, and a `pause(ZERO)` loop
                // is a step per yield.
                None => -1,
                Some(t) if t.is_zero() => 0,
                // A long wait: the timerfd ends it on time (see the module docs).
                Some(t) if t >= TIMERFD_FROM && self.arm_timer(t) => -1,
                // A deadline: `epoll_pwait2` waits to the nanosecond, `epoll_wait` only to the
                // millisecond (rounded up, so never early).
                Some(t) => {
                    if !self.no_pwait2.get() {
                        if let Some(n) = self.wait_pwait2(epfd, events, max, t)? {
                            return Ok(n);
                        }
                    }
                    t.as_nanos()
                        .div_ceil(1_000_000)
                        .min(libc::c_int::MAX as u128) as libc::c_int
                }
            };
            // SAFETY: `events` has room for `max` entries.
            let ret = unsafe { libc::epoll_wait(epfd, events, max, ms) };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    return Ok(0);
                }
                return Err(err);
            }
            Ok(ret as usize)
        }

        /// `epoll_pwait2` with `timeout`; `None` when the kernel lacks it (remembered: every
        /// later wait uses `epoll_wait`).
        fn wait_pwait2(
            &self,
            epfd: RawFd,
            events: *mut libc::epoll_event,
            max: libc::c_int,
            timeout: Duration,
        ) -> io::Result<Option<usize>> {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: `events` has room for `max` entries; `ts` outlives the call; no signal
            // mask is passed.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    epfd,
                    events,
                    max,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if ret >= 0 {
                return Ok(Some(ret as usize));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => Ok(Some(0)),
                // `EPERM` and `EACCES` are no errors `epoll_pwait2` itself returns: they come
                // from a seccomp filter that does not know the call (std treats `statx` so).
                Some(libc::ENOSYS | libc::EPERM | libc::EACCES) => {
                    self.no_pwait2.set(true);
                    Ok(None)
                }
                _ => Err(err),
            }
        }

        /// Whether a wait since the last call took a wake-up from another thread
        /// ([`Waker::wake`]). The caller must then act on what was posted: a thread that
        /// posts while earlier posts wait wakes nobody.
        pub(crate) fn take_notified(&self) -> bool {
            self.notified.replace(false)
        }

        fn drain_notify(&self) {
            let mut value: u64 = 0;
            // SAFETY: reads at most 8 bytes into a valid u64 from our non-blocking eventfd.
            unsafe {
                libc::read(self.notify.as_raw_fd(), (&mut value as *mut u64).cast(), 8);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod portable {
    use super::*;
    use std::cell::RefCell;
    use std::num::NonZeroUsize;
    use std::sync::Arc;

    /// The `polling` crate's poller, for platforms without the epoll backend.
    #[derive(Debug)]
    pub(crate) struct Poller {
        /// Shared with the [`Waker`]s (`polling::Poller` is `Send + Sync`).
        inner: Arc<polling::Poller>,
        events: RefCell<polling::Events>,
    }

    /// Wakes a [`Poller`] from another thread (see [`Poller::waker`]).
    #[derive(Debug)]
    pub(crate) struct Waker {
        poller: Arc<polling::Poller>,
    }

    impl Waker {
        /// Makes the poller's current or next wait return. Any thread may call it.
        pub(crate) fn wake(&self) -> io::Result<()> {
            self.poller.notify()
        }
    }

    /// A socket's registration: reading and, with `write`, writing.
    fn interest(key: u64, write: bool) -> polling::Event {
        if write {
            polling::Event::all(key as usize)
        } else {
            polling::Event::readable(key as usize)
        }
    }

    impl Poller {
        pub(crate) fn new() -> io::Result<Poller> {
            Ok(Poller {
                inner: Arc::new(polling::Poller::new()?),
                events: RefCell::new(polling::Events::with_capacity(
                    NonZeroUsize::new(1024).expect("non-zero"),
                )),
            })
        }

        pub(crate) fn add(&self, fd: RawFd, key: u64, write: bool) -> io::Result<()> {
            // SAFETY: copas deletes every descriptor from the poller before closing it
            // (`Dispatcher::deregister`), which is what `polling` requires.
            unsafe {
                self.inner
                    .add_with_mode(fd, interest(key, write), polling::PollMode::Edge)
            }
        }

        pub(crate) fn set_write_interest(
            &self,
            fd: RawFd,
            key: u64,
            write: bool,
        ) -> io::Result<()> {
            // SAFETY: `fd` is open (it is deleted before it is closed).
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            self.inner
                .modify_with_mode(fd, interest(key, write), polling::PollMode::Edge)
        }

        pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
            // SAFETY: `fd` is open (it is deleted before it is closed).
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            self.inner.delete(fd)
        }

        /// A handle that wakes this poller from any thread.
        pub(crate) fn waker(&self) -> io::Result<Waker> {
            Ok(Waker {
                poller: self.inner.clone(),
            })
        }

        /// Whether a wait may have taken a wake-up from another thread: `polling` does not
        /// tell, so always.
        pub(crate) fn take_notified(&self) -> bool {
            true
        }

        /// Waits up to `timeout` (`None`: indefinitely) and appends the events to `out`.
        /// Returns whether the wait filled its buffer (more events may be pending).
        pub(crate) fn wait(
            &self,
            out: &mut Vec<Readiness>,
            timeout: Option<Duration>,
        ) -> io::Result<bool> {
            let mut events = self.events.borrow_mut();
            events.clear();
            self.inner.wait(&mut events, timeout)?;
            let full = events.len() == events.capacity().get();
            for ev in events.iter() {
                out.push(Readiness {
                    key: ev.key as u64,
                    readable: ev.readable,
                    writable: ev.writable,
                    read_closed: false,
                    urgent: false,
                });
            }
            Ok(full)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// The events for `key` in a wait that does not block.
    fn events_for(poller: &Poller, key: u64) -> Vec<Readiness> {
        let mut out = Vec::new();
        poller.wait(&mut out, Some(Duration::ZERO)).expect("wait");
        out.retain(|ev| ev.key == key);
        out
    }

    /// A datagram socket registered without write interest stays quiet while it sends;
    /// turning the interest on reports it writable at once, turning it off quiets it again.
    #[test]
    fn write_interest_is_reported_only_while_on() {
        const KEY: u64 = 7;
        let poller = Poller::new().expect("poller");
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        let to = peer.local_addr().expect("peer addr");
        sock.set_nonblocking(true).expect("nonblocking");
        let fd = sock.as_raw_fd();
        poller.add(fd, KEY, false).expect("add");
        sock.send_to(b"one", to).expect("send");
        assert_eq!(events_for(&poller, KEY), [], "reported without interest");

        poller.set_write_interest(fd, KEY, true).expect("on");
        let events = events_for(&poller, KEY);
        assert!(
            events.len() == 1 && events[0].writable && !events[0].readable,
            "{events:?}"
        );

        poller.set_write_interest(fd, KEY, false).expect("off");
        sock.send_to(b"two", to).expect("send");
        assert_eq!(events_for(&poller, KEY), [], "reported after interest off");
        // Reading is still reported.
        peer.send_to(b"back", sock.local_addr().expect("addr"))
            .expect("send back");
        let events = events_for(&poller, KEY);
        assert!(events.len() == 1 && events[0].readable, "{events:?}");
        poller.delete(fd).expect("delete");
    }

    /// A peer's urgent byte is reported as something to read, not as an error or the end of
    /// the stream: the connection goes on.
    #[cfg(target_os = "linux")]
    #[test]
    fn urgent_data_is_readable_and_not_an_end() {
        use std::net::{TcpListener, TcpStream};
        const KEY: u64 = 9;
        let poller = Poller::new().expect("poller");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        poller.add(server.as_raw_fd(), KEY, true).expect("add");
        // The registration's own report of the connection's state first.
        let _ = events_for(&poller, KEY);
        // SAFETY: sends one byte from a static slice on the open socket `client` owns.
        let sent =
            unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(sent, 1, "send urgent byte");
        let start = std::time::Instant::now();
        let mut events = Vec::new();
        while events.is_empty() && start.elapsed() < Duration::from_secs(5) {
            let mut out = Vec::new();
            poller
                .wait(&mut out, Some(Duration::from_millis(50)))
                .expect("wait");
            out.retain(|ev| ev.key == KEY);
            events = out;
        }
        assert!(
            events.len() == 1 && events[0].readable && !events[0].read_closed,
            "{events:?}"
        );
        assert!(events[0].urgent, "{events:?}");
        poller.delete(server.as_raw_fd()).expect("delete");
    }
}
