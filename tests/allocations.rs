//! What the wait path allocates: nothing, for a socket wait or a `pause`, in steady state.
//!
//! The counting global allocator of `tests/util/heap.rs` counts the allocations made on the
//! dispatcher's thread while a measured window runs, so the tests of this file may run in
//! parallel. An echo of fixed-size messages through `Read::read` into a caller's buffer and
//! `send`, with and without a socket timeout (a timer armed and cancelled per wait), and
//! through the socket's own read buffer (a caller buffer smaller than what arrives), must
//! allocate nothing per message once warm: the poller's event buffer, the ready queue, the
//! timer queue and the task table are all reused. So must a wait on a lock, a semaphore, a
//! queue or a channel, handed over or timed out: what a waker hands over is kept in the
//! object's wait list, whose slab keeps its nodes, a channel waiter's liveness token is
//! reused once no waker holds it, and an error of a kind alone is shared.

#[path = "util/heap.rs"]
mod heap;
mod util;

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;
use std::time::Duration;

use copas::Socket;
use heap::allocations_in;

const MSG: usize = 32;
const WARM: usize = 1_000;
const MEASURED: usize = 10_000;

/// Echo server: `Read::read` into a caller buffer, `send` back; no `Vec` per message.
fn start_echo_server(timeout: Option<Duration>) -> (std::net::SocketAddr, copas::Server) {
    let (listener, addr) = util::local_listener();
    let mut opts = copas::ServerOptions::new();
    if let Some(t) = timeout {
        opts = opts.timeout(t);
    }
    let server = copas::addserver_with(listener, opts, |mut sock: Socket| {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sock.send(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    })
    .expect("addserver");
    (addr, server)
}

/// One echo round trip of `MSG` bytes, read back into `buf`.
fn round_trip(sock: &mut Socket, buf: &mut [u8]) {
    let msg = [b'x'; MSG];
    assert_eq!(sock.send(&msg).expect("send"), MSG);
    let mut got = 0;
    while got < MSG {
        let n = sock.read(&mut buf[..]).expect("read");
        assert!(n > 0, "eof");
        got += n;
    }
}

/// Allocations on the dispatcher's thread over `MEASURED` echo messages after `WARM` warm-up
/// ones, both ends in coroutines of this thread.
fn echo_allocations(timeout: Option<Duration>, cap: usize) -> u64 {
    util::make_dispatcher();
    let (addr, server) = start_echo_server(timeout);
    let out = Rc::new(Cell::new(u64::MAX));
    let out2 = out.clone();
    copas::addthread(move || {
        let mut sock = copas::connect(addr, Some(util::secs(5))).expect("connect");
        sock.settimeout(timeout);
        let mut buf = vec![0u8; cap];
        for _ in 0..WARM {
            round_trip(&mut sock, &mut buf);
        }
        let ((), allocs) = allocations_in(|| {
            for _ in 0..MEASURED {
                round_trip(&mut sock, &mut buf);
            }
        });
        out2.set(allocs);
        sock.close();
        copas::removeserver(server, false).expect("removeserver");
    })
    .expect("addthread");
    util::run_bounded(util::secs(15));
    out.get()
}

#[test]
fn an_echo_in_steady_state_allocates_nothing_per_message() {
    for (what, timeout, cap) in [
        ("no timeout, a 4 KiB buffer", None, 4096),
        ("a 5 s timeout, a 4 KiB buffer", Some(util::secs(5)), 4096),
        ("no timeout, a 16-byte buffer", None, 16),
        ("a 5 s timeout, a 16-byte buffer", Some(util::secs(5)), 16),
    ] {
        let allocs = echo_allocations(timeout, cap);
        assert_eq!(allocs, 0, "{MEASURED} messages with {what}");
    }
}

#[test]
fn pauses_allocate_nothing() {
    util::make_dispatcher();
    let out = Rc::new(Cell::new((u64::MAX, u64::MAX)));
    let out2 = out.clone();
    copas::addthread(move || {
        for _ in 0..WARM {
            copas::pause(Duration::ZERO);
            copas::pause(Duration::from_micros(1));
        }
        let ((), yields) = allocations_in(|| {
            for _ in 0..MEASURED {
                copas::pause(Duration::ZERO);
            }
        });
        let ((), sleeps) = allocations_in(|| {
            for _ in 0..1_000 {
                copas::pause(Duration::from_micros(1));
            }
        });
        out2.set((yields, sleeps));
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    assert_eq!(out.get(), (0, 0), "(10,000 pause(ZERO), 1,000 pause(1 us))");
}

/// Two coroutines take turns on `take`/`give`, each parking while the other holds; returns
/// the allocations of the measured window and how many of its waits parked.
fn contended_allocations(
    take: impl Fn() -> bool + Clone + 'static,
    give: impl Fn() + Clone + 'static,
) -> (u64, usize) {
    util::make_dispatcher();
    let out = Rc::new(Cell::new((u64::MAX, 0)));
    let parked = Rc::new(Cell::new(0));
    let turns =
        move |rounds: usize, take: &dyn Fn() -> bool, give: &dyn Fn(), parked: &Cell<usize>| {
            for _ in 0..rounds {
                if take() {
                    parked.set(parked.get() + 1);
                }
                copas::pause(Duration::ZERO);
                give();
            }
        };
    let (take2, give2, parked2) = (take.clone(), give.clone(), parked.clone());
    copas::addthread(move || turns(WARM + MEASURED + 10, &take2, &give2, &parked2))
        .expect("addthread");
    let out2 = out.clone();
    copas::addthread(move || {
        turns(WARM, &take, &give, &parked);
        let start = parked.get();
        let ((), allocs) = allocations_in(|| turns(MEASURED, &take, &give, &parked));
        out2.set((allocs, parked.get() - start));
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    out.get()
}

#[test]
fn waits_on_a_lock_allocate_nothing() {
    let lock = copas::lock::Lock::new(copas::FOREVER, false);
    let l2 = lock.clone();
    let take = move || {
        let busy = l2.is_locked();
        l2.get(None).expect("get");
        busy
    };
    let give = move || lock.release().expect("release");
    let (allocs, parked) = contended_allocations(take, give);
    assert!(parked >= MEASURED, "only {parked} waits parked");
    assert_eq!(allocs, 0, "{parked} parked waits on a lock");
}

#[test]
fn waits_on_a_semaphore_allocate_nothing() {
    let sema = copas::semaphore::Semaphore::new(2, 2, copas::FOREVER);
    let s2 = sema.clone();
    let take = move || {
        let busy = s2.get_count().expect("count") < 2;
        s2.take(2, None).expect("take");
        busy
    };
    let give = move || sema.give(2).expect("give");
    let (allocs, parked) = contended_allocations(take, give);
    assert!(parked >= MEASURED, "only {parked} waits parked");
    assert_eq!(allocs, 0, "{parked} parked waits on a semaphore");
}

/// A timed-out wait allocates nothing either: the [`copas::Error`] it returns is a shared
/// one of its kind.
#[test]
fn waits_on_a_queue_allocate_nothing() {
    util::make_dispatcher();
    let queue: copas::queue::Queue<u64> = copas::queue::Queue::new();
    let out = Rc::new(Cell::new((u64::MAX, u64::MAX, 0)));
    let pusher = queue.clone();
    // One item more than the popper measures, so that the pusher ends outside the window.
    copas::addthread(move || {
        for n in 0..(WARM + MEASURED + 1) as u64 {
            copas::pause(Duration::ZERO);
            pusher.push(n).expect("push");
        }
    })
    .expect("addthread");
    let out2 = out.clone();
    copas::addthread(move || {
        let pop = |rounds: usize| {
            let mut sum = 0;
            for _ in 0..rounds {
                assert_eq!(queue.get_size(), 0, "every pop waits");
                sum += queue.pop(copas::FOREVER).expect("pop");
            }
            sum
        };
        let time_out = |rounds: usize| {
            for _ in 0..rounds {
                let err = queue.pop(Duration::from_micros(1)).expect_err("empty");
                assert_eq!(err.kind(), copas::ErrorKind::Timeout);
            }
        };
        pop(WARM);
        let (sum, handed) = allocations_in(|| pop(MEASURED));
        pop(1);
        time_out(10);
        let ((), timed_out) = allocations_in(|| time_out(1_000));
        out2.set((handed, timed_out, sum));
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    let (handed, timed_out, sum) = out.get();
    let w = WARM as u64;
    let expected: u64 = (w..w + MEASURED as u64).sum();
    assert_eq!(sum, expected, "every item handed over once");
    assert_eq!(
        (handed, timed_out),
        (0, 0),
        "({MEASURED} pops handed an item; 1,000 timed out)"
    );
}

/// A receive or a send that times out with nothing transferred allocates nothing: a handler
/// polling a quiet socket with a short timeout pays no allocation per expiry. So does a
/// `try_recv` on an empty channel.
#[test]
fn a_timed_out_receive_allocates_nothing() {
    util::make_dispatcher();
    let (addr, server) = start_echo_server(None);
    let out = Rc::new(Cell::new((u64::MAX, u64::MAX, u64::MAX)));
    let out2 = out.clone();
    copas::addthread(move || {
        let mut sock = copas::connect(addr, Some(util::secs(5))).expect("connect");
        sock.settimeout(Some(Duration::from_micros(1)));
        let time_out = |sock: &mut Socket, rounds: usize| {
            for _ in 0..rounds {
                let err = sock.receivepartial(64).expect_err("nothing was sent");
                assert_eq!(err.kind(), copas::ErrorKind::Timeout);
                assert!(err.partial().is_empty());
            }
        };
        let line = |sock: &mut Socket, rounds: usize| {
            for _ in 0..rounds {
                let err = sock
                    .receive(copas::Pattern::Line)
                    .expect_err("nothing was sent");
                assert_eq!(err.kind(), copas::ErrorKind::Timeout);
            }
        };
        let (tx, rx) = copas::channel::unbounded::<u8>();
        let empty = |rounds: usize| {
            for _ in 0..rounds {
                rx.try_recv().expect_err("empty");
            }
        };
        time_out(&mut sock, 10);
        line(&mut sock, 10);
        empty(10);
        let ((), partial) = allocations_in(|| time_out(&mut sock, 1_000));
        let ((), lines) = allocations_in(|| line(&mut sock, 1_000));
        let ((), tries) = allocations_in(|| empty(1_000));
        drop(tx);
        out2.set((partial, lines, tries));
        sock.close();
        copas::removeserver(server, false).expect("removeserver");
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    assert_eq!(
        out.get(),
        (0, 0, 0),
        "(1,000 receivepartial, 1,000 receive(Line) timing out; 1,000 try_recv on empty)"
    );
}

/// A coroutine's closure goes onto its stack: adding and running one allocates nothing with
/// the pool warm, and a closure too big to move onto a new stack (over 960 bytes) runs all
/// the same, boxed: one allocation.
#[test]
fn addthread_allocates_nothing_but_a_big_closure_once() {
    util::make_dispatcher();
    let out = Rc::new(Cell::new((u64::MAX, u64::MAX, 0)));
    let out2 = out.clone();
    copas::addthread(move || {
        let sum = Rc::new(Cell::new(0u64));
        let small = |sum: &Rc<Cell<u64>>| {
            let s = sum.clone();
            copas::addthread(move || s.set(s.get() + 1)).expect("addthread");
            copas::pause(Duration::ZERO);
        };
        let big = |sum: &Rc<Cell<u64>>| {
            let (s, table) = (sum.clone(), [1u8; 2048]);
            copas::addthread(move || {
                s.set(s.get() + table.iter().map(|&b| u64::from(b)).sum::<u64>())
            })
            .expect("addthread of a closure capturing 2 KiB");
            copas::pause(Duration::ZERO);
        };
        for _ in 0..WARM {
            small(&sum);
            big(&sum);
        }
        let ((), smalls) = allocations_in(|| (0..1_000).for_each(|_| small(&sum)));
        let ((), bigs) = allocations_in(|| (0..1_000).for_each(|_| big(&sum)));
        out2.set((smalls, bigs, sum.get()));
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    let w = WARM as u64;
    assert_eq!(out.get(), (0, 1_000, (w + 1_000) * (1 + 2048)));
}

/// Removing a coroutine that has not started allocates nothing: the dispatcher keeps the
/// vector it buries removed coroutines from.
#[test]
fn removing_a_coroutine_before_it_ran_allocates_nothing() {
    util::make_dispatcher();
    let out = Rc::new(Cell::new(u64::MAX));
    let out2 = out.clone();
    copas::addthread(move || {
        let once = || {
            let co = copas::addthread(|| {}).expect("addthread");
            assert!(copas::removethread(co));
            copas::pause(Duration::ZERO);
        };
        (0..WARM).for_each(|_| once());
        let ((), allocs) = allocations_in(|| (0..MEASURED).for_each(|_| once()));
        out2.set(allocs);
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    assert_eq!(out.get(), 0, "{MEASURED} coroutines added and removed");
}

/// A wake-up posted from another thread allocates nothing on that thread in steady state:
/// the dispatcher hands the inbox back the vector it drained.
#[test]
fn a_channel_send_that_wakes_a_parked_receiver_allocates_nothing_on_the_sender() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const ITEMS: u64 = 300;
    const WARM_ITEMS: u64 = 50;
    util::make_dispatcher();
    let (tx, rx) = copas::channel::unbounded::<u64>();
    let taken = Arc::new(AtomicU64::new(0));
    let taken2 = taken.clone();
    let sender = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut allocs = 0;
        for k in 1..=ITEMS {
            while taken2.load(Ordering::Acquire) != k - 1 {
                assert!(start.elapsed() < util::secs(20), "the receiver stalled");
                std::thread::sleep(Duration::from_micros(20));
            }
            // Time for the receiver to park in `recv` before the item comes.
            std::thread::sleep(Duration::from_micros(200));
            let ((), a) = allocations_in(|| tx.send(k).expect("send"));
            if k > WARM_ITEMS {
                allocs += a;
            }
        }
        allocs
    });
    let received = Rc::new(Cell::new(u64::MAX));
    let received2 = received.clone();
    copas::addthread(move || {
        let mut allocs = 0;
        for k in 1..=ITEMS {
            let (item, a) = allocations_in(|| rx.recv().expect("recv"));
            assert_eq!(item, k);
            if k > WARM_ITEMS {
                allocs += a;
            }
            taken.store(k, Ordering::Release);
        }
        received2.set(allocs);
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    let allocs = sender.join().expect("sender");
    assert_eq!(
        (allocs, received.get()),
        (0, 0),
        "{} sends, and as many receives parked until they came",
        ITEMS - WARM_ITEMS
    );
}

/// Two coroutines of one thread passing items back and forth through two channels: every
/// `recv` parks until the other sends, and none allocates.
#[test]
fn parked_receives_on_a_channel_allocate_nothing() {
    util::make_dispatcher();
    let (to_b, from_a) = copas::channel::unbounded::<u64>();
    let (to_a, from_b) = copas::channel::unbounded::<u64>();
    let out = Rc::new(Cell::new((u64::MAX, 0)));
    let out2 = out.clone();
    // One round more than the other measures, so that this one ends outside the window.
    copas::addthread(move || {
        for _ in 0..WARM + MEASURED + 1 {
            to_a.send(from_a.recv().expect("recv b") + 1)
                .expect("send a");
        }
    })
    .expect("addthread");
    copas::addthread(move || {
        let turn = |rounds: usize| {
            let mut last = 0;
            for _ in 0..rounds {
                to_b.send(last).expect("send b");
                last = from_b.recv().expect("recv a");
            }
            last
        };
        turn(WARM);
        let (last, allocs) = allocations_in(|| turn(MEASURED));
        turn(1);
        out2.set((allocs, last));
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    let (allocs, last) = out.get();
    assert!(last > 0, "the items went round");
    assert_eq!(allocs, 0, "{MEASURED} round trips, each recv parked");
}

/// A UDP echo through `recv_from` into a caller's buffer, both ends coroutines of this
/// thread, one datagram in flight at a time: nothing is allocated per datagram.
#[test]
fn a_udp_echo_through_recv_from_allocates_nothing_per_datagram() {
    util::make_dispatcher();
    let server = copas::UdpSocket::bind("127.0.0.1:0").expect("bind server");
    let to = server.local_addr().expect("addr");
    let client = copas::UdpSocket::bind("127.0.0.1:0").expect("bind client");
    client.settimeout(Some(util::secs(5)));
    server.settimeout(Some(util::secs(5)));
    let echoer = server.clone();
    copas::addthread(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = echoer.recv_from(&mut buf) {
            if n == 0 || echoer.sendto(&buf[..n], from).is_err() {
                break;
            }
        }
    })
    .expect("addthread");
    let out = Rc::new(Cell::new(u64::MAX));
    let out2 = out.clone();
    copas::addthread(move || {
        let mut buf = [0u8; 512];
        let mut round = |i: usize| {
            let msg = [(i % 251) as u8; MSG];
            client.sendto(&msg, to).expect("sendto");
            let (n, _) = client.recv_from(&mut buf).expect("recv_from");
            assert_eq!(&buf[..n], &msg[..]);
        };
        for i in 0..WARM {
            round(i);
        }
        let ((), allocs) = allocations_in(|| {
            for i in 0..MEASURED {
                round(i);
            }
        });
        out2.set(allocs);
        client.sendto(&[], to).expect("stop the echoer");
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    server.close();
    assert_eq!(out.get(), 0, "{MEASURED} datagrams echoed");
}
