//! `copas::future`: a port of Copas's `future.lua` (each of its cases), and what the port
//! adds: a panicking task gives a failed future carrying the panic's message (without
//! reaching the error handler), a task removed by other means gives a cancelled future, and
//! a waiter that goes away leaves the line.
//!
//! Every test runs on its own thread, so it has its own dispatcher; every loop is bounded by
//! a watchdog, and timing assertions have generous upper bounds.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::future::{self, State};
use copas::ErrorKind;
use util::ms;
use util::{kind, run_bounded, Watchdog};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `init` as the initializer and the loop to its end, under a watchdog; fails the test
/// unless `init` ran to its end.
fn run_to_completion(init: impl FnOnce() + 'static) -> Duration {
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    let _dog = Watchdog::new("copas::run_with", LIMIT);
    let start = Instant::now();
    copas::run_with(move || {
        init();
        finished.set(true);
    })
    .expect("run_with");
    assert!(done.get(), "the test body did not complete");
    start.elapsed()
}

// ----- future.lua ---------------------------------------------------------------------------

#[test]
fn future_lua_get_waits_and_returns_the_results() {
    run_to_completion(|| {
        let f = future::addthread(|| {
            copas::pause(ms(50));
            ("hello", "world")
        })
        .unwrap();
        let start = Instant::now();
        assert_eq!(f.get().unwrap(), ("hello", "world"));
        assert!(start.elapsed() >= ms(50));
    });
}

#[test]
fn future_lua_get_returns_the_error_of_a_failing_task() {
    let panics = util::record_panics();
    run_to_completion(|| {
        let f = future::addthread(|| -> i32 { panic!("boom") }).unwrap();
        let err = f.get().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked);
        assert_eq!(err.message(), Some("boom"));
        assert!(err.to_string().contains("boom"), "{err}");
    });
    assert!(
        panics.borrow().is_empty(),
        "a future's panic is its result, not the error handler's: {:?}",
        panics.borrow()
    );
}

#[test]
fn future_lua_get_is_idempotent() {
    run_to_completion(|| {
        let f = future::addthread(|| 42).unwrap();
        assert_eq!(f.get().unwrap(), 42);
        assert_eq!(f.get().unwrap(), 42);
    });
}

// future.lua's "callable future" (`f()` as `f:get()`) has no Rust form: `get` is the call.

#[test]
fn future_lua_five_waiters_all_receive_the_result() {
    run_to_completion(|| {
        let f = future::addthread(|| {
            copas::pause(ms(100));
            "shared".to_string()
        })
        .unwrap();
        let results = Rc::new(RefCell::new(vec![None; 5]));
        for i in 0..5 {
            let (f, results) = (f.clone(), results.clone());
            copas::addthread(move || {
                let value = f.get().unwrap();
                results.borrow_mut()[i] = Some(value);
            })
            .unwrap();
        }
        copas::pause(ms(300));
        for (i, r) in results.borrow().iter().enumerate() {
            assert_eq!(r.as_deref(), Some("shared"), "waiter {i}");
        }
    });
}

#[test]
fn future_lua_try_is_pending_while_the_task_runs() {
    run_to_completion(|| {
        let f = future::addthread(|| {
            copas::pause(ms(200));
            "done"
        })
        .unwrap();
        assert_eq!(f.try_get(), State::Pending);
        assert!(!f.is_done());
        f.get().unwrap();
        assert!(f.is_done());
    });
}

#[test]
fn future_lua_try_gives_the_results_after_success() {
    run_to_completion(|| {
        let f = future::addthread(|| (1, 2, 3)).unwrap();
        f.get().unwrap();
        assert_eq!(f.try_get(), State::Ready((1, 2, 3)));
    });
}

#[test]
fn future_lua_try_gives_the_error_after_a_failure() {
    util::record_panics();
    run_to_completion(|| {
        let f = future::addthread(|| -> u8 { panic!("oh no") }).unwrap();
        let _ = f.get();
        assert_eq!(
            f.try_get(),
            State::Failed(ErrorKind::Panicked, Some("oh no".to_string()))
        );
    });
}

#[test]
fn future_lua_cancel_a_pending_task() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    run_to_completion(move || {
        let f = future::addthread(move || {
            copas::pause(Duration::from_secs(5));
            r.set(true);
            "should not reach"
        })
        .unwrap();
        assert!(f.cancel(), "a pending task is cancelled");
        assert_eq!(kind(f.get()), Err(ErrorKind::Cancelled));
        copas::pause(ms(100));
    });
    assert!(!ran.get(), "the body must not run after cancel");
}

#[test]
fn future_lua_try_after_cancel_is_an_error() {
    let took = run_to_completion(|| {
        let f = future::addthread(|| {
            copas::pause(Duration::from_secs(5));
        })
        .unwrap();
        f.cancel();
        assert_eq!(f.try_get(), State::Failed(ErrorKind::Cancelled, None));
    });
    assert!(
        took < Duration::from_secs(4),
        "the cancelled task kept the loop: {took:?}"
    );
}

#[test]
fn future_lua_cancel_after_completion_returns_false() {
    run_to_completion(|| {
        let f = future::addthread(|| "done").unwrap();
        f.get().unwrap();
        assert!(!f.cancel());
        assert_eq!(f.get().unwrap(), "done");
    });
}

#[test]
fn future_lua_addnamedthread() {
    run_to_completion(|| {
        let f = future::addnamedthread("test-task", || copas::getthreadname(None)).unwrap();
        assert_eq!(f.get().unwrap().as_deref(), Some("test-task"));
    });
}

// future.lua's typo guard (`future.PNEDING` raises an error naming the field) is a compile
// error in Rust; see the `compile_fail` doctest of `copas::future`.

// ----- beyond future.lua --------------------------------------------------------------------

#[test]
fn cancel_releases_waiters_blocked_in_get() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    run_to_completion(move || {
        let f = future::addthread(|| {
            copas::pause(Duration::from_secs(10));
            1
        })
        .unwrap();
        for _ in 0..3 {
            let (f, s) = (f.clone(), s.clone());
            copas::addthread(move || {
                let outcome = kind(f.get()); // no borrow of `s` across the wait
                s.borrow_mut().push(outcome);
            })
            .unwrap();
        }
        copas::pause(ms(20));
        assert!(f.cancel());
        copas::pause(ms(20));
    });
    assert_eq!(*seen.borrow(), [Err(ErrorKind::Cancelled); 3]);
}

#[test]
fn a_task_removed_by_removethread_gives_a_cancelled_future() {
    run_to_completion(|| {
        let f = future::addthread(|| {
            copas::pause(Duration::from_secs(10));
            1
        })
        .unwrap();
        let task = f.coroutine().expect("task coroutine");
        copas::pause(ms(10)); // it has started and sleeps
        let waiter = {
            let f = f.clone();
            future::addthread(move || kind(f.get())).unwrap()
        };
        copas::pause(ms(10));
        assert!(copas::removethread(task));
        assert_eq!(waiter.get().unwrap(), Err(ErrorKind::Cancelled));
        assert_eq!(f.try_get(), State::Failed(ErrorKind::Cancelled, None));
        assert_eq!(f.coroutine(), None);
    });
}

#[test]
fn a_removed_waiter_leaves_and_the_others_still_get_the_value() {
    let got = Rc::new(Cell::new(0));
    let g = got.clone();
    run_to_completion(move || {
        let f = future::addthread(|| {
            copas::pause(ms(50));
            7
        })
        .unwrap();
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let (f, g) = (f.clone(), g.clone());
            waiters.push(
                copas::addthread(move || {
                    assert_eq!(f.get().unwrap(), 7);
                    g.set(g.get() + 1);
                })
                .unwrap(),
            );
        }
        copas::pause(ms(10));
        copas::removethread(waiters[0]);
        assert_eq!(f.get().unwrap(), 7);
        copas::pause(ms(10));
    });
    assert_eq!(got.get(), 1);
}

#[test]
fn outside_a_coroutine_get_returns_only_what_is_there() {
    let f = future::addthread(|| vec![1, 2]).unwrap();
    assert_eq!(kind(f.get()), Err(ErrorKind::InvalidState));
    assert_eq!(f.try_get(), State::Pending);
    run_bounded(LIMIT);
    assert_eq!(f.get().unwrap(), [1, 2]);
    assert!(format!("{f:?}").contains("ready"));
}

#[test]
fn a_future_nobody_completes_does_not_keep_the_loop_alive() {
    let f = future::addthread(|| {
        copas::pauseforever();
    })
    .unwrap();
    let g = f.clone();
    copas::addthread(move || {
        let _ = g.get();
    })
    .unwrap();
    let took = run_bounded(LIMIT);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(f.try_get(), State::Pending);
    copas::cancelall();
    assert_eq!(f.try_get(), State::Failed(ErrorKind::Cancelled, None));
}

/// A task that does network work returns a `copas::Result`; `get` hands it to every waiter,
/// error included. Before `Error` was `Clone`, `Future<copas::Result<_>>::get` did not compile.
/// Here the peer sends half a line and resets: both waiters get `Closed`, the half line, and
/// the same system error.
#[test]
fn a_task_returning_a_copas_result_hands_its_error_to_every_waiter() {
    let (listener, addr) = util::local_listener();
    let peer = std::thread::spawn(move || {
        use std::io::Write;
        let (mut conn, _) = listener.accept().expect("accept");
        conn.write_all(b"half a li").expect("write");
        std::thread::sleep(ms(100));
        // A zero linger turns the close into a reset.
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
    });
    let seen = Rc::new(RefCell::new(Vec::new()));
    let record = seen.clone();
    run_to_completion(move || {
        let f = future::addthread(move || -> copas::Result<Vec<u8>> {
            let mut sock = copas::connect(addr, Some(LIMIT))?;
            sock.receive(copas::Pattern::Line)
        })
        .unwrap();
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let (f, record) = (f.clone(), record.clone());
            waiters.push(
                future::addthread(move || {
                    let outcome = f.get();
                    record.borrow_mut().push(outcome);
                })
                .unwrap(),
            );
        }
        for w in waiters {
            w.get().unwrap();
        }
    });
    peer.join().unwrap();
    let seen = seen.borrow();
    assert_eq!(seen.len(), 2);
    for outcome in seen.iter() {
        let task_result = outcome.as_ref().expect("the task ran to its end");
        let err = task_result.as_ref().expect_err("the peer reset mid-line");
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        assert_eq!(err.partial(), b"half a li");
        assert_eq!(
            err.io_error().map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionReset),
            "{err:?}"
        );
    }
}

// ----- get_timeout (beyond Copas) -------------------------------------------------------------

#[test]
fn get_timeout_gives_timeout_when_the_task_is_slower_and_the_task_runs_on() {
    let outcome = Rc::new(RefCell::new(Vec::new()));
    let seen = outcome.clone();
    run_to_completion(move || {
        let f = future::addthread(|| {
            copas::pause(ms(200));
            7u32
        })
        .expect("future");
        let waiter = f.clone();
        copas::addthread(move || {
            let start = Instant::now();
            let first = waiter.get_timeout(ms(50));
            let waited = start.elapsed();
            let second = waiter.get_timeout(copas::FOREVER);
            seen.borrow_mut()
                .push((first.map_err(|e| e.kind()), waited, second.ok()));
        })
        .expect("addthread");
    });
    let outcome = outcome.borrow();
    let (first, waited, second) = &outcome[0];
    assert_eq!(*first, Err(ErrorKind::Timeout));
    assert!(
        *waited >= ms(50) && *waited < ms(180),
        "timed out after {waited:?}"
    );
    assert_eq!(
        *second,
        Some(7),
        "the task ran on and the next wait got its value"
    );
}

#[test]
fn get_timeout_returns_the_value_when_the_task_finishes_in_time() {
    let got = Rc::new(Cell::new(None));
    let seen = got.clone();
    run_to_completion(move || {
        let f = future::addthread(|| {
            copas::pause(ms(20));
            "done"
        })
        .expect("future");
        copas::addthread(move || seen.set(Some(f.get_timeout(util::secs(5))))).expect("addthread");
    });
    assert_eq!(got.take().map(|r| r.ok()), Some(Some("done")));
}

#[test]
fn get_timeout_of_zero_only_looks() {
    let results = Rc::new(RefCell::new(Vec::new()));
    let seen = results.clone();
    run_to_completion(move || {
        let f = future::addthread(|| {
            copas::pause(ms(20));
            1u8
        })
        .expect("future");
        // Outside a coroutine too: a zero timeout never waits.
        seen.borrow_mut()
            .push(f.get_timeout(Duration::ZERO).map_err(|e| e.kind()));
        copas::addthread(move || {
            seen.borrow_mut()
                .push(f.get_timeout(Duration::ZERO).map_err(|e| e.kind()));
            copas::pause(ms(60));
            seen.borrow_mut()
                .push(f.get_timeout(Duration::ZERO).map_err(|e| e.kind()));
        })
        .expect("addthread");
    });
    assert_eq!(
        *results.borrow(),
        vec![Err(ErrorKind::Timeout), Err(ErrorKind::Timeout), Ok(1)]
    );
}

#[test]
fn waiters_that_timed_out_leave_the_line_and_the_rest_get_the_value() {
    let results = Rc::new(RefCell::new(Vec::new()));
    let seen = results.clone();
    run_to_completion(move || {
        let f = future::addthread(|| {
            copas::pause(ms(100));
            5i64
        })
        .expect("future");
        for (i, wait) in [ms(10), util::secs(5), ms(20), copas::FOREVER]
            .into_iter()
            .enumerate()
        {
            let (f, seen) = (f.clone(), seen.clone());
            copas::addthread(move || {
                let r = f.get_timeout(wait).map_err(|e| e.kind());
                seen.borrow_mut().push((i, r));
            })
            .expect("addthread");
        }
    });
    let mut results = results.borrow().clone();
    results.sort_by_key(|(i, _)| *i);
    assert_eq!(
        results,
        vec![
            (0, Err(ErrorKind::Timeout)),
            (1, Ok(5)),
            (2, Err(ErrorKind::Timeout)),
            (3, Ok(5))
        ]
    );
}
