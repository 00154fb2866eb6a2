//! `copas::channel` (issue 9): senders on any thread, a receiver that suspends only its
//! coroutine.
//!
//! Eight OS threads send 10,000 items each into one coroutine's channel, bounded and
//! unbounded: every item arrives once, in order per sender, and the dispatcher needs far
//! fewer steps than items (wake-ups are batched). Closing either end is seen by the other
//! with a typed error (and the items come back to the senders). The dispatcher sleeps in its
//! poller while nothing arrives. A bounded channel holds no more than its capacity, and a
//! full one suspends a sending coroutine — on the receiver's dispatcher or another — without
//! blocking its thread. Outside coroutines the same calls block the thread.
//!
//! Loopback only; every run has a watchdog and every loop is bounded.

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use copas::channel::{self, Receiver, Sender};
use copas::ErrorKind;
use util::ms;

const SENDERS: usize = 8;
const ITEMS: u32 = 10_000;

/// Fails the test if a coroutine panicked (an assertion inside one would only be reported).
fn panics_are_failures() -> Rc<RefCell<Vec<String>>> {
    let reports = Rc::new(RefCell::new(Vec::<String>::new()));
    let sink = reports.clone();
    copas::setdefaulterrorhandler(move |report| sink.borrow_mut().push(report.to_string()));
    reports
}

fn assert_no_panics(reports: &RefCell<Vec<String>>) {
    let reports = reports.borrow();
    assert!(reports.is_empty(), "a coroutine panicked: {reports:#?}");
}

/// Steps the dispatcher (each step sleeps in the poller until there is something to do)
/// until `done()`; returns how many steps it took. At most `max_steps`.
fn steps_until(max_steps: usize, done: impl Fn() -> bool) -> usize {
    let mut steps = 0;
    while !done() {
        assert!(steps < max_steps, "not done after {steps} steps");
        copas::step(None).expect("step");
        steps += 1;
    }
    steps
}

/// What the receiving coroutine of [`eight_threads_into_one_coroutine`] saw.
#[derive(Default, Debug)]
struct FanIn {
    received: usize,
    next: [u32; SENDERS],
    out_of_order: usize,
    longest_queue: usize,
    end: Option<ErrorKind>,
}

/// An item: which sender, and its sequence number.
type Item = (usize, u32);

fn eight_threads_into_one_coroutine((tx, rx): (Sender<Item>, Receiver<Item>)) -> FanIn {
    let _dog = util::Watchdog::new("eight senders", Duration::from_secs(120));
    let reports = panics_are_failures();
    let seen = Rc::new(RefCell::new(FanIn::default()));
    let done = Rc::new(Cell::new(false));
    let (s, d) = (seen.clone(), done.clone());
    copas::addthread(move || {
        loop {
            match rx.recv() {
                Ok((sender, k)) => {
                    let mut s = s.borrow_mut();
                    if k != s.next[sender] {
                        s.out_of_order += 1;
                    }
                    s.next[sender] = k + 1;
                    s.received += 1;
                    s.longest_queue = s.longest_queue.max(rx.len());
                }
                Err(e) => {
                    s.borrow_mut().end = Some(e.kind());
                    break;
                }
            }
        }
        d.set(true);
    })
    .unwrap();
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for k in 0..ITEMS {
                    tx.send((sender, k)).expect("the receiver is alive");
                }
            })
        })
        .collect();
    drop(tx); // the senders' clones are the only ones left
    let started = Instant::now();
    let steps = steps_until(1_000_000, || done.get());
    let took = started.elapsed();
    for s in senders {
        s.join().expect("sender thread");
    }
    assert_no_panics(&reports);
    let total = SENDERS * ITEMS as usize;
    println!("{total} items in {took:?}, {steps} dispatcher steps");
    // Every step handles at least one item (no spurious wake-up storm); in practice a
    // burst of items costs one wake-up, so far fewer steps than items.
    assert!(steps <= total + 10, "{steps} steps for {total} items");
    Rc::try_unwrap(seen).unwrap().into_inner()
}

fn check_fan_in(seen: &FanIn) {
    assert_eq!(seen.received, SENDERS * ITEMS as usize, "{seen:?}");
    assert_eq!(
        seen.next, [ITEMS; SENDERS],
        "every item of every sender arrived"
    );
    assert_eq!(seen.out_of_order, 0, "in order per sender");
    assert_eq!(
        seen.end,
        Some(ErrorKind::Closed),
        "the closed channel ends the loop"
    );
}

#[test]
fn eight_threads_send_ten_thousand_items_each_into_one_coroutine_unbounded() {
    let seen = eight_threads_into_one_coroutine(channel::unbounded());
    check_fan_in(&seen);
}

#[test]
fn eight_threads_send_ten_thousand_items_each_into_one_coroutine_bounded() {
    let seen = eight_threads_into_one_coroutine(channel::bounded(64));
    check_fan_in(&seen);
    assert!(seen.longest_queue <= 64, "{seen:?}");
}

#[test]
fn a_closed_channel_wakes_the_waiting_receiver_with_closed_after_the_items() {
    let _dog = util::Watchdog::new("close wakes receiver", Duration::from_secs(60));
    let reports = panics_are_failures();
    let (tx, rx) = channel::unbounded::<u32>();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    copas::addthread(move || loop {
        let r = rx.recv();
        let end = r.is_err();
        g.borrow_mut().push(r.map_err(|e| e.kind()));
        if end {
            break;
        }
    })
    .unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(ms(100));
        for n in 0..3 {
            tx.send(n).unwrap();
        }
        std::thread::sleep(ms(100));
        drop(tx); // wakes the receiver, which waits again after the three items
    });
    util::run_bounded(Duration::from_secs(30));
    sender.join().unwrap();
    assert_no_panics(&reports);
    assert_eq!(
        *got.borrow(),
        vec![Ok(0), Ok(1), Ok(2), Err(ErrorKind::Closed)]
    );
}

#[test]
fn dropping_the_receiver_gives_the_items_back_to_waiting_senders() {
    let _dog = util::Watchdog::new("receiver dropped", Duration::from_secs(60));
    let reports = panics_are_failures();
    let (tx, rx) = channel::bounded::<Arc<u32>>(1);
    tx.send(Arc::new(0)).unwrap(); // full from now on
    let queued = Arc::new(100);
    assert!(tx.try_send(queued.clone()).is_err());
    // A plain thread and a coroutine both wait for room.
    let thread_tx = tx.clone();
    let from_thread = std::thread::spawn(move || {
        let err = thread_tx.send(Arc::new(1)).unwrap_err();
        (err.kind(), *err.into_inner())
    });
    let from_coroutine = Rc::new(RefCell::new(None));
    let out = from_coroutine.clone();
    let coroutine_tx = tx.clone();
    copas::addthread(move || {
        let err = coroutine_tx.send(Arc::new(2)).unwrap_err();
        *out.borrow_mut() = Some((err.kind(), *err.into_inner()));
    })
    .unwrap();
    let in_channel = Arc::new(3);
    copas::addthread(move || {
        copas::pause(ms(100)); // both senders wait by now
        drop(rx);
    })
    .unwrap();
    util::run_bounded(Duration::from_secs(30));
    assert_no_panics(&reports);
    assert_eq!(from_thread.join().unwrap(), (ErrorKind::Closed, 1));
    assert_eq!(*from_coroutine.borrow(), Some((ErrorKind::Closed, 2)));
    let err = tx.send(in_channel.clone()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert!(tx.is_closed());
    drop(err);
    assert_eq!(
        Arc::strong_count(&in_channel),
        1,
        "the refused item came back"
    );
    assert_eq!(Arc::strong_count(&queued), 1);
}

#[test]
fn the_dispatcher_sleeps_while_nothing_arrives() {
    let _dog = util::Watchdog::new("idle receiver", Duration::from_secs(60));
    let reports = panics_are_failures();
    let (tx, rx) = channel::unbounded::<u32>();
    let result = Rc::new(RefCell::new(None));
    let r = result.clone();
    copas::addthread(move || {
        let cpu = util::thread_cpu_time();
        let started = Instant::now();
        let item = rx.recv();
        *r.borrow_mut() = Some((
            item.map_err(|e| e.kind()),
            started.elapsed(),
            util::thread_cpu_time() - cpu,
        ));
    })
    .unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(ms(500));
        tx.send(7).unwrap();
        tx // dropped after the receiver has its item
    });
    let steps = steps_until(1_000, || result.borrow().is_some());
    drop(sender.join().unwrap());
    assert_no_panics(&reports);
    let (item, waited, cpu) = result.borrow_mut().take().unwrap();
    assert_eq!(item, Ok(7));
    assert!(waited >= ms(450), "waited only {waited:?}");
    println!("idle wait of {waited:?}: {cpu:?} CPU, {steps} steps");
    // Start, one wake-up for the item, maybe one spurious: never a spin.
    assert!(steps <= 4, "{steps} steps while idle");
    assert!(cpu < ms(50), "{cpu:?} of CPU while idle");
}

#[test]
fn a_bounded_channel_holds_no_more_than_its_capacity() {
    let _dog = util::Watchdog::new("capacity", Duration::from_secs(60));
    let reports = panics_are_failures();
    let (tx, rx) = channel::bounded::<u32>(3);
    assert_eq!(tx.capacity(), Some(3));
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let sender = std::thread::spawn(move || {
        for n in 0..20 {
            tx.send(n).unwrap();
            s.fetch_add(1, Ordering::SeqCst);
        }
    });
    let seen = Rc::new(RefCell::new((0, 0, Vec::new(), 0)));
    let out = seen.clone();
    copas::addthread(move || {
        // Give the sender time to fill the channel and block on the fourth item.
        let start = Instant::now();
        while rx.len() < 3 && start.elapsed() < Duration::from_secs(10) {
            copas::pause(ms(5));
        }
        copas::pause(ms(100));
        let mut s = out.borrow_mut();
        s.0 = sent.load(Ordering::SeqCst);
        s.1 = rx.len();
        while let Ok(n) = rx.recv() {
            s.2.push(n);
            s.3 = s.3.max(rx.len());
        }
    })
    .unwrap();
    util::run_bounded(Duration::from_secs(30));
    sender.join().unwrap();
    assert_no_panics(&reports);
    let (sent_while_full, len_while_full, items, longest) = &*seen.borrow();
    assert_eq!(*sent_while_full, 3, "the fourth send waits for room");
    assert_eq!(*len_while_full, 3);
    assert_eq!(*items, (0..20).collect::<Vec<_>>());
    assert!(*longest <= 3);
}

#[test]
fn a_full_channel_suspends_a_sending_coroutine_on_the_receivers_dispatcher() {
    let _dog = util::Watchdog::new("same-dispatcher producer", Duration::from_secs(60));
    let reports = panics_are_failures();
    let (tx, rx) = channel::bounded::<u32>(2);
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    copas::addthread(move || {
        for n in 0..1_000 {
            tx.send(n).unwrap();
            l.borrow_mut().push(('s', n));
        }
    })
    .unwrap();
    let l = log.clone();
    copas::addthread(move || {
        while let Ok(n) = rx.recv() {
            l.borrow_mut().push(('r', n));
        }
    })
    .unwrap();
    // Had the send blocked the thread, nothing would ever receive: the watchdog fires.
    util::run_bounded(Duration::from_secs(30));
    assert_no_panics(&reports);
    let log = log.borrow();
    let (mut sent, mut received) = (0i64, 0i64);
    for &(what, _) in log.iter() {
        match what {
            's' => sent += 1,
            _ => received += 1,
        }
        assert!(sent - received <= 2, "more than the capacity in flight");
    }
    assert_eq!((sent, received), (1_000, 1_000));
}

#[test]
fn a_full_channel_suspends_a_sending_coroutine_on_another_dispatcher_not_its_thread() {
    let _dog = util::Watchdog::new("cross-dispatcher producer", Duration::from_secs(90));
    let reports = panics_are_failures();
    let (tx, rx) = channel::bounded::<u32>(1);
    let ticks_while_blocked = Arc::new(AtomicUsize::new(0));
    let producer_done = Arc::new(AtomicBool::new(false));
    let (ticks, done) = (ticks_while_blocked.clone(), producer_done.clone());
    let other = std::thread::spawn(move || {
        let blocked = Rc::new(Cell::new(false));
        let b = blocked.clone();
        let d = done.clone();
        copas::addthread(move || {
            tx.send(0).unwrap(); // fills the channel
            b.set(true);
            for n in 1..500 {
                tx.send(n).unwrap();
            }
            b.set(false);
            d.store(true, Ordering::SeqCst);
        })
        .unwrap();
        // A ticker on the same dispatcher: it ticks only if the send suspended just the
        // producer coroutine.
        copas::addthread(move || {
            let start = Instant::now();
            while !done.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
                copas::pause(ms(2));
                if blocked.get() {
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .unwrap();
        copas::run().unwrap();
    });
    let received = Rc::new(RefCell::new(Vec::new()));
    let r = received.clone();
    let ticks = ticks_while_blocked.clone();
    copas::addthread(move || {
        // Receive nothing until the other dispatcher has ticked while its producer waits.
        let start = Instant::now();
        while ticks.load(Ordering::SeqCst) < 3 && start.elapsed() < Duration::from_secs(30) {
            copas::pause(ms(5));
        }
        while let Ok(n) = rx.recv() {
            r.borrow_mut().push(n);
        }
    })
    .unwrap();
    util::run_bounded(Duration::from_secs(60));
    other.join().unwrap();
    assert_no_panics(&reports);
    assert!(
        ticks_while_blocked.load(Ordering::SeqCst) >= 3,
        "the producer's thread went on while it waited"
    );
    assert!(producer_done.load(Ordering::SeqCst));
    assert_eq!(*received.borrow(), (0..500).collect::<Vec<_>>());
}

#[test]
fn outside_a_coroutine_recv_and_send_block_the_thread() {
    let _dog = util::Watchdog::new("blocking ends", Duration::from_secs(60));
    let (tx, rx) = channel::bounded::<u32>(1);
    assert_eq!(rx.try_recv().unwrap_err().kind(), ErrorKind::Timeout);
    let started = Instant::now();
    assert_eq!(
        rx.recv_timeout(ms(50)).unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert!(started.elapsed() >= ms(50));

    let sender = std::thread::spawn(move || {
        std::thread::sleep(ms(50));
        tx.send(1).unwrap();
        tx.send(2).unwrap(); // waits until the main thread takes 1
        tx
    });
    assert_eq!(rx.recv().unwrap(), 1);
    assert_eq!(rx.recv().unwrap(), 2);
    let tx = sender.join().unwrap();
    tx.send(3).unwrap();
    let full = tx.send_timeout(4, ms(20)).unwrap_err();
    assert_eq!((full.kind(), full.into_inner()), (ErrorKind::Timeout, 4));
    drop(tx);
    assert_eq!(rx.recv().unwrap(), 3);
    assert_eq!(rx.recv().unwrap_err().kind(), ErrorKind::Closed);
    assert!(rx.is_closed());
}

#[test]
fn a_receiver_coroutine_removed_while_waiting_leaves_the_line() {
    let _dog = util::Watchdog::new("removed receiver", Duration::from_secs(60));
    let reports = panics_are_failures();
    let (tx, rx) = channel::unbounded::<u32>();
    let rx = Rc::new(rx);
    let first = {
        let rx = rx.clone();
        copas::addthread(move || {
            let _ = rx.recv();
            unreachable!("removed while waiting");
        })
        .unwrap()
    };
    let got = Rc::new(Cell::new(None));
    let (g, rx2) = (got.clone(), rx.clone());
    copas::addthread(move || {
        copas::pause(ms(20)); // the first one waits by now
        assert!(copas::removethread(first));
        let tx = tx; // the last sender, sent from here
        tx.send(5).unwrap();
        // The item was not handed to the removed coroutine: this one gets it.
        g.set(Some(
            rx2.recv_timeout(Duration::from_secs(5))
                .map_err(|e| e.kind()),
        ));
    })
    .unwrap();
    util::run_bounded(Duration::from_secs(30));
    assert_no_panics(&reports);
    assert_eq!(got.get(), Some(Ok(5)));
    assert!(rx.is_closed() && rx.is_empty());
}

#[test]
fn recv_timeout_in_a_coroutine_times_out_and_keeps_the_loop_going_meanwhile() {
    let _dog = util::Watchdog::new("recv timeout", Duration::from_secs(60));
    let reports = panics_are_failures();
    let (tx, rx) = channel::unbounded::<u32>();
    let got = Rc::new(Cell::new(None));
    let g = got.clone();
    copas::addthread(move || {
        let started = Instant::now();
        let r = rx.recv_timeout(ms(100)).map_err(|e| e.kind());
        g.set(Some((r, started.elapsed() >= ms(100))));
    })
    .unwrap();
    util::run_bounded(Duration::from_secs(30));
    assert_no_panics(&reports);
    assert_eq!(got.get(), Some((Err(ErrorKind::Timeout), true)));
    drop(tx);
}

/// A guard that reports on a channel when it is dropped ("I am done"), whichever way its
/// coroutine ends.
struct SendOnDrop {
    tx: Option<Sender<u32>>,
    outcome: Rc<RefCell<Option<Result<(), ErrorKind>>>>,
}

impl Drop for SendOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            *self.outcome.borrow_mut() = Some(tx.send(1).map_err(|e| e.kind()));
        }
    }
}

/// A removed coroutine's waits end at once, cancelled: a send on a full channel from a
/// destructor of its locals does not park the dispatcher's thread until another thread
/// makes room.
#[test]
fn a_send_in_a_removed_coroutines_destructor_is_cancelled_at_once() {
    let _dog = util::Watchdog::new("send in a destructor", Duration::from_secs(20));
    let (tx, rx) = channel::bounded::<u32>(1);
    tx.send(0).unwrap(); // full
    let drainer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        let mut got = Vec::new();
        while let Ok(n) = rx.recv_timeout(ms(500)) {
            got.push(n);
        }
        got
    });
    let outcome = Rc::new(RefCell::new(None));
    let took = util::remove_coroutine_holding(SendOnDrop {
        tx: Some(tx),
        outcome: outcome.clone(),
    });
    assert_eq!(*outcome.borrow(), Some(Err(ErrorKind::Cancelled)));
    assert!(took < Duration::from_secs(1), "removethread took {took:?}");
    assert_eq!(
        drainer.join().unwrap(),
        vec![0],
        "the cancelled item is not sent"
    );
}

/// The same at a shutdown, with the channel's reader a coroutine of the same thread: the
/// send in the cancelled coroutine's destructor used to park the thread for good, and
/// `run` never returned.
#[test]
fn a_shutdown_ends_when_a_cancelled_coroutine_sends_on_a_full_channel_its_own_thread_reads() {
    let _dog = util::Watchdog::new("shutdown and a full channel", Duration::from_secs(30));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let (tx, rx) = channel::bounded::<u32>(1);
        tx.send(0).unwrap(); // full: the reader below is slow
        let outcome = Rc::new(RefCell::new(None));
        let guard = SendOnDrop {
            tx: Some(tx),
            outcome: outcome.clone(),
        };
        copas::addthread(move || {
            let _guard = guard;
            copas::pause(Duration::from_secs(60));
        })
        .unwrap();
        copas::addthread(move || {
            copas::pause(Duration::from_secs(60));
            while rx.recv().is_ok() {}
        })
        .unwrap();
        copas::addthread(|| {
            copas::pause(ms(20));
            copas::shutdown(ms(100));
        })
        .unwrap();
        let start = Instant::now();
        copas::run().unwrap();
        let _ = done_tx.send((start.elapsed(), outcome.borrow_mut().take()));
    });
    let (took, outcome) = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("run did not return within 10 s of a 100 ms shutdown");
    worker.join().unwrap();
    assert!(took < Duration::from_secs(2), "run returned after {took:?}");
    assert_eq!(outcome, Some(Err(ErrorKind::Cancelled)));
}
