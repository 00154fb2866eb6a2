//! Channels between threads and coroutines (beyond Copas): a [`Sender`] that any thread may
//! hold and a [`Receiver`] whose waits suspend only the calling coroutine.
//!
//! The other sync types are thread-local; a channel is how results come back from other
//! threads (a worker pool, a blocking library, another dispatcher). The shared state is a
//! mutex-guarded queue with two lines of waiters: receivers waiting for an item and, when
//! the channel is bounded, senders waiting for room. Each waiter is either a coroutine —
//! identified by its dispatcher's `Remote` (`dispatcher/remote.rs`), its handle and a
//! liveness token — or a plain thread, woken with `Thread::unpark`.
//!
//! Waking a coroutine on another thread posts to its dispatcher's inbox, which wakes the
//! poller only when the inbox was empty; on the waiter's own thread it is a direct unpark.
//! A waiter is taken out of its line when it is woken, so a burst of sends to a receiver
//! that is waiting costs one wake-up, not one per item: the receiver drains what has
//! arrived before it waits again. A coroutine parked on a channel keeps `run` going (it
//! counts as waiting for another thread, as `offload` does), so the dispatcher sleeps in
//! its poller instead of ending its loop or spinning.
//!
//! Rules: no waker runs under the channel's mutex; items are dropped outside it; a waiter
//! that was woken but leaves without using what it was woken for (it timed out, or its
//! coroutine is being removed) passes the wake-up on to the next in its line.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::dispatcher::remote::{self, Remote, Waiting};
use crate::dispatcher::{self, Blocker, Caller, Coroutine, Wake};
use crate::error::{Error, ErrorKind, Result};

use super::wait_list::{Line, WaiterId};

/// A channel without a bound: [`Sender::send`] never waits.
///
/// # Example
///
/// ```
/// let (tx, rx) = copas::channel::unbounded();
/// let workers: Vec<_> = (0..4u64)
///     .map(|n| {
///         let tx = tx.clone();
///         std::thread::spawn(move || tx.send(n * n).unwrap())
///     })
///     .collect();
/// drop(tx); // the receiver sees `Closed` once the workers' senders are gone too
/// copas::addthread(move || {
///     let mut sum = 0;
///     while let Ok(n) = rx.recv() {
///         sum += n; // only this coroutine waits between items
///     }
///     assert_eq!(sum, 14);
/// })
/// .unwrap();
/// copas::run().unwrap();
/// for w in workers {
///     w.join().unwrap();
/// }
/// ```
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    channel(None)
}

/// A channel holding at most `capacity` items: [`Sender::send`] waits for room when it is
/// full (a coroutine is suspended, a plain thread blocked). A capacity of 0 is taken as 1:
/// copas has no rendezvous channel.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    channel(Some(capacity.max(1)))
}

fn channel<T>(capacity: Option<usize>) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        state: Mutex::new(State {
            items: VecDeque::new(),
            capacity,
            senders: 1,
            receiver: true,
            receiving: Waiters::default(),
            sending: Waiters::default(),
        }),
    });
    (Sender { chan: chan.clone() }, Receiver { chan })
}

/// The sending end: `Send + Sync + Clone`, usable from any thread, in or out of a
/// coroutine. The channel closes for the receiver when the last clone is dropped.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

/// The receiving end: `Send`, so it may be moved to the thread that reads, and `Sync`:
/// coroutines on several dispatchers may receive from one (behind an `Arc`), each item going
/// to one of them. Dropping it closes the channel for the senders, which get their items
/// back; items still queued are dropped.
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

/// A failed send: why, and the item, given back.
///
/// # Example
///
/// ```
/// use copas::ErrorKind;
///
/// let (tx, rx) = copas::channel::bounded(1);
/// tx.send("first").unwrap();
/// let full = tx.try_send("second").unwrap_err();
/// assert_eq!(full.kind(), ErrorKind::Timeout);
/// drop(rx);
/// let closed = tx.send(full.into_inner()).unwrap_err();
/// assert_eq!(closed.kind(), ErrorKind::Closed);
/// assert_eq!(closed.into_inner(), "second");
/// ```
pub struct SendError<T> {
    kind: ErrorKind,
    item: T,
}

impl<T> SendError<T> {
    fn new(kind: ErrorKind, item: T) -> Self {
        SendError { kind, item }
    }

    /// [`ErrorKind::Closed`] (the receiver is gone), [`ErrorKind::Timeout`] (no room in
    /// time), [`ErrorKind::Cancelled`] (the waiting coroutine is being removed) or
    /// [`ErrorKind::Io`] (its dispatcher's poller is unusable).
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The item that was not sent.
    pub fn into_inner(self) -> T {
        self.item
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())
    }
}

impl<T> std::error::Error for SendError<T> {}

impl<T> From<SendError<T>> for Error {
    /// Drops the item, keeping the kind (so `?` works in functions returning
    /// [`copas::Result`](crate::Result)).
    fn from(e: SendError<T>) -> Error {
        Error::new(e.kind)
    }
}

// ----- shared state -----------------------------------------------------------------------

struct Chan<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    items: VecDeque<T>,
    /// `None`: unbounded.
    capacity: Option<usize>,
    /// Live `Sender` clones; 0 closes the channel for the receiver.
    senders: usize,
    /// Whether the `Receiver` lives; false closes the channel for the senders.
    receiver: bool,
    /// Receivers waiting for an item. Woken one per item sent.
    receiving: Waiters,
    /// Senders waiting for room (bounded channels). Woken one per item taken.
    sending: Waiters,
}

/// Which line of waiters.
#[derive(Clone, Copy)]
enum Side {
    Receiving,
    Sending,
}

impl<T> State<T> {
    fn has_room(&self) -> bool {
        self.capacity.is_none_or(|cap| self.items.len() < cap)
    }

    fn waiters(&mut self, side: Side) -> &mut Waiters {
        match side {
            Side::Receiving => &mut self.receiving,
            Side::Sending => &mut self.sending,
        }
    }

    /// A waiter of `side` was woken but leaves without using its turn: the next in line
    /// gets it, if there is something for it.
    fn pass_on(&mut self, side: Side) -> Option<Waiter> {
        let useful = match side {
            Side::Receiving => !self.items.is_empty(),
            Side::Sending => self.has_room(),
        };
        if useful {
            self.waiters(side).pop()
        } else {
            None
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No user code runs under this lock (items are moved, never dropped or cloned there),
    // so a poisoned lock still holds consistent state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Someone waiting on the channel, and how to wake them.
enum Waiter {
    /// A coroutine `co` of the dispatcher `remote` belongs to, while it holds `token`.
    Coroutine {
        co: Coroutine,
        remote: Arc<Remote>,
        token: Weak<dyn Any + Send + Sync>,
    },
    /// A thread blocked outside any coroutine.
    Thread(std::thread::Thread),
}

impl Waiter {
    /// Ends the wait. Called without the channel's lock.
    fn wake(self) {
        match self {
            Waiter::Coroutine { co, remote, token } => remote::unpark(&remote, co, token),
            Waiter::Thread(thread) => thread.unpark(),
        }
    }
}

fn wake_all(waiters: Vec<Waiter>) {
    for w in waiters {
        w.wake();
    }
}

/// A line of waiters in arrival order; joining, leaving from anywhere and serving the head
/// are O(1). A waker takes the waiter it serves out of the line at once.
#[derive(Default)]
struct Waiters {
    line: Line<Waiter>,
}

impl Waiters {
    fn push(&mut self, waiter: Waiter) -> WaiterId {
        self.line.push(waiter)
    }

    /// Takes a waiter out of the line; false if a waker took it already.
    fn remove(&mut self, ticket: WaiterId) -> bool {
        self.line.remove(ticket).is_some()
    }

    fn pop(&mut self) -> Option<Waiter> {
        let (served, _) = self.line.pop_front()?;
        self.line.remove(served).map(|(waiter, _)| waiter)
    }

    fn take_all(&mut self) -> Vec<Waiter> {
        std::iter::from_fn(|| self.pop()).collect()
    }
}

/// A waiter's place in line. Dropped without [`Registration::leave`] — the coroutine is
/// being removed and its stack unwinds — it leaves the line, passing on a wake-up it got.
struct Registration<'a, T> {
    chan: &'a Chan<T>,
    side: Side,
    ticket: WaiterId,
    armed: bool,
}

impl<T> Registration<'_, T> {
    /// Leaves the line after a wait; when `pass_on`, a wake-up it got goes to the next.
    fn leave(mut self, pass_on: bool) {
        self.armed = false;
        let next = {
            let mut st = lock(&self.chan.state);
            let still_waiting = st.waiters(self.side).remove(self.ticket);
            if !still_waiting && pass_on {
                st.pass_on(self.side)
            } else {
                None
            }
        };
        if let Some(w) = next {
            w.wake();
        }
    }
}

impl<T> Drop for Registration<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            let me = Registration {
                chan: self.chan,
                side: self.side,
                ticket: self.ticket,
                armed: false,
            };
            me.leave(true);
        }
    }
}

/// The deadline of a wait of `timeout` (`None`: none); `Err` for a zero timeout, which
/// never waits (and reads no clock).
fn deadline(timeout: Option<Duration>) -> std::result::Result<Option<Instant>, ()> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_zero() => Err(()),
        // Too far to add to the clock: no deadline.
        Some(t) => Ok(Instant::now().checked_add(t)),
    }
}

/// How many idle liveness tokens a thread keeps for its next channel waits: one per
/// coroutine parked on a channel at once is what a steady load reuses; the rest are freed.
const KEPT_TOKENS: usize = 64;

thread_local! {
    /// The liveness tokens of this thread's ended channel waits that no `Weak` points to.
    ///
    /// A waiter in a line holds a `Weak` to its wait's token, and a wake-up acts only while
    /// the token lives, so a wake-up that arrives after the wait ended (posted from another
    /// thread) wakes nobody. A token nobody holds a `Weak` to any more can serve the next
    /// wait just as a new one would: no wake-up can ever reach it through an old `Weak`, and
    /// only its own waiter makes new ones. Reusing such tokens spares a parked wait its one
    /// allocation.
    static IDLE_TOKENS: std::cell::RefCell<Vec<Arc<dyn Any + Send + Sync>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A token for a new wait: an idle one of this thread's, or a new one.
fn wait_token() -> Arc<dyn Any + Send + Sync> {
    IDLE_TOKENS
        .try_with(|tokens| tokens.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Arc::new(()))
}

/// Ends the wait `token` served: kept for the next one if no `Weak` to it is left (no
/// waker can still reach it), freed otherwise, which ends it for whoever holds one.
fn end_wait_token(token: Arc<dyn Any + Send + Sync>) {
    // Only this thread makes `Weak`s to the token (when it joins a line), so a count of
    // zero stays zero.
    if Arc::weak_count(&token) != 0 {
        return;
    }
    let _ = IDLE_TOKENS.try_with(|tokens| {
        if let Ok(mut tokens) = tokens.try_borrow_mut() {
            if tokens.len() < KEPT_TOKENS {
                tokens.push(token);
            }
        }
    });
}

fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|at| Instant::now() >= at)
}

impl<T> Chan<T> {
    /// Puts the caller in line on `side`, releases the lock and waits until a waker takes
    /// it out of the line, `deadline` passes, or (for a coroutine) it is cancelled; then
    /// leaves the line. Returns true when cancelled. Inside a coroutine only the coroutine
    /// waits; elsewhere the thread blocks.
    fn block(
        &self,
        mut st: MutexGuard<'_, State<T>>,
        side: Side,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let context = match dispatcher::caller() {
            Caller::Coroutine(co) => Some((co, dispatcher::with(|d| d.remote())?)),
            Caller::Outside => None,
            // Its waits end at once; parking the thread could wait for a coroutine of it.
            Caller::Removed => return Ok(true),
        };
        match context {
            Some((co, remote)) => {
                // Alive only during this wait: a wake-up meant for it that arrives later
                // finds it dead and wakes nobody.
                let token = wait_token();
                let ticket = st.waiters(side).push(Waiter::Coroutine {
                    co,
                    remote: remote.clone(),
                    token: Arc::downgrade(&token),
                });
                drop(st);
                let registration = Registration {
                    chan: self,
                    side,
                    ticket,
                    armed: true,
                };
                // Parked without a deadline, the coroutine would not keep `run` going; a
                // sender or receiver elsewhere will wake it, so it must.
                let waiting = Waiting::new(&remote);
                // The wake-up cannot come before the park: other threads post to the
                // inbox, which is drained on this thread between resumes.
                let on = Blocker::Channel {
                    sending: matches!(side, Side::Sending),
                };
                let wake = dispatcher::with(|d| d.park(deadline, on));
                drop(waiting);
                let cancelled = matches!(wake, Ok(Wake::Cancelled) | Err(_));
                registration.leave(cancelled);
                end_wait_token(token);
                Ok(cancelled)
            }
            None => {
                let ticket = st
                    .waiters(side)
                    .push(Waiter::Thread(std::thread::current()));
                drop(st);
                let registration = Registration {
                    chan: self,
                    side,
                    ticket,
                    armed: true,
                };
                match deadline {
                    None => std::thread::park(),
                    Some(at) => {
                        let left = at.saturating_duration_since(Instant::now());
                        if !left.is_zero() {
                            std::thread::park_timeout(left);
                        }
                    }
                }
                // Woken, timed out or spurious: the caller looks again.
                registration.leave(false);
                Ok(false)
            }
        }
    }
}

// ----- the ends ---------------------------------------------------------------------------

impl<T> Sender<T> {
    /// Sends `item`, waiting for room as long as needed when the channel is bounded and
    /// full: inside a coroutine only the coroutine waits (whichever dispatcher it is on,
    /// the receiver's included), outside one the thread blocks. Never waits on an unbounded
    /// channel. Wakes a receiver waiting for an item.
    ///
    /// Outside a coroutine on the thread of the receiver's dispatcher, a full channel blocks
    /// for good, as `std::sync::mpsc::SyncSender::send` does on its receiver's thread: the
    /// receiver cannot run while its thread is blocked. Use [`Sender::try_send`] there.
    ///
    /// # Errors
    ///
    /// A [`SendError`] giving the item back: [`ErrorKind::Closed`] when the receiver is
    /// gone, [`ErrorKind::Cancelled`] when the waiting coroutine is being removed.
    pub fn send(&self, item: T) -> std::result::Result<(), SendError<T>> {
        self.send_within(item, None)
    }

    /// Like [`send`](Sender::send), waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// As [`send`](Sender::send), and [`ErrorKind::Timeout`] when there was no room in
    /// time.
    pub fn send_timeout(
        &self,
        item: T,
        timeout: Duration,
    ) -> std::result::Result<(), SendError<T>> {
        self.send_within(item, Some(timeout))
    }

    /// Sends `item` only if there is room now.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the channel is full (a zero timeout, as elsewhere in
    /// copas), [`ErrorKind::Closed`] when the receiver is gone; the item comes back.
    pub fn try_send(&self, item: T) -> std::result::Result<(), SendError<T>> {
        self.send_within(item, Some(Duration::ZERO))
    }

    fn send_within(
        &self,
        item: T,
        timeout: Option<Duration>,
    ) -> std::result::Result<(), SendError<T>> {
        let mut deadline = None;
        let mut first = true;
        loop {
            let mut st = lock(&self.chan.state);
            if !st.receiver {
                return Err(SendError::new(ErrorKind::Closed, item));
            }
            if st.has_room() {
                st.items.push_back(item);
                let receiver = st.receiving.pop();
                drop(st);
                if let Some(w) = receiver {
                    w.wake();
                }
                return Ok(());
            }
            if first {
                first = false;
                match self::deadline(timeout) {
                    Ok(at) => deadline = at,
                    Err(()) => return Err(SendError::new(ErrorKind::Timeout, item)),
                }
            } else if expired(deadline) {
                return Err(SendError::new(ErrorKind::Timeout, item));
            }
            match self.chan.block(st, Side::Sending, deadline) {
                Ok(false) => {}
                Ok(true) => return Err(SendError::new(ErrorKind::Cancelled, item)),
                Err(e) => return Err(SendError::new(e.kind(), item)),
            }
        }
    }

    /// How many items wait in the channel.
    pub fn len(&self) -> usize {
        lock(&self.chan.state).items.len()
    }

    /// Whether no item waits in the channel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The channel's bound (`None`: unbounded).
    pub fn capacity(&self) -> Option<usize> {
        lock(&self.chan.state).capacity
    }

    /// Whether the receiver is gone (every send fails).
    pub fn is_closed(&self) -> bool {
        !lock(&self.chan.state).receiver
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.chan.state).senders += 1;
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    /// The last sender closes the channel: receivers waiting are woken (and get
    /// [`ErrorKind::Closed`] once the items are drained).
    fn drop(&mut self) {
        let waiters = {
            let mut st = lock(&self.chan.state);
            st.senders -= 1;
            if st.senders == 0 {
                st.receiving.take_all()
            } else {
                Vec::new()
            }
        };
        wake_all(waiters);
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.chan.state);
        f.debug_struct("Sender")
            .field("len", &st.items.len())
            .field("capacity", &st.capacity)
            .field("closed", &!st.receiver)
            .finish()
    }
}

impl<T> Receiver<T> {
    /// Takes the next item, waiting as long as needed: inside a coroutine only the
    /// coroutine waits (its dispatcher sleeps in its poller until a sender wakes it),
    /// outside one the thread blocks. Items from one sender arrive in the order sent.
    ///
    /// A coroutine waiting here keeps [`run`](crate::run) going while a sender exists:
    /// drop the senders when done, or the loop never ends.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when every sender is gone and no item is left;
    /// [`ErrorKind::Cancelled`] when the waiting coroutine is being removed;
    /// [`ErrorKind::Io`] when its dispatcher's poller is unusable.
    pub fn recv(&self) -> Result<T> {
        self.recv_within(None)
    }

    /// Like [`recv`](Receiver::recv), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`recv`](Receiver::recv), and [`ErrorKind::Timeout`] when no item came in time.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.recv_within(Some(timeout))
    }

    /// Takes the next item if one is there, without waiting.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when none is (a zero timeout, as elsewhere in copas);
    /// [`ErrorKind::Closed`] when every sender is gone and no item is left.
    pub fn try_recv(&self) -> Result<T> {
        self.recv_within(Some(Duration::ZERO))
    }

    fn recv_within(&self, timeout: Option<Duration>) -> Result<T> {
        let mut deadline = None;
        let mut first = true;
        loop {
            let mut st = lock(&self.chan.state);
            if let Some(item) = st.items.pop_front() {
                let sender = st.sending.pop();
                drop(st);
                if let Some(w) = sender {
                    w.wake();
                }
                return Ok(item);
            }
            if st.senders == 0 {
                return Err(Error::with_message(
                    ErrorKind::Closed,
                    "every sender of the channel is gone",
                ));
            }
            if first {
                first = false;
                match self::deadline(timeout) {
                    Ok(at) => deadline = at,
                    Err(()) => return Err(Error::new(ErrorKind::Timeout)),
                }
            } else if expired(deadline) {
                return Err(Error::new(ErrorKind::Timeout));
            }
            if self.chan.block(st, Side::Receiving, deadline)? {
                return Err(Error::new(ErrorKind::Cancelled));
            }
        }
    }

    /// An iterator that [`recv`](Receiver::recv)s until the channel is closed and drained
    /// (or the wait fails).
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// How many items wait in the channel.
    pub fn len(&self) -> usize {
        lock(&self.chan.state).items.len()
    }

    /// Whether no item waits in the channel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The channel's bound (`None`: unbounded).
    pub fn capacity(&self) -> Option<usize> {
        lock(&self.chan.state).capacity
    }

    /// Whether every sender is gone (items may still be queued).
    pub fn is_closed(&self) -> bool {
        lock(&self.chan.state).senders == 0
    }
}

impl<T> Drop for Receiver<T> {
    /// Closes the channel: senders waiting for room are woken (and get their items back);
    /// the items still queued are dropped, here, outside the lock.
    fn drop(&mut self) {
        let (items, waiters) = {
            let mut st = lock(&self.chan.state);
            st.receiver = false;
            (std::mem::take(&mut st.items), st.sending.take_all())
        };
        wake_all(waiters);
        drop(items);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.chan.state);
        f.debug_struct("Receiver")
            .field("len", &st.items.len())
            .field("capacity", &st.capacity)
            .field("closed", &(st.senders == 0))
            .finish()
    }
}
