//! Helpers shared by the integration tests (mio style: `mod util;` in each test file).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A listener on a free loopback port.
pub fn local_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// How many file descriptors this process has open.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Runs `test_name` of the current test binary in a child process with `env_var=1`, and
/// returns its output. The child test must return at once unless `env_var` is set. The
/// child is killed after `limit`.
pub fn run_child(test_name: &str, env_var: &str, limit: Duration) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env_var, "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child test");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("child output")
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

/// Steps the dispatcher until `done()` or `limit` passes; returns whether `done()` held.
pub fn step_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        copas::step(Some(Duration::from_millis(10))).expect("step");
    }
    done()
}

/// Kills the whole test process if it is still alive after `limit` (unless dropped first),
/// so a dispatcher that fails to end makes the test fail instead of hanging it.
pub struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    pub fn new(what: &str, limit: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let what = what.to_string();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: {what} still running after {limit:?}");
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

/// Runs the dispatcher to its end, with a [`Watchdog`] of `limit`; returns how long it ran.
pub fn run_bounded(limit: Duration) -> Duration {
    let _dog = Watchdog::new("copas::run", limit);
    let start = Instant::now();
    copas::run().expect("run");
    start.elapsed()
}
