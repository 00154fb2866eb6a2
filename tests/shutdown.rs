//! Graceful shutdown (issue 9): `copas::shutdown` stops accepting at once, lets running
//! coroutines finish until its deadline, then cancels what is left; `run` returns with
//! nothing left behind.

mod util;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use copas::lock::Lock;
use copas::{ErrorKind, Pattern, ServerOptions, Socket, FOREVER};
use util::ms;
use util::Watchdog;

/// Counts its drops: a coroutine's locals are dropped when it ends or is cancelled.
struct DropGuard(Rc<Cell<u32>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

// ----- 1,000 busy connections --------------------------------------------------------------

const BUSY_CHILD: &str = "COPAS_TEST_SHUTDOWN_BUSY_CHILD";

/// Connections, half of them polite (their handler ends after the request it is serving
/// when the shutdown begins), half stubborn (their handler ignores it).
const CONNECTIONS: usize = 1000;

/// The shutdown's grace period: long enough for every polite connection's last exchange
/// on a loaded 2-core machine.
const GRACE: Duration = Duration::from_secs(5);

/// A generous bound on how long after its deadline the shutdown may end (shared 2-core
/// machine, debug build).
const SLACK: Duration = Duration::from_secs(20);

/// What a server handler saw.
#[derive(Default)]
struct ServerTally {
    /// Handlers that did three exchanges.
    warm: Cell<usize>,
    /// Polite handlers that answered their last request with "bye" and returned.
    finished: Cell<usize>,
    /// Handlers unwound while serving: cancelled by the shutdown.
    cancelled: Cell<usize>,
    /// Handlers that ended any other way.
    failures: RefCell<Vec<String>>,
}

/// How a handler ended, recorded when its locals are dropped.
struct HandlerOutcome {
    tally: Rc<ServerTally>,
    ended: Option<Result<(), String>>,
}

impl Drop for HandlerOutcome {
    fn drop(&mut self) {
        let t = &self.tally;
        match self.ended.take() {
            Some(Ok(())) => t.finished.set(t.finished.get() + 1),
            Some(Err(e)) => t.failures.borrow_mut().push(e),
            // Dropped while still serving: only the forced unwind of a cancel does that.
            None => t.cancelled.set(t.cancelled.get() + 1),
        }
    }
}

/// Echoes lines after a little work. A polite handler answers the request it is serving
/// when it finds the dispatcher exiting with `bye <line>` and returns; a stubborn one goes
/// on until it is cancelled.
fn busy_handler(tally: Rc<ServerTally>, mut sock: Socket) {
    let mut outcome = HandlerOutcome {
        tally: tally.clone(),
        ended: None,
    };
    let polite = match sock.receive(Pattern::Line) {
        Ok(mode) if mode == b"polite" => true,
        Ok(mode) if mode == b"stubborn" => false,
        other => {
            outcome.ended = Some(Err(format!("mode line: {other:?}")));
            return;
        }
    };
    for n in 0u64.. {
        let line = match sock.receive(Pattern::Line) {
            Ok(line) => line,
            Err(e) => {
                outcome.ended = Some(Err(format!("receive {n}: {e}")));
                return;
            }
        };
        copas::pause(ms(10)); // the request's work
        let bye = polite && copas::exiting();
        let reply = if bye {
            [b"bye ", &line[..], b"\n"].concat()
        } else {
            [&line[..], b"\n"].concat()
        };
        if let Err(e) = sock.send(&reply) {
            outcome.ended = Some(Err(format!("send {n}: {e}")));
            return;
        }
        if bye {
            outcome.ended = Some(Ok(()));
            return;
        }
        if n == 2 {
            tally.warm.set(tally.warm.get() + 1);
        }
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct ClientReport {
    /// Polite clients that got every reply, then `bye` for their last request, then a clean
    /// end of stream.
    said_bye: usize,
    /// Stubborn clients whose connection ended after the shutdown began, and when.
    cut: Vec<Instant>,
    /// The connection attempt made after the shutdown began was refused.
    refused: bool,
    failures: Vec<String>,
}

/// One client: sends its mode, then lines one at a time, each after the previous reply
/// and some think time (which keeps the load reasonable on a shared machine).
fn busy_client(
    id: usize,
    addr: SocketAddr,
    started: &AtomicBool,
    report: &RefCell<ClientReport>,
) -> Result<(), String> {
    let polite = id % 2 == 0;
    let mut sock = copas::connect(addr, Some(Duration::from_secs(30)))
        .map_err(|e| format!("client {id}: connect: {e}"))?;
    sock.settimeout(Some(Duration::from_secs(60)));
    let mode: &[u8] = if polite { b"polite\n" } else { b"stubborn\n" };
    sock.send(mode)
        .map_err(|e| format!("client {id}: send mode: {e}"))?;
    // Bounded: at 100 ms per exchange a minute is far fewer than this.
    for n in 0..1_000_000u64 {
        let line = format!("client {id} line {n}");
        let reply = sock
            .send(format!("{line}\n").as_bytes())
            .and_then(|_| sock.receive(Pattern::Line));
        match reply {
            Ok(reply) if reply == line.as_bytes() => {}
            Ok(reply) if polite && reply == format!("bye {line}").as_bytes() => {
                return match sock.receive(Pattern::Line) {
                    Err(e) if e.kind() == ErrorKind::Closed && e.partial().is_empty() => {
                        report.borrow_mut().said_bye += 1;
                        Ok(())
                    }
                    other => Err(format!("client {id}: after bye: {other:?}")),
                };
            }
            Ok(reply) => {
                return Err(format!(
                    "client {id}: sent {line:?}, got {:?}",
                    String::from_utf8_lossy(&reply)
                ))
            }
            Err(e) if !polite && started.load(Ordering::SeqCst) => {
                // Cancelled at the deadline: an end of stream, or a reset when a line of
                // ours was still unread on the server's side (both `Closed`).
                if e.kind() != ErrorKind::Closed {
                    return Err(format!("client {id}: cut with {e}"));
                }
                report.borrow_mut().cut.push(Instant::now());
                return Ok(());
            }
            Err(e) => return Err(format!("client {id}: line {n}: {e}")),
        }
        copas::pause(ms(100));
    }
    Err(format!("client {id}: never stopped"))
}

/// The clients, on their own thread with its own dispatcher.
fn run_clients(addr: SocketAddr, started: Arc<AtomicBool>) -> ClientReport {
    let report = Rc::new(RefCell::new(ClientReport::default()));
    for id in 0..CONNECTIONS {
        let (report, started) = (report.clone(), started.clone());
        copas::addthread(move || {
            if let Err(e) = busy_client(id, addr, &started, &report) {
                report.borrow_mut().failures.push(e);
            }
        })
        .expect("addthread client");
    }
    {
        let report = report.clone();
        copas::addthread(move || {
            // Bounded: 60 s of 5 ms naps.
            for _ in 0..12_000 {
                if started.load(Ordering::SeqCst) {
                    break;
                }
                copas::pause(ms(5));
            }
            let attempt = copas::connect(addr, Some(Duration::from_secs(5)));
            match attempt {
                Err(e) if e.kind() == ErrorKind::Refused => report.borrow_mut().refused = true,
                other => report
                    .borrow_mut()
                    .failures
                    .push(format!("connecting after the shutdown began: {other:?}")),
            }
        })
        .expect("addthread watcher");
    }
    copas::run().expect("clients' run");
    let report = std::mem::take(&mut *report.borrow_mut());
    report
}

/// Lets this process open a few thousand descriptors (the clients and the server are both
/// in it).
fn raise_descriptor_limit(wanted: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid rlimit we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if limit.rlim_cur >= wanted {
        return;
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: setrlimit reads the valid rlimit we pass; raising the soft limit up to the
    // hard one is always allowed.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Runs in a child process so that no other test's sockets change the descriptor count.
#[test]
fn shutdown_with_a_thousand_busy_connections_ends_by_its_deadline_and_leaks_nothing() {
    if !util::is_child(BUSY_CHILD) {
        util::assert_child_passes(
            "shutdown_with_a_thousand_busy_connections_ends_by_its_deadline_and_leaks_nothing",
            BUSY_CHILD,
            "1 passed",
            Duration::from_secs(180),
        );
        return;
    }
    raise_descriptor_limit(4 * CONNECTIONS as libc::rlim_t + 100);
    let _dog = Watchdog::new("busy shutdown", Duration::from_secs(150));
    util::make_dispatcher();
    let fds_before = util::fd_count();

    // std's listener has a backlog of 128; ask for more, all clients connect at once.
    let (listener, addr) = util::listener_with_backlog(4096);

    let tally = Rc::new(ServerTally::default());
    {
        let tally = tally.clone();
        copas::addserver_with(listener, ServerOptions::new().name("busy"), move |sock| {
            busy_handler(tally.clone(), sock)
        })
        .expect("addserver");
    }
    let started = Arc::new(AtomicBool::new(false));
    let shutdown_at: Rc<Cell<Option<Instant>>> = Rc::default();
    let seen_at_start: Rc<Cell<Option<(bool, usize)>>> = Rc::default();
    {
        let (tally, started, shutdown_at, seen) = (
            tally.clone(),
            started.clone(),
            shutdown_at.clone(),
            seen_at_start.clone(),
        );
        copas::addnamedthread("orchestrator", move || {
            // Every connection busy first (bounded: 60 s of 10 ms naps).
            for _ in 0..6000 {
                if tally.warm.get() == CONNECTIONS {
                    break;
                }
                copas::pause(ms(10));
            }
            shutdown_at.set(Some(Instant::now()));
            copas::shutdown(GRACE);
            started.store(true, Ordering::SeqCst);
            seen.set(Some((copas::exiting(), copas::status().servers)));
        })
        .expect("addthread orchestrator");
    }
    let clients = {
        let started = started.clone();
        std::thread::spawn(move || run_clients(addr, started))
    };

    util::run_bounded(Duration::from_secs(120));
    let ended = Instant::now();
    let report = clients.join().expect("client thread");

    assert_eq!(
        tally.warm.get(),
        CONNECTIONS,
        "every connection was busy before the shutdown"
    );
    let shutdown_at = shutdown_at.get().expect("the shutdown began");
    let took = ended - shutdown_at;
    println!(
        "shutdown of {CONNECTIONS} busy connections, grace {GRACE:?}: run returned after {took:?}"
    );
    assert_eq!(seen_at_start.get(), Some((true, 0)), "exiting, no server");
    assert!(
        took >= GRACE,
        "stubborn handlers are cancelled at the deadline, not before: {took:?}"
    );
    assert!(
        took < GRACE + SLACK,
        "the shutdown did not end by its deadline: {took:?}"
    );
    assert!(
        tally.failures.borrow().is_empty(),
        "{} server handlers failed, the first: {:?}",
        tally.failures.borrow().len(),
        &tally.failures.borrow()[..tally.failures.borrow().len().min(5)]
    );
    assert!(
        report.failures.is_empty(),
        "{} clients failed, the first: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert_eq!(
        tally.finished.get(),
        CONNECTIONS / 2,
        "polite handlers end normally"
    );
    assert_eq!(
        report.said_bye,
        CONNECTIONS / 2,
        "their clients saw the whole exchange"
    );
    assert_eq!(
        tally.cancelled.get(),
        CONNECTIONS / 2,
        "stubborn handlers are cancelled"
    );
    assert_eq!(report.cut.len(), CONNECTIONS / 2);
    let deadline = shutdown_at + GRACE;
    assert!(
        report.cut.iter().all(|&at| at >= deadline),
        "a stubborn connection was cut before the deadline"
    );
    assert!(report.refused, "a new connection was not refused");
    let status = copas::status();
    assert_eq!(status.coroutines, 0, "{status:?}");
    assert_eq!(status.sockets, 0, "{status:?}");
    assert_eq!(status.servers, 0, "{status:?}");
    assert_eq!(util::fd_count(), fds_before, "descriptors left open");
}

// ----- the life of a shutdown ----------------------------------------------------------

#[test]
fn shutdown_closes_every_server_at_once_so_new_connections_are_refused() {
    let (listener, addr) = util::local_listener();
    let (second, addr2) = util::local_listener();
    copas::addserver(listener, |_sock| {}).expect("addserver");
    copas::addserver(second, |_sock| {}).expect("addserver");
    let refused = Rc::new(Cell::new(0));
    {
        let refused = refused.clone();
        copas::addthread(move || {
            copas::shutdown(Duration::from_secs(60));
            assert_eq!(copas::status().servers, 0);
            for addr in [addr, addr2] {
                // Loopback answers at once: a refusal does not hold up the dispatcher.
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        refused.set(refused.get() + 1)
                    }
                    other => panic!("connecting to {addr} after shutdown: {other:?}"),
                }
            }
        })
        .expect("addthread");
    }
    let took = util::run_bounded(Duration::from_secs(30));
    assert_eq!(refused.get(), 2);
    assert!(
        took < Duration::from_secs(30),
        "with nothing left to run, the shutdown ends before its deadline: {took:?}"
    );
    assert!(!copas::shutting_down());
    assert_eq!(copas::status().sockets, 0);
}

#[test]
fn coroutines_learn_of_the_shutdown_through_exiting_waitforexit_and_its_deadline() {
    let log: Rc<RefCell<Vec<String>>> = Rc::default();
    {
        let log = log.clone();
        copas::addnamedthread("cleanup", move || {
            copas::waitforexit().expect("waitforexit");
            log.borrow_mut().push(format!(
                "released: exiting {} shutting down {}",
                copas::exiting(),
                copas::shutting_down()
            ));
        })
        .expect("addthread");
    }
    {
        let log = log.clone();
        copas::addnamedthread("worker", move || {
            // A background loop in Copas style: until the dispatcher exits.
            let mut rounds = 0;
            while !copas::exiting() && rounds < 10_000 {
                copas::pause(ms(5));
                rounds += 1;
            }
            log.borrow_mut().push("worker stopped".to_string());
        })
        .expect("addthread");
    }
    {
        let log = log.clone();
        copas::addthread(move || {
            copas::pause(ms(30));
            assert!(!copas::shutting_down());
            assert_eq!(copas::shutdown_deadline(), None);
            let before = Instant::now();
            copas::shutdown(Duration::from_secs(60));
            let deadline = copas::shutdown_deadline().expect("a deadline");
            assert!(deadline >= before + Duration::from_secs(60));
            assert!(copas::shutting_down() && copas::exiting());
            log.borrow_mut().push("shutdown begun".to_string());
        })
        .expect("addthread");
    }
    let took = util::run_bounded(Duration::from_secs(30));
    assert!(took < Duration::from_secs(30), "{took:?}");
    // The released waiter and the worker may run in either order: when a slow step lets the
    // worker's 5 ms timer expire together with the 30 ms one, the worker runs in the same
    // run phase as `shutdown`, before the waiter it released (seen under load in CI).
    let mut log = log.borrow().clone();
    assert_eq!(
        log.first().map(String::as_str),
        Some("shutdown begun"),
        "{log:?}"
    );
    log[1..].sort();
    assert_eq!(
        log,
        [
            "shutdown begun",
            "released: exiting true shutting down true",
            "worker stopped"
        ]
    );
    assert!(!copas::shutting_down());
    assert_eq!(copas::shutdown_deadline(), None);
}

#[test]
fn coroutines_that_would_wait_forever_are_cancelled_when_the_rest_is_done() {
    let drops = Rc::new(Cell::new(0));
    let lock = Lock::new(FOREVER, false);
    let resumed = Rc::new(Cell::new(false));
    {
        let (drops, lock) = (drops.clone(), lock.clone());
        copas::addnamedthread("holder", move || {
            let _guard = DropGuard(drops);
            lock.get(None).expect("free lock");
            copas::pauseforever();
        })
        .expect("addthread");
    }
    {
        let (drops, lock, resumed) = (drops.clone(), lock.clone(), resumed.clone());
        copas::addnamedthread("waiter", move || {
            let _guard = DropGuard(drops);
            let got = lock.get(None); // no deadline: does not keep the loop going
            resumed.set(true);
            drop(got);
        })
        .expect("addthread");
    }
    {
        let drops = drops.clone();
        copas::addnamedthread("short job", move || {
            let _guard = DropGuard(drops);
            copas::pause(ms(20));
            copas::shutdown(Duration::from_secs(60));
            copas::pause(ms(20)); // finishes within the grace period
        })
        .expect("addthread");
    }
    let took = util::run_bounded(Duration::from_secs(30));
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(drops.get(), 3, "each coroutine's locals dropped once");
    assert!(!resumed.get(), "a cancelled waiter is not resumed");
    assert_eq!(lock.waiting(), 0, "the waiter left the lock's line");
    let status = copas::status();
    assert_eq!(status.coroutines, 0, "{status:?}");
    assert_eq!(status.inactive, 0, "{status:?}");
}

#[test]
fn a_second_shutdown_brings_the_deadline_forward_but_never_back() {
    let drops = Rc::new(Cell::new(0));
    {
        let drops = drops.clone();
        copas::addnamedthread("stubborn", move || {
            let _guard = DropGuard(drops);
            copas::pause(Duration::from_secs(3600));
        })
        .expect("addthread");
    }
    let deadlines: Rc<RefCell<Vec<Instant>>> = Rc::default();
    {
        let deadlines = deadlines.clone();
        copas::addthread(move || {
            copas::shutdown(Duration::from_secs(3600));
            deadlines.borrow_mut().extend(copas::shutdown_deadline());
            copas::shutdown(ms(100));
            deadlines.borrow_mut().extend(copas::shutdown_deadline());
            copas::shutdown(Duration::from_secs(7200));
            copas::shutdown(FOREVER);
            deadlines.borrow_mut().extend(copas::shutdown_deadline());
        })
        .expect("addthread");
    }
    let took = util::run_bounded(Duration::from_secs(30));
    let deadlines = deadlines.borrow();
    assert_eq!(deadlines.len(), 3);
    assert!(deadlines[1] < deadlines[0], "brought forward");
    assert_eq!(deadlines[2], deadlines[1], "never put back");
    assert!(took >= ms(100), "{took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(drops.get(), 1, "the sleeper was cancelled");
}

#[test]
fn shutdown_between_steps_completes_in_the_embedding_loop() {
    let (listener, addr) = util::local_listener();
    copas::addserver(listener, |_sock| {}).expect("addserver");
    let drops = Rc::new(Cell::new(0));
    {
        let drops = drops.clone();
        copas::addthread(move || {
            let _guard = DropGuard(drops);
            copas::pause(Duration::from_secs(3600));
        })
        .expect("addthread");
    }
    copas::step(Some(Duration::ZERO)).expect("step");
    assert_eq!(copas::status().coroutines, 1);

    // Between steps, with a grace: the server goes at once, the sleeper stays.
    copas::shutdown(Duration::from_secs(3600));
    assert_eq!(copas::status().servers, 0);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err());
    assert_eq!(copas::status().coroutines, 1);
    assert!(copas::shutting_down());
    copas::step(Some(Duration::ZERO)).expect("step");
    assert_eq!(
        drops.get(),
        0,
        "within the grace period nothing is cancelled"
    );

    // A zero grace between steps completes it there and then.
    copas::shutdown(Duration::ZERO);
    assert_eq!(drops.get(), 1);
    assert!(!copas::shutting_down());
    assert!(copas::finished());
    let status = copas::status();
    assert_eq!((status.coroutines, status.sockets), (0, 0), "{status:?}");
}

#[test]
fn a_shutdown_begun_before_run_is_carried_out_by_run() {
    let drops = Rc::new(Cell::new(0));
    let saw_exiting = Rc::new(Cell::new(false));
    {
        let (drops, saw_exiting) = (drops.clone(), saw_exiting.clone());
        copas::addthread(move || {
            let _guard = DropGuard(drops);
            saw_exiting.set(copas::exiting());
            copas::pause(Duration::from_secs(3600));
        })
        .expect("addthread");
    }
    copas::shutdown(ms(50));
    let took = util::run_bounded(Duration::from_secs(30));
    assert!(saw_exiting.get(), "run kept the shutdown's exiting flag");
    assert_eq!(drops.get(), 1);
    assert!(took < Duration::from_secs(30), "{took:?}");

    // The next run starts afresh.
    let ran = Rc::new(Cell::new(false));
    {
        let ran = ran.clone();
        copas::addthread(move || {
            assert!(!copas::exiting() && !copas::shutting_down());
            copas::pause(ms(10));
            ran.set(true);
        })
        .expect("addthread");
    }
    util::run_bounded(Duration::from_secs(30));
    assert!(ran.get());
}

#[test]
fn completing_a_shutdown_closes_sockets_no_coroutine_holds() {
    let (listener, addr) = util::local_listener();
    // A peer outside the dispatcher, so that our socket stays connected.
    let peer = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut rest = Vec::new();
        // Ends when copas closes its side.
        let _ = std::io::Read::read_to_end(&mut conn, &mut rest);
        rest
    });
    // Connected outside any coroutine, kept by this function: no coroutine holds it.
    let mut kept = copas::connect(addr, Some(Duration::from_secs(5))).expect("connect");
    kept.send(b"hello\n").expect("send");
    copas::addthread(|| copas::shutdown(ms(10))).expect("addthread");
    util::run_bounded(Duration::from_secs(30));
    let err = kept.send(b"more\n").expect_err("closed by the shutdown");
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert_eq!(peer.join().expect("peer"), b"hello\n");
    assert_eq!(copas::status().sockets, 0);
}

#[test]
fn a_shutdown_asked_for_from_another_thread_ends_the_loop_by_its_deadline() {
    let (listener, addr) = util::local_listener();
    copas::addserver(listener, |_sock| {}).expect("addserver");
    let drops = Rc::new(Cell::new(0));
    let saw_exiting = Rc::new(Cell::new(false));
    {
        let (drops, saw_exiting) = (drops.clone(), saw_exiting.clone());
        copas::addnamedthread("stubborn", move || {
            let _guard = DropGuard(drops);
            copas::waitforexit().expect("waitforexit");
            saw_exiting.set(true);
            copas::pause(Duration::from_secs(3600));
        })
        .expect("addthread");
    }
    let handle = copas::handle().expect("handle");
    let asker = std::thread::spawn(move || {
        std::thread::sleep(ms(50));
        handle.shutdown(ms(200)).expect("shutdown");
        handle
    });
    let took = util::run_bounded(Duration::from_secs(30));
    let handle = asker.join().expect("asker");
    assert!(saw_exiting.get(), "exiting was signalled");
    assert_eq!(drops.get(), 1, "the stubborn coroutine was cancelled");
    assert!(
        took >= ms(200),
        "the deadline is 200 ms after the request: {took:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err());
    let status = copas::status();
    assert_eq!((status.coroutines, status.sockets), (0, 0), "{status:?}");
    drop(handle);
}

/// A guard whose destructor starts a clean-up coroutine: the coroutine it is dropped from
/// is cancelled at the deadline, and what the destructor starts is cancelled too, so `run`
/// still ends by the deadline.
#[test]
fn a_shutdown_ends_by_its_deadline_when_destructors_start_more_work() {
    struct CleanUpOnDrop;
    impl Drop for CleanUpOnDrop {
        fn drop(&mut self) {
            let _ = copas::addthread(|| {
                let _again = CleanUpOnDrop; // and so on: a chain of clean-ups
                copas::pause(Duration::from_secs(4));
            });
        }
    }
    copas::addthread(|| {
        let _guard = CleanUpOnDrop;
        copas::pause(Duration::from_secs(30));
    })
    .unwrap();
    copas::addthread(|| {
        copas::pause(ms(10));
        copas::shutdown(ms(100));
    })
    .unwrap();
    let took = util::run_bounded(SLACK);
    assert!(took < Duration::from_secs(2), "run returned after {took:?}");
    assert_eq!(copas::status().coroutines, 0, "{}", copas::dump());
}

/// Past a shutdown's deadline no coroutine is resumed, not even one queued in a run phase
/// that began before it (the docs: "no coroutine runs past it", `run` returns by the deadline
/// at the latest). Twenty coroutines each compute 10 ms per turn under a 50 ms grace: a run
/// phase lasts 200 ms. Before, the phase went on past the deadline (15 coroutines resumed up
/// to 140 ms after it, `run` back 150 ms late); now only the one computing when the deadline
/// passes finishes its turn.
#[test]
fn no_coroutine_is_resumed_past_the_deadline_even_within_a_run_phase() {
    let _dog = Watchdog::new("shutdown within a run phase", Duration::from_secs(30));
    let late = Rc::new(RefCell::new(Vec::new()));
    for i in 0..20 {
        let late = late.clone();
        copas::addthread(move || loop {
            let now = Instant::now();
            if let Some(at) = copas::shutdown_deadline() {
                if now > at {
                    late.borrow_mut().push((i, now - at));
                }
            }
            let spin = Instant::now();
            while spin.elapsed() < ms(10) {
                std::hint::spin_loop();
            }
            copas::pause(Duration::ZERO);
        })
        .expect("addthread");
    }
    copas::step(Some(Duration::ZERO)).expect("step"); // a turn each
    copas::shutdown(ms(50));
    let deadline = copas::shutdown_deadline().expect("a deadline");
    util::run_bounded(Duration::from_secs(20));
    let returned_late = Instant::now().saturating_duration_since(deadline);
    // A resume decided just before the deadline may read the clock just after it.
    let late: Vec<_> = late
        .borrow()
        .iter()
        .filter(|(_, by)| *by > ms(2))
        .copied()
        .collect();
    assert!(late.is_empty(), "resumed past the deadline: {late:?}");
    // The turn under way at the deadline ends within 10 ms; allow for a loaded machine.
    assert!(
        returned_late < ms(100),
        "run returned {returned_late:?} past the deadline"
    );
}

/// Another thread that keeps handing work to the dispatcher does not hold `run` past the
/// shutdown's deadline: what it posts after the shutdown completed waits for the next step or
/// `run` (it ran with no deadline at all, holding `run` for as long as posts kept coming).
#[test]
fn run_returns_by_the_deadline_while_another_thread_keeps_spawning() {
    let _dog = Watchdog::new("spawning during a shutdown", Duration::from_secs(30));
    util::make_dispatcher();
    let handle = copas::handle().expect("handle");
    let stop = Arc::new(AtomicBool::new(false));
    let poster = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut posted = 0;
            while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(3) {
                let work = || {
                    copas::pause(Duration::from_secs(2));
                };
                if handle.spawn(work).is_err() {
                    break;
                }
                posted += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            posted
        })
    };
    copas::addthread(|| {
        copas::pause(ms(50));
        copas::shutdown(ms(200));
    })
    .expect("addthread");
    let took = util::run_bounded(Duration::from_secs(20));
    let status = copas::status();
    stop.store(true, Ordering::SeqCst);
    let posted = poster.join().expect("poster");
    assert!(posted > 0);
    assert!(
        took < ms(50 + 200 + 300),
        "run took {took:?}; the deadline was at 250 ms"
    );
    assert_eq!((status.coroutines, status.sockets), (0, 0), "{status:?}");
    // What came after the shutdown runs in the dispatcher's next loop.
    copas::cancelall();
}
