//! Timers and sleepers: `copas::timer` (one-shot, recurring, cancelled) next to plain
//! coroutines that sleep with `copas::pause`.
//!
//! ```text
//! cargo run --example timers     # prints what fires when, then ends by itself (~1 s)
//! ```
//!
//! Everything here runs on one thread, in coroutines: a timer is a coroutine that sleeps
//! until it is due, so a timer callback may itself pause, read a socket or take a lock.
//! What it shows, with the times each line is printed at (milliseconds since the start):
//!
//! * a **recurring** timer (`heartbeat`) every 100 ms that cancels itself on its fifth beat;
//! * a **one-shot** timer (`reminder`) due at 250 ms;
//! * a timer **cancelled** before it was due (`never`): its callback never runs;
//! * three **sleepers**, coroutines that `pause` for different times: each wakes after its
//!   own delay, whatever order they were started in, and none delays the others;
//! * `run` **ending by itself** once nothing is left: no armed timer, no sleeper.

use std::cell::Cell;
use std::time::{Duration, Instant};

use copas::timer::{self, Timer, TimerOptions};

fn main() -> copas::Result<()> {
    let start = Instant::now();
    // Times are printed relative to the start so that the output reads like a timeline.
    let at = move || start.elapsed().as_millis();

    // A recurring timer. Its n-th beat is due at n × 100 ms after arming (no drift: a slow
    // callback does not push the later beats back). The callback gets the timer, which is
    // how it cancels itself. The callback is a `Fn` (shared by every arming of the timer), so
    // its count lives in a `Cell`.
    let beats = Cell::new(0);
    let heartbeat = timer::new(
        TimerOptions::new(Duration::from_millis(100))
            .recurring(true)
            .name("heartbeat"),
        move |t: &Timer| {
            beats.set(beats.get() + 1);
            println!("{:>5} ms  heartbeat {}", at(), beats.get());
            if beats.get() == 5 {
                // Without this the timer would keep `run` going for ever.
                t.cancel().expect("an armed timer can be cancelled");
                println!("{:>5} ms  heartbeat cancelled itself", at());
            }
        },
    )?;
    println!("    0 ms  armed {:?}", heartbeat.name());

    // A one-shot timer: disarmed before its callback runs, so the callback could arm it
    // again (`t.arm(None)`) to make a self-rescheduling job.
    let reminder = timer::new(
        TimerOptions::new(Duration::from_millis(250)).name("reminder"),
        move |t: &Timer| println!("{:>5} ms  {} fired once", at(), t.name()),
    )?;
    println!("    0 ms  armed {:?}", reminder.name());

    // A timer cancelled before it is due: its coroutine is removed, nothing fires, and it
    // does not keep the loop alive.
    let never = timer::new(
        TimerOptions::new(Duration::from_millis(150)).name("never"),
        move |_: &Timer| println!("{:>5} ms  BUG: a cancelled timer fired", at()),
    )?;
    never.cancel()?;
    println!("    0 ms  cancelled {:?} before it was due", never.name());

    // Sleepers: ordinary coroutines that pause. Started longest first, they still wake in
    // the order of their delays, because a pause suspends only its own coroutine.
    for (name, ms) in [("sleeper-c", 600), ("sleeper-a", 200), ("sleeper-b", 400)] {
        copas::addnamedthread(name, move || {
            let slept = copas::pause(Duration::from_millis(ms));
            // `pause` returns the time actually paused: at least what was asked.
            println!(
                "{:>5} ms  {} woke after {} ms",
                at(),
                copas::getthreadname(None).unwrap_or_default(),
                slept.as_millis()
            );
        })?;
    }

    // `run` returns when nothing is left to do: the heartbeat cancelled itself, the reminder
    // fired, the sleepers woke.
    copas::run()?;
    println!("{:>5} ms  nothing left to do: run returned", at());
    Ok(())
}
