//! The reactor's bookkeeping: one entry per registered socket.
//!
//! Each socket is registered with the poller once, edge-triggered, for both directions, for
//! its whole life: no `epoll_ctl` per wait. Because an edge is reported once, every event
//! sets the socket's readiness bits whether or not anybody waits; socket operations clear a
//! bit when the kernel says `WouldBlock` and, where the poller reports end of stream on its
//! own (epoll's `EPOLLRDHUP`, see `poller.rs`), when a read comes back short: the receive
//! queue was drained, and a FIN queued behind the data is remembered
//! ([`IoSource::read_closed`]). So a drained socket is not read again just to learn it is
//! empty.
//!
//! One thing besides a drained queue ends a TCP read short: the peer's urgent mark
//! (`MSG_OOB`). Linux's `tcp_recvmsg` stops there once it has copied anything, with bytes
//! behind the mark still queued and no edge to come for them. The poller reports the mark
//! (`EPOLLPRI`), which sets the socket's [`URGENT`] mark; until a read of that socket hears
//! `WouldBlock`, its short reads leave the readable bit set.
//!
//! Each entry keeps a FIFO of coroutines waiting to read and one of those waiting to write.
//! A waiter that times out or is cancelled is taken out of its FIFO at once, so a later
//! event can never resume a coroutine that stopped waiting (Copas 4.11 defect §4.4).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};

use super::poller::{REGISTRATION_REPORTS_STATE, SHORT_READ_DRAINS};
use super::task::{Coroutine, TaskSocket};

/// [`IoSource`]'s mark of a reading side the peer has ended: it reported end of stream
/// (or a reset or error), so reads no longer block, whatever `readable` says. Never
/// cleared.
const READ_CLOSED: u8 = 1;
/// [`IoSource`]'s mark of urgent data (`EPOLLPRI`) that no read has heard `WouldBlock`
/// after: a short read may have stopped at the urgent mark, not at the end of the queue
/// (see the module docs).
const URGENT: u8 = 2;

/// What a registered socket shares between its owners (the `Socket` handles) and the
/// dispatcher: the descriptor itself and its readiness.
#[derive(Debug)]
pub(crate) struct IoSource {
    /// The descriptor; `None` once closed. Private, so that only [`IoSource::take_sock`]
    /// takes it and `fd` always says whether it is there.
    sock: RefCell<Option<socket2::Socket>>,
    /// The descriptor's number while `sock` holds it, -1 after: what reads and writes use,
    /// without borrowing `sock` (single-threaded, nothing closes it during a system call).
    pub(crate) fd: Cell<RawFd>,
    /// The last event said readable, and no read has since found the socket drained.
    pub(crate) readable: Cell<bool>,
    /// Likewise for writing.
    pub(crate) writable: Cell<bool>,
    /// The poller is to report writability. Always for TCP (a stream socket reports it only
    /// after a write found its buffer full); for UDP only while a send waits, since a
    /// datagram socket reports it each time a datagram it sent is consumed: a wake-up and a
    /// system call per datagram for nothing (see `UdpSocket`).
    pub(crate) write_interest: Cell<bool>,
    /// What the poller said of the reading side beyond readiness: [`READ_CLOSED`] and
    /// [`URGENT`], one byte for both so that the record stays 104 bytes: a fifth flag of its
    /// own made it 112, and cost 1.6 more misses per echoed message at 1,000 connections in
    /// cachegrind's 512 KiB cache (16.3 against 14.7 for the build before it, one run).
    marks: Cell<u8>,
    /// Coroutines waiting on this socket, both directions; lets a finished operation skip
    /// the dispatcher when nobody else waits.
    pub(crate) waiting: Cell<u32>,
    /// Coroutines waiting to read, in order.
    pub(crate) readers: WaitQueue,
    /// Coroutines waiting to write, in order.
    pub(crate) writers: WaitQueue,
    /// The dispatcher's key, `None` when not registered (closed, or no dispatcher).
    pub(crate) key: Cell<Option<SourceKey>>,
    /// The handle that names the socket, for listings (`introspect.rs`).
    pub(crate) owner: OnceCell<Weak<dyn TaskSocket>>,
}

impl IoSource {
    pub(crate) fn new(sock: socket2::Socket) -> IoSource {
        IoSource {
            fd: Cell::new(sock.as_raw_fd()),
            sock: RefCell::new(Some(sock)),
            readable: Cell::new(true),
            writable: Cell::new(true),
            write_interest: Cell::new(true),
            marks: Cell::new(0),
            waiting: Cell::new(0),
            readers: WaitQueue::default(),
            writers: WaitQueue::default(),
            key: Cell::new(None),
            owner: OnceCell::new(),
        }
    }

    /// Takes the first coroutine waiting in that direction off the socket, to be woken
    /// with the turn (`None` when none waits or the socket is no longer registered).
    #[inline]
    pub(crate) fn next_waiter(&self, write: bool) -> Option<Coroutine> {
        self.key.get()?;
        let next = if write {
            self.writers.pop()
        } else {
            self.readers.pop()
        }?;
        self.waiting.set(self.waiting.get() - 1);
        Some(next)
    }

    /// For a connection just accepted or connected, nothing read from it yet: the first read
    /// waits for the event its registration queued (see [`REGISTRATION_REPORTS_STATE`])
    /// instead of asking the kernel first. A client's first bytes usually come just after
    /// the handshake, so that first `recv` would mostly hear `EAGAIN`: one system call per
    /// connection saved.
    pub(crate) fn await_first_event(&self) {
        if REGISTRATION_REPORTS_STATE {
            self.readable.set(false);
        }
    }

    /// Whether the descriptor has been closed.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.fd.get() < 0
    }

    /// The descriptor, `None` once closed.
    pub(crate) fn sock(&self) -> std::cell::Ref<'_, Option<socket2::Socket>> {
        self.sock.borrow()
    }

    /// Takes the descriptor out, leaving the source closed.
    pub(crate) fn take_sock(&self) -> Option<socket2::Socket> {
        self.fd.set(-1);
        self.sock.borrow_mut().take()
    }

    /// Whether the peer ended the reading side ([`READ_CLOSED`]).
    #[inline(always)]
    pub(crate) fn read_closed(&self) -> bool {
        self.marks.get() & READ_CLOSED != 0
    }

    /// Marks the reading side ended by the peer ([`READ_CLOSED`]).
    pub(crate) fn close_read(&self) {
        self.marks.set(self.marks.get() | READ_CLOSED);
    }

    /// Whether urgent data may hold bytes behind its mark ([`URGENT`]).
    #[inline(always)]
    fn urgent(&self) -> bool {
        self.marks.get() & URGENT != 0
    }

    /// Sets or clears [`URGENT`].
    #[inline(always)]
    pub(crate) fn set_urgent(&self, urgent: bool) {
        let marks = self.marks.get() & !URGENT;
        self.marks.set(if urgent { marks | URGENT } else { marks });
    }

    /// One `recv(2)` into `dst`, which need not be initialised (its first `n` bytes are when
    /// `Ok(n)` comes back); 0 at end of stream. A short read clears `readable` where that
    /// proves the queue drained; see [`IoSource::transfer`] for the rest. Every read of a
    /// stream's bytes goes through here, plain or under TLS.
    #[inline(always)]
    pub(crate) fn recv(&self, dst: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        let len = dst.len();
        self.transfer(false, len, |fd| crate::sys::recv(fd, dst))
    }

    /// [`IoSource::recv`] into initialised memory.
    #[inline(always)]
    pub(crate) fn recv_into(&self, dst: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the same memory seen as possibly uninitialised; `recv` only lets `recv(2)`
        // write bytes into it, never uninitialised ones.
        let dst = unsafe { &mut *(dst as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.recv(dst)
    }

    /// One `send(2)` of `data` (never `SIGPIPE`): the bytes sent; see
    /// [`IoSource::transfer`] for the readiness bit. Every write of a stream's bytes goes
    /// through here or [`IoSource::send_vectored`], plain or under TLS.
    #[inline(always)]
    pub(crate) fn send(&self, data: &[u8]) -> io::Result<usize> {
        self.transfer(true, data.len(), |fd| crate::sys::send(fd, data))
    }

    /// [`IoSource::send`] of several slices in one `sendmsg(2)` (the first
    /// [`MAX_SLICES`](crate::sys::MAX_SLICES) of them): the bytes sent, counted across them.
    pub(crate) fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let len: usize = bufs
            .iter()
            .take(crate::sys::MAX_SLICES)
            .fold(0usize, |sum, b| sum.saturating_add(b.len()));
        self.transfer(true, len, |fd| crate::sys::send_vectored(fd, bufs))
    }

    /// Runs one system call `op` of `len` bytes on the descriptor (a send when `write`, else
    /// a receive), again when interrupted, and keeps the direction's readiness bit true only
    /// while another call may succeed: `WouldBlock` clears it, and so does a call that moved
    /// some bytes but fewer than `len` (for a receive only where that proves the queue
    /// drained, [`SHORT_READ_DRAINS`], and no urgent mark may have stopped it, see the
    /// module docs), and a send that took nothing of `len` > 0 bytes (where a receive's 0 is
    /// the end of the stream, a send's is a full queue: callers that loop while `writable`
    /// must not spin on it). The caller then waits for the next edge instead of calling
    /// again. `NotConnected` once the descriptor is closed. Always inlined: it is on the
    /// path of every message, and `write` is a constant there.
    #[inline(always)]
    fn transfer(
        &self,
        write: bool,
        len: usize,
        mut op: impl FnMut(RawFd) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let ready = if write {
            &self.writable
        } else {
            &self.readable
        };
        let short_drains = write || SHORT_READ_DRAINS;
        loop {
            let fd = self.fd.get();
            if fd < 0 {
                return Err(io::Error::from(io::ErrorKind::NotConnected));
            }
            match op(fd) {
                Ok(n) => {
                    let short = short_drains && n > 0 && n < len;
                    if (short && (write || !self.urgent())) || (write && n == 0 && len > 0) {
                        ready.set(false);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        ready.set(false);
                        if !write {
                            self.set_urgent(false);
                        }
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// Identifies a registered socket; also the poller key (`generation << 32 | index`), so an
/// event for a socket that was closed and whose slot was reused is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl SourceKey {
    pub(crate) fn poll_key(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub(crate) fn from_poll_key(key: u64) -> SourceKey {
        SourceKey {
            index: key as u32,
            generation: (key >> 32) as u32,
        }
    }
}

/// How a listening socket's readiness is turned into accepted connections; implemented by
/// the net layer so the dispatcher needs to know nothing of sockets' protocols.
pub(crate) trait Acceptor {
    /// Accepts what is pending, up to a budget, starting a handler for each connection.
    fn accept_ready(&self) -> AcceptOutcome;

    /// The server's name, for listings.
    fn name(&self) -> String;
}

/// What one [`Acceptor::accept_ready`] round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptOutcome {
    /// The accept queue is empty: wait for the next edge.
    Drained,
    /// The budget ran out with connections still pending: continue in the next step.
    More,
    /// Accepting failed for lack of resources (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`):
    /// try again after this long, without spinning.
    BackOff(std::time::Duration),
}

/// Coroutines waiting on one socket in one direction, first come first served.
///
/// Nearly always there is at most one, so the first lives inline and the queue behind it is
/// allocated only when several coroutines wait on the same socket at once (8 bytes inline
/// otherwise). It lives in the [`IoSource`] that the socket's operations touch anyway, and is
/// changed through `&self`, so that parking a coroutine on a socket touches no other
/// per-socket memory.
#[derive(Default)]
pub(crate) struct WaitQueue {
    first: Cell<Option<Coroutine>>,
    // Boxed on purpose: 8 bytes in every socket's record instead of an empty queue.
    // A `Cell` taken and put back, not a `RefCell`: popping the only waiter (every message)
    // then reads one null pointer instead of taking and releasing a borrow.
    rest: Cell<Option<Box<Behind>>>,
}

/// The coroutines waiting behind the first, in order, with some that left (removed, or
/// woken by their timeout) still in place: leaving from anywhere is O(log n), where taking
/// them out of the middle of the queue was O(n) each, quadratic for thousands of waiters
/// leaving in any order. Entries that left are skipped when they reach the front, and
/// dropped all at once when they make up half the queue.
#[derive(Default)]
struct Behind {
    queue: VecDeque<Coroutine>,
    /// How many entries of each coroutine in `queue` are stale. A coroutine that left can
    /// wait here again (after a timeout); its stale entries are older than its live one, so
    /// the first ones met from the front are the stale ones.
    left: BTreeMap<Coroutine, u32>,
    /// The sum of `left`'s counts.
    stale: usize,
}

impl Behind {
    /// Takes `co`'s first stale entry off the books, if it has one.
    fn take_stale(&mut self, co: Coroutine) -> bool {
        let Some(count) = self.left.get_mut(&co) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.left.remove(&co);
        }
        self.stale -= 1;
        true
    }

    fn pop_live(&mut self) -> Option<Coroutine> {
        loop {
            let co = self.queue.pop_front()?;
            if !self.take_stale(co) {
                return Some(co);
            }
        }
    }

    /// Drops every stale entry, keeping the order of the live ones.
    fn compact(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        queue.retain(|&co| !self.take_stale(co));
        self.queue = queue;
    }

    fn live(&self) -> usize {
        self.queue.len() - self.stale
    }
}

impl std::fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rest = self.rest.take();
        let behind = rest.as_ref().map_or(0, |r| r.live());
        self.rest.set(rest);
        f.debug_struct("WaitQueue")
            .field("first", &self.first.get())
            .field("behind", &behind)
            .finish()
    }
}

impl WaitQueue {
    #[inline]
    pub(crate) fn push(&self, co: Coroutine) {
        if self.first.get().is_none() {
            self.first.set(Some(co));
        } else {
            self.push_rest(co);
        }
    }

    #[cold]
    fn push_rest(&self, co: Coroutine) {
        let mut rest = self.rest.take().unwrap_or_default();
        rest.queue.push_back(co);
        self.rest.set(Some(rest));
    }

    #[inline]
    pub(crate) fn pop(&self) -> Option<Coroutine> {
        let first = self.first.take()?;
        self.first.set(self.pop_rest());
        Some(first)
    }

    /// The first of those waiting behind the first, if any. Only the look for a queue
    /// behind is inline: every message pops a socket's only waiter.
    #[inline]
    fn pop_rest(&self) -> Option<Coroutine> {
        let rest = self.rest.take()?;
        self.pop_behind(rest)
    }

    #[cold]
    #[inline(never)]
    fn pop_behind(&self, mut rest: Box<Behind>) -> Option<Coroutine> {
        let next = rest.pop_live();
        self.rest.set(Some(rest));
        next
    }

    /// Takes out `co`, which waits in this queue (the caller knows it from the coroutine's
    /// wait); false if the queue is empty. O(log n) from behind the first.
    pub(crate) fn remove(&self, co: Coroutine) -> bool {
        if self.first.get() == Some(co) {
            self.first.set(self.pop_rest());
            return true;
        }
        let Some(mut rest) = self.rest.take() else {
            return false;
        };
        let there = rest.live() > 0;
        if there {
            *rest.left.entry(co).or_insert(0) += 1;
            rest.stale += 1;
            if rest.stale * 2 > rest.queue.len() {
                rest.compact();
            }
        }
        self.rest.set(Some(rest));
        there
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.get().is_none()
    }

    /// Empties the queue, returning the waiters in order.
    pub(crate) fn drain(&self) -> Vec<Coroutine> {
        let mut all: Vec<Coroutine> = self.first.take().into_iter().collect();
        if let Some(mut rest) = self.rest.take() {
            while let Some(co) = rest.pop_live() {
                all.push(co);
            }
        }
        all
    }
}

/// The dispatcher's entry for one registered socket.
pub(crate) struct Source {
    pub(crate) generation: u32,
    pub(crate) io: Rc<IoSource>,
    /// Set for listening sockets added with `addserver`.
    pub(crate) acceptor: Option<Rc<dyn Acceptor>>,
    /// An accept round is already scheduled (pending list or back-off timer).
    pub(crate) accept_scheduled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn co(n: u32) -> Coroutine {
        Coroutine {
            index: n,
            generation: n,
        }
    }

    #[test]
    fn wait_queue_is_fifo_and_removes_anywhere() {
        let q = WaitQueue::default();
        assert!(q.is_empty());
        for n in 1..=4 {
            q.push(co(n));
        }
        assert!(q.remove(co(1)));
        assert!(q.remove(co(3)));
        assert_eq!(q.pop(), Some(co(2)));
        q.push(co(5));
        assert!(q.remove(co(5)));
        assert_eq!(q.drain(), vec![co(4)]);
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    /// A coroutine that left (its timeout) and waits again is served at its new place, not
    /// its old one; compaction keeps the order of the rest.
    #[test]
    fn wait_queue_serves_a_returning_waiter_at_its_new_place() {
        let q = WaitQueue::default();
        for n in 1..=3 {
            q.push(co(n));
        }
        assert!(q.remove(co(2)));
        q.push(co(2));
        assert_eq!(q.drain(), vec![co(1), co(3), co(2)]);
        for n in 1..=100 {
            q.push(co(n));
        }
        for n in (2..=100).filter(|n| n % 3 != 0) {
            assert!(q.remove(co(n)));
        }
        let left: Vec<Coroutine> = std::iter::once(co(1))
            .chain((3..=100).step_by(3).map(co))
            .collect();
        assert_eq!(q.drain(), left);
    }
}
