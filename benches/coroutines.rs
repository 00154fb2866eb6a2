//! Coroutine costs (issue 3, item 2): the suspend+resume pair, `addthread` to completion with
//! a warm stack pool, 20,000 coroutines yielding 100 times each, and 30,000 sleepers with
//! random deadlines (total time and how late each one wakes).
//!
//! ```text
//! cargo bench --bench coroutines            # everything, pinned to CPU 0
//! cargo bench --bench coroutines -- quick   # fewer repetitions (smoke run)
//! cargo bench --bench coroutines -- switch  # only some sections (for profiling):
//!                                           # switch, spawn, yielders, sleepers
//! cargo bench --bench coroutines -- fifo    # also repeat the sleepers under SCHED_FIFO
//!                                           # (root), to take other load off the timings
//! ```
//!
//! Micro figures are the best of several runs (the least disturbed by the host); the sleeper
//! run is repeated and every repetition is printed. Each result is compared with the issue's
//! target as `target / measured` (≥ 1.00 meets it).

#[path = "common/affinity.rs"]
mod affinity;

use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas_coro::{suspend, Coro, Resumed, StackPool, DEFAULT_STACK_SIZE};

/// Issue 3 target: one suspend+resume pair.
const TARGET_SWITCH_NS: f64 = 10.0;
/// Issue 3 target: `addthread` + run to completion, warm pool.
const TARGET_ADDTHREAD_NS: f64 = 200.0;
/// Issue 3 target: p99 lateness of 30,000 sleepers.
const TARGET_P99_LATE_US: f64 = 1000.0;

/// How the run is sized.
struct Plan {
    /// Repetitions for best-of-N micro figures.
    best_of: usize,
    /// Resume/suspend pairs per raw repetition.
    raw_switches: u64,
    /// Yields per dispatcher ping-pong repetition.
    dispatcher_yields: u64,
    /// Coroutines per `addthread` repetition (in batches).
    spawns: usize,
    /// Repetitions of the 30,000-sleeper run.
    sleeper_runs: usize,
    /// Repeat the sleeper runs under SCHED_FIFO.
    fifo: bool,
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let quick = args.iter().any(|a| a == "quick");
    let fifo = args.iter().any(|a| a == "fifo");
    let sections: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "quick" && *a != "fifo")
        .collect();
    let want = |s: &str| sections.is_empty() || sections.contains(&s);
    let plan = if quick {
        Plan {
            best_of: 2,
            raw_switches: 1_000_000,
            dispatcher_yields: 100_000,
            spawns: 100_000,
            sleeper_runs: 1,
            fifo,
        }
    } else {
        Plan {
            best_of: 7,
            raw_switches: 20_000_000,
            dispatcher_yields: 1_000_000,
            spawns: 1_000_000,
            sleeper_runs: 3,
            fifo,
        }
    };
    let pinned = affinity::pin_to_cpu(0).is_ok();
    println!("# copas coroutine benchmarks");
    println!();
    println!(
        "pinned to CPU 0: {}; best of {}; default stack {} KiB; vm.max_map_count {}",
        if pinned {
            "yes"
        } else {
            "no (sched_setaffinity failed)"
        },
        plan.best_of,
        DEFAULT_STACK_SIZE / 1024,
        read_trimmed("/proc/sys/vm/max_map_count").unwrap_or_else(|| "?".into()),
    );
    println!();

    let mut rows: Vec<Row> = Vec::new();
    if want("switch") {
        switch_pairs(&plan, &mut rows);
    }
    if want("spawn") {
        spawn_costs(&plan, &mut rows);
    }
    if want("yielders") {
        many_yielders(&mut rows);
    }
    if want("sleepers") {
        sleepers(&plan, &mut rows);
    }

    println!();
    println!("## Summary against the issue's targets (target / measured: ≥ 1.00 meets it)");
    println!();
    println!("| measure | measured | target | target / measured |");
    println!("|---|---|---|---|");
    for row in &rows {
        if let Some(target) = row.target {
            println!(
                "| {} | {:.1} {} | ≤ {:.0} {} | {:.2} |",
                row.what,
                row.value,
                row.unit,
                target,
                row.unit,
                target / row.value
            );
        }
    }
}

/// One figure for the summary.
struct Row {
    what: String,
    value: f64,
    unit: &'static str,
    target: Option<f64>,
}

fn row(rows: &mut Vec<Row>, what: &str, value: f64, unit: &'static str, target: Option<f64>) {
    rows.push(Row {
        what: what.to_string(),
        value,
        unit,
        target,
    });
}

// ----- (a) suspend + resume -------------------------------------------------------------------

fn switch_pairs(plan: &Plan, rows: &mut Vec<Row>) {
    println!("## (a) suspend + resume pair");
    println!();
    println!("| measure | best ns | all runs ns | target / best |");
    println!("|---|---|---|---|");

    // Raw copas_coro: one coroutine suspending forever, resumed N times.
    let mut pool = StackPool::new(DEFAULT_STACK_SIZE, 16);
    let runs = best_of(plan.best_of, || {
        let stack = pool.allocate().expect("stack");
        let mut co = Coro::new(stack, 1, "switch", || loop {
            if suspend().is_err() {
                return;
            }
        });
        co.resume(); // started; from here on every resume is one pair
        let n = plan.raw_switches;
        let t = Instant::now();
        for _ in 0..n {
            black_box(co.resume());
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        pool.recycle(co.into_stack());
        ns
    });
    print_best(
        "copas_coro::Coro resume + suspend (raw)",
        &runs,
        Some(TARGET_SWITCH_NS),
    );
    row(
        rows,
        "suspend+resume, raw `Coro`",
        min(&runs),
        "ns",
        Some(TARGET_SWITCH_NS),
    );

    // Through the dispatcher: one coroutine yielding with pause(ZERO), one yield per step.
    let runs = best_of(plan.best_of, || {
        let n = plan.dispatcher_yields;
        copas::addthread(move || {
            for _ in 0..n {
                copas::pause(Duration::ZERO);
            }
        })
        .expect("addthread");
        let t = Instant::now();
        copas::run().expect("run");
        t.elapsed().as_nanos() as f64 / n as f64
    });
    print_best(
        "`copas::pause(ZERO)` by 1 coroutine, 1 yield per step (ns per yield)",
        &runs,
        Some(TARGET_SWITCH_NS),
    );
    row(
        rows,
        "suspend+resume through the dispatcher (`pause(ZERO)`, 1 coroutine)",
        min(&runs),
        "ns",
        Some(TARGET_SWITCH_NS),
    );

    // Two coroutines alternating: still one step per round, two yields per step.
    let runs = best_of(plan.best_of, || {
        let n = plan.dispatcher_yields / 2;
        for _ in 0..2 {
            copas::addthread(move || {
                for _ in 0..n {
                    copas::pause(Duration::ZERO);
                }
            })
            .expect("addthread");
        }
        let t = Instant::now();
        copas::run().expect("run");
        t.elapsed().as_nanos() as f64 / (2 * n) as f64
    });
    print_best(
        "`copas::pause(ZERO)` by 2 coroutines ping-pong (ns per yield)",
        &runs,
        None,
    );

    // Many coroutines: the step's fixed cost (the poller's system calls) is shared by 100
    // yields, and 100 stacks still fit in the caches: the dispatcher's own cost per yield.
    let runs = best_of(plan.best_of, || {
        let per = plan.dispatcher_yields / 100;
        for _ in 0..100 {
            copas::addthread(move || {
                for _ in 0..per {
                    copas::pause(Duration::ZERO);
                }
            })
            .expect("addthread");
        }
        let t = Instant::now();
        copas::run().expect("run");
        t.elapsed().as_nanos() as f64 / (100 * per) as f64
    });
    print_best(
        "`copas::pause(ZERO)` by 100 coroutines, 100 yields per step (ns per yield)",
        &runs,
        Some(TARGET_SWITCH_NS),
    );
    row(
        rows,
        "suspend+resume through the dispatcher (`pause(ZERO)`, 100 coroutines)",
        min(&runs),
        "ns",
        Some(TARGET_SWITCH_NS),
    );

    // What one dispatcher step costs with nothing to run (the floor under every yield).
    let runs = best_of(plan.best_of, || {
        let n = plan.dispatcher_yields / 4;
        let t = Instant::now();
        for _ in 0..n {
            copas::step(Some(Duration::ZERO)).expect("step");
        }
        t.elapsed().as_nanos() as f64 / n as f64
    });
    print_best(
        "`copas::step(Some(ZERO))` with nothing to do (ns per step)",
        &runs,
        None,
    );
    println!();
}

// ----- (b) addthread + run to completion --------------------------------------------------------

fn spawn_costs(plan: &Plan, rows: &mut Vec<Row>) {
    println!("## (b) `addthread` + run to completion, warm stack pool");
    println!();
    println!(
        "Coroutines are added in batches and each batch is `run()` to completion; all stacks \
         come from the pool (warmed by one untimed batch). A batch cannot be 100k: every \
         coroutine maps its stack when it is added, and {} stacks exceed vm.max_map_count.",
        100_000
    );
    println!();
    println!("| batch | best ns per coroutine | all runs | of which `addthread` | of which `run` | target / best |");
    println!("|---|---|---|---|---|---|");

    // The floor: copas_coro alone, pool warm, create + run + recycle.
    let mut pool = StackPool::new(DEFAULT_STACK_SIZE, 16);
    let warm = pool.allocate().expect("stack");
    pool.recycle(warm);
    let raw = best_of(plan.best_of, || {
        let n = plan.spawns;
        let t = Instant::now();
        for i in 0..n {
            let stack = pool.allocate().expect("stack");
            let mut co = Coro::new(stack, i as u64, "t", || {
                black_box(0u8);
            });
            match co.resume() {
                Resumed::Finished => {}
                other => panic!("unexpected {other:?}"),
            }
            pool.recycle(co.into_stack());
        }
        t.elapsed().as_nanos() as f64 / n as f64
    });
    println!(
        "| `Coro::new` + resume + recycle (copas_coro alone) | {:.1} | {} | – | – | {:.2} |",
        min(&raw),
        list(&raw),
        TARGET_ADDTHREAD_NS / min(&raw)
    );

    for batch in [100usize, 1_000, 10_000] {
        copas::set_pooled_stacks(batch.max(1024));
        spawn_batch(batch); // warm the pool
        let mut add_best = f64::MAX;
        let mut run_best = f64::MAX;
        let runs = best_of(plan.best_of, || {
            let rounds = (plan.spawns / batch).max(1);
            let mut add = Duration::ZERO;
            let mut run = Duration::ZERO;
            for _ in 0..rounds {
                let (a, r) = spawn_batch(batch);
                add += a;
                run += r;
            }
            let n = (rounds * batch) as f64;
            add_best = add_best.min(add.as_nanos() as f64 / n);
            run_best = run_best.min(run.as_nanos() as f64 / n);
            (add + run).as_nanos() as f64 / n
        });
        println!(
            "| {batch} | {:.1} | {} | {:.1} | {:.1} | {:.2} |",
            min(&runs),
            list(&runs),
            add_best,
            run_best,
            TARGET_ADDTHREAD_NS / min(&runs)
        );
        if batch == 1_000 {
            row(
                rows,
                "`addthread` + run to completion (batch 1,000, warm pool)",
                min(&runs),
                "ns",
                Some(TARGET_ADDTHREAD_NS),
            );
        }
    }
    copas::set_pooled_stacks(1024);
    println!();
}

/// Adds `n` trivial coroutines and runs them; returns the time of each half.
fn spawn_batch(n: usize) -> (Duration, Duration) {
    let t = Instant::now();
    for _ in 0..n {
        copas::addthread(|| {
            black_box(0u8);
        })
        .expect("addthread");
    }
    let added = t.elapsed();
    let t = Instant::now();
    copas::run().expect("run");
    let ran = t.elapsed();
    assert_eq!(copas::status().coroutines, 0);
    (added, ran)
}

// ----- (c) 20,000 coroutines x 100 pauses ------------------------------------------------------

fn many_yielders(rows: &mut Vec<Row>) {
    const COROUTINES: usize = 20_000;
    const PAUSES: usize = 100;
    println!("## (c) {COROUTINES} coroutines each `pause(ZERO)` {PAUSES} times");
    println!();
    println!("| run | total ms | ns per yield | of which creating (addthread) ms |");
    println!("|---|---|---|---|");
    copas::set_pooled_stacks(COROUTINES);
    let mut warm_best = f64::MAX;
    for run in 0..4 {
        let label = if run == 0 {
            "cold (stacks mapped)"
        } else {
            "warm (stacks from the pool)"
        };
        let t = Instant::now();
        for _ in 0..COROUTINES {
            copas::addthread(|| {
                for _ in 0..PAUSES {
                    copas::pause(Duration::ZERO);
                }
            })
            .expect("addthread");
        }
        let created = t.elapsed();
        copas::run().expect("run");
        let total = t.elapsed();
        let per_yield = total.as_nanos() as f64 / (COROUTINES * PAUSES) as f64;
        if run > 0 {
            warm_best = warm_best.min(total.as_secs_f64() * 1e3);
        }
        println!(
            "| {} {label} | {:.1} | {:.1} | {:.1} |",
            run + 1,
            total.as_secs_f64() * 1e3,
            per_yield,
            created.as_secs_f64() * 1e3
        );
    }
    copas::set_pooled_stacks(1024);
    row(
        rows,
        "20,000 coroutines x 100 `pause(ZERO)`, warm, best total",
        warm_best,
        "ms",
        None,
    );
    println!();
}

// ----- (d) 30,000 sleepers ---------------------------------------------------------------------

fn sleepers(plan: &Plan, rows: &mut Vec<Row>) {
    const SLEEPERS: usize = 30_000;
    const SPAN: Duration = Duration::from_secs(2);
    println!("## (d) {SLEEPERS} sleepers, `pause(d)` with d uniform in [0, 2 s)");
    println!();
    println!(
        "Lateness = wake-up time − (time `pause` was called + d), measured inside each \
         coroutine. All sleepers are added, then `run()`: the first step starts them all, one \
         after another, so sleepers due before the last one has started wait for that start \
         phase to end. The last columns leave those out."
    );
    println!();
    println!("| run | woke | total s | addthread ms | start phase ms | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | target / p99 | due after start phase: n | their p99 µs | their max µs | run(): CPU ms | waited for a CPU ms | involuntary switches |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut p99s = Vec::new();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut runs: Vec<(usize, bool)> = (0..plan.sleeper_runs).map(|r| (r + 1, false)).collect();
    if plan.fifo {
        runs.extend((0..plan.sleeper_runs).map(|r| (r + 1, true)));
    }
    for (run, fifo) in runs {
        if fifo && !set_fifo(true) {
            println!("| FIFO | (sched_setscheduler(SCHED_FIFO) refused; skipped) |");
            break;
        }
        // Per sleeper: when it called pause (since t0), its deadline (since t0), lateness.
        let log: Rc<RefCell<Vec<(u64, u64, u64)>>> =
            Rc::new(RefCell::new(Vec::with_capacity(SLEEPERS)));
        let t0 = Instant::now();
        for _ in 0..SLEEPERS {
            let d = Duration::from_nanos(rng.next() % SPAN.as_nanos() as u64);
            let log = log.clone();
            copas::addthread(move || {
                let asleep = Instant::now();
                copas::pause(d);
                let now = Instant::now();
                let due = asleep + d;
                let lateness = now.saturating_duration_since(due);
                log.borrow_mut().push((
                    (asleep - t0).as_nanos() as u64,
                    (due - t0).as_nanos() as u64,
                    lateness.as_nanos() as u64,
                ));
            })
            .expect("addthread");
        }
        let created = t0.elapsed();
        let sched = SchedStat::now();
        copas::run().expect("run");
        let total = t0.elapsed();
        let sched = SchedStat::now().since(&sched);
        if fifo {
            set_fifo(false);
        }
        let log = log.take();
        let started = log.iter().map(|e| e.0).max().unwrap_or(0);
        let mut late: Vec<u64> = log.iter().map(|e| e.2).collect();
        late.sort_unstable();
        let mut steady: Vec<u64> = log.iter().filter(|e| e.1 > started).map(|e| e.2).collect();
        steady.sort_unstable();
        let us = |v: &[u64], q: f64| percentile(v, q) as f64 / 1e3;
        let p99 = us(&late, 0.99);
        if !fifo {
            p99s.push(p99);
        }
        println!(
            "| {}{} | {} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            run,
            if fifo { " SCHED_FIFO" } else { "" },
            log.len(),
            total.as_secs_f64(),
            created.as_secs_f64() * 1e3,
            (started as f64 - created.as_nanos() as f64) / 1e6,
            us(&late, 0.50),
            us(&late, 0.90),
            p99,
            us(&late, 0.999),
            *late.last().unwrap_or(&0) as f64 / 1e3,
            TARGET_P99_LATE_US / p99,
            steady.len(),
            us(&steady, 0.99),
            *steady.last().unwrap_or(&0) as f64 / 1e3,
            sched.cpu_ns as f64 / 1e6,
            sched.wait_ns as f64 / 1e6,
            sched.nivcsw,
        );
    }
    p99s.sort_by(f64::total_cmp);
    row(
        rows,
        "timer lateness p99, 30,000 sleepers (median of runs)",
        p99s[p99s.len() / 2],
        "µs",
        Some(TARGET_P99_LATE_US),
    );
}

// ----- helpers ---------------------------------------------------------------------------------

fn best_of(n: usize, mut f: impl FnMut() -> f64) -> Vec<f64> {
    (0..n).map(|_| f()).collect()
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MAX, f64::min)
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn print_best(what: &str, runs: &[f64], target: Option<f64>) {
    let best = min(runs);
    let ratio = target.map_or("–".to_string(), |t| format!("{:.2}", t / best));
    println!("| {what} | {best:.2} | {} | {ratio} |", list(runs));
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Switches the calling thread to SCHED_FIFO priority 1 (`on`) or back to SCHED_OTHER.
fn set_fifo(on: bool) -> bool {
    let (policy, priority) = if on {
        (libc::SCHED_FIFO, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler reads the parameter struct we pass; pid 0 is this thread.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// This thread's scheduler accounting: CPU time, time spent runnable but waiting for a CPU
/// (`/proc/thread-self/schedstat`), and involuntary context switches (`getrusage`).
struct SchedStat {
    cpu_ns: u64,
    wait_ns: u64,
    nivcsw: i64,
}

impl SchedStat {
    fn now() -> SchedStat {
        let text = read_trimmed("/proc/thread-self/schedstat").unwrap_or_default();
        let mut f = text
            .split_whitespace()
            .map(|x| x.parse::<u64>().unwrap_or(0));
        let cpu_ns = f.next().unwrap_or(0);
        let wait_ns = f.next().unwrap_or(0);
        // SAFETY: getrusage writes into the zeroed struct we pass.
        let nivcsw = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
            ru.ru_nivcsw
        };
        SchedStat {
            cpu_ns,
            wait_ns,
            nivcsw,
        }
    }

    fn since(&self, earlier: &SchedStat) -> SchedStat {
        SchedStat {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            wait_ns: self.wait_ns.saturating_sub(earlier.wait_ns),
            nivcsw: self.nivcsw - earlier.nivcsw,
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A small deterministic generator (xorshift64*), so runs are repeatable without a crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
