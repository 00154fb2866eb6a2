//! `copas::lock`: a mutual-exclusion lock for coroutines (Copas `copas.lock`).
//!
//! A [`Lock`] is owned by one coroutine at a time; the others wait in line for it, first
//! come first served, each with its own timeout. It is re-entrant by default (the owner may
//! take it again, and must release it as many times). Releasing hands it straight to the
//! next waiter, so nobody can slip in between.
//!
//! Differences from Copas 4.11:
//!
//! * `get` with a zero timeout on a held lock fails without leaving a trace; Copas leaves
//!   the caller in the line and later hands it the lock it was told it did not get
//!   (reference §4.6).
//! * A waiter whose coroutine is removed leaves the line at once, and if the lock had
//!   already been handed to it, it is passed on to the next waiter.
//! * Timeouts are exact to the millisecond (Copas rounds up to 0.1 s).

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use super::DEFAULT_TIMEOUT;

use super::{Outcome, WaitList, WaiterId};
use crate::dispatcher::{Blocker, Caller, Coroutine, ObjectKind, ObjectTag};
use crate::error::{Error, ErrorKind, Result};

/// Who holds a lock: a coroutine, or (`None`) the thread's code outside any coroutine.
type Holder = Option<Coroutine>;

/// Who is calling, as a holder; `None` for a coroutine being removed, which is neither a
/// coroutine in the table nor the code outside them, and can hold nothing.
fn taker() -> Option<Holder> {
    match crate::dispatcher::caller() {
        Caller::Coroutine(co) => Some(Some(co)),
        Caller::Outside => Some(None),
        Caller::Removed => None,
    }
}

/// What a waiter is handed.
#[derive(Clone, Copy)]
enum Signal {
    /// The lock is yours.
    Granted,
    /// The lock was destroyed.
    Destroyed,
}

struct State {
    /// Used by `get(None)`.
    timeout: Duration,
    reentrant: bool,
    owner: Option<Holder>,
    /// How many times the owner holds it (re-entrant gets).
    depth: usize,
    /// The ticket of a waiter the lock was handed to, until it takes it; `destroy` turns
    /// the hand-over into `Destroyed` (as Copas does).
    handed: Option<WaiterId>,
    waiters: WaitList<Signal>,
    destroyed: bool,
    /// Its number and name in listings.
    tag: ObjectTag,
}

impl State {
    /// Releases one level of `holder`'s hold; at depth zero the lock goes to the next
    /// waiter.
    fn release_by(&mut self, holder: Holder) -> Result<()> {
        if self.destroyed {
            return Err(Error::new(ErrorKind::Destroyed));
        }
        if self.owner != Some(holder) {
            return Err(Error::new(ErrorKind::NotOwned));
        }
        self.depth -= 1;
        if self.depth == 0 {
            self.hand_over();
        }
        Ok(())
    }

    /// Gives the lock to the first waiter still waiting, or frees it.
    fn hand_over(&mut self) {
        self.owner = None;
        self.depth = 0;
        self.handed = None;
        while let Some((ticket, next)) = self.waiters.pop_front() {
            if self.waiters.grant(ticket, next, Signal::Granted).is_ok() {
                self.owner = Some(Some(next.co));
                self.depth = 1;
                self.handed = Some(ticket);
                return;
            }
        }
    }
}

/// A lock for coroutines (Copas `copas.lock`). Cloning gives another handle to the same
/// lock.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use copas::lock::Lock;
///
/// let lock = Lock::new(None, false); // 10 s default timeout, re-entrant
/// for i in 0..3 {
///     let lock = lock.clone();
///     copas::addthread(move || {
///         let waited = lock.get(None).expect("lock");
///         copas::pause(Duration::from_millis(10)); // hold it across a wait
///         lock.release().expect("release");
///         println!("worker {i} waited {waited:?}");
///     })
///     .unwrap();
/// }
/// copas::run().unwrap();
/// ```
#[derive(Clone)]
pub struct Lock {
    state: Rc<RefCell<State>>,
}

impl Lock {
    /// A new, free lock (Copas `lock.new(timeout, not_reentrant)`). `timeout` is the default
    /// of [`get`](Lock::get) (`None`: 10 s, [`FOREVER`](crate::FOREVER): no timeout). With
    /// `not_reentrant`, the owner blocks on its own lock like anyone else (until its
    /// timeout).
    pub fn new(timeout: impl Into<Option<Duration>>, not_reentrant: bool) -> Lock {
        Lock {
            state: Rc::new(RefCell::new(State {
                timeout: timeout.into().unwrap_or(DEFAULT_TIMEOUT),
                reentrant: !not_reentrant,
                owner: None,
                depth: 0,
                handed: None,
                waiters: WaitList::new(),
                destroyed: false,
                tag: ObjectTag::new(),
            })),
        }
    }

    /// Names the lock for listings ([`copas::dump`](crate::dump),
    /// [`copas::coroutines`](crate::coroutines)): a coroutine waiting on it shows this name
    /// (beyond Copas, whose lock has no name). Replaces an earlier name.
    pub fn set_name(&self, name: &str) {
        self.state.borrow().tag.set_name(Rc::from(name));
    }

    /// The name given with [`set_name`](Lock::set_name), if any.
    pub fn name(&self) -> Option<String> {
        self.state.borrow().tag.name().map(|n| n.to_string())
    }

    /// Takes the lock (Copas `lock:get`), waiting up to `timeout` (`None`: the lock's
    /// default) for its owner to release it. Returns how long it waited: zero when the lock
    /// was free or already ours (re-entrant).
    ///
    /// A zero timeout never waits, and a failed attempt leaves nothing behind. Outside a
    /// coroutine a free lock can be taken (its owner is then the thread's code outside any
    /// coroutine), but waiting for one is impossible.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the timeout passes first; [`ErrorKind::Destroyed`] when
    /// the lock is or gets destroyed; [`ErrorKind::InvalidState`] when it would have to
    /// wait outside a coroutine; [`ErrorKind::Cancelled`] when the calling coroutine is
    /// being removed, even for a free lock (nothing could release it after).
    pub fn get(&self, timeout: impl Into<Option<Duration>>) -> Result<Duration> {
        self.acquire(timeout.into()).map(|(waited, _)| waited)
    }

    /// `get`, also saying who holds the lock now.
    fn acquire(&self, timeout: Option<Duration>) -> Result<(Duration, Holder)> {
        let me = taker().ok_or_else(|| Error::new(ErrorKind::Cancelled))?;
        let (ticket, deadline, id) = {
            let mut st = self.state.borrow_mut();
            if st.destroyed {
                return Err(Error::new(ErrorKind::Destroyed));
            }
            match st.owner {
                None => {
                    st.owner = Some(me);
                    st.depth = 1;
                    return Ok((Duration::ZERO, me));
                }
                Some(owner) if owner == me && st.reentrant => {
                    st.depth += 1;
                    return Ok((Duration::ZERO, me));
                }
                Some(_) => {}
            }
            let timeout = timeout.unwrap_or(st.timeout);
            if timeout.is_zero() {
                return Err(Error::new(ErrorKind::Timeout));
            }
            let co = me.ok_or_else(|| super::outside_coroutine("Lock::get"))?;
            let ticket = st.waiters.push(co, ());
            (ticket, super::deadline(timeout), st.tag.id())
        };
        let start = Instant::now();
        let guard = Ticket {
            state: &self.state,
            ticket,
        };
        let on = Blocker::Object(ObjectKind::Lock, id);
        let take = || super::take(&self.state, ticket, |st| &mut st.waiters);
        let outcome = super::wait(take, deadline, on);
        drop(guard);
        match outcome {
            Outcome::Signalled(Signal::Granted) => Ok((start.elapsed(), me)),
            Outcome::Signalled(Signal::Destroyed) => Err(Error::new(ErrorKind::Destroyed)),
            Outcome::TimedOut => Err(Error::new(ErrorKind::Timeout)),
            Outcome::Cancelled => Err(Error::new(ErrorKind::Cancelled)),
        }
    }

    /// Takes the lock as [`get`](Lock::get) does and returns a guard that releases it when
    /// dropped (beyond Copas): also when the holder panics or its coroutine is removed, where
    /// a lock taken with `get` would stay held by a coroutine that no longer exists.
    ///
    /// # Errors
    ///
    /// As [`get`](Lock::get).
    ///
    /// # Example
    ///
    /// ```
    /// use copas::lock::Lock;
    ///
    /// let lock = Lock::default();
    /// let worker = lock.clone();
    /// copas::addthread(move || {
    ///     let held = worker.lock(None).expect("lock");
    ///     copas::pause(std::time::Duration::from_millis(5));
    ///     drop(held); // released here, or when a panic unwinds past it
    /// })
    /// .unwrap();
    /// copas::run().unwrap();
    /// assert!(!lock.is_locked());
    /// ```
    pub fn lock(&self, timeout: impl Into<Option<Duration>>) -> Result<LockGuard<'_>> {
        let (waited, holder) = self.acquire(timeout.into())?;
        Ok(LockGuard {
            lock: self,
            holder,
            waited,
        })
    }

    /// Releases the lock once (Copas `lock:release`). When the owner has released it as
    /// often as it took it, the lock goes to the first waiter in line, or becomes free.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotOwned`] when the caller does not own the lock (a coroutine being
    /// removed owns none); [`ErrorKind::Destroyed`] when it was destroyed.
    pub fn release(&self) -> Result<()> {
        let me = taker().ok_or_else(|| Error::new(ErrorKind::NotOwned))?;
        self.state.borrow_mut().release_by(me)
    }

    /// Destroys the lock (Copas `lock:destroy`): every waiter, and a waiter it had just been
    /// handed to, fails with [`ErrorKind::Destroyed`]; from now on every method does.
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
        if let Some(ticket) = st.handed.take() {
            // Handed over but not taken yet: the new owner learns of the destruction instead.
            st.waiters.replace(ticket, Signal::Destroyed);
        }
        st.owner = None;
        st.depth = 0;
        st.waiters.grant_all(Signal::Destroyed);
        Ok(())
    }

    /// Whether some coroutine (or the code outside coroutines) holds the lock.
    pub fn is_locked(&self) -> bool {
        self.state.borrow().owner.is_some()
    }

    /// The owner, when it is a coroutine.
    pub fn owner(&self) -> Option<Coroutine> {
        self.state.borrow().owner.flatten()
    }

    /// How many coroutines wait for the lock.
    pub fn waiting(&self) -> usize {
        self.state.borrow().waiters.len()
    }

    /// Whether [`destroy`](Lock::destroy) was called.
    pub fn is_destroyed(&self) -> bool {
        self.state.borrow().destroyed
    }
}

impl Default for Lock {
    /// Re-entrant, with the 10 s default timeout (Copas `lock.new()`).
    fn default() -> Lock {
        Lock::new(None, false)
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("Lock")
            .field("tag", &st.tag)
            .field("owner", &st.owner)
            .field("depth", &st.depth)
            .field("waiting", &st.waiters.len())
            .field("reentrant", &st.reentrant)
            .field("timeout", &st.timeout)
            .field("destroyed", &st.destroyed)
            .finish()
    }
}

/// A hold on a [`Lock`], from [`Lock::lock`]: dropping it releases the lock once.
///
/// The release is the guard's own, made for the holder it was taken by, so it also works
/// while that coroutine is being removed (where [`Lock::release`] fails with `NotOwned`).
/// Mixing the two is the caller's business: a guard dropped after its holder released the
/// lock by hand releases one more level, if the holder still owns it, and nothing otherwise.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    holder: Holder,
    waited: Duration,
}

impl LockGuard<'_> {
    /// How long [`Lock::lock`] waited for the lock: zero when it was free or already ours.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // A borrow held higher up this stack (a destructor running inside a lock method) is
        // not possible: no method of `Lock` runs user code while it holds its state.
        if let Ok(mut st) = self.lock.state.try_borrow_mut() {
            // Destroyed, or no longer this holder's: nothing to release.
            let _ = st.release_by(self.holder);
        }
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("lock", self.lock)
            .field("waited", &self.waited)
            .finish()
    }
}

/// A waiter's place in line. Dropping it (after the wait, or while a removed coroutine
/// unwinds) takes the waiter out of the line and passes on a hand-over it never took.
struct Ticket<'a> {
    state: &'a RefCell<State>,
    ticket: WaiterId,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return;
        };
        if let (_, Some(Signal::Granted)) = st.waiters.leave(self.ticket) {
            // The lock was handed to a coroutine that went away without taking it.
            st.hand_over();
        }
    }
}
