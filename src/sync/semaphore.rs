//! `copas::semaphore`: counted permits for coroutines (Copas `copas.semaphore`).
//!
//! A [`Semaphore`] holds up to `max` permits. [`take`](Semaphore::take) gets some, waiting
//! in line while there are not enough; [`give`](Semaphore::give) returns some and serves the
//! waiters in order. The line is strictly first come first served: a request succeeds at
//! once only when nobody waits before it, and a large request at the head holds back small
//! ones behind it.
//!
//! Differences from Copas 4.11:
//!
//! * Destroying a semaphore cancels its waiters' timeouts with them, so none fires later
//!   (Copas issue #118), and wakes every waiter, also those whose request would not fit
//!   under `max` (Copas leaves those to time out).
//! * A waiter at the head that times out or is removed lets the ones behind it be served at
//!   once if enough permits are there (Copas waits for the next `give`).
//! * [`get_wait`](Semaphore::get_wait) never goes below zero.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

pub use super::DEFAULT_TIMEOUT;

use super::{Outcome, WaitList};
use crate::dispatcher::{Blocker, ObjectKind, ObjectTag};
use crate::error::{Error, ErrorKind, Result};

/// What a waiter is handed.
#[derive(Clone, Copy)]
enum Signal {
    /// Its permits.
    Granted,
    /// The semaphore was destroyed.
    Destroyed,
}

struct State {
    max: usize,
    count: usize,
    /// Used by `take(n, None)`.
    timeout: Duration,
    /// Waiting coroutines with how many permits each asked for.
    waiters: WaitList<Signal, usize>,
    /// The sum of what `waiters` asked for, kept so `get_wait` reads it without a walk;
    /// wide enough that no number of waiters overflows it.
    wanted: u128,
    destroyed: bool,
    /// Its number and name in listings.
    tag: ObjectTag,
}

impl State {
    /// Adds `n` permits, capped at the maximum, and serves the waiters; false when capped.
    fn add(&mut self, n: usize) -> bool {
        let fits = match self.count.checked_add(n) {
            Some(count) if count <= self.max => {
                self.count = count;
                true
            }
            _ => {
                self.count = self.max;
                false
            }
        };
        self.serve();
        fits
    }

    /// [`Semaphore::give`] on the state.
    fn give(&mut self, n: usize) -> Result<()> {
        if self.destroyed {
            return Err(Error::new(ErrorKind::Destroyed));
        }
        if self.add(n) {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::TooMany))
        }
    }

    /// Serves waiters from the head of the line while there are enough permits.
    fn serve(&mut self) {
        while let Some(head) = self.waiters.front() {
            let wanted = head.data;
            if wanted > self.count {
                return;
            }
            let Some((ticket, head)) = self.waiters.pop_front() else {
                return;
            };
            self.wanted -= wanted as u128;
            if self.waiters.grant(ticket, head, Signal::Granted).is_ok() {
                self.count -= wanted;
            }
        }
    }
}

/// A counting semaphore for coroutines (Copas `copas.semaphore`). Cloning gives another
/// handle to the same semaphore.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use copas::semaphore::Semaphore;
///
/// // At most 2 of the 5 workers at a time.
/// let sema = Semaphore::new(2, 2, None);
/// for _ in 0..5 {
///     let sema = sema.clone();
///     copas::addthread(move || {
///         sema.take(1, None).expect("permit");
///         copas::pause(Duration::from_millis(10));
///         sema.give(1).expect("give back");
///     })
///     .unwrap();
/// }
/// copas::run().unwrap();
/// assert_eq!(sema.get_count().unwrap(), 2);
/// ```
#[derive(Clone)]
pub struct Semaphore {
    state: Rc<RefCell<State>>,
}

impl Semaphore {
    /// A semaphore of at most `max` permits, `start` of them available (Copas
    /// `semaphore.new(max, start, timeout)`). `timeout` is the default of
    /// [`take`](Semaphore::take) (`None`: 10 s, [`FOREVER`](crate::FOREVER): no timeout).
    ///
    /// # Panics
    ///
    /// When `max` is 0 or `start` is more than `max`.
    pub fn new(max: usize, start: usize, timeout: impl Into<Option<Duration>>) -> Semaphore {
        assert!(max >= 1, "a semaphore needs a maximum of at least 1");
        assert!(
            start <= max,
            "a semaphore cannot start with more than its maximum ({start} > {max})"
        );
        Semaphore {
            state: Rc::new(RefCell::new(State {
                max,
                count: start,
                timeout: timeout.into().unwrap_or(DEFAULT_TIMEOUT),
                waiters: WaitList::new(),
                wanted: 0,
                destroyed: false,
                tag: ObjectTag::new(),
            })),
        }
    }

    /// Names the semaphore for listings ([`copas::dump`](crate::dump),
    /// [`copas::coroutines`](crate::coroutines)): a coroutine waiting on it shows this name
    /// (beyond Copas, whose semaphore has no name). Replaces an earlier name.
    pub fn set_name(&self, name: &str) {
        self.state.borrow().tag.set_name(Rc::from(name));
    }

    /// The name given with [`set_name`](Semaphore::set_name), if any.
    pub fn name(&self) -> Option<String> {
        self.state.borrow().tag.name().map(|n| n.to_string())
    }

    /// Takes `n` permits (Copas `semaphore:take(n, timeout)`), waiting in line up to
    /// `timeout` (`None`: the semaphore's default) when someone waits already or there are
    /// not enough. A zero timeout never waits.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::TooMany`] at once when `n` is more than the maximum;
    /// [`ErrorKind::Timeout`]; [`ErrorKind::Destroyed`] when the semaphore is or gets
    /// destroyed; [`ErrorKind::InvalidState`] when it would have to wait outside a
    /// coroutine; [`ErrorKind::Cancelled`] when the waiting coroutine is being removed.
    pub fn take(&self, n: usize, timeout: impl Into<Option<Duration>>) -> Result<()> {
        let (ticket, deadline, id) = {
            let mut st = self.state.borrow_mut();
            if st.destroyed {
                return Err(Error::new(ErrorKind::Destroyed));
            }
            if st.waiters.is_empty() && st.count >= n {
                st.count -= n;
                return Ok(());
            }
            if n > st.max {
                return Err(Error::new(ErrorKind::TooMany));
            }
            let timeout = timeout.into().unwrap_or(st.timeout);
            if timeout.is_zero() {
                return Err(Error::new(ErrorKind::Timeout));
            }
            let co = super::current().ok_or_else(|| super::outside_coroutine("Semaphore::take"))?;
            let ticket = st.waiters.push(co, n);
            st.wanted += n as u128;
            (ticket, super::deadline(timeout), st.tag.id())
        };
        let guard = Ticket {
            state: &self.state,
            ticket,
            n,
        };
        let on = Blocker::Object(ObjectKind::Semaphore, id);
        let take = || super::take(&self.state, ticket, |st| &mut st.waiters);
        let outcome = super::wait(take, deadline, on);
        drop(guard);
        match outcome {
            // Destroyed after the permits were handed over but before this coroutine ran:
            // "destroyed" wins, as in Copas.
            Outcome::Signalled(Signal::Granted) if self.state.borrow().destroyed => {
                Err(Error::new(ErrorKind::Destroyed))
            }
            Outcome::Signalled(Signal::Granted) => Ok(()),
            Outcome::Signalled(Signal::Destroyed) => Err(Error::new(ErrorKind::Destroyed)),
            Outcome::TimedOut => Err(Error::new(ErrorKind::Timeout)),
            Outcome::Cancelled => Err(Error::new(ErrorKind::Cancelled)),
        }
    }

    /// Takes `n` permits as [`take`](Semaphore::take) does and returns them in a guard that
    /// gives them back when dropped (beyond Copas): also when the holder panics or its
    /// coroutine is removed, where permits taken with `take` would be lost.
    ///
    /// # Errors
    ///
    /// As [`take`](Semaphore::take).
    ///
    /// # Example
    ///
    /// ```
    /// use copas::semaphore::Semaphore;
    ///
    /// let sema = Semaphore::new(3, 3, None);
    /// let worker = sema.clone();
    /// copas::addthread(move || {
    ///     let permits = worker.acquire(2, None).expect("permits");
    ///     assert_eq!(worker.get_count().unwrap(), 1);
    ///     drop(permits); // given back here, or when a panic unwinds past it
    /// })
    /// .unwrap();
    /// copas::run().unwrap();
    /// assert_eq!(sema.get_count().unwrap(), 3);
    /// ```
    pub fn acquire(
        &self,
        n: usize,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<SemaphorePermit<'_>> {
        self.take(n, timeout)?;
        Ok(SemaphorePermit { sema: self, n })
    }

    /// Gives back `n` permits (Copas `semaphore:give(n)`) and serves the waiters in order
    /// while there are enough for the one at the head.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::TooMany`] when the count would go over the maximum: it is capped at the
    /// maximum (and the waiters are served all the same); [`ErrorKind::Destroyed`].
    pub fn give(&self, n: usize) -> Result<()> {
        self.state.borrow_mut().give(n)
    }

    /// The permits available now (Copas `semaphore:get_count`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Destroyed`].
    pub fn get_count(&self) -> Result<usize> {
        let st = self.state.borrow();
        if st.destroyed {
            return Err(Error::new(ErrorKind::Destroyed));
        }
        Ok(st.count)
    }

    /// How many more permits the waiters need than are available (Copas
    /// `semaphore:get_wait`): `give(get_wait()?)` serves everyone in line and leaves none
    /// when what they ask for in all fits under the maximum; otherwise that `give` is capped
    /// at the maximum (failing with [`ErrorKind::TooMany`]) and serves only the waiters at
    /// the head that fit. Zero when nobody waits (Copas returns the negative surplus then).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Destroyed`].
    pub fn get_wait(&self) -> Result<usize> {
        let st = self.state.borrow();
        if st.destroyed {
            return Err(Error::new(ErrorKind::Destroyed));
        }
        let short = st.wanted.saturating_sub(st.count as u128);
        Ok(usize::try_from(short).unwrap_or(usize::MAX))
    }

    /// The most permits it holds.
    pub fn max(&self) -> usize {
        self.state.borrow().max
    }

    /// How many coroutines wait in line.
    pub fn waiting(&self) -> usize {
        self.state.borrow().waiters.len()
    }

    /// Destroys the semaphore (Copas `semaphore:destroy`): every waiter fails with
    /// [`ErrorKind::Destroyed`] at once (its timeout is cancelled), also one that was handed
    /// its permits but has not run yet, and from now on every method does.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Destroyed`] when it already was.
    pub fn destroy(&self) -> Result<()> {
        let mut st = self.state.borrow_mut();
        if st.destroyed {
            return Err(Error::new(ErrorKind::Destroyed));
        }
        st.destroyed = true;
        st.waiters.grant_all(Signal::Destroyed);
        st.wanted = 0;
        Ok(())
    }

    /// Whether [`destroy`](Semaphore::destroy) was called.
    pub fn is_destroyed(&self) -> bool {
        self.state.borrow().destroyed
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("Semaphore")
            .field("tag", &st.tag)
            .field("count", &st.count)
            .field("max", &st.max)
            .field("waiting", &st.waiters.len())
            .field("timeout", &st.timeout)
            .field("destroyed", &st.destroyed)
            .finish()
    }
}

/// Permits held from a [`Semaphore`], from [`Semaphore::acquire`]: dropping the guard gives
/// them back as [`Semaphore::give`] does (capped at the maximum; nothing once the semaphore
/// is destroyed).
#[must_use = "the permits are given back as soon as the guard is dropped"]
pub struct SemaphorePermit<'a> {
    sema: &'a Semaphore,
    n: usize,
}

impl SemaphorePermit<'_> {
    /// How many permits the guard holds.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Keeps the permits taken: the guard goes without giving them back.
    pub fn forget(mut self) {
        self.n = 0;
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        if self.n == 0 {
            return;
        }
        // `give` holds no borrow while user code runs, so the state is free here; the cap
        // and a destroyed semaphore are not the dropping code's concern.
        if let Ok(mut st) = self.sema.state.try_borrow_mut() {
            let _ = st.give(self.n);
        }
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit")
            .field("semaphore", self.sema)
            .field("count", &self.n)
            .finish()
    }
}

/// A waiter's place in line. Dropping it (after the wait, or while a removed coroutine
/// unwinds) takes the waiter out of the line, gives back permits handed to it that it never
/// took, and lets the next waiters be served.
struct Ticket<'a> {
    state: &'a RefCell<State>,
    ticket: super::WaiterId,
    n: usize,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return;
        };
        let (left, handed) = st.waiters.leave(self.ticket);
        if let Some(left) = left {
            st.wanted -= left.data as u128;
        }
        if st.destroyed {
            return;
        }
        if let Some(Signal::Granted) = handed {
            st.add(self.n);
        } else {
            st.serve();
        }
    }
}
