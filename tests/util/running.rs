//! A program a test starts and talks to (an example, usually): its standard output read
//! line by line on a thread so a test can wait for a line with a limit, its standard error
//! kept for failure messages, and the process killed and reaped when dropped, whatever
//! happened.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a test waits for a line it expects.
pub const LINE_LIMIT: Duration = Duration::from_secs(30);

/// A running program; see the module docs.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// Every stdout line received so far, for failure messages and checks.
    seen: Vec<String>,
}

impl Running {
    /// Starts `program` with `args` and extra environment `envs` (and no backtraces).
    pub fn start(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = pipe.read_to_end(&mut out);
                out
            })
        });
        Running {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Starts example `name` on port 0 and returns it with the address at the end of the
    /// first line containing `banner` (`... 127.0.0.1:PORT` or `.../127.0.0.1:PORT`).
    pub fn server(name: &str, banner: &str) -> (Running, SocketAddr) {
        Running::server_with_env(name, banner, &[])
    }

    /// [`Running::server`] with environment variables set for the example.
    pub fn server_with_env(
        name: &str,
        banner: &str,
        envs: &[(&str, &str)],
    ) -> (Running, SocketAddr) {
        let mut server = Running::start(&super::example_binary(name), &["0"], envs);
        let line = server.wait_for_line("the listening line", |l| l.contains(banner));
        let addr = line
            .rsplit([' ', '/'])
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (server, addr)
    }

    /// Every stdout line received so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// The next stdout line, if one comes within `limit`; `None` at end of output.
    ///
    /// # Panics
    ///
    /// When no line comes within `limit`.
    pub fn next_line(&mut self, limit: Duration) -> Option<String> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no output within {limit:?}; so far: {:?}", self.seen)
            }
        }
    }

    /// Reads stdout lines until one satisfies `wanted` (within [`LINE_LIMIT`]) and returns
    /// it; `what` names it in the failure message.
    pub fn wait_for_line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LINE_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(line) if wanted(&line) => return line,
                Some(_) => {}
                None => panic!("output ended before {what}; it was: {:?}", self.seen),
            }
        }
    }

    /// Waits for the program to end on its own within `limit`, reading the rest of its
    /// output; returns the exit status and the lines read by this call.
    pub fn wait_for_exit(&mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + limit;
        let mut rest = Vec::new();
        while let Some(line) = self.next_line(deadline.saturating_duration_since(Instant::now())) {
            rest.push(line);
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the program did not end");
            std::thread::sleep(Duration::from_millis(10));
        };
        (status, rest)
    }

    /// Whether the program has not ended yet.
    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Panics, with its output so far, if the program has ended.
    pub fn assert_still_running(&mut self) {
        if !self.still_running() {
            let stderr = self.stderr();
            panic!("the program ended; stdout {:?}, stderr {stderr}", self.seen);
        }
    }

    /// Its standard error; only once it has ended (or been killed), else this waits.
    pub fn stderr(&mut self) -> String {
        let bytes = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
