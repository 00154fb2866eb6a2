//! `copas::offload` and connecting by host name (issue 4, item 1).
//!
//! A blocking closure runs on a helper thread while only the calling coroutine waits: a
//! 10 ms ticker keeps ticking through a 500 ms offload, the dispatcher sleeps (no busy
//! wait) meanwhile, results come back in order, many offloads at once all complete, panics
//! come back as errors, and a coroutine cancelled while it waits leaves nothing behind when
//! the result arrives later. `connect` resolves host names that way; its errors are typed.
//!
//! Loopback only; every run has a watchdog and every loop is bounded.

mod util;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use copas::{ErrorKind, Pattern, Socket};
use util::{ms, secs};

/// Ticks of a 10 ms ticker coroutine, and the longest gap between two of them. The count is
/// atomic so that an offloaded closure can watch the ticker from its helper thread.
#[derive(Default)]
struct Ticks {
    count: Arc<AtomicU32>,
    longest_gap: Cell<Duration>,
    stop: Cell<bool>,
}

/// Starts a ticker that pauses 10 ms at a time until `stop` is set (at most 10 s).
fn ticker() -> Rc<Ticks> {
    let ticks = Rc::new(Ticks::default());
    let t = ticks.clone();
    copas::addthread(move || {
        let mut last = Instant::now();
        for _ in 0..1000 {
            if t.stop.get() {
                break;
            }
            copas::pause(ms(10));
            let now = Instant::now();
            t.count.fetch_add(1, Ordering::SeqCst);
            t.longest_gap.set(t.longest_gap.get().max(now - last));
            last = now;
        }
    })
    .expect("addthread ticker");
    ticks
}

// ----- offload ----------------------------------------------------------------------------

/// Issue 4 acceptance: a resolution that takes long (a 500 ms offload) does not stop a
/// 10 ms ticker. The closure itself watches the ticker from its helper thread: the ticks it
/// sees while it runs are ticks the dispatcher made while the offload was under way, which a
/// dispatcher blocked by the offload could never make, however fast or loaded the machine.
#[test]
fn slow_offload_does_not_stop_a_10ms_ticker() {
    /// Ticks the closure waits to see (50 if the ticker is never delayed in 500 ms).
    const SEEN: u32 = 20;
    let ticks = ticker();
    let outcome = Rc::new(RefCell::new(None));
    let (t, out) = (ticks.clone(), outcome.clone());
    let count = ticks.count.clone();
    copas::addthread(move || {
        let start = Instant::now();
        let r = copas::offload(move || {
            let before = count.load(Ordering::SeqCst);
            std::thread::sleep(ms(500));
            // On a loaded machine the ticker may be slow: wait for it, but not forever (a
            // blocked dispatcher never ticks).
            let seen = || count.load(Ordering::SeqCst) - before;
            util::wait_until(secs(10), || seen() >= SEEN);
            (42, seen())
        });
        *out.borrow_mut() = Some((r, start.elapsed()));
        t.stop.set(true);
    })
    .expect("addthread");
    util::run_checked(secs(30));
    let (r, took) = outcome.borrow_mut().take().expect("offload returned");
    let (value, during) = r.expect("offload");
    assert_eq!(value, 42);
    assert!(took >= ms(500), "returned early: {took:?}");
    assert!(
        during >= SEEN,
        "the ticker ticked {during} times while the offload ran ({took:?}; longest gap {:?})",
        ticks.longest_gap.get()
    );
}

/// The dispatcher sleeps in its poller while a coroutine waits for an offload: its thread
/// uses (almost) no CPU over a 300 ms offload.
#[test]
fn dispatcher_sleeps_while_waiting_for_an_offload() {
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    copas::addthread(move || {
        copas::offload(|| std::thread::sleep(ms(300))).expect("offload");
        d.set(true);
    })
    .expect("addthread");
    let cpu_before = util::thread_cpu_time();
    let took = util::run_checked(secs(20));
    let cpu = util::thread_cpu_time() - cpu_before;
    assert!(done.get());
    assert!(took >= ms(300), "returned early: {took:?}");
    // A busy wait would burn ~300 ms; starting the helper and two steps cost well under 1.
    assert!(
        cpu < ms(100),
        "the dispatcher used {cpu:?} of CPU while waiting"
    );
}

/// A dispatcher driven by `step(None)` (wait as long as needed) is woken by the helper.
#[test]
fn step_without_timeout_is_woken_by_the_completion() {
    let _dog = util::Watchdog::new("step(None)", secs(20));
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    copas::addthread(move || {
        let v = copas::offload(|| {
            std::thread::sleep(ms(50));
            "done"
        })
        .expect("offload");
        assert_eq!(v, "done");
        d.set(true);
    })
    .expect("addthread");
    let mut steps = 0;
    while !done.get() && steps < 20 {
        copas::step(None).expect("step");
        steps += 1;
    }
    assert!(done.get(), "not done after {steps} steps");
    // Start, the wait, the wake-up: a handful of steps, not one per millisecond.
    assert!(steps <= 5, "{steps} steps");
}

#[test]
fn results_arrive_in_order_per_coroutine() {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    copas::addthread(move || {
        for i in 0..20u64 {
            // Later closures are quicker: order must not depend on finishing order.
            let v = copas::offload(move || {
                std::thread::sleep(ms(20 - i));
                i
            })
            .expect("offload");
            s.borrow_mut().push(v);
        }
    })
    .expect("addthread");
    util::run_checked(secs(30));
    assert_eq!(*seen.borrow(), (0..20).collect::<Vec<u64>>());
}

#[test]
fn two_hundred_concurrent_offloads_all_complete() {
    const N: u64 = 200;
    let results = Rc::new(RefCell::new(Vec::new()));
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..N {
        let (r, ran) = (results.clone(), ran.clone());
        copas::addthread(move || {
            let v = copas::offload(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(ms(1));
                i * 2
            })
            .expect("offload");
            r.borrow_mut().push((i, v));
        })
        .expect("addthread");
    }
    util::run_checked(secs(30));
    let mut results = results.borrow().clone();
    results.sort();
    assert_eq!(results.len() as u64, N);
    assert!(results.iter().all(|&(i, v)| v == i * 2), "wrong results");
    assert_eq!(ran.load(Ordering::SeqCst) as u64, N);
}

#[test]
fn a_panic_in_the_closure_comes_back_as_an_error() {
    let outcome = Rc::new(RefCell::new(None));
    let out = outcome.clone();
    copas::addthread(move || {
        let first = copas::offload(|| -> u32 { panic!("resolver exploded") });
        // The helper survives its closure's panic.
        let second = copas::offload(|| 7u32);
        *out.borrow_mut() = Some((first, second));
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let (first, second) = outcome.borrow_mut().take().expect("coroutine finished");
    let e = first.expect_err("a panicking closure succeeded");
    assert_eq!(e.kind(), ErrorKind::Panicked);
    assert_eq!(e.message(), Some("resolver exploded"));
    assert_eq!(second.expect("offload after a panic"), 7);
}

#[test]
fn outside_a_coroutine_the_closure_runs_inline() {
    let here = std::thread::current().id();
    let there = copas::offload(move || std::thread::current().id()).expect("offload");
    assert_eq!(here, there);
    let e = copas::offload(|| -> () { panic!("inline") }).expect_err("panicked");
    assert_eq!(e.kind(), ErrorKind::Panicked);
    assert_eq!(e.message(), Some("inline"));
}

/// Dropped on whatever thread drops it; records that it was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A coroutine removed while it waits neither keeps the loop alive nor is disturbed (nor
/// anybody else) when its result arrives later; the result is dropped on the helper.
#[test]
fn cancelled_waiter_does_not_leak_or_crash_when_the_result_arrives() {
    let dropped = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let (dr, fin) = (dropped.clone(), finished.clone());
    let returned = Rc::new(RefCell::new(None));
    let ret = returned.clone();
    // The closure runs until the test lets it end (after the loop below), or for 10 s.
    let release = Arc::new(AtomicBool::new(false));
    let released = release.clone();
    let waiter = copas::addthread(move || {
        let r = copas::offload(move || {
            util::wait_until(secs(10), || released.load(Ordering::SeqCst));
            fin.store(true, Ordering::SeqCst);
            DropFlag(dr)
        });
        // Never reached: removethread unwinds the coroutine's stack from inside its wait.
        *ret.borrow_mut() = Some(r.map(|_| ()).map_err(|e| e.kind()));
    })
    .expect("addthread");
    copas::addthread(move || {
        copas::pause(ms(20));
        assert!(copas::removethread(waiter));
    })
    .expect("addthread");
    let took = util::run_checked(secs(30));
    // Waiting for the closure would take its 10 s.
    assert!(
        took < secs(5),
        "the loop waited {took:?} for a removed coroutine's offload"
    );
    assert_eq!(*returned.borrow(), None, "the removed coroutine went on");
    assert!(!finished.load(Ordering::SeqCst), "the closure ended early");

    // Meanwhile another coroutine parks; the stale completion must not wake it. Its own
    // closure lets the first one end, waits until that one's result was dropped (just
    // before its completion is posted), and gives that completion time to arrive first.
    let woken_early = Rc::new(Cell::new(false));
    let w = woken_early.clone();
    let own_done = Arc::new(AtomicBool::new(false));
    let (own, abandoned) = (own_done.clone(), dropped.clone());
    copas::addthread(move || {
        let v = copas::offload(move || {
            release.store(true, Ordering::SeqCst);
            util::wait_until(secs(10), || abandoned.load(Ordering::SeqCst));
            std::thread::sleep(ms(100));
            own.store(true, Ordering::SeqCst);
            1
        })
        .expect("offload");
        assert_eq!(v, 1);
        w.set(!own_done.load(Ordering::SeqCst));
    })
    .expect("addthread");
    util::run_checked(secs(20));
    assert!(!woken_early.get(), "a stale completion woke another wait");
    assert!(finished.load(Ordering::SeqCst));
    assert!(
        util::wait_until(secs(5), || dropped.load(Ordering::SeqCst)),
        "the abandoned result was never dropped"
    );
}

/// Records the name of the thread that drops it.
struct DroppedOn(Arc<std::sync::Mutex<Option<String>>>);

impl Drop for DroppedOn {
    fn drop(&mut self) {
        let here = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        *self.0.lock().unwrap() = Some(here);
    }
}

#[test]
fn a_result_that_arrives_just_before_its_waiter_is_removed_is_dropped_on_a_helper() {
    let _dog = util::Watchdog::new("offload drop thread", secs(30));
    let seen = Arc::new(std::sync::Mutex::new(None));
    let returning = Arc::new(AtomicBool::new(false));
    let (s, r) = (seen.clone(), returning.clone());
    let waiter = copas::addthread(move || {
        let _ = copas::offload(move || {
            r.store(true, Ordering::SeqCst);
            DroppedOn(s)
        });
        unreachable!("resumed after its removal");
    })
    .unwrap();
    copas::step(Some(Duration::ZERO)).unwrap();
    assert!(util::wait_until(secs(10), || returning.load(Ordering::SeqCst)));
    // The helper stores the result microseconds after; no step runs meanwhile, so the
    // waiter has not taken it when it is removed.
    std::thread::sleep(ms(100));
    assert!(copas::removethread(waiter));
    assert!(util::wait_until(secs(10), || seen
        .lock()
        .unwrap()
        .is_some()));
    // Before: dropped on this thread, by the removed coroutine's unwind.
    assert_eq!(seen.lock().unwrap().as_deref(), Some("copas-offload"));
    // The stale completion is acted on (ignored) by the next step.
    copas::step(Some(Duration::ZERO)).unwrap();
    assert!(copas::finished());
}

// ----- connect by host name ---------------------------------------------------------------

/// An echo server (one line per round) on 127.0.0.1, for the tests below.
fn echo_server() -> SocketAddr {
    let (listener, addr) = util::local_listener();
    let server = Rc::new(Cell::new(None));
    let s = server.clone();
    let srv = copas::addserver(listener, move |mut sock: Socket| {
        sock.settimeout(Some(secs(10)));
        if let Some(server) = s.take() {
            copas::removeserver(server, false).expect("removeserver");
        }
        while let Ok(line) = sock.receive(Pattern::Line) {
            if sock.send(&[&line[..], b"\n"].concat()).is_err() {
                break;
            }
        }
    })
    .expect("addserver");
    server.set(Some(srv));
    addr
}

#[test]
fn connect_by_host_name_resolves_off_the_dispatcher() {
    let addr = echo_server();
    let outcome = Rc::new(RefCell::new(None));
    let out = outcome.clone();
    copas::addthread(move || {
        let run = || -> copas::Result<Vec<u8>> {
            let mut sock = copas::connect(format!("localhost:{}", addr.port()), Some(secs(10)))?;
            sock.settimeout(Some(secs(10)));
            sock.send(b"hello\n")?;
            let reply = sock.receive(Pattern::Line)?;
            assert_eq!(sock.peer_addr()?.port(), addr.port());
            Ok(reply)
        };
        *out.borrow_mut() = Some(run());
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let reply = outcome.borrow_mut().take().expect("client finished");
    assert_eq!(reply.expect("round trip"), b"hello");
    // The tuple and String forms go the same way.
    let addr2 = echo_server();
    copas::addthread(move || {
        let sock = copas::connect(("localhost", addr2.port()), Some(secs(10))).expect("connect");
        sock.close();
    })
    .expect("addthread");
    util::run_checked(secs(20));
}

/// A name that does not resolve gives `HostNotFound`, and the dispatcher keeps ticking.
#[test]
fn unresolvable_name_gives_host_not_found_without_blocking() {
    let ticks = ticker();
    let outcome = Rc::new(RefCell::new(None));
    let (t, out) = (ticks.clone(), outcome.clone());
    copas::addthread(move || {
        let r = copas::connect("no-such-host.invalid:80", Some(secs(20))).map(|_| ());
        // Keep the ticker going a little after, so its gaps cover the whole resolution.
        copas::pause(ms(50));
        t.stop.set(true);
        *out.borrow_mut() = Some(r);
    })
    .expect("addthread");
    util::run_checked(secs(30));
    let e = outcome
        .borrow_mut()
        .take()
        .expect("connect returned")
        .expect_err("no-such-host.invalid resolved");
    assert_eq!(e.kind(), ErrorKind::HostNotFound, "{e:?}");
    assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
    // A resolution may fail at once, so ticks during it prove nothing; a resolver that blocked
    // the dispatcher would stall it for its own timeouts (seconds).
    assert!(
        ticks.longest_gap.get() < secs(1),
        "the ticker stalled for {:?}",
        ticks.longest_gap.get()
    );
    // Outside a coroutine the same error, resolved on this thread.
    let e = copas::connect(("no-such-host.invalid", 80), Some(secs(20))).expect_err("resolved");
    assert_eq!(e.kind(), ErrorKind::HostNotFound);
    // A malformed address is not a missing host: it is the caller's input.
    let e = copas::connect("localhost", Some(secs(1))).expect_err("no port");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

/// A closed port, reached by name, is refused at once.
#[test]
fn connect_by_name_to_a_closed_port_is_refused_at_once() {
    // Bound but not listening: nobody else gets this port meanwhile.
    let (_closed, port) = util::closed_port();
    let outcome = Rc::new(RefCell::new(None));
    let out = outcome.clone();
    copas::addthread(move || {
        let start = Instant::now();
        let r = copas::connect(format!("localhost:{port}"), Some(secs(5))).map(|_| ());
        *out.borrow_mut() = Some((r, start.elapsed()));
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let (r, took) = outcome.borrow_mut().take().expect("connect returned");
    assert_eq!(r.expect_err("nobody listens").kind(), ErrorKind::Refused);
    assert!(took < secs(1), "refused after {took:?}");
    assert_eq!(copas::status().sockets, 0);
}

/// A full backlog, reached by name, times out within the connect timeout.
#[test]
fn connect_by_name_to_a_full_backlog_times_out() {
    let (_listener, addr, _fillers) = util::full_backlog_listener();
    let outcome = Rc::new(RefCell::new(None));
    let out = outcome.clone();
    copas::addthread(move || {
        let start = Instant::now();
        let r = copas::connect(format!("localhost:{}", addr.port()), Some(ms(200))).map(|_| ());
        *out.borrow_mut() = Some((r, start.elapsed()));
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let (r, took) = outcome.borrow_mut().take().expect("connect returned");
    let e = r.expect_err("connect to a full backlog succeeded");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    assert!(took >= ms(200), "timed out early: {took:?}");
    assert!(took < secs(2), "timed out late: {took:?}");
    assert_eq!(copas::status().sockets, 0);
}

/// A numeric string is parsed, not resolved, and connects as a `SocketAddr` does.
#[test]
fn numeric_addresses_are_not_resolved() {
    // Connections complete in the kernel's accept queue; nobody needs to accept them.
    let (_listener, addr) = util::local_listener();
    let done = Rc::new(Cell::new(0));
    let d = done.clone();
    copas::addthread(move || {
        for target in [addr.to_string(), format!("127.0.0.1:{}", addr.port())] {
            let sock = copas::connect(target.as_str(), Some(secs(5))).expect("connect");
            assert_eq!(sock.peer_addr().expect("peer_addr"), addr);
            sock.close();
            d.set(d.get() + 1);
        }
        let by_ref: &SocketAddr = &addr;
        let sock = copas::connect(by_ref, Some(secs(5))).expect("connect &SocketAddr");
        sock.close();
        d.set(d.get() + 1);
    })
    .expect("addthread");
    util::run_checked(secs(20));
    assert_eq!(done.get(), 3);
}

/// Offloads whose coroutines are removed leave their results to be dropped on the helper
/// threads; a result whose destructor panics there does not kill its helper, so the pool
/// keeps serving (it used to count the dead helpers as live and never run a job again).
#[test]
fn helpers_survive_results_that_panic_when_dropped_on_them() {
    const CHILD: &str = "COPAS_TEST_OFFLOAD_PANICKING_RESULT_CHILD";
    if util::is_child(CHILD) {
        struct PanicOnDrop;
        impl Drop for PanicOnDrop {
            fn drop(&mut self) {
                panic!("result dropped");
            }
        }
        // More than the pool's helpers, so that each of them drops one.
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                copas::addthread(|| {
                    let _ = copas::offload(|| {
                        std::thread::sleep(ms(300));
                        PanicOnDrop
                    });
                })
                .unwrap()
            })
            .collect();
        let answer = Rc::new(Cell::new(None));
        let answer2 = answer.clone();
        copas::addthread(move || {
            copas::pause(ms(50));
            for co in waiters {
                copas::removethread(co);
            }
            copas::pause(ms(800));
            answer2.set(copas::offload(|| 7u32).ok());
        })
        .unwrap();
        copas::run().unwrap();
        assert_eq!(answer.get(), Some(7));
        println!("CHILD-OK");
        return;
    }
    util::assert_child_passes(
        "helpers_survive_results_that_panic_when_dropped_on_them",
        CHILD,
        "CHILD-OK",
        secs(20),
    );
}
