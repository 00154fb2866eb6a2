//! Integration tests of `copas-coro`: suspending from any depth, coroutine identity, panic
//! capture, cancellation by drop, stack recycling, and the stack-overflow report.
//!
//! The two death tests (`stack_overflow_prints_the_coroutine_name` and
//! `allocation_failure_is_an_error_not_a_panic`) re-execute this test binary with an
//! environment variable set, so that the child runs exactly one `*_child` test in a process of
//! its own; without that variable the `*_child` tests return at once.

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use copas_coro::{
    current, in_coroutine, panic_message, suspend, Coro, Resumed, StackPool, SuspendError,
};

/// Stack size used by most tests: small, so that many coroutines are cheap.
const SMALL_STACK: usize = 64 * 1024;

/// How long a child process (or a test thread guarding against a hang) may run.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound on resumes in drive loops, so that a coroutine that never finishes fails the
/// test instead of hanging it.
const MAX_RESUMES: usize = 10_000;

fn pool() -> StackPool {
    StackPool::new(SMALL_STACK, 16)
}

/// Resumes `co` until it finishes, returning how many times it suspended.
///
/// Panics if it panics or does not finish within [`MAX_RESUMES`] resumes.
fn run_to_end(co: &mut Coro) -> usize {
    for suspended in 0..MAX_RESUMES {
        match co.resume() {
            Resumed::Suspended => {}
            Resumed::Finished => return suspended,
            Resumed::Panicked(p) => panic!("coroutine panicked: {}", panic_message(&*p)),
        }
    }
    panic!("coroutine did not finish within {MAX_RESUMES} resumes");
}

/// Increments a shared counter when dropped.
struct DropCounter(Rc<Cell<u32>>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Suspending from deep in the call stack.

const DEPTH: u32 = 50;

/// Recurses to `DEPTH`, suspending once at every level on the way down and once more at the
/// bottom; checks after every resume that this level's locals survived the switch.
fn descend(level: u32, log: &RefCell<Vec<u32>>) -> u64 {
    let mut local = [0u8; 64];
    local.fill(level as u8);
    let local = std::hint::black_box(local);
    log.borrow_mut().push(level);
    suspend().expect("suspend inside a coroutine");
    assert!(
        local.iter().all(|&b| b == level as u8),
        "locals of level {level} were clobbered across a suspend"
    );
    assert_eq!(current(), Some(99));
    if level == DEPTH {
        suspend().expect("suspend at the bottom");
        return u64::from(level);
    }
    u64::from(level) + descend(level + 1, log)
}

#[test]
fn suspend_works_from_deep_in_the_call_stack() {
    let mut pool = pool();
    let log = Rc::new(RefCell::new(Vec::new()));
    let sum = Rc::new(Cell::new(0u64));
    let mut co = {
        let (log, sum) = (log.clone(), sum.clone());
        Coro::new(pool.allocate().unwrap(), 99, "deep", move || {
            sum.set(descend(1, &log));
        })
    };
    let mut suspends = 0;
    for _ in 0..MAX_RESUMES {
        match co.resume() {
            Resumed::Suspended => {
                suspends += 1;
                // While suspended at level n (n <= DEPTH), exactly n levels have been entered.
                let entered = log.borrow().len();
                assert_eq!(entered, (suspends as usize).min(DEPTH as usize));
                assert_eq!(current(), None, "the resumer sees no coroutine");
            }
            Resumed::Finished => break,
            Resumed::Panicked(p) => panic!("coroutine panicked: {}", panic_message(&*p)),
        }
    }
    assert!(co.is_done());
    assert_eq!(
        suspends,
        DEPTH + 1,
        "one suspend per level plus one at the bottom"
    );
    assert_eq!(*log.borrow(), (1..=DEPTH).collect::<Vec<_>>());
    assert_eq!(sum.get(), u64::from(DEPTH * (DEPTH + 1) / 2));
    pool.recycle(co.into_stack());
    assert_eq!(pool.idle(), 1);
}

// ---------------------------------------------------------------------------------------------
// Identity of the running coroutine.

#[test]
fn current_reports_the_running_coroutine_tag() {
    let mut pool = pool();
    let seen = Rc::new(RefCell::new(Vec::<(&'static str, Option<u64>)>::new()));
    let inner_stack = pool.allocate().unwrap();
    let mut outer = {
        let seen = seen.clone();
        Coro::new(pool.allocate().unwrap(), 1, "outer", move || {
            seen.borrow_mut().push(("outer start", current()));
            let mut inner = {
                let seen = seen.clone();
                Coro::new(inner_stack, 2, "inner", move || {
                    seen.borrow_mut().push(("inner start", current()));
                    suspend().unwrap();
                    seen.borrow_mut().push(("inner resumed", current()));
                })
            };
            assert!(matches!(inner.resume(), Resumed::Suspended));
            seen.borrow_mut()
                .push(("outer after inner suspended", current()));
            suspend().unwrap();
            seen.borrow_mut().push(("outer resumed", current()));
            assert!(matches!(inner.resume(), Resumed::Finished));
            seen.borrow_mut()
                .push(("outer after inner finished", current()));
            assert!(in_coroutine());
        })
    };
    assert_eq!(outer.tag(), 1);
    assert_eq!(outer.label(), "outer");
    assert!(matches!(outer.resume(), Resumed::Suspended));
    assert_eq!(current(), None);
    assert!(matches!(outer.resume(), Resumed::Finished));
    assert_eq!(current(), None);
    assert_eq!(
        *seen.borrow(),
        [
            ("outer start", Some(1)),
            ("inner start", Some(2)),
            ("outer after inner suspended", Some(1)),
            ("outer resumed", Some(1)),
            ("inner resumed", Some(2)),
            ("outer after inner finished", Some(1)),
        ]
    );
}

#[test]
fn current_is_none_outside() {
    assert_eq!(current(), None);
    assert!(!in_coroutine());
    let mut pool = pool();
    let mut co = Coro::new(pool.allocate().unwrap(), 5, "x", || {
        assert_eq!(current(), Some(5));
        assert!(in_coroutine());
        suspend().unwrap();
    });
    assert!(!co.is_started());
    assert!(matches!(co.resume(), Resumed::Suspended));
    assert!(co.is_started());
    assert_eq!(current(), None, "not restored after a suspend");
    assert!(!in_coroutine());
    assert!(matches!(co.resume(), Resumed::Finished));
    assert_eq!(current(), None, "not restored after the coroutine finished");

    let mut co = Coro::new(pool.allocate().unwrap(), 6, "p", || {
        panic!("expected by the test")
    });
    assert!(matches!(co.resume(), Resumed::Panicked(_)));
    assert_eq!(current(), None, "not restored after the coroutine panicked");
    assert!(!in_coroutine());
}

// ---------------------------------------------------------------------------------------------
// Suspend errors.

#[test]
fn suspend_outside_a_coroutine_is_an_error() {
    assert_eq!(suspend(), Err(SuspendError::NotInCoroutine));
    // Still an error after a coroutine has run on this thread.
    let mut pool = pool();
    let mut co = Coro::new(pool.allocate().unwrap(), 1, "x", || {
        suspend().unwrap();
    });
    assert!(matches!(co.resume(), Resumed::Suspended));
    assert_eq!(suspend(), Err(SuspendError::NotInCoroutine));
    assert_eq!(run_to_end(&mut co), 0);
    assert_eq!(suspend(), Err(SuspendError::NotInCoroutine));
    assert_eq!(
        SuspendError::NotInCoroutine.to_string(),
        "not inside a coroutine"
    );
}

/// A coroutine that catches its cancellation and panics anew ends with that panic: it comes
/// back from `unwind_into_stack` with a reusable stack, instead of running on through the
/// caller with the coroutine still marked as the running one.
#[test]
fn a_panic_raised_while_unwinding_comes_back_with_the_stack() {
    let mut pool = pool();
    let mut co = Coro::new(pool.allocate().unwrap(), 7, "stubborn", || {
        let caught = std::panic::catch_unwind(|| {
            suspend().unwrap();
        });
        if caught.is_err() {
            panic!("refusing to be cancelled");
        }
    });
    assert!(matches!(co.resume(), Resumed::Suspended));
    let (stack, panic) = co.unwind_into_stack();
    let panic = panic.expect("the coroutine panicked while unwinding");
    assert_eq!(panic_message(&*panic), "refusing to be cancelled");
    assert_eq!(current(), None, "still marked as running");
    assert!(!in_coroutine());
    // The stack is whole: a new coroutine runs on it.
    pool.recycle(stack);
    let mut again = Coro::new(pool.allocate().unwrap(), 8, "again", || suspend().unwrap());
    assert!(matches!(again.resume(), Resumed::Suspended));
    assert_eq!(run_to_end(&mut again), 0);
}

#[test]
fn suspend_during_unwind_is_refused() {
    /// Calls `suspend` from its destructor and records what it returned.
    struct SuspendsOnDrop {
        results: Rc<RefCell<Vec<Result<(), SuspendError>>>>,
        tag_seen: Rc<Cell<Option<u64>>>,
    }
    impl Drop for SuspendsOnDrop {
        fn drop(&mut self) {
            self.tag_seen.set(current());
            // Bounded: if suspend kept succeeding this would not spin forever.
            if self.results.borrow().len() < 3 {
                let r = suspend();
                self.results.borrow_mut().push(r);
            }
        }
    }

    // The coroutine runs on a thread of its own so that a spinning unwind fails the test
    // (after CHILD_TIMEOUT) instead of hanging it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let results = Rc::new(RefCell::new(Vec::new()));
        let tag_seen = Rc::new(Cell::new(None));
        let mut pool = pool();
        let mut co = {
            let (results, tag_seen) = (results.clone(), tag_seen.clone());
            Coro::new(pool.allocate().unwrap(), 42, "cancelled", move || {
                let _guard = SuspendsOnDrop { results, tag_seen };
                suspend().unwrap();
                unreachable!("resumed after being dropped");
            })
        };
        assert!(matches!(co.resume(), Resumed::Suspended));
        drop(co);
        let results = results.borrow().clone();
        let _ = tx.send((results, tag_seen.get()));
    });
    let (results, tag_seen) = rx
        .recv_timeout(CHILD_TIMEOUT)
        .expect("dropping the coroutine did not terminate (or its thread panicked)");
    assert_eq!(results, [Err(SuspendError::Unwinding)]);
    assert_eq!(
        tag_seen,
        Some(42),
        "destructors see the unwinding coroutine's tag"
    );
    assert_eq!(
        SuspendError::Unwinding.to_string(),
        "the coroutine is being cancelled"
    );
}

// ---------------------------------------------------------------------------------------------
// Panics.

#[test]
fn panic_is_returned_as_a_value() {
    let mut pool = pool();
    let mut co = Coro::new(pool.allocate().unwrap(), 3, "panicker", || {
        suspend().unwrap();
        let n = std::hint::black_box(42);
        panic!("handler failed with code {n}");
    });
    assert!(matches!(co.resume(), Resumed::Suspended));
    assert!(!co.is_done());
    match co.resume() {
        Resumed::Panicked(payload) => {
            assert_eq!(panic_message(&*payload), "handler failed with code 42");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert!(co.is_done());
    assert_eq!(current(), None);

    // The stack of a panicked coroutine is reusable.
    let stack = co.into_stack();
    pool.recycle(stack);
    assert_eq!(pool.idle(), 1);
    let ran = Rc::new(Cell::new(0));
    let mut again = {
        let ran = ran.clone();
        Coro::new(pool.allocate().unwrap(), 4, "after", move || {
            for _ in 0..3 {
                ran.set(ran.get() + 1);
                suspend().unwrap();
            }
        })
    };
    assert_eq!(pool.idle(), 0, "the recycled stack was reused");
    assert_eq!(run_to_end(&mut again), 3);
    assert_eq!(ran.get(), 3);

    // A non-string payload is returned too.
    let mut co = Coro::new(pool.allocate().unwrap(), 5, "any", || {
        std::panic::panic_any(7u32)
    });
    match co.resume() {
        Resumed::Panicked(payload) => {
            assert_eq!(payload.downcast_ref::<u32>(), Some(&7));
            assert_eq!(panic_message(&*payload), "<non-string panic payload>");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Cancellation by drop.

#[test]
fn dropping_a_suspended_coroutine_drops_its_locals() {
    let mut pool = pool();
    let drops = Rc::new(Cell::new(0));
    let after_suspend = Rc::new(Cell::new(false));
    let mut co = {
        let (drops, after_suspend) = (drops.clone(), after_suspend.clone());
        Coro::new(pool.allocate().unwrap(), 1, "dropped", move || {
            let _local = DropCounter(drops);
            suspend().unwrap();
            after_suspend.set(true);
        })
    };
    assert!(matches!(co.resume(), Resumed::Suspended));
    assert_eq!(drops.get(), 0);
    drop(co);
    assert_eq!(drops.get(), 1, "the local was not dropped exactly once");
    assert!(
        !after_suspend.get(),
        "the coroutine ran on after being dropped"
    );
    assert_eq!(current(), None);

    // `into_stack` of a suspended coroutine unwinds it too, and the stack can be reused.
    let drops = Rc::new(Cell::new(0));
    let mut co = {
        let (drops, after_suspend) = (drops.clone(), after_suspend.clone());
        Coro::new(pool.allocate().unwrap(), 2, "into_stack", move || {
            let _local = DropCounter(drops);
            suspend().unwrap();
            after_suspend.set(true);
        })
    };
    assert!(matches!(co.resume(), Resumed::Suspended));
    let stack = co.into_stack();
    assert_eq!(drops.get(), 1, "into_stack did not unwind the coroutine");
    assert!(!after_suspend.get());
    assert_eq!(current(), None);
    pool.recycle(stack);
    assert_eq!(pool.idle(), 1);
    let mut reused = Coro::new(pool.allocate().unwrap(), 3, "reused", || {
        assert_eq!(current(), Some(3));
        suspend().unwrap();
    });
    assert_eq!(run_to_end(&mut reused), 1);
    assert_eq!(drops.get(), 1);
}

#[test]
fn dropping_an_unstarted_coroutine_drops_its_closure() {
    let mut pool = pool();
    let drops = Rc::new(Cell::new(0));
    let ran = Rc::new(Cell::new(false));
    let co = {
        let (captured, ran) = (DropCounter(drops.clone()), ran.clone());
        Coro::new(pool.allocate().unwrap(), 1, "never run", move || {
            let _keep = &captured;
            ran.set(true);
        })
    };
    assert!(!co.is_started());
    assert!(!co.is_done());
    assert_eq!(drops.get(), 0);
    drop(co);
    assert_eq!(
        drops.get(),
        1,
        "the captured value was not dropped exactly once"
    );
    assert!(!ran.get(), "the closure ran");

    // `into_stack` of an unstarted coroutine drops the closure and gives a reusable stack.
    let co = {
        let (captured, ran) = (DropCounter(drops.clone()), ran.clone());
        Coro::new(pool.allocate().unwrap(), 2, "never run either", move || {
            let _keep = &captured;
            ran.set(true);
        })
    };
    pool.recycle(co.into_stack());
    assert_eq!(drops.get(), 2);
    assert!(!ran.get());
    let mut reused = Coro::new(pool.allocate().unwrap(), 3, "reused", || {
        suspend().unwrap();
    });
    assert_eq!(run_to_end(&mut reused), 1);
}

/// A value whose drop panics, the first capture of the closures below.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        std::panic::resume_unwind(Box::new("drop bomb"));
    }
}

#[test]
fn an_unstarted_closure_whose_capture_panics_on_drop_is_dropped_once_and_reports_the_panic() {
    let mut pool = pool();
    let drops = Rc::new(Cell::new(0));
    let unstarted = |pool: &mut StackPool, tag| {
        let (bomb, counted) = (PanicsOnDrop, DropCounter(drops.clone()));
        Coro::new(pool.allocate().unwrap(), tag, "never run", move || {
            let _keep = (&bomb, &counted);
        })
    };

    // `unwind_into_stack` hands the panic back with a stack that can be reused.
    let (stack, panic) = unstarted(&mut pool, 1).unwind_into_stack();
    assert_eq!(
        drops.get(),
        1,
        "the other capture was not dropped exactly once"
    );
    let panic = panic.expect("the destructor's panic was not reported");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"drop bomb"));
    pool.recycle(stack);

    // A plain drop has no one to report to; it still drops each capture once, and the stack
    // goes back to a state a new coroutine can run on.
    drop(unstarted(&mut pool, 2));
    assert_eq!(
        drops.get(),
        2,
        "the other capture was not dropped exactly once"
    );
    let mut reused = Coro::new(pool.allocate().unwrap(), 3, "reused", || {
        suspend().unwrap();
    });
    assert_eq!(run_to_end(&mut reused), 1);
}

// ---------------------------------------------------------------------------------------------
// Many coroutines.

#[test]
fn many_coroutines_interleave() {
    const COROUTINES: usize = 1_000;
    const SUSPENDS: usize = 10;
    const MAX_IDLE: usize = 64;

    let mut pool = StackPool::new(SMALL_STACK, MAX_IDLE);
    // Every coroutine records (its tag, its step) before each suspend.
    let log = Rc::new(RefCell::new(Vec::with_capacity(
        COROUTINES * (SUSPENDS + 1),
    )));
    let mut coros: Vec<Option<Coro>> = (0..COROUTINES)
        .map(|i| {
            let log = log.clone();
            let tag = i as u64;
            Some(Coro::new(
                pool.allocate().unwrap(),
                tag,
                format!("worker-{i}"),
                move || {
                    for step in 0..SUSPENDS {
                        assert_eq!(current(), Some(tag));
                        log.borrow_mut().push((tag, step));
                        suspend().unwrap();
                    }
                    log.borrow_mut().push((tag, SUSPENDS));
                },
            ))
        })
        .collect();
    assert_eq!(coros[7].as_ref().unwrap().label(), "worker-7");

    let mut finished = 0;
    let mut rounds = 0;
    while finished < COROUTINES {
        rounds += 1;
        assert!(rounds <= SUSPENDS + 1, "coroutines did not finish in time");
        for slot in coros.iter_mut() {
            let Some(co) = slot.as_mut() else { continue };
            match co.resume() {
                Resumed::Suspended => {}
                Resumed::Finished => {
                    finished += 1;
                    let co = slot.take().unwrap();
                    pool.recycle(co.into_stack());
                    assert!(pool.idle() <= MAX_IDLE);
                }
                Resumed::Panicked(p) => panic!("coroutine panicked: {}", panic_message(&*p)),
            }
        }
    }
    assert_eq!(rounds, SUSPENDS + 1);
    assert!(coros.iter().all(Option::is_none));
    assert_eq!(pool.idle(), MAX_IDLE);

    // Round robin: step k of every coroutine, in order, before step k + 1 of any.
    let log = log.borrow();
    assert_eq!(log.len(), COROUTINES * (SUSPENDS + 1));
    for (i, &(tag, step)) in log.iter().enumerate() {
        assert_eq!((tag, step), ((i % COROUTINES) as u64, i / COROUTINES));
    }

    // The pooled stacks are handed out again.
    let reused = pool.allocate().unwrap();
    assert_eq!(pool.idle(), MAX_IDLE - 1);
    pool.recycle(reused);
    assert_eq!(pool.idle(), MAX_IDLE);
}

// ---------------------------------------------------------------------------------------------
// Death tests.

/// Runs this test binary again, executing only the test `name` with `env_var` set to `1`.
/// Kills the child after [`CHILD_TIMEOUT`]. Returns its exit status, stdout and stderr.
fn run_child(name: &str, env_var: &str) -> (ExitStatus, String, String) {
    let exe = std::env::current_exe().expect("current test binary");
    let mut child = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(env_var, "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child test process");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child test {name} did not end within {CHILD_TIMEOUT:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

/// Whether this process is the child of a death test guarded by `env_var`.
fn is_child(env_var: &str) -> bool {
    std::env::var_os(env_var).is_some_and(|v| v == "1")
}

/// Disables core dumps in a death-test child, which is about to abort on purpose.
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit is given a valid pointer to an initialised rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

const OVERFLOW_ENV: &str = "COPAS_CORO_OVERFLOW_CHILD";

/// Recurses without bound, each frame holding 1 KiB the optimiser cannot remove.
fn recurse_forever(depth: u64) -> u64 {
    let mut buf = [0u8; 1024];
    buf[(depth % 1024) as usize] = depth as u8;
    let buf = std::hint::black_box(buf);
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse_forever(depth + 1) + u64::from(buf[(depth % 1024) as usize])
}

#[test]
fn stack_overflow_child() {
    if !is_child(OVERFLOW_ENV) {
        return;
    }
    no_core_dumps();
    let mut pool = StackPool::new(SMALL_STACK, 1);
    // Overflow the second stack made: where stacks share a mapping, its guard is the one
    // installed when the slot is first handed out, and the first stack lies right below.
    let _first = pool.allocate().unwrap();
    let mut co = Coro::new(
        pool.allocate().unwrap(),
        1,
        "deep-recursion-handler",
        || {
            eprintln!("child: recursing");
            let n = recurse_forever(0);
            eprintln!("child: recursion ended?! {n}");
        },
    );
    let r = co.resume();
    eprintln!("child: survived the overflow: {r:?}");
}

#[test]
fn stack_overflow_prints_the_coroutine_name() {
    assert_aborts_with_overflow_report(
        "stack_overflow_child",
        OVERFLOW_ENV,
        "child: recursing",
        "coroutine 'deep-recursion-handler' has overflowed its stack (64 KiB)",
    );
}

/// Runs the death test `child` and checks that it got as far as printing `reached`, then
/// was aborted (`SIGABRT`) after printing `report`.
fn assert_aborts_with_overflow_report(child: &str, env_var: &str, reached: &str, report: &str) {
    let (status, stdout, stderr) = run_child(child, env_var);
    let context = format!("status: {status:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        stderr.contains(reached),
        "the child did not get there\n{context}"
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the child was not aborted\n{context}"
    );
    assert!(
        stderr.contains(report),
        "no overflow report naming the coroutine\n{context}"
    );
}

const HOSTED_OVERFLOW_ENV: &str = "COPAS_CORO_HOSTED_OVERFLOW_CHILD";

/// Runs its closure when dropped.
struct RunsOnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for RunsOnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[test]
fn overflow_while_dropping_an_unstarted_coroutine_child() {
    if !is_child(HOSTED_OVERFLOW_ENV) {
        return;
    }
    no_core_dumps();
    let mut pool = StackPool::new(SMALL_STACK, 2);
    let _first = pool.allocate().unwrap();
    let never_used = pool.allocate().unwrap();
    let mut dropper = Coro::new(pool.allocate().unwrap(), 1, "dropping-handler", move || {
        let deep = RunsOnDrop(|| {
            std::hint::black_box(recurse_forever(0));
        });
        let unstarted = Coro::new(never_used, 2, "never-started", move || {
            let _keep = &deep;
        });
        eprintln!("child: dropping the unstarted coroutine");
        drop(unstarted);
    });
    let r = dropper.resume();
    eprintln!("child: survived the overflow: {r:?}");
}

/// An unstarted coroutine's closure is dropped on the stack of whoever drops it, with the
/// unstarted one marked as running: an overflow in those destructors, inside another
/// coroutine, is reported as that coroutine's, where it was a bare `SIGSEGV` (the fault
/// handler looked at the unstarted coroutine's guard page only).
#[test]
fn an_overflow_while_dropping_an_unstarted_coroutine_names_the_coroutine_whose_stack_overflowed() {
    assert_aborts_with_overflow_report(
        "overflow_while_dropping_an_unstarted_coroutine_child",
        HOSTED_OVERFLOW_ENV,
        "child: dropping the unstarted coroutine",
        "coroutine 'dropping-handler' has overflowed its stack (64 KiB)",
    );
}

const TEARDOWN_ENV: &str = "COPAS_CORO_TEARDOWN_CHILD";

thread_local! {
    /// An unstarted coroutine a thread keeps until its thread-locals are destroyed.
    static KEPT: RefCell<Option<Coro>> = const { RefCell::new(None) };
}

#[test]
fn unstarted_drop_at_thread_teardown_child() {
    if !is_child(TEARDOWN_ENV) {
        return;
    }
    no_core_dumps();
    let ended = std::thread::spawn(|| {
        let mut pool = StackPool::new(SMALL_STACK, 2);
        let mut unstarted = |tag| {
            let bomb = PanicsOnDrop;
            Coro::new(pool.allocate().unwrap(), tag, "unstarted", move || {
                let _keep = &bomb;
            })
        };
        // `KEPT` first, so that its destructor runs after those of thread-locals first used
        // later: the dropped coroutine's use of the panic's slot comes after the slot's end.
        KEPT.with(|kept| *kept.borrow_mut() = Some(unstarted(1)));
        drop(unstarted(2));
    })
    .join();
    println!("copas-coro-teardown: joined {}", ended.is_ok());
}

/// An unstarted coroutine whose closure panics when dropped, dropped by a thread-local's
/// destructor after copas-coro's own thread-locals are gone: the panic is lost, the thread
/// ends normally.
#[test]
fn an_unstarted_coroutine_dropped_at_thread_teardown_ends_the_thread_normally() {
    let (status, stdout, stderr) =
        run_child("unstarted_drop_at_thread_teardown_child", TEARDOWN_ENV);
    let context = format!("status: {status:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(status.success(), "the child failed\n{context}");
    assert!(
        stdout.contains("copas-coro-teardown: joined true"),
        "the thread did not end normally\n{context}"
    );
}

const ALLOC_ENV: &str = "COPAS_CORO_ALLOC_CHILD";

/// The current size of this process's address space, from /proc/self/status.
#[cfg(target_os = "linux")]
fn address_space_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("VmSize in /proc/self/status");
    let kib: u64 = line
        .trim_start_matches("VmSize:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[cfg(target_os = "linux")]
#[test]
fn allocation_failure_child() {
    if !is_child(ALLOC_ENV) {
        return;
    }
    no_core_dumps();
    // Leave 256 MiB of address space: enough for the harness and small stacks, far from
    // enough for a 4 GiB stack (whose reservation alone counts against RLIMIT_AS).
    let limit = address_space_bytes() + 256 * 1024 * 1024;
    let rl = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit is given a valid pointer to an initialised rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());

    let mut huge = StackPool::new(4 << 30, 1);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| huge.allocate())) {
        Ok(Ok(_)) => println!("copas-coro-alloc: huge Ok"),
        Ok(Err(e)) => println!("copas-coro-alloc: huge Err({:?})", e.kind()),
        Err(_) => println!("copas-coro-alloc: huge Panicked"),
    }
    // Small stacks still work under the same limit.
    let mut small = StackPool::new(SMALL_STACK, 1);
    match small.allocate() {
        Ok(stack) => {
            let mut co = Coro::new(stack, 1, "small", || suspend().unwrap());
            assert!(matches!(co.resume(), Resumed::Suspended));
            assert!(matches!(co.resume(), Resumed::Finished));
            println!("copas-coro-alloc: small Ok");
        }
        Err(e) => println!("copas-coro-alloc: small Err({:?})", e.kind()),
    }
}

#[cfg(target_os = "linux")]
#[test]
fn allocation_failure_is_an_error_not_a_panic() {
    let (status, stdout, stderr) = run_child("allocation_failure_child", ALLOC_ENV);
    let context = format!("status: {status:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(status.success(), "the child failed\n{context}");
    assert!(
        stdout.contains("copas-coro-alloc: huge Err(OutOfMemory)"),
        "allocating past RLIMIT_AS was not an ENOMEM error\n{context}"
    );
    assert!(
        stdout.contains("copas-coro-alloc: small Ok"),
        "a small stack could not be allocated under the limit\n{context}"
    );
}

#[test]
fn allocating_an_impossible_stack_is_an_error() {
    // Far beyond any 64-bit user address space: mmap refuses it without a child process.
    let mut pool = StackPool::new(1 << 62, 1);
    assert!(pool.allocate().is_err());
    assert_eq!(pool.idle(), 0);
}

// ---------------------------------------------------------------------------------------------
// Moving a suspended coroutine.

#[test]
fn a_suspended_coroutine_can_be_moved() {
    // Dispatchers keep coroutines in growable tables: a suspended `Coro` moves in memory.
    let mut pool = pool();
    let steps = Rc::new(Cell::new(0));
    let co = {
        let steps = steps.clone();
        Coro::new(pool.allocate().unwrap(), 11, "moved", move || {
            for _ in 0..5 {
                assert_eq!(current(), Some(11));
                steps.set(steps.get() + 1);
                suspend().unwrap();
            }
        })
    };
    let mut table: Vec<Coro> = Vec::with_capacity(1);
    table.push(co);
    for round in 0..5 {
        assert!(matches!(table[0].resume(), Resumed::Suspended));
        // Move it: into a bigger table, then into a box and back.
        let mut bigger: Vec<Coro> = Vec::with_capacity(table.capacity() * 2 + round);
        bigger.append(&mut table);
        let boxed = Box::new(bigger.pop().unwrap());
        table = bigger;
        table.push(*boxed);
    }
    assert!(matches!(table[0].resume(), Resumed::Finished));
    assert_eq!(steps.get(), 5);
}

// ---------------------------------------------------------------------------------------------
// Regressions: resuming a finished coroutine, and suspending during a panic's unwind.

/// Resuming a finished coroutine panics in the caller (it must not come back as
/// `Resumed::Panicked`, which a dispatcher would report as a panic of the handler).
#[test]
#[should_panic(expected = "finished coroutine")]
fn resuming_a_finished_coroutine_panics() {
    let mut pool = pool();
    let mut co = Coro::new(pool.allocate().unwrap(), 1, "done", || {});
    assert!(matches!(co.resume(), Resumed::Finished));
    let r = co.resume();
    // Not reached when `resume` panics as documented.
    drop(r);
}

/// A destructor running while the coroutine unwinds from an ordinary panic may not suspend:
/// the coroutine would sit suspended in the middle of a panic, and dropping it later would
/// abort the process ("panic in a destructor during cleanup").
#[test]
fn suspend_while_the_coroutine_panics_is_refused() {
    struct SuspendsOnDrop(Rc<Cell<Option<Result<(), SuspendError>>>>);
    impl Drop for SuspendsOnDrop {
        fn drop(&mut self) {
            self.0.set(Some(suspend()));
        }
    }
    let mut pool = pool();
    let result = Rc::new(Cell::new(None));
    let mut co = {
        let result = result.clone();
        Coro::new(pool.allocate().unwrap(), 1, "panics", move || {
            let _guard = SuspendsOnDrop(result);
            panic!("expected by the test");
        })
    };
    let first = co.resume();
    let resumer_saw_panicking = std::thread::panicking();
    // Finish it before asserting: dropping it while suspended mid-panic would abort.
    let mut outcome = first;
    for _ in 0..MAX_RESUMES {
        if !matches!(outcome, Resumed::Suspended) {
            break;
        }
        outcome = co.resume();
    }
    assert!(matches!(outcome, Resumed::Panicked(_)), "{outcome:?}");
    assert!(
        !resumer_saw_panicking,
        "the coroutine's panic leaked into the resumer"
    );
    assert_eq!(result.get(), Some(Err(SuspendError::Unwinding)));
}

// ---------------------------------------------------------------------------------------------
// Closures of any size.

/// A closure capturing `N` bytes: runs, sees every byte, and drops what it captured once, run
/// or not.
fn run_closure_of<const N: usize>(pool: &mut StackPool) {
    let sum = Rc::new(Cell::new(0u64));
    let drops = Rc::new(Cell::new(0));
    for run in [true, false] {
        let mut bytes = [0u8; N];
        bytes.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let (s, guard) = (sum.clone(), DropCounter(drops.clone()));
        let mut co = Coro::new(pool.allocate().expect("stack"), 1, "big", move || {
            let _guard = guard;
            s.set(s.get() + bytes.iter().map(|&b| u64::from(b)).sum::<u64>());
        });
        if run {
            assert_eq!(run_to_end(&mut co), 0);
        }
        drop(co);
    }
    let expected: u64 = (0..N).map(|i| u64::from(i as u8)).sum();
    assert_eq!(sum.get(), expected, "{N} bytes");
    assert_eq!(drops.get(), 2, "{N} bytes");
}

#[test]
fn closures_of_any_size_run_inline_or_boxed() {
    let mut pool = pool();
    run_closure_of::<{ copas_coro::INLINE_BODY - 16 }>(&mut pool);
    run_closure_of::<{ copas_coro::INLINE_BODY }>(&mut pool);
    run_closure_of::<{ copas_coro::INLINE_BODY + 1 }>(&mut pool);
    run_closure_of::<1024>(&mut pool);
    run_closure_of::<4096>(&mut pool);
    run_closure_of::<{ 32 * 1024 }>(&mut pool);
}
