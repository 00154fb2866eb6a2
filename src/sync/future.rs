//! `copas::future`: the result of a coroutine, to wait for (Copas `copas.future`, 4.10).
//!
//! [`addthread`] runs a closure in a new coroutine, like [`copas::addthread`], and returns a
//! [`Future`] of its return value. [`Future::get`] waits for it (any number of coroutines
//! may wait, and every later call returns the same value at once), [`Future::try_get`]
//! looks without waiting, and [`Future::cancel`] removes the task.
//!
//! A task that panics gives a failed future whose error, of kind
//! [`ErrorKind::Panicked`], carries the panic's message (Copas runs the task under `pcall`
//! the same way, so the panic does not reach the error handler). A task removed by
//! [`cancel`](Future::cancel), [`removethread`](crate::removethread) or
//! [`cancelall`](crate::cancelall) gives a failed future of kind [`ErrorKind::Cancelled`].
//!
//! Copas's `future.PENDING`, `SUCCESS` and `ERROR` are the variants of [`State`]; a
//! misspelt one is a compile error rather than Copas's run-time "unknown field":
//!
//! ```compile_fail
//! let _ = copas::future::PNEDING;
//! ```
//!
//! [`copas::addthread`]: crate::addthread

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Outcome, WaitList};
use crate::dispatcher::{self, Blocker, Coroutine, TaskName};
use crate::error::{Error, ErrorKind, Result};

/// Why a task has no value.
#[derive(Clone)]
struct Failure {
    kind: ErrorKind,
    message: Option<String>,
}

impl Failure {
    fn cancelled() -> Failure {
        Failure {
            kind: ErrorKind::Cancelled,
            message: None,
        }
    }

    fn error(&self) -> Error {
        match &self.message {
            Some(m) => Error::with_message(self.kind, m.clone()),
            None => Error::new(self.kind),
        }
    }
}

struct Inner<T> {
    /// `Rc` so that it can be copied out of the borrow before `T::clone` runs.
    result: Option<std::result::Result<Rc<T>, Failure>>,
    waiters: WaitList<()>,
    task: Option<Coroutine>,
}

impl<T> Inner<T> {
    /// Records the outcome unless there is one already (a cancel wins over a late result);
    /// wakes every waiter. Returns the value when it was not taken, for the caller to drop
    /// outside the borrow.
    fn complete(
        &mut self,
        result: std::result::Result<T, Failure>,
    ) -> Option<std::result::Result<T, Failure>> {
        if self.result.is_some() {
            return Some(result);
        }
        self.result = Some(result.map(Rc::new));
        self.task = None;
        self.waiters.grant_all(());
        None
    }
}

/// What [`Future::try_get`] finds (Copas `future.PENDING`, `SUCCESS`, `ERROR`).
///
/// ```
/// use copas::future::{self, State};
/// use copas::ErrorKind;
///
/// let ok = future::addthread(|| "fine").unwrap();
/// let bad = future::addthread(|| -> &str { panic!("no luck") }).unwrap();
/// # copas::setdefaulterrorhandler(|_| {});
/// copas::run().unwrap();
/// assert_eq!(ok.try_get(), State::Ready("fine"));
/// assert_eq!(
///     bad.try_get(),
///     State::Failed(ErrorKind::Panicked, Some("no luck".to_string()))
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State<T> {
    /// The task has not finished (Copas `PENDING`).
    Pending,
    /// The task returned this (Copas `SUCCESS, results…`).
    Ready(T),
    /// The task panicked ([`ErrorKind::Panicked`], with the message) or was cancelled
    /// ([`ErrorKind::Cancelled`]) (Copas `ERROR, errmsg`).
    Failed(ErrorKind, Option<String>),
}

/// The coming result of a task started with [`addthread`] (Copas's future object). Cloning
/// gives another handle to the same result.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use copas::future::{self, State};
///
/// copas::run_with(|| {
///     let answer = future::addthread(|| {
///         copas::pause(Duration::from_millis(10));
///         6 * 7
///     })
///     .unwrap();
///     assert_eq!(answer.try_get(), State::Pending);
///     assert_eq!(answer.get().unwrap(), 42); // waits for the task
///     assert_eq!(answer.try_get(), State::Ready(42));
/// })
/// .unwrap();
/// ```
pub struct Future<T> {
    inner: Rc<RefCell<Inner<T>>>,
}

impl<T> Clone for Future<T> {
    fn clone(&self) -> Self {
        Future {
            inner: self.inner.clone(),
        }
    }
}

/// Runs `f` in a new coroutine (started in the next step, as with
/// [`copas::addthread`](crate::addthread)) and returns the future of its result (Copas
/// `future.addthread`). Arguments are captured by the closure.
///
/// # Errors
///
/// [`ErrorKind::Io`] when no stack can be mapped for the coroutine.
pub fn addthread<T: 'static>(f: impl FnOnce() -> T + 'static) -> Result<Future<T>> {
    spawn(TaskName::Anonymous, f)
}

/// Like [`addthread`], naming the coroutine (Copas `future.addnamedthread`).
///
/// # Errors
///
/// As [`addthread`].
pub fn addnamedthread<T: 'static>(
    name: &str,
    f: impl FnOnce() -> T + 'static,
) -> Result<Future<T>> {
    spawn(TaskName::Owned(Rc::from(name)), f)
}

fn spawn<T: 'static>(name: TaskName, f: impl FnOnce() -> T + 'static) -> Result<Future<T>> {
    let inner = Rc::new(RefCell::new(Inner {
        result: None,
        waiters: WaitList::new(),
        task: None,
    }));
    // Captured, so that the future learns of a task dropped before or while it runs.
    let completion = Completion {
        inner: inner.clone(),
    };
    let co = dispatcher::with_or(dispatcher::destroyed, |d| {
        d.spawn(name, None, false, false, move || {
            let completion = completion;
            let result = match super::catch_panic(f) {
                Ok(value) => Ok(value),
                Err(payload) => Err(Failure {
                    kind: ErrorKind::Panicked,
                    message: Some(copas_coro::panic_message(&*payload).to_string()),
                }),
            };
            completion.complete(result);
        })
    })?;
    let mut st = inner.borrow_mut();
    if st.result.is_none() {
        st.task = Some(co);
    }
    drop(st);
    Ok(Future { inner })
}

impl<T> Future<T> {
    /// Waits for the task and returns a copy of its value (Copas `future:get`). Any number
    /// of coroutines may wait; once the task is done every call returns at once. Outside a
    /// coroutine it returns only what is already there.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Panicked`] (with the panic's message) when the task panicked;
    /// [`ErrorKind::Cancelled`] when it was cancelled or removed, or when the waiting
    /// coroutine is being removed; [`ErrorKind::InvalidState`] when it would have to wait
    /// outside a coroutine.
    pub fn get(&self) -> Result<T>
    where
        T: Clone,
    {
        self.get_until(None, "Future::get")
    }

    /// Waits at most `timeout` for the task and returns a copy of its value (beyond Copas,
    /// whose `get` has no timeout; as `std::sync::mpsc::Receiver::recv_timeout`). A waiter
    /// that times out leaves the line; the task runs on. [`FOREVER`](crate::FOREVER) waits
    /// as long as [`get`](Future::get); `Duration::ZERO` only looks, as
    /// [`try_get`](Future::try_get) does.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the task had not finished in time; otherwise those of
    /// [`get`](Future::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T>
    where
        T: Clone,
    {
        // Done, `get_until` returns the result before it looks at the deadline.
        if timeout.is_zero() && !self.is_done() {
            return Err(Error::new(ErrorKind::Timeout));
        }
        self.get_until(super::deadline(timeout), "Future::get_timeout")
    }

    /// [`get`](Future::get) with a deadline (`None`: none).
    fn get_until(&self, deadline: Option<Instant>, what: &str) -> Result<T>
    where
        T: Clone,
    {
        loop {
            let (ticket, task) = {
                let mut st = self.inner.borrow_mut();
                match &st.result {
                    Some(Ok(value)) => {
                        let value = value.clone();
                        drop(st);
                        return Ok(T::clone(&value));
                    }
                    Some(Err(failure)) => return Err(failure.error()),
                    None => {}
                }
                let co = super::current().ok_or_else(|| super::outside_coroutine(what))?;
                let ticket = st.waiters.push(co, ());
                (ticket, st.task)
            };
            let guard = Ticket {
                inner: &self.inner,
                ticket,
            };
            let take = || super::take(&self.inner, ticket, |st| &mut st.waiters);
            let outcome = super::wait(take, deadline, Blocker::Future(task));
            drop(guard);
            match outcome {
                Outcome::Signalled(()) => continue,
                // Done meanwhile (by a coroutine that ran before this one in the step of the
                // deadline): the value, not a timeout. A task that ends later in that step
                // ended after the deadline.
                Outcome::TimedOut if self.is_done() || deadline.is_none() => continue,
                Outcome::TimedOut => return Err(Error::new(ErrorKind::Timeout)),
                Outcome::Cancelled => return Err(Error::new(ErrorKind::Cancelled)),
            }
        }
    }

    /// Looks at the result without waiting (Copas `future:try`).
    pub fn try_get(&self) -> State<T>
    where
        T: Clone,
    {
        let found = match &self.inner.borrow().result {
            None => return State::Pending,
            Some(Ok(value)) => Ok(value.clone()),
            Some(Err(failure)) => Err(failure.clone()),
        };
        match found {
            Ok(value) => State::Ready(T::clone(&value)),
            Err(failure) => State::Failed(failure.kind, failure.message),
        }
    }

    /// Whether the task has finished, failed or been cancelled.
    pub fn is_done(&self) -> bool {
        self.inner.borrow().result.is_some()
    }

    /// Cancels the task if it has not finished (Copas `future:cancel`): its coroutine is
    /// removed (a task that has not started never runs), and waiters, and every later
    /// `get`, fail with [`ErrorKind::Cancelled`]. Returns false when the task had already
    /// finished (or been cancelled).
    pub fn cancel(&self) -> bool {
        let task = {
            let mut st = self.inner.borrow_mut();
            if st.result.is_some() {
                return false;
            }
            st.result = Some(Err(Failure::cancelled()));
            st.waiters.grant_all(());
            st.task.take()
        };
        // No borrow: removing the coroutine unwinds its stack, which may use this future.
        if let Some(co) = task {
            crate::removethread(co);
        }
        true
    }

    /// The coroutine running the task, until it ends.
    pub fn coroutine(&self) -> Option<Coroutine> {
        self.inner.borrow().task
    }
}

impl<T> fmt::Debug for Future<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.borrow();
        let state = match &st.result {
            None => "pending".to_string(),
            Some(Ok(_)) => "ready".to_string(),
            Some(Err(failure)) => format!("failed ({})", failure.error()),
        };
        f.debug_struct("Future")
            .field("state", &state)
            .field("task", &st.task)
            .field("waiting", &st.waiters.len())
            .finish()
    }
}

/// Delivers the task's outcome; when dropped without having done so (the task's coroutine
/// was removed, or dropped before it ran), the outcome is "cancelled".
struct Completion<T> {
    inner: Rc<RefCell<Inner<T>>>,
}

impl<T> Completion<T> {
    fn complete(self, result: std::result::Result<T, Failure>) {
        let rejected = self.inner.borrow_mut().complete(result);
        drop(rejected);
        // `self` drops next and finds the result set.
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        let rejected = match self.inner.try_borrow_mut() {
            Ok(mut st) if st.result.is_none() => st.complete(Err(Failure::cancelled())),
            _ => None,
        };
        drop(rejected);
    }
}

/// A `get` waiter's place in line; dropping it takes the waiter out.
struct Ticket<'a, T> {
    inner: &'a RefCell<Inner<T>>,
    ticket: super::WaiterId,
}

impl<T> Drop for Ticket<'_, T> {
    fn drop(&mut self) {
        if let Ok(mut st) = self.inner.try_borrow_mut() {
            st.waiters.leave(self.ticket);
        }
    }
}
