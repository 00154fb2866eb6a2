//! The soak's server side: a copas echo server (raw bytes; over TLS behind
//! `copas::handler`) with a timeout, so stalled clients are closed, stepped in this process
//! while the clients churn in a child process. It prints a report line every interval and,
//! at the end, checks what the issue asks: no descriptor leaked, memory flat after the
//! warm-up, every exchange byte-exact, no handler panic.

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use copas::native_tls::{Identity, TlsAcceptor};
use copas::{ServerOptions, Socket};

use super::{Kind, Plan, Tally, PLAN_VAR};

/// Largest read of the echo handler (the clients' largest message).
const ECHO_CHUNK: usize = 64 * 1024;

/// Listen backlog: the clients open up to their whole number of connections at once.
const BACKLOG: i32 = 4096;

/// How long the clients may take to finish their last connections after the plan's time,
/// beyond the server's timeout and their own I/O slack, before they count as hung.
const CLIENT_GRACE: Duration = Duration::from_secs(20);

/// What one run measured, and which checks failed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub plan: Plan,
    /// How long the clients ran, from their start to their exit.
    pub ran: Duration,
    /// The clients' final counts.
    pub tally: Tally,
    /// Descriptors of this process before the clients started and after they left and
    /// every handler ended.
    pub fds_before: usize,
    pub fds_after: usize,
    /// Peak descriptors seen during the run.
    pub fds_peak: usize,
    /// Resident memory of this process at the end of the warm-up, at the end of the
    /// clients' time, and the highest seen in between, KiB.
    pub rss_warm_kib: u64,
    pub rss_end_kib: u64,
    pub rss_peak_kib: u64,
    /// Connections the server accepted.
    pub accepted: u64,
    /// Most handler coroutines alive at once (at the report instants).
    pub handlers_peak: usize,
    /// Panics in handlers (the error handler's reports that are not TLS handshake failures).
    pub panics: u64,
    /// TLS handshakes that failed (stalled or reset clients), reported by `copas::handler`.
    pub handshake_failures: u64,
    /// The dispatcher thread's time on a CPU, and its time runnable but waiting for one
    /// (other processes' load), during the run.
    pub cpu: Duration,
    pub cpu_wait: Duration,
    /// Every check that failed, in words; empty when the run passed.
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// How much memory may grow between the warm-up and the end and still count as flat.
    pub fn rss_allowance_kib(&self) -> u64 {
        (self.rss_warm_kib * self.plan.rss_margin_pct / 100).max(self.plan.rss_margin_kib)
    }

    /// The end-of-run summary, one `key: value` per line.
    pub fn summary(&self) -> String {
        let t = &self.tally;
        let growth = self.rss_end_kib as f64 - self.rss_warm_kib as f64;
        let mut s = String::new();
        let mut line = |text: String| {
            s.push_str(&text);
            s.push('\n');
        };
        line(format!(
            "soak {}: {:.1} s, {} connections kept live, seed {:#x}, server timeout {} ms",
            self.plan.kind.as_str(),
            self.ran.as_secs_f64(),
            self.plan.conns,
            self.plan.seed,
            self.plan.server_timeout.as_millis(),
        ));
        line(format!(
            "  connections: {} opened by the clients, {} accepted by the server, at most {} handlers at once",
            t.opened, self.accepted, self.handlers_peak
        ));
        line(format!(
            "  exchanges completed byte-exact: {} ({:.1} MiB echoed), corrupt: {}, unexpected client errors: {}",
            t.exchanges,
            t.bytes as f64 / 1048576.0,
            t.corrupt,
            t.errors
        ));
        line(format!(
            "  resets: {}, half-closes: {}, stalls shorter than the timeout: {}, longer (closed by the server): {}",
            t.resets, t.half_closes, t.short_stalls, t.long_stalls
        ));
        line(format!(
            "  server descriptors: {} before, {} after (peak {}): {} leaked",
            self.fds_before,
            self.fds_after,
            self.fds_peak,
            self.fds_after as i64 - self.fds_before as i64
        ));
        line(format!(
            "  server RSS: {:.1} MiB after the {} s warm-up, {:.1} MiB at the end ({:+.1} MiB, {:+.1} %; flat means at most +{:.1} MiB), peak {:.1} MiB",
            self.rss_warm_kib as f64 / 1024.0,
            self.plan.warmup.as_secs(),
            self.rss_end_kib as f64 / 1024.0,
            growth / 1024.0,
            100.0 * growth / self.rss_warm_kib.max(1) as f64,
            self.rss_allowance_kib() as f64 / 1024.0,
            self.rss_peak_kib as f64 / 1024.0,
        ));
        line(format!(
            "  server thread: {:.1} s on a CPU ({:.0} % of the run), {:.1} s runnable but waiting for a CPU",
            self.cpu.as_secs_f64(),
            100.0 * self.cpu.as_secs_f64() / self.ran.as_secs_f64().max(1e-9),
            self.cpu_wait.as_secs_f64(),
        ));
        line(format!(
            "  handler panics: {}{}",
            self.panics,
            if self.plan.kind == Kind::Tls {
                format!(
                    ", failed TLS handshakes (stalled or reset clients): {}",
                    self.handshake_failures
                )
            } else {
                String::new()
            }
        ));
        if self.failures.is_empty() {
            line("  PASS".to_string());
        } else {
            for f in &self.failures {
                line(format!("  FAIL: {f}"));
            }
        }
        s
    }
}

/// The echo handler: whatever comes in goes back out until end of stream (the reply to a
/// half-close is complete when the handler returns and copas closes the socket), a reset,
/// or the server's timeout.
fn echo(mut sock: Socket) {
    loop {
        match sock.receivepartial(ECHO_CHUNK) {
            Ok(data) if data.is_empty() => break,
            Ok(data) => {
                if sock.send(&data).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
}

/// Runs the soak of `plan` with the client process that `clients` starts (this module adds
/// the plan to its environment and reads its standard output). Steps the dispatcher of the
/// calling thread until the clients are gone and every handler has ended.
///
/// # Panics
///
/// If the server cannot be set up, or the clients cannot be started.
pub fn serve(mut plan: Plan, mut clients: Command) -> Outcome {
    let panics = Rc::new(Cell::new(0u64));
    let handshake_failures = Rc::new(Cell::new(0u64));
    {
        let (panics, handshake_failures) = (panics.clone(), handshake_failures.clone());
        copas::setdefaulterrorhandler(move |report| {
            if report.payload().is::<copas::Error>() {
                handshake_failures.set(handshake_failures.get() + 1);
            } else {
                panics.set(panics.get() + 1);
                if panics.get() <= 10 {
                    eprintln!(
                        "soak server: handler panic: {} ({})",
                        report.message(),
                        report.thread_name()
                    );
                }
            }
        });
    }
    let accepted = Rc::new(Cell::new(0u64));
    let handler: Box<dyn Fn(Socket)> = match plan.kind {
        Kind::Tcp => Box::new(echo),
        Kind::Tls => {
            let dir = plan.pki.as_ref().expect("a PKI for TLS");
            let read = |name: &str| std::fs::read(dir.join(name)).expect(name);
            let identity = Identity::from_pkcs8(&read("server-chain.pem"), &read("server.key"))
                .expect("server identity");
            Box::new(copas::handler(
                echo,
                TlsAcceptor::new(identity).expect("acceptor"),
            ))
        }
    };
    let counting = {
        let accepted = accepted.clone();
        move |sock: Socket| {
            accepted.set(accepted.get() + 1);
            handler(sock)
        }
    };
    let listener = listener();
    plan.port = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .expect("listener port");
    let server = copas::addserver_with(
        listener,
        ServerOptions::new()
            .name("soak")
            .timeout(plan.server_timeout),
        counting,
    )
    .expect("addserver");
    // The dispatcher (its epoll and event descriptors) exists before the first count.
    copas::step(Some(Duration::ZERO)).expect("step");
    let fds_before = fd_count();

    let mut child = clients
        .env(PLAN_VAR, plan.encode())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the client process");
    let start = Instant::now();
    let sched_start = schedstat();
    let latest = Arc::new(Mutex::new((Tally::default(), None::<Tally>)));
    let reader = read_tallies(&mut child, latest.clone());

    let mut out = Outcome {
        plan: plan.clone(),
        ran: Duration::ZERO,
        tally: Tally::default(),
        fds_before,
        fds_after: 0,
        fds_peak: fds_before,
        rss_warm_kib: 0,
        rss_end_kib: 0,
        rss_peak_kib: 0,
        accepted: 0,
        handlers_peak: 0,
        panics: 0,
        handshake_failures: 0,
        cpu: Duration::ZERO,
        cpu_wait: Duration::ZERO,
        failures: Vec::new(),
    };
    let limit = plan.duration + plan.server_timeout + CLIENT_GRACE;
    let mut next_report = start + plan.report_every;
    let mut warm = false;
    let mut ended = false;
    while !reader.is_finished() {
        copas::step(Some(Duration::from_millis(50))).expect("step");
        let now = Instant::now();
        let elapsed = now - start;
        if !warm && elapsed >= plan.warmup {
            warm = true;
            out.rss_warm_kib = rss_kib();
        }
        if !ended && elapsed >= plan.duration {
            ended = true;
            out.rss_end_kib = rss_kib();
        }
        if now >= next_report {
            next_report += plan.report_every;
            let fds = fd_count();
            let rss = rss_kib();
            let handlers = copas::status().coroutines;
            out.fds_peak = out.fds_peak.max(fds);
            out.rss_peak_kib = out.rss_peak_kib.max(rss);
            out.handlers_peak = out.handlers_peak.max(handlers);
            let tally = latest.lock().expect("tally").0;
            println!(
                "{:>5.1} s  live {:>5}  opened {:>8}  exchanges {:>8}  {:>9.1} MiB  resets {:>6}  half-closes {:>6}  stalls {:>5}/{:<5}  corrupt {}  errors {}  | server fds {:>5}  RSS {:>6.1} MiB  handlers {:>5}  panics {}",
                elapsed.as_secs_f64(),
                tally.live,
                tally.opened,
                tally.exchanges,
                tally.bytes as f64 / 1048576.0,
                tally.resets,
                tally.half_closes,
                tally.short_stalls,
                tally.long_stalls,
                tally.corrupt,
                tally.errors,
                fds,
                rss as f64 / 1024.0,
                handlers,
                panics.get(),
            );
        }
        if elapsed > limit {
            out.failures.push(format!(
                "the clients were still running {} s after their time; killed",
                elapsed.as_secs()
            ));
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().expect("wait for the clients");
    out.ran = start.elapsed();
    let sched_end = schedstat();
    out.cpu = sched_end.0.saturating_sub(sched_start.0);
    out.cpu_wait = sched_end.1.saturating_sub(sched_start.1);
    let _ = reader.join();
    if !status.success() {
        out.failures
            .push(format!("the client process ended with {status}"));
    }
    let (last, done) = *latest.lock().expect("tally");
    out.tally = match done {
        Some(done) => done,
        None => {
            out.failures
                .push("the clients never reported their final counts".to_string());
            last
        }
    };

    // The clients' sockets are gone; every handler must see that and end.
    let drain_limit = Instant::now() + plan.server_timeout + Duration::from_secs(5);
    while copas::status().coroutines > 0 && Instant::now() < drain_limit {
        copas::step(Some(Duration::from_millis(50))).expect("step");
    }
    let left = copas::status().coroutines;
    if left > 0 {
        out.failures.push(format!(
            "{left} handlers still running {} s after the clients left",
            (plan.server_timeout + Duration::from_secs(5)).as_secs()
        ));
    }
    out.fds_after = fd_count();
    copas::removeserver(server, false).expect("removeserver");
    copas::step(Some(Duration::ZERO)).expect("step");

    out.accepted = accepted.get();
    out.panics = panics.get();
    out.handshake_failures = handshake_failures.get();
    if !ended {
        out.rss_end_kib = rss_kib();
    }
    check(&mut out);
    out
}

/// Adds a failure for every check of the issue that does not hold.
fn check(out: &mut Outcome) {
    let t = out.tally;
    if t.exchanges == 0 {
        out.failures.push("no exchange completed".to_string());
    }
    if t.corrupt > 0 {
        out.failures
            .push(format!("{} exchanges came back corrupt", t.corrupt));
    }
    if t.errors > 0 {
        out.failures.push(format!(
            "{} connections failed unexpectedly (see the clients' notes)",
            t.errors
        ));
    }
    if out.fds_after != out.fds_before {
        out.failures.push(format!(
            "descriptors: {} before, {} after",
            out.fds_before, out.fds_after
        ));
    }
    if out.rss_end_kib > out.rss_warm_kib + out.rss_allowance_kib() {
        out.failures.push(format!(
            "memory grew from {} KiB after the warm-up to {} KiB at the end (allowed: {} KiB more)",
            out.rss_warm_kib,
            out.rss_end_kib,
            out.rss_allowance_kib()
        ));
    }
    if out.panics > 0 {
        out.failures.push(format!("{} handler panics", out.panics));
    }
}

/// A loopback listener with a backlog deep enough for the clients' first burst.
fn listener() -> socket2::Socket {
    use socket2::{Domain, Socket as RawSocket, Type};
    let sock = RawSocket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.set_reuse_address(true).expect("SO_REUSEADDR");
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    sock.listen(BACKLOG).expect("listen");
    sock
}

/// Reads the clients' `@tally` and `@done` lines into `latest` on a plain thread (the
/// clients' notes go to standard error). The thread ends when the client process closes its
/// output.
fn read_tallies(
    child: &mut Child,
    latest: Arc<Mutex<(Tally, Option<Tally>)>>,
) -> std::thread::JoinHandle<()> {
    let out = child.stdout.take().expect("clients' stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // Anywhere in the line: the test harness may print its own words first.
            if let Some(at) = line.find("@tally ") {
                latest.lock().expect("tally").0 = Tally::decode(&line[at..]);
            } else if let Some(at) = line.find("@done ") {
                let done = Tally::decode(&line[at..]);
                *latest.lock().expect("tally") = (done, Some(done));
            }
        }
    })
}

/// The calling thread's time on a CPU and time waiting for one, from
/// `/proc/thread-self/schedstat` (zero where it is missing).
fn schedstat() -> (Duration, Duration) {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| Duration::from_nanos(f.parse().unwrap_or(0)));
    (
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
    )
}

/// Descriptors open in this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Resident memory of this process, KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
