//! Port of Copas's `errhandlers.lua` and `timeout_errors.lua`, with panics in the place of
//! Lua errors: what the error handlers receive, which handler is called, and that nothing a
//! handler or a coroutine does breaks the loop.
//!
//! Every test runs on its own thread, so it has its own dispatcher and its own default
//! handler (Copas's tests reload the module for that).

mod util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use copas::{ErrorKind, Pattern, ServerOptions};
use util::ms;
use util::Watchdog;

/// Longest any single loop in these tests may run before the watchdog fails the test.
const LIMIT: Duration = Duration::from_secs(30);

/// What an error handler was told.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    message: String,
    thread: String,
    socket: Option<String>,
    display: String,
    has_coroutine: bool,
}

impl Seen {
    fn of(report: &copas::PanicReport) -> Seen {
        Seen {
            message: report.message().to_string(),
            thread: report.thread_name().to_string(),
            socket: report.socket_name().map(str::to_string),
            display: report.to_string(),
            has_coroutine: report.coroutine().is_some(),
        }
    }
}

type Reports = Rc<RefCell<Vec<Seen>>>;

/// The outcome of a copas call, reduced to its error kind.
type Outcome<T> = Result<T, ErrorKind>;

/// Sets a default handler that records every report.
fn record_default() -> Reports {
    let seen: Reports = Rc::default();
    let rec = seen.clone();
    copas::setdefaulterrorhandler(move |report| rec.borrow_mut().push(Seen::of(report)));
    seen
}

fn nested_panic() {
    fn f() {
        panic!("hi there!");
    }
    f();
}

// ----- errhandlers.lua --------------------------------------------------------------------

#[test]
fn default_handler_reports_an_initializer_panic_in_copas_format() {
    let seen = record_default();
    {
        let _dog = Watchdog::new("run_with", LIMIT);
        copas::run_with(nested_panic).expect("run_with");
    }
    assert_eq!(
        *seen.borrow(),
        [Seen {
            message: "hi there!".into(),
            thread: "copas_initializer".into(),
            socket: None,
            display: "hi there! (coroutine: copas_initializer, socket: nil)".into(),
            has_coroutine: true,
        }]
    );
}

const STDERR_CHILD: &str = "COPAS_TEST_ERRHANDLERS_STDERR_CHILD";

/// The built-in default handler (nothing set) prints the report on standard error; runs in
/// a child process to capture it.
#[test]
fn builtin_default_handler_prints_the_report_on_stderr() {
    if util::is_child(STDERR_CHILD) {
        let _dog = Watchdog::new("run_with", LIMIT);
        copas::run_with(nested_panic).expect("run_with");
        return;
    }
    let out = util::assert_child_passes(
        "builtin_default_handler_prints_the_report_on_stderr",
        STDERR_CHILD,
        "1 passed",
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l == "copas: hi there! (coroutine: copas_initializer, socket: nil)"),
        "report missing from stderr:\n{stderr}"
    );
}

#[test]
fn per_thread_handler_is_called_exactly_once() {
    let calls = Rc::new(Cell::new(0u32));
    let thread_name: Rc<RefCell<Option<String>>> = Rc::default();
    let handler_was_default: Rc<RefCell<Vec<bool>>> = Rc::default();
    let default = copas::geterrorhandler(None);
    {
        let (calls, thread_name, was_default) = (
            calls.clone(),
            thread_name.clone(),
            handler_was_default.clone(),
        );
        let _dog = Watchdog::new("run_with", LIMIT);
        copas::run_with(move || {
            was_default
                .borrow_mut()
                .push(Rc::ptr_eq(&copas::geterrorhandler(None), &default));
            copas::seterrorhandler(move |report| {
                calls.set(calls.get() + 1);
                *thread_name.borrow_mut() = Some(report.thread_name().to_string());
            });
            was_default
                .borrow_mut()
                .push(Rc::ptr_eq(&copas::geterrorhandler(None), &default));
            panic!("end of the world!");
        })
        .expect("run_with");
    }
    assert_eq!(calls.get(), 1);
    assert_eq!(thread_name.borrow().as_deref(), Some("copas_initializer"));
    assert_eq!(
        *handler_was_default.borrow(),
        [true, false],
        "geterrorhandler gives the default, then the coroutine's own"
    );
}

#[test]
fn default_handler_set_before_run_is_called() {
    let calls = Rc::new(Cell::new(0i32));
    let c = calls.clone();
    copas::setdefaulterrorhandler(move |_| c.set(c.get() + 10));
    {
        let _dog = Watchdog::new("run_with", LIMIT);
        copas::run_with(|| panic!("end of the world!")).expect("run_with");
    }
    assert_eq!(calls.get(), 10);
}

#[test]
fn seterrorhandler_outside_a_coroutine_sets_the_default() {
    let calls = Rc::new(Cell::new(0u32));
    let c = calls.clone();
    copas::seterrorhandler(move |_| c.set(c.get() + 1));
    copas::addthread(|| panic!("one")).expect("addthread");
    copas::addthread(|| panic!("two")).expect("addthread");
    util::run_bounded(LIMIT);
    assert_eq!(calls.get(), 2, "both coroutines fall back to the default");
}

#[test]
fn per_thread_handler_overrides_the_default() {
    let calls = Rc::new(Cell::new(0i32));
    let c = calls.clone();
    copas::setdefaulterrorhandler(move |_| c.set(c.get() + 10));
    let c = calls.clone();
    {
        let _dog = Watchdog::new("run_with", LIMIT);
        copas::run_with(move || {
            copas::seterrorhandler(move |_| c.set(c.get() + 1));
            panic!("end of the world!");
        })
        .expect("run_with");
    }
    assert_eq!(calls.get(), 1, "only the coroutine's own handler runs");
}

#[test]
fn timeout_callback_panic_goes_to_the_default_handler_as_copas_core_timer() {
    let seen = record_default();
    let own_calls = Rc::new(Cell::new(0u32));
    let continued: Rc<Cell<Option<Duration>>> = Rc::default();
    {
        let (own_calls, continued) = (own_calls.clone(), continued.clone());
        let _dog = Watchdog::new("run_with", LIMIT);
        copas::run_with(move || {
            // The coroutine's own handler is not the callback's: it must not be called.
            copas::seterrorhandler(move |_| own_calls.set(own_calls.get() + 1));
            copas::timeout(ms(50), |_co| nested_panic()).expect("timeout");
            continued.set(Some(copas::pause(ms(300))));
        })
        .expect("run_with");
    }
    assert_eq!(
        *seen.borrow(),
        [Seen {
            message: "hi there!".into(),
            thread: "copas_core_timer".into(),
            socket: None,
            display: "hi there! (coroutine: copas_core_timer, socket: nil)".into(),
            has_coroutine: false,
        }]
    );
    assert_eq!(own_calls.get(), 0);
    let slept = continued
        .get()
        .expect("the coroutine went on after the callback's panic");
    assert!(slept >= ms(300), "{slept:?}");
}

#[test]
fn a_panicking_handler_does_not_break_the_loop() {
    let calls = Rc::new(Cell::new(0u32));
    let c = calls.clone();
    copas::setdefaulterrorhandler(move |report| {
        c.set(c.get() + 1);
        panic!("the handler fails too ({})", report.message());
    });
    let survivor_done = Rc::new(Cell::new(false));
    copas::addthread(|| panic!("first")).expect("addthread");
    copas::addthread(|| {
        copas::pause(ms(50));
        panic!("second");
    })
    .expect("addthread");
    {
        let done = survivor_done.clone();
        copas::addthread(move || {
            copas::pause(ms(150));
            done.set(true);
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    assert_eq!(calls.get(), 2, "the handler is called for each panic");
    assert!(survivor_done.get(), "the loop stopped serving the others");
    assert!(copas::finished());
}

#[test]
fn server_handler_panic_names_socket_and_handler_and_closes_the_connection() {
    let seen = record_default();
    let (listener, addr) = util::local_listener();
    let server = copas::addserver_with(
        listener,
        ServerOptions::new().name("myserver"),
        |mut sock| {
            let line = sock.receive(Pattern::Line).expect("receive");
            if line == b"boom" {
                panic!("boom received");
            }
            sock.send(&[&line[..], b"\n"].concat()).expect("send");
        },
    )
    .expect("addserver");
    let results: Rc<RefCell<Vec<Outcome<Vec<u8>>>>> = Rc::default();
    {
        let results = results.clone();
        copas::addthread(move || {
            let limit = Some(Duration::from_secs(5));
            let mut first = copas::connect(addr, limit).expect("connect 1");
            first.settimeout(limit);
            first.send(b"boom\n").expect("send boom");
            // The handler panicked after reading the line: the connection is closed.
            results
                .borrow_mut()
                .push(first.receive(Pattern::All).map_err(|e| e.kind()));
            // The server still serves.
            let mut second = copas::connect(addr, limit).expect("connect 2");
            second.settimeout(limit);
            second.send(b"ping\n").expect("send ping");
            results
                .borrow_mut()
                .push(second.receive(Pattern::Line).map_err(|e| e.kind()));
            copas::removeserver(server, false).expect("removeserver");
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    assert_eq!(
        *seen.borrow(),
        [Seen {
            message: "boom received".into(),
            thread: "myserver:handler_1".into(),
            socket: Some("myserver:client_1".into()),
            display: "boom received (coroutine: myserver:handler_1, socket: myserver:client_1)"
                .into(),
            has_coroutine: true,
        }]
    );
    assert_eq!(
        *results.borrow(),
        [Ok(Vec::new()), Ok(b"ping".to_vec())],
        "the client of the panicked handler must see end of stream"
    );
    assert_eq!(copas::status().sockets, 0);
}

// ----- the Rust form of errhandlers.lua's raw `coroutine.yield` case ------------------------

/// A local whose destructor asks the dispatcher something, as logging or metrics guards do.
struct StatusOnDrop(Rc<Cell<Option<usize>>>);

impl Drop for StatusOnDrop {
    fn drop(&mut self) {
        self.0.set(Some(copas::status().coroutines));
    }
}

const RAW_SUSPEND_CHILD: &str = "COPAS_TEST_ERRHANDLERS_RAW_SUSPEND_CHILD";

/// Copas reports a raw `coroutine.yield()` in a thread through the error handler and
/// abandons the thread. Here: `copas_coro::suspend` called directly. Runs in a child
/// process, because a failure in the unwinding of such a coroutine aborts the process.
#[test]
fn raw_suspend_is_reported_and_the_coroutine_unwound() {
    if !util::is_child(RAW_SUSPEND_CHILD) {
        util::assert_child_passes(
            "raw_suspend_is_reported_and_the_coroutine_unwound",
            RAW_SUSPEND_CHILD,
            "1 passed",
            Duration::from_secs(60),
        );
        return;
    }
    let seen = record_default();
    let dropped: Rc<Cell<Option<usize>>> = Rc::default();
    let resumed = Rc::new(Cell::new(false));
    {
        let (dropped, resumed) = (dropped.clone(), resumed.clone());
        copas::addthread(move || {
            let _guard = StatusOnDrop(dropped);
            let _ = copas_coro::suspend();
            resumed.set(true);
        })
        .expect("addthread");
    }
    util::run_bounded(LIMIT);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].message.contains("suspended outside a copas call"),
        "{seen:?}"
    );
    assert!(
        !resumed.get(),
        "the coroutine was resumed after a raw suspend"
    );
    assert!(dropped.get().is_some(), "its locals were not dropped");
}

/// A coroutine that catches its cancellation and panics anew: the panic goes to the default
/// error handler (the coroutine's own went with it), never out of `run` or `removethread`,
/// and the dispatcher stays usable. It escaped `run` and left it marked as running, so
/// every later `step` or `run` failed with `InvalidState`.
#[test]
fn a_panic_raised_while_a_removed_coroutine_unwinds_goes_to_the_default_handler() {
    fn stubborn(message: &'static str) -> copas::Coroutine {
        copas::addthread(move || {
            let caught = std::panic::catch_unwind(|| copas::pause(Duration::from_secs(20)));
            if caught.is_err() {
                util::unwind_quietly(message.to_string());
            }
        })
        .expect("addthread")
    }
    let seen = record_default();
    let _dog = Watchdog::new("panic while unwinding", LIMIT);
    // Removed by another coroutine: unwound in the loop.
    let first = stubborn("refused in the loop");
    copas::addthread(move || {
        copas::pause(ms(10));
        assert!(copas::removethread(first));
    })
    .expect("addthread");
    let outcome = std::panic::catch_unwind(copas::run);
    assert!(matches!(outcome, Ok(Ok(()))), "run: {outcome:?}");
    assert!(!copas::running());
    // Removed from outside any coroutine: unwound by `removethread` itself.
    let second = stubborn("refused outside");
    copas::step(Some(ms(10))).expect("step");
    let removed = std::panic::catch_unwind(|| copas::removethread(second));
    assert!(matches!(removed, Ok(true)), "removethread: {removed:?}");
    assert_eq!(util::kind(copas::step(Some(ms(1)))), Ok(false));
    let messages: Vec<(String, bool)> = seen
        .borrow()
        .iter()
        .map(|s| (s.message.clone(), s.has_coroutine))
        .collect();
    assert_eq!(
        messages,
        [
            ("refused in the loop".to_string(), false),
            ("refused outside".to_string(), false)
        ]
    );
}

/// A panic payload whose destructor panics in turn (a payload may be any value).
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            std::panic::resume_unwind(Box::new("the payload's destructor panicked"));
        }
    }
}

/// Copas: errors never leave the loop. A coroutine's panic whose payload panics when it is
/// dropped reaches its handler once, and neither that second panic escapes `run` nor do the
/// other coroutines stop; before, `run` itself panicked with it.
#[test]
fn a_panic_payload_whose_destructor_panics_does_not_escape_run() {
    let _dog = Watchdog::new("payload panicking when dropped", LIMIT);
    let seen = Rc::new(RefCell::new(Vec::<String>::new()));
    let record = seen.clone();
    copas::setdefaulterrorhandler(move |r| record.borrow_mut().push(r.to_string()));
    let after = Rc::new(Cell::new(false));
    let a = after.clone();
    copas::addthread(|| std::panic::resume_unwind(Box::new(PanicsWhenDropped))).expect("addthread");
    copas::addthread(move || {
        copas::pause(ms(20));
        a.set(true);
    })
    .expect("addthread");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(copas::run));
    assert!(matches!(outcome, Ok(Ok(()))), "run panicked or failed");
    assert!(after.get(), "the other coroutine did not run to its end");
    assert_eq!(seen.borrow().len(), 1, "{:?}", seen.borrow());
}

/// A coroutine that ends with a `timeout` still armed, or with its own error handler set,
/// leaves those closures to the dispatcher to drop; a panic in their captures' destructors
/// goes to the default error handler, and `run` goes on (it unwound out of `run`). The same
/// for a coroutine removed while waiting.
#[test]
fn a_panic_dropping_a_coroutines_timeout_callback_or_error_handler_stays_in_the_loop() {
    let _dog = util::Watchdog::new("dropped callbacks", Duration::from_secs(30));
    let reports = util::record_panics();
    copas::addthread(|| {
        let guard = PanicsWhenDropped;
        copas::timeout(Duration::from_secs(10), move |_| {
            let _g = &guard;
        })
        .unwrap();
        copas::pause(Duration::from_millis(1));
    })
    .unwrap();
    copas::addthread(|| {
        let guard = PanicsWhenDropped;
        copas::seterrorhandler(move |_| {
            let _g = &guard;
        });
        copas::pause(Duration::from_millis(1));
    })
    .unwrap();
    let waiting = copas::addthread(|| {
        let guard = PanicsWhenDropped;
        copas::timeout(Duration::from_secs(10), move |_| {
            let _g = &guard;
        })
        .unwrap();
        copas::pauseforever();
    })
    .unwrap();
    copas::addthread(move || {
        copas::pause(Duration::from_millis(5));
        copas::removethread(waiting);
    })
    .unwrap();
    let outcome = std::panic::catch_unwind(copas::run);
    assert!(matches!(outcome, Ok(Ok(()))), "run did not end normally");
    assert_eq!(
        *reports.borrow(),
        ["the payload's destructor panicked"; 3],
        "each panic reported once"
    );
}
