//! The protocol clients used by many coroutines and threads at once: the HTTP client's
//! keep-alive pool under 200 concurrent coroutines, requests cancelled in each phase
//! (`removethread`, `cancelall`, `shutdown`), a keep-alive server that closes and resets
//! connections at random, dispatcher and plain threads exiting with pooled connections, and
//! FTP and SMTP transfers side by side.
//!
//! What these guard: every request gets the answer to its own request (the origin echoes a
//! token, its connection number and the request's number on that connection), a connection
//! left half-used by a cancelled request never goes back into the pool, the pool keeps its
//! bounds, and nothing is leaked. Leaks are checked per test where the test owns the peer:
//! the origin below counts its open connections, and a client connection left open keeps
//! one open. The pool is per thread, so `close_idle_connections()` counts only the calling
//! test's. Process-wide descriptor counts (the FTP, SMTP and connect tests) take [`FDS`]
//! exclusively; every other test holds it shared, so they run in parallel with each other
//! but never beside a count.
//!
//! HTTPS needs the openssl CLI, FTP python3 with pyftpdlib, SMTP python3 with aiosmtpd:
//! without them those tests are skipped with a note, and fail when `CI` is set.

mod util;

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use copas::client::http::{self, Request, POOL_MAX, POOL_PER_HOST};
use copas::native_tls::{Certificate, Identity, TlsAcceptor};
use util::{ms, secs, Watchdog};

/// Taken exclusively by the tests that compare this process's descriptor count before and
/// after, shared by all the others (whose sockets would disturb that count).
static FDS: RwLock<()> = RwLock::new(());

fn fds_shared() -> RwLockReadGuard<'static, ()> {
    FDS.read().unwrap_or_else(|e| e.into_inner())
}

fn fds_exclusive() -> RwLockWriteGuard<'static, ()> {
    FDS.write().unwrap_or_else(|e| e.into_inner())
}

/// Waits for this process's descriptor count to come back to `base`, naming what is open
/// when it does not.
fn assert_fds_back_to(base: usize) {
    if util::wait_until(secs(5), || util::fd_count() == base) {
        return;
    }
    let mut open = String::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        open.push_str(&format!(
            "{}->{} ",
            e.file_name().to_string_lossy(),
            target.display()
        ));
    }
    panic!(
        "{} descriptors open, {base} before: {open}",
        util::fd_count()
    );
}

// ----- an HTTP/1.1 origin, a thread per connection, answering with a token --------------

#[derive(Default)]
struct Stats {
    accepted: AtomicUsize,
    open: AtomicUsize,
    /// Requests with more bytes already buffered after them: a client that sent a second
    /// request before the first's answer, or more body than it announced.
    pipelined: AtomicUsize,
    /// Requests held back by `?stall=` or `?slowread=1`.
    stalled: AtomicUsize,
}

/// How the origin misbehaves, in per mille of requests.
#[derive(Clone, Copy, Default)]
struct Chaos {
    /// Answers with `Connection: close`, then closes.
    close_reply: u32,
    /// Closes the connection 0–3 ms after answering: the keep-alive race, where the client
    /// may take the connection from its pool just as it closes.
    idle_close: u32,
    /// Resets a reused connection (its second request on) instead of answering.
    reset_reused: u32,
}

/// A connection's requests, and the origin's accepted connections, are capped so that
/// every loop of the origin ends even if its peer never stops.
const MAX_REQUESTS_PER_CONNECTION: u64 = 100_000;
const MAX_CONNECTIONS: usize = 100_000;
const MAX_HEADERS: usize = 100;

struct Origin {
    addr: SocketAddr,
    scheme: &'static str,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Origin {
    fn start(chaos: Chaos, tls: Option<TlsAcceptor>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stp) = (stats.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for (id, stream) in (1u64..).zip(listener.incoming().take(MAX_CONNECTIONS)) {
                if stp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                st.accepted.fetch_add(1, Ordering::SeqCst);
                st.open.fetch_add(1, Ordering::SeqCst);
                let (st, tls, stp) = (st.clone(), tls.clone(), stp.clone());
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let raw = stream.try_clone().expect("try_clone");
                        // A client connection leaked open keeps this one open past the
                        // tests' 5 s wait for `open() == 0`.
                        let _ = raw.set_read_timeout(Some(secs(10)));
                        let _ = raw.set_nodelay(true);
                        match tls {
                            None => serve(stream, &raw, id, &st, chaos, &stp),
                            Some(acceptor) => {
                                if let Ok(s) = acceptor.accept(stream) {
                                    serve(s, &raw, id, &st, chaos, &stp)
                                }
                            }
                        }
                        st.open.fetch_sub(1, Ordering::SeqCst);
                    })
                    .expect("spawn a connection thread");
            }
        });
        Origin {
            addr,
            scheme,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    /// The base URL (no trailing slash); the certificate is for 127.0.0.1 too.
    fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    fn open(&self) -> usize {
        self.stats.open.load(Ordering::SeqCst)
    }

    fn pipelined(&self) -> usize {
        self.stats.pipelined.load(Ordering::SeqCst)
    }

    /// Closes this thread's idle connections and waits until the origin has none open: a
    /// client connection neither pooled nor closed would stay open here.
    fn assert_no_connection_left(&self) {
        http::close_idle_connections();
        assert!(
            util::wait_until(secs(5), || self.open() == 0),
            "{} connections still open at the origin",
            self.open()
        );
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        util::wait_until(secs(5), || self.open() == 0);
    }
}

/// A small deterministic xorshift generator (the origin's misbehaviour and the tests'
/// random choices repeat from run to run).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn per_mille(&mut self, p: u32) -> bool {
        self.below(1000) < u64::from(p)
    }
}

fn query<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    path.split_once('?')?
        .1
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(ms(5));
    }
}

/// How long a stalled answer (`?stall=head`, `?stall=body`) is held back; the answer then
/// goes out anyway, onto whatever the client left open.
const STALL: Duration = Duration::from_millis(600);

/// Answers `GET /token?len=N` with `/token conn=C n=R\n` padded to N bytes. `?stall=head`
/// holds the head back for [`STALL`] and then answers `STALE-ANSWER-FOR /token`,
/// `?stall=body` sends half the body and the rest after [`STALL`], `?slowread=1` reads the
/// request body only after 1.5 s.
fn serve<S: Read + Write>(
    stream: S,
    raw: &TcpStream,
    id: u64,
    stats: &Stats,
    chaos: Chaos,
    stop: &AtomicBool,
) {
    let mut r = BufReader::new(stream);
    let mut rng = Rng(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    for n in 1..=MAX_REQUESTS_PER_CONNECTION {
        let mut line = String::new();
        if !matches!(r.read_line(&mut line), Ok(1..)) {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let mut length = 0usize;
        for _ in 0..MAX_HEADERS {
            let mut h = String::new();
            if !matches!(r.read_line(&mut h), Ok(1..)) {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        if n >= 2 && rng.per_mille(chaos.reset_reused) {
            let _ = socket2::SockRef::from(raw).set_linger(Some(Duration::ZERO));
            let _ = raw.shutdown(std::net::Shutdown::Both);
            return;
        }
        if query(&path, "slowread").is_some() {
            stats.stalled.fetch_add(1, Ordering::SeqCst);
            sleep_unless(stop, ms(1500));
        }
        let mut body = vec![0u8; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if !r.buffer().is_empty() {
            stats.pipelined.fetch_add(1, Ordering::SeqCst);
        }
        let len: usize = query(&path, "len")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let token = path.split('?').next().unwrap_or("");
        let mut text = format!("{token} conn={id} n={n}\n").into_bytes();
        if text.len() < len {
            text.resize(len, b'.');
        }
        let close = rng.per_mille(chaos.close_reply);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n",
            text.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let w = r.get_mut();
        match query(&path, "stall") {
            Some("head") => {
                stats.stalled.fetch_add(1, Ordering::SeqCst);
                sleep_unless(stop, STALL);
                let stale = format!("STALE-ANSWER-FOR {token}\n");
                let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", stale.len());
                let _ = w.write_all(h.as_bytes());
                let _ = w.write_all(stale.as_bytes());
                let _ = w.flush();
                continue;
            }
            Some("body") => {
                let half = text.len() / 2;
                let _ = w.write_all(head.as_bytes());
                let _ = w.write_all(&text[..half]);
                let _ = w.flush();
                stats.stalled.fetch_add(1, Ordering::SeqCst);
                sleep_unless(stop, STALL);
                let _ = w.write_all(&text[half..]);
                let _ = w.flush();
                continue;
            }
            _ => {}
        }
        if w.write_all(head.as_bytes()).is_err() || w.write_all(&text).is_err() {
            return;
        }
        let _ = w.flush();
        if close {
            let _ = raw.shutdown(std::net::Shutdown::Both);
            return;
        }
        if rng.per_mille(chaos.idle_close) {
            std::thread::sleep(Duration::from_micros(rng.below(3000)));
            let _ = raw.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

// ----- the client side ------------------------------------------------------------------

/// A `method` request for `url`, trusting `ca` when given, with a generous timeout.
fn request(method: &str, url: &str, ca: Option<&Certificate>) -> Request {
    let req = Request::new(method, url).timeout(secs(10));
    match ca {
        Some(ca) => req.root_certificate(ca.clone()),
        None => req,
    }
}

/// Sends `req`, made for `token`, and checks that the answer is the one to `token`; returns
/// the connection and request numbers the origin gave it.
fn ask(req: Request, token: &str) -> Result<(u64, u64), String> {
    let response = req.send().map_err(|e| format!("{token}: {e}"))?;
    let text = String::from_utf8_lossy(response.body());
    let first = text.lines().next().unwrap_or("");
    let mut parts = first.split(' ');
    if parts.next() != Some(token) {
        return Err(format!("asked {token}, got {first:?}"));
    }
    let mut number = |key: &str| {
        parts
            .next()
            .and_then(|p| p.strip_prefix(key))
            .and_then(|p| p.parse().ok())
    };
    match (number("conn="), number("n=")) {
        (Some(conn), Some(n)) => Ok((conn, n)),
        _ => Err(format!("{token}: a malformed answer {first:?}")),
    }
}

/// A GET of `url` + `token` + `query`, checked by [`ask`].
fn get(
    url: &str,
    token: &str,
    query: &str,
    ca: Option<&Certificate>,
) -> Result<(u64, u64), String> {
    ask(request("GET", &format!("{url}{token}{query}"), ca), token)
}

fn assert_no_errors(errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{} failed, the first: {:#?}",
        errors.len(),
        &errors[..errors.len().min(8)]
    );
}

/// Fails if one (connection, request) answer was handed to two requests.
fn assert_unique(seen: &[(u64, u64)]) {
    let mut set = std::collections::HashSet::new();
    for p in seen {
        assert!(set.insert(*p), "answer {p:?} handed to two requests");
    }
}

/// What [`load`] sends.
struct Load<'a> {
    origins: &'a [String],
    clients: usize,
    each: usize,
    /// The answers' length.
    len: usize,
    /// Makes every third request a PUT with a 64 KiB body (idempotent, so retried on a
    /// stale connection like a GET).
    puts: bool,
    ca: Option<Certificate>,
}

/// Runs `clients` coroutines making `each` requests, round robin over the origins, to the
/// end; returns the errors and the answers seen per origin.
fn load(l: Load<'_>) -> (Vec<String>, Vec<Vec<(u64, u64)>>) {
    let errors = Rc::new(RefCell::new(Vec::new()));
    let seen = Rc::new(RefCell::new(vec![Vec::new(); l.origins.len()]));
    let origins = Rc::new(l.origins.to_vec());
    for c in 0..l.clients {
        let (errors, seen, origins, ca) =
            (errors.clone(), seen.clone(), origins.clone(), l.ca.clone());
        let (each, len, puts) = (l.each, l.len, l.puts);
        copas::addthread(move || {
            for i in 0..each {
                let o = (c + i) % origins.len();
                let token = format!("/c{c}-r{i}");
                let url = format!("{}{token}?len={len}", origins[o]);
                let req = if puts && i % 3 == 2 {
                    request("PUT", &url, ca.as_ref()).body(vec![b'p'; 64 << 10])
                } else {
                    request("GET", &url, ca.as_ref())
                };
                match ask(req, &token) {
                    Ok(p) => seen.borrow_mut()[o].push(p),
                    Err(e) => errors.borrow_mut().push(e),
                }
            }
        })
        .expect("addthread");
    }
    util::run_checked(secs(60));
    let errors = errors.borrow().clone();
    let seen = seen.borrow().clone();
    (errors, seen)
}

/// The test PKI, made once for the whole file (openssl's key generation takes a while);
/// `None`, with a note, without the openssl CLI.
fn tls() -> Option<(TlsAcceptor, Certificate)> {
    static TLS: OnceLock<Option<(TlsAcceptor, Certificate)>> = OnceLock::new();
    TLS.get_or_init(|| {
        if !util::openssl_available() {
            return None;
        }
        let dir = util::TempDir::new("clients-concurrency-pki");
        util::make_test_pki(&dir.0);
        let read = |name: &str| std::fs::read(dir.path(name)).expect(name);
        let id = Identity::from_pkcs8(&read("server-chain.pem"), &read("server.key"))
            .expect("server identity");
        let acceptor = TlsAcceptor::new(id).expect("TlsAcceptor");
        let ca = Certificate::from_pem(&read("ca.pem")).expect("ca.pem");
        Some((acceptor, ca))
    })
    .clone()
}

// ----- the pool under many coroutines ----------------------------------------------------

#[test]
fn two_hundred_coroutines_times_twenty_requests_each_get_their_own_answer() {
    let _fds = fds_shared();
    let _dog = Watchdog::new("200 x 20 requests", secs(120));
    let origin = Origin::start(Chaos::default(), None);
    let (errors, seen) = load(Load {
        origins: &[origin.url()],
        clients: 200,
        each: 20,
        len: 64,
        puts: false,
        ca: None,
    });
    assert_no_errors(&errors);
    assert_eq!(seen[0].len(), 4000);
    assert_unique(&seen[0]);
    assert_eq!(origin.pipelined(), 0);
    // What the origin still has open is what the pool keeps idle.
    util::wait_until(secs(5), || origin.open() <= POOL_PER_HOST);
    let open = origin.open();
    assert!(open <= POOL_PER_HOST, "{open} idle connections to one host");
    assert_eq!(http::close_idle_connections(), open);
    origin.assert_no_connection_left();
}

#[test]
fn many_origins_at_once_leave_at_most_pool_max_idle_connections_in_all() {
    let _fds = fds_shared();
    let _dog = Watchdog::new("12 origins", secs(120));
    // 12 hosts x POOL_PER_HOST is more than POOL_MAX.
    let origins: Vec<Origin> = (0..12)
        .map(|_| Origin::start(Chaos::default(), None))
        .collect();
    let urls: Vec<String> = origins.iter().map(Origin::url).collect();
    let (errors, seen) = load(Load {
        origins: &urls,
        clients: 96,
        each: 12,
        len: 16,
        puts: false,
        ca: None,
    });
    assert_no_errors(&errors);
    seen.iter().for_each(|s| assert_unique(s));
    // The origins see the pool's closes a moment later.
    let settled = || origins.iter().map(Origin::open).sum::<usize>() <= POOL_MAX;
    util::wait_until(secs(5), settled);
    let open: Vec<usize> = origins.iter().map(Origin::open).collect();
    let total: usize = open.iter().sum();
    assert!(open.iter().all(|&n| n <= POOL_PER_HOST), "{open:?}");
    assert!(total <= POOL_MAX, "{total} idle in all: {open:?}");
    assert_eq!(http::close_idle_connections(), total);
    origins.iter().for_each(Origin::assert_no_connection_left);
}

// ----- cancellation -----------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Ending {
    RemoveThread,
    CancelAll,
    Shutdown,
}

/// Four requests, each in another phase (waiting for its head, reading its body, writing its
/// body, a coroutine holding a body reader), on connections taken from the pool, are
/// cancelled together by `how`. Then the origin's late answers arrive on whatever was left
/// open, and requests taking every pooled connection each still get their own answer.
fn cancelled_in_every_phase(how: Ending, ca: Option<(TlsAcceptor, Certificate)>) {
    let _dog = Watchdog::new("cancelled in every phase", secs(30));
    let (acceptor, ca) = ca.unzip();
    let origin = Origin::start(Chaos::default(), acceptor);
    let url = Rc::new(origin.url());
    let ca = Rc::new(ca);
    // Concurrent, so the pool ends with POOL_PER_HOST connections for the victims to take.
    let errors = Rc::new(RefCell::new(Vec::<String>::new()));
    for i in 0..POOL_PER_HOST {
        let (url, ca, errors) = (url.clone(), ca.clone(), errors.clone());
        copas::addthread(move || {
            if let Err(e) = get(&url, &format!("/warm{i}"), "", ca.as_ref().as_ref()) {
                errors.borrow_mut().push(e);
            }
        })
        .expect("addthread");
    }
    util::run_checked(secs(10));
    assert_no_errors(&errors.borrow());
    let phases = ["head", "body", "writing", "reader"];
    let reader_reached = Rc::new(Cell::new(false));
    let mut victims = Vec::new();
    for phase in phases {
        let (url, ca, reached) = (url.clone(), ca.clone(), reader_reached.clone());
        let co = copas::addthread(move || {
            let ca = ca.as_ref().as_ref();
            let token = format!("/victim-{phase}");
            let _ = match phase {
                "head" => request("GET", &format!("{url}{token}?stall=head"), ca).send(),
                "body" => {
                    let q = "?stall=body&len=100000";
                    request("GET", &format!("{url}{token}{q}"), ca).send()
                }
                "writing" => request("PUT", &format!("{url}{token}?slowread=1"), ca)
                    .body(vec![b'x'; 16 << 20])
                    .send(),
                _ => {
                    let q = "?len=200000";
                    let (_response, mut body) = request("GET", &format!("{url}{token}{q}"), ca)
                        .stream()
                        .expect("stream");
                    let mut some = [0u8; 10];
                    body.read_exact(&mut some).expect("the body's first bytes");
                    reached.set(true);
                    copas::pauseforever();
                    return;
                }
            };
        })
        .expect("addthread");
        victims.push(co);
    }
    let stats = origin.stats.clone();
    let in_phase = util::step_until(secs(5), || {
        reader_reached.get() && stats.stalled.load(Ordering::SeqCst) >= 3
    });
    assert!(in_phase, "the victims did not all reach their phase");
    match how {
        Ending::RemoveThread => victims
            .into_iter()
            .for_each(|co| assert!(copas::removethread(co), "removethread")),
        Ending::CancelAll => copas::cancelall(),
        Ending::Shutdown => {
            copas::shutdown(Duration::ZERO);
            assert!(util::step_until(secs(5), || !copas::shutting_down()));
        }
    }
    std::thread::sleep(STALL + ms(200));
    for c in 0..POOL_PER_HOST + 2 {
        let (url, ca, errors) = (url.clone(), ca.clone(), errors.clone());
        copas::addthread(move || {
            for i in 0..2 {
                let token = format!("/after-c{c}-{i}");
                if let Err(e) = get(&url, &token, "", ca.as_ref().as_ref()) {
                    errors.borrow_mut().push(e);
                }
            }
        })
        .expect("addthread");
    }
    util::run_checked(secs(10));
    assert_no_errors(&errors.borrow());
    assert_eq!(origin.pipelined(), 0, "{how:?}");
    origin.assert_no_connection_left();
}

#[test]
fn requests_removed_by_removethread_in_any_phase_leave_nothing_half_used_in_the_pool() {
    let _fds = fds_shared();
    cancelled_in_every_phase(Ending::RemoveThread, None);
}

#[test]
fn requests_ended_by_cancelall_in_any_phase_leave_nothing_half_used_in_the_pool() {
    let _fds = fds_shared();
    cancelled_in_every_phase(Ending::CancelAll, None);
}

#[test]
fn requests_ended_by_shutdown_in_any_phase_leave_nothing_half_used_in_the_pool() {
    let _fds = fds_shared();
    cancelled_in_every_phase(Ending::Shutdown, None);
}

#[test]
fn https_requests_cancelled_in_any_phase_leave_nothing_half_used_in_the_pool() {
    let _fds = fds_shared();
    let Some(tls) = tls() else { return };
    for how in [Ending::RemoveThread, Ending::Shutdown] {
        cancelled_in_every_phase(how, Some(tls.clone()));
    }
}

#[test]
fn requests_removed_while_connecting_leak_no_descriptor() {
    let _fds = fds_exclusive();
    let _dog = Watchdog::new("removed while connecting", secs(30));
    util::make_dispatcher();
    let (listener, addr, fillers) = util::full_backlog_listener();
    let base = util::fd_count();
    let cos: Vec<_> = (0..20)
        .map(|i| {
            copas::addthread(move || {
                let _ = Request::get(&format!("http://{addr}/c{i}"))
                    .timeout(secs(10))
                    .send();
            })
            .expect("addthread")
        })
        .collect();
    for _ in 0..5 {
        copas::step(Some(ms(20))).expect("step");
    }
    assert!(util::fd_count() > base, "no connection was under way");
    for co in cos {
        assert!(copas::removethread(co), "removethread");
    }
    assert_eq!(http::close_idle_connections(), 0);
    assert_fds_back_to(base);
    drop((listener, fillers));
}

/// Half of 200 coroutines mid-request on pooled connections, some of their answers stalled
/// half-way, are removed at random moments: the others, and requests made afterwards, get
/// their own answers.
#[test]
fn random_removals_among_two_hundred_requests_never_mix_up_answers() {
    let _fds = fds_shared();
    let _dog = Watchdog::new("random removals", secs(60));
    let origin = Origin::start(Chaos::default(), None);
    let url = Rc::new(origin.url());
    let errors = Rc::new(RefCell::new(Vec::<String>::new()));
    let mut cos = Vec::new();
    for c in 0..200 {
        let (url, errors) = (url.clone(), errors.clone());
        cos.push(
            copas::addthread(move || {
                for i in 0..10 {
                    let query = match (c + i) % 5 {
                        0 => "?stall=body&len=5000",
                        1 => "?len=70000",
                        _ => "?len=10",
                    };
                    if let Err(e) = get(&url, &format!("/c{c}-r{i}"), query, None) {
                        errors.borrow_mut().push(e);
                    }
                }
            })
            .expect("addthread"),
        );
    }
    let mut rng = Rng(12345);
    let start = Instant::now();
    let mut removed = 0;
    while start.elapsed() < secs(20) && removed < 100 && copas::status().coroutines > 0 {
        copas::step(Some(ms(5))).expect("step");
        if rng.per_mille(250) && !cos.is_empty() {
            let k = rng.below(cos.len() as u64) as usize;
            removed += usize::from(copas::removethread(cos.swap_remove(k)));
        }
    }
    util::run_checked(secs(30));
    assert!(removed > 0, "nothing was removed");
    for c in 0..20 {
        let (url, errors) = (url.clone(), errors.clone());
        copas::addthread(move || {
            if let Err(e) = get(&url, &format!("/again{c}"), "", None) {
                errors.borrow_mut().push(e);
            }
        })
        .expect("addthread");
    }
    util::run_checked(secs(10));
    assert_no_errors(&errors.borrow());
    assert_eq!(origin.pipelined(), 0);
    origin.assert_no_connection_left();
}

// ----- a misbehaving keep-alive server ------------------------------------------------------

const FLAKY: Chaos = Chaos {
    close_reply: 50,
    idle_close: 150,
    reset_reused: 50,
};

#[test]
fn a_flaky_keep_alive_server_fails_no_get_or_put_and_mixes_up_none() {
    let _fds = fds_shared();
    let _dog = Watchdog::new("flaky server", secs(120));
    let origin = Origin::start(FLAKY, None);
    let (errors, seen) = load(Load {
        origins: &[origin.url()],
        clients: 50,
        each: 40,
        len: 32,
        puts: true,
        ca: None,
    });
    assert_no_errors(&errors);
    assert_eq!(seen[0].len(), 2000);
    assert_unique(&seen[0]);
    assert_eq!(origin.pipelined(), 0);
    origin.assert_no_connection_left();
}

/// One request after another, so that the pool always has a connection to offer, often one
/// the server is closing at that moment.
#[test]
fn requests_one_after_another_survive_a_server_closing_idle_connections() {
    let _fds = fds_shared();
    let _dog = Watchdog::new("sequential flaky", secs(60));
    let origin = Origin::start(
        Chaos {
            close_reply: 0,
            idle_close: 300,
            reset_reused: 100,
        },
        None,
    );
    let (errors, seen) = load(Load {
        origins: &[origin.url()],
        clients: 1,
        each: 500,
        len: 8,
        puts: true,
        ca: None,
    });
    assert_no_errors(&errors);
    assert_unique(&seen[0]);
    origin.assert_no_connection_left();
}

#[test]
fn https_through_the_pool_against_a_flaky_server_every_request_gets_its_own_answer() {
    let _fds = fds_shared();
    let Some((acceptor, ca)) = tls() else { return };
    let _dog = Watchdog::new("https flaky", secs(120));
    let origin = Origin::start(FLAKY, Some(acceptor));
    let (errors, seen) = load(Load {
        origins: &[origin.url()],
        clients: 10,
        each: 10,
        len: 3000,
        puts: true,
        ca: Some(ca),
    });
    assert_no_errors(&errors);
    assert_eq!(seen[0].len(), 100);
    assert_unique(&seen[0]);
    assert_eq!(origin.pipelined(), 0);
    let reused = 100 - origin.stats.accepted.load(Ordering::SeqCst).min(100);
    assert!(reused > 0, "no TLS connection was reused");
    origin.assert_no_connection_left();
}

// ----- threads --------------------------------------------------------------------------------

/// Which origin each request went to, and its answer.
type Outcomes = Arc<Mutex<Vec<(usize, Result<(u64, u64), String>)>>>;

/// Dispatcher threads (`copas::threads`) and plain threads, blocking and running their own
/// loop, share two origins with a pool each, and exit with connections pooled: the pools'
/// thread-local destructors close them, without a panic.
#[test]
fn threads_exiting_with_pooled_connections_close_them() {
    let _fds = fds_shared();
    let _dog = Watchdog::new("threads", secs(120));
    let a = Origin::start(Chaos::default(), None);
    let b = Origin::start(Chaos::default(), None);
    let urls = [a.url(), b.url()];
    let results: Outcomes = Arc::default();
    let plain: Vec<JoinHandle<Result<(), String>>> = (0..4)
        .map(|t| {
            let (urls, results) = (urls.clone(), results.clone());
            std::thread::spawn(move || {
                if t % 2 == 0 {
                    // Blocking, no loop ever run on this thread.
                    for i in 0..20 {
                        let r = get(&urls[i % 2], &format!("/p{t}-{i}"), "", None);
                        results.lock().unwrap().push((i % 2, r));
                    }
                } else {
                    for c in 0..10 {
                        let (urls, results) = (urls.clone(), results.clone());
                        copas::addthread(move || {
                            for i in 0..5 {
                                let r =
                                    get(&urls[(c + i) % 2], &format!("/p{t}-c{c}-{i}"), "", None);
                                results.lock().unwrap().push(((c + i) % 2, r));
                            }
                        })
                        .map_err(|e| e.to_string())?;
                    }
                    copas::run().map_err(|e| e.to_string())?;
                    // Blocking again after the loop ended, from the same pool.
                    let r = get(&urls[0], &format!("/p{t}-after"), "", None);
                    results.lock().unwrap().push((0, r));
                }
                Ok(())
            })
        })
        .collect();
    let outcomes = copas::threads(4, |t| {
        for c in 0..25 {
            let (urls, results) = (urls.clone(), results.clone());
            copas::addthread(move || {
                for i in 0..10 {
                    let o = (c + i) % 2;
                    let r = get(&urls[o], &format!("/t{t}-c{c}-r{i}"), "", None);
                    results.lock().unwrap().push((o, r));
                }
            })?;
        }
        Ok(())
    })
    .expect("copas::threads");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    for h in plain {
        let r = h.join().expect("a plain thread panicked");
        assert!(r.is_ok(), "{r:?}");
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    assert_eq!(results.len(), 4 * 25 * 10 + 2 * 20 + 2 * (10 * 5 + 1));
    let mut per_origin = [Vec::new(), Vec::new()];
    for (o, r) in results {
        per_origin[o].push(r.unwrap_or_else(|e| panic!("{e}")));
    }
    per_origin.iter().for_each(|s| assert_unique(s));
    assert_eq!(a.pipelined() + b.pipelined(), 0);
    // Nothing closed them on this thread: the threads' exits did.
    assert!(
        util::wait_until(secs(5), || a.open() + b.open() == 0),
        "still open at the origins: {} and {}",
        a.open(),
        b.open()
    );
}

#[test]
fn dispatcher_threads_exiting_with_https_connections_pooled_close_them() {
    let _fds = fds_shared();
    let Some((acceptor, ca)) = tls() else { return };
    let _dog = Watchdog::new("https threads", secs(60));
    let origin = Origin::start(Chaos::default(), Some(acceptor));
    let url = origin.url();
    let outcomes = copas::threads(2, |t| {
        for c in 0..4 {
            let (url, ca) = (url.clone(), ca.clone());
            copas::addthread(move || {
                for i in 0..3 {
                    let token = format!("/t{t}-c{c}-{i}");
                    get(&url, &token, "", Some(&ca)).unwrap_or_else(|e| panic!("{e}"));
                }
            })?;
        }
        Ok(())
    })
    .expect("copas::threads");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert!(
        util::wait_until(secs(5), || origin.open() == 0),
        "{} still open at the origin",
        origin.open()
    );
}

/// `run` ending, or a shutdown in the middle of requests, leaves the pool's connections
/// usable or closed, never half-used: the next run and blocking calls between runs reuse
/// them.
#[test]
fn connections_pooled_in_one_run_serve_the_next_and_blocking_calls_between() {
    let _fds = fds_shared();
    let _dog = Watchdog::new("runs", secs(60));
    let origin = Origin::start(Chaos::default(), None);
    let url = Rc::new(origin.url());
    for round in 0..4 {
        let errors = Rc::new(RefCell::new(Vec::<String>::new()));
        for c in 0..8 {
            let (url, errors) = (url.clone(), errors.clone());
            copas::addthread(move || {
                for i in 0..5 {
                    if let Err(e) = get(&url, &format!("/r{round}-c{c}-{i}"), "", None) {
                        errors.borrow_mut().push(e);
                    }
                }
            })
            .expect("addthread");
        }
        let shut_down = round % 2 == 1;
        if shut_down {
            copas::addthread(|| {
                copas::pause(ms(5));
                copas::shutdown(Duration::ZERO);
            })
            .expect("addthread");
        }
        util::run_checked(secs(10));
        if !shut_down {
            assert_no_errors(&errors.borrow());
        }
        get(&url, &format!("/between{round}"), "", None).expect("a blocking call between runs");
    }
    assert_eq!(origin.pipelined(), 0);
    assert!(
        origin.stats.accepted.load(Ordering::SeqCst) < 4 * 8 * 5,
        "no reuse"
    );
    origin.assert_no_connection_left();
}

/// 200 requests wait [`STALL`] for their heads: the dispatcher sleeps meanwhile.
#[test]
fn two_hundred_requests_waiting_for_their_heads_do_not_busy_wait() {
    let _fds = fds_shared();
    let _dog = Watchdog::new("no busy wait", secs(30));
    let origin = Origin::start(Chaos::default(), None);
    let url = Rc::new(origin.url());
    let got = Rc::new(Cell::new(0));
    for c in 0..200 {
        let (url, got) = (url.clone(), got.clone());
        copas::addthread(move || {
            let r = request("GET", &format!("{url}/w{c}?stall=head"), None).send();
            if r.is_ok_and(|r| r.body().starts_with(b"STALE-ANSWER-FOR /w")) {
                got.set(got.get() + 1);
            }
        })
        .expect("addthread");
    }
    let cpu = util::thread_cpu_time();
    let wall = util::run_checked(secs(20));
    let cpu = util::thread_cpu_time() - cpu;
    assert_eq!(got.get(), 200);
    // About 15 ms of CPU over 600 ms here; spinning would use most of the wait.
    assert!(cpu < ms(300), "cpu {cpu:?} over a wall time of {wall:?}");
    origin.assert_no_connection_left();
}

// ----- FTP and SMTP -----------------------------------------------------------------------

/// `len` bytes of a pattern that differs with `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.below(256) as u8).collect()
}

/// Eight coroutines put and get back their own files at once while four others, fetching
/// a large file, are removed mid-way (some still logging in, some transferring).
#[test]
fn ftp_transfers_at_once_each_move_their_own_file_and_removed_ones_leak_nothing() {
    if !util::pyftpdlib_available() {
        return;
    }
    let _fds = fds_exclusive();
    let _dog = Watchdog::new("ftp at once", secs(60));
    let dir = util::TempDir::new("clients-concurrency-ftp");
    let (root, server) = util::ftpd::Ftpd::start_in(
        &dir,
        util::ftpd::FtpdOptions {
            ip: "127.0.0.1",
            user: true,
            write: true,
            passive: None,
            quota: None,
        },
    );
    std::fs::write(root.join("big.bin"), pattern(8 << 20, 99)).expect("big.bin");
    util::make_dispatcher();
    let base = util::fd_count();
    let url = Rc::new(server.url("user:secret@", ""));
    let errors = Rc::new(RefCell::new(Vec::<String>::new()));
    for c in 0..8u64 {
        let (errors, url) = (errors.clone(), url.clone());
        copas::addthread(move || {
            let body = pattern(100_000 + c as usize * 1000, c + 1);
            let file = format!("{url}f{c}.bin");
            let back =
                copas::client::ftp::put(&file, &body).and_then(|()| copas::client::ftp::get(&file));
            match back {
                Ok(back) if back == body => {}
                Ok(back) => errors
                    .borrow_mut()
                    .push(format!("f{c}: {} other bytes", back.len())),
                Err(e) => errors.borrow_mut().push(format!("f{c}: {e}")),
            }
        })
        .expect("addthread");
    }
    /// Counts the bytes it is given.
    struct Count(Rc<Cell<usize>>);
    impl Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.set(self.0.get() + b.len());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let received = Rc::new(Cell::new(0usize));
    let big: Vec<_> = (0..4)
        .map(|_| {
            let (url, received) = (url.clone(), received.clone());
            copas::addthread(move || {
                let opts = copas::client::ftp::Options::new().timeout(Some(secs(20)));
                let _ = copas::client::ftp::get_to(
                    &format!("{url}big.bin"),
                    &opts,
                    &mut Count(received),
                );
            })
            .expect("addthread")
        })
        .collect();
    let flowing = util::step_with_until(ms(5), secs(20), || received.get() > 200_000);
    assert!(flowing, "the large transfers did not start");
    big.into_iter().for_each(|co| {
        copas::removethread(co);
    });
    util::run_checked(secs(40));
    assert_no_errors(&errors.borrow());
    for c in 0..8u64 {
        let on_disk = std::fs::read(root.join(format!("f{c}.bin"))).expect("an uploaded file");
        assert!(
            on_disk == pattern(100_000 + c as usize * 1000, c + 1),
            "f{c}.bin"
        );
    }
    assert_fds_back_to(base);
}

/// tests/peers/smtp_peer.py (aiosmtpd) on a free port, storing each mail as NNNN.eml in
/// its own directory; killed on drop.
struct Smtpd {
    _child: util::ChildGuard,
    port: u16,
    out: util::TempDir,
}

impl Smtpd {
    fn start() -> Smtpd {
        let out = util::TempDir::new("clients-concurrency-smtp");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/smtp_peer.py");
        // Another process may take the free port before the server binds it.
        for _attempt in 0..3 {
            let port = util::free_port("127.0.0.1");
            let mut child = std::process::Command::new("python3")
                .arg(script)
                .arg(port.to_string())
                .arg(&out.0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn python3");
            let stdout = child.stdout.take().expect("stdout");
            let child = util::ChildGuard(child);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let deadline = Instant::now() + secs(15);
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(line) if line.starts_with("READY") => {
                        return Smtpd {
                            _child: child,
                            port,
                            out,
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        panic!("smtp_peer.py did not get READY");
    }

    fn stored(&self) -> Vec<String> {
        std::fs::read_dir(&self.out.0)
            .expect("the mail directory")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
            .map(|e| {
                String::from_utf8_lossy(&std::fs::read(e.path()).expect("a mail")).into_owned()
            })
            .collect()
    }
}

/// Ten mails sent at once arrive each with its own content, while four large ones are
/// removed mid-send: those leave no descriptor behind and are stored whole or not at all.
#[test]
fn mails_sent_at_once_arrive_each_with_its_own_content_and_removed_ones_leak_nothing() {
    if !util::aiosmtpd_available() {
        return;
    }
    let _fds = fds_exclusive();
    let _dog = Watchdog::new("smtp at once", secs(60));
    let server = Smtpd::start();
    util::make_dispatcher();
    let base = util::fd_count();
    let errors = Rc::new(RefCell::new(Vec::<String>::new()));
    let line_of = |c: usize| format!("line {c}\r\n");
    let big_body = format!("{}\r\n", "x".repeat(76)).repeat(40_000);
    let mut big = Vec::new();
    for c in 0..14 {
        let errors = errors.clone();
        let large = c >= 10;
        let text = if large {
            big_body.clone()
        } else {
            line_of(c).repeat(2000)
        };
        let mail =
            copas::client::smtp::Mail::new(format!("127.0.0.1:{}", server.port), "s@example.org")
                .to(format!("r{c}@example.org"))
                .message(format!("Subject: m{c}\r\n\r\n{text}").into_bytes())
                .timeout(secs(20));
        let co = copas::addthread(move || {
            if let Err(e) = copas::client::smtp::send(&mail) {
                if !large {
                    errors.borrow_mut().push(format!("mail {c}: {e}"));
                }
            }
        })
        .expect("addthread");
        if large {
            big.push(co);
        }
    }
    // Removed at staggered moments, in whatever phase each has reached.
    for co in big {
        for _ in 0..3 {
            copas::step(Some(ms(10))).expect("step");
        }
        copas::removethread(co);
    }
    util::run_checked(secs(40));
    assert_no_errors(&errors.borrow());
    assert_fds_back_to(base);
    // A mail removed after its final dot went out is the server's to store.
    let stored = server.stored();
    let mut small = Vec::new();
    for text in &stored {
        let c: usize = text
            .split("Subject: m")
            .nth(1)
            .and_then(|r| r.split("\r\n").next())
            .and_then(|n| n.parse().ok())
            .expect("a subject");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        if c >= 10 {
            assert!(
                body == big_body,
                "mail {c} stored cut, {} bytes",
                body.len()
            );
        } else {
            assert!(
                body.starts_with(&line_of(c).repeat(2000)),
                "mail {c} is not its own"
            );
            small.push(c);
        }
    }
    small.sort_unstable();
    assert_eq!(small, (0..10).collect::<Vec<_>>());
}
