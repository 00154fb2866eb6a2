//! Echo and HTTP benchmarks: copas against a hand-written `polling` loop (the limit for this
//! design), tokio `current_thread` and may with one worker, in one run, interleaved.
//!
//! ```text
//! cargo bench --bench echo                 # echo table + system calls per message (~4 min)
//! cargo bench --bench echo -- echo         # only the echo throughput/latency table
//! cargo bench --bench echo -- syscalls     # only system calls per message (needs `perf`)
//! cargo bench --bench echo -- http         # wrk against examples/http_hello and a tokio twin
//! cargo bench --bench echo -- churn        # the same with `Connection: close`: a connection
//!                                          # per request, and system calls per connection
//! cargo bench --bench echo -- all          # all three
//! cargo bench --bench echo -- instructions # instructions and cache misses per message
//!                                          # under cachegrind (needs valgrind; not in `all`)
//! ```
//!
//! One binary, several roles chosen by its first argument; the orchestrator re-executes
//! itself (`std::env::current_exe`) for every server and load-generator process, so each
//! cell gets a fresh server process on a fresh port. Servers pin themselves to CPU 0, the
//! load generator to CPU 1 (`sched_setaffinity`; `ECHO_SERVER_CPU` / `ECHO_LOAD_CPU`).
//!
//! The load generator is one thread driving level-triggered epoll directly (libc): C
//! connections in a closed loop, each sends an S-byte message and waits for the whole echo
//! before sending the next. It records every round trip of the measured window and reads
//! the server's utime+stime from `/proc/PID/stat` at the window's start and end.
//!
//! Environment (defaults in brackets): `ECHO_ROUNDS` [3], `ECHO_WARMUP` seconds [1],
//! `ECHO_SECS` measured seconds [5], `ECHO_SERVERS` [copas,polling,tokio,may; also
//! `copas_read`: copas with `std::io::Read` into a stack buffer instead of
//! `receivepartial`; `copas_read_heap`: the same into a 4 KiB heap buffer per connection;
//! `copas_timeout` and `tokio_timeout`: every read and write under a 60 s
//! timeout (armed and cancelled per message, never fired); `copas@<KiB>` and
//! `copas_read@<KiB>`: with that coroutine stack size; `exe=<path>`: the copas server of
//! another build's echo bench binary (`exe=<path>#<server>`: that server of it), to compare
//! two commits in one interleaved run; `coro_floor`: the floor of any stackful-coroutine
//! server, copas's coroutine core on raw epoll with nothing else; `polling_work_first`
//! and `polling_work_after`: the loop with busy work per event, before the wait's first
//! reply or after each event's write; `polling_shared`: the loop with one receive buffer for
//! all connections instead of one each; `polling_edge`: the loop registered edge-triggered,
//! as copas's sockets are], `ECHO_LOADS` [50x64,1000x1024], `ECHO_SYSCALL_LOADS`
//! [1x64,50x64,1000x1024], `ECHO_SYSCALL_SECS` [3], `ECHO_HTTP_SECS` [5], `ECHO_HTTP_CONNS`
//! [50], `ECHO_HTTP_SERVERS` [copas,tokio; also `hello=<path>`: another build's
//! `http_hello`, to compare two commits], `ECHO_OUT` (CSV output directory) [`<target>/echo-bench`], `ECHO_QUIET_WAIT`
//! seconds to wait before each cell for other processes to go quiet [0: do not wait],
//! `ECHO_QUIET_PCT` [25], `ECHO_NOTE` (printed in the header), `ECHO_FIFO` real-time
//! priority for servers and load generators [0: normal scheduling; needs root or
//! `CAP_SYS_NICE`; the published runs use `ECHO_FIFO=10` so that other work on a shared
//! machine cannot take the measured CPUs], `ECHO_SERVER_SHARE` the percentage of every 10 ms
//! an echo server may run [100: no cap; a cell whose server never slept was bound by the
//! server, its rate a capacity; needs root and cgroup v1's `cpu` controller, see
//! `common/cpu_share.rs`; recorded in `echo.csv`'s last column]. The instructions mode reads `ECHO_SERVERS`
//! [copas,polling,tokio], `ECHO_LOADS`, `ECHO_WARMUP` [2] and `ECHO_SECS` [5], and ignores
//! `ECHO_FIFO`.
//!
//! Hidden roles, useful for profiling by hand (see docs/benchmarks.md):
//! `__server <kind>` prints `port=<n>` and serves forever; `__load <port> <server pid>
//! <conns> <size> <warm-up s> <secs> <perf 0|1>` prints one `key=value` result line.

#[path = "common/affinity.rs"]
mod affinity;
#[path = "common/cpu_share.rs"]
mod cpu_share;
#[path = "common/host.rs"]
mod host;

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Largest read of every echo server.
const READ_MAX: usize = 4096;

/// The servers of the default run, in the order round 1 measures them (see [`rotated`]).
const DEFAULT_SERVERS: &str = "copas,polling,tokio,may";

/// Tracepoints counted in the churn mode (`http_mode(true)`), per connection; the first is
/// the total.
const CHURN_EVENTS: &[&str] = &[
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_accept4",
    "syscalls:sys_enter_fcntl",
    "syscalls:sys_enter_setsockopt",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_close",
];

/// Tracepoints counted in the system-call mode; the first is the total.
const SYSCALL_EVENTS: &[&str] = &[
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_pwait2",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_timerfd_settime",
    "syscalls:sys_enter_futex",
];

fn main() {
    // `cargo bench` appends `--bench`; ignore every flag.
    let under_cargo_bench = env::args().any(|a| a == "--bench");
    let args: Vec<String> = env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rest = args.get(1..).unwrap_or(&[]);
    match args.first().map(String::as_str) {
        Some("__server") => server_role(rest),
        Some("__load") => load_role(rest),
        Some("__http_tokio") => http_tokio_role(),
        Some("echo") => {
            echo_mode();
        }
        Some("syscalls") => {
            syscall_mode();
        }
        Some("http") => {
            http_mode(false);
        }
        Some("churn") => {
            http_mode(true);
        }
        Some("instructions") => instructions_mode(),
        Some("all") => {
            echo_mode();
            syscall_mode();
            http_mode(false);
        }
        // `cargo test --benches` runs this binary without `--bench`: do not start a
        // four-minute measurement there.
        None if !under_cargo_bench => {
            println!(
                "echo bench: run it with `cargo bench --bench echo [-- echo|syscalls|http|churn|instructions|all]`"
            );
        }
        None => {
            echo_mode();
            syscall_mode();
        }
        Some(other) => {
            eprintln!(
                "unknown mode {other:?}: use echo, syscalls, http, churn, instructions or all"
            );
            std::process::exit(2);
        }
    }
}

// ----- small helpers ----------------------------------------------------------------------

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The loads (connections × message size) listed in `name`, or in `default`.
fn env_loads(name: &str, default: &str) -> Vec<(usize, usize)> {
    env_list(name, default)
        .iter()
        .map(|s| parse_load(s))
        .collect()
}

/// `"50x64"` → (50, 64).
fn parse_load(spec: &str) -> (usize, usize) {
    let (c, s) = spec
        .split_once('x')
        .unwrap_or_else(|| panic!("load {spec:?} is not CONNSxSIZE"));
    (c.parse().expect("connections"), s.parse().expect("size"))
}

fn ncpus() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

fn server_cpu() -> usize {
    env_or("ECHO_SERVER_CPU", 0)
}

fn load_cpu() -> usize {
    env_or("ECHO_LOAD_CPU", 1)
}

/// The share of its CPU an echo server may use, in percent (`ECHO_SERVER_SHARE`; 100: no
/// cap). Where the capped server never sleeps, it bounds the rate (see [`cpu_share`]).
fn server_share() -> u32 {
    let pct = env_or("ECHO_SERVER_SHARE", 100);
    assert!(
        (1..=100).contains(&pct),
        "ECHO_SERVER_SHARE={pct}: a percentage from 1 to 100"
    );
    pct
}

/// Pins the calling thread (and the threads it creates later) to `cpu`, and with
/// `ECHO_FIFO` set, runs it under `SCHED_FIFO`. Pinning does nothing on a one-CPU machine.
fn pin(cpu: usize) {
    if ncpus() >= 2 {
        if let Err(e) = affinity::pin_to_cpu(cpu) {
            eprintln!("echo bench: cannot pin to CPU {cpu}: {e}");
        }
    }
    if let Some(prio) = fifo_priority() {
        if let Err(e) = affinity::set_fifo(prio) {
            eprintln!("echo bench: cannot switch to SCHED_FIFO {prio}: {e}");
            std::process::exit(2);
        }
    }
}

/// The real-time priority servers and load generators run at (`ECHO_FIFO`), or `None`
/// for the normal scheduler.
fn fifo_priority() -> Option<i32> {
    match env_or("ECHO_FIFO", 0) {
        0 => None,
        prio => Some(prio),
    }
}

/// Makes a child pin itself to `cpu` between fork and exec, and with `ECHO_FIFO` set, run
/// under `SCHED_FIFO` at that priority: on a shared machine the measured processes then
/// own their CPUs (the kernel's real-time throttling still leaves others 5 %), so other
/// work neither steals their time nor evicts their caches between time slices.
fn pinned(cmd: &mut Command, cpu: usize) -> &mut Command {
    let fifo = fifo_priority();
    let pin = ncpus() >= 2;
    // SAFETY: the closure only makes async-signal-safe system calls (sched_setaffinity,
    // sched_setscheduler) on stack data; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if pin {
                affinity::pin_to_cpu(cpu)?;
            }
            if let Some(prio) = fifo {
                affinity::set_fifo(prio)?;
            }
            Ok(())
        })
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (utime, stime) in clock ticks of a whole process, from `/proc/PID/stat`.
fn proc_times(pid: u32) -> (u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return (0, 0);
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state(3) ... utime(14) stime(15).
    let get = |i: usize| f.get(i).and_then(|s| s.parse().ok()).unwrap_or(0);
    (get(11), get(12))
}

/// How many times process `pid` has gone to sleep of its own accord: the
/// `voluntary_ctxt_switches` of every one of its threads (`/proc/<pid>/task/*/status`; the
/// process's own `status` counts its main thread only, and `may` waits on a worker thread).
/// For an event loop these are the waits that found nothing ready, each of which its peer
/// pays for with a wake-up.
fn voluntary_switches(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// (busy, steal) clock ticks summed over all CPUs, from `/proc/stat`.
fn system_times() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    (g(0) + g(1) + g(2) + g(5) + g(6), g(7))
}

/// The servers in the order round `round` (from 1) measures them: each round starts one
/// further along, so no server always runs first. The first cell of a load runs right after
/// the previous load's last server closed its connections (up to 1,000 sockets the kernel is
/// still tearing down), and a fixed order gave that cost to the same server in every round.
fn rotated<T: Clone>(servers: &[T], round: usize) -> Vec<T> {
    let mut order = servers.to_vec();
    if !order.is_empty() {
        let by = (round - 1) % order.len();
        order.rotate_left(by);
    }
    order
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn kilo(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "–".into()
    } else {
        format!("{:.2}", a / b)
    }
}

fn out_dir() -> PathBuf {
    let dir = env::var_os("ECHO_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // current_exe = <target>/release/deps/echo-<hash>
            let exe = env::current_exe().expect("current_exe");
            exe.ancestors()
                .nth(3)
                .map(|t| t.join("echo-bench"))
                .unwrap_or_else(|| PathBuf::from("echo-bench"))
        });
    fs::create_dir_all(&dir).expect("create output directory");
    dir
}

/// Writes one mode's CSV into the output directory, and beside it `host.txt`, the machine
/// header of this run: the CSVs' rows do not say which CPU they ran on, and runs from
/// different virtual machines pool differently (`benches/pool.py --hosts`). Returns the CSV's
/// path.
fn write_results(name: &str, csv: &str) -> PathBuf {
    let dir = out_dir();
    let path = dir.join(name);
    fs::write(&path, csv).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let host = dir.join("host.txt");
    fs::write(&host, machine_header() + "\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", host.display()));
    path
}

fn machine_header() -> String {
    let model = host::cpu();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let git = Command::new("git")
        .args(["-C", manifest, "describe", "--always", "--dirty"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let git = if git.is_empty() {
        format!("{manifest} (not a git checkout)")
    } else {
        format!("{manifest} at {git}")
    };
    let note = env::var("ECHO_NOTE").map_or(String::new(), |n| format!("; {n}"));
    let fifo = fifo_priority().map_or(String::new(), |p| format!(", SCHED_FIFO {p}"));
    let share = match server_share() {
        100 => String::new(),
        pct => format!(
            ", servers capped to {pct} % of every {} ms ({})",
            cpu_share::PERIOD_US / 1000,
            cpu_share::GROUP
        ),
    };
    format!(
        "machine: {} CPUs, {model}, kernel {}; loadavg {}; copas {git}; server on CPU {}, load on CPU {}{fifo}{share}{note}",
        ncpus(),
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        server_cpu(),
        load_cpu(),
    )
}

/// With `ECHO_QUIET_WAIT=<s>`, waits up to that long before a cell until the other
/// processes on the machine use less than `ECHO_QUIET_PCT` [25] % of one CPU (sampled over
/// 0.5 s while no benchmark process runs). Returns the last sample, in % of one CPU.
fn wait_for_quiet() -> f64 {
    let max_wait: f64 = env_or("ECHO_QUIET_WAIT", 0.0);
    let threshold: f64 = env_or("ECHO_QUIET_PCT", 25.0);
    let give_up = Instant::now() + Duration::from_secs_f64(max_wait);
    loop {
        let (b0, _) = system_times();
        std::thread::sleep(Duration::from_millis(500));
        let (b1, _) = system_times();
        let busy = (b1 - b0) as f64 / clock_ticks() / 0.5 * 100.0;
        if max_wait <= 0.0 || busy < threshold || Instant::now() >= give_up {
            return busy;
        }
    }
}

// ----- server processes -------------------------------------------------------------------

/// A running server process and its port.
struct ServerProc {
    child: Child,
    port: u16,
}

impl ServerProc {
    /// Starts `cmd` (stdout piped) and waits for a line containing the port: `port=<n>` or
    /// an address `...:<n>`.
    fn start(mut cmd: Command) -> Result<ServerProc, String> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let port = line
            .trim()
            .trim_end_matches('/')
            .rsplit([':', '='])
            .next()
            .and_then(|p| p.parse().ok());
        match port {
            Some(port) => Ok(ServerProc { child, port }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("server said {line:?} instead of its port"))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_echo_server(kind: &str) -> Result<ServerProc, String> {
    let mut cmd = Command::new(env::current_exe().expect("current_exe"));
    cmd.args(["__server", kind]);
    ServerProc::start(cmd)
}

fn bind_any() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

fn announce(port: u16) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "port={port}").expect("stdout");
    out.flush().expect("stdout");
}

fn server_role(args: &[String]) {
    // Into the capped group before `pin` makes this a real-time process: the group's
    // budget is what lets a real-time task in.
    let share = server_share();
    if share != 100 {
        if let Err(e) = cpu_share::join(share) {
            eprintln!("echo bench: cannot cap the server's CPU: {e}");
            std::process::exit(2);
        }
    }
    pin(server_cpu());
    match args.first().map(String::as_str) {
        // `copas@<KiB>`: the same with that coroutine stack size (for diagnosis).
        Some(kind) if kind.starts_with("copas") => {
            let (name, stack) = match kind.split_once('@') {
                Some((name, kib)) => (name, Some(kib.parse::<usize>().expect("KiB") * 1024)),
                None => (kind, None),
            };
            match name {
                "copas" => copas_server(echo_receivepartial, stack),
                "copas_read" => copas_server(echo_read, stack),
                "copas_read_heap" => copas_server(echo_read_heap, stack),
                "copas_timeout" => copas_server(echo_receivepartial_timed, stack),
                _ => {
                    eprintln!("unknown server {kind:?}");
                    std::process::exit(2);
                }
            }
        }
        // `exe=<path>`: another build's bench binary serves as its copas server, so two
        // commits can be compared in one interleaved run (see docs/benchmarks.md).
        Some(kind) if kind.starts_with("exe=") => {
            let (path, server) = other_build(kind);
            let err = Command::new(path).args(["__server", server]).exec();
            eprintln!("{kind}: {err}");
            std::process::exit(2);
        }
        Some("polling") => polling_server(None, polling::PollMode::Level),
        Some("polling_edge") => polling_server(None, polling::PollMode::Edge),
        Some("polling_shared") => polling_shared_server(),
        Some("polling_work_first") => polling_server(Some(Work::First), polling::PollMode::Level),
        Some("polling_work_after") => polling_server(Some(Work::After), polling::PollMode::Level),
        Some("coro_floor") => coro_floor_server(),
        Some("tokio") => tokio_server(false),
        Some("tokio_timeout") => tokio_server(true),
        Some("may") => may_server(),
        other => {
            eprintln!("unknown server {other:?}");
            std::process::exit(2);
        }
    }
}

/// copas with `handler` serving each connection: a loop of `receivepartial(4096)` then
/// `send` (`echo_receivepartial`), the same under a receive and send timeout
/// (`echo_receivepartial_timed`), or `std::io::Read::read` into a stack buffer, which skips
/// the per-message `Vec` (`echo_read`). Separate functions, not one closure with a branch: a
/// closure holding them all would reserve the `Read` variant's 4 KiB buffer in every
/// handler's stack frame.
fn copas_server(handler: fn(copas::Socket), stack: Option<usize>) {
    let listener = bind_any();
    let port = listener.local_addr().expect("local_addr").port();
    if let Some(bytes) = stack {
        copas::set_stack_size(bytes);
    }
    copas::addserver(listener, handler).expect("addserver");
    announce(port);
    copas::run().expect("copas::run");
}

/// How long `copas_timeout` and `tokio_timeout` let a connection sit in one read or write:
/// far longer than any cell, so the timers are armed and cancelled, never fired.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn echo_receivepartial_timed(sock: copas::Socket) {
    sock.settimeout(Some(IDLE_TIMEOUT));
    echo_receivepartial(sock);
}

fn echo_receivepartial(mut sock: copas::Socket) {
    let _ = sock.set_nodelay(true);
    while let Ok(data) = sock.receivepartial(READ_MAX) {
        if data.is_empty() || sock.send(&data).is_err() {
            break;
        }
    }
}

fn echo_read(sock: copas::Socket) {
    let mut buf = [0u8; READ_MAX];
    echo_read_into(sock, &mut buf);
}

/// `echo_read` with the buffer on the heap, one per connection: the handler's stack stays
/// one page (the 4 KiB array spans two), and no `Vec` is made per message (run 23 in
/// docs/benchmarks-history.md).
fn echo_read_heap(sock: copas::Socket) {
    let mut buf = vec![0u8; READ_MAX].into_boxed_slice();
    echo_read_into(sock, &mut buf);
}

/// The loop of both `Read` handlers: read into `buf`, send what came. Always inlined, so
/// each handler is one frame, as measured (runs 20 and 23).
#[inline(always)]
fn echo_read_into(mut sock: copas::Socket, buf: &mut [u8]) {
    let _ = sock.set_nodelay(true);
    loop {
        match sock.read(buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sock.send(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

/// Where the diagnostic servers `polling_work_first` and `polling_work_after` spend
/// [`WORK_SPINS`] of busy work per event: all of it in a pass over the wait's events
/// before the first is served (as a dispatcher that wakes every event's coroutine before it
/// resumes any), or after each event's write (the same CPU, no reply held back). Their ratio
/// says what holding a wait's replies back costs in a closed loop, apart from the CPU.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    First,
    After,
}

/// Iterations of the diagnostic servers' busy work per event: about 1.8 µs of user time per
/// message here (docs/benchmarks-history.md, "Holding a wait's replies back").
const WORK_SPINS: u64 = 3000;

fn busy_work() {
    for i in 0..WORK_SPINS {
        std::hint::black_box(i);
    }
}

/// The key of the `polling` loops' listener (`polling` reserves `usize::MAX`).
const POLLING_LISTENER: usize = usize::MAX - 1;

/// The `polling` loops' listener: bound, non-blocking, registered level-triggered for reading
/// under [`POLLING_LISTENER`], and announced; with its port.
fn polling_listener(poller: &polling::Poller) -> (TcpListener, u16) {
    let listener = bind_any();
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("local_addr").port();
    let interest = polling::Event::readable(POLLING_LISTENER);
    // SAFETY: the listener outlives its registration (it lives until the process exits).
    unsafe { poller.add_with_mode(&listener, interest, polling::PollMode::Level) }
        .expect("register listener");
    (listener, port)
}

/// Accepts up to 64 pending connections into `conns`, each non-blocking, without Nagle's
/// delay and registered for reading under its slab key in `mode`; `state` makes its entry.
/// The caller deletes each connection from `poller` before dropping it.
fn polling_accept<C>(
    listener: &TcpListener,
    poller: &polling::Poller,
    mode: polling::PollMode,
    conns: &mut slab::Slab<C>,
    state: impl Fn(TcpStream) -> C,
) {
    for _ in 0..64 {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true).expect("nonblocking");
                let _ = stream.set_nodelay(true);
                let entry = conns.vacant_entry();
                let interest = polling::Event::readable(entry.key());
                // SAFETY: the caller deletes the stream from the poller before it drops it
                // (this function's contract).
                unsafe { poller.add_with_mode(&stream, interest, mode) }.expect("register");
                entry.insert(state(stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// After a write on a `polling` loop's connection, moves its interest to what it waits for
/// next if that changed: reading once nothing is left to send (`done`), writing while
/// something is (`was_reading`: the interest was reading). Returns whether that failed (the
/// connection is to be closed). `mode` is the one the connection was registered in.
fn polling_switch_interest(
    poller: &polling::Poller,
    stream: &TcpStream,
    mode: polling::PollMode,
    key: usize,
    done: bool,
    was_reading: bool,
) -> bool {
    let interest = match (done, was_reading) {
        (true, false) => polling::Event::readable(key),
        (false, true) => polling::Event::writable(key),
        _ => return false,
    };
    poller.modify_with_mode(stream, interest, mode).is_err()
}

/// The limit: a level-triggered `polling` readiness loop, no coroutines. One read of up to
/// 4096 bytes per readiness event, written straight back; a short write parks the rest and
/// switches the interest to writable until it is out. `work`: see [`Work`].
///
/// With `mode` [`polling::PollMode::Edge`] (`polling_edge`, a diagnostic server) it is
/// registered edge-triggered, as copas's sockets are: one read per edge, which drains the
/// socket as long as a message is shorter than the buffer, as this bench's are.
fn polling_server(work: Option<Work>, mode: polling::PollMode) {
    use polling::{Events, Poller};

    struct Conn {
        stream: TcpStream,
        buf: Box<[u8; READ_MAX]>,
        /// Unsent part of `buf` (start, end); empty when reading.
        pending: (usize, usize),
    }

    let poller = Poller::new().expect("poller");
    let (listener, port) = polling_listener(&poller);
    let mut conns: slab::Slab<Conn> = slab::Slab::new();
    let mut events = Events::with_capacity(NonZeroUsize::new(1024).expect("non-zero"));
    announce(port);
    loop {
        events.clear();
        poller.wait(&mut events, None).expect("wait");
        if work == Some(Work::First) {
            for _ in events.iter() {
                busy_work();
            }
        }
        for (i, ev) in events.iter().enumerate() {
            if work == Some(Work::After) && i > 0 {
                busy_work(); // the event before's, after its write
            }
            if ev.key == POLLING_LISTENER {
                // The connections are deleted from the poller before they are dropped
                // (see `close` below).
                polling_accept(&listener, &poller, mode, &mut conns, |stream| Conn {
                    stream,
                    buf: Box::new([0; READ_MAX]),
                    pending: (0, 0),
                });
                continue;
            }
            let key = ev.key;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let mut close = false;
            if conn.pending.0 == conn.pending.1 {
                match conn.stream.read(&mut conn.buf[..]) {
                    Ok(0) => close = true,
                    Ok(n) => conn.pending = (0, n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => close = true,
                }
                if conn.pending.0 < conn.pending.1 {
                    close |= flush(&poller, mode, key, conn, true);
                }
            } else {
                close |= flush(&poller, mode, key, conn, false);
            }
            if close {
                let conn = conns.remove(key);
                let _ = poller.delete(&conn.stream);
            }
        }
        if work == Some(Work::After) && !events.is_empty() {
            busy_work(); // the last event's
        }
    }

    /// Writes the pending bytes; switches the interest when the state changes
    /// ([`polling_switch_interest`]). Returns whether the connection is to be closed.
    fn flush(
        poller: &Poller,
        mode: polling::PollMode,
        key: usize,
        conn: &mut Conn,
        was_reading: bool,
    ) -> bool {
        let (start, end) = conn.pending;
        match conn.stream.write(&conn.buf[start..end]) {
            Ok(n) => conn.pending.0 += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
        let done = conn.pending.0 == conn.pending.1;
        if done {
            conn.pending = (0, 0);
        }
        polling_switch_interest(poller, &conn.stream, mode, key, done, was_reading)
    }
}

/// The `polling` loop with one receive buffer for all connections (`polling_shared`, for
/// diagnosis): every read lands in the same warm 4 KiB, and a connection keeps bytes of its
/// own only when a write took part of a message (a `Vec` holding the rest until the socket is
/// writable). The default loop's buffer per connection is what a state machine written
/// plainly keeps; this one asks what the loop's kernel copy into 1,000 cold buffers costs it
/// ("Where 1,000 connections' gap goes" in docs/benchmarks.md).
fn polling_shared_server() {
    use polling::{Events, PollMode::Level, Poller};

    struct Conn {
        stream: TcpStream,
        /// What a write left unsent; empty while reading.
        rest: Vec<u8>,
    }

    let poller = Poller::new().expect("poller");
    let (listener, port) = polling_listener(&poller);
    let mut conns: slab::Slab<Conn> = slab::Slab::new();
    let mut events = Events::with_capacity(NonZeroUsize::new(1024).expect("non-zero"));
    let mut scratch = vec![0u8; READ_MAX].into_boxed_slice();
    announce(port);
    loop {
        events.clear();
        poller.wait(&mut events, None).expect("wait");
        for ev in events.iter() {
            if ev.key == POLLING_LISTENER {
                // The connections are deleted from the poller before they are dropped
                // (see `close` below).
                polling_accept(&listener, &poller, Level, &mut conns, |stream| Conn {
                    stream,
                    rest: Vec::new(),
                });
                continue;
            }
            let key = ev.key;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            // What the write took (`None`: close), and whether the interest was reading.
            let (sent, was_reading) = if conn.rest.is_empty() {
                match conn.stream.read(&mut scratch) {
                    Ok(0) => (None, true),
                    Ok(n) => {
                        let sent = written(&conn.stream, &scratch[..n]);
                        if let Some(sent) = sent {
                            conn.rest.extend_from_slice(&scratch[sent..n]);
                        }
                        (sent, true)
                    }
                    Err(e) if retry_later(&e) => continue,
                    Err(_) => (None, true),
                }
            } else {
                let sent = written(&conn.stream, &conn.rest);
                if let Some(sent) = sent {
                    conn.rest.drain(..sent);
                }
                (sent, false)
            };
            let close = sent.is_none()
                || polling_switch_interest(
                    &poller,
                    &conn.stream,
                    Level,
                    key,
                    conn.rest.is_empty(),
                    was_reading,
                );
            if close {
                let conn = conns.remove(key);
                let _ = poller.delete(&conn.stream);
            }
        }
    }

    /// Whether a failed read or write is to be tried again at the next readiness event.
    fn retry_later(e: &std::io::Error) -> bool {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        )
    }

    /// Writes what the socket takes of `data`: how many bytes (0 when it would block), or
    /// `None` when the connection is to be closed.
    fn written(mut stream: &TcpStream, data: &[u8]) -> Option<usize> {
        match stream.write(data) {
            Ok(n) => Some(n),
            Err(e) if retry_later(&e) => Some(0),
            Err(_) => None,
        }
    }
}

/// The floor of a stackful-coroutine server: copas's coroutine core (`copas_coro`) on raw
/// edge-triggered epoll, one coroutine per connection, readiness bits that a short read
/// clears (as copas), a plain `Vec` run queue, and nothing else: no timeouts, no wait
/// queues, no budgets, no cancellation, no error reports. What any dispatcher built on these
/// coroutines pays per message at least; the distance from it to the polling loop is the
/// cost of coroutines themselves, from copas to it the cost of copas's semantics.
fn coro_floor_server() {
    use copas_coro::{Coro, Label, Resumed, StackPool};
    use std::cell::Cell;
    use std::rc::Rc;

    const WANTS_NOTHING: u8 = 0;
    const WANTS_READ: u8 = 1;
    const WANTS_WRITE: u8 = 2;

    struct ConnState {
        fd: i32,
        readable: Cell<bool>,
        writable: Cell<bool>,
        wants: Cell<u8>,
    }

    struct Conn {
        state: Rc<ConnState>,
        coro: Coro,
        // Closed when the connection's entry is removed, after its coroutine ended.
        _stream: TcpStream,
    }

    /// The handler, with the suspension points written out: read what is there (waiting
    /// for an edge when the last read was short), write it all back.
    fn handler(st: &ConnState) {
        let mut buf = [0u8; READ_MAX];
        loop {
            let n = loop {
                if st.readable.get() {
                    // SAFETY: `buf` is writable for its length; `fd` stays open while the
                    // coroutine lives (its `Conn` owns the stream).
                    let r = unsafe { libc::recv(st.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                    match r {
                        0 => return,
                        r if r > 0 => {
                            if (r as usize) < buf.len() {
                                st.readable.set(false);
                            }
                            break r as usize;
                        }
                        _ if std::io::Error::last_os_error().kind()
                            == std::io::ErrorKind::WouldBlock =>
                        {
                            st.readable.set(false)
                        }
                        _ => return,
                    }
                }
                st.wants.set(WANTS_READ);
                let _ = copas_coro::suspend();
            };
            let mut sent = 0;
            while sent < n {
                if st.writable.get() {
                    let rest = &buf[sent..n];
                    // SAFETY: `rest` is readable for its length; `fd` as above.
                    let r = unsafe {
                        libc::send(st.fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL)
                    };
                    if r >= 0 {
                        sent += r as usize;
                        continue;
                    }
                    if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                        return;
                    }
                    st.writable.set(false);
                }
                st.wants.set(WANTS_WRITE);
                let _ = copas_coro::suspend();
            }
        }
    }

    const LISTENER: u64 = u64::MAX;
    let listener = bind_any();
    listener.set_nonblocking(true).expect("nonblocking");
    // SAFETY: a plain system call.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1");
    let register = |fd: i32, key: u64, flags: libc::c_int| {
        let mut ev = libc::epoll_event {
            events: flags as u32,
            u64: key,
        };
        // SAFETY: `ev` is a valid event; a descriptor leaves the epoll set when it is closed.
        let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        assert!(r == 0, "epoll_ctl");
    };
    register(listener.as_raw_fd(), LISTENER, libc::EPOLLIN);
    let mut pool = StackPool::new(256 * 1024, 4096);
    let mut conns: slab::Slab<Conn> = slab::Slab::new();
    let mut ready: Vec<usize> = Vec::with_capacity(1024);
    let mut events: Vec<libc::epoll_event> = Vec::with_capacity(1024);
    announce(listener.local_addr().expect("local_addr").port());
    loop {
        events.clear();
        // SAFETY: `events` has room for its capacity.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.capacity() as i32, -1) };
        if n < 0 {
            continue; // EINTR
        }
        // SAFETY: the kernel initialised the first `n` entries.
        unsafe { events.set_len(n as usize) };
        for ev in &events {
            if ev.u64 == LISTENER {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true).expect("nonblocking");
                    let _ = stream.set_nodelay(true);
                    let state = Rc::new(ConnState {
                        fd: stream.as_raw_fd(),
                        readable: Cell::new(true),
                        writable: Cell::new(true),
                        wants: Cell::new(WANTS_NOTHING),
                    });
                    let entry = conns.vacant_entry();
                    let key = entry.key();
                    let st = state.clone();
                    let stack = pool.allocate().expect("stack");
                    let coro =
                        Coro::new(stack, key as u64, Label::new("floor"), move || handler(&st));
                    let flags = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
                    register(stream.as_raw_fd(), key as u64, flags);
                    entry.insert(Conn {
                        state,
                        coro,
                        _stream: stream,
                    });
                    ready.push(key);
                }
                continue;
            }
            let key = ev.u64 as usize;
            let Some(conn) = conns.get(key) else { continue };
            let st = &conn.state;
            let flags = ev.events as libc::c_int;
            let (read, write) = (
                libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR,
                libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR,
            );
            if flags & read != 0 {
                st.readable.set(true);
            }
            if flags & write != 0 {
                st.writable.set(true);
            }
            let woken = match st.wants.get() {
                WANTS_READ => flags & read != 0,
                WANTS_WRITE => flags & write != 0,
                _ => false,
            };
            if woken {
                st.wants.set(WANTS_NOTHING);
                ready.push(key);
            }
        }
        for key in ready.drain(..) {
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            if !matches!(conn.coro.resume(), Resumed::Suspended) {
                let conn = conns.remove(key);
                pool.recycle(conn.coro.into_stack());
            }
        }
    }
}

/// tokio `current_thread`, the same handler.
/// tokio `current_thread`; with `timed`, each read and each write under
/// `tokio::time::timeout(IDLE_TIMEOUT, ..)`, as `copas_timeout`'s socket timeouts.
fn tokio_server(timed: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_io();
    if timed {
        // Only here: the plain server stays as in the earlier runs.
        builder.enable_time();
    }
    let rt = builder.build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std({
            let l = bind_any();
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .expect("listener");
        announce(listener.local_addr().expect("local_addr").port());
        loop {
            let (mut stream, _) = listener.accept().await.expect("accept");
            if timed {
                tokio::spawn(async move {
                    use tokio::time::timeout;
                    let _ = stream.set_nodelay(true);
                    let mut buf = [0u8; READ_MAX];
                    loop {
                        match timeout(IDLE_TIMEOUT, stream.read(&mut buf)).await {
                            Ok(Ok(0) | Err(_)) | Err(_) => break,
                            Ok(Ok(n)) => {
                                let write = stream.write_all(&buf[..n]);
                                if !matches!(timeout(IDLE_TIMEOUT, write).await, Ok(Ok(()))) {
                                    break;
                                }
                            }
                        }
                    }
                });
                continue;
            }
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut buf = [0u8; READ_MAX];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// may with one worker, its own pinning off (this process is already pinned).
fn may_server() {
    may::config().set_workers(1);
    may::config().set_worker_pin(false);
    let main = may::go!(|| {
        let listener = may::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        announce(listener.local_addr().expect("local_addr").port());
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            may::go!(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = [0u8; READ_MAX];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let _ = main.join();
}

// ----- the load generator -----------------------------------------------------------------

/// `perf stat` attached to the server with its events disabled, switched on and off
/// through control FIFOs so the count covers exactly the measured window.
struct PerfCounter {
    child: Child,
    ctl: fs::File,
    ack: BufReader<fs::File>,
    dir: PathBuf,
}

impl PerfCounter {
    fn attach(pid: u32, events: &[&str]) -> Result<PerfCounter, String> {
        let dir = env::temp_dir().join(format!("echo-perf-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ctl_path = dir.join("ctl");
        let ack_path = dir.join("ack");
        for p in [&ctl_path, &ack_path] {
            let _ = fs::remove_file(p);
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
            // SAFETY: c is a valid NUL-terminated path.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(format!("mkfifo: {}", std::io::Error::last_os_error()));
            }
        }
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-D", "-1", "-e", &events.join(",")])
            .arg("--control")
            .arg(format!(
                "fifo:{},{}",
                ctl_path.display(),
                ack_path.display()
            ))
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("perf: {e}"))?;
        // Opening blocks until perf has opened its ends.
        let ctl = fs::OpenOptions::new()
            .write(true)
            .open(&ctl_path)
            .map_err(|e| e.to_string())?;
        let ack = BufReader::new(fs::File::open(&ack_path).map_err(|e| e.to_string())?);
        Ok(PerfCounter {
            child,
            ctl,
            ack,
            dir,
        })
    }

    fn command(&mut self, what: &str) {
        writeln!(self.ctl, "{what}").expect("perf control");
        let mut line = String::new();
        let _ = self.ack.read_line(&mut line);
    }

    /// Stops perf and returns the count of each event.
    fn finish(mut self) -> BTreeMap<String, u64> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
        let mut counts = BTreeMap::new();
        for line in err.lines() {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() > 2 {
                if let Ok(n) = f[0].parse::<u64>() {
                    counts.insert(f[2].to_string(), n);
                }
            }
        }
        counts
    }
}

fn load_role(args: &[String]) {
    pin(load_cpu());
    let arg = |i: usize| -> &str { args.get(i).map_or("", String::as_str) };
    let port: u16 = arg(0).parse().expect("port");
    let server_pid: u32 = arg(1).parse().expect("server pid");
    let conns: usize = arg(2).parse().expect("conns");
    let size: usize = arg(3).parse().expect("size");
    let warm: f64 = arg(4).parse().expect("warm-up");
    let secs: f64 = arg(5).parse().expect("secs");
    let with_perf = arg(6) == "1";
    match run_load(port, server_pid, conns, size, warm, secs, with_perf) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(1);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_load(
    port: u16,
    server_pid: u32,
    conns: usize,
    size: usize,
    warm: f64,
    secs: f64,
    with_perf: bool,
) -> Result<String, String> {
    let mut perf = if with_perf {
        Some(PerfCounter::attach(server_pid, SYSCALL_EVENTS)?)
    } else {
        None
    };
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        streams.push(s);
    }
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(format!("epoll: {}", std::io::Error::last_os_error()));
    }
    for (i, s) in streams.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: ev is a valid epoll_event; the descriptor is open.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
            return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
        }
    }
    let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut scratch = vec![0u8; size.max(1)];
    let mut got = vec![0usize; conns];
    let mut sent_at = vec![Instant::now(); conns];
    let send = |fd: i32| -> Result<(), String> {
        // SAFETY: msg is a valid buffer of msg.len() bytes.
        let n = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
        if n != msg.len() as isize {
            return Err(format!(
                "short or failed send ({n}): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    };
    let start = Instant::now();
    for (i, s) in streams.iter().enumerate() {
        sent_at[i] = Instant::now();
        send(s.as_raw_fd())?;
    }
    let measure_from = start + Duration::from_secs_f64(warm);
    let measure_to = measure_from + Duration::from_secs_f64(secs);
    let give_up = measure_to + Duration::from_secs(10);
    let mut rtts: Vec<u32> = Vec::with_capacity(((secs * 400_000.0) as usize).min(8 << 20));
    let mut measuring = false;
    let mut window_start = start;
    let mut msgs: u64 = 0;
    // Every echo completed over the whole run, warm-up and drain included: after the window
    // no new message is sent and the ones in flight are awaited, so this is exactly the
    // number of messages the server echoed (the instructions mode divides by it).
    let mut all_msgs: u64 = 0;
    let mut srv0 = (0, 0);
    let mut sys0 = (0, 0);
    let mut self0 = (0, 0);
    let mut sleeps0 = (0, 0);
    // The window's figures once it has ended; then the loop only drains.
    let mut window_stats = None;
    let mut in_flight = conns;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let stats = loop {
        // SAFETY: events is a valid buffer of events.len() entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("epoll_wait: {e}"));
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            let fd = streams[i].as_raw_fd();
            let want = size - got[i];
            // SAFETY: scratch has at least `want` bytes.
            let r = unsafe { libc::recv(fd, scratch.as_mut_ptr().cast(), want, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(format!("recv: {e}"));
            }
            if r == 0 {
                return Err("server closed a connection".into());
            }
            got[i] += r as usize;
            if got[i] == size {
                got[i] = 0;
                let now = Instant::now();
                all_msgs += 1;
                if measuring {
                    let rtt = now.duration_since(sent_at[i]).as_nanos();
                    rtts.push(rtt.min(u32::MAX as u128) as u32);
                    msgs += 1;
                }
                if window_stats.is_some() {
                    in_flight -= 1;
                } else {
                    sent_at[i] = now;
                    send(fd)?;
                }
            }
        }
        if let Some(stats) = window_stats.filter(|_| in_flight == 0) {
            break stats;
        }
        let now = Instant::now();
        if window_stats.is_none() && !measuring && now >= measure_from {
            if let Some(p) = perf.as_mut() {
                p.command("enable");
            }
            measuring = true;
            window_start = Instant::now();
            srv0 = proc_times(server_pid);
            sys0 = system_times();
            self0 = proc_times(std::process::id());
            sleeps0 = (
                voluntary_switches(server_pid),
                voluntary_switches(std::process::id()),
            );
        } else if measuring && now >= measure_to {
            let window = window_start.elapsed().as_secs_f64();
            if let Some(p) = perf.as_mut() {
                p.command("disable");
            }
            let srv1 = proc_times(server_pid);
            let sys1 = system_times();
            let self1 = proc_times(std::process::id());
            let sleeps = (
                voluntary_switches(server_pid).saturating_sub(sleeps0.0),
                voluntary_switches(std::process::id()).saturating_sub(sleeps0.1),
            );
            measuring = false;
            window_stats = Some((window, srv1, sys1, self1, sleeps));
        } else if now >= give_up {
            return Err("no progress".into());
        }
    };
    let (window, srv1, sys1, self1, sleeps) = stats;
    let counts = perf.map(PerfCounter::finish).unwrap_or_default();
    rtts.sort_unstable();
    let pct = |p: f64| -> f64 {
        if rtts.is_empty() {
            return f64::NAN;
        }
        let i = ((rtts.len() as f64 * p).ceil() as usize).clamp(1, rtts.len()) - 1;
        rtts[i] as f64 / 1000.0
    };
    let tick = clock_ticks();
    let srv_user = (srv1.0 - srv0.0) as f64 / tick;
    let srv_sys = (srv1.1 - srv0.1) as f64 / tick;
    let load_cpu = ((self1.0 + self1.1) - (self0.0 + self0.1)) as f64 / tick;
    let busy = (sys1.0 - sys0.0) as f64 / tick;
    let steal = (sys1.1 - sys0.1) as f64 / tick;
    let mut line = format!(
        "msgs={msgs} all_msgs={all_msgs} window={window:.4} p50_us={:.1} p99_us={:.1} srv_user_s={srv_user:.3} \
         srv_sys_s={srv_sys:.3} load_cpu_s={load_cpu:.3} others_s={:.3} steal_s={steal:.3} \
         srv_sleeps={} load_sleeps={}",
        pct(0.50),
        pct(0.99),
        (busy - srv_user - srv_sys - load_cpu).max(0.0),
        sleeps.0,
        sleeps.1,
    );
    for (name, n) in &counts {
        let _ = write!(line, " perf:{name}={n}");
    }
    drop(streams);
    Ok(line)
}

/// Runs one load-generator process against `server` and parses its result line.
fn run_cell(
    server: &ServerProc,
    conns: usize,
    size: usize,
    warm: f64,
    secs: f64,
    with_perf: bool,
) -> Result<BTreeMap<String, String>, String> {
    let out = Command::new(env::current_exe().expect("current_exe"))
        .args([
            "__load",
            &server.port.to_string(),
            &server.pid().to_string(),
        ])
        .args([conns.to_string(), size.to_string()])
        .args([warm.to_string(), secs.to_string()])
        .arg(if with_perf { "1" } else { "0" })
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("load: {e}"))?;
    if !out.status.success() {
        return Err(format!("load generator failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn num(map: &BTreeMap<String, String>, key: &str) -> f64 {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

// ----- mode: echo throughput and latency --------------------------------------------------

/// One measured cell.
struct EchoCell {
    /// The round it ran in: cells of one round ran next to each other.
    round: usize,
    server: String,
    conns: usize,
    size: usize,
    msgs_s: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    user_us: f64,
    srv_pct: f64,
    load_pct: f64,
    others_pct: f64,
    steal_pct: f64,
    /// Other processes' CPU just before the cell (% of one CPU).
    before_pct: f64,
    /// Times the server and the load generator went to sleep over the window, per 1,000
    /// messages ([`voluntary_switches`]): the side that waits is the one with time to spare.
    srv_sleeps_k: f64,
    load_sleeps_k: f64,
    /// Where in its round's order for this load it ran, from 0 (see [`rotated`]).
    position: usize,
}

fn echo_mode() {
    let rounds: usize = env_or("ECHO_ROUNDS", 3);
    let warm: f64 = env_or("ECHO_WARMUP", 1.0);
    let secs: f64 = env_or("ECHO_SECS", 5.0);
    let servers = env_list("ECHO_SERVERS", DEFAULT_SERVERS);
    let loads = env_loads("ECHO_LOADS", "50x64,1000x1024");
    println!("## echo: closed loop, {rounds} interleaved rounds, {warm} s warm-up + {secs} s measured per cell");
    println!("{}", machine_header());
    let mut cells: Vec<EchoCell> = Vec::new();
    let mut csv = String::from(
        "round,server,conns,size,msgs_per_s,p50_us,p99_us,cpu_us_per_msg,user_us_per_msg,server_cpu_pct,load_cpu_pct,others_cpu_pct,steal_pct,others_before_pct,server_sleeps_per_kmsg,load_sleeps_per_kmsg,server_share_pct\n",
    );
    let share = server_share();
    for round in 1..=rounds {
        for &(conns, size) in &loads {
            for (position, server) in rotated(&servers, round).iter().enumerate() {
                let before = wait_for_quiet();
                let result = spawn_echo_server(server)
                    .and_then(|srv| run_cell(&srv, conns, size, warm, secs, false));
                let r = match result {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("round {round} {server} C={conns} S={size}: {e}");
                        continue;
                    }
                };
                let window = num(&r, "window");
                let msgs = num(&r, "msgs");
                let user = num(&r, "srv_user_s");
                let sys = num(&r, "srv_sys_s");
                let cell = EchoCell {
                    round,
                    server: server.clone(),
                    conns,
                    size,
                    msgs_s: msgs / window,
                    p50: num(&r, "p50_us"),
                    p99: num(&r, "p99_us"),
                    cpu_us: (user + sys) * 1e6 / msgs,
                    user_us: user * 1e6 / msgs,
                    srv_pct: (user + sys) * 100.0 / window,
                    load_pct: num(&r, "load_cpu_s") * 100.0 / window,
                    others_pct: num(&r, "others_s") * 100.0 / window,
                    steal_pct: num(&r, "steal_s") * 100.0 / window,
                    before_pct: before,
                    srv_sleeps_k: num(&r, "srv_sleeps") * 1000.0 / msgs,
                    load_sleeps_k: num(&r, "load_sleeps") * 1000.0 / msgs,
                    position,
                };
                println!(
                    "round {round} C={conns:<4} S={size:<4} {server:<10} {:>8.0} msgs/s  p50 {:>6.0} µs  p99 {:>6.0} µs  server {:.2} µs/msg ({:.3} user), CPU server {:.0} % load {:.0} % others {:.0} % steal {:.0} % (others before: {:.0} %), sleeps per 1k msgs server {:.1} load {:.1}",
                    cell.msgs_s, cell.p50, cell.p99, cell.cpu_us, cell.user_us, cell.srv_pct, cell.load_pct, cell.others_pct, cell.steal_pct, cell.before_pct, cell.srv_sleeps_k, cell.load_sleeps_k
                );
                let _ = writeln!(
                    csv,
                    "{round},{server},{conns},{size},{:.1},{:.1},{:.1},{:.4},{:.4},{:.1},{:.1},{:.1},{:.1},{:.1},{:.3},{:.3},{share}",
                    cell.msgs_s, cell.p50, cell.p99, cell.cpu_us, cell.user_us, cell.srv_pct, cell.load_pct, cell.others_pct, cell.steal_pct, cell.before_pct, cell.srv_sleeps_k, cell.load_sleeps_k
                );
                cells.push(cell);
            }
        }
    }
    let path = write_results("echo.csv", &csv);
    println!();
    for &(conns, size) in &loads {
        print_echo_table(&cells, &servers, conns, size);
    }
    println!("cells written to {}", path.display());
}

fn print_echo_table(cells: &[EchoCell], servers: &[String], conns: usize, size: usize) {
    let of = |server: &str| -> Vec<&EchoCell> {
        cells
            .iter()
            .filter(|c| c.server == server && c.conns == conns && c.size == size)
            .collect()
    };
    let med = |server: &str, f: fn(&EchoCell) -> f64| -> f64 {
        median(&of(server).iter().map(|c| f(c)).collect::<Vec<_>>())
    };
    let polling = med("polling", |c| c.msgs_s);
    let tokio = med("tokio", |c| c.msgs_s);
    println!("### C={conns}, S={size} bytes (median of rounds [min..max])");
    println!();
    println!("| server | n | msgs/s median [min..max] | vs polling | vs tokio | p50 µs | p99 µs | server CPU µs/msg | of which user µs/msg | server CPU % | load CPU % | others CPU % | steal % | sleeps per 1k msgs: server / load |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for server in servers {
        let v = of(server);
        if v.is_empty() {
            println!("| {server} | 0 | failed | | | | | | | | | | | |");
            continue;
        }
        let rates: Vec<f64> = v.iter().map(|c| c.msgs_s).collect();
        let (lo, hi) = min_max(&rates);
        let m = median(&rates);
        println!(
            "| {server} | {} | {} [{}..{}] | {} | {} | {:.0} | {:.0} | {:.2} | {:.3} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} / {:.1} |",
            v.len(),
            kilo(m),
            kilo(lo),
            kilo(hi),
            ratio(m, polling),
            ratio(m, tokio),
            med(server, |c| c.p50),
            med(server, |c| c.p99),
            med(server, |c| c.cpu_us),
            med(server, |c| c.user_us),
            med(server, |c| c.srv_pct),
            med(server, |c| c.load_pct),
            med(server, |c| c.others_pct),
            med(server, |c| c.steal_pct),
            med(server, |c| c.srv_sleeps_k),
            med(server, |c| c.load_sleeps_k),
        );
    }
    let copas = med("copas", |c| c.msgs_s);
    println!();
    println!(
        "copas median / polling median = {}; copas median / tokio median = {}",
        ratio(copas, polling),
        ratio(copas, tokio)
    );
    // The host's speed drifts over minutes; the cells of one round ran within seconds of
    // each other, so a round's ratio cancels most of the drift that the medians keep.
    println!();
    println!("Paired: each round's cell against the same round's polling and tokio cells, median of the rounds [min..max]:");
    println!();
    println!("| server | rounds | vs polling, paired | vs tokio, paired |");
    println!("|---|---|---|---|");
    for server in servers {
        let paired = |against: &str| -> String {
            let ratios: Vec<f64> = of(server)
                .iter()
                .filter_map(|c| {
                    of(against)
                        .iter()
                        .find(|a| a.round == c.round && a.msgs_s > 0.0)
                        .map(|a| c.msgs_s / a.msgs_s)
                })
                .collect();
            if ratios.is_empty() {
                return "–".to_string();
            }
            let (lo, hi) = min_max(&ratios);
            format!("{:.2} [{lo:.2}..{hi:.2}]", median(&ratios))
        };
        println!(
            "| {server} | {} | {} | {} |",
            of(server).len(),
            paired("polling"),
            paired("tokio")
        );
    }
    print_order_effect(cells, conns, size);
    println!();
}

/// How a cell's rate depends on where in its round it ran: each cell against the median of
/// its round (this load), averaged by position. A fixed order would hand a position's bias
/// to one server; [`rotated`] spreads it, and this line shows how large it was.
fn print_order_effect(cells: &[EchoCell], conns: usize, size: usize) {
    let load: Vec<&EchoCell> = cells
        .iter()
        .filter(|c| c.conns == conns && c.size == size && c.msgs_s > 0.0)
        .collect();
    let mut by_position: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for cell in &load {
        let round: Vec<f64> = load
            .iter()
            .filter(|c| c.round == cell.round)
            .map(|c| c.msgs_s)
            .collect();
        if round.len() > 1 {
            by_position
                .entry(cell.position)
                .or_default()
                .push(cell.msgs_s / median(&round));
        }
    }
    if by_position.is_empty() {
        return;
    }
    let places: Vec<String> = by_position
        .iter()
        .map(|(p, v)| format!("{}: {:.3}", p + 1, v.iter().sum::<f64>() / v.len() as f64))
        .collect();
    println!();
    println!(
        "Order effect (a cell's rate ÷ its round's median, mean by the place it ran in the round): {}",
        places.join(", ")
    );
}

// ----- mode: system calls per message -----------------------------------------------------

/// A tracepoint's system-call name (`syscalls:sys_enter_recvfrom` → `recvfrom`), for tables.
fn short(event: &str) -> String {
    event.trim_start_matches("syscalls:sys_enter_").to_string()
}

fn perf_works() -> Result<(), String> {
    let out = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "true"])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run perf: {e} (Debian package linux-perf)"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    let counted = err.lines().any(|l| {
        l.split(',')
            .next()
            .is_some_and(|n| n.parse::<u64>().is_ok())
    });
    if out.status.success() && counted {
        Ok(())
    } else {
        Err(format!(
            "`perf stat -e raw_syscalls:sys_enter true` failed: {}",
            err.trim()
        ))
    }
}

fn syscall_mode() {
    let warm: f64 = env_or("ECHO_WARMUP", 1.0);
    let secs: f64 = env_or("ECHO_SYSCALL_SECS", 3.0);
    let servers = env_list("ECHO_SERVERS", DEFAULT_SERVERS);
    let loads = env_loads("ECHO_SYSCALL_LOADS", "1x64,50x64,1000x1024");
    println!("## system calls per echoed message (perf stat tracepoints on the server, {secs} s window after {warm} s warm-up)");
    if let Err(e) = perf_works() {
        println!("skipped: {e}");
        return;
    }
    let mut csv = String::from("server,conns,size,msgs,total");
    for e in &SYSCALL_EVENTS[1..] {
        let _ = write!(csv, ",{}", short(e));
    }
    // The server's sleeps per message beside its waits: how many of the waits found nothing.
    csv.push_str(",sleeps\n");
    let mut table: BTreeMap<(String, usize, usize), f64> = BTreeMap::new();
    let mut detail = String::new();
    for &(conns, size) in &loads {
        for server in &servers {
            let result = spawn_echo_server(server)
                .and_then(|srv| run_cell(&srv, conns, size, warm, secs, true));
            let r = match result {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{server} C={conns} S={size}: {e}");
                    continue;
                }
            };
            let msgs = num(&r, "msgs");
            let per = |e: &str| num(&r, &format!("perf:{e}")) / msgs;
            let total = per(SYSCALL_EVENTS[0]);
            table.insert((server.clone(), conns, size), total);
            let _ = write!(csv, "{server},{conns},{size},{msgs},{total:.4}");
            let _ = write!(
                detail,
                "| {server} | {conns}x{size} | {:.0} | {total:.2} |",
                msgs / num(&r, "window")
            );
            for e in &SYSCALL_EVENTS[1..] {
                let _ = write!(csv, ",{:.4}", per(e));
                let _ = write!(detail, " {:.2} |", per(e));
            }
            let sleeps = num(&r, "srv_sleeps") / msgs;
            let _ = writeln!(csv, ",{sleeps:.4}");
            let _ = writeln!(detail, " {sleeps:.3} |");
        }
    }
    let path = write_results("syscalls.csv", &csv);
    println!();
    print!("| server |");
    for (c, s) in &loads {
        print!(" C={c}, S={s} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(loads.len()));
    for server in &servers {
        print!("| {server} |");
        for &(c, s) in &loads {
            match table.get(&(server.clone(), c, s)) {
                Some(v) => print!(" {v:.2} |"),
                None => print!(" – |"),
            }
        }
        println!();
    }
    println!();
    println!("per message, by system call:");
    println!();
    print!("| server | load | msgs/s (under perf) | total |");
    for e in &SYSCALL_EVENTS[1..] {
        print!(" {} |", short(e));
    }
    println!(" server's sleeps |");
    println!("|---|---|---|---|{}", "---|".repeat(SYSCALL_EVENTS.len()));
    print!("{detail}");
    println!();
    println!("written to {}", path.display());
}

// ----- mode: instructions and cache misses per message under cachegrind -------------------

/// How cachegrind runs the server: a simulated 32 KiB 8-way L1d and, as its "last level", a
/// 512 KiB 8-way cache standing for the per-core L2 of this machine's EPYC cores (the real
/// last level, the shared L3, is not what an echo server's working set spills out of). The
/// L1i is simulated as a window of four 64-byte lines, so that nearly every code line a
/// message runs through misses once: its misses count the code lines per message, the figure
/// user time follows (docs/benchmarks.md, "What a line of code costs per message"; the
/// kernel's TCP path between a message's system calls evicts the real L1i).
const CACHEGRIND_ARGS: &[&str] = &[
    "--tool=cachegrind",
    "--cache-sim=yes",
    "--I1=256,4,64",
    "--D1=32768,8,64",
    "--LL=524288,8,64",
];

/// The servers of the instructions mode by default (`may`'s own stack switching is not
/// worth the slow-down under valgrind; name it in `ECHO_SERVERS` to include it).
const INSTRUCTION_SERVERS: &str = "copas,polling,tokio";

/// The counters of one cachegrind run, from the summary valgrind writes when the server ends.
#[derive(Clone, Copy, Debug)]
struct CacheCounts {
    /// `I refs`: user-space instructions executed.
    instructions: u64,
    /// `I1 misses` of the four-line window: code lines entered.
    code_lines: u64,
    /// `D1 misses`: data reads and writes that missed the simulated L1d.
    d1_misses: u64,
    /// `LLd misses`: data accesses that also missed the simulated 512 KiB L2.
    l2_misses: u64,
}

impl CacheCounts {
    /// `self - base`, each counter saturating at 0.
    fn minus(self, base: CacheCounts) -> CacheCounts {
        CacheCounts {
            instructions: self.instructions.saturating_sub(base.instructions),
            code_lines: self.code_lines.saturating_sub(base.code_lines),
            d1_misses: self.d1_misses.saturating_sub(base.d1_misses),
            l2_misses: self.l2_misses.saturating_sub(base.l2_misses),
        }
    }
}

/// Checks that `valgrind` runs, so a missing tool fails before any server starts.
fn valgrind_works() -> Result<(), String> {
    let out = Command::new("valgrind")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run valgrind: {e} (Debian package valgrind)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`valgrind --version` failed ({})", out.status))
    }
}

/// Reads `I refs`, `I1 misses`, `D1 misses` and `LLd misses` from cachegrind's summary
/// (`==PID== D1  misses:  1,210,643  ( 887,721 rd + 322,922 wr)`).
fn parse_cachegrind_summary(log: &str) -> Result<CacheCounts, String> {
    let mut fields: BTreeMap<String, u64> = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("==").and_then(|l| l.split_once("== ")) else {
            continue;
        };
        let Some((key, value)) = rest.1.split_once(':') else {
            continue;
        };
        let number = value
            .split_whitespace()
            .next()
            .unwrap_or("")
            .replace(',', "");
        if let Ok(n) = number.parse() {
            fields.insert(key.split_whitespace().collect::<Vec<_>>().join(" "), n);
        }
    }
    let get = |key: &str| {
        fields
            .get(key)
            .copied()
            .ok_or_else(|| format!("no `{key}` in cachegrind's summary"))
    };
    Ok(CacheCounts {
        instructions: get("I refs")?,
        code_lines: get("I1 misses")?,
        d1_misses: get("D1 misses")?,
        l2_misses: get("LLd misses")?,
    })
}

/// The number of descriptors `pid` has open (valgrind's own included: they are constant).
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Waits up to `limit` until `pid` has a number of open descriptors for which `done` holds;
/// returns whether it got there. The server is slow under valgrind: this is how the
/// orchestrator knows it has accepted, or closed, every connection.
fn wait_for_fds(pid: u32, limit: Duration, done: impl Fn(usize) -> bool) -> bool {
    let give_up = Instant::now() + limit;
    loop {
        if done(open_fds(pid)) {
            return true;
        }
        if Instant::now() >= give_up {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long a server under valgrind gets to accept or close every connection, or to write
/// its summary.
const VALGRIND_PATIENCE: Duration = Duration::from_secs(60);

/// The binary and the server of an `exe=<path>` or `exe=<path>#<server>` spec (`copas`
/// unless named): another build's bench binary serving in this run.
fn other_build(spec: &str) -> (&str, &str) {
    let rest = spec.strip_prefix("exe=").unwrap_or(spec);
    rest.split_once('#').unwrap_or((rest, "copas"))
}

/// Starts the `kind` server role under cachegrind, its valgrind log in `<stem>.log` and its
/// per-function counts in `<stem>.out` (for `cg_annotate`). Returns the server and the
/// number of descriptors it has open once it listens.
fn spawn_under_cachegrind(kind: &str, stem: &Path) -> Result<(ServerProc, usize), String> {
    // `exe=<path>`: valgrind runs that binary's copas server itself (it would not follow
    // the `exec` the echo mode uses).
    let (exe, kind) = if kind.starts_with("exe=") {
        let (path, server) = other_build(kind);
        (PathBuf::from(path), server)
    } else {
        (env::current_exe().expect("current_exe"), kind)
    };
    let mut cmd = Command::new("valgrind");
    cmd.args(CACHEGRIND_ARGS)
        .arg(format!("--cachegrind-out-file={}.out", stem.display()))
        .arg(format!("--log-file={}.log", stem.display()))
        .arg(exe)
        .args(["__server", kind]);
    let server = ServerProc::start(cmd)?;
    let fds = open_fds(server.pid());
    Ok((server, fds))
}

/// Ends a server under cachegrind with SIGTERM, which valgrind delivers to the program
/// (default action: terminate) and then writes its summary, and parses the summary.
fn stop_under_cachegrind(mut server: ServerProc, stem: &Path) -> Result<CacheCounts, String> {
    // SAFETY: plain kill(2) on our own child, which has not been waited for yet.
    unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGTERM) };
    let give_up = Instant::now() + VALGRIND_PATIENCE;
    while server
        .child
        .try_wait()
        .map_err(|e| e.to_string())?
        .is_none()
    {
        if Instant::now() >= give_up {
            return Err("valgrind did not end within 60 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log_path = PathBuf::from(format!("{}.log", stem.display()));
    let log = fs::read_to_string(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    parse_cachegrind_summary(&log).map_err(|e| format!("{e} ({})", log_path.display()))
}

/// The baseline run: `conns` connections opened and closed again without a message, and
/// the server left to accept and to close every one of them, so the baseline holds the
/// same start-up, accept and tear-down work as the measured run.
fn baseline_connections(server: &ServerProc, idle_fds: usize, conns: usize) -> Result<(), String> {
    let streams = (0..conns)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("connect: {e}"))?;
    if !wait_for_fds(server.pid(), VALGRIND_PATIENCE, |n| n >= idle_fds + conns) {
        return Err(format!(
            "the server did not accept {conns} connections in 60 s"
        ));
    }
    drop(streams);
    if !wait_for_fds(server.pid(), VALGRIND_PATIENCE, |n| n <= idle_fds) {
        return Err("the server did not close its connections in 60 s".into());
    }
    Ok(())
}

/// One cell of the instructions mode.
struct InstructionCell {
    /// Messages echoed over the server's whole life (warm-up and drain included).
    msgs: u64,
    /// Echo rate in the measured window, under valgrind.
    msgs_s: f64,
    /// The measured run's counters.
    run: CacheCounts,
    /// The same life with no message.
    baseline: CacheCounts,
}

impl InstructionCell {
    /// A counter of `run - baseline` per echoed message.
    fn per_msg(&self, counter: fn(CacheCounts) -> u64) -> f64 {
        counter(self.run.minus(self.baseline)) as f64 / self.msgs as f64
    }
}

/// Measures one server and load: a baseline life without messages, then the same life
/// with the load role's closed loop, both under cachegrind.
fn instruction_cell(
    server: &str,
    conns: usize,
    size: usize,
    warm: f64,
    secs: f64,
    dir: &Path,
) -> Result<InstructionCell, String> {
    // An `exe=<path>` server's files are named after the binary.
    let name = server.rsplit('/').next().unwrap_or(server);
    let stem = |what: &str| dir.join(format!("{name}-{conns}x{size}-{what}"));
    let (srv, idle_fds) = spawn_under_cachegrind(server, &stem("baseline"))?;
    baseline_connections(&srv, idle_fds, conns)?;
    let baseline = stop_under_cachegrind(srv, &stem("baseline"))?;

    let (srv, idle_fds) = spawn_under_cachegrind(server, &stem("run"))?;
    let r = run_cell(&srv, conns, size, warm, secs, false)?;
    // The load role has closed its connections; let the server see every end of stream,
    // as in the baseline.
    if !wait_for_fds(srv.pid(), VALGRIND_PATIENCE, |n| n <= idle_fds) {
        return Err("the server did not close its connections in 60 s".into());
    }
    let run = stop_under_cachegrind(srv, &stem("run"))?;
    let msgs: u64 = r
        .get("all_msgs")
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .ok_or("the load role echoed no message")?;
    Ok(InstructionCell {
        msgs,
        msgs_s: num(&r, "msgs") / num(&r, "window"),
        run,
        baseline,
    })
}

/// `cargo bench --bench echo -- instructions`: user-space instructions and simulated data
/// cache misses per echoed message, which, unlike msgs/s on a shared machine, repeat from
/// run to run. Exits with status 1 when valgrind is missing.
fn instructions_mode() {
    let warm: f64 = env_or("ECHO_WARMUP", 2.0);
    let secs: f64 = env_or("ECHO_SECS", 5.0);
    let servers = env_list("ECHO_SERVERS", INSTRUCTION_SERVERS);
    let loads = env_loads("ECHO_LOADS", "50x64,1000x1024");
    println!("## instructions per echoed message: servers under `valgrind {}`, {warm} s warm-up + {secs} s measured, minus a baseline life with no message", CACHEGRIND_ARGS.join(" "));
    if let Err(e) = valgrind_works() {
        eprintln!("instructions mode: {e}");
        std::process::exit(1);
    }
    if fifo_priority().is_some() {
        // valgrind runs the server tens of times slower: under SCHED_FIFO it would own
        // its CPU for minutes. Pinning stays.
        println!("ECHO_FIFO is ignored in this mode");
        env::remove_var("ECHO_FIFO");
    }
    println!("{}", machine_header());
    let dir = out_dir().join("cachegrind");
    fs::create_dir_all(&dir).expect("create the cachegrind directory");
    let mut csv = String::from(
        "server,conns,size,msgs,instructions_per_msg,d1_misses_per_msg,l2_misses_per_msg,\
         run_instructions,run_d1_misses,run_l2_misses,\
         baseline_instructions,baseline_d1_misses,baseline_l2_misses,msgs_per_s_under_valgrind,\
         code_lines_per_msg,run_code_lines,baseline_code_lines\n",
    );
    let mut cells: BTreeMap<(String, usize, usize), InstructionCell> = BTreeMap::new();
    for &(conns, size) in &loads {
        for server in &servers {
            let cell = match instruction_cell(server, conns, size, warm, secs, &dir) {
                Ok(cell) => cell,
                Err(e) => {
                    eprintln!("{server} C={conns} S={size}: {e}");
                    continue;
                }
            };
            println!(
                "C={conns:<4} S={size:<4} {server:<10} {} msgs ({:.0} msgs/s under valgrind): {:.0} instructions/msg, {:.1} code lines/msg, baseline {:.1} M instructions",
                cell.msgs,
                cell.msgs_s,
                cell.per_msg(|c| c.instructions),
                cell.per_msg(|c| c.code_lines),
                cell.baseline.instructions as f64 / 1e6,
            );
            let (run, base) = (cell.run, cell.baseline);
            let _ = writeln!(
                csv,
                "{server},{conns},{size},{},{:.1},{:.3},{:.4},{},{},{},{},{},{},{:.0},{:.1},{},{}",
                cell.msgs,
                cell.per_msg(|c| c.instructions),
                cell.per_msg(|c| c.d1_misses),
                cell.per_msg(|c| c.l2_misses),
                run.instructions,
                run.d1_misses,
                run.l2_misses,
                base.instructions,
                base.d1_misses,
                base.l2_misses,
                cell.msgs_s,
                cell.per_msg(|c| c.code_lines),
                run.code_lines,
                base.code_lines,
            );
            cells.insert((server.clone(), conns, size), cell);
        }
    }
    let path = write_results("instructions.csv", &csv);
    println!();
    println!("| server | load | msgs echoed | instructions/msg | code lines/msg | D1 misses/msg | L2-proxy misses/msg | instructions vs polling | whole life: instructions/msg | baseline: M instructions |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &(conns, size) in &loads {
        let polling = cells
            .get(&("polling".to_string(), conns, size))
            .map_or(f64::NAN, |c| c.per_msg(|c| c.instructions));
        for server in &servers {
            let Some(cell) = cells.get(&(server.clone(), conns, size)) else {
                println!("| {server} | {conns}x{size} | failed | | | | | | | |");
                continue;
            };
            let instructions = cell.per_msg(|c| c.instructions);
            println!(
                "| {server} | {conns}x{size} | {} | {instructions:.0} | {:.1} | {:.2} | {:.3} | {} | {:.0} | {:.1} |",
                cell.msgs,
                cell.per_msg(|c| c.code_lines),
                cell.per_msg(|c| c.d1_misses),
                cell.per_msg(|c| c.l2_misses),
                ratio(instructions, polling),
                cell.run.instructions as f64 / cell.msgs as f64,
                cell.baseline.instructions as f64 / 1e6,
            );
        }
    }
    println!();
    println!(
        "written to {}; valgrind logs and cg_annotate files in {}",
        path.display(),
        dir.display()
    );
}

// ----- mode: HTTP hello world under wrk ---------------------------------------------------

const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world";

/// The tokio twin of examples/http_hello.rs: read request lines until the empty line,
/// answer, keep the connection open unless the client asked to close it.
fn http_tokio_role() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    pin(server_cpu());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        announce(listener.local_addr().expect("local_addr").port());
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut stream = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                loop {
                    // Request line.
                    line.clear();
                    match stream.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let mut close = line.trim_end().ends_with("HTTP/1.0");
                    let mut body = 0usize;
                    // Headers until the empty line.
                    loop {
                        line.clear();
                        match stream.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let header = line.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            let value = value.trim();
                            if name.eq_ignore_ascii_case("connection") {
                                if value.eq_ignore_ascii_case("close") {
                                    close = true;
                                } else if value.eq_ignore_ascii_case("keep-alive") {
                                    close = false;
                                }
                            } else if name.eq_ignore_ascii_case("content-length") {
                                body = value.parse().unwrap_or(0);
                            }
                        }
                    }
                    if body > 0 {
                        let mut skip = vec![0u8; body];
                        if stream.read_exact(&mut skip).await.is_err() {
                            return;
                        }
                    }
                    if stream.get_mut().write_all(HTTP_RESPONSE).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
}

/// The copas example binary, built on demand next to this bench binary.
fn http_hello_binary() -> Result<PathBuf, String> {
    let exe = env::current_exe().map_err(|e| e.to_string())?;
    // <target>/release/deps/echo-<hash> → <target>/release/examples/http_hello
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    let target_dir = profile_dir
        .parent()
        .ok_or("cannot locate the target directory")?;
    let bin = profile_dir.join("examples").join("http_hello");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("building the example: cargo build --release --example http_hello");
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--example",
            "http_hello",
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() && !bin.exists() {
        return Err("cargo build --release --example http_hello failed".into());
    }
    if !bin.exists() {
        return Err(format!("{} not found after building", bin.display()));
    }
    Ok(bin)
}

/// Parses a wrk latency figure such as `215.00us`, `1.20ms`, `2.00s` into µs.
fn wrk_time_us(s: &str) -> f64 {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else {
        (s, f64::NAN)
    };
    num.parse::<f64>().map_or(f64::NAN, |v| v * scale)
}

struct WrkResult {
    req_s: f64,
    /// Requests completed in the run (wrk's "N requests in").
    requests: f64,
    p50_us: f64,
    p99_us: f64,
}

/// One wrk run; with `close`, every request asks for `Connection: close`, so each is a new
/// connection (wrk reconnects; it counts the server's close as a read error, not printed).
fn run_wrk(port: u16, conns: usize, secs: u64, close: bool) -> Result<WrkResult, String> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}/"));
    let out = pinned(&mut cmd, load_cpu())
        .output()
        .map_err(|e| format!("wrk: {e} (Debian package wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("wrk failed: {text}"));
    }
    let mut r = WrkResult {
        req_s: f64::NAN,
        requests: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => r.req_s = v.parse().unwrap_or(f64::NAN),
            ["50%", v] => r.p50_us = wrk_time_us(v),
            ["99%", v] => r.p99_us = wrk_time_us(v),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(f64::NAN),
            _ => {}
        }
        // "Socket errors: connect 0, read 51835, write 0, timeout 0": under `close` the
        // reads are the servers' closes.
        let only_closes = close
            && line.contains("Socket errors")
            && ["connect 0,", "write 0,", "timeout 0"]
                .iter()
                .all(|ok| line.contains(ok));
        if (line.contains("Non-2xx") || line.contains("Socket errors")) && !only_closes {
            eprintln!("wrk: {}", line.trim());
        }
    }
    Ok(r)
}

/// One measured wrk run of the HTTP modes.
struct HttpCell {
    wrk: WrkResult,
    cpu_us: f64,
    user_us: f64,
    /// System calls per request (per connection under `close`) by [`CHURN_EVENTS`], when
    /// counted.
    syscalls: Option<Vec<f64>>,
}

/// The `http` mode (`close` false: keep-alive) and the `churn` mode (`close` true: a new
/// connection per request, and the server's system calls per connection under `perf`).
fn http_mode(close: bool) {
    let rounds: usize = env_or("ECHO_ROUNDS", 3);
    let secs: u64 = env_or("ECHO_HTTP_SECS", 5);
    let conns: usize = env_or("ECHO_HTTP_CONNS", 50);
    let (mode, header) = if close {
        (
            "churn",
            " -H 'Connection: close' (a new connection per request)",
        )
    } else {
        ("http", "")
    };
    println!("## {mode}: wrk -t1 -c{conns} -d{secs}s{header} against examples/http_hello (copas) and a tokio current_thread twin; {rounds} interleaved rounds, 1 s wrk warm-up each");
    println!("{}", machine_header());
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("skipped: wrk not found (apt-get install wrk)");
        return;
    }
    let count_syscalls = close
        && match perf_works() {
            Ok(()) => true,
            Err(e) => {
                println!("system calls not counted: {e}");
                false
            }
        };
    let hello = match http_hello_binary() {
        Ok(b) => b,
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    let server_list = env::var("ECHO_HTTP_SERVERS").unwrap_or_else(|_| "copas,tokio".into());
    let servers: Vec<&str> = server_list.split(',').filter(|s| !s.is_empty()).collect();
    let mut results: BTreeMap<&str, Vec<HttpCell>> = BTreeMap::new();
    let mut csv =
        String::from("round,server,req_per_s,p50_us,p99_us,cpu_us_per_req,user_us_per_req");
    if count_syscalls {
        csv.push_str(",total");
        for e in &CHURN_EVENTS[1..] {
            let _ = write!(csv, ",{}", short(e));
        }
    }
    csv.push('\n');
    for round in 1..=rounds {
        for server in rotated(&servers, round) {
            wait_for_quiet();
            // `hello=<path>`: another build's http_hello, to compare two commits.
            let example = match server.strip_prefix("hello=") {
                Some(path) => Some(PathBuf::from(path)),
                None if server == "copas" => Some(hello.clone()),
                None => None,
            };
            let proc = if let Some(example) = example {
                // A free port: bind, note it, release it for the example.
                let port = bind_any().local_addr().expect("local_addr").port();
                let mut cmd = Command::new(example);
                cmd.arg(port.to_string());
                pinned(&mut cmd, server_cpu());
                ServerProc::start(cmd)
            } else {
                let mut cmd = Command::new(env::current_exe().expect("current_exe"));
                cmd.arg("__http_tokio");
                ServerProc::start(cmd)
            };
            let proc = match proc {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("round {round} {server}: {e}");
                    continue;
                }
            };
            if let Err(e) = run_wrk(proc.port, conns, 1, close) {
                eprintln!("round {round} {server} warm-up: {e}");
                continue;
            }
            let mut perf = if count_syscalls {
                match PerfCounter::attach(proc.pid(), CHURN_EVENTS) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        eprintln!("round {round} {server}: perf: {e}");
                        continue;
                    }
                }
            } else {
                None
            };
            if let Some(p) = perf.as_mut() {
                p.command("enable");
            }
            let t0 = proc_times(proc.pid());
            let wrk = run_wrk(proc.port, conns, secs, close);
            let t1 = proc_times(proc.pid());
            if let Some(p) = perf.as_mut() {
                p.command("disable");
            }
            let counts = perf.map(PerfCounter::finish);
            let wrk = match wrk {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("round {round} {server}: {e}");
                    continue;
                }
            };
            let requests = wrk.requests;
            let cpu_s = ((t1.0 + t1.1) - (t0.0 + t0.1)) as f64 / clock_ticks();
            let cpu_us = cpu_s * 1e6 / requests;
            let user_us = (t1.0 - t0.0) as f64 / clock_ticks() * 1e6 / requests;
            let syscalls = counts.map(|c| {
                CHURN_EVENTS
                    .iter()
                    .map(|e| c.get(*e).copied().unwrap_or(0) as f64 / requests)
                    .collect::<Vec<f64>>()
            });
            let calls = syscalls
                .as_ref()
                .map_or(String::new(), |v| format!("  {:.2} system calls/req", v[0]));
            println!(
                "round {round} {server:<6} {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  server {cpu_us:.2} µs/req ({user_us:.3} user){calls}",
                wrk.req_s, wrk.p50_us, wrk.p99_us
            );
            let _ = write!(
                csv,
                "{round},{server},{:.1},{:.1},{:.1},{cpu_us:.4},{user_us:.4}",
                wrk.req_s, wrk.p50_us, wrk.p99_us
            );
            for v in syscalls.iter().flatten() {
                let _ = write!(csv, ",{v:.4}");
            }
            csv.push('\n');
            results.entry(server).or_default().push(HttpCell {
                wrk,
                cpu_us,
                user_us,
                syscalls,
            });
        }
    }
    let path = write_results(&format!("{mode}.csv"), &csv);
    println!();
    println!(
        "| server | n | req/s median [min..max] | vs tokio | p50 µs | p99 µs | server CPU µs/req | of which user µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let med_of = |server: &str, f: &dyn Fn(&HttpCell) -> f64| -> f64 {
        results
            .get(server)
            .map_or(f64::NAN, |v| median(&v.iter().map(f).collect::<Vec<_>>()))
    };
    let tokio = med_of("tokio", &|r| r.wrk.req_s);
    for &server in &servers {
        let Some(v) = results.get(server) else {
            println!("| {server} | 0 | failed | | | | | |");
            continue;
        };
        let rates: Vec<f64> = v.iter().map(|r| r.wrk.req_s).collect();
        let (lo, hi) = min_max(&rates);
        let m = median(&rates);
        println!(
            "| {server} | {} | {} [{}..{}] | {} | {:.0} | {:.0} | {:.2} | {:.3} |",
            v.len(),
            kilo(m),
            kilo(lo),
            kilo(hi),
            ratio(m, tokio),
            med_of(server, &|r| r.wrk.p50_us),
            med_of(server, &|r| r.wrk.p99_us),
            med_of(server, &|r| r.cpu_us),
            med_of(server, &|r| r.user_us),
        );
    }
    if count_syscalls {
        println!();
        println!("system calls per connection (one request each), median of the rounds:");
        println!();
        print!("| server |");
        print!(" total |");
        for e in &CHURN_EVENTS[1..] {
            print!(" {} |", short(e));
        }
        println!();
        println!("|---|{}", "---|".repeat(CHURN_EVENTS.len()));
        for &server in &servers {
            print!("| {server} |");
            for i in 0..CHURN_EVENTS.len() {
                let v = med_of(server, &|r| r.syscalls.as_ref().map_or(f64::NAN, |s| s[i]));
                print!(" {v:.2} |");
            }
            println!();
        }
    }
    println!();
    println!(
        "copas median / tokio median = {}",
        ratio(med_of("copas", &|r| r.wrk.req_s), tokio)
    );
    println!("written to {}", path.display());
}
