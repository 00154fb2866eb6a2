//! `client::http` against scripted raw peers (std threads on loopback writing crafted
//! responses): oversized and malformed heads, bad chunking, bad or conflicting
//! `Content-Length`, truncated bodies and bodies past the in-memory limit. Each gives a
//! typed error — never a panic, a hang, unbounded memory, or a short body reported as a
//! success. Then what a server may do with a redirect (an endless body, another origin),
//! a caller's body reader that breaks its declared length or is redirected, a caller's
//! framing fields that misdescribe the body, header names and methods that are not tokens,
//! and a caller's `Connection: close` that the server does not repeat.
//!
//! Memory is measured with the counting allocator of `util/heap.rs`: the client runs
//! blocking on the test's thread, the peer on its own, so the peak seen on the test's thread
//! is what the client held.

#[path = "util/heap.rs"]
mod heap;
#[path = "util/raw_peer.rs"]
mod raw_peer;
mod util;

use std::io::Read;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use copas::client::http::{Request, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use copas::ErrorKind;
use heap::peak_heap;
use raw_peer::{peer, send, PeerLog, Step, ENDLESS};
use util::secs;

/// One response on one connection: the peer reads the request, then plays `steps`.
fn one(steps: Vec<Step>) -> (SocketAddr, JoinHandle<PeerLog>) {
    let mut script = vec![Step::ReadRequest];
    script.extend(steps);
    peer(vec![script])
}

/// A GET of `/` at `addr` (blocking, on this thread), with a short timeout and no pooling.
fn get(addr: SocketAddr) -> Request {
    Request::get(&format!("http://{addr}/"))
        .timeout(secs(5))
        .keep_alive(false)
}

/// Sends `request`; the body, or the error's kind.
fn outcome(request: Request) -> Result<Vec<u8>, ErrorKind> {
    request.send().map(|r| r.into_body()).map_err(|e| e.kind())
}

/// Plays each response (then closes) and checks what `send` makes of it.
fn check_cases(cases: &[(&str, Result<&[u8], ErrorKind>)]) {
    for (i, (response, expected)) in cases.iter().enumerate() {
        let (addr, peer) = one(vec![send(response)]);
        let got = outcome(get(addr));
        peer.join().expect("peer");
        assert_eq!(
            got,
            expected.map(<[u8]>::to_vec),
            "case {i}: {:?}",
            &response[..response.len().min(120)]
        );
    }
}

#[test]
fn one_endless_header_line_is_refused_at_the_head_limit_with_bounded_memory() {
    let _dog = util::Watchdog::new("endless header line", secs(60));
    let (addr, peer) = one(vec![
        send("HTTP/1.1 200 OK\r\nX-Big: "),
        Step::Endless(b"v".to_vec()),
    ]);
    let (got, peak) = peak_heap(|| outcome(get(addr)));
    let log = peer.join().expect("peer");
    eprintln!("client peak heap {peak} B; peer wrote {} B", log.written);
    assert_eq!(got, Err(ErrorKind::LimitExceeded));
    // The head is read into one buffer capped at the limit; the socket's buffer and the
    // request come on top.
    assert!(
        peak < MAX_HEAD_BYTES * 4,
        "the client held {peak} bytes for a head limit of {MAX_HEAD_BYTES}"
    );
    assert!(
        log.written < ENDLESS / 4,
        "the client kept reading: the peer wrote {} bytes",
        log.written
    );
}

#[test]
fn a_flood_of_header_fields_is_refused_with_bounded_memory() {
    let _dog = util::Watchdog::new("header flood", secs(60));
    // Endless short fields: the head limit ends it.
    let (addr, peer) = one(vec![
        send("HTTP/1.1 200 OK\r\n"),
        Step::Endless(b"X-H: v\r\n".to_vec()),
    ]);
    let (got, peak) = peak_heap(|| outcome(get(addr)));
    let log = peer.join().expect("peer");
    eprintln!("client peak heap {peak} B; peer wrote {} B", log.written);
    assert_eq!(got, Err(ErrorKind::LimitExceeded));
    assert!(peak < MAX_HEAD_BYTES * 4, "the client held {peak} bytes");
    assert!(log.written < ENDLESS / 4, "the peer wrote {}", log.written);

    // Within the byte limit, one field more than the count limit; and exactly the limit.
    let fields = |n: usize| {
        format!(
            "HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok",
            "X-H: v\r\n".repeat(n)
        )
    };
    for (extra, expected) in [(10, Err(ErrorKind::LimitExceeded)), (9, Ok(b"ok".to_vec()))] {
        // `Content-Length` is the tenth field (or the eleventh).
        let (addr, peer) = one(vec![send(&fields(extra))]);
        let got = outcome(get(addr).head_limits(10, 4096));
        peer.join().expect("peer");
        assert_eq!(got, expected, "{extra} fields + Content-Length");
    }
}

#[test]
fn malformed_status_lines_and_header_syntax_are_protocol_errors() {
    let _dog = util::Watchdog::new("malformed heads", secs(60));
    let p = Err(ErrorKind::Protocol);
    check_cases(&[
        ("HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", p),
        ("HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", p),
        ("HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", p),
        ("HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", p),
        ("HTTP/1.1200 OK\r\nContent-Length: 0\r\n\r\n", p),
        ("ICY 200 OK\r\nContent-Length: 0\r\n\r\n", p),
        ("\x00\x01\x02\x03 binary\r\n\r\n", p),
        // Codes outside 100–599 (a 0xx would otherwise pass as "no body").
        ("HTTP/1.1 099 Low\r\nContent-Length: 4\r\n\r\nbody", p),
        ("HTTP/1.1 000 Zero\r\n\r\n", p),
        ("HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n", p),
        ("HTTP/1.1 999 High\r\nContent-Length: 0\r\n\r\n", p),
        // Header syntax.
        (
            "HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n",
            p,
        ),
        (
            "HTTP/1.1 200 OK\r\nBad Name: v\r\nContent-Length: 0\r\n\r\n",
            p,
        ),
        (
            "HTTP/1.1 200 OK\r\n: no name\r\nContent-Length: 0\r\n\r\n",
            p,
        ),
        (
            "HTTP/1.1 200 OK\r\nName : v\r\nContent-Length: 0\r\n\r\n",
            p,
        ),
        (
            "HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n",
            p,
        ),
        (
            "HTTP/1.1 200 OK\r\nX-Bad\x01: v\r\nContent-Length: 0\r\n\r\n",
            p,
        ),
        // The well-formed control case.
        ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Ok(b"ok")),
        (
            "HTTP/1.1 599 Edge\r\nContent-Length: 2\r\n\r\nok",
            Ok(b"ok"),
        ),
    ]);
}

#[test]
fn bad_chunk_sizes_are_typed_errors() {
    let _dog = util::Watchdog::new("bad chunk sizes", secs(60));
    let chunked =
        |rest: &str| format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{rest}");
    let cases: Vec<(String, Result<&[u8], ErrorKind>)> = vec![
        (
            chunked("zz\r\nhello\r\n0\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        (chunked("\r\nhello\r\n0\r\n\r\n"), Err(ErrorKind::Protocol)),
        (
            chunked(";ext\r\nhello\r\n0\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        (
            chunked("-1\r\nhello\r\n0\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        (
            chunked("+5\r\nhello\r\n0\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        (
            chunked("0x5\r\nhello\r\n0\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        (
            chunked("5 5\r\nhello\r\n0\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        // Past u64: refused before any data is read.
        (
            chunked("ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            Err(ErrorKind::LimitExceeded),
        ),
        // A size that fits but is never delivered: cut short, not a success.
        (
            chunked("ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            Err(ErrorKind::Closed),
        ),
        // The size line cut by the close.
        (chunked("5"), Err(ErrorKind::Closed)),
        (chunked("5;name=val"), Err(ErrorKind::Closed)),
        // Controls: sizes in either case, leading zeros, extensions, BWS.
        (
            chunked("0005\r\nhello\r\nA;x=\"y z\"\r\n world!!!!\r\n0 ;end\r\n\r\n"),
            Ok(b"hello world!!!!"),
        ),
        (chunked("a\r\n0123456789\r\n0\r\n\r\n"), Ok(b"0123456789")),
    ];
    for (i, (response, expected)) in cases.iter().enumerate() {
        let (addr, peer) = one(vec![Step::Send(response.clone().into_bytes())]);
        let got = outcome(get(addr));
        peer.join().expect("peer");
        assert_eq!(got, expected.map(<[u8]>::to_vec), "case {i}: {response:?}");
    }
}

#[test]
fn a_chunk_size_line_without_end_is_bounded_or_times_out() {
    let _dog = util::Watchdog::new("endless chunk-size line", secs(60));
    // Endless: the chunk-line limit ends it, whatever the peer still offers.
    let (addr, peer) = one(vec![
        send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;"),
        Step::Endless(b"x".to_vec()),
    ]);
    let (got, peak) = peak_heap(|| outcome(get(addr)));
    let log = peer.join().expect("peer");
    eprintln!("client peak heap {peak} B; peer wrote {} B", log.written);
    assert_eq!(got, Err(ErrorKind::LimitExceeded));
    assert!(peak < 1024 * 1024, "the client held {peak} bytes");
    assert!(log.written < ENDLESS / 4, "the peer wrote {}", log.written);

    // Silent after half a size line: the receive timeout ends it.
    let (addr, peer) = one(vec![
        send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5"),
        Step::Hold(secs(10)),
    ]);
    let start = Instant::now();
    let got = outcome(get(addr).timeout(Duration::from_millis(300)));
    let took = start.elapsed();
    peer.join().expect("peer");
    assert_eq!(got, Err(ErrorKind::Timeout));
    assert!(took < secs(5), "the timeout took {took:?}");
}

#[test]
fn chunk_data_longer_or_shorter_than_its_size_is_refused() {
    let _dog = util::Watchdog::new("chunk data size", secs(60));
    let chunked =
        |rest: &str| format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{rest}");
    let cases: Vec<(String, Result<&[u8], ErrorKind>)> = vec![
        // Longer than its size: what follows the 5 bytes is not CRLF.
        (
            chunked("5\r\nhelloEXTRA\r\n0\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        (
            chunked("5\r\nhello!\r\n0\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        // Shorter: the next size line is taken as data, and then no CRLF follows.
        (chunked("5\r\nhel\r\n0\r\n\r\n"), Err(ErrorKind::Protocol)),
        // Shorter, and then the close.
        (chunked("5\r\nhel"), Err(ErrorKind::Closed)),
        // Missing CRLF after the data.
        (chunked("5\r\nhello0\r\n\r\n"), Err(ErrorKind::Protocol)),
        (chunked("5\r\nhello\r0\r\n\r\n"), Err(ErrorKind::Protocol)),
        // Cut right after the data, or after its CRLF, or after the last chunk's size.
        (chunked("5\r\nhello"), Err(ErrorKind::Closed)),
        (chunked("5\r\nhello\r\n"), Err(ErrorKind::Closed)),
        (chunked("5\r\nhello\r\n0\r\n"), Err(ErrorKind::Closed)),
        (
            chunked("5\r\nhello\r\n0\r\nX-T: 1\r\n"),
            Err(ErrorKind::Closed),
        ),
        // Malformed trailers.
        (
            chunked("5\r\nhello\r\n0\r\nno colon\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        (
            chunked("5\r\nhello\r\n0\r\nBad Name: v\r\n\r\n"),
            Err(ErrorKind::Protocol),
        ),
        // Controls: CRLF, and a bare LF, after the data.
        (chunked("5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), Ok(b"hello")),
        (chunked("5\nhello\n0\n\n"), Ok(b"hello")),
    ];
    for (i, (response, expected)) in cases.iter().enumerate() {
        let (addr, peer) = one(vec![Step::Send(response.clone().into_bytes())]);
        let got = outcome(get(addr));
        peer.join().expect("peer");
        assert_eq!(got, expected.map(<[u8]>::to_vec), "case {i}: {response:?}");
    }
}

#[test]
fn negative_or_malformed_content_length_is_a_protocol_error() {
    let _dog = util::Watchdog::new("bad content-length", secs(60));
    let p = Err(ErrorKind::Protocol);
    check_cases(&[
        ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello", p),
        ("HTTP/1.1 200 OK\r\nContent-Length: -0\r\n\r\n", p),
        ("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", p),
        ("HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello", p),
        ("HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\nhello", p),
        ("HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello", p),
        ("HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nhello", p),
        ("HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\nhello", p),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
            p,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello",
            Ok(b"hello"),
        ),
    ]);
}

#[test]
fn conflicting_content_lengths_are_refused() {
    let _dog = util::Watchdog::new("conflicting content-length", secs(60));
    let p = Err(ErrorKind::Protocol);
    check_cases(&[
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            p,
        ),
        ("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", p),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Other: 1\r\nContent-Length: 5\r\n\r\nhello!",
            p,
        ),
        // The same value repeated is one length (RFC 9110 §8.6).
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            Ok(b"hello"),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
            Ok(b"hello"),
        ),
    ]);
}

/// RFC 9112 §6.3: Transfer-Encoding overrides Content-Length. We take the chunked framing
/// and do not trust the connection again (it may be a smuggling attempt); a response with
/// only one of the two is kept alive as usual (the control).
#[test]
fn chunked_wins_over_content_length_and_the_connection_is_not_reused() {
    let _dog = util::Watchdog::new("CL + TE", secs(60));
    for (both, expected_connections) in [(true, 2), (false, 1)] {
        let first = if both {
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        };
        let second = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond";
        // Each connection can answer two requests, so a reuse would succeed too: what
        // tells them apart is the number of connections.
        let script = vec![
            Step::ReadRequest,
            send(first),
            Step::ReadRequest,
            send(second),
        ];
        let fallback = vec![Step::ReadRequest, send(second)];
        let (addr, peer) = peer(vec![script, fallback]);
        let url = format!("http://{addr}/");
        let r1 = Request::get(&url).timeout(secs(5)).send().expect("first");
        let r2 = Request::get(&url).timeout(secs(5)).send().expect("second");
        assert_eq!(r1.body(), b"hello", "both framings: {both}");
        assert_eq!(r2.body(), b"second");
        let log = peer.join().expect("peer");
        assert_eq!(
            log.accepted, expected_connections,
            "both Content-Length and chunked: {both}"
        );
    }
}

#[test]
fn truncated_bodies_are_errors_never_short_successes() {
    let _dog = util::Watchdog::new("truncated bodies", secs(60));
    let cases: Vec<(&str, ErrorKind)> = vec![
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
            ErrorKind::Closed,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
            ErrorKind::Closed,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nhalf of a",
            ErrorKind::Closed,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n",
            ErrorKind::Closed,
        ),
    ];
    for (i, (response, expected)) in cases.iter().enumerate() {
        // Collected, streamed into a writer, and read through `stream`: all three fail.
        for how in ["send", "send_to", "stream"] {
            let (addr, peer) = one(vec![send(response)]);
            let got = match how {
                "send" => get(addr).send().map(|r| r.into_body()),
                "send_to" => {
                    let mut out = Vec::new();
                    get(addr).send_to(&mut out).map(|_| out)
                }
                _ => get(addr).stream().and_then(|(_, mut body)| {
                    let mut out = Vec::new();
                    body.read_to_end(&mut out).map_err(copas::Error::from)?;
                    Ok(out)
                }),
            };
            peer.join().expect("peer");
            assert_eq!(
                got.map_err(|e| e.kind()),
                Err(*expected),
                "case {i} with {how}: {response:?}"
            );
        }
    }
    // Cut while the client waits: the same error, as soon as the peer goes.
    let (addr, peer) = one(vec![
        send("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"),
        Step::Hold(Duration::from_millis(200)),
    ]);
    assert_eq!(outcome(get(addr)), Err(ErrorKind::Closed));
    peer.join().expect("peer");
}

#[test]
fn a_body_over_the_memory_limit_is_refused_when_collected() {
    let _dog = util::Watchdog::new("body limit", secs(60));
    let body = vec![b'b'; 2000];
    let with_length = |n: usize| {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
        r.extend_from_slice(&body[..n]);
        r
    };
    let chunked = {
        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in body.chunks(300) {
            r.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            r.extend_from_slice(piece);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    };
    let until_close = [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &body].concat();
    let limit = 1000;
    for (what, response) in [
        ("Content-Length", with_length(2000)),
        ("chunked", chunked.clone()),
        ("until close", until_close.clone()),
    ] {
        let (addr, peer) = one(vec![Step::Send(response.clone())]);
        let got = outcome(get(addr).max_body(limit));
        peer.join().expect("peer");
        assert_eq!(got, Err(ErrorKind::LimitExceeded), "{what}");
        // At the limit exactly, and streamed past it: fine.
        let (addr, peer) = one(vec![Step::Send(response)]);
        let mut out = Vec::new();
        get(addr)
            .max_body(limit)
            .send_to(&mut out)
            .unwrap_or_else(|e| panic!("{what} streamed: {e}"));
        peer.join().expect("peer");
        assert_eq!(out, body, "{what} streamed");
    }
    let (addr, peer) = one(vec![Step::Send(with_length(1000))]);
    assert_eq!(outcome(get(addr).max_body(1000)), Ok(body[..1000].to_vec()));
    peer.join().expect("peer");

    // The default limit holds without any setting, and a Content-Length past it is refused
    // at once: the peer offers nothing but the head and would stall a reader.
    let (addr, peer) = one(vec![
        send(&format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        )),
        Step::Hold(secs(10)),
    ]);
    let start = Instant::now();
    let got = outcome(get(addr).timeout(secs(10)));
    assert_eq!(got, Err(ErrorKind::LimitExceeded));
    assert!(start.elapsed() < secs(5), "took {:?}", start.elapsed());
    peer.join().expect("peer");
}

#[test]
fn endless_interim_responses_are_refused() {
    let _dog = util::Watchdog::new("endless 1xx", secs(60));
    let (addr, peer) = one(vec![Step::Endless(
        b"HTTP/1.1 102 Processing\r\n\r\n".to_vec(),
    )]);
    let got = outcome(get(addr));
    let log = peer.join().expect("peer");
    assert_eq!(got, Err(ErrorKind::LimitExceeded));
    assert!(log.written < ENDLESS / 4, "the peer wrote {}", log.written);
    // A few interim responses are fine.
    let (addr, peer) = one(vec![send(&format!(
        "{}HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 100 Continue\r\n\r\n".repeat(3)
    ))]);
    assert_eq!(outcome(get(addr)), Ok(b"ok".to_vec()));
    peer.join().expect("peer");
}

/// Blank lines before the status line are skipped (RFC 9112 §2.2) but count against the
/// head limit: a peer sending nothing else is refused there, not read for as long as it
/// keeps sending.
#[test]
fn endless_blank_lines_before_the_status_line_are_refused_at_the_head_limit() {
    let _dog = util::Watchdog::new("endless blank lines", secs(60));
    let (addr, peer) = one(vec![Step::Endless(b"\r\n".to_vec())]);
    let got = outcome(get(addr));
    let log = peer.join().expect("peer");
    assert_eq!(got, Err(ErrorKind::LimitExceeded));
    assert!(log.written < ENDLESS / 4, "the peer wrote {}", log.written);
    // A few are fine.
    let (addr, peer) = one(vec![send(
        "\r\n\r\n\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )]);
    assert_eq!(outcome(get(addr)), Ok(b"ok".to_vec()));
    peer.join().expect("peer");
}

/// `head_limits(_, n)`: a head of `n` bytes is read, one of `n + 1` refused.
#[test]
fn the_head_limit_is_exact() {
    let _dog = util::Watchdog::new("head limit", secs(60));
    let head = |len: usize| {
        let start = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: ";
        let pad = len - start.len() - "\r\n\r\n".len();
        format!("{start}{}\r\n\r\nok", "v".repeat(pad))
    };
    for (len, expected) in [
        (64, Ok(b"ok".to_vec())),
        (65, Err(ErrorKind::LimitExceeded)),
    ] {
        let (addr, peer) = one(vec![send(&head(len))]);
        assert_eq!(
            outcome(get(addr).head_limits(10, 64)),
            expected,
            "{len} bytes"
        );
        peer.join().expect("peer");
    }
}

/// A body reader that yields more or fewer bytes than the length it declared fails the
/// request with `InvalidInput`: more would reach the server as the start of another request
/// (smuggled past whatever checked this one), fewer would leave both sides waiting.
#[test]
fn a_body_reader_that_breaks_its_declared_length_is_refused() {
    let _dog = util::Watchdog::new("body reader length", secs(60));
    for (declared, actual) in [(5, 5 + 40), (5, 3), (0, 1)] {
        let (addr, peer) = one(vec![
            Step::Hold(Duration::from_millis(300)),
            send("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ]);
        let body = std::io::Cursor::new(vec![b'x'; actual]);
        let request = Request::post(&format!("http://{addr}/"))
            .timeout(secs(10))
            .keep_alive(false)
            .body_reader(body, Some(declared));
        let start = Instant::now();
        let got = outcome(request);
        let _ = peer.join();
        assert_eq!(
            got,
            Err(ErrorKind::InvalidInput),
            "{actual} bytes for {declared}"
        );
        assert!(start.elapsed() < secs(5), "waited {:?}", start.elapsed());
    }
    // Exactly the declared length goes through.
    let (addr, peer) = one(vec![send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]);
    let request = Request::post(&format!("http://{addr}/"))
        .timeout(secs(10))
        .keep_alive(false)
        .body_reader(std::io::Cursor::new(vec![b'x'; 5]), Some(5));
    assert_eq!(outcome(request), Ok(b"ok".to_vec()));
    peer.join().expect("peer");
}

/// A redirect whose body runs until close (or a server trickles) is followed at once, as
/// Copas does, not once that body has ended or the receive timeout has passed.
#[test]
fn a_redirect_is_followed_without_waiting_for_its_body() {
    let _dog = util::Watchdog::new("redirect body", secs(60));
    let (addr, peer) = raw_peer::peer(vec![
        vec![
            Step::ReadRequest,
            send("HTTP/1.1 302 Found\r\nLocation: /next\r\n\r\nthe body goes on"),
            Step::Hold(secs(15)),
        ],
        vec![
            Step::ReadRequest,
            send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
    ]);
    let start = Instant::now();
    let got = outcome(Request::get(&format!("http://{addr}/")).timeout(secs(10)));
    let took = start.elapsed();
    let log = peer.join().expect("peer");
    assert_eq!(got, Ok(b"ok".to_vec()));
    assert_eq!(log.accepted, 2);
    assert!(took < secs(5), "the redirect waited {took:?}");
}

/// Reads one request head on `listener`'s next connection, answers `response`, and returns
/// the head.
fn record_one_request(listener: std::net::TcpListener, response: String) -> JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::Write;
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(secs(10))).expect("timeout");
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        conn.write_all(response.as_bytes()).expect("write");
        String::from_utf8_lossy(&head).into_owned()
    })
}

/// Credentials and a chosen `Host` set by the caller go to the origin the caller named,
/// and to others only if the redirect stays on it: a redirect to another port (another
/// origin) drops them.
#[test]
fn a_redirect_to_another_origin_drops_the_callers_credentials() {
    let _dog = util::Watchdog::new("redirect credentials", secs(60));
    let (second, second_addr) = util::local_listener();
    let (first, first_addr) = util::local_listener();
    let to_second = record_one_request(
        first,
        format!(
            "HTTP/1.1 302 Found\r\nLocation: http://{second_addr}/b\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    let at_second = record_one_request(
        second,
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
    );
    let got = outcome(
        Request::get(&format!("http://{first_addr}/a"))
            .timeout(secs(10))
            .header("Authorization", "Bearer secret")
            .header("Cookie", "session=secret")
            .header("X-Kept", "yes"),
    );
    let first_head = to_second.join().expect("first");
    let second_head = at_second.join().expect("second");
    assert_eq!(got, Ok(b"ok".to_vec()));
    assert!(
        first_head.contains("Authorization: Bearer secret"),
        "{first_head}"
    );
    assert!(
        first_head.contains("Cookie: session=secret"),
        "{first_head}"
    );
    assert!(!second_head.contains("secret"), "{second_head}");
    assert!(second_head.contains("X-Kept: yes"), "{second_head}");
}

/// `usize::MAX` in `head_limits` lifts a limit: more fields than fit on the stack used to
/// ask for room for `usize::MAX` of them (a capacity-overflow panic; a large finite value,
/// an allocation that aborts), and a head in pieces overflowed `max + 1` (a panic in debug
/// builds, a busy loop in release ones).
#[test]
fn head_limits_of_usize_max_lift_the_limits() {
    let _dog = util::Watchdog::new("head limits of usize::MAX", secs(30));
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
    for i in 0..40 {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    head.push_str("\r\nok");
    let (addr, peer) = one(vec![Step::Send(head.into_bytes())]);
    let got = outcome(get(addr).head_limits(usize::MAX, 1 << 20));
    peer.join().expect("peer");
    assert_eq!(got, Ok(b"ok".to_vec()));

    let (addr, peer) = one(vec![Step::Pieces {
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        cuts: vec![5],
        pause: true,
    }]);
    let got = outcome(get(addr).head_limits(100, usize::MAX));
    peer.join().expect("peer");
    assert_eq!(got, Ok(b"ok".to_vec()));
}

/// A keep-alive peer on `n` listeners of its own: each accepts one connection, reads one
/// request head, answers with a redirect to the next listener (the last with a 200), and
/// closes its end. Returns the first address and the thread.
fn redirect_chain(n: usize) -> (SocketAddr, JoinHandle<()>) {
    use std::io::Write;
    let listeners: Vec<_> = (0..n).map(|_| util::local_listener()).collect();
    let first = listeners[0].1;
    let next: Vec<Option<SocketAddr>> = (0..n).map(|i| listeners.get(i + 1).map(|l| l.1)).collect();
    let thread = std::thread::spawn(move || {
        for ((listener, _), next) in listeners.into_iter().zip(next) {
            let Ok((mut sock, _)) = listener.accept() else {
                return;
            };
            drop(listener);
            sock.set_read_timeout(Some(secs(5))).expect("timeout");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                match sock.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let reply = match next {
                Some(to) => format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://{to}/\r\nContent-Length: 0\r\n\r\n"
                ),
                None => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
            };
            let _ = sock.write_all(reply.as_bytes());
        }
    });
    (first, thread)
}

const POOL_CHILD: &str = "COPAS_TEST_POOL_CHILD";

/// A server names the ports a client visits (each redirect may name a new one), so the
/// per-thread pool of idle connections must be bounded as a whole: here 20 requests, each
/// through 6 ports, leave the client holding at most `POOL_MAX` descriptors. Run in a child
/// process, so that no other test's descriptors are counted.
#[test]
fn redirects_through_many_ports_leave_at_most_pool_max_descriptors() {
    if !util::is_child(POOL_CHILD) {
        util::assert_child_passes(
            "redirects_through_many_ports_leave_at_most_pool_max_descriptors",
            POOL_CHILD,
            "POOL-BOUNDED",
            secs(60),
        );
        return;
    }
    use copas::client::http::{MAX_REDIRECTS, POOL_MAX};
    const REQUESTS: usize = 20;
    let hops = MAX_REDIRECTS + 1;
    // The poller's three descriptors are made at its first use: before the count.
    util::make_dispatcher();
    let chains: Vec<_> = (0..REQUESTS).map(|_| redirect_chain(hops)).collect();
    // The peers' listeners are counted here and close once used.
    let before = util::fd_count();
    let mut threads = Vec::new();
    for (first, thread) in chains {
        let response = Request::get(&format!("http://{first}/"))
            .timeout(secs(5))
            .send()
            .expect("request");
        assert_eq!(response.body(), b"ok");
        threads.push(thread);
    }
    for thread in threads {
        thread.join().expect("peer");
    }
    let held = (util::fd_count() + REQUESTS * hops).saturating_sub(before);
    assert!(
        held <= POOL_MAX,
        "the client holds {held} descriptors after {REQUESTS} requests"
    );
    assert!(copas::client::http::close_idle_connections() <= POOL_MAX);
    println!("POOL-BOUNDED held={held}");
}

/// A request that goes out with `Connection: close` is the connection's last (RFC 9112
/// §9.6), whether the client sent the field (`keep_alive(false)`) or the caller did, in any
/// case and among other options: the connection is not pooled even when the server answers
/// without a `close` of its own, so the next request (a POST, which is not retried) goes on a
/// new connection rather than on one the server is about to close.
#[test]
fn a_request_sent_with_connection_close_leaves_its_connection_out_of_the_pool() {
    let _dog = util::Watchdog::new("connection close", secs(60));
    let closes: [fn(Request) -> Request; 3] = [
        |r| r.header("Connection", "close"),
        |r| r.header("connection", "TE, Close"),
        |r| r.keep_alive(false),
    ];
    for (i, close) in closes.iter().enumerate() {
        // The server honours the request's `close` without saying so, and ends the
        // connection only after a while.
        let peer = raw_peer::Peer::start(vec![
            vec![
                Step::ReadRequest,
                send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"),
                Step::Hold(secs(2)),
            ],
            vec![
                Step::ReadRequest,
                send("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"),
                Step::Hold(secs(2)),
            ],
        ]);
        let url = format!("http://{}/", peer.addr);
        let first = outcome(close(Request::get(&url).timeout(secs(5))));
        let second = outcome(Request::post(&url).body("payload").timeout(secs(5)));
        // Only the POST's connection is pooled.
        let pooled = copas::client::http::close_idle_connections();
        let log = peer.finish();
        assert_eq!(first, Ok(b"first".to_vec()), "case {i}");
        assert_eq!(second, Ok(b"second".to_vec()), "case {i}");
        assert_eq!((log.accepted, pooled), (2, 1), "case {i}");
    }
}

/// A body read from a reader is gone once sent: a redirect that would send the request again
/// with its body (307 and 308, and 301 and 302 for GET and HEAD) is returned as is, never
/// followed with an empty body in its place. A 303 (and a 301 or 302 of a POST) drops the
/// body and is followed; a body of bytes goes again.
#[test]
fn a_redirect_that_would_resend_a_consumed_reader_body_is_not_followed() {
    use copas::client::http::Redirect;
    let _dog = util::Watchdog::new("redirect reader body", secs(60));
    let reader = |r: Request| r.body_reader(std::io::Cursor::new(b"important".to_vec()), None);
    let sized = |r: Request| r.body_reader(std::io::Cursor::new(b"important".to_vec()), Some(9));
    let bytes = |r: Request| r.body("important");
    type Body = fn(Request) -> Request;
    // Method, redirect status, policy, body, the status the caller gets.
    let cases: [(&str, u16, Redirect, Body, u16); 11] = [
        ("GET", 307, Redirect::Safe, reader, 307),
        ("GET", 308, Redirect::Safe, reader, 308),
        ("GET", 301, Redirect::Safe, reader, 301),
        ("GET", 302, Redirect::Safe, sized, 302),
        ("HEAD", 302, Redirect::Safe, reader, 302),
        ("POST", 307, Redirect::All, reader, 307),
        ("GET", 303, Redirect::Safe, reader, 200),
        ("POST", 303, Redirect::Safe, sized, 200),
        ("POST", 302, Redirect::All, reader, 200),
        ("GET", 307, Redirect::Safe, bytes, 200),
        ("POST", 308, Redirect::All, bytes, 200),
    ];
    for (method, status, policy, body, expected) in cases {
        // Each answer closes its connection, so a followed redirect is a second connection.
        let peer = raw_peer::Peer::start(vec![
            vec![
                Step::ReadRequest,
                send(&format!(
                    "HTTP/1.1 {status} X\r\nLocation: /next\r\nContent-Length: 0\r\n\
                     Connection: close\r\n\r\n"
                )),
                Step::Shutdown,
                Step::Hold(secs(5)),
            ],
            vec![
                Step::ReadRequest,
                send("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                Step::Shutdown,
                Step::Hold(secs(5)),
            ],
        ]);
        let request = Request::new(method, &format!("http://{}/", peer.addr))
            .timeout(secs(5))
            .redirect(policy);
        let got = body(request)
            .send()
            .map(|r| r.status())
            .map_err(|e| e.kind());
        let log = peer.finish();
        let case = format!("{method} {status} {policy:?}");
        assert_eq!(got, Ok(expected), "{case}");
        let connections = if expected == 200 { 2 } else { 1 };
        assert_eq!(log.accepted, connections, "{case}");
    }
}

/// A peer that answers one request with `ok` and closes.
fn answers_once() -> raw_peer::Peer {
    raw_peer::Peer::start(vec![vec![
        Step::ReadRequest,
        send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
        Step::Shutdown,
        Step::Hold(secs(5)),
    ]])
}

/// The server frames a request's body by its `Content-Length` or `Transfer-Encoding`, so a
/// caller's field that does not describe the body is refused before anything is sent: the
/// bytes past a short `Content-Length` would reach the server as the start of the next
/// request on the pooled connection (smuggled), a longer one would leave both sides waiting,
/// and a `Transfer-Encoding` on a body not sent chunked would be read as chunks. Fields that
/// agree with the body go through, and a reader of unknown length held to the caller's
/// `Content-Length` fails as one held to a declared length does.
#[test]
fn a_callers_framing_fields_that_misdescribe_the_body_are_refused() {
    let _dog = util::Watchdog::new("request framing", secs(60));
    type Build = fn(Request) -> Request;
    fn reader(n: usize) -> std::io::Cursor<Vec<u8>> {
        std::io::Cursor::new(vec![b'x'; n])
    }
    let refused: [(&str, &str, Build); 13] = [
        ("Content-Length short of the bytes", "POST", |r| {
            r.header("Content-Length", "5")
                .body("helloPUT /admin HTTP/1.1\r\nX-Swallow: ")
        }),
        ("Content-Length past the bytes", "POST", |r| {
            r.header("Content-Length", "6").body("hello")
        }),
        ("Content-Length on no body", "GET", |r| {
            r.header("Content-Length", "5")
        }),
        ("Content-Length +5", "POST", |r| {
            r.header("Content-Length", "+5").body("hello")
        }),
        ("Content-Length list", "POST", |r| {
            r.header("Content-Length", "5, 5").body("hello")
        }),
        ("Content-Length not a number", "POST", |r| {
            r.header("Content-Length", "five").body("hello")
        }),
        ("two Content-Lengths", "POST", |r| {
            r.header("Content-Length", "5")
                .header("Content-Length", "6")
                .body("hello")
        }),
        ("Content-Length against a declared length", "POST", |r| {
            r.header("Content-Length", "6")
                .body_reader(reader(5), Some(5))
        }),
        ("Transfer-Encoding on bytes", "POST", |r| {
            r.header("Transfer-Encoding", "chunked").body("hello")
        }),
        ("Transfer-Encoding on a declared length", "POST", |r| {
            r.header("Transfer-Encoding", "chunked")
                .body_reader(reader(5), Some(5))
        }),
        ("Transfer-Encoding on no body", "GET", |r| {
            r.header("Transfer-Encoding", "chunked")
        }),
        ("Transfer-Encoding with Content-Length", "POST", |r| {
            r.header("Transfer-Encoding", "chunked")
                .header("Content-Length", "5")
                .body_reader(reader(5), None)
        }),
        ("Transfer-Encoding without chunked last", "POST", |r| {
            r.header("Transfer-Encoding", "chunked, gzip")
                .body_reader(reader(5), None)
        }),
    ];
    for (what, method, build) in refused {
        let peer = answers_once();
        let request = Request::new(method, &format!("http://{}/", peer.addr)).timeout(secs(5));
        let got = outcome(build(request));
        let log = peer.finish();
        assert_eq!(
            (got, log.accepted),
            (Err(ErrorKind::InvalidInput), 0),
            "{what}"
        );
    }
    type Outcome = Result<Vec<u8>, ErrorKind>;
    let sent: [(&str, Build, Outcome); 5] = [
        (
            "Content-Length of the bytes",
            |r| r.header("content-length", " 5 ").body("hello"),
            Ok(b"ok".to_vec()),
        ),
        (
            "Content-Length 0 on no body",
            |r| r.header("Content-Length", "0"),
            Ok(b"ok".to_vec()),
        ),
        (
            "Content-Length for a reader",
            |r| r.header("Content-Length", "5").body_reader(reader(5), None),
            Ok(b"ok".to_vec()),
        ),
        (
            "Transfer-Encoding for a reader",
            |r| {
                r.header("Transfer-Encoding", "gzip, Chunked")
                    .body_reader(reader(5), None)
            },
            Ok(b"ok".to_vec()),
        ),
        (
            "a reader past the caller's Content-Length",
            |r| {
                r.header("Content-Length", "5")
                    .body_reader(reader(45), None)
            },
            Err(ErrorKind::InvalidInput),
        ),
    ];
    for (what, build, expected) in sent {
        let peer = answers_once();
        let request = Request::post(&format!("http://{}/", peer.addr)).timeout(secs(5));
        let got = outcome(build(request));
        let log = peer.finish();
        assert_eq!((got, log.accepted), (expected, 1), "{what}");
    }
}

/// What the caller gives goes into the request head as is, so a header name that is not a
/// token (a colon or a space in it would make the server read another field), a value with
/// a control character (CR, LF, NUL, DEL…) or a method that is not a token is refused
/// before anything is sent. A tab or bytes past ASCII in a value, and an unusual method
/// that is a token, go through.
#[test]
fn header_names_and_methods_that_are_not_tokens_are_refused() {
    let _dog = util::Watchdog::new("header tokens", secs(60));
    let refused: [(&str, &str, &str); 12] = [
        ("GET", "X-Forwarded-For: 10.0.0.1, X-Whatever", "y"),
        ("GET", "X A", "y"),
        ("GET", "X-A\r\nX-Injected", "1"),
        ("GET", "X-\u{e9}", "y"),
        ("GET", "", "y"),
        ("GET", "X-A", "1\r\nX-Injected: 1"),
        ("GET", "X-A", "1\nX-Injected: 1"),
        ("GET", "X-A", "a\0b"),
        ("GET", "X-A", "a\x7fb"),
        ("GET", "X-A", "a\x0bb"),
        ("GET /admin HTTP/1.1\r\nX:", "X-A", "y"),
        ("G(ET", "X-A", "y"),
    ];
    for (method, name, value) in refused {
        let peer = answers_once();
        let request = Request::new(method, &format!("http://{}/", peer.addr))
            .header(name, value)
            .timeout(secs(5));
        let got = outcome(request);
        let log = peer.finish();
        assert_eq!(
            (got, log.accepted),
            (Err(ErrorKind::InvalidInput), 0),
            "{method:?} {name:?}: {value:?}"
        );
    }
    let peer = answers_once();
    let request = Request::new("M-SEARCH", &format!("http://{}/", peer.addr))
        .header("X-Odd_But.Token!", "a\tcaf\u{e9} b")
        .timeout(secs(5));
    let got = outcome(request);
    assert_eq!((got, peer.finish().accepted), (Ok(b"ok".to_vec()), 1));
}

/// A server that answers before it has read the body (here a 413) and closes, resetting the
/// connection under the body still being sent: its answer came first and is the result,
/// not the reset it caused (as curl reads it).
#[test]
fn an_answer_sent_before_the_body_was_read_is_the_result_not_the_reset() {
    let _dog = util::Watchdog::new("an early answer", secs(60));
    let (addr, peer) = peer(vec![vec![
        Step::ReadRequest,
        send("HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbig"),
    ]]);
    let response = Request::post(&format!("http://{addr}/upload"))
        .body(vec![b'z'; 8 * 1024 * 1024])
        .timeout(secs(10))
        .send()
        .map(|r| (r.status(), r.body().to_vec()))
        .map_err(|e| e.kind());
    let log = peer.join().expect("peer");
    assert_eq!(response, Ok((413, b"big".to_vec())));
    assert_eq!(log.accepted, 1);
    assert_eq!(copas::client::http::close_idle_connections(), 0);
}

/// A body source that yields `good` bytes, then, after `pause`, fails with `kind`.
struct FailingSource {
    good: usize,
    pause: Duration,
    kind: std::io::ErrorKind,
}

impl Read for FailingSource {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.good > 0 {
            let n = self.good.min(out.len());
            out[..n].fill(b'x');
            self.good -= n;
            return Ok(n);
        }
        std::thread::sleep(self.pause);
        Err(std::io::Error::new(self.kind, "the caller's source failed"))
    }
}

/// A server that answers `200 OK` on the request head alone (nginx's `return 200` does)
/// and keeps reading what follows for a while.
fn answers_on_the_head() -> (SocketAddr, JoinHandle<PeerLog>) {
    peer(vec![vec![
        Step::ReadRequest,
        send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        Step::Hold(secs(3)),
    ]])
}

/// The body's source is the caller's, not the server's: its failure fails the request with
/// `Io` (its own kind kept inside), even a `BrokenPipe` or `ConnectionReset`, which taken
/// for the server closing let an answer already sent stand for the request's, an upload
/// cut short reported as done. Its connection is not pooled.
#[test]
fn a_failing_body_reader_fails_the_request_even_when_the_server_answered_early() {
    let _dog = util::Watchdog::new("a failing body reader", secs(60));
    use std::io::ErrorKind as Io;
    for kind in [Io::BrokenPipe, Io::ConnectionReset, Io::TimedOut, Io::Other] {
        let (addr, server) = answers_on_the_head();
        let source = FailingSource {
            good: 100,
            pause: Duration::from_millis(200),
            kind,
        };
        let outcome = Request::post(&format!("http://{addr}/upload"))
            .body_reader(source, None)
            .timeout(secs(5))
            .send()
            .map(|r| r.status())
            .map_err(|e| (e.kind(), std::io::Error::from(e).kind()));
        assert_eq!(
            outcome,
            Err((ErrorKind::Io, kind)),
            "source failing with {kind:?}"
        );
        assert_eq!(copas::client::http::close_idle_connections(), 0);
        drop(server);
    }
}

/// A download cut short, relayed as an upload's body to a server that answers early: the
/// upload fails, where it returned the server's `200` with 99,900 of 100,000 bytes never
/// sent (the download's `Closed` was taken for the upload server's).
#[test]
fn relaying_a_download_cut_short_fails_the_upload() {
    let _dog = util::Watchdog::new("a relay cut short", secs(60));
    let (download, _download_server) = peer(vec![vec![
        Step::ReadRequest,
        send("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"),
        Step::Send(vec![b'y'; 100]),
        Step::Hold(Duration::from_millis(300)),
    ]]);
    let (_, body) = Request::get(&format!("http://{download}/file"))
        .timeout(secs(5))
        .stream()
        .expect("the download's head");
    let (upload, _upload_server) = answers_on_the_head();
    let outcome = Request::new("PUT", &format!("http://{upload}/copy"))
        .body_reader(body, Some(100_000))
        .timeout(secs(5))
        .send()
        .map(|r| r.status())
        .map_err(|e| e.kind());
    assert_eq!(outcome, Err(ErrorKind::Io));
}
