//! Seeded mutation fuzzing of every parser a peer feeds: the HTTP, FTP and SMTP clients,
//! the socket receive patterns and UDP datagrams.
//!
//! A xorshift generator (no new dependencies) mutates valid templates (bytes flipped,
//! inserted, deleted, duplicated; lines split, duplicated, dropped; CR/LF/NUL/0x80-0xFF bytes;
//! numbers made huge, negative, empty or signed/spaced; truncation at every offset) and a
//! std-thread peer on 127.0.0.1 delivers them in random-sized writes with short sleeps, then
//! closes, resets or stalls. The clients run concurrently (a batch of cases per
//! `copas::run`) in coroutines; every call must return (a typed error or a correct value)
//! within its bound, never panic, with bounded heap and no leaked descriptor.
//!
//! Replay a failing case with `COPAS_FUZZ_SEED=<seed> COPAS_FUZZ_CASE=<index>` (printed with
//! it); `COPAS_FUZZ_CASES=<n>` changes the number of random cases per test (the defaults keep
//! the file to seconds; review round 10 ran about 5,800 per seed with seeds 0x5eed0010, 7
//! and 99). Descriptor counts are process-wide, so the tests take turns (`SERIAL`).

#[path = "util/heap.rs"]
mod heap;
mod util;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use copas::client::ftp;
use copas::client::http::{self, Redirect, Request};
use copas::client::smtp::{self, AuthMechanism, Mail, StartTls};
use copas::{ErrorKind, Pattern};

/// One test at a time: the descriptor counts are process-wide.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

// ----- seeded generator ----------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1);
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| {
        let s = s.trim();
        s.strip_prefix("0x")
            .map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
    })
}

fn base_seed() -> u64 {
    env_u64("COPAS_FUZZ_SEED").unwrap_or(0x5EED_0010)
}

fn case_count(default: usize) -> usize {
    env_u64("COPAS_FUZZ_CASES").map_or(default, |n| n as usize)
}

/// The indices to run: one when `COPAS_FUZZ_CASE` replays it, else all.
fn indices(n: usize) -> Vec<usize> {
    match env_u64("COPAS_FUZZ_CASE") {
        Some(i) => vec![i as usize],
        None => (0..n).collect(),
    }
}

fn case_rng(tag: u64, index: usize) -> Rng {
    Rng::new(base_seed() ^ (tag << 40) ^ (index as u64).wrapping_mul(0x1000_0001))
}

const SPECIAL: &[u8] = b"\r\n\0\x80\xff\xc3\t :;,-+0123456789\x7f(|)\"aZ";
const NUMBERS: &[&str] = &[
    "",
    "-1",
    "+5",
    " 5",
    "5 ",
    "0",
    "00",
    "-0",
    "99999999999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "ffffffffffffffff",
    "10000000000000000",
    "4294967296",
    "65536",
    "65535",
    "256",
    "0x1f",
    "1e3",
    "\u{0661}",
    "1 2",
    "7\t",
    "-",
    "+",
    "1,2",
    "3;x",
];

fn digit_runs(v: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if v[i].is_ascii_digit() {
            let s = i;
            while i < v.len() && v[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    runs
}

fn line_spans(v: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut s = 0;
    for (i, &b) in v.iter().enumerate() {
        if b == b'\n' {
            spans.push((s, i + 1));
            s = i + 1;
        }
    }
    if s < v.len() {
        spans.push((s, v.len()));
    }
    spans
}

/// One to four random edits of `t`.
fn mutate(rng: &mut Rng, t: &[u8]) -> Vec<u8> {
    let mut v = t.to_vec();
    for _ in 0..rng.range(1, 4) {
        let len = v.len();
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                let b = if rng.chance(50) {
                    *rng.pick(SPECIAL)
                } else {
                    rng.next() as u8
                };
                v.insert(i, b);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.range(1, 3).min(len - i);
                v.drain(i..i + n);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.range(1, 32).min(len - i);
                let piece = v[i..i + n].to_vec();
                let times = if rng.chance(10) { rng.range(2, 50) } else { 1 };
                for _ in 0..times {
                    v.splice(i..i, piece.iter().copied());
                }
            }
            4 | 5 => {
                let runs = digit_runs(&v);
                if !runs.is_empty() {
                    let (s, e) = *rng.pick(&runs);
                    let with = rng.pick(NUMBERS).as_bytes().to_vec();
                    v.splice(s..e, with);
                }
            }
            6 if len > 0 => {
                let i = rng.below(len);
                v[i] = *rng.pick(SPECIAL);
            }
            7 => {
                let i = rng.below(len + 1);
                const ENDS: [&[u8]; 6] = [b"\r\n", b"\n", b"\r", b"\0", b"\r\r\n", b"\n\n"];
                let what = *rng.pick(&ENDS[..]);
                v.splice(i..i, what.iter().copied());
            }
            8 => {
                let spans = line_spans(&v);
                if !spans.is_empty() {
                    let (s, e) = *rng.pick(&spans);
                    let line = v[s..e].to_vec();
                    v.splice(s..s, line);
                }
            }
            9 => {
                let spans = line_spans(&v);
                if !spans.is_empty() {
                    let (s, e) = *rng.pick(&spans);
                    v.drain(s..e);
                }
            }
            10 => {
                // A line ending changed: CRLF to LF, LF to CR, CRLF to CR.
                let ends: Vec<usize> = (0..len).filter(|&i| v[i] == b'\n').collect();
                if !ends.is_empty() {
                    let i = *rng.pick(&ends);
                    match rng.below(3) {
                        0 if i > 0 && v[i - 1] == b'\r' => {
                            v.remove(i - 1);
                        }
                        1 => v[i] = b'\r',
                        _ => {
                            v.remove(i);
                        }
                    }
                }
            }
            11 if len > 0 => {
                // A run of high bytes.
                let i = rng.below(len + 1);
                let n = rng.range(1, 8);
                for _ in 0..n {
                    let b = 0x80 | rng.next() as u8;
                    v.insert(i, b);
                }
            }
            _ => {}
        }
    }
    v
}

// ----- delivery -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Shut the writing side; read what the client sends until it closes.
    Close,
    /// Abortive close (SO_LINGER 0): an RST.
    Reset,
    /// Say nothing more; read until the client closes (or a long deadline).
    Stall,
}

#[derive(Clone, Debug)]
struct Delivery {
    cuts: Vec<usize>,
    sleep_us: u64,
    end: End,
}

fn delivery(rng: &mut Rng, end: Option<End>) -> Delivery {
    let cuts = match rng.below(4) {
        0 => Vec::new(),
        1 => (0..rng.range(1, 6)).map(|_| rng.range(1, 64)).collect(),
        2 => (0..rng.range(1, 12)).map(|_| rng.range(1, 8)).collect(),
        _ => vec![1; rng.range(1, 20)],
    };
    let sleep_us = if rng.chance(50) {
        0
    } else {
        rng.range(50, 1500) as u64
    };
    let end = end.unwrap_or_else(|| match rng.below(20) {
        0..=13 => End::Close,
        14..=16 => End::Reset,
        _ => End::Stall,
    });
    Delivery {
        cuts,
        sleep_us,
        end,
    }
}

fn write_pieces(sock: &mut TcpStream, bytes: &[u8], d: &Delivery) -> bool {
    let mut at = 0usize;
    for &cut in d.cuts.iter().chain([&usize::MAX]) {
        let end = at.saturating_add(cut).min(bytes.len());
        if sock.write_all(&bytes[at..end]).is_err() {
            return false;
        }
        at = end;
        if d.sleep_us > 0 {
            std::thread::sleep(Duration::from_micros(d.sleep_us));
        }
        if at == bytes.len() {
            break;
        }
    }
    true
}

/// Reads and discards what the client sends until it closes or `limit` passes.
fn drain(sock: &mut TcpStream, limit: Duration) {
    let until = Instant::now() + limit;
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let mut sink = [0u8; 4096];
    while Instant::now() < until {
        match sock.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

fn finish(mut sock: TcpStream, end: End) {
    match end {
        End::Close => {
            let _ = sock.shutdown(Shutdown::Write);
            drain(&mut sock, Duration::from_secs(8));
        }
        End::Reset => {
            let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
            drop(sock);
        }
        End::Stall => drain(&mut sock, Duration::from_secs(8)),
    }
}

fn peer_socket(sock: &TcpStream) {
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_nodelay(true);
    let _ = sock.set_write_timeout(Some(Duration::from_secs(5)));
}

/// Reads a line (to LF) from `sock`, within `limit`; None when the client closed or went quiet.
fn read_line(sock: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let until = Instant::now() + limit;
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while Instant::now() < until {
        match sock.read(&mut b) {
            Ok(1) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    return Some(line);
                }
                if line.len() > 1 << 20 {
                    return None;
                }
            }
            Ok(_) => return None,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return None,
        }
    }
    None
}

fn accept_within(listener: &TcpListener, limit: Duration, stop: &AtomicBool) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let until = Instant::now() + limit;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, _)) => {
                peer_socket(&s);
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => return None,
        }
    }
    None
}

// ----- running a batch of clients --------------------------------------------------------------

type Verdict = Result<(), String>;

struct Batch {
    verdicts: Vec<Option<(Verdict, Duration)>>,
    panics: Vec<String>,
    peak: usize,
    cpu: Duration,
    wall: Duration,
}

/// A client's verdict and how long it took.
type Outcome = (Verdict, Duration);

/// Runs every client in a coroutine of its own, all under one `copas::run` on this thread,
/// with a watchdog of `limit` that kills the process (printing `what`).
fn run_batch(what: &str, clients: Vec<Box<dyn FnOnce() -> Verdict>>, limit: Duration) -> Batch {
    let n = clients.len();
    let slots: Rc<RefCell<Vec<Option<Outcome>>>> = Rc::new(RefCell::new(vec![None; n]));
    let panics = Rc::new(RefCell::new(Vec::<String>::new()));
    let sink = panics.clone();
    copas::setdefaulterrorhandler(move |report| sink.borrow_mut().push(report.to_string()));
    let _dog = util::Watchdog::new(what, limit);
    let cpu0 = util::thread_cpu_time();
    let start = Instant::now();
    let (_, peak) = heap::peak_heap(|| {
        for (i, client) in clients.into_iter().enumerate() {
            let out = slots.clone();
            copas::addthread(move || {
                let t = Instant::now();
                let v = client();
                out.borrow_mut()[i] = Some((v, t.elapsed()));
            })
            .expect("addthread");
        }
        copas::run().expect("run");
    });
    let wall = start.elapsed();
    let cpu = util::thread_cpu_time() - cpu0;
    let verdicts = std::mem::take(&mut *slots.borrow_mut());
    let panics = panics.borrow().clone();
    Batch {
        verdicts,
        panics,
        peak,
        cpu,
        wall,
    }
}

/// Collects failures; panics at the end listing them.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check_batch(
        &mut self,
        tag: &str,
        ids: &[(usize, String)],
        batch: &Batch,
        bounds: &[Duration],
        heap_limit: usize,
    ) {
        for (k, (index, desc)) in ids.iter().enumerate() {
            let replay = format!("COPAS_FUZZ_SEED={:#x} COPAS_FUZZ_CASE={index}", base_seed());
            match &batch.verdicts[k] {
                None => self.0.push(format!(
                    "[{tag} {replay}] the client's coroutine never completed (a panic?): {desc}"
                )),
                Some((Err(msg), took)) => self
                    .0
                    .push(format!("[{tag} {replay}] {msg} (took {took:?}): {desc}")),
                Some((Ok(()), took)) if *took > bounds[k] => self.0.push(format!(
                    "[{tag} {replay}] took {took:?}, over its bound {:?}: {desc}",
                    bounds[k]
                )),
                _ => {}
            }
        }
        for p in &batch.panics {
            self.0
                .push(format!("[{tag}] panic reached the error handler: {p}"));
        }
        if batch.peak > heap_limit {
            self.0.push(format!(
                "[{tag}] batch of cases {:?} held {} heap bytes (limit {heap_limit})",
                ids.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                batch.peak
            ));
        }
    }

    fn assert_none(&self, what: &str) {
        if !self.0.is_empty() {
            let shown: Vec<&String> = self.0.iter().take(25).collect();
            panic!(
                "{what}: {} failures (first {}):\n{}",
                self.0.len(),
                shown.len(),
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

fn shown(bytes: &[u8]) -> String {
    let s = bytes.escape_ascii().to_string();
    if s.len() > 300 {
        format!("{}…({} bytes)", &s[..300], bytes.len())
    } else {
        s
    }
}

fn kind_in(e: &copas::Error, kinds: &[ErrorKind]) -> Verdict {
    if kinds.contains(&e.kind()) {
        Ok(())
    } else {
        Err(format!("unexpected error kind {:?}: {e}", e.kind()))
    }
}

// ----- (a) HTTP ---------------------------------------------------------------------------------

/// Templates: the response and, when it is served unmutated and closed, the body expected.
fn http_templates() -> Vec<(&'static str, Option<&'static str>)> {
    vec![
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
            Some("hello"),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
            Some("hello world"),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            Some("abc"),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\nuntil close",
            Some("until close"),
        ),
        ("HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody until close", Some("body until close")),
        (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Some("ok"),
        ),
        ("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", Some("")),
        (
            "HTTP/1.1 200 OK\r\nX-A: a\r\n  b\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nxyz",
            Some("xyz"),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n00000a ; name=\"q;x\"\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\nT1: a\r\nT2: b\r\n\r\n",
            Some("0123456789abcdefghij"),
        ),
        (
            "HTTP/1.1 302 Found\r\nLocation: /next?a=1\r\nContent-Length: 3\r\n\r\nabc",
            None,
        ),
        (
            "HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:PORT/other#frag\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            None,
        ),
    ]
}

/// Whether a (mutated) redirect response could lead anywhere but the peer itself: only a
/// Location that is an absolute path on the same origin is allowed to be followed.
fn location_is_local(resp: &[u8], port: u16) -> bool {
    // Every Location-like line (the client takes the first location field; be strict and
    // check all lines that mention "location" in any case).
    let text = String::from_utf8_lossy(resp).to_ascii_lowercase();
    let mut ok = true;
    for line in text.split(['\n', '\r']) {
        if let Some(at) = line.find("location") {
            let rest = &line[at + "location".len()..];
            let value: String = rest
                .trim_start_matches([' ', '\t', ':'])
                .chars()
                .filter(|c| *c != '\t' && *c != '\n' && *c != '\r')
                .collect();
            let value = value.trim_matches(|c: char| c <= ' ');
            let abs = format!("http://127.0.0.1:{port}/");
            let path = value.strip_prefix(&abs).map(|p| format!("/{p}"));
            let path = path.as_deref().unwrap_or(value);
            let b = path.as_bytes();
            let local = b.first() == Some(&b'/')
                && !matches!(b.get(1), Some(b'/') | Some(b'\\'))
                && path.is_ascii();
            ok &= local || value.is_empty();
        }
    }
    // A folded continuation line could extend a Location: refuse any with a line starting
    // with white space, and anything with "http" or "\\" elsewhere.
    ok && !text.contains("\n ") && !text.contains("\n\t") && !text.contains('\\')
        && text.matches("http:").count() <= 1
        && !text.contains("https")
        && !text.contains("//1") // only the one absolute URL of the template
        || !text.contains("location")
}

#[derive(Clone)]
struct HttpCase {
    index: usize,
    response: Vec<u8>,
    expected: Option<Vec<u8>>,
    d: Delivery,
    method: &'static str,
    mode: u8,
    keep_alive: bool,
    follow: bool,
    max_body: Option<u64>,
}

fn http_peer(
    listener: TcpListener,
    response: Vec<u8>,
    d: Delivery,
    max_conns: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut handlers = Vec::new();
        let until = Instant::now() + Duration::from_secs(15);
        while handlers.len() < max_conns && Instant::now() < until {
            let Some(mut sock) = accept_within(&listener, Duration::from_millis(50), &stop) else {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            };
            let response = response.clone();
            let d = d.clone();
            handlers.push(std::thread::spawn(move || {
                // One response per connection: the peer cannot know where a mutated
                // response ends, so it ends the connection after it.
                {
                    let mut head = Vec::new();
                    let until = Instant::now() + Duration::from_secs(5);
                    let mut ok = false;
                    while Instant::now() < until {
                        match read_line(&mut sock, Duration::from_secs(5)) {
                            Some(line) => {
                                let blank = line == b"\r\n" || line == b"\n";
                                head.extend(line);
                                if blank {
                                    ok = true;
                                    break;
                                }
                            }
                            None => break,
                        }
                    }
                    if !ok {
                        return;
                    }
                    if !write_pieces(&mut sock, &response, &d) {
                        return;
                    }
                }
                finish(sock, d.end);
            }));
        }
        for h in handlers {
            let _ = h.join();
        }
    })
}

fn http_client(case: &HttpCase, addr: SocketAddr, timeout: Duration) -> Verdict {
    let url = format!("http://{addr}/start");
    let mut req = Request::new(case.method, &url)
        .timeout(timeout)
        .keep_alive(case.keep_alive)
        .redirect(if case.follow {
            Redirect::Safe
        } else {
            Redirect::None
        });
    if let Some(max) = case.max_body {
        req = req.max_body(max);
    }
    let allowed = [
        ErrorKind::Protocol,
        ErrorKind::LimitExceeded,
        ErrorKind::Closed,
        ErrorKind::Timeout,
    ];
    let got: copas::Result<(u16, Vec<u8>)> = match case.mode {
        0 => req.send().map(|r| (r.status(), r.into_body())),
        1 => {
            let mut out = Vec::new();
            req.send_to(&mut out).map(|r| (r.status(), out))
        }
        _ => match req.stream() {
            Ok((r, mut body)) => {
                let mut out = Vec::new();
                let mut buf = [0u8; 7];
                let mut rng = Rng::new(case.index as u64);
                let mut res = Ok((r.status(), Vec::new()));
                for _ in 0..100_000 {
                    let n = rng.range(1, 7);
                    match body.read(&mut buf[..n]) {
                        Ok(0) => {
                            res = Ok((r.status(), std::mem::take(&mut out)));
                            break;
                        }
                        Ok(k) => out.extend_from_slice(&buf[..k]),
                        Err(e) => {
                            res = Err(copas::Error::from(e));
                            break;
                        }
                    }
                }
                res
            }
            Err(e) => Err(e),
        },
    };
    match got {
        Ok((status, body)) => {
            if !(100..=599).contains(&status) || ((100..200).contains(&status) && status != 101) {
                return Err(format!("status {status} returned as final"));
            }
            if body.len() > case.response.len() {
                return Err(format!(
                    "a body of {} bytes out of a response of {}",
                    body.len(),
                    case.response.len()
                ));
            }
            if case.method == "HEAD" && !body.is_empty() {
                return Err("HEAD with a body".into());
            }
            if let Some(max) = case.max_body {
                if case.mode == 0 && body.len() as u64 > max {
                    return Err("body past max_body".into());
                }
            }
            if let Some(exp) = &case.expected {
                if case.method != "HEAD" && body != *exp {
                    return Err(format!(
                        "unmutated response gave body b\"{}\", expected b\"{}\"",
                        shown(&body),
                        shown(exp)
                    ));
                }
            }
            // A body must be bytes of the response (no invented bytes): each byte present.
            if !body.iter().all(|b| case.response.contains(b)) {
                return Err(format!(
                    "body has bytes the peer never sent: b\"{}\"",
                    shown(&body)
                ));
            }
            Ok(())
        }
        Err(e) => {
            kind_in(&e, &allowed)?;
            if let Some(exp) = &case.expected {
                if case.d.end == End::Close && case.max_body.is_none() {
                    return Err(format!("unmutated, closed response failed: {e}"));
                }
                let _ = exp;
            }
            if e.kind() == ErrorKind::Timeout && case.d.end == End::Close {
                return Err(format!("timed out though the peer closed: {e}"));
            }
            Ok(())
        }
    }
}

fn http_cases() -> Vec<HttpCase> {
    let templates = http_templates();
    let mut cases = Vec::new();
    let random = case_count(300);
    // Truncation at every offset of every template (closed, reset or stalled at random).
    let mut trunc = Vec::new();
    for (t, _) in &templates {
        for cut in 0..t.len() {
            trunc.push((t.as_bytes()[..cut].to_vec(), None::<Vec<u8>>));
        }
    }
    let total = random + trunc.len();
    for index in 0..total {
        let mut rng = case_rng(1, index);
        let (response, expected) = if index < random {
            let (t, exp) = *rng.pick(&templates);
            if rng.chance(8) {
                (t.as_bytes().to_vec(), exp.map(|e| e.as_bytes().to_vec()))
            } else {
                let mut m = mutate(&mut rng, t.as_bytes());
                if rng.chance(20) {
                    let cut = rng.below(m.len() + 1);
                    m.truncate(cut);
                }
                (m, None)
            }
        } else {
            trunc[index - random].clone()
        };
        let d = delivery(&mut rng, None);
        let expected = expected.filter(|_| d.end == End::Close);
        cases.push(HttpCase {
            index,
            response,
            expected,
            d,
            method: if rng.chance(10) { "HEAD" } else { "GET" },
            mode: rng.below(3) as u8,
            keep_alive: rng.chance(30),
            follow: rng.chance(50),
            max_body: if rng.chance(10) {
                Some(rng.below(12) as u64)
            } else {
                None
            },
        });
    }
    for c in cases.iter_mut() {
        if c.max_body.is_some() {
            c.expected = None;
        }
    }
    cases
}

#[test]
fn mutated_http_responses_give_a_value_or_a_typed_error() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _dog = util::Watchdog::new("fuzz http client", Duration::from_secs(240));
    util::make_dispatcher();
    http::close_idle_connections();
    let fds = util::fd_count();
    let cases = http_cases();
    let wanted = indices(cases.len());
    let mut fails = Failures::default();
    let started = Instant::now();
    for chunk in wanted.chunks(48) {
        let mut peers = Vec::new();
        let mut clients: Vec<Box<dyn FnOnce() -> Verdict>> = Vec::new();
        let mut ids = Vec::new();
        let mut bounds = Vec::new();
        for &i in chunk {
            let (listener, addr) = util::local_listener();
            let mut case = cases[i].clone();
            // Put the peer's own port into absolute Locations; follow only local ones.
            let port = addr.port().to_string();
            let resp = String::from_utf8_lossy(&case.response).contains("PORT");
            if resp {
                let mut out = Vec::new();
                let mut k = 0;
                while k < case.response.len() {
                    if case.response[k..].starts_with(b"PORT") {
                        out.extend_from_slice(port.as_bytes());
                        k += 4;
                    } else {
                        out.push(case.response[k]);
                        k += 1;
                    }
                }
                case.response = out;
            }
            if case.follow && !location_is_local(&case.response, addr.port()) {
                case.follow = false;
            }
            let timeout = if case.d.end == End::Stall {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(3)
            };
            let stop = Arc::new(AtomicBool::new(false));
            let conns = if case.follow {
                http::MAX_REDIRECTS + 2
            } else {
                1
            };
            peers.push((
                http_peer(
                    listener,
                    case.response.clone(),
                    case.d.clone(),
                    conns,
                    stop.clone(),
                ),
                stop,
            ));
            ids.push((
                i,
                format!(
                    "{} {} mode={} ka={} follow={} max_body={:?} {:?} response=b\"{}\"",
                    case.method,
                    addr,
                    case.mode,
                    case.keep_alive,
                    case.follow,
                    case.max_body,
                    case.d,
                    shown(&case.response)
                ),
            ));
            // Stalled: each hop may wait out the timeout once.
            let hops = if case.follow {
                http::MAX_REDIRECTS as u32 + 1
            } else {
                1
            };
            bounds.push(if case.d.end == End::Stall {
                timeout * (hops + 1) + Duration::from_secs(1)
            } else {
                Duration::from_secs(2)
            });
            clients.push(Box::new(move || http_client(&case, addr, timeout)));
        }
        let batch = run_batch(
            &format!(
                "http batch {:?}",
                ids.iter().map(|x| x.0).collect::<Vec<_>>()
            ),
            clients,
            Duration::from_secs(60),
        );
        http::close_idle_connections();
        for (p, stop) in peers {
            stop.store(true, Ordering::Relaxed);
            let _ = p.join();
        }
        fails.check_batch("http", &ids, &batch, &bounds, 48 * 512 * 1024);
    }
    http::close_idle_connections();
    let after = util::fd_count();
    if after > fds {
        fails
            .0
            .push(format!("descriptors: {fds} before, {after} after"));
    }
    eprintln!("http: {} cases in {:?}", wanted.len(), started.elapsed());
    fails.assert_none("HTTP client on mutated responses");
}

// ----- (b, c) FTP and SMTP dialogs ------------------------------------------------------------

/// One dialog case: which reply (by name) is mutated, whether the peer ends right after it
/// (truncation plus close/reset/stall), and how bytes are delivered.
#[derive(Clone, Debug)]
struct DialogCase {
    target: Option<&'static str>,
    end_early: bool,
    truncate: bool,
    d: Delivery,
    seed: u64,
    timeout: Duration,
    variant: usize,
}

fn dialog_case(tag: u64, index: usize, names: &[&'static str]) -> DialogCase {
    let mut rng = case_rng(tag, index);
    let target = if rng.chance(6) {
        None
    } else {
        Some(*rng.pick(names))
    };
    let end_early = target.is_some() && rng.chance(35);
    let truncate = end_early && rng.chance(70);
    let d = delivery(&mut rng, None);
    DialogCase {
        target,
        end_early,
        truncate,
        timeout: Duration::from_millis(400),
        seed: rng.next(),
        d,
        variant: rng.below(4),
    }
}

/// Sends `reply` (named `name`) as the case says: mutated when it is the target, and then,
/// when the case ends early, cut and ended. Returns false when the dialog is over.
fn play_reply(
    sock: &mut TcpStream,
    name: &str,
    reply: &[u8],
    case: &DialogCase,
    rng: &mut Rng,
    log: &mut Vec<u8>,
) -> bool {
    let hit = case.target == Some(name);
    let mut bytes = if hit {
        mutate(rng, reply)
    } else {
        reply.to_vec()
    };
    if hit && case.truncate {
        let cut = rng.below(bytes.len() + 1);
        bytes.truncate(cut);
    }
    log.extend_from_slice(format!("<{name}>").as_bytes());
    log.extend_from_slice(&bytes);
    let ok = write_pieces(sock, &bytes, &case.d);
    ok && !(hit && case.end_early)
}

type Log = Arc<std::sync::Mutex<Vec<u8>>>;

/// The peer's side of one control connection: its case, generator and transcript.
struct Dialog {
    sock: TcpStream,
    case: DialogCase,
    rng: Rng,
    text: Vec<u8>,
}

impl Dialog {
    /// Accepts the client's connection; `None` when none came.
    fn accept(listener: &TcpListener, case: DialogCase, stop: &AtomicBool) -> Option<Dialog> {
        let sock = accept_within(listener, Duration::from_secs(5), stop)?;
        Some(Dialog {
            sock,
            rng: Rng::new(case.seed),
            case,
            text: Vec::new(),
        })
    }

    /// Sends the reply `name` (mutated if the case targets it) on `to`, or on the control
    /// connection; false when the dialog ends here.
    fn reply_on(&mut self, to: Option<&mut TcpStream>, name: &str, bytes: &[u8]) -> bool {
        let sock = to.unwrap_or(&mut self.sock);
        play_reply(sock, name, bytes, &self.case, &mut self.rng, &mut self.text)
    }

    fn reply(&mut self, name: &str, bytes: &[u8]) -> bool {
        self.reply_on(None, name, bytes)
    }

    fn next_line(&mut self) -> Option<Vec<u8>> {
        read_line(&mut self.sock, Duration::from_secs(5))
    }

    /// Hands the transcript to `log` and ends the connection as the case says.
    fn end(self, log: &Log) {
        *log.lock().unwrap() = self.text;
        finish(self.sock, self.case.d.end);
    }
}

/// A peer thread: accepts one client on `listener` and holds `conversation` with it.
fn serve_dialog(
    listener: TcpListener,
    case: DialogCase,
    log: Log,
    stop: Arc<AtomicBool>,
    conversation: impl Fn(&mut Dialog, &AtomicBool) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        if let Some(mut dialog) = Dialog::accept(&listener, case, &stop) {
            conversation(&mut dialog, &stop);
            dialog.end(&log);
        }
    })
}

fn ftp_reply(name: &str, variant: usize) -> Vec<u8> {
    let s = match name {
        "GREETING" => match variant {
            0 => "220 Service ready\r\n",
            1 => "220-Welcome to fuzz\r\n220-second line\r\n  free text 999 x\r\n220 ready\r\n",
            2 => "120 Ready in 1 minute\r\n220 ok\r\n",
            _ => "220-a\r\n220 b\r\n",
        },
        "USER" => "331 Password required for u\r\n",
        "PASS" => "230-Logged in\r\n230 ok\r\n",
        "TYPE" => "200 Type set to I\r\n",
        "SIZE" => "213 4242\r\n",
        "PWD" => "257 \"/home/\"\"fuzz\"\"\" is the current directory\r\n",
        "MDTM" => "213 20240101123456.789\r\n",
        "EPSV" => "229 Entering Extended Passive Mode (|||DATAPORT|)\r\n",
        "PASV" => "227 Entering Passive Mode (127,0,0,1,HI,LO).\r\n",
        "LIST" => "150 Here comes the directory listing\r\n",
        "DATA" => "-rw-r--r-- 1 u g 4242 Jan 1 00:00 file\r\ndrwxr-xr-x 2 u g 4096 Jan 1 00:00 dir\r\n\r\nlrwx 1 u g 3 Jan 1 00:00 a -> b\n",
        "226" => "226-Transfer\r\n226 complete\r\n",
        "QUIT" => "221 Goodbye\r\n",
        _ => "502 Command not implemented\r\n",
    };
    s.as_bytes().to_vec()
}

const FTP_NAMES: &[&str] = &[
    "GREETING", "USER", "PASS", "TYPE", "SIZE", "PWD", "MDTM", "EPSV", "PASV", "LIST", "DATA",
    "226", "QUIT",
];

/// The server's side of a FTP dialog, after the connection is accepted.
fn ftp_peer(dialog: &mut Dialog, stop: &AtomicBool) {
    let variant = dialog.case.variant;
    let mut data: Option<TcpListener> = None;
    let mut live = dialog.reply("GREETING", &ftp_reply("GREETING", variant));
    while live {
        let Some(line) = dialog.next_line() else {
            break;
        };
        let verb = String::from_utf8_lossy(&line)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let name = match verb.as_str() {
            "NLST" => "LIST",
            v => FTP_NAMES
                .iter()
                .copied()
                .find(|n| *n == v)
                .unwrap_or("OTHER"),
        };
        let mut reply = ftp_reply(name, variant);
        if name == "EPSV" || name == "PASV" {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind data");
            let port = l.local_addr().expect("addr").port();
            data = Some(l);
            let s = String::from_utf8_lossy(&reply)
                .replace("DATAPORT", &port.to_string())
                .replace("HI", &(port >> 8).to_string())
                .replace("LO", &(port & 255).to_string());
            reply = s.into_bytes();
        }
        live = dialog.reply(name, &reply);
        if !live {
            break;
        }
        match name {
            "LIST" => {
                if let Some(l) = data.take() {
                    if let Some(mut ds) = accept_within(&l, Duration::from_secs(1), stop) {
                        if dialog.reply_on(Some(&mut ds), "DATA", &ftp_reply("DATA", 0)) {
                            let _ = ds.shutdown(Shutdown::Write);
                            drain(&mut ds, Duration::from_millis(300));
                        } else {
                            finish(ds, dialog.case.d.end);
                            // The control connection ends too.
                            break;
                        }
                    }
                }
                live = dialog.reply("226", &ftp_reply("226", 0));
            }
            "QUIT" => break,
            _ => {}
        }
    }
}

fn ftp_client(case: &DialogCase, addr: SocketAddr) -> Verdict {
    let allowed = [
        ErrorKind::Protocol,
        ErrorKind::LimitExceeded,
        ErrorKind::Closed,
        ErrorKind::Timeout,
        ErrorKind::Rejected,
        ErrorKind::Refused,
    ];
    let per_call = case.timeout * 2 + Duration::from_millis(700);
    let mut notes = Vec::new();
    let mut timed = |what: &str, t: Instant, r: Result<String, copas::Error>| -> Verdict {
        let took = t.elapsed();
        if took > per_call {
            return Err(format!("{what} took {took:?}"));
        }
        match r {
            Ok(v) => {
                notes.push(format!("{what}=Ok({v})"));
                Ok(())
            }
            Err(e) => {
                notes.push(format!("{what}=Err({:?})", e.kind()));
                if e.kind() == ErrorKind::Rejected
                    && !e.reply_code().is_some_and(|c| (100..600).contains(&c))
                {
                    return Err(format!("{what}: Rejected without a valid code: {e}"));
                }
                kind_in(&e, &allowed).map_err(|m| format!("{what}: {m}"))
            }
        }
    };
    let t = Instant::now();
    let mut c = match ftp::Client::connect(addr, Some(case.timeout)) {
        Ok(c) => c,
        Err(e) => return timed("connect", t, Err(e)),
    };
    let unmutated = case.target.is_none();
    let t = Instant::now();
    let r = c.login("u", "p").map(|r| r.code().to_string());
    timed("login", t, r)?;
    let t = Instant::now();
    let r = c.binary().map(|r| r.code().to_string());
    timed("binary", t, r)?;
    let t = Instant::now();
    let size = c.size("file");
    if unmutated && case.d.end != End::Reset {
        if let Ok(n) = &size {
            if *n != 4242 {
                return Err(format!("SIZE gave {n}"));
            }
        } else {
            return Err(format!("unmutated SIZE failed: {:?}", size.err()));
        }
    }
    timed("size", t, size.map(|n| n.to_string()))?;
    let t = Instant::now();
    let pwd = c.pwd();
    if unmutated && case.d.end != End::Reset && pwd.as_deref().ok() != Some("/home/\"fuzz\"") {
        return Err(format!("PWD gave {pwd:?}"));
    }
    timed("pwd", t, pwd)?;
    let t = Instant::now();
    let r = c.command("MDTM", Some("file")).map(|r| r.text());
    timed("mdtm", t, r)?;
    c.set_epsv(case.variant % 2 == 0);
    let t = Instant::now();
    let list = c.list(None);
    if unmutated && case.d.end != End::Reset {
        let want = vec![
            "-rw-r--r-- 1 u g 4242 Jan 1 00:00 file".to_string(),
            "drwxr-xr-x 2 u g 4096 Jan 1 00:00 dir".to_string(),
            "lrwx 1 u g 3 Jan 1 00:00 a -> b".to_string(),
        ];
        if list.as_ref().ok() != Some(&want) {
            return Err(format!("LIST gave {list:?}"));
        }
    }
    timed("list", t, list.map(|l| format!("{} entries", l.len())))?;
    let t = Instant::now();
    let r = c.quit().map(|r| r.code().to_string());
    timed("quit", t, r)?;
    Ok(())
}

fn dialog_test<F, P>(
    tag: u64,
    what: &str,
    names: &[&'static str],
    default_cases: usize,
    peer: P,
    client: F,
) where
    F: Fn(&DialogCase, SocketAddr) -> Verdict + Clone + 'static,
    P: Fn(&mut Dialog, &AtomicBool) + Copy + Send + 'static,
{
    let _dog = util::Watchdog::new(what, Duration::from_secs(240));
    util::make_dispatcher();
    let fds = util::fd_count();
    let n = case_count(default_cases);
    let wanted = indices(n);
    let mut fails = Failures::default();
    let started = Instant::now();
    for chunk in wanted.chunks(64) {
        let mut peers = Vec::new();
        let mut clients: Vec<Box<dyn FnOnce() -> Verdict>> = Vec::new();
        let mut bounds = Vec::new();
        let mut pending = Vec::new();
        for &i in chunk {
            let case = dialog_case(tag, i, names);
            let (listener, addr) = util::local_listener();
            let log: Log = Arc::default();
            let stop = Arc::new(AtomicBool::new(false));
            peers.push((
                serve_dialog(listener, case.clone(), log.clone(), stop.clone(), peer),
                stop,
            ));
            pending.push((i, case.clone(), log));
            bounds.push(case.timeout * 12 + Duration::from_secs(2));
            let client = client.clone();
            clients.push(Box::new(move || client(&case, addr)));
        }
        let batch = run_batch(
            &format!("{what} batch {:?}", chunk),
            clients,
            Duration::from_secs(60),
        );
        for (p, stop) in peers {
            stop.store(true, Ordering::Relaxed);
            let _ = p.join();
        }
        let ids: Vec<(usize, String)> = pending
            .into_iter()
            .map(|(i, case, log)| {
                let sent = log.lock().unwrap().clone();
                (i, format!("{case:?} peer sent b\"{}\"", shown(&sent)))
            })
            .collect();
        fails.check_batch(what, &ids, &batch, &bounds, 64 * 512 * 1024);
    }
    let after = util::fd_count();
    if after > fds {
        fails
            .0
            .push(format!("descriptors: {fds} before, {after} after"));
    }
    eprintln!("{what}: {} cases in {:?}", wanted.len(), started.elapsed());
    fails.assert_none(what);
}

#[test]
fn mutated_ftp_replies_give_a_value_or_a_typed_error() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    dialog_test(2, "ftp", FTP_NAMES, 200, ftp_peer, ftp_client);
}

fn smtp_reply(name: &str, variant: usize) -> Vec<u8> {
    let s = match name {
        "GREETING" => match variant {
            0 => "220 fuzz.example ESMTP ready\r\n",
            _ => "220-fuzz.example ESMTP\r\n220 ready\r\n",
        },
        "EHLO" => match variant {
            0 | 1 => "250-fuzz.example Hello\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250 HELP\r\n",
            2 => "250-fuzz.example\r\n250-AUTH=LOGIN\r\n250 AUTH LOGIN\r\n",
            _ => "250-fuzz.example\r\n250 AUTH PLAIN\r\n",
        },
        "HELO" => "250 fuzz.example\r\n",
        "AUTH" => "235 2.7.0 Authentication successful\r\n",
        "AUTHL" => "334 VXNlcm5hbWU6\r\n",
        "AUTHU" => "334 UGFzc3dvcmQ6\r\n",
        "AUTHP" => "235 2.7.0 ok\r\n",
        "MAIL" => "250 2.1.0 Ok\r\n",
        "RCPT" => "250 2.1.5 Ok\r\n",
        "DATA" => "354 End data with <CR><LF>.<CR><LF>\r\n",
        "DATAEND" => "250-2.0.0 Ok\r\n250 queued as FUZZ\r\n",
        "QUIT" => "221 2.0.0 Bye\r\n",
        _ => "502 5.5.2 Error: command not recognized\r\n",
    };
    s.as_bytes().to_vec()
}

const SMTP_NAMES: &[&str] = &[
    "GREETING", "EHLO", "HELO", "AUTH", "AUTHL", "AUTHU", "AUTHP", "MAIL", "RCPT", "DATA",
    "DATAEND", "QUIT",
];

/// The server's side of an SMTP dialog, after the connection is accepted.
fn smtp_peer(dialog: &mut Dialog, _stop: &AtomicBool) {
    let variant = dialog.case.variant;
    let mut live = dialog.reply("GREETING", &smtp_reply("GREETING", variant));
    let mut login_step = 0;
    while live {
        let Some(line) = dialog.next_line() else {
            break;
        };
        let words: Vec<String> = String::from_utf8_lossy(&line)
            .split_whitespace()
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let verb = words.first().cloned().unwrap_or_default();
        let name: &str = if login_step == 1 {
            login_step = 2;
            "AUTHU"
        } else if login_step == 2 {
            login_step = 0;
            "AUTHP"
        } else {
            match verb.as_str() {
                "AUTH" if words.get(1).map(String::as_str) == Some("LOGIN") => {
                    login_step = 1;
                    "AUTHL"
                }
                v => SMTP_NAMES
                    .iter()
                    .copied()
                    .find(|n| *n == v)
                    .unwrap_or("OTHER"),
            }
        };
        live = dialog.reply(name, &smtp_reply(name, variant));
        if live && name == "DATA" {
            loop {
                match dialog.next_line() {
                    Some(l) if l == b".\r\n" => break,
                    Some(_) => {}
                    None => {
                        live = false;
                        break;
                    }
                }
            }
            if live {
                live = dialog.reply("DATAEND", &smtp_reply("DATAEND", variant));
            }
        }
        if name == "QUIT" {
            break;
        }
    }
}

fn smtp_client(case: &DialogCase, addr: SocketAddr) -> Verdict {
    let mechanism = match case.seed % 3 {
        0 => AuthMechanism::Auto,
        1 => AuthMechanism::Plain,
        _ => AuthMechanism::Login,
    };
    let mail = Mail::new(addr.to_string(), "alice@example.org")
        .to("bob@example.org")
        .to("carol@example.org")
        .message("Subject: hi\r\n\r\n.hello\r\nbye\r\n")
        .starttls(StartTls::Never)
        .timeout(case.timeout)
        .auth("user", "secret")
        .auth_mechanism(mechanism);
    let allowed = [
        ErrorKind::Protocol,
        ErrorKind::LimitExceeded,
        ErrorKind::Closed,
        ErrorKind::Timeout,
        ErrorKind::Rejected,
    ];
    match smtp::send(&mail) {
        Ok(reply) => {
            if reply.code() != 250 {
                return Err(format!("success with reply {reply}"));
            }
            if case.target.is_none() && reply.lines() != ["2.0.0 Ok", "queued as FUZZ"] {
                return Err(format!("unmutated final reply read as {:?}", reply.lines()));
            }
            Ok(())
        }
        Err(e) => {
            if case.target.is_none()
                && case.d.end != End::Reset
                && !(case.variant == 2 && mechanism == AuthMechanism::Plain)
            {
                return Err(format!("unmutated dialog failed: {e}"));
            }
            if e.kind() == ErrorKind::Rejected
                && !e.reply_code().is_some_and(|c| (100..600).contains(&c))
            {
                return Err(format!("Rejected without a valid code: {e}"));
            }
            kind_in(&e, &allowed)
        }
    }
}

#[test]
fn mutated_smtp_replies_give_a_value_or_a_typed_error() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    dialog_test(3, "smtp", SMTP_NAMES, 200, smtp_peer, smtp_client);
}

// ----- (d) socket receive patterns --------------------------------------------------------------

fn strip_cr(v: &[u8]) -> Vec<u8> {
    v.iter().copied().filter(|&b| b != b'\r').collect()
}

/// Matches `got` (CR-stripped line bytes) against the raw stream from `pos`, skipping CRs
/// and refusing a LF; returns the new position (CRs after the match skipped greedily).
fn match_stripped(s: &[u8], mut pos: usize, got: &[u8]) -> Option<usize> {
    for &g in got {
        while pos < s.len() && s[pos] == b'\r' {
            pos += 1;
        }
        if pos >= s.len() || s[pos] != g || g == b'\n' {
            return None;
        }
        pos += 1;
    }
    while pos < s.len() && s[pos] == b'\r' {
        pos += 1;
    }
    Some(pos)
}

fn socket_stream(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1 => rng.range(100_000, 300_000),
        _ => rng.range(1, 4000),
    };
    (0..len)
        .map(|_| match rng.below(10) {
            0 | 1 => b'\n',
            2 => b'\r',
            3 => 0,
            _ => rng.next() as u8,
        })
        .collect()
}

fn socket_client(index: usize, s: Vec<u8>, end: End, addr: SocketAddr) -> Verdict {
    let mut rng = case_rng(4, index ^ 0xABCD);
    let mut sock = match copas::connect(addr, Some(Duration::from_secs(2))) {
        Ok(s) => s,
        // The peer may have reset the connection before the connect was seen complete.
        Err(e) if end == End::Reset && e.kind() == ErrorKind::Closed => return Ok(()),
        Err(e) => return Err(format!("connect: {e}")),
    };
    let mut pos = 0usize;
    let started = Instant::now();
    let mut ops = 0;
    loop {
        ops += 1;
        if ops > 100_000 || started.elapsed() > Duration::from_secs(20) {
            return Err(format!(
                "no end after {ops} operations, at {pos} of {}",
                s.len()
            ));
        }
        let op = rng.below(8);
        let short = rng.chance(35);
        let n = if rng.chance(10) {
            rng.range(1000, 200_000)
        } else {
            rng.below(300)
        };
        let mut prefix: Vec<u8> = Vec::new();
        let mut retries = 0;
        loop {
            retries += 1;
            let t = if short {
                Duration::from_millis(rng.range(0, 3) as u64)
            } else {
                Duration::from_millis(500)
            };
            sock.settimeout(Some(t));
            let op_name = [
                "line", "line", "line", "exact", "exact", "partial", "partial", "all",
            ][op];
            let res = match op_name {
                "line" => sock.receive_with_prefix(Pattern::Line, &prefix),
                "exact" => sock.receive_with_prefix(Pattern::Exact(n), &prefix),
                "partial" => sock.receivepartial(n),
                _ => sock.receive_with_prefix(Pattern::All, &prefix),
            };
            let (p0, plen, slen) = (pos, prefix.len(), s.len());
            let ctx = move |m: String| {
                format!("{op_name}({n}) with a prefix of {plen} at {p0}/{slen}: {m}")
            };
            match res {
                Ok(v) => {
                    match op_name {
                        "line" => {
                            if !v.starts_with(&prefix) {
                                return Err(ctx("line does not start with its prefix".into()));
                            }
                            let Some(lf) = s[pos..].iter().position(|&b| b == b'\n') else {
                                return Err(ctx("a line where the stream has no LF left".into()));
                            };
                            let want = [prefix.clone(), strip_cr(&s[pos..pos + lf])].concat();
                            if v != want {
                                return Err(ctx(format!(
                                    "line b\"{}\" != b\"{}\"",
                                    shown(&v),
                                    shown(&want)
                                )));
                            }
                            pos += lf + 1;
                        }
                        "exact" => {
                            let need = n.saturating_sub(prefix.len());
                            if n <= prefix.len() {
                                if v != prefix {
                                    return Err(ctx(
                                        "prefix longer than n not returned as is".into()
                                    ));
                                }
                            } else {
                                if pos + need > s.len() {
                                    return Err(ctx(format!(
                                        "{} bytes where {} are left",
                                        need,
                                        s.len() - pos
                                    )));
                                }
                                let want = [prefix.clone(), s[pos..pos + need].to_vec()].concat();
                                if v != want {
                                    return Err(ctx("exact bytes differ".into()));
                                }
                                pos += need;
                            }
                        }
                        "partial" => {
                            if v.len() > n {
                                return Err(ctx(format!("{} bytes past max", v.len())));
                            }
                            if v.is_empty() {
                                if n > 0 {
                                    // End of stream.
                                    if pos != s.len() && end == End::Close {
                                        return Err(ctx(
                                            "end of stream before every byte came".into()
                                        ));
                                    }
                                    if end == End::Stall {
                                        return Err(
                                            ctx("end of stream from a stalled peer".into()),
                                        );
                                    }
                                    return Ok(());
                                }
                            } else {
                                if s.len() < pos + v.len() || v[..] != s[pos..pos + v.len()] {
                                    return Err(ctx("partial bytes differ".into()));
                                }
                                pos += v.len();
                            }
                        }
                        _ => {
                            let want = [prefix.clone(), s[pos..].to_vec()].concat();
                            if v != want && end != End::Reset {
                                return Err(ctx(format!(
                                    "All gave {} bytes, want {}",
                                    v.len(),
                                    want.len()
                                )));
                            }
                            if end == End::Stall {
                                return Err(ctx("All ended on a stalled peer".into()));
                            }
                            return Ok(());
                        }
                    }
                    break;
                }
                Err(e) => {
                    let partial = e.partial().to_vec();
                    if !partial.starts_with(&prefix) {
                        return Err(ctx(format!(
                            "{:?}: partial does not start with the prefix",
                            e.kind()
                        )));
                    }
                    let fresh = &partial[prefix.len()..];
                    let newpos = match op_name {
                        "line" => match_stripped(&s, pos, fresh),
                        "partial" if !fresh.is_empty() => None,
                        _ => (s.len() >= pos + fresh.len() && s[pos..pos + fresh.len()] == *fresh)
                            .then_some(pos + fresh.len()),
                    };
                    let Some(newpos) = newpos else {
                        return Err(ctx(format!(
                            "{:?}: partial b\"{}\" is not the stream's next bytes",
                            e.kind(),
                            shown(fresh)
                        )));
                    };
                    pos = newpos;
                    match e.kind() {
                        ErrorKind::Timeout => {
                            if end == End::Stall && pos == s.len() && retries > 3 {
                                return Ok(()); // everything came; the peer is silent
                            }
                            if retries > 5000 {
                                return Err(ctx("endless timeouts".into()));
                            }
                            prefix = partial;
                        }
                        ErrorKind::Closed => {
                            if end == End::Close && pos != s.len() {
                                return Err(ctx(format!(
                                    "closed with {} bytes never delivered",
                                    s.len() - pos
                                )));
                            }
                            if end == End::Stall {
                                return Err(ctx("closed on a stalled peer".into()));
                            }
                            return Ok(());
                        }
                        k => return Err(ctx(format!("unexpected error {k:?}: {e}"))),
                    }
                }
            }
        }
    }
}

#[test]
fn receive_patterns_lose_and_duplicate_nothing_however_bytes_arrive() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _dog = util::Watchdog::new("fuzz socket patterns", Duration::from_secs(240));
    util::make_dispatcher();
    let fds = util::fd_count();
    let wanted = indices(case_count(100));
    let mut fails = Failures::default();
    let started = Instant::now();
    for chunk in wanted.chunks(32) {
        let mut peers = Vec::new();
        let mut clients: Vec<Box<dyn FnOnce() -> Verdict>> = Vec::new();
        let mut ids = Vec::new();
        let mut bounds = Vec::new();
        for &i in chunk {
            let mut rng = case_rng(4, i);
            let s = socket_stream(&mut rng);
            let d = delivery(&mut rng, None);
            let (listener, addr) = util::local_listener();
            let stop = Arc::new(AtomicBool::new(false));
            let (bytes, dd, st) = (s.clone(), d.clone(), stop.clone());
            peers.push((
                std::thread::spawn(move || {
                    if let Some(mut sock) = accept_within(&listener, Duration::from_secs(5), &st) {
                        if write_pieces(&mut sock, &bytes, &dd) {
                            finish(sock, dd.end);
                        }
                    }
                }),
                stop,
            ));
            ids.push((
                i,
                format!("{:?} stream of {} bytes b\"{}\"", d, s.len(), shown(&s)),
            ));
            bounds.push(Duration::from_secs(25));
            let end = d.end;
            clients.push(Box::new(move || socket_client(i, s, end, addr)));
        }
        let batch = run_batch("socket batch", clients, Duration::from_secs(90));
        for (p, stop) in peers {
            stop.store(true, Ordering::Relaxed);
            let _ = p.join();
        }
        fails.check_batch("socket", &ids, &batch, &bounds, 32 * 2 * 1024 * 1024);
    }
    let after = util::fd_count();
    if after > fds {
        fails
            .0
            .push(format!("descriptors: {fds} before, {after} after"));
    }
    eprintln!("socket: {} cases in {:?}", wanted.len(), started.elapsed());
    fails.assert_none("socket receive patterns");
}

// ----- (e) UDP ------------------------------------------------------------------------------------

#[test]
fn udp_datagrams_of_any_size_arrive_whole_or_as_limit_exceeded() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _dog = util::Watchdog::new("fuzz udp", Duration::from_secs(120));
    util::make_dispatcher();
    let fds = util::fd_count();
    let mut rng = case_rng(5, 0);
    // Groups of datagrams: a big one alone (the receive buffer holds few), small ones in
    // bursts of up to four (exercising the datagram received behind another).
    let mut groups: Vec<Vec<Vec<u8>>> = Vec::new();
    for g in 0..case_count(150) {
        let count = if rng.chance(30) { rng.range(2, 4) } else { 1 };
        let mut group = Vec::new();
        for _ in 0..count {
            let len = match (count, rng.below(8)) {
                (1, 0) => 65507,
                (1, 1) => rng.range(8000, 65507),
                (_, 2) => 0,
                (_, 3) => 1,
                _ => rng.range(0, 1500),
            };
            let fill = (g as u8).wrapping_mul(31);
            group.push(
                (0..len)
                    .map(|i| fill ^ (i as u8).wrapping_mul(7) ^ (i >> 8) as u8)
                    .collect(),
            );
        }
        groups.push(group);
    }
    let receiver = copas::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = receiver.local_addr().expect("addr");
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let from = sender.local_addr().expect("sender addr");
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<()>();
    let plan = groups.clone();
    let feeder = std::thread::spawn(move || {
        for group in plan {
            for d in &group {
                sender.send_to(d, to).expect("send_to");
            }
            if ack_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                return;
            }
        }
    });
    let failures = Rc::new(RefCell::new(Vec::<String>::new()));
    let done = Rc::new(std::cell::Cell::new(false));
    let (f2, d2) = (failures.clone(), done.clone());
    let seed = base_seed();
    copas::addthread(move || {
        let mut rng = case_rng(5, 1);
        receiver.settimeout(Some(Duration::from_secs(3)));
        for (g, group) in groups.iter().enumerate() {
            for (k, d) in group.iter().enumerate() {
                let len = d.len();
                let size = match rng.below(9) {
                    0 => 0,
                    1 => len,
                    2 => len.saturating_sub(1),
                    3 => len + 1,
                    4 => 65507,
                    5 => 65527,
                    6 => 100_000,
                    7 => copas::DATAGRAM_SIZE,
                    _ => rng.below(70_000),
                };
                let with_from = rng.chance(50);
                let got = if with_from {
                    receiver.receivefrom(size).map(|(v, a)| (v, Some(a)))
                } else {
                    receiver.receive(size).map(|v| (v, None))
                };
                let what = format!("COPAS_FUZZ_SEED={seed:#x} group {g} datagram {k} of {len} bytes, receive({size}) from={with_from}");
                match got {
                    Ok((v, a)) => {
                        if len > size {
                            f2.borrow_mut().push(format!("{what}: Ok({} bytes) for a datagram past size", v.len()));
                        } else if v != *d {
                            f2.borrow_mut().push(format!("{what}: got {} different bytes", v.len()));
                        }
                        if let Some(a) = a {
                            if a != from {
                                f2.borrow_mut().push(format!("{what}: from {a}, want {from}"));
                            }
                        }
                    }
                    Err(e) => {
                        if e.kind() != ErrorKind::LimitExceeded || len <= size {
                            f2.borrow_mut().push(format!("{what}: {e:?}"));
                            if e.kind() == ErrorKind::Timeout {
                                // Lost: the plan is out of step.
                                d2.set(false);
                                return;
                            }
                        } else if e.partial() != &d[..size] {
                            f2.borrow_mut().push(format!(
                                "{what}: partial of {} bytes is not the first {size}",
                                e.partial().len()
                            ));
                        }
                    }
                }
            }
            let _ = ack_tx.send(());
        }
        d2.set(true);
    })
    .expect("addthread");
    let (_, peak) = heap::peak_heap(|| util::run_checked(Duration::from_secs(100)));
    feeder.join().expect("feeder");
    let f = failures.borrow();
    assert!(
        f.is_empty(),
        "{} UDP failures:\n{}",
        f.len(),
        f.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(done.get(), "the receiver did not finish");
    assert!(
        peak < 4 * 1024 * 1024,
        "the receiver held {peak} heap bytes"
    );
    let after = util::fd_count();
    if after > fds {
        let list: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| {
                format!(
                    "{} -> {:?}",
                    e.file_name().to_string_lossy(),
                    std::fs::read_link(e.path()).ok()
                )
            })
            .collect();
        panic!("descriptors leaked: {fds} before, {after} after: {list:#?}");
    }
}

// ----- stalled peers: no busy loop -----------------------------------------------------------------

#[test]
fn stalled_peers_cost_no_cpu() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _dog = util::Watchdog::new("fuzz stalled peers", Duration::from_secs(60));
    util::make_dispatcher();
    let mut rng = case_rng(6, 0);
    let timeout = Duration::from_millis(1500);
    let http_t = http_templates();
    let mut peers = Vec::new();
    let mut clients: Vec<Box<dyn FnOnce() -> Verdict>> = Vec::new();
    let mut ids = Vec::new();
    for i in 0..64 {
        let kind = i % 4;
        let full: Vec<u8> = match kind {
            0 => rng.pick(&http_t).0.as_bytes().to_vec(),
            1 => ftp_reply("GREETING", 1),
            2 => [smtp_reply("GREETING", 0), smtp_reply("EHLO", 0)].concat(),
            _ => b"first line\r\nsecond line without end".to_vec(),
        };
        // Cut before the end (for SMTP, inside the EHLO reply).
        let min = if kind == 2 {
            smtp_reply("GREETING", 0).len()
        } else {
            0
        };
        let cut = rng.range(min, full.len() - 1);
        let bytes = full[..cut].to_vec();
        let (listener, addr) = util::local_listener();
        let stop = Arc::new(AtomicBool::new(false));
        let d = Delivery {
            cuts: (0..3).map(|_| rng.range(1, 10)).collect(),
            sleep_us: 500,
            end: End::Stall,
        };
        let (st, b2) = (stop.clone(), bytes.clone());
        peers.push((
            std::thread::spawn(move || {
                if let Some(mut sock) = accept_within(&listener, Duration::from_secs(5), &st) {
                    if kind == 0 {
                        let _ = read_line(&mut sock, Duration::from_secs(2));
                    }
                    if kind == 2 {
                        // Greeting whole, then the EHLO reply cut.
                        let g = smtp_reply("GREETING", 0);
                        let _ = sock.write_all(&b2[..g.len()]);
                        let _ = read_line(&mut sock, Duration::from_secs(2));
                        write_pieces(&mut sock, &b2[g.len()..], &d);
                    } else {
                        write_pieces(&mut sock, &b2, &d);
                    }
                    finish(sock, End::Stall);
                }
            }),
            stop,
        ));
        ids.push((
            i,
            format!("kind {kind} cut at {cut}: b\"{}\"", shown(&bytes)),
        ));
        clients.push(Box::new(move || {
            let t = Instant::now();
            let r: copas::Result<()> = match kind {
                0 => Request::get(&format!("http://{addr}/"))
                    .timeout(timeout)
                    .redirect(Redirect::None)
                    .send()
                    .map(|_| ()),
                1 => ftp::Client::connect(addr, Some(timeout)).map(|_| ()),
                2 => smtp::send(
                    &Mail::new(addr.to_string(), "a@b.c")
                        .to("d@e.f")
                        .starttls(StartTls::Never)
                        .timeout(timeout),
                )
                .map(|_| ()),
                _ => copas::connect(addr, Some(timeout)).and_then(|mut s| {
                    s.settimeout(Some(timeout));
                    let mut prefix = Vec::new();
                    loop {
                        match s.receive_with_prefix(Pattern::Line, &prefix) {
                            Ok(_) => prefix.clear(),
                            Err(e)
                                if e.kind() == ErrorKind::Timeout
                                    && !e.partial().is_empty()
                                    && prefix.is_empty() =>
                            {
                                prefix = e.partial().to_vec();
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }),
            };
            let took = t.elapsed();
            match r {
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    if took < timeout - Duration::from_millis(50) {
                        Err(format!("timed out early, after {took:?}"))
                    } else {
                        Ok(())
                    }
                }
                Ok(()) if kind == 0 => Ok(()), // a response whose body runs until close? no: stalled
                other => Err(format!(
                    "want a Timeout, got {:?}",
                    other.map_err(|e| e.to_string())
                )),
            }
        }));
    }
    let batch = run_batch("stalled batch", clients, Duration::from_secs(40));
    for (p, stop) in peers {
        stop.store(true, Ordering::Relaxed);
        let _ = p.join();
    }
    let bounds = vec![timeout * 3 + Duration::from_secs(1); ids.len()];
    let mut fails = Failures::default();
    fails.check_batch("stalled", &ids, &batch, &bounds, 64 * 512 * 1024);
    eprintln!(
        "stalled: cpu {:?} over {:?} of wall time",
        batch.cpu, batch.wall
    );
    if batch.cpu * 5 > batch.wall {
        fails.0.push(format!(
            "the dispatcher used {:?} CPU over {:?} with every peer stalled",
            batch.cpu, batch.wall
        ));
    }
    fails.assert_none("stalled peers");
}
