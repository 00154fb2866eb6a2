//! A cap on the echo server's CPU: a share of every 10 ms on its core (`ECHO_SERVER_SHARE`).
//!
//! In the default closed loop on two cores, server and load generator each have a core and
//! the rate is bounded by whichever side is slower at that moment, so a server faster than
//! the generator cannot show it. Capped, a server runs in slices, and the generator, with
//! nothing to send while every message waits at the server, mostly idles between them. Where
//! the server never sleeps (`server_sleeps_per_kmsg` 0: it always found work when it ran),
//! the server bounds the rate and the rate is its capacity, messages per CPU-second times
//! the share (read from the sleep counts; the group's own throttling counters are not
//! recorded); so at 1,000 connections in the two capped runs ("Servers capped to 60 %" in
//! docs/benchmarks.md). Where it sleeps, it ran dry within its slices, as every server did at
//! 50 connections in those runs, copas most, and the rate is still the pair's. The cap is a cgroup v1 `cpu` group that
//! holds only the server's process, with the same budget for the real-time scheduler
//! (`cpu.rt_runtime_us`, what `ECHO_FIFO` runs under) and the normal one (`cpu.cfs_quota_us`).
//!
//! Needs root and the cgroup v1 `cpu` controller mounted at `/sys/fs/cgroup/cpu` (with
//! `CONFIG_RT_GROUP_SCHED` for `ECHO_FIFO`); cgroup v2 alone has no real-time budget.
//! Used by the echo bench only (`#[path = "common/cpu_share.rs"] mod cpu_share;`).

use std::fs;
use std::path::Path;

/// The group the capped servers run in, made on first use and left for the next run.
pub const GROUP: &str = "/sys/fs/cgroup/cpu/copas-echo-server";

/// The budget's period: short, so a throttled server stalls for a few milliseconds at a
/// time rather than for most of a second (the kernel's default period).
pub const PERIOD_US: u64 = 10_000;

/// Makes the group (if missing) with `share_pct` % of each period and moves the calling
/// process, all its threads, into it; threads and processes it starts later stay there.
///
/// # Errors
/// A message naming the file that could not be written: `share_pct` outside 1..=99, no
/// cgroup v1 `cpu` controller, not root, or a real-time budget the parent group cannot give.
pub fn join(share_pct: u32) -> Result<(), String> {
    if !(1..=99).contains(&share_pct) {
        return Err(format!(
            "ECHO_SERVER_SHARE={share_pct}: a percentage from 1 to 99"
        ));
    }
    let group = Path::new(GROUP);
    if !group.exists() {
        fs::create_dir(group).map_err(|e| format!("mkdir {GROUP}: {e}"))?;
    }
    let budget = PERIOD_US * u64::from(share_pct) / 100;
    // Each period before its budget: the kernel checks the budget against the period set.
    for (file, value) in [
        ("cpu.rt_period_us", PERIOD_US),
        ("cpu.rt_runtime_us", budget),
        ("cpu.cfs_period_us", PERIOD_US),
        ("cpu.cfs_quota_us", budget),
    ] {
        write(group, file, value)?;
    }
    write(group, "cgroup.procs", u64::from(std::process::id()))
}

fn write(group: &Path, file: &str, value: u64) -> Result<(), String> {
    let path = group.join(file);
    fs::write(&path, value.to_string())
        .map_err(|e| format!("write {value} to {}: {e}", path.display()))
}
