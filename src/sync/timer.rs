//! `copas::timer`: one-shot and recurring timers (Copas `copas.timer`).
//!
//! An armed [`Timer`] is a coroutine named after the timer that sleeps until it is due and
//! then calls the timer's callback; a recurring one goes on until it is cancelled. The
//! callback gets the timer (to cancel or re-arm it); Copas's `params` are whatever the
//! closure captures. A panic in the callback goes to the timer's error handler (or the
//! default one) and does not stop a recurring timer. A one-shot timer is disarmed before its
//! callback runs, so the callback may arm it again.
//!
//! Recurring timers do not drift: the n-th firing is due at `first + (n - 1) · delay`, where
//! `first` is when the timer was armed plus its initial delay, however long the callbacks
//! take. A callback that overruns whole periods skips the firings it missed rather than
//! running them back to back. (Copas sleeps `delay` after each callback, so its timers fall
//! behind by the callbacks' run time and the scheduling latency, every period.)

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::dispatcher::{self, Coroutine, ErrorHandler, PanicReport, TaskName};
use crate::error::{Error, ErrorKind, Result};

thread_local! {
    /// Numbers the generated names `copas_timer_<n>`.
    static TIMERS: Cell<u64> = const { Cell::new(0) };
}

/// How a timer is set up (Copas's `timer.new` options table, without `callback` and
/// `params`, which are the closure given to [`new`]).
///
/// ```
/// use std::time::Duration;
/// use copas::timer::TimerOptions;
///
/// let options = TimerOptions::new(Duration::from_millis(500))
///     .recurring(true)
///     .initial_delay(Duration::ZERO) // first firing at once
///     .name("heartbeat");
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct TimerOptions {
    delay: Duration,
    recurring: bool,
    initial_delay: Option<Duration>,
    name: Option<String>,
    errorhandler: Option<ErrorHandler>,
}

impl TimerOptions {
    /// A one-shot timer due `delay` after it is armed (Copas `delay`).
    pub fn new(delay: Duration) -> TimerOptions {
        TimerOptions {
            delay,
            recurring: false,
            initial_delay: None,
            name: None,
            errorhandler: None,
        }
    }

    /// Fires every `delay` until cancelled (Copas `recurring`).
    pub fn recurring(mut self, recurring: bool) -> TimerOptions {
        self.recurring = recurring;
        self
    }

    /// The delay before the first firing when armed by [`new`] (Copas `initial_delay`;
    /// default: `delay`).
    pub fn initial_delay(mut self, initial_delay: Duration) -> TimerOptions {
        self.initial_delay = Some(initial_delay);
        self
    }

    /// Names the timer and its coroutine (Copas `name`; default `copas_timer_<n>`).
    pub fn name(mut self, name: impl Into<String>) -> TimerOptions {
        self.name = Some(name.into());
        self
    }

    /// Handles panics of the callback (Copas `errorhandler`; default: the thread's default
    /// handler). It becomes the error handler of the timer's coroutine.
    pub fn errorhandler(mut self, handler: impl Fn(&PanicReport) + 'static) -> TimerOptions {
        self.errorhandler = Some(Rc::new(handler));
        self
    }
}

impl fmt::Debug for TimerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerOptions")
            .field("delay", &self.delay)
            .field("recurring", &self.recurring)
            .field("initial_delay", &self.initial_delay)
            .field("name", &self.name)
            .field("errorhandler", &self.errorhandler.is_some())
            .finish()
    }
}

struct Inner {
    name: Rc<str>,
    delay: Duration,
    recurring: bool,
    callback: Rc<dyn Fn(&Timer)>,
    errorhandler: Option<ErrorHandler>,
    /// The current arming: its number and coroutine. `None` when not armed.
    armed: Cell<Option<(u64, Coroutine)>>,
    armings: Cell<u64>,
}

/// A timer (Copas `copas.timer`). Cloning gives another handle to the same timer; dropping
/// the handles does not stop an armed timer (its coroutine holds it).
///
/// # Example
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use std::time::Duration;
/// use copas::timer::{self, Timer, TimerOptions};
///
/// let ticks = Rc::new(Cell::new(0));
/// let counter = ticks.clone();
/// timer::new(
///     TimerOptions::new(Duration::from_millis(10)).recurring(true),
///     move |t: &Timer| {
///         counter.set(counter.get() + 1);
///         if counter.get() == 3 {
///             t.cancel().unwrap();
///         }
///     },
/// )
/// .unwrap();
/// copas::run().unwrap();
/// assert_eq!(ticks.get(), 3);
/// ```
#[derive(Clone)]
pub struct Timer {
    inner: Rc<Inner>,
}

/// Creates a timer and arms it (Copas `timer.new`): it first fires after the options'
/// initial delay (default: its delay). `callback` gets the timer.
///
/// # Errors
///
/// [`ErrorKind::Io`] when no stack can be mapped for its coroutine.
pub fn new(options: TimerOptions, callback: impl Fn(&Timer) + 'static) -> Result<Timer> {
    let name = match options.name {
        Some(name) => name,
        None => super::generated_name(&TIMERS, "copas_timer_"),
    };
    let timer = Timer {
        inner: Rc::new(Inner {
            name: Rc::from(name),
            delay: options.delay,
            recurring: options.recurring,
            callback: Rc::new(callback),
            errorhandler: options.errorhandler,
            armed: Cell::new(None),
            armings: Cell::new(0),
        }),
    };
    timer.arm(options.initial_delay)?;
    Ok(timer)
}

/// Disarms a timer when the coroutine of arming number `arming` ends while that arming is
/// still the live one, so that [`Timer::is_armed`] does not name a coroutine that is gone.
struct Disarm {
    timer: Timer,
    arming: u64,
}

impl Drop for Disarm {
    fn drop(&mut self) {
        if self.timer.is_current(self.arming) {
            self.timer.inner.armed.set(None);
        }
    }
}

impl Timer {
    /// Arms the timer (Copas `timer:arm`): it fires after `initial_delay` (`None`: its
    /// delay). A one-shot timer may arm itself again from its callback.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::AlreadyArmed`] when it is armed (a recurring timer is, while its
    /// callback runs); [`ErrorKind::Io`] when no stack can be mapped for its coroutine.
    pub fn arm(&self, initial_delay: Option<Duration>) -> Result<()> {
        if self.inner.armed.get().is_some() {
            return Err(Error::new(ErrorKind::AlreadyArmed));
        }
        let arming = self.inner.armings.get() + 1;
        self.inner.armings.set(arming);
        let first = Instant::now().checked_add(initial_delay.unwrap_or(self.inner.delay));
        // Dropped when the coroutine ends, however it ends (cancelled by `cancelall`, a
        // shutdown or `removethread`, even before it first ran): then this arming is over.
        let disarm = Disarm {
            timer: self.clone(),
            arming,
        };
        let name = TaskName::Owned(self.inner.name.clone());
        let co = dispatcher::with_or(dispatcher::destroyed, |d| {
            d.spawn(name, None, false, false, move || {
                disarm.timer.run(arming, first)
            })
        })?;
        self.inner.armed.set(Some((arming, co)));
        Ok(())
    }

    /// Cancels the timer (Copas `timer:cancel`): its coroutine is removed, so it does not
    /// fire again. A timer may cancel itself from its callback.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotArmed`] when it is not armed (a one-shot timer that has fired, or
    /// one cancelled already).
    pub fn cancel(&self) -> Result<()> {
        let Some((_, co)) = self.inner.armed.take() else {
            return Err(Error::new(ErrorKind::NotArmed));
        };
        crate::removethread(co);
        Ok(())
    }

    /// Whether the timer is armed.
    pub fn is_armed(&self) -> bool {
        self.inner.armed.get().is_some()
    }

    /// The timer's name, which is also its coroutine's.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The delay between firings.
    pub fn delay(&self) -> Duration {
        self.inner.delay
    }

    /// Whether it fires until cancelled.
    pub fn is_recurring(&self) -> bool {
        self.inner.recurring
    }

    /// The timer's coroutine while it is armed.
    pub fn coroutine(&self) -> Option<Coroutine> {
        self.inner.armed.get().map(|(_, co)| co)
    }

    /// Whether arming number `arming` is still the live one.
    fn is_current(&self, arming: u64) -> bool {
        self.inner.armed.get().is_some_and(|(n, _)| n == arming)
    }

    /// The body of the timer's coroutine for one arming. `first` is `None` when the first
    /// firing is too far away to be represented: then it never fires.
    fn run(&self, arming: u64, first: Option<Instant>) {
        if let Some(handler) = &self.inner.errorhandler {
            let handler = handler.clone();
            dispatcher::with(|d| d.set_handler(Some(handler)));
        }
        let Some(mut due) = first else {
            self.idle_until_cancelled(arming);
            return;
        };
        sleep_until(due);
        loop {
            if !self.is_current(arming) {
                return;
            }
            if !self.inner.recurring {
                self.inner.armed.set(None);
                self.fire();
                return;
            }
            self.fire();
            if !self.is_current(arming) {
                return;
            }
            let Some(next) = self.next_due(due, Instant::now()) else {
                // The next firing is past the clock's end: like a timer never due.
                self.idle_until_cancelled(arming);
                return;
            };
            due = next;
            // At least one step between firings, however short the delay, so the rest of
            // the loop (other coroutines, I/O, this timer's own cancel) runs in between: a
            // due time already passed when the pause begins would otherwise fire again at
            // once, for ever with a delay of a few nanoseconds.
            crate::pause(due.saturating_duration_since(Instant::now()));
            sleep_until(due);
        }
    }

    /// The first point of the firing grid (`due` plus whole delays) after `now`; missed
    /// points are skipped. `now` itself for a zero delay. `None` past the clock's end.
    fn next_due(&self, due: Instant, now: Instant) -> Option<Instant> {
        let delay = self.inner.delay.as_nanos();
        if delay == 0 {
            return Some(now);
        }
        let behind = now.saturating_duration_since(due).as_nanos();
        // In (0, delay]: fits a Duration, as the delay does.
        let ahead = delay - behind % delay;
        let ahead = Duration::new(
            (ahead / 1_000_000_000) as u64,
            (ahead % 1_000_000_000) as u32,
        );
        now.checked_add(ahead)
    }

    /// Waits for `cancel` to end arming number `arming` (a `wakeup` of the coroutine only
    /// waits again).
    fn idle_until_cancelled(&self, arming: u64) {
        while self.is_current(arming) {
            crate::pauseforever();
        }
    }

    /// Calls the callback; a panic goes to the coroutine's error handler.
    fn fire(&self) {
        let callback = self.inner.callback.clone();
        if let Err(payload) = super::catch_panic(|| callback(self)) {
            super::report_panic(payload);
        }
    }
}

/// Sleeps until `due` (waking early, through `wakeup`, only sleeps again).
fn sleep_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        crate::pause(due - now);
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("name", &self.inner.name)
            .field("delay", &self.inner.delay)
            .field("recurring", &self.inner.recurring)
            .field("armed", &self.is_armed())
            .finish()
    }
}
