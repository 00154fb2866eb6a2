//! Where the benchmark processes run: pinned to one CPU each, so a server and its load
//! generator never share a core, and optionally under `SCHED_FIFO`, so other work on a
//! shared machine cannot take their CPUs or evict their caches between time slices.
//! Shared by the bench binaries (`#[path = "common/affinity.rs"] mod affinity;`).
#![allow(dead_code)]

use std::io;

/// CPUs online (not `available_parallelism`, which shrinks to one once this thread is
/// pinned, and which a child inherits).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1)
}

/// Pins the calling thread, and the threads and processes it starts later, to `cpu`.
///
/// Async-signal-safe (no allocation): usable between `fork` and `exec`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it, and
    // sched_setaffinity only reads the set we pass with its correct size.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs the calling thread, and the threads and processes it starts later, under
/// `SCHED_FIFO` at `priority` (needs root or `CAP_SYS_NICE`). The kernel's real-time
/// throttling still leaves other processes 5 % of each CPU.
///
/// Async-signal-safe (no allocation): usable between `fork` and `exec`.
pub fn set_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler reads the parameter we own and changes only the calling
    // thread's policy.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
