//! The soak, short (issue 7): a few seconds of what `cargo bench --bench soak` runs for a
//! minute — 200 live connections doing random echo exchanges, resets, half-closes and
//! stalls against a copas echo server, over TCP and then TLS — so the soak's machinery is
//! exercised by every `cargo test` and cannot rot unnoticed. The same checks: no descriptor
//! leaked, every completed exchange byte-exact, no handler panic, no unexpected client
//! error, memory within a (generous, for so short a run) margin.
//!
//! The clients run in a child process: this test binary again, running only
//! `soak_client_process` with `COPAS_SOAK_CHILD` set.

#[path = "../benches/soak/mod.rs"]
mod soak;
mod util;

use std::process::{Command, Stdio};
use std::time::Duration;

use soak::{Kind, Plan};

const CHILD: &str = "COPAS_SOAK_CHILD";

/// The client side of the soaks below; returns at once unless started by them.
#[test]
fn soak_client_process() {
    if util::is_child(CHILD) {
        soak::clients::run();
    }
}

fn client_process() -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        "soak_client_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, "1")
    .env("RUST_BACKTRACE", "0");
    cmd
}

fn openssl_present() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn short_plan(kind: Kind) -> Plan {
    let mut plan = Plan::new(kind, Duration::from_millis(1500), 200, soak::fresh_seed());
    // As in the long soak: a short stall must not meet it even on a loaded machine.
    plan.server_timeout = Duration::from_secs(2);
    plan.warmup = Duration::from_millis(500);
    plan.report_every = Duration::from_secs(1);
    // Two seconds are mostly warm-up: allow what a slow start needs, not what a leak of a
    // few KiB per connection over thousands of connections would take.
    plan.rss_margin_pct = 50;
    plan.rss_margin_kib = 24 * 1024;
    plan
}

/// Runs one short soak and checks it; the seed is in the message to replay it.
fn soak_passes(plan: Plan) {
    let outcome = soak::server::serve(plan, client_process());
    let summary = outcome.summary();
    println!("{summary}");
    assert!(outcome.passed(), "{summary}");
    let t = outcome.tally;
    // Every behaviour of the mix happened, so each was checked.
    assert!(
        t.resets > 0 && t.half_closes > 0 && t.short_stalls > 0 && t.long_stalls > 0,
        "a behaviour of the mix never ran: {summary}"
    );
    assert_eq!(
        outcome.accepted, t.opened,
        "the server accepted every connection the clients opened: {summary}"
    );
}

#[test]
fn short_soak_over_tcp_then_tls_leaks_nothing_and_echoes_byte_exact() {
    if util::is_child(CHILD) {
        return;
    }
    let _dog = util::Watchdog::new("the short soak", Duration::from_secs(120));
    // One after the other: descriptors are counted for the whole process.
    soak_passes(short_plan(Kind::Tcp));
    if !openssl_present() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the openssl CLI is required in CI (.ci/run installs it)"
        );
        eprintln!("note: the `openssl` CLI was not found; skipping the TLS soak");
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("soak-pki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("PKI directory");
    util::make_test_pki(&dir);
    let mut plan = short_plan(Kind::Tls);
    plan.pki = Some(dir.clone());
    soak_passes(plan);
    let _ = std::fs::remove_dir_all(&dir);
}
