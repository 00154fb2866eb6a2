//! Timeouts fired late: when the dispatcher's thread is held up between waiting for events
//! and firing expired timers (a coroutine that blocks the thread, or the process kept off
//! the CPU), a wait whose event arrived before its deadline is still served, not timed out.
//!
//! Found by the soak (`cargo bench --bench soak`): on a loaded machine the echo server
//! closed clients whose data had arrived well within its timeout.

mod util;

use std::cell::RefCell;
use std::io::Write;
use std::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::{ErrorKind, ServerOptions};

/// The receive timeout of the waiting connection.
const TIMEOUT: Duration = Duration::from_millis(300);

/// How long the blocking handler holds the thread: well past `TIMEOUT`.
const BLOCK: Duration = Duration::from_millis(900);

/// What the waiting handler's receive returned.
type Outcome = Rc<RefCell<Option<Result<Vec<u8>, ErrorKind>>>>;

#[test]
fn data_that_arrived_before_the_deadline_is_received_after_a_blocked_step() {
    let _dog = util::Watchdog::new("late timers", Duration::from_secs(30));
    // Connection A waits for data with a short timeout.
    let outcome: Outcome = Rc::default();
    let (listener, waiting_addr) = util::local_listener();
    {
        let outcome = outcome.clone();
        copas::addserver_with(
            listener,
            ServerOptions::new().name("waiting").timeout(TIMEOUT),
            move |mut sock| {
                *outcome.borrow_mut() = Some(sock.receivepartial(100).map_err(|e| e.kind()));
            },
        )
        .expect("addserver");
    }
    // Connection B's handler blocks the thread (it never yields) as soon as it is accepted,
    // which happens after the step's wait for events and before its timers fire.
    let (listener, blocking_addr) = util::local_listener();
    copas::addserver(listener, |_sock| std::thread::sleep(BLOCK)).expect("addserver");

    let mut a = TcpStream::connect(waiting_addr).expect("connect A");
    let reader_waits = util::step_until(Duration::from_secs(10), || copas::status().read >= 3);
    assert!(reader_waits, "A's handler never started waiting");
    let started = Instant::now();

    // B arrives; while its handler holds the thread, A's data arrives, within A's timeout.
    let sender = std::thread::spawn(move || {
        let b = TcpStream::connect(blocking_addr).expect("connect B");
        std::thread::sleep(TIMEOUT / 3);
        a.write_all(b"in time").expect("send on A");
        (a, b)
    });
    let done = util::step_until(Duration::from_secs(10), || outcome.borrow().is_some());
    let sent_after = started.elapsed();
    let (_a, _b) = sender.join().expect("sender");
    assert!(done, "A's handler never finished");
    assert_eq!(
        outcome.borrow_mut().take().expect("outcome"),
        Ok(b"in time".to_vec()),
        "A's data arrived {:?} into a {:?} timeout and should have been received",
        TIMEOUT / 3,
        TIMEOUT
    );
    assert!(sent_after >= BLOCK, "B's handler did not block the thread");
    copas::cancelall();
}
