//! Copas's submodules — [`timer`], [`lock`], [`semaphore`], [`queue`], [`future`] — and the
//! one waiting mechanism they share; and, beyond Copas, [`channel`], which crosses threads.
//!
//! Every thread-local type here is built on the dispatcher's crate-internal wait/wake primitive
//! (`Dispatcher::park` / `Dispatcher::unpark`) and nothing else: a coroutine that has to wait
//! puts an entry in the object's [`WaitList`] and parks; whoever hands it what it waits for
//! (a lock's ownership, permits, an item, "destroyed") leaves that in the wait list under
//! the waiter's ticket and unparks it. A park with a deadline keeps [`run`](crate::run) going; one without does not,
//! as in Copas (a coroutine blocked forever on a queue nobody uses is abandoned when the
//! loop has nothing else to do).
//!
//! [`channel`] is the exception: its waiters may be on any thread, so it keeps its state
//! under a mutex and wakes coroutines through their dispatcher's cross-thread inbox
//! (`dispatcher/remote.rs`); a coroutine waiting on it keeps `run` going.
//!
//! Rules every thread-local type follows:
//!
//! * A hand-over happens only if the unpark succeeds. A waiter whose deadline has passed
//!   (woken, but not yet run) or that was removed is skipped, and what it would have had
//!   goes to the next in line.
//! * A waiter leaves the wait list at once when it times out, and when its coroutine is
//!   removed (`removethread`, `cancelall`, thread exit): each type's ticket guard does this
//!   in `Drop`, which runs while the removed coroutine's stack unwinds, and gives back
//!   anything handed to it that it never took.
//! * No `RefCell` borrow of an object's state is held across a park, while user code runs
//!   (callbacks, `Clone`, `Drop` of items), or while a coroutine is removed (its unwinding
//!   may touch the same object).
//!
//! Timeouts follow Copas: `None` means the object's default (10 s, [`DEFAULT_TIMEOUT`]),
//! [`FOREVER`] (Copas `math.huge`) never times out, and `Duration::ZERO` never waits.

pub mod channel;
pub mod future;
pub mod lock;
pub mod queue;
pub mod semaphore;
pub mod timer;
mod wait_list;

pub(crate) use wait_list::{WaitList, WaiterId};

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::dispatcher::{self, Blocker, Coroutine, PanicReport, Wake};
use crate::error::{Error, ErrorKind};

/// A timeout that never expires (Copas `math.huge`): `Duration::MAX`, or any duration too
/// long to add to the clock, waits without a deadline.
pub const FOREVER: Duration = Duration::MAX;

/// The default timeout of locks, semaphores and queue pops, as in Copas (10 seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a wait ended.
pub(crate) enum Outcome<S> {
    /// A waker handed this over.
    Signalled(S),
    /// The deadline passed first.
    TimedOut,
    /// The coroutine is being cancelled (it parked while being unwound).
    Cancelled,
}

/// Parks the running coroutine until a waker hands it something, which `take` fetches
/// (from the caller's [`WaitList`], under its ticket), or `deadline` passes. The caller has
/// already put itself in a wait list and holds no borrow; `take` borrows only while it runs.
/// `on` names what it waits on in listings.
pub(crate) fn wait<S>(
    mut take: impl FnMut() -> Option<S>,
    deadline: Option<Instant>,
    on: Blocker,
) -> Outcome<S> {
    loop {
        let wake = dispatcher::with(|d| d.park(deadline, on));
        // A hand-over counts whatever the wake-up says: it only happens to a parked waiter,
        // and waking it cancels its deadline.
        if let Some(signal) = take() {
            return Outcome::Signalled(signal);
        }
        match wake {
            Ok(Wake::Timeout) => return Outcome::TimedOut,
            // Woken without a hand-over: not for us; wait on (with the same deadline).
            Ok(Wake::Woken) => continue,
            _ => return Outcome::Cancelled,
        }
    }
}

/// Takes what was handed to `ticket` in the wait list `list` finds in `state`, for
/// [`wait`]. A state borrowed elsewhere (not possible: no method holds a borrow while
/// another coroutine runs) reads as nothing handed rather than a panic, which could come
/// while a removed coroutine unwinds.
pub(crate) fn take<T, S, D: Copy>(
    state: &RefCell<T>,
    ticket: WaiterId,
    list: impl FnOnce(&mut T) -> &mut WaitList<S, D>,
) -> Option<S> {
    let mut st = state.try_borrow_mut().ok()?;
    list(&mut st).take(ticket)
}

/// The deadline of a wait of `timeout` starting now; `None` (no deadline) for a timeout
/// too long to add to the clock, such as [`FOREVER`].
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The running coroutine.
pub(crate) fn current() -> Option<Coroutine> {
    crate::current()
}

/// The error of an operation that would have to wait outside a coroutine — or in one being
/// removed, whose waits end at once, cancelled.
pub(crate) fn outside_coroutine(what: &str) -> Error {
    if dispatcher::caller() == dispatcher::Caller::Removed {
        return Error::new(ErrorKind::Cancelled);
    }
    Error::with_message(
        ErrorKind::InvalidState,
        format!("{what} has to wait, which needs a copas coroutine"),
    )
}

/// Runs `f`, catching a panic so that the caller can report or store it. The forced unwind
/// of a coroutine being removed is not a panic of `f`: it is passed on untouched (a removed
/// coroutine is no longer in the dispatcher's table, which is how it is told apart).
pub(crate) fn catch_panic<R>(
    f: impl FnOnce() -> R,
) -> std::result::Result<R, Box<dyn std::any::Any + Send>> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Ok(r),
        Err(payload) => {
            let alive = dispatcher::try_with(|d| d.current()).flatten().is_some();
            if !alive {
                std::panic::resume_unwind(payload);
            }
            Err(payload)
        }
    }
}

/// Reports a panic caught in the running coroutine to its error handler (or the default),
/// as the dispatcher does for a panic that ends a coroutine; the coroutine goes on.
pub(crate) fn report_panic(payload: Box<dyn std::any::Any + Send>) {
    let (co, handler, name) = dispatcher::with(|d| {
        (
            d.current(),
            d.handler(None),
            d.name(None).unwrap_or_default(),
        )
    });
    let report = PanicReport {
        coroutine: co,
        thread_name: name,
        socket_name: None,
        payload,
    };
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| handler(&report))) {
        crate::dispatcher::log_or_print!(
            log::Level::Error,
            "failed executing error handler: {} (while handling: {report})",
            copas_coro::panic_message(&*p)
        );
    }
}

/// Names of the form `<prefix><n>`, numbered per thread (Copas numbers them per Lua state).
pub(crate) fn generated_name(
    counter: &'static std::thread::LocalKey<Cell<u64>>,
    prefix: &str,
) -> String {
    let n = counter.with(|c| {
        let n = c.get() + 1;
        c.set(n);
        n
    });
    format!("{prefix}{n}")
}
