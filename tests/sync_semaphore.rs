//! `copas::semaphore`: a port of Copas's `semaphore.lua` (with its timings and counts,
//! including issue #118: a destroyed semaphore's pending timeouts never fire), strict FIFO
//! service, waiters that go away, and 20,000 coroutines sharing 10 permits.
//!
//! Every test runs on its own thread, so it has its own dispatcher; every loop is bounded by
//! a watchdog, and timing assertions have generous upper bounds.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::semaphore::Semaphore;
use copas::ErrorKind;
use util::ms;
use util::{kind, run_bounded, run_with_bounded, suspended_during};

const LIMIT: Duration = Duration::from_secs(30);

// ----- semaphore.lua ------------------------------------------------------------------------

#[test]
fn semaphore_lua() {
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    run_with_bounded(LIMIT, move || {
        let sema = Semaphore::new(10, 5, Duration::from_secs(1));
        assert_eq!(sema.get_count().unwrap(), 5);

        sema.take(3, None).unwrap();
        assert_eq!(sema.get_count().unwrap(), 2);

        let (r, waited) = suspended_during(|| kind(sema.take(3, Duration::ZERO)));
        assert_eq!(r, Err(ErrorKind::Timeout)); // 1 too many
        assert!(!waited, "a zero timeout must not wait");

        let (r, waited) = suspended_during(|| kind(sema.take(10, Duration::ZERO)));
        assert_eq!(r, Err(ErrorKind::Timeout));
        assert!(!waited, "a zero timeout must not wait");

        let (r, waited) = suspended_during(|| kind(sema.take(11, None)));
        assert_eq!(r, Err(ErrorKind::TooMany)); // more than max
        assert!(!waited, "too many must not wait");

        let start = Instant::now();
        assert_eq!(kind(sema.take(10, None)), Err(ErrorKind::Timeout)); // the 1 s default
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        assert_eq!(sema.get_count().unwrap(), 2);

        // Waiters are served in order.
        let state = Rc::new(Cell::new(0));
        for add in [1, 2] {
            let (sema, state) = (sema.clone(), state.clone());
            copas::addthread(move || {
                sema.take(5, None).expect("take 5");
                state.set(state.get() + add);
            })
            .unwrap();
        }
        copas::pause(ms(100));
        assert_eq!(state.get(), 0, "nobody served yet");
        assert_eq!(sema.get_count().unwrap(), 2, "still 2 available");

        sema.give(4).unwrap();
        assert_eq!(
            sema.get_count().unwrap(),
            1,
            "6 available, 5 handed to the first"
        );
        copas::pause(ms(100));
        assert_eq!(state.get(), 1, "the first was served");

        sema.give(4).unwrap();
        assert_eq!(
            sema.get_count().unwrap(),
            0,
            "5 available, all handed to the second"
        );
        copas::pause(ms(100));
        assert_eq!(state.get(), 3, "the second was served");

        assert_eq!(kind(sema.give(100)), Err(ErrorKind::TooMany));
        assert_eq!(sema.get_count().unwrap(), 10, "capped at the maximum");

        // Destroying releases the waiters with "destroyed".
        sema.take(sema.get_count().unwrap(), None).unwrap();
        assert_eq!(sema.get_count().unwrap(), 0);
        let state = Rc::new(Cell::new(0));
        for _ in 0..2 {
            let (sema, state) = (sema.clone(), state.clone());
            copas::addthread(move || match kind(sema.take(5, None)) {
                Err(ErrorKind::Destroyed) => state.set(state.get() + 1),
                other => panic!("expected destroyed, got {other:?}"),
            })
            .unwrap();
        }
        copas::pause(ms(100));
        sema.destroy().unwrap();
        copas::pause(ms(100));
        assert_eq!(state.get(), 2, "both waiters failed with destroyed");

        // Only errors from now on, from every method.
        assert_eq!(kind(sema.destroy()), Err(ErrorKind::Destroyed));
        assert_eq!(kind(sema.give(1)), Err(ErrorKind::Destroyed));
        assert_eq!(kind(sema.take(1, None)), Err(ErrorKind::Destroyed));
        assert_eq!(kind(sema.get_count()), Err(ErrorKind::Destroyed));
        assert_eq!(kind(sema.get_wait()), Err(ErrorKind::Destroyed));

        // Issue #118: timeouts are cancelled on destruction; the 0.5 s one must not fire.
        let sema = Semaphore::new(10, 0, ms(500));
        let state = Rc::new(Cell::new(0));
        {
            let (sema, state) = (sema.clone(), state.clone());
            copas::addthread(move || match kind(sema.take(1, None)) {
                Err(ErrorKind::Destroyed) => state.set(state.get() + 1),
                other => panic!("expected destroyed, got {other:?}"),
            })
            .unwrap();
        }
        copas::pause(ms(100));
        sema.destroy().unwrap();
        copas::pause(ms(100));
        assert_eq!(state.get(), 1, "the waiter failed with destroyed");
        drop(sema);
        let errors = Rc::new(Cell::new(0));
        let e = errors.clone();
        copas::setdefaulterrorhandler(move |report| {
            eprintln!("unexpected error: {report}");
            e.set(e.get() + 1);
        });
        copas::pause(ms(500)); // the timeout would have expired by now
        assert_eq!(errors.get(), 0, "expected no errors");
        assert_eq!(copas::status().timer, 0, "no deadline is left pending");
        finished.set(true);
    });
    assert!(done.get(), "the test body did not complete");
}

// ----- beyond semaphore.lua -----------------------------------------------------------------

#[test]
fn destroying_cancels_waiters_deadlines_so_the_loop_ends_at_once() {
    let took = run_with_bounded(LIMIT, || {
        let sema = Semaphore::new(3, 0, Duration::from_secs(60));
        let s = sema.clone();
        copas::addthread(move || assert_eq!(kind(s.take(3, None)), Err(ErrorKind::Destroyed)))
            .unwrap();
        // More than could ever be served under max is woken too (Copas leaves it to time out).
        let s = sema.clone();
        copas::addthread(move || assert_eq!(kind(s.take(2, None)), Err(ErrorKind::Destroyed)))
            .unwrap();
        copas::pause(ms(50));
        assert_eq!(sema.waiting(), 2);
        sema.destroy().unwrap();
    });
    assert!(
        took < Duration::from_secs(5),
        "a 60 s deadline kept the loop: {took:?}"
    );
}

#[test]
fn strict_fifo_a_large_request_at_the_head_holds_back_small_ones() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    run_with_bounded(LIMIT, move || {
        let sema = Semaphore::new(10, 0, None);
        for (name, n) in [("big", 5), ("small", 1)] {
            let (sema, log) = (sema.clone(), l.clone());
            copas::addthread(move || {
                sema.take(n, None).unwrap();
                log.borrow_mut().push(name);
            })
            .unwrap();
        }
        copas::pause(ms(10));
        assert_eq!(sema.get_wait().unwrap(), 6);
        sema.give(1).unwrap();
        copas::pause(ms(10));
        assert!(
            l.borrow().is_empty(),
            "the small request must not pass the big one"
        );
        assert_eq!(sema.get_count().unwrap(), 1);
        // A newcomer that could be served from what is there queues too.
        assert_eq!(kind(sema.take(1, Duration::ZERO)), Err(ErrorKind::Timeout));
        sema.give(sema.get_wait().unwrap()).unwrap();
        copas::pause(ms(10));
        assert_eq!(sema.get_count().unwrap(), 0);
        assert_eq!(sema.get_wait().unwrap(), 0);
    });
    assert_eq!(*log.borrow(), ["big", "small"]);
}

#[test]
fn a_head_that_times_out_lets_the_next_be_served_from_what_is_there() {
    let served_after = Rc::new(Cell::new(None));
    let s2 = served_after.clone();
    run_with_bounded(LIMIT, move || {
        let sema = Semaphore::new(10, 1, None);
        let s = sema.clone();
        copas::addthread(move || assert_eq!(kind(s.take(5, ms(100))), Err(ErrorKind::Timeout)))
            .unwrap();
        let s = sema.clone();
        let start = Instant::now();
        copas::addthread(move || {
            s.take(1, Duration::from_secs(5)).unwrap();
            s2.set(Some(start.elapsed()));
        })
        .unwrap();
        copas::pause(ms(300));
        assert_eq!(sema.get_count().unwrap(), 0);
    });
    let after = served_after.get().expect("the second waiter was served");
    assert!(
        after >= ms(100) && after < Duration::from_secs(2),
        "{after:?}"
    );
}

#[test]
fn a_removed_waiter_leaves_the_line_and_permits_handed_to_it_come_back() {
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    run_with_bounded(LIMIT, move || {
        let sema = Semaphore::new(10, 0, None);
        let spawn = |n: usize| {
            let s = sema.clone();
            copas::addthread(move || {
                s.take(n, None).unwrap();
                panic!("a removed waiter must never run on");
            })
            .unwrap()
        };
        let a = spawn(4);
        let b = spawn(2);
        copas::pause(ms(10));
        assert_eq!(sema.waiting(), 2);
        assert_eq!(sema.get_wait().unwrap(), 6);
        copas::removethread(a);
        copas::pause(Duration::ZERO);
        assert_eq!(sema.waiting(), 1);
        assert_eq!(sema.get_wait().unwrap(), 2);
        // Handed to b, which is removed before it can run: the permits come back.
        sema.give(2).unwrap();
        assert_eq!(sema.get_count().unwrap(), 0);
        copas::removethread(b);
        copas::pause(Duration::ZERO);
        assert_eq!(sema.get_count().unwrap(), 2);
        assert_eq!(sema.waiting(), 0);
        finished.set(true);
    });
    assert!(done.get());
}

#[test]
fn twenty_thousand_coroutines_share_ten_permits_and_the_loop_exits() {
    const COROUTINES: usize = 20_000;
    const PERMITS: usize = 10;
    let sema = Semaphore::new(PERMITS, PERMITS, None);
    let holding = Rc::new(Cell::new(0usize));
    let most = Rc::new(Cell::new(0usize));
    let completed = Rc::new(Cell::new(0usize));
    for _ in 0..COROUTINES {
        let (sema, holding, most, completed) = (
            sema.clone(),
            holding.clone(),
            most.clone(),
            completed.clone(),
        );
        copas::addthread(move || {
            sema.take(1, None).expect("take");
            holding.set(holding.get() + 1);
            most.set(most.get().max(holding.get()));
            copas::pause(Duration::ZERO); // hold it across a step
            holding.set(holding.get() - 1);
            sema.give(1).expect("give");
            completed.set(completed.get() + 1);
        })
        .unwrap();
    }
    let took = run_bounded(Duration::from_secs(120));
    assert_eq!(completed.get(), COROUTINES);
    assert_eq!(most.get(), PERMITS, "never more holders than permits");
    assert_eq!(sema.get_count().unwrap(), PERMITS);
    assert_eq!(sema.waiting(), 0);
    assert_eq!(copas::status().coroutines, 0);
    eprintln!("{COROUTINES} coroutines through {PERMITS} permits in {took:?}");
}

#[test]
fn outside_a_coroutine_take_succeeds_or_fails_but_never_waits() {
    let sema = Semaphore::new(2, 1, None);
    sema.take(1, None).unwrap();
    assert_eq!(kind(sema.take(1, Duration::ZERO)), Err(ErrorKind::Timeout));
    assert_eq!(kind(sema.take(1, None)), Err(ErrorKind::InvalidState));
    sema.give(2).unwrap();
    assert_eq!(sema.get_count().unwrap(), 2);
}

#[test]
fn a_waiter_handed_its_permits_but_not_yet_run_gets_destroyed_as_in_copas() {
    let outcome = Rc::new(Cell::new(None));
    let o = outcome.clone();
    run_with_bounded(LIMIT, move || {
        let sema = Semaphore::new(5, 0, None);
        let s = sema.clone();
        copas::addthread(move || o.set(Some(kind(s.take(2, None))))).unwrap();
        copas::pause(ms(10));
        sema.give(2).unwrap(); // handed over; the taker runs in the next step
        sema.destroy().unwrap();
        copas::pause(ms(10));
    });
    assert_eq!(outcome.get(), Some(Err(ErrorKind::Destroyed)));
}

/// What the waiters ask for together can exceed `usize::MAX` (a semaphore whose maximum is
/// `usize::MAX`, two waiters each asking for all of it): `get_wait` saturates instead of
/// overflowing (a panic in debug builds, a wrong count in release ones).
#[test]
fn get_wait_saturates_when_the_waiters_ask_for_more_than_a_usize_holds() {
    let s = Semaphore::new(usize::MAX, 0, None);
    for _ in 0..2 {
        let s = s.clone();
        copas::addthread(move || {
            let _ = s.take(usize::MAX, ms(100));
        })
        .unwrap();
    }
    let wanted = Rc::new(Cell::new(None));
    let wanted2 = wanted.clone();
    let s2 = s.clone();
    copas::addthread(move || {
        copas::pause(ms(10));
        wanted2.set(Some(kind(s2.get_wait())));
    })
    .unwrap();
    run_bounded(LIMIT);
    assert_eq!(wanted.get(), Some(Ok(usize::MAX)));
}

/// CPU time of `n` calls to `get_wait` while `n` coroutines wait in line.
fn asking_get_wait_while_waiting(n: usize) -> Duration {
    copas::set_pooled_stacks(n);
    let s = Semaphore::new(n, 0, None);
    for _ in 0..n {
        let s = s.clone();
        copas::addthread(move || {
            let _ = s.take(1, None);
        })
        .unwrap();
    }
    for _ in 0..100 {
        if s.waiting() == n {
            break;
        }
        copas::step(Some(Duration::ZERO)).unwrap();
    }
    assert_eq!(s.waiting(), n, "not all coroutines queued");
    let started = util::thread_cpu_time();
    for _ in 0..n {
        assert_eq!(s.get_wait().unwrap(), n);
    }
    let took = util::thread_cpu_time() - started;
    s.destroy().unwrap();
    run_bounded(LIMIT);
    copas::set_pooled_stacks(1024); // the default
    took
}

/// `get_wait` costs the same however many wait, so a coroutine that asks it each time
/// round a loop over the line does not go quadratic (it summed the whole line: 8 times as
/// many waiters asking 8 times as often took about 64 times as long, not 8).
#[test]
fn get_wait_costs_the_same_however_many_wait() {
    let _dog = util::Watchdog::new("get_wait growth", Duration::from_secs(120));
    let least = |n| {
        (0..3)
            .map(|_| asking_get_wait_while_waiting(n))
            .min()
            .unwrap()
    };
    let (small, big) = (least(2_000), least(16_000));
    let growth = big.as_secs_f64() / small.as_secs_f64().max(1e-3);
    eprintln!("get_wait: 2,000: {small:?}, 16,000: {big:?}, x{growth:.1}");
    assert!(growth < 24.0, "x{growth:.1} for 8 times as many");
}

#[test]
fn a_waiter_removed_by_another_coroutine_leaves_the_line_before_the_removal_returns() {
    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    run_with_bounded(LIMIT, move || {
        let sem = Semaphore::new(3, 1, None);
        let sem2 = sem.clone();
        let waiter = copas::addthread(move || {
            let _ = sem2.take(3, Duration::from_secs(30)); // one permit of three
        })
        .unwrap();
        copas::pause(ms(5));
        assert_eq!(sem.waiting(), 1);
        assert!(copas::removethread(waiter));
        // Before: the removed waiter still stood in line until the end of the step, and
        // its place refused a take that nobody alive waited before.
        let take = kind(sem.take(1, Duration::ZERO));
        *s.borrow_mut() = Some((sem.waiting(), take, sem.get_count().unwrap()));
    });
    assert_eq!(seen.borrow_mut().take(), Some((0, Ok(()), 0)));
}

// ----- the permit guard (beyond Copas) ------------------------------------------------------

#[test]
fn permits_from_acquire_come_back_when_the_holder_panics_and_serve_the_next_waiter() {
    let served = Rc::new(Cell::new(false));
    let served2 = served.clone();
    run_with_bounded(LIMIT, move || {
        copas::seterrorhandler(|_| {}); // the panic below is expected
        let sema = Semaphore::new(3, 3, None);
        let holder = sema.clone();
        copas::addthread(move || {
            let permits = holder.acquire(3, None).expect("permits");
            assert_eq!(permits.count(), 3);
            copas::pause(ms(20));
            panic!("the holder fails while holding the permits");
        })
        .unwrap();
        copas::pause(ms(5));
        assert_eq!(sema.get_count().unwrap(), 0);
        sema.take(2, Duration::from_secs(5))
            .expect("the guard gave the permits back");
        assert_eq!(sema.get_count().unwrap(), 1);
        served2.set(true);
    });
    assert!(served.get());
}

#[test]
fn permits_from_acquire_come_back_when_the_coroutine_is_removed_and_forget_keeps_them() {
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    run_with_bounded(LIMIT, move || {
        let sema = Semaphore::new(4, 4, None);
        let holder = sema.clone();
        let co = copas::addthread(move || {
            let _permits = holder.acquire(3, None).expect("permits");
            copas::pauseforever();
        })
        .unwrap();
        copas::pause(ms(5));
        assert_eq!(sema.get_count().unwrap(), 1);
        assert!(copas::removethread(co));
        copas::pause(Duration::ZERO); // the removal unwinds at the end of the step
        assert_eq!(sema.get_count().unwrap(), 4);

        sema.acquire(2, None).unwrap().forget();
        assert_eq!(sema.get_count().unwrap(), 2, "forgotten permits stay taken");
        // Dropped after a destroy: nothing happens, nothing panics.
        let permits = sema.acquire(1, None).unwrap();
        sema.destroy().unwrap();
        drop(permits);
        assert_eq!(kind(sema.get_count()), Err(ErrorKind::Destroyed));
        finished.set(true);
    });
    assert!(done.get(), "the test body did not complete");
}

/// `give(get_wait()?)` serves everyone in line when their requests fit under the maximum
/// together; when they do not, the `give` is capped at the maximum (`TooMany`) and serves
/// the head only, as the rustdoc of `get_wait` says.
#[test]
fn give_of_get_wait_serves_everyone_only_when_the_line_fits_under_the_maximum() {
    let outcome = Rc::new(RefCell::new(Vec::new()));
    let out = outcome.clone();
    run_with_bounded(LIMIT, move || {
        for asks in [[1usize, 2], [3, 1]] {
            let s = Semaphore::new(3, 0, copas::FOREVER);
            let served = Rc::new(Cell::new(0));
            for n in asks {
                let (s, served) = (s.clone(), served.clone());
                copas::addthread(move || {
                    if s.take(n, ms(300)).is_ok() {
                        served.set(served.get() + 1);
                    }
                })
                .unwrap();
            }
            copas::pause(ms(5));
            let wait = s.get_wait().unwrap();
            let given = kind(s.give(wait));
            copas::pause(ms(5));
            out.borrow_mut()
                .push((asks, wait, given, served.get(), s.waiting()));
        }
    });
    assert_eq!(
        *outcome.borrow(),
        [
            ([1, 2], 3, Ok(()), 2, 0),
            ([3, 1], 4, Err(ErrorKind::TooMany), 1, 1),
        ]
    );
}
