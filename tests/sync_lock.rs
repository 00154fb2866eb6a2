//! `copas::lock`: a port of Copas's `lock.lua` (with its timings and counts), and the
//! properties Copas lacks: a zero-timeout `get` leaves no trace (reference §4.6), the line is
//! first come first served, and a waiter that goes away leaves it at once.
//!
//! Every test runs on its own thread, so it has its own dispatcher; every loop is bounded by
//! a watchdog, and timing assertions have generous upper bounds.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::lock::Lock;
use copas::{ErrorKind, FOREVER};
use util::{kind, run_bounded, run_with_bounded, suspended_during};
use util::{ms, secs};

const LIMIT: Duration = Duration::from_secs(30);

// ----- lock.lua -----------------------------------------------------------------------------

#[test]
fn lock_lua_non_reentrant_owner_times_out_then_release_and_destroy() {
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    run_with_bounded(LIMIT, move || {
        let lock = Lock::new(None, true); // not re-entrant
        lock.get(None).expect("first get");
        let start = Instant::now();
        assert_eq!(kind(lock.get(secs(1))), Err(ErrorKind::Timeout));
        let waited = start.elapsed();
        // Never early; late only by how busy the machine is.
        assert!(
            waited >= secs(1) && waited < secs(3),
            "expected a 1 s timeout, took {waited:?}"
        );

        // Let go and take again.
        lock.release().expect("release");
        assert_eq!(kind(lock.release()), Err(ErrorKind::NotOwned));
        assert_eq!(
            lock.release().unwrap_err().to_string(),
            "cannot release a lock not owned"
        );
        lock.get(None).expect("get again");
        lock.destroy().expect("destroy");
        assert_eq!(kind(lock.release()), Err(ErrorKind::Destroyed));
        finished.set(true);
    });
    assert!(done.get(), "the test body did not complete");
}

#[test]
fn lock_lua_750_contenders_end_250_acquired_250_timed_out_250_destroyed() {
    const SIZE: usize = 750; // a multiple of 3
    #[derive(Default)]
    struct Tally {
        acquired: Cell<usize>,
        timed_out: Cell<usize>,
        destroyed: Cell<usize>,
        running: Cell<usize>,
    }
    let tally = Rc::new(Tally::default());
    let t = tally.clone();
    let took = run_with_bounded(LIMIT, move || {
        let lock = Lock::new(secs(10), false);
        lock.get(None).expect("grab the lock");
        for i in 1..=SIZE {
            let (lock, t) = (lock.clone(), t.clone());
            t.running.set(t.running.get() + 1);
            copas::addthread(move || {
                let timeout = if i > SIZE * 2 / 3 {
                    secs(60) // these hit "destroyed"
                } else if i > SIZE / 3 {
                    secs(2) // these hit "timeout"
                } else {
                    secs(1) // these succeed
                };
                match kind(lock.get(timeout)) {
                    Ok(_) => {
                        t.acquired.set(t.acquired.get() + 1);
                        if i == SIZE / 3 {
                            // Hold it long enough for the second third to time out.
                            copas::pause(secs(3));
                            lock.release().expect("release");
                            // The last third fails with "destroyed".
                            lock.destroy().expect("destroy");
                        } else {
                            lock.release().expect("release");
                        }
                    }
                    Err(ErrorKind::Timeout) => t.timed_out.set(t.timed_out.get() + 1),
                    Err(ErrorKind::Destroyed) => t.destroyed.set(t.destroyed.get() + 1),
                    Err(other) => panic!("thread {i}: unexpected error {other:?}"),
                }
                t.running.set(t.running.get() - 1);
            })
            .expect("addthread");
        }
        lock.release().expect("release to the threads");
        while t.running.get() > 0 {
            copas::pause(ms(100));
        }
    });
    assert_eq!(
        (
            tally.acquired.get(),
            tally.timed_out.get(),
            tally.destroyed.get()
        ),
        (SIZE / 3, SIZE / 3, SIZE / 3)
    );
    assert!(took >= secs(3), "the holder kept it 3 s: {took:?}");
    assert!(took < secs(10), "{took:?}");
}

// ----- beyond lock.lua ----------------------------------------------------------------------

#[test]
fn zero_timeout_get_on_a_held_lock_fails_at_once_and_leaves_no_trace() {
    let lock = Lock::default();
    let (l1, l2) = (lock.clone(), lock.clone());
    let log = Rc::new(RefCell::new(Vec::new()));
    let (log1, log2) = (log.clone(), log.clone());
    copas::addthread(move || {
        l1.get(None).expect("holder gets it");
        copas::pause(ms(50));
        l1.release().expect("holder releases");
        log1.borrow_mut()
            .push(format!("released, owner {:?}", l1.owner()));
    })
    .unwrap();
    copas::addthread(move || {
        let (r, waited) = suspended_during(|| kind(l2.get(Duration::ZERO)));
        assert_eq!(r, Err(ErrorKind::Timeout));
        assert!(!waited, "a zero timeout must not wait");
        assert_eq!(l2.waiting(), 0, "the failed get left an entry in the line");
        log2.borrow_mut()
            .push("zero-timeout get failed".to_string());
    })
    .unwrap();
    run_bounded(LIMIT);
    assert_eq!(
        *log.borrow(),
        ["zero-timeout get failed", "released, owner None"],
        "the lock must be free after the release (Copas hands it to the failed caller)"
    );
    assert!(!lock.is_locked());
}

#[test]
fn reentrant_lock_counts_nesting_and_frees_after_as_many_releases() {
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    run_with_bounded(LIMIT, move || {
        let lock = Lock::default();
        assert_eq!(lock.get(None).unwrap(), Duration::ZERO);
        assert_eq!(lock.get(None).unwrap(), Duration::ZERO);
        assert_eq!(lock.get(Duration::ZERO).unwrap(), Duration::ZERO);
        let me = copas::current();
        assert_eq!(lock.owner(), me);
        lock.release().unwrap();
        lock.release().unwrap();
        assert!(lock.is_locked(), "still held once");
        lock.release().unwrap();
        assert!(!lock.is_locked());
        assert_eq!(kind(lock.release()), Err(ErrorKind::NotOwned));
        finished.set(true);
    });
    assert!(done.get());
}

#[test]
fn waiters_get_the_lock_first_come_first_served_and_nobody_slips_in() {
    let order = Rc::new(RefCell::new(Vec::new()));
    let lock = Lock::default();
    {
        let (lock, order) = (lock.clone(), order.clone());
        copas::addthread(move || {
            lock.get(None).unwrap();
            copas::pause(ms(20)); // everyone else queues meanwhile
            lock.release().unwrap();
            // A newcomer after the release must queue behind the five.
            let waited = lock.get(None).unwrap();
            order.borrow_mut().push(99);
            assert!(waited > Duration::ZERO);
            lock.release().unwrap();
        })
        .unwrap();
    }
    for i in 0..5 {
        let (lock, order) = (lock.clone(), order.clone());
        copas::addthread(move || {
            lock.get(None).unwrap();
            order.borrow_mut().push(i);
            copas::pause(Duration::ZERO);
            lock.release().unwrap();
        })
        .unwrap();
    }
    run_bounded(LIMIT);
    assert_eq!(*order.borrow(), [0, 1, 2, 3, 4, 99]);
}

#[test]
fn a_removed_waiter_leaves_the_line_and_a_lock_handed_to_it_moves_on() {
    let got = Rc::new(RefCell::new(Vec::new()));
    let got2 = got.clone();
    run_with_bounded(LIMIT, move || {
        let lock = Lock::default();
        lock.get(None).unwrap();
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (lock, got) = (lock.clone(), got2.clone());
            waiters.push(
                copas::addthread(move || {
                    lock.get(None).unwrap();
                    got.borrow_mut().push(i);
                    lock.release().unwrap();
                })
                .unwrap(),
            );
        }
        copas::pause(ms(10));
        assert_eq!(lock.waiting(), 3);
        // Removed while waiting: out of the line at once.
        assert!(copas::removethread(waiters[0]));
        copas::pause(Duration::ZERO); // the removal unwinds at the end of the step
        assert_eq!(lock.waiting(), 2);
        // Handed the lock, then removed before it could run: the lock goes to the next.
        lock.release().unwrap();
        assert_eq!(lock.owner(), Some(waiters[1]));
        assert!(copas::removethread(waiters[1]));
        copas::pause(Duration::ZERO);
        assert_eq!(lock.owner(), Some(waiters[2]));
        copas::pause(ms(10));
        assert!(!lock.is_locked());
        assert_eq!(lock.waiting(), 0);
    });
    assert_eq!(*got.borrow(), [2]);
}

#[test]
fn a_timed_wait_keeps_the_loop_alive_a_forever_wait_does_not() {
    // With a timeout: the loop runs until it expires.
    let result = Rc::new(Cell::new(None));
    let r = result.clone();
    let lock = Lock::default();
    lock.get(None).unwrap(); // held by the code outside coroutines, never released
    let l = lock.clone();
    copas::addthread(move || r.set(Some(kind(l.get(ms(200)))))).unwrap();
    let took = run_bounded(LIMIT);
    assert_eq!(result.get(), Some(Err(ErrorKind::Timeout)));
    assert!(took >= ms(200), "{took:?}");

    // Without one: nothing can ever release it, and the loop does not wait for it.
    let r = result.clone();
    result.set(None);
    let l = lock.clone();
    copas::addthread(move || r.set(Some(kind(l.get(FOREVER))))).unwrap();
    let took = run_bounded(LIMIT);
    assert_eq!(result.get(), None, "the waiter is abandoned, not woken");
    assert!(took < secs(2), "{took:?}");
    assert_eq!(lock.waiting(), 1);
    copas::cancelall(); // drops the abandoned waiter, which leaves the line
    assert_eq!(lock.waiting(), 0);
}

#[test]
fn outside_a_coroutine_a_free_lock_is_taken_but_a_held_one_cannot_be_waited_for() {
    let lock = Lock::default();
    assert_eq!(lock.get(None).unwrap(), Duration::ZERO);
    assert!(lock.is_locked());
    assert_eq!(lock.owner(), None, "owned by the code outside coroutines");
    let l = lock.clone();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    copas::addthread(move || {
        s.borrow_mut().push(kind(l.release()));
        s.borrow_mut().push(kind(l.get(Duration::ZERO).map(|_| ())));
    })
    .unwrap();
    run_bounded(LIMIT);
    assert_eq!(
        *seen.borrow(),
        [Err(ErrorKind::NotOwned), Err(ErrorKind::Timeout)]
    );
    let other = Lock::new(None, true);
    other.get(None).unwrap();
    assert_eq!(kind(other.get(ms(10))), Err(ErrorKind::InvalidState));
    assert_eq!(kind(other.get(Duration::ZERO)), Err(ErrorKind::Timeout));
    lock.release().unwrap();
    other.release().unwrap();
}

// ----- a coroutine being removed holds nothing ----------------------------------------------

/// Calls `act` on the lock from its destructor: in a removed coroutine, while it unwinds.
struct OnDrop<T>(
    Lock,
    fn(&Lock) -> copas::Result<T>,
    Rc<RefCell<Option<Result<T, ErrorKind>>>>,
);

impl<T> Drop for OnDrop<T> {
    fn drop(&mut self) {
        *self.2.borrow_mut() = Some(kind((self.1)(&self.0)));
    }
}

/// Holds `lock` from outside any coroutine (as an embedding loop between steps does), then
/// removes a parked coroutine whose destructor calls `act` on it; returns what `act` got.
fn act_from_a_removed_coroutine_while_outside_code_holds<T: 'static>(
    lock: &Lock,
    act: fn(&Lock) -> copas::Result<T>,
) -> Option<Result<T, ErrorKind>> {
    let seen = Rc::new(RefCell::new(None));
    let guard = OnDrop(lock.clone(), act, seen.clone());
    let co = copas::addthread(move || {
        let _guard = guard;
        copas::pauseforever();
    })
    .unwrap();
    copas::step(Some(Duration::ZERO)).unwrap();
    lock.get(None).unwrap();
    assert!(copas::removethread(co));
    let got = seen.borrow_mut().take();
    got
}

#[test]
fn a_removed_coroutine_cannot_release_a_lock_the_code_outside_coroutines_holds() {
    let lock = Lock::default();
    let got = act_from_a_removed_coroutine_while_outside_code_holds(&lock, Lock::release);
    // Before: `Ok(())`, and the outside code's hold was gone.
    assert_eq!(got, Some(Err(ErrorKind::NotOwned)));
    assert!(lock.is_locked());
    lock.release().unwrap();
    assert!(!lock.is_locked());
}

#[test]
fn a_removed_coroutine_cannot_enter_a_lock_the_code_outside_coroutines_holds() {
    let lock = Lock::default();
    let got = act_from_a_removed_coroutine_while_outside_code_holds(&lock, |l| l.get(ms(100)));
    // Before: `Ok(0)`: a re-entry as if it were the outside code.
    assert_eq!(got, Some(Err(ErrorKind::Cancelled)));
    lock.release().unwrap();
    assert!(!lock.is_locked(), "held once, released once");
}

#[test]
fn a_removed_coroutine_cannot_take_a_free_lock() {
    let lock = Lock::default();
    let seen = Rc::new(RefCell::new(None));
    let guard = OnDrop(lock.clone(), |l| l.get(ms(100)), seen.clone());
    let co = copas::addthread(move || {
        let _guard = guard;
        copas::pauseforever();
    })
    .unwrap();
    copas::step(Some(Duration::ZERO)).unwrap();
    assert!(copas::removethread(co));
    assert_eq!(*seen.borrow(), Some(Err(ErrorKind::Cancelled)));
    // Before: the lock stayed taken, by "the outside code", which never took it.
    assert!(!lock.is_locked());
}

// ----- the guard (beyond Copas) -------------------------------------------------------------

#[test]
fn a_lock_guard_releases_when_its_holder_panics_and_the_next_waiter_gets_the_lock() {
    let got = Rc::new(Cell::new(false));
    let got2 = got.clone();
    run_with_bounded(LIMIT, move || {
        copas::seterrorhandler(|_| {}); // the panic below is expected
        let lock = Lock::default();
        let holder = lock.clone();
        copas::addthread(move || {
            let held = holder.lock(None).expect("lock");
            assert_eq!(held.waited(), Duration::ZERO);
            copas::pause(ms(20));
            panic!("the holder fails while holding the lock");
        })
        .unwrap();
        copas::pause(ms(5));
        assert!(lock.is_locked());
        // Waits for the lock the panicking holder never released by hand.
        let waited = lock.get(secs(5)).expect("the guard released the lock");
        assert!(waited >= ms(10), "waited {waited:?}");
        lock.release().unwrap();
        got2.set(true);
    });
    assert!(got.get());
}

#[test]
fn a_lock_guard_releases_when_its_coroutine_is_removed() {
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    run_with_bounded(LIMIT, move || {
        let lock = Lock::new(None, true); // not re-entrant
        let holder = lock.clone();
        let co = copas::addthread(move || {
            let _held = holder.lock(None).expect("lock");
            copas::pauseforever();
        })
        .unwrap();
        copas::pause(ms(5));
        assert_eq!(lock.owner(), Some(co));
        assert!(copas::removethread(co));
        copas::pause(Duration::ZERO); // the removal unwinds at the end of the step
        assert!(
            !lock.is_locked(),
            "a removed holder's guard released the lock"
        );
        lock.get(Duration::ZERO).expect("free again");
        lock.release().unwrap();
        finished.set(true);
    });
    assert!(done.get(), "the test body did not complete");
}

#[test]
fn a_lock_guard_releases_one_level_of_a_reentrant_lock() {
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    run_with_bounded(LIMIT, move || {
        let lock = Lock::default();
        let outer = lock.lock(None).unwrap();
        {
            let _inner = lock.lock(None).unwrap();
            let waiter = lock.clone();
            let co = copas::addthread(move || {
                let _ = waiter.lock(secs(5));
            })
            .unwrap();
            copas::pause(ms(5));
            assert_eq!(lock.waiting(), 1);
            let _ = co;
        }
        // One level left: still ours, the waiter still waits.
        assert!(lock.is_locked());
        assert_eq!(lock.waiting(), 1);
        drop(outer);
        copas::pause(ms(5));
        assert_eq!(lock.waiting(), 0);
        assert!(
            !lock.is_locked(),
            "the waiter took it and its guard released it"
        );
        // A guard outlives a destroyed lock without effect.
        let held = lock.lock(None).unwrap();
        lock.destroy().unwrap();
        drop(held);
        assert_eq!(kind(lock.get(None)), Err(ErrorKind::Destroyed));
        finished.set(true);
    });
    assert!(done.get(), "the test body did not complete");
}
