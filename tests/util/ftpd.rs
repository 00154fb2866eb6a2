//! A pyftpdlib server (PyPI) for the FTP tests: started on a free loopback port, stopped and
//! reaped on drop. Shared by `ftp.rs` and `ipv6.rs`, which differ only in the options below.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a [`Ftpd`] is started.
pub struct FtpdOptions<'a> {
    /// The address it listens on: `"127.0.0.1"` or `"::1"`.
    pub ip: &'a str,
    /// Adds the user `user` with the password `secret` (anonymous logins work either way).
    pub user: bool,
    /// Gives write access (pyftpdlib's `-w`).
    pub write: bool,
    /// Chooses the passive ports for each attempt; pyftpdlib's default range when `None`.
    pub passive: Option<fn() -> Range<u16>>,
    /// Caps the size of any file it writes (`tests/peers/ftpd_quota.py`): a larger upload
    /// fails midway with pyftpdlib's `426 …; transfer aborted.`
    pub quota: Option<u64>,
}

/// A running `python3 -m pyftpdlib`, sent `SIGTERM` (then killed) and reaped on drop.
pub struct Ftpd {
    child: Child,
    /// Its control port.
    pub port: u16,
    ip: String,
    log: PathBuf,
}

impl Ftpd {
    /// Starts pyftpdlib serving `root`, with its output in `log`, trying up to five free
    /// ports (another process may take a port between our check and pyftpdlib's bind).
    ///
    /// # Panics
    ///
    /// When it cannot be spawned or has not said it started after five attempts.
    pub fn start(root: &Path, log: &Path, options: FtpdOptions<'_>) -> Ftpd {
        for _attempt in 0..5 {
            let port = super::free_port(options.ip);
            let file = std::fs::File::create(log).expect("ftpd log file");
            let mut cmd = Command::new("python3");
            match options.quota {
                Some(quota) => cmd
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/tests/peers/ftpd_quota.py"
                    ))
                    .arg(quota.to_string()),
                None => cmd.args(["-m", "pyftpdlib"]),
            };
            cmd.args(["-i", options.ip, "-p"])
                .arg(port.to_string())
                .arg("-d")
                .arg(root);
            if let Some(range) = options.passive.map(|choose| choose()) {
                cmd.arg("-r")
                    .arg(format!("{}-{}", range.start, range.end - 1));
            }
            if options.write {
                cmd.arg("-w");
            }
            if options.user {
                cmd.args(["-u", "user", "-P", "secret"]);
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("ftpd log clone"))
                .stderr(file)
                .spawn()
                .expect("spawn pyftpdlib");
            // Made at once, so that an attempt given up is stopped by the drop.
            let mut ftpd = Ftpd {
                child,
                port,
                ip: options.ip.to_string(),
                log: log.to_path_buf(),
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if ftpd.log_text().contains("starting FTP server") {
                    return ftpd;
                }
                if ftpd.child.try_wait().expect("try_wait").is_some() {
                    break; // lost a port race: try another port
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("pyftpdlib did not start:\n{}", ftpd.log_text());
        }
        panic!("pyftpdlib on {} did not start after 5 attempts", options.ip);
    }

    /// Starts one serving a new directory `root` in `dir`, with its log beside it; returns
    /// the directory's path too, for the files a test puts there.
    pub fn start_in(dir: &super::TempDir, options: FtpdOptions<'_>) -> (PathBuf, Ftpd) {
        let root = dir.path("root");
        std::fs::create_dir(&root).expect("ftpd root directory");
        let ftpd = Ftpd::start(&root, &dir.path("ftpd.log"), options);
        (root, ftpd)
    }

    /// What it has written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its control address as `host:port` (the host bracketed for IPv6).
    pub fn addr(&self) -> String {
        if self.ip.contains(':') {
            format!("[{}]:{}", self.ip, self.port)
        } else {
            format!("{}:{}", self.ip, self.port)
        }
    }

    /// An `ftp://` URL for `path` with `cred` (`""` or `"user:secret@"`) before the host.
    pub fn url(&self, cred: &str, path: &str) -> String {
        format!("ftp://{cred}{}/{path}", self.addr())
    }
}

impl Drop for Ftpd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the id of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
