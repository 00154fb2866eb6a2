//! Work that crosses threads: the blocking-offload pool, and the dispatcher's inbox that
//! other threads post to.
//!
//! A dispatcher lives on one thread and nothing in it is `Send`. What other threads may
//! touch is a [`Remote`]: a mutex-guarded list of [`Message`]s and a [`Waker`] for the
//! dispatcher's poller (a duplicate of its eventfd on Linux), shared through an `Arc`.
//! Posting a message pushes it and, when the list was empty, wakes the poller (a burst of
//! posts costs one wake-up); the look at the poller that takes the wake-up drains the list
//! ([`Dispatcher::drain_remote`]) before the step fires its timers. When the
//! dispatcher is dropped (its thread exits) the inbox is closed: later posts are refused
//! and what was still queued is dropped, so nothing accumulates for a dispatcher that is
//! gone. The public [`Handle`](crate::Handle) and the channels (`sync/channel.rs`) post here.
//!
//! [`offload`] runs a closure on a small process-wide pool of helper threads (started on
//! demand, at most [`MAX_THREADS`], leaving after [`IDLE_EXIT`] without work) while the
//! calling coroutine is parked. The worker stores the result in a slot shared with the
//! coroutine and posts [`Message::Complete`]; the dispatcher unparks the coroutine, which takes
//! the result. The message holds the slot only weakly: a coroutine that stopped waiting
//! (cancelled, or past its deadline) has dropped its strong reference, so a late completion
//! wakes nobody, and the result is dropped on the worker thread.

use std::any::Any;
use std::cell::{OnceCell, RefCell};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::poller::Waker;
use super::ready::Lane;
use super::{log_or_print, Caller, Dispatcher, TaskName, Wait, Wake};
use crate::dispatcher::Coroutine;
use crate::error::{Error, ErrorKind, Result};

/// The most helper threads the offload pool runs at once (process-wide).
pub(crate) const MAX_THREADS: usize = 4;

/// How long a helper thread waits for work before it exits.
pub(crate) const IDLE_EXIT: Duration = Duration::from_secs(10);

/// Something another thread asks a dispatcher to do.
pub(crate) enum Message {
    /// What `co` waits for happened (an offloaded closure finished, a channel has an item
    /// or room): unpark `co` if it still waits for it (`token` alive).
    Complete {
        co: Coroutine,
        token: Weak<dyn Any + Send + Sync>,
    },
    /// Start a coroutine running this closure (`Handle::spawn`).
    Spawn(Box<dyn FnOnce() + Send>),
    /// Call `exit` (`Handle::exit`).
    Exit,
    /// Begin a graceful shutdown with this grace (`shutdown.rs`).
    Shutdown(Duration),
}

/// The messages posted and not yet drained, and whether the dispatcher is gone.
struct Inbox {
    messages: Vec<Message>,
    closed: bool,
}

/// The part of a dispatcher that other threads may use: post messages and wake it.
pub(crate) struct Remote {
    inbox: Mutex<Inbox>,
    waker: Waker,
    /// Coroutines of this dispatcher parked for something another thread will do (an
    /// offloaded closure, a channel): they keep `run` going although they are parked
    /// without a deadline.
    waiting: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Remote {
    /// Queues `msg` for the dispatcher and wakes it. Any thread may call it. Gives the
    /// message back when the dispatcher is gone (its thread exited).
    pub(crate) fn post(&self, msg: Message) -> std::result::Result<(), Message> {
        let was_empty = {
            let mut inbox = lock(&self.inbox);
            if inbox.closed {
                return Err(msg);
            }
            inbox.messages.push(msg);
            inbox.messages.len() == 1
        };
        // Whoever found the inbox empty wakes the dispatcher, after its push; later posts
        // before the drain ride on that wake-up.
        if was_empty {
            if let Err(e) = self.waker.wake() {
                log_or_print!(log::Level::Error, "could not wake the dispatcher: {e}");
            }
        }
        Ok(())
    }

    /// Whether the dispatcher is gone (its thread exited).
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.inbox).closed
    }

    /// Whether this is the calling thread's dispatcher's `Remote`.
    pub(crate) fn is_local(self: &Arc<Remote>) -> bool {
        super::try_with(|d| {
            d.remote
                .remote
                .get()
                .is_some_and(|mine| Arc::ptr_eq(mine, self))
        })
        .unwrap_or(false)
    }
}

/// Ends the park of `co`, a coroutine of the dispatcher `remote` belongs to, if `token` is
/// still alive (the coroutine still waits for what the caller hands over). On that
/// dispatcher's own thread it is done at once when its state is free; otherwise, and from
/// other threads, through the inbox (which wakes the poller). A dispatcher that is gone
/// has no coroutine left to wake, so a refused post is ignored.
pub(crate) fn unpark(remote: &Arc<Remote>, co: Coroutine, token: Weak<dyn Any + Send + Sync>) {
    if remote.is_local() {
        // Gone (a destructor at thread exit): no coroutine is left to wake.
        let done = super::with_or(
            || true,
            |d| match d.state.try_borrow_mut() {
                Ok(mut st) => {
                    if token.strong_count() > 0
                        && matches!(st.task(co).map(|t| t.wait), Some(Wait::Park(_)))
                    {
                        st.wake(co, Wake::Woken, Lane::Last);
                    }
                    true
                }
                // Called from a destructor while the state is in use further up this stack.
                Err(_) => false,
            },
        );
        if done {
            return;
        }
    }
    let _ = remote.post(Message::Complete { co, token });
}

/// Counts a coroutine as parked for another thread's work while it lives (which keeps
/// `run` going).
pub(crate) struct Waiting<'a>(&'a Remote);

impl<'a> Waiting<'a> {
    pub(crate) fn new(remote: &'a Remote) -> Waiting<'a> {
        remote.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(remote)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The dispatcher's end: its [`Remote`], created on first use.
/// Room kept in the inbox's vector between drains; a burst that needed more gives it back.
const SPARE_MESSAGES: usize = 256;

#[derive(Default)]
pub(crate) struct RemoteSlot {
    remote: OnceCell<Arc<Remote>>,
    /// The inbox's vector from the last drain, emptied, for the next one to swap in.
    spare: RefCell<Vec<Message>>,
}

impl Drop for RemoteSlot {
    /// The dispatcher is gone (this runs after `Dispatcher::drop` unwound its coroutines):
    /// refuse further posts and drop what was queued, here rather than never.
    fn drop(&mut self) {
        if let Some(remote) = self.remote.get() {
            let queued = {
                let mut inbox = lock(&remote.inbox);
                inbox.closed = true;
                std::mem::take(&mut inbox.messages)
            };
            drop(queued);
        }
    }
}

impl Dispatcher {
    /// This dispatcher's [`Remote`], created on first use.
    pub(crate) fn remote(&self) -> Result<Arc<Remote>> {
        if let Some(remote) = self.remote.remote.get() {
            return Ok(remote.clone());
        }
        let waker = self.poller()?.waker().map_err(|e| {
            Error::from(e).with_context("no wake-up handle for the dispatcher's poller")
        })?;
        let remote = Arc::new(Remote {
            inbox: Mutex::new(Inbox {
                messages: Vec::new(),
                closed: false,
            }),
            waker,
            waiting: AtomicUsize::new(0),
        });
        Ok(self.remote.remote.get_or_init(|| remote).clone())
    }

    /// Acts on what other threads posted. Called after a look at the poller that took the
    /// wake-up of a post (`Dispatcher::look`).
    pub(crate) fn drain_remote(&self) -> bool {
        let Some(remote) = self.remote.remote.get() else {
            return false;
        };
        // Swapped with the emptied vector of the last drain, so the inbox keeps a vector
        // with room and a post does not allocate a new one each time.
        let mut messages = self.remote.spare.take();
        std::mem::swap(&mut lock(&remote.inbox).messages, &mut messages);
        let any = !messages.is_empty();
        for msg in messages.drain(..) {
            match msg {
                Message::Complete { co, token } => {
                    if token.strong_count() > 0 {
                        self.unpark(co);
                    }
                }
                Message::Spawn(f) => {
                    if let Err(e) = self.spawn(TaskName::Anonymous, None, false, false, f) {
                        log_or_print!(
                            log::Level::Error,
                            "dropping a task posted from another thread: {e}"
                        );
                    }
                }
                Message::Exit => self.exit(),
                Message::Shutdown(grace) => self.shutdown(grace),
            }
        }
        // Kept unless a burst made it large: that memory goes back.
        if messages.capacity() <= SPARE_MESSAGES {
            self.remote.spare.replace(messages);
        }
        any
    }

    /// Whether a coroutine waits for an offloaded closure, or another thread posted
    /// something not yet acted on (a task `Handle::spawn` accepted must run): either keeps
    /// `run` going, and `finished` false.
    pub(crate) fn remote_keeps_alive(&self) -> bool {
        self.remote.remote.get().is_some_and(|r| {
            r.waiting.load(Ordering::Relaxed) > 0 || !lock(&r.inbox).messages.is_empty()
        })
    }
}

/// Where a worker leaves an offloaded closure's outcome for the coroutine.
struct Slot<T> {
    result: Mutex<Option<std::thread::Result<T>>>,
}

/// The coroutine's reference to its [`Slot`]. An outcome still in it when the coroutine
/// lets go (cancelled, or out of time, just after the worker stored it) is dropped on a
/// helper, as `offload` promises: its drop may be slow or block, and the loop must not. An
/// outcome stored after this is gone is dropped by the worker, the last reference.
struct Claim<T: Send + 'static>(Arc<Slot<T>>);

impl<T: Send + 'static> Drop for Claim<T> {
    fn drop(&mut self) {
        if let Some(left) = lock(&self.0.result).take() {
            // Should no helper start, the job and `left` are dropped here after all.
            let _ = POOL.submit(Box::new(move || drop(left)));
        }
    }
}

fn panicked(payload: Box<dyn Any + Send>) -> Error {
    Error::with_message(
        ErrorKind::Panicked,
        copas_coro::panic_message(&*payload).to_string(),
    )
}

/// What becomes of an offloaded closure whose caller stopped waiting (out of time, or
/// cancelled) before a helper started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenAbandoned {
    /// It runs all the same, in its turn: the caller's own closure may have effects it
    /// counts on (`copas::offload` promises this).
    Run,
    /// It is dropped unrun when its turn comes: a name lookup, whose only product is its
    /// answer. Otherwise, while a resolver hangs and holds every helper, each `connect` that
    /// times out would leave a lookup queued behind them, to run (and hang) for nobody.
    Skip,
}

/// Runs `f` on a helper thread while the calling coroutine waits (until `deadline`, if
/// given); outside a coroutine, runs it inline, or with a deadline on a helper while the
/// thread blocks until then. See `copas::offload`; `abandoned` says what becomes of `f` if
/// the caller stops waiting before a helper starts it.
pub(crate) fn offload<T, F>(f: F, deadline: Option<Instant>, abandoned: WhenAbandoned) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let context = match super::caller() {
        Caller::Coroutine(co) => Some((co, super::with(|d| d.remote())?)),
        Caller::Outside => None,
        // Its waits end at once: running `f` inline would hold the thread.
        Caller::Removed => return Err(Error::new(ErrorKind::Cancelled)),
    };
    let Some((co, remote)) = context else {
        return match deadline {
            None => catch_unwind(AssertUnwindSafe(f)).map_err(panicked),
            Some(at) => offload_blocking(f, at, abandoned),
        };
    };
    if deadline.is_some_and(|at| Instant::now() >= at) {
        return Err(Error::new(ErrorKind::Timeout));
    }
    let slot = Claim(Arc::new(Slot {
        result: Mutex::new(None),
    }));
    let token: Weak<dyn Any + Send + Sync> = Arc::downgrade(&slot.0) as Weak<dyn Any + Send + Sync>;
    let worker_slot = slot.0.clone();
    let worker_remote = remote.clone();
    let _waiting = Waiting::new(&remote);
    POOL.submit(Box::new(move || {
        // The coroutine's `Claim` is the only other strong reference: gone, nobody waits.
        if abandoned == WhenAbandoned::Skip && Arc::strong_count(&worker_slot) == 1 {
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(f));
        *lock(&worker_slot.result) = Some(result);
        // Only the coroutine's reference may keep the token alive now.
        drop(worker_slot);
        // A dispatcher that is gone has no coroutine left to wake.
        let _ = worker_remote.post(Message::Complete { co, token });
    }))?;
    // The completion cannot be handled before this coroutine parks: the dispatcher drains
    // its inbox only between resumes, on this thread.
    loop {
        let wake = super::with(|d| d.park(deadline, super::Blocker::Offload))?;
        if let Some(result) = lock(&slot.0.result).take() {
            return result.map_err(panicked);
        }
        match wake {
            Wake::Cancelled => return Err(Error::new(ErrorKind::Cancelled)),
            Wake::Timeout => return Err(Error::new(ErrorKind::Timeout)),
            Wake::Closed => return Err(Error::new(ErrorKind::Closed)),
            Wake::Event | Wake::Woken => {} // not ours: wait on
        }
    }
}

/// [`offload`] outside a coroutine with a deadline: `f` runs on a helper while this thread
/// blocks until it ends or `at` passes. Nothing else on the thread could run meanwhile
/// anyway, but the caller keeps its time limit (a resolver can take tens of seconds). An
/// outcome that comes too late is dropped on the helper.
fn offload_blocking<T, F>(f: F, at: Instant, abandoned: WhenAbandoned) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if Instant::now() >= at {
        return Err(Error::new(ErrorKind::Timeout));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    // Held while this thread waits: the job sees whether anyone still does.
    let waiting = Arc::new(());
    let waiter = Arc::downgrade(&waiting);
    POOL.submit(Box::new(move || {
        if abandoned == WhenAbandoned::Skip && waiter.strong_count() == 0 {
            return;
        }
        // Fails only when the caller has stopped waiting; the outcome is dropped here.
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    }))?;
    match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
        Ok(result) => result.map_err(panicked),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Error::new(ErrorKind::Timeout)),
        // The job was dropped unrun (no helper thread left to run it).
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::with_message(
            ErrorKind::Io,
            "the helper thread ended without running the job",
        )),
    }
}

// ----- the helper threads -----------------------------------------------------------------

type Job = Box<dyn FnOnce() + Send>;

/// The process-wide pool of helper threads.
struct Pool {
    state: Mutex<PoolState>,
    work: Condvar,
}

struct PoolState {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

static POOL: Pool = Pool {
    state: Mutex::new(PoolState {
        jobs: VecDeque::new(),
        threads: 0,
        idle: 0,
    }),
    work: Condvar::new(),
};

impl Pool {
    /// Queues `job`, starting a helper thread when there are more jobs than idle helpers
    /// and fewer than [`MAX_THREADS`] helpers.
    fn submit(&'static self, job: Job) -> Result<()> {
        let mut st = lock(&self.state);
        st.jobs.push_back(job);
        if st.jobs.len() > st.idle && st.threads < MAX_THREADS {
            st.threads += 1;
            let spawned = std::thread::Builder::new()
                .name("copas-offload".to_string())
                .spawn(move || self.work_loop());
            if let Err(e) = spawned {
                st.threads -= 1;
                if st.threads == 0 {
                    // Nobody would ever run it.
                    let job = st.jobs.pop_back();
                    drop(st);
                    drop(job);
                    return Err(Error::from(e).with_context("no helper thread could be started"));
                }
            }
        }
        drop(st);
        self.work.notify_one();
        Ok(())
    }

    fn work_loop(&self) {
        loop {
            let job = {
                let mut st = lock(&self.state);
                loop {
                    if let Some(job) = st.jobs.pop_front() {
                        break job;
                    }
                    st.idle += 1;
                    let (guard, waited) = self
                        .work
                        .wait_timeout(st, IDLE_EXIT)
                        .unwrap_or_else(PoisonError::into_inner);
                    st = guard;
                    st.idle -= 1;
                    if waited.timed_out() && st.jobs.is_empty() {
                        st.threads -= 1;
                        return;
                    }
                }
            };
            // Jobs catch their closure's panic themselves; what may still panic is the
            // drop of a result nobody waits for any more. The helper goes on: one that died
            // would still be counted, and with all of them dead no job would ever run.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(job)) {
                log_or_print!(
                    log::Level::Error,
                    "an offloaded result panicked when dropped on a helper thread"
                );
                super::drop_payload(payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside a coroutine a deadline still bounds the wait (a resolver that hangs must not
    /// hold `connect` past its timeout); what comes in time is the result, a panic an error.
    #[test]
    fn offload_outside_a_coroutine_keeps_its_deadline() {
        let started = Instant::now();
        let slow = offload(
            || std::thread::sleep(Duration::from_secs(3)),
            Some(started + Duration::from_millis(200)),
            WhenAbandoned::Run,
        );
        let took = started.elapsed();
        assert_eq!(slow.map_err(|e| e.kind()), Err(ErrorKind::Timeout));
        assert!(
            took >= Duration::from_millis(200),
            "gave up early: {took:?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "waited for the job: {took:?}"
        );

        let soon = Some(Instant::now() + Duration::from_secs(20));
        assert_eq!(
            offload(|| 7, soon, WhenAbandoned::Run).map_err(|e| e.kind()),
            Ok(7)
        );
        let panicked = offload(|| -> u8 { panic!("in the job") }, soon, WhenAbandoned::Run);
        assert_eq!(panicked.map_err(|e| e.kind()), Err(ErrorKind::Panicked));
        let past = offload(|| 7, Some(Instant::now()), WhenAbandoned::Run);
        assert_eq!(past.map_err(|e| e.kind()), Err(ErrorKind::Timeout));
    }

    /// While every helper is held (a resolver that hangs), closures whose callers gave up
    /// before their turn: the skippable ones (lookups) are dropped unrun, the others
    /// (`copas::offload`'s) still run; from a coroutine and from outside one alike.
    #[test]
    fn a_skippable_job_its_caller_gave_up_on_before_its_turn_is_dropped_unrun() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let holding = Arc::new(AtomicUsize::new(0));
        for _ in 0..MAX_THREADS {
            let (gate, holding) = (gate.clone(), holding.clone());
            POOL.submit(Box::new(move || {
                holding.fetch_add(1, Ordering::SeqCst);
                let (open, opened) = &*gate;
                // Bounded: a test that fails before opening the gate frees the helpers.
                let _ = opened.wait_timeout_while(lock(open), Duration::from_secs(20), |o| !*o);
            }))
            .unwrap();
        }
        // Another test's job may hold a helper for up to 3 s first.
        let until = Instant::now() + Duration::from_secs(10);
        while holding.load(Ordering::SeqCst) < MAX_THREADS && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            holding.load(Ordering::SeqCst),
            MAX_THREADS,
            "helpers not all held"
        );

        let skipped_ran = Arc::new(AtomicUsize::new(0));
        let kept_ran = Arc::new(AtomicUsize::new(0));
        let give_up = |how: WhenAbandoned, ran: &Arc<AtomicUsize>| {
            let ran = ran.clone();
            let soon = Some(Instant::now() + Duration::from_millis(5));
            let job = move || {
                ran.fetch_add(1, Ordering::SeqCst);
            };
            offload(job, soon, how).map_err(|e| e.kind())
        };
        // Outside a coroutine, then in coroutines.
        for _ in 0..10 {
            assert_eq!(
                give_up(WhenAbandoned::Skip, &skipped_ran),
                Err(ErrorKind::Timeout)
            );
        }
        assert_eq!(
            give_up(WhenAbandoned::Run, &kept_ran),
            Err(ErrorKind::Timeout)
        );
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        for i in 0..11 {
            let (how, ran) = if i < 10 {
                (WhenAbandoned::Skip, skipped_ran.clone())
            } else {
                (WhenAbandoned::Run, kept_ran.clone())
            };
            let outcomes = outcomes.clone();
            crate::addthread(move || {
                let outcome = give_up(how, &ran);
                lock(&outcomes).push(outcome);
            })
            .unwrap();
        }
        crate::run().unwrap();
        assert_eq!(*lock(&outcomes), vec![Err(ErrorKind::Timeout); 11]);

        *lock(&gate.0) = true;
        gate.1.notify_all();
        let until = Instant::now() + Duration::from_secs(10);
        while kept_ran.load(Ordering::SeqCst) < 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The kept ones were queued last: once they have run, every skipped one had its turn.
        assert_eq!(kept_ran.load(Ordering::SeqCst), 2);
        assert_eq!(skipped_ran.load(Ordering::SeqCst), 0);
    }
}
