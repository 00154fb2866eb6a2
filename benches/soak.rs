//! The soak (issue 7): a copas echo server under churn — 1,000 live connections doing random
//! echo exchanges, resets, half-closes and stalls — checked for leaked descriptors, growing
//! memory, corrupted echoes and handler panics. Exits non-zero if a check fails.
//!
//! ```text
//! cargo bench --bench soak                       # tcp for 60 s, then tls for 30 s
//! cargo bench --bench soak -- tcp                # only tcp (60 s)
//! cargo bench --bench soak -- tls --secs 10      # only tls, 10 s
//! cargo bench --bench soak -- all --conns 500 --seed 0x1234 --timeout-ms 2000 --every 5
//! ```
//!
//! The server runs in this process (pinned to CPU 0), the clients in a child process (this
//! binary again, role `__clients`, pinned to CPU 1), one copas coroutine per live connection. The seed
//! is printed; passing it back replays every connection's choices (not their timing).
//! What the clients do and what is checked: `benches/soak/` (shared with
//! `tests/soak_short.rs`); the figures of the recorded runs: `docs/reliability.md`.

#[path = "common/affinity.rs"]
mod affinity;
#[path = "common/host.rs"]
mod host;

#[path = "soak/mod.rs"]
mod soak;
#[path = "../tests/util/mod.rs"]
mod util;

use std::process::Command;
use std::time::Duration;

use soak::{Kind, Plan};

const USAGE: &str = "usage: cargo bench --bench soak -- [tcp|tls|all] [--secs N] [--conns N] \
                     [--seed N] [--timeout-ms N] [--every SECS]";

/// Default lengths of the runs (the issue's figures).
const TCP_SECS: u64 = 60;
const TLS_SECS: u64 = 30;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let under_cargo_bench = args.iter().any(|a| a == "--bench");
    args.retain(|a| a != "--bench");
    if args.first().map(String::as_str) == Some("__clients") {
        pin_to_cpu(1);
        soak::clients::run();
        return;
    }
    // `cargo test --benches` runs this binary without `--bench`: no minute-long soak there.
    if !under_cargo_bench && args.is_empty() {
        println!("soak: {USAGE}");
        return;
    }
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    pin_to_cpu(0);
    println!("# copas soak");
    println!();
    println!("machine: {}", machine());
    println!(
        "seed {:#x} (replay with --seed {:#x})",
        options.seed, options.seed
    );
    println!();
    let mut passed = true;
    for kind in &options.kinds {
        let secs = options.secs.unwrap_or(match kind {
            Kind::Tcp => TCP_SECS,
            Kind::Tls => TLS_SECS,
        });
        let mut plan = Plan::new(
            *kind,
            Duration::from_secs(secs),
            options.conns,
            options.seed,
        );
        if let Some(ms) = options.timeout_ms {
            plan.server_timeout = Duration::from_millis(ms);
        }
        if let Some(every) = options.every {
            plan.report_every = Duration::from_secs(every);
        }
        let pki = (*kind == Kind::Tls).then(|| {
            let dir = std::env::temp_dir().join(format!("copas-soak-pki-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("PKI directory");
            util::make_test_pki(&dir);
            dir
        });
        plan.pki = pki.clone();
        println!(
            "## {}: {} s, {} connections, server timeout {} ms, warm-up {} s",
            kind.as_str(),
            secs,
            plan.conns,
            plan.server_timeout.as_millis(),
            plan.warmup.as_secs()
        );
        println!();
        let mut clients = Command::new(std::env::current_exe().expect("current_exe"));
        clients.arg("__clients");
        let outcome = soak::server::serve(plan, clients);
        if let Some(dir) = pki {
            let _ = std::fs::remove_dir_all(dir);
        }
        println!();
        print!("{}", outcome.summary());
        println!();
        passed &= outcome.passed();
    }
    if !passed {
        std::process::exit(1);
    }
}

struct Options {
    kinds: Vec<Kind>,
    secs: Option<u64>,
    conns: usize,
    seed: u64,
    timeout_ms: Option<u64>,
    every: Option<u64>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            kinds: vec![Kind::Tcp, Kind::Tls],
            secs: None,
            conns: 1000,
            seed: soak::fresh_seed(),
            timeout_ms: None,
            every: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| -> Result<u64, String> {
                let v = it.next().ok_or(format!("{name} needs a value"))?;
                let parsed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                parsed.map_err(|_| format!("{name}: bad number {v:?}"))
            };
            match arg.as_str() {
                "tcp" => o.kinds = vec![Kind::Tcp],
                "tls" => o.kinds = vec![Kind::Tls],
                "all" => o.kinds = vec![Kind::Tcp, Kind::Tls],
                "--secs" => o.secs = Some(value("--secs")?),
                "--conns" => o.conns = value("--conns")? as usize,
                "--seed" => o.seed = value("--seed")?,
                "--timeout-ms" => o.timeout_ms = Some(value("--timeout-ms")?),
                "--every" => o.every = Some(value("--every")?.max(1)),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.conns == 0 {
            return Err("--conns must be at least 1".to_string());
        }
        Ok(o)
    }
}

/// CPUs, CPU model, kernel and date, for the record.
fn machine() -> String {
    let model = host::cpu();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{} CPUs ({model}), Linux {}, {date}",
        affinity::online_cpus(),
        kernel.trim()
    )
}

/// Pins the calling thread, and the threads and processes it starts later, to `cpu` (best
/// effort; nothing on a one-CPU machine).
fn pin_to_cpu(cpu: usize) {
    if affinity::online_cpus() < 2 {
        return;
    }
    if let Err(e) = affinity::pin_to_cpu(cpu) {
        eprintln!("soak: cannot pin to CPU {cpu}: {e}");
    }
}
