//! `copas::queue`: a port of Copas's `queue.lua` (its six loops, with their timings and the
//! exact event order of the two-worker `finish` case), and what the port adds: a queue
//! nobody uses does not keep the loop alive, a refused push gives the item back, and a pop
//! that goes away does not lose the item handed to it.
//!
//! Every test runs on its own thread, so it has its own dispatcher; every loop is bounded by
//! a watchdog, and timing assertions have generous upper bounds.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::queue::Queue;
use copas::{ErrorKind, FOREVER};
use util::ms;
use util::{kind, run_bounded, run_with_bounded};

const LIMIT: Duration = Duration::from_secs(30);

/// A shared, ordered record of what the coroutines did.
#[derive(Clone, Default)]
struct Log(Rc<RefCell<Vec<String>>>);

impl Log {
    fn push(&self, what: impl Into<String>) {
        self.0.borrow_mut().push(what.into());
    }

    fn entries(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
}

// ----- queue.lua ----------------------------------------------------------------------------

#[test]
fn queue_lua_1_push_pop_timeouts_fifo_nil_items_and_stop() {
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    run_with_bounded(LIMIT, move || {
        // Basic push/pop.
        let q: Queue<Option<&'static str>> = Queue::new();
        q.push(Some("hello")).unwrap();
        assert_eq!(q.pop(None).unwrap(), Some("hello"));

        // Pop waits for a push when the queue is empty.
        let start = Instant::now();
        let q2 = q.clone();
        copas::addthread(move || {
            copas::pause(ms(500));
            q2.push(Some("delayed")).unwrap();
        })
        .unwrap();
        assert_eq!(q.pop(None).unwrap(), Some("delayed"));
        assert!(start.elapsed() >= ms(500), "the result was not delayed");

        // Pop times out.
        assert_eq!(kind(q.pop(ms(500))), Err(ErrorKind::Timeout));

        // get_size.
        let q: Queue<Option<i32>> = Queue::new();
        assert_eq!(q.get_size(), 0);
        for n in 1..=3 {
            q.push(Some(n)).unwrap();
            assert_eq!(q.get_size(), n as usize);
        }

        // First in, first out.
        for n in 1..=3 {
            assert_eq!(q.pop(None).unwrap(), Some(n));
        }

        // `nil` items: `Option`.
        q.push(Some(1)).unwrap();
        q.push(None).unwrap();
        q.push(Some(3)).unwrap();
        assert_eq!(q.pop(None).unwrap(), Some(1));
        assert_eq!(q.pop(None).unwrap(), None);
        assert_eq!(q.pop(None).unwrap(), Some(3));

        // Stopping: a worker drains it, ends, and the queue is destroyed.
        for n in 1..=3 {
            q.push(Some(n)).unwrap();
        }
        q.stop().unwrap();
        let count = Rc::new(Cell::new(0));
        let c = count.clone();
        let worker = q.add_worker(move |_item| c.set(c.get() + 1)).unwrap();
        copas::pause(ms(100));
        assert_eq!(count.get(), 3, "all 3 items handled");
        assert_eq!(
            copas::getthreadname(Some(worker)),
            None,
            "the worker is gone"
        );
        assert!(q.get_workers().is_empty());
        let refused = q.push(None).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Destroyed);
        assert_eq!(kind(q.pop(None)), Err(ErrorKind::Destroyed));
        finished.set(true);
    });
    assert!(done.get(), "test 1 did not complete");
}

#[test]
fn queue_lua_2_a_worker_handles_nil_items_and_finish_returns_true() {
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    let finished = Rc::new(Cell::new(None));
    let f = finished.clone();
    run_with_bounded(LIMIT, move || {
        let q: Queue<Option<i32>> = Queue::new();
        q.push(Some(1)).unwrap();
        q.push(None).unwrap();
        q.push(Some(3)).unwrap();
        q.add_worker(move |_| c.set(c.get() + 1)).unwrap();
        copas::pause(ms(500)); // the worker runs, then waits for more
        f.set(Some(kind(q.finish(Duration::from_secs(5), false))));
    });
    assert_eq!(finished.get(), Some(Ok(())));
    assert_eq!(count.get(), 3);
}

#[test]
fn queue_lua_3_finish_times_out_on_an_item_nobody_handles() {
    let outcome = Rc::new(Cell::new(None));
    let o = outcome.clone();
    run_with_bounded(LIMIT, move || {
        let q: Queue<i32> = Queue::new();
        q.push(1).unwrap(); // no worker: never handled
        let start = Instant::now();
        let result = kind(q.finish(Duration::from_secs(1), false));
        o.set(Some((result, start.elapsed())));
        assert!(q.is_destroyed(), "destroyed on the timeout");
    });
    let (result, took) = outcome.get().expect("finish returned");
    assert_eq!(result, Err(ErrorKind::Timeout));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "expected a 1 s timeout, took {took:?}"
    );
}

#[test]
fn queue_lua_4_stop_with_idle_workers_lets_the_loop_exit() {
    let took = run_with_bounded(LIMIT, || {
        let q: Queue<()> = Queue::new();
        q.add_worker(|_| {}).unwrap();
        copas::pause(ms(500)); // the worker now waits on the queue
        q.stop().unwrap(); // ends the idle worker; the loop exits
    });
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn queue_lua_5_finish_with_idle_workers_lets_the_loop_exit() {
    let result = Rc::new(Cell::new(None));
    let r = result.clone();
    let took = run_with_bounded(LIMIT, move || {
        let q: Queue<()> = Queue::new();
        q.add_worker(|_| {}).unwrap();
        copas::pause(ms(500));
        r.set(Some(kind(q.finish(None, false))));
    });
    assert_eq!(result.get(), Some(Ok(())));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn queue_lua_6_finish_waits_for_the_workers_to_finish_their_last_items() {
    let log = Log::default();
    let l = log.clone();
    run_with_bounded(LIMIT, move || {
        let q: Queue<i32> = Queue::new();
        for n in 1..=3 {
            q.push(n).unwrap();
        }
        for _ in 0..2 {
            let l = l.clone();
            q.add_worker(move |n| {
                l.push(format!("start item {n}"));
                copas::pause(ms(500));
                l.push(format!("end item {n}"));
            })
            .unwrap();
        }
        l.push("start queue");
        copas::pause(ms(750));
        l.push("start finish");
        let result = q.finish(None, false);
        l.push(format!("finished {:?}", kind(result)));
        copas::pause(Duration::from_secs(1));
    });
    assert_eq!(
        log.entries(),
        [
            "start queue",
            "start item 1",
            "start item 2",
            "end item 1",
            "start item 3",
            "end item 2",
            "start finish",
            "end item 3",
            "finished Ok(())",
        ]
    );
}

// ----- beyond queue.lua ---------------------------------------------------------------------

#[test]
fn a_queue_nobody_uses_does_not_keep_the_loop_alive() {
    let q: Queue<u8> = Queue::new();
    q.add_worker(|_| {}).unwrap();
    q.add_worker(|_| {}).unwrap();
    let q2 = q.clone();
    copas::addthread(move || {
        let _ = q2.pop(FOREVER);
        unreachable!("nobody ever pushes");
    })
    .unwrap();
    let took = run_bounded(LIMIT);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(q.get_workers().len(), 2, "abandoned, still waiting");
    copas::cancelall();
    assert!(
        q.get_workers().is_empty(),
        "cancelled workers leave the list"
    );
}

#[test]
fn a_pop_with_a_timeout_keeps_the_loop_alive_until_it_expires() {
    let q: Queue<u8> = Queue::new();
    let q2 = q.clone();
    let result = Rc::new(Cell::new(None));
    let r = result.clone();
    copas::addthread(move || r.set(Some(kind(q2.pop(ms(200)))))).unwrap();
    let took = run_bounded(LIMIT);
    assert_eq!(result.get(), Some(Err(ErrorKind::Timeout)));
    assert!(took >= ms(200), "{took:?}");
}

#[test]
fn a_refused_push_gives_the_item_back() {
    let q: Queue<String> = Queue::named("jobs");
    assert_eq!(q.name(), "jobs");
    q.push("a".to_string()).unwrap();
    q.stop().unwrap();
    let refused = q.push("b".to_string()).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Stopping);
    assert_eq!(refused.to_string(), "stopping");
    assert_eq!(refused.into_inner(), "b");
    // A stopped queue still hands out what it holds; the last pop destroys it.
    assert_eq!(q.pop(Duration::ZERO).unwrap(), "a");
    assert!(q.is_destroyed());
    let refused = q.push("c".to_string()).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Destroyed);
    let as_copas_error: copas::Error = refused.into();
    assert_eq!(as_copas_error.kind(), ErrorKind::Destroyed);
}

#[test]
fn pops_are_served_in_order_and_an_item_handed_to_a_removed_pop_is_kept() {
    let got = Log::default();
    let g = got.clone();
    run_with_bounded(LIMIT, move || {
        let q: Queue<&'static str> = Queue::new();
        let mut poppers = Vec::new();
        for i in 0..3 {
            let (q, g) = (q.clone(), g.clone());
            poppers.push(
                copas::addthread(move || {
                    let item = q.pop(None).unwrap();
                    g.push(format!("{i}:{item}"));
                })
                .unwrap(),
            );
        }
        copas::pause(ms(10));
        // "x" goes to popper 0, which is removed before it can take it: the item is put
        // back first in line, so popper 1 gets it.
        q.push("x").unwrap();
        copas::removethread(poppers[0]);
        copas::pause(Duration::ZERO);
        q.push("y").unwrap();
        copas::pause(ms(10));
        assert_eq!(q.get_size(), 0);
    });
    assert_eq!(got.entries(), ["1:x", "2:y"]);
}

#[test]
fn a_panicking_worker_is_reported_and_leaves_the_worker_list() {
    let reports = Log::default();
    let r = reports.clone();
    copas::setdefaulterrorhandler(move |report| {
        r.push(format!("{} in {}", report.message(), report.thread_name()))
    });
    let q: Queue<u32> = Queue::named("jobs");
    let handled = Rc::new(Cell::new(0));
    let h = handled.clone();
    q.add_worker(move |n| {
        if n == 2 {
            panic!("bad item {n}");
        }
        h.set(h.get() + 1);
    })
    .unwrap();
    let steady = handled.clone();
    q.add_worker(move |_| steady.set(steady.get() + 1)).unwrap();
    for n in 1..=4 {
        q.push(n).unwrap();
    }
    let q2 = q.clone();
    copas::addthread(move || {
        copas::pause(ms(20));
        assert_eq!(
            q2.get_workers().len(),
            1,
            "the panicked worker left the list"
        );
        q2.finish(None, false).unwrap();
    })
    .unwrap();
    run_bounded(LIMIT);
    assert_eq!(reports.entries(), ["bad item 2 in jobs:worker_1"]);
    assert_eq!(handled.get(), 3);
}

#[test]
fn outside_a_coroutine_pop_never_waits() {
    let q: Queue<u8> = Queue::new();
    q.push(7).unwrap();
    assert_eq!(q.pop(None).unwrap(), 7);
    assert_eq!(kind(q.pop(Duration::ZERO)), Err(ErrorKind::Timeout));
    assert_eq!(kind(q.pop(None)), Err(ErrorKind::InvalidState));
    q.destroy().unwrap();
    assert_eq!(kind(q.destroy()), Err(ErrorKind::Destroyed));
    assert_eq!(kind(q.finish(None, false)), Err(ErrorKind::Destroyed));
}

/// `finish` outside a coroutine, where it would have to wait, is refused before it changes
/// anything: pushes are still taken, and `finish` from a coroutine then drains the queue.
/// Where it need not wait (nothing queued, no worker) it finishes the queue there and then.
#[test]
fn finish_refused_outside_a_coroutine_leaves_the_queue_as_it_was() {
    let q: Queue<u32> = Queue::new();
    let handled = Rc::new(RefCell::new(Vec::new()));
    let log = handled.clone();
    q.add_worker(move |item| log.borrow_mut().push(item))
        .unwrap();
    q.push(1).unwrap();
    assert_eq!(
        kind(q.finish(Duration::from_secs(1), false)),
        Err(ErrorKind::InvalidState)
    );
    assert_eq!(
        q.push(2).map_err(|e| e.kind()),
        Ok(()),
        "the refused finish stopped the queue"
    );
    let finishing = q.clone();
    let finished = Rc::new(RefCell::new(None));
    let out = finished.clone();
    copas::addthread(move || {
        *out.borrow_mut() = Some(kind(finishing.finish(Duration::from_secs(5), false)))
    })
    .unwrap();
    run_bounded(LIMIT);
    assert_eq!(*finished.borrow(), Some(Ok(())));
    assert_eq!(*handled.borrow(), vec![1, 2]);

    let idle: Queue<u32> = Queue::new();
    assert_eq!(kind(idle.finish(None, false)), Ok(()));
    assert_eq!(
        idle.push(1).map_err(|e| e.kind()),
        Err(ErrorKind::Destroyed)
    );
}

#[test]
fn stop_right_after_a_push_to_a_waiting_pop_still_delivers_the_item() {
    let got = Log::default();
    let g = got.clone();
    run_with_bounded(LIMIT, move || {
        let q: Queue<&'static str> = Queue::new();
        let g2 = g.clone();
        q.add_worker(move |item| g2.push(item)).unwrap();
        copas::pause(ms(10)); // the worker waits
        q.push("last").unwrap(); // handed to the worker, which runs in the next step
        q.stop().unwrap();
        g.push(format!("destroyed: {}", q.is_destroyed()));
        copas::pause(ms(10));
        assert!(
            q.get_workers().is_empty(),
            "the worker ended after its item"
        );
    });
    assert_eq!(got.entries(), ["destroyed: true", "last"]);
}

// ----- queues nobody else holds -------------------------------------------------------------

/// A pipeline: a worker forwards items to a channel, a coroutine drains the channel until it
/// closes. Once the program has pushed its items and dropped its queue, the worker handles
/// them, finds the queue empty and nobody else holding it, and ends, dropping the channel's
/// last sender, so the consumer sees the end and `run` returns. Before, the idle worker held
/// its queue (and the sender) for ever, and `run` waited on the channel without end.
#[test]
fn a_worker_whose_queue_nobody_else_holds_ends_once_the_items_are_handled() {
    let _dog = util::Watchdog::new("pipeline", LIMIT);
    let (tx, rx) = copas::channel::unbounded::<u32>();
    let q: Queue<u32> = Queue::new();
    q.add_worker(move |n| tx.send(n).expect("send"))
        .expect("add_worker");
    let got = Rc::new(Cell::new(0));
    let got2 = got.clone();
    copas::addthread(move || {
        while let Ok(n) = rx.recv() {
            got2.set(got2.get() + n);
        }
    })
    .expect("consumer");
    for n in 1..=3 {
        q.push(n).expect("push");
    }
    drop(q);
    // Ended by the shutdown only if it would not end by itself.
    let handle = copas::handle().expect("handle");
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(5));
        let _ = handle.shutdown(Duration::ZERO);
    });
    let start = Instant::now();
    copas::run().expect("run");
    let took = start.elapsed();
    assert_eq!(got.get(), 6, "every item handled before the end");
    assert!(
        took < Duration::from_secs(4),
        "run ended only by the shutdown, after {took:?}"
    );
    assert_eq!(copas::status().coroutines, 0);
    drop(stopper); // detached: it finds the dispatcher gone or idle
}

/// The same, with what a worker holds being a socket: each `run` that leaves such a worker
/// behind left its socket open and registered, one more descriptor per run on a thread that
/// runs a job at a time. Now the worker ends with its queue, and so does the socket.
#[test]
fn an_idle_worker_on_a_dropped_queue_releases_the_socket_it_captured() {
    // In a child process: the descriptors counted are the whole process's.
    const CHILD: &str = "COPAS_TEST_QUEUE_SOCKET_CHILD";
    if !util::is_child(CHILD) {
        util::assert_child_passes(
            "an_idle_worker_on_a_dropped_queue_releases_the_socket_it_captured",
            CHILD,
            "RELEASED",
            LIMIT,
        );
        return;
    }
    util::make_dispatcher();
    let before = util::fd_count();
    for _ in 0..50 {
        let (listener, addr) = util::local_listener();
        let _peer = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let sock = copas::wrap(accepted).expect("wrap");
        let q: Queue<u32> = Queue::new();
        q.add_worker(move |_| {
            let _ = &sock;
        })
        .expect("add_worker");
        q.push(1).expect("push");
        drop(q);
        run_bounded(LIMIT);
    }
    let status = copas::status();
    assert_eq!((status.coroutines, status.sockets), (0, 0), "{status:?}");
    let after = util::fd_count();
    assert_eq!(after, before, "descriptors: {before} before, {after} after");
    println!("RELEASED");
}

/// A producer pushes three items to a queue whose one worker waits idle, then ends,
/// dropping the last handle: the first item is handed to the worker, the other two wait in
/// the queue, and all three are handled. A first version of the rule above dropped the two
/// waiting ones with the queue (found by review round 13).
#[test]
fn items_queued_behind_one_handed_to_an_idle_worker_outlive_the_last_handle() {
    let log = Log::default();
    let l = log.clone();
    let q: Queue<u32> = Queue::new();
    q.add_worker(move |n| l.push(format!("{n}")))
        .expect("add_worker");
    copas::addthread(move || {
        copas::pause(ms(10)); // the worker waits on the empty queue now
        for n in 1..=3 {
            q.push(n).expect("push");
        }
    })
    .expect("producer");
    run_bounded(LIMIT);
    assert_eq!(log.entries(), ["1", "2", "3"]);
    assert_eq!(copas::status().coroutines, 0);
}

/// The same with two idle workers, each pausing in its handler, and five items.
#[test]
fn a_batch_pushed_to_idle_workers_is_handled_whole_after_the_producer_ends() {
    let log = Log::default();
    let q: Queue<u32> = Queue::new();
    for _ in 0..2 {
        let l = log.clone();
        q.add_worker(move |n| {
            copas::pause(ms(5));
            l.push(format!("{n}"));
        })
        .expect("add_worker");
    }
    copas::addthread(move || {
        copas::pause(ms(10));
        for n in 1..=5 {
            q.push(n).expect("push");
        }
    })
    .expect("producer");
    run_bounded(LIMIT);
    let mut got = log.entries();
    got.sort();
    assert_eq!(got, ["1", "2", "3", "4", "5"]);
    assert_eq!(copas::status().coroutines, 0);
}

/// A `destroy` from another coroutine while `finish` waits ends the wait with `Ok` once the
/// workers have ended, as Copas's `finish` returns true when "someone else destroyed/finished
/// it"; the items the destroy dropped were never handled (the rustdoc says so).
#[test]
fn finish_returns_ok_when_another_coroutine_destroys_the_queue_meanwhile() {
    let handled = Rc::new(RefCell::new(Vec::new()));
    let outcome = Rc::new(Cell::new(None));
    let (h, o) = (handled.clone(), outcome.clone());
    run_with_bounded(LIMIT, move || {
        let q: Queue<u32> = Queue::new();
        q.add_worker(move |n| {
            copas::pause(ms(30));
            h.borrow_mut().push(n);
        })
        .unwrap();
        q.push(1).unwrap();
        q.push(2).unwrap();
        let other = q.clone();
        copas::addthread(move || {
            copas::pause(ms(5));
            other.destroy().unwrap();
        })
        .unwrap();
        let started = Instant::now();
        o.set(Some((
            kind(q.finish(Duration::from_secs(5), false)),
            started.elapsed(),
        )));
        assert!(q.is_destroyed());
    });
    let (result, took) = outcome.get().expect("finish returned");
    assert_eq!(result, Ok(()));
    assert!(took < Duration::from_secs(4), "finish waited {took:?}");
    assert_eq!(*handled.borrow(), [1], "item 2 was dropped by the destroy");
}
