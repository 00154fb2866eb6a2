//! copas reports through the `log` facade: a handler panic through the default error
//! handler is an error record naming the coroutine and socket, running out of descriptors
//! while accepting is a warning with the back-off; without a logger, panics still go to
//! standard error.
//!
//! The test logger captures records in memory, with the thread they came from (tests run
//! in parallel in one process, and `log` has one logger per process). The cases that need
//! a process without a logger, or that exhaust descriptors, run in a child process.

mod util;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

const NO_LOGGER_CHILD: &str = "COPAS_TEST_LOG_NO_LOGGER_CHILD";
const LOGGER_CHILD: &str = "COPAS_TEST_LOG_LOGGER_CHILD";
const EMFILE_CHILD: &str = "COPAS_TEST_LOG_EMFILE_CHILD";

/// One captured record.
#[derive(Debug, Clone)]
struct Captured {
    thread: ThreadId,
    level: Level,
    target: String,
    message: String,
}

/// Keeps every record.
struct CaptureLogger;

static RECORDS: Mutex<Vec<Captured>> = Mutex::new(Vec::new());
static LOGGER: CaptureLogger = CaptureLogger;

impl Log for CaptureLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let captured = Captured {
            thread: std::thread::current().id(),
            level: record.level(),
            target: record.target().to_string(),
            message: record.args().to_string(),
        };
        RECORDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(captured);
    }

    fn flush(&self) {}
}

/// Installs the capturing logger for this process (once), with every level enabled.
fn install_logger() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&LOGGER).expect("no other logger");
        log::set_max_level(LevelFilter::Trace);
    });
}

/// The records copas logged on this thread so far.
fn copas_records() -> Vec<Captured> {
    let me = std::thread::current().id();
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|r| r.thread == me && r.target.starts_with("copas"))
        .cloned()
        .collect()
}

#[test]
fn a_panicking_handler_is_logged_as_an_error_naming_its_coroutine_and_socket() {
    install_logger();
    let _dog = util::Watchdog::new("panic logging test", Duration::from_secs(60));
    let (listener, addr) = util::local_listener();
    copas::addserver_with(
        listener,
        copas::ServerOptions::new().name("logged"),
        |_sock| panic!("handler boom"),
    )
    .expect("addserver");
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(b"hello\n");
    });
    copas::addnamedthread("named-task", || panic!("task boom")).expect("addnamedthread");

    let expected = [
        "handler boom (coroutine: logged:handler_1, socket: logged:client_1)",
        "task boom (coroutine: named-task, socket: nil)",
    ];
    let logged = util::step_until(Duration::from_secs(20), || {
        let records = copas_records();
        expected
            .iter()
            .all(|m| records.iter().any(|r| r.message == *m))
    });
    client.join().expect("client");
    let records = copas_records();
    assert!(logged, "expected {expected:?}, got {records:?}");
    for message in expected {
        let record = records
            .iter()
            .find(|r| r.message == message)
            .expect("record");
        assert_eq!(record.level, Level::Error, "{record:?}");
        assert_eq!(record.target, "copas::dispatcher::report", "{record:?}");
    }
    // Tidy up this thread's dispatcher for the other tests of this thread (none by default).
    copas::cancelall();
}

#[test]
fn without_a_logger_the_default_error_handler_prints_to_stderr() {
    if util::is_child(NO_LOGGER_CHILD) {
        // No logger in this process: `log::max_level()` is `Off`.
        copas::addnamedthread("plain-task", || panic!("unlogged boom")).expect("addthread");
        util::run_bounded(Duration::from_secs(20));
        println!("NO-LOGGER-OK");
        return;
    }
    let out = util::assert_child_passes(
        "without_a_logger_the_default_error_handler_prints_to_stderr",
        NO_LOGGER_CHILD,
        "NO-LOGGER-OK",
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("copas: unlogged boom (coroutine: plain-task, socket: nil)"),
        "stderr: {stderr}"
    );
}

#[test]
fn with_a_logger_the_default_error_handler_does_not_also_print_to_stderr() {
    if util::is_child(LOGGER_CHILD) {
        install_logger();
        copas::addnamedthread("logged-task", || panic!("logged boom")).expect("addthread");
        util::run_bounded(Duration::from_secs(20));
        for r in copas_records() {
            println!("RECORD {} {}", r.level, r.message);
        }
        return;
    }
    let out = util::run_child(
        "with_a_logger_the_default_error_handler_does_not_also_print_to_stderr",
        LOGGER_CHILD,
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}): {stderr}",
        out.status
    );
    assert!(
        stdout.contains("RECORD ERROR logged boom (coroutine: logged-task, socket: nil)"),
        "stdout: {stdout}"
    );
    assert!(
        !stderr.contains("copas: logged boom"),
        "reported twice, also on stderr: {stderr}"
    );
}

#[test]
fn running_out_of_descriptors_while_accepting_is_logged_as_a_warning_with_the_back_off() {
    if util::is_child(EMFILE_CHILD) {
        return emfile_child();
    }
    util::assert_child_passes(
        "running_out_of_descriptors_while_accepting_is_logged_as_a_warning_with_the_back_off",
        EMFILE_CHILD,
        "LOG-EMFILE-OK",
        Duration::from_secs(60),
    );
}

/// Three clients connect while the process has no descriptor left; after 300 ms the
/// descriptors come back and they are served. The log tells the story: one warning with
/// the first back-off, the longer back-offs at debug level, and the recovery.
fn emfile_child() {
    install_logger();
    let _dog = util::Watchdog::new("emfile log child", Duration::from_secs(50));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let started = Rc::new(std::cell::Cell::new(0usize));
    {
        let started = started.clone();
        copas::addserver_with(
            listener,
            copas::ServerOptions::new().name("emfile"),
            move |_sock| started.set(started.get() + 1),
        )
        .expect("addserver");
    }
    // Connected before we run out (the kernel completes the handshake; accepting is what
    // needs a descriptor).
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut spare = Vec::new();
    loop {
        // SAFETY: dup of standard input; each copy is closed below.
        let fd = unsafe { libc::dup(0) };
        if fd < 0 {
            break;
        }
        spare.push(fd);
        assert!(spare.len() < 100_000, "no descriptor limit?");
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        copas::step(Some(Duration::from_millis(50))).expect("step");
    }
    assert_eq!(started.get(), 0, "a handler started without a descriptor");
    for fd in spare {
        // SAFETY: closes the copies made above, each once.
        unsafe { libc::close(fd) };
    }
    assert!(
        util::step_until(Duration::from_secs(10), || started.get() == 3),
        "not every client was accepted"
    );
    drop(clients);

    let records: Vec<Captured> = copas_records()
        .into_iter()
        .filter(|r| r.target == "copas::net::server")
        .collect();
    for r in &records {
        println!("RECORD {} {}", r.level, r.message);
    }
    let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
    let warnings: Vec<&Captured> = records.iter().filter(|r| r.level == Level::Warn).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning per back-off run: {records:?}"
    );
    assert_eq!(
        warnings[0].message,
        format!("emfile: accept failed: {emfile}; backing off 10ms")
    );
    // The following attempts, each backing off twice as long, are details.
    let later: Vec<&Captured> = records.iter().filter(|r| r.level == Level::Debug).collect();
    assert!(!later.is_empty(), "{records:?}");
    assert_eq!(
        later[0].message,
        format!("emfile: accept still failing: {emfile}; backing off 20ms")
    );
    assert!(later
        .iter()
        .all(|r| r.message.starts_with("emfile: accept still failing")));
    let last = records.last().expect("records");
    assert_eq!(
        (last.level, last.message.as_str()),
        (Level::Info, "emfile: accepting again after backing off")
    );
    println!("LOG-EMFILE-OK");
}
