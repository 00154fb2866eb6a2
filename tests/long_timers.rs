//! Long waits, which the Linux poller times with a timerfd rather than an epoll timeout (the
//! kernel lets those run late by 0.1 % of their length): the timerfd keeps the earliest
//! deadline, so a shorter one set during a long wait is served on time, and an expiry left
//! over from a deadline that went away ends a wait early without waking anyone.
//!
//! The precision itself is shown by `cargo bench --bench coroutines -- timers`, not here.

mod util;

use std::cell::Cell;
use std::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::Coroutine;
use util::ms;

/// Steps with long waits (so the poller times them with its timerfd) until `done`, for at
/// most `limit`.
fn step_long_until(limit: Duration, done: impl FnMut() -> bool) -> bool {
    util::step_with_until(Duration::from_secs(5), limit, done)
}

/// Connects to `addr` from another thread after `delay`, sends nothing and keeps the stream
/// open past the test's timers, so that the connection brings one event and no other.
fn connect_later(addr: std::net::SocketAddr, delay: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let _stream = TcpStream::connect(addr).expect("connect");
        std::thread::sleep(Duration::from_secs(6));
    });
}

#[test]
fn a_shorter_deadline_set_during_a_long_wait_is_served_on_time() {
    let _dog = util::Watchdog::new("long timers", Duration::from_secs(30));
    // A long sleeper: the step waits for its deadline, 3 s away.
    let long = copas::addthread(|| {
        copas::pause(Duration::from_secs(3));
    })
    .expect("addthread");
    // During that wait a connection comes in, and its handler sleeps 100 ms.
    let slept: Rc<Cell<Option<Duration>>> = Rc::default();
    let (listener, addr) = util::local_listener();
    {
        let slept = slept.clone();
        copas::addserver(listener, move |_sock| {
            slept.set(Some(copas::pause(ms(100))));
            copas::wakeup(long);
        })
        .expect("addserver");
    }
    connect_later(addr, ms(100));
    let started = Instant::now();
    let done = step_long_until(Duration::from_secs(10), || slept.get().is_some());
    let took = started.elapsed();
    assert!(done, "the handler's pause never returned");
    let slept = slept.get().expect("checked above");
    assert!(slept >= ms(100), "pause(100 ms) returned after {slept:?}");
    // Served by the 3 s deadline instead, it would return after about 2.9 s.
    assert!(
        slept < Duration::from_millis(1000),
        "pause(100 ms) returned after {slept:?}: the earlier deadline was not armed"
    );
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    copas::cancelall();
}

#[test]
fn an_expiry_left_from_a_deadline_that_went_away_wakes_no_one() {
    let _dog = util::Watchdog::new("long timers", Duration::from_secs(30));
    let first: Rc<Cell<Option<Duration>>> = Rc::default();
    let second: Rc<Cell<Option<Duration>>> = Rc::default();
    let sleeper = {
        let (first, second) = (first.clone(), second.clone());
        copas::addthread(move || {
            // Armed for 400 ms, ended early by the handler below...
            first.set(Some(copas::pause(ms(400))));
            // ...so the timer still fires at 400 ms, during this pause, and must not end it.
            second.set(Some(copas::pause(ms(800))));
        })
        .expect("addthread")
    };
    let target: Rc<Cell<Option<Coroutine>>> = Rc::new(Cell::new(Some(sleeper)));
    let (listener, addr) = util::local_listener();
    {
        let target = target.clone();
        copas::addserver(listener, move |_sock| {
            if let Some(co) = target.take() {
                copas::wakeup(co);
            }
        })
        .expect("addserver");
    }
    connect_later(addr, ms(100));
    let done = step_long_until(Duration::from_secs(10), || second.get().is_some());
    assert!(done, "the second pause never returned");
    let first = first.get().expect("the first pause returned");
    assert!(
        first < ms(400),
        "the first pause was not ended early: {first:?}"
    );
    let second = second.get().expect("checked above");
    assert!(second >= ms(800), "pause(800 ms) returned after {second:?}");
    assert!(
        second < Duration::from_secs(5),
        "pause(800 ms) took {second:?}"
    );
    copas::cancelall();
}

/// The longest delay that can still be added to `from`, to the nanosecond.
fn room_left_on_the_clock(from: Instant) -> Duration {
    let (mut secs, mut past) = (0u64, u64::MAX);
    while past - secs > 1 {
        let mid = secs + (past - secs) / 2;
        if from.checked_add(Duration::from_secs(mid)).is_some() {
            secs = mid;
        } else {
            past = mid;
        }
    }
    let (mut nanos, mut past) = (0u32, 1_000_000_000u32);
    while past - nanos > 1 {
        let mid = nanos + (past - nanos) / 2;
        if from.checked_add(Duration::new(secs, mid)).is_some() {
            nanos = mid;
        } else {
            past = mid;
        }
    }
    Duration::new(secs, nanos)
}

#[test]
fn a_deadline_microseconds_before_the_clocks_end_is_waited_for_without_a_panic() {
    let _dog = util::Watchdog::new("a deadline at the clock's end", Duration::from_secs(30));
    let (listener, addr) = util::local_listener();
    copas::addserver(listener, |_sock| {}).expect("addserver");
    // A long step arms the timerfd for 500 ms; a connection ends it early, so that expiry
    // is still set when the next wait arms the timer for the deadline below.
    copas::step(Some(Duration::ZERO)).expect("a step with no wait");
    connect_later(addr, ms(30));
    let first = Instant::now();
    copas::step(Some(ms(500))).expect("the first step");
    assert!(first.elapsed() >= ms(20), "the first step did not wait");
    let paused = copas::addthread(|| {
        let base = Instant::now();
        let clock_end = base + room_left_on_the_clock(base);
        // Representable, but within the poller's tolerance (20 µs) of the clock's end.
        let delay = clock_end.duration_since(Instant::now()) - Duration::from_micros(10);
        copas::pause(delay);
    })
    .expect("addthread");
    // The steps that start the pause and end the connection's handler.
    for _ in 0..5 {
        copas::step(Some(Duration::ZERO)).expect("a step with no wait");
    }
    // The earliest deadline is now the pause's; the kept expiry ends this wait.
    let step = std::panic::catch_unwind(|| copas::step(None));
    assert!(
        copas::removethread(paused),
        "the pause ended, or its coroutine went away"
    );
    copas::cancelall();
    let step = step.expect("the step panicked");
    step.expect("the step failed");
}
