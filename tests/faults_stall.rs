//! A coroutine that never yields for a second (it blocks the thread in `std::thread::sleep`)
//! delays every other coroutine of its dispatcher but breaks nothing: clients that kept
//! sending are all served, byte-exact; sleepers that fell due during the stall all wake,
//! late; and a reader whose data arrived during the stall gets the data, not `Timeout`,
//! even though its deadline passed meanwhile — readiness the dispatcher collects in the
//! same step wins over a deadline that expired while the thread was blocked, also when more
//! sockets became ready than one poller wait returns.

mod util;

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use copas::{ErrorKind, Pattern};
use util::ms;

const STALL: Duration = Duration::from_secs(1);
const CLIENTS: usize = 10;
const ROUNDS: usize = 30;
const SLEEPERS: usize = 20;

/// What a reader's `receive` gave: its line, or the error's kind.
type Received = Result<Vec<u8>, ErrorKind>;

/// An echo client on its own thread: `ROUNDS` lines, one every 20 ms, each checked.
/// Returns how many came back exactly.
fn echo_client(addr: SocketAddr, id: usize) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut out = TcpStream::connect(addr).expect("connect");
        out.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut lines = BufReader::new(out.try_clone().expect("clone"));
        let mut exact = 0;
        for round in 0..ROUNDS {
            let line = format!("client {id} round {round} {}\n", "x".repeat(id * 37 % 200));
            out.write_all(line.as_bytes()).expect("write");
            let mut back = String::new();
            if lines.read_line(&mut back).is_err() {
                break;
            }
            if back == line {
                exact += 1;
            }
            std::thread::sleep(ms(20));
        }
        exact
    })
}

fn echo(mut sock: copas::Socket) {
    while let Ok(line) = sock.receive(Pattern::Line) {
        if sock.send(&[&line[..], b"\n"].concat()).is_err() {
            break;
        }
    }
}

#[test]
fn a_coroutine_that_blocks_for_a_second_delays_others_but_breaks_nothing() {
    let _dog = util::Watchdog::new("stall", Duration::from_secs(60));
    let (listener, addr) = util::local_listener();
    let server = copas::addserver(listener, echo).expect("addserver");

    // Clients connected and sending before, during and after the stall.
    let clients: Vec<_> = (0..CLIENTS).map(|id| echo_client(addr, id)).collect();

    // The reader's peer writes its line half a second into the stall: after the reader's
    // 300 ms deadline has passed, before the dispatcher can look.
    let (peer_listener, peer_addr) = util::local_listener();
    let (peer_go_tx, peer_go_rx) = mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let (mut s, _) = peer_listener.accept().expect("accept");
        peer_go_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("stall started");
        std::thread::sleep(ms(500));
        s.write_all(b"arrived during the stall\n").expect("write");
        // Keep the connection open until the reader is done with it.
        let mut sink = [0u8; 16];
        let _ = std::io::Read::read(&mut s, &mut sink);
    });
    // A client that connects only during the stall: served once it ends.
    let (late_tx, late_rx) = mpsc::channel::<()>();
    let late = std::thread::spawn(move || {
        late_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("stall started");
        std::thread::sleep(ms(200));
        let mut s = TcpStream::connect(addr).expect("connect during the stall");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(b"late\n").expect("write");
        let mut back = String::new();
        BufReader::new(s).read_line(&mut back).expect("echo");
        back
    });

    let stall_at: Rc<Cell<Option<(Instant, Instant)>>> = Rc::new(Cell::new(None));
    let sleepers: Rc<RefCell<Vec<(Duration, Duration)>>> = Rc::new(RefCell::new(Vec::new()));
    let read: Rc<RefCell<Option<Received>>> = Rc::new(RefCell::new(None));
    {
        let (stall_at, sleepers, read) = (stall_at.clone(), sleepers.clone(), read.clone());
        copas::addthread(move || {
            // Let the clients get going.
            copas::pause(ms(300));
            let mut reader =
                copas::connect(peer_addr, Some(Duration::from_secs(5))).expect("connect");
            reader.settimeout(Some(ms(300)));
            // Sleepers due 50–430 ms from now: all within the stall.
            for i in 0..SLEEPERS {
                let sleepers = sleepers.clone();
                let delay = ms(50 + 20 * i as u64);
                copas::addthread(move || {
                    let start = Instant::now();
                    copas::pause(delay);
                    sleepers.borrow_mut().push((delay, start.elapsed()));
                })
                .expect("sleeper");
            }
            {
                let stall_at = stall_at.clone();
                let (peer_go_tx, late_tx) = (peer_go_tx.clone(), late_tx.clone());
                copas::addthread(move || {
                    let start = Instant::now();
                    let _ = peer_go_tx.send(());
                    let _ = late_tx.send(());
                    // The coroutine that never yields.
                    std::thread::sleep(STALL);
                    stall_at.set(Some((start, Instant::now())));
                })
                .expect("blocker");
            }
            let got = reader.receive(Pattern::Line).map_err(|e| e.kind());
            *read.borrow_mut() = Some(got);
            reader.close();
            // Wait for the clients to finish, then stop the server.
            copas::pause(Duration::from_secs(2));
            copas::removeserver(server, false).expect("removeserver");
        })
        .expect("main");
    }
    util::run_bounded(Duration::from_secs(50));

    let (stall_start, stall_end) = stall_at.get().expect("the blocker ran");
    assert!(stall_end - stall_start >= STALL);
    assert_eq!(
        *read.borrow(),
        Some(Ok(b"arrived during the stall".to_vec())),
        "the reader's data arrived during the stall, before its deadline was checked"
    );
    let sleepers = sleepers.borrow();
    assert_eq!(sleepers.len(), SLEEPERS, "every sleeper woke");
    for &(delay, slept) in sleepers.iter() {
        assert!(
            slept >= delay,
            "a sleeper woke early: {slept:?} < {delay:?}"
        );
    }
    // Due during the stall, they woke only after it: late, but woken.
    let late_sleepers = sleepers.iter().filter(|(d, s)| *s > *d + ms(200)).count();
    let most_late = sleepers
        .iter()
        .map(|(d, s)| *s - *d)
        .max()
        .unwrap_or_default();
    eprintln!(
        "stall {:?}; {late_sleepers} of {SLEEPERS} sleepers late by up to {most_late:?}",
        stall_end - stall_start
    );
    assert!(late_sleepers > 0, "no sleeper was delayed: {sleepers:?}");
    for (id, c) in clients.into_iter().enumerate() {
        assert_eq!(c.join().expect("client"), ROUNDS, "client {id}");
    }
    assert_eq!(late.join().expect("late client"), "late\n");
    writer.join().expect("writer");
}

/// More sockets turn readable during the stall than two poller waits return (2 × 1,024: the
/// step's wait and its late-timer re-poll): each reader still gets its data, not `Timeout`.
#[test]
fn readiness_past_one_poller_wait_still_wins_over_deadlines_after_a_stall() {
    const READERS: usize = 2600;
    let _dog = util::Watchdog::new("stall with many readers", Duration::from_secs(120));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut peers = Vec::with_capacity(READERS);
    let mut socks = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let client = TcpStream::connect(addr).expect("connect");
        let (server_side, _) = listener.accept().expect("accept");
        peers.push(server_side);
        socks.push(copas::wrap(client).expect("wrap"));
    }
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        go_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("stall started");
        std::thread::sleep(ms(500));
        for p in &mut peers {
            p.write_all(b"data\n").expect("write");
        }
        peers
    });
    let outcomes: Rc<RefCell<Vec<Received>>> = Rc::new(RefCell::new(Vec::new()));
    let stalled = Rc::new(Cell::new(false));
    {
        let (outcomes, stalled) = (outcomes.clone(), stalled.clone());
        copas::addthread(move || {
            for mut sock in socks {
                let outcomes = outcomes.clone();
                copas::addthread(move || {
                    sock.settimeout(Some(ms(300)));
                    let got = sock.receive(Pattern::Line).map_err(|e| e.kind());
                    outcomes.borrow_mut().push(got);
                    sock.close();
                })
                .expect("reader");
            }
            // Let every reader reach its receive (a step resumes at most 1,024 coroutines).
            copas::pause(ms(50));
            let _ = go_tx.send(());
            std::thread::sleep(STALL);
            stalled.set(true);
        })
        .expect("blocker");
    }
    util::run_bounded(Duration::from_secs(100));
    let peers = writer.join().expect("writer");
    drop(peers);
    assert!(stalled.get());
    let outcomes = outcomes.borrow();
    assert_eq!(outcomes.len(), READERS);
    let timeouts = outcomes
        .iter()
        .filter(|o| **o == Err(ErrorKind::Timeout))
        .count();
    let exact = outcomes
        .iter()
        .filter(|o| **o == Ok(b"data".to_vec()))
        .count();
    assert_eq!(
        (exact, timeouts),
        (READERS, 0),
        "readers that got their data / timed out"
    );
}
