//! `copas::queue`: a first-in first-out queue between coroutines, with workers (Copas
//! `copas.queue`).
//!
//! [`push`](Queue::push) never waits; [`pop`](Queue::pop) waits for an item up to a timeout.
//! Items go straight to the coroutine that has waited longest, so they come out in the order
//! they went in and pops are served in the order they came. [`add_worker`](Queue::add_worker)
//! starts a coroutine that handles every item; [`stop`](Queue::stop) refuses new items and
//! destroys the queue once it is drained; [`finish`](Queue::finish) stops it and waits until
//! the workers are done.
//!
//! Idle workers wait without a deadline, so a queue nobody uses does not keep
//! [`run`](crate::run) going (as in Copas). Workers are not handles: once every [`Queue`]
//! handle is dropped and the items left are handled, the queue is destroyed and its idle
//! workers end, dropping what they captured — where Copas's garbage collector would take the
//! queue and its workers. (A worker that captures a handle to its own queue keeps it, as any
//! `Rc` cycle does: [`stop`](Queue::stop) or [`finish`](Queue::finish) ends it.)
//!
//! Differences from Copas 4.11: Copas builds the queue on a semaphore and a lock; this one
//! hands items over directly. `nil` items are `Queue<Option<T>>`. A refused push gives the
//! item back ([`PushError`]). A worker that panics is reported to its error handler and
//! leaves the worker list at once (in Copas it just dies).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

pub use super::DEFAULT_TIMEOUT;

use super::{Outcome, WaitList, FOREVER};
use crate::dispatcher::{self, Blocker, Coroutine, ObjectKind, ObjectTag, TaskName};
use crate::error::{Error, ErrorKind, Result};

thread_local! {
    /// Numbers the generated names `copas_queue_<n>`.
    static QUEUES: Cell<u64> = const { Cell::new(0) };
}

/// What a waiting pop is handed.
enum Signal<T> {
    Item(T),
    Destroyed,
}

impl<T> Clone for Signal<T> {
    /// Only `Destroyed` is ever copied (to every waiter).
    fn clone(&self) -> Self {
        Signal::Destroyed
    }
}

struct State<T> {
    items: VecDeque<T>,
    /// Coroutines waiting in `pop`. Never non-empty while `items` is not: a push hands its
    /// item to the first waiter.
    poppers: WaitList<Signal<T>>,
    /// Coroutines waiting in `finish`, woken whenever the queue is destroyed or a worker ends.
    finishers: WaitList<()>,
    /// Live workers by number (in the order they were added); a map so that each of
    /// thousands of ending workers leaves it in O(log n).
    workers: BTreeMap<u64, Coroutine>,
    workers_added: u64,
    stopping: bool,
    destroyed: bool,
}

impl<T> State<T> {
    /// Marks the queue destroyed and wakes everyone waiting on it; returns the items left,
    /// for the caller to drop once it holds no borrow.
    fn destroy(&mut self) -> VecDeque<T> {
        self.destroyed = true;
        self.poppers.grant_all(Signal::Destroyed);
        self.finishers.grant_all(());
        std::mem::take(&mut self.items)
    }

    /// Destroys the queue if no handle is left to push to it and no item is left for its
    /// workers (without workers, the items left can never be taken): their waits end, and
    /// so do they. Returns the items left, for the caller to drop once it holds no borrow,
    /// or `None` when the queue is kept.
    fn abandoned(&mut self, handles: usize) -> Option<VecDeque<T>> {
        let drained = self.items.is_empty() || self.workers.is_empty();
        (handles == 0 && !self.destroyed && drained).then(|| self.destroy())
    }

    /// Hands `item` to the first waiting pop, or queues it.
    fn deliver(&mut self, mut item: T, front: bool) {
        while let Some((ticket, waiter)) = self.poppers.pop_front() {
            match self.poppers.grant(ticket, waiter, Signal::Item(item)) {
                Ok(()) => return,
                Err(Signal::Item(back)) => item = back,
                Err(Signal::Destroyed) => return,
            }
        }
        if front {
            self.items.push_front(item);
        } else {
            self.items.push_back(item);
        }
    }
}

struct Inner<T> {
    /// Live [`Queue`] handles. Workers hold the queue without being one: when the last
    /// handle goes, nothing can push any more (see [`State::abandoned`]).
    handles: Cell<usize>,
    name: Rc<str>,
    /// Its number and name in listings.
    tag: ObjectTag,
    state: RefCell<State<T>>,
}

/// A FIFO queue for coroutines (Copas `copas.queue`). Cloning gives another handle to the
/// same queue.
///
/// # Example
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use copas::queue::Queue;
///
/// let q: Queue<u32> = Queue::new();
/// let sum = Rc::new(Cell::new(0));
/// let total = sum.clone();
/// q.add_worker(move |n| total.set(total.get() + n)).unwrap();
/// for n in 1..=4 {
///     q.push(n).unwrap();
/// }
/// let q2 = q.clone();
/// copas::addthread(move || q2.finish(None, false).expect("finish")).unwrap();
/// copas::run().unwrap();
/// assert_eq!(sum.get(), 10);
/// ```
pub struct Queue<T> {
    inner: Rc<Inner<T>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        self.inner.handles.set(self.inner.handles.get() + 1);
        Queue {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        let handles = self.inner.handles.get() - 1;
        self.inner.handles.set(handles);
        if handles > 0 {
            return;
        }
        // Its own code drops items only outside its borrows, so this never fails.
        let Ok(mut st) = self.inner.state.try_borrow_mut() else {
            return;
        };
        let left = st.abandoned(0);
        drop(st);
        drop(left);
    }
}

impl<T: 'static> Default for Queue<T> {
    fn default() -> Self {
        Queue::new()
    }
}

impl<T: 'static> Queue<T> {
    /// An empty queue named `copas_queue_<n>` (Copas `queue.new()`).
    pub fn new() -> Queue<T> {
        Queue::named(&super::generated_name(&QUEUES, "copas_queue_"))
    }

    /// An empty queue with a name (Copas `queue.new{name = …}`); its workers are named
    /// `<name>:worker_<n>`.
    pub fn named(name: &str) -> Queue<T> {
        let name: Rc<str> = Rc::from(name);
        let tag = ObjectTag::new();
        tag.set_name(name.clone());
        Queue {
            inner: Rc::new(Inner {
                handles: Cell::new(1),
                name,
                tag,
                state: RefCell::new(State {
                    items: VecDeque::new(),
                    poppers: WaitList::new(),
                    finishers: WaitList::new(),
                    workers: BTreeMap::new(),
                    workers_added: 0,
                    stopping: false,
                    destroyed: false,
                }),
            }),
        }
    }

    /// The queue's name (Copas field `name`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Adds an item at the end (Copas `queue:push`). Never waits: the coroutine that has
    /// waited longest in [`pop`](Queue::pop) gets it.
    ///
    /// # Errors
    ///
    /// A [`PushError`] giving the item back, of kind [`ErrorKind::Stopping`] after
    /// [`stop`](Queue::stop) or [`ErrorKind::Destroyed`].
    pub fn push(&self, item: T) -> std::result::Result<(), PushError<T>> {
        let mut st = self.inner.state.borrow_mut();
        if st.destroyed {
            return Err(PushError::new(ErrorKind::Destroyed, item));
        }
        if st.stopping {
            return Err(PushError::new(ErrorKind::Stopping, item));
        }
        st.deliver(item, false);
        Ok(())
    }

    /// Takes the first item (Copas `queue:pop`), waiting up to `timeout` for one (`None`:
    /// 10 s; [`FOREVER`](crate::FOREVER); a zero timeout never waits). Taking the last item
    /// of a stopped queue destroys it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`]; [`ErrorKind::Destroyed`] when the queue is or gets destroyed;
    /// [`ErrorKind::InvalidState`] when it would have to wait outside a coroutine;
    /// [`ErrorKind::Cancelled`] when the waiting coroutine is being removed.
    pub fn pop(&self, timeout: impl Into<Option<Duration>>) -> Result<T> {
        self.inner.pop(timeout.into())
    }

    /// How many items wait in the queue (Copas `queue:get_size`); 0 once destroyed.
    pub fn get_size(&self) -> usize {
        self.inner.state.borrow().items.len()
    }

    /// Refuses further pushes and destroys the queue once it is drained, at once if it is
    /// empty (Copas `queue:stop`). Returns at once; see [`finish`](Queue::finish) to wait.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Destroyed`] when the queue already was destroyed.
    pub fn stop(&self) -> Result<()> {
        let left = {
            let mut st = self.inner.state.borrow_mut();
            if st.destroyed {
                return Err(Error::new(ErrorKind::Destroyed));
            }
            st.stopping = true;
            if st.items.is_empty() {
                st.destroy()
            } else {
                VecDeque::new()
            }
        };
        drop(left);
        Ok(())
    }

    /// Stops the queue and waits until it is drained and every worker has finished the item
    /// it was handling and ended (Copas `queue:finish(timeout, no_destroy_on_timeout)`).
    /// `timeout` (`None`: 10 s) covers the whole wait; when it passes, the queue is
    /// destroyed (dropping what is left in it) unless `no_destroy_on_timeout`.
    ///
    /// A [`destroy`](Queue::destroy) from elsewhere during the wait ends it too, with `Ok`
    /// once the workers have ended, as in Copas ("someone else destroyed/finished it"): the
    /// items that destroy dropped were never handled. `Ok` means every item was handled only
    /// when nothing else destroys the queue.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`]; [`ErrorKind::Destroyed`] when the queue was destroyed before
    /// the call, also by draining after an earlier [`stop`](Queue::stop) (as in Copas);
    /// [`ErrorKind::InvalidState`], the queue left as it was, when it would have to wait
    /// outside a coroutine; [`ErrorKind::Cancelled`].
    pub fn finish(
        &self,
        timeout: impl Into<Option<Duration>>,
        no_destroy_on_timeout: bool,
    ) -> Result<()> {
        let deadline = super::deadline(timeout.into().unwrap_or(DEFAULT_TIMEOUT));
        if super::current().is_none() {
            // Refused before anything changes: the caller may still push, or finish from a
            // coroutine. Without a wait: already destroyed (`stop` says so), or nothing left
            // to drain and no worker to end.
            let st = self.inner.state.borrow();
            if !(st.destroyed || st.items.is_empty() && st.workers.is_empty()) {
                return Err(super::outside_coroutine("Queue::finish"));
            }
        }
        self.stop()?;
        loop {
            let ticket = {
                let mut st = self.inner.state.borrow_mut();
                if st.destroyed && st.workers.is_empty() {
                    return Ok(());
                }
                let co =
                    super::current().ok_or_else(|| super::outside_coroutine("Queue::finish"))?;
                st.finishers.push(co, ())
            };
            let guard = FinishTicket {
                state: &self.inner.state,
                ticket,
            };
            let on = Blocker::Object(ObjectKind::QueueFinish, self.inner.tag.id());
            let take = || super::take(&self.inner.state, ticket, |st| &mut st.finishers);
            let outcome = super::wait(take, deadline, on);
            drop(guard);
            match outcome {
                Outcome::Signalled(()) => continue,
                Outcome::TimedOut => {
                    if !no_destroy_on_timeout {
                        let _ = self.destroy();
                    }
                    return Err(Error::new(ErrorKind::Timeout));
                }
                Outcome::Cancelled => return Err(Error::new(ErrorKind::Cancelled)),
            }
        }
    }

    /// Destroys the queue at once (Copas `queue:destroy`): the items left are dropped,
    /// waiting pops fail with [`ErrorKind::Destroyed`], idle workers end, and from now on
    /// every method fails. An item already handed to a waiting pop is still delivered.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Destroyed`] when it already was.
    pub fn destroy(&self) -> Result<()> {
        let left = {
            let mut st = self.inner.state.borrow_mut();
            if st.destroyed {
                return Err(Error::new(ErrorKind::Destroyed));
            }
            st.destroy()
        };
        drop(left);
        Ok(())
    }

    /// Starts a worker: a coroutine named `<queue>:worker_<n>` that calls `worker` with each
    /// item it pops, waiting for items without a timeout, and ends when the queue is
    /// destroyed (Copas `queue:add_worker`) — which it is, too, once every handle outside its
    /// workers is dropped and no item is left (see [the module](self)). A panic in `worker`
    /// ends the worker and goes to its error handler, as for any coroutine. Call it again for
    /// more workers.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Destroyed`]; the error of [`addthread`](crate::addthread) when no
    /// coroutine can be created.
    pub fn add_worker(&self, mut worker: impl FnMut(T) + 'static) -> Result<Coroutine> {
        let number = {
            let mut st = self.inner.state.borrow_mut();
            if st.destroyed {
                return Err(Error::new(ErrorKind::Destroyed));
            }
            st.workers_added += 1;
            st.workers_added
        };
        let name = format!("{}:worker_{number}", self.inner.name);
        // Not a handle: a queue nobody else can push to ends its workers (see the module).
        let queue = self.inner.clone();
        // Captured, so that it leaves the worker list however the coroutine ends: returning,
        // panicking, removed, or dropped before it ever ran.
        let exit = WorkerExit {
            inner: self.inner.clone(),
            number,
        };
        let co = dispatcher::with_or(dispatcher::destroyed, |d| {
            d.spawn(
                TaskName::Owned(Rc::from(name)),
                None,
                false,
                false,
                move || {
                    let _exit = exit;
                    while let Ok(item) = queue.pop(Some(FOREVER)) {
                        worker(item);
                    }
                },
            )
        })?;
        self.inner.state.borrow_mut().workers.insert(number, co);
        Ok(co)
    }

    /// The workers still running (Copas `queue:get_workers`).
    pub fn get_workers(&self) -> Vec<Coroutine> {
        let st = self.inner.state.borrow();
        st.workers.values().copied().collect()
    }

    /// Whether the queue was destroyed (explicitly, by a timed-out `finish`, or by draining
    /// after `stop`).
    pub fn is_destroyed(&self) -> bool {
        self.inner.state.borrow().destroyed
    }
}

impl<T> Inner<T> {
    /// [`Queue::pop`], for handles and workers alike.
    fn pop(&self, timeout: Option<Duration>) -> Result<T> {
        let (ticket, deadline) = {
            let mut st = self.state.borrow_mut();
            if st.destroyed {
                return Err(Error::new(ErrorKind::Destroyed));
            }
            if let Some(item) = st.items.pop_front() {
                if st.stopping && st.items.is_empty() {
                    // Drained: nothing is left to drop.
                    st.destroy();
                }
                return Ok(item);
            }
            // A worker finding its queue drained after the last handle went (nothing left).
            if st.abandoned(self.handles.get()).is_some() {
                return Err(Error::new(ErrorKind::Destroyed));
            }
            let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
            if timeout.is_zero() {
                return Err(Error::new(ErrorKind::Timeout));
            }
            let co = super::current().ok_or_else(|| super::outside_coroutine("Queue::pop"))?;
            let ticket = st.poppers.push(co, ());
            (ticket, super::deadline(timeout))
        };
        let guard = PopTicket {
            state: &self.state,
            ticket,
        };
        let on = Blocker::Object(ObjectKind::QueuePop, self.tag.id());
        let take = || super::take(&self.state, ticket, |st| &mut st.poppers);
        let outcome = super::wait(take, deadline, on);
        drop(guard);
        match outcome {
            Outcome::Signalled(Signal::Item(item)) => Ok(item),
            Outcome::Signalled(Signal::Destroyed) => Err(Error::new(ErrorKind::Destroyed)),
            Outcome::TimedOut => Err(Error::new(ErrorKind::Timeout)),
            Outcome::Cancelled => Err(Error::new(ErrorKind::Cancelled)),
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.borrow();
        f.debug_struct("Queue")
            .field("name", &self.inner.name)
            .field("size", &st.items.len())
            .field("waiting", &st.poppers.len())
            .field("workers", &st.workers.len())
            .field("stopping", &st.stopping)
            .field("destroyed", &st.destroyed)
            .finish()
    }
}

/// A waiting pop's place in line. Dropping it takes it out of the line and, if an item was
/// handed to it that it never took (its coroutine was removed), puts the item back first in
/// line.
struct PopTicket<'a, T> {
    state: &'a RefCell<State<T>>,
    ticket: super::WaiterId,
}

impl<T> Drop for PopTicket<'_, T> {
    fn drop(&mut self) {
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return;
        };
        let (_, unclaimed) = st.poppers.leave(self.ticket);
        let dropped = match unclaimed {
            Some(Signal::Item(item)) if !st.destroyed => {
                st.deliver(item, true);
                None
            }
            other => other,
        };
        drop(st);
        drop(dropped);
    }
}

/// A waiting `finish`'s place in line.
struct FinishTicket<'a, T> {
    state: &'a RefCell<State<T>>,
    ticket: super::WaiterId,
}

impl<T> Drop for FinishTicket<'_, T> {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.try_borrow_mut() {
            st.finishers.leave(self.ticket);
        }
    }
}

/// Takes a worker off the list when its coroutine ends, and tells waiting `finish` calls.
struct WorkerExit<T> {
    inner: Rc<Inner<T>>,
    number: u64,
}

impl<T> Drop for WorkerExit<T> {
    fn drop(&mut self) {
        if let Ok(mut st) = self.inner.state.try_borrow_mut() {
            st.workers.remove(&self.number);
            st.finishers.grant_all(());
            // The last worker gone from a queue nobody holds: its items go with it.
            let left = st.abandoned(self.inner.handles.get());
            drop(st);
            drop(left);
        }
    }
}

/// A refused [`Queue::push`]: why, and the item, given back.
///
/// ```
/// use copas::queue::Queue;
/// use copas::ErrorKind;
///
/// let q = Queue::new();
/// q.stop().unwrap(); // empty: destroyed at once
/// let refused = q.push(String::from("late")).unwrap_err();
/// assert_eq!(refused.kind(), ErrorKind::Destroyed);
/// assert_eq!(refused.into_inner(), "late");
/// ```
pub struct PushError<T> {
    kind: ErrorKind,
    item: T,
}

impl<T> PushError<T> {
    fn new(kind: ErrorKind, item: T) -> Self {
        PushError { kind, item }
    }

    /// [`ErrorKind::Stopping`] or [`ErrorKind::Destroyed`].
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The item that was not queued.
    pub fn into_inner(self) -> T {
        self.item
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())
    }
}

impl<T> std::error::Error for PushError<T> {}

impl<T> From<PushError<T>> for Error {
    /// Drops the item, keeping the kind (so `?` works in functions returning
    /// [`copas::Result`](crate::Result)).
    fn from(e: PushError<T>) -> Error {
        Error::new(e.kind)
    }
}
