//! A snapshot of what the dispatcher holds, for monitoring (Copas `status()`), and the
//! timing statistics of its steps (Copas `status(true)`).

use std::time::{Duration, Instant};

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

/// Timing statistics of the dispatcher's steps (Copas `status(true)`): how long each step
/// spent running what became ready, without its wait in the poller.
///
/// Counted only while [`set_step_stats`](crate::set_step_stats) has them on (off by
/// default: a step then reads no extra clock). [`step_stats`](crate::step_stats) returns the
/// figures of the period since the previous call (or since they were turned on) and starts a
/// new period, as Copas resets its counters at each `status(true)`; the `_ever` figures
/// cover every period since they were turned on. Only steps that began within the period
/// are counted in it, so `duration_tot` never exceeds [`time_tot`](StepStats::time_tot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepStats {
    /// When the period began (Copas `time_start`).
    pub time_start: Instant,
    /// When it ended: the call that returned these figures (Copas `time_end`).
    pub time_end: Instant,
    /// Steps completed in the period (Copas `steps`).
    pub steps: u64,
    /// Time the period's steps spent running coroutines, timers and accepts, waits left
    /// out (Copas `duration_tot`).
    pub duration_tot: Duration,
    /// The shortest step of the period (Copas `duration_min`); zero without steps.
    pub duration_min: Duration,
    /// The longest step of the period (Copas `duration_max`).
    pub duration_max: Duration,
    /// The shortest step since the statistics were turned on (Copas `duration_min_ever`).
    pub duration_min_ever: Duration,
    /// The longest step since the statistics were turned on (Copas `duration_max_ever`).
    pub duration_max_ever: Duration,
}

impl StepStats {
    /// The period's length (Copas `time_tot`).
    pub fn time_tot(&self) -> Duration {
        self.time_end.saturating_duration_since(self.time_start)
    }

    /// The period's length per step, waits included (Copas `time_avg`); zero without steps.
    pub fn time_avg(&self) -> Duration {
        average(self.time_tot(), self.steps)
    }

    /// The mean step, waits left out (Copas `duration_avg`); zero without steps.
    pub fn duration_avg(&self) -> Duration {
        average(self.duration_tot, self.steps)
    }
}

fn average(total: Duration, steps: u64) -> Duration {
    match u32::try_from(steps) {
        Ok(0) => Duration::ZERO,
        Ok(n) => total / n,
        Err(_) => Duration::from_secs_f64(total.as_secs_f64() / steps as f64),
    }
}

/// What the dispatcher counts while step statistics are on.
#[derive(Debug)]
pub(crate) struct StepCounter {
    since: Instant,
    steps: u64,
    total: Duration,
    min: Option<Duration>,
    max: Duration,
    min_ever: Option<Duration>,
    max_ever: Duration,
}

impl StepCounter {
    pub(crate) fn new(now: Instant) -> StepCounter {
        StepCounter {
            since: now,
            steps: 0,
            total: Duration::ZERO,
            min: None,
            max: Duration::ZERO,
            min_ever: None,
            max_ever: Duration::ZERO,
        }
    }

    /// Counts a step that ran what was ready from `started` (the clock reading after its
    /// wait) to `now`. A step that began before the period (statistics turned on or read
    /// from inside it) is not counted, as Copas does not count it: its work lies partly
    /// outside the period.
    pub(crate) fn count(&mut self, started: Instant, now: Instant) {
        if started < self.since {
            return;
        }
        let took = now.saturating_duration_since(started);
        self.steps += 1;
        self.total += took;
        self.min = Some(self.min.map_or(took, |m| m.min(took)));
        self.max = self.max.max(took);
        self.min_ever = Some(self.min_ever.map_or(took, |m| m.min(took)));
        self.max_ever = self.max_ever.max(took);
    }

    /// The figures of the period ending `now`, and a new period from `now`.
    pub(crate) fn take(&mut self, now: Instant) -> StepStats {
        let stats = StepStats {
            time_start: self.since,
            time_end: now,
            steps: self.steps,
            duration_tot: self.total,
            duration_min: self.min.unwrap_or_default(),
            duration_max: self.max,
            duration_min_ever: self.min_ever.unwrap_or_default(),
            duration_max_ever: self.max_ever,
        };
        *self = StepCounter {
            since: now,
            min_ever: self.min_ever,
            max_ever: self.max_ever,
            ..StepCounter::new(now)
        };
        stats
    }
}
