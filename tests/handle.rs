//! `copas::Handle` (issue 9): other threads add tasks to a running dispatcher and ask it to
//! exit, and the dispatcher wakes at once for them.
//!
//! A task posted from another thread runs on the dispatcher's thread and interrupts a 20 s
//! poller wait; `exit` from another thread releases `waitforexit`; 4,000 tasks from four
//! threads each run once, in order per thread; a handle to a dispatcher whose thread has
//! exited refuses with `Closed`, and tasks queued for a dispatcher that never ran them are
//! dropped when its thread exits (nothing leaks).
//!
//! Loopback only; every run has a watchdog and every loop is bounded.

mod util;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use copas::ErrorKind;

#[test]
fn a_task_from_another_thread_runs_on_the_dispatcher_thread_and_wakes_it_at_once() {
    let sleeper = copas::addthread(|| {
        copas::pause(Duration::from_secs(20));
    })
    .unwrap();
    let handle = copas::handle().unwrap();
    let dispatcher_thread = std::thread::current().id();
    let ran = Arc::new(Mutex::new(None));
    let ran_in = ran.clone();
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let posted = Instant::now();
        handle
            .spawn(move || {
                *ran_in.lock().unwrap() = Some((std::thread::current().id(), posted.elapsed()));
                // Ends the 20 s sleep, and with it the loop.
                assert!(copas::wakeup(sleeper));
            })
            .expect("the dispatcher is alive");
    });
    let took = util::run_bounded(Duration::from_secs(60));
    poster.join().unwrap();
    let (thread, latency) = ran.lock().unwrap().expect("the task ran");
    assert_eq!(
        thread, dispatcher_thread,
        "it ran on the dispatcher's thread"
    );
    // Generous bounds: the dispatcher was asleep in a 20 s wait when the task came.
    assert!(latency < Duration::from_secs(5), "woken after {latency:?}");
    assert!(took < Duration::from_secs(15), "the loop took {took:?}");
}

#[test]
fn exit_from_another_thread_releases_waitforexit_and_the_server_is_removed() {
    let (listener, _) = util::local_listener();
    let server = copas::addserver(listener, |_| {}).unwrap();
    let released = Arc::new(AtomicUsize::new(0));
    let r = released.clone();
    copas::addthread(move || {
        copas::waitforexit().unwrap();
        r.fetch_add(1, Ordering::Relaxed);
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    let handle = copas::handle().unwrap();
    let asker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        handle.exit().expect("the dispatcher is alive");
    });
    // Without the exit the server would keep the loop going forever.
    util::run_bounded(Duration::from_secs(60));
    asker.join().unwrap();
    assert_eq!(released.load(Ordering::Relaxed), 1);
    assert_eq!(copas::status().servers, 0);
}

#[test]
fn tasks_from_four_threads_each_run_once_in_order_per_thread() {
    const SENDERS: usize = 4;
    const TASKS: usize = 1_000;
    let order = Arc::new(Mutex::new(Vec::with_capacity(SENDERS * TASKS)));
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    // Keeps the loop going until every task has run (bounded: 60 s).
    copas::addthread(move || {
        let start = Instant::now();
        while d.load(Ordering::Relaxed) < SENDERS * TASKS
            && start.elapsed() < Duration::from_secs(60)
        {
            copas::pause(Duration::from_millis(10));
        }
    })
    .unwrap();
    let handle = copas::handle().unwrap();
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let handle = handle.clone();
            let order = order.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for k in 0..TASKS {
                    let order = order.clone();
                    let done = done.clone();
                    handle
                        .spawn(move || {
                            order.lock().unwrap().push((t, k));
                            done.fetch_add(1, Ordering::Relaxed);
                        })
                        .expect("the dispatcher is alive");
                }
            })
        })
        .collect();
    util::run_bounded(Duration::from_secs(90));
    for s in senders {
        s.join().unwrap();
    }
    let order = order.lock().unwrap();
    assert_eq!(order.len(), SENDERS * TASKS, "every task ran once");
    let mut next = [0usize; SENDERS];
    for &(t, k) in order.iter() {
        assert_eq!(k, next[t], "sender {t}'s tasks run in the order posted");
        next[t] += 1;
    }
}

#[test]
fn a_handle_to_a_dispatcher_whose_thread_exited_refuses_and_drops_the_task() {
    let handle = std::thread::spawn(|| copas::handle().unwrap())
        .join()
        .unwrap();
    assert!(handle.is_closed());
    let held = Arc::new(());
    let in_task = held.clone();
    let err = handle
        .spawn(move || drop(in_task))
        .expect_err("nobody would run it");
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert_eq!(Arc::strong_count(&held), 1, "the refused task was dropped");
    assert_eq!(handle.exit().unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn tasks_queued_for_a_dispatcher_that_never_runs_them_are_dropped_when_its_thread_exits() {
    let (give, take) = mpsc::channel();
    let (finish, finished) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        give.send(copas::handle().unwrap()).unwrap();
        // Never steps: what is posted stays queued until the thread exits.
        finished.recv().unwrap();
    });
    let handle = take.recv().unwrap();
    let held = Arc::new(());
    for _ in 0..10 {
        let in_task = held.clone();
        handle.spawn(move || drop(in_task)).expect("still alive");
    }
    assert_eq!(Arc::strong_count(&held), 11);
    finish.send(()).unwrap();
    thread.join().unwrap();
    assert_eq!(Arc::strong_count(&held), 1, "the queued tasks were dropped");
    assert!(handle.is_closed());
}

/// Tasks posted before the loop runs, or while its last coroutine ends, are part of its
/// work: `run` acts on them before it finds nothing left to do, where it returned and left
/// them queued (and a thread ending after `run`, as every `copas::threads` worker does,
/// dropped them although `spawn` had said `Ok`).
#[test]
fn tasks_posted_before_the_loop_runs_out_of_work_are_run_by_it() {
    let _dog = util::Watchdog::new("posted before the end", Duration::from_secs(30));
    let handle = copas::handle().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let posted_early = ran.clone();
    let early = handle.clone();
    std::thread::spawn(move || {
        early
            .spawn(move || {
                posted_early.fetch_add(1, Ordering::SeqCst);
            })
            .expect("spawn");
    })
    .join()
    .unwrap();
    copas::run().expect("run");
    assert_eq!(ran.load(Ordering::SeqCst), 1, "posted before run");
    // Now three posted while the last coroutine ends: it blocks the thread (not the
    // coroutine) until they are queued, so no step sees them before the work runs out.
    let (go, posts) = mpsc::channel::<()>();
    let (done, queued) = mpsc::channel::<()>();
    let posted_late = ran.clone();
    let poster = std::thread::spawn(move || {
        posts.recv().unwrap();
        for _ in 0..3 {
            let ran = posted_late.clone();
            handle
                .spawn(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
                .expect("spawn");
        }
        done.send(()).unwrap();
    });
    copas::addthread(move || {
        go.send(()).unwrap();
        queued.recv_timeout(Duration::from_secs(10)).unwrap();
    })
    .unwrap();
    copas::run().expect("run");
    poster.join().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 4, "posted while the loop ended");
}

/// `Coroutine` is `Send` (it may go into a `Handle::spawn` closure), and every thread has its
/// own dispatcher: a handle taken to another thread must name none of that thread's
/// coroutines. Thread B's first coroutine and this thread's first one used to have the same
/// handle, and `removethread` with B's removed ours.
#[test]
fn a_coroutine_handle_from_another_thread_names_none_of_this_threads() {
    use std::cell::Cell;
    use std::rc::Rc;
    let _dog = util::Watchdog::new("foreign coroutine handle", Duration::from_secs(20));
    let ran_to_end = Rc::new(Cell::new(false));
    let end = ran_to_end.clone();
    let mine = copas::addnamedthread("mine", move || {
        copas::pause(Duration::from_millis(200));
        end.set(true);
    })
    .expect("addthread");
    let foreign = std::thread::spawn(|| {
        let co = copas::addnamedthread("theirs", || {}).expect("addthread");
        copas::run().expect("run");
        co
    })
    .join()
    .expect("thread B");
    assert_ne!(foreign, mine);
    let name = copas::getthreadname(Some(foreign));
    let woke = copas::wakeup(foreign);
    let removed = copas::removethread(foreign);
    util::run_bounded(Duration::from_secs(20));
    assert_eq!(
        (name.as_deref(), woke, removed, ran_to_end.get()),
        (None, false, false, true)
    );
}

/// The same for `Server`: another thread's server, passed to `removeserver` here, is refused
/// as not one of ours; it used to close this thread's first listener.
#[test]
fn a_server_from_another_thread_is_refused_and_ours_keeps_listening() {
    let _dog = util::Watchdog::new("foreign server", Duration::from_secs(20));
    let (listener, addr) = util::local_listener();
    let ours = copas::addserver(listener, |_s| {}).expect("addserver");
    let foreign = std::thread::spawn(|| {
        let (listener, _) = util::local_listener();
        let server = copas::addserver(listener, |_s| {}).expect("addserver");
        copas::removeserver(server, false).expect("removeserver there");
        server
    })
    .join()
    .expect("thread A");
    let outcome = util::kind(copas::removeserver(foreign, false)).map(|l| l.is_some());
    let still_listening =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok();
    copas::removeserver(ours, false).expect("ours");
    assert_eq!(outcome, Err(ErrorKind::InvalidState));
    assert!(still_listening, "our listener was closed");
}

/// A task another thread posted while no `run` was going is work left: `finished` says so
/// (a host's `while !finished() { step }` would otherwise never run it), and the next step
/// runs it at once.
#[test]
fn a_task_posted_between_runs_keeps_finished_false_until_a_step_runs_it() {
    let _dog = util::Watchdog::new("posted between runs", Duration::from_secs(20));
    let handle = copas::handle().expect("handle");
    copas::run().expect("run");
    assert!(copas::finished());
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = ran.clone();
    std::thread::spawn(move || {
        handle
            .spawn(move || r.store(true, Ordering::SeqCst))
            .expect("spawn");
    })
    .join()
    .expect("poster");
    assert!(!copas::finished(), "finished() with a posted task waiting");
    let start = Instant::now();
    copas::step(Some(Duration::from_secs(5))).expect("step");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the step waited for its timeout"
    );
    assert!(ran.load(Ordering::SeqCst), "not run");
    assert!(copas::finished());
}

/// Runs a dispatcher thread through a step that runs late: a server handler holds the thread
/// for 100 ms, past a due timer, while `during` (on this thread) posts to it from outside —
/// after the step has drained its inbox, before it looks at the poller again for the late
/// timer. `waiter` runs in a coroutine of that dispatcher. Both get the flag that says the
/// post arrived; returns whether it was set within 3 s, while nothing else wakes the
/// dispatcher.
fn posted_while_a_step_runs_late(
    waiter: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    during: impl FnOnce(&copas::Handle, Arc<AtomicBool>),
) -> bool {
    let (listener, addr) = util::local_listener();
    let (give, take) = mpsc::channel();
    let (armed_tx, armed_rx) = mpsc::channel::<()>();
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (posted_tx, posted_rx) = mpsc::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let dispatcher = std::thread::spawn(move || {
        give.send(copas::handle().unwrap()).unwrap();
        let posted_rx = Mutex::new(posted_rx);
        let server = copas::addserver(listener, move |_sock| {
            let entered = Instant::now();
            let _ = entered_tx.send(());
            let _ = posted_rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(5));
            // Held as a handler doing work would, past the timer's deadline.
            while entered.elapsed() < Duration::from_millis(100) {
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .unwrap();
        copas::addthread(move || waiter(flag)).unwrap();
        copas::addthread(move || {
            armed_tx.send(()).unwrap();
            copas::pause(Duration::from_millis(50));
        })
        .unwrap();
        copas::addthread(move || {
            let _ = copas::waitforexit();
            let _ = copas::removeserver(server, false);
        })
        .unwrap();
        util::run_bounded(Duration::from_secs(50));
    });
    let handle = take.recv().unwrap();
    armed_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // The connection comes in a later step than the one that armed the timer.
    std::thread::sleep(Duration::from_millis(5));
    let _client = std::net::TcpStream::connect(addr).unwrap();
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    during(&handle, done.clone());
    posted_tx.send(()).unwrap();
    // Hung up, so that a later connection's handler does not wait for a post.
    drop(posted_tx);
    let arrived = util::wait_until(Duration::from_secs(3), || done.load(Ordering::SeqCst));
    // Either way: ask for the end, and wake the dispatcher with a connection in case it
    // missed its wake-up.
    let _ = handle.exit();
    let _poke = std::net::TcpStream::connect(addr);
    assert!(
        util::wait_until(Duration::from_secs(20), || dispatcher.is_finished()),
        "the dispatcher thread did not end"
    );
    dispatcher.join().unwrap();
    arrived
}

#[test]
fn a_task_posted_while_a_step_runs_late_runs_without_another_wake_up() {
    let arrived = posted_while_a_step_runs_late(
        |_| {},
        |handle, done| {
            handle
                .spawn(move || done.store(true, Ordering::SeqCst))
                .unwrap()
        },
    );
    assert!(
        arrived,
        "the task waited for an unrelated event to wake the dispatcher"
    );
}

#[test]
fn a_channel_item_sent_while_a_step_runs_late_reaches_its_waiting_receiver() {
    let (tx, rx) = copas::channel::unbounded::<u32>();
    let arrived = posted_while_a_step_runs_late(
        move |done| {
            if rx.recv().ok() == Some(7) {
                done.store(true, Ordering::SeqCst);
            }
        },
        move |_, _| tx.send(7).unwrap(),
    );
    assert!(
        arrived,
        "the receiver stayed parked with its item in the channel"
    );
}

#[test]
fn an_offload_finishing_while_a_step_runs_late_wakes_its_waiter() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let arrived = posted_while_a_step_runs_late(
        move |done| {
            let result = copas::offload(move || {
                let _ = go_rx.recv_timeout(Duration::from_secs(10));
                42
            });
            if result.ok() == Some(42) {
                done.store(true, Ordering::SeqCst);
            }
        },
        move |_, _| {
            go_tx.send(()).unwrap();
            // The helper posts its completion while the handler still holds the thread.
            std::thread::sleep(Duration::from_millis(20));
        },
    );
    assert!(
        arrived,
        "the offload's waiter stayed parked with its result in"
    );
}

/// The same lost wake-up on the other extra look at the poller: a step that would sleep
/// first looks for events before giving back surplus stacks. A post whose wake-up that look
/// takes must still be acted on before the step sleeps.
#[test]
fn a_task_posted_while_surplus_stacks_wait_to_be_given_back_runs_without_another_wake_up() {
    let (give, take) = mpsc::channel();
    let (post_tx, post_rx) = mpsc::channel::<()>();
    let (posted_tx, posted_rx) = mpsc::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let dispatcher = std::thread::spawn(move || {
        // More coroutines alive at once than the pool keeps: the rest is a surplus, given
        // back when a step would sleep.
        copas::set_pooled_stacks(10);
        for _ in 0..100 {
            copas::addthread(|| {
                copas::pause(Duration::ZERO);
            })
            .unwrap();
        }
        // Stepped, not run: `run` gives the surplus back when it ends.
        for _ in 0..10 {
            copas::step(Some(Duration::ZERO)).unwrap();
        }
        assert!(copas::finished());
        give.send(copas::handle().unwrap()).unwrap();
        copas::addthread(move || {
            // The post comes while this coroutine holds the thread, after the step's drain.
            post_tx.send(()).unwrap();
            let _ = posted_rx.recv_timeout(Duration::from_secs(5));
        })
        .unwrap();
        let start = Instant::now();
        while !flag.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(20) {
            copas::step(Some(Duration::from_secs(10))).unwrap();
        }
    });
    let handle = take.recv().unwrap();
    post_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let flag = done.clone();
    handle
        .spawn(move || flag.store(true, Ordering::SeqCst))
        .unwrap();
    posted_tx.send(()).unwrap();
    let arrived = util::wait_until(Duration::from_secs(3), || done.load(Ordering::SeqCst));
    assert!(
        util::wait_until(Duration::from_secs(30), || dispatcher.is_finished()),
        "the dispatcher thread did not end"
    );
    dispatcher.join().unwrap();
    assert!(arrived, "the task waited for the step's 10 s timeout");
}
