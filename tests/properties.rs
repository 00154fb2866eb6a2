//! Property tests: the parsers that read what a peer sends never panic, whatever it sends,
//! and read well-formed input exactly. A fixed number of cases runs in `cargo test`.
//!
//! Covered: the SMTP/FTP reply-line parser, the FTP PASV/EPSV parsers, the socket's line
//! reader (over a real loopback connection, with random input split at random points and a
//! random line limit), and the HTTP client fed arbitrary responses by a loopback peer
//! (random bytes, and responses built from mutated status lines, header fields,
//! `Content-Length` values, chunked framing and bodies, cut short and written in random
//! pieces): within a bounded time and bounded memory it returns a body no longer than what
//! was sent, or a typed error, never panicking; a declared `Content-Length` past
//! `max_body` is refused.
//!
//! Memory is measured with the counting allocator of `util/heap.rs`: the client runs in a
//! coroutine on the test's thread, the peer on its own, so the peak seen on the test's thread
//! is what the client (and the dispatcher) held.

#[path = "util/heap.rs"]
mod heap;
mod util;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use copas::client::ftp::{parse_epsv, parse_pasv, pasv_target};
use copas::client::http::{Redirect, Request};
use copas::client::reply::parse_line;
use copas::{ErrorKind, Pattern};
use heap::peak_heap;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// `cases` in `cargo test`; `PROPTEST_CASES=N` runs every property N times instead (the soak
/// does, see docs/reliability.md). proptest reads that variable only for its default config,
/// which an explicit count overrides.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // No regression files: the integration tests have no src/ to put them beside.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn reply_line_parser_never_panics_and_finds_codes(line in "\\PC{0,40}") {
        let parsed = parse_line(&line);
        let b = line.as_bytes();
        let has_code = b.len() >= 3
            && b[..3].iter().all(u8::is_ascii_digit)
            && matches!(b.get(3), None | Some(b' ') | Some(b'-'));
        prop_assert_eq!(parsed.code.is_some(), has_code);
        if let Some(code) = parsed.code {
            prop_assert_eq!(code.to_string(), format!("{:03}", code));
            prop_assert_eq!(format!("{:03}", code), &line[..3]);
        }
    }

    #[test]
    fn reply_line_parser_reads_well_formed_lines(code in 100u16..600, more: bool, text in "[ -~]{0,30}") {
        let line = format!("{code}{}{text}", if more { '-' } else { ' ' });
        let parsed = parse_line(&line);
        prop_assert_eq!(parsed.code, Some(code));
        prop_assert_eq!(parsed.more, more);
        prop_assert_eq!(parsed.text, text.as_str());
    }

    #[test]
    fn pasv_and_epsv_parsers_never_panic(text in "\\PC{0,60}") {
        let _ = parse_pasv(&text);
        let _ = parse_epsv(&text);
        let _ = pasv_target(&text, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    // Port 0 is refused by design (`parse_pasv`'s doc); any other port is read.
    #[test]
    fn pasv_reads_any_valid_address(a: u8, b: u8, c: u8, d: u8, port in 1u16.., noise in "[a-zA-Z .]{0,20}") {
        let text = format!("Entering Passive Mode {noise}({a},{b},{c},{d},{},{})", port >> 8, port & 0xff);
        prop_assert_eq!(parse_pasv(&text), Some((Ipv4Addr::new(a, b, c, d), port)));
        let peer = IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        let target = pasv_target(&text, peer);
        prop_assert!(target.is_ok());
        prop_assert_eq!(target.unwrap().port(), port);
    }

    #[test]
    fn pasv_octets_out_of_range_are_refused(big in 256u32..100_000) {
        let text = format!("Entering Passive Mode (127,0,0,{big},4,0)");
        prop_assert_eq!(parse_pasv(&text), None);
    }
}

/// A connected pair: a std writer and a copas socket (used outside any coroutine, so its
/// calls block the thread).
fn pair() -> (TcpStream, copas::Socket) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let writer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    let sock = copas::wrap(accepted).expect("wrap");
    sock.settimeout(Some(Duration::from_secs(10)));
    (writer, sock)
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn line_reader_returns_exactly_the_lines_within_the_limit(
        input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..3000),
        cuts in proptest::collection::vec(1usize..700, 0..8),
        limit in 1usize..600,
    ) {
        let (mut writer, mut sock) = pair();
        sock.set_line_limit(limit);
        let data = input.clone();
        let feeder = std::thread::spawn(move || {
            let mut at = 0;
            for cut in cuts {
                let end = (at + cut).min(data.len());
                writer.write_all(&data[at..end]).expect("write");
                at = end;
                std::thread::sleep(Duration::from_millis(1));
            }
            writer.write_all(&data[at..]).expect("write");
            // Dropping the writer ends the stream.
        });
        // What a correct reader must produce: each LF-terminated line without CRs; a line
        // longer than the limit comes out as LimitExceeded with exactly `limit` bytes, the
        // rest of it following; the unterminated tail as Closed with its bytes.
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut received = Vec::new();
        for _ in 0..input.len() + 2 {
            match sock.receive(Pattern::Line) {
                Ok(line) => {
                    prop_assert!(line.len() <= limit, "a line of {} bytes past a limit of {}", line.len(), limit);
                    received.extend(line.iter().copied());
                    received.push(b'\n');
                    got.push(line);
                }
                Err(e) if e.kind() == ErrorKind::LimitExceeded => {
                    prop_assert_eq!(e.partial().len(), limit);
                    received.extend_from_slice(e.partial());
                }
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorKind::Closed, "{}", e);
                    received.extend_from_slice(e.partial());
                    break;
                }
            }
        }
        feeder.join().expect("feeder");
        // No byte lost or invented: what came out, CRs aside, is the input with CRs removed
        // (CRs inside over-long lines are kept in `partial`, so compare without any CR).
        let strip = |v: &[u8]| v.iter().copied().filter(|&b| b != b'\r').collect::<Vec<u8>>();
        prop_assert_eq!(strip(&received), strip(&input));
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn line_limit_holds_at_its_boundary(limit in prop_oneof![1usize..4, 1usize..300]) {
        let (mut writer, mut sock) = pair();
        sock.set_line_limit(limit);
        let lengths: Vec<usize> = [limit.saturating_sub(1), limit, limit + 1, limit + 2].to_vec();
        let mut data = Vec::new();
        for &n in &lengths {
            data.extend(std::iter::repeat_n(b'a', n));
            data.push(b'\n');
        }
        writer.write_all(&data).expect("write");
        drop(writer);
        for &n in &lengths {
            if n <= limit {
                let line = sock.receive(Pattern::Line).expect("a line within the limit");
                prop_assert_eq!(line.len(), n);
            } else {
                // Over the limit: chunks of exactly `limit` bytes, then the rest of the line
                // (which may itself take several chunks when the limit is tiny).
                let mut consumed = 0;
                let mut chunks = 0;
                loop {
                    match sock.receive(Pattern::Line) {
                        Ok(rest) => {
                            prop_assert!(rest.len() <= limit);
                            consumed += rest.len();
                            break;
                        }
                        Err(e) => {
                            prop_assert_eq!(e.kind(), ErrorKind::LimitExceeded);
                            prop_assert_eq!(e.partial().len(), limit);
                            consumed += limit;
                            chunks += 1;
                            prop_assert!(chunks <= n, "endless chunks");
                        }
                    }
                }
                prop_assert!(chunks >= 1, "a line of {} bytes passed a limit of {}", n, limit);
                prop_assert_eq!(consumed, n);
            }
        }
        let end = sock.receive(Pattern::Line).expect_err("end of stream");
        prop_assert_eq!(end.kind(), ErrorKind::Closed);
    }
}

/// The client's connect, send and receive timeouts in the HTTP properties.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one HTTP exchange may take, the peer closing as soon as it has written: a
/// client that misses the end of the stream would wait out its timeouts.
const CASE_LIMIT: Duration = Duration::from_secs(10);
/// Past this the process is killed, printing the response (a client that never returns).
const HANG_LIMIT: Duration = Duration::from_secs(20);

/// The most heap the dispatcher's thread may hold for one exchange of at most a few KiB:
/// the socket's buffer, the head and the body, with room to spare; far below anything sized
/// by a declared length (`max_body`'s default is 64 MiB).
const HEAP_LIMIT: usize = 1024 * 1024;

/// Kills the process if still alive after `limit` (unless dropped first), naming `what`: a
/// hung case cannot be shrunk, but its input is shown. Written straight to the standard
/// error: what `eprintln!` prints on a test's threads is captured, and lost at the exit.
struct HangGuard {
    _alive: std::sync::mpsc::Sender<()>,
}

impl HangGuard {
    fn new(what: String, limit: Duration) -> HangGuard {
        let (alive, dropped) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = dropped.recv_timeout(limit) {
                let _ = writeln!(
                    std::io::stderr(),
                    "hang: {what} still running after {limit:?}"
                );
                std::process::exit(101);
            }
        });
        HangGuard { _alive: alive }
    }
}

/// A loopback peer for one connection: it reads the request head (up to its empty line, at
/// most 16 KiB), writes `response` in pieces of the lengths in `cuts` and the rest in one
/// (pausing 1 ms after each when `pause`), shuts its side down and waits for the client to
/// close (so that unread bytes never turn its close into a reset). Every wait is bounded;
/// returns whether a client came.
fn serve_once(response: Vec<u8>, cuts: Vec<usize>, pause: bool) -> (SocketAddr, JoinHandle<bool>) {
    let (listener, addr) = util::local_listener();
    listener.set_nonblocking(true).expect("nonblocking");
    let peer = std::thread::spawn(move || {
        let deadline = Instant::now() + CASE_LIMIT;
        let mut sock = loop {
            match listener.accept() {
                Ok((sock, _)) => break sock,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        };
        sock.set_nonblocking(false).expect("blocking");
        sock.set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("read timeout");
        sock.set_write_timeout(Some(CLIENT_TIMEOUT))
            .expect("write timeout");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => return true,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let mut at = 0usize;
        for cut in cuts.into_iter().chain([usize::MAX]) {
            let end = at.saturating_add(cut).min(response.len());
            if sock.write_all(&response[at..end]).is_err() {
                return true;
            }
            at = end;
            if pause {
                std::thread::sleep(Duration::from_millis(1));
            }
            if at == response.len() {
                break;
            }
        }
        let _ = sock.shutdown(Shutdown::Write);
        let mut drained = 0;
        while drained < 64 * 1024 && Instant::now() < deadline {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        true
    });
    (addr, peer)
}

/// What one exchange came to: the body or the error, how long the dispatcher ran, and the
/// most heap bytes its thread held.
struct Exchange {
    outcome: Result<Vec<u8>, copas::Error>,
    took: Duration,
    peak: usize,
}

/// Serves `response` (see [`serve_once`]) and sends a `method` request for the peer's URL,
/// with [`CLIENT_TIMEOUT`], no pooling and no redirects, shaped further by `shape`, from a
/// coroutine under `copas::run`. A panic in the coroutine fails the case (`run_checked`);
/// an exchange (peer included) past [`HANG_LIMIT`] kills the process, printing the response.
fn exchange(
    response: &[u8],
    cuts: Vec<usize>,
    pause: bool,
    method: &'static str,
    shape: impl FnOnce(Request) -> Request + 'static,
) -> Exchange {
    let shown = format!("the HTTP client on b\"{}\"", response.escape_ascii());
    let _guard = HangGuard::new(shown, HANG_LIMIT);
    let (addr, peer) = serve_once(response.to_vec(), cuts, pause);
    let slot = std::rc::Rc::new(std::cell::RefCell::new(None));
    let out = slot.clone();
    let (took, peak) = peak_heap(move || {
        copas::addthread(move || {
            let request = Request::new(method, &format!("http://{addr}/"))
                .timeout(CLIENT_TIMEOUT)
                .keep_alive(false)
                // A Location is never followed: nothing but this peer is ever contacted.
                .redirect(Redirect::None);
            let got = shape(request).send().map(|r| r.into_body());
            *out.borrow_mut() = Some(got);
        })
        .expect("addthread");
        util::run_checked(HANG_LIMIT * 2)
    });
    let accepted = peer.join().expect("peer thread");
    assert!(accepted, "the client never connected");
    let outcome = slot
        .borrow_mut()
        .take()
        .expect("the request's coroutine ended without a result");
    Exchange {
        outcome,
        took,
        peak,
    }
}

/// A line ending: CRLF mostly, else a bare LF (which the client accepts), a bare CR or none.
fn line_end() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        40 => Just(&b"\r\n"[..]),
        4 => Just(&b"\n"[..]),
        1 => Just(&b"\r"[..]),
        1 => Just(&b""[..]),
    ]
}

/// A status line: versions good and bad; codes ordinary, interim, bodiless (204, 304), out
/// of range, too long, or not digits.
fn status_line() -> impl Strategy<Value = Vec<u8>> {
    let version = prop_oneof![
        24 => Just("HTTP/1.1"),
        4 => Just("HTTP/1.0"),
        1 => Just("HTTP/2.0"),
        1 => Just("http/1.1"),
        1 => Just(""),
    ];
    let code = prop_oneof![
        20 => (200u32..600).prop_map(|c| c.to_string()),
        2 => (100u32..200).prop_map(|c| c.to_string()),
        2 => Just("204".to_string()),
        2 => Just("304".to_string()),
        1 => (0u32..100_000).prop_map(|c| c.to_string()),
        1 => "[0-9]{0,5}",
        1 => "[a-zA-Z +-]{1,4}",
    ];
    (version, code, "[ -~]{0,12}", line_end())
        .prop_map(|(v, c, reason, end)| [format!("{v} {c} {reason}").as_bytes(), end].concat())
}

/// A `Content-Length` value: plausible, any `u64`, negative, past `u64`, a list, or junk.
fn content_length() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u64..3000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => "-[0-9]{1,5}",
        1 => "[0-9]{20,25}",
        1 => (0u64..3000, 0u64..3000).prop_map(|(a, b)| format!("{a}, {b}")),
        1 => "[0-9a-fx+ ,-]{0,8}",
    ]
}

/// A `Transfer-Encoding` value, `chunked` last or not.
fn transfer_encoding() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => Just("chunked"),
        1 => Just("CHUNKED"),
        1 => Just("gzip, chunked"),
        1 => Just("chunked, gzip"),
        1 => Just("identity"),
        1 => Just(""),
    ]
}

/// A header line of any kind: `Content-Length`, `Transfer-Encoding`, `Connection`, a
/// relative `Location`, any field, an obsolete continuation line, or (rarely) raw bytes.
fn header_line() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        2 => content_length().prop_map(|v| format!("Content-Length: {v}")),
        2 => transfer_encoding().prop_map(|v| format!("Transfer-Encoding: {v}")),
        1 => prop_oneof![Just("Connection: close"), Just("Connection: keep-alive")]
            .prop_map(str::to_string),
        1 => Just("Location: /elsewhere".to_string()),
        6 => ("[A-Za-z-]{1,10}", "[ -~]{0,20}").prop_map(|(n, v)| format!("{n}: {v}")),
        1 => "[ \t][ -~]{0,10}",
    ]
    .prop_map(String::into_bytes);
    (
        prop_oneof![40 => field, 1 => vec(any::<u8>(), 0..30)],
        line_end(),
    )
        .prop_map(|(line, end)| [line.as_slice(), end].concat())
}

/// One chunk: its size right (mostly) or any hex, hex past `u64`, or junk; maybe an
/// extension; its data; and after the data CRLF, a bare LF, nothing or junk.
fn chunk() -> impl Strategy<Value = Vec<u8>> {
    let size = prop_oneof![
        12 => Just(None),
        1 => "[0-9a-fA-F]{1,4}".prop_map(Some),
        1 => "[0-9a-f]{15,24}".prop_map(Some),
        1 => "[0-9a-zA-Z ;=\"+-]{0,10}".prop_map(Some),
    ];
    let extension =
        prop_oneof![6 => Just(String::new()), 1 => " ?; ?[a-z]{1,5}(=[a-z0-9\"]{0,6})?"];
    let data_end = prop_oneof![
        20 => Just(&b"\r\n"[..]),
        2 => Just(&b"\n"[..]),
        1 => Just(&b""[..]),
        1 => Just(&b"xx\r\n"[..]),
    ];
    (
        vec(any::<u8>(), 1..64),
        size,
        extension,
        line_end(),
        data_end,
    )
        .prop_map(|(data, size, extension, size_end, data_end)| {
            let size = size.unwrap_or_else(|| format!("{:x}", data.len()));
            [
                format!("{size}{extension}").as_bytes(),
                size_end,
                &data,
                data_end,
            ]
            .concat()
        })
}

/// A chunked body: some chunks, then (mostly) the last chunk, maybe trailers, and the empty
/// line.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let last =
        (line_end(), vec(header_line(), 0..3), line_end()).prop_map(|(end, trailers, blank)| {
            [b"0".as_slice(), end, &trailers.concat(), blank].concat()
        });
    (vec(chunk(), 0..6), prop::option::weighted(0.8, last))
        .prop_map(|(chunks, last)| [chunks.concat(), last.unwrap_or_default()].concat())
}

/// The framing fields and the body: a `Content-Length` body (the length right, or any
/// value, maybe repeated), a chunked body (with `Transfer-Encoding`, maybe beside a
/// `Content-Length`), or any framing fields with any body.
fn framed_body() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>)> {
    let field = |name: &str, value: &str| format!("{name}: {value}\r\n").into_bytes();
    let with_length = (
        vec(any::<u8>(), 0..600),
        prop::option::weighted(0.3, content_length()),
        1usize..3,
    )
        .prop_map(move |(body, value, copies)| {
            let value = value.unwrap_or_else(|| body.len().to_string());
            (vec![field("Content-Length", &value); copies], body)
        });
    let chunked = (
        transfer_encoding(),
        prop::option::weighted(0.15, content_length()),
        chunked_body(),
    )
        .prop_map(move |(te, length, body)| {
            let mut fields = vec![field("Transfer-Encoding", te)];
            fields.extend(length.map(|v| field("Content-Length", &v)));
            (fields, body)
        });
    let any_body = prop_oneof![vec(any::<u8>(), 0..600), chunked_body(), Just(Vec::new())];
    prop_oneof![
        3 => with_length,
        3 => chunked,
        2 => (vec(header_line(), 0..3), any_body),
    ]
}

/// A response built like a real one, then mutated: maybe interim (1xx) responses first, a
/// status line, header lines (the framing ones among others), the empty line and the body;
/// then maybe a few bytes overwritten, and the whole maybe cut short.
fn structured_response() -> impl Strategy<Value = Vec<u8>> {
    let interim = prop_oneof![
        4 => Just(Vec::new()),
        1 => vec(
            prop_oneof![Just("100 Continue"), Just("102 Processing"), Just("103 Early Hints")]
                .prop_map(|s| format!("HTTP/1.1 {s}\r\n\r\n").into_bytes()),
            1..4,
        ),
    ];
    let flips = prop_oneof![4 => Just(Vec::new()), 1 => vec((any::<Index>(), any::<u8>()), 1..4)];
    (
        interim,
        status_line(),
        vec(header_line(), 0..5),
        framed_body(),
        any::<bool>(),
        line_end(),
        flips,
        prop::option::weighted(0.2, any::<Index>()),
    )
        .prop_map(
            |(interim, status, others, (framing, body), framing_first, blank, flips, cut)| {
                let headers = if framing_first {
                    [framing.concat(), others.concat()]
                } else {
                    [others.concat(), framing.concat()]
                };
                let mut r = [
                    interim.concat(),
                    status,
                    headers.concat(),
                    blank.to_vec(),
                    body,
                ]
                .concat();
                for (at, byte) in flips {
                    let i = at.index(r.len());
                    r[i] = byte;
                }
                if let Some(cut) = cut {
                    r.truncate(cut.index(r.len() + 1));
                }
                r
            },
        )
}

/// Any response: random bytes, or a mutated well-shaped one.
fn any_response() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![1 => vec(any::<u8>(), 0..2048), 4 => structured_response()]
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn http_client_on_any_response_returns_in_time_with_bounded_memory_never_panicking(
        response in any_response(),
        cuts in vec(1usize..400, 0..6),
        pause in prop::bool::weighted(0.25),
        head in prop::bool::weighted(0.15),
        max_body in prop::option::weighted(0.3, 0u64..2048),
    ) {
        let method = if head { "HEAD" } else { "GET" };
        let ex = exchange(&response, cuts, pause, method, move |r| match max_body {
            Some(max) => r.max_body(max),
            None => r,
        });
        prop_assert!(ex.took < CASE_LIMIT, "the exchange took {:?}", ex.took);
        prop_assert!(ex.peak < HEAP_LIMIT, "the client held {} heap bytes", ex.peak);
        match ex.outcome {
            Ok(body) => {
                // The body comes out of the response: it cannot be longer.
                prop_assert!(
                    body.len() <= response.len(),
                    "a body of {} bytes out of {}", body.len(), response.len()
                );
                if let Some(max) = max_body {
                    prop_assert!(
                        body.len() as u64 <= max,
                        "a body of {} bytes past max_body {}", body.len(), max
                    );
                }
                if head {
                    prop_assert!(body.is_empty(), "a HEAD response with {} body bytes", body.len());
                }
            }
            // The peer always closes at once: the end is an error of the response itself
            // (malformed, past a limit, or cut short), never a timeout.
            Err(e) => prop_assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Protocol | ErrorKind::LimitExceeded | ErrorKind::Closed
                ),
                "unexpected error kind: {}", e
            ),
        }
    }
}

proptest! {
    #![proptest_config(config(24))]

    // `send` refuses a declared length past `max_body` from the head alone, whatever the
    // body then holds, however it is cut and however large the length.
    #[test]
    fn http_client_refuses_a_declared_content_length_past_max_body(
        max in 0u64..4096,
        over in prop_oneof![3 => 1u64..4096, 1 => 1u64..=u64::MAX - 4096],
        status in (200u16..600).prop_filter("a status with a body", |s| *s != 204 && *s != 304),
        interim in 0usize..3,
        fields in vec(("[A-Za-z-]{1,10}", "[ -~]{0,20}"), 0..4),
        body in vec(any::<u8>(), 0..2048),
        cut in any::<Index>(),
        cuts in vec(1usize..400, 0..6),
        pause in prop::bool::weighted(0.25),
    ) {
        let declared = max + over;
        let mut response = "HTTP/1.1 100 Continue\r\n\r\n".repeat(interim);
        response.push_str(&format!("HTTP/1.1 {status} Some reason\r\n"));
        for (name, value) in &fields {
            // Only fields unrelated to the framing.
            let name_lower = name.to_ascii_lowercase();
            if name_lower != "content-length" && name_lower != "transfer-encoding" {
                response.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        response.push_str(&format!("Content-Length: {declared}\r\n\r\n"));
        let mut response = response.into_bytes();
        // Some of the body, never more than declared.
        let most = body.len().min(usize::try_from(declared).unwrap_or(usize::MAX));
        response.extend_from_slice(&body[..cut.index(most + 1)]);
        let ex = exchange(&response, cuts, pause, "GET", move |r| r.max_body(max));
        prop_assert!(ex.took < CASE_LIMIT, "the exchange took {:?}", ex.took);
        prop_assert!(ex.peak < HEAP_LIMIT, "the client held {} heap bytes", ex.peak);
        let got = ex.outcome.map(|b| b.len()).map_err(|e| e.kind());
        prop_assert_eq!(
            got,
            Err(ErrorKind::LimitExceeded),
            "Content-Length {} past max_body {}", declared, max
        );
    }
}
