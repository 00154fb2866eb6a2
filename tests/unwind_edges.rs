//! The dispatcher's edges where a coroutine's stack is being unwound: calls made from a
//! destructor on a coroutine removed by another one, and waits refused because the thread is
//! panicking (a destructor running during a panic that the coroutine itself catches). Such a
//! call must leave the dispatcher's bookkeeping as if it had not been made: no coroutine
//! orphaned, no stale ready entry, no stale waiter.
//!
//! Every test runs on its own thread, so it has its own dispatcher. Every loop is bounded
//! in count and in time (a `Watchdog`), and timing assertions use generous bounds.

mod util;

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::ErrorKind;
use util::ms;
use util::Watchdog;

/// Longest any single loop in these tests may run before the watchdog fails the test.
const LIMIT: Duration = Duration::from_secs(30);

/// Counts how many times it is dropped: shows that a coroutine's stack was unwound.
struct DropGuard(Rc<Cell<u32>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// Calls `cancelall` when dropped, as a clean-up on a coroutine's stack may.
struct CancelAllOnDrop;

impl Drop for CancelAllOnDrop {
    fn drop(&mut self) {
        copas::cancelall();
    }
}

/// Coroutine A removes B; B's stack unwinds inside A's `removethread`, and a destructor
/// there calls `cancelall`. A is running (the dispatcher holds its coroutine in the resume
/// call), so like a coroutine that calls `cancelall` itself it keeps its entry, cancelled:
/// it goes on until its next wait, where it is dropped. Orphaned, it would run with no
/// entry, every wait ending at once, and a retry loop in it would spin the thread.
#[test]
fn cancelall_from_a_removed_coroutines_destructor_keeps_the_caller_running() {
    let victim = copas::addthread(|| {
        let _cancel = CancelAllOnDrop;
        copas::pauseforever();
    })
    .expect("addthread");
    let known_after = Rc::new(Cell::new(None));
    let pause_returned = Rc::new(Cell::new(None));
    let spins = Rc::new(Cell::new(0u32));
    let unwound = Rc::new(Cell::new(0u32));
    {
        let (known_after, pause_returned) = (known_after.clone(), pause_returned.clone());
        let (spins, unwound) = (spins.clone(), unwound.clone());
        copas::addthread(move || {
            let _guard = DropGuard(unwound);
            copas::pause(ms(5));
            assert!(copas::removethread(victim), "removethread");
            known_after.set(Some(copas::current().is_some()));
            pause_returned.set(Some(copas::pause(ms(50))));
            // A retry loop such as a handler may have, bounded here.
            let start = Instant::now();
            while copas::pause(ms(10)) < ms(10) && start.elapsed() < ms(300) {
                spins.set(spins.get() + 1);
            }
        })
        .expect("addthread");
    }
    let _dog = Watchdog::new("run", LIMIT);
    let start = Instant::now();
    copas::run().expect("run");
    let took = start.elapsed();
    assert_eq!(
        (known_after.get(), pause_returned.get(), spins.get()),
        (Some(true), None, 0),
        "(the remover still known after removethread, what its next pause returned, \
         how often its retry loop spun): it must keep its entry and be dropped at its next wait"
    );
    assert_eq!(unwound.get(), 1, "the remover's stack was not unwound once");
    assert_eq!(copas::status().coroutines, 0, "an entry was left behind");
    assert!(copas::finished(), "the loop has work left after cancelall");
    assert!(took < ms(10_000), "run took {took:?}");
}

/// As above, with a remover that does not wait again: it runs to its end, and its entry goes
/// with it, leaving the dispatcher empty and usable.
#[test]
fn cancelall_from_a_removed_coroutines_destructor_lets_the_caller_finish() {
    let victim = copas::addthread(|| {
        let _cancel = CancelAllOnDrop;
        copas::pauseforever();
    })
    .expect("addthread");
    let known_after = Rc::new(Cell::new(None));
    let finished = Rc::new(Cell::new(false));
    {
        let (known_after, finished) = (known_after.clone(), finished.clone());
        copas::addthread(move || {
            copas::pause(ms(5));
            assert!(copas::removethread(victim), "removethread");
            known_after.set(Some(copas::current().is_some()));
            finished.set(true);
        })
        .expect("addthread");
    }
    let _dog = Watchdog::new("run", LIMIT);
    copas::run().expect("run");
    assert_eq!(known_after.get(), Some(true), "the remover lost its entry");
    assert!(finished.get(), "the remover did not run to its end");
    assert_eq!(copas::status().coroutines, 0, "an entry was left behind");
    // The dispatcher is usable afterwards: a new coroutine's pause sleeps its delay.
    let slept = Rc::new(Cell::new(Duration::ZERO));
    {
        let slept = slept.clone();
        copas::addthread(move || slept.set(copas::pause(ms(20)))).expect("addthread");
    }
    copas::run().expect("second run");
    assert!(
        slept.get() >= ms(20),
        "a later pause(20ms) returned after {:?}",
        slept.get()
    );
}

/// The run phase a coroutine was resumed in, for each time it was: the step counts up.
#[derive(Clone, Default)]
struct Resumes {
    step: Rc<Cell<u32>>,
    seen: Rc<RefCell<Vec<u32>>>,
}

impl Resumes {
    fn record(&self) {
        self.seen.borrow_mut().push(self.step.get());
    }

    /// Steps the dispatcher `n` times (none of them waits), numbering them.
    fn step(&self, n: u32) {
        let _dog = Watchdog::new("steps", LIMIT);
        for step in 0..n {
            self.step.set(step);
            copas::step(Some(Duration::ZERO)).expect("step");
        }
    }

    fn seen(&self) -> Vec<u32> {
        self.seen.borrow().clone()
    }
}

/// `pause(0)` in a destructor during a panic the coroutine catches cannot suspend (the
/// thread is panicking); it must not leave the coroutine queued to run either, or once it
/// yields for real it is resumed twice in one step.
#[test]
fn a_refused_pause_zero_does_not_resume_the_coroutine_twice_in_a_step() {
    struct PauseOnDrop;
    impl Drop for PauseOnDrop {
        fn drop(&mut self) {
            assert_eq!(copas::pause(Duration::ZERO), Duration::ZERO);
        }
    }
    let resumes = Resumes::default();
    let caught = Rc::new(Cell::new(false));
    {
        let (resumes, caught) = (resumes.clone(), caught.clone());
        copas::addthread(move || {
            let outcome = catch_unwind(|| {
                let _pause = PauseOnDrop;
                panic!("deliberate panic, caught by the coroutine");
            });
            caught.set(outcome.is_err());
            for _ in 0..4 {
                resumes.record();
                copas::pause(Duration::ZERO);
            }
        })
        .expect("addthread");
    }
    resumes.step(8);
    assert!(caught.get(), "the coroutine did not catch its panic");
    assert_eq!(
        resumes.seen(),
        [0, 1, 2, 3],
        "the run phase of each resume: once per step"
    );
}

/// The same through the net layer: a socket operation that spends the coroutine's I/O budget
/// yields with `pause(0)`, refused in such a destructor each time.
#[test]
fn a_refused_io_budget_yield_does_not_resume_the_coroutine_twice_in_a_step() {
    /// Receives what it was told to in its destructor (enough to pass the I/O budget, 128).
    struct ReceiveOnDrop<'a>(&'a copas::UdpSocket, usize, &'a Cell<usize>);
    impl Drop for ReceiveOnDrop<'_> {
        fn drop(&mut self) {
            for _ in 0..self.1 {
                if self.0.receive(16).is_ok() {
                    self.2.set(self.2.get() + 1);
                }
            }
        }
    }
    const DATAGRAMS: usize = 140;
    let resumes = Resumes::default();
    let received = Rc::new(Cell::new(0usize));
    {
        let (resumes, received) = (resumes.clone(), received.clone());
        copas::addthread(move || {
            let udp = copas::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let addr = udp.local_addr().expect("local_addr");
            for _ in 0..DATAGRAMS {
                udp.sendto(b"x", addr).expect("sendto");
            }
            // The sends spend the budget too (they yield once); a yield now gives the
            // receives a fresh one.
            copas::pause(Duration::ZERO);
            let got = Cell::new(0);
            let _ = catch_unwind(AssertUnwindSafe(|| {
                let _receive = ReceiveOnDrop(&udp, DATAGRAMS, &got);
                panic!("deliberate panic, caught by the coroutine");
            }));
            received.set(got.get());
            for _ in 0..4 {
                resumes.record();
                copas::pause(Duration::ZERO);
            }
        })
        .expect("addthread");
    }
    resumes.step(10);
    assert_eq!(
        received.get(),
        DATAGRAMS,
        "the destructor's receives did not all complete without waiting"
    );
    let seen = resumes.seen();
    let apart: Vec<u32> = seen.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        apart,
        [1, 1, 1],
        "steps between the resumes (resumed in the run phases {seen:?}): once per step"
    );
}

/// `waitforexit` in a destructor during a panic the coroutine catches cannot wait; it fails
/// as cancelled, and must not leave the coroutine among the exit's waiters, or a later
/// `exit` ends whatever wait the coroutine is in then.
#[test]
fn a_refused_waitforexit_leaves_no_waiter_for_a_later_exit_to_wake() {
    struct WaitForExitOnDrop(Rc<Cell<Option<Result<(), ErrorKind>>>>);
    impl Drop for WaitForExitOnDrop {
        fn drop(&mut self) {
            self.0.set(Some(copas::waitforexit().map_err(|e| e.kind())));
        }
    }
    let refused = Rc::new(Cell::new(None));
    let slept = Rc::new(Cell::new(None));
    {
        let (refused, slept) = (refused.clone(), slept.clone());
        copas::addthread(move || {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                let _wait = WaitForExitOnDrop(refused);
                panic!("deliberate panic, caught by the coroutine");
            }));
            slept.set(Some(copas::pause(ms(500))));
        })
        .expect("addthread");
    }
    let exited = Rc::new(Cell::new(false));
    {
        let exited = exited.clone();
        copas::addthread(move || {
            copas::pause(ms(50));
            copas::exit();
            exited.set(true);
        })
        .expect("addthread");
    }
    let _dog = Watchdog::new("run", LIMIT);
    copas::run().expect("run");
    assert_eq!(
        refused.get(),
        Some(Err(ErrorKind::Cancelled)),
        "waitforexit during a panic"
    );
    assert!(exited.get(), "exit was not called");
    let slept = slept.get().expect("the pause did not return");
    assert!(
        slept >= ms(500),
        "exit woke the coroutine out of its pause(500ms) after {slept:?}"
    );
}
