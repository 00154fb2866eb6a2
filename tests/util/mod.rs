//! Helpers shared by the integration tests (mio style: `mod util;` in each test file).
#![allow(dead_code)]

pub mod ftpd;
pub mod running;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A free port on `ip` (bound, then released for a server another process starts).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A listener on a free loopback port.
pub fn local_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// Makes this thread's dispatcher and its poller, whose descriptors live as long as the
/// thread (the poller is made at its first use), so that a descriptor count taken next
/// leaves them out.
pub fn make_dispatcher() {
    copas::step(Some(Duration::ZERO)).expect("a step to make the dispatcher's poller");
}

/// How many file descriptors this process has open.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Runs `cmd` with `input` on its stdin to its end, killing it after `limit`; returns its
/// output (both pipes read by threads meanwhile, so a chatty program cannot fill them and
/// stall).
pub fn output_within(mut cmd: Command, input: &[u8], limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdout = read_all_in_thread(child.stdout.take());
    let stderr = read_all_in_thread(child.stderr.take());
    // Written on a thread, so input larger than the pipe holds cannot block past `limit`
    // (the thread ends when the program ends and the pipe breaks); a program that exits
    // without reading its input is not an error.
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            eprintln!("{cmd:?} killed after {limit:?}");
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A process the child started and left behind (it aborted before its destructors
    // ran) keeps the pipes open: what the child wrote is taken within a bound, not at
    // their end, which might never come.
    let drained = Instant::now();
    while !(stdout.is_finished() && stderr.is_finished()) && drained.elapsed() < secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let take = |reader: std::thread::JoinHandle<Vec<u8>>, name: &str| {
        if reader.is_finished() {
            reader.join().expect("pipe reader")
        } else {
            format!("({name} still held open by a process {cmd:?} left behind)").into_bytes()
        }
    };
    Output {
        status,
        stdout: take(stdout, "stdout"),
        stderr: take(stderr, "stderr"),
    }
}

/// Reads `pipe` to its end on a new thread; the thread returns what it read.
pub fn read_all_in_thread(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut out);
        }
        out
    })
}

/// A loopback port bound but not listening: a connection to it is refused, and nobody
/// else takes the port while the returned socket lives.
pub fn closed_port() -> (socket2::Socket, u16) {
    closed_port_at(std::net::Ipv4Addr::LOCALHOST.into())
}

/// [`closed_port`] on `ip` (`::1` for IPv6 loopback).
pub fn closed_port_at(ip: std::net::IpAddr) -> (socket2::Socket, u16) {
    let any = SocketAddr::new(ip, 0);
    let closed = socket2::Socket::new(
        socket2::Domain::for_address(any),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    closed.bind(&any.into()).expect("bind");
    let port = closed
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("inet")
        .port();
    (closed, port)
}

/// [`peer_available`] for the `openssl` CLI.
pub fn openssl_available() -> bool {
    peer_available("the openssl CLI", "openssl", &["version"])
}

/// [`peer_available`] for python3 with pyftpdlib (PyPI), the FTP tests' server.
pub fn pyftpdlib_available() -> bool {
    peer_available(
        "python3 with pyftpdlib",
        "python3",
        &["-c", "import pyftpdlib"],
    )
}

/// [`peer_available`] for python3 with aiosmtpd (PyPI), the SMTP tests' server.
pub fn aiosmtpd_available() -> bool {
    peer_available(
        "python3 with aiosmtpd",
        "python3",
        &["-c", "import aiosmtpd"],
    )
}

/// Whether `program args` runs and succeeds: an external peer a test needs. When it does
/// not, panics if `CI` is set (`.ci/run` installs every peer), and otherwise prints a note
/// (the caller then skips its test).
pub fn peer_available(what: &str, program: &str, args: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is required when CI is set");
        }
        eprintln!("note: {what} not found; skipping this test (it fails when CI is set)");
    }
    ok
}

/// A child process killed and reaped however the test ends.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Replaces the default error handler with one that records panic messages (keeps the
/// expected panics of a test out of the way and lets the test check them).
pub fn record_panics() -> std::rc::Rc<std::cell::RefCell<Vec<String>>> {
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let rec = seen.clone();
    copas::setdefaulterrorhandler(move |report| {
        rec.borrow_mut().push(report.message().to_string())
    });
    seen
}

/// CPU time used by the calling thread (in the tests, the dispatcher's), user and system.
pub fn thread_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is given; RUSAGE_THREAD is Linux's per-thread
    // figure.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `test_name` of the current test binary in a child process with `env_var=1`, and
/// returns its output. The child test must return at once unless `env_var` is set. The
/// child is killed after `limit`.
pub fn run_child(test_name: &str, env_var: &str, limit: Duration) -> Output {
    run_child_under(&[], test_name, env_var, limit)
}

/// [`run_child`] with the child started by `wrapper` (a program and its arguments, such as
/// `valgrind --error-exitcode=9`), which is given the test binary and its arguments after
/// its own; an empty `wrapper` starts the test binary itself.
pub fn run_child_under(
    wrapper: &[&str],
    test_name: &str,
    env_var: &str,
    limit: Duration,
) -> Output {
    run_child_with(wrapper, &[], test_name, env_var, limit)
}

/// [`run_child_under`] with the variables `envs` set in the child's environment too.
pub fn run_child_with(
    wrapper: &[&str],
    envs: &[(&str, &str)],
    test_name: &str,
    env_var: &str,
    limit: Duration,
) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env_var, "1")
        .env("RUST_BACKTRACE", "0")
        .envs(envs.iter().copied());
    output_within(cmd, b"", limit)
}

/// [`run_child`], then asserts that the child test passed and printed `marker` (so a child
/// that returned early, or whose own test was filtered out, does not count as a pass);
/// returns its output.
pub fn assert_child_passes(
    test_name: &str,
    env_var: &str,
    marker: &str,
    limit: Duration,
) -> Output {
    assert_child_passes_with(&[], test_name, env_var, marker, limit)
}

/// [`assert_child_passes`] with the variables `envs` set in the child's environment.
pub fn assert_child_passes_with(
    envs: &[(&str, &str)],
    test_name: &str,
    env_var: &str,
    marker: &str,
    limit: Duration,
) -> Output {
    let out = run_child_with(&[], envs, test_name, env_var, limit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(marker),
        "child {test_name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the dispatcher to its end under a watchdog of `limit` and fails the test if any
/// coroutine panicked (the dispatcher catches those panics, so an assertion failing inside
/// a coroutine would otherwise go unnoticed). Returns how long the run took.
pub fn run_checked(limit: Duration) -> Duration {
    let reports = std::rc::Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let sink = reports.clone();
    copas::setdefaulterrorhandler(move |report| sink.borrow_mut().push(report.to_string()));
    let took = run_bounded(limit);
    let reports = reports.borrow();
    assert!(reports.is_empty(), "a coroutine panicked: {reports:#?}");
    took
}

/// A loopback TCP listener with an accept queue of `backlog` (std's `TcpListener::bind`
/// always asks for 128), and its address.
pub fn listener_with_backlog(backlog: i32) -> (socket2::Socket, SocketAddr) {
    let listener = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    listener.bind(&any.into()).expect("bind");
    listener.listen(backlog).expect("listen");
    let addr = listener
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("inet");
    (listener, addr)
}

/// A loopback listener whose accept queue is already full (backlog 0, filled by the
/// returned connections): the kernel drops further SYNs, so a connect to it can only end
/// by its own timeout.
pub fn full_backlog_listener() -> (socket2::Socket, SocketAddr, Vec<std::net::TcpStream>) {
    let (listener, addr) = listener_with_backlog(0);
    let fillers: Vec<std::net::TcpStream> = (0..3)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()
        })
        .collect();
    assert!(!fillers.is_empty(), "not even one connection was queued");
    (listener, addr, fillers)
}

/// Whether this process is a child started by [`run_child`] with `env_var`.
pub fn is_child(env_var: &str) -> bool {
    std::env::var_os(env_var).is_some()
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// From inside a coroutine: pauses 5 ms at a time until `cond` holds or `limit` passes;
/// returns whether it held.
pub fn pause_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        copas::pause(Duration::from_millis(5));
    }
    cond()
}

/// Steps the dispatcher until `done()` or `limit` passes; returns whether `done()` held.
pub fn step_until(limit: Duration, done: impl FnMut() -> bool) -> bool {
    step_with_until(Duration::from_millis(10), limit, done)
}

/// [`step_until`] with each step waiting up to `step` for events.
pub fn step_with_until(step: Duration, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        copas::step(Some(step)).expect("step");
    }
    done()
}

/// Kills the whole test process if it is still alive after `limit` (unless dropped first),
/// so a dispatcher that fails to end makes the test fail instead of hanging it. It says so
/// straight to the standard error: what `eprintln!` prints on a test's threads (and on the
/// threads they start) is captured, and lost at the exit.
pub struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    pub fn new(what: &str, limit: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let what = what.to_string();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                let _ = writeln!(
                    std::io::stderr(),
                    "watchdog: {what} still running after {limit:?}"
                );
                std::process::exit(101);
            }
        });
        Watchdog { done: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts a coroutine that holds `guard` and pauses forever, lets it reach its pause, then
/// removes it (its locals, `guard` among them, are dropped in it as it unwinds); returns how
/// long `removethread` took.
pub fn remove_coroutine_holding<G: 'static>(guard: G) -> Duration {
    let co = copas::addthread(move || {
        let _guard = guard;
        copas::pauseforever();
    })
    .expect("addthread");
    copas::step(Some(Duration::ZERO)).expect("step");
    let start = Instant::now();
    assert!(copas::removethread(co), "removethread");
    start.elapsed()
}

/// Runs the dispatcher to its end, with a [`Watchdog`] of `limit`; returns how long it ran.
pub fn run_bounded(limit: Duration) -> Duration {
    let _dog = Watchdog::new("copas::run", limit);
    let start = Instant::now();
    copas::run().expect("run");
    start.elapsed()
}

/// Runs `init` as the initializer and the dispatcher to its end (`copas::run_with`), with a
/// [`Watchdog`] of `limit`; returns how long it ran.
pub fn run_with_bounded(limit: Duration, init: impl FnOnce() + 'static) -> Duration {
    let _dog = Watchdog::new("copas::run_with", limit);
    let start = Instant::now();
    copas::run_with(init).expect("run_with");
    start.elapsed()
}

/// The outcome of a copas call reduced to its error kind, for `assert_eq!`.
pub fn kind<T>(r: copas::Result<T>) -> Result<T, copas::ErrorKind> {
    r.map_err(|e| e.kind())
}

/// Builds example `name` for this test binary's profile and target directory (a no-op
/// when it is up to date: `cargo test --test X` alone does not build examples) and returns
/// the path of its binary. Panics with cargo's output if the build fails or takes longer
/// than five minutes.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    use std::path::Path;
    // This binary is target/<profile>/deps/<test>-<hash>.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("profile dir");
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("odd profile directory {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["build", "--quiet", "--example", name, "--profile", profile])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cargo build");
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let errors = reader.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("building example {name} failed ({s}):\n{errors}"),
        None => panic!("building example {name} took more than 300 s"),
    }
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "example binary {} is missing",
        path.display()
    );
    path
}

/// Runs the `openssl` CLI in `dir` with whitespace-separated `args`; panics with its
/// output if it fails.
pub fn openssl(dir: &std::path::Path, args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes the test PKI of test-peers.md A.1 in `dir` (which must exist): `ca.pem`/`ca.key`
/// (a CA), `server.pem`/`server.key` (for `localhost` and `127.0.0.1`, signed by the CA),
/// `server-chain.pem` (server + CA, what servers present) and `other.pem`/`other.key` (an
/// unrelated self-signed certificate, for untrusted-peer cases).
pub fn make_test_pki(dir: &std::path::Path) {
    openssl(
        dir,
        "req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=copas-test-ca \
         -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE \
         -addext keyUsage=critical,keyCertSign,cRLSign",
    );
    openssl(
        dir,
        "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr",
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("server.ext");
    openssl(
        dir,
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
         -sha256 -extfile server.ext -out server.pem",
    );
    openssl(
        dir,
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other \
         -keyout other.key -out other.pem",
    );
    let read = |name: &str| std::fs::read(dir.join(name)).expect(name);
    let chain = [read("server.pem"), read("ca.pem")].concat();
    std::fs::write(dir.join("server-chain.pem"), chain).expect("server-chain.pem");
}

/// Unwinds with `message` as `panic!` would (a copas error handler reports the same message),
/// without running the panic hook: with `RUST_BACKTRACE=1` the default hook symbolises a
/// backtrace on the panicking thread, here the dispatcher's, and the first one takes seconds
/// on a loaded machine. For deliberate panics in tests whose timers must not be held up.
pub fn unwind_quietly(message: String) -> ! {
    std::panic::resume_unwind(Box::new(message))
}

/// Calls `f` on the current coroutine and tells whether it suspended (let the dispatcher run
/// anything else) before returning: a coroutine made ready just before the call runs at the
/// next step, before `f`'s coroutine can be resumed, and leaves a mark. "Did not wait",
/// decided by the schedule rather than by a stopwatch.
pub fn suspended_during<T>(f: impl FnOnce() -> T) -> (T, bool) {
    let ran = std::rc::Rc::new(std::cell::Cell::new(false));
    let mark = ran.clone();
    let witness = copas::addthread(move || mark.set(true)).expect("addthread witness");
    let value = f();
    let suspended = ran.get();
    if !suspended {
        copas::removethread(witness);
    }
    (value, suspended)
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A scratch directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh, empty directory whose name has `tag`, this process's id and a counter.
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "copas-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// `name` inside it.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
