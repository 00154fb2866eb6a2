//! TLS over loopback, against real peers (`openssl s_server`, `openssl s_client`) and our own.
//!
//! The test PKI (a CA, a server certificate for `localhost` and `127.0.0.1` signed by it, and
//! an unrelated self-signed certificate) is made with the `openssl` CLI into a temporary
//! directory once per test binary (`../shared/test-peers.md` A.1). Without `openssl` the tests
//! fail when the `CI` environment variable is set and are skipped with a note otherwise.
//!
//! Copas scenarios: `largetransfer` (TLS part: 50 MiB each way while a ticker keeps ticking)
//! and the handshake failures of `tls-sni`; reliability row B.2-12 (garbage, a stalled
//! handshake, an untrusted certificate, a host-name mismatch: each a typed error, and the
//! server keeps serving). Then the socket contract over TLS: patterns, timeouts, `close`
//! waking a blocked reader, the std I/O traits, blocking use outside a coroutine, and
//! `dohandshake` upgrading a plain connection in place (STARTTLS).
//!
//! Every run has a watchdog, every loop is bounded, every child process is killed and
//! awaited.

#[path = "util/heap.rs"]
mod heap;
mod util;

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use copas::native_tls::{Certificate, HandshakeError, Identity, TlsAcceptor, TlsConnector};
use copas::{ErrorKind, Pattern, ServerOptions, Socket};
use util::{ms, pause_until, secs, ChildGuard};

/// The timeout of every socket in these tests unless a test sets its own, so a socket that
/// should have been woken and is not fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(10);

type Shared<T> = Rc<RefCell<T>>;

fn shared<T>(v: T) -> Shared<T> {
    Rc::new(RefCell::new(v))
}

// ----- the test PKI -----------------------------------------------------------------------

struct Pki {
    dir: PathBuf,
    ca_pem: Vec<u8>,
    server_chain: Vec<u8>,
    server_key: Vec<u8>,
    other_pem: Vec<u8>,
    other_key: Vec<u8>,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A connector that trusts the test CA (and verifies as usual).
    fn connector(&self) -> TlsConnector {
        let ca = Certificate::from_pem(&self.ca_pem).expect("ca.pem");
        TlsConnector::builder()
            .add_root_certificate(ca)
            .build()
            .expect("connector")
    }

    /// The server identity: `localhost` and `127.0.0.1`, signed by the test CA.
    fn acceptor(&self) -> TlsAcceptor {
        let id = Identity::from_pkcs8(&self.server_chain, &self.server_key).expect("identity");
        TlsAcceptor::new(id).expect("acceptor")
    }

    /// A self-signed identity (`CN=other`) nobody trusts.
    fn other_acceptor(&self) -> TlsAcceptor {
        let id = Identity::from_pkcs8(&self.other_pem, &self.other_key).expect("other identity");
        TlsAcceptor::new(id).expect("other acceptor")
    }
}

fn make_pki() -> Option<Pki> {
    let present = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "the openssl CLI is required in CI (.ci/run installs it)"
        );
        // Straight to the process's stderr, past the test harness's output capture.
        let _ = writeln!(
            std::io::stderr(),
            "note: the `openssl` CLI was not found; skipping the TLS tests (they fail in CI)"
        );
        return None;
    }
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // Leftovers of earlier runs (old enough not to belong to a test binary running now).
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > secs(3600)));
            if old && entry.file_name().to_string_lossy().starts_with("tls-pki-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(format!("tls-pki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("pki dir");
    util::make_test_pki(&dir);
    let read = |name: &str| std::fs::read(dir.join(name)).expect(name);
    let server_pem = read("server.pem");
    let ca_pem = read("ca.pem");
    let server_chain = [&server_pem[..], &ca_pem[..]].concat();
    Some(Pki {
        ca_pem,
        server_chain,
        server_key: read("server.key"),
        other_pem: read("other.pem"),
        other_key: read("other.key"),
        dir,
    })
}

/// The PKI, made once per test binary; `None` when `openssl` is missing (outside CI).
fn pki() -> Option<&'static Pki> {
    static PKI: OnceLock<Option<Pki>> = OnceLock::new();
    PKI.get_or_init(make_pki).as_ref()
}

// ----- child processes --------------------------------------------------------------------

/// Reads `pipe` line by line on a thread, sending each line.
fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts `openssl s_server -rev` (reverses each line) for `naccept` connections; returns
/// its address once it printed `ACCEPT`.
fn start_s_server(pki: &Pki, naccept: u32) -> (ChildGuard, SocketAddr) {
    for _ in 0..10 {
        let port = {
            let (l, addr) = util::local_listener();
            drop(l);
            addr.port()
        };
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-cert",
                &pki.path("server.pem"),
                "-key",
                &pki.path("server.key"),
                "-cert_chain",
                &pki.path("ca.pem"),
                "-rev",
                "-naccept",
                &naccept.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl s_server");
        let mut guard = ChildGuard(child);
        let lines = lines_of(guard.0.stdout.take().expect("stdout"));
        let deadline = Instant::now() + secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("ACCEPT") => {
                    return (guard, SocketAddr::from(([127, 0, 0, 1], port)));
                }
                Ok(_) => {}
                Err(_) => break, // exited (port taken?) or too slow: try another port
            }
        }
    }
    panic!("openssl s_server did not start");
}

// ----- dispatcher helpers -----------------------------------------------------------------

/// What the error handler received: the error's kind when the payload is a copas error
/// (how `copas::handler` reports a failed handshake), and the message.
type Reports = Shared<Vec<(Option<ErrorKind>, String)>>;

/// Collects every coroutine panic of this thread's dispatcher.
fn collect_reports() -> Reports {
    let reports: Reports = shared(Vec::new());
    let sink = reports.clone();
    copas::setdefaulterrorhandler(move |report| {
        let kind = report
            .payload()
            .downcast_ref::<copas::Error>()
            .map(|e| e.kind());
        sink.borrow_mut().push((kind, report.message().to_string()));
    });
    reports
}

/// Reports other than failed handshakes: panics of the test's own coroutines (assertions).
fn assertion_failures(reports: &Reports) -> Vec<String> {
    reports
        .borrow()
        .iter()
        .filter(|(kind, _)| kind.is_none())
        .map(|(_, m)| m.clone())
        .collect()
}

/// Runs the dispatcher to its end under a watchdog and fails on any panic of a test
/// coroutine; returns the handshake-failure reports.
fn run_checked(reports: &Reports, limit: Duration) -> Vec<(ErrorKind, String)> {
    let took = util::run_bounded(limit);
    let failures = assertion_failures(reports);
    assert!(failures.is_empty(), "a coroutine panicked: {failures:#?}");
    assert!(took < limit);
    reports
        .borrow()
        .iter()
        .filter_map(|(k, m)| k.map(|k| (k, m.clone())))
        .collect()
}

/// Steps the dispatcher until a helper thread's result arrives on `rx`, within `limit`.
fn step_until_received<T>(rx: &mpsc::Receiver<T>, limit: Duration) -> Option<T> {
    let mut got = None;
    util::step_until(limit, || {
        if got.is_none() {
            got = rx.try_recv().ok();
        }
        got.is_some()
    });
    got
}

/// A TLS line-echo handler: echoes lines until `bye`; counts the sessions it served.
fn tls_echo(served: Rc<Cell<u32>>) -> impl Fn(Socket) + 'static {
    move |mut sock: Socket| {
        served.set(served.get() + 1);
        assert!(sock.is_tls());
        while let Ok(line) = sock.receive(Pattern::Line) {
            if line == b"bye" {
                break;
            }
            if sock.send(&[&line[..], b"\n"].concat()).is_err() {
                break;
            }
        }
    }
}

/// Adds a TLS echo server (connections get `timeout`); returns it and its address.
fn add_tls_echo(
    acceptor: TlsAcceptor,
    timeout: Duration,
    served: Rc<Cell<u32>>,
) -> (copas::Server, SocketAddr) {
    let (listener, addr) = util::local_listener();
    let server = copas::addserver_with(
        listener,
        ServerOptions::new().name("tls-echo").timeout(timeout),
        copas::handler(tls_echo(served), acceptor),
    )
    .expect("addserver");
    (server, addr)
}

/// Adds a TLS server running `f` on each connection (handshakes under [`GUARD`]); returns
/// it and its address.
fn add_tls_server(pki: &Pki, f: impl Fn(Socket) + 'static) -> (copas::Server, SocketAddr) {
    let (listener, addr) = util::local_listener();
    let server = copas::addserver_with(
        listener,
        ServerOptions::new().timeout(GUARD),
        copas::handler(f, pki.acceptor()),
    )
    .expect("addserver");
    (server, addr)
}

/// Adds a TLS server whose handler waits for one line, sends each of `sends` with a send of
/// its own, and holds the connection until the client closes it; returns it and its
/// address.
fn add_tls_answering(pki: &Pki, sends: &'static [&'static [u8]]) -> (copas::Server, SocketAddr) {
    add_tls_server(pki, move |mut sock: Socket| {
        let _ = sock.receive(Pattern::Line);
        for data in sends {
            sock.send(data).unwrap();
        }
        let _ = sock.receive(Pattern::All);
    })
}

/// A real ClientHello, as the first flight of a native-tls client.
fn client_hello() -> Vec<u8> {
    struct Capture(Vec<u8>);
    impl Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl Write for Capture {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let connector = TlsConnector::new().expect("connector");
    match connector.connect("localhost", Capture(Vec::new())) {
        Err(HandshakeError::WouldBlock(mid)) => {
            let hello = mid.get_ref().0.clone();
            assert_eq!(hello[0], 0x16, "a handshake record");
            hello
        }
        _ => panic!("expected the handshake to wait for the server"),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ----- real peers -------------------------------------------------------------------------

#[test]
fn our_client_talks_to_openssl_s_server() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("our_client_talks_to_openssl_s_server", secs(60));
    let (s_server, addr) = start_s_server(pki, 3);
    let s_server = Rc::new(RefCell::new(s_server));
    let reports = collect_reports();
    let replies = shared(Vec::new());
    let cut = shared(None);
    let (out, cut_short) = (replies.clone(), cut.clone());
    let connector = pki.connector();
    copas::addthread(move || {
        // By host name and by IP address (the certificate has both).
        for name in ["localhost", "127.0.0.1"] {
            let mut sock = copas::connect_tls(addr, name, &connector, Some(GUARD))
                .unwrap_or_else(|e| panic!("connect_tls as {name}: {e}"));
            sock.settimeout(Some(GUARD));
            assert!(sock.is_tls());
            assert!(sock.peer_certificate().unwrap().is_some());
            sock.send(b"hello world\n").unwrap();
            out.borrow_mut().push(sock.receive(Pattern::Line).unwrap());
            sock.close();
        }
        // A peer that dies closes TCP without a TLS close_notify, between records: the end
        // of the stream, as with LuaSec and native-tls.
        let mut sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        // One exchange first: its reply shows the server has read all we sent and written
        // all it had to say (session tickets included). Killed with bytes still unread (a
        // server slow to take our last handshake flight on a loaded machine), its kernel
        // would reset the connection instead of closing it.
        sock.send(b"ping\n").unwrap();
        assert_eq!(sock.receive(Pattern::Line).unwrap(), b"gnip");
        {
            let mut server = s_server.borrow_mut();
            let _ = server.0.kill();
            let _ = server.0.wait();
        }
        *cut_short.borrow_mut() = Some(sock.receive(Pattern::All).map_err(|e| e.kind()));
    })
    .unwrap();
    run_checked(&reports, secs(30));
    assert_eq!(*replies.borrow(), vec![b"dlrow olleh".to_vec(); 2]);
    let cut = cut.borrow_mut().take().expect("the last read ended");
    assert_eq!(cut, Ok(Vec::new()));
}

#[test]
fn openssl_s_client_talks_to_our_echo_server() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("openssl_s_client_talks_to_our_echo_server", secs(60));
    let reports = collect_reports();
    let served = Rc::new(Cell::new(0));
    let (server, addr) = add_tls_echo(pki.acceptor(), GUARD, served.clone());

    // s_client runs on a helper thread: its pipes block, the dispatcher must not.
    let ca = pki.path("ca.pem");
    let (tx, rx) = mpsc::channel();
    let helper = std::thread::spawn(move || {
        let child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "localhost",
                "-CAfile",
                &ca,
                "-verify_return_error",
                "-quiet",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl s_client");
        let mut child = ChildGuard(child);
        let mut stdin = child.0.stdin.take().expect("stdin");
        stdin
            .write_all(b"hello over tls\nsecond line\nbye\n")
            .expect("write to s_client");
        let lines = lines_of(child.0.stdout.take().expect("stdout"));
        let errors = lines_of(child.0.stderr.take().expect("stderr"));
        // Our server closes after `bye`, so s_client ends and its stdout closes.
        let mut got = Vec::new();
        let deadline = Instant::now() + secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => got.push(line),
                Err(_) => break,
            }
        }
        drop(stdin);
        let status = child.0.wait().expect("wait s_client");
        let stderr: Vec<String> = errors.try_iter().collect();
        let _ = tx.send((got, status.success(), stderr));
    });

    let done = step_until_received(&rx, secs(30));
    copas::removeserver(server, false).unwrap();
    run_checked(&reports, secs(20));
    helper.join().expect("helper thread");
    let (got, _success, stderr) = done.expect("s_client did not finish");
    assert_eq!(
        got,
        vec!["hello over tls", "second line"],
        "stderr: {stderr:?}"
    );
    assert_eq!(served.get(), 1);
}

/// How [`relay`] passes on the client's bytes.
#[derive(Clone, Copy)]
enum Relaying {
    /// In pieces of this many bytes, with this pause after each.
    Trickle(usize, Duration),
    /// Gathered until the client pauses this long, then in one write.
    Coalesce(Duration),
}

/// Relays one connection accepted on `listener` to `to` on two OS threads: the client's
/// bytes as `how` says, the server's as they come.
fn relay(
    listener: std::net::TcpListener,
    to: SocketAddr,
    how: Relaying,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut client, _) = listener.accept().expect("relay: accept");
        let mut server = std::net::TcpStream::connect(to).expect("relay: connect");
        server.set_nodelay(true).expect("nodelay");
        let quiet = match how {
            Relaying::Coalesce(quiet) => quiet,
            Relaying::Trickle(..) => secs(20),
        };
        client.set_read_timeout(Some(quiet)).expect("timeout");
        let (mut from_server, mut to_client) = (
            server.try_clone().expect("clone"),
            client.try_clone().expect("clone"),
        );
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_server, &mut to_client);
            let _ = to_client.shutdown(std::net::Shutdown::Write);
        });
        let mut buf = [0u8; 4096];
        let mut gathered = Vec::new();
        let started = Instant::now();
        while started.elapsed() < secs(30) {
            match (client.read(&mut buf), how) {
                (Ok(0), _) => break,
                (Ok(n), Relaying::Trickle(piece, gap)) => {
                    for chunk in buf[..n].chunks(piece) {
                        let _ = server.write_all(chunk);
                        std::thread::sleep(gap);
                    }
                }
                (Ok(n), Relaying::Coalesce(_)) => gathered.extend_from_slice(&buf[..n]),
                (Err(e), _)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    let _ = server.write_all(&std::mem::take(&mut gathered));
                }
                (Err(_), _) => break,
            }
        }
        let _ = server.write_all(&gathered);
        let _ = server.shutdown(std::net::Shutdown::Write);
        back.join().expect("relay: back");
    })
}

/// A TLS read first looks whether anything is buffered and the socket drained, and then
/// waits without calling into OpenSSL. Records that arrive a few bytes at a time (OpenSSL
/// holding half a record between the pieces), the handshake's too, must still be read whole;
/// so must records whose bytes all came at once, when the reader takes less than a record
/// (the rest decrypted in the TLS layer) or less than what came (the next records' bytes in
/// the adapter), with the socket itself drained.
#[test]
fn tls_records_arriving_in_pieces_or_all_at_once_are_read_whole() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("tls_records_arriving_in_pieces_or_all_at_once", secs(60));
    let reports = collect_reports();
    let served = Rc::new(Cell::new(0));
    let (server, addr) = add_tls_echo(pki.acceptor(), GUARD, served.clone());
    let (trickle_listener, trickle_addr) = util::local_listener();
    let trickle = relay(trickle_listener, addr, Relaying::Trickle(7, ms(1)));
    let (coalesce_listener, coalesce_addr) = util::local_listener();
    let coalesce = relay(coalesce_listener, addr, Relaying::Coalesce(ms(20)));
    let connector = pki.connector();
    let line = |i: usize, len: usize| -> Vec<u8> {
        (0..len).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect()
    };
    // Each message is written as the parts given, a TLS record each, with "\n" after the
    // last. Through the first relay, small records in 7-byte pieces. Through the second,
    // which passes each burst on in one write: a line of two records that land together
    // (the second waits in the adapter), a 10,000-byte record read in buffer-sized parts
    // (the rest waits decrypted in OpenSSL), 40,000 bytes in three records, and two lines
    // in one record.
    let trickled = vec![vec![line(0, 3)], vec![line(1, 700)], vec![line(2, 2_000)]];
    let at_once = vec![
        vec![line(3, 5), line(4, 6)],
        vec![line(5, 10_000)],
        vec![line(6, 40_000)],
        vec![[line(7, 10), b"\n".to_vec(), line(8, 20)].concat()],
    ];
    let expected: Vec<Vec<u8>> = trickled
        .iter()
        .chain(&at_once)
        .map(|parts| [parts.concat(), b"\n".to_vec()].concat())
        .collect();
    let (tx, rx) = mpsc::channel();
    let client = std::thread::spawn(move || {
        let mut echoed = Vec::new();
        for (to, messages) in [(trickle_addr, trickled), (coalesce_addr, at_once)] {
            let tcp = std::net::TcpStream::connect(to).expect("connect");
            tcp.set_read_timeout(Some(secs(20))).expect("timeout");
            // No Nagle delay: a message's records reach the relay together.
            tcp.set_nodelay(true).expect("nodelay");
            let tls = connector.connect("localhost", tcp).expect("handshake");
            let mut reader = BufReader::new(tls);
            for mut parts in messages {
                let lines = parts.iter().flatten().filter(|&&b| b == b'\n').count() + 1;
                parts.last_mut().expect("a part").push(b'\n');
                for part in &parts {
                    reader.get_mut().write_all(part).expect("write");
                }
                let mut back = Vec::new();
                for _ in 0..lines {
                    reader.read_until(b'\n', &mut back).expect("read the echo");
                }
                echoed.push(back);
            }
            reader.get_mut().write_all(b"bye\n").expect("write bye");
        }
        let _ = tx.send(echoed);
    });
    let echoed = step_until_received(&rx, secs(40));
    copas::removeserver(server, false).unwrap();
    run_checked(&reports, secs(20));
    client.join().expect("client thread");
    trickle.join().expect("relay thread");
    coalesce.join().expect("relay thread");
    let echoed = echoed.expect("the client did not finish");
    assert_eq!(echoed, expected);
    assert_eq!(served.get(), 2);
}

/// Relays one connection accepted on `listener` to `to`, the client's bytes as they come
/// and the server's record by record, until the first record whose body is `big` bytes or
/// more: of that one it passes on `cut_at` body bytes (`None`: not even the header), then
/// closes the connection to the client.
fn relay_cutting_a_record(
    listener: std::net::TcpListener,
    to: SocketAddr,
    big: usize,
    cut_at: Option<usize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (client, _) = listener.accept().expect("relay: accept");
        let server = std::net::TcpStream::connect(to).expect("relay: connect");
        server.set_read_timeout(Some(secs(20))).expect("timeout");
        let (mut from_client, mut to_server) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_server);
        });
        let (mut from_server, mut to_client) = (server, client);
        for _ in 0..100 {
            let mut header = [0u8; 5];
            if from_server.read_exact(&mut header).is_err() {
                break;
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let mut body = vec![0; len];
            if from_server.read_exact(&mut body).is_err() {
                break;
            }
            if len >= big {
                if let Some(cut_at) = cut_at {
                    let _ = to_client.write_all(&header);
                    let _ = to_client.write_all(&body[..cut_at]);
                }
                break;
            }
            let _ = to_client.write_all(&header);
            let _ = to_client.write_all(&body);
        }
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    })
}

/// A TCP close in the middle of a TLS record is `Closed`, not the end of the stream: the
/// bytes of a truncated record are not data a reader may take as complete. A close between
/// records is the end of the stream, as LuaSec has it. Through a relay that cuts the
/// server's connection in a 10,000-byte record, or right before it.
#[test]
fn a_tls_stream_cut_in_the_middle_of_a_record_is_closed_and_between_records_ends() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("a_tls_stream_cut_in_the_middle_of_a_record", secs(60));
    for cut_at in [Some(5_000), Some(0), None] {
        let (server_listener, server_addr) = util::local_listener();
        let acceptor = pki.acceptor();
        let server = std::thread::spawn(move || {
            let (tcp, _) = server_listener.accept().expect("accept");
            tcp.set_read_timeout(Some(secs(20))).expect("timeout");
            let mut tls = acceptor.accept(tcp).expect("server handshake");
            tls.write_all(b"first line\n").expect("write the line");
            tls.write_all(&[b'z'; 10_000])
                .expect("write the big record");
            // Until the client is done, so that only the relay ends the connection.
            let _ = tls.read(&mut [0; 16]);
        });
        let (relay_listener, relay_addr) = util::local_listener();
        let relay = relay_cutting_a_record(relay_listener, server_addr, 10_000, cut_at);
        let connector = pki.connector();
        let got = shared(None);
        let out = got.clone();
        util::run_with_bounded(secs(30), move || {
            copas::addthread(move || {
                let mut sock = copas::connect_tls(relay_addr, "localhost", &connector, Some(GUARD))
                    .expect("connect_tls");
                sock.settimeout(Some(GUARD));
                let line = sock.receive(Pattern::Line).map_err(|e| e.kind());
                let rest = sock
                    .receive(Pattern::All)
                    .map_err(|e| (e.kind(), e.partial().len()));
                let after = sock.receive(Pattern::Exact(1)).map_err(|e| e.kind());
                *out.borrow_mut() = Some((line, rest, after));
            })
            .expect("addthread");
        });
        relay.join().expect("relay thread");
        server.join().expect("server thread");
        let (line, rest, after) = got.borrow_mut().take().expect("the client did not finish");
        assert_eq!(line, Ok(b"first line".to_vec()), "cut at {cut_at:?}");
        if cut_at.is_some() {
            assert_eq!(rest, Err((ErrorKind::Closed, 0)), "cut at {cut_at:?}");
        } else {
            assert_eq!(rest, Ok(Vec::new()), "a close between records");
        }
        assert_eq!(after, Err(ErrorKind::Closed), "cut at {cut_at:?}");
    }
}

// ----- largetransfer (TLS part) -----------------------------------------------------------

#[test]
fn largetransfer_50_mib_each_way_over_tls_while_a_ticker_ticks() {
    let Some(pki) = pki() else { return };
    const SIZE: usize = 50 * 1024 * 1024;
    const CHUNK: usize = 1024 * 1024;
    let _dog = util::Watchdog::new("largetransfer over TLS", secs(120));
    let reports = collect_reports();
    let up = Rc::new(noise(SIZE, 0x1234_5678));
    let down = Rc::new(noise(SIZE, 0x8765_4321));

    let done = Rc::new(Cell::new(0u32)); // sides finished
    let server_ok = Rc::new(Cell::new(false));
    let client_ok = Rc::new(Cell::new(false));

    /// Sends `body` in chunks on a coroutine of its own; returns its future.
    fn send_body(mut sock: Socket, body: Rc<Vec<u8>>) -> copas::future::Future<()> {
        copas::future::addthread(move || {
            for chunk in body.chunks(CHUNK) {
                sock.send(chunk).expect("send chunk");
            }
        })
        .unwrap()
    }

    let (listener, addr) = util::local_listener();
    let server = {
        let (up, down, done, server_ok) =
            (up.clone(), down.clone(), done.clone(), server_ok.clone());
        copas::addserver_with(
            listener,
            ServerOptions::new().timeout(secs(60)),
            copas::handler(
                move |mut sock: Socket| {
                    let writer = send_body(sock.share(), down.clone());
                    let got = sock.receive(Pattern::Exact(SIZE)).expect("server receive");
                    writer.get().expect("server send");
                    server_ok.set(got == *up);
                    done.set(done.get() + 1);
                },
                pki.acceptor(),
            ),
        )
        .unwrap()
    };
    let server = Rc::new(Cell::new(Some(server)));

    let ticks = Rc::new(Cell::new(0u32));
    let max_gap = Rc::new(Cell::new(Duration::ZERO));
    {
        let (ticks, max_gap, done) = (ticks.clone(), max_gap.clone(), done.clone());
        copas::addthread(move || {
            let mut last = Instant::now();
            // Bounded: the watchdog ends the process long before.
            for _ in 0..100_000 {
                if done.get() == 2 {
                    break;
                }
                copas::pause(ms(50));
                let now = Instant::now();
                max_gap.set(max_gap.get().max(now - last));
                last = now;
                ticks.set(ticks.get() + 1);
            }
        })
        .unwrap();
    }

    let connector = pki.connector();
    let started = Instant::now();
    {
        let (up, down, done, client_ok) =
            (up.clone(), down.clone(), done.clone(), client_ok.clone());
        copas::addthread(move || {
            let mut sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
            sock.settimeout(Some(secs(60)));
            let writer = send_body(sock.share(), up);
            let got = sock.receive(Pattern::Exact(SIZE)).expect("client receive");
            writer.get().expect("client send");
            client_ok.set(got == *down);
            done.set(done.get() + 1);
            copas::removeserver(server.take().unwrap(), false).unwrap();
        })
        .unwrap();
    }
    run_checked(&reports, secs(100));
    let took = started.elapsed();
    assert!(server_ok.get(), "the server got the body intact");
    assert!(client_ok.get(), "the client got the body intact");
    eprintln!(
        "largetransfer over TLS: 2 x 50 MiB in {took:?}, {} ticks, longest gap {:?}",
        ticks.get(),
        max_gap.get()
    );
    assert!(took < secs(60), "took {took:?}");
    // The ticker kept ticking through the transfer: several ticks, and no gap longer than
    // Copas's 1 s ticker period (or a fifth of the transfer, when an overloaded machine
    // stretches every step alike). A coroutine that never yielded would leave one gap as
    // long as the transfer.
    assert!(ticks.get() >= 5, "only {} ticks", ticks.get());
    let limit = secs(1).max(took / 5);
    assert!(
        max_gap.get() < limit,
        "the ticker stalled for {:?} (limit {limit:?})",
        max_gap.get()
    );
}

// ----- handshake failures -----------------------------------------------------------------

#[test]
fn server_survives_garbage_truncated_and_stalled_handshakes() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("server handshake failures", secs(60));
    let reports = collect_reports();
    let served = Rc::new(Cell::new(0));
    // The connect timeout (500 ms) is the handshake timeout.
    let (server, addr) = add_tls_echo(pki.acceptor(), ms(500), served.clone());
    let hello = client_hello();
    let connector = pki.connector();
    let stalled_for = Rc::new(Cell::new(Duration::ZERO));
    let echoed = shared(Vec::new());
    let (stalled, out) = (stalled_for.clone(), echoed.clone());
    copas::addthread(move || {
        // 1. Plaintext instead of a ClientHello: the server closes the connection.
        let mut sock = copas::connect(addr, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        sock.send(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let end = sock.receive(Pattern::All);
        assert!(end.is_ok() || end.unwrap_err().kind() == ErrorKind::Closed);

        // 2. 1 MiB of random bytes (the server may reset while we still send).
        let mut sock = copas::connect(addr, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        match sock.send(&noise(1 << 20, 99)) {
            Ok(_) => {
                let end = sock.receive(Pattern::All);
                assert!(end.is_ok() || end.unwrap_err().kind() == ErrorKind::Closed);
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Closed, "{e}"),
        }

        // 3. A ClientHello, then hang up.
        let mut sock = copas::connect(addr, Some(GUARD)).unwrap();
        sock.send(&hello).unwrap();
        sock.close();
        copas::pause(ms(50));

        // 4. A ClientHello, then nothing: the server gives up after its 500 ms.
        let mut sock = copas::connect(addr, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        let t0 = Instant::now();
        sock.send(&hello).unwrap();
        let end = sock.receive(Pattern::All); // the server's flight, then its close
        assert!(end.is_ok() || end.unwrap_err().kind() == ErrorKind::Closed);
        stalled.set(t0.elapsed());

        // 5. The server still serves a proper client.
        let mut sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        sock.send(b"still there?\n").unwrap();
        out.borrow_mut().push(sock.receive(Pattern::Line).unwrap());
        sock.send(b"bye\n").unwrap();
        assert!(sock.receive(Pattern::Line).is_err());
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    let failures = run_checked(&reports, secs(30));
    assert_eq!(*echoed.borrow(), vec![b"still there?".to_vec()]);
    assert_eq!(
        served.get(),
        1,
        "the handler ran only for the proper client"
    );
    let kinds: Vec<ErrorKind> = failures.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        vec![
            ErrorKind::Tls,
            ErrorKind::Tls,
            // The client hung up mid-handshake: closed, as over a plain socket.
            ErrorKind::Closed,
            ErrorKind::Timeout
        ],
        "{failures:#?}"
    );
    for (_, message) in &failures {
        assert!(
            message.starts_with("TLS/SSL handshake failed: "),
            "{message}"
        );
    }
    assert_eq!(failures[3].1, "TLS/SSL handshake failed: timeout");
    let stalled = stalled_for.get();
    assert!(
        stalled >= ms(450) && stalled < secs(3),
        "the stalled handshake ended after {stalled:?}"
    );
}

#[test]
fn client_gets_typed_errors_and_the_server_keeps_serving() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("client handshake failures", secs(60));
    let reports = collect_reports();
    let served = Rc::new(Cell::new(0));
    let (good, good_addr) = add_tls_echo(pki.acceptor(), GUARD, served.clone());
    let (untrusted, untrusted_addr) = add_tls_echo(pki.other_acceptor(), GUARD, served.clone());

    // A plaintext server that greets first (SMTP-like).
    let (listener, plain_addr) = util::local_listener();
    let plain = copas::addserver(listener, |mut sock: Socket| {
        let _ = sock.send(b"220 plain greeting\r\n");
        sock.settimeout(Some(GUARD));
        let _ = sock.receive(Pattern::All);
    })
    .unwrap();
    // A server that never answers: accepted by the kernel, never read.
    let (silent, silent_addr) = util::local_listener();

    let connector = pki.connector();
    let errors = shared(Vec::new());
    let echoed = shared(Vec::new());
    let (errs, out) = (errors.clone(), echoed.clone());
    copas::addthread(move || {
        let record = |what: &str, r: copas::Result<Socket>| match r {
            Ok(_) => panic!("{what}: connect_tls succeeded"),
            Err(e) => errs
                .borrow_mut()
                .push((what.to_string(), e.kind(), e.to_string())),
        };
        record(
            "untrusted",
            copas::connect_tls(untrusted_addr, "localhost", &connector, Some(GUARD)),
        );
        record(
            "mismatch",
            copas::connect_tls(good_addr, "wrong.example", &connector, Some(GUARD)),
        );
        record(
            "plaintext",
            copas::connect_tls(plain_addr, "localhost", &connector, Some(GUARD)),
        );
        let t0 = Instant::now();
        record(
            "silent",
            copas::connect_tls(silent_addr, "localhost", &connector, Some(ms(300))),
        );
        let waited = t0.elapsed();
        assert!(waited >= ms(280) && waited < secs(2), "{waited:?}");

        // The good server still serves.
        let mut sock = copas::connect_tls(good_addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        sock.send(b"ok\n").unwrap();
        out.borrow_mut().push(sock.receive(Pattern::Line).unwrap());
        drop(sock);
        for server in [good, untrusted, plain] {
            copas::removeserver(server, false).unwrap();
        }
    })
    .unwrap();
    let failures = run_checked(&reports, secs(30));
    drop(silent);
    assert_eq!(*echoed.borrow(), vec![b"ok".to_vec()]);
    let errors = errors.borrow();
    let find = |what: &str| errors.iter().find(|e| e.0 == what).unwrap().clone();
    let (_, kind, text) = find("untrusted");
    assert_eq!(kind, ErrorKind::Tls, "{text}");
    assert!(text.contains("certificate verify failed"), "{text}");
    let (_, kind, text) = find("mismatch");
    assert_eq!(kind, ErrorKind::Tls, "{text}");
    assert!(
        text.contains("certificate verify failed") || text.contains("match"),
        "{text}"
    );
    let (_, kind, text) = find("plaintext");
    assert_eq!(kind, ErrorKind::Tls, "{text}");
    let (_, kind, text) = find("silent");
    assert_eq!(kind, ErrorKind::Timeout, "{text}");
    // Our servers saw the refused handshakes (the client aborted them) as failures, and
    // ran the handler only for the good session.
    assert_eq!(served.get(), 1);
    assert_eq!(failures.len(), 2, "{failures:#?}");
    assert!(failures.iter().all(|(k, _)| *k == ErrorKind::Tls));
}

// ----- the socket contract over TLS -------------------------------------------------------

#[test]
fn patterns_timeouts_and_close_work_over_tls() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("patterns over TLS", secs(60));
    let reports = collect_reports();
    let bulk = Rc::new(noise(300_000, 7));
    let (listener, addr) = util::local_listener();
    let server_end = shared(None);
    let server = {
        let (bulk, server_end) = (bulk.clone(), server_end.clone());
        copas::addserver_with(
            listener,
            ServerOptions::new().timeout(GUARD),
            copas::handler(
                move |mut sock: Socket| {
                    sock.send(b"first line\r\nsecond\n0123456789").unwrap();
                    assert_eq!(sock.receive(Pattern::Line).unwrap(), b"ping");
                    // Slices over TLS: sent in turn, empty ones skipped.
                    let pong = [
                        IoSlice::new(b"po"),
                        IoSlice::new(b""),
                        IoSlice::new(b"ng\n"),
                    ];
                    assert_eq!(sock.send_vectored(&pong).unwrap(), 5);
                    assert_eq!(sock.receive(Pattern::Line).unwrap(), b"late?");
                    copas::pause(ms(300));
                    sock.send(b"late\n").unwrap();
                    assert_eq!(sock.receive(Pattern::Line).unwrap(), b"bulk");
                    let halves = [IoSlice::new(&bulk[..1000]), IoSlice::new(&bulk[1000..])];
                    assert_eq!(sock.send_vectored(&halves).unwrap(), bulk.len());
                    sock.send(b"partial").unwrap();
                    // The client now blocks in a read and closes its socket from another
                    // coroutine: we see the end of the connection.
                    let end = sock.receive(Pattern::Line);
                    *server_end.borrow_mut() = Some(end.map_err(|e| e.kind()));
                },
                pki.acceptor(),
            ),
        )
        .unwrap()
    };
    let connector = pki.connector();
    let woke_after = Rc::new(Cell::new(None));
    let woke = woke_after.clone();
    copas::addthread(move || {
        let mut sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        assert_eq!(sock.receive(Pattern::Line).unwrap(), b"first line");
        assert_eq!(sock.receive(Pattern::Line).unwrap(), b"second");
        assert_eq!(sock.receive(Pattern::Exact(4)).unwrap(), b"0123");
        assert_eq!(
            sock.receive_with_prefix(Pattern::Exact(8), b"ab").unwrap(),
            b"ab456789"
        );
        // Over TLS `write_vectored` writes the first slice that is not empty.
        let ping = [
            IoSlice::new(b""),
            IoSlice::new(b"ping\n"),
            IoSlice::new(b"never"),
        ];
        assert_eq!(sock.write_vectored(&ping).unwrap(), 5);
        let mut reader = BufReader::new(sock.share());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "pong\n");

        // A receive timeout over TLS, then the late line still arrives whole.
        sock.send(b"late?\n").unwrap();
        sock.settimeouts(Some(GUARD), Some(GUARD), Some(ms(100)));
        let t0 = Instant::now();
        let err = sock.receive(Pattern::Line).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        let waited = t0.elapsed();
        // The server's line is due 300 ms after the request, on this thread's timers: a
        // timeout (not the line) shows the 100 ms deadline came first; how late it fired
        // depends on the machine.
        assert!(waited >= ms(95) && waited < secs(2), "{waited:?}");
        sock.settimeout(Some(GUARD));
        assert_eq!(sock.receive(Pattern::Line).unwrap(), b"late");

        // Read: a large body through `read_exact`, then `receivepartial`.
        sock.send(b"bulk\n").unwrap();
        let mut body = vec![0; 300_000];
        sock.read_exact(&mut body).unwrap();
        assert!(body == *bulk);
        let mut partial = Vec::new();
        for _ in 0..100 {
            if partial.len() == 7 {
                break;
            }
            let got = sock.receivepartial(1024).unwrap();
            assert!(!got.is_empty());
            partial.extend_from_slice(&got);
        }
        assert_eq!(partial, b"partial");

        // close from another coroutine wakes a reader blocked on the TLS socket.
        let closer = sock.share();
        copas::addthread(move || {
            copas::pause(ms(100));
            closer.close();
        })
        .unwrap();
        let t0 = Instant::now();
        let err = sock.receive(Pattern::Line).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
        woke.set(Some(t0.elapsed()));
        assert!(sock.send(b"x").is_err());
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    run_checked(&reports, secs(30));
    let woke = woke_after.get().expect("the reader woke");
    assert!(woke >= ms(95) && woke < secs(1), "{woke:?}");
    // We sent a close_notify: the server's read ended cleanly (or saw the close).
    let end = server_end.borrow_mut().take().expect("server finished");
    assert!(
        matches!(end, Err(ErrorKind::Closed)),
        "the server's read ended with {end:?}"
    );
}

/// Coroutines waiting to read (without the listening servers) and to write.
fn waiting() -> (usize, usize) {
    let st = copas::status();
    (st.read - st.servers, st.write)
}

/// [`waiting`] as soon as some coroutine waits on a socket (within 5 s).
fn first_wait() -> (usize, usize) {
    for _ in 0..500 {
        if waiting() != (0, 0) {
            break;
        }
        copas::pause(ms(10));
    }
    waiting()
}

#[test]
fn tls_waits_for_the_direction_that_blocked() {
    let Some(pki) = pki() else { return };
    const BIG: usize = 16 * 1024 * 1024;
    let _dog = util::Watchdog::new("TLS wait directions", secs(60));
    let reports = collect_reports();
    let release = Rc::new(Cell::new(false));
    let received = Rc::new(Cell::new(false));
    let (listener, addr) = util::local_listener();
    let server = {
        let (release, received) = (release.clone(), received.clone());
        copas::addserver_with(
            listener,
            ServerOptions::new().timeout(GUARD),
            copas::handler(
                move |mut sock: Socket| {
                    // Do not read until told to: the client's send fills the buffers.
                    for _ in 0..1000 {
                        if release.get() {
                            break;
                        }
                        copas::pause(ms(10));
                    }
                    let got = sock.receive(Pattern::Exact(BIG)).unwrap();
                    assert_eq!(got.len(), BIG);
                    received.set(true);
                    copas::pause(ms(300)); // the client now waits to read
                    sock.send(b"done\n").unwrap();
                },
                pki.acceptor(),
            ),
        )
        .unwrap()
    };
    let samples = shared(Vec::new());
    let connector = pki.connector();
    {
        let samples = samples.clone();
        copas::addthread(move || {
            // 1. A server handshake waiting for a ClientHello waits to read.
            let silent = copas::connect(addr, Some(GUARD)).unwrap();
            samples.borrow_mut().push(("handshake", first_wait()));
            copas::pause(ms(100));
            samples.borrow_mut().push(("handshake, later", waiting()));
            drop(silent);
            copas::pause(ms(50));

            // 2. A TLS send the peer does not read waits to write, 3. a TLS read to read.
            let mut sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
            sock.settimeout(Some(GUARD));
            let mut sender = sock.share();
            let body = copas::future::addthread(move || {
                sender.send(&vec![7u8; BIG]).map_err(|e| e.kind())
            })
            .unwrap();
            samples.borrow_mut().push(("send", first_wait()));
            copas::pause(ms(100));
            samples.borrow_mut().push(("send, later", waiting()));
            release.set(true);
            assert_eq!(body.get().unwrap(), Ok(BIG));
            let reader = copas::addthread({
                let (samples, received) = (samples.clone(), received.clone());
                move || {
                    for _ in 0..1000 {
                        if received.get() {
                            break;
                        }
                        copas::pause(ms(5));
                    }
                    samples.borrow_mut().push(("receive", first_wait()));
                }
            });
            reader.unwrap();
            assert_eq!(sock.receive(Pattern::Line).unwrap(), b"done");
            copas::removeserver(server, false).unwrap();
        })
        .unwrap();
    }
    let failures = run_checked(&reports, secs(30));
    assert_eq!(failures.len(), 1, "the silent client: {failures:#?}");
    assert_eq!(
        *samples.borrow(),
        vec![
            ("handshake", (1, 0)),
            ("handshake, later", (1, 0)),
            ("send", (0, 1)),
            ("send, later", (0, 1)),
            ("receive", (1, 0)),
        ]
    );
}

/// A std thread that accepts one TLS connection on a new loopback listener and, once
/// signalled through the sender returned, hands the stream to `then`; returns the
/// listener's address, that sender and the thread.
fn tls_peer_on_signal(
    pki: &Pki,
    then: impl FnOnce(copas::native_tls::TlsStream<std::net::TcpStream>) + Send + 'static,
) -> (SocketAddr, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (listener, addr) = util::local_listener();
    let acceptor = pki.acceptor();
    let (go, wait_go) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        tcp.set_read_timeout(Some(GUARD)).expect("timeout");
        let tls = acceptor.accept(tcp).expect("handshake");
        wait_go.recv_timeout(GUARD).expect("the signal");
        then(tls);
    });
    (addr, go, peer)
}

#[test]
fn two_receivepartial_waiters_on_one_tls_socket_both_see_a_reset() {
    // A std thread serves TLS and, once both client readers wait, resets the connection
    // (SO_LINGER 0). The reset is one event and wakes one reader; the other learns of it
    // only if the first, failing, hands the turn on.
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("two TLS readers and a reset", secs(60));
    let reports = collect_reports();
    let (addr, go, peer) = tls_peer_on_signal(pki, |tls| {
        socket2::SockRef::from(tls.get_ref())
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(tls);
    });
    let results: Shared<Vec<copas::Result<usize>>> = shared(Vec::new());
    let results2 = results.clone();
    let connector = pki.connector();
    copas::addthread(move || {
        let sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        for _ in 0..2 {
            let mut reader = sock.share();
            let results = results2.clone();
            copas::addthread(move || {
                let got = reader.receivepartial(4096).map(|v| v.len());
                results.borrow_mut().push(got);
            })
            .unwrap();
        }
        let both_wait = pause_until(secs(5), || copas::status().read >= 2);
        assert!(both_wait, "the readers never waited together");
        assert_eq!(copas::status().read, 2, "only the two readers wait");
        go.send(()).expect("signal the peer");
    })
    .unwrap();
    let start = Instant::now();
    run_checked(&reports, secs(30));
    let took = start.elapsed();
    peer.join().expect("peer");
    let results = results.borrow();
    assert_eq!(results.len(), 2, "{results:?}");
    for r in results.iter() {
        assert!(
            matches!(r, Ok(0)) || matches!(r, Err(e) if e.kind() != ErrorKind::Timeout),
            "{results:?}"
        );
    }
    assert!(
        took < GUARD,
        "took {took:?}: a reader slept until its timeout"
    );
}

/// Three coroutines wait in `receivepartial` on shared handles of one TLS connection; the
/// peer ends the TLS stream with `close_notify` (and then its FIN, with `fin`). The alert
/// is one event, which wakes one reader; every reader must see the end at once.
fn shared_tls_readers_see_the_end(fin: bool) {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("three TLS readers and a close_notify", secs(60));
    let reports = collect_reports();
    let (addr, go, peer) = tls_peer_on_signal(pki, move |mut tls| {
        tls.shutdown().expect("close_notify");
        if fin {
            tls.get_ref()
                .shutdown(std::net::Shutdown::Write)
                .expect("FIN");
        }
        // Open until the client closes.
        let mut byte = [0u8; 1];
        let _ = tls.read(&mut byte);
    });
    let ended: Shared<Vec<(usize, copas::Result<usize>, Duration)>> = shared(Vec::new());
    let ended2 = ended.clone();
    let connector = pki.connector();
    copas::addthread(move || {
        let sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(secs(4)));
        for max in [16usize, 65537, usize::MAX] {
            let mut reader = sock.share();
            let ended = ended2.clone();
            copas::addthread(move || {
                let start = Instant::now();
                let got = reader.receivepartial(max).map(|v| v.len());
                ended.borrow_mut().push((max, got, start.elapsed()));
            })
            .unwrap();
        }
        let all_wait = pause_until(secs(5), || copas::status().read >= 3);
        assert!(all_wait, "the readers never waited together");
        go.send(()).expect("signal the peer");
        pause_until(secs(8), || ended2.borrow().len() == 3);
        sock.close();
    })
    .unwrap();
    run_checked(&reports, secs(30));
    peer.join().expect("peer");
    let ended = ended.borrow();
    assert_eq!(ended.len(), 3, "{ended:?}");
    for (max, got, took) in ended.iter() {
        assert!(matches!(got, Ok(0)), "fin {fin}, reader {max}: {got:?}");
        assert!(
            *took < secs(2),
            "fin {fin}, reader {max} saw the end after {took:?}"
        );
    }
}

#[test]
fn every_shared_tls_reader_sees_the_end_after_close_notify() {
    shared_tls_readers_see_the_end(false);
}

#[test]
fn every_shared_tls_reader_sees_the_end_after_close_notify_and_fin() {
    shared_tls_readers_see_the_end(true);
}

#[test]
fn two_readers_through_the_read_trait_on_one_tls_socket_are_both_served() {
    // One 8 KiB send, nothing after it: the first reader's 4 KiB `read` leaves the rest in
    // the TLS layer or the kernel, and only the hand-over wakes the second reader.
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("two TLS readers", secs(60));
    let reports = collect_reports();
    let (server, addr) = add_tls_answering(pki, &[&[7u8; 8192]]);
    let got: Shared<Vec<usize>> = shared(Vec::new());
    let got2 = got.clone();
    let connector = pki.connector();
    copas::addthread(move || {
        let mut sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        for _ in 0..2 {
            let mut reader = sock.share();
            let got = got2.clone();
            copas::addthread(move || {
                let mut buf = [0u8; 4096];
                let n = reader.read(&mut buf).unwrap();
                got.borrow_mut().push(n);
            })
            .unwrap();
        }
        copas::pause(ms(50));
        sock.send(b"go\n").unwrap();
        pause_until(secs(5), || got2.borrow().len() == 2);
        sock.close();
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    run_checked(&reports, secs(30));
    assert_eq!(*got.borrow(), [4096, 4096]);
}

#[test]
fn a_turn_for_records_the_tls_layer_holds_passes_on_when_its_reader_is_removed() {
    // Two records in one segment: the first reader's line takes the first, the second stays
    // in the TLS layer, where no edge announces it, and the turn for it goes to the second
    // reader, removed before it runs. The third must get the turn, and the line.
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("TLS turn hand-on", secs(60));
    let reports = collect_reports();
    // Both sent before the client's next turn: they reach it together.
    let (server, addr) = add_tls_answering(pki, &[b"one\n", b"two\n"]);
    let got: Shared<Vec<String>> = shared(Vec::new());
    let second: Rc<Cell<Option<copas::Coroutine>>> = Rc::new(Cell::new(None));
    let connector = pki.connector();
    let (got2, second2) = (got.clone(), second.clone());
    copas::addthread(move || {
        let mut sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(secs(3)));
        for name in ["first", "second", "third"] {
            let (mut reader, got, second) = (sock.share(), got2.clone(), second2.clone());
            let co = copas::addthread(move || {
                let line = reader.receive(Pattern::Line).map_err(|e| e.kind());
                let line = line.map(|l| String::from_utf8_lossy(&l).into_owned());
                got.borrow_mut().push(format!("{name}: {line:?}"));
                if name == "first" {
                    // The second reader holds the turn by now, woken but not yet run.
                    assert!(copas::removethread(second.get().unwrap()));
                }
            })
            .unwrap();
            if name == "second" {
                second2.set(Some(co));
            }
        }
        copas::pause(ms(50));
        sock.send(b"go\n").unwrap();
        pause_until(secs(10), || got2.borrow().len() == 2);
        sock.close();
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    run_checked(&reports, secs(30));
    // Before: the third reader waited out its timeout, `Err(Timeout)`.
    assert_eq!(*got.borrow(), ["first: Ok(\"one\")", "third: Ok(\"two\")"]);
}

#[test]
fn blocking_tls_client_outside_a_coroutine() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("blocking TLS client", secs(60));
    let reports = collect_reports();
    let served = Rc::new(Cell::new(0));
    let (server, addr) = add_tls_echo(pki.acceptor(), GUARD, served.clone());
    let connector = pki.connector();
    // The client runs on a plain thread, no coroutine: every call blocks that thread.
    let client = std::thread::spawn(move || -> copas::Result<Vec<u8>> {
        let mut sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD))?;
        sock.settimeout(Some(GUARD));
        let mut lines = Vec::new();
        for i in 0..20 {
            sock.send(format!("line {i}\n").as_bytes())?;
            lines.extend(sock.receive(Pattern::Line)?);
        }
        sock.send(b"bye\n")?;
        Ok(lines)
    });
    let finished = util::step_until(secs(30), || client.is_finished());
    assert!(finished, "the blocking client did not finish");
    let lines = client.join().expect("client thread").expect("client");
    let want: Vec<u8> = (0..20)
        .flat_map(|i| format!("line {i}").into_bytes())
        .collect();
    assert_eq!(lines, want);
    copas::removeserver(server, false).unwrap();
    run_checked(&reports, secs(20));
    assert_eq!(served.get(), 1);
}

/// A fully qualified host name (`localhost.`, with the root's trailing dot) names the same
/// host as `localhost`: the certificate for `localhost` is accepted (RFC 6066 sends SNI
/// without the dot, and certificates name hosts without it).
#[test]
fn a_host_name_with_a_trailing_dot_is_verified_as_the_name_without_it() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("trailing-dot host name", secs(60));
    let reports = collect_reports();
    let served = Rc::new(Cell::new(0));
    let (server, addr) = add_tls_echo(pki.acceptor(), GUARD, served.clone());
    let connector = pki.connector();
    let got = shared(Vec::new());
    let out = got.clone();
    copas::addthread(move || {
        for name in ["localhost.", "wrong.example."] {
            let echoed =
                copas::connect_tls(addr, name, &connector, Some(GUARD)).and_then(|mut sock| {
                    sock.settimeout(Some(GUARD));
                    sock.send(b"hello\nbye\n")?;
                    sock.receive(Pattern::Line)
                });
            out.borrow_mut().push(echoed.map_err(|e| e.kind()));
        }
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    run_checked(&reports, secs(30));
    assert_eq!(
        *got.borrow(),
        [Ok(b"hello".to_vec()), Err(ErrorKind::Tls)],
        "the dotted name is accepted and still checked"
    );
}

/// A server timeout of zero never waits, and the TLS handshake runs under it: every
/// handshake fails with `Timeout` before the handler runs (as `ServerOptions::timeout` warns).
#[test]
fn a_tls_server_with_a_zero_timeout_fails_every_handshake() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("zero-timeout TLS server", secs(60));
    let reports = collect_reports();
    let served = Rc::new(Cell::new(0));
    let (server, addr) = add_tls_echo(pki.acceptor(), Duration::ZERO, served.clone());
    let connector = pki.connector();
    let got = shared(None);
    let out = got.clone();
    copas::addthread(move || {
        let r = copas::connect_tls(addr, "localhost", &connector, Some(GUARD));
        *out.borrow_mut() = Some(r.map(|_| ()).map_err(|e| e.kind()));
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    let failed = run_checked(&reports, secs(30));
    let client = got.borrow_mut().take().expect("the client finished");
    assert!(client.is_err(), "the client's handshake completed");
    assert_eq!(served.get(), 0, "the handler ran");
    assert!(
        failed.iter().any(|(kind, _)| *kind == ErrorKind::Timeout),
        "no handshake timed out: {failed:?}"
    );
}

#[test]
fn dohandshake_upgrades_a_plain_connection_in_place() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("dohandshake in place", secs(60));
    let reports = collect_reports();
    let acceptor = pki.acceptor();
    let (listener, addr) = util::local_listener();
    let upgraded = Rc::new(Cell::new(0));
    let refused = shared(Vec::new());
    let server = {
        let (upgraded, refused) = (upgraded.clone(), refused.clone());
        copas::addserver_with(
            listener,
            ServerOptions::new().timeout(GUARD),
            move |mut sock: Socket| {
                // Let the client's command and (for the eager client) its ClientHello
                // arrive together, so the line read takes TLS bytes into the buffer too.
                copas::pause(ms(100));
                let cmd = sock.receive(Pattern::Line).unwrap();
                match &cmd[..] {
                    b"STARTTLS" => sock.send(b"GO\n").map(drop).unwrap(),
                    b"STARTTLS-EAGER" => {}
                    other => panic!("unexpected command {:?}", String::from_utf8_lossy(other)),
                }
                assert!(!sock.is_tls());
                if let Err(e) = sock.dohandshake_server(&acceptor) {
                    // The client refused our certificate; the connection is closed.
                    assert!(sock.is_closed());
                    refused.borrow_mut().push(e.kind());
                    return;
                }
                assert!(sock.is_tls());
                upgraded.set(upgraded.get() + 1);
                let line = sock.receive(Pattern::Line).unwrap();
                sock.send(&[b"secure: ", &line[..], b"\n"].concat())
                    .unwrap();
            },
        )
        .unwrap()
    };
    let connector = pki.connector();
    let replies = shared(Vec::new());
    let out = replies.clone();
    copas::addthread(move || {
        // Classic STARTTLS: command, go-ahead, handshake.
        let mut sock = copas::connect(addr, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        sock.send(b"STARTTLS\n").unwrap();
        assert_eq!(sock.receive(Pattern::Line).unwrap(), b"GO");
        sock.dohandshake(&connector, "localhost").unwrap();
        assert!(sock.is_tls());
        sock.dohandshake(&connector, "localhost").unwrap(); // a no-op now
        sock.send(b"hello\n").unwrap();
        out.borrow_mut().push(sock.receive(Pattern::Line).unwrap());

        // Eager: the ClientHello follows the command at once; the server has read part
        // of it with the command line, and its handshake must use those bytes.
        let mut sock = copas::connect(addr, Some(GUARD)).unwrap();
        sock.settimeout(Some(GUARD));
        sock.send(b"STARTTLS-EAGER\n").unwrap();
        sock.dohandshake(&connector, "localhost").unwrap();
        sock.send(b"eager\n").unwrap();
        out.borrow_mut().push(sock.receive(Pattern::Line).unwrap());

        // A failed upgrade closes the connection: no plaintext fallback.
        let mut sock = copas::connect(addr, Some(GUARD)).unwrap();
        sock.settimeouts(Some(ms(300)), Some(GUARD), Some(GUARD));
        sock.send(b"STARTTLS\n").unwrap();
        assert_eq!(sock.receive(Pattern::Line).unwrap(), b"GO");
        let err = sock.dohandshake(&connector, "wrong.example").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
        assert!(sock.is_closed());
        assert_eq!(
            sock.send(b"plaintext?\n").unwrap_err().kind(),
            ErrorKind::Closed
        );
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    let failures = run_checked(&reports, secs(30));
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        *replies.borrow(),
        vec![b"secure: hello".to_vec(), b"secure: eager".to_vec()]
    );
    assert_eq!(upgraded.get(), 2);
    assert_eq!(*refused.borrow(), vec![ErrorKind::Tls]);
}

// ----- the example ------------------------------------------------------------------------

/// The path of `examples/tls_echo.rs`, built for this binary's profile.
fn tls_echo_example() -> PathBuf {
    util::example_binary("tls_echo")
}

#[test]
fn the_tls_echo_example_serves_openssl_s_client() {
    if pki().is_none() {
        return;
    }
    let _dog = util::Watchdog::new("tls_echo example", secs(400));
    let example = tls_echo_example();
    let child = Command::new(&example)
        .args(["--port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tls_echo");
    let mut server = ChildGuard(child);
    let lines = lines_of(server.0.stdout.take().expect("stdout"));
    let errors = lines_of(server.0.stderr.take().expect("stderr"));
    let mut seen: Vec<String> = Vec::new();
    let (mut addr, mut cert) = (None, None);
    let deadline = Instant::now() + secs(30);
    // Until it printed its address and how to connect.
    while addr.is_none() || !seen.iter().any(|l| l.contains("openssl s_client -connect")) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("tls_echo did not start: {seen:#?}"));
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("tls_echo did not start: {seen:#?}"));
        if let Some(path) = line.strip_prefix(
            "tls_echo: generated a throwaway self-signed certificate for localhost and \
             127.0.0.1: ",
        ) {
            cert = Some(path.to_string());
        }
        if let Some(a) = line.strip_prefix("tls_echo: listening on ") {
            addr = Some(a.parse::<SocketAddr>().expect("address"));
        }
        seen.push(line);
    }
    let (addr, cert) = (
        addr.unwrap(),
        cert.expect("it says it generated a certificate"),
    );
    let client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(["-CAfile", &cert, "-verify_return_error", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn openssl s_client");
    let mut client = ChildGuard(client);
    let mut stdin = client.0.stdin.take().expect("stdin");
    stdin.write_all(b"hello example\nquit\n").expect("write");
    let replies = lines_of(client.0.stdout.take().expect("stdout"));
    let mut got = Vec::new();
    let deadline = Instant::now() + secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match replies.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(_) => break, // `quit` closed the session
        }
    }
    drop(stdin);
    drop(client);
    drop(server);
    if let Some(dir) = Path::new(&cert).parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let errors: Vec<String> = errors.try_iter().collect();
    assert_eq!(
        got,
        vec!["hello example"],
        "stdout {seen:#?}, stderr {errors:#?}"
    );
}

/// `dohandshake` on a closed socket is `Closed`, TLS or not: the closed check comes before
/// "already TLS, nothing to do" (a STARTTLS caller used to get `Ok` on a closed TLS socket).
#[test]
fn a_handshake_on_a_closed_tls_socket_is_closed() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("handshake on a closed socket", secs(20));
    let reports = collect_reports();
    let (server, addr) = add_tls_server(pki, |_s: Socket| {});
    let connector = pki.connector();
    let outcomes = shared(Vec::new());
    let outcomes2 = outcomes.clone();
    copas::addthread(move || {
        let mut plain = copas::connect(addr, Some(GUARD)).unwrap();
        plain.close();
        let mut out = outcomes2.borrow_mut();
        out.push(util::kind(plain.dohandshake(&connector, "localhost")));
        let mut tls = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        tls.close();
        out.push(util::kind(tls.dohandshake(&connector, "localhost")));
        out.push(util::kind(tls.dohandshake_server(&pki.acceptor())));
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    util::run_bounded(secs(10));
    assert!(
        assertion_failures(&reports).is_empty(),
        "{:?}",
        reports.borrow()
    );
    assert_eq!(*outcomes.borrow(), vec![Err(ErrorKind::Closed); 3]);
}

/// Reads `r` at about `rate` bytes a second until its end, an error or `limit`.
fn read_slowly(mut r: impl Read, rate: f64, limit: Duration) {
    let start = Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while start.elapsed() < limit {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
        let due = Duration::from_secs_f64(total as f64 / rate);
        std::thread::sleep(due.saturating_sub(start.elapsed()));
    }
}

/// A send timeout covers the whole call (manual, "Timeouts"), `send_vectored` over TLS too,
/// which sends its slices in turn: a reader too slow for the whole call, though each slice
/// alone goes out within the timeout, must not hold it for as many timeouts as it has
/// slices. `send` of the same bytes shows the timeout.
#[test]
fn a_tls_send_vectored_times_out_once_for_the_whole_call_not_per_slice() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("send_vectored's timeout over TLS", secs(60));
    const SLICE: usize = 4 << 20;
    const SLICES: usize = 6;
    // 24 MiB at 12 MiB/s take 2 s, more than the socket buffers hold; a slice 0.33 s.
    const RATE: f64 = 12.0 * 1024.0 * 1024.0;
    let (listener, addr) = util::local_listener();
    let outcomes = shared(Vec::new());
    let out = outcomes.clone();
    let server = copas::addserver_with(
        listener,
        ServerOptions::new().timeout(GUARD),
        copas::handler(
            move |mut sock: Socket| {
                sock.settimeouts(None, Some(ms(500)), Some(GUARD));
                let vectored = sock.receive(Pattern::Line).unwrap() == b"vectored";
                let data = vec![9u8; SLICE * SLICES];
                let start = Instant::now();
                let result = if vectored {
                    let slices: Vec<IoSlice<'_>> = data.chunks(SLICE).map(IoSlice::new).collect();
                    sock.send_vectored(&slices)
                } else {
                    sock.send(&data)
                };
                let kind = result.map_err(|e| (e.kind(), e.sent()));
                out.borrow_mut().push((vectored, start.elapsed(), kind));
            },
            pki.acceptor(),
        ),
    )
    .expect("addserver");
    let connector = pki.connector();
    let client = std::thread::spawn(move || {
        for mode in ["plain", "vectored"] {
            let tcp = std::net::TcpStream::connect(addr).expect("connect");
            tcp.set_read_timeout(Some(secs(5))).expect("read timeout");
            let mut tls = connector.connect("localhost", tcp).expect("handshake");
            tls.write_all(format!("{mode}\n").as_bytes()).expect("mode");
            read_slowly(&mut tls, RATE, secs(10));
        }
    });
    assert!(util::step_until(secs(40), || client.is_finished()));
    client.join().expect("client");
    copas::removeserver(server, false).expect("removeserver");
    let outcomes = outcomes.borrow();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    for (vectored, took, result) in outcomes.iter() {
        let what = if *vectored { "send_vectored" } else { "send" };
        match result {
            Err((ErrorKind::Timeout, sent)) => assert!(
                *sent > 0 && *sent < SLICE * SLICES,
                "{what}: {sent} bytes sent"
            ),
            other => panic!("{what} under a 500 ms send timeout gave {other:?} after {took:?}"),
        }
        assert!(
            *took < secs(2),
            "{what} ran {took:?} under a 500 ms send timeout"
        );
    }
}

/// A TLS connection waiting in `receivepartial` with nothing to read holds no read buffer,
/// as a plain one does: the wait comes before the room for the read, and the adapter's raw
/// buffer goes to the thread's spare ones (each such connection held the 64 KiB asked for
/// and the 17 KiB raw buffer: 104 KB of heap per pair of ends, 21 KB now, mostly the
/// client end's raw buffer; the thread's spare buffers, at most 272 KiB, come on top).
#[test]
fn an_idle_tls_connection_in_receivepartial_holds_no_read_buffer() {
    const CONNS: usize = 40;
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("idle TLS buffers", secs(60));
    let reports = collect_reports();
    let before = heap::live_heap();
    let waiting = Rc::new(Cell::new(0usize));
    let in_handler = waiting.clone();
    let (server, addr) = add_tls_server(pki, move |mut sock: Socket| {
        in_handler.set(in_handler.get() + 1);
        // The client sends nothing: the end of the stream (empty) or a reset.
        let got = sock.receivepartial(65536);
        assert!(got.as_ref().map_or(true, Vec::is_empty), "{got:?}");
    });
    let clients: Shared<Vec<Socket>> = shared(Vec::new());
    for _ in 0..CONNS {
        let (connector, clients) = (pki.connector(), clients.clone());
        copas::addthread(move || {
            let sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
            clients.borrow_mut().push(sock);
        })
        .unwrap();
    }
    assert!(util::step_until(secs(20), || waiting.get() == CONNS
        && clients.borrow().len() == CONNS));
    // Settled: every handler is in its wait.
    for _ in 0..5 {
        copas::step(Some(ms(1))).unwrap();
    }
    let held = heap::live_heap() - before;
    eprintln!("{CONNS} idle TLS connections (both ends) hold {held} bytes of heap");
    let held_per_connection = held / CONNS as isize;
    for sock in clients.borrow().iter() {
        sock.close();
    }
    copas::removeserver(server, false).unwrap();
    run_checked(&reports, secs(20));
    assert!(
        held_per_connection < 32 * 1024,
        "{held_per_connection} bytes of heap per idle TLS connection"
    );
}

/// After `shutdown(Write)` a send over TLS fails as over a plain socket, with `Closed`, and
/// so does a send blocked when another coroutine shuts the connection down (both got `Tls`,
/// OpenSSL's "protocol is shutdown"); a reader blocked meanwhile gets `Closed` too.
#[test]
fn a_send_after_a_tls_shutdown_is_closed_as_over_a_plain_socket() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("TLS send after shutdown", secs(60));
    let reports = collect_reports();
    // Reads nothing: the client's big send fills the socket's buffers and waits.
    let (server, addr) = add_tls_server(pki, |sock: Socket| {
        copas::pause(secs(3));
        sock.close();
    });
    let seen: Shared<Vec<(&str, Option<ErrorKind>, Duration)>> = shared(Vec::new());
    let out = seen.clone();
    let connector = pki.connector();
    copas::addthread(move || {
        let mut sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(secs(5)));
        sock.send(b"before\n").unwrap();
        sock.shutdown(std::net::Shutdown::Write).unwrap();
        let after = sock.send(b"after\n").err().map(|e| e.kind());
        out.borrow_mut()
            .push(("send after shutdown(Write)", after, Duration::ZERO));

        let sock = copas::connect_tls(addr, "localhost", &connector, Some(GUARD)).unwrap();
        sock.settimeout(Some(secs(5)));
        let started = Instant::now();
        for (what, mut blocked) in [
            ("blocked writer", sock.share()),
            ("blocked reader", sock.share()),
        ] {
            let out = out.clone();
            copas::addthread(move || {
                let e = if what == "blocked writer" {
                    blocked.send(&vec![7u8; 8 << 20]).err()
                } else {
                    blocked.receive(Pattern::Exact(1)).err()
                };
                out.borrow_mut()
                    .push((what, e.map(|e| e.kind()), started.elapsed()));
            })
            .unwrap();
        }
        copas::pause(ms(300));
        sock.shutdown(std::net::Shutdown::Both).unwrap();
        pause_until(secs(5), || out.borrow().len() == 3);
        sock.close();
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    run_checked(&reports, secs(30));
    let seen = seen.borrow();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (what, kind, took) in seen.iter() {
        assert_eq!(*kind, Some(ErrorKind::Closed), "{what}: {seen:?}");
        assert!(*took < secs(2), "{what} woke after {took:?}");
    }
}

/// A peer that resets or closes the TCP connection in the middle of the handshake ends it
/// as a peer that goes away after it does: `Closed`, with the system error, not `Tls`; on
/// the client side and, through `copas::handler`, in the server's report. Bytes that are
/// not TLS before the close stay a TLS failure.
#[test]
fn a_peer_gone_mid_handshake_is_closed_not_a_tls_failure() {
    use std::io::ErrorKind::{ConnectionReset, UnexpectedEof};
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("a peer gone mid-handshake", secs(60));
    // Client side: the server reads the ClientHello, then resets, closes, or answers with
    // three bytes of plain text and closes.
    for (reset, answer, expected) in [
        (true, &b""[..], (ErrorKind::Closed, Some(ConnectionReset))),
        (false, &b""[..], (ErrorKind::Closed, Some(UnexpectedEof))),
        (false, &b"no\n"[..], (ErrorKind::Tls, None)),
    ] {
        let (listener, addr) = util::local_listener();
        let peer = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().expect("accept");
            tcp.set_read_timeout(Some(secs(10))).expect("timeout");
            // The whole ClientHello record: bytes left unread would turn the close into a
            // reset.
            let mut header = [0u8; 5];
            tcp.read_exact(&mut header).expect("a record header");
            assert_eq!(header[0], 22, "a TLS handshake record comes first");
            let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
            tcp.read_exact(&mut body).expect("the ClientHello");
            tcp.write_all(answer).expect("answer");
            if reset {
                socket2::SockRef::from(&tcp)
                    .set_linger(Some(Duration::ZERO))
                    .expect("linger");
            }
            drop(tcp);
        });
        let outcome = shared(None);
        let outcome2 = outcome.clone();
        let connector = pki.connector();
        copas::addthread(move || {
            let got = copas::connect_tls(addr, "localhost", &connector, Some(GUARD));
            *outcome2.borrow_mut() = Some(got.map(|_| ()));
        })
        .unwrap();
        util::run_bounded(secs(20));
        peer.join().expect("peer");
        let err = outcome
            .borrow_mut()
            .take()
            .expect("connect_tls returned")
            .unwrap_err();
        let io = err
            .io_error()
            .map(|e| e.kind())
            .filter(|_| err.kind() != ErrorKind::Tls);
        assert_eq!(
            (err.kind(), io),
            expected,
            "reset {reset}, answer {answer:?}: {err}"
        );
    }

    // Server side: half a ClientHello, then a close or a reset.
    let reports = shared(Vec::new());
    let sink = reports.clone();
    copas::setdefaulterrorhandler(move |report| {
        let e = report.payload().downcast_ref::<copas::Error>();
        let got = e.map(|e| (e.kind(), e.io_error().map(|io| io.kind())));
        sink.borrow_mut().push((got, report.message().to_string()));
    });
    let (server, addr) = add_tls_server(pki, |_s: Socket| {});
    let hello = client_hello();
    let clients = std::thread::spawn(move || {
        for reset in [false, true] {
            let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
            tcp.write_all(&hello[..hello.len() / 2])
                .expect("half a ClientHello");
            std::thread::sleep(ms(50));
            if reset {
                socket2::SockRef::from(&tcp)
                    .set_linger(Some(Duration::ZERO))
                    .expect("linger");
            }
            drop(tcp);
            std::thread::sleep(ms(50));
        }
    });
    let seen = reports.clone();
    copas::addthread(move || {
        pause_until(secs(10), || seen.borrow().len() >= 2);
        copas::removeserver(server, false).unwrap();
    })
    .unwrap();
    util::run_bounded(secs(20));
    clients.join().expect("clients");
    let reports = reports.borrow();
    let got: Vec<_> = reports.iter().map(|(g, _)| *g).collect();
    assert_eq!(
        got,
        [
            Some((ErrorKind::Closed, Some(UnexpectedEof))),
            Some((ErrorKind::Closed, Some(ConnectionReset)))
        ],
        "{reports:#?}"
    );
    assert!(reports
        .iter()
        .all(|(_, m)| m.starts_with("TLS/SSL handshake failed: ")));
}

/// How a writer goes on after its send timed out, in [`resend_after_a_tls_timeout`].
#[derive(Clone, Copy, Debug)]
enum AfterTimeout {
    /// `Write::write` of 16 KiB pieces until `TimedOut`, then `write_all` of the rest.
    WriteTrait,
    /// `send` of everything until `Timeout`, then `send` of what `err.sent()` left.
    CopasSend,
}

/// 4 MiB that differ from byte to byte in a pattern, so a byte sent twice, skipped or out of
/// place shows.
fn counter_pattern() -> Vec<u8> {
    (0..4u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// A writer whose send times out because its peer does not read, then, once the peer reads,
/// sends the rest starting with the bytes not yet counted as sent (the recovery the docs
/// give for TLS, where OpenSSL has committed the record it was writing): returns what the
/// peer received.
fn resend_after_a_tls_timeout(pki: &'static Pki, how: AfterTimeout) -> Vec<u8> {
    let (listener, addr) = util::local_listener();
    let (go, wait_for_go) = mpsc::channel::<()>();
    let acceptor = pki.acceptor();
    let peer = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        tcp.set_read_timeout(Some(GUARD)).expect("read timeout");
        let mut tls = acceptor.accept(tcp).expect("handshake");
        wait_for_go.recv().expect("go");
        let mut got = Vec::new();
        let _ = tls.read_to_end(&mut got);
        got
    });
    let mut sock =
        copas::connect_tls(addr, "localhost", &pki.connector(), Some(GUARD)).expect("connect_tls");
    sock.settimeouts(Some(GUARD), Some(ms(200)), Some(GUARD));
    let data = counter_pattern();
    let mut counted = 0;
    match how {
        AfterTimeout::WriteTrait => {
            let timed_out = data
                .chunks(16 * 1024)
                .find_map(|piece| match sock.write(piece) {
                    Ok(n) => {
                        counted += n;
                        None
                    }
                    Err(e) => Some(e),
                });
            let e = timed_out.expect("the peer reads nothing: a write must time out");
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e:?}");
        }
        AfterTimeout::CopasSend => {
            let e = sock
                .send(&data)
                .expect_err("4 MiB to a peer that reads nothing");
            assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
            counted = e.sent();
        }
    }
    assert!(counted < data.len(), "{how:?}: all of it went");
    go.send(()).expect("go");
    sock.settimeout(Some(GUARD));
    match how {
        AfterTimeout::WriteTrait => sock.write_all(&data[counted..]).expect("write_all"),
        AfterTimeout::CopasSend => drop(sock.send(&data[counted..]).expect("send")),
    }
    sock.shutdown(std::net::Shutdown::Write).expect("shutdown");
    if copas::current().is_some() {
        assert!(pause_until(GUARD, || peer.is_finished()));
    }
    let got = peer.join().expect("peer");
    drop(sock);
    got
}

/// After a TLS send timed out, sending on from where its count stopped delivers every byte
/// once, in order: the documented way on (OpenSSL has committed the record under way, and
/// its next write must begin with the same bytes), through the `Write` trait and `send`,
/// inside a coroutine and outside any.
#[test]
fn after_a_tls_send_timed_out_sending_on_from_its_count_delivers_every_byte_once() {
    let Some(pki) = pki() else { return };
    let _dog = util::Watchdog::new("a TLS send after a timeout", secs(120));
    let data = counter_pattern();
    let check = |how: AfterTimeout, got: Vec<u8>| {
        let first_wrong = got.iter().zip(&data).position(|(a, b)| a != b);
        assert_eq!(first_wrong, None, "{how:?}: a byte out of place");
        assert_eq!(got.len(), data.len(), "{how:?}: bytes received");
    };
    for how in [AfterTimeout::WriteTrait, AfterTimeout::CopasSend] {
        check(how, resend_after_a_tls_timeout(pki, how));
    }
    let results = shared(Vec::new());
    let out = results.clone();
    copas::addthread(move || {
        for how in [AfterTimeout::WriteTrait, AfterTimeout::CopasSend] {
            out.borrow_mut()
                .push((how, resend_after_a_tls_timeout(pki, how)));
        }
    })
    .expect("addthread");
    util::run_checked(secs(60));
    let results = std::mem::take(&mut *results.borrow_mut());
    assert_eq!(results.len(), 2);
    for (how, got) in results {
        check(how, got);
    }
}
