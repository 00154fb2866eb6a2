//! Ports of Copas's own core loop tests (`exit.lua`, `exittest.lua`, `loop_starter.lua`,
//! `pause.lua`, `removethread.lua`, `cancelall.lua`) and of the loop semantics the design
//! keeps from Copas: `timeout` callbacks, `status` counts and `step`.
//!
//! Every test runs on its own thread, so it has its own dispatcher. Every loop is bounded
//! in count and in time (a `Watchdog` or `util::run_bounded`), and timing assertions use
//! generous upper bounds.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::{Coroutine, ErrorKind, Pattern};
use util::ms;
use util::Watchdog;

/// Longest any single loop in these tests may run before the watchdog fails the test.
const LIMIT: Duration = Duration::from_secs(30);

/// Counts how many times it is dropped: shows when a coroutine's locals are released.
struct DropGuard(Rc<Cell<u32>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// A value a coroutine hands back to the test.
type Slot<T> = Rc<RefCell<Option<T>>>;

/// The outcome of a copas call, reduced to its error kind.
type Outcome<T> = Result<T, ErrorKind>;

/// A shared, ordered record of what the coroutines did.
#[derive(Clone, Default)]
struct Log(Rc<RefCell<Vec<&'static str>>>);

impl Log {
    fn push(&self, what: &'static str) {
        self.0.borrow_mut().push(what);
    }

    fn entries(&self) -> Vec<&'static str> {
        self.0.borrow().clone()
    }
}

/// The Copas `status()` counts as a tuple, for compact assertions:
/// (read, write, active, timer, inactive, timeout).
fn counts() -> (usize, usize, usize, usize, usize, usize) {
    let s = copas::status();
    (s.read, s.write, s.active, s.timer, s.inactive, s.timeout)
}

// ----- exit.lua ---------------------------------------------------------------------------

#[test]
fn exit_loop_returns_when_a_thread_yields_five_times_and_ends() {
    let count = Rc::new(Cell::new(0u32));
    let done = Rc::new(Cell::new(false));
    {
        let (count, done) = (count.clone(), done.clone());
        copas::addthread(move || {
            for _ in 0..5 {
                copas::pause(Duration::ZERO);
                count.set(count.get() + 1);
            }
            done.set(true);
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    assert_eq!(count.get(), 5);
    assert!(done.get(), "loop returned before the thread finished");
    assert!(copas::finished());
    assert!(!copas::running());
}

#[test]
fn exit_loop_returns_when_the_handler_removes_its_server() {
    let (listener, addr) = util::local_listener();
    let received: Slot<Outcome<Vec<u8>>> = Rc::default();
    let sent: Slot<Outcome<usize>> = Rc::default();
    let removed: Rc<Cell<bool>> = Rc::default();
    let slot: Rc<Cell<Option<copas::Server>>> = Rc::default();
    let server = {
        let (received, removed, slot) = (received.clone(), removed.clone(), slot.clone());
        copas::addserver(listener, move |mut sock: copas::Socket| {
            let line = sock.receive(Pattern::Line).map_err(|e| e.kind());
            *received.borrow_mut() = Some(line);
            let server = slot.take().expect("the server handle was stored");
            removed.set(copas::removeserver(server, false).is_ok());
        })
        .expect("addserver")
    };
    slot.set(Some(server));
    {
        let sent = sent.clone();
        copas::addthread(move || {
            let mut sock =
                copas::connect(addr, Some(Duration::from_secs(5))).expect("connect to own server");
            *sent.borrow_mut() = Some(sock.send(b"Hello world!\n").map_err(|e| e.kind()));
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    assert_eq!(*received.borrow(), Some(Ok(b"Hello world!".to_vec())));
    assert_eq!(
        *sent.borrow(),
        Some(Ok(13)),
        "send returns the number of bytes sent"
    );
    assert!(removed.get(), "removeserver from the handler failed");
    assert_eq!(copas::status().servers, 0);
}

// ----- exittest.lua -----------------------------------------------------------------------

#[test]
fn exittest_loop_exits_when_a_task_finishes_in_the_first_step() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    copas::addthread(move || r.set(true)).expect("addthread");
    assert!(!ran.get(), "addthread must schedule the body, not run it");
    util::run_bounded(LIMIT);
    assert!(ran.get());
}

#[test]
fn exittest_loop_exits_when_a_task_finishes_inside_the_loop() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    copas::addthread(move || {
        copas::pause(ms(100)); // until the loop runs
        copas::pause(ms(100)); // and not in its first step
        r.set(true);
    })
    .expect("addthread");
    let took = util::run_bounded(LIMIT);
    assert!(ran.get());
    assert!(
        took >= ms(200),
        "the loop returned after {took:?}, before the task ended"
    );
    assert!(took < Duration::from_secs(5), "the loop took {took:?}");
}

#[test]
fn exittest_loop_exits_when_a_task_panics_in_the_first_step() {
    let panics = util::record_panics();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    copas::addthread(move || {
        r.set(true);
        panic!("error on purpose");
    })
    .expect("addthread");
    util::run_bounded(LIMIT);
    assert!(ran.get());
    assert_eq!(*panics.borrow(), ["error on purpose"]);
}

#[test]
fn exittest_loop_exits_when_a_task_panics_inside_the_loop() {
    let panics = util::record_panics();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    copas::addthread(move || {
        copas::pause(ms(100));
        copas::pause(ms(100));
        r.set(true);
        panic!("error on purpose");
    })
    .expect("addthread");
    let took = util::run_bounded(LIMIT);
    assert!(ran.get());
    assert!(took >= ms(200));
    assert_eq!(*panics.borrow(), ["error on purpose"]);
}

#[test]
fn exittest_loop_exits_when_a_task_pauses_forever_in_the_first_step() {
    let ran = Rc::new(Cell::new(false));
    let woke = Rc::new(Cell::new(false));
    let (r, w) = (ran.clone(), woke.clone());
    copas::addthread(move || {
        r.set(true);
        copas::pauseforever();
        w.set(true);
    })
    .expect("addthread");
    let took = util::run_bounded(LIMIT);
    assert!(ran.get());
    assert!(!woke.get(), "nothing woke it, yet it was resumed");
    assert!(took < Duration::from_secs(5), "the loop took {took:?}");
}

#[test]
fn exittest_loop_exits_when_a_task_pauses_forever_inside_the_loop() {
    let ran = Rc::new(Cell::new(false));
    let woke = Rc::new(Cell::new(false));
    let (r, w) = (ran.clone(), woke.clone());
    copas::addthread(move || {
        copas::pause(ms(100));
        copas::pause(ms(100));
        r.set(true);
        copas::pauseforever();
        w.set(true);
    })
    .expect("addthread");
    let took = util::run_bounded(LIMIT);
    assert!(ran.get());
    assert!(!woke.get(), "nothing woke it, yet it was resumed");
    assert!(
        took >= ms(200) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[test]
fn exittest_implicit_exit_releases_a_waitforexit_waiter() {
    let released: Slot<(Outcome<()>, bool)> = Rc::default();
    let r = released.clone();
    copas::addthread(move || {
        copas::addthread(move || {
            let waited = copas::waitforexit().map_err(|e| e.kind());
            *r.borrow_mut() = Some((waited, copas::exiting()));
        })
        .expect("addthread");
    })
    .expect("addthread");
    util::run_bounded(LIMIT);
    assert_eq!(
        *released.borrow(),
        Some((Ok(()), true)),
        "the waiter must be released by the loop's own exit, with exiting() true"
    );
}

#[test]
fn exittest_explicit_exit_lets_an_exit_waiter_schedule_more_work() {
    let counter = Rc::new(Cell::new(0u32));
    let log = Log::default();
    {
        let (counter, log) = (counter.clone(), log.clone());
        copas::addthread(move || {
            let (c1, l1) = (counter.clone(), log.clone());
            copas::addthread(move || {
                for _ in 0..10 {
                    copas::pause(ms(100));
                    c1.set(c1.get() + 1);
                    if c1.get() == 3 {
                        l1.push("exit");
                        copas::exit();
                        break;
                    }
                }
            })
            .expect("addthread ticker");
            let (c2, l2) = (counter.clone(), log.clone());
            copas::addthread(move || {
                copas::waitforexit().expect("waitforexit");
                l2.push("exit signal");
                c2.set(c2.get() + 1); // 4
                let (c3, l3) = (c2.clone(), l2.clone());
                copas::addthread(move || {
                    copas::pause(Duration::from_secs(1));
                    c3.set(c3.get() + 1); // 5
                    l3.push("late task done");
                })
                .expect("addthread from exit handler");
            })
            .expect("addthread waiter");
        })
        .expect("addthread");
    }
    let took = util::run_bounded(LIMIT);
    assert_eq!(counter.get(), 5);
    assert_eq!(log.entries(), ["exit", "exit signal", "late task done"]);
    assert!(copas::exiting(), "exiting() stays true after the loop");
    assert!(
        took >= ms(1250),
        "the late task cannot be done after {took:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

// ----- loop_starter.lua -------------------------------------------------------------------

#[test]
fn loop_starter_runs_the_init_function_as_copas_initializer() {
    let seen: Slot<(Option<String>, bool, bool)> = Rc::default();
    let s = seen.clone();
    {
        let _dog = Watchdog::new("run_with", LIMIT);
        copas::run_with(move || {
            *s.borrow_mut() = Some((
                copas::getthreadname(None),
                copas::running(),
                copas::current().is_some(),
            ));
        })
        .expect("run_with");
    }
    assert_eq!(
        *seen.borrow(),
        Some((Some("copas_initializer".to_string()), true, true))
    );
    assert!(!copas::running());
}

// ----- pause.lua and pause semantics --------------------------------------------------------

#[test]
fn pauseforever_does_not_prevent_exit_and_a_later_run_can_wake_it() {
    let log = Log::default();
    let l = log.clone();
    let co = copas::addthread(move || {
        l.push("start");
        copas::pauseforever();
        l.push("woken");
    })
    .expect("addthread");
    util::run_bounded(LIMIT);
    assert_eq!(log.entries(), ["start"]);
    assert_eq!(copas::status().inactive, 1, "the paused coroutine is kept");
    // As in Copas, a paused coroutine someone still knows can be woken later.
    assert!(copas::wakeup(co));
    util::run_bounded(LIMIT);
    assert_eq!(log.entries(), ["start", "woken"]);
    assert_eq!(copas::status().inactive, 0);
    assert_eq!(copas::status().coroutines, 0);
    assert!(!copas::wakeup(co), "a finished coroutine cannot be woken");
    // Outside any coroutine nothing could wake the thread: it returns at once.
    assert_eq!(copas::pauseforever(), Duration::ZERO);
}

#[test]
fn pause_returns_the_time_actually_paused() {
    let slept: Rc<Cell<Option<Duration>>> = Rc::default();
    let s = slept.clone();
    copas::addthread(move || s.set(Some(copas::pause(ms(150))))).expect("addthread");
    let took = util::run_bounded(LIMIT);
    let slept = slept.get().expect("the thread ran");
    assert!(slept >= ms(150), "pause(150 ms) returned {slept:?}");
    assert!(
        slept < Duration::from_secs(3),
        "pause(150 ms) returned {slept:?}"
    );
    assert!(took >= ms(150));
    // Outside a coroutine it sleeps the thread.
    let outside = copas::pause(ms(20));
    assert!(
        outside >= ms(20) && outside < Duration::from_secs(3),
        "{outside:?}"
    );
}

/// Outside a coroutine `pause` sleeps the thread, but a delay with no deadline is
/// `pauseforever`'s, which nothing could end there: both return at once.
#[test]
fn pause_forever_outside_a_coroutine_returns_at_once_as_pauseforever_does() {
    let _dog = Watchdog::new("pause(FOREVER) outside a coroutine", LIMIT);
    assert_eq!(copas::pauseforever(), Duration::ZERO);
    assert_eq!(copas::pause(copas::FOREVER), Duration::ZERO);
    assert_eq!(copas::pause(Duration::MAX), Duration::ZERO);
}

#[test]
fn addthread_schedules_the_body_for_the_first_step() {
    let _dog = Watchdog::new("steps", LIMIT);
    let log = Log::default();
    let l = log.clone();
    copas::addthread(move || l.push("body")).expect("addthread");
    assert!(
        log.entries().is_empty(),
        "addthread ran the body synchronously"
    );
    assert_eq!(copas::status().active, 1);
    assert!(!copas::finished());
    copas::step(Some(Duration::ZERO)).expect("step");
    assert_eq!(
        log.entries(),
        ["body"],
        "the body runs during the first step"
    );
    assert!(copas::finished());
}

#[test]
fn pause_zero_resumes_in_the_next_step_after_the_others() {
    let _dog = Watchdog::new("steps", LIMIT);
    let log = Log::default();
    let spins = Rc::new(Cell::new(0u32));
    {
        let l = log.clone();
        copas::addthread(move || {
            l.push("a1");
            copas::pause(Duration::ZERO);
            l.push("a2");
            copas::pause(Duration::ZERO);
            l.push("a3");
        })
        .expect("addthread a");
    }
    {
        let l = log.clone();
        copas::addthread(move || {
            l.push("b1");
            copas::pause(Duration::ZERO);
            l.push("b2");
        })
        .expect("addthread b");
    }
    {
        let l = log.clone();
        copas::addthread(move || {
            l.push("c");
        })
        .expect("addthread c");
    }
    {
        let spins = spins.clone();
        copas::addthread(move || {
            for _ in 0..1000 {
                spins.set(spins.get() + 1);
                copas::pause(Duration::ZERO);
            }
        })
        .expect("addthread spinner");
    }
    copas::step(Some(Duration::ZERO)).expect("step 1");
    assert_eq!(log.entries(), ["a1", "b1", "c"]);
    assert_eq!(
        spins.get(),
        1,
        "a pause(0) loop must not spin inside one step"
    );
    copas::step(Some(Duration::ZERO)).expect("step 2");
    assert_eq!(log.entries(), ["a1", "b1", "c", "a2", "b2"]);
    assert_eq!(spins.get(), 2);
    copas::step(Some(Duration::ZERO)).expect("step 3");
    assert_eq!(log.entries(), ["a1", "b1", "c", "a2", "b2", "a3"]);
    assert_eq!(spins.get(), 3);
    copas::cancelall();
}

#[test]
fn wakeup_ends_a_timed_pause_early_but_not_a_socket_wait() {
    let (listener, addr) = util::local_listener(); // never accepts: the reader waits
    let slept: Rc<Cell<Option<Duration>>> = Rc::default();
    let results: Rc<RefCell<Vec<bool>>> = Rc::default();
    let sleeper = {
        let slept = slept.clone();
        copas::addthread(move || slept.set(Some(copas::pause(Duration::from_secs(10)))))
            .expect("addthread sleeper")
    };
    let reader = copas::addthread(move || {
        let mut sock = copas::connect(addr, Some(Duration::from_secs(5))).expect("connect");
        let _ = sock.receive(Pattern::Line);
    })
    .expect("addthread reader");
    {
        let results = results.clone();
        copas::addthread(move || {
            copas::pause(ms(100));
            results.borrow_mut().push(copas::wakeup(reader));
            results.borrow_mut().push(copas::wakeup(sleeper));
            results.borrow_mut().push(copas::wakeup(sleeper)); // already woken
            copas::pause(ms(100));
            copas::cancelall(); // ends the reader's wait
        })
        .expect("addthread waker");
    }
    let took = util::run_bounded(LIMIT);
    assert_eq!(
        *results.borrow(),
        [false, true, false],
        "wakeup: a socket waiter is not woken, a sleeper is, once"
    );
    let slept = slept.get().expect("the sleeper was woken");
    assert!(
        slept >= ms(100) && slept < Duration::from_secs(3),
        "{slept:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(listener);
}

#[test]
fn waitforexit_after_exit_returns_at_once_and_run_resets_exiting() {
    let _dog = Watchdog::new("steps", LIMIT);
    let log = Log::default();
    let l = log.clone();
    copas::addthread(move || {
        copas::exit();
        copas::waitforexit().expect("waitforexit");
        l.push("not suspended");
    })
    .expect("addthread");
    copas::step(Some(Duration::ZERO)).expect("step");
    assert_eq!(
        log.entries(),
        ["not suspended"],
        "waitforexit after exit must not wait"
    );
    assert!(copas::exiting());
    let inside: Rc<Cell<Option<bool>>> = Rc::default();
    let i = inside.clone();
    copas::run_with(move || i.set(Some(copas::exiting()))).expect("run_with");
    assert_eq!(inside.get(), Some(false), "run starts with exiting() false");
    assert!(copas::exiting(), "the loop's own exit sets it");
    let err = copas::waitforexit().expect_err("waitforexit outside a coroutine");
    assert_eq!(err.kind(), ErrorKind::InvalidState);
}

// ----- removethread.lua -------------------------------------------------------------------

#[test]
fn removethread_stops_an_endless_ticker() {
    let drops = Rc::new(Cell::new(0u32));
    let ticks = Rc::new(Cell::new(0u32));
    let ticks_at_removal: Rc<Cell<Option<u32>>> = Rc::default();
    let removed: Rc<Cell<bool>> = Rc::default();
    let ticker = {
        let (drops, ticks) = (drops.clone(), ticks.clone());
        copas::addthread(move || {
            let _guard = DropGuard(drops);
            for _ in 0..100 {
                ticks.set(ticks.get() + 1);
                copas::pause(ms(500));
            }
        })
        .expect("addthread ticker")
    };
    {
        let (drops, ticks, at, removed) = (
            drops.clone(),
            ticks.clone(),
            ticks_at_removal.clone(),
            removed.clone(),
        );
        copas::addthread(move || {
            let _guard = DropGuard(drops);
            for _ in 0..5 {
                copas::pause(ms(600));
            }
            at.set(Some(ticks.get()));
            removed.set(copas::removethread(ticker));
        })
        .expect("addthread remover");
    }
    let took = util::run_bounded(LIMIT);
    assert!(
        removed.get(),
        "removethread returned false for a live coroutine"
    );
    let at = ticks_at_removal.get().expect("the remover ran");
    assert!((3..=8).contains(&at), "{at} ticks in 3 s of 0.5 s ticks");
    assert_eq!(ticks.get(), at, "the ticker ticked after its removal");
    assert_eq!(drops.get(), 2, "both coroutines' locals must be released");
    assert!(took >= Duration::from_secs(3), "took {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "the loop went on after the removal: {took:?}"
    );
    assert_eq!(copas::status().coroutines, 0);
}

#[test]
fn removethread_of_a_sleeper_lets_the_loop_exit_at_once() {
    let woke = Rc::new(Cell::new(false));
    let sleeper = {
        let woke = woke.clone();
        copas::addthread(move || {
            copas::pause(Duration::from_secs(10));
            woke.set(true);
        })
        .expect("addthread")
    };
    let removed = Rc::new(Cell::new(false));
    let r = removed.clone();
    let start = Instant::now();
    {
        let _dog = Watchdog::new("run_with", LIMIT);
        copas::run_with(move || {
            copas::pause(ms(500));
            r.set(copas::removethread(sleeper));
        })
        .expect("run_with");
    }
    let took = start.elapsed();
    assert!(removed.get());
    assert!(!woke.get(), "the removed sleeper was resumed");
    assert!(took >= ms(500), "took {took:?}");
    // Waiting for the removed sleeper would take its 10 s.
    assert!(
        took < Duration::from_secs(5),
        "expected an exit right after the removal, took {took:?}"
    );
}

#[test]
fn removethread_drops_the_coroutine_locals_at_once() {
    let _dog = Watchdog::new("steps", LIMIT);
    let drops = Rc::new(Cell::new(0u32));
    let resumed = Rc::new(Cell::new(false));
    // A coroutine that never started: its closure (and what it captured) is dropped.
    let started = Rc::new(Cell::new(false));
    let guard = DropGuard(drops.clone());
    let unstarted = {
        let started = started.clone();
        copas::addthread(move || {
            let _guard = guard;
            started.set(true);
        })
        .expect("addthread")
    };
    assert!(copas::removethread(unstarted));
    assert_eq!(
        drops.get(),
        1,
        "the unstarted coroutine's closure was not dropped"
    );
    // A sleeping coroutine: its stack is unwound.
    let sleeper = {
        let (drops, resumed) = (drops.clone(), resumed.clone());
        copas::addthread(move || {
            let _guard = DropGuard(drops);
            copas::pause(Duration::from_secs(10));
            resumed.set(true);
        })
        .expect("addthread")
    };
    copas::step(Some(Duration::ZERO)).expect("step");
    assert_eq!(counts(), (0, 0, 0, 1, 0, 0), "the sleeper sleeps");
    assert!(copas::removethread(sleeper));
    assert_eq!(
        drops.get(),
        2,
        "the sleeper's locals were not dropped at once"
    );
    assert_eq!(counts(), (0, 0, 0, 0, 0, 0));
    assert!(!copas::removethread(sleeper), "removing twice");
    assert!(copas::finished());
    copas::step(Some(Duration::ZERO)).expect("step");
    assert!(!started.get() && !resumed.get());
}

/// A coroutine removes another, paused forever, with `remove`: how many of the other's
/// locals were dropped when `remove` returned, and in all.
fn drops_when_a_coroutine_removes_another(
    remove: impl FnOnce(Coroutine) + 'static,
) -> (Option<u32>, u32) {
    let drops = Rc::new(Cell::new(0u32));
    let seen = Rc::new(Cell::new(None));
    let (d, s) = (drops.clone(), seen.clone());
    util::run_with_bounded(LIMIT, move || {
        let guard = DropGuard(d.clone());
        let victim = copas::addthread(move || {
            let _guard = guard;
            copas::pauseforever();
        })
        .expect("addthread");
        copas::pause(ms(5));
        remove(victim);
        // Before: 0 here; the unwind waited for the end of the step.
        s.set(Some(d.get()));
    });
    (seen.get(), drops.get())
}

#[test]
fn removethread_from_a_coroutine_drops_the_removed_ones_locals_before_it_returns() {
    let _dog = Watchdog::new("removal from a coroutine", LIMIT);
    let dropped = drops_when_a_coroutine_removes_another(|victim| {
        assert!(copas::removethread(victim));
    });
    assert_eq!(dropped, (Some(1), 1));
}

#[test]
fn cancelall_from_a_coroutine_drops_the_others_locals_before_it_returns() {
    let _dog = Watchdog::new("cancelall from a coroutine", LIMIT);
    let (when_it_returned, _) = drops_when_a_coroutine_removes_another(|_| copas::cancelall());
    assert_eq!(when_it_returned, Some(1));
}

/// Removes `next` when dropped: a removal from a destructor running in an unwind.
struct RemoveOnDrop(Coroutine);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        copas::removethread(self.0);
    }
}

#[test]
fn a_removal_from_a_removed_coroutines_destructor_unwinds_that_one_too() {
    let _dog = Watchdog::new("removal from an unwind", LIMIT);
    let drops = Rc::new(Cell::new(0u32));
    let seen = Rc::new(Cell::new(None));
    let (d, s) = (drops.clone(), seen.clone());
    util::run_with_bounded(LIMIT, move || {
        let guard = DropGuard(d.clone());
        let last = copas::addthread(move || {
            let _guard = guard;
            copas::pauseforever();
        })
        .expect("addthread");
        let first = copas::addthread(move || {
            let _remove = RemoveOnDrop(last);
            copas::pauseforever();
        })
        .expect("addthread");
        copas::pause(ms(5));
        // The second unwind cannot start inside the first: it waits for the first to end,
        // still within this call.
        assert!(copas::removethread(first));
        s.set(Some((d.get(), copas::status().coroutines)));
    });
    assert_eq!(
        seen.get(),
        Some((1, 1)),
        "(drops, coroutines): only the caller left"
    );
}

#[test]
fn removethread_of_a_socket_waiter_releases_its_socket() {
    let _dog = Watchdog::new("steps", LIMIT);
    let (listener, addr) = util::local_listener(); // never accepts: the reader waits
    let drops = Rc::new(Cell::new(0u32));
    let result: Slot<Outcome<Vec<u8>>> = Rc::default();
    let reader = {
        let (drops, result) = (drops.clone(), result.clone());
        copas::addthread(move || {
            let _guard = DropGuard(drops);
            let mut sock = copas::connect(addr, Some(Duration::from_secs(5))).expect("connect");
            *result.borrow_mut() = Some(sock.receive(Pattern::Line).map_err(|e| e.kind()));
        })
        .expect("addthread")
    };
    assert!(util::step_until(Duration::from_secs(5), || copas::status()
        .read
        == 1));
    assert_eq!(copas::status().sockets, 1);
    assert!(copas::removethread(reader));
    assert_eq!(drops.get(), 1);
    assert_eq!(copas::status().read, 0);
    assert_eq!(
        copas::status().sockets,
        0,
        "the reader's socket was not closed"
    );
    assert!(copas::finished());
    assert!(result.borrow().is_none(), "the removed reader was resumed");
    drop(listener);
}

#[test]
fn removethread_on_itself_takes_effect_at_its_next_wait() {
    let log = Log::default();
    let drops = Rc::new(Cell::new(0u32));
    let removed = Rc::new(Cell::new(false));
    {
        let (log, drops, removed) = (log.clone(), drops.clone(), removed.clone());
        copas::addthread(move || {
            let _guard = DropGuard(drops);
            log.push("before");
            let me = copas::current().expect("inside a coroutine");
            removed.set(copas::removethread(me));
            log.push("after removethread");
            copas::pause(ms(10));
            log.push("after first wait");
            copas::pause(Duration::ZERO);
            log.push("after second wait");
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    assert!(removed.get());
    assert_eq!(
        log.entries(),
        ["before", "after removethread"],
        "a coroutine that removed itself must not come back from its next wait"
    );
    assert_eq!(drops.get(), 1);
    assert_eq!(copas::status().coroutines, 0);
}

// ----- cancelall.lua ----------------------------------------------------------------------

const CANCELALL_CHILD: &str = "COPAS_TEST_CANCELALL_CHILD";

/// Runs in a child process (started by the same test) so that no other test's sockets
/// change the process's descriptor count.
#[test]
fn cancelall_ends_a_loop_with_a_server_a_sleeper_and_a_blocked_reader() {
    if !util::is_child(CANCELALL_CHILD) {
        util::assert_child_passes(
            "cancelall_ends_a_loop_with_a_server_a_sleeper_and_a_blocked_reader",
            CANCELALL_CHILD,
            "1 passed",
            Duration::from_secs(60),
        );
        return;
    }

    util::make_dispatcher();
    let fds_before = util::fd_count();
    let drops = Rc::new(Cell::new(0u32));
    let reader_result: Slot<Outcome<Vec<u8>>> = Rc::default();
    let cancelled = Rc::new(Cell::new(false));
    let start = Instant::now();
    {
        let (drops, reader_result, cancelled) =
            (drops.clone(), reader_result.clone(), cancelled.clone());
        let _dog = Watchdog::new("run after cancelall", Duration::from_secs(5));
        copas::run_with(move || {
            let (listener, addr) = util::local_listener();
            // A server whose handler never serves its connections.
            let d = drops.clone();
            copas::addserver(listener, move |_sock| {
                let _guard = DropGuard(d.clone());
                copas::pause(Duration::from_secs(3600));
            })
            .expect("addserver");
            // A thread that sleeps for an hour.
            let d = drops.clone();
            copas::addthread(move || {
                let _guard = DropGuard(d);
                copas::pause(Duration::from_secs(3600));
            })
            .expect("addthread sleeper");
            // A client blocked reading from the server that never answers.
            let d = drops.clone();
            copas::addthread(move || {
                let _guard = DropGuard(d);
                let mut sock = copas::connect(addr, Some(Duration::from_secs(5))).expect("connect");
                *reader_result.borrow_mut() =
                    Some(sock.receive(Pattern::Line).map_err(|e| e.kind()));
            })
            .expect("addthread reader");
            // The teardown hammer.
            copas::addthread(move || {
                copas::pause(ms(500));
                copas::cancelall();
                cancelled.set(true);
            })
            .expect("addthread cancel");
        })
        .expect("run_with");
    }
    let took = start.elapsed();
    assert!(cancelled.get());
    assert!(took >= ms(500), "took {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "the loop did not end promptly: {took:?}"
    );
    assert_eq!(
        drops.get(),
        3,
        "handler, sleeper and reader must be unwound"
    );
    assert!(
        reader_result.borrow().is_none(),
        "an abandoned coroutine was resumed"
    );
    assert_eq!(counts(), (0, 0, 0, 0, 0, 0));
    assert_eq!(copas::status().servers, 0);
    assert_eq!(copas::status().coroutines, 0);
    assert_eq!(copas::status().sockets, 0);

    // A fresh loop afterwards works normally.
    let done = Rc::new(Cell::new(false));
    {
        let done = done.clone();
        let _dog = Watchdog::new("second run", Duration::from_secs(5));
        copas::run_with(move || {
            let done = done.clone();
            copas::addthread(move || {
                copas::pause(ms(50));
                done.set(true);
            })
            .expect("addthread");
        })
        .expect("second run_with");
    }
    assert!(done.get(), "the second loop did not complete its task");
    assert_eq!(util::fd_count(), fds_before, "descriptors leaked");
}

#[test]
fn cancelall_from_a_coroutine_with_a_pending_timeout() {
    let finished_body = Rc::new(Cell::new(false));
    let fb = finished_body.clone();
    copas::addthread(|| {
        copas::pause(Duration::from_secs(3600));
    })
    .expect("addthread");
    copas::addthread(move || {
        // A safety timeout, as a test teardown would arm.
        copas::timeout(Duration::from_secs(60), |_| {}).expect("timeout");
        copas::pause(ms(50));
        copas::cancelall();
        fb.set(true);
    })
    .expect("addthread");
    let _dog = Watchdog::new("run", LIMIT);
    let start = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(copas::run));
    let took = start.elapsed();
    assert!(
        matches!(outcome, Ok(Ok(()))),
        "run must end normally after cancelall (a panic escaped the dispatcher: {})",
        match &outcome {
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
            Ok(r) => format!("{r:?}"),
        }
    );
    assert!(finished_body.get());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(counts(), (0, 0, 0, 0, 0, 0));
}

// ----- copas.timeout ----------------------------------------------------------------------

#[test]
fn timeout_callback_wakes_a_coroutine_paused_forever() {
    let slept: Rc<Cell<Option<Duration>>> = Rc::default();
    let callback_got: Rc<Cell<Option<(Coroutine, Coroutine)>>> = Rc::default();
    {
        let (slept, callback_got) = (slept.clone(), callback_got.clone());
        copas::addthread(move || {
            let me = copas::current().expect("inside a coroutine");
            copas::timeout(ms(100), move |co| {
                callback_got.set(Some((co, me)));
                copas::wakeup(co);
            })
            .expect("timeout");
            slept.set(Some(copas::pauseforever()));
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    let (got, me) = callback_got.get().expect("the callback ran");
    assert_eq!(got, me, "the callback gets the coroutine that armed it");
    let slept = slept.get().expect("the coroutine was woken");
    assert!(
        slept >= ms(100) && slept < Duration::from_secs(3),
        "{slept:?}"
    );
}

#[test]
fn timeout_a_new_call_replaces_the_previous_one() {
    let log = Log::default();
    let pending: Rc<Cell<Option<usize>>> = Rc::default();
    let slept: Rc<Cell<Option<Duration>>> = Rc::default();
    {
        let (log, pending, slept) = (log.clone(), pending.clone(), slept.clone());
        copas::addthread(move || {
            let l1 = log.clone();
            copas::timeout(ms(100), move |co| {
                l1.push("first");
                copas::wakeup(co);
            })
            .expect("timeout");
            let l2 = log.clone();
            copas::timeout(ms(300), move |co| {
                l2.push("second");
                copas::wakeup(co);
            })
            .expect("timeout");
            pending.set(Some(copas::status().timeout));
            slept.set(Some(copas::pauseforever()));
            log.push("woken");
            copas::pause(ms(100));
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    assert_eq!(pending.get(), Some(1), "one timeout per coroutine");
    assert_eq!(log.entries(), ["second", "woken"]);
    let slept = slept.get().expect("woken");
    assert!(
        slept >= ms(300) && slept < Duration::from_secs(3),
        "{slept:?}"
    );
}

#[test]
fn a_timeout_ends_with_the_coroutine_that_armed_it() {
    // Documented difference from Copas, whose callback would still fire for the dead
    // coroutine: the callback is dropped unrun, with what it captured, and does not keep
    // `run` going for the coroutine left paused forever.
    struct Captured(Rc<Cell<bool>>);
    impl Drop for Captured {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let fired = Rc::new(Cell::new(false));
    let dropped = Rc::new(Cell::new(false));
    copas::addthread(|| {
        copas::pauseforever();
    })
    .expect("addthread");
    let (f, d) = (fired.clone(), dropped.clone());
    copas::addthread(move || {
        let captured = Captured(d);
        copas::timeout(Duration::from_secs(5), move |_| {
            let _keep = &captured;
            f.set(true);
        })
        .expect("timeout");
    })
    .expect("addthread");
    let _dog = Watchdog::new("run", LIMIT);
    let start = Instant::now();
    copas::run().expect("run");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(!fired.get(), "the callback of an ended coroutine ran");
    assert!(
        dropped.get(),
        "the callback's captures outlived its coroutine"
    );
    assert_eq!(copas::status().timeout, 0);
}

#[test]
fn timeout_zero_cancels_the_pending_timeout() {
    let log = Log::default();
    let pending: Rc<RefCell<Vec<usize>>> = Rc::default();
    {
        let (log, pending) = (log.clone(), pending.clone());
        copas::addthread(move || {
            let l = log.clone();
            copas::timeout(ms(100), move |_| l.push("fired")).expect("timeout");
            pending.borrow_mut().push(copas::status().timeout);
            copas::timeout(Duration::ZERO, |_| unreachable!("never armed")).expect("cancel");
            pending.borrow_mut().push(copas::status().timeout);
            copas::pause(ms(300));
            log.push("slept");
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    assert_eq!(*pending.borrow(), [1, 0]);
    assert_eq!(log.entries(), ["slept"], "a cancelled timeout fired");
    // Outside a coroutine there is nothing to arm a timeout for.
    let err = copas::timeout(ms(10), |_| {}).expect_err("timeout outside a coroutine");
    assert_eq!(err.kind(), ErrorKind::InvalidState);
}

#[test]
fn timeout_pending_keeps_a_paused_coroutine_loop_alive_until_it_fires() {
    let fired_at: Rc<Cell<Option<Duration>>> = Rc::default();
    let resumed = Rc::new(Cell::new(false));
    let start = Instant::now();
    {
        let (fired_at, resumed) = (fired_at.clone(), resumed.clone());
        copas::addthread(move || {
            copas::timeout(ms(300), move |_co| fired_at.set(Some(start.elapsed())))
                .expect("timeout");
            copas::pauseforever();
            resumed.set(true);
        })
        .expect("addthread");
    }
    let took = util::run_bounded(LIMIT);
    let fired_at = fired_at
        .get()
        .expect("the loop ended before the timeout fired");
    assert!(fired_at >= ms(300), "fired after {fired_at:?}");
    assert!(
        took >= ms(300) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert!(
        !resumed.get(),
        "the callback did not wake it, yet it was resumed"
    );
    assert_eq!(copas::status().timeout, 0);
    assert_eq!(copas::status().inactive, 1);
}

// ----- status -----------------------------------------------------------------------------

#[test]
fn status_and_finished_leave_out_coroutines_removed_while_ready() {
    let _dog = Watchdog::new("removed while ready", LIMIT);
    let a = copas::addthread(|| {}).expect("addthread");
    let b = copas::addthread(|| {}).expect("addthread");
    assert_eq!(copas::status().active, 2);
    assert!(copas::removethread(a));
    // Before: `active` 2 with no coroutine left, and `finished()` false until a step.
    assert_eq!(copas::status().active, 1);
    assert!(copas::removethread(b));
    assert_eq!((copas::status().active, copas::status().coroutines), (0, 0));
    assert!(copas::finished());

    // Inside the loop: a sleeper woken, then removed before it runs.
    let seen = Rc::new(Cell::new(None));
    let s = seen.clone();
    util::run_with_bounded(LIMIT, move || {
        let sleeper = copas::addthread(|| {
            copas::pause(Duration::from_secs(30));
        })
        .expect("addthread");
        copas::pause(ms(5));
        assert!(copas::wakeup(sleeper));
        let woken = copas::status().active;
        assert!(copas::removethread(sleeper));
        s.set(Some((woken, copas::status().active)));
    });
    assert_eq!(seen.get(), Some((1, 0)));
}

#[test]
fn finished_once_the_only_server_is_removed_before_any_step() {
    let _dog = Watchdog::new("server removed before a step", LIMIT);
    let (listener, _addr) = util::local_listener();
    let server = copas::addserver(listener, |_sock: copas::Socket| {}).expect("addserver");
    assert!(!copas::finished(), "a server exists");
    copas::removeserver(server, false).expect("removeserver");
    assert_eq!(copas::status().servers, 0);
    // Before: false until a step had skipped the removed server's first accept round.
    assert!(copas::finished(), "{:?}", copas::status());
    // And a step finds nothing due: it waits out its timeout instead of returning at once.
    let start = Instant::now();
    assert!(!copas::step(Some(ms(50))).expect("step"));
    assert!(start.elapsed() >= ms(40), "{:?}", start.elapsed());
}

#[test]
fn status_counts_timed_waits_as_copas_does_its_timer_wheel() {
    // In Copas a lock or semaphore wait is a `pauseforever` (`inactive`) guarded by a
    // timer on the wheel, as is a socket operation with a timeout (`timeout`, the count
    // `gettimeouts()` gives); only `pause(d)` is on the sleep heap (`timer`).
    let _dog = Watchdog::new("status of timed waits", LIMIT);
    let (listener, addr) = util::local_listener();
    let lock = copas::lock::Lock::new(None, false);
    lock.get(None).expect("held outside any coroutine");
    let l = lock.clone();
    copas::addthread(move || {
        let _ = l.get(Duration::from_secs(30));
    })
    .expect("addthread");
    copas::addthread(move || {
        let mut sock = copas::connect(addr, None).expect("connect");
        sock.settimeout(Some(Duration::from_secs(30)));
        let _ = sock.receive(Pattern::Exact(1));
    })
    .expect("addthread");
    copas::addthread(|| {
        copas::pause(Duration::from_secs(30));
    })
    .expect("addthread");
    assert!(util::step_until(Duration::from_secs(5), || copas::status()
        .read
        == 1));
    // Before: (1, 2, 0, 0): the lock waiter counted as a sleeper, no deadline in `timeout`.
    assert_eq!(counts(), (1, 0, 0, 1, 1, 2));
    assert!(!copas::finished(), "a timed lock wait keeps the loop going");
    drop(listener);
    copas::cancelall();
    assert_eq!(counts(), (0, 0, 0, 0, 0, 0));
    lock.destroy().expect("destroy");
}

#[test]
fn status_counts_what_the_dispatcher_holds() {
    let _dog = Watchdog::new("steps", LIMIT);
    let s = copas::status();
    assert!(!s.running);
    assert_eq!(
        counts(),
        (0, 0, 0, 0, 0, 0),
        "a fresh dispatcher holds nothing"
    );

    // A sleeper, a coroutine paused forever, and one paused forever with a timeout.
    copas::addthread(|| {
        copas::pause(Duration::from_secs(60));
    })
    .expect("addthread");
    copas::addthread(|| {
        copas::pauseforever();
    })
    .expect("addthread");
    copas::addthread(|| {
        copas::timeout(Duration::from_secs(60), |_| {}).expect("timeout");
        copas::pauseforever();
    })
    .expect("addthread");
    assert_eq!(counts(), (0, 0, 3, 0, 0, 0), "three ready to start");
    copas::step(Some(Duration::ZERO)).expect("step");
    assert_eq!(counts(), (0, 0, 0, 1, 2, 1));
    assert!(
        !copas::finished(),
        "a pending timeout and a paused coroutine"
    );

    // A server counts as a reader; so do a client and the handler it talks to.
    let (listener, addr) = util::local_listener();
    copas::addserver(listener, |mut sock| {
        let _ = sock.receive(Pattern::Line);
    })
    .expect("addserver");
    assert_eq!(copas::status().read, 1);
    assert_eq!(copas::status().servers, 1);
    copas::addthread(move || {
        let mut sock = copas::connect(addr, Some(Duration::from_secs(5))).expect("connect");
        let _ = sock.receive(Pattern::Line);
    })
    .expect("addthread");
    assert!(
        util::step_until(Duration::from_secs(5), || copas::status().read == 3),
        "server, client and handler should be reading: {:?}",
        copas::status()
    );

    // A writer blocked by a peer that never reads.
    let slow =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    slow.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    slow.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .expect("bind");
    slow.listen(1).expect("listen");
    let slow_addr = slow.local_addr().unwrap().as_socket().unwrap();
    copas::addthread(move || {
        // No connect timeout: its deadline would count in `timeout` while it connects.
        let mut sock = copas::connect(slow_addr, None).expect("connect slow");
        let _ = sock.send(&vec![0u8; 16 << 20]);
    })
    .expect("addthread");
    assert!(
        util::step_until(Duration::from_secs(5), || copas::status().write == 1),
        "the writer should be blocked: {:?}",
        copas::status()
    );
    assert_eq!(counts(), (3, 1, 0, 1, 2, 1));
    assert_eq!(copas::status().coroutines, 6);

    copas::cancelall();
    assert_eq!(counts(), (0, 0, 0, 0, 0, 0), "cancelall leaves nothing");
    assert_eq!(copas::status().servers, 0);
    assert_eq!(copas::status().coroutines, 0);
    assert_eq!(copas::status().sockets, 0);

    // Inside the loop.
    let inside: Rc<Cell<Option<copas::Status>>> = Rc::default();
    let i = inside.clone();
    copas::run_with(move || i.set(Some(copas::status()))).expect("run_with");
    let inside = inside.get().expect("init ran");
    assert!(inside.running);
    assert_eq!(inside.coroutines, 1, "only the initializer");
    assert!(!copas::status().running);
    drop(slow);
}

// ----- step -------------------------------------------------------------------------------

#[test]
fn step_returns_false_after_an_idle_timeout() {
    let _dog = Watchdog::new("step", LIMIT);
    let start = Instant::now();
    let events = copas::step(Some(ms(200))).expect("step");
    let took = start.elapsed();
    assert!(!events, "nothing happened, yet step reported events");
    assert!(
        took >= ms(150),
        "step returned after {took:?}, before its timeout"
    );
    assert!(took < Duration::from_secs(3), "step took {took:?}");

    // An I/O event makes it return true.
    let (listener, addr) = util::local_listener();
    let mut peer = std::net::TcpStream::connect(addr).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    let _sock = copas::wrap(accepted).expect("wrap");
    std::io::Write::write_all(&mut peer, b"ping\n").expect("write");
    let mut handled = false;
    for _ in 0..50 {
        if copas::step(Some(ms(100))).expect("step") {
            handled = true;
            break;
        }
    }
    assert!(handled, "step never reported the socket's events");
}

/// A step whose accepted handlers hold the thread past a timer's deadline looks at the
/// poller again before firing it; events found there are handled in that step, and the step
/// reports them. Before, that second look's result was dropped: the step that carried on a
/// backlog of accepts and resumed a reader for its data returned `Ok(false)`.
#[test]
fn a_step_reports_the_events_it_found_after_handlers_held_the_thread() {
    let _dog = Watchdog::new("step", LIMIT);
    // A reader whose peer's byte is written by the 70th accepted handler: after the first
    // accept round's 64, in a step with no event of its own.
    let (listener, addr) = util::local_listener();
    let mut peer = Some(std::net::TcpStream::connect(addr).expect("connect"));
    let (accepted, _) = listener.accept().expect("accept");
    let mut reader = copas::wrap(accepted).expect("wrap");
    let got = Rc::new(Cell::new(false));
    let got2 = got.clone();
    copas::addthread(move || {
        reader.receive(Pattern::Exact(1)).expect("the byte");
        got2.set(true);
    })
    .expect("reader");
    let (backlog, backlog_addr) = util::local_listener();
    let clients: Vec<_> = (0..100)
        .map(|_| std::net::TcpStream::connect(backlog_addr).expect("connect"))
        .collect();
    let served = Rc::new(Cell::new(0u32));
    let peer = Rc::new(RefCell::new(peer.take()));
    let (served2, peer2) = (served.clone(), peer.clone());
    let server = copas::addserver(backlog, move |_sock| {
        served2.set(served2.get() + 1);
        if served2.get() == 70 {
            let mut p = peer2.borrow_mut();
            std::io::Write::write_all(p.as_mut().expect("peer"), b"x").expect("write");
        }
        // Holds the thread: 64 of these are over a millisecond.
        std::thread::sleep(Duration::from_micros(50));
    })
    .expect("addserver");
    // A deadline that passes while the handlers hold the thread.
    copas::addthread(|| {
        copas::pause(ms(1));
    })
    .expect("sleeper");
    let mut steps = 0;
    while !got.get() && steps < 100 {
        let events = copas::step(Some(ms(100))).expect("step");
        steps += 1;
        if got.get() {
            assert!(
                events,
                "step {steps} resumed the reader for its event, yet reported none"
            );
        }
    }
    assert!(got.get(), "the reader never got its byte");
    assert!(served.get() >= 70, "served {}", served.get());
    copas::removeserver(server, false).expect("removeserver");
    drop(clients);
    util::run_bounded(LIMIT);
}

#[test]
fn step_and_run_refuse_to_run_inside_the_dispatcher() {
    let from_coroutine: Rc<RefCell<Vec<Outcome<()>>>> = Rc::default();
    let from_callback: Rc<RefCell<Vec<Outcome<()>>>> = Rc::default();
    {
        let (fco, fcb) = (from_coroutine.clone(), from_callback.clone());
        copas::addthread(move || {
            fco.borrow_mut().push(
                copas::step(Some(Duration::ZERO))
                    .map(|_| ())
                    .map_err(|e| e.kind()),
            );
            fco.borrow_mut().push(copas::run().map_err(|e| e.kind()));
            copas::timeout(ms(20), move |co| {
                fcb.borrow_mut().push(
                    copas::step(Some(Duration::ZERO))
                        .map(|_| ())
                        .map_err(|e| e.kind()),
                );
                fcb.borrow_mut().push(copas::run().map_err(|e| e.kind()));
                copas::wakeup(co);
            })
            .expect("timeout");
            copas::pauseforever();
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    let invalid = Err(ErrorKind::InvalidState);
    assert_eq!(
        *from_coroutine.borrow(),
        [invalid, invalid],
        "from a coroutine"
    );
    assert_eq!(
        *from_callback.borrow(),
        [invalid, invalid],
        "from a timeout callback"
    );
    assert!(!copas::running());
}

/// Coroutines abandoned when their thread ends are unwound while the dispatcher still
/// exists, so destructors on their stacks may call copas: cancel a timer, try to release a
/// lock, ask for the coroutine's name. From the dispatcher's own destructor such a call panicked
/// inside the unwind, which aborts the process. In a child process: an abort would end the
/// whole test binary.
#[test]
fn destructors_of_coroutines_abandoned_at_thread_exit_may_call_copas() {
    const CHILD: &str = "COPAS_TEST_ABANDONED_AT_EXIT_CHILD";
    if util::is_child(CHILD) {
        struct Releases(copas::lock::Lock, copas::timer::Timer);
        impl Drop for Releases {
            fn drop(&mut self) {
                let released = self.0.release();
                let cancelled = self.1.cancel();
                let name = copas::getthreadname(None);
                println!("released {released:?}, cancelled {cancelled:?}, name {name:?}");
            }
        }
        let worker = std::thread::spawn(|| {
            let lock = copas::lock::Lock::new(None, false);
            copas::addnamedthread("holder", move || {
                lock.get(None).expect("get");
                let timer = copas::timer::new(
                    // Armed, and never due: it does not keep `run` going.
                    copas::timer::TimerOptions::new(Duration::from_secs(3600))
                        .initial_delay(copas::FOREVER),
                    |_| {},
                )
                .expect("timer");
                let _releases = Releases(lock, timer);
                copas::pauseforever();
            })
            .expect("addthread");
            copas::run().expect("run");
        });
        worker.join().expect("the worker thread");
        println!("child done");
        return;
    }
    let out = util::assert_child_passes(
        "destructors_of_coroutines_abandoned_at_thread_exit_may_call_copas",
        CHILD,
        "child done",
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Each call answered. The coroutine's entry has gone when it is unwound, as with
    // `removethread`: it no longer owns the lock (Copas's rule too) and has no name.
    assert!(
        stdout.contains("released Err(Error { kind: NotOwned }), cancelled Ok(()), name None"),
        "{stdout}"
    );
}

/// Runs `work` on a new thread whose thread-local, holding what `make` returns, was first
/// used before copas: it is destroyed after the dispatcher when the thread exits.
fn on_a_thread_with_a_late_thread_local(
    make: impl FnOnce() -> Box<dyn std::any::Any> + Send + 'static,
    work: impl FnOnce() + Send + 'static,
) {
    thread_local! {
        static LATE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
    }
    std::thread::spawn(move || {
        LATE.with(|late| *late.borrow_mut() = Some(make()));
        work();
    })
    .join()
    .expect("the worker thread");
}

/// A thread-local first used before copas is destroyed after the dispatcher at thread exit,
/// and its destructor may still call copas: what needs the dispatcher and returns a `Result`
/// fails with `InvalidState`, the rest reports an empty dispatcher or works without one.
/// Before, each call panicked ("cannot access a Thread Local Storage value during or after
/// destruction"), which inside a destructor aborts the process. In a child process.
#[test]
fn a_thread_local_destroyed_after_the_dispatcher_may_still_call_copas() {
    const CHILD: &str = "COPAS_TEST_LATE_THREAD_LOCAL_CHILD";
    if util::is_child(CHILD) {
        struct CallsCopas;
        impl Drop for CallsCopas {
            fn drop(&mut self) {
                let kind = |r: copas::Result<()>| r.map_err(|e| e.kind());
                println!(
                    "step {:?}, run {:?}, addthread {:?}, waitforexit {:?}",
                    copas::step(Some(Duration::ZERO)).map_err(|e| e.kind()),
                    kind(copas::run()),
                    kind(copas::addthread(|| ()).map(drop)),
                    kind(copas::waitforexit()),
                );
                copas::exit();
                copas::cancelall();
                copas::shutdown(Duration::ZERO);
                println!(
                    "finished {}, exiting {}, running {}, current {:?}, coroutines {}",
                    copas::finished(),
                    copas::exiting(),
                    copas::running(),
                    copas::current(),
                    copas::coroutines().len(),
                );
                println!(
                    "status {:?}, paused at least 1 ms {}, name {:?}",
                    copas::status() == copas::Status::default(),
                    copas::pause(ms(1)) >= ms(1),
                    copas::getthreadname(None),
                );
                // Beyond the loop: what makes sockets, servers and coroutines fails; what
                // needs no dispatcher works.
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("addr");
                let peer = std::net::TcpStream::connect(addr).expect("std connect");
                println!(
                    "handle {:?}, offload {:?}, connect {:?}, wrap {:?}, udp {:?}",
                    copas::handle().map(drop).map_err(|e| e.kind()),
                    copas::offload(|| 7).map_err(|e| e.kind()),
                    copas::connect(addr, Some(ms(500)))
                        .map(drop)
                        .map_err(|e| e.kind()),
                    copas::wrap(peer).map(drop).map_err(|e| e.kind()),
                    copas::UdpSocket::bind("127.0.0.1:0")
                        .map(drop)
                        .map_err(|e| e.kind()),
                );
                let queue = copas::queue::Queue::new();
                let pushed = queue.push(1).is_ok();
                let lock = copas::lock::Lock::new(None, false);
                println!(
                    "addserver {:?}, timer {:?}, future {:?}, worker {:?}, queue {pushed} {:?}, lock {:?}",
                    copas::addserver(listener, |_| ()).map(drop).map_err(|e| e.kind()),
                    copas::timer::new(copas::timer::TimerOptions::new(ms(10)), |_| ())
                        .map(drop)
                        .map_err(|e| e.kind()),
                    copas::future::addthread(|| 1).map(drop).map_err(|e| e.kind()),
                    queue.add_worker(|_| ()).map(drop).map_err(|e| e.kind()),
                    queue.pop(Duration::ZERO).map_err(|e| e.kind()),
                    lock.get(Duration::ZERO).map_err(|e| e.kind()),
                );
            }
        }
        on_a_thread_with_a_late_thread_local(
            || Box::new(CallsCopas),
            || {
                copas::addthread(|| ()).expect("addthread");
                copas::run().expect("run");
            },
        );
        println!("child done");
        return;
    }
    let out = util::assert_child_passes(
        "a_thread_local_destroyed_after_the_dispatcher_may_still_call_copas",
        CHILD,
        "child done",
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "step Err(InvalidState), run Err(InvalidState), addthread Err(InvalidState), waitforexit Err(InvalidState)",
        "finished true, exiting true, running false, current None, coroutines 0",
        "status true, paused at least 1 ms true, name None",
        "handle Err(InvalidState), offload Ok(7), connect Err(InvalidState), wrap Err(InvalidState), udp Err(InvalidState)",
        "addserver Err(InvalidState), timer Err(InvalidState), future Err(InvalidState), worker Err(InvalidState), queue true Ok(1), lock Ok(0ns)",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
}

/// The same on a thread that named objects and made an HTTP request before: their tables
/// (object names, the last URL, the connection pool) are thread-locals destroyed before
/// such a destructor too. Before, creating a queue there, naming a lock or making a
/// request aborted the process (found by review round 13).
#[test]
fn a_late_thread_local_may_make_queues_and_requests_on_a_thread_that_did_before() {
    const CHILD: &str = "COPAS_TEST_LATE_TABLES_CHILD";
    if util::is_child(CHILD) {
        struct UsesTables(String);
        impl Drop for UsesTables {
            fn drop(&mut self) {
                let q: copas::queue::Queue<u32> = copas::queue::Queue::new();
                let lock = copas::lock::Lock::new(None, false);
                lock.set_name("late");
                println!(
                    "queue push {:?}, request {:?}, idle closed {}",
                    q.push(1).map_err(|e| e.kind()),
                    copas::client::http::request(&self.0)
                        .map(drop)
                        .map_err(|e| e.kind()),
                    copas::client::http::close_idle_connections(),
                );
            }
        }
        // A port nobody listens on.
        let (listener, addr) = util::local_listener();
        drop(listener);
        let url = format!("http://{addr}/");
        let late = url.clone();
        on_a_thread_with_a_late_thread_local(
            move || Box::new(UsesTables(late)),
            move || {
                let early: copas::queue::Queue<u32> = copas::queue::Queue::new();
                early.push(1).expect("push");
                let early = copas::client::http::request(&url).map(drop);
                assert_eq!(early.expect_err("refused").kind(), ErrorKind::Refused);
            },
        );
        println!("child done");
        return;
    }
    let out = util::assert_child_passes(
        "a_late_thread_local_may_make_queues_and_requests_on_a_thread_that_did_before",
        CHILD,
        "child done",
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("queue push Ok(()), request Err(InvalidState), idle closed 0"),
        "{stdout}"
    );
}

/// The same for what the dispatcher holds outside coroutines: a server's handler (its
/// server never accepted, so no coroutine was ever added) and the default error handler are
/// dropped while the dispatcher still exists, so their captures' destructors may call
/// copas. They were dropped from the dispatcher's own destructor, and the call aborted the
/// process. In a child process.
#[test]
fn handlers_captures_dropped_at_thread_exit_may_call_copas() {
    const CHILD: &str = "COPAS_TEST_HANDLERS_AT_EXIT_CHILD";
    if util::is_child(CHILD) {
        let server = std::thread::spawn(|| {
            let (listener, _) = util::local_listener();
            let capture = OnDrop(Some(Box::new(|| {
                println!(
                    "server handler dropped: servers {}",
                    copas::status().servers
                );
            })));
            copas::addserver(listener, move |_s| {
                let _c = &capture;
            })
            .expect("addserver");
            copas::step(Some(ms(1))).expect("step");
        });
        server.join().expect("the server thread");
        let handler = std::thread::spawn(|| {
            let capture = OnDrop(Some(Box::new(|| {
                println!("error handler dropped: exiting {}", copas::exiting());
            })));
            copas::setdefaulterrorhandler(move |_r| {
                let _c = &capture;
            });
            copas::addthread(|| ()).expect("addthread");
            copas::run().expect("run");
        });
        handler.join().expect("the handler thread");
        println!("child done");
        return;
    }
    let out = util::assert_child_passes(
        "handlers_captures_dropped_at_thread_exit_may_call_copas",
        CHILD,
        "child done",
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("server handler dropped: servers 0")
            && stdout.contains("error handler dropped: exiting "),
        "{stdout}"
    );
}

/// `removethread`'s promise: a removed coroutine cannot wait any more. A `pause` in a
/// destructor of its locals (a back-off before reporting, say) returns at once instead of
/// sleeping the thread every other coroutine runs on.
#[test]
fn a_pause_in_a_removed_coroutines_destructor_returns_at_once() {
    struct PauseOnDrop(Rc<Cell<Option<Duration>>>);
    impl Drop for PauseOnDrop {
        fn drop(&mut self) {
            self.0.set(Some(copas::pause(Duration::from_millis(1500))));
        }
    }
    let _dog = Watchdog::new("pause in a destructor", Duration::from_secs(20));
    let paused = Rc::new(Cell::new(None));
    let took = util::remove_coroutine_holding(PauseOnDrop(paused.clone()));
    assert_eq!(
        paused.get(),
        Some(Duration::ZERO),
        "the pause in the destructor"
    );
    assert!(took < ms(500), "removethread took {took:?}");
}

/// `cancelall` from outside any coroutine leaves nothing: a coroutine started by the
/// destructor of one it drops (a clean-up task) is cancelled too, as is the next one that
/// one's destructor starts.
#[test]
fn cancelall_outside_a_coroutine_also_cancels_what_destructors_start() {
    struct CleanUpOnDrop(Rc<Cell<u32>>);
    impl Drop for CleanUpOnDrop {
        fn drop(&mut self) {
            let started = self.0.clone();
            started.set(started.get() + 1);
            if started.get() < 3 {
                let next = CleanUpOnDrop(started);
                let _ = copas::addthread(move || {
                    let _next = next;
                    copas::pause(Duration::from_secs(60));
                });
            }
        }
    }
    let dropped = Rc::new(Cell::new(0));
    let guard = CleanUpOnDrop(dropped.clone());
    copas::addthread(move || {
        let _guard = guard;
        copas::pause(Duration::from_secs(60));
    })
    .unwrap();
    copas::step(Some(Duration::ZERO)).unwrap();
    copas::cancelall();
    // The first guard and the two coroutines its chain started, each of them dropped.
    assert_eq!(dropped.get(), 3);
    assert_eq!(copas::status().coroutines, 0, "{}", copas::dump());
    assert!(copas::finished());
}

/// `run` inside a host's `step` (here from the error handler the step calls) is refused
/// like `run` inside `run`, and changes nothing first: it used to call `exit` on the host's
/// behalf, setting `exiting` and releasing a `waitforexit` waiter of a program far from done.
#[test]
fn run_from_inside_a_hosts_step_is_refused_and_signals_no_exit() {
    let _dog = Watchdog::new("run inside a step", LIMIT);
    let outcome: Rc<RefCell<Vec<Result<(), ErrorKind>>>> = Rc::default();
    let o = outcome.clone();
    copas::setdefaulterrorhandler(move |_r| o.borrow_mut().push(util::kind(copas::run())));
    let released = Rc::new(Cell::new(false));
    let rel = released.clone();
    let waiter = copas::addthread(move || {
        let _ = copas::waitforexit();
        rel.set(true);
    })
    .expect("addthread");
    copas::addthread(|| util::unwind_quietly("boom".to_string())).expect("addthread");
    for _ in 0..5 {
        copas::step(Some(ms(1))).expect("step");
    }
    let exiting = copas::exiting();
    copas::removethread(waiter);
    assert_eq!(
        (outcome.borrow().clone(), exiting, released.get()),
        (vec![Err(ErrorKind::InvalidState)], false, false)
    );
}

/// `timeout` from a destructor that a coroutine's removal runs: the coroutine is going
/// away, so there is nothing to time, and the call fails with `Cancelled`, as its docs say
/// (and as the waits there do).
#[test]
fn timeout_from_a_coroutine_being_removed_is_cancelled() {
    struct ArmOnDrop(Rc<Cell<Option<Result<(), ErrorKind>>>>);
    impl Drop for ArmOnDrop {
        fn drop(&mut self) {
            let armed = copas::timeout(ms(10), |_| unreachable!("timed a removed coroutine"));
            self.0.set(Some(util::kind(armed)));
        }
    }
    let seen = Rc::new(Cell::new(None));
    let guard = ArmOnDrop(seen.clone());
    let co = copas::addthread(move || {
        let _guard = guard;
        copas::pauseforever();
    })
    .expect("addthread");
    copas::step(Some(Duration::ZERO)).expect("step");
    assert!(copas::removethread(co));
    assert_eq!(seen.get(), Some(Err(ErrorKind::Cancelled)));
    util::run_bounded(LIMIT);
}

/// Runs a closure when dropped: a capture whose destructor calls copas.
struct OnDrop(Option<Box<dyn FnOnce()>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A coroutine removed before it first ran has its captures dropped as a removed coroutine,
/// as one that had started does: they see no current coroutine of their own, a wait there
/// ends at once and a lock is neither taken nor released for someone else. Before, removed
/// from outside any coroutine, a `pause` in such a destructor slept the thread and a
/// `Lock::get` took the lock; removed from inside coroutine A, the destructor ran as A and
/// released A's lock.
#[test]
fn a_coroutine_removed_before_it_ran_drops_its_captures_as_removed_not_as_the_remover() {
    let _dog = Watchdog::new("unstarted removal", Duration::from_secs(30));
    let seen: Rc<RefCell<Vec<String>>> = Rc::default();
    let lock = copas::lock::Lock::default();
    // Removed from outside any coroutine.
    let (s, l) = (seen.clone(), lock.clone());
    let guard = OnDrop(Some(Box::new(move || {
        let started = Instant::now();
        let paused = copas::pause(Duration::from_millis(1500));
        s.borrow_mut().push(format!(
            "outside: pause {paused:?} waited {}",
            started.elapsed() > ms(500)
        ));
        s.borrow_mut()
            .push(format!("outside: get {:?}", util::kind(l.get(None))));
    })));
    let co = copas::addthread(move || {
        let _g = guard;
        copas::pauseforever();
    })
    .unwrap();
    assert!(copas::removethread(co));
    assert!(!lock.is_locked(), "the destructor took the lock");
    // Removed from inside coroutine A, which holds the lock.
    let (seen2, lock2) = (seen.clone(), lock.clone());
    copas::addthread(move || {
        let me = copas::current();
        lock2.get(None).unwrap();
        let (s, l) = (seen2.clone(), lock2.clone());
        let guard = OnDrop(Some(Box::new(move || {
            s.borrow_mut().push(format!(
                "inside: runs as the remover {}",
                copas::current() == me
            ));
            s.borrow_mut()
                .push(format!("inside: release {:?}", util::kind(l.release())));
        })));
        let b = copas::addthread(move || {
            let _g = guard;
            copas::pauseforever();
        })
        .unwrap();
        copas::removethread(b);
        seen2
            .borrow_mut()
            .push(format!("inside: A still owns {}", lock2.owner() == me));
        lock2.release().unwrap();
    })
    .unwrap();
    util::run_bounded(Duration::from_secs(20));
    assert_eq!(
        *seen.borrow(),
        [
            "outside: pause 0ns waited false",
            "outside: get Err(Cancelled)",
            "inside: runs as the remover false",
            "inside: release Err(NotOwned)",
            "inside: A still owns true",
        ]
    );
}

/// The worst case of the above: a destructor of a coroutine B, removed before it ran by
/// coroutine A, waited, which suspended A in the middle of `removethread`; removing A then
/// did not stop it (B's closure caught A's unwind) and A ran on. Now the wait ends at once,
/// A finishes its `removethread`, and removing A later stops it. In a child process: the
/// old behaviour could abort.
#[test]
fn a_wait_in_an_unstarted_coroutines_destructor_cannot_suspend_its_remover() {
    const CHILD: &str = "COPAS_TEST_UNSTARTED_REMOVER_CHILD";
    if util::is_child(CHILD) {
        let _dog = Watchdog::new("child", Duration::from_secs(10));
        let reports = util::record_panics();
        let steps = Rc::new(Cell::new(0u32));
        let counted = steps.clone();
        let a = copas::addthread(move || {
            let guard = OnDrop(Some(Box::new(|| {
                let _ = copas::pause(Duration::from_secs(3));
            })));
            let b = copas::addthread(move || {
                let _g = guard;
            })
            .unwrap();
            copas::removethread(b);
            loop {
                counted.set(counted.get() + 1);
                copas::pause(ms(10));
            }
        })
        .unwrap();
        copas::step(Some(ms(0))).unwrap();
        let before = steps.get();
        assert!(copas::removethread(a));
        util::run_bounded(Duration::from_secs(8));
        println!(
            "A ran on removal: {before}, after it: {}",
            steps.get() - before
        );
        println!("reports: {:?}", reports.borrow());
        return;
    }
    let out = util::run_child(
        "a_wait_in_an_unstarted_coroutines_destructor_cannot_suspend_its_remover",
        CHILD,
        Duration::from_secs(20),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("A ran on removal: 1, after it: 0")
            && stdout.contains("reports: []"),
        "status {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `run` and `step` called from a destructor while the thread unwinds a panic are refused
/// with `InvalidState` before anything runs: no coroutine could suspend then, so a `pause`
/// would return at once, a lock's `get` fail as cancelled, and a coroutine waiting in a
/// loop spin. The work stays for a later `run`, which does it properly.
#[test]
fn run_and_step_from_a_destructor_during_a_panic_are_refused_and_the_work_waits() {
    let paused = Rc::new(Cell::new(None));
    let p = paused.clone();
    copas::addthread(move || p.set(Some(copas::pause(ms(50))))).expect("addthread");
    let refused = Rc::new(RefCell::new(Vec::new()));
    let r = refused.clone();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _finish = OnDrop(Some(Box::new(move || {
            r.borrow_mut().push(util::kind(copas::run()));
            r.borrow_mut()
                .push(util::kind(copas::step(Some(Duration::ZERO))).map(drop));
        })));
        util::unwind_quietly("on the way out".to_string());
    }));
    assert!(caught.is_err());
    let refused_as = Err(ErrorKind::InvalidState);
    assert_eq!(*refused.borrow(), [refused_as, refused_as]);
    assert_eq!(
        paused.get(),
        None,
        "a coroutine ran while the thread panicked"
    );
    util::run_bounded(LIMIT);
    let slept = paused.get().expect("the later run ran it");
    assert!(slept >= ms(45), "pause(50 ms) returned after {slept:?}");
}
