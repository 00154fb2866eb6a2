//! An HTTP/1.1 keep-alive "hello world" server: a line protocol on copas.
//!
//! ```text
//! cargo run --release --example http_hello            # listens on 127.0.0.1:9080
//! cargo run --release --example http_hello -- 9180    # or on the port you give
//! curl -v http://127.0.0.1:9080/
//! wrk -t1 -c50 -d5s http://127.0.0.1:9080/            # see docs/benchmarks.md
//! ```
//!
//! Each connection runs `serve`, a plain loop: read the request line and the headers with
//! `receive(Pattern::Line)` until the empty line, answer `hello world` with a
//! `Content-Length`, and go round again for the next request on the same connection. The
//! connection ends at end of stream, on `Connection: close`, or after an HTTP/1.0 request
//! that did not ask for keep-alive.
//!
//! A request body is read (and dropped) by its `Content-Length` only. A request with a
//! `Transfer-Encoding` (a chunked body, say) is answered `501 Not Implemented` and the
//! connection closed: read as if it had no body, its chunks would pass for requests. A
//! header line that is not a field (no colon, white space in the name) gets `400 Bad
//! Request`, as do conflicting lengths and endless headers.

use std::net::TcpListener;

use copas::{Pattern, Socket};

/// The port used when none is given on the command line.
const DEFAULT_PORT: u16 = 9080;

/// The whole response, sent with one `send`.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world";

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The answer to a body this server cannot find the end of (RFC 9112 §6.1: a server that
/// does not understand a transfer coding answers 501 and closes).
const NOT_IMPLEMENTED: &[u8] =
    b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Header lines one request may have. Each line is bounded already (`Pattern::Line` has
/// a limit); this bounds how long one peer can keep its request going.
const MAX_HEADERS: usize = 100;

/// How much of a request body is read at a time: bodies are read and dropped, so a large
/// one costs time, not memory.
const BODY_CHUNK: usize = 16 * 1024;

/// A request the server refuses with `400 Bad Request`.
fn bad_request(why: &str) -> copas::Error {
    copas::Error::with_message(copas::ErrorKind::Protocol, why.to_string())
}

/// What the headers of one request say about the connection.
struct Request {
    close: bool,
    body: u64,
    /// A `Content-Length` field came.
    length_seen: bool,
    /// A `Transfer-Encoding` field came.
    encoded: bool,
}

/// Reads one request head (request line and headers up to the empty line). `Ok(None)` at a
/// clean end of stream between requests.
fn read_request(sock: &mut Socket) -> copas::Result<Option<Request>> {
    let line = match sock.receive(Pattern::Line) {
        Ok(line) => line,
        Err(e) if e.kind() == copas::ErrorKind::Closed && e.partial().is_empty() => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    // HTTP/1.0 closes by default, HTTP/1.1 keeps the connection open.
    let mut req = Request {
        close: line.trim_ascii_end().ends_with(b"HTTP/1.0"),
        body: 0,
        length_seen: false,
        encoded: false,
    };
    for _ in 0..=MAX_HEADERS {
        let header = sock.receive(Pattern::Line)?;
        if header.is_empty() {
            return Ok(Some(req));
        }
        // A field line is a name, a colon and a value (RFC 9112 §5): a line without a colon,
        // a name with white space in it or before the colon, or a line folded onto the one
        // before (which starts with white space) is refused, not guessed at.
        let Some(colon) = header.iter().position(|&b| b == b':') else {
            return Err(bad_request("header line without a colon"));
        };
        let (name, value) = (&header[..colon], header[colon + 1..].trim_ascii());
        if name.is_empty() || name.iter().any(u8::is_ascii_whitespace) {
            return Err(bad_request("malformed header name"));
        }
        if name.eq_ignore_ascii_case(b"connection") {
            // A list of options (RFC 9110 §7.6.1): `close` among them wins.
            let mut options = value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
            if options.clone().any(|o| o.eq_ignore_ascii_case(b"close")) {
                req.close = true;
            } else if options.any(|o| o.eq_ignore_ascii_case(b"keep-alive")) {
                req.close = false;
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // Digits only (RFC 9110 §8.6: no sign, no spaces inside), and one length: two
            // that differ leave the body's end for the peer to pick.
            let length = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad_request("bad Content-Length"))?;
            if req.length_seen && req.body != length {
                return Err(bad_request("conflicting Content-Length fields"));
            }
            req.body = length;
            req.length_seen = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            req.encoded = true;
        }
    }
    Err(bad_request("too many header lines"))
}

/// Reads and drops a body of `len` bytes, a chunk at a time.
fn skip_body(sock: &mut Socket, mut len: u64) -> copas::Result<()> {
    while len > 0 {
        let want = len.min(BODY_CHUNK as u64) as usize;
        let got = sock.receivepartial(want)?.len() as u64;
        if got == 0 {
            // The end of the stream before the end of the body (`receivepartial` hands
            // out an empty read there, not an error).
            return Err(copas::Error::new(copas::ErrorKind::Closed));
        }
        len -= got;
    }
    Ok(())
}

fn serve(mut sock: Socket) {
    let _ = sock.set_nodelay(true);
    loop {
        let req = match read_request(&mut sock) {
            Ok(Some(req)) => req,
            Ok(None) => break,
            Err(e) => {
                // An over-long line, too many of them, a bad length: say so, then close.
                if matches!(
                    e.kind(),
                    copas::ErrorKind::LimitExceeded | copas::ErrorKind::Protocol
                ) {
                    let _ = sock.send(BAD_REQUEST);
                }
                break;
            }
        };
        // Its body has no length to skip by, and the connection cannot go on past it.
        if req.encoded {
            let _ = sock.send(NOT_IMPLEMENTED);
            break;
        }
        // A body (none for GET) is read and ignored.
        if skip_body(&mut sock, req.body).is_err() {
            break;
        }
        if sock.send(RESPONSE).is_err() || req.close {
            break;
        }
    }
    // Returning closes the connection.
}

fn main() -> copas::Result<()> {
    let port = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|_| {
            copas::Error::with_message(copas::ErrorKind::InvalidInput, format!("bad port {arg:?}"))
        })?,
        None => DEFAULT_PORT,
    };
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("http_hello listening on http://{}/", listener.local_addr()?);
    // Stdout may be a pipe (the benchmark reads the address from it): flush now.
    std::io::Write::flush(&mut std::io::stdout())?;
    copas::addserver(listener, serve)?;
    copas::run()
}
