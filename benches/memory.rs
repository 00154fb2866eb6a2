//! Memory and scale (issue 3, item 3): resident memory per idle connection (copas and tokio
//! `current_thread`), the stack pages a handler touches, how many live coroutines fit under
//! `vm.max_map_count`, and what a million would take.
//!
//! ```text
//! cargo bench --bench memory              # everything (about a minute)
//! cargo bench --bench memory -- quick     # 1,000 connections / coroutines (smoke run)
//! COPAS_BENCH_MILLION=1 cargo bench --bench memory   # also run 1,000,000 coroutines,
//!                                                     # if vm.max_map_count allows it
//! ```
//!
//! Every measurement runs in a fresh process: the bench re-executes itself with a role
//! argument (`idle-server`, `idle-clients`, `sleepers`), so one experiment's heap, pool and
//! mappings never leak into the next. The idle-connection clients live in yet another
//! process, because both ends of 10,000 connections would exceed the 20,000-descriptor limit
//! of one process here. Servers are pinned to CPU 0 and clients to CPU 1.

#[path = "common/affinity.rs"]
mod affinity;
#[path = "common/host.rs"]
mod host;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Issue 3 target: resident memory per idle connection.
const TARGET_IDLE_KIB: f64 = 12.0;

/// How long the server waits after the last connection before reading its memory (as in
/// docs/perf-anchors §2).
const SETTLE: Duration = Duration::from_millis(1500);

/// The read buffer every echo handler uses.
const BUF: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let role = args.first().map(String::as_str).unwrap_or("");
    match role {
        "idle-server" => idle_server(&args[1], parse(&args[2])),
        "idle-clients" => idle_clients(parse(&args[1]), parse(&args[2]), &args[3]),
        "sleepers" => sleepers(parse(&args[1]), parse(&args[2])),
        _ => orchestrate(role == "quick"),
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| panic!("bad number {s:?} on the command line"))
}

// ----- the orchestrator --------------------------------------------------------------------------

/// What a role reported: `@key value` lines on its standard output.
#[derive(Default)]
struct Report {
    values: Vec<(String, String)>,
    ok: bool,
    /// How the process ended, when it failed, and the first line of its standard error.
    failure: Option<String>,
}

impl Report {
    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn num(&self, key: &str) -> f64 {
        self.get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

/// Runs this binary with `args`, echoing its ordinary output and collecting its `@` lines.
fn run_role(args: &[String]) -> Report {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn role");
    let mut report = Report::default();
    let err = child.stderr.take().expect("stderr");
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(err).read_to_string(&mut text);
        text
    });
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    for line in out.lines() {
        let line = line.expect("read role output");
        match line.strip_prefix('@') {
            Some(kv) => {
                let (k, v) = kv.split_once(' ').unwrap_or((kv, ""));
                report.values.push((k.to_string(), v.to_string()));
            }
            None => println!("{line}"),
        }
    }
    let status = child.wait().expect("wait role");
    let stderr = err.join().unwrap_or_default();
    report.ok = status.success();
    if !status.success() {
        let first = stderr.lines().next().unwrap_or("").trim().to_string();
        println!("(role {args:?} ended with {status}; stderr: {first})");
        report.failure = Some(format!("{status}: {first}"));
    } else if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    report
}

fn orchestrate(quick: bool) {
    let conns: usize = if quick { 1_000 } else { 10_000 };
    let live: usize = if quick { 1_000 } else { 30_000 };
    let over: usize = if quick { 2_000 } else { 40_000 };
    let max_map_count: usize = read_trimmed("/proc/sys/vm/max_map_count")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);

    println!("# copas memory and scale benchmarks");
    println!();
    println!(
        "machine: {} CPUs, {}, kernel {}; vm.max_map_count {}; descriptor limit {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        host::cpu(),
        read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        max_map_count,
        nofile_limit(),
    );
    println!();

    // (a) + (b): idle connections.
    println!("## (a) {conns} idle connections (1-byte round trip each, then held)");
    println!();
    println!(
        "Handler for every server: read up to {BUF} bytes into a heap buffer, write them back, \
         TCP_NODELAY on. copas: `receivepartial({BUF})` + `send`; tokio: `read` + `write_all`. \
         Clients in a child process on CPU 1, server on CPU 0; memory read before the first \
         connect and {} s after the last round trip.",
        SETTLE.as_secs_f64()
    );
    println!();
    let servers = ["copas", "copas-line", "tokio"];
    let mut reports = Vec::new();
    for server in servers {
        let r = run_role(&[
            "idle-server".to_string(),
            server.to_string(),
            conns.to_string(),
        ]);
        reports.push((server, r));
    }
    println!("| server | connections | VmRSS before KiB | VmRSS after KiB | KiB per connection | target / measured | VmPTE before → after KiB | PTE KiB per connection | /proc/self/maps lines before → after | connect + round trip of all, s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (server, r) in &reports {
        let per = r.num("rss_per_conn_kib");
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} → {} | {:.2} | {} → {} | {:.2} |",
            describe(server),
            r.get("conns").unwrap_or("?"),
            r.get("rss_before_kib").unwrap_or("?"),
            r.get("rss_after_kib").unwrap_or("?"),
            per,
            TARGET_IDLE_KIB / per,
            r.get("pte_before_kib").unwrap_or("?"),
            r.get("pte_after_kib").unwrap_or("?"),
            r.num("pte_per_conn_kib"),
            r.get("maps_before").unwrap_or("?"),
            r.get("maps_after").unwrap_or("?"),
            r.num("connect_s"),
        );
    }
    println!();

    println!("## (b) stacks: default size and pages an echo handler touches");
    println!();
    println!("Read in the idle servers above: where the kernel has guard regions (Linux ≥ 6.13) stacks are slots of shared mappings, and `mincore` gives each slot's resident pages; elsewhere every stack is a read-write mapping of the stack size directly above a 4 KiB PROT_NONE guard, and its smaps `Rss` is the pages the coroutine ever touched.");
    println!();
    println!("| server | default stack KiB | stacks found | stack KiB resident, mean | min | max | pages touched → stacks |");
    println!("|---|---|---|---|---|---|---|");
    for (server, r) in &reports {
        if r.get("stacks").is_none() {
            continue;
        }
        println!(
            "| {} | {} | {} | {:.2} | {} | {} | {} |",
            describe(server),
            r.get("stack_kib").unwrap_or("?"),
            r.get("stacks").unwrap_or("?"),
            r.num("stack_rss_mean_kib"),
            r.get("stack_rss_min_kib").unwrap_or("?"),
            r.get("stack_rss_max_kib").unwrap_or("?"),
            r.get("stack_pages_hist").unwrap_or("?"),
        );
    }
    println!();

    // (c): live coroutines under the default map count.
    println!("## (c) live coroutines (sleepers) under vm.max_map_count = {max_map_count}");
    println!();
    println!("Each sleeper is `addthread(|| pause(1 h))`; the first steps start them all (1,024 per step) (each touches its stack and arms its timer). A fresh process per row.");
    println!();
    let mut rows = Vec::new();
    for (n, stack) in [(live, 0usize), (over, 0)] {
        let r = run_role(&["sleepers".to_string(), n.to_string(), stack.to_string()]);
        rows.push((n, r));
    }
    print_sleeper_table(&rows);

    // (d): a million.
    let baseline_maps = rows
        .first()
        .map(|(_, r)| r.num("maps_before"))
        .filter(|m| m.is_finite())
        .unwrap_or(64.0) as usize;
    let million = 1_000_000usize;
    println!("## (d) 1,000,000 coroutines");
    println!();
    let shared = copas_coro::Stack::shares_mappings();
    let needed = if shared {
        // 16 KiB stacks + guard: 64 slots per mapping.
        let slabs = million.div_ceil(64);
        println!(
            "Stacks are slots of shared mappings here (guard regions, Linux ≥ 6.13): 64 stacks per mapping, so {million} need {slabs} mappings + {baseline_maps} (the process's own) + 4,096 (copas's reserve for the rest of the process): no change to vm.max_map_count ({max_map_count}) is needed below {}.",
            slabs + baseline_maps + 4096
        );
        slabs + baseline_maps + 4096
    } else {
        let needed = 2 * million + baseline_maps;
        println!(
            "Each stack costs 2 mappings (guard + stack) on this kernel (no guard regions). Needed: vm.max_map_count ≥ 2 × {million} + {baseline_maps} (the process's own mappings) = **{needed}**; suggested with headroom: `sysctl -w vm.max_map_count={}`. Current value: {max_map_count}.",
            round_up(needed + needed / 20, 100_000)
        );
        needed
    };
    println!();
    let want = std::env::var_os("COPAS_BENCH_MILLION").is_some();
    let avail_kib = meminfo("MemAvailable").unwrap_or(0);
    if !want {
        println!("Not run (set COPAS_BENCH_MILLION=1 to run it when the limit allows).");
    } else if max_map_count < needed {
        println!(
            "Not run: vm.max_map_count is {max_map_count} < {needed}. Raise it as root (`sysctl -w vm.max_map_count={}`) and run again.",
            round_up(needed + needed / 20, 100_000)
        );
    } else if avail_kib < 12 * 1024 * 1024 {
        println!("Not run: less than 12 GiB available ({avail_kib} KiB).");
    } else {
        let r = run_role(&[
            "sleepers".to_string(),
            million.to_string(),
            (16 * 1024).to_string(),
        ]);
        print_sleeper_table(&[(million, r)]);
    }
    println!();

    println!("## Summary against the issue's target");
    println!();
    println!("| measure | measured | target | target / measured |");
    println!("|---|---|---|---|");
    for (server, r) in &reports {
        let per = r.num("rss_per_conn_kib");
        println!(
            "| idle connection, {} | {:.2} KiB | ≤ {TARGET_IDLE_KIB:.0} KiB | {:.2} |",
            describe(server),
            per,
            TARGET_IDLE_KIB / per
        );
    }
}

fn print_sleeper_table(rows: &[(usize, Report)]) {
    println!("| asked | stack KiB | created | first failure | error returned by `addthread` | panicked | addthread s | steps to start all, s | VmRSS before → after KiB | KiB per coroutine | VmPTE after KiB | maps lines before → after | `cancelall` s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, r) in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {} → {} | {:.2} | {} | {} → {} | {} |",
            n,
            r.get("stack_kib").unwrap_or("?"),
            r.get("created").unwrap_or("?"),
            r.get("failed_at").unwrap_or("–"),
            r.get("error").unwrap_or("–"),
            r.get("panicked")
                .unwrap_or(if r.ok { "no" } else { "process failed" }),
            r.num("add_s"),
            r.num("step_s"),
            r.get("rss_before_kib").unwrap_or("?"),
            r.get("rss_after_kib").unwrap_or("?"),
            r.num("rss_per_coroutine_kib"),
            r.get("pte_after_kib").unwrap_or("?"),
            r.get("maps_before").unwrap_or("?"),
            r.get("maps_after").unwrap_or("?"),
            match (r.get("cancel_s"), &r.failure) {
                (Some(s), _) => s.to_string(),
                (None, Some(f)) => format!("process died: {f}"),
                (None, None) => "?".to_string(),
            },
        );
    }
    println!();
}

fn describe(server: &str) -> &'static str {
    match server {
        "copas" => "copas (`receivepartial`, default stack)",
        "copas-line" => "copas line echo (`receive(Line)`, examples/echo)",
        "tokio" => "tokio current_thread",
        _ => "?",
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

// ----- role: idle server -------------------------------------------------------------------------

/// Memory figures of this process.
#[derive(Clone, Copy)]
struct Mem {
    rss: u64,
    pte: u64,
    maps: usize,
}

fn mem_now() -> Mem {
    Mem {
        rss: status_kib("VmRSS"),
        pte: status_kib("VmPTE"),
        maps: count_maps(),
    }
}

/// Lines of /proc/self/maps, counted through a fixed buffer: at the map-count limit a
/// large allocation (one `mmap` away) would fail.
fn count_maps() -> usize {
    let Ok(mut f) = std::fs::File::open("/proc/self/maps") else {
        return 0;
    };
    let mut buf = [0u8; 16 * 1024];
    let mut lines = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => return lines,
            Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count(),
        }
    }
}

fn idle_server(kind: &str, conns: usize) {
    let _ = affinity::pin_to_cpu(0);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // The clients say "ready" on their stdout once every connection made its round trip;
    // a plain thread watches for it so the server's loop only polls a flag.
    let ready = Arc::new(AtomicBool::new(false));
    let mut clients = spawn_clients(
        port,
        conns,
        if kind == "copas-line" { "line" } else { "raw" },
    );
    let watcher = {
        let out = clients.stdout.take().expect("clients stdout");
        let ready = ready.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            ready.store(true, Ordering::SeqCst);
            line
        })
    };

    let (before, after, connect) = match kind {
        "copas" | "copas-line" => {
            let line = kind == "copas-line";
            copas_idle(listener, line, &ready)
        }
        "tokio" => tokio_idle(listener, &ready),
        other => panic!("unknown server {other}"),
    };
    let said = watcher.join().unwrap_or_default();
    let served: usize = said
        .trim()
        .strip_prefix("ready ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);

    let n = served.max(1) as f64;
    println!("@conns {served}");
    println!("@rss_before_kib {}", before.rss);
    println!("@rss_after_kib {}", after.0.rss);
    println!(
        "@rss_per_conn_kib {:.3}",
        (after.0.rss as f64 - before.rss as f64) / n
    );
    println!("@pte_before_kib {}", before.pte);
    println!("@pte_after_kib {}", after.0.pte);
    println!(
        "@pte_per_conn_kib {:.3}",
        (after.0.pte as f64 - before.pte as f64) / n
    );
    println!("@maps_before {}", before.maps);
    println!("@maps_after {}", after.0.maps);
    println!("@connect_s {:.3}", connect.as_secs_f64());
    if let Some(stacks) = after.1 {
        stacks.report();
    }
    // Closing the clients' stdin lets them exit; then reap them.
    drop(clients.stdin.take());
    let _ = clients.wait();
}

fn spawn_clients(port: u16, conns: usize, mode: &str) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    Command::new(exe)
        .args([
            "idle-clients".to_string(),
            port.to_string(),
            conns.to_string(),
            mode.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn clients")
}

/// Stack mappings found in /proc/self/smaps.
struct Stacks {
    size_kib: u64,
    rss_kib: Vec<u64>,
}

impl Stacks {
    fn report(&self) {
        let n = self.rss_kib.len().max(1) as f64;
        let mean = self.rss_kib.iter().sum::<u64>() as f64 / n;
        let mut hist = std::collections::BTreeMap::new();
        for kib in &self.rss_kib {
            *hist.entry(kib / 4).or_insert(0usize) += 1;
        }
        let hist = hist
            .iter()
            .map(|(pages, count)| format!("{pages}: {count}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!("@stack_kib {}", self.size_kib);
        println!("@stacks {}", self.rss_kib.len());
        println!("@stack_rss_mean_kib {mean:.3}");
        println!(
            "@stack_rss_min_kib {}",
            self.rss_kib.iter().min().unwrap_or(&0)
        );
        println!(
            "@stack_rss_max_kib {}",
            self.rss_kib.iter().max().unwrap_or(&0)
        );
        println!("@stack_pages_hist {hist}");
    }
}

/// Finds coroutine stacks of `size` usable bytes and what each has resident: slots of the
/// shared mappings stacks come from where the kernel has guard regions (see
/// [`find_slab_stacks`]), else read-write mappings of `size` bytes directly above a one-page
/// PROT_NONE guard mapping.
fn find_stacks(size: usize) -> Stacks {
    if copas_coro::Stack::shares_mappings() {
        return find_slab_stacks(size);
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let page = 4096usize;
    let mut rss_kib = Vec::new();
    // (start, end, perms) of the previous mapping, and whether we are inside a stack.
    let mut prev: Option<(usize, usize, String)> = None;
    let mut in_stack = false;
    for line in smaps.lines() {
        if let Some(m) = MappingHeader::parse(line) {
            in_stack = m.perms.starts_with("rw")
                && m.end - m.start == size
                && prev.as_ref().is_some_and(|(ps, pe, pp)| {
                    *pe == m.start && pe - ps == page && pp.starts_with("---")
                });
            prev = Some((m.start, m.end, m.perms.to_string()));
            continue;
        }
        if in_stack {
            if let Some(rest) = line.strip_prefix("Rss:") {
                let kib = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                rss_kib.push(kib);
                in_stack = false;
            }
        }
    }
    Stacks {
        size_kib: (size / 1024) as u64,
        rss_kib,
    }
}

/// The first line of a mapping's entry in `/proc/self/smaps`.
struct MappingHeader<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    /// No file name (nor `[heap]`, `[stack]`...).
    anonymous: bool,
}

impl<'a> MappingHeader<'a> {
    /// `None` for the other lines of an entry.
    fn parse(line: &'a str) -> Option<MappingHeader<'a>> {
        let mut parts = line.split_whitespace();
        let (a, b) = parts.next()?.split_once('-')?;
        let start = usize::from_str_radix(a, 16).ok()?;
        let end = usize::from_str_radix(b, 16).ok()?;
        let perms = parts.next().unwrap_or("");
        Some(MappingHeader {
            start,
            end,
            perms,
            anonymous: parts.nth(3).is_none(),
        })
    }
}

/// Finds stacks that are slots of shared mappings ("slabs": anonymous, read-write, marked
/// no-huge-page, a whole number of slots of `size` + one guard page): counts
/// each slot's resident pages with `mincore`. A slot in use has at least its top page
/// resident (the coroutine's state lives there); a free slot has none.
fn find_slab_stacks(size: usize) -> Stacks {
    let page = 4096usize;
    let slot = size + page;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut rss_kib = Vec::new();
    // The current mapping, if it is anonymous and read-write.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(m) = MappingHeader::parse(line) {
            current = (m.perms.starts_with("rw") && m.anonymous).then_some((m.start, m.end));
            continue;
        }
        let Some(flags) = line.strip_prefix("VmFlags:") else {
            continue;
        };
        let Some((start, end)) = current.take() else {
            continue;
        };
        let len = end - start;
        // Adjacent slabs merge into one mapping: any whole number of slots.
        let slab = flags.split_whitespace().any(|f| f == "nh") && len % slot == 0;
        if !slab {
            continue;
        }
        let mut resident = vec![0u8; len / page];
        // SAFETY: the range is a whole mapping of this process, page-aligned, and `resident`
        // has one byte per page of it.
        let ret = unsafe {
            libc::mincore(
                start as *mut libc::c_void,
                len,
                resident.as_mut_ptr().cast(),
            )
        };
        if ret != 0 {
            continue;
        }
        for pages in resident.chunks(slot / page) {
            // The first page of a slot is its guard.
            let touched = pages[1..].iter().filter(|&&b| b & 1 != 0).count() as u64;
            if touched > 0 {
                rss_kib.push(touched * page as u64 / 1024);
            }
        }
    }
    Stacks {
        size_kib: (size / 1024) as u64,
        rss_kib,
    }
}

/// The copas server; returns memory before, memory (and stacks) after, and how long the
/// clients took.
fn copas_idle(
    listener: TcpListener,
    line: bool,
    ready: &AtomicBool,
) -> (Mem, (Mem, Option<Stacks>), Duration) {
    if line {
        copas::addserver(listener, |mut sock| {
            let _ = sock.set_nodelay(true);
            // examples/echo's handler.
            while let Ok(mut line) = sock.receive(copas::Pattern::Line) {
                line.push(b'\n');
                if sock.send(&line).is_err() {
                    break;
                }
            }
        })
        .expect("addserver");
    } else {
        copas::addserver(listener, |mut sock| {
            let _ = sock.set_nodelay(true);
            loop {
                match sock.receivepartial(BUF) {
                    Ok(data) if !data.is_empty() => {
                        if sock.send(&data).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        })
        .expect("addserver");
    }
    // One step so the dispatcher, poller and server are fully set up before "before".
    copas::step(Some(Duration::ZERO)).expect("step");
    let before = mem_now();
    let t = Instant::now();
    while !ready.load(Ordering::SeqCst) {
        copas::step(Some(Duration::from_millis(5))).expect("step");
    }
    let connect = t.elapsed();
    let settle = Instant::now() + SETTLE;
    while Instant::now() < settle {
        copas::step(Some(Duration::from_millis(50))).expect("step");
    }
    let after = mem_now();
    let stacks = find_stacks(copas::stack_size());
    (before, (after, Some(stacks)), connect)
}

fn tokio_idle(listener: TcpListener, ready: &AtomicBool) -> (Mem, (Mem, Option<Stacks>), Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    listener.set_nonblocking(true).expect("nonblocking");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("from_std");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut buf = vec![0u8; BUF];
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
        tokio::task::yield_now().await;
        let before = mem_now();
        let t = Instant::now();
        while !ready.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let connect = t.elapsed();
        tokio::time::sleep(SETTLE).await;
        let after = mem_now();
        (before, (after, None), connect)
    })
}

// ----- role: idle clients ------------------------------------------------------------------------

fn idle_clients(port: u16, conns: usize, mode: &str) {
    let _ = affinity::pin_to_cpu(1);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let msg: &[u8] = if mode == "line" { b"x\n" } else { b"x" };
    let mut held = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut s = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("idle-clients: connect failed after {}: {e}", held.len());
                break;
            }
        };
        let _ = s.set_nodelay(true);
        let mut back = vec![0u8; msg.len()];
        if s.write_all(msg).is_err() || s.read_exact(&mut back).is_err() || back != msg {
            eprintln!("idle-clients: round trip failed after {}", held.len());
            break;
        }
        held.push(s);
    }
    println!("ready {}", held.len());
    let _ = std::io::stdout().flush();
    // Hold every connection until the server closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

// ----- role: sleepers ----------------------------------------------------------------------------

fn sleepers(n: usize, stack: usize) {
    let _ = affinity::pin_to_cpu(0);
    if stack > 0 {
        copas::set_stack_size(stack);
    }
    println!("@stack_kib {}", copas::stack_size() / 1024);
    copas::step(Some(Duration::ZERO)).expect("step");
    let before = mem_now();
    let t = Instant::now();
    let outcome = std::panic::catch_unwind(|| {
        for i in 0..n {
            if let Err(e) = copas::addthread(|| {
                copas::pause(Duration::from_secs(3600));
            }) {
                return Err((i, e.to_string()));
            }
        }
        Ok(())
    });
    let add = t.elapsed();
    let created = copas::status().coroutines;
    match &outcome {
        Ok(Ok(())) => println!("@panicked no"),
        Ok(Err((i, e))) => {
            println!("@panicked no");
            println!("@failed_at {}", i + 1);
            println!("@error `Err({e})`");
        }
        Err(_) => println!("@panicked yes"),
    }
    let t = Instant::now();
    // A step resumes at most 1,024 ready coroutines; step until every one has started
    // (bounded: one step per 1,024 coroutines, plus slack).
    for _ in 0..created / 1024 + 2 {
        copas::step(Some(Duration::ZERO)).expect("step");
        if copas::status().timer == created {
            break;
        }
    }
    let step = t.elapsed();
    let after = mem_now();
    let status = copas::status();
    assert_eq!(status.timer, created, "every sleeper is asleep");
    println!("@created {created}");
    println!("@add_s {:.4}", add.as_secs_f64());
    println!("@step_s {:.4}", step.as_secs_f64());
    println!("@rss_before_kib {}", before.rss);
    println!("@rss_after_kib {}", after.rss);
    println!(
        "@rss_per_coroutine_kib {:.3}",
        (after.rss as f64 - before.rss as f64) / created.max(1) as f64
    );
    println!("@pte_after_kib {}", after.pte);
    println!("@maps_before {}", before.maps);
    println!("@maps_after {}", after.maps);
    let _ = std::io::stdout().flush();
    // Tearing down allocates (the dispatcher collects the coroutines to unwind); at the
    // map-count limit that allocation can abort the process, which the table reports.
    let t = Instant::now();
    copas::cancelall();
    println!("@cancel_s {:.4}", t.elapsed().as_secs_f64());
}

// ----- helpers -----------------------------------------------------------------------------------

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|r| r.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

fn meminfo(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines().find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.strip_prefix(':'))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        })
    })
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        0
    }
}
