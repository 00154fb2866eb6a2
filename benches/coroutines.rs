//! Coroutine costs (issue 3, item 2): the suspend+resume pair, `addthread` to completion with
//! a warm stack pool, 20,000 coroutines yielding 100 times each, and 30,000 sleepers with
//! random deadlines (total time and how late each one wakes), and one sleeper at a time over
//! 10 ms to 2 s (how late a long timer fires, against the kernel's allowance for epoll timeouts);
//! and what a hand-off through a lock, a semaphore or a queue costs a parked waiter.
//!
//! ```text
//! cargo bench --bench coroutines            # everything, pinned to CPU 0
//! cargo bench --bench coroutines -- quick   # fewer repetitions (smoke run)
//! cargo bench --bench coroutines -- switch  # only some sections (for profiling):
//!                                           # switch, spawn, yielders, sleepers, timers,
//!                                           # handoffs
//! cargo bench --bench coroutines -- fifo    # also repeat the sleepers under SCHED_FIFO
//!                                           # (root), to take other load off the timings
//! SLEEPER_RUNS=9 cargo bench --bench coroutines -- sleepers   # repetitions (default 3)
//! SLEEPER_DUMP=DIR cargo bench --bench coroutines -- sleepers  # also each run's wakes as CSV
//! TIMER_RUNS=9 cargo bench --bench coroutines -- timers       # repetitions (default 5)
//! ```
//!
//! Micro figures are the best of several runs (the least disturbed by the host); the sleeper
//! run is repeated and every repetition is printed. Each result is compared with the issue's
//! target as `target / measured` (≥ 1.00 meets it).

#[path = "common/affinity.rs"]
mod affinity;
#[path = "common/host.rs"]
mod host;

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
    /// Repetitions of each length of the one-sleeper run.
    timer_runs: usize,
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
            timer_runs: 1,
        }
    } else {
        Plan {
            best_of: 7,
            raw_switches: 20_000_000,
            dispatcher_yields: 1_000_000,
            spawns: 1_000_000,
            sleeper_runs: std::env::var("SLEEPER_RUNS")
                .map_or(3, |r| r.parse().unwrap_or(3))
                .max(1),
            fifo,
            timer_runs: std::env::var("TIMER_RUNS")
                .map_or(5, |r| r.parse().unwrap_or(5))
                .max(1),
        }
    };
    let pinned = affinity::pin_to_cpu(0).is_ok();
    println!("# copas coroutine benchmarks");
    println!();
    println!("CPU: {}", host::cpu());
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
    if want("timers") {
        long_timers(&plan);
    }
    if want("handoffs") {
        handoffs(&plan);
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

/// Two coroutines hand something to each other through a sync object, each hand-off waking
/// the other one, parked, in the next step: the cost per hand-off, beside one coroutine doing
/// `pause(ZERO)` (one step and one resume per yield, as here per hand-off, without the
/// object).
fn handoffs(plan: &Plan) {
    use copas::{lock::Lock, queue::Queue, semaphore::Semaphore, FOREVER};
    println!("## (f) hand-offs to a parked waiter, 2 coroutines, one step each");
    println!();
    println!("| through | best ns per hand-off | all runs |");
    println!("|---|---|---|");
    let n = plan.dispatcher_yields / 2;
    let timed = || {
        let t = Instant::now();
        copas::run().expect("run");
        t.elapsed().as_nanos() as f64 / n as f64
    };
    // Both take, once the first one yields while holding: from then on each give hands the
    // object to the other coroutine, parked, and the giver parks in its next take.
    let turns = |take: Rc<dyn Fn()>, give: Rc<dyn Fn()>| {
        for _ in 0..2 {
            let (take, give) = (take.clone(), give.clone());
            copas::addthread(move || {
                take();
                copas::pause(Duration::ZERO);
                for _ in 0..n / 2 {
                    give();
                    take();
                }
                give();
            })
            .expect("addthread");
        }
        timed()
    };
    let report = |what: &str, runs: Vec<f64>| {
        let all: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
        println!("| {what} | {:.0} | {} |", min(&runs), all.join(", "));
    };
    report(
        "nothing (1 coroutine, `pause(ZERO)`)",
        best_of(plan.best_of, || {
            copas::addthread(move || {
                for _ in 0..n {
                    copas::pause(Duration::ZERO);
                }
            })
            .expect("addthread");
            timed()
        }),
    );
    report(
        "`Lock` (release, get)",
        best_of(plan.best_of, || {
            let lock = Lock::new(FOREVER, false);
            let l2 = lock.clone();
            turns(
                Rc::new(move || {
                    l2.get(None).expect("get");
                }),
                Rc::new(move || lock.release().expect("release")),
            )
        }),
    );
    report(
        "`Semaphore` (give, take)",
        best_of(plan.best_of, || {
            let sema = Semaphore::new(1, 1, FOREVER);
            let s2 = sema.clone();
            turns(
                Rc::new(move || s2.take(1, None).expect("take")),
                Rc::new(move || sema.give(1).expect("give")),
            )
        }),
    );
    report(
        "`Queue` (push to the other's queue, pop from one's own)",
        best_of(plan.best_of, || {
            let (ping, pong): (Queue<u64>, Queue<u64>) = (Queue::new(), Queue::new());
            let (ping2, pong2) = (ping.clone(), pong.clone());
            copas::addthread(move || {
                for i in 0..n / 2 {
                    ping.push(i).expect("push");
                    black_box(pong.pop(FOREVER).expect("pop"));
                }
            })
            .expect("addthread");
            copas::addthread(move || {
                for _ in 0..n / 2 {
                    let i = ping2.pop(FOREVER).expect("pop");
                    pong2.push(i).expect("push");
                }
            })
            .expect("addthread");
            timed()
        }),
    );
    report(
        "`channel` (send on the other's, recv on one's own; one thread)",
        best_of(plan.best_of, || {
            let (ping_tx, ping_rx) = copas::channel::unbounded::<u64>();
            let (pong_tx, pong_rx) = copas::channel::unbounded::<u64>();
            copas::addthread(move || {
                for i in 0..n / 2 {
                    ping_tx.send(i).expect("send");
                    black_box(pong_rx.recv().expect("recv"));
                }
            })
            .expect("addthread");
            copas::addthread(move || {
                for _ in 0..n / 2 {
                    let i = ping_rx.recv().expect("recv");
                    pong_tx.send(i).expect("send");
                }
            })
            .expect("addthread");
            timed()
        }),
    );
    println!();
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
    // Where each stack is two mappings, 100k live stacks exceed the default map limit.
    let shared = copas_coro::Stack::shares_mappings();
    println!(
        "Coroutines are added in batches and each batch is `run()` to completion; all stacks \
         come from the pool (warmed by one untimed batch). {}",
        if shared {
            "Stacks share mappings here (guard regions), so a batch of 100k fits under \
             vm.max_map_count."
        } else {
            "A batch cannot be 100k here: every stack is two mappings (no guard regions on \
             this kernel), and 100,000 live stacks exceed vm.max_map_count."
        }
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

    let batches: &[usize] = if shared {
        &[100, 1_000, 10_000, 100_000]
    } else {
        &[100, 1_000, 10_000]
    };
    for &batch in batches {
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

/// What sleeps in a sleeper run.
#[derive(Clone, Copy, PartialEq)]
enum Sleepers {
    /// 30,000 copas coroutines, each `pause(d)`.
    Copas,
    /// The limit: one plain thread sleeping (`std::thread::sleep`) until each deadline in
    /// turn and noting how late every sleeper due by then is. No scheduler, no coroutine, no
    /// work per sleeper: what this host gives any single-threaded timer.
    Limit,
    /// 30,000 tasks on a tokio `current_thread` runtime, each `tokio::time::sleep(d)`.
    Tokio,
}

impl Sleepers {
    fn name(self) -> &'static str {
        match self {
            Sleepers::Copas => "copas",
            Sleepers::Limit => "limit",
            Sleepers::Tokio => "tokio",
        }
    }
}

/// One sleeper run: per sleeper, when it went to sleep and when it was due (both since the
/// run's start) and how late it woke, all in ns; and the time spent creating the sleepers.
struct SleeperLog {
    entries: Vec<(u64, u64, u64)>,
    created: Duration,
    /// From the run's start until `run()` (copas), the loop (limit) or `block_on` (tokio)
    /// returned.
    finished: Duration,
}

impl SleeperLog {
    /// How long after the last wake the run returned (copas gives back its surplus stacks
    /// then), in ms.
    fn tail_ms(&self) -> f64 {
        let last = self.entries.iter().map(|e| e.1 + e.2).max().unwrap_or(0);
        (self.finished.as_nanos() as f64 - last as f64).max(0.0) / 1e6
    }
}

/// One sleeper's log entry, from when it went to sleep, how long for, and when it woke.
fn sleeper_entry(t0: Instant, asleep: Instant, d: Duration, woke: Instant) -> (u64, u64, u64) {
    let due = asleep + d;
    (
        (asleep - t0).as_nanos() as u64,
        (due - t0).as_nanos() as u64,
        woke.saturating_duration_since(due).as_nanos() as u64,
    )
}

fn sleep_copas(ds: &[Duration]) -> SleeperLog {
    let log: Rc<RefCell<Vec<(u64, u64, u64)>>> =
        Rc::new(RefCell::new(Vec::with_capacity(ds.len())));
    let t0 = Instant::now();
    for &d in ds {
        let log = log.clone();
        copas::addthread(move || {
            let asleep = Instant::now();
            copas::pause(d);
            let entry = sleeper_entry(t0, asleep, d, Instant::now());
            log.borrow_mut().push(entry);
        })
        .expect("addthread");
    }
    let created = t0.elapsed();
    copas::run().expect("run");
    let finished = t0.elapsed();
    let entries = log.take();
    SleeperLog {
        entries,
        created,
        finished,
    }
}

fn sleep_limit(ds: &[Duration]) -> SleeperLog {
    let t0 = Instant::now();
    let mut due: Vec<Duration> = ds.to_vec();
    due.sort_unstable();
    let created = t0.elapsed();
    let mut entries = Vec::with_capacity(ds.len());
    let mut next = 0;
    while next < due.len() {
        let at = t0 + due[next];
        let now = Instant::now();
        if now < at {
            std::thread::sleep(at - now);
        }
        let woke = Instant::now();
        while next < due.len() && t0 + due[next] <= woke {
            entries.push(sleeper_entry(t0, t0, due[next], woke));
            next += 1;
        }
    }
    SleeperLog {
        entries,
        created,
        finished: t0.elapsed(),
    }
}

fn sleep_tokio(ds: &[Duration]) -> SleeperLog {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let t0 = Instant::now();
    let handles: Vec<_> = {
        let _entered = rt.enter();
        ds.iter()
            .map(|&d| {
                tokio::spawn(async move {
                    let asleep = Instant::now();
                    tokio::time::sleep(d).await;
                    sleeper_entry(t0, asleep, d, Instant::now())
                })
            })
            .collect()
    };
    let created = t0.elapsed();
    let entries = rt.block_on(async {
        let mut entries = Vec::with_capacity(handles.len());
        for h in handles {
            entries.push(h.await.expect("sleeper task"));
        }
        entries
    });
    SleeperLog {
        entries,
        created,
        finished: t0.elapsed(),
    }
}

/// Writes one run's log as `DIR/sleepers-RUN-KIND.csv` (ns since the run's start: asleep,
/// due, late), for looking at when the late wakes happened.
fn dump_sleepers(dir: &str, run: usize, fifo: bool, kind: Sleepers, log: &SleeperLog) {
    let mut entries = log.entries.clone();
    entries.sort_unstable_by_key(|e| e.1);
    let mut text = String::from("asleep_ns,due_ns,late_ns\n");
    for (asleep, due, late) in entries {
        text.push_str(&format!("{asleep},{due},{late}\n"));
    }
    let fifo = if fifo { "-fifo" } else { "" };
    let path = format!("{dir}/sleepers-{run}{fifo}-{}.csv", kind.name());
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text)) {
        eprintln!("SLEEPER_DUMP: {path}: {e}");
    }
}

fn sleepers(plan: &Plan, rows: &mut Vec<Row>) {
    const SLEEPERS: usize = 30_000;
    const SPAN: Duration = Duration::from_secs(2);
    const KINDS: [Sleepers; 3] = [Sleepers::Copas, Sleepers::Limit, Sleepers::Tokio];
    println!("## (d) {SLEEPERS} sleepers, `pause(d)` with d uniform in [0, 2 s)");
    println!();
    println!(
        "Lateness = wake-up time − (time the sleeper went to sleep + d). copas: {SLEEPERS} \
         coroutines, all added, then `run()`: the first steps start them all, one after \
         another, so sleepers due before the last one has started wait for that start phase. \
         limit: one thread sleeping until each deadline in turn, no scheduler (what the host \
         gives any timer). tokio: {SLEEPERS} tasks on a `current_thread` runtime, \
         `tokio::time::sleep(d)`. Each repetition draws new deadlines and runs the three on \
         them, in an order rotated every repetition. The \"due after start\" columns leave out \
         the sleepers due before the last one went to sleep. CPU and waits include creating \
         the sleepers."
    );
    println!();
    println!("| run | sleepers | woke | total s | create ms | start phase ms | returned after the last wake ms | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | target / p99 | due after start: n | their p99 µs | their max µs | CPU ms | waited for a CPU ms | involuntary switches |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut p99s: Vec<(Sleepers, f64)> = Vec::new();
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
        let ds: Vec<Duration> = (0..SLEEPERS)
            .map(|_| Duration::from_nanos(rng.next() % SPAN.as_nanos() as u64))
            .collect();
        for i in 0..KINDS.len() {
            let kind = KINDS[(i + run - 1) % KINDS.len()];
            let sched = SchedStat::now();
            let t0 = Instant::now();
            let log = match kind {
                Sleepers::Copas => sleep_copas(&ds),
                Sleepers::Limit => sleep_limit(&ds),
                Sleepers::Tokio => sleep_tokio(&ds),
            };
            let total = t0.elapsed();
            let sched = SchedStat::now().since(&sched);
            if let Ok(dir) = std::env::var("SLEEPER_DUMP") {
                dump_sleepers(&dir, run, fifo, kind, &log);
            }
            let started = log.entries.iter().map(|e| e.0).max().unwrap_or(0);
            let mut late: Vec<u64> = log.entries.iter().map(|e| e.2).collect();
            late.sort_unstable();
            let mut steady: Vec<u64> = log
                .entries
                .iter()
                .filter(|e| e.1 > started)
                .map(|e| e.2)
                .collect();
            steady.sort_unstable();
            let us = |v: &[u64], q: f64| percentile(v, q) as f64 / 1e3;
            let p99 = us(&late, 0.99);
            if !fifo {
                p99s.push((kind, p99));
            }
            println!(
                "| {}{} | {} | {} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                run,
                if fifo { " SCHED_FIFO" } else { "" },
                kind.name(),
                log.entries.len(),
                total.as_secs_f64(),
                log.created.as_secs_f64() * 1e3,
                (started as f64 - log.created.as_nanos() as f64).max(0.0) / 1e6,
                log.tail_ms(),
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
        if fifo {
            set_fifo(false);
        }
    }
    let median = |kind: Sleepers| {
        let mut v: Vec<f64> = p99s
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|&(_, p)| p)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (copas, limit, tokio) = (
        median(Sleepers::Copas),
        median(Sleepers::Limit),
        median(Sleepers::Tokio),
    );
    println!();
    println!(
        "p99 lateness, median of the runs without SCHED_FIFO: copas {copas:.1} µs, limit \
         {limit:.1} µs, tokio {tokio:.1} µs; copas / limit {:.2}, copas / tokio {:.2}",
        copas / limit,
        copas / tokio
    );
    row(
        rows,
        "timer lateness p99, 30,000 sleepers (median of runs)",
        copas,
        "µs",
        Some(TARGET_P99_LATE_US),
    );
    row(
        rows,
        "the same deadlines, one plain thread sleeping to each (the limit)",
        limit,
        "µs",
        Some(TARGET_P99_LATE_US),
    );
}

// ----- (e) one sleeper at a time: how late a long timer fires -----------------------------------

/// What times one sleep in the one-sleeper run.
#[derive(Clone, Copy)]
enum OneSleep {
    /// A copas coroutine, `pause(d)`, alone in the dispatcher.
    Copas,
    /// `std::thread::sleep(d)`: the thread's own timer (its timer slack, 50 µs by default).
    Thread,
    /// `epoll_pwait2` on an empty epoll instance with `d` as its timeout: what copas's poller
    /// did for every wait with a deadline before it timed long ones with a timerfd.
    EpollTimeout,
    /// A tokio `current_thread` runtime, `tokio::time::sleep(d)`.
    Tokio,
}

impl OneSleep {
    const ALL: [OneSleep; 4] = [
        OneSleep::Copas,
        OneSleep::Thread,
        OneSleep::EpollTimeout,
        OneSleep::Tokio,
    ];

    /// Sleeps `d` this way; returns how late it woke.
    fn late(
        self,
        d: Duration,
        epoll: &std::os::fd::OwnedFd,
        rt: &tokio::runtime::Runtime,
    ) -> Duration {
        let start = Instant::now();
        match self {
            OneSleep::Copas => {
                copas::addthread(move || {
                    copas::pause(d);
                })
                .expect("addthread");
                copas::run().expect("run");
            }
            OneSleep::Thread => std::thread::sleep(d),
            OneSleep::EpollTimeout => epoll_timeout(epoll, d),
            OneSleep::Tokio => rt.block_on(async move { tokio::time::sleep(d).await }),
        }
        start.elapsed().saturating_sub(d)
    }
}

/// Waits `d` in `epoll_pwait2` on `epoll` (which has nothing registered), resuming after an
/// interruption until `d` has passed.
fn epoll_timeout(epoll: &std::os::fd::OwnedFd, d: Duration) {
    use std::os::fd::AsRawFd;
    let end = Instant::now() + d;
    let mut event = libc::epoll_event { events: 0, u64: 0 };
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid event slot, a timespec that outlives the call, no signal mask.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                epoll.as_raw_fd(),
                &mut event as *mut libc::epoll_event,
                1,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if ret == 0 {
            return;
        }
        assert!(
            ret > 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR),
            "epoll_pwait2: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn long_timers(plan: &Plan) {
    const LENGTHS_MS: [u64; 4] = [10, 100, 1000, 2000];
    println!("## (e) One sleeper at a time, 10 ms to 2 s");
    println!();
    println!(
        "Lateness = wake-up time − (start + d), one sleeper at a time, the four ways in an order \
         rotated every repetition ({} repetitions of each length). The kernel lets an epoll \
         timeout run late by 0.1 % of its length (at least the thread's timer slack, 50 µs): \
         the \"epoll timeout\" column, which was copas's way for every deadline; copas now \
         times waits of 50 ms or more (`TIMERFD_FROM`, src/dispatcher/poller.rs) with a \
         timerfd, which has no such allowance.",
        plan.timer_runs,
    );
    println!();
    println!("| d | copas `pause` median / max µs | `thread::sleep` | epoll timeout | tokio `sleep` | copas / epoll timeout, medians |");
    println!("|---|---|---|---|---|---|");
    // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor.
    let epoll = unsafe {
        use std::os::fd::FromRawFd;
        let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(
            fd >= 0,
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    for ms in LENGTHS_MS {
        let d = Duration::from_millis(ms);
        let mut late: Vec<Vec<u64>> = vec![Vec::new(); OneSleep::ALL.len()];
        for run in 0..plan.timer_runs {
            for i in 0..OneSleep::ALL.len() {
                let k = (i + run) % OneSleep::ALL.len();
                let l = OneSleep::ALL[k].late(d, &epoll, &rt);
                late[k].push(l.as_micros() as u64);
            }
        }
        for v in &mut late {
            v.sort_unstable();
        }
        let median = |v: &[u64]| v[v.len() / 2];
        let cell = |v: &[u64]| format!("{} / {}", median(v), v[v.len() - 1]);
        println!(
            "| {ms} ms | {} | {} | {} | {} | {:.2} |",
            cell(&late[0]),
            cell(&late[1]),
            cell(&late[2]),
            cell(&late[3]),
            median(&late[0]) as f64 / median(&late[2]).max(1) as f64,
        );
    }
    println!();
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
