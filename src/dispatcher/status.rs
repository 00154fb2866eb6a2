//! A snapshot of what the dispatcher holds, for monitoring (Copas `status()`).

/// Counts of what the dispatcher is doing, as returned by [`status`](crate::status).
///
/// The fields follow Copas's `status()` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// The loop is running ([`run`](crate::run) has not returned).
    pub running: bool,
    /// Coroutines waiting to read, plus listening servers (Copas `read`).
    pub read: usize,
    /// Coroutines waiting to write (Copas `write`).
    pub write: usize,
    /// Coroutines ready to run in the next step (Copas `active`).
    pub active: usize,
    /// Coroutines in [`pause`](crate::pause) with a deadline (Copas `timer`, without its
    /// core timer).
    pub timer: usize,
    /// Coroutines in [`pauseforever`](crate::pauseforever), or waiting on a lock,
    /// semaphore, queue, future, channel, offload or [`waitforexit`](crate::waitforexit),
    /// with a timeout or not (Copas `inactive`: these are `pauseforever` there).
    pub inactive: usize,
    /// Deadlines pending other than a `pause`'s: [`timeout`](crate::timeout) callbacks, and
    /// the timeouts of the socket operations and synchronisation waits under way (Copas
    /// `timeout` and `gettimeouts()`, its timer wheel's count).
    pub timeout: usize,
    /// Listening servers.
    pub servers: usize,
    /// Live coroutines of any state.
    pub coroutines: usize,
    /// Registered sockets, servers included.
    pub sockets: usize,
    /// Idle stacks kept for reuse: up to the bound of
    /// [`set_pooled_stacks`](crate::set_pooled_stacks), and beyond it those of coroutines
    /// that ended since the dispatcher last had an idle moment to give them back.
    pub pooled_stacks: usize,
}
