//! The soak's clients: one copas coroutine per live connection (copas's own client side:
//! `connect`, `connect_tls` over `native-tls`, `shutdown`, `SO_LINGER` resets), each opening
//! connection after connection until the plan's time is up, every connection doing one
//! randomly chosen thing to the echo server. One thread for all of them, so the clients
//! compete with the single-threaded server for CPU as one process, not as a thousand
//! threads. A fault on either side shows: every payload comes from the generator and every
//! reply is compared with it.
//!
//! What a connection does (weights out of 100):
//!
//! | weight | behaviour | checked |
//! |---|---|---|
//! | 49 | 1–4 echo exchanges of 1 B–64 KiB, then close | every reply byte-exact |
//! | 15 | send, half-close (shutdown of the write side, over TLS after `close_notify`), read to the end | the whole reply, byte-exact, then end of stream |
//! | 10 | send part of a message, then reset (`SO_LINGER` 0, close) | — |
//! | 10 | send a message, read part of the reply, then reset | the part read |
//! | 10 | send part, stall for at most a fifth of the server's timeout, send the rest | the whole reply |
//! | 6 | send part (maybe nothing; over TLS half of them stall in the handshake), stall longer than the server's timeout | the server echoes the part and closes |
//!
//! A connection that fails where it should not is an error, unless the client itself fell
//! behind: if, between two of its actions (starting to connect, starting a send, the
//! failure), more than the server's timeout passed — the client process kept off the CPU on
//! a loaded machine — the server was right to close it, and it is counted as `late`.
//!
//! The coroutines start spread over the first second or two, not in one burst. Every socket
//! has a timeout of the server's timeout plus 10 s, so a hang is an error, not a stuck soak.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::native_tls::{Certificate, TlsConnector};
use copas::{Pattern, Socket};

use super::{Kind, Plan, Rng, Tally, PLAN_VAR};

/// Largest echo message.
const MAX_MESSAGE: u64 = 64 * 1024;

/// Slack on every client socket's timeout beyond the server's timeout.
const IO_SLACK: Duration = Duration::from_secs(10);

/// The coroutines' first connections are spread over this long (or a quarter of the run,
/// if shorter).
const RAMP_UP: Duration = Duration::from_secs(2);

/// How many failure descriptions are kept for the end-of-run message.
const NOTES_KEPT: usize = 20;

/// Runs the clients of the plan in [`PLAN_VAR`] and prints `@tally` lines, then `@done`.
///
/// # Panics
///
/// If the plan is missing or malformed, or the dispatcher fails.
pub fn run() {
    let line = std::env::var(PLAN_VAR).expect("the soak plan variable");
    let plan = Plan::decode(&line).unwrap_or_else(|| panic!("bad soak plan {line:?}"));
    let connector = match plan.kind {
        Kind::Tcp => None,
        Kind::Tls => {
            let dir = plan.pki.as_ref().expect("a PKI for TLS");
            let ca = std::fs::read(dir.join("ca.pem")).expect("ca.pem");
            let connector = TlsConnector::builder()
                .add_root_certificate(Certificate::from_pem(&ca).expect("ca.pem parses"))
                .build()
                .expect("TLS connector");
            Some(connector)
        }
    };
    let shared = Rc::new(Shared {
        addr: SocketAddr::from(([127, 0, 0, 1], plan.port)),
        plan,
        connector,
        counts: Counts::default(),
        notes: RefCell::new(Vec::new()),
        running: Cell::new(0),
    });
    let end = Instant::now() + shared.plan.duration;
    let ramp = RAMP_UP.min(shared.plan.duration / 4);
    for slot in 0..shared.plan.conns as u64 {
        let shared = shared.clone();
        shared.running.set(shared.running.get() + 1);
        copas::addthread(move || {
            let mut rng = Rng::new(shared.plan.seed ^ slot.wrapping_mul(0xA076_1D64_78BD_642F));
            copas::pause(Duration::from_micros(rng.range(0, ramp.as_micros() as u64)));
            client(&shared, slot, &mut rng, end);
            shared.running.set(shared.running.get() - 1);
        })
        .expect("addthread");
    }
    {
        let shared = shared.clone();
        let every = (shared.plan.report_every / 4).max(Duration::from_millis(100));
        copas::addthread(move || {
            while shared.running.get() > 0 {
                copas::pause(every);
                say(&format!("@tally {}", shared.counts.tally().encode()));
            }
        })
        .expect("addthread");
    }
    copas::run().expect("the clients' dispatcher");
    for note in shared.notes.borrow().iter() {
        eprintln!("soak clients: {note}");
    }
    say(&format!("@done {}", shared.counts.tally().encode()));
}

/// One line on standard output, flushed (the server reads it as it comes).
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Shared {
    plan: Plan,
    addr: SocketAddr,
    connector: Option<TlsConnector>,
    counts: Counts,
    notes: RefCell<Vec<String>>,
    /// Client coroutines still running.
    running: Cell<usize>,
}

impl Shared {
    fn note(&self, what: String) {
        let mut notes = self.notes.borrow_mut();
        if notes.len() < NOTES_KEPT {
            notes.push(what);
        }
    }

    /// Every client socket's timeout.
    fn io_limit(&self) -> Duration {
        self.plan.server_timeout + IO_SLACK
    }
}

#[derive(Default)]
struct Counts {
    live: Cell<u64>,
    opened: Cell<u64>,
    exchanges: Cell<u64>,
    bytes: Cell<u64>,
    resets: Cell<u64>,
    half_closes: Cell<u64>,
    short_stalls: Cell<u64>,
    long_stalls: Cell<u64>,
    corrupt: Cell<u64>,
    errors: Cell<u64>,
    late: Cell<u64>,
}

impl Counts {
    fn tally(&self) -> Tally {
        Tally {
            live: self.live.get(),
            opened: self.opened.get(),
            exchanges: self.exchanges.get(),
            bytes: self.bytes.get(),
            resets: self.resets.get(),
            half_closes: self.half_closes.get(),
            short_stalls: self.short_stalls.get(),
            long_stalls: self.long_stalls.get(),
            corrupt: self.corrupt.get(),
            errors: self.errors.get(),
            late: self.late.get(),
        }
    }

    fn exchanged(&self, bytes: usize) {
        add(&self.exchanges);
        self.bytes.set(self.bytes.get() + bytes as u64);
    }
}

fn add(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

/// What went wrong with a connection.
enum Fault {
    /// The reply differed from what was sent.
    Corrupt(String),
    /// An error or early end where none should be.
    Failed(String),
}

fn failed(what: &str) -> impl FnOnce(copas::Error) -> Fault + '_ {
    move |e| Fault::Failed(format!("{what}: {e}"))
}

/// What a connection does; see the module's table.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Echo,
    HalfClose,
    ResetMidSend,
    ResetMidReceive,
    ShortStall,
    LongStall,
    /// TLS only: connect and say nothing, so the server's handshake times out.
    HandshakeStall,
}

impl Behaviour {
    /// Whether the client means to keep the server waiting less than its timeout.
    fn is_prompt(self) -> bool {
        !matches!(self, Behaviour::LongStall | Behaviour::HandshakeStall)
    }

    fn pick(rng: &mut Rng, kind: Kind) -> Behaviour {
        match rng.range(0, 99) {
            0..=48 => Behaviour::Echo,
            49..=63 => Behaviour::HalfClose,
            64..=73 => Behaviour::ResetMidSend,
            74..=83 => Behaviour::ResetMidReceive,
            84..=93 => Behaviour::ShortStall,
            _ if kind == Kind::Tls && rng.range(0, 1) == 0 => Behaviour::HandshakeStall,
            _ => Behaviour::LongStall,
        }
    }
}

fn client(shared: &Shared, slot: u64, rng: &mut Rng, end: Instant) {
    while Instant::now() < end {
        let behaviour = Behaviour::pick(rng, shared.plan.kind);
        let mut pace = Pace::new(shared.plan.server_timeout);
        match connection(shared, behaviour, rng, &mut pace) {
            Ok(()) => {}
            Err(Fault::Corrupt(what)) => {
                add(&shared.counts.corrupt);
                shared.note(format!("client {slot}, {behaviour:?}: CORRUPT: {what}"));
            }
            Err(Fault::Failed(_)) if behaviour.is_prompt() && pace.fell_behind() => {
                // This client itself (kept off the CPU) left the server waiting longer than
                // its timeout: closing it was right.
                add(&shared.counts.late);
            }
            Err(Fault::Failed(what)) => {
                add(&shared.counts.errors);
                shared.note(format!("client {slot}, {behaviour:?}: {what}"));
                // Do not hammer a server that refuses connections.
                copas::pause(Duration::from_millis(10));
            }
        }
    }
}

/// When the client last did something the server waits for (began to connect, began a
/// send), and whether the server was ever left waiting longer than its timeout meanwhile.
/// Every server timeout starts after such a moment (the server cannot wait for what the
/// client has not yet begun), so a close with no gap that long is the server's fault.
struct Pace {
    timeout: Duration,
    last: Instant,
    behind: bool,
}

impl Pace {
    fn new(timeout: Duration) -> Pace {
        Pace {
            timeout,
            last: Instant::now(),
            behind: false,
        }
    }

    /// The client acts now.
    fn act(&mut self) {
        let now = Instant::now();
        self.behind |= now.duration_since(self.last) >= self.timeout;
        self.last = now;
    }

    /// Whether the client fell behind by the server's timeout at some point, up to now.
    fn fell_behind(&mut self) -> bool {
        self.act();
        self.behind
    }
}

/// A plain TCP connection with the soak's timeout.
fn connect_tcp(shared: &Shared) -> Result<Socket, Fault> {
    let sock = copas::connect(shared.addr, Some(shared.io_limit())).map_err(failed("connect"))?;
    sock.settimeout(Some(shared.io_limit()));
    let _ = sock.set_nodelay(true);
    Ok(sock)
}

/// A connection ready for data: connected, and over TLS with the handshake done.
fn connect(shared: &Shared) -> Result<Socket, Fault> {
    let Some(connector) = &shared.connector else {
        return connect_tcp(shared);
    };
    let sock = copas::connect_tls(shared.addr, "localhost", connector, Some(shared.io_limit()))
        .map_err(failed("TLS connect"))?;
    sock.settimeout(Some(shared.io_limit()));
    let _ = sock.set_nodelay(true);
    Ok(sock)
}

/// Counts a connection as live while it exists.
struct Live<'a>(&'a Counts);

impl<'a> Live<'a> {
    fn new(counts: &'a Counts) -> Live<'a> {
        add(&counts.opened);
        add(&counts.live);
        Live(counts)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
    }
}

/// A message of 1 B to 64 KiB, sizes spread evenly over the powers of two.
fn message(rng: &mut Rng, min: u64) -> Vec<u8> {
    let bits = rng.range(0, 16);
    let len = rng.range(min, (1u64 << bits).max(min)).min(MAX_MESSAGE);
    let mut msg = vec![0u8; len as usize];
    rng.fill(&mut msg);
    msg
}

/// Reads exactly `want.len()` bytes and compares them with `want`.
fn expect_echo(sock: &mut Socket, want: &[u8]) -> Result<(), Fault> {
    match sock.receive(Pattern::Exact(want.len())) {
        Ok(got) => compare(&got, want),
        Err(e) => Err(Fault::Failed(format!(
            "reading the echo, after {} of {} bytes: {e}",
            e.partial().len(),
            want.len()
        ))),
    }
}

/// Reads to the end of the stream and compares with `want`.
fn expect_echo_then_end(sock: &mut Socket, want: &[u8]) -> Result<(), Fault> {
    match sock.receive(Pattern::All) {
        Ok(got) if got.len() > want.len() => Err(Fault::Corrupt(format!(
            "{} bytes came back for {} sent",
            got.len(),
            want.len()
        ))),
        Ok(got) if got.len() < want.len() => Err(Fault::Failed(format!(
            "end of stream after {} of {} echoed bytes",
            got.len(),
            want.len()
        ))),
        Ok(got) => compare(&got, want),
        Err(e) => Err(Fault::Failed(format!(
            "reading to the end, after {} of {} bytes: {e}",
            e.partial().len(),
            want.len()
        ))),
    }
}

fn compare(got: &[u8], want: &[u8]) -> Result<(), Fault> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(Fault::Corrupt(format!(
            "byte {at} of {} differs (got {:#04x}, sent {:#04x})",
            want.len(),
            got[at],
            want[at]
        ))),
    }
}

fn send(sock: &mut Socket, data: &[u8], pace: &mut Pace) -> Result<(), Fault> {
    pace.act();
    sock.send(data)
        .map(drop)
        .map_err(|e| Fault::Failed(format!("sending {} bytes: {e}", data.len())))
}

/// Closes with a reset: `SO_LINGER` 0, then close.
fn reset(sock: Socket) -> Result<(), Fault> {
    sock.set_linger(Some(Duration::ZERO))
        .map_err(failed("set SO_LINGER 0"))?;
    sock.close();
    Ok(())
}

/// One connection doing `behaviour`.
fn connection(
    shared: &Shared,
    behaviour: Behaviour,
    rng: &mut Rng,
    pace: &mut Pace,
) -> Result<(), Fault> {
    let counts = &shared.counts;
    let timeout = shared.plan.server_timeout;
    if let Behaviour::HandshakeStall = behaviour {
        let mut sock = connect_tcp(shared)?;
        let _live = Live::new(counts);
        copas::pause(timeout + stall_margin(rng));
        // The server gave up the handshake and closed: end of stream, nothing sent.
        expect_echo_then_end(&mut sock, &[])?;
        add(&counts.long_stalls);
        return Ok(());
    }
    let mut sock = connect(shared)?;
    let _live = Live::new(counts);
    match behaviour {
        Behaviour::Echo => {
            for _ in 0..rng.range(1, 4) {
                let msg = message(rng, 1);
                send(&mut sock, &msg, pace)?;
                expect_echo(&mut sock, &msg)?;
                counts.exchanged(msg.len());
            }
        }
        Behaviour::HalfClose => {
            let msg = message(rng, 1);
            send(&mut sock, &msg, pace)?;
            // Over TLS this sends `close_notify` first.
            sock.shutdown(Shutdown::Write)
                .map_err(failed("half-close"))?;
            expect_echo_then_end(&mut sock, &msg)?;
            add(&counts.half_closes);
            counts.exchanged(msg.len());
        }
        Behaviour::ResetMidSend => {
            let msg = message(rng, 2);
            let part = rng.range(1, msg.len() as u64 - 1) as usize;
            send(&mut sock, &msg[..part], pace)?;
            reset(sock)?;
            add(&counts.resets);
        }
        Behaviour::ResetMidReceive => {
            let msg = message(rng, 2);
            let part = rng.range(1, msg.len() as u64 - 1) as usize;
            send(&mut sock, &msg, pace)?;
            expect_echo(&mut sock, &msg[..part])?;
            reset(sock)?;
            add(&counts.resets);
        }
        Behaviour::ShortStall => {
            let msg = message(rng, 2);
            let part = rng.range(1, msg.len() as u64 - 1) as usize;
            send(&mut sock, &msg[..part], pace)?;
            let most = (timeout / 5).as_millis() as u64;
            copas::pause(Duration::from_millis(rng.range(most / 10, most)));
            send(&mut sock, &msg[part..], pace)?;
            expect_echo(&mut sock, &msg)?;
            add(&counts.short_stalls);
            counts.exchanged(msg.len());
        }
        Behaviour::LongStall => {
            let msg = message(rng, 1);
            let part = rng.range(0, msg.len() as u64 - 1) as usize;
            send(&mut sock, &msg[..part], pace)?;
            copas::pause(timeout + stall_margin(rng));
            // The server echoed the part, timed out waiting for more, and closed.
            expect_echo_then_end(&mut sock, &msg[..part])?;
            add(&counts.long_stalls);
        }
        Behaviour::HandshakeStall => unreachable!("handled above"),
    }
    Ok(())
}

/// How much longer than the server's timeout a long stall lasts: 0.1–0.5 s (the client
/// then waits for the server's close as long as its timeout allows, so the margin need not
/// cover the server's lag).
fn stall_margin(rng: &mut Rng) -> Duration {
    Duration::from_millis(rng.range(100, 500))
}
