//! `copas::timer`: a port of Copas's `timer.lua` (its 15 checks, with their timings: the
//! recurring 0.5 s timer fires exactly 6 times in 3.3 s) and of `timeout_errors.lua`, and
//! what the port adds: recurring timers do not drift and skip the firings an overrunning
//! callback missed, a panicking callback does not stop a recurring timer, and `arm`/`cancel`
//! report their misuse.
//!
//! Every test runs on its own thread, so it has its own dispatcher; every loop is bounded by
//! a watchdog, and timing assertions have exact lower bounds (timers never fire early) and
//! generous upper bounds.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::timer::{self, Timer, TimerOptions};
use copas::ErrorKind;
use util::ms;
use util::{kind, run_bounded, Watchdog};

const LIMIT: Duration = Duration::from_secs(30);

/// Replaces the default error handler with one that records every report, whole (unlike
/// `util::record_panics`, which keeps the messages).
fn record_reports() -> Rc<RefCell<Vec<String>>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let rec = seen.clone();
    copas::setdefaulterrorhandler(move |report| rec.borrow_mut().push(report.to_string()));
    seen
}

/// Counts the checks that passed, like `timer.lua`'s `successes`.
#[derive(Clone, Default)]
struct Successes(Rc<Cell<u32>>);

impl Successes {
    fn add(&self) {
        self.0.set(self.0.get() + 1);
    }
}

// ----- timer.lua ----------------------------------------------------------------------------

#[test]
fn timer_lua_fifteen_checks() {
    let unexpected = record_reports();
    let successes = Successes::default();
    let s = successes.clone();
    let _dog = Watchdog::new("timer.lua", LIMIT);
    copas::run_with(move || {
        // A recurring 0.5 s timer with params: 6 firings to come.
        let count_t1 = Rc::new(Cell::new(0u32));
        let t1 = {
            let (s, count) = (s.clone(), count_t1.clone());
            let params = "hello world"; // Copas's `params`: what the closure captures
            timer::new(
                TimerOptions::new(ms(500)).recurring(true),
                move |_t: &Timer| {
                    assert_eq!(params, "hello world", "params are passed");
                    s.add();
                    count.set(count.get() + 1);
                    println!("{params} {}", count.get());
                },
            )
            .unwrap()
        };

        // A one-shot timer whose initial delay (0.1 s) overrides its delay (0.2 s): 1 to come.
        // Its delay would put it after a 150 ms probe armed just after it; timers fire in
        // deadline order however late the dispatcher runs, so "before the probe" is decided
        // by the deadlines, not by how busy the machine is.
        let probe_fired = Rc::new(Cell::new(false));
        let t2 = {
            let s = s.clone();
            let start_time = Instant::now();
            let fired = Rc::new(Cell::new(0));
            let probe_fired = probe_fired.clone();
            timer::new(
                TimerOptions::new(ms(200)).initial_delay(ms(100)),
                move |_t: &Timer| {
                    fired.set(fired.get() + 1);
                    let after = start_time.elapsed();
                    assert_eq!(fired.get(), 1, "recurred");
                    assert!(after >= ms(100), "fired early: {after:?}");
                    assert!(
                        !probe_fired.get(),
                        "didn't honour the initial delay: fired after the 150 ms probe, at {after:?}"
                    );
                    s.add();
                },
            )
            .unwrap()
        };
        timer::new(TimerOptions::new(ms(150)), move |_t: &Timer| {
            probe_fired.set(true)
        })
        .unwrap();

        // At 3.3 s: stop t1 (it ran 6 times) and check t2 is no longer armed: 2 to come.
        {
            let (s, count) = (s.clone(), count_t1.clone());
            timer::new(TimerOptions::new(ms(3300)), move |me: &Timer| {
                t1.cancel().expect("cancel t1");
                assert_eq!(kind(t2.cancel()), Err(ErrorKind::NotArmed));
                s.add();
                assert_eq!(count.get(), 6, "expected t1 to run 6 times");
                s.add();
                let _ = me.cancel(); // not armed any more (one-shot): as in Copas, ignored
            })
            .unwrap();
        }

        // A recurring timer cannot arm itself again: 1 to come.
        {
            let s = s.clone();
            timer::new(
                TimerOptions::new(ms(100)).recurring(true),
                move |me: &Timer| {
                    assert_eq!(kind(me.arm(Some(ms(1000)))), Err(ErrorKind::AlreadyArmed));
                    s.add();
                    me.cancel().expect("cancel myself");
                },
            )
            .unwrap();
        }

        // A one-shot timer may arm itself again, and then fires 3 s later: 3 to come.
        {
            let s = s.clone();
            let touched: Rc<Cell<Option<Instant>>> = Rc::default();
            timer::new(
                TimerOptions::new(ms(100)),
                move |me: &Timer| match touched.get() {
                    None => {
                        me.arm(Some(ms(3000))).expect("re-arm a one-shot timer");
                        touched.set(Some(Instant::now()));
                        s.add();
                    }
                    Some(at) => {
                        s.add();
                        let after = at.elapsed();
                        // Its own delay (0.1 s) would be far below 3 s: the lower bound is what
                        // tells; the upper one only has to catch a timer that is very late.
                        assert!(
                            after >= ms(3000) && after < ms(5000),
                            "expected a 3 s delay for the re-armed timer, got {after:?}"
                        );
                        s.add();
                    }
                },
            )
            .unwrap();
        }

        // A panicking recurring timer goes on, reporting to its own handler: 2 to come.
        {
            let s = s.clone();
            let count = Rc::new(Cell::new(0u32));
            let params_in = Rc::new(vec![1, 2, 3]);
            let params = params_in.clone();
            timer::new(
                TimerOptions::new(ms(100))
                    .recurring(true)
                    .name("error-test")
                    .errorhandler(move |report| {
                        let errmsg = report.to_string();
                        assert!(errmsg.contains("error-test"), "no thread name: {errmsg}");
                        assert!(
                            errmsg.contains("error 1!") || errmsg.contains("error 2!"),
                            "no message: {errmsg}"
                        );
                        s.add();
                    }),
                move |me: &Timer| {
                    assert!(
                        Rc::ptr_eq(&params, &params_in),
                        "params were not passed along"
                    );
                    count.set(count.get() + 1);
                    if count.get() == 2 {
                        me.cancel().expect("cancel myself"); // 2nd call: done
                    }
                    // A panic that skips the panic hook: a backtrace printed by the hook
                    // (RUST_BACKTRACE=1) held the thread for 1-3 s on a loaded machine, and t1
                    // rightly skipped the firings that went by meanwhile.
                    util::unwind_quietly(format!("error {}!", count.get()));
                },
            )
            .unwrap();
        }
    })
    .expect("run_with");
    assert_eq!(*unexpected.borrow(), Vec::<String>::new());
    assert_eq!(successes.0.get(), 15, "number of successes didn't match");
}

// ----- timeout_errors.lua -------------------------------------------------------------------

#[test]
fn timeout_errors_lua_a_panicking_timeout_callback_reaches_the_default_handler() {
    let received = Rc::new(RefCell::new(None));
    let continued = Rc::new(Cell::new(false));
    let (r, c) = (received.clone(), continued.clone());
    copas::addthread(move || {
        let rec = r.clone();
        copas::setdefaulterrorhandler(move |report| {
            *rec.borrow_mut() = Some(report.message().to_string())
        });
        copas::timeout(ms(100), |_| panic!("oops...")).unwrap();
        copas::pause(Duration::from_secs(1));
        let got = r.borrow().clone().unwrap_or_default();
        assert!(got.contains("oops..."), "expected 'oops...', got {got:?}");
        c.set(true);
    })
    .unwrap();
    run_bounded(LIMIT);
    assert!(
        continued.get(),
        "the thread continues after the callback's panic"
    );
}

// ----- beyond timer.lua ---------------------------------------------------------------------

#[test]
fn recurring_timers_do_not_drift() {
    const FIRINGS: usize = 10;
    const DELAY: Duration = Duration::from_millis(100);
    const CALLBACK: Duration = Duration::from_millis(40);
    let fired = Rc::new(RefCell::new(Vec::new()));
    let f = fired.clone();
    let armed = Instant::now();
    timer::new(
        TimerOptions::new(DELAY).recurring(true),
        move |t: &Timer| {
            f.borrow_mut().push(armed.elapsed());
            // The callback's own run time (blocking on purpose): Copas adds it to every period.
            std::thread::sleep(CALLBACK);
            if f.borrow().len() == FIRINGS {
                t.cancel().unwrap();
            }
        },
    )
    .unwrap();
    run_bounded(LIMIT);
    let fired = fired.borrow();
    assert_eq!(fired.len(), FIRINGS);
    for (i, at) in fired.iter().enumerate() {
        let due = DELAY * (i as u32 + 1);
        assert!(*at >= due, "firing {} at {at:?}, before {due:?}", i + 1);
    }
    // A timer that sleeps its delay after each callback (Copas) fires each time at least
    // delay + callback (140 ms) after the previous firing, however idle or busy the machine:
    // every interval would be >= 140 ms. On the grid they are 100 ms apart, give or take the
    // scheduling latency of each firing (or a multiple of 100 ms when a very late firing made
    // the timer skip one), so at least one of the nine is shorter.
    let intervals: Vec<Duration> = fired.windows(2).map(|w| w[1] - w[0]).collect();
    let shortest = *intervals.iter().min().expect("nine intervals");
    assert!(
        shortest < DELAY + CALLBACK,
        "the timer drifted: every interval was at least {:?}: {intervals:?}",
        DELAY + CALLBACK
    );
}

#[test]
fn an_overrunning_callback_skips_the_missed_firings_and_stays_on_the_grid() {
    let fired = Rc::new(RefCell::new(Vec::new()));
    let f = fired.clone();
    let armed = Instant::now();
    timer::new(
        TimerOptions::new(ms(50)).recurring(true),
        move |t: &Timer| {
            f.borrow_mut().push(armed.elapsed());
            let n = f.borrow().len();
            if n == 1 {
                std::thread::sleep(ms(120)); // overruns the 100 and 150 ms firings
            }
            if n == 4 {
                t.cancel().unwrap();
            }
        },
    )
    .unwrap();
    run_bounded(LIMIT);
    let fired = fired.borrow();
    assert_eq!(fired.len(), 4);
    assert!(fired[0] >= ms(50), "{fired:?}");
    // Not at once after the overrun (catching up), but at the next grid point.
    assert!(fired[1] >= ms(200), "{fired:?}");
    assert!(fired[2] >= ms(250), "{fired:?}");
    assert!(fired[3] >= ms(300), "{fired:?}");
}

#[test]
fn a_panicking_recurring_callback_goes_to_the_default_handler_and_the_timer_goes_on() {
    let reports = record_reports();
    let ticks = Rc::new(Cell::new(0));
    let t = ticks.clone();
    let name = Rc::new(RefCell::new(String::new()));
    let n = name.clone();
    timer::new(
        TimerOptions::new(ms(20)).recurring(true),
        move |me: &Timer| {
            t.set(t.get() + 1);
            *n.borrow_mut() = me.name().to_string();
            if t.get() == 3 {
                me.cancel().unwrap();
            }
            panic!("tick {}", t.get());
        },
    )
    .unwrap();
    run_bounded(LIMIT);
    assert_eq!(ticks.get(), 3, "3 ticks");
    let name = name.borrow();
    assert!(name.starts_with("copas_timer_"), "{name}");
    let expected: Vec<String> = (1..=3)
        .map(|i| format!("tick {i} (coroutine: {name}, socket: nil)"))
        .collect();
    assert_eq!(*reports.borrow(), expected, "3 errors");
}

#[test]
fn arm_and_cancel_report_misuse() {
    let fired = Rc::new(Cell::new(0));
    let f = fired.clone();
    let t = timer::new(TimerOptions::new(ms(50)).name("once"), move |_t: &Timer| {
        f.set(f.get() + 1)
    })
    .unwrap();
    assert!(t.is_armed());
    assert_eq!(t.name(), "once");
    assert_eq!(copas::getthreadname(t.coroutine()).as_deref(), Some("once"));
    assert_eq!(kind(t.arm(None)), Err(ErrorKind::AlreadyArmed));
    run_bounded(LIMIT);
    assert_eq!(fired.get(), 1);
    assert!(!t.is_armed(), "a one-shot timer is disarmed once it fired");
    assert_eq!(kind(t.cancel()), Err(ErrorKind::NotArmed));
    assert_eq!(t.cancel().unwrap_err().to_string(), "not armed");

    // Cancelled before it fires: it never does, and the loop does not wait for it.
    t.arm(Some(Duration::from_secs(10))).unwrap();
    t.cancel().unwrap();
    assert_eq!(kind(t.cancel()), Err(ErrorKind::NotArmed));
    let took = run_bounded(LIMIT);
    // Waiting for the cancelled timer would take its 10 s.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(fired.get(), 1);

    // Armed again with its own delay.
    let start = Instant::now();
    t.arm(None).unwrap();
    run_bounded(LIMIT);
    assert_eq!(fired.get(), 2);
    assert!(start.elapsed() >= ms(50));
}

#[test]
fn cancelling_a_sleeping_recurring_timer_from_another_coroutine_stops_it() {
    let ticks = Rc::new(Cell::new(0));
    let t = ticks.clone();
    let timer = timer::new(
        TimerOptions::new(ms(30)).recurring(true),
        move |_t: &Timer| t.set(t.get() + 1),
    )
    .unwrap();
    copas::addthread(move || {
        copas::pause(ms(100));
        timer.cancel().unwrap();
    })
    .unwrap();
    let took = run_bounded(LIMIT);
    assert!((1..=4).contains(&ticks.get()), "{}", ticks.get());
    // A timer still armed would keep the loop going until the watchdog.
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// A recurring timer with no delay (Copas allows `delay = 0`) fires once per step: other
/// coroutines run between its firings, instead of its callback running back to back inside
/// one resume and holding the thread for good.
#[test]
fn a_recurring_timer_without_delay_fires_once_per_step() {
    const MANY: u32 = 200_000;
    let _dog = Watchdog::new("zero-delay timer", LIMIT);
    let fired = Rc::new(Cell::new(0u32));
    let witness_saw = Rc::new(Cell::new(None));
    let f = fired.clone();
    let seen = witness_saw.clone();
    timer::new(
        TimerOptions::new(Duration::ZERO).recurring(true),
        move |t: &Timer| {
            f.set(f.get() + 1);
            // Bounded whatever happens: stop once the witness ran, or after many firings.
            if seen.get().is_some() || f.get() >= MANY {
                t.cancel().expect("cancel");
            }
        },
    )
    .expect("timer");
    let (f, seen) = (fired.clone(), witness_saw.clone());
    copas::addthread(move || {
        for _ in 0..3 {
            copas::pause(Duration::ZERO);
        }
        seen.set(Some(f.get()));
    })
    .expect("addthread");
    run_bounded(LIMIT);
    let saw = witness_saw.get().expect("the witness never ran");
    assert!(
        (1..=10).contains(&saw),
        "the timer fired {saw} times in the witness's three steps"
    );
    assert!(fired.get() <= saw + 2, "fired {} times", fired.get());
}

/// A shutdown cancels an armed timer's coroutine: the timer is no longer armed (it names no
/// coroutine that is gone) and can be armed again.
#[test]
fn a_timer_whose_coroutine_a_shutdown_cancelled_is_disarmed() {
    let fired = Rc::new(Cell::new(0));
    let fired2 = fired.clone();
    let t = timer::new(TimerOptions::new(Duration::from_secs(30)), move |_| {
        fired2.set(fired2.get() + 1)
    })
    .unwrap();
    copas::addthread(|| {
        copas::pause(ms(10));
        copas::shutdown(ms(20));
    })
    .unwrap();
    run_bounded(LIMIT);
    assert_eq!(fired.get(), 0);
    assert!(!t.is_armed(), "armed, with coroutine {:?}", t.coroutine());
    assert_eq!(t.coroutine(), None);
    assert_eq!(kind(t.cancel()), Err(ErrorKind::NotArmed));
    assert_eq!(kind(t.arm(Some(ms(10)))), Ok(()));
    run_bounded(LIMIT);
    assert_eq!(fired.get(), 1);
}

/// The same for a timer armed and cancelled (by `cancelall`) before its coroutine first ran.
#[test]
fn a_timer_cancelled_before_its_coroutine_ran_is_disarmed() {
    let t = timer::new(TimerOptions::new(ms(10)), |_| {}).unwrap();
    assert!(t.is_armed());
    copas::cancelall();
    assert!(!t.is_armed());
    assert_eq!(kind(t.arm(None)), Ok(()));
    assert!(t.is_armed());
    t.cancel().unwrap();
}

/// A timer that is never due sleeps without a deadline; a `wakeup` of its coroutine ends
/// that sleep, and the arming must go on (a finite one sleeps on to its time), so only
/// `cancel` disarms it.
#[test]
fn a_timer_never_due_stays_armed_when_its_coroutine_is_woken() {
    let _dog = Watchdog::new("a woken timer that is never due", LIMIT);
    let fired = Rc::new(Cell::new(0));
    let count = fired.clone();
    let t = timer::new(TimerOptions::new(copas::FOREVER), move |_| {
        count.set(count.get() + 1)
    })
    .unwrap();
    for _ in 0..3 {
        copas::step(Some(Duration::ZERO)).unwrap();
    }
    let co = t.coroutine().expect("an armed timer has a coroutine");
    assert!(copas::wakeup(co), "its coroutine was not pausing");
    for _ in 0..3 {
        copas::step(Some(Duration::ZERO)).unwrap();
    }
    assert!(t.is_armed(), "a wakeup disarmed the timer");
    assert_eq!(t.coroutine(), Some(co));
    assert_eq!(fired.get(), 0);
    assert_eq!(kind(t.cancel()), Ok(()));
    assert!(!t.is_armed());
    run_bounded(LIMIT);
    assert_eq!(fired.get(), 0);
}

/// However short a recurring timer's delay, other coroutines run between its firings. With
/// 1 ns or 10 ns, each next due time had passed by the time the timer slept for it, so it
/// fired 20,000 times in a row inside one resume, freezing the loop; a zero delay already
/// fired once per step.
#[test]
fn a_recurring_timer_of_a_few_nanoseconds_lets_other_coroutines_run_between_firings() {
    let _dog = Watchdog::new("few-ns timer", LIMIT);
    let mut report = Vec::new();
    for delay in [1, 10, 100, 1_000].map(Duration::from_nanos) {
        let other_turns = Rc::new(Cell::new(0u64));
        let stop = Rc::new(Cell::new(false));
        let (turns, stopped) = (other_turns.clone(), stop.clone());
        copas::addthread(move || {
            // Bounded by the timer's own stop below, and by the watchdog.
            while !stopped.get() {
                turns.set(turns.get() + 1);
                copas::pause(Duration::ZERO);
            }
        })
        .unwrap();
        let most_in_a_row = Rc::new(Cell::new(0u64));
        let (turns, worst, stopped) = (other_turns.clone(), most_in_a_row.clone(), stop.clone());
        let (last_seen, in_a_row, fired) = (Cell::new(u64::MAX), Cell::new(0u64), Cell::new(0));
        timer::new(
            TimerOptions::new(delay).recurring(true),
            move |t: &Timer| {
                fired.set(fired.get() + 1);
                if turns.get() == last_seen.get() {
                    in_a_row.set(in_a_row.get() + 1);
                } else {
                    last_seen.set(turns.get());
                    in_a_row.set(1);
                }
                worst.set(worst.get().max(in_a_row.get()));
                if fired.get() >= 2_000 {
                    t.cancel().unwrap();
                    stopped.set(true);
                }
            },
        )
        .unwrap();
        util::run_checked(LIMIT);
        report.push((delay, most_in_a_row.get()));
    }
    assert!(
        report.iter().all(|&(_, worst)| worst <= 2),
        "most firings in a row with no other coroutine between: {report:?}"
    );
}

/// A recurring timer whose next firing lies past the clock's end stays armed after its first
/// firing, as a timer never due does, until `cancel`; it used to disarm itself.
#[test]
fn a_recurring_timer_whose_next_firing_is_past_the_clock_stays_armed() {
    let _dog = Watchdog::new("recurring huge", LIMIT);
    for delay in [Duration::MAX, Duration::from_secs(u64::MAX)] {
        let fired = Rc::new(Cell::new(0));
        let count = fired.clone();
        let t = timer::new(
            TimerOptions::new(delay)
                .recurring(true)
                .initial_delay(Duration::ZERO),
            move |_| count.set(count.get() + 1),
        )
        .unwrap();
        run_bounded(Duration::from_secs(10));
        assert_eq!(fired.get(), 1, "{delay:?}");
        assert!(t.is_armed(), "{delay:?}: disarmed after one firing");
        assert_eq!(kind(t.cancel()), Ok(()));
        run_bounded(Duration::from_secs(10));
        assert!(!t.is_armed());
    }
}
