//! The dispatcher: one per OS thread, owning the coroutines, the timers and the reactor.
//!
//! A step (Copas `step`) is: wait in the poller until an event or the next deadline; turn
//! events into ready coroutines (and accept rounds for servers); fire expired timers (after
//! looking at the poller once more if the thread was held up since the wait, see
//! [`LATE_AFTER`]); then
//! resume every coroutine that was ready when the run phase began, once (at most
//! [`MAX_RESUMES_PER_STEP`] of them; the rest keep their place for the next step, so timers
//! and I/O are looked at regularly even when tens of thousands are ready; a coroutine woken
//! by a deadline or an event while such a backlog is queued goes ahead of it, see
//! `ready.rs`). Coroutines made ready during the run phase run in the next step, so a
//! `pause(0)` loop cannot spin inside one step.
//!
//! Borrow discipline: the state lives in a `RefCell`, and no borrow is ever held while a
//! coroutine runs, while a user callback runs, or while something that may own a socket is
//! dropped (dropping a socket closes it, which needs the state). Functions here move such
//! values out of the borrow's scope before letting them go.

mod generation;
mod handle;
mod introspect;
mod poller;
mod reactor;
mod ready;
pub(crate) mod remote;
mod report;
mod shutdown;
mod status;
mod task;
mod timers;

use std::cell::{Cell, OnceCell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use copas_coro::{Coro, ResumeHint, Resumed, StackPool, DEFAULT_STACK_SIZE};
use slab::Slab;
use std::os::fd::AsRawFd;

use crate::error::{Error, ErrorKind, Result};

pub use handle::Handle;
pub(crate) use introspect::{Blocker, ObjectTag};
pub use introspect::{CoroutineInfo, CoroutineState, ObjectKind, SocketInfo, WaitTarget};
pub(crate) use reactor::{AcceptOutcome, Acceptor, IoSource, SourceKey};
pub(crate) use report::{default_handler, log_or_print};
pub use report::{ErrorHandler, PanicReport};
use status::StepCounter;
pub use status::{Status, StepStats};
pub use task::Coroutine;
pub(crate) use task::{Caller, TaskName, TaskSocket, Wake};

use generation::Generations;
use poller::{Poller, Readiness};
use reactor::Source;
use ready::{near_data, Lane, ReadyEntry, ReadyQueue};
use task::{Task, Wait};
use timers::{TimerKey, TimerQueue};

/// How many idle stacks a dispatcher keeps for reuse by default.
const DEFAULT_POOLED_STACKS: usize = 1024;

/// How many events one poller wait can return.
const EVENT_CAPACITY: usize = 1024;

/// The most poller waits one step makes to collect readiness before it fires timers (more
/// than one only when a wait fills its buffer).
const MAX_WAITS_PER_STEP: usize = 16;

/// The most coroutines one step resumes; more wait for the next step, after timers and I/O.
const MAX_RESUMES_PER_STEP: usize = 1024;

/// When more than this passed between the poller's wait and the firing of expired timers
/// (handlers started by accept rounds ran in between and one blocked the thread, or the
/// process was kept off the CPU), the poller is asked again, without waiting, before the
/// timers fire: an event that came before a deadline, while the thread was held up, wins over
/// that deadline, so a wait whose data arrived in time is served, not timed out. In an
/// ordinary step this much never passes and the extra look costs nothing.
const LATE_AFTER: Duration = Duration::from_millis(1);

/// Stacks beyond the pool's bound are given back only in a step that would otherwise sleep
/// in the poller at least this long (no timer due sooner, nothing ready, no event pending):
/// giving one back costs 2–4 µs (a shared mapping's slot) or 6–10 µs (a mapping of its own,
/// whose records the kernel then frees in a thread that preempts this one), so done as
/// coroutines end (30,000 sleepers) it made sleepers due meanwhile late by milliseconds.
const TRIM_IDLE: Duration = Duration::from_millis(1);

/// The longest one step spends giving back surplus stacks before it looks at the poller
/// again.
const TRIM_SLICE: Duration = Duration::from_micros(500);

/// How many surplus stacks an idle step gives back at a time, between looks at the clock:
/// 0.5–2.8 µs each here (less when they are neighbours in a shared mapping), so a batch stays
/// well inside [`TRIM_SLICE`].
const TRIM_BATCH: usize = 64;

/// A surplus of stacks that outlives this many seconds of steps with no idle moment (a
/// server that is never idle) is given back one stack per step.
const TRIM_AFTER: Duration = Duration::from_secs(5);

/// Gives back a table's capacity when it holds so much more than its `len` entries (four
/// times, and more than a few dozen) that the copy is worth it: `shrink_to` gets twice
/// `len`, room to grow before the next reallocation, so a table whose size swings does not
/// shrink and grow over and over.
fn shrink_table(len: usize, capacity: usize, shrink_to: impl FnOnce(usize)) {
    if capacity > 64 && capacity / 4 > len {
        shrink_to(2 * len);
    }
}

/// [`shrink_table`] for a `Vec`.
fn shrink_vec<T>(v: &mut Vec<T>) {
    shrink_table(v.len(), v.capacity(), |n| v.shrink_to(n));
}

/// What a step does after [`Dispatcher::trim_stacks`].
enum Trim {
    /// Wait in the poller this long (`None`: until an event).
    Wait(Option<Duration>),
    /// The poller was looked at and there was work: no further wait this step.
    Found(Looked),
}

/// What one [`Dispatcher::look`] at the poller found.
#[derive(Clone, Copy)]
struct Looked {
    /// Readiness events.
    events: bool,
    /// Messages from other threads, acted on.
    posted: bool,
}

/// Socket operations a coroutine may complete without waiting before it is made to yield,
/// so that a stream that is always ready cannot starve the others.
const IO_BUDGET: u32 = 128;

/// Room kept in the vector of removed coroutines between reaps (8 bytes each); a mass removal
/// that needed more gives it back.
const KEPT_GRAVES: usize = 1024;

/// How many times `cancelall`, outside a coroutine, cancels what the destructors of the
/// coroutines it cancelled started: a chain of clean-ups longer than that is left to run.
const CANCEL_ROUNDS: usize = 8;

thread_local! {
    static DISPATCHER: Dispatcher = Dispatcher::new();
    /// Ends the thread's remaining coroutines at thread exit while `DISPATCHER` still
    /// exists. First used when the first coroutine is added, after `DISPATCHER`, so its
    /// destructor runs before `DISPATCHER`'s (the standard library runs thread-local
    /// destructors in the reverse order of registration, on every platform copas supports;
    /// were it otherwise, `Dispatcher::drop` still unwinds them, as before).
    static THREAD_EXIT: ThreadExit = const { ThreadExit };
    /// Operations completed without waiting since the running coroutine was resumed. Apart
    /// from the dispatcher: a `const` thread-local is one load, where reaching `DISPATCHER`
    /// first checks that it is initialised, on every socket operation.
    static BUDGET: Cell<u32> = const { Cell::new(0) };
}

/// Counts one socket operation that completed without waiting; true when the running
/// coroutine has used its budget and should yield ([`IO_BUDGET`]).
#[inline]
pub(crate) fn spend_budget() -> bool {
    BUDGET.with(|b| {
        // Saturating: outside coroutines nothing resets it.
        let spent = b.get().saturating_add(1);
        b.set(spent);
        spent >= IO_BUDGET
    })
}

/// Runs `f` with this thread's dispatcher.
pub(crate) fn with<R>(f: impl FnOnce(&Dispatcher) -> R) -> R {
    DISPATCHER.with(f)
}

/// Runs `f` with this thread's dispatcher, or returns `gone()` once the dispatcher has been
/// destroyed: at thread exit, the destructor of a thread-local first used before copas
/// runs after the dispatcher's, and if it calls copas, `with` would panic there, which
/// aborts the process.
#[inline]
pub(crate) fn with_or<R>(gone: impl FnOnce() -> R, f: impl FnOnce(&Dispatcher) -> R) -> R {
    try_with(f).unwrap_or_else(gone)
}

/// Who is calling: [`Caller::Outside`] too once the dispatcher is gone (see [`with_or`]),
/// since no coroutine runs then.
pub(crate) fn caller() -> Caller {
    with_or(|| Caller::Outside, |d| d.caller())
}

/// The error of a call that needs the thread's dispatcher after it was destroyed (see
/// [`with_or`]).
#[cold]
pub(crate) fn destroyed<T>() -> Result<T> {
    Err(Error::with_message(
        ErrorKind::InvalidState,
        "the thread's dispatcher is gone (the thread is exiting)",
    ))
}

/// `pause` outside any coroutine: sleeps the thread for `delay` and returns the time slept,
/// except that a delay past the end of time is `pauseforever`'s, which returns at once
/// there, since nothing could wake the thread.
pub(crate) fn sleep_outside(delay: Duration) -> Duration {
    let start = Instant::now();
    if start.checked_add(delay).is_none() {
        return Duration::ZERO;
    }
    std::thread::sleep(delay);
    start.elapsed()
}

/// Runs `f` with this thread's dispatcher unless it is being torn down (thread exit).
pub(crate) fn try_with<R>(f: impl FnOnce(&Dispatcher) -> R) -> Option<R> {
    DISPATCHER.try_with(f).ok()
}

/// See `THREAD_EXIT`. Coroutines abandoned when the thread ends (in `pauseforever`, or
/// waiting on something nobody will do) are unwound there, and the destructors on their
/// stacks may call copas: release a lock, cancel a timer, close a socket. Unwound from
/// `DISPATCHER`'s own destructor, any such call would find the dispatcher gone and panic
/// inside the unwind, which aborts the process. Servers' handlers and the default error
/// handler are dropped there too, for their captures' destructors. Armed by what leaves
/// such code behind: `spawn`, registering a server, `set_default_handler`.
struct ThreadExit;

impl Drop for ThreadExit {
    fn drop(&mut self) {
        // What destructors start is cancelled too, for a few rounds; `Drop` has the rest.
        let _ = DISPATCHER.try_with(|d| {
            if !d.state.borrow().tasks.is_empty() {
                d.cancelall();
            }
            d.release_at_thread_exit();
        });
    }
}

/// Refuses to run coroutines from a destructor during a panic: none of them could suspend
/// ([`copas_coro::suspend`] refuses while the thread panics), so every wait would end at once
/// as cancelled and a coroutine waiting in a loop would spin. Left alone, they are unwound
/// when the thread exits, or run by a later `run` once the panic is caught.
fn refuse_while_panicking(what: &str) -> Result<()> {
    if std::thread::panicking() {
        return Err(Error::with_message(
            ErrorKind::InvalidState,
            format!("{what} called while the thread is panicking: no coroutine could wait"),
        ));
    }
    Ok(())
}

/// Resets a flag of the dispatcher's state when dropped, so that a panic running through
/// `step` or `run` (none should) cannot leave the thread's dispatcher unusable.
struct ClearOnDrop<'a>(&'a Dispatcher, fn(&mut State));

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        // `try_`: a panic may have left the state borrowed further up.
        if let Ok(mut st) = self.0.state.try_borrow_mut() {
            (self.1)(&mut st);
        }
    }
}

/// What a timer does when it fires.
enum TimerAction {
    /// End a coroutine's wait with [`Wake::Timeout`].
    Wake(Coroutine),
    /// Run a `copas::timeout` callback for a coroutine.
    Callback(Coroutine, Box<dyn FnOnce(Coroutine)>),
    /// Retry accepting on a server after a back-off.
    Accept(SourceKey),
    /// A graceful shutdown's deadline: only wakes the poller (see `shutdown.rs`).
    ShutdownDeadline,
}

/// How many coroutines are in each kind of wait, from which `status` makes Copas's counts:
/// there a synchronisation wait is a `pauseforever` (`inactive`), and its timeout, like a
/// socket operation's, a timer on the wheel (`timeout`); only `pause(d)` is on the sleep
/// heap (`timer`).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    read: usize,
    write: usize,
    /// `pause(d)`.
    sleeping: usize,
    /// `pauseforever`, and parked without a deadline.
    paused: usize,
    /// Parked with a deadline.
    parked_timed: usize,
    /// Waiting for a socket, with a deadline (also in `read` or `write`).
    io_timed: usize,
    callbacks: usize,
}

impl Counts {
    #[inline]
    fn slot(&mut self, wait: Wait, timed: bool) -> Option<&mut usize> {
        match wait {
            Wait::Io { write: false, .. } => Some(&mut self.read),
            Wait::Io { write: true, .. } => Some(&mut self.write),
            Wait::Sleep => Some(&mut self.sleeping),
            Wait::Park(_) if timed => Some(&mut self.parked_timed),
            Wait::Park(_) | Wait::PausedForever => Some(&mut self.paused),
            Wait::Running | Wait::Ready | Wait::Turn { .. } => None,
        }
    }

    #[inline]
    fn enter(&mut self, wait: Wait, timed: bool) {
        if let Some(n) = self.slot(wait, timed) {
            *n += 1;
        }
        if timed && matches!(wait, Wait::Io { .. }) {
            self.io_timed += 1;
        }
    }

    #[inline]
    fn leave(&mut self, wait: Wait, timed: bool) {
        if let Some(n) = self.slot(wait, timed) {
            *n -= 1;
        }
        if timed && matches!(wait, Wait::Io { .. }) {
            self.io_timed -= 1;
        }
    }
}

struct State {
    tasks: Slab<Task>,
    generations: Generations,
    /// Coroutines to resume, in order (may hold stale handles, which are skipped).
    ready: ReadyQueue,
    timers: TimerQueue<TimerAction>,
    sources: Slab<Source>,
    source_generations: Generations,
    /// Servers with connections left to accept.
    pending_accept: Vec<SourceKey>,
    servers: usize,
    counts: Counts,
    running: bool,
    stepping: bool,
    exiting: bool,
    /// Coroutines in `waitforexit`, in order, and some that left it (removed): leaving is
    /// O(1) (a connection's watcher goes with its connection, in any order), and those
    /// left behind are stale handles, which `wake` ignores, dropped when they outnumber the
    /// live ones (see [`State::push_exit_waiter`]).
    exit_waiters: Vec<Coroutine>,
    /// How many of `exit_waiters` are still waiting.
    exit_waiting: usize,
    /// A graceful shutdown under way (`shutdown.rs`).
    shutdown: Option<shutdown::Pending>,
    /// How many shutdowns have completed: `run` returns once one completes during it.
    shutdowns_completed: u64,
    default_handler: ErrorHandler,
    /// Removed coroutines, to be unwound where no borrow is held.
    graveyard: Vec<Coro>,
    /// The clock, read once per step (after the poller wait) and outside steps when a
    /// coroutine is created and started at once: what changes of state are dated with
    /// (`Task::since`).
    now: Instant,
    /// Coroutines created between steps and not started: dated by the next step's clock
    /// reading rather than by one of their own (the clock read was 8–10 % of the spawn
    /// bench).
    undated: Vec<Coroutine>,
}

/// What is left to deal with of a removed coroutine once its entry is gone (see
/// [`State::take_task`]); dropped where no borrow of the state is held.
struct Removed {
    /// Its coroutine, unless the dispatcher holds it (it is running or has ended).
    coro: Option<Coro>,
    name: TaskName,
    handler: Option<ErrorHandler>,
    socket: Option<Rc<dyn TaskSocket>>,
    autoclose: bool,
    /// Its cancelled `copas::timeout` callback.
    callback: Option<TimerAction>,
}

/// One thread's dispatcher. Reached through [`with`].
pub(crate) struct Dispatcher {
    state: RefCell<State>,
    /// Made at first use, not with the dispatcher: when making it fails (no descriptors to
    /// spare, say) the call that needed it fails and the next one tries again, instead of
    /// the thread's dispatcher failing for good.
    poller: OnceCell<Poller>,
    events: RefCell<Vec<Readiness>>,
    pool: RefCell<StackPool>,
    /// Since when the stack pool has held more than its bound (see [`TRIM_IDLE`]).
    surplus_since: Cell<Option<Instant>>,
    /// Sources closed while the state was borrowed, to be removed by `reap`.
    closed_sources: RefCell<Vec<SourceKey>>,
    /// Whether a reap is under way (see [`Dispatcher::reap_all`]).
    reaping: Cell<bool>,
    /// Whether connections accepted from now on are closed when their handler ends.
    autoclose: Cell<bool>,
    /// What other threads may reach: offload completions, handles, channels (see
    /// `remote.rs`).
    remote: remote::RemoteSlot,
    /// The steps' timing statistics, while they are on (`copas::set_step_stats`).
    step_stats: RefCell<Option<StepCounter>>,
}

impl State {
    /// Gives back the capacity of tables a burst of coroutines grew and left mostly empty.
    fn shrink(&mut self) {
        // A slab gives back only the vacant slots past its last live one; handles stay
        // valid, since generations are never reused.
        let tasks = &mut self.tasks;
        shrink_table(tasks.len(), tasks.capacity(), |_| tasks.shrink_to_fit());
        let sources = &mut self.sources;
        shrink_table(sources.len(), sources.capacity(), |_| {
            sources.shrink_to_fit()
        });
        self.ready.shrink();
        self.timers.shrink();
        shrink_vec(&mut self.exit_waiters);
        shrink_vec(&mut self.pending_accept);
        shrink_vec(&mut self.graveyard);
        shrink_vec(&mut self.undated);
    }

    fn task(&self, co: Coroutine) -> Option<&Task> {
        self.tasks
            .get(co.index as usize)
            .filter(|t| t.generation == co.generation)
    }

    fn task_mut(&mut self, co: Coroutine) -> Option<&mut Task> {
        self.tasks
            .get_mut(co.index as usize)
            .filter(|t| t.generation == co.generation)
    }

    fn source_mut(&mut self, key: SourceKey) -> Option<&mut Source> {
        self.sources
            .get_mut(key.index as usize)
            .filter(|s| s.generation == key.generation)
    }

    /// Dates the coroutines created since the last step with this step's clock reading.
    #[cold]
    fn date_undated(&mut self) {
        let now = self.now;
        let undated = std::mem::take(&mut self.undated);
        for &co in &undated {
            if let Some(task) = self.task_mut(co) {
                task.since.get_or_insert(now);
            }
        }
        // Keep the vector's room for the next burst of `addthread`s.
        self.undated = undated;
        self.undated.clear();
    }

    /// Puts the coroutine into `wait`, with a timer when `deadline` is given. False when
    /// the coroutine is unknown. A cancelled coroutine waits too: `resume` drops it as soon
    /// as it suspends.
    ///
    /// Inlined: the wait of every message goes through it, and with the wait known at the
    /// call (`wait_io`'s) its count is found without a `match`.
    #[inline]
    fn enter_wait(&mut self, co: Coroutine, wait: Wait, deadline: Option<Instant>) -> bool {
        let now = self.now;
        let Some(task) = self.task_mut(co) else {
            return false;
        };
        task.wait = wait;
        task.since = Some(now);
        let timed = deadline.is_some();
        if let Some(at) = deadline {
            let key = self.timers.insert(at, TimerAction::Wake(co));
            if let Some(task) = self.task_mut(co) {
                task.timer = Some(key);
            }
        }
        self.counts.enter(wait, timed);
        true
    }

    /// Takes the coroutine out of whatever it waits on (timer, socket FIFO, counts).
    /// Returns the wait it was in.
    fn detach(&mut self, co: Coroutine) -> Option<Wait> {
        let task = self.task_mut(co)?;
        let wait = task.wait;
        let timer = task.timer.take();
        self.leave_wait(wait, timer);
        if let Wait::Turn { source, write } = wait {
            // Removed between a socket's wake and its resume.
            self.hand_on_turn(source, write);
        }
        if let Wait::Park(Blocker::Exit) = wait {
            // Its entry stays in `exit_waiters`, a stale handle once the task is gone.
            self.exit_waiting -= 1;
        }
        if let Wait::Io { source, write } = wait {
            if let Some(src) = self.sources.get_mut(source as usize) {
                let queue = if write {
                    &src.io.writers
                } else {
                    &src.io.readers
                };
                if queue.remove(co) {
                    src.io.waiting.set(src.io.waiting.get() - 1);
                }
            }
        }
        Some(wait)
    }

    /// Gives the turn that `source`'s readiness gave a coroutine, removed before it could
    /// use it, to the next waiter in that direction: the event woke no one else, and no
    /// later event announces what it was for.
    #[cold]
    #[inline(never)]
    fn hand_on_turn(&mut self, source: u32, write: bool) {
        let Some(src) = self.sources.get(source as usize) else {
            return;
        };
        let io = &src.io;
        let ready = if write {
            io.writable.get()
        } else {
            // As `Connection::pass_on` judged when it gave the turn: over TLS, records the
            // layer holds count, and no edge will announce them.
            io.readable.get()
                || io.read_closed()
                || io
                    .owner
                    .get()
                    .and_then(Weak::upgrade)
                    .is_some_and(|owner| owner.holds_readable())
        };
        if !ready {
            return;
        }
        let Some(next) = io.next_waiter(write) else {
            return;
        };
        let near = near_data(io);
        self.wake_popped(next, near, Lane::Last);
    }

    /// Removes a coroutine's entry, cancelling its `timeout` callback, and returns what is
    /// left to deal with. Moves those fields out, not the entry: two copies of the whole
    /// entry per coroutine were about a tenth of `addthread` + run to completion.
    fn take_task(&mut self, co: Coroutine) -> Option<Removed> {
        self.detach(co);
        let task = self.task_mut(co)?;
        let mut removed = Removed {
            coro: task.coro.take(),
            name: std::mem::replace(&mut task.name, TaskName::Anonymous),
            handler: task.handler.take(),
            socket: task.socket.take(),
            autoclose: task.autoclose,
            callback: None,
        };
        let timeout = task.timeout.take();
        // Nothing is left in the entry whose drop could call back into the dispatcher.
        self.tasks.remove(co.index as usize);
        if let Some(key) = timeout {
            self.counts.callbacks -= 1;
            removed.callback = self.timers.remove(key);
        }
        Some(removed)
    }

    /// Counts a coroutine out of `wait` and cancels the `timer` that was to end it.
    #[inline]
    fn leave_wait(&mut self, wait: Wait, timer: Option<TimerKey>) {
        self.counts.leave(wait, timer.is_some());
        if let Some(key) = timer {
            self.timers.remove(key);
        }
    }

    /// Ends a coroutine's wait and schedules it in `lane`, telling it why. False when it was
    /// not waiting.
    fn wake(&mut self, co: Coroutine, why: Wake, lane: Lane) -> bool {
        match self.task(co).map(|t| t.wait) {
            Some(Wait::Sleep | Wait::PausedForever | Wait::Park(_) | Wait::Io { .. }) => {}
            _ => return false,
        }
        self.detach(co);
        let mut hint = ResumeHint::default();
        let now = self.now;
        if let Some(task) = self.task_mut(co) {
            hint = task.make_ready(now, why);
        }
        self.ready.push(ReadyEntry::new(co, hint), lane);
        true
    }

    /// Wakes a coroutine already taken out of its socket's queue, by a poller event
    /// ([`Lane::Woken`]) or by a coroutine passing readiness on ([`Lane::Last`]); `near` is
    /// [`near_data`] of that socket.
    fn wake_popped(&mut self, co: Coroutine, near: [usize; 2], lane: Lane) {
        let now = self.now;
        let Some(task) = self.task_mut(co) else {
            return;
        };
        let task_addr = task as *const Task as usize;
        let wait = task.wait;
        let timer = task.timer.take();
        let hint = task.make_ready(now, Wake::Event);
        if let Wait::Io { source, write } = wait {
            task.wait = Wait::Turn { source, write };
        }
        // Start loading its stack top and state now: by the time the run phase gets to it,
        // after the rest of this step's events, the misses are over (at 1,000 connections
        // every stack is cold).
        hint.prefetch();
        self.leave_wait(wait, timer);
        let data = [task_addr, near[0], near[1]];
        self.ready.push(ReadyEntry { co, hint, data }, lane);
    }

    /// Handles one poller event.
    fn on_event(&mut self, ev: Readiness) {
        let key = SourceKey::from_poll_key(ev.key);
        let Some(src) = self.source_mut(key) else {
            return;
        };
        if src.acceptor.is_some() {
            if ev.readable && !src.accept_scheduled {
                src.accept_scheduled = true;
                self.pending_accept.push(key);
            }
            return;
        }
        let io = &src.io;
        if ev.read_closed {
            io.close_read();
        }
        if ev.urgent {
            io.set_urgent(true);
        }
        let mut reader = None;
        let mut writer = None;
        if ev.readable {
            io.readable.set(true);
            reader = io.readers.pop();
        }
        if ev.writable {
            io.writable.set(true);
            writer = io.writers.pop();
        }
        if reader.is_none() && writer.is_none() {
            return;
        }
        io.waiting
            .set(io.waiting.get() - u32::from(reader.is_some()) - u32::from(writer.is_some()));
        let near = near_data(io);
        if let Some(co) = reader {
            self.wake_popped(co, near, Lane::Woken);
        }
        if let Some(co) = writer {
            self.wake_popped(co, near, Lane::Woken);
        }
    }

    /// Adds `co` to the coroutines in `waitforexit`, first dropping the stale entries of
    /// those that left once they outnumber the live ones (amortised O(1) per waiter).
    fn push_exit_waiter(&mut self, co: Coroutine) {
        if self.exit_waiters.len() >= 2 * self.exit_waiting + 64 {
            let mut waiters = std::mem::take(&mut self.exit_waiters);
            waiters.retain(|&w| {
                self.task(w)
                    .is_some_and(|t| t.wait == Wait::Park(Blocker::Exit))
            });
            self.exit_waiters = waiters;
        }
        self.exit_waiters.push(co);
        self.exit_waiting += 1;
    }

    /// Removes every source `which` picks (see [`State::remove_source`]).
    fn remove_sources_where(&mut self, which: impl Fn(&Source) -> bool) -> Vec<Source> {
        let keys: Vec<SourceKey> = self
            .sources
            .iter()
            .filter(|(_, s)| which(s))
            .map(|(i, s)| SourceKey {
                index: i as u32,
                generation: s.generation,
            })
            .collect();
        keys.into_iter()
            .filter_map(|key| self.remove_source(key))
            .collect()
    }

    /// Removes a source whose descriptor is gone; its waiters wake with `Closed`.
    fn remove_source(&mut self, key: SourceKey) -> Option<Source> {
        self.source_mut(key)?;
        let src = self.sources.remove(key.index as usize);
        if src.acceptor.is_some() {
            self.servers -= 1;
            // An accept round still due would only be skipped, yet while queued it keeps
            // `finished()` false and the next step from waiting.
            self.pending_accept.retain(|&pending| pending != key);
        }
        src.io.key.set(None);
        src.io.waiting.set(0);
        let mut waiters = src.io.readers.drain();
        waiters.extend(src.io.writers.drain());
        for co in waiters {
            self.wake(co, Wake::Closed, Lane::Last);
        }
        Some(src)
    }

    /// Whether `co` is queued to run and still there: the ready queue keeps the entries of
    /// coroutines removed meanwhile until a run phase skips them.
    fn live_ready(&self, co: Coroutine) -> bool {
        self.task(co).is_some_and(|task| task.wait.is_ready())
    }

    fn finished(&self) -> bool {
        // The counts first: `run` asks once per step, and a busy loop answers there.
        self.pending_accept.is_empty()
            && self.servers == 0
            && self.counts.read == 0
            && self.counts.write == 0
            && self.counts.sleeping == 0
            && self.counts.parked_timed == 0
            && !(self.counts.callbacks > 0 && self.counts.paused > 0)
            && !self.ready.coroutines().any(|co| self.live_ready(co))
    }
}

impl Dispatcher {
    fn new() -> Dispatcher {
        Dispatcher {
            state: RefCell::new(State {
                tasks: Slab::new(),
                generations: Generations::new(&generation::COROUTINES),
                ready: ReadyQueue::default(),
                timers: TimerQueue::new(),
                sources: Slab::new(),
                source_generations: Generations::new(&generation::SOURCES),
                pending_accept: Vec::new(),
                servers: 0,
                counts: Counts::default(),
                running: false,
                stepping: false,
                exiting: false,
                exit_waiters: Vec::new(),
                exit_waiting: 0,
                shutdown: None,
                shutdowns_completed: 0,
                default_handler: report::default_handler(),
                graveyard: Vec::new(),
                now: Instant::now(),
                undated: Vec::new(),
            }),
            closed_sources: RefCell::new(Vec::new()),
            reaping: Cell::new(false),
            autoclose: Cell::new(true),
            remote: remote::RemoteSlot::default(),
            step_stats: RefCell::new(None),
            poller: OnceCell::new(),
            events: RefCell::new(Vec::with_capacity(EVENT_CAPACITY)),
            pool: RefCell::new(StackPool::new(DEFAULT_STACK_SIZE, DEFAULT_POOLED_STACKS)),
            surplus_since: Cell::new(None),
        }
    }

    /// The poller, made now if this is its first use.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when it cannot be made (the next call tries again).
    #[inline]
    fn poller(&self) -> Result<&Poller> {
        match self.poller.get() {
            Some(poller) => Ok(poller),
            None => self.make_poller(),
        }
    }

    #[cold]
    fn make_poller(&self) -> Result<&Poller> {
        let poller = Poller::new().map_err(|e| {
            Error::with_message(
                ErrorKind::Io,
                format!("the poller could not be created: {e}"),
            )
        })?;
        Ok(self.poller.get_or_init(|| poller))
    }

    /// The dispatcher's coroutine running now, if any.
    pub(crate) fn current(&self) -> Option<Coroutine> {
        match self.caller() {
            Caller::Coroutine(co) => Some(co),
            Caller::Outside | Caller::Removed => None,
        }
    }

    /// Who is calling, for an operation that may have to wait: a coroutine of this
    /// dispatcher, a coroutine being removed (its destructors run on its stack after its
    /// entry is gone), or code outside any coroutine.
    pub(crate) fn caller(&self) -> Caller {
        match copas_coro::current() {
            None => Caller::Outside,
            Some(tag) => {
                let co = Coroutine::from_tag(tag);
                match self.state.borrow().task(co) {
                    Some(_) => Caller::Coroutine(co),
                    None => Caller::Removed,
                }
            }
        }
    }

    // ----- coroutines -------------------------------------------------------------------

    /// Creates a coroutine running `body`. With `start_now` it runs at once until it first
    /// waits (a server's handler); otherwise it is scheduled for the next run phase.
    pub(crate) fn spawn(
        &self,
        name: TaskName,
        socket: Option<Rc<dyn TaskSocket>>,
        autoclose: bool,
        start_now: bool,
        body: impl FnOnce() + 'static,
    ) -> Result<Coroutine> {
        // Whatever the cause (no memory, no mapping left, a stack size past the address
        // space), `Io`, as `addthread` and every coroutine-making call document it.
        let stack = self.pool.borrow_mut().allocate().map_err(|e| {
            Error::from_io(
                ErrorKind::Io,
                e,
                "no stack could be mapped for a new coroutine",
            )
        })?;
        let co = {
            let mut st = self.state.borrow_mut();
            let generation = st.generations.next();
            let index = st.tasks.vacant_key() as u32;
            Coroutine { index, generation }
        };
        let coro = Coro::new(stack, co.tag(), name.label(co.generation), body);
        let hint = coro.resume_hint();
        // Arms the thread-exit guard on first use (`try_`: a destructor at thread exit may
        // add a coroutine after the guard has gone; `Drop` unwinds that one).
        let _ = THREAD_EXIT.try_with(|_| ());
        {
            let mut st = self.state.borrow_mut();
            let since = if st.stepping {
                Some(st.now)
            } else if start_now {
                // Between steps the step's clock reading may be old, and it runs now.
                st.now = Instant::now();
                Some(st.now)
            } else {
                // Dated by the next step, which is when the dispatcher first sees it.
                st.undated.push(co);
                None
            };
            st.tasks.insert(Task {
                generation: co.generation,
                coro: Some(coro),
                name,
                wait: Wait::Ready,
                since,
                wake: Wake::Woken,
                timer: None,
                timeout: None,
                handler: None,
                socket,
                autoclose,
                cancelled: false,
                relabel: false,
                hint,
            });
            if !start_now {
                st.ready.push(ReadyEntry::new(co, hint), Lane::Last);
            }
        }
        if start_now {
            self.resume(co);
        }
        Ok(co)
    }

    /// Runs one ready coroutine until it waits or ends. Always inlined, into
    /// [`Dispatcher::run_phase`] above all (see there).
    #[inline(always)]
    fn resume(&self, co: Coroutine) {
        let (mut coro, wake) = {
            let mut st = self.state.borrow_mut();
            let now = st.now;
            let Some(task) = st.task_mut(co) else {
                return;
            };
            if !task.wait.is_ready() {
                return; // a stale entry in the ready list
            }
            let Some(coro) = task.coro.take() else {
                return;
            };
            task.wait = Wait::Running;
            task.since = Some(now);
            (coro, task.wake)
        };
        BUDGET.with(|b| b.set(0));
        match coro.resume_with(wake.code()) {
            Resumed::Suspended => {
                let mut st = self.state.borrow_mut();
                match st.task_mut(co) {
                    Some(task)
                        if task.wait != Wait::Running && !task.cancelled && !task.relabel =>
                    {
                        task.hint = coro.resume_hint();
                        task.coro = Some(coro);
                    }
                    _ => {
                        drop(st);
                        self.suspended_unusually(co, coro);
                    }
                }
            }
            Resumed::Finished => self.finish(co, coro, None),
            Resumed::Panicked(payload) => self.finish(co, coro, Some(payload)),
        }
    }

    /// After a resume: a coroutine that suspended removed, cancelled, renamed, or outside
    /// any copas call.
    #[cold]
    #[inline(never)]
    fn suspended_unusually(&self, co: Coroutine, mut coro: Coro) {
        let mut st = self.state.borrow_mut();
        let Some(task) = st.task_mut(co) else {
            st.graveyard.push(coro);
            return;
        };
        if task.wait == Wait::Running {
            // It suspended without telling the dispatcher what it waits for.
            drop(st);
            let payload: Box<dyn std::any::Any + Send> = Box::new(
                "coroutine suspended outside a copas call (copas_coro::suspend used directly)",
            );
            self.finish(co, coro, Some(payload));
            return;
        }
        if task.cancelled {
            let removed = st.take_task(co);
            st.graveyard.push(coro);
            drop(st);
            drop(removed);
            return;
        }
        if std::mem::take(&mut task.relabel) {
            coro.set_label(task.name.label(co.generation));
        }
        task.hint = coro.resume_hint();
        task.coro = Some(coro);
    }

    /// Bookkeeping for a coroutine that ended: error handler, autoclose, stack reuse.
    fn finish(&self, co: Coroutine, coro: Coro, panic: Option<Box<dyn std::any::Any + Send>>) {
        let removed = self.state.borrow_mut().take_task(co);
        let Some(mut removed) = removed else {
            self.bury(Some(co), coro, panic);
            return;
        };
        // Unwind first (a coroutine that suspended outside copas is still live): the
        // destructors on its stack may call into the dispatcher.
        let (stack, unwind_panic) = coro.unwind_into_stack();
        self.pool.borrow_mut().retire(stack);
        // Every coroutine ends here: the report stays out of line, and two empty options are
        // not walked as an iterator (that, and `drop_removed` moving its argument out of
        // line, were 2.64 G of the `spawn` bench's 34.15 G instructions).
        if panic.is_some() || unwind_panic.is_some() {
            self.report_panics(co, &removed, [panic, unwind_panic]);
        }
        if removed.autoclose {
            if let Some(socket) = &removed.socket {
                socket.close();
            }
        }
        self.drop_removed(co, &mut removed);
    }

    /// Reports a finished coroutine's panics, its own and its unwinding's, to its error
    /// handler.
    #[cold]
    #[inline(never)]
    fn report_panics(
        &self,
        co: Coroutine,
        removed: &Removed,
        panics: [Option<Box<dyn std::any::Any + Send>>; 2],
    ) {
        for payload in panics.into_iter().flatten() {
            let report = PanicReport {
                coroutine: Some(co),
                thread_name: removed.name.render(co.generation),
                socket_name: removed.socket.as_ref().map(|s| s.name()),
                payload,
            };
            let handler = removed
                .handler
                .clone()
                .unwrap_or_else(|| self.state.borrow().default_handler.clone());
            run_handler(&handler, report);
        }
    }

    /// Closes the descriptors of sources taken out of the state, then drops them (a
    /// server's handler with them) through [`Dispatcher::drop_reported`].
    fn close_removed_sources(&self, sources: Vec<Source>) {
        for src in &sources {
            let sock = src.io.take_sock();
            if let (Some(sock), Some(poller)) = (sock, self.poller.get()) {
                let _ = poller.delete(sock.as_raw_fd());
            }
        }
        self.drop_reported(None, || "copas_core_server".into(), sources);
    }

    /// At thread exit, while the dispatcher still exists: closes the servers and drops the
    /// closures the dispatcher holds outside coroutines (their handlers, the default error
    /// handler), whose captures' destructors may call copas. From the dispatcher's own
    /// destructor such a call would find it gone and panic there, which aborts the process.
    fn release_at_thread_exit(&self) {
        let servers = self
            .state
            .borrow_mut()
            .remove_sources_where(|s| s.acceptor.is_some());
        self.close_removed_sources(servers);
        let old = std::mem::replace(
            &mut self.state.borrow_mut().default_handler,
            report::default_handler(),
        );
        self.drop_reported(None, || "copas_core".into(), old);
    }

    /// Drops the closures user code gave a removed coroutine (its `timeout` callback, its
    /// error handler) through [`Dispatcher::drop_reported`]; the caller drops the rest (its
    /// name, its socket handle) as is.
    #[inline(always)]
    fn drop_removed(&self, co: Coroutine, removed: &mut Removed) {
        // Most coroutines leave no closure: a look in line, the work out of it.
        if removed.callback.is_some() || removed.handler.is_some() {
            self.drop_closures_left(co, removed);
        }
    }

    /// [`Dispatcher::drop_removed`]'s work when there are closures to drop.
    #[inline(never)]
    fn drop_closures_left(&self, co: Coroutine, removed: &mut Removed) {
        let name = &removed.name;
        if let Some(callback) = removed.callback.take() {
            self.drop_reported(Some(co), || name.render(co.generation), callback);
        }
        if let Some(handler) = removed.handler.take() {
            self.drop_reported(Some(co), || name.render(co.generation), handler);
        }
    }

    /// Drops `value`, which user code owns (a `timeout` callback never run, an error
    /// handler, a server's handler): a panic in its captures' destructors goes to the
    /// default error handler as `name()`'s, instead of out of the loop (Copas: errors never
    /// leave it).
    fn drop_reported<T>(
        &self,
        coroutine: Option<Coroutine>,
        name: impl FnOnce() -> String,
        value: T,
    ) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
            let report = PanicReport {
                coroutine,
                thread_name: name(),
                socket_name: None,
                payload,
            };
            let handler = self.state.borrow().default_handler.clone();
            run_handler(&handler, report);
        }
    }

    /// Unwinds removed coroutines and removes sources closed under a borrow.
    #[inline]
    fn reap(&self) {
        // Twice a step, almost always with nothing to do: a look in line, the work out of it.
        if self.reap_due() {
            self.reap_all();
        }
    }

    /// Whether a coroutine waits to be unwound or a closed source to be removed.
    #[inline]
    fn reap_due(&self) -> bool {
        !(self.state.borrow().graveyard.is_empty() && self.closed_sources.borrow().is_empty())
    }

    /// [`Dispatcher::reap`]'s work, until nothing is left (unwinding may queue more).
    #[inline(never)]
    fn reap_all(&self) {
        // A removal made while a reap runs — by a destructor of what a coroutine being buried
        // holds, such as the captures of one that never started, dropped with no panic under
        // way — leaves its coroutine to the reap already running, whose loop takes it next.
        // Nested instead, a chain of such removals would add a reap's frames per link and
        // overflow the stack.
        if self.reaping.replace(true) {
            return;
        }
        struct Done<'a>(&'a Cell<bool>);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _done = Done(&self.reaping);
        while self.reap_due() {
            let mut graves = std::mem::take(&mut self.state.borrow_mut().graveyard);
            let closed = std::mem::take(&mut *self.closed_sources.borrow_mut());
            for key in closed {
                let removed = self.state.borrow_mut().remove_source(key);
                drop(removed);
            }
            for coro in graves.drain(..) {
                self.bury(None, coro, None);
            }
            // The emptied vector goes back with its capacity (unless the unwinding queued
            // more meanwhile, or a mass removal made it large), so the next removal's `push`
            // does not allocate a new one.
            let mut st = self.state.borrow_mut();
            if st.graveyard.is_empty() && graves.capacity() <= KEPT_GRAVES {
                st.graveyard = graves;
            }
        }
    }

    /// Unwinds a coroutine whose entry is gone (removed, cancelled) and pools its stack.
    /// Its `panic`, and one the unwinding raised (it caught its cancellation and panicked
    /// anew), go to the default error handler: the coroutine's own went with its entry.
    fn bury(
        &self,
        co: Option<Coroutine>,
        coro: Coro,
        panic: Option<Box<dyn std::any::Any + Send>>,
    ) {
        let label = coro.label().clone();
        let (stack, unwind_panic) = coro.unwind_into_stack();
        self.pool.borrow_mut().retire(stack);
        for payload in [panic, unwind_panic].into_iter().flatten() {
            let report = PanicReport {
                coroutine: co,
                thread_name: label.to_string(),
                socket_name: None,
                payload,
            };
            let handler = self.state.borrow().default_handler.clone();
            run_handler(&handler, report);
        }
    }

    // ----- the loop ---------------------------------------------------------------------

    /// One scheduler iteration (Copas `step`). Returns whether the poller reported events.
    pub(crate) fn step(&self, timeout: Option<Duration>) -> Result<bool> {
        {
            let mut st = self.state.borrow_mut();
            if st.stepping || copas_coro::in_coroutine() {
                return Err(Error::with_message(
                    ErrorKind::InvalidState,
                    "step called from inside the dispatcher",
                ));
            }
            refuse_while_panicking("step")?;
            st.stepping = true;
        }
        let _stepping = ClearOnDrop(self, |st| st.stepping = false);
        self.step_inner(timeout)
    }

    fn step_inner(&self, timeout: Option<Duration>) -> Result<bool> {
        self.reap();
        let poller = self.poller()?;
        let wait_for = {
            let st = self.state.borrow();
            if !st.ready.is_empty() || !st.pending_accept.is_empty() {
                Some(Duration::ZERO)
            } else {
                let next = st
                    .timers
                    .next_deadline()
                    .map(|at| at.saturating_duration_since(Instant::now()));
                match (next, timeout) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        };
        let trimmed = if self.pool.borrow().surplus() > 0 {
            self.trim_stacks(poller, wait_for)?
        } else {
            Trim::Wait(wait_for)
        };
        let looked = match trimmed {
            Trim::Wait(wait_for) => self.look(poller, wait_for)?,
            Trim::Found(looked) => looked,
        };
        let waited = self.state.borrow().now;
        let mut events = looked.events;

        let accepted = self.accept_pending();
        // Handlers started by those, or a burst of posts, may have held the thread;
        // otherwise the wait's own clock reading is still now (one clock read less per
        // step: an empty step is a `pause(ZERO)` yield).
        let now = if looked.posted || accepted {
            let now = Instant::now();
            if now.duration_since(waited) > LATE_AFTER {
                let expired = self
                    .state
                    .borrow()
                    .timers
                    .next_deadline()
                    .is_some_and(|at| at <= now);
                if expired {
                    events |= self.look(poller, Some(Duration::ZERO))?.events;
                }
            }
            now
        } else {
            waited
        };
        self.fire_timers(now);
        if self.state.borrow().shutdown.is_some() {
            // Past a shutdown's deadline nothing more runs.
            self.settle_shutdown();
        }

        // Resume those ready now; those made ready meanwhile go after them, next step.
        let batch = self.state.borrow_mut().ready.begin_run_phase();
        self.run_phase(batch);
        self.reap();
        if self.state.borrow().shutdown.is_some() {
            self.settle_shutdown();
        }
        if let Some(counter) = self.step_stats.borrow_mut().as_mut() {
            // From the clock reading after the wait: the step's work, not its wait.
            counter.count(waited, Instant::now());
        }
        Ok(events)
    }

    /// Resumes the first `batch` coroutines of the ready queue, in order.
    ///
    /// Its own function, small enough that [`Dispatcher::resume`] and the switch inlined
    /// into it stay there: a coroutine that suspends then lands in this loop, which goes on
    /// to the next resume, with no return in between. After a coroutine's system calls the
    /// CPU's return predictor is useless, and each return to a caller from before them is
    /// mispredicted (`crate::sys::direct`); returning from a `resume` to `step` was one per
    /// message.
    #[inline(never)]
    fn run_phase(&self, batch: usize) {
        for i in 0..batch {
            let next = {
                let mut st = self.state.borrow_mut();
                // Past a shutdown's deadline nothing more is resumed, not even in a run phase
                // that began before it: `step` cancels the rest after this.
                if st.shutdown.as_ref().is_some_and(shutdown::Pending::is_due) {
                    break;
                }
                let next = st.ready.pop_front();
                // With many connections, each resume starts with cache and TLB misses on
                // the coroutine's state and stack. Start loading the next one's now, from
                // the hint kept in the ready queue, so the misses overlap with this one.
                if i + 1 < batch {
                    if let Some(after) = st.ready.front() {
                        after.prefetch();
                    }
                }
                next
            };
            match next {
                Some(entry) => self.resume(entry.co),
                None => break,
            }
        }
    }

    /// Turns the steps' timing statistics on, afresh from now, or off.
    pub(crate) fn set_step_stats(&self, on: bool) {
        *self.step_stats.borrow_mut() = on.then(|| StepCounter::new(Instant::now()));
    }

    /// The statistics of the period since the last call, starting a new one; `None` while off.
    pub(crate) fn step_stats(&self) -> Option<StepStats> {
        let mut stats = self.step_stats.borrow_mut();
        stats.as_mut().map(|counter| counter.take(Instant::now()))
    }

    /// Gives back stacks beyond the pool's bound if this step would sleep `wait_for` in the
    /// poller with nothing to do (see [`TRIM_IDLE`]), for at most [`TRIM_SLICE`]; says what
    /// the step's wait is then (none while a surplus remains, so the next step goes on with
    /// it after looking at the poller), or that it looked and found events.
    fn trim_stacks(&self, poller: &Poller, wait_for: Option<Duration>) -> Result<Trim> {
        let start = Instant::now();
        let since = match self.surplus_since.get() {
            Some(since) => since,
            None => {
                self.surplus_since.set(Some(start));
                start
            }
        };
        if wait_for.is_some_and(|d| d < TRIM_IDLE) {
            if start.duration_since(since) >= TRIM_AFTER {
                self.trim_stack_batch(1);
            }
            return Ok(Trim::Wait(wait_for));
        }
        // Pending I/O, and posts, go before giving stacks back.
        let looked = self.look(poller, Some(Duration::ZERO))?;
        if looked.events || looked.posted {
            return Ok(Trim::Found(looked));
        }
        while self.trim_stack_batch(TRIM_BATCH) {
            if start.elapsed() >= TRIM_SLICE {
                return Ok(Trim::Wait(Some(Duration::ZERO)));
            }
        }
        Ok(Trim::Wait(
            wait_for.map(|d| d.saturating_sub(start.elapsed())),
        ))
    }

    /// Gives back up to `max` stacks beyond the pool's bound, together (neighbours' memory
    /// in one system call); false when there were none.
    fn trim_stack_batch(&self, max: usize) -> bool {
        let (trimmed, surplus) = {
            let mut pool = self.pool.borrow_mut();
            (pool.trim(max), pool.surplus())
        };
        if surplus == 0 {
            self.surplus_since.set(None);
            // A surplus of stacks is what a burst of coroutines leaves; so are tables
            // sized for it, given back with the stacks.
            if trimmed > 0 {
                self.state.borrow_mut().shrink();
            }
        }
        trimmed > 0
    }

    /// Runs the accept rounds due; false when there were none.
    fn accept_pending(&self) -> bool {
        if self.state.borrow().pending_accept.is_empty() {
            return false;
        }
        let pending = std::mem::take(&mut self.state.borrow_mut().pending_accept);
        for key in pending {
            let acceptor = {
                let mut st = self.state.borrow_mut();
                match st.source_mut(key) {
                    Some(src) => src.acceptor.clone(),
                    None => None,
                }
            };
            let Some(acceptor) = acceptor else { continue };
            let outcome = acceptor.accept_ready();
            let mut st = self.state.borrow_mut();
            if st.source_mut(key).is_none() {
                continue; // removed by a handler it started
            }
            match outcome {
                AcceptOutcome::Drained => {
                    if let Some(src) = st.source_mut(key) {
                        src.accept_scheduled = false;
                    }
                }
                AcceptOutcome::More => st.pending_accept.push(key),
                AcceptOutcome::BackOff(delay) => {
                    st.timers
                        .insert(Instant::now() + delay, TimerAction::Accept(key));
                }
            }
        }
        true
    }

    /// Looks at the poller, waiting up to `wait_for`, and acts on its events and, when the
    /// wait took a wake-up from another thread, on the inbox. Every look does both: a post
    /// made while earlier ones wait in the inbox wakes nobody, so a wake-up taken by a look
    /// that left the inbox alone would let the next wait sleep with messages in it.
    fn look(&self, poller: &Poller, wait_for: Option<Duration>) -> Result<Looked> {
        let events = self.dispatch_events(poller, wait_for)?;
        let posted = poller.take_notified() && self.drain_remote();
        Ok(Looked { events, posted })
    }

    /// Waits in the poller up to `wait_for` and turns the events into ready coroutines (and
    /// accept rounds); returns whether there were any.
    fn dispatch_events(&self, poller: &Poller, wait_for: Option<Duration>) -> Result<bool> {
        let mut events = self.events.borrow_mut();
        let mut any = false;
        let mut wait_for = wait_for;
        // A wait that filled its buffer may have left readiness in the kernel. Collect it
        // before timers fire: after a long stall (a coroutine that did not yield), a socket
        // whose data arrived meanwhile must wake with that data, not with the deadline that
        // also expired meanwhile, however many sockets became ready.
        for _ in 0..MAX_WAITS_PER_STEP {
            events.clear();
            let full = poller.wait(&mut events, wait_for)?;
            let mut st = self.state.borrow_mut();
            // The step's clock reading after the wait: the date of the changes of state it
            // brings (`Task::since`), and the start of the step for the timers' lateness
            // check.
            st.now = Instant::now();
            if !st.undated.is_empty() {
                st.date_undated();
            }
            for &ev in events.iter() {
                st.on_event(ev);
            }
            any |= !events.is_empty();
            if !full {
                break;
            }
            wait_for = Some(Duration::ZERO);
        }
        Ok(any)
    }

    /// Fires the timers whose deadline is at or before `now`.
    fn fire_timers(&self, now: Instant) {
        loop {
            let action = self.state.borrow_mut().timers.pop_expired(now);
            let Some(action) = action else { break };
            match action {
                TimerAction::Wake(co) => {
                    let mut st = self.state.borrow_mut();
                    if let Some(task) = st.task_mut(co) {
                        // The timer has fired: forget its key so `detach` leaves it be.
                        let timed = task.timer.take().is_some();
                        let wait = task.wait;
                        st.counts.leave(wait, timed);
                        st.counts.enter(wait, false);
                        st.wake(co, Wake::Timeout, Lane::Woken);
                    }
                }
                TimerAction::Callback(co, callback) => {
                    {
                        let mut st = self.state.borrow_mut();
                        st.counts.callbacks -= 1;
                        if let Some(task) = st.task_mut(co) {
                            task.timeout = None;
                        }
                    }
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| callback(co))) {
                        let report = PanicReport {
                            coroutine: None,
                            thread_name: "copas_core_timer".to_string(),
                            socket_name: None,
                            payload,
                        };
                        let handler = self.state.borrow().default_handler.clone();
                        run_handler(&handler, report);
                    }
                }
                TimerAction::Accept(key) => {
                    let mut st = self.state.borrow_mut();
                    if st.source_mut(key).is_some() {
                        st.pending_accept.push(key);
                    }
                }
                TimerAction::ShutdownDeadline => {}
            }
        }
    }

    pub(crate) fn finished(&self) -> bool {
        self.state.borrow().finished() && !self.remote_keeps_alive()
    }

    /// Copas `loop`: steps until nothing is left to do.
    pub(crate) fn run(
        &self,
        init: Option<Box<dyn FnOnce()>>,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let nested = {
            let st = self.state.borrow();
            st.running || st.stepping
        };
        // Refused before anything changes: inside a step (an error handler, a `timeout`
        // callback of a host's `step`) the loop is running as much as inside `run`.
        if nested || copas_coro::in_coroutine() {
            return Err(Error::with_message(
                ErrorKind::InvalidState,
                "run called while the dispatcher is already running",
            ));
        }
        refuse_while_panicking("run")?;
        if let Some(init) = init {
            self.spawn(
                TaskName::Static("copas_initializer"),
                None,
                false,
                false,
                init,
            )?;
        }
        let shutdowns = {
            let mut st = self.state.borrow_mut();
            // A shutdown started before the loop has told everyone it is exiting.
            st.exiting = st.shutdown.is_some();
            st.running = true;
            st.shutdowns_completed
        };
        let _running = ClearOnDrop(self, |st| st.running = false);
        loop {
            // A shutdown completed: its deadline holds. What other threads post from now on
            // waits for the next step or `run`, as a post after the loop ends does; stepping
            // on for it would run new work with no deadline.
            if self.state.borrow().shutdowns_completed != shutdowns {
                self.trim_stack_batch(usize::MAX);
                break Ok(());
            }
            // `finished` counts what other threads posted and no step has acted on yet (a
            // task `Handle::spawn` accepted must run): the next step does.
            if self.finished() {
                if self.settle_shutdown() {
                    continue;
                }
                if self.exiting() {
                    // Nothing waits on the thread now: give back the stacks beyond the
                    // pool's bound that no idle moment of the run has given back.
                    self.trim_stack_batch(usize::MAX);
                    break Ok(());
                }
                self.exit();
                continue;
            }
            self.step(timeout)?;
        }
    }

    pub(crate) fn running(&self) -> bool {
        self.state.borrow().running
    }

    pub(crate) fn exit(&self) {
        let mut st = self.state.borrow_mut();
        st.exiting = true;
        // Waking each live one counts it out of `exit_waiting` (`detach`). Only those in
        // `waitforexit` now: a stale entry's coroutine may be in another wait since.
        let waiters = std::mem::take(&mut st.exit_waiters);
        for co in waiters {
            if st
                .task(co)
                .is_some_and(|t| t.wait == Wait::Park(Blocker::Exit))
            {
                st.wake(co, Wake::Woken, Lane::Last);
            }
        }
    }

    pub(crate) fn exiting(&self) -> bool {
        self.state.borrow().exiting
    }

    pub(crate) fn waitforexit(&self) -> Result<()> {
        let co = self.require_coroutine("waitforexit")?;
        {
            let mut st = self.state.borrow_mut();
            if st.exiting {
                return Ok(());
            }
            // A refused suspension undoes only what `enter_wait` did: checked before the
            // entry goes in, which a later `exit` would use to wake this coroutine out of
            // another wait.
            if !copas_coro::can_suspend() {
                return Err(Error::new(ErrorKind::Cancelled));
            }
            st.push_exit_waiter(co);
        }
        match self.park(None, Blocker::Exit)? {
            Wake::Cancelled => Err(Error::new(ErrorKind::Cancelled)),
            _ => Ok(()),
        }
    }

    /// Copas `cancelall`: abandons every coroutine, closes every socket with waiters and
    /// every server, forgets every timer, and exits. The coroutines are unwound before this
    /// returns (see [`Dispatcher::reap_unless_unwinding`]); outside a coroutine what their
    /// destructors start (a clean-up coroutine, a timer) is cancelled in turn, up to
    /// [`CANCEL_ROUNDS`] rounds.
    pub(crate) fn cancelall(&self) {
        self.cancel_round();
        if copas_coro::in_coroutine() {
            return;
        }
        for _ in 1..CANCEL_ROUNDS {
            let st = self.state.borrow();
            if st.tasks.is_empty() && st.timers.next_deadline().is_none() {
                break;
            }
            drop(st);
            self.cancel_round();
        }
    }

    /// One round of [`Dispatcher::cancelall`].
    fn cancel_round(&self) {
        let current = self.current();
        let (tasks, timers, sources) = {
            let mut st = self.state.borrow_mut();
            let mut tasks = Vec::new();
            let keys: Vec<usize> = st.tasks.iter().map(|(k, _)| k).collect();
            for index in keys {
                let generation = st.tasks[index].generation;
                let co = Coroutine {
                    index: index as u32,
                    generation,
                };
                let task = &mut st.tasks[index];
                // Not only the caller: from a destructor of a coroutine another one removed,
                // the caller is the one being unwound (its entry gone) and the remover runs
                // on, its coroutine held by a resume up this stack. Each running one is
                // dropped when it next suspends, as `removethread` leaves one.
                if Some(co) == current || task.wait == Wait::Running {
                    task.cancelled = true;
                    // Its timer goes with the old queue below, and the counts are reset.
                    task.timeout = None;
                    task.timer = None;
                    continue;
                }
                if let Some(removed) = st.take_task(co) {
                    tasks.push((co, removed));
                }
            }
            st.pending_accept.clear();
            st.exit_waiters.clear();
            st.exit_waiting = 0;
            // Nothing is left for a shutdown under way to wait for; its timer goes below.
            st.shutdown = None;
            let mut timers = TimerQueue::new();
            std::mem::swap(&mut timers, &mut st.timers);
            st.counts = Counts::default();
            let sources = st.remove_sources_where(|s| {
                s.acceptor.is_some() || !s.io.readers.is_empty() || !s.io.writers.is_empty()
            });
            // Every task but the running ones (not waiting) is gone, so removing the
            // sources queued nothing; what the queue held before is dropped here.
            st.ready.clear();
            (tasks, timers, sources)
        };
        self.close_removed_sources(sources);
        self.drop_reported(None, || "copas_core_timer".into(), timers);
        let mut graves = Vec::new();
        for (co, mut removed) in tasks {
            if let Some(coro) = removed.coro.take() {
                graves.push(coro);
            }
            self.drop_removed(co, &mut removed);
        }
        self.state.borrow_mut().graveyard.extend(graves);
        self.reap_unless_unwinding();
        self.exit();
    }

    pub(crate) fn removethread(&self, co: Coroutine) -> bool {
        let removed = {
            let mut st = self.state.borrow_mut();
            match st.task_mut(co) {
                None => return false,
                Some(task) if task.wait == Wait::Running => {
                    task.cancelled = true;
                    return true;
                }
                Some(_) => {}
            }
            st.take_task(co)
        };
        if let Some(mut removed) = removed {
            if let Some(coro) = removed.coro.take() {
                self.state.borrow_mut().graveyard.push(coro);
            }
            if removed.autoclose {
                if let Some(socket) = removed.socket.take() {
                    socket.close();
                }
            }
            self.drop_removed(co, &mut removed);
        }
        self.reap_unless_unwinding();
        true
    }

    /// Unwinds the coroutines just removed, from a coroutine too: their places in wait
    /// lines, their locks, their socket turns must be given up before the caller goes on.
    /// Not from a destructor running in an unwind (a removed coroutine's, removing others):
    /// a second unwind started during one aborts the process; the reap that runs that
    /// destructor, or the end of the step, unwinds them. Nor from one a reap runs (it
    /// returns at once, see [`Dispatcher::reap_all`]): that reap unwinds them next.
    fn reap_unless_unwinding(&self) {
        if !std::thread::panicking() {
            self.reap();
        }
    }

    // ----- waiting ----------------------------------------------------------------------

    fn require_coroutine(&self, what: &str) -> Result<Coroutine> {
        match self.caller() {
            Caller::Coroutine(co) => Ok(co),
            Caller::Removed => Err(Error::new(ErrorKind::Cancelled)),
            Caller::Outside => Err(Error::with_message(
                ErrorKind::InvalidState,
                format!("{what} needs to run inside a copas coroutine"),
            )),
        }
    }

    /// Suspends the running coroutine after it entered a wait; returns why it was woken.
    ///
    /// Inlined: every frame between a handler and the switch is one more cold stack line
    /// and one more mispredicted return when the coroutine is resumed.
    #[inline]
    fn suspend(&self, co: Coroutine) -> Wake {
        match copas_coro::suspend_value() {
            // The dispatcher resumes with the task's `wake` (see `resume`).
            Ok(code) => Wake::from_code(code),
            Err(_) => self.refused_suspend(co),
        }
    }

    /// The coroutine may not suspend (it is being unwound): undoes the wait it entered.
    #[cold]
    #[inline(never)]
    fn refused_suspend(&self, co: Coroutine) -> Wake {
        let mut st = self.state.borrow_mut();
        st.detach(co);
        if let Some(task) = st.task_mut(co) {
            task.wait = Wait::Running;
        }
        Wake::Cancelled
    }

    /// Waits until `io` is ready in one direction, it is closed, or `deadline` passes.
    /// Only inside a coroutine. Always inlined into its callers' access to the thread's
    /// dispatcher: the switch then sits in that one frame, which returns to the receive or
    /// send that waited, as `wait_io`'s own frame did. Measured against an out-of-line
    /// `wait_io` at the echo bench's 50 connections (cachegrind, twice each): the same 1,009
    /// instructions per message, 17.7 simulated L1 data misses against 18.7.
    #[inline(always)]
    pub(crate) fn wait_io(&self, io: &IoSource, write: bool, deadline: Option<Instant>) -> Wake {
        let Some(key) = io.key.get() else {
            return Wake::Closed;
        };
        let Some(tag) = copas_coro::current() else {
            return Wake::Cancelled;
        };
        let co = Coroutine::from_tag(tag);
        let wait = Wait::Io {
            source: key.index,
            write,
        };
        if !self.state.borrow_mut().enter_wait(co, wait, deadline) {
            return Wake::Cancelled;
        }
        // The queue lives in the socket's `IoSource`, which the caller has just used: no
        // other per-socket memory is touched to park here.
        if write {
            io.writers.push(co);
        } else {
            io.readers.push(co);
        }
        io.waiting.set(io.waiting.get() + 1);
        self.suspend(co)
    }

    /// After an operation that left `io` ready, lets the next waiter in that direction
    /// have its turn (several coroutines may wait on one socket).
    pub(crate) fn pass_on(&self, io: &IoSource, write: bool) {
        if let Some(co) = io.next_waiter(write) {
            self.state
                .borrow_mut()
                .wake_popped(co, near_data(io), Lane::Last);
        }
    }

    /// Parks the running coroutine until [`Dispatcher::unpark`] or `deadline`. The
    /// wait/wake primitive the synchronisation types are built on; `on` says what it waits
    /// on, for listings.
    pub(crate) fn park(&self, deadline: Option<Instant>, on: Blocker) -> Result<Wake> {
        let co = self.require_coroutine("waiting")?;
        if !self
            .state
            .borrow_mut()
            .enter_wait(co, Wait::Park(on), deadline)
        {
            return Ok(Wake::Cancelled);
        }
        Ok(self.suspend(co))
    }

    /// Wakes a coroutine parked with [`Dispatcher::park`]. False if it was not parked.
    pub(crate) fn unpark(&self, co: Coroutine) -> bool {
        let mut st = self.state.borrow_mut();
        if !matches!(st.task(co).map(|t| t.wait), Some(Wait::Park(_))) {
            return false;
        }
        st.wake(co, Wake::Woken, Lane::Last)
    }

    pub(crate) fn pause(&self, delay: Duration) -> Duration {
        if delay.is_zero() {
            // A plain yield: no clock reads (it is the hot path of cooperative loops).
            if let Some(co) = self.current() {
                // Checked before it is queued, which a refused suspension would not undo: the
                // entry left would run it twice in one step.
                if !copas_coro::can_suspend() {
                    return Duration::ZERO;
                }
                let queued = {
                    let mut st = self.state.borrow_mut();
                    let now = st.now;
                    match st.task_mut(co) {
                        Some(task) => {
                            task.make_ready(now, Wake::Woken);
                            // Running: its stack is hot already, no hint needed.
                            st.ready
                                .push(ReadyEntry::new(co, ResumeHint::default()), Lane::Last);
                            true
                        }
                        None => false,
                    }
                };
                if queued {
                    self.suspend(co);
                }
            }
            return Duration::ZERO;
        }
        let start = Instant::now();
        let co = match self.caller() {
            Caller::Coroutine(co) => co,
            // Its wait would end at once, cancelled; sleeping would stop the thread.
            Caller::Removed => return Duration::ZERO,
            Caller::Outside => return sleep_outside(delay),
        };
        let deadline = start.checked_add(delay);
        // A delay past the end of time is forever.
        let wait = if deadline.is_some() {
            Wait::Sleep
        } else {
            Wait::PausedForever
        };
        if !self.state.borrow_mut().enter_wait(co, wait, deadline) {
            return start.elapsed();
        }
        self.suspend(co);
        start.elapsed()
    }

    pub(crate) fn pauseforever(&self) -> Duration {
        let start = Instant::now();
        let Some(co) = self.current() else {
            // Nothing could ever wake a thread blocked outside the dispatcher.
            return Duration::ZERO;
        };
        if self
            .state
            .borrow_mut()
            .enter_wait(co, Wait::PausedForever, None)
        {
            self.suspend(co);
        }
        start.elapsed()
    }

    pub(crate) fn wakeup(&self, co: Coroutine) -> bool {
        let mut st = self.state.borrow_mut();
        match st.task(co).map(|t| t.wait) {
            Some(Wait::Sleep | Wait::PausedForever) => st.wake(co, Wake::Woken, Lane::Last),
            _ => false,
        }
    }

    pub(crate) fn timeout(
        &self,
        delay: Duration,
        callback: Option<Box<dyn FnOnce(Coroutine)>>,
    ) -> Result<()> {
        let co = self.require_coroutine("timeout")?;
        let old = {
            let mut st = self.state.borrow_mut();
            let old = st
                .task_mut(co)
                .and_then(|t| t.timeout.take())
                .and_then(|key| {
                    st.counts.callbacks -= 1;
                    st.timers.remove(key)
                });
            if let Some(callback) = callback {
                if let Some(at) = Instant::now().checked_add(delay) {
                    let key = st.timers.insert(at, TimerAction::Callback(co, callback));
                    if let Some(task) = st.task_mut(co) {
                        task.timeout = Some(key);
                    }
                    st.counts.callbacks += 1;
                }
            }
            old
        };
        drop(old);
        Ok(())
    }

    // ----- names, handlers, status ------------------------------------------------------

    pub(crate) fn set_name(&self, co: Option<Coroutine>, name: &str) -> bool {
        let Some(co) = co.or_else(|| self.current()) else {
            return false;
        };
        let mut st = self.state.borrow_mut();
        let Some(task) = st.task_mut(co) else {
            return false;
        };
        let name: Rc<str> = Rc::from(name);
        task.name = TaskName::Owned(name.clone());
        match task.coro.as_mut() {
            Some(coro) => coro.set_label(name),
            // It runs: its coroutine is on the dispatcher's stack; relabel when it suspends.
            None => task.relabel = true,
        }
        true
    }

    pub(crate) fn name(&self, co: Option<Coroutine>) -> Option<String> {
        let co = co.or_else(|| self.current())?;
        let st = self.state.borrow();
        st.task(co).map(|t| t.name.render(co.generation))
    }

    pub(crate) fn set_handler(&self, handler: Option<ErrorHandler>) -> bool {
        match self.current() {
            Some(co) => {
                let old = {
                    let mut st = self.state.borrow_mut();
                    st.task_mut(co)
                        .map(|t| std::mem::replace(&mut t.handler, handler))
                };
                drop(old);
                true
            }
            None => false,
        }
    }

    pub(crate) fn set_default_handler(&self, handler: ErrorHandler) {
        // The handler is released at thread exit by the guard (see `THREAD_EXIT`).
        let _ = THREAD_EXIT.try_with(|_| ());
        let old = std::mem::replace(&mut self.state.borrow_mut().default_handler, handler);
        drop(old);
    }

    pub(crate) fn handler(&self, co: Option<Coroutine>) -> ErrorHandler {
        let st = self.state.borrow();
        co.or_else(|| self.current())
            .and_then(|co| st.task(co).and_then(|t| t.handler.clone()))
            .unwrap_or_else(|| st.default_handler.clone())
    }

    pub(crate) fn status(&self) -> Status {
        let st = self.state.borrow();
        Status {
            running: st.running,
            read: st.counts.read + st.servers,
            write: st.counts.write,
            active: st
                .ready
                .coroutines()
                .filter(|&co| st.live_ready(co))
                .count(),
            timer: st.counts.sleeping,
            inactive: st.counts.paused + st.counts.parked_timed,
            timeout: st.counts.callbacks + st.counts.parked_timed + st.counts.io_timed,
            servers: st.servers,
            coroutines: st.tasks.len(),
            sockets: st.sources.len(),
            pooled_stacks: self.pool.borrow().idle(),
        }
    }

    pub(crate) fn autoclose(&self) -> bool {
        self.autoclose.get()
    }

    pub(crate) fn set_autoclose(&self, on: bool) {
        self.autoclose.set(on);
    }

    pub(crate) fn set_stack_size(&self, size: usize) {
        self.pool.borrow_mut().set_stack_size(size);
    }

    pub(crate) fn stack_size(&self) -> usize {
        self.pool.borrow().stack_size()
    }

    pub(crate) fn set_pooled_stacks(&self, max_idle: usize) {
        self.pool.borrow_mut().set_max_idle(max_idle);
        self.surplus_since.set(None);
    }

    // ----- the reactor ------------------------------------------------------------------

    /// Registers a socket with the poller, once for its life, edge-triggered both ways.
    pub(crate) fn register(
        &self,
        io: &Rc<IoSource>,
        acceptor: Option<Rc<dyn Acceptor>>,
    ) -> Result<SourceKey> {
        let poller = self.poller()?;
        let is_server = acceptor.is_some();
        if is_server {
            // A server's handler is released at thread exit by the guard (`THREAD_EXIT`).
            let _ = THREAD_EXIT.try_with(|_| ());
        }
        let key = {
            let mut st = self.state.borrow_mut();
            let generation = st.source_generations.next();
            let index = st.sources.insert(Source {
                generation,
                io: io.clone(),
                acceptor,
                accept_scheduled: false,
            }) as u32;
            SourceKey { index, generation }
        };
        let added = {
            let sock = io.sock();
            match sock.as_ref() {
                Some(sock) => poller.add(sock.as_raw_fd(), key.poll_key(), io.write_interest.get()),
                None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
            }
        };
        if let Err(e) = added {
            let removed = {
                let mut st = self.state.borrow_mut();
                st.sources.remove(key.index as usize)
            };
            drop(removed);
            return Err(e.into());
        }
        io.key.set(Some(key));
        if is_server {
            let mut st = self.state.borrow_mut();
            st.servers += 1;
            // A listener may have connections queued already: look at once.
            if let Some(src) = st.source_mut(key) {
                src.accept_scheduled = true;
            }
            st.pending_accept.push(key);
        }
        Ok(key)
    }

    /// Turns the poller's reports of `io`'s writability on or off
    /// ([`IoSource::write_interest`]); nothing for a socket not registered.
    pub(crate) fn set_write_interest(&self, io: &IoSource, on: bool) -> Result<()> {
        if io.write_interest.get() == on {
            return Ok(());
        }
        let Some(key) = io.key.get() else {
            return Ok(());
        };
        self.poller()?
            .set_write_interest(io.fd.get(), key.poll_key(), on)?;
        io.write_interest.set(on);
        Ok(())
    }

    /// Takes a socket out of the reactor without closing it (waiters see `Closed`).
    pub(crate) fn deregister(&self, io: &IoSource) -> Option<socket2::Socket> {
        let sock = io.take_sock()?;
        if let Some(poller) = self.poller.get() {
            let _ = poller.delete(sock.as_raw_fd());
        }
        if let Some(key) = io.key.take() {
            match self.state.try_borrow_mut() {
                Ok(mut st) => {
                    let removed = st.remove_source(key);
                    drop(st);
                    drop(removed);
                }
                // Closed from a destructor while the state is in use further up this call
                // stack: the poller no longer reports it; `reap` finishes the removal.
                Err(_) => self.closed_sources.borrow_mut().push(key),
            }
        }
        Some(sock)
    }

    /// The socket of a registered server.
    pub(crate) fn source_io(&self, key: SourceKey) -> Option<Rc<IoSource>> {
        let mut st = self.state.borrow_mut();
        st.source_mut(key)
            .filter(|s| s.acceptor.is_some())
            .map(|s| s.io.clone())
    }

    /// Closes a socket through copas: deregisters it, wakes its waiters with `Closed`,
    /// and releases the descriptor.
    pub(crate) fn close_source(&self, io: &IoSource) {
        let sock = self.deregister(io);
        drop(sock);
    }
}

/// Calls an error handler; a handler that panics is reported and otherwise ignored.
fn run_handler(handler: &ErrorHandler, report: PanicReport) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| handler(&report))) {
        log_or_print!(
            log::Level::Error,
            "failed executing error handler: {} (while handling: {report})",
            copas_coro::panic_message(&*payload)
        );
        drop_payload(payload);
    }
    drop_payload(report);
}

/// Drops what a panic left (its payload, or a report holding one) so that a destructor
/// panicking in turn cannot escape the loop (Copas: errors never leave it). That second
/// panic is logged, and its own payload leaked: dropping it could panic again.
fn drop_payload<T>(value: T) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        log_or_print!(
            log::Level::Error,
            "a panic's payload panicked when dropped: {}",
            copas_coro::panic_message(&*again)
        );
        std::mem::forget(again);
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Thread exit: unwind every coroutine (their destructors run) with no borrow held.
        let (tasks, timers, sources) = {
            let st = self.state.get_mut();
            let tasks: Vec<Task> = st.tasks.drain().collect();
            let mut timers = TimerQueue::new();
            std::mem::swap(&mut timers, &mut st.timers);
            let sources: Vec<Source> = st.sources.drain().collect();
            (tasks, timers, sources)
        };
        let graves = std::mem::take(&mut self.state.get_mut().graveyard);
        drop(graves);
        drop(tasks);
        drop(timers);
        for src in sources {
            src.io.key.set(None);
            if let Some(sock) = src.io.take_sock() {
                if let Some(poller) = self.poller.get() {
                    let _ = poller.delete(sock.as_raw_fd());
                }
            }
        }
    }
}
