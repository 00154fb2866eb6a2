//! A pool of workers fed by producers through a `copas::queue::Queue`, shut down cleanly.
//!
//! ```text
//! cargo run --example queue_workers    # prints who did which job, then a summary; ends by itself
//! ```
//!
//! The shape of many servers' background work (sending mails, writing logs, calling a slow
//! service): several producers push jobs as they come, a fixed number of worker coroutines
//! take them one at a time, and at shutdown every job already queued is still done, no new
//! job is accepted, and the program waits until the last worker has finished.
//!
//! * [`Queue::add_worker`] starts a coroutine (`jobs:worker_<n>`) that pops jobs and calls
//!   the closure for each. A job that waits (here: `pause`, standing for I/O) suspends only
//!   its worker, so while one worker waits the next idle one takes the next job; items go
//!   to the worker that has waited longest, so the work spreads over the pool.
//! * Producers are futures ([`copas::future`]), so the coordinator can wait for them.
//! * [`Queue::finish`] refuses new jobs, waits until the queue is drained and every worker
//!   has ended, within a timeout. A push after that gives the job back ([`PushError`]).
//!
//! [`Queue::add_worker`]: copas::queue::Queue::add_worker
//! [`Queue::finish`]: copas::queue::Queue::finish
//! [`PushError`]: copas::queue::PushError

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use copas::queue::Queue;

const WORKERS: usize = 3;
const PRODUCERS: [&str; 2] = ["producer-a", "producer-b"];
const JOBS_PER_PRODUCER: u32 = 6;

/// One unit of work: who asked for it, and its number.
#[derive(Debug)]
struct Job {
    producer: &'static str,
    number: u32,
}

fn main() -> copas::Result<()> {
    // Named, so that its workers are named `jobs:worker_1`, … in the output and in error
    // reports.
    let jobs: Queue<Job> = Queue::named("jobs");
    // What the workers did, for the summary. `Rc<RefCell<…>>` is enough: every coroutine
    // runs on this one thread, and none holds the borrow across a pause.
    let done: Rc<RefCell<Vec<(String, String)>>> = Rc::default();

    for _ in 0..WORKERS {
        let done = done.clone();
        jobs.add_worker(move |job: Job| {
            let worker = copas::getthreadname(None).unwrap_or_default();
            // Stands for I/O the job waits on; other workers run meanwhile.
            copas::pause(Duration::from_millis(20));
            let id = format!("{}#{}", job.producer, job.number);
            println!("{worker} did {id}");
            done.borrow_mut().push((worker, id));
        })?;
    }

    let mut producers = Vec::new();
    for name in PRODUCERS {
        let jobs = jobs.clone();
        producers.push(copas::future::addnamedthread(name, move || {
            for number in 1..=JOBS_PER_PRODUCER {
                // `push` never waits: the queue is unbounded, it only hands the job over.
                if let Err(refused) = jobs.push(Job {
                    producer: name,
                    number,
                }) {
                    println!("{name}: job {number} refused ({:?})", refused.kind());
                    return number - 1;
                }
                // Jobs arrive over time, not all at once.
                copas::pause(Duration::from_millis(5));
            }
            JOBS_PER_PRODUCER
        })?);
    }

    // The coordinator: waits for the producers, then shuts the pool down.
    let queue = jobs.clone();
    copas::addnamedthread("coordinator", move || {
        let pushed: u32 = producers.iter().map(|p| p.get().unwrap_or(0)).sum();
        println!("coordinator: producers pushed {pushed} jobs; finishing the queue");
        // Stops the queue and waits for the workers to drain it and end. The timeout bounds
        // the shutdown; on expiry the jobs left would be dropped (`false`: destroy them).
        match queue.finish(Duration::from_secs(10), false) {
            Ok(()) => println!("coordinator: queue drained, all workers ended"),
            Err(e) => println!("coordinator: finish failed: {e}"),
        }
        // The queue is closed now: a late job comes back instead of being lost silently.
        let late = Job {
            producer: "late",
            number: 0,
        };
        if let Err(refused) = queue.push(late) {
            let job = refused.into_inner();
            println!("coordinator: a late job was refused and handed back: {job:?}");
        }
    })?;

    copas::run()?;

    let done = done.borrow();
    let mut workers: Vec<&str> = done.iter().map(|(w, _)| w.as_str()).collect();
    workers.sort_unstable();
    workers.dedup();
    println!(
        "summary: {} jobs done by {} workers ({})",
        done.len(),
        workers.len(),
        workers.join(", ")
    );
    Ok(())
}
