//! [`Handle`]: what another thread holds to talk to a running dispatcher.
//!
//! A dispatcher and everything in it stay on their thread. A `Handle` is the `Send + Clone`
//! way in from elsewhere: it wraps the dispatcher's `Remote` (`remote.rs`), so adding a task
//! or asking for exit is a message in the dispatcher's inbox plus, for the first message of
//! a burst, one write to the poller's eventfd, which ends the dispatcher's wait at once.
//! The dispatcher acts on the message in its next step, on its own thread.

use std::fmt;
use std::sync::Arc;

use super::remote::{Message, Remote};
use crate::error::{Error, ErrorKind, Result};

/// A `Send + Clone` handle to one thread's dispatcher, for other threads (see
/// [`handle`](crate::handle)).
///
/// Whatever it asks happens on the dispatcher's own thread, in its next step: the
/// dispatcher is woken at once if it sleeps in its poller. A dispatcher that is not
/// stepping (its thread is busy elsewhere, or its loop ended) finds the requests when it
/// next steps. When the dispatcher is gone — its thread exited — every request fails with
/// [`ErrorKind::Closed`]; nothing is queued for it.
///
/// A handle does not keep [`run`](crate::run) going: a dispatcher with nothing to do ends
/// its loop even if handles to it exist. Keep it alive with a server, or a coroutine that
/// waits on a [`channel`](crate::channel) fed from other threads. Requests already posted
/// when the loop runs out of work are acted on before `run` returns; one posted after that,
/// or not yet acted on when a [`shutdown`](crate::shutdown) completes (`run` returns then,
/// by the deadline), waits for the next [`step`](crate::step) or `run`, and is dropped if
/// the thread ends first.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// let handle = copas::handle().unwrap();
/// // Keep the loop going until another thread says otherwise.
/// copas::addthread(|| {
///     copas::pause(Duration::from_secs(5));
/// })
/// .unwrap();
/// let other = std::thread::spawn(move || {
///     // Runs on the dispatcher's thread, not here.
///     handle
///         .spawn(|| {
///             println!("hello from the dispatcher");
///             copas::cancelall(); // ends the sleeping coroutine and the loop
///         })
///         .unwrap();
/// });
/// copas::run().unwrap();
/// other.join().unwrap();
/// ```
#[derive(Clone)]
pub struct Handle {
    remote: Arc<Remote>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("closed", &self.is_closed())
            .finish()
    }
}

fn gone() -> Error {
    Error::with_message(
        ErrorKind::Closed,
        "the dispatcher is gone (its thread exited)",
    )
}

impl Handle {
    /// The calling thread's dispatcher's handle.
    pub(crate) fn current() -> Result<Handle> {
        let remote = super::with_or(super::destroyed, |d| d.remote())?;
        Ok(Handle { remote })
    }

    /// Adds a coroutine running `f` to the dispatcher (as [`addthread`](crate::addthread)
    /// there would), from any thread. It starts in the dispatcher's next step; the
    /// dispatcher is woken at once. A panic in `f` goes to the dispatcher's default error
    /// handler, like any coroutine's.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the dispatcher is gone (its thread exited); `f` is
    /// dropped on the calling thread. (If the dispatcher cannot map a stack for the
    /// coroutine when the message arrives, it logs that as an error — on standard error
    /// when no logger is installed — and drops `f`.)
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        self.remote
            .post(Message::Spawn(Box::new(f)))
            .map_err(|_| gone())
    }

    /// Asks the dispatcher to [`exit`](crate::exit), from any thread: in its next step it
    /// sets [`exiting`](crate::exiting) and releases its [`waitforexit`](crate::waitforexit)
    /// waiters. As with Copas's `exit`, nothing is stopped by force: servers go on until a
    /// coroutine removes them (typically one waiting in `waitforexit`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the dispatcher is gone.
    pub fn exit(&self) -> Result<()> {
        self.remote.post(Message::Exit).map_err(|_| gone())
    }

    /// Asks the dispatcher to [`shutdown`](crate::shutdown) gracefully, from any thread
    /// (a thread waiting for a signal, say): in its next step it closes its servers,
    /// signals [`exiting`](crate::exiting), and gives its coroutines `grace` before it
    /// cancels what is left; its [`run`](crate::run) then returns.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] when the dispatcher is gone.
    pub fn shutdown(&self, grace: std::time::Duration) -> Result<()> {
        self.remote
            .post(Message::Shutdown(grace))
            .map_err(|_| gone())
    }

    /// Whether the dispatcher is gone (its thread exited), so that every request fails.
    pub fn is_closed(&self) -> bool {
        self.remote.is_closed()
    }
}
