//! Faults inside handlers: panics, stack overflow, no stack to be had (reliability
//! scenarios B.2 #7 and #8, and the stack-allocation findings of B.1).
//!
//! The tests of this file count the process's file descriptors and memory, so they take
//! turns (see [`serial`]). The death tests run their dangerous half in a child process.

mod util;

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use copas::{ErrorKind, Pattern, ServerOptions, Socket};

/// Every panic these tests cause on purpose carries this in its message, so the panic hook
/// can keep quiet about them (10,000 "thread panicked" lines help nobody).
const INTENTIONAL: &str = "intentional test panic";

/// Socket timeouts of the test clients: a read that waits this long failed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Limit for a child process or a phase of a test.
const ONE_MINUTE: Duration = Duration::from_secs(60);

/// The tests here measure process-wide things (descriptors, memory), so they take turns.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Silences the panic hook for the panics the tests cause on purpose; any other panic is
/// printed as usual.
fn quiet_intentional_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.contains(INTENTIONAL) {
                default_hook(info);
            }
        }));
    });
}

/// One error report as the error handler received it.
#[derive(Debug, Clone)]
struct Recorded {
    message: String,
    thread_name: String,
    socket_name: Option<String>,
}

/// What the recording error handler saw: a count, and the first few reports.
#[derive(Default)]
struct Reports {
    count: Cell<usize>,
    first: RefCell<Vec<Recorded>>,
}

/// Makes this thread's default error handler record reports instead of printing them.
fn record_reports() -> Rc<Reports> {
    let reports = Rc::new(Reports::default());
    let sink = reports.clone();
    copas::setdefaulterrorhandler(move |report| {
        sink.count.set(sink.count.get() + 1);
        let mut first = sink.first.borrow_mut();
        if first.len() < 8 {
            first.push(Recorded {
                message: report.message().to_string(),
                thread_name: report.thread_name().to_string(),
                socket_name: report.socket_name().map(str::to_string),
            });
        }
    });
    reports
}

/// Echoes lines; panics on a line starting with "boom"; ends on "quit".
fn boom_handler(mut sock: Socket) {
    while let Ok(line) = sock.receive(Pattern::Line) {
        if line.starts_with(b"boom") {
            panic!("{INTENTIONAL}: {}", String::from_utf8_lossy(&line));
        }
        if line == b"quit" {
            break;
        }
        let mut reply = line;
        reply.push(b'\n');
        if sock.send(&reply).is_err() {
            break;
        }
    }
}

/// A blocking client connection with a line reader.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        let reader = stream.try_clone().map_err(|e| format!("try_clone: {e}"))?;
        Ok(Client {
            writer: stream,
            reader: BufReader::new(reader),
        })
    }

    fn send(&mut self, data: &str) -> Result<(), String> {
        self.writer
            .write_all(data.as_bytes())
            .map_err(|e| format!("send {data:?}: {e}"))
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        Ok(line)
    }

    /// Sends `line` and checks that it comes back.
    fn echo(&mut self, line: &str) -> Result<(), String> {
        self.send(&format!("{line}\n"))?;
        let reply = self.read_line()?;
        if reply == format!("{line}\n") {
            Ok(())
        } else {
            Err(format!("sent {line:?}, got {reply:?}"))
        }
    }

    /// Checks that the server closed the connection cleanly: end of stream, not a reset or
    /// a timeout, and no stray data.
    fn expect_eof(&mut self) -> Result<(), String> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(0) => Ok(()),
            Ok(_) => Err(format!(
                "expected end of stream, got {:?}",
                String::from_utf8_lossy(&rest)
            )),
            Err(e) => Err(format!("expected end of stream, got error: {e}")),
        }
    }
}

/// Steps the dispatcher until the client thread ends, then returns what it returned.
fn serve_until<T>(client: JoinHandle<T>, limit: Duration) -> T {
    let done = util::step_until(limit, || client.is_finished());
    assert!(done, "the client thread did not finish within {limit:?}");
    client.join().expect("client thread panicked")
}

/// VmRSS of this process in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn panicking_handler_does_not_stop_the_server() {
    let _serial = serial();
    let _dog = util::Watchdog::new("panicking_handler_does_not_stop_the_server", ONE_MINUTE);
    quiet_intentional_panics();
    util::make_dispatcher(); // the dispatcher's own descriptors are not a leak
    let fds_before = util::fd_count();
    let reports = record_reports();

    let (listener, addr) = util::local_listener();
    let server = copas::addserver_with(listener, ServerOptions::new().name("faulty"), boom_handler)
        .expect("addserver");

    let client = std::thread::spawn(move || -> Result<(), String> {
        let mut first = Client::connect(addr)?;
        first
            .echo("hello")
            .map_err(|e| format!("first client: {e}"))?;
        first.send("boom\n")?;
        first
            .expect_eof()
            .map_err(|e| format!("first client after boom: {e}"))?;
        let mut next = Client::connect(addr)?;
        next.echo("served again")
            .map_err(|e| format!("next client: {e}"))?;
        next.echo("and again")
            .map_err(|e| format!("next client: {e}"))?;
        next.send("quit\n")?;
        next.expect_eof()
            .map_err(|e| format!("next client after quit: {e}"))
    });
    let outcome = serve_until(client, Duration::from_secs(30));
    copas::removeserver(server, false).expect("removeserver");
    util::run_bounded(Duration::from_secs(10));
    outcome.expect("client");

    assert_eq!(
        reports.count.get(),
        1,
        "reports: {:?}",
        reports.first.borrow()
    );
    let report = reports.first.borrow()[0].clone();
    assert!(
        report.message.contains(INTENTIONAL) && report.message.contains("boom"),
        "the report carries the panic's message: {report:?}"
    );
    assert_eq!(report.thread_name, "faulty:handler_1");
    assert_eq!(report.socket_name.as_deref(), Some("faulty:client_1"));
    let status = copas::status();
    assert_eq!(status.coroutines, 0, "{status:?}");
    assert_eq!(status.sockets, 0, "{status:?}");
    assert_eq!(util::fd_count(), fds_before, "file descriptors leaked");
}

/// Connections whose handler panics, one after another.
const PANICS: usize = 10_000;

/// Connections made before memory is measured, so that one-time allocations (stack pool,
/// buffers, the poller's event list) are not counted as growth.
const WARM_UP: usize = 200;

/// How much the resident set may grow over [`PANICS`] panics.
const RSS_MARGIN_KIB: u64 = 32 * 1024;

/// Makes `count` connections in a row; each sends a "boom" line and must see the server
/// close the connection cleanly.
fn panic_clients(addr: SocketAddr, first: usize, count: usize) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        for i in first..first + count {
            let mut client = Client::connect(addr).map_err(|e| format!("client {i}: {e}"))?;
            client.send(&format!("boom {i}\n"))?;
            client
                .expect_eof()
                .map_err(|e| format!("client {i}: {e}"))?;
        }
        Ok(())
    })
}

#[test]
fn ten_thousand_panicking_handlers_in_a_row_keep_the_server_serving() {
    let _serial = serial();
    let _dog = util::Watchdog::new("ten_thousand_panicking_handlers", Duration::from_secs(120));
    quiet_intentional_panics();
    util::make_dispatcher();
    let fds_before = util::fd_count();
    let reports = record_reports();

    let (listener, addr) = util::local_listener();
    let server =
        copas::addserver_with(listener, ServerOptions::new().name("fragile"), boom_handler)
            .expect("addserver");

    serve_until(panic_clients(addr, 0, WARM_UP), ONE_MINUTE).expect("warm-up clients");
    let rss_before = rss_kib();
    let start = Instant::now();
    serve_until(
        panic_clients(addr, WARM_UP, PANICS),
        Duration::from_secs(100),
    )
    .expect("panicking clients");
    let took = start.elapsed();
    let rss_after = rss_kib();
    println!(
        "{PANICS} panicking handlers in {took:?} ({:.0} µs each); VmRSS {rss_before} KiB -> \
         {rss_after} KiB",
        took.as_secs_f64() * 1e6 / PANICS as f64
    );

    // The server still serves a well-behaved client.
    let normal = std::thread::spawn(move || -> Result<(), String> {
        let mut client = Client::connect(addr)?;
        client.echo("still serving")?;
        client.send("quit\n")?;
        client.expect_eof()
    });
    serve_until(normal, ONE_MINUTE).expect("a normal client after the panics");
    copas::removeserver(server, false).expect("removeserver");
    util::run_bounded(Duration::from_secs(10));

    assert_eq!(
        reports.count.get(),
        WARM_UP + PANICS,
        "one report per panic; first: {:?}",
        reports.first.borrow()
    );
    let status = copas::status();
    assert_eq!(status.coroutines, 0, "{status:?}");
    assert_eq!(status.sockets, 0, "{status:?}");
    assert_eq!(util::fd_count(), fds_before, "file descriptors leaked");
    assert!(
        rss_after <= rss_before + RSS_MARGIN_KIB,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB over {PANICS} panics"
    );
    assert!(
        took < Duration::from_secs(30),
        "{PANICS} panicking handlers took {took:?}"
    );
}

/// Recurses until the stack runs out: each level keeps a 1 KiB array alive on the stack.
#[inline(never)]
fn recurse_without_bound(depth: u64) -> u64 {
    let mut frame = [0u8; 1024];
    frame[(depth % 1024) as usize] = depth as u8;
    let frame = std::hint::black_box(frame);
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse_without_bound(depth + 1).wrapping_add(u64::from(frame[(depth % 7) as usize]))
}

const OVERFLOW_CHILD: &str = "COPAS_TEST_OVERFLOW_CHILD";

#[test]
fn handler_overflowing_its_stack_ends_the_process_with_a_message_naming_it() {
    if util::is_child(OVERFLOW_CHILD) {
        // The child: a server whose first handler overflows its stack. It must die.
        let _dog = util::Watchdog::new("the overflowing child", Duration::from_secs(30));
        let (listener, addr) = util::local_listener();
        copas::addserver_with(listener, ServerOptions::new().name("deep"), |mut sock| {
            let _ = sock.receive(Pattern::Line);
            let depth = recurse_without_bound(0);
            eprintln!("survived a recursion of {depth} levels");
        })
        .expect("addserver");
        let _client = std::thread::spawn(move || {
            if let Ok(mut stream) = TcpStream::connect(addr) {
                let _ = stream.write_all(b"go deep\n");
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink);
            }
        });
        let _ = copas::run();
        eprintln!("the dispatcher returned although its handler overflowed");
        return;
    }

    let _serial = serial();
    let out = util::run_child(
        "handler_overflowing_its_stack_ends_the_process_with_a_message_naming_it",
        OVERFLOW_CHILD,
        ONE_MINUTE,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "the child must abort; status {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("coroutine 'deep:handler_1' has overflowed its stack"),
        "stderr names the coroutine:\n{stderr}"
    );
}

const NO_STACK_CHILD: &str = "COPAS_TEST_NO_STACK_CHILD";

/// Address space this process uses now, in bytes.
fn vm_size_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize in /proc/self/status");
    kib * 1024
}

/// The child of `stack_allocation_failure_refuses_the_task_with_an_error`: under a tight
/// address-space limit, coroutines with 1 GiB stacks cannot be created.
fn no_stack_child() {
    let _dog = util::Watchdog::new("the no-stack child", Duration::from_secs(30));
    util::make_dispatcher();
    // Leave 512 MiB of address space: plenty for this test, not enough for one stack.
    let limit = vm_size_bytes() + 512 * 1024 * 1024;
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit; lowering a limit is always allowed.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    copas::set_stack_size(1 << 30);

    // addthread: an error, not a panic, not a hang.
    match copas::addthread(|| unreachable!("a coroutine without a stack ran")) {
        Ok(co) => println!("UNEXPECTED addthread succeeded: {co:?}"),
        Err(e) => println!("MARKER addthread refused: kind={:?}: {e}", e.kind()),
    }
    let status = copas::status();
    println!("MARKER coroutines after refusal: {}", status.coroutines);

    // A server sheds the connection it cannot give a handler to, and goes on.
    let (listener, addr) = util::local_listener();
    let server = copas::addserver(listener, |_sock| {
        unreachable!("a handler without a stack ran")
    })
    .expect("addserver");
    let client = std::thread::spawn(move || -> Result<(), String> {
        let mut client = Client::connect(addr)?;
        client.expect_eof()
    });
    match serve_until(client, Duration::from_secs(20)) {
        Ok(()) => println!("MARKER connection shed"),
        Err(e) => println!("UNEXPECTED client: {e}"),
    }
    copas::removeserver(server, false).expect("removeserver");

    // With a stack that fits, coroutines work again.
    copas::set_stack_size(64 * 1024);
    let ran = Rc::new(Cell::new(false));
    let flag = ran.clone();
    copas::addthread(move || flag.set(true)).expect("addthread with a 64 KiB stack");
    util::run_bounded(Duration::from_secs(10));
    if ran.get() {
        println!("MARKER small stack ran");
    }
}

#[test]
fn stack_allocation_failure_refuses_the_task_with_an_error() {
    if util::is_child(NO_STACK_CHILD) {
        no_stack_child();
        return;
    }

    let _serial = serial();
    let out = util::run_child(
        "stack_allocation_failure_refuses_the_task_with_an_error",
        NO_STACK_CHILD,
        ONE_MINUTE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(out.status.success(), "the child failed: {context}");
    assert!(
        stdout.contains(&format!(
            "MARKER addthread refused: kind={:?}",
            ErrorKind::Io
        )),
        "addthread returned an Io error: {context}"
    );
    assert!(
        stdout.contains("MARKER coroutines after refusal: 0"),
        "nothing was left behind: {context}"
    );
    assert!(
        stdout.contains("MARKER connection shed"),
        "the connection was closed: {context}"
    );
    assert!(
        stderr.contains("refusing connection"),
        "the server said why: {context}"
    );
    assert!(
        stdout.contains("MARKER small stack ran"),
        "coroutines work again with a smaller stack: {context}"
    );
    assert!(!stdout.contains("UNEXPECTED"), "{context}");
}

/// Counts the drops of [`Captured`] in a child process: a count above the number made is a
/// value dropped twice.
static CAPTURED_DROPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A closure's capture that panics when dropped, then drops a heap value and counts itself:
/// dropped twice, the string would be freed twice.
struct Captured {
    _bomb: PanicsOnDrop,
    _heap: String,
    _counted: CountsDrops,
}

struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("{INTENTIONAL}: a capture's destructor");
    }
}

struct CountsDrops;

impl Drop for CountsDrops {
    fn drop(&mut self) {
        CAPTURED_DROPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn captured() -> Captured {
    Captured {
        _bomb: PanicsOnDrop,
        _heap: "x".repeat(100),
        _counted: CountsDrops,
    }
}

fn captured_drops() -> usize {
    CAPTURED_DROPS.load(std::sync::atomic::Ordering::SeqCst)
}

const UNSTARTED_CHILD: &str = "COPAS_TEST_UNSTARTED_CAPTURE_PANICS_CHILD";

/// The child of `a_coroutine_removed_before_it_ran_drops_a_panicking_capture_once`: removes
/// three coroutines that never ran, in the three ways a coroutine is removed from the loop.
fn unstarted_capture_child() {
    quiet_intentional_panics();
    let _dog = util::Watchdog::new("the unstarted-capture child", ONE_MINUTE);
    let reports = record_reports();

    let payload = captured();
    let co = copas::addthread(move || drop(payload)).expect("addthread");
    assert!(
        copas::removethread(co),
        "removethread of a waiting coroutine"
    );
    assert_eq!(
        captured_drops(),
        1,
        "removethread: the capture was not dropped once"
    );
    assert_eq!(
        reports.count.get(),
        1,
        "removethread: the panic was not reported"
    );

    let payload = captured();
    let task = copas::future::addthread(move || drop(payload)).expect("future::addthread");
    assert!(task.cancel(), "cancel of a task that had not run");
    assert_eq!(task.get().unwrap_err().kind(), ErrorKind::Cancelled);
    assert_eq!(
        captured_drops(),
        2,
        "cancel: the capture was not dropped once"
    );
    assert_eq!(reports.count.get(), 2, "cancel: the panic was not reported");

    let payload = captured();
    copas::addthread(move || drop(payload)).expect("addthread");
    copas::cancelall();
    assert_eq!(
        captured_drops(),
        3,
        "cancelall: the capture was not dropped once"
    );
    assert_eq!(
        reports.count.get(),
        3,
        "cancelall: the panic was not reported"
    );
    for report in reports.first.borrow().iter() {
        assert!(report.message.contains(INTENTIONAL), "{report:?}");
    }

    // And a thread that ends with such a coroutine never run: its dispatcher's teardown
    // removes it, and the thread ends normally instead of aborting the process.
    let ended = std::thread::spawn(|| {
        quiet_intentional_panics();
        let payload = captured();
        copas::addthread(move || drop(payload)).expect("addthread");
    })
    .join();
    assert!(ended.is_ok(), "the thread did not end normally");
    assert_eq!(
        captured_drops(),
        4,
        "thread exit: the capture was not dropped once"
    );
    println!("MARKER unstarted captures dropped once");
}

#[test]
fn a_coroutine_removed_before_it_ran_drops_a_panicking_capture_once() {
    if util::is_child(UNSTARTED_CHILD) {
        unstarted_capture_child();
        return;
    }
    // The child's pipes are descriptors of this process while it runs: not during another
    // test's count.
    let _serial = serial();
    util::assert_child_passes(
        "a_coroutine_removed_before_it_ran_drops_a_panicking_capture_once",
        UNSTARTED_CHILD,
        "MARKER unstarted captures dropped once",
        ONE_MINUTE,
    );
}
