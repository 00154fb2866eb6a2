//! Socket behaviour over real loopback sockets.
//!
//! Copas's own TCP scenarios (`removeserver`, `tcptimeout`, `close`, `largetransfer`,
//! `starve`, see copas-reference.md §6), then the socket contract: receive patterns and
//! their errors, several waiters on one socket, resets and `SIGPIPE`, half-close, blocking
//! use outside any coroutine, the std I/O traits, refused connects and descriptor leaks.
//!
//! Panics inside coroutines are caught by the dispatcher, so every test that runs the
//! dispatcher goes through [`run_checked`], which turns a coroutine panic into a test
//! failure. Every run has a watchdog; every loop is bounded.

mod util;

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use copas::{Coroutine, ErrorKind, Pattern, Server, ServerOptions, Socket};
use util::{ms, pause_until, secs};

/// The timeout every socket of these tests gets unless the test sets its own: a socket
/// that should have been woken and is not then fails the test with `Timeout` instead of
/// hanging until a watchdog kills the whole test binary.
const GUARD: Duration = Duration::from_secs(10);

// ----- helpers ----------------------------------------------------------------------------

/// A value shared between the coroutines of one test and the test itself.
type Shared<T> = Rc<RefCell<T>>;

/// Adds a server that hands its first connection to `handler` and removes itself at once.
/// The connection's timeouts are [`GUARD`].
fn serve_once(handler: impl FnOnce(Socket) + 'static) -> SocketAddr {
    let (listener, addr) = util::local_listener();
    let handler = RefCell::new(Some(handler));
    let me: Rc<Cell<Option<Server>>> = Rc::new(Cell::new(None));
    let me2 = me.clone();
    let server = copas::addserver(listener, move |sock| {
        if let Some(server) = me2.take() {
            copas::removeserver(server, false).expect("removeserver");
        }
        sock.settimeout(Some(GUARD));
        let handler = handler.borrow_mut().take();
        if let Some(handler) = handler {
            handler(sock);
        }
    })
    .expect("addserver");
    me.set(Some(server));
    addr
}

/// Connects (inside a coroutine or not), with [`GUARD`] as the socket's timeouts.
fn connect(addr: SocketAddr) -> Socket {
    let sock = copas::connect(addr, Some(GUARD)).expect("connect");
    sock.settimeout(Some(GUARD));
    sock
}

/// Runs `peer` on an OS thread with a plain std connection to `addr`.
fn std_peer(addr: SocketAddr, peer: impl FnOnce(TcpStream) + Send + 'static) -> JoinHandle<()> {
    thread::spawn(move || {
        let stream = TcpStream::connect(addr).expect("peer: connect");
        stream.set_read_timeout(Some(secs(10))).expect("timeout");
        stream.set_write_timeout(Some(secs(10))).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        peer(stream)
    })
}

fn join(handle: JoinHandle<()>) {
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// One connection: `handler` runs in copas as the server's handler, `peer` on an OS thread
/// as the client. Returns how long the dispatcher ran.
fn with_peer(
    peer: impl FnOnce(TcpStream) + Send + 'static,
    handler: impl FnOnce(Socket) + 'static,
) -> Duration {
    let addr = serve_once(handler);
    let peer = std_peer(addr, peer);
    let took = util::run_checked(secs(20));
    join(peer);
    took
}

/// Writes `data` in pieces of `piece` bytes with `gap` between them.
fn trickle(stream: &mut TcpStream, data: &[u8], piece: usize, gap: Duration) {
    for chunk in data.chunks(piece) {
        stream.write_all(chunk).expect("peer: write");
        thread::sleep(gap);
    }
}

/// Reads until the copas side closes the connection (so the peer outlives the handler).
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("peer: read to end");
    rest
}

/// Deterministic, non-repeating bytes (xorshift64).
fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    out
}

/// Counts parties down as their guards drop (also when one panics), and wakes the
/// registered coroutines when the last one is done.
#[derive(Clone)]
struct Countdown(Rc<CountdownState>);

struct CountdownState {
    left: Cell<usize>,
    finished_at: Cell<Option<Instant>>,
    sleepers: RefCell<Vec<Coroutine>>,
}

struct CountdownGuard(Countdown);

impl Countdown {
    fn new(parties: usize) -> Countdown {
        Countdown(Rc::new(CountdownState {
            left: Cell::new(parties),
            finished_at: Cell::new(None),
            sleepers: RefCell::new(Vec::new()),
        }))
    }

    fn guard(&self) -> CountdownGuard {
        CountdownGuard(self.clone())
    }

    fn done(&self) -> bool {
        self.0.left.get() == 0
    }

    fn finished_at(&self) -> Option<Instant> {
        self.0.finished_at.get()
    }

    /// `co` is woken (from `pause`) when the count reaches zero.
    fn wake_when_done(&self, co: Coroutine) {
        self.0.sleepers.borrow_mut().push(co);
    }
}

impl Drop for CountdownGuard {
    fn drop(&mut self) {
        let state = &self.0 .0;
        state.left.set(state.left.get() - 1);
        if state.left.get() == 0 {
            state.finished_at.set(Some(Instant::now()));
            let sleepers = std::mem::take(&mut *state.sleepers.borrow_mut());
            for co in sleepers {
                copas::wakeup(co);
            }
        }
    }
}

// ----- Copas removeserver.lua -------------------------------------------------------------

#[test]
fn removeserver_keep_open_hands_back_a_listener_that_can_be_added_again() {
    let (listener, addr) = util::local_listener();
    let slot: Rc<RefCell<Option<TcpListener>>> = Rc::new(RefCell::new(Some(listener)));
    let lines = Rc::new(RefCell::new(Vec::<String>::new()));
    let (slot2, lines2) = (slot.clone(), lines.clone());
    copas::addthread(move || {
        for n in 1..=3 {
            let listener = slot2
                .borrow_mut()
                .take()
                .expect("the listener was handed back");
            let server_cell: Rc<Cell<Option<Server>>> = Rc::new(Cell::new(None));
            let (slot3, lines3, cell) = (slot2.clone(), lines2.clone(), server_cell.clone());
            let server = copas::addserver(listener, move |mut sock: Socket| {
                let line = sock.receive_line().expect("handler: receive");
                lines3.borrow_mut().push(line);
                let server = cell.get().expect("server handle");
                let back = copas::removeserver(server, true).expect("removeserver");
                assert!(back.is_some(), "keep_open must hand the listener back");
                *slot3.borrow_mut() = back;
            })
            .expect("addserver (again)");
            server_cell.set(Some(server));
            assert_eq!(copas::status().servers, 1);

            let mut client = connect(addr);
            client
                .send(format!("hi {n}\n").as_bytes())
                .expect("client: send");
            // The handler ends after removing its server, which closes the connection.
            let rest = client.receive(Pattern::All).expect("client: receive");
            assert!(rest.is_empty(), "unexpected reply {rest:?}");
            assert_eq!(copas::status().servers, 0, "round {n}: server not removed");
            let again = copas::removeserver(server, true).expect_err("removed twice");
            assert_eq!(again.kind(), ErrorKind::InvalidState);
        }
    })
    .expect("addthread");
    let took = util::run_checked(secs(10));
    assert!(took < secs(5), "three rounds took {took:?}");
    assert_eq!(*lines.borrow(), ["hi 1", "hi 2", "hi 3"]);
    let listener = slot
        .borrow_mut()
        .take()
        .expect("listener back after round 3");
    assert_eq!(listener.local_addr().expect("local_addr"), addr);
    assert_eq!(copas::status().sockets, 0);
}

// ----- Copas tcptimeout.lua ---------------------------------------------------------------

#[test]
fn tcptimeout_a_empty_loop_exits() {
    let took = util::run_checked(secs(5));
    assert!(took < secs(1), "an empty loop took {took:?}");
}

#[test]
fn tcptimeout_b_connect_and_close_exits() {
    let (_listener, addr) = util::local_listener();
    let closed = Rc::new(Cell::new(false));
    let closed2 = closed.clone();
    copas::addthread(move || {
        let sock = connect(addr);
        sock.close();
        closed2.set(sock.is_closed());
    })
    .expect("addthread");
    let took = util::run_checked(secs(5));
    assert!(closed.get(), "the socket does not report closed");
    assert!(took < secs(2), "connect + close took {took:?}");
    assert_eq!(copas::status().sockets, 0);
}

#[test]
fn tcptimeout_c_connect_to_full_backlog_times_out() {
    let (_listener, addr, _fillers) = util::full_backlog_listener();
    let outcome = Rc::new(RefCell::new(None));
    let outcome2 = outcome.clone();
    copas::addthread(move || {
        let start = Instant::now();
        let result = copas::connect(addr, Some(ms(10)));
        *outcome2.borrow_mut() = Some((result.map(|_| ()), start.elapsed()));
    })
    .expect("addthread");
    util::run_checked(secs(5));
    let (result, took) = outcome.borrow_mut().take().expect("connect returned");
    let err = result.expect_err("connect to a full backlog succeeded");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(took >= ms(10), "timed out early: {took:?}");
    assert!(took < secs(1), "timed out late: {took:?}");
    assert_eq!(
        copas::status().sockets,
        0,
        "the failed socket is still registered"
    );
}

#[test]
fn tcptimeout_e_receive_after_echo_round_trip_times_out() {
    let result = Rc::new(RefCell::new(None));
    let result2 = result.clone();
    let addr = serve_once(|mut sock| {
        while let Ok(line) = sock.receive(Pattern::Line) {
            if sock.send(&[&line[..], b"\n"].concat()).is_err() {
                break;
            }
        }
    });
    copas::addthread(move || {
        let mut sock = connect(addr);
        sock.send(b"hello\n").expect("send");
        assert_eq!(sock.receive(Pattern::Line).expect("echo"), b"hello");
        sock.settimeout(Some(ms(10)));
        let start = Instant::now();
        let err = sock
            .receive(Pattern::Line)
            .expect_err("nothing more was sent");
        *result2.borrow_mut() = Some((err.kind(), err.partial().to_vec(), start.elapsed()));
    })
    .expect("addthread");
    util::run_checked(secs(5));
    let (kind, partial, took) = result.borrow_mut().take().expect("client finished");
    assert_eq!(kind, ErrorKind::Timeout);
    assert!(partial.is_empty(), "partial {partial:?}");
    assert!(took >= ms(10), "timed out early: {took:?}");
    assert!(took < secs(1), "timed out late: {took:?}");
}

#[test]
fn tcptimeout_f_handler_receive_timeout_leaves_no_bookkeeping() {
    let (listener, addr) = util::local_listener();
    let server_cell: Rc<Cell<Option<Server>>> = Rc::new(Cell::new(None));
    let seen = Rc::new(RefCell::new(None));
    let (cell, seen2) = (server_cell.clone(), seen.clone());
    let options = ServerOptions::new().timeout(ms(200));
    let server = copas::addserver_with(listener, options, move |mut sock: Socket| {
        let t = Some(ms(200));
        assert_eq!(sock.gettimeouts(), (t, t, t), "timeouts not inherited");
        let start = Instant::now();
        let err = sock.receive(Pattern::Line).expect_err("nothing was sent");
        let took = start.elapsed();
        copas::removeserver(cell.get().expect("server"), false).expect("removeserver");
        // The client waits in its receive, under its socket timeout (a timer on Copas's
        // wheel, so in `timeout`); nothing else waits, sleeps or has a timer.
        *seen2.borrow_mut() = Some((err.kind(), took, copas::status()));
    })
    .expect("addserver");
    server_cell.set(Some(server));
    let client_err = Rc::new(Cell::new(None));
    let client_err2 = client_err.clone();
    copas::addthread(move || {
        let mut sock = connect(addr);
        let err = sock
            .receive(Pattern::Line)
            .expect_err("the server sends nothing");
        client_err2.set(Some(err.kind()));
    })
    .expect("addthread");
    util::run_checked(secs(5));

    let (kind, took, st) = seen.borrow_mut().take().expect("handler finished");
    assert_eq!(kind, ErrorKind::Timeout);
    assert!(
        took >= ms(200) && took < secs(2),
        "handler timeout after {took:?}"
    );
    assert_eq!(
        (
            st.read,
            st.write,
            st.timer,
            st.inactive,
            st.timeout,
            st.servers
        ),
        (1, 0, 0, 0, 1, 0),
        "after the handler's timeout: {st:?}"
    );
    assert_eq!(client_err.get(), Some(ErrorKind::Closed));
    let st = copas::status();
    assert_eq!(
        (
            st.read,
            st.write,
            st.active,
            st.timer,
            st.inactive,
            st.timeout
        ),
        (0, 0, 0, 0, 0, 0),
        "after the run: {st:?}"
    );
    assert_eq!((st.coroutines, st.sockets, st.servers), (0, 0, 0), "{st:?}");
}

// ----- Copas close.lua --------------------------------------------------------------------

/// `close` ends the socket for every later operation: bytes the handle had already read
/// ahead are not handed out after it, and an empty send or receive, which needs no system
/// call, fails like the others. Outside any coroutine, on a wrapped socket.
#[test]
fn after_close_every_operation_fails_closed_even_with_bytes_buffered_or_nothing_asked() {
    let (listener, addr) = util::local_listener();
    let mut peer = TcpStream::connect(addr).expect("connect");
    let mut sock = copas::wrap(listener.accept().expect("accept").0).expect("wrap");
    sock.settimeout(Some(GUARD));
    peer.write_all(b"one\ntwo\nthree").expect("write");
    assert_eq!(sock.receive(Pattern::Line).expect("first line"), b"one");
    sock.close();
    let mut byte = [0u8; 1];
    let kinds = [
        util::kind(sock.receive(Pattern::Line)).map(drop),
        util::kind(sock.receive(Pattern::Exact(2))).map(drop),
        util::kind(sock.receive(Pattern::Exact(0))).map(drop),
        util::kind(sock.receivepartial(100)).map(drop),
        util::kind(sock.receivepartial(0)).map(drop),
        util::kind(sock.send(b"")).map(drop),
        util::kind(sock.send_vectored(&[])).map(drop),
    ];
    assert_eq!(kinds, [Err(ErrorKind::Closed); 7]);
    let io_kinds = [
        sock.read(&mut byte).map(drop),
        sock.read(&mut []).map(drop),
        sock.fill_buf().map(drop),
        sock.write(b"").map(drop),
    ]
    .map(|r| r.map_err(|e| copas::Error::from(e).kind()));
    assert_eq!(io_kinds, [Err(ErrorKind::Closed); 4]);
}

#[test]
fn close_wakes_blocked_reader_and_writer_with_closed() {
    let (listener, addr) = util::local_listener();
    let server_cell: Rc<Cell<Option<Server>>> = Rc::new(Cell::new(None));
    let handler_co: Rc<Cell<Option<Coroutine>>> = Rc::new(Cell::new(None));
    let co_cell = handler_co.clone();
    // The server accepts and does nothing: it keeps the connection open, reading nothing.
    let server = copas::addserver(listener, move |sock: Socket| {
        co_cell.set(copas::current());
        let _keep = sock;
        copas::pauseforever();
    })
    .expect("addserver");
    server_cell.set(Some(server));

    struct Outcome {
        kind: ErrorKind,
        at: Instant,
    }
    let reader_out: Rc<RefCell<Option<Outcome>>> = Rc::default();
    let writer_out: Rc<RefCell<Option<(Outcome, usize)>>> = Rc::default();
    let closed_at: Rc<Cell<Option<Instant>>> = Rc::default();
    let status_at_close = Rc::new(Cell::new(None));
    let (r_out, w_out, c_at, st_cell) = (
        reader_out.clone(),
        writer_out.clone(),
        closed_at.clone(),
        status_at_close.clone(),
    );
    copas::addthread(move || {
        let sock = connect(addr);
        let mut reader = sock.share();
        copas::addthread(move || {
            let err = reader
                .receive(Pattern::Exact(1))
                .expect_err("nothing is sent");
            assert!(err.partial().is_empty());
            *r_out.borrow_mut() = Some(Outcome {
                kind: err.kind(),
                at: Instant::now(),
            });
        })
        .expect("reader");
        let mut writer = sock.share();
        copas::addthread(move || {
            let chunk = [b'x'; 1100];
            let mut chunks = 0;
            // Far more than the kernel buffers: the sender blocks long before.
            for _ in 0..200_000 {
                match writer.send(&chunk) {
                    Ok(n) => {
                        assert_eq!(n, chunk.len());
                        chunks += 1;
                    }
                    Err(e) => {
                        let at = Instant::now();
                        *w_out.borrow_mut() = Some((Outcome { kind: e.kind(), at }, chunks));
                        return;
                    }
                }
            }
            panic!("the sender never blocked");
        })
        .expect("writer");
        let closer = sock.share();
        copas::addthread(move || {
            copas::pause(ms(500));
            st_cell.set(Some(copas::status()));
            c_at.set(Some(Instant::now()));
            closer.close();
            copas::removeserver(server_cell.get().expect("server"), false).expect("remove");
            copas::wakeup(handler_co.get().expect("handler started"));
        })
        .expect("closer");
    })
    .expect("client");
    let took = util::run_checked(secs(10));

    let st: copas::Status = status_at_close.get().expect("closer ran");
    assert_eq!(
        st.write, 1,
        "the sender was not blocked at close time: {st:?}"
    );
    // The reader and the server's listener.
    assert_eq!(
        st.read, 2,
        "the reader was not blocked at close time: {st:?}"
    );
    let closed_at = closed_at.get().expect("closed");
    let reader = reader_out.borrow_mut().take().expect("reader returned");
    let (writer, chunks) = writer_out.borrow_mut().take().expect("writer returned");
    assert_eq!(reader.kind, ErrorKind::Closed);
    assert_eq!(writer.kind, ErrorKind::Closed);
    assert!(chunks > 0, "the sender sent nothing");
    for (what, at) in [("receive", reader.at), ("send", writer.at)] {
        assert!(at >= closed_at, "{what} returned before the close");
        let late = at - closed_at;
        assert!(late < secs(1), "{what} returned {late:?} after the close");
    }
    assert!(took < secs(3), "run took {took:?}");
}

// ----- Copas largetransfer.lua ------------------------------------------------------------

#[test]
fn largetransfer_two_servers_receive_50_mib_while_tickers_tick() {
    const SIZE: usize = 50 * 1024 * 1024;
    // A timeout covers a whole call, here the whole transfer.
    const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);
    const HEARTBEAT: Duration = Duration::from_millis(20);
    let _dog = util::Watchdog::new("largetransfer", secs(120));
    let made = Instant::now();
    let bodies = [
        Rc::new(pattern_bytes(SIZE, 0x1234_5678)),
        Rc::new(pattern_bytes(SIZE, 0x8765_4321)),
    ];
    eprintln!("largetransfer: bodies made in {:?}", made.elapsed());

    let servers = Countdown::new(2);
    let results: Shared<Vec<(&'static str, usize, bool)>> = Rc::default();

    // Server A: one receive(All).
    let (want, done, res) = (bodies[0].clone(), servers.clone(), results.clone());
    let addr_a = serve_once(move |mut sock| {
        let _done = done.guard();
        sock.settimeout(Some(TRANSFER_TIMEOUT));
        let got = sock.receive(Pattern::All).expect("receive(All)");
        res.borrow_mut().push(("all", got.len(), got == *want));
    });
    // Server B: a receivepartial loop.
    let (want, done, res) = (bodies[1].clone(), servers.clone(), results.clone());
    let addr_b = serve_once(move |mut sock| {
        let _done = done.guard();
        sock.settimeout(Some(TRANSFER_TIMEOUT));
        let mut got = Vec::with_capacity(SIZE);
        let mut calls = 0usize;
        loop {
            let chunk = sock.receivepartial(64 * 1024).expect("receivepartial");
            calls += 1;
            assert!(calls <= SIZE + 1, "receivepartial loop does not end");
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        res.borrow_mut().push(("partial", got.len(), got == *want));
    });

    let started = Rc::new(Cell::new(None));
    for (addr, body) in [(addr_a, bodies[0].clone()), (addr_b, bodies[1].clone())] {
        let started = started.clone();
        copas::addthread(move || {
            started.set(started.get().or(Some(Instant::now())));
            let mut sock = connect(addr);
            sock.settimeout(Some(TRANSFER_TIMEOUT));
            assert_eq!(sock.send(&body).expect("send"), SIZE);
            // Dropping the socket closes it: the end of the body.
        })
        .expect("client");
    }

    // Copas's 1 s ticker, and a 20 ms heartbeat that makes the check meaningful when the
    // transfer takes less than a second or two.
    let tickers = [(secs(1), 120), (HEARTBEAT, 6000)].map(|(period, max)| {
        let ticks = Rc::new(Cell::new(0u32));
        let worst = Rc::new(Cell::new(Duration::ZERO));
        let (ticks2, worst2, servers2) = (ticks.clone(), worst.clone(), servers.clone());
        let co = copas::addthread(move || {
            for _ in 0..max {
                if servers2.done() {
                    break;
                }
                let slept = copas::pause(period);
                if slept >= period {
                    ticks2.set(ticks2.get() + 1);
                    worst2.set(worst2.get().max(slept - period));
                }
            }
        })
        .expect("ticker");
        servers.wake_when_done(co);
        (ticks, worst)
    });

    let took = util::run_checked(secs(100));
    let transfer = servers.finished_at().expect("finished") - started.get().expect("started");
    let [(ticks, worst), (beats, worst_beat)] = tickers.map(|(t, w)| (t.get(), w.get()));
    eprintln!(
        "largetransfer: 2 x 50 MiB in {transfer:?} (run {took:?}); 1 s ticker: {ticks} ticks, \
         worst {worst:?} late; 20 ms heartbeat: {beats} beats, worst {worst_beat:?} late"
    );
    let mut results = results.borrow().clone();
    results.sort();
    assert_eq!(results, [("all", SIZE, true), ("partial", SIZE, true)]);
    // A ticker starved by the transfer would wait it out: late by (nearly) all of it, with no
    // tick meanwhile. How late an unstarved tick is depends on how busy the machine is (a
    // heartbeat came 470 ms late at load 14), so the bounds are fractions of the transfer,
    // with a floor for transfers too short to tell (a release build's).
    let starved = (transfer / 2).max(ms(500));
    let whole_secs = transfer.as_secs() as u32;
    assert!(
        ticks * 2 + 1 >= whole_secs,
        "{ticks} ticks in {transfer:?}: the ticker was starved"
    );
    assert!(
        worst < starved,
        "a tick came {worst:?} late in {transfer:?}"
    );
    // Four beats, or half the heartbeat's slots in a transfer too short for four (3 beats in
    // a 96 ms transfer, one of them 6.6 ms late, failed the four once).
    let slots = (transfer.as_millis() / HEARTBEAT.as_millis()) as u32;
    assert!(
        beats >= 4.min(slots / 2),
        "{beats} heartbeats in {transfer:?}: the heartbeat was starved"
    );
    assert!(
        worst_beat < starved,
        "a heartbeat came {worst_beat:?} late in {transfer:?}"
    );
    assert!(took < secs(60), "the transfer took {took:?}");
}

// ----- Copas starve.lua (5 s instead of 30 s) ----------------------------------------------

#[test]
fn starve_one_byte_reader_under_flood_does_not_delay_a_ticker() {
    const READ_FOR: Duration = Duration::from_secs(5);
    let bytes_read = Rc::new(Cell::new(0usize));
    let server = Countdown::new(1);
    let server_ok = Rc::new(Cell::new(false));
    let (read2, done2, ok2) = (bytes_read.clone(), server.clone(), server_ok.clone());
    let addr = serve_once(move |mut sock| {
        let _done = done2.guard();
        let start = Instant::now();
        while start.elapsed() < READ_FOR {
            let byte = sock.receive(Pattern::Exact(1)).expect("receive(1)");
            assert_eq!(byte.len(), 1);
            read2.set(read2.get() + 1);
        }
        ok2.set(true);
        // Returning closes the connection with unread data: the client's send fails.
    });

    let client_err = Rc::new(Cell::new(None));
    let client_err2 = client_err.clone();
    copas::addthread(move || {
        let mut sock = connect(addr);
        let chunk = vec![b'z'; 64 * 1024];
        // 100_000 x 64 KiB is far more than 5 s of 1-byte reads can take.
        for _ in 0..100_000 {
            if let Err(e) = sock.send(&chunk) {
                client_err2.set(Some(e.kind()));
                return;
            }
        }
    })
    .expect("client");

    let ticks = Rc::new(Cell::new(0u32));
    let worst_drift = Rc::new(Cell::new(Duration::ZERO));
    let (ticks2, drift2, done3) = (ticks.clone(), worst_drift.clone(), server.clone());
    copas::addthread(move || {
        let start = Instant::now();
        for n in 1..=200u32 {
            if done3.done() {
                break;
            }
            let due = start + ms(100) * n;
            copas::pause(due.saturating_duration_since(Instant::now()));
            // The tick count against the wall clock.
            let drift = Instant::now().saturating_duration_since(due);
            drift2.set(drift2.get().max(drift));
            ticks2.set(n);
        }
    })
    .expect("ticker");

    let took = util::run_checked(secs(30));
    eprintln!(
        "starve: {} bytes read one at a time in {took:?}, {} ticks, worst drift {:?}",
        bytes_read.get(),
        ticks.get(),
        worst_drift.get()
    );
    assert!(server_ok.get());
    assert_eq!(client_err.get(), Some(ErrorKind::Closed));
    assert!(
        bytes_read.get() > 10_000,
        "only {} bytes read",
        bytes_read.get()
    );
    // A starved ticker would tick not at all while the reader reads, and be late by its 5 s.
    // On its wall-clock grid a late tick catches up, so 50 ticks come whatever the latency,
    // minus those still due when the reader stops.
    assert!(ticks.get() >= 25, "only {} ticks", ticks.get());
    assert!(
        worst_drift.get() < READ_FOR / 4,
        "the ticker drifted {:?} from wall time",
        worst_drift.get()
    );
}

// ----- several waiters on one socket ------------------------------------------------------

#[test]
fn two_readers_on_one_socket_are_both_served() {
    let got: Shared<Vec<(&'static str, Vec<u8>)>> = Rc::default();
    let got2 = got.clone();
    let addr = serve_once(move |mut sock| {
        // Send each line only once both readers wait (each handle has its own buffer).
        assert!(
            pause_until(secs(5), || copas::status().read >= 2),
            "the readers never waited"
        );
        sock.send(b"first\n").expect("send");
        assert!(pause_until(secs(5), || got2.borrow().len() == 1));
        sock.send(b"second\n").expect("send");
        assert!(pause_until(secs(5), || got2.borrow().len() == 2));
    });
    let got3 = got.clone();
    copas::addthread(move || {
        let sock = connect(addr);
        for name in ["a", "b"] {
            let mut reader = sock.share();
            let got = got3.clone();
            copas::addthread(move || {
                let line = reader.receive(Pattern::Line).expect("receive");
                got.borrow_mut().push((name, line));
            })
            .expect("reader");
        }
    })
    .expect("client");
    util::run_checked(secs(10));
    // Both served, in the order they started waiting.
    assert_eq!(
        *got.borrow(),
        [("a", b"first".to_vec()), ("b", b"second".to_vec())]
    );
}

#[test]
fn two_readers_through_the_read_trait_on_one_socket_are_both_served() {
    // One burst of 8 KiB and nothing after it: the first reader's 4 KiB `read` leaves the
    // other 4 KiB in the kernel, and no later edge announces them, so the second reader is
    // served only if the first hands the socket's readiness on.
    let got: Shared<Vec<usize>> = Rc::default();
    let got2 = got.clone();
    let addr = serve_once(move |mut sock| {
        assert!(
            pause_until(secs(5), || copas::status().read >= 2),
            "the readers never waited"
        );
        sock.send(&[7u8; 8192]).expect("send");
        assert!(pause_until(secs(5), || got2.borrow().len() == 2));
    });
    let got3 = got.clone();
    copas::addthread(move || {
        let sock = connect(addr);
        for _ in 0..2 {
            let mut reader = sock.share();
            let got = got3.clone();
            copas::addthread(move || {
                let mut buf = [0u8; 4096];
                let n = reader.read(&mut buf).expect("read");
                got.borrow_mut().push(n);
            })
            .expect("reader");
        }
    })
    .expect("client");
    util::run_checked(secs(10));
    assert_eq!(*got.borrow(), [4096, 4096]);
}

#[test]
fn two_writers_through_the_write_trait_on_one_socket_both_finish() {
    // Both writers wait on a full send buffer; the peer then reads everything. Whichever
    // finishes first may leave the socket writable with no edge to come, so the other goes
    // on only if the first hands the socket's readiness on.
    const EACH: usize = 4 << 20;
    let received = Rc::new(Cell::new(0usize));
    let received2 = received.clone();
    let addr = serve_once(move |mut sock| {
        assert!(
            pause_until(secs(5), || copas::status().write >= 2),
            "the writers never waited"
        );
        let all = sock.receive(Pattern::Exact(2 * EACH)).expect("receive");
        received2.set(all.len());
    });
    let done: Shared<Vec<u8>> = Rc::default();
    let done2 = done.clone();
    copas::addthread(move || {
        let sock = connect(addr);
        for byte in [1u8, 2] {
            let mut writer = sock.share();
            let done = done2.clone();
            copas::addthread(move || {
                writer.write_all(&vec![byte; EACH]).expect("write_all");
                done.borrow_mut().push(byte);
            })
            .expect("writer");
        }
    })
    .expect("client");
    util::run_checked(secs(20));
    assert_eq!(received.get(), 2 * EACH);
    assert_eq!(done.borrow().len(), 2);
}

/// A std thread that accepts one connection on `listener`, reads nothing, and resets
/// it (SO_LINGER 0 and close) once `go` says so.
fn peer_resetting_on_signal(listener: TcpListener, go: mpsc::Receiver<()>) -> JoinHandle<()> {
    thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        go.recv_timeout(secs(10)).expect("the signal to reset");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s);
    })
}

/// Two coroutines wait in `op` on one socket connected to a peer that resets it once both
/// wait; checks that both returned, and before their timeouts ran out, and that each
/// outcome passes `expected`. The reset raises one event, which wakes one waiter per
/// direction: the other is served only if the first, failing, hands the socket's
/// readiness on.
fn two_waiters_see_a_reset(
    reading: bool,
    op: impl Fn(&mut Socket) -> copas::Result<usize> + Clone + 'static,
    expected: impl Fn(&copas::Result<usize>) -> bool,
) {
    let (listener, addr) = util::local_listener();
    let (go, wait_go) = mpsc::channel();
    let peer = peer_resetting_on_signal(listener, wait_go);
    let results: Shared<Vec<copas::Result<usize>>> = Rc::default();
    let results2 = results.clone();
    copas::addthread(move || {
        let sock = connect(addr);
        for _ in 0..2 {
            let mut waiter = sock.share();
            let results = results2.clone();
            let op = op.clone();
            copas::addthread(move || {
                let got = op(&mut waiter);
                results.borrow_mut().push(got);
            })
            .expect("waiter");
        }
        let both_wait = pause_until(secs(5), || {
            let s = copas::status();
            (if reading { s.read } else { s.write }) >= 2
        });
        assert!(both_wait, "the two never waited together");
        go.send(()).expect("signal the peer");
    })
    .expect("client");
    let took = util::run_checked(secs(30));
    peer.join().expect("peer");
    let results = results.borrow();
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results.iter().all(expected), "{results:?}");
    assert!(
        took < GUARD,
        "took {took:?}: a waiter slept until its timeout"
    );
}

#[test]
fn a_reader_removed_after_its_event_woke_it_hands_the_turn_on() {
    // Readers A and B wait on one socket, C on another. Both sockets get a byte while the
    // dispatcher's thread is blocked, so one poll returns both events in arrival order: C
    // is woken first, then A (one reader per event). C removes A before A runs. The byte A
    // was woken for is B's now; no later event announces it.
    let (l1, a1) = util::local_listener();
    let (l2, a2) = util::local_listener();
    let (go, wait_go) = mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        let (mut s1, _) = l1.accept().expect("accept 1");
        let (mut s2, _) = l2.accept().expect("accept 2");
        wait_go.recv_timeout(secs(10)).expect("the signal to write");
        s2.write_all(b"c").expect("write to C's socket");
        s1.write_all(b"x").expect("write to the shared socket");
        // Open until the test is over, so no end of stream wakes anyone.
        let _ = wait_go.recv_timeout(secs(20));
    });
    type Outcomes = Vec<(&'static str, copas::Result<Vec<u8>>)>;
    let got: Shared<Outcomes> = Rc::default();
    let got2 = got.clone();
    copas::addthread(move || {
        let shared = connect(a1);
        let other = connect(a2);
        let mut readers = Vec::new();
        for name in ["a", "b"] {
            let mut sock = shared.share();
            let got = got2.clone();
            readers.push(
                copas::addthread(move || {
                    let r = sock.receivepartial(16);
                    got.borrow_mut().push((name, r));
                })
                .expect("reader"),
            );
        }
        let a = readers[0];
        let got = got2.clone();
        let mut c_sock = other.share();
        copas::addthread(move || {
            let r = c_sock.receivepartial(16);
            assert!(copas::removethread(a), "A had already run");
            got.borrow_mut().push(("c", r));
        })
        .expect("C");
        assert!(
            pause_until(secs(5), || copas::status().read >= 3),
            "the readers never waited"
        );
        go.send(()).expect("signal the peer");
        // Block the dispatcher's thread so that both bytes are there at the next poll.
        thread::sleep(ms(200));
        let done = pause_until(secs(5), || got2.borrow().len() == 2);
        drop(go);
        assert!(done, "B was not served: {:?}", got2.borrow());
        shared.close();
        other.close();
    })
    .expect("client");
    util::run_checked(secs(30));
    peer.join().expect("peer");
    let got = got.borrow();
    let names: Vec<&str> = got.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["c", "b"], "{got:?}");
    assert_eq!(got[1].1.as_deref().ok(), Some(&b"x"[..]), "{got:?}");
}

#[test]
fn two_receivepartial_waiters_on_one_socket_both_see_a_reset() {
    // The first gets the reset; the next read finds the end of the stream.
    two_waiters_see_a_reset(
        true,
        |sock| sock.receivepartial(4096).map(|v| v.len()),
        |r| matches!(r, Ok(0)) || matches!(r, Err(e) if e.kind() == ErrorKind::Closed),
    );
}

#[test]
fn two_senders_on_one_full_socket_both_see_a_reset() {
    two_waiters_see_a_reset(
        false,
        |sock| sock.send(&vec![1u8; 8 << 20]),
        |r| matches!(r, Err(e) if e.kind() == ErrorKind::Closed),
    );
}

#[test]
fn two_vectored_senders_on_one_full_socket_both_see_a_reset() {
    two_waiters_see_a_reset(
        false,
        |sock| {
            let data = vec![2u8; 4 << 20];
            sock.send_vectored(&[io::IoSlice::new(&data), io::IoSlice::new(&data)])
        },
        |r| matches!(r, Err(e) if e.kind() == ErrorKind::Closed),
    );
}

#[test]
fn timed_out_reader_is_never_resumed_by_later_socket_events() {
    let got: Shared<Vec<(&'static str, Vec<u8>)>> = Rc::default();
    let got2 = got.clone();
    let addr = serve_once(move |mut sock| {
        assert!(
            pause_until(secs(5), || copas::status().read >= 2),
            "the two new readers never waited"
        );
        sock.send(b"one\n").expect("send");
        assert!(pause_until(secs(5), || got2.borrow().len() == 1));
        sock.send(b"two\n").expect("send");
        assert!(pause_until(secs(5), || got2.borrow().len() == 2));
    });
    let slept = Rc::new(Cell::new(None));
    let (got3, slept2) = (got.clone(), slept.clone());
    copas::addthread(move || {
        let sock = connect(addr);
        let mut stale = sock.share();
        sock.settimeout(Some(ms(10)));
        for _ in 0..5 {
            let start = Instant::now();
            let err = stale.receive(Pattern::Line).expect_err("nothing sent yet");
            assert_eq!(err.kind(), ErrorKind::Timeout);
            assert!(start.elapsed() >= ms(10));
        }
        sock.settimeout(Some(GUARD));
        for name in ["a", "b"] {
            let mut reader = sock.share();
            let got = got3.clone();
            copas::addthread(move || {
                let line = reader.receive(Pattern::Line).expect("receive");
                got.borrow_mut().push((name, line));
            })
            .expect("reader");
        }
        // If a stale entry of this coroutine were left in the socket's queue, the data
        // events would resume it here, early.
        slept2.set(Some(copas::pause(secs(1))));
    })
    .expect("client");
    util::run_checked(secs(10));
    assert_eq!(
        *got.borrow(),
        [("a", b"one".to_vec()), ("b", b"two".to_vec())]
    );
    let slept = slept.get().expect("the timed-out coroutine finished");
    assert!(
        slept >= secs(1),
        "the timed-out reader was resumed after {slept:?} by a socket event"
    );
}

/// Three coroutines wait in `receivepartial(max)` on shared handles of one connection; the
/// peer sends its last bytes and its FIN back to back, often one event that wakes one
/// reader. Every reader must see the end of the stream at once, not at its timeout.
fn shared_readers_see_the_end_after_the_last_bytes(max: usize) {
    let (listener, addr) = util::local_listener();
    let (go, wait_go) = mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        wait_go.recv_timeout(GUARD).expect("the signal to end");
        s.write_all(b"last bytes").expect("write");
        s.shutdown(Shutdown::Write).expect("shutdown");
        // Open until the client closes: the end is the FIN, not a reset.
        let mut rest = Vec::new();
        let _ = s.set_read_timeout(Some(GUARD));
        let _ = s.read_to_end(&mut rest);
    });
    let ended = Rc::new(RefCell::new(Vec::new()));
    let got = Rc::new(RefCell::new(Vec::new()));
    let (ended2, got2) = (ended.clone(), got.clone());
    copas::addthread(move || {
        let sock = copas::connect(addr, Some(GUARD)).expect("connect");
        sock.settimeout(Some(secs(4)));
        for i in 0..3 {
            let mut reader = sock.share();
            let (ended, got) = (ended2.clone(), got2.clone());
            copas::addthread(move || {
                let start = Instant::now();
                for _ in 0..100 {
                    match reader.receivepartial(max) {
                        Ok(chunk) if chunk.is_empty() => break,
                        Ok(chunk) => got.borrow_mut().extend(chunk),
                        Err(e) => panic!("reader {i}: {e} after {:?}", start.elapsed()),
                    }
                }
                ended.borrow_mut().push((i, start.elapsed()));
            })
            .expect("reader");
        }
        let all_wait = pause_until(secs(5), || copas::status().read >= 3);
        assert!(all_wait, "the readers never waited together");
        go.send(()).expect("signal the peer");
        pause_until(secs(8), || ended2.borrow().len() == 3);
        sock.close();
    })
    .expect("client");
    util::run_checked(secs(20));
    peer.join().expect("peer");
    assert_eq!(*got.borrow(), b"last bytes", "max {max}");
    let ended = ended.borrow();
    assert_eq!(ended.len(), 3, "max {max}: {ended:?}");
    for (i, took) in ended.iter() {
        assert!(
            *took < secs(2),
            "max {max}: reader {i} saw the end after {took:?}"
        );
    }
}

#[test]
fn every_shared_reader_sees_the_end_of_stream_that_came_with_the_last_bytes() {
    shared_readers_see_the_end_after_the_last_bytes(16);
}

#[test]
fn every_shared_reader_sees_the_end_of_stream_that_came_with_the_last_bytes_big_reads() {
    shared_readers_see_the_end_after_the_last_bytes(65537);
}

// ----- receive patterns -------------------------------------------------------------------

#[test]
fn line_strips_lf_and_every_cr() {
    let lines = Rc::new(RefCell::new(Vec::new()));
    let lines2 = lines.clone();
    with_peer(
        |mut s| {
            s.write_all(b"plain\nwin\r\n\ra\rb\r\r\n\n").expect("write");
            read_to_close(&mut s);
        },
        move |mut sock| {
            for _ in 0..4 {
                lines2
                    .borrow_mut()
                    .push(sock.receive(Pattern::Line).expect("line"));
            }
        },
    );
    let want: [&[u8]; 4] = [b"plain", b"win", b"ab", b""];
    assert_eq!(*lines.borrow(), want);
}

#[test]
fn line_split_across_one_byte_writes() {
    let lines = Rc::new(RefCell::new(Vec::new()));
    let lines2 = lines.clone();
    with_peer(
        |mut s| {
            trickle(&mut s, b"hello copas\r\nsecond\n", 1, ms(2));
            read_to_close(&mut s);
        },
        move |mut sock| {
            for _ in 0..2 {
                lines2
                    .borrow_mut()
                    .push(sock.receive(Pattern::Line).expect("line"));
            }
        },
    );
    let want: [&[u8]; 2] = [b"hello copas", b"second"];
    assert_eq!(*lines.borrow(), want);
}

/// A socket gives its read buffer up while it waits with nothing buffered, and the next one
/// to read takes it (net/read_buffers.rs): the buffer still holds the bytes of the
/// connection before, and none of them may show in a line of the next.
#[test]
fn a_line_read_into_a_buffer_another_connection_gave_up_holds_only_its_own_bytes() {
    let (listener, addr) = util::local_listener();
    let lines: Shared<Vec<Vec<u8>>> = Rc::default();
    let lines2 = lines.clone();
    let server: Rc<Cell<Option<Server>>> = Rc::default();
    let server2 = server.clone();
    let handle = copas::addserver(listener, move |mut sock| {
        sock.settimeout(Some(GUARD));
        while let Ok(line) = sock.receive(Pattern::Line) {
            lines2.borrow_mut().push(line);
            if lines2.borrow().len() == 3 {
                if let Some(server) = server2.take() {
                    copas::removeserver(server, false).expect("removeserver");
                }
            }
            if sock.send(b"ok\n").is_err() {
                break;
            }
        }
    })
    .expect("addserver");
    server.set(Some(handle));
    let peer = thread::spawn(move || {
        let open = |addr| {
            let s = TcpStream::connect(addr).expect("peer: connect");
            s.set_read_timeout(Some(secs(10))).expect("timeout");
            s
        };
        let ok = |s: &mut TcpStream| {
            let mut reply = [0u8; 3];
            s.read_exact(&mut reply).expect("peer: read ok");
            assert_eq!(&reply, b"ok\n");
        };
        let mut first = open(addr);
        first.write_all(&[b'A'; 200]).expect("write");
        first.write_all(b"\n").expect("write");
        ok(&mut first);
        // The first handler now waits for its next line, its buffer given up.
        thread::sleep(ms(20));
        let mut second = open(addr);
        second.write_all(b"xy\n").expect("write");
        ok(&mut second);
        second.write_all(b"z").expect("write");
        thread::sleep(ms(20));
        second.write_all(b"w\n").expect("write");
        ok(&mut second);
    });
    util::run_checked(secs(20));
    join(peer);
    let want: [&[u8]; 3] = [&[b'A'; 200], b"xy", b"zw"];
    assert_eq!(*lines.borrow(), want);
}

#[test]
fn all_returns_everything_at_peer_close() {
    let body = pattern_bytes(300 * 1024, 7);
    let sent = body.clone();
    let got = Rc::new(RefCell::new(None));
    let got2 = got.clone();
    with_peer(
        move |mut s| {
            s.write_all(b"head\n").expect("write");
            thread::sleep(ms(20));
            trickle(&mut s, &sent, 64 * 1024, ms(5));
            // Dropping the stream closes it: the end of `All`.
        },
        move |mut sock| {
            assert_eq!(sock.receive(Pattern::Line).expect("line"), b"head");
            *got2.borrow_mut() = Some(sock.receive(Pattern::All).expect("all"));
        },
    );
    let got = got.borrow_mut().take().expect("handler ran");
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the data differs");
}

/// The peer's data and its end of stream are both queued before the handler reads: the
/// read that drains the data is short, and no further readiness edge will come, yet the end
/// of stream must be seen (`All` returns, `Line` fails with `Closed`).
#[test]
fn end_of_stream_queued_behind_data_is_seen() {
    let (tx, rx) = mpsc::channel::<()>();
    let out = Rc::new(RefCell::new(None));
    let out2 = out.clone();
    with_peer(
        move |mut s| {
            s.write_all(b"first\nall the rest").expect("write");
            s.shutdown(Shutdown::Write).expect("shutdown");
            tx.send(()).expect("handler alive");
            read_to_close(&mut s);
        },
        move |mut sock| {
            assert!(
                pause_until(secs(10), || rx.try_recv().is_ok()),
                "the peer did not write"
            );
            copas::pause(ms(50)); // the dispatcher sees the readiness edge first
            sock.settimeout(Some(secs(2)));
            let first = sock.receive(Pattern::Line).expect("first line");
            let start = Instant::now();
            let rest = sock.receive(Pattern::All);
            let took = start.elapsed();
            let rest = rest.map_err(|e| (e.kind(), e.partial().to_vec()));
            *out2.borrow_mut() = Some((first, rest, took));
        },
    );
    let (first, rest, took) = out.borrow_mut().take().expect("handler ran");
    assert_eq!(first, b"first");
    assert_eq!(
        rest,
        Ok(b"all the rest".to_vec()),
        "receive(All) did not see the end of stream (after {took:?})"
    );
    assert!(took < secs(1), "the end of stream was seen after {took:?}");
}

#[test]
fn exact_spans_several_writes() {
    let big = pattern_bytes(100_000, 99);
    let sent = big.clone();
    let got = Rc::new(RefCell::new(Vec::new()));
    let got2 = got.clone();
    with_peer(
        move |mut s| {
            trickle(&mut s, b"abcdef", 2, ms(10));
            trickle(&mut s, &sent, 10_000, ms(5));
            s.write_all(b"tail").expect("write");
            read_to_close(&mut s);
        },
        move |mut sock| {
            // (No RefCell borrow is held across a receive: that would span a yield.)
            let got = vec![
                sock.receive(Pattern::Exact(6)).expect("exact 6"),
                sock.receive(Pattern::Exact(100_000)).expect("exact 100000"),
                sock.receive(Pattern::Exact(4)).expect("exact 4"),
            ];
            *got2.borrow_mut() = got;
        },
    );
    let got = got.borrow();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], b"abcdef");
    assert!(got[1] == big, "the 100 000 bytes differ");
    assert_eq!(got[2], b"tail");
}

/// `Exact(n)` with an `n` taken from a peer's length header sets aside memory as bytes come,
/// not `n` up front: a huge length ends in `Closed` with what came, never a capacity
/// overflow panic or an allocation failure that aborts the process.
#[test]
fn exact_with_a_huge_announced_length_holds_only_what_came() {
    let out = Rc::new(RefCell::new(Vec::new()));
    let out2 = out.clone();
    with_peer(
        |mut s| {
            s.write_all(b"LENGTH 18446744073709551615\nabc")
                .expect("write");
            thread::sleep(ms(100));
            s.shutdown(Shutdown::Write).expect("shutdown");
            read_to_close(&mut s);
        },
        move |mut sock| {
            let header = sock.receive_line().expect("header");
            let n: usize = header["LENGTH ".len()..].parse().expect("a length");
            let e = sock.receive(Pattern::Exact(n)).expect_err("3 bytes came");
            let after = util::kind(sock.receive(Pattern::Exact(1 << 40)));
            *out2.borrow_mut() = vec![
                (e.kind(), e.partial().to_vec()),
                (after.unwrap_err(), vec![]),
            ];
        },
    );
    assert_eq!(
        *out.borrow(),
        [
            (ErrorKind::Closed, b"abc".to_vec()),
            (ErrorKind::Closed, vec![])
        ]
    );
}

#[test]
fn receive_with_prefix_counts_the_prefix_and_a_long_prefix_reads_nothing() {
    let got = Rc::new(RefCell::new(Vec::new()));
    let got2 = got.clone();
    with_peer(
        |mut s| {
            s.write_all(b"abcdefgh\nrest").expect("write");
            // Closing ends the final `All`.
        },
        move |mut sock| {
            let got = vec![
                // Exact counts the prefix: 3 + 2 bytes read.
                sock.receive_with_prefix(Pattern::Exact(5), b"PF-")
                    .expect("a"),
                // A prefix as long as the pattern (or longer) is returned, nothing is read.
                sock.receive_with_prefix(Pattern::Exact(2), b"XY")
                    .expect("b"),
                sock.receive_with_prefix(Pattern::Exact(2), b"XYZ")
                    .expect("c"),
                sock.receive_with_prefix(Pattern::Line, b">").expect("d"),
                sock.receive_with_prefix(Pattern::All, b"<").expect("e"),
            ];
            *got2.borrow_mut() = got;
        },
    );
    let want: [&[u8]; 5] = [b"PF-ab", b"XY", b"XYZ", b">cdefgh", b"<rest"];
    assert_eq!(*got.borrow(), want);
}

#[test]
fn peer_closing_mid_line_gives_closed_with_partial() {
    let errs = Rc::new(RefCell::new(Vec::new()));
    let errs2 = errs.clone();
    with_peer(
        |mut s| {
            s.write_all(b"abc\ndefghij tail").expect("write");
            // Closed here, mid-line.
        },
        move |mut sock| {
            assert_eq!(sock.receive(Pattern::Line).expect("first line"), b"abc");
            let e = sock
                .receive(Pattern::Line)
                .expect_err("the line never ends");
            errs2.borrow_mut().push((e.kind(), e.partial().to_vec()));
            // Nothing is left behind: the partial data is not read twice.
            let e = sock
                .receive(Pattern::Exact(3))
                .expect_err("at end of stream");
            errs2.borrow_mut().push((e.kind(), e.partial().to_vec()));
        },
    );
    assert_eq!(
        *errs.borrow(),
        [
            (ErrorKind::Closed, b"defghij tail".to_vec()),
            (ErrorKind::Closed, Vec::new())
        ]
    );
}

#[test]
fn peer_closing_mid_exact_gives_closed_with_partial() {
    let err = Rc::new(RefCell::new(None));
    let err2 = err.clone();
    with_peer(
        |mut s| {
            trickle(&mut s, b"0123456789", 5, ms(10));
        },
        move |mut sock| {
            let e = sock
                .receive(Pattern::Exact(100))
                .expect_err("only 10 bytes");
            *err2.borrow_mut() = Some((e.kind(), e.partial().to_vec()));
        },
    );
    assert_eq!(
        err.borrow_mut().take(),
        Some((ErrorKind::Closed, b"0123456789".to_vec()))
    );
}

#[test]
fn receive_timeout_mid_line_gives_timeout_with_partial_and_the_socket_goes_on() {
    let (tx, rx) = mpsc::channel::<()>();
    let out = Rc::new(RefCell::new(None));
    let out2 = out.clone();
    with_peer(
        move |mut s| {
            s.write_all(b"abc").expect("write");
            rx.recv_timeout(secs(10)).expect("the handler timed out");
            s.write_all(b"def\n").expect("write");
            read_to_close(&mut s);
        },
        move |mut sock| {
            sock.settimeout(Some(ms(100)));
            let start = Instant::now();
            let e = sock.receive(Pattern::Line).expect_err("no end of line");
            let took = start.elapsed();
            tx.send(()).expect("peer alive");
            sock.settimeout(Some(secs(5)));
            let next = sock.receive(Pattern::Line).expect("the rest of the line");
            *out2.borrow_mut() = Some((e.kind(), e.partial().to_vec(), took, next));
        },
    );
    let (kind, partial, took, next) = out.borrow_mut().take().expect("handler ran");
    assert_eq!(kind, ErrorKind::Timeout);
    assert_eq!(partial, b"abc");
    assert!(
        took >= ms(100) && took < secs(2),
        "timed out after {took:?}"
    );
    // The partial bytes were handed over, not kept: the next line is only what followed.
    assert_eq!(next, b"def");
}

/// LuaSocket's `*l` drops every CR as it reads, so what an interrupted line hands back has
/// none, and Copas's idiom of passing it back as the prefix gives the line whole, wherever
/// the timeout or the close fell (after the ending's CR, or after one inside the line).
#[test]
fn a_lines_partial_data_has_no_cr_and_fed_back_as_prefix_gives_the_line() {
    let (tx, rx) = mpsc::channel::<()>();
    let out = Rc::new(RefCell::new(Vec::new()));
    let out2 = out.clone();
    with_peer(
        move |mut s| {
            s.write_all(b"abc\r").expect("write");
            rx.recv_timeout(secs(10)).expect("the handler timed out");
            s.write_all(b"\nd\re").expect("write");
            rx.recv_timeout(secs(10)).expect("the handler timed out");
            s.write_all(b"f\r\nx\ry\r").expect("write");
            // Closed here, mid-line.
        },
        move |mut sock| {
            for _ in 0..2 {
                sock.settimeout(Some(ms(100)));
                let e = sock.receive(Pattern::Line).expect_err("no end of line yet");
                assert_eq!(e.kind(), ErrorKind::Timeout);
                tx.send(()).expect("peer alive");
                sock.settimeout(Some(GUARD));
                let line = sock
                    .receive_with_prefix(Pattern::Line, e.partial())
                    .expect("the rest of the line");
                out2.borrow_mut().push((e.partial().to_vec(), line));
            }
            let e = sock
                .receive(Pattern::Line)
                .expect_err("the line never ends");
            assert_eq!(e.kind(), ErrorKind::Closed);
            out2.borrow_mut().push((e.partial().to_vec(), Vec::new()));
        },
    );
    let want: [(&[u8], &[u8]); 3] = [(b"abc", b"abc"), (b"de", b"def"), (b"xy", b"")];
    let got = out.borrow();
    let got: Vec<(&[u8], &[u8])> = got.iter().map(|(p, l)| (&p[..], &l[..])).collect();
    assert_eq!(got, want);
}

#[test]
fn endless_line_fails_with_limit_exceeded_and_the_socket_stays_usable() {
    const LIMIT: usize = 1000;
    let out = Rc::new(RefCell::new(None));
    let out2 = out.clone();
    let (tx, rx) = mpsc::channel::<()>();
    with_peer(
        move |mut s| {
            s.write_all(&[b'x'; 3 * LIMIT]).expect("write");
            rx.recv_timeout(secs(10))
                .expect("the handler hit the limit");
            s.write_all(b"\nnext\n").expect("write");
            read_to_close(&mut s);
        },
        move |mut sock| {
            sock.set_line_limit(LIMIT);
            assert_eq!(sock.line_limit(), LIMIT);
            let mut e = sock.receive(Pattern::Line).expect_err("no line feed");
            tx.send(()).expect("peer alive");
            let kind = e.kind();
            let partial = e.take_partial();
            // Read on: the rest of the long line (as lines or errors), then "next".
            let mut rest = Vec::new();
            let mut next = None;
            for _ in 0..10 {
                match sock.receive(Pattern::Line) {
                    Ok(line) if line == b"next" => {
                        next = Some(line);
                        break;
                    }
                    Ok(line) => rest.extend_from_slice(&line),
                    Err(mut e) if e.kind() == ErrorKind::LimitExceeded => {
                        rest.extend_from_slice(&e.take_partial())
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            *out2.borrow_mut() = Some((kind, partial, rest, next));
        },
    );
    let (kind, partial, rest, next) = out.borrow_mut().take().expect("handler ran");
    assert_eq!(kind, ErrorKind::LimitExceeded);
    assert!(
        partial.len() >= LIMIT,
        "failed before the limit: {} bytes",
        partial.len()
    );
    assert!(partial.iter().all(|&b| b == b'x'));
    // No byte is lost: the partial data and what followed make up the long line.
    assert_eq!(partial.len() + rest.len(), 3 * LIMIT);
    assert!(rest.iter().all(|&b| b == b'x'));
    assert_eq!(
        next.as_deref(),
        Some(&b"next"[..]),
        "the socket is not usable"
    );
}

/// The limit counts a line's bytes, not its ending: a line of exactly the limit is accepted
/// with a CR LF ending as with an LF one, and one byte more is refused either way.
#[test]
fn a_line_of_exactly_the_limit_is_accepted_whatever_its_ending() {
    let out = Rc::new(RefCell::new(Vec::new()));
    let out2 = out.clone();
    with_peer(
        |mut s| {
            s.write_all(b"abcd\nefgh\r\nijklm\r\nnopqr\nnext\n")
                .expect("write");
            read_to_close(&mut s);
        },
        move |mut sock| {
            sock.set_line_limit(4);
            let got = (0..7)
                .map(|_| {
                    sock.receive(Pattern::Line)
                        .map_err(|e| (e.kind(), e.partial().to_vec()))
                })
                .collect();
            *out2.borrow_mut() = got;
        },
    );
    let too_long = |partial: &[u8]| Err((ErrorKind::LimitExceeded, partial.to_vec()));
    assert_eq!(
        *out.borrow(),
        [
            Ok(b"abcd".to_vec()),
            Ok(b"efgh".to_vec()),
            too_long(b"ijkl"),
            Ok(b"m".to_vec()),
            too_long(b"nopq"),
            Ok(b"r".to_vec()),
            Ok(b"next".to_vec()),
        ]
    );
}

/// A line held to the limit is refused the same way however it arrives: one byte over the
/// limit without its line feed is refused at once, not handed over by the receive timeout
/// (fed back as the prefix, such a partial let an empty rest pass it). A partial line that
/// may still end within the limit (its last byte the CR of a CR LF) is handed over by the
/// timeout and, fed back, gives the line; a prefix already over the limit is refused.
#[test]
fn a_line_over_the_limit_is_refused_whether_it_pauses_or_comes_at_once() {
    let out = Rc::new(RefCell::new(Vec::new()));
    let out2 = out.clone();
    let (tx, rx) = mpsc::channel::<()>();
    with_peer(
        move |mut s| {
            s.write_all(b"abcd").expect("write");
            rx.recv_timeout(secs(10)).expect("first receive");
            s.write_all(b"\nabc\r").expect("write");
            rx.recv_timeout(secs(10)).expect("timed out");
            s.write_all(b"\n\n").expect("write");
            read_to_close(&mut s);
        },
        move |mut sock| {
            sock.set_line_limit(3);
            sock.settimeout(Some(ms(100)));
            let outcome =
                |r: copas::Result<Vec<u8>>| r.map_err(|e| (e.kind(), e.partial().to_vec()));
            let mut got = vec![outcome(sock.receive(Pattern::Line))];
            tx.send(()).expect("peer alive");
            got.push(outcome(sock.receive(Pattern::Line)));
            let timed_out = outcome(sock.receive(Pattern::Line));
            let partial = match &timed_out {
                Err((ErrorKind::Timeout, partial)) => partial.clone(),
                other => panic!("expected a timeout, got {other:?}"),
            };
            got.push(timed_out);
            tx.send(()).expect("peer alive");
            got.push(outcome(sock.receive_with_prefix(Pattern::Line, &partial)));
            got.push(outcome(sock.receive_with_prefix(Pattern::Line, b"wxyz")));
            got.push(outcome(sock.receive(Pattern::Line)));
            *out2.borrow_mut() = got;
        },
    );
    let err = |kind, partial: &[u8]| Err((kind, partial.to_vec()));
    assert_eq!(
        *out.borrow(),
        [
            err(ErrorKind::LimitExceeded, b"abc"),
            Ok(b"d".to_vec()),
            err(ErrorKind::Timeout, b"abc"),
            Ok(b"abc".to_vec()),
            err(ErrorKind::LimitExceeded, b"wxyz"),
            Ok(b"".to_vec()),
        ]
    );
}

/// An unterminated line at the end of the stream is over the limit by one byte as by two:
/// both are refused with their first `limit` bytes, and the rest comes with `Closed` next.
#[test]
fn a_last_unterminated_line_one_byte_over_the_limit_is_refused_like_a_longer_one() {
    let out = Rc::new(RefCell::new(Vec::new()));
    for tail in [&b"abcde"[..], b"abcdef", b"abcd"] {
        let out2 = out.clone();
        with_peer(
            move |mut s| {
                s.write_all(tail).expect("write");
                s.shutdown(std::net::Shutdown::Write).expect("shutdown");
                read_to_close(&mut s);
            },
            move |mut sock| {
                sock.set_line_limit(4);
                let got: Vec<_> = (0..2)
                    .map(|_| {
                        sock.receive(Pattern::Line)
                            .map_err(|e| (e.kind(), e.partial().to_vec()))
                    })
                    .collect();
                out2.borrow_mut().push(got);
            },
        );
    }
    let err = |kind, partial: &[u8]| Err((kind, partial.to_vec()));
    assert_eq!(
        *out.borrow(),
        [
            vec![
                err(ErrorKind::LimitExceeded, b"abcd"),
                err(ErrorKind::Closed, b"e")
            ],
            vec![
                err(ErrorKind::LimitExceeded, b"abcd"),
                err(ErrorKind::Closed, b"ef")
            ],
            vec![err(ErrorKind::Closed, b"abcd"), err(ErrorKind::Closed, b"")],
        ]
    );
}

/// The line limit bounds what a peer can make the socket buffer: a line never grows past
/// the limit, however the bytes arrive (reliability scenario B.2 #13, `DEFAULT_LINE_LIMIT`
/// docs: "cannot make the socket buffer more than this").
#[test]
fn line_limit_bounds_the_buffered_line() {
    const LIMIT: usize = 1000;
    let out = Rc::new(RefCell::new(Vec::new()));
    let out2 = out.clone();
    let (tx, rx) = mpsc::channel::<()>();
    let addr = serve_once(move |mut sock| {
        sock.set_line_limit(LIMIT);
        // 1: a line of 3 x LIMIT bytes that arrives in one piece, with its line feed.
        let r = sock.receive(Pattern::Line);
        out2.borrow_mut().push(match r {
            Ok(line) => Ok(line.len()),
            Err(e) => Err((e.kind(), e.partial().len())),
        });
        // Skip the rest of that line, up to the marker line.
        let mut skipped = 0;
        while sock.receive(Pattern::Line).ok().as_deref() != Some(&b"--"[..]) {
            skipped += 1;
            assert!(skipped < 10, "no marker line");
        }
        tx.send(()).expect("peer alive");
        // 2: with the default limit, 64 KiB minus 100 bytes, a pause, then much more.
        sock.set_line_limit(copas::DEFAULT_LINE_LIMIT);
        let r = sock.receive(Pattern::Line);
        out2.borrow_mut().push(match r {
            Ok(line) => Ok(line.len()),
            Err(e) => Err((e.kind(), e.partial().len())),
        });
    });
    let peer = std_peer(addr, move |mut s| {
        let mut first = vec![b'x'; 3 * LIMIT];
        first.extend_from_slice(b"\n--\n");
        s.write_all(&first).expect("write");
        rx.recv_timeout(secs(10)).expect("handler went on");
        s.write_all(&vec![b'y'; copas::DEFAULT_LINE_LIMIT - 100])
            .expect("write");
        thread::sleep(ms(200));
        // The peer may stop being read at any moment now; ignore write errors.
        let _ = s.write_all(&vec![b'y'; 4 * copas::DEFAULT_LINE_LIMIT]);
        // The handler ends with unread data: its close may reset the connection.
        let _ = s.read_to_end(&mut Vec::new());
    });
    util::run_checked(secs(20));
    join(peer);
    // 1: a 3 x LIMIT-byte line with LIMIT as the limit; 2: an endless line, default limit.
    assert_eq!(
        *out.borrow(),
        [
            Err((ErrorKind::LimitExceeded, LIMIT)),
            Err((ErrorKind::LimitExceeded, copas::DEFAULT_LINE_LIMIT))
        ],
        "a line may not grow past the line limit"
    );
}

#[test]
fn invalid_utf8_line_is_an_error_with_the_bytes() {
    let out = Rc::new(RefCell::new(None));
    let out2 = out.clone();
    with_peer(
        |mut s| {
            s.write_all(b"ab\xffcd\r\nok\n").expect("write");
            read_to_close(&mut s);
        },
        move |mut sock| {
            let e = sock.receive_line().expect_err("not UTF-8");
            let io_kind = e.io_error().map(|e| e.kind());
            let next = sock.receive_line().expect("the next line");
            *out2.borrow_mut() = Some((e.kind(), io_kind, e.partial().to_vec(), next));
        },
    );
    let (kind, io_kind, partial, next) = out.borrow_mut().take().expect("handler ran");
    assert_eq!(kind, ErrorKind::Io);
    assert_eq!(io_kind, Some(io::ErrorKind::InvalidData));
    assert_eq!(partial, b"ab\xffcd");
    assert_eq!(next, "ok");
}

// ----- resets and SIGPIPE -----------------------------------------------------------------

/// A std listener thread that accepts one connection, reads `read_first` bytes, then
/// resets the connection (SO_LINGER 0 and close).
fn resetting_peer(read_first: usize) -> (SocketAddr, JoinHandle<()>) {
    let (listener, addr) = util::local_listener();
    let handle = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(secs(10))).expect("timeout");
        let mut buf = vec![0; read_first];
        s.read_exact(&mut buf).expect("read");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s);
    });
    (addr, handle)
}

/// Sends far more than the kernel buffers to a peer that resets after 1 KiB, then once
/// more; both sends must fail with `Closed`. Returns the first error's `sent()`.
fn send_into_reset() -> usize {
    const BIG: usize = 16 * 1024 * 1024;
    let (addr, peer) = resetting_peer(1024);
    let mut sock = connect(addr);
    let e = sock
        .send(&vec![b's'; BIG])
        .expect_err("send to a reset peer");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e:?}");
    let sent = e.sent();
    assert!(
        (1024..BIG).contains(&sent),
        "sent() = {sent}: the peer read 1024 bytes of {BIG}"
    );
    // Now the connection is known dead: this is where SIGPIPE would strike.
    let e = sock.send(b"more").expect_err("send after the reset");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e:?}");
    assert_eq!(e.sent(), 0);
    join(peer);
    sent
}

const SIGPIPE_CHILD: &str = "COPAS_TCP_SIGPIPE_CHILD";

#[test]
fn send_to_reset_peer_is_closed_and_raises_no_sigpipe() {
    if !util::is_child(SIGPIPE_CHILD) {
        let out = util::run_child(
            "send_to_reset_peer_is_closed_and_raises_no_sigpipe",
            SIGPIPE_CHILD,
            secs(60),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "child failed: {:?} (signal {:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status,
            out.status.signal()
        );
        assert!(
            stdout.contains("sigpipe-child: survived"),
            "stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        return;
    }
    // SAFETY: `signal` with SIG_DFL installs no handler code; the child process runs only
    // this test, so no other thread depends on the SIGPIPE disposition.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR, "signal(SIGPIPE, SIG_DFL) failed");

    // Inside a coroutine.
    let sent_in_coroutine = Rc::new(Cell::new(None));
    let sent2 = sent_in_coroutine.clone();
    copas::addthread(move || sent2.set(Some(send_into_reset()))).expect("addthread");
    util::run_checked(secs(30));
    let in_coroutine = sent_in_coroutine.get().expect("the coroutine finished");

    // Outside any coroutine (blocking calls).
    let _dog = util::Watchdog::new("blocking send to a reset peer", secs(30));
    let outside = send_into_reset();
    println!("sigpipe-child: survived (sent {in_coroutine} / {outside} bytes before the reset)");
}

// ----- half-close -------------------------------------------------------------------------

#[test]
fn half_close_lets_the_server_read_all_and_still_reply() {
    const REPLY: usize = 1024 * 1024;
    let request = pattern_bytes(200 * 1024, 3);
    let reply = Rc::new(pattern_bytes(REPLY, 4));
    let (want, reply2) = (request.clone(), reply.clone());
    let server_got = Rc::new(Cell::new(None));
    let server_got2 = server_got.clone();
    let addr = serve_once(move |mut sock| {
        let got = sock.receive(Pattern::All).expect("receive(All)");
        server_got2.set(Some(got == want));
        assert_eq!(sock.send(&reply2).expect("reply"), REPLY);
    });
    let client = Rc::new(RefCell::new(None));
    let client2 = client.clone();
    copas::addthread(move || {
        let mut sock = connect(addr);
        sock.send(&request).expect("request");
        sock.shutdown(Shutdown::Write).expect("shutdown");
        // A second shutdown is harmless (Ok or an error, never a panic).
        let _ = sock.shutdown(Shutdown::Write);
        let after = sock.send(b"late").expect_err("send after shutdown(Write)");
        let got = sock.receive(Pattern::All).expect("the reply");
        *client2.borrow_mut() = Some((after.kind(), got));
    })
    .expect("client");
    util::run_checked(secs(20));
    assert_eq!(server_got.get(), Some(true), "the server got other data");
    let (after_kind, got) = client.borrow_mut().take().expect("client finished");
    assert_eq!(after_kind, ErrorKind::Closed);
    assert_eq!(got.len(), REPLY);
    assert!(got == *reply, "the reply differs");
}

// ----- a zero timeout ---------------------------------------------------------------------

/// A zero timeout means "never wait": a receive fails with `Timeout` only when nothing is
/// there. Outside a coroutine, bytes that came after an earlier read drained the socket are
/// there although no event announced them.
#[test]
fn zero_timeout_outside_a_coroutine_receives_what_came_after_a_drain() {
    let (listener, addr) = util::local_listener();
    let (go, wait) = mpsc::channel::<()>();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.write_all(b"one\n").expect("write");
        wait.recv_timeout(secs(10)).expect("go");
        s.write_all(b"two\n").expect("write");
        read_to_close(&mut s);
    });
    let mut sock = connect(addr);
    assert_eq!(sock.receive(Pattern::Line).expect("one"), b"one");
    sock.settimeout(Some(Duration::ZERO));
    let before = util::kind(sock.receive(Pattern::Line));
    go.send(()).expect("peer alive");
    // The line arrives in one piece, but when is the kernel's business: ask until it is
    // there (without the fix every call failed, however long the line had been there).
    let mut after = Err(ErrorKind::Timeout);
    util::wait_until(secs(10), || {
        after = util::kind(sock.receive(Pattern::Line));
        after != Err(ErrorKind::Timeout)
    });
    drop(sock);
    join(peer);
    assert_eq!(before, Err(ErrorKind::Timeout), "nothing was there yet");
    assert_eq!(
        after,
        Ok(b"two".to_vec()),
        "the line was there: the call would not block"
    );
}

/// In a handler: a request the client sent before the accept is in the kernel when the
/// handler starts, so a zero-timeout receive returns it.
#[test]
fn zero_timeout_in_a_handler_receives_a_request_sent_before_the_accept() {
    let out = Rc::new(RefCell::new(None));
    let out2 = out.clone();
    let addr = serve_once(move |mut sock| {
        sock.settimeout(Some(Duration::ZERO));
        *out2.borrow_mut() = Some(util::kind(sock.receive(Pattern::Line)));
    });
    let mut client = TcpStream::connect(addr).expect("connect");
    client.write_all(b"request\n").expect("write");
    thread::sleep(ms(100));
    util::run_checked(secs(20));
    drop(client);
    assert_eq!(out.borrow_mut().take(), Some(Ok(b"request".to_vec())));
}

/// And a send: once the peer has read what filled the socket, a zero-timeout send goes out.
#[test]
fn zero_timeout_send_goes_out_once_the_peer_has_read() {
    let (listener, addr) = util::local_listener();
    let (go, wait) = mpsc::channel::<()>();
    let (read, has_read) = mpsc::channel::<usize>();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        wait.recv_timeout(secs(10)).expect("go");
        s.set_read_timeout(Some(ms(300))).expect("timeout");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        // Bounded: the copas side sent a finite amount and then waits for this count.
        while let Ok(n @ 1..) = s.read(&mut buf) {
            total += n;
        }
        read.send(total).expect("test alive");
        s.set_read_timeout(Some(secs(10))).expect("timeout");
        read_to_close(&mut s)
    });
    let mut sock = connect(addr);
    sock.settimeouts(Some(GUARD), Some(ms(200)), Some(GUARD));
    let e = sock
        .send(&vec![7u8; 64 << 20])
        .expect_err("the peer does not read yet");
    assert_eq!(e.kind(), ErrorKind::Timeout);
    go.send(()).expect("peer alive");
    let total = has_read.recv_timeout(secs(20)).expect("peer read");
    assert_eq!(total, e.sent(), "the peer read all that went");
    sock.settimeout(Some(Duration::ZERO));
    let r = util::kind(sock.send(b"x"));
    drop(sock);
    let rest = peer.join().expect("peer");
    assert_eq!(r, Ok(1), "the socket is empty: the send would not block");
    assert_eq!(rest, b"x");
}

// ----- outside any coroutine --------------------------------------------------------------

#[test]
fn blocking_use_outside_a_coroutine() {
    let _dog = util::Watchdog::new("blocking socket calls", secs(20));
    let (listener, addr) = util::local_listener();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(secs(10))).expect("timeout");
        let mut w = s.try_clone().expect("clone");
        for line in io::BufReader::new(s).lines() {
            let line = line.expect("read");
            w.write_all(format!("{line}\n").as_bytes()).expect("write");
        }
    });
    assert!(copas::current().is_none());
    let mut sock = connect(addr);
    assert_eq!(sock.send(b"ping\n").expect("send"), 5);
    assert_eq!(sock.receive(Pattern::Line).expect("echo"), b"ping");

    sock.settimeout(Some(ms(100)));
    let start = Instant::now();
    let e = sock.receive(Pattern::Line).expect_err("nothing sent");
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(
        took >= ms(100) && took < secs(2),
        "timed out after {took:?}"
    );

    // Still usable after the timeout.
    sock.settimeout(Some(secs(5)));
    sock.send(b"bye\n").expect("send");
    assert_eq!(sock.receive(Pattern::Line).expect("echo"), b"bye");
    let slices = [io::IoSlice::new(b"gath"), io::IoSlice::new(b"ered\n")];
    assert_eq!(sock.send_vectored(&slices).expect("send_vectored"), 9);
    assert_eq!(sock.receive(Pattern::Line).expect("echo"), b"gathered");
    drop(sock);
    join(server);
}

// ----- Read / BufRead / Write -------------------------------------------------------------

#[test]
fn std_io_traits_lines_and_write_all() {
    const REPLY: usize = 1024 * 1024;
    let reply = pattern_bytes(REPLY, 11);
    let want = reply.clone();
    let lines: Rc<RefCell<Option<Vec<String>>>> = Rc::default();
    let lines2 = lines.clone();
    let (tx, rx) = mpsc::channel();
    with_peer(
        move |mut s| {
            s.write_all(b"one\ntwo\r\nthree\n").expect("write");
            s.shutdown(Shutdown::Write).expect("shutdown");
            tx.send(read_to_close(&mut s)).expect("send result");
        },
        move |mut sock| {
            let got: io::Result<Vec<String>> = (&mut sock).lines().collect();
            *lines2.borrow_mut() = Some(got.expect("lines"));
            sock.write_all(&reply).expect("write_all");
            sock.flush().expect("flush");
        },
    );
    assert_eq!(
        lines.borrow_mut().take().expect("handler ran"),
        ["one", "two", "three"]
    );
    let got = rx.recv_timeout(secs(1)).expect("peer finished");
    assert_eq!(got.len(), REPLY);
    assert!(got == want, "the reply differs");
}

#[test]
fn read_trait_reads_what_is_there() {
    let out = Rc::new(RefCell::new(None));
    let out2 = out.clone();
    with_peer(
        |mut s| {
            s.write_all(b"hello").expect("write");
            thread::sleep(ms(50));
            s.write_all(b" world").expect("write");
        },
        move |mut sock| {
            let mut buf = [0u8; 3];
            let n = sock.read(&mut buf).expect("read");
            let mut rest = Vec::new();
            sock.read_to_end(&mut rest).expect("read_to_end");
            *out2.borrow_mut() = Some((buf[..n].to_vec(), rest));
        },
    );
    let (first, rest) = out.borrow_mut().take().expect("handler ran");
    assert_eq!(first, b"hel");
    assert_eq!(rest, b"lo world");
}

#[test]
fn receivepartial_returns_exactly_what_came_at_any_size() {
    // Sizes below, at and above the 16 KiB up to which reads go through the thread's
    // scratch buffer, each asked for with a `max` above it: every message comes back whole
    // and byte-exact in one or more pieces, none longer than `max`, and a small message
    // does not hold a `max`-sized allocation.
    const SIZES: [usize; 5] = [1, 100, 4096, 16 * 1024, 40 * 1024];
    const MAX: [usize; 5] = [4096, 4096, 16 * 1024, 16 * 1024, 64 * 1024];
    let bodies: Vec<Vec<u8>> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern_bytes(n, 77 + i as u64))
        .collect();
    let sent = bodies.clone();
    let got: Shared<Vec<(Vec<u8>, usize, usize)>> = Rc::default();
    let got2 = got.clone();
    with_peer(
        move |mut s| {
            let mut ack = [0u8; 1];
            for body in &sent {
                s.write_all(body).expect("write");
                // One message at a time: the handler acknowledges each whole one.
                s.read_exact(&mut ack).expect("ack");
            }
        },
        move |mut sock| {
            for (&size, &max) in SIZES.iter().zip(&MAX) {
                let mut whole = Vec::new();
                let mut largest = 0;
                let mut slack = 0;
                for _ in 0..size {
                    if whole.len() == size {
                        break;
                    }
                    let piece = sock.receivepartial(max).expect("receivepartial");
                    assert!(!piece.is_empty(), "end of stream mid-message");
                    largest = largest.max(piece.len());
                    slack = slack.max(piece.capacity() - piece.len());
                    whole.extend_from_slice(&piece);
                }
                sock.send(b"k").expect("ack");
                got2.borrow_mut().push((whole, largest, slack));
            }
        },
    );
    let got = got.borrow();
    assert_eq!(got.len(), SIZES.len());
    for (i, (whole, largest, slack)) in got.iter().enumerate() {
        assert!(
            whole == &bodies[i],
            "message of {} bytes corrupted",
            SIZES[i]
        );
        assert!(
            *largest <= MAX[i],
            "a piece of {largest} bytes for max {}",
            MAX[i]
        );
        if MAX[i] <= 16 * 1024 {
            assert_eq!(*slack, 0, "a {}-byte message kept spare capacity", SIZES[i]);
        }
    }
}

// ----- vectored sends ----------------------------------------------------------------------

/// `count` slices cut from `bytes` at pseudo-random points, some of them empty (also the
/// first and the last), so a send takes several `sendmsg` windows and stops mid-slice.
fn cut_into_slices(bytes: &[u8], count: usize) -> Vec<std::ops::Range<usize>> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut cuts: Vec<usize> = (0..count - 1)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Every tenth cut repeats the one before it: an empty slice.
            if i % 10 == 0 {
                0
            } else {
                (x % bytes.len() as u64) as usize
            }
        })
        .collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

#[test]
fn send_vectored_sends_every_slice_in_order_past_a_full_buffer() {
    // 8 MiB in 3,000 slices (three `sendmsg` windows of at most 1,024), to a peer that reads
    // slowly at first: partial sends stop inside slices and the rest must resume there.
    const TOTAL: usize = 8 << 20;
    let body = pattern_bytes(TOTAL, 41);
    let want = body.clone();
    let ranges = cut_into_slices(&body, 3000);
    assert!(ranges.iter().any(|r| r.is_empty()) && ranges.len() > 2048);
    let returned = Rc::new(Cell::new(None));
    let returned2 = returned.clone();
    let (tx, rx) = mpsc::channel();
    with_peer(
        move |mut s| {
            thread::sleep(ms(100));
            tx.send(read_to_close(&mut s)).expect("send result");
        },
        move |mut sock| {
            let slices: Vec<io::IoSlice<'_>> = ranges
                .iter()
                .map(|r| io::IoSlice::new(&body[r.clone()]))
                .collect();
            returned2.set(Some(sock.send_vectored(&slices).expect("send_vectored")));
        },
    );
    assert_eq!(returned.get(), Some(TOTAL));
    let got = rx.recv_timeout(secs(1)).expect("peer finished");
    assert_eq!(got.len(), TOTAL);
    assert!(
        got == want,
        "the bytes differ from the slices' concatenation"
    );
}

#[test]
fn write_vectored_sends_a_prefix_of_the_slices_and_says_how_long() {
    let sent: Shared<Vec<usize>> = Rc::default();
    let sent2 = sent.clone();
    let (tx, rx) = mpsc::channel();
    with_peer(
        move |mut s| tx.send(read_to_close(&mut s)).expect("send result"),
        move |mut sock| {
            let empty: [io::IoSlice<'_>; 2] = [io::IoSlice::new(b""), io::IoSlice::new(b"")];
            sent2
                .borrow_mut()
                .push(sock.write_vectored(&empty).expect("nothing"));
            let slices = [
                io::IoSlice::new(b""),
                io::IoSlice::new(b"head:"),
                io::IoSlice::new(b""),
                io::IoSlice::new(b"body"),
            ];
            sent2
                .borrow_mut()
                .push(sock.write_vectored(&slices).expect("write_vectored"));
        },
    );
    let sent = sent.borrow();
    let got = rx.recv_timeout(secs(1)).expect("peer finished");
    assert_eq!(sent[0], 0);
    // An empty socket buffer takes nine bytes at once; a shorter write is still a prefix.
    assert!(
        sent[1] >= 1 && sent[1] <= 9,
        "write_vectored returned {}",
        sent[1]
    );
    assert_eq!(got, &b"head:body"[..sent[1]]);
}

#[test]
fn send_vectored_timeout_reports_the_bytes_that_went_out() {
    // A peer that reads nothing until the send has timed out: `sent()` must count exactly
    // the bytes that reached the connection, across slices.
    const EACH: usize = 4 << 20;
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| pattern_bytes(EACH, 50 + i)).collect();
    let want: Vec<u8> = bodies.concat();
    let outcome = Rc::new(Cell::new(None));
    let outcome2 = outcome.clone();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (tx, rx) = mpsc::channel();
    with_peer(
        move |mut s| {
            go_rx.recv_timeout(secs(10)).expect("the send timed out");
            tx.send(read_to_close(&mut s)).expect("send result");
        },
        move |mut sock| {
            sock.settimeout(Some(ms(200)));
            let slices: Vec<io::IoSlice<'_>> = bodies.iter().map(|b| io::IoSlice::new(b)).collect();
            let e = sock.send_vectored(&slices).expect_err("nobody reads");
            outcome2.set(Some((e.kind(), e.sent())));
            go_tx.send(()).expect("go");
        },
    );
    let (kind, sent) = outcome.get().expect("handler ran");
    assert_eq!(kind, ErrorKind::Timeout);
    assert!(sent > 0 && sent < want.len(), "sent() = {sent}");
    let got = rx.recv_timeout(secs(1)).expect("peer finished");
    assert_eq!(
        got.len(),
        sent,
        "sent() differs from what the peer received"
    );
    assert!(
        got[..] == want[..sent],
        "the bytes differ from the slices' prefix"
    );
}

// ----- connect failures -------------------------------------------------------------------

#[test]
fn connect_to_a_closed_port_is_refused_quickly() {
    let (_closed, port) = util::closed_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let inside = Rc::new(RefCell::new(None));
    let inside2 = inside.clone();
    copas::addthread(move || {
        let start = Instant::now();
        let r = copas::connect(addr, Some(secs(5))).map(|_| ());
        *inside2.borrow_mut() = Some((r, start.elapsed()));
    })
    .expect("addthread");
    util::run_checked(secs(10));
    let (r, took) = inside.borrow_mut().take().expect("coroutine finished");
    assert_eq!(r.expect_err("nobody listens").kind(), ErrorKind::Refused);
    assert!(took < secs(1), "refused after {took:?}");

    let _dog = util::Watchdog::new("blocking connect", secs(10));
    let start = Instant::now();
    let e = copas::connect(addr, Some(secs(5))).expect_err("nobody listens");
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert!(
        start.elapsed() < secs(1),
        "refused after {:?}",
        start.elapsed()
    );
    assert_eq!(copas::status().sockets, 0);
}

/// A connect's outcome and what the reads after it got.
type ConnectAndReads = (copas::Result<()>, Vec<copas::Result<Vec<u8>>>);

/// A peer that accepts, writes `greeting` and resets, all while the connecting coroutine is
/// suspended in `connect`: a second coroutine holds the thread until the reset has been
/// sent, so the connect sees the handshake done and the reset already in. Returns the
/// connect's outcome and, when it succeeded, what two reads got.
fn connect_to_a_peer_that_resets_at_once(
    greeting: &'static [u8],
    close_first: bool,
) -> ConnectAndReads {
    let (listener, addr) = util::local_listener();
    let (reset_tx, reset_rx) = mpsc::channel();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.write_all(greeting).expect("write the greeting");
        if close_first {
            // Its FIN first, then (once that is surely in) the reset.
            s.shutdown(Shutdown::Write).expect("shutdown");
            thread::sleep(ms(20));
        }
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s);
        reset_tx.send(()).expect("signal the reset");
    });
    let outcome: Shared<Option<ConnectAndReads>> = Rc::default();
    let outcome2 = outcome.clone();
    copas::addthread(move || {
        let (connected, reads) = match copas::connect(addr, Some(GUARD)) {
            Ok(mut sock) => (
                Ok(()),
                vec![sock.receive(Pattern::All), sock.receive(Pattern::All)],
            ),
            Err(e) => (Err(e), Vec::new()),
        };
        *outcome2.borrow_mut() = Some((connected, reads));
    })
    .expect("addthread");
    // Runs once the connecting coroutine waits for its handshake, and blocks the thread
    // (not just itself) until the reset is out, so the handshake's event and the reset are
    // both in when the connect looks.
    copas::addthread(move || {
        reset_rx.recv_timeout(secs(10)).expect("the peer's reset");
        thread::sleep(ms(20));
    })
    .expect("addthread");
    util::run_checked(secs(20));
    join(peer);
    let outcome = outcome
        .borrow_mut()
        .take()
        .expect("the connecting coroutine ended");
    assert_eq!(copas::status().sockets, 0);
    outcome
}

/// Before: the connect read `ECONNRESET` from `SO_ERROR` and failed with `Closed`, and
/// what the peer had sent was lost, where a blocking connect succeeds and reads it. Now
/// the connect succeeds, the bytes come first and the reset after them.
#[test]
fn a_peer_that_writes_and_resets_at_once_is_connected_and_read_before_its_reset() {
    let (connected, reads) = connect_to_a_peer_that_resets_at_once(b"220 hello\r\n", false);
    connected.expect("the handshake completed before the reset");
    let [first, second] = &reads[..] else {
        panic!("two reads: {reads:?}")
    };
    let e = first
        .as_ref()
        .expect_err("the stream ends in a reset, not a close");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e:?}");
    assert_eq!(
        e.partial(),
        b"220 hello\r\n",
        "the peer's bytes before its reset"
    );
    assert_eq!(
        e.io_error().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset),
        "{e:?}"
    );
    // Once the reset is reported the stream reads as ended, as the kernel's does.
    assert_eq!(second.as_ref().expect("end of stream"), b"");
}

#[test]
fn a_peer_that_resets_at_once_without_writing_is_reported_by_the_first_read() {
    let (connected, reads) = connect_to_a_peer_that_resets_at_once(b"", false);
    connected.expect("the handshake completed before the reset");
    let e = reads[0].as_ref().expect_err("a reset");
    assert_eq!(e.partial(), b"");
    assert_eq!(
        e.io_error().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset),
        "{e:?}"
    );
}

/// A peer that writes, closes its side and then resets, all before the connect looks: the
/// kernel reads that as the bytes and a clean end (`SO_ERROR` says `EPIPE`, not
/// `ECONNRESET`). Before, the `EPIPE` was kept and reported at the end of the stream, so
/// a complete reply and a graceful close read as `Closed` with `BrokenPipe`.
#[test]
fn a_peer_that_writes_closes_and_resets_at_once_reads_as_its_bytes_and_a_clean_end() {
    let (connected, reads) = connect_to_a_peer_that_resets_at_once(b"221 bye\r\n", true);
    connected.expect("the handshake completed before the reset");
    let [first, second] = &reads[..] else {
        panic!("two reads: {reads:?}")
    };
    assert_eq!(
        first.as_ref().expect("the bytes, then the end"),
        b"221 bye\r\n"
    );
    assert_eq!(second.as_ref().expect("end of stream"), b"");
}

// ----- a connection's first read -----------------------------------------------------------

/// How long a first read that should be woken may wait in these tests before it fails with
/// `Timeout`: far longer than loopback needs, far shorter than [`GUARD`].
const FIRST_READ: Duration = Duration::from_secs(3);

/// A new connection's first read asks the poller, not the kernel (one `recv` that would
/// mostly hear `EAGAIN` saved per connection): it must still see bytes that were queued
/// before the server accepted, bytes and end of stream queued before the accept, and bytes
/// that come later.
#[test]
fn an_accepted_connections_first_receive_sees_bytes_from_before_and_after_the_accept() {
    let (listener, addr) = util::local_listener();
    // Two clients whose bytes (and for the second, its end of stream) are queued in the
    // kernel before copas even has the listener.
    let mut early = TcpStream::connect(addr).expect("connect");
    early.write_all(b"early\n").expect("write");
    let mut closed = TcpStream::connect(addr).expect("connect");
    closed.write_all(b"then closed").expect("write");
    closed.shutdown(Shutdown::Write).expect("shutdown");
    thread::sleep(ms(50));
    let got: Shared<Vec<Vec<u8>>> = Rc::default();
    let server_cell: Rc<Cell<Option<Server>>> = Rc::default();
    let (got2, cell) = (got.clone(), server_cell.clone());
    let server = copas::addserver(listener, move |mut sock: Socket| {
        sock.settimeout(Some(FIRST_READ));
        let first = sock.receivepartial(64).expect("first receive");
        let rest = if first.ends_with(b"\n") {
            Vec::new()
        } else {
            sock.receive(Pattern::All).expect("rest")
        };
        sock.send(b"ok\n").expect("send");
        let mut got = got2.borrow_mut();
        got.push([first, rest].concat());
        if got.len() == 3 {
            copas::removeserver(cell.get().expect("server"), false).expect("removeserver");
        }
    })
    .expect("addserver");
    server_cell.set(Some(server));
    // The third client connects once the server runs and writes a while after.
    let late = std_peer(addr, |mut stream| {
        thread::sleep(ms(200));
        stream.write_all(b"late\n").expect("peer: write");
        assert_eq!(read_to_close(&mut stream), b"ok\n");
    });
    util::run_checked(secs(20));
    join(late);
    for stream in [&mut early, &mut closed] {
        stream.set_read_timeout(Some(secs(5))).expect("timeout");
        assert_eq!(read_to_close(stream), b"ok\n");
    }
    let mut got = got.borrow().clone();
    got.sort();
    assert_eq!(
        got,
        [&b"early\n"[..], b"late\n", b"then closed"].map(<[u8]>::to_vec)
    );
}

/// The same for a connection copas opened: the first receive sees a greeting the server
/// sent before it, and one sent a while after.
#[test]
fn a_connected_sockets_first_receive_sees_a_greeting_from_before_and_after() {
    let (listener, addr) = util::local_listener();
    let server = thread::spawn(move || {
        for delay in [ms(0), ms(200)] {
            let (mut stream, _) = listener.accept().expect("accept");
            thread::sleep(delay);
            stream.write_all(b"220 hello\r\n").expect("write");
            assert_eq!(read_to_close(&mut stream), b"QUIT\r\n");
        }
    });
    let greetings: Shared<Vec<Vec<u8>>> = Rc::default();
    let greetings2 = greetings.clone();
    copas::addthread(move || {
        for pause in [ms(100), ms(0)] {
            let mut sock = connect(addr);
            sock.settimeout(Some(FIRST_READ));
            // Long enough for an immediate greeting to be queued before the first read.
            copas::pause(pause);
            let line = sock.receive(Pattern::Line).expect("greeting");
            greetings2.borrow_mut().push(line);
            sock.send(b"QUIT\r\n").expect("send");
        }
    })
    .expect("addthread");
    util::run_checked(secs(20));
    join(server);
    assert_eq!(
        *greetings.borrow(),
        [b"220 hello".to_vec(), b"220 hello".to_vec()]
    );
}

// ----- descriptors ------------------------------------------------------------------------

const FD_CHILD: &str = "COPAS_TCP_FD_CHILD";

/// Runs in a child process: the descriptor count is per process and other tests run in
/// parallel threads.
#[test]
fn no_descriptor_leak_after_100_connections() {
    if !util::is_child(FD_CHILD) {
        util::assert_child_passes(
            "no_descriptor_leak_after_100_connections",
            FD_CHILD,
            "fd-child: ok",
            secs(60),
        );
        return;
    }
    const CONNECTIONS: usize = 100;
    util::make_dispatcher();
    let before = util::fd_count();

    let (listener, addr) = util::local_listener();
    let served = Rc::new(Cell::new(0usize));
    let server_cell: Rc<Cell<Option<Server>>> = Rc::default();
    let (served2, cell) = (served.clone(), server_cell.clone());
    let server = copas::addserver(listener, move |mut sock: Socket| {
        let line = sock.receive(Pattern::Line).expect("receive");
        sock.send(&[&line[..], b"\n"].concat()).expect("send");
        served2.set(served2.get() + 1);
        if served2.get() == CONNECTIONS {
            copas::removeserver(cell.get().expect("server"), false).expect("removeserver");
        }
    })
    .expect("addserver");
    server_cell.set(Some(server));
    let ok = Rc::new(Cell::new(0usize));
    for i in 0..CONNECTIONS {
        let ok = ok.clone();
        copas::addthread(move || {
            let mut sock = connect(addr);
            let msg = format!("client {i}");
            sock.send(format!("{msg}\n").as_bytes()).expect("send");
            assert_eq!(sock.receive(Pattern::Line).expect("echo"), msg.as_bytes());
            if i % 2 == 0 {
                sock.close(); // half of them close explicitly, the others by drop
            }
            ok.set(ok.get() + 1);
        })
        .expect("addthread");
    }
    util::run_checked(secs(30));
    assert_eq!((served.get(), ok.get()), (CONNECTIONS, CONNECTIONS));
    let after = util::fd_count();
    let st = copas::status();
    assert_eq!((st.sockets, st.coroutines), (0, 0), "{st:?}");
    assert_eq!(after, before, "descriptors before and after the run");
    println!("fd-child: ok ({before} descriptors before and after)");
}

/// `wrap` takes a connected TCP stream. A UDP socket read as a stream would lose each
/// datagram's bytes beyond one read, silently; a listener has no stream to read. Both are
/// refused with `InvalidState`, as `wrapudp` refuses a TCP socket; so is a Unix-domain
/// stream, which is not TCP (it has no peer address to report, among others).
#[test]
fn wrap_refuses_a_udp_socket_a_listener_and_a_unix_stream() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        util::kind(copas::wrap(udp)).err(),
        Some(ErrorKind::InvalidState)
    );
    let (unix, _other_end) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(
        util::kind(copas::wrap(unix)).err(),
        Some(ErrorKind::InvalidState)
    );
    let (listener, _) = util::local_listener();
    assert_eq!(
        util::kind(copas::wrap(listener)).err(),
        Some(ErrorKind::InvalidState)
    );
    // A connected stream is what it takes.
    let (listener, addr) = util::local_listener();
    let stream = TcpStream::connect(addr).unwrap();
    let _peer = listener.accept().unwrap();
    assert!(copas::wrap(stream).is_ok());
}

/// `addserver` takes a listening socket: one bound but not listening, or a connected
/// stream, would fail every accept with `EINVAL` (the server backing off and logging once a
/// second for ever, and `run` never ending); it is refused with `InvalidState` instead, as
/// is a listening Unix-domain socket, which is not TCP.
/// Servers compare and hash by identity: they key a set of the servers a program runs.
#[test]
fn servers_key_a_hash_set_by_identity() {
    let (a, _) = util::local_listener();
    let (b, _) = util::local_listener();
    let a = copas::addserver(a, |_s: Socket| {}).expect("addserver");
    let b = copas::addserver(b, |_s: Socket| {}).expect("addserver");
    let mut running = std::collections::HashSet::new();
    assert!(running.insert(a));
    assert!(running.insert(b));
    assert!(!running.insert(a), "a copy is the same server");
    for server in running.drain() {
        copas::removeserver(server, false).expect("removeserver");
    }
    assert!(copas::removeserver(a, false).is_err(), "removed twice");
    util::run_bounded(secs(10));
}

#[test]
fn addserver_refuses_a_socket_that_is_not_listening_or_not_tcp() {
    let bound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    bound
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let outcome = copas::addserver(bound, |_s: Socket| {}).map(|_| ());
    assert_eq!(util::kind(outcome).err(), Some(ErrorKind::InvalidState));
    let (listener, addr) = util::local_listener();
    let stream = TcpStream::connect(addr).unwrap();
    let _peer = listener.accept().unwrap();
    let outcome = copas::addserver(stream, |_s: Socket| {}).map(|_| ());
    assert_eq!(util::kind(outcome).err(), Some(ErrorKind::InvalidState));
    let dir = util::TempDir::new("unix-listener");
    let unix = std::os::unix::net::UnixListener::bind(dir.path("socket")).unwrap();
    let outcome = copas::addserver(unix, |_s: Socket| {}).map(|_| ());
    assert_eq!(util::kind(outcome).err(), Some(ErrorKind::InvalidState));
    assert_eq!(copas::status().servers, 0);
    assert!(copas::finished());
}

/// Socket calls that keep completing without waiting yield now and then, failing ones too:
/// a loop that retries a socket closed under it (every error taken for a passing one) must
/// not freeze the thread's other coroutines, as Copas's pause on every receive and send
/// keeps them going.
#[test]
fn a_loop_retrying_a_closed_socket_still_lets_the_others_run() {
    const SPIN: Duration = Duration::from_millis(500);
    let (listener, addr) = util::local_listener();
    let mut sock = copas::connect(addr, Some(secs(5))).expect("connect");
    let _accepted = listener.accept().expect("accept");
    sock.close();
    let ticks = Rc::new(Cell::new(0u32));
    let ticks_in_spin = Rc::new(Cell::new(None));
    let spinning = Rc::new(Cell::new(true));
    let (ticks2, seen, spinning2) = (ticks.clone(), ticks_in_spin.clone(), spinning.clone());
    copas::addthread(move || {
        copas::pause(ms(20)); // the ticker's first pause starts
        let before = ticks2.get();
        let start = Instant::now();
        let mut byte = [0u8; 1];
        for call in 0..u64::MAX {
            if start.elapsed() >= SPIN {
                break;
            }
            let failed = match call % 6 {
                0 => sock.receive(Pattern::Line).is_err(),
                1 => sock.receivepartial(64).is_err(),
                2 => sock.send(b"x").is_err(),
                3 => sock.read(&mut byte).is_err(),
                4 => sock.write(b"x").is_err(),
                _ => sock.fill_buf().is_err(),
            };
            assert!(failed, "call {call} on a closed socket succeeded");
        }
        seen.set(Some(ticks2.get() - before));
        spinning2.set(false);
    })
    .expect("spinner");
    copas::addthread(move || {
        for _ in 0..1000 {
            if !spinning.get() {
                break;
            }
            copas::pause(ms(10));
            ticks.set(ticks.get() + 1);
        }
    })
    .expect("ticker");
    util::run_checked(secs(30));
    let ticks = ticks_in_spin.get().expect("the spinner ended");
    // About 50 unstarved on a quiet machine; none at all when starved.
    assert!(ticks >= 5, "{ticks} ticks of 10 ms during a {SPIN:?} spin");
}

/// An empty list of addresses is a caller's mistake, not a name that failed to resolve:
/// `InvalidInput` everywhere an address list is taken, as `bind_reuseport` has it.
#[test]
fn an_empty_list_of_addresses_is_invalid_input_everywhere() {
    let results = Rc::new(RefCell::new(Vec::new()));
    let out = results.clone();
    copas::addthread(move || {
        let none: &[SocketAddr] = &[];
        let mut out = out.borrow_mut();
        out.push((
            "connect",
            util::kind(copas::connect(none, Some(GUARD)).map(|_| ())),
        ));
        out.push((
            "connect_vec",
            util::kind(copas::connect(Vec::<SocketAddr>::new(), None).map(|_| ())),
        ));
        out.push((
            "UdpSocket::bind",
            util::kind(copas::UdpSocket::bind(none).map(|_| ())),
        ));
        let udp = copas::UdpSocket::bind("127.0.0.1:0").expect("bind");
        out.push(("setpeername", util::kind(udp.setpeername(none))));
        out.push((
            "bind_reuseport",
            util::kind(copas::bind_reuseport(none).map(|_| ())),
        ));
    })
    .expect("addthread");
    util::run_checked(secs(10));
    let results = results.borrow();
    assert_eq!(results.len(), 5, "{results:?}");
    for (what, got) in results.iter() {
        assert_eq!(got, &Err(ErrorKind::InvalidInput), "{what}");
    }
}

/// Copas's idiom — a line's partial data fed back as the prefix after each timeout — is held
/// to the line limit as one uninterrupted receive is: a peer that pauses past every timeout
/// cannot grow a line without end.
#[test]
fn a_line_fed_back_piece_by_piece_is_held_to_the_line_limit() {
    const LIMIT: usize = 1000;
    let (tx, rx) = mpsc::channel::<()>();
    let out = Rc::new(RefCell::new(None));
    let out2 = out.clone();
    with_peer(
        move |mut s| {
            // 900 bytes at a time, each after the handler's timeout; never a line feed
            // until the handler has given up or taken the line.
            for _ in 0..5 {
                s.write_all(&[b'a'; 900]).expect("write");
                if rx.recv_timeout(secs(10)).is_err() {
                    break;
                }
            }
            let _ = s.write_all(b"\n");
            // The handler closes with bytes of the long line unread: a reset, not an end.
            let _ = s.read_to_end(&mut Vec::new());
        },
        move |mut sock| {
            sock.set_line_limit(LIMIT);
            let mut partial = Vec::new();
            let mut outcome = None;
            for _ in 0..5 {
                sock.settimeout(Some(ms(100)));
                match sock.receive_with_prefix(Pattern::Line, &partial) {
                    Err(e) if e.kind() == ErrorKind::Timeout => {
                        partial = e.partial().to_vec();
                        let _ = tx.send(());
                    }
                    Ok(line) => {
                        outcome = Some(Ok(line.len()));
                        break;
                    }
                    Err(e) => {
                        outcome = Some(Err((e.kind(), e.partial().len())));
                        break;
                    }
                }
            }
            *out2.borrow_mut() = outcome;
        },
    );
    assert_eq!(
        *out.borrow(),
        Some(Err((ErrorKind::LimitExceeded, LIMIT))),
        "the line as a whole passed the limit"
    );
}

/// The kernel's linger counts whole seconds, and socket2 passes `as_secs()`: 500 ms became 0,
/// a reset, and the peer got 4,096 of the 1 MiB that `send` had reported sent. A positive
/// linger is now rounded up (1 s here), and one past `i32::MAX` seconds held there (it
/// wrapped: 2^32 s became 0).
#[test]
fn a_linger_under_a_second_closes_gracefully_with_nothing_lost() {
    let _dog = util::Watchdog::new("sub-second linger", Duration::from_secs(60));
    util::make_dispatcher();
    const N: usize = 1 << 20;
    for (linger, kernel) in [
        (ms(500), Duration::from_secs(1)),
        (ms(999), Duration::from_secs(1)),
        (ms(1500), Duration::from_secs(2)),
        (
            Duration::from_secs(1 << 32),
            Duration::from_secs(i32::MAX as u64),
        ),
        (Duration::MAX, Duration::from_secs(i32::MAX as u64)),
    ] {
        let (listener, addr) = util::local_listener();
        let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        client.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        client.connect(&addr.into()).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let mut sock = copas::wrap(server).expect("wrap");
        sock.set_linger(Some(linger)).expect("set_linger");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        // SAFETY: `sock` stays open while the borrow lives (closed only below).
        let set = socket2::SockRef::from(&unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
            .linger()
            .expect("SO_LINGER");
        assert_eq!(set, Some(kernel), "{linger:?}");
        if linger > Duration::from_secs(2) {
            continue; // a close now could block for as long
        }
        let mut peer: TcpStream = client.into();
        let reader = thread::spawn(move || {
            thread::sleep(ms(100));
            peer.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut got = Vec::new();
            let end = peer.read_to_end(&mut got).map_err(|e| e.kind());
            (got.len(), end)
        });
        sock.settimeout(Some(Duration::from_secs(10)));
        assert_eq!(util::kind(sock.send(&vec![1u8; N])), Ok(N));
        sock.close();
        assert_eq!(reader.join().unwrap(), (N, Ok(N)), "{linger:?}");
    }
}

/// `receive(All)` returns what came without the room it read into: a vector a few bytes went
/// into is not handed back with a whole read chunk (64 KiB, doubled) of slack.
#[test]
fn receive_all_returns_a_vector_without_the_read_chunks_slack() {
    util::make_dispatcher();
    let caps: Shared<Vec<(usize, usize)>> = Rc::default();
    for len in [64usize, 5_000, 100_000] {
        let (listener, addr) = util::local_listener();
        let sender = thread::spawn(move || {
            let (mut peer, _) = listener.accept().expect("accept");
            peer.write_all(&vec![b'a'; len]).expect("write");
        });
        let caps = caps.clone();
        copas::addthread(move || {
            let mut sock = copas::connect(addr, Some(GUARD)).expect("connect");
            sock.settimeout(Some(GUARD));
            let got = sock.receive(Pattern::All).expect("receive(All)");
            caps.borrow_mut().push((got.len(), got.capacity()));
        })
        .expect("addthread");
        util::run_bounded(secs(20));
        sender.join().expect("sender");
    }
    for &(len, cap) in caps.borrow().iter() {
        assert!(cap <= 2 * len.max(1024), "{len} bytes in a vector of {cap}");
    }
    let lens: Vec<usize> = caps.borrow().iter().map(|c| c.0).collect();
    assert_eq!(lens, [64, 5_000, 100_000]);
}
