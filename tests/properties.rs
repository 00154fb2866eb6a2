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
//! And the SMTP and FTP clients in whole dialogs with a scripted loopback peer that answers
//! each command line with a generated reply (well-formed, single- or multi-line, with the
//! right code, a refusing one or one down the client's other path; or malformed, past the
//! line limit, not UTF-8, cut short, random, flipped or doubled), written in random pieces;
//! for FTP a second peer serves random data on the data connection. Within a bounded time
//! and bounded memory `smtp::send` and `ftp::get_to` return exactly what a model of their
//! reading computes from the script (the final reply, or all the data; else the typed error
//! with its reply code), never panicking, and succeed only when every reply they needed
//! was a success.
//!
//! Every peer is a script played by `util/raw_peer.rs`. Memory is measured with the counting
//! allocator of `util/heap.rs`: the client runs in a coroutine on the test's thread, the peer
//! on its own, so the peak seen on the test's thread is what the client (and the dispatcher)
//! held.

#[path = "util/heap.rs"]
mod heap;
#[path = "util/raw_peer.rs"]
mod raw_peer;
mod util;

use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use copas::client::ftp::{self, parse_epsv, parse_pasv, pasv_target};
use copas::client::http::{Redirect, Request};
use copas::client::reply::{parse_line, MAX_REPLY_BYTES, MAX_REPLY_LINE, MAX_REPLY_LINES};
use copas::client::smtp::{stuff, Mail, StartTls};
use copas::{ErrorKind, Pattern};
use heap::peak_heap;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use raw_peer::{Peer, Step};

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
        // longer than the limit comes out as LimitExceeded with its first `limit` bytes less
        // their CRs, the rest of it following; the unterminated tail as Closed with its bytes.
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
                    // The line's first `limit` bytes, less their CRs.
                    prop_assert!(e.partial().len() <= limit && !e.partial().contains(&b'\r'));
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
        // No byte lost or invented: what came out is the input with CRs removed.
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

/// The client's connect, send and receive timeouts in the client properties.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one exchange with a client may take, the peer closing as soon as it has
/// written: a client that misses the end of the stream would wait out its timeouts.
const CASE_LIMIT: Duration = Duration::from_secs(10);
/// Past this the process is killed, printing the response (a client that never returns).
const HANG_LIMIT: Duration = Duration::from_secs(20);

/// The most heap the dispatcher's thread may hold for one exchange of at most a few KiB:
/// the socket's buffer, the head and the body, with room to spare; far below anything sized
/// by a declared length (`max_body`'s default is 64 MiB).
const HEAP_LIMIT: usize = 1024 * 1024;

/// The peer's steps for `script`: each reply, once the peer has read what it awaits, in
/// pieces of the lengths in `cuts` (pausing 1 ms after each when `pause`); then the end of
/// the stream, and what the client still sends read until it closes (see `Step::Shutdown`).
fn peer_steps(script: Vec<(Option<Step>, Vec<u8>)>, cuts: &[usize], pause: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    for (awaits, bytes) in script {
        steps.extend(awaits);
        steps.push(Step::Pieces {
            bytes,
            cuts: cuts.to_vec(),
            pause,
        });
    }
    steps.extend([Step::Shutdown, Step::Hold(CLIENT_TIMEOUT)]);
    steps
}

/// What one exchange came to: the client's result, how long the dispatcher ran, and the
/// most heap bytes its thread held.
struct Exchange<T> {
    outcome: Result<T, copas::Error>,
    took: Duration,
    peak: usize,
}

impl<T> Exchange<T> {
    /// Fails the case when the exchange took [`CASE_LIMIT`] or more, or the client held
    /// [`HEAP_LIMIT`] heap bytes or more.
    fn check_bounds(&self) -> Result<(), TestCaseError> {
        prop_assert!(self.took < CASE_LIMIT, "the exchange took {:?}", self.took);
        prop_assert!(
            self.peak < HEAP_LIMIT,
            "the client held {} heap bytes",
            self.peak
        );
        Ok(())
    }
}

/// Plays `script` (see [`peer_steps`]) to a client that `client` runs, given the peer's
/// address, in a coroutine under `copas::run` on this thread. A panic in the coroutine fails
/// the case (`run_checked`); an exchange (peer included) past [`HANG_LIMIT`] kills the
/// process, printing `what`: a hung case cannot be shrunk, but its input is shown.
fn exchange<T: 'static>(
    script: Vec<(Option<Step>, Vec<u8>)>,
    cuts: Vec<usize>,
    pause: bool,
    what: String,
    client: impl FnOnce(SocketAddr) -> copas::Result<T> + 'static,
) -> Exchange<T> {
    let _dog = util::Watchdog::new(&what, HANG_LIMIT);
    let peer = Peer::start(vec![peer_steps(script, &cuts, pause)]);
    let addr = peer.addr;
    let slot = Rc::new(RefCell::new(None));
    let out = slot.clone();
    let (took, peak) = peak_heap(move || {
        copas::addthread(move || *out.borrow_mut() = Some(client(addr))).expect("addthread");
        util::run_checked(HANG_LIMIT * 2)
    });
    assert_eq!(peer.finish().accepted, 1, "the client never connected");
    let outcome = slot
        .borrow_mut()
        .take()
        .expect("the client's coroutine ended without a result");
    Exchange {
        outcome,
        took,
        peak,
    }
}

/// Serves `response` to a `method` request for the peer's URL, with [`CLIENT_TIMEOUT`], no
/// pooling and no redirects, shaped further by `shape` (see [`exchange`]).
fn http_exchange(
    response: &[u8],
    cuts: Vec<usize>,
    pause: bool,
    method: &'static str,
    shape: impl FnOnce(Request) -> Request + 'static,
) -> Exchange<Vec<u8>> {
    let what = format!("the HTTP client on b\"{}\"", response.escape_ascii());
    let script = vec![(Some(Step::ReadRequest), response.to_vec())];
    exchange(script, cuts, pause, what, move |addr| {
        let request = Request::new(method, &format!("http://{addr}/"))
            .timeout(CLIENT_TIMEOUT)
            .keep_alive(false)
            // A Location is never followed: nothing but this peer is ever contacted.
            .redirect(Redirect::None);
        shape(request).send().map(|r| r.into_body())
    })
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
        let ex = http_exchange(&response, cuts, pause, method, move |r| match max_body {
            Some(max) => r.max_body(max),
            None => r,
        });
        ex.check_bounds()?;
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
        let ex = http_exchange(&response, cuts, pause, "GET", move |r| r.max_body(max));
        ex.check_bounds()?;
        let got = ex.outcome.map(|b| b.len()).map_err(|e| e.kind());
        prop_assert_eq!(
            got,
            Err(ErrorKind::LimitExceeded),
            "Content-Length {} past max_body {}", declared, max
        );
    }
}

// ----- SMTP and FTP dialogs -------------------------------------------------------------
//
// A script answers each command line of the client with one generated reply (or several
// in one piece, or none), in order: the peer does not look at the commands. What a client
// must make of a script is computed twice: by the script alone ([`verdict`]: a needed reply
// that is not a success ends in an error; all needed ones good ends in success), and by a
// model of the client's reading ([`Wire`]), which also finds where the client would wait for
// a reply the peer sends only after a command the client never sends; the peer closes there
// instead (a stall is the client's own timeout, tested in bad_input_replies.rs).

/// A point of an SMTP or FTP dialog: the command a reply answers (or the greeting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    SmtpGreeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    /// A line of the message: no reply.
    MessageLine,
    EndOfData,
    SmtpQuit,
    FtpGreeting,
    User,
    Pass,
    Type,
    Epsv,
    Pasv,
    Retr,
    /// A transfer's final reply, after its preliminary one.
    Done,
    FtpQuit,
}

/// Where a reply code takes the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// On, as the script expects.
    On,
    /// Down its other path: `EHLO` refused (5xx), so `HELO`; `USER` logged in (230, 202),
    /// so no `PASS`; `EPSV` not known (500, 501, 502, 504, 522), so `PASV`; the FTP
    /// greeting's `120`, so another greeting.
    Other,
    /// Nowhere: the reply is an error.
    Off,
}

impl Role {
    /// Whether the role's replies follow SMTP's multi-line rule (else FTP's).
    fn smtp(self) -> bool {
        use Role::*;
        matches!(
            self,
            SmtpGreeting | Ehlo | Helo | Mail | Rcpt | Data | MessageLine | EndOfData | SmtpQuit
        )
    }

    fn passive(self) -> bool {
        matches!(self, Role::Epsv | Role::Pasv)
    }

    /// Whether the client's result depends on this reply (it ignores `QUIT`'s).
    fn needed(self) -> bool {
        !matches!(self, Role::SmtpQuit | Role::FtpQuit)
    }

    /// What the client does with `code` here (the clients' documented replies: RFC 5321
    /// §4.3.2 for SMTP, RFC 959 §5.4 for FTP).
    fn path(self, code: u16) -> Path {
        use Role::*;
        let class = code / 100;
        let on = match self {
            SmtpGreeting | FtpGreeting => code == 220,
            Ehlo | Type | Done => class == 2,
            Helo | Mail | EndOfData => code == 250,
            Rcpt => matches!(code, 250 | 251),
            Data => code == 354,
            User => code == 331,
            Pass => matches!(code, 230 | 202),
            Epsv => code == 229,
            Pasv => code == 227,
            Retr => class == 1,
            MessageLine | SmtpQuit | FtpQuit => true,
        };
        let other = match self {
            Ehlo => class == 5,
            User => matches!(code, 230 | 202),
            Epsv => matches!(code, 500 | 501 | 502 | 504 | 522),
            FtpGreeting => code == 120,
            // A completion in place of the preliminary reply: the transfer is done.
            Retr => class == 2,
            _ => false,
        };
        match (on, other) {
            (true, _) => Path::On,
            (false, true) => Path::Other,
            (false, false) => Path::Off,
        }
    }

    /// Codes for a good reply here, and for one down the other path.
    fn codes(self) -> (&'static [u16], &'static [u16]) {
        use Role::*;
        match self {
            SmtpGreeting | FtpGreeting => (&[220], &[]),
            Ehlo => (&[250, 251, 200], &[500, 502, 550, 554]),
            Helo | Mail | EndOfData | MessageLine => (&[250], &[]),
            Rcpt => (&[250, 251], &[]),
            Data => (&[354], &[]),
            SmtpQuit | FtpQuit => (&[221], &[]),
            User => (&[331], &[230, 202]),
            Pass => (&[230, 202], &[]),
            Type => (&[200, 250], &[]),
            Epsv => (&[229], &[500, 501, 502, 504, 522]),
            Pasv => (&[227], &[]),
            Retr => (&[150, 125], &[226, 250]),
            Done => (&[226, 250], &[]),
        }
    }
}

/// What a generated reply is to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One complete, well-formed reply whose code takes the client on.
    Good,
    /// One complete, well-formed reply whose code takes it down its other path.
    Other,
    /// No success it may go on from: a refusing code, a malformed, over-long or non-UTF-8
    /// line, a reply cut short (the peer then closes) or none.
    Spoiled,
    /// Anything: random or flipped bytes, two replies in one piece.
    Unknown,
}

/// One reply of a script: its bytes, what it is, and whether the peer closes after it.
#[derive(Clone)]
struct Scripted {
    bytes: Vec<u8>,
    kind: Kind,
    last: bool,
}

impl Scripted {
    fn new(bytes: Vec<u8>, kind: Kind) -> Scripted {
        Scripted {
            bytes,
            kind,
            last: false,
        }
    }
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let close = if self.last { ", then close" } else { "" };
        write!(
            f,
            "{:?} b\"{}\"{close}",
            self.kind,
            self.bytes.escape_ascii()
        )
    }
}

/// Reply text: printable ASCII without `(`, `,` or `{`, so that no text but a passive
/// reply's own can name an address or a port (or hold a [`fill`] token); mostly short, now
/// and then a few KiB (within the client's line limit).
fn reply_text() -> BoxedStrategy<String> {
    prop_oneof![
        12 => "[ -'\\)-+\\--z|-~]{0,24}",
        1 => (1000usize..6000).prop_map(|n| "t".repeat(n)),
    ]
    .boxed()
}

/// Random or flipped bytes as they may appear in a reply: without `(` or `,` (see
/// [`reply_text`]), and in a passive reply without digits or `{` either, so that nothing
/// but the test's own ports is ever named.
fn tame(byte: u8, passive: bool) -> u8 {
    match byte {
        b'(' | b',' => b'x',
        b'0'..=b'9' | b'{' if passive => b'x',
        b => b,
    }
}

/// A line ending a client accepts: CRLF mostly, else a bare LF.
fn good_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => Just("\r\n"), 1 => Just("\n")]
}

/// A well-formed reply with a code from `code`, its last line saying `last`: one line, or
/// several as the role's protocol writes them (SMTP: every line `code-`, the last `code `;
/// FTP: lines between the first and the last may also be text, with another code or none).
fn well_formed(
    role: Role,
    code: impl Strategy<Value = u16> + 'static,
    last: BoxedStrategy<String>,
) -> BoxedStrategy<Vec<u8>> {
    (code, vec((reply_text(), 0u8..4), 0..3), last, good_end())
        .prop_map(move |(code, more, last, end)| {
            let mut out = String::new();
            for (i, (text, form)) in more.iter().enumerate() {
                let line = match form {
                    _ if i == 0 || role.smtp() => format!("{code}-{text}"),
                    1 => format!(" {text}"),
                    2 => format!("{} {text}", 100 + (code + 1) % 500),
                    3 => format!("{code}x{text}"),
                    _ => format!("{code}-{text}"),
                };
                out.push_str(&line);
                out.push_str(end);
            }
            out.push_str(&format!("{code} {last}{end}"));
            out.into_bytes()
        })
        .boxed()
}

/// The text of a passive reply's last line: where a good reply sends the data connection
/// (the test's data peer, `{data}`), or a bad one (`{refused}`, a port the test holds
/// without listening, or nothing a parser accepts). Only ever 127.0.0.1; [`fill`] puts
/// the ports in.
fn passive_target(role: Role, good: bool) -> BoxedStrategy<String> {
    let texts: &'static [&'static str] = match (role == Role::Epsv, good) {
        (true, true) => &[
            "Entering Extended Passive Mode (|||{data}|)",
            "ok (|||{data}|).",
            "(!!!{data}!)",
        ],
        (false, true) => &[
            "Entering Passive Mode (127,0,0,1,{data_pasv})",
            "=127,0,0,1,{data_pasv}",
            "Entering Passive Mode 127,0,0,1,{data_pasv}.",
        ],
        (true, false) => &[
            "(|||{refused}|)",
            "(|||0|)",
            "(|||70000|)",
            "(||{data}|)",
            "|||{data}|",
            "(|||{data}x|)",
            "(1{data}1)",
            "Entering Extended Passive Mode",
        ],
        (false, false) => &[
            "(127,0,0,1,{refused_pasv})",
            "(127,0,0,1,0,0)",
            "(127,0,0,1,256,1)",
            "(127,0,0,{data_pasv})",
            "(127,0,0,1,{data_pasv},1)",
            "Entering Passive Mode",
        ],
    };
    proptest::sample::select(texts)
        .prop_map(String::from)
        .boxed()
}

/// A first line without a valid code: none, a short one, a non-digit in it, a bad separator
/// (or a fourth digit), a code out of 100–599, a space first, or an empty line.
fn malformed() -> BoxedStrategy<Vec<u8>> {
    let text = "[a-zA-Z .:=-]{0,20}";
    let line = prop_oneof![
        ("[a-zA-Z]", text).prop_map(|(a, t)| format!("{a}{t}")),
        ("[0-9]{1,2}", text).prop_map(|(d, t)| format!("{d} {t}")),
        ("[1-5][a-zA-Z][0-9]", text).prop_map(|(c, t)| format!("{c} {t}")),
        (100u16..600, "[a-zA-Z\t=0-9]", text).prop_map(|(c, s, t)| format!("{c}{s}{t}")),
        (0u16..100, text).prop_map(|(c, t)| format!("{c:03} {t}")),
        (600u16..1000, text).prop_map(|(c, t)| format!("{c} {t}")),
        (100u16..600, text).prop_map(|(c, t)| format!(" {c} {t}")),
        Just(String::new()),
    ];
    (line, good_end())
        .prop_map(|(line, end)| format!("{line}{end}").into_bytes())
        .boxed()
}

/// Byte sequences that are not UTF-8: invalid bytes, an overlong form, a lone continuation
/// byte, a sequence cut short.
const NOT_UTF8: &[&[u8]] = &[b"\xff", b"\xc0\xaf", b"\x80", b"\xc3x"];

/// Any reply at `role`: mostly a good one; else a refusing code, one down the other path,
/// a passive reply with a bad target, a malformed first line, an SMTP multi-line reply with
/// a line not carrying its code, a line past the client's limit, a line not UTF-8, a good
/// reply cut short (the peer then closes); or random bytes, flipped bytes, two replies.
fn reply(role: Role) -> BoxedStrategy<Scripted> {
    let (good, other) = role.codes();
    let passive = role.passive();
    let text = move || {
        if passive {
            passive_target(role, true)
        } else {
            reply_text()
        }
    };
    let good_reply = move || well_formed(role, proptest::sample::select(good), text());
    let code = move || proptest::sample::select(good);
    let spoiled =
        |s: BoxedStrategy<Vec<u8>>| s.prop_map(|b| Scripted::new(b, Kind::Spoiled)).boxed();
    let unknown =
        |s: BoxedStrategy<Vec<u8>>| s.prop_map(|b| Scripted::new(b, Kind::Unknown)).boxed();
    let mut arms: Vec<(u32, BoxedStrategy<Scripted>)> = vec![
        (
            100,
            good_reply()
                .prop_map(|b| Scripted::new(b, Kind::Good))
                .boxed(),
        ),
        (3, spoiled(malformed())),
        (
            1,
            spoiled(
                (
                    code(),
                    (MAX_REPLY_LINE + 1)..(MAX_REPLY_LINE + 1000),
                    any::<bool>(),
                )
                    .prop_map(|(c, n, inside)| {
                        let long = "y".repeat(n);
                        if inside {
                            format!("{c}-a\r\n{c}-{long}\r\n{c} b\r\n").into_bytes()
                        } else {
                            format!("{c} {long}\r\n").into_bytes()
                        }
                    })
                    .boxed(),
            ),
        ),
        (
            1,
            spoiled(
                (code(), proptest::sample::select(NOT_UTF8), any::<bool>())
                    .prop_map(|(c, bad, inside)| {
                        let first = if inside {
                            format!("{c}-a\r\n{c} ")
                        } else {
                            format!("{c} ")
                        };
                        [first.as_bytes(), bad, b"\r\n"].concat()
                    })
                    .boxed(),
            ),
        ),
        (
            2,
            (good_reply(), any::<Index>())
                .prop_map(|(b, at)| {
                    let last_lf = b.iter().rposition(|&x| x == b'\n').expect("a line end");
                    let mut s = Scripted::new(b[..at.index(last_lf + 1)].to_vec(), Kind::Spoiled);
                    s.last = true;
                    s
                })
                .boxed(),
        ),
        (
            1,
            unknown(
                vec(any::<u8>(), 0..300)
                    .prop_map(move |b| b.into_iter().map(|x| tame(x, passive)).collect())
                    .boxed(),
            ),
        ),
        (
            1,
            unknown(
                (good_reply(), well_formed(role, 100u16..600, reply_text()))
                    .prop_map(|(a, b)| [a, b].concat())
                    .boxed(),
            ),
        ),
    ];
    if role.needed() {
        let refusing = (100u16..600).prop_filter("a code the client refuses here", move |&c| {
            role.path(c) == Path::Off
        });
        arms.push((3, spoiled(well_formed(role, refusing, reply_text()))));
    }
    if !other.is_empty() {
        let reply = well_formed(role, proptest::sample::select(other), reply_text());
        arms.push((3, reply.prop_map(|b| Scripted::new(b, Kind::Other)).boxed()));
    }
    if passive {
        arms.push((
            3,
            spoiled(well_formed(role, code(), passive_target(role, false))),
        ));
    } else {
        let flipped =
            (good_reply(), vec((any::<Index>(), any::<u8>()), 1..4)).prop_map(|(mut b, flips)| {
                for (at, byte) in flips {
                    let i = at.index(b.len());
                    b[i] = tame(byte, false);
                }
                b
            });
        arms.push((1, unknown(flipped.boxed())));
    }
    if role.smtp() && role.needed() {
        let mixed = (code(), reply_text(), 0u8..3).prop_map(|(c, t, form)| {
            let bad = match form {
                0 => format!("{} {t}", 100 + (c + 1) % 500),
                1 => format!(" {t}"),
                _ => format!("{c}x{t}"),
            };
            format!("{c}-{t}\r\n{bad}\r\n{c} {t}\r\n").into_bytes()
        });
        arms.push((2, spoiled(mixed.boxed())));
    }
    proptest::strategy::Union::new_weighted(arms).boxed()
}

/// The FTP greeting: [`reply`]'s, or now and then `120` (ready in a while) and then `220`.
fn ftp_greeting() -> BoxedStrategy<Scripted> {
    let role = Role::FtpGreeting;
    let wait = (
        well_formed(role, Just(120), reply_text()),
        well_formed(role, Just(220), reply_text()),
    )
        .prop_map(|(a, b)| Scripted::new([a, b].concat(), Kind::Good));
    prop_oneof![12 => reply(role), 1 => wait].boxed()
}

/// One step of a dialog: the reply to the command of `role`, written once the peer has read
/// what it `awaits`.
#[derive(Clone, Debug)]
struct Round {
    role: Role,
    awaits: Option<Step>,
    reply: Scripted,
}

/// What a reply awaits: nothing, as it follows at once (a greeting as the client connects;
/// a transfer's final reply right after its preliminary one); or one command line.
const AT_ONCE: Option<Step> = None;
const LINE: Option<Step> = Some(Step::ReadLine);

/// The rounds up to the first one after which the peer closes.
fn rounds(steps: Vec<(Role, Option<Step>, Scripted)>) -> Vec<Round> {
    let mut out = Vec::new();
    for (role, awaits, reply) in steps {
        let last = reply.last;
        out.push(Round {
            role,
            awaits,
            reply,
        });
        if last {
            break;
        }
    }
    out
}

/// What the script alone says of a dialog: the needed replies in order, up to the first that
/// is not good (or down the other path, the script following it): a spoiled one means the
/// client must fail, all of them good that it must succeed; an unknown one says nothing.
fn verdict(rounds: &[Round]) -> Option<bool> {
    for round in rounds.iter().filter(|r| r.role.needed()) {
        match round.reply.kind {
            Kind::Good | Kind::Other => {}
            Kind::Spoiled => return Some(false),
            Kind::Unknown => return None,
        }
    }
    Some(true)
}

/// The ports a passive reply may name, both held by the test: its data peer's, and one bound
/// without listening (a refused connection).
#[derive(Clone, Copy, Debug)]
struct Ports {
    data: u16,
    refused: u16,
}

/// `bytes` with every `needle` replaced by `with`.
fn replace(bytes: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// A passive reply with its ports put in for the tokens of [`passive_target`].
fn fill(bytes: &[u8], ports: Ports) -> Vec<u8> {
    let pasv = |p: u16| format!("{},{}", p >> 8, p & 0xff);
    [
        ("{data_pasv}", pasv(ports.data)),
        ("{refused_pasv}", pasv(ports.refused)),
        ("{data}", ports.data.to_string()),
        ("{refused}", ports.refused.to_string()),
    ]
    .iter()
    .fold(bytes.to_vec(), |b, (token, port)| {
        replace(&b, token.as_bytes(), port.as_bytes())
    })
}

/// The peer's script for `rounds`, passive replies filled in with `ports`.
fn play(rounds: &[Round], ports: Option<Ports>) -> Vec<(Option<Step>, Vec<u8>)> {
    rounds
        .iter()
        .map(|r| {
            let bytes = if r.role.passive() {
                fill(&r.reply.bytes, ports.expect("ports for a passive reply"))
            } else {
                r.reply.bytes.clone()
            };
            (r.awaits.clone(), bytes)
        })
        .collect()
}

/// A script as a hang report shows it.
fn shown(script: &[(Option<Step>, Vec<u8>)]) -> String {
    script
        .iter()
        .map(|(awaits, b)| format!("{awaits:?} b\"{}\"", b.escape_ascii()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A reply as the model reads it: its code and lines.
type Got = (u16, Vec<String>);
/// An error as the model predicts it: its kind and reply code.
type Fail = (ErrorKind, Option<u16>);

fn rejected(code: u16) -> Fail {
    (ErrorKind::Rejected, Some(code))
}

/// A model of what a client reads from a scripted peer: the socket's line reader (a line
/// ends at LF, its CRs dropped; no LF within `MAX_REPLY_LINE + 1` bytes is a line past the
/// limit) and the reply reader of `client::reply` (RFC 5321 §4.2.1, RFC 959 §4.2), over the
/// replies the peer has written (those of the rounds whose awaited lines the client has
/// sent), then the end of the stream once it has written them all.
struct Wire {
    bytes: Vec<u8>,
    /// Per round: where its reply ends in `bytes`, and how many lines the peer has read
    /// before it writes it.
    rounds: Vec<(usize, usize)>,
    /// Lines the client has sent.
    sent: usize,
    /// How far the client has read.
    at: usize,
}

impl Wire {
    fn new(script: &[(Option<Step>, Vec<u8>)]) -> Wire {
        let mut bytes = Vec::new();
        let mut rounds = Vec::new();
        let mut lines = 0;
        for (awaits, reply) in script {
            lines += usize::from(matches!(awaits, Some(Step::ReadLine)));
            bytes.extend_from_slice(reply);
            rounds.push((bytes.len(), lines));
        }
        Wire {
            bytes,
            rounds,
            sent: 0,
            at: 0,
        }
    }

    /// How many rounds the peer plays: all of them, unless the client waits for the rest
    /// of a line that the peer writes only after a line the client does not send; the
    /// peer closes there instead.
    fn rounds(&self) -> usize {
        self.rounds.len()
    }

    fn line(&mut self) -> Result<Vec<u8>, Fail> {
        let written = self
            .rounds
            .iter()
            .take_while(|(_, lines)| *lines <= self.sent)
            .count();
        let end = written.checked_sub(1).map_or(0, |i| self.rounds[i].0);
        let rest = &self.bytes[self.at..end];
        let window = &rest[..rest.len().min(MAX_REPLY_LINE + 1)];
        if let Some(n) = window.iter().position(|&b| b == b'\n') {
            let line = window[..n]
                .iter()
                .copied()
                .filter(|&b| b != b'\r')
                .collect();
            self.at += n + 1;
            return Ok(line);
        }
        if window.len() > MAX_REPLY_LINE {
            self.at += MAX_REPLY_LINE;
            return Err((ErrorKind::LimitExceeded, None));
        }
        self.rounds.truncate(written);
        self.at = end;
        Err((ErrorKind::Closed, None))
    }

    fn text_line(&mut self) -> Result<String, Fail> {
        String::from_utf8(self.line()?).map_err(|_| (ErrorKind::Protocol, None))
    }

    /// One reply, by SMTP's rule when `strict` (every line with the code), else FTP's.
    fn reply(&mut self, strict: bool) -> Result<Got, Fail> {
        let first = self.text_line()?;
        let parsed = parse_line(&first);
        let code = parsed
            .code
            .filter(|c| (100..600).contains(c))
            .ok_or((ErrorKind::Protocol, None))?;
        let mut lines = vec![parsed.text.to_string()];
        let mut more = parsed.more;
        let mut total = first.len() + 2;
        while more {
            if lines.len() >= MAX_REPLY_LINES {
                return Err((ErrorKind::LimitExceeded, None));
            }
            let line = self.text_line()?;
            total += line.len() + 2;
            if total > MAX_REPLY_BYTES {
                return Err((ErrorKind::LimitExceeded, None));
            }
            let parsed = parse_line(&line);
            if parsed.code == Some(code) {
                lines.push(parsed.text.to_string());
                more = parsed.more;
            } else if strict {
                return Err((ErrorKind::Protocol, None));
            } else {
                lines.push(line.clone());
            }
        }
        Ok((code, lines))
    }

    /// Sends `lines` lines and reads the reply; where its code takes the client at `role`.
    fn answer(&mut self, lines: usize, role: Role) -> Result<(Path, Got), Fail> {
        self.sent += lines;
        let reply = self.reply(role.smtp())?;
        Ok((role.path(reply.0), reply))
    }

    /// [`Wire::answer`], any code but one taking the client on refused.
    fn expect(&mut self, lines: usize, role: Role) -> Result<Got, Fail> {
        match self.answer(lines, role)? {
            (Path::On, reply) => Ok(reply),
            (_, (code, _)) => Err(rejected(code)),
        }
    }
}

/// What `smtp::send` must return, by the model: the reply to the end of the data, or the
/// error. After a refusal the client says `QUIT` and ignores the reply.
fn smtp_model(wire: &mut Wire, recipients: usize, message_lines: usize) -> Result<Got, Fail> {
    let session = |wire: &mut Wire| {
        wire.expect(0, Role::SmtpGreeting)?;
        match wire.answer(1, Role::Ehlo)? {
            (Path::On, _) => {}
            (Path::Other, _) => {
                wire.expect(1, Role::Helo)?;
            }
            (Path::Off, (code, _)) => return Err(rejected(code)),
        }
        wire.expect(1, Role::Mail)?;
        for _ in 0..recipients {
            wire.expect(1, Role::Rcpt)?;
        }
        wire.expect(1, Role::Data)?;
        // The message's lines and the dot, then the reply.
        let done = wire.expect(message_lines + 1, Role::EndOfData)?;
        let _ = wire.answer(1, Role::SmtpQuit);
        Ok(done)
    };
    let result = session(wire);
    if matches!(result, Err((ErrorKind::Rejected, _))) {
        let _ = wire.answer(1, Role::SmtpQuit);
    }
    result
}

/// What `ftp::get_to` must return, by the model: the number of bytes (all the data peer
/// sends), or the error. Fails the case if the client would be sent to a port the test does
/// not hold, before any client runs.
fn ftp_model(wire: &mut Wire, epsv: bool, ports: Ports, data: usize) -> Result<u64, Fail> {
    match wire.answer(0, Role::FtpGreeting)? {
        (Path::On, _) => {}
        (Path::Other, _) => {
            wire.expect(0, Role::FtpGreeting)?;
        }
        (Path::Off, (code, _)) => return Err(rejected(code)),
    }
    match wire.answer(1, Role::User)? {
        (Path::On, _) => {
            wire.expect(1, Role::Pass)?;
        }
        (Path::Other, _) => {}
        (Path::Off, (code, _)) => return Err(rejected(code)),
    }
    wire.expect(1, Role::Type)?;
    let mut port = None;
    if epsv {
        match wire.answer(1, Role::Epsv)? {
            (Path::On, (_, lines)) => {
                let found = parse_epsv(&lines.join("\n"));
                port = Some(found.ok_or((ErrorKind::Protocol, None))?);
            }
            (Path::Other, _) => {}
            (Path::Off, (code, _)) => return Err(rejected(code)),
        }
    }
    let port = match port {
        Some(port) => port,
        None => {
            let (_, lines) = wire.expect(1, Role::Pasv)?;
            pasv_target(&lines.join("\n"), IpAddr::V4(Ipv4Addr::LOCALHOST))
                .map_err(|e| (e.kind(), e.reply_code()))?
                .port()
        }
    };
    if port == ports.refused {
        return Err((ErrorKind::Refused, None));
    }
    assert_eq!(
        port, ports.data,
        "the script sends the client to a port the test does not hold"
    );
    match wire.answer(1, Role::Retr)? {
        (Path::On, _) => {
            wire.expect(0, Role::Done)?;
        }
        // Completed at once: no final reply follows (LuaSocket reads it so too).
        (Path::Other, _) => {}
        (Path::Off, (code, _)) => return Err(rejected(code)),
    }
    let _ = wire.answer(1, Role::FtpQuit);
    Ok(data as u64)
}

/// An SMTP dialog: the envelope, the message, and the peer's rounds.
#[derive(Clone, Debug)]
struct SmtpDialog {
    recipients: Vec<String>,
    message: String,
    rounds: Vec<Round>,
}

/// How many lines `smtp::send` writes for `message` after `DATA` (the dot aside).
fn message_lines(message: &str) -> usize {
    stuff(message.as_bytes())
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// An SMTP dialog: one or two recipients, a message of up to three lines, and a reply to the
/// greeting and to each command (`HELO` only after `EHLO` refused with 5xx; no reply to a
/// line of the message).
fn smtp_dialog() -> impl Strategy<Value = SmtpDialog> {
    use Role::*;
    (
        vec("[a-z]{1,8}@example\\.org", 1..=2),
        vec("[ -~]{0,20}", 0..3),
        (reply(SmtpGreeting), reply(Ehlo), reply(Helo), reply(Mail)),
        vec(reply(Rcpt), 2),
        (reply(Data), reply(EndOfData), reply(SmtpQuit)),
    )
        .prop_map(
            |(recipients, lines, (greeting, ehlo, helo, mail), rcpts, (data, eod, quit))| {
                let message: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
                let fallback = ehlo.kind == Kind::Other;
                let mut steps = vec![(SmtpGreeting, AT_ONCE, greeting), (Ehlo, LINE, ehlo)];
                if fallback {
                    steps.push((Helo, LINE, helo));
                }
                steps.push((Mail, LINE, mail));
                steps.extend(
                    rcpts
                        .into_iter()
                        .take(recipients.len())
                        .map(|r| (Rcpt, LINE, r)),
                );
                steps.push((Data, LINE, data));
                let silence = Scripted::new(Vec::new(), Kind::Good);
                steps.extend(
                    (0..message_lines(&message)).map(|_| (MessageLine, LINE, silence.clone())),
                );
                steps.push((EndOfData, LINE, eod));
                steps.push((SmtpQuit, LINE, quit));
                SmtpDialog {
                    recipients,
                    message,
                    rounds: rounds(steps),
                }
            },
        )
}

/// An FTP download: whether `EPSV` is tried, what the data peer sends, and a reply to the
/// greeting and to each command (`PASS` only after `USER` answered 331, `PASV` only without
/// `EPSV` or after it is not known; `RETR`'s final reply right after its preliminary one,
/// none when `RETR` is answered by its completion).
#[derive(Clone, Debug)]
struct FtpDialog {
    epsv: bool,
    data: Vec<u8>,
    rounds: Vec<Round>,
}

fn ftp_dialog() -> impl Strategy<Value = FtpDialog> {
    use Role::*;
    (
        any::<bool>(),
        prop_oneof![1 => Just(Vec::new()), 4 => vec(any::<u8>(), 1..4096)],
        (ftp_greeting(), reply(User), reply(Pass), reply(Type)),
        (
            reply(Epsv),
            reply(Pasv),
            reply(Retr),
            reply(Done),
            reply(FtpQuit),
        ),
    )
        .prop_map(
            |(epsv, data, (greeting, user, pass, type_), (epsv_reply, pasv, retr, done, quit))| {
                let mut steps = vec![(FtpGreeting, AT_ONCE, greeting)];
                let logged_in = user.kind == Kind::Other;
                steps.push((User, LINE, user));
                if !logged_in {
                    steps.push((Pass, LINE, pass));
                }
                steps.push((Type, LINE, type_));
                let epsv_good = epsv && epsv_reply.kind == Kind::Good;
                if epsv {
                    steps.push((Epsv, LINE, epsv_reply));
                }
                if !epsv_good {
                    steps.push((Pasv, LINE, pasv));
                }
                // A completion in place of the preliminary reply is the transfer's last.
                let completed = retr.kind == Kind::Other;
                steps.push((Retr, LINE, retr));
                if !completed {
                    steps.push((Done, AT_ONCE, done));
                }
                steps.push((FtpQuit, LINE, quit));
                FtpDialog {
                    epsv,
                    data,
                    rounds: rounds(steps),
                }
            },
        )
}

proptest! {
    #![proptest_config(config(32))]

    // Whatever the replies, `smtp::send` returns in time, in bounded memory, with what the
    // model of its reading says (the end-of-data reply, or a typed error), and succeeds
    // only when every reply it needed was a success.
    #[test]
    fn smtp_client_on_any_replies_succeeds_only_on_a_completed_dialog(
        dialog in smtp_dialog(),
        cuts in vec(1usize..64, 0..4),
        pause in prop::bool::weighted(0.25),
    ) {
        let verdict = verdict(&dialog.rounds);
        let mut script = play(&dialog.rounds, None);
        let mut wire = Wire::new(&script);
        let expected = smtp_model(&mut wire, dialog.recipients.len(), message_lines(&dialog.message));
        script.truncate(wire.rounds());
        let what = format!("the SMTP client on {}", shown(&script));
        let (recipients, message) = (dialog.recipients.clone(), dialog.message.clone());
        let ex = exchange(script, cuts, pause, what, move |addr| {
            Mail::new(addr.to_string(), "alice@example.org")
                .recipients_from(recipients)
                .message(message)
                .domain("client.example.org")
                .starttls(StartTls::Never)
                .timeout(CLIENT_TIMEOUT)
                .send()
        });
        ex.check_bounds()?;
        let got = ex
            .outcome
            .map(|r| (r.code(), r.lines().to_vec()))
            .map_err(|e| (e.kind(), e.reply_code()));
        if let Err((kind, _)) = got {
            prop_assert!(
                matches!(
                    kind,
                    ErrorKind::Rejected | ErrorKind::Protocol | ErrorKind::LimitExceeded | ErrorKind::Closed
                ),
                "unexpected error kind {:?}", kind
            );
        }
        if let Some(success) = verdict {
            prop_assert_eq!(got.is_ok(), success, "the script's verdict; got {:?}", got);
        }
        prop_assert_eq!(got, expected);
    }

    // Whatever the replies and the data, `ftp::get_to` returns in time, in bounded memory,
    // with what the model says (all the data peer sent, or a typed error), and succeeds only
    // when every reply it needed was a success; passive replies name only 127.0.0.1 and
    // ports the test holds.
    #[test]
    fn ftp_client_on_any_replies_succeeds_only_on_a_completed_dialog(
        dialog in ftp_dialog(),
        cuts in vec(1usize..64, 0..4),
        pause in prop::bool::weighted(0.25),
    ) {
        let verdict = verdict(&dialog.rounds);
        let data_script = vec![(AT_ONCE, dialog.data.clone())];
        let data_peer = Peer::start(vec![peer_steps(data_script, &cuts, pause)]);
        let unlistened = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        unlistened.bind(&local.into()).expect("bind");
        let refused = unlistened.local_addr().expect("addr").as_socket().expect("inet").port();
        let ports = Ports { data: data_peer.addr.port(), refused };
        let mut script = play(&dialog.rounds, Some(ports));
        let mut wire = Wire::new(&script);
        let expected = ftp_model(&mut wire, dialog.epsv, ports, dialog.data.len());
        script.truncate(wire.rounds());
        let what = format!(
            "the FTP client (data {} bytes on {ports:?}) on {}",
            dialog.data.len(),
            shown(&script)
        );
        let opts = ftp::Options::new().timeout(Some(CLIENT_TIMEOUT)).epsv(dialog.epsv);
        let ex = exchange(script, cuts, pause, what, move |addr| {
            let mut sink = Vec::new();
            let url = format!("ftp://user:secret@{addr}/file.bin");
            ftp::get_to(&url, &opts, &mut sink).map(|n| (n, sink))
        });
        data_peer.finish();
        drop(unlistened);
        ex.check_bounds()?;
        let got = ex.outcome.map_err(|e| (e.kind(), e.reply_code()));
        match &got {
            Ok((n, bytes)) => {
                prop_assert_eq!(*n, bytes.len() as u64);
                prop_assert!(
                    bytes.len() <= dialog.data.len(),
                    "{} bytes out of {} sent", bytes.len(), dialog.data.len()
                );
            }
            Err((kind, _)) => prop_assert!(
                matches!(
                    kind,
                    ErrorKind::Rejected
                        | ErrorKind::Protocol
                        | ErrorKind::LimitExceeded
                        | ErrorKind::Closed
                        | ErrorKind::Refused
                ),
                "unexpected error kind {:?}", kind
            ),
        }
        let summary = got.as_ref().map(|(n, _)| n);
        if let Some(success) = verdict {
            prop_assert_eq!(got.is_ok(), success, "the script's verdict; got {:?}", summary);
        }
        prop_assert_eq!(summary, expected.as_ref(), "the model's outcome");
        if let Ok((_, bytes)) = &got {
            prop_assert!(bytes == &dialog.data, "the data differs from what the data peer sent");
        }
    }
}
