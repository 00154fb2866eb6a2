//! Bursts: what a burst of thousands of coroutines must not do to the others. A deadline or
//! an event that comes while more coroutines are ready than one step resumes is served
//! within a step, not after the whole burst; and the stacks of a burst that ended are given
//! back when the dispatcher has an idle moment, not one by one as its coroutines end.
//!
//! Every test runs on its own thread (its own dispatcher); loops are bounded in count and
//! time.

mod util;

use std::cell::Cell;
use std::io::Write;
use std::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use util::Watchdog;

/// Coroutines in the burst: several steps' worth (a step resumes at most 1,024).
const BURST: usize = 5_000;

/// How long each coroutine of the burst keeps the thread when it first runs, so that the
/// burst takes far longer to start than the deadline and the event below are away.
const BURST_WORK: Duration = Duration::from_micros(20);

/// Adds `BURST` coroutines that each hold the thread for `BURST_WORK` and count themselves
/// in `started`.
fn add_burst(started: &Rc<Cell<usize>>) {
    for _ in 0..BURST {
        let started = started.clone();
        copas::addthread(move || {
            started.set(started.get() + 1);
            let t = Instant::now();
            while t.elapsed() < BURST_WORK {
                std::hint::spin_loop();
            }
        })
        .expect("addthread");
    }
}

#[test]
fn a_deadline_during_a_burst_of_new_coroutines_is_served_before_the_burst_has_started() {
    let _dog = Watchdog::new("deadline during a burst", Duration::from_secs(60));
    let started = Rc::new(Cell::new(0));
    let seen = Rc::new(Cell::new(None));
    {
        let (started, seen) = (started.clone(), seen.clone());
        copas::addthread(move || {
            copas::pause(Duration::from_millis(5));
            seen.set(Some(started.get()));
        })
        .expect("addthread");
    }
    add_burst(&started);
    util::run_bounded(Duration::from_secs(50));
    assert_eq!(started.get(), BURST);
    let seen = seen.get().expect("the sleeper woke");
    // Starting the burst takes BURST × 20 µs = 100 ms; the sleeper is due after 5 ms and
    // must run in the step after its deadline, ahead of what is still queued.
    assert!(
        seen < BURST,
        "the sleeper woke only after all {BURST} coroutines of the burst had started"
    );
}

#[test]
fn an_event_during_a_burst_of_new_coroutines_is_served_before_the_burst_has_started() {
    let _dog = Watchdog::new("event during a burst", Duration::from_secs(60));
    let started = Rc::new(Cell::new(0));
    let seen = Rc::new(Cell::new(None));
    let (listener, addr) = util::local_listener();
    let server = {
        let (started, seen) = (started.clone(), seen.clone());
        copas::addserver(listener, move |mut sock| {
            // Accepted at once; its data comes 5 ms later, while the burst is being started.
            let got = sock.receivepartial(64).expect("receive");
            assert_eq!(got, b"ping");
            seen.set(Some(started.get()));
        })
        .expect("addserver")
    };
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        std::thread::sleep(Duration::from_millis(5));
        c.write_all(b"ping").expect("write");
        c
    });
    assert!(
        util::step_until(Duration::from_secs(10), || copas::status().read == 2),
        "the handler waits to read (beside the listening server)"
    );
    add_burst(&started);
    assert!(util::step_until(Duration::from_secs(50), || {
        started.get() == BURST && seen.get().is_some()
    }));
    copas::removeserver(server, false).expect("removeserver");
    util::run_bounded(Duration::from_secs(10));
    let _client = client.join().expect("client thread");
    let seen = seen.get().expect("the handler received");
    assert!(
        seen < BURST,
        "the data was read only after all {BURST} coroutines of the burst had started"
    );
}

#[test]
fn stacks_beyond_the_pool_bound_are_given_back_when_the_dispatcher_is_idle_not_as_coroutines_end() {
    let _dog = Watchdog::new("stack surplus", Duration::from_secs(60));
    const BOUND: usize = 8;
    const CHILDREN: usize = 200;
    copas::set_pooled_stacks(BOUND);
    let pooled_after_end = Rc::new(Cell::new(0));
    let pooled_after_idle = Rc::new(Cell::new(usize::MAX));
    {
        let (after_end, after_idle) = (pooled_after_end.clone(), pooled_after_idle.clone());
        copas::addthread(move || {
            for _ in 0..CHILDREN {
                copas::addthread(|| {
                    copas::pause(Duration::ZERO);
                })
                .expect("addthread");
            }
            // Step 2: the children pause; step 3: they end, before this coroutine runs.
            copas::pause(Duration::ZERO);
            copas::pause(Duration::ZERO);
            after_end.set(copas::status().pooled_stacks);
            // Idle steps: nothing ready, nothing due within a millisecond.
            for _ in 0..200 {
                copas::pause(Duration::from_millis(10));
                if copas::status().pooled_stacks <= BOUND {
                    break;
                }
            }
            after_idle.set(copas::status().pooled_stacks);
        })
        .expect("addthread");
    }
    util::run_bounded(Duration::from_secs(50));
    assert_eq!(
        pooled_after_end.get(),
        CHILDREN,
        "the stacks of the children are kept while coroutines are ready"
    );
    assert_eq!(
        pooled_after_idle.get(),
        BOUND,
        "idle steps give the surplus back"
    );
    assert_eq!(
        copas::status().pooled_stacks,
        BOUND,
        "what the last idle steps left, `run` gave back"
    );
}

#[test]
fn run_returns_with_the_stack_surplus_given_back() {
    let _dog = Watchdog::new("stack surplus at the end of run", Duration::from_secs(60));
    const BOUND: usize = 8;
    copas::set_pooled_stacks(BOUND);
    for _ in 0..300 {
        copas::addthread(|| {
            copas::pause(Duration::ZERO);
        })
        .expect("addthread");
    }
    util::run_bounded(Duration::from_secs(50));
    assert_eq!(copas::status().pooled_stacks, BOUND);
}

#[test]
fn a_dispatcher_that_is_never_idle_gives_the_stack_surplus_back_after_five_seconds() {
    let _dog = Watchdog::new("stack surplus, never idle", Duration::from_secs(60));
    const BOUND: usize = 4;
    copas::set_pooled_stacks(BOUND);
    let trimmed_after = Rc::new(Cell::new(None));
    {
        let trimmed_after = trimmed_after.clone();
        copas::addthread(move || {
            for _ in 0..50 {
                copas::addthread(|| {}).expect("addthread");
            }
            // Always ready: no step of this loop has an idle moment.
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                copas::pause(Duration::ZERO);
                if copas::status().pooled_stacks <= BOUND {
                    trimmed_after.set(Some(start.elapsed()));
                    break;
                }
            }
        })
        .expect("addthread");
    }
    util::run_bounded(Duration::from_secs(50));
    let after = trimmed_after
        .get()
        .expect("the surplus was given back within 20 s");
    assert!(
        after >= Duration::from_secs(5),
        "the surplus of a busy dispatcher went after {after:?}, before 5 s"
    );
}

#[test]
fn an_idle_step_gives_surplus_stacks_back_for_a_slice_of_time_then_returns() {
    let _dog = Watchdog::new("stack surplus in slices", Duration::from_secs(60));
    const BOUND: usize = 4;
    const ENDED: usize = 5_000;
    copas::set_pooled_stacks(BOUND);
    for _ in 0..ENDED {
        copas::addthread(|| {}).expect("addthread");
    }
    // The coroutines run and end, 1,024 a step; their stacks stay pooled while coroutines
    // are ready.
    for _ in 0..100 {
        if copas::status().coroutines == 0 {
            break;
        }
        copas::step(Some(Duration::ZERO)).expect("step");
    }
    assert_eq!(copas::status().coroutines, 0);
    assert_eq!(copas::status().pooled_stacks, ENDED);
    // Nothing to do for five seconds: the step gives stacks back for half a millisecond
    // (5,000 take 10 ms or more at 2–10 µs each), then looks at the poller again instead of
    // going on or sleeping.
    let t = Instant::now();
    copas::step(Some(Duration::from_secs(5))).expect("step");
    let took = t.elapsed();
    let left = copas::status().pooled_stacks;
    assert!(
        took < Duration::from_secs(2),
        "an idle step with stacks to give back took {took:?}"
    );
    assert!(
        BOUND < left && left < ENDED,
        "one step gave back a slice of the surplus, not none or all: {left} left"
    );
    assert!(
        util::step_until(Duration::from_secs(20), || copas::status().pooled_stacks
            == BOUND),
        "further idle steps give back the rest"
    );
}
