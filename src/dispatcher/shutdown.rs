//! Graceful shutdown: stop accepting, give running coroutines until a deadline, then cancel
//! what is left.
//!
//! [`Dispatcher::shutdown`] closes every listening server at once (new connections are
//! refused by the kernel from then on), calls `exit` (so `exiting()` is true and
//! `waitforexit` waiters run: that is how coroutines learn of it) and arms a timer for the
//! deadline. The loop goes on as usual. The shutdown completes ([`Dispatcher::complete_shutdown`])
//! at whichever comes first:
//!
//! * the deadline: checked right after the step's timers fire, before anything else is
//!   resumed, so nothing runs past it;
//! * nothing left that could run by itself (the loop's `finished`): checked at the end of
//!   every step and by `run` before it returns.
//!
//! Completing is `cancelall` (every coroutine left is unwound — forced unwinding drops its
//! sockets, which closes them, and its places in lock, semaphore and queue lines — every
//! timer forgotten, every server and every socket with waiters closed) followed by closing
//! every socket still registered, whoever holds it. A coroutine paused forever or parked
//! without a deadline, which would not keep `run` going, is cancelled too: after a shutdown
//! the dispatcher holds nothing. Coroutines and timers started by the destructors of those
//! cancelled are cancelled in turn (`cancelall` does it, for a bounded number of rounds).
//!
//! Other threads ask for it through a `Handle` (`handle.rs`): the drained message calls
//! [`Dispatcher::shutdown`], which needs no coroutine; the step that drained it settles it.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::reactor::IoSource;
use super::timers::TimerKey;
use super::{Dispatcher, TimerAction};

/// A shutdown under way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    /// When what is left gets cancelled; `None` for a grace too long to add to the clock.
    deadline: Option<Instant>,
    /// The timer that wakes the poller at the deadline.
    timer: Option<TimerKey>,
}

impl Pending {
    /// Whether the deadline has passed (reads the clock only when there is one).
    pub(super) fn is_due(&self) -> bool {
        self.deadline.is_some_and(|at| at <= Instant::now())
    }
}

impl Dispatcher {
    /// Starts a graceful shutdown with `grace` for running coroutines (see the module doc).
    /// Called again during a shutdown, it can only bring the deadline forward.
    pub(crate) fn shutdown(&self, grace: Duration) {
        let now = Instant::now();
        let deadline = now.checked_add(grace);
        {
            let mut st = self.state.borrow_mut();
            let current = st.shutdown;
            let earlier = match (current, deadline) {
                (None, _) => true,
                (Some(p), Some(new)) => p.deadline.is_none_or(|old| new < old),
                (Some(_), None) => false,
            };
            if earlier {
                if let Some(key) = current.and_then(|p| p.timer) {
                    st.timers.remove(key);
                }
                let timer = deadline.map(|at| st.timers.insert(at, TimerAction::ShutdownDeadline));
                st.shutdown = Some(Pending { deadline, timer });
            }
        }
        self.close_servers();
        self.exit();
        // Between steps (or before `run`), nothing else would look at it until the next step.
        let inside = copas_coro::in_coroutine() || self.state.borrow().stepping;
        if !inside {
            self.settle_shutdown();
        }
    }

    /// Whether a shutdown is under way.
    pub(crate) fn shutting_down(&self) -> bool {
        self.state.borrow().shutdown.is_some()
    }

    /// The deadline of the shutdown under way, if it has one.
    pub(crate) fn shutdown_deadline(&self) -> Option<Instant> {
        self.state.borrow().shutdown.and_then(|p| p.deadline)
    }

    /// Completes a shutdown under way if its deadline has passed or nothing is left that
    /// could run; true if it did. Only outside coroutines.
    pub(crate) fn settle_shutdown(&self) -> bool {
        let Some(pending) = self.state.borrow().shutdown else {
            return false;
        };
        let due = pending.deadline.is_some_and(|at| at <= Instant::now());
        if !due && !self.finished() {
            return false;
        }
        self.complete_shutdown();
        true
    }

    /// Cancels everything left and closes every socket (see the module doc).
    fn complete_shutdown(&self) {
        // `cancelall` forgets the pending shutdown and its timer with the other timers, and
        // cancels what the destructors of the coroutines it cancels start (a clean-up
        // coroutine, a timer), or the deadline would not hold.
        self.cancelall();
        self.close_every_source();
        self.state.borrow_mut().shutdowns_completed += 1;
    }

    /// Closes every listening server: the kernel refuses new connections from now on.
    fn close_servers(&self) {
        let servers: Vec<Rc<IoSource>> = {
            let st = self.state.borrow();
            st.sources
                .iter()
                .filter(|(_, s)| s.acceptor.is_some())
                .map(|(_, s)| s.io.clone())
                .collect()
        };
        for io in servers {
            self.close_source(&io);
        }
    }

    /// Closes every socket still registered, whoever holds it (its handles then see
    /// `Closed`).
    fn close_every_source(&self) {
        let sources: Vec<Rc<IoSource>> = {
            let st = self.state.borrow();
            st.sources.iter().map(|(_, s)| s.io.clone()).collect()
        };
        for io in sources {
            self.close_source(&io);
        }
    }
}
