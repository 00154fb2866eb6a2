//! `client::ftp` against a real pyftpdlib (PyPI) started by each test on loopback.
//!
//! Without python3 or pyftpdlib the tests print a note and pass, unless `CI` is set: then
//! they fail.

mod util;

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use copas::client::ftp::{self, Client, Options};
use copas::ErrorKind;
use util::ftpd::{Ftpd, FtpdOptions};
use util::{TempDir, Watchdog};

const LIMIT: Duration = Duration::from_secs(90);
const PASSIVE_PORTS: u16 = 60;

/// A range of `PASSIVE_PORTS` ports that are free now, away from the ephemeral range.
fn free_range() -> Range<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    for _ in 0..100 {
        let slot = NEXT.fetch_add(1, Ordering::Relaxed);
        let offset = (std::process::id() as u16).wrapping_mul(7919) % 100 + slot;
        let base = 20000 + (offset % 120) * PASSIVE_PORTS;
        let free =
            (base..base + PASSIVE_PORTS).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base..base + PASSIVE_PORTS;
        }
    }
    panic!("no free passive port range");
}

/// pyftpdlib on 127.0.0.1 serving `root`, its passive ports from [`free_range`], its log
/// beside `root`; `user` adds `user`/`secret`, `write` gives write access.
fn start_ftpd(root: &Path, user: bool, write: bool) -> Ftpd {
    start_ftpd_capped(root, user, write, None)
}

/// [`start_ftpd`], the files it writes capped at `quota` bytes.
fn start_ftpd_capped(root: &Path, user: bool, write: bool, quota: Option<u64>) -> Ftpd {
    let options = FtpdOptions {
        ip: "127.0.0.1",
        user,
        write,
        passive: Some(free_range),
        quota,
    };
    Ftpd::start(root, &root.with_extension("log"), options)
}

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn opts() -> Options {
    Options::new().timeout(Some(Duration::from_secs(20)))
}

#[test]
fn put_then_get_10_mib_round_trips_and_lists() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp round trip", LIMIT);
    let root = TempDir::new("rt");
    let server = start_ftpd(&root.0, true, true);
    let body = data(10 * 1024 * 1024, 7);

    ftp::put(&server.url("user:secret@", "big.bin"), &body).expect("put");
    let on_disk = std::fs::read(root.0.join("big.bin")).expect("file on disk");
    assert!(on_disk == body, "the stored file differs");
    let back = ftp::get(&server.url("user:secret@", "big.bin")).expect("get");
    assert_eq!(back.len(), body.len());
    assert!(back == body, "the downloaded file differs");

    // Listing through the URL function and through the command interface.
    let names = ftp::list(&server.url("user:secret@", "")).expect("list");
    assert!(names.iter().any(|n| n == "big.bin"), "{names:?}");
    let mut c = Client::connect(server.addr(), Some(Duration::from_secs(20))).expect("connect");
    assert_eq!(c.greeting().code(), 220);
    c.login("user", "secret").expect("login");
    c.binary().expect("TYPE I");
    let long = c.list(None).expect("LIST");
    assert!(
        long.iter()
            .any(|l| l.ends_with(" big.bin") && l.contains(&body.len().to_string())),
        "{long:?}"
    );
    assert_eq!(c.size("big.bin").expect("SIZE"), body.len() as u64);
    assert_eq!(c.pwd().expect("PWD"), "/");
    c.mkd("sub").expect("MKD");
    c.cwd("sub").expect("CWD");
    assert_eq!(c.pwd().expect("PWD"), "/sub");

    // Streaming: stor from a Read, retr into a Write, and the Read/Write adapters.
    let small = data(300_000, 9);
    assert_eq!(
        c.stor("s.bin", &mut &small[..]).unwrap(),
        small.len() as u64
    );
    let mut out = Vec::new();
    assert_eq!(c.retr("s.bin", &mut out).unwrap(), small.len() as u64);
    assert!(out == small);
    let mut w = c.stor_writer("w.bin").expect("STOR writer");
    for chunk in small.chunks(7000) {
        w.write_all(chunk).unwrap();
    }
    assert_eq!(w.finish().expect("finish upload"), small.len() as u64);
    assert!(std::fs::read(root.0.join("sub/w.bin")).unwrap() == small);
    let mut r = c.retr_reader("w.bin").expect("RETR reader");
    let mut streamed = Vec::new();
    r.read_to_end(&mut streamed).unwrap();
    assert_eq!(r.finish().expect("finish download").code() / 100, 2);
    assert!(streamed == small);
    // A download abandoned half way leaves the session usable.
    let err = c.retr_reader("big.bin").map(|_| ()).unwrap_err();
    assert_eq!(err.reply_code(), Some(550)); // not in sub/
    c.cwd("/").unwrap();
    {
        let mut r = c.retr_reader("big.bin").unwrap();
        let mut some = [0u8; 1000];
        r.read_exact(&mut some).unwrap();
        assert_eq!(&some[..], &body[..1000]);
    }
    assert_eq!(c.nlst(Some("sub")).unwrap().len(), 2);

    // PASV (without EPSV) works the same.
    c.set_epsv(false);
    let mut out = Vec::new();
    c.retr("sub/s.bin", &mut out).unwrap();
    assert!(out == small);
    c.dele("sub/s.bin").expect("DELE");
    c.dele("sub/w.bin").expect("DELE");
    assert_eq!(
        c.dele("sub/w.bin").unwrap_err().reply_code(),
        Some(550),
        "deleting twice"
    );
    c.rmd("sub").expect("RMD");
    let raw = c.command("NOOP", None).expect("raw command");
    assert_eq!(raw.code(), 200);
    assert_eq!(c.quit().expect("QUIT").code(), 221);
}

#[test]
fn anonymous_login_on_a_read_only_server() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp anonymous", LIMIT);
    let root = TempDir::new("anon");
    let body = data(123_457, 3);
    std::fs::write(root.0.join("pub.bin"), &body).unwrap();
    let server = start_ftpd(&root.0, false, false);

    assert!(ftp::get(&server.url("", "pub.bin")).unwrap() == body);
    let names = ftp::list(&server.url("", "")).unwrap();
    assert_eq!(names, vec!["pub.bin".to_string()]);
    // Read-only: an upload is refused with the server's 550.
    let err = ftp::put(&server.url("", "new.bin"), b"x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.reply_code(), Some(550), "{err}");
    assert!(!root.0.join("new.bin").exists());
    // ASCII type through the URL.
    std::fs::write(root.0.join("t.txt"), b"a\nb\n").unwrap();
    let text = ftp::get(&server.url("", "t.txt;type=a")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&text).replace("\r\n", "\n"),
        "a\nb\n"
    );
}

#[test]
fn logins_are_checked() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp login", LIMIT);
    let root = TempDir::new("login");
    std::fs::write(root.0.join("f"), b"secret data").unwrap();
    let server = start_ftpd(&root.0, true, false);

    // Password from the URL, percent-decoded; and from the options.
    assert_eq!(
        ftp::get(&server.url("us%65r:s%65cret@", "f")).unwrap(),
        b"secret data"
    );
    let mut out = Vec::new();
    ftp::get_to(
        &server.url("", "f"),
        &opts().user("user", "secret"),
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b"secret data");
    // A wrong password: 530 (pyftpdlib answers after a delay of about 3 s).
    let err = ftp::get(&server.url("user:wrong@", "f")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert_eq!(err.reply_code(), Some(530), "{err}");
    // Anonymous where only the user is allowed: 530 too.
    let err = ftp::get(&server.url("", "f")).unwrap_err();
    assert_eq!(err.reply_code(), Some(530), "{err}");
}

#[test]
fn missing_file_and_crlf_are_errors() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp errors", LIMIT);
    let root = TempDir::new("err");
    std::fs::write(root.0.join("keep"), b"k").unwrap();
    let server = start_ftpd(&root.0, true, true);

    let err = ftp::get(&server.url("user:secret@", "nope.bin")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.reply_code(), Some(550));
    assert!(err.to_string().starts_with("rejected: 550"), "{err}");

    // No file in the URL: refused before connecting (port 9 is discard: nobody listens).
    let err = ftp::get("ftp://127.0.0.1:9/").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // CR/LF in a URL path: refused before connecting.
    let err = ftp::get(&server.url("user:secret@", "keep%0D%0ADELE%20keep")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // ... and in the command interface: nothing is sent, the session goes on.
    let mut c = Client::connect(server.addr(), None).unwrap();
    c.login("user", "secret").unwrap();
    for bad in ["keep\r\nDELE keep", "keep\nDELE keep", "keep\rDELE keep"] {
        let mut sink = Vec::new();
        let err = c.retr(bad, &mut sink).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(c.dele(bad).is_err());
        assert!(c.stor(bad, &mut &b"x"[..]).is_err());
        assert!(c.command("NOOP\r\nDELE", None).is_err());
        assert!(c.command("SITE", Some(bad)).is_err());
    }
    assert_eq!(c.command("NOOP", None).unwrap().code(), 200);
    // The caller's own destination and source failing: `Io` with the kind kept (a
    // `BrokenPipe` came back as `Closed`), and the session goes on.
    for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::TimedOut] {
        let err = c.retr("keep", &mut Failing(kind)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "retr, {kind:?}: {err}");
        assert_eq!(io::Error::from(err).kind(), kind);
        let err = c.stor("stored", &mut Failing(kind)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "stor, {kind:?}: {err}");
        assert_eq!(io::Error::from(err).kind(), kind);
        assert_eq!(c.command("NOOP", None).unwrap().code(), 200);
    }
    let mut sink = Vec::new();
    c.retr("keep", &mut sink).unwrap();
    assert_eq!(sink, b"k");
    c.quit().unwrap();
    assert!(root.0.join("keep").exists(), "the file was deleted");
    assert!(!server.log_text().contains("DELE"), "{}", server.log_text());
}

#[test]
fn twenty_concurrent_gets_from_coroutines() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp concurrent", LIMIT);
    let root = TempDir::new("conc");
    let body = Rc::new(data(512 * 1024, 11));
    std::fs::write(root.0.join("c.bin"), &*body).unwrap();
    let server = start_ftpd(&root.0, true, false);
    let url = Rc::new(server.url("user:secret@", "c.bin"));

    let ok = Rc::new(RefCell::new(0usize));
    let errors = Rc::new(RefCell::new(Vec::new()));
    // How many sessions are logged in at once: every coroutine waits (bounded) until all 20
    // are, so the transfers really run side by side on one thread.
    let open = Rc::new(RefCell::new(0usize));
    for _ in 0..20 {
        let (url, body, ok, errors, open) = (
            url.clone(),
            body.clone(),
            ok.clone(),
            errors.clone(),
            open.clone(),
        );
        copas::addthread(move || {
            let result = Client::open(&url, &opts()).and_then(|(mut client, req)| {
                *open.borrow_mut() += 1;
                for _ in 0..2000 {
                    if *open.borrow() == 20 {
                        break;
                    }
                    copas::pause(Duration::from_millis(5));
                }
                let all_open = *open.borrow() == 20;
                let mut first = Vec::new();
                client.retr(&req.path, &mut first)?;
                let _ = client.quit();
                // And the one-call form, also from 20 coroutines at once.
                let second = ftp::get(&url)?;
                Ok((all_open, first, second))
            });
            match result {
                Ok((true, a, b)) if a == *body && b == *body => *ok.borrow_mut() += 1,
                Ok((all_open, a, b)) => errors.borrow_mut().push(format!(
                    "all open: {all_open}, {} and {} bytes",
                    a.len(),
                    b.len()
                )),
                Err(e) => errors.borrow_mut().push(e.to_string()),
            }
        })
        .unwrap();
    }
    util::run_bounded(LIMIT);
    assert_eq!(*errors.borrow(), Vec::<String>::new());
    assert_eq!(*ok.borrow(), 20);
}

#[test]
fn ftp_get_example_downloads_to_stdout_and_to_a_file() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp_get example", Duration::from_secs(400));
    let root = TempDir::new("ex");
    let body = data(200_000, 5);
    std::fs::write(root.0.join("e.bin"), &body).unwrap();
    let server = start_ftpd(&root.0, false, false);
    let exe = util::example_binary("ftp_get");

    let out = Command::new(&exe)
        .arg(server.url("", "e.bin"))
        .output()
        .expect("run ftp_get");
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout == body, "stdout differs");

    let dest = root.0.join("copy.bin");
    let out = Command::new(&exe)
        .arg(server.url("", "e.bin"))
        .arg(&dest)
        .output()
        .expect("run ftp_get");
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read(&dest).unwrap() == body);

    let out = Command::new(&exe)
        .arg(server.url("", "missing.bin"))
        .output()
        .expect("run ftp_get");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("550"), "{err}");
}

/// A scripted control connection on `ip` (not an FTP server): greets, then gives `state`,
/// each command's upper-cased verb and the connection to `answer`, which may write to it
/// first (a preliminary reply) and returns the reply line, without its CRLF; ends after
/// `QUIT`, at the client's close or after 20 commands. Its thread gives the commands it
/// got and the state.
fn scripted_ftp<S: Send + 'static>(
    ip: &str,
    mut state: S,
    answer: fn(&mut S, &str, &mut TcpStream) -> String,
) -> (SocketAddr, std::thread::JoinHandle<(Vec<String>, S)>) {
    use std::io::BufRead;
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut out = sock.try_clone().unwrap();
        let mut lines = std::io::BufReader::new(sock);
        out.write_all(b"220 scripted\r\n").unwrap();
        let mut seen = Vec::new();
        for _ in 0..20 {
            let mut line = String::new();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let line = line.trim_end().to_string();
            let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
            seen.push(line);
            let reply = answer(&mut state, &verb, &mut out);
            if out.write_all(format!("{reply}\r\n").as_bytes()).is_err() || verb == "QUIT" {
                break;
            }
        }
        (seen, state)
    });
    (addr, handle)
}

/// The login and `TYPE` replies of a scripted control connection; `500` for the rest.
fn scripted_reply(verb: &str) -> &'static str {
    match verb {
        "USER" => "331 password please",
        "PASS" => "230 in",
        "TYPE" => "200 binary",
        "QUIT" => "221 bye",
        _ => "500 unexpected",
    }
}

/// A scripted control connection that answers `EPSV` and `PASV` with the given replies;
/// returns its URL and its thread, which gives the commands it got.
fn scripted_server(
    epsv: &'static str,
    pasv: &'static str,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let (addr, handle) = scripted_ftp("127.0.0.1", (epsv, pasv), |(epsv, pasv), verb, _| {
        match verb {
            "EPSV" => epsv,
            "PASV" => pasv,
            _ => scripted_reply(verb),
        }
        .to_string()
    });
    let commands = std::thread::spawn(move || handle.join().unwrap().0);
    (format!("ftp://127.0.0.1:{}/f.bin", addr.port()), commands)
}

#[test]
fn malformed_passive_replies_are_refused() {
    let _dog = Watchdog::new("ftp passive refusal", LIMIT);
    let cases: [(&str, &str, &str); 3] = [
        (
            "502 no",
            "227 Entering Passive Mode (127,0,0,1,999,1)",
            "malformed PASV",
        ),
        ("502 no", "227 nothing here", "malformed PASV"),
        (
            "229 Entering Extended Passive Mode (|||70000|)",
            "unused",
            "malformed EPSV",
        ),
    ];
    for (epsv, pasv, expect) in cases {
        let (url, server) = scripted_server(epsv, pasv);
        let err = ftp::get(&url).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{epsv} / {pasv}: {err}");
        assert!(err.to_string().contains(expect), "{err}");
        let seen = server.join().unwrap();
        assert!(
            !seen.iter().any(|c| c.starts_with("RETR")),
            "RETR was sent: {seen:?}"
        );
    }
}

/// Runs `call` on a shared client in a coroutine, steps until `midway()` (the call is
/// waiting for the server), removes the coroutine, and returns the next call's result.
fn next_call_after_a_removed_one(
    client: &Rc<RefCell<Client>>,
    call: impl FnOnce(&mut Client) + 'static,
    midway: impl FnMut() -> bool,
    next: impl FnOnce(&mut Client) -> copas::Result<u64> + 'static,
) -> copas::Result<u64> {
    let c = client.clone();
    let first = copas::addthread(move || {
        call(&mut c.borrow_mut());
        panic!("resumed after removal");
    })
    .unwrap();
    assert!(util::step_until(LIMIT, midway), "never midway");
    assert!(copas::removethread(first), "the first call had ended");
    let out = Rc::new(RefCell::new(None));
    let (c, o) = (client.clone(), out.clone());
    copas::addthread(move || *o.borrow_mut() = Some(next(&mut c.borrow_mut()))).unwrap();
    util::run_bounded(LIMIT);
    let result = out.borrow_mut().take().expect("the next call ended");
    result
}

/// A shared client connected and logged in to `server`, in binary mode.
fn shared_client(server: &Ftpd) -> Rc<RefCell<Client>> {
    let client = Rc::new(RefCell::new(None));
    let (c, addr) = (client.clone(), server.addr());
    copas::addthread(move || {
        let mut ftp = Client::connect(addr.as_str(), Some(Duration::from_secs(20))).unwrap();
        ftp.login("user", "secret").unwrap();
        ftp.binary().unwrap();
        *c.borrow_mut() = Some(ftp);
    })
    .unwrap();
    util::run_bounded(LIMIT);
    let ftp = client.borrow_mut().take().expect("logged in");
    Rc::new(RefCell::new(ftp))
}

#[test]
fn a_command_removed_while_awaiting_its_reply_closes_the_client_rather_than_hand_the_reply_on() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp removed command", LIMIT);
    let root = TempDir::new("rmcmd");
    std::fs::write(root.0.join("a.bin"), b"abc").unwrap();
    std::fs::write(root.0.join("b.bin"), b"abcdefgh").unwrap();
    let server = start_ftpd(&root.0, true, false);
    let client = shared_client(&server);
    // One step sends `SIZE a.bin` and leaves the coroutine waiting for the 213 reply.
    let mut stepped = false;
    let next = next_call_after_a_removed_one(
        &client,
        |ftp| {
            let _ = ftp.size("a.bin");
        },
        move || std::mem::replace(&mut stepped, true),
        |ftp| ftp.size("b.bin"),
    );
    // Before: `Ok(3)`, the size of a.bin, read as b.bin's.
    assert_eq!(util::kind(next), Err(ErrorKind::Closed));
}

/// A writer that counts what it is given.
struct Counting(Rc<RefCell<usize>>);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        *self.0.borrow_mut() += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_download_removed_midway_closes_the_client_rather_than_hand_its_final_reply_on() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp removed download", LIMIT);
    let root = TempDir::new("rmretr");
    std::fs::write(root.0.join("big.bin"), data(8 * 1024 * 1024, 5)).unwrap();
    std::fs::write(root.0.join("b.bin"), b"abcdefgh").unwrap();
    let server = start_ftpd(&root.0, true, false);
    let client = shared_client(&server);
    let received = Rc::new(RefCell::new(0usize));
    let r = received.clone();
    let next = next_call_after_a_removed_one(
        &client,
        move |ftp| {
            let _ = ftp.retr("big.bin", &mut Counting(r));
        },
        move || *received.borrow() > 0,
        |ftp| ftp.size("b.bin"),
    );
    // Before: SIZE read the transfer's final reply (226 or 426) as its own.
    assert_eq!(util::kind(next), Err(ErrorKind::Closed));
}

/// A destination and source whose every write and read fails with its kind.
struct Failing(io::ErrorKind);

impl io::Write for Failing {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(self.0, "the destination failed"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(self.0, "the source failed"))
    }
}

#[test]
fn an_upload_the_server_stops_midway_reports_its_refusal_not_the_reset() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp upload refused midway", LIMIT);
    let root = TempDir::new("full");
    // Files may not grow past 1 MiB: pyftpdlib stops the upload, closing the data
    // connection, then replies "426 …; transfer aborted."
    let server = start_ftpd_capped(&root.0, true, true, Some(1024 * 1024));
    let body = data(16 * 1024 * 1024, 3);
    let mut c = Client::connect(server.addr(), Some(Duration::from_secs(20))).expect("connect");
    c.login("user", "secret").expect("login");
    c.binary().expect("TYPE I");

    let err = c.stor("big.bin", &mut &body[..]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert_eq!(err.reply_code(), Some(426), "{err}");
    assert!(err.to_string().contains("transfer aborted"), "{err}");
    // The control connection is in step: the next commands work.
    assert_eq!(c.pwd().expect("PWD after the refusal"), "/");

    // Through the writer: a write fails when the server closes, `finish` says why.
    let mut w = c.stor_writer("big2.bin").expect("STOR writer");
    let mut failed = false;
    for chunk in body.chunks(64 * 1024) {
        if w.write_all(chunk).is_err() {
            failed = true;
            break;
        }
    }
    assert!(
        failed,
        "16 MiB went past a 1 MiB quota without a failed write"
    );
    let err = w.finish().unwrap_err();
    assert_eq!(err.reply_code(), Some(426), "{err}");
    assert_eq!(c.pwd().expect("PWD after the writer"), "/");
    c.quit().expect("QUIT");
}

/// `Options::timeout(None)` waits for ever, the greeting included: while `Client::open`
/// waited for a late greeting, the dispatcher held a deadline for it (the 60 s default,
/// which `open` lifted only after the greeting came).
#[test]
fn no_timeout_in_the_options_puts_no_deadline_on_the_greeting() {
    use std::io::BufRead;
    let _dog = Watchdog::new("ftp greeting without a timeout", Duration::from_secs(60));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut out = sock.try_clone().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        out.write_all(b"220 late\r\n").unwrap();
        let mut lines = std::io::BufReader::new(sock);
        for reply in ["331 password please", "230 in", "200 binary", "221 bye"] {
            let mut line = String::new();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            out.write_all(format!("{reply}\r\n").as_bytes()).unwrap();
        }
    });
    let deadlines = Rc::new(RefCell::new(None));
    let seen = deadlines.clone();
    let opened = Rc::new(RefCell::new(None));
    let result = opened.clone();
    copas::addthread(move || {
        let url = format!("ftp://127.0.0.1:{port}/f.bin");
        let outcome = Client::open(&url, &Options::new().timeout(None))
            .map(|(client, _)| client.quit().map(|_| ()));
        *result.borrow_mut() = Some(outcome.map(|quit| quit.is_ok()).map_err(|e| e.kind()));
    })
    .unwrap();
    copas::addthread(move || {
        copas::pause(Duration::from_millis(200));
        *seen.borrow_mut() = Some(copas::status().timeout);
    })
    .unwrap();
    util::run_bounded(Duration::from_secs(30));
    server.join().unwrap();
    assert_eq!(*opened.borrow(), Some(Ok(true)));
    assert_eq!(
        *deadlines.borrow(),
        Some(0),
        "deadlines pending while the greeting was awaited"
    );
}

/// A source that yields as many bytes as it holds, then fails.
struct FailingAfter(usize);

impl io::Read for FailingAfter {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::other("the source failed midway"));
        }
        let n = out.len().min(self.0);
        out[..n].fill(b'x');
        self.0 -= n;
        Ok(n)
    }
}

/// A source that yields as many bytes as it holds, then panics.
struct PanicsAfter(usize);

impl io::Read for PanicsAfter {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        assert!(self.0 > 0, "deliberate panic: the source broke midway");
        let n = out.len().min(self.0);
        out[..n].fill(b'x');
        self.0 -= n;
        Ok(n)
    }
}

/// What pyftpdlib logged of the upload of `name`: its `completed=` flag, or `None` when it
/// logged no transfer of it.
fn logged_upload(log: &str, name: &str) -> Option<bool> {
    let suffix = format!("/{name} completed=");
    let line = log
        .lines()
        .find(|l| l.contains("STOR ") && l.contains(&suffix))?;
    let at = line.find(&suffix)? + suffix.len();
    Some(line[at..].starts_with('1'))
}

/// Before: a failed upload closed its data connection normally, which in stream mode marks
/// the end of the file: pyftpdlib stored the part sent as the whole file and answered
/// `226` (logged `completed=1`), a reply the client then discarded. Now the client sends
/// `ABOR` and resets the data connection; the server logs the upload incomplete, and the
/// session goes on with the aborted transfer's replies consumed.
#[test]
fn an_upload_whose_source_fails_is_aborted_not_stored_as_complete() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _dog = Watchdog::new("ftp aborted upload", LIMIT);
    let root = TempDir::new("abort");
    let server = start_ftpd(&root.0, true, true);
    let mut c = Client::connect(server.addr(), Some(Duration::from_secs(20))).expect("connect");
    c.login("user", "secret").expect("login");
    c.binary().expect("TYPE I");
    // From a source failing at once (nothing sent: pyftpdlib answers `ABOR` alone) to one
    // failing past several chunks.
    let sizes = [0usize, 1, 100_000, 3_000_000];
    for (i, &size) in sizes.iter().enumerate() {
        let err = c
            .stor(&format!("cut{i}.bin"), &mut FailingAfter(size))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{size} bytes: {err}");
        assert_eq!(c.pwd().expect("PWD after the aborted upload"), "/");
    }
    // A writer dropped without `finish` aborts its upload the same way.
    {
        let mut w = c.stor_writer("dropped.bin").expect("STOR writer");
        w.write_all(&data(200_000, 4)).expect("write");
    }
    assert_eq!(c.pwd().expect("PWD after the dropped writer"), "/");
    // So does an upload whose source panics, the panic caught around the call.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.stor("panicked.bin", &mut PanicsAfter(100_000))
    }));
    assert!(panicked.is_err(), "the source's panic did not come through");
    assert_eq!(c.pwd().expect("PWD after the panicked upload"), "/");
    // A complete upload after them is still stored as one.
    let whole = data(50_000, 6);
    assert_eq!(
        c.stor("whole.bin", &mut &whole[..])
            .expect("a whole upload"),
        whole.len() as u64
    );
    assert_eq!(c.command("NOOP", None).expect("NOOP").code(), 200);
    c.quit().expect("QUIT");

    let log = server.log_text();
    for i in 1..sizes.len() {
        assert_eq!(
            logged_upload(&log, &format!("cut{i}.bin")),
            Some(false),
            "cut{i}.bin was not logged incomplete:\n{log}"
        );
    }
    assert_ne!(
        logged_upload(&log, "cut0.bin"),
        Some(true),
        "an upload of nothing was logged complete:\n{log}"
    );
    for name in ["dropped.bin", "panicked.bin"] {
        assert_eq!(
            logged_upload(&log, name),
            Some(false),
            "{name} was not logged incomplete:\n{log}"
        );
    }
    assert_eq!(logged_upload(&log, "whole.bin"), Some(true), "{log}");
    assert!(std::fs::read(root.0.join("whole.bin")).unwrap() == whole);
}

/// How a scripted server answers `ABOR`, given the aborted transfer's own final reply.
type AborAnswer = fn(&str) -> String;

/// Before: an upload whose data connection timed out (a server not reading) was closed
/// normally, an end of file to the server. Now the data connection is reset and `ABOR`
/// sent, and whatever the server answers to both (servers differ: `426` and `226`, a
/// single `226`, `225` and the transfer's reply after it) is read up to a `NOOP`'s `200`,
/// so the next command gets its own reply, without waiting for one that never comes.
#[test]
fn an_upload_that_times_out_is_reset_and_aborted() {
    /// The data listener, the upload's data connection, how it ended, the `ABOR` answer.
    type Upload = (
        TcpListener,
        Option<TcpStream>,
        Option<Result<(), io::ErrorKind>>,
        AborAnswer,
    );
    let _dog = Watchdog::new("ftp upload timeout", LIMIT);
    let answers: [(&str, AborAnswer); 3] = [
        ("426 then 226", |fin| format!("{fin}\r\n226 abort done")),
        ("226 alone", |_| "226 abort done".to_string()),
        ("225, then the transfer's reply", |fin| {
            format!("225 no transfer to abort\r\n{fin}")
        }),
    ];
    for (style, answer) in answers {
        let upload: Upload = (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            None,
            None,
            answer,
        );
        let (addr, peer) = scripted_ftp("127.0.0.1", upload, |state, verb, _| {
            let (listener, data, end, answer) = state;
            match verb {
                "EPSV" => {
                    let port = listener.local_addr().unwrap().port();
                    format!("229 Entering Extended Passive Mode (|||{port}|)")
                }
                "STOR" => {
                    let (d, _) = listener.accept().unwrap();
                    d.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    *data = Some(d);
                    "150 go".to_string()
                }
                // Only now is the data read, so the upload timed out with the server's
                // buffers full.
                "ABOR" => {
                    let mut d = data.take().expect("ABOR during the upload");
                    let result = std::io::copy(&mut d, &mut io::sink()).map_err(|e| e.kind());
                    *end = Some(result.map(|_| ()));
                    answer(match result {
                        Ok(_) => "226 stored",
                        Err(_) => "426 connection reset; transfer aborted",
                    })
                }
                "NOOP" => "200 ok".to_string(),
                _ => scripted_reply(verb).to_string(),
            }
        });
        let mut c = Client::connect(addr, Some(Duration::from_secs(1))).expect("connect");
        c.login("user", "secret").expect("login");
        c.binary().expect("TYPE I");
        let err = c.stor("f.bin", &mut FailingAfter(usize::MAX)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{style}: {err}");
        let noop = c.command("NOOP", None);
        assert_eq!(
            noop.map(|r| r.code()).map_err(|e| e.kind()),
            Ok(200),
            "{style}"
        );
        assert_eq!(c.quit().expect("QUIT").code(), 221, "{style}");
        let (seen, (_, _, data_end, _)) = peer.join().unwrap();
        let verbs: Vec<&str> = seen.iter().map(|l| l.split(' ').next().unwrap()).collect();
        // The first NOOP is the client's marker, the second the caller's.
        assert_eq!(
            verbs,
            ["USER", "PASS", "TYPE", "EPSV", "STOR", "ABOR", "NOOP", "NOOP", "QUIT"],
            "{style}"
        );
        assert_eq!(
            data_end,
            Some(Err(io::ErrorKind::ConnectionReset)),
            "{style}: the data connection ended as a complete upload"
        );
    }
}

/// A control connection on `ip` that answers `PASV` naming `named` (four numbers, comma
/// separated) and the port of its data listener, which is on `ip` too, and serves `RETR`
/// with `body`; returns its URL and its thread, which gives the commands it got.
fn pasv_server(
    ip: &str,
    named: &'static str,
    body: &'static [u8],
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let data_listener = TcpListener::bind((ip, 0)).unwrap();
    let state = (data_listener, named, body);
    let (addr, handle) = scripted_ftp(ip, state, |(listener, named, body), verb, out| {
        match verb {
            "PASV" => {
                let port = listener.local_addr().unwrap().port();
                return format!(
                    "227 Entering Passive Mode ({named},{},{})",
                    port >> 8,
                    port & 0xff
                );
            }
            "RETR" => {
                // The client connects before it sends RETR.
                let (mut d, _) = listener.accept().unwrap();
                out.write_all(b"150 here it comes\r\n").unwrap();
                d.write_all(body).unwrap();
                drop(d);
                "226 sent"
            }
            _ => scripted_reply(verb),
        }
        .to_string()
    });
    let commands = std::thread::spawn(move || handle.join().unwrap().0);
    (format!("ftp://{addr}/f.bin"), commands)
}

/// Before: a `PASV` reply naming an address other than the control connection's peer was
/// refused, although the data connection only ever goes to that peer: the refusal guarded
/// nothing and broke servers behind NAT, which name their private address. Now the reply's
/// port is used with the peer's address, as curl does by default.
#[test]
fn a_pasv_reply_naming_another_host_connects_to_the_control_peer() {
    let _dog = Watchdog::new("ftp pasv behind nat", LIMIT);
    let opts = Options::new()
        .timeout(Some(Duration::from_secs(20)))
        .epsv(false);
    // A server behind NAT names its private address; one with a wildcard listener may
    // name anything.
    for named in ["10,1,2,3", "192,168,0,7", "0,0,0,0"] {
        let (url, server) = pasv_server("127.0.0.1", named, b"behind nat");
        let got = ftp::get_to(&url, &opts, &mut Vec::new());
        assert_eq!(util::kind(got), Ok(10), "PASV naming {named}");
        let seen = server.join().unwrap();
        assert!(seen.iter().any(|c| c == "RETR f.bin"), "{seen:?}");
    }
}

/// Over IPv6 a `PASV` reply can only name an IPv4 address; a dual-stack server's data
/// listener is reached at the control connection's IPv6 address with the reply's port.
#[test]
fn a_pasv_reply_over_ipv6_connects_to_the_ipv6_control_peer() {
    if TcpListener::bind("[::1]:0").is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "IPv6 loopback is required in CI"
        );
        eprintln!("note: no IPv6 loopback; skipping this test (it fails when CI is set)");
        return;
    }
    let _dog = Watchdog::new("ftp pasv over ipv6", LIMIT);
    let opts = Options::new()
        .timeout(Some(Duration::from_secs(20)))
        .epsv(false);
    let (url, server) = pasv_server("::1", "127,0,0,1", b"v6 data");
    let mut body = Vec::new();
    let got = ftp::get_to(&url, &opts, &mut body);
    assert_eq!(util::kind(got), Ok(7));
    assert_eq!(body, b"v6 data");
    let seen = server.join().unwrap();
    assert!(seen.iter().any(|c| c == "PASV"), "{seen:?}");
}
