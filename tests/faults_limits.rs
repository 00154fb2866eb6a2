//! Peers and loads that push the dispatcher's limits: slow clients that would hold a server
//! forever without timeouts, and tearing down thousands of waiting coroutines at once.

#[path = "util/heap.rs"]
mod heap;
mod util;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::{ErrorKind, Pattern, ServerOptions};

const SLOW_CLIENTS: usize = 1000;

/// The tests of this file take turns: each counts the process's descriptors.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes this file's turn, and creates this thread's dispatcher (its poller's descriptors)
/// before the test counts descriptors.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    util::make_dispatcher();
    guard
}

/// Counts drops, to show every coroutine's locals were released exactly once.
struct DropCounter(Rc<Cell<usize>>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn slowloris_clients_are_closed_on_time_while_a_normal_client_is_served() {
    let _turn = turn();
    let _dog = util::Watchdog::new("slowloris", Duration::from_secs(60));
    let fds_before = util::fd_count();
    let (listener, addr) = util::local_listener();
    let listener = {
        // A backlog for 1,000 connections arriving at once.
        let sock = socket2::Socket::from(listener);
        sock.listen(2048).expect("listen");
        std::net::TcpListener::from(sock)
    };
    let timeout = Duration::from_secs(2);
    let server = copas::addserver_with(
        listener,
        ServerOptions::new().name("slow").timeout(timeout),
        |mut sock| {
            // A line protocol: a client that never finishes its line meets the timeout.
            while let Ok(line) = sock.receive(Pattern::Line) {
                if sock.send(&[&line[..], b"\n"].concat()).is_err() {
                    break;
                }
            }
        },
    )
    .expect("addserver");

    let closed_after = Rc::new(RefCell::new(Vec::new()));
    let start = Instant::now();
    for _ in 0..SLOW_CLIENTS {
        let closed_after = closed_after.clone();
        copas::addthread(move || {
            let mut sock = copas::connect(addr, Some(Duration::from_secs(10))).expect("connect");
            let began = Instant::now();
            // One byte a second, never a line feed, for at most 10 s.
            for _ in 0..10 {
                if sock.send(b"x").is_err() {
                    break;
                }
                sock.settimeout(Some(Duration::from_secs(1)));
                match sock.receivepartial(16) {
                    Ok(data) if data.is_empty() => break, // closed by the server
                    Err(e) if e.kind() == ErrorKind::Timeout => {}
                    _ => break,
                }
            }
            closed_after.borrow_mut().push(began.elapsed());
        })
        .expect("slow client");
    }
    // A normal client, served while the slow ones trickle.
    let normal: Rc<RefCell<Vec<Duration>>> = Rc::new(RefCell::new(Vec::new()));
    {
        let normal = normal.clone();
        copas::addthread(move || {
            copas::pause(Duration::from_millis(500));
            let mut sock = copas::connect(addr, Some(Duration::from_secs(5))).expect("connect");
            sock.settimeout(Some(Duration::from_secs(5)));
            for i in 0..10 {
                let sent = Instant::now();
                sock.send(format!("hello {i}\n").as_bytes()).expect("send");
                let back = sock.receive(Pattern::Line).expect("echo");
                assert_eq!(back, format!("hello {i}").into_bytes());
                normal.borrow_mut().push(sent.elapsed());
                copas::pause(Duration::from_millis(50));
            }
        })
        .expect("normal client");
    }
    {
        let closed_after = closed_after.clone();
        copas::addthread(move || {
            while closed_after.borrow().len() < SLOW_CLIENTS
                && start.elapsed() < Duration::from_secs(30)
            {
                copas::pause(Duration::from_millis(100));
            }
            copas::removeserver(server, false).expect("removeserver");
        })
        .expect("stopper");
    }
    util::run_bounded(Duration::from_secs(50));

    let closed = closed_after.borrow();
    assert_eq!(closed.len(), SLOW_CLIENTS, "every slow client finished");
    let latest = closed.iter().max().copied().unwrap_or_default();
    // Closed by the server's 2 s timeout; generous slack for a shared 2-core machine.
    assert!(
        latest < timeout + Duration::from_secs(3),
        "a slow client was held {latest:?}"
    );
    let earliest = closed.iter().min().copied().unwrap_or_default();
    assert!(
        earliest >= timeout - Duration::from_millis(100),
        "a slow client was closed before the timeout: {earliest:?}"
    );
    let normal = normal.borrow();
    assert_eq!(normal.len(), 10, "the normal client was served");
    let worst = normal.iter().max().copied().unwrap_or_default();
    // A round trip held up by the slow clients would wait for their 2 s timeout.
    assert!(worst < timeout / 2, "a round trip took {worst:?}");
    // At most as many as before (a previous test's thread may still be closing its poller
    // when the baseline is taken).
    let fds_after = util::fd_count();
    assert!(
        fds_after <= fds_before,
        "descriptors left open: {fds_before} → {fds_after}"
    );
}

#[test]
fn cancelall_with_thousands_of_waiters_releases_each_exactly_once() {
    let _turn = turn();
    let _dog = util::Watchdog::new("cancelall", Duration::from_secs(60));
    let fds_before = util::fd_count();
    let (listener, addr): (_, SocketAddr) = util::local_listener();
    let listener = {
        let sock = socket2::Socket::from(listener);
        sock.listen(2048).expect("listen");
        std::net::TcpListener::from(sock)
    };
    copas::addserver(listener, |mut sock| {
        // Never answers: the readers below wait forever.
        let _ = sock.receive(Pattern::Line);
    })
    .expect("addserver");
    let dropped = Rc::new(Cell::new(0usize));
    let resumed_after_wait = Rc::new(Cell::new(0usize));
    let lock = Rc::new(copas::lock::Lock::new(copas::FOREVER, false));
    const READERS: usize = 1000;
    const SLEEPERS: usize = 2000;
    const LOCKERS: usize = 1000;
    // The lock's owner holds it forever.
    {
        let lock = lock.clone();
        copas::addthread(move || {
            lock.get(None).expect("first get");
            copas::pauseforever();
        })
        .expect("owner");
    }
    for _ in 0..READERS {
        let (dropped, resumed) = (dropped.clone(), resumed_after_wait.clone());
        copas::addthread(move || {
            let _guard = DropCounter(dropped);
            let mut sock = copas::connect(addr, Some(Duration::from_secs(10))).expect("connect");
            let _ = sock.receive(Pattern::Line);
            resumed.set(resumed.get() + 1);
        })
        .expect("reader");
    }
    for _ in 0..SLEEPERS {
        let (dropped, resumed) = (dropped.clone(), resumed_after_wait.clone());
        copas::addthread(move || {
            let _guard = DropCounter(dropped);
            copas::pause(Duration::from_secs(3600));
            resumed.set(resumed.get() + 1);
        })
        .expect("sleeper");
    }
    for _ in 0..LOCKERS {
        let (dropped, resumed, lock) = (dropped.clone(), resumed_after_wait.clone(), lock.clone());
        copas::addthread(move || {
            let _guard = DropCounter(dropped);
            let _ = lock.get(copas::FOREVER);
            resumed.set(resumed.get() + 1);
        })
        .expect("locker");
    }
    let waiting = Rc::new(Cell::new(0usize));
    {
        let waiting = waiting.clone();
        copas::addthread(move || {
            // Let everybody reach their wait, then pull the plug.
            let start = Instant::now();
            loop {
                let st = copas::status();
                // The server's handlers read too: READERS client reads + READERS handler reads.
                if st.read > 2 * READERS && st.timer >= SLEEPERS
                    || start.elapsed() > Duration::from_secs(20)
                {
                    waiting.set(st.read + st.timer + st.inactive);
                    break;
                }
                copas::pause(Duration::from_millis(20));
            }
            copas::cancelall();
        })
        .expect("canceller");
    }
    let took = util::run_bounded(Duration::from_secs(50));
    assert!(
        waiting.get() >= 2 * READERS + SLEEPERS + LOCKERS,
        "not everybody was waiting: {}",
        waiting.get()
    );
    assert_eq!(
        dropped.get(),
        READERS + SLEEPERS + LOCKERS,
        "every coroutine's locals dropped exactly once"
    );
    assert_eq!(
        resumed_after_wait.get(),
        0,
        "a cancelled waiter was resumed"
    );
    let st = copas::status();
    assert_eq!(
        (st.coroutines, st.sockets, st.read, st.timer),
        (0, 0, 0, 0),
        "{st:?}"
    );
    // At most as many as before (a previous test's thread may still be closing its poller
    // when the baseline is taken).
    let fds_after = util::fd_count();
    assert!(
        fds_after <= fds_before,
        "descriptors left open: {fds_before} → {fds_after}"
    );
    assert!(took < Duration::from_secs(40), "run took {took:?}");
    // The dispatcher is usable afterwards.
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    copas::addthread(move || {
        copas::pause(Duration::from_millis(10));
        r.set(true);
    })
    .expect("after");
    util::run_bounded(Duration::from_secs(5));
    assert!(ran.get());
}

/// This machine's `vm.max_map_count` (Linux's default if it cannot be read).
fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530)
}

#[test]
fn more_coroutines_live_at_once_than_two_mappings_per_stack_would_allow() {
    let _turn = turn();
    let _dog = util::Watchdog::new("more coroutines than mappings", Duration::from_secs(120));
    // Two mappings per stack capped a process at half the limit. Bounded, so that a machine
    // with a raised limit does not need gigabytes (there the test shows less).
    let wanted = (max_map_count() / 2 + 2_000).min(40_000);
    copas::set_stack_size(16 * 1024);
    let mut refused = None;
    for _ in 0..wanted {
        if let Err(e) = copas::addthread(|| {
            copas::pause(Duration::from_secs(3600));
        }) {
            refused = Some(e);
            break;
        }
    }
    let created = copas::status().coroutines;
    // A step starts at most 1,024 coroutines.
    for _ in 0..created / 1024 + 4 {
        copas::step(Some(Duration::ZERO)).expect("step");
        if copas::status().timer == created {
            break;
        }
    }
    let asleep = copas::status().timer;
    copas::cancelall();
    if copas_coro::Stack::shares_mappings() {
        assert_eq!(created, wanted, "refused: {refused:?}");
        assert_eq!(asleep, wanted, "every coroutine started and sleeps");
    } else {
        // Linux < 6.13: each stack is two mappings, and the one past the limit is refused
        // with a typed error, not a panic.
        let e = refused.expect("no refusal near vm.max_map_count");
        assert!(e.to_string().contains("vm.max_map_count"), "{e}");
    }
}

#[test]
fn a_stack_size_beyond_the_address_space_makes_addthread_fail_not_panic() {
    let _turn = turn();
    copas::set_stack_size(usize::MAX);
    let refused = copas::addthread(|| unreachable!("ran without a stack"));
    copas::set_stack_size(copas::DEFAULT_STACK_SIZE);
    let e = refused.expect_err("no stack that large");
    // `Io`, as addthread's docs say of a stack that cannot be mapped.
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("stack size too large"), "{e}");
    assert_eq!(copas::status().coroutines, 0);
    copas::addthread(|| {}).expect("a default stack again");
    copas::run().expect("run");
}

/// Adds a coroutine running `wait`, lets it wait, removes it; `n` times.
fn park_and_remove(n: usize, wait: fn()) {
    for _ in 0..n {
        let co = copas::addthread(wait).unwrap();
        copas::step(Some(Duration::ZERO)).unwrap();
        assert!(copas::removethread(co));
    }
}

#[test]
fn coroutines_removed_while_waiting_for_exit_leave_nothing_behind() {
    let _turn = turn();
    let _dog = util::Watchdog::new("waitforexit churn", Duration::from_secs(60));
    let wait = || {
        let _ = copas::waitforexit();
    };
    park_and_remove(100, wait); // the stack pool and the tables at their working size
    let ((), few) = heap::peak_heap(|| park_and_remove(1_000, wait));
    let ((), many) = heap::peak_heap(|| park_and_remove(30_000, wait));
    // Before: each removed waiter stayed on the exit list (a `Vec` growing to 30,000
    // entries, 256 KiB at its last doubling).
    assert!(
        many < few + 64 * 1024,
        "peak heap grows with the removed waiters: {few} B over 1,000, {many} B over 30,000"
    );
    assert!(copas::finished());
}

/// A connection that received a line near the line limit, and a byte of the next, keeps
/// no buffer sized for that line while it waits for the rest: ten such idle connections
/// held 64 KiB each; an idle connection is a few KiB (docs/manual/13-performance.md).
#[test]
fn a_connection_waiting_after_a_long_line_keeps_no_buffer_sized_for_it() {
    use std::io::Write;
    let _turn = turn();
    let _dog = util::Watchdog::new("read buffer after a long line", Duration::from_secs(60));
    const CONNS: usize = 10;
    const LINE: usize = 60_000;
    let (listener, addr) = util::local_listener();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..CONNS {
            let (mut s, _) = listener.accept().expect("accept");
            let mut msg = vec![b'a'; LINE];
            msg.extend_from_slice(b"\nb");
            s.write_all(&msg).expect("write");
            held.push(s);
        }
        let _ = released.recv_timeout(Duration::from_secs(30));
    });
    let waiting = Rc::new(Cell::new(0usize));
    let socks: Rc<RefCell<Vec<copas::Socket>>> = Rc::default();
    let before = heap::live_heap();
    for _ in 0..CONNS {
        let (waiting, socks) = (waiting.clone(), socks.clone());
        copas::addthread(move || {
            let mut sock = copas::connect(addr, Some(Duration::from_secs(10))).expect("connect");
            socks.borrow_mut().push(sock.share());
            assert_eq!(sock.receive(Pattern::Line).expect("the line").len(), LINE);
            waiting.set(waiting.get() + 1);
            // Waits for the rest of the next line until the socket is closed.
            let rest = sock.receive(Pattern::Line).expect_err("closed");
            assert_eq!(rest.kind(), ErrorKind::Closed);
        })
        .expect("addthread");
    }
    assert!(util::step_until(Duration::from_secs(20), || waiting.get() == CONNS));
    for _ in 0..5 {
        copas::step(Some(Duration::from_millis(1))).expect("step");
    }
    let held = heap::live_heap() - before;
    for sock in socks.borrow().iter() {
        sock.close();
    }
    socks.borrow_mut().clear();
    util::run_bounded(Duration::from_secs(20));
    release.send(()).expect("peer waiting");
    peer.join().expect("peer");
    eprintln!("{CONNS} idle connections after a {LINE}-byte line hold {held} bytes");
    assert!(
        held < (CONNS * 16 * 1024) as isize,
        "{CONNS} idle connections hold {held} bytes"
    );
}

/// A burst of coroutines leaves no tables sized for it: once the burst is over and the
/// dispatcher has been idle, the heap it holds is back near where it was (the task slab, the
/// ready queue, the timer queue and the stack pool's list kept their high-water capacity:
/// 20,000 sleepers left about 9.6 MB behind).
#[test]
fn a_burst_of_coroutines_leaves_no_tables_sized_for_it_once_idle() {
    const BURST: usize = 20_000;
    let _dog = util::Watchdog::new("burst heap", Duration::from_secs(120));
    // The dispatcher and its first tables exist before the baseline.
    copas::addthread(|| {
        copas::pause(Duration::from_millis(1));
    })
    .expect("addthread");
    util::run_bounded(Duration::from_secs(10));
    let before = heap::live_heap();
    for i in 0..BURST {
        copas::addthread(move || {
            copas::pause(Duration::from_millis(1 + (i % 7) as u64));
        })
        .expect("addthread");
    }
    util::run_bounded(Duration::from_secs(60));
    // Idle steps give surplus stacks back, then trim the tables.
    for _ in 0..50 {
        copas::step(Some(Duration::from_millis(5))).expect("step");
        if copas::status().pooled_stacks <= 1024 {
            break;
        }
    }
    copas::step(Some(Duration::from_millis(5))).expect("step");
    let held = heap::live_heap() - before;
    eprintln!("after {BURST} coroutines, the dispatcher holds {held} bytes more");
    assert!(held < 512 * 1024, "{held} bytes held after the burst");
}

/// Removes one coroutine when dropped, and counts itself dropped.
struct RemoveNext {
    next: Rc<Cell<Option<copas::Coroutine>>>,
    _counted: DropCounter,
}

impl Drop for RemoveNext {
    fn drop(&mut self) {
        if let Some(co) = self.next.take() {
            copas::removethread(co);
        }
    }
}

const CHAIN: usize = 20_000;

/// The child of the test below: on a thread with a 2 MiB stack, `CHAIN` coroutines that never
/// ran, each holding a guard that removes the next when dropped.
#[test]
fn child_remove_a_chain_of_unstarted_coroutines() {
    if !util::is_child("COPAS_CHAIN_CHILD") {
        return;
    }
    let (dropped, coroutines) = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            util::make_dispatcher();
            let dropped = Rc::new(Cell::new(0));
            let slots: Vec<_> = (0..CHAIN).map(|_| Rc::new(Cell::new(None))).collect();
            let cos: Vec<_> = slots
                .iter()
                .map(|slot| {
                    let guard = RemoveNext {
                        next: slot.clone(),
                        _counted: DropCounter(dropped.clone()),
                    };
                    copas::addthread(move || {
                        let _guard = guard;
                        copas::pauseforever();
                    })
                    .expect("addthread")
                })
                .collect();
            for (slot, next) in slots.iter().zip(&cos[1..]) {
                slot.set(Some(*next));
            }
            assert!(copas::removethread(cos[0]));
            (dropped.get(), copas::status().coroutines)
        })
        .expect("thread")
        .join()
        .expect("the chain's thread");
    assert_eq!((dropped, coroutines), (CHAIN, 0));
    println!("CHAIN-REMOVED");
}

/// Removing a coroutine that never ran drops what its closure holds outside any unwind; a
/// destructor there that removes another such coroutine, and so on down a chain of 20,000,
/// is served by one reap in a loop, not by a reap nested per link (which overflowed a 2 MiB
/// stack after a few hundred links and aborted the process).
#[test]
fn removing_a_chain_of_unstarted_coroutines_does_not_nest_per_link() {
    let out = util::run_child(
        "child_remove_a_chain_of_unstarted_coroutines",
        "COPAS_CHAIN_CHILD",
        util::secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHAIN-REMOVED"),
        "child: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
