//! Copas's submodules — [`timer`], [`lock`], [`semaphore`], [`queue`], [`future`] — and the
//! one waiting mechanism they share; and, beyond Copas, [`channel`], which crosses threads.
//!
//! Every thread-local type here is built on the dispatcher's crate-internal wait/wake primitive
//! (`Dispatcher::park` / `Dispatcher::unpark`) and nothing else: a coroutine that has to wait
//! puts an entry in the object's [`WaitList`] and parks; whoever hands it what it waits for
//! (a lock's ownership, permits, an item, "destroyed") puts that in the entry's slot and
//! unparks it. A park with a deadline keeps [`run`](crate::run) going; one without does not,
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

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::dispatcher::{self, Blocker, Coroutine, PanicReport, Wake};
use crate::error::{Error, ErrorKind};

/// A timeout that never expires (Copas `math.huge`): `Duration::MAX`, or any duration too
/// long to add to the clock, waits without a deadline.
pub const FOREVER: Duration = Duration::MAX;

/// The default timeout of locks, semaphores and queue pops, as in Copas (10 seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a waker leaves what it hands to a waiter.
pub(crate) type Slot<S> = Rc<Cell<Option<S>>>;

/// One coroutine waiting in a [`WaitList`].
pub(crate) struct Entry<S, D> {
    pub(crate) co: Coroutine,
    pub(crate) slot: Slot<S>,
    /// What the waiter asked for (a semaphore's permit count).
    pub(crate) data: D,
}

impl<S, D> Entry<S, D> {
    /// Hands `signal` to the waiter and wakes it. Gives `signal` back when the waiter no
    /// longer waits (its deadline passed, or it was removed), so the caller can pass it to
    /// the next one.
    pub(crate) fn grant(&self, signal: S) -> std::result::Result<(), S> {
        if dispatcher::try_with(|d| d.unpark(self.co)).unwrap_or(false) {
            self.slot.set(Some(signal));
            Ok(())
        } else {
            Err(signal)
        }
    }
}

/// Coroutines waiting on one object, first come first served. Tickets are increasing, so
/// the map's order is arrival order; leaving from anywhere in the line is O(log n), which
/// keeps timeouts cheap when thousands wait.
pub(crate) struct WaitList<S, D = ()> {
    next: u64,
    entries: BTreeMap<u64, Entry<S, D>>,
}

impl<S, D> WaitList<S, D> {
    pub(crate) fn new() -> Self {
        WaitList {
            next: 0,
            entries: BTreeMap::new(),
        }
    }

    /// Puts `co` at the end of the line; returns its ticket and the slot it will find its
    /// signal in.
    pub(crate) fn push(&mut self, co: Coroutine, data: D) -> (u64, Slot<S>) {
        self.next += 1;
        let slot: Slot<S> = Rc::new(Cell::new(None));
        self.entries.insert(
            self.next,
            Entry {
                co,
                slot: slot.clone(),
                data,
            },
        );
        (self.next, slot)
    }

    /// Takes a waiter out of the line (it timed out or went away).
    pub(crate) fn remove(&mut self, ticket: u64) -> Option<Entry<S, D>> {
        self.entries.remove(&ticket)
    }

    pub(crate) fn front(&self) -> Option<&Entry<S, D>> {
        self.entries.first_key_value().map(|(_, e)| e)
    }

    pub(crate) fn pop_front(&mut self) -> Option<Entry<S, D>> {
        self.entries.pop_first().map(|(_, e)| e)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Hands a copy of `signal` to every waiter, emptying the line.
    pub(crate) fn grant_all(&mut self, signal: S)
    where
        S: Clone,
    {
        while let Some(entry) = self.pop_front() {
            let _ = entry.grant(signal.clone());
        }
    }
}

/// How a wait ended.
pub(crate) enum Outcome<S> {
    /// A waker handed this over.
    Signalled(S),
    /// The deadline passed first.
    TimedOut,
    /// The coroutine is being cancelled (it parked while being unwound).
    Cancelled,
}

/// Parks the running coroutine until a waker fills `slot` or `deadline` passes. The caller
/// has already put itself in a wait list and holds no borrow. `on` names what it waits on
/// in listings.
pub(crate) fn wait<S>(
    slot: &Cell<Option<S>>,
    deadline: Option<Instant>,
    on: Blocker,
) -> Outcome<S> {
    loop {
        let wake = dispatcher::with(|d| d.park(deadline, on));
        // A hand-over counts whatever the wake-up says: it only happens to a parked waiter,
        // and waking it cancels its deadline.
        if let Some(signal) = slot.take() {
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
