//! HTTP/1.1 client, plain and over TLS (Copas `copas.http`), built on copas sockets.
//!
//! [`request`] fetches a URL; [`Request`] builds anything else: method, headers, a body from
//! bytes or from any [`Read`] (sent chunked when its length is unknown), timeouts, TLS
//! options and redirect policy. The response body comes back as bytes ([`Request::send`]),
//! into any [`Write`] ([`Request::send_to`]) or as a streaming [`Read`]
//! ([`Request::stream`]), so a large download needs no more memory than its buffers.
//!
//! Inside a coroutine only that coroutine waits on the network (many requests can be in
//! flight at once); from plain `main` the calls block the thread.
//!
//! Beyond Copas: certificates are verified by default, schemes are case-insensitive
//! (`HTTPS://` is https), and connections are kept alive: a small per-thread pool keeps up
//! to [`POOL_PER_HOST`] idle connections per scheme, host and port, and [`POOL_MAX`] in all,
//! for [`POOL_IDLE`]; [`close_idle_connections`] closes them at once.
//!
//! # Example
//!
//! ```no_run
//! let response = copas::client::http::request("http://127.0.0.1:8080/").unwrap();
//! println!("{} {}", response.status(), String::from_utf8_lossy(response.body()));
//! ```

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use url::Url;

use crate::native_tls::{Certificate, TlsConnector};
use crate::{Error, ErrorKind, Result, Socket};

use super::chunked::{is_token, ChunkedDecoder};
use crate::net::socket::find_byte;

/// The default timeout for connecting, sending and receiving (Copas `http.TIMEOUT`).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The default port of `http` URLs (Copas `http.PORT`).
pub const PORT: u16 = 80;
/// The default port of `https` URLs (Copas `http.SSLPORT`).
pub const SSLPORT: u16 = 443;
/// The `User-Agent` sent unless the request sets one (Copas `http.USERAGENT`).
pub const USERAGENT: &str = concat!("copas-rs/", env!("CARGO_PKG_VERSION"));
/// How many redirects are followed by default.
pub const MAX_REDIRECTS: usize = 5;
/// The default limit on the number of response header fields.
pub const MAX_HEADERS: usize = 100;
/// The default limit on the size of a response head (status line and header fields), and
/// on the trailer section of a chunked body.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The longest chunk-size line of a chunked body.
pub const MAX_CHUNK_LINE: usize = 4096;
/// The default limit on a response body collected into memory by [`Request::send`]
/// (streaming with [`Request::send_to`] or [`Request::stream`] has none).
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// The most [`Request::send`] reserves for a body on the word of its `Content-Length`.
const PRESIZE_LIMIT: u64 = 64 * 1024;

/// How much of the body [`Request::send_to`] reads before writing it to its destination.
const SEND_TO_CHUNK: usize = 16 * 1024;

/// How many interim (1xx) responses may come before the final one.
const MAX_INTERIM_RESPONSES: usize = 16;

/// How long a request with `Expect: 100-continue` waits for the server's `100 Continue`
/// (or its refusal) before sending the body anyway, as curl does: servers that ignore the
/// field never answer before the body.
pub const CONTINUE_WAIT: Duration = Duration::from_secs(1);
pub use super::pool::{close_idle_connections, POOL_IDLE, POOL_MAX, POOL_PER_HOST};

/// Which redirects a request follows (Copas's `redirect` field).
///
/// A redirect to another origin (scheme, host or port) drops the `Authorization`,
/// `Proxy-Authorization`, `Cookie` and `Host` fields the caller set, and credentials in the
/// first URL: they were for the origin the caller named. (LuaSocket keeps them.)
///
/// A body read from a reader ([`Request::body_reader`]) is gone once sent, so a redirect
/// that would send it again — 307 and 308, and 301 and 302 for GET and HEAD — is not
/// followed whatever the policy: the 3xx response is returned as is (Copas follows no
/// request with a body source). A 303 drops the body, and is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redirect {
    /// Follow none: a 3xx response is returned as is (Copas `redirect = false`).
    None,
    /// The default: follow 301/302/303/307/308 for GET and HEAD, and a 303 for any method
    /// (as a GET); never from https to http.
    #[default]
    Safe,
    /// Also follow redirects of other methods (301/302 turn into GET, 307/308 resend the
    /// body when it is bytes) and from https to http (Copas `redirect = "all"`).
    All,
}

enum Body {
    Empty,
    Bytes(Vec<u8>),
    Reader(Box<dyn Read>, Option<u64>),
}

/// An HTTP request being built; [`send`](Request::send), [`send_to`](Request::send_to) or
/// [`stream`](Request::stream) it (Copas `http.request{...}`).
///
/// # Example
///
/// ```no_run
/// use copas::client::http::Request;
/// use std::time::Duration;
///
/// let response = Request::post("http://127.0.0.1:8080/echo-body")
///     .header("Content-Type", "text/plain")
///     .body("hello")
///     .timeout(Duration::from_secs(5))
///     .send()
///     .unwrap();
/// assert_eq!(response.status(), 200);
/// ```
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Body,
    connect_timeout: Option<Duration>,
    send_timeout: Option<Duration>,
    receive_timeout: Option<Duration>,
    redirect: Redirect,
    max_redirects: usize,
    root: Option<Certificate>,
    connector: Option<TlsConnector>,
    max_headers: usize,
    max_head_bytes: usize,
    max_body: u64,
    keep_alive: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// Fetches `url` with GET and returns the response with its body (Copas
/// `http.request(url)`). See [`Request`] for everything else.
///
/// # Errors
///
/// As [`Request::send`].
///
/// # Example
///
/// ```no_run
/// let r = copas::client::http::request("http://127.0.0.1:8080/index.html").unwrap();
/// assert_eq!(r.status(), 200);
/// ```
pub fn request(url: &str) -> Result<Response> {
    Request::get(url).send()
}

impl Request {
    /// A request with `method` (sent as given, e.g. `"GET"`, `"PUT"`) for `url`. A method
    /// that is not a token, as a header name must be, makes sending fail with
    /// [`ErrorKind::InvalidInput`].
    ///
    /// ```
    /// let r = copas::client::http::Request::new("OPTIONS", "http://127.0.0.1/");
    /// # drop(r);
    /// ```
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Body::Empty,
            connect_timeout: Some(TIMEOUT),
            send_timeout: Some(TIMEOUT),
            receive_timeout: Some(TIMEOUT),
            redirect: Redirect::Safe,
            max_redirects: MAX_REDIRECTS,
            root: None,
            connector: None,
            max_headers: MAX_HEADERS,
            max_head_bytes: MAX_HEAD_BYTES,
            max_body: MAX_BODY_BYTES,
            keep_alive: true,
        }
    }

    /// A GET request for `url`.
    ///
    /// ```
    /// let r = copas::client::http::Request::get("http://127.0.0.1/");
    /// # drop(r);
    /// ```
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// A HEAD request for `url` (the response has no body).
    ///
    /// ```
    /// let r = copas::client::http::Request::head("http://127.0.0.1/");
    /// # drop(r);
    /// ```
    pub fn head(url: &str) -> Request {
        Request::new("HEAD", url)
    }

    /// A POST request for `url`; give it a [`body`](Request::body).
    ///
    /// ```
    /// let r = copas::client::http::Request::post("http://127.0.0.1/").body("a=1");
    /// # drop(r);
    /// ```
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// Adds a header field (several with the same name are all sent). A field named like
    /// one the client sets (`Host`, `User-Agent`, `Connection`, `Content-Length`,
    /// `Transfer-Encoding`) replaces the client's; a `Connection` field that lists `close`
    /// keeps the connection out of the pool, as [`keep_alive(false)`](Request::keep_alive)
    /// does. A `Content-Length` or `Transfer-Encoding` field must agree with the body (see
    /// [`send`](Request::send)'s errors): the server frames the body by it. A name that is
    /// not a token (RFC 9110: letters, digits and ``!#$%&'*+-.^_`|~``, so no colon, space,
    /// CR or LF) or a value with a control character other than tab (CR, LF, NUL…) makes
    /// the request fail with [`ErrorKind::InvalidInput`] before anything is sent.
    ///
    /// `Expect: 100-continue` on a request with a body sends the head alone and holds the
    /// body until the server's `100 Continue`, or [`CONTINUE_WAIT`] without a word (servers
    /// that ignore the field). A server that answers at once with a final status (a `413`
    /// for a body too large, a `401`) gets no body at all; that response is the request's,
    /// and its connection is not reused.
    ///
    /// ```
    /// let r = copas::client::http::Request::get("http://127.0.0.1/").header("Accept", "*/*");
    /// # drop(r);
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The body, as bytes (sent with a `Content-Length`).
    ///
    /// ```
    /// let r = copas::client::http::Request::post("http://127.0.0.1/").body(vec![1u8, 2, 3]);
    /// # drop(r);
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Body::Bytes(body.into());
        self
    }

    /// The body, read from `reader` while sending: with a `Content-Length` when `length` is
    /// given (the reader must then yield exactly that many bytes: more or fewer fail the
    /// request with [`ErrorKind::InvalidInput`] and close its connection), chunked otherwise.
    /// A `Content-Length` field set with [`header`](Request::header) gives the length when
    /// `length` is `None`, and must equal it when given. An error of `reader` fails the
    /// request with [`ErrorKind::Io`], whatever its kind, and closes its connection.
    ///
    /// ```
    /// let file = std::io::Cursor::new(vec![0u8; 1000]);
    /// let r = copas::client::http::Request::post("http://127.0.0.1/").body_reader(file, None);
    /// # drop(r);
    /// ```
    pub fn body_reader(mut self, reader: impl Read + 'static, length: Option<u64>) -> Request {
        self.body = Body::Reader(Box::new(reader), length);
        self
    }

    /// Sets the connect, send and receive timeouts at once (default [`TIMEOUT`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// let r = copas::client::http::Request::get("http://127.0.0.1/").timeout(Duration::from_secs(5));
    /// # drop(r);
    /// ```
    pub fn timeout(self, timeout: Duration) -> Request {
        self.timeouts(Some(timeout), Some(timeout), Some(timeout))
    }

    /// Sets the connect (TLS handshake included), send and receive timeouts separately
    /// (Copas's timeout table); `None` waits forever. The send and receive timeouts apply
    /// to each operation, not to the whole request. The response head is one operation,
    /// however the server splits it: it must arrive whole within the receive timeout (each
    /// interim `1xx` head within its own). So must each read of a chunked body, its
    /// chunk-size line and, at its end, the whole trailer section included.
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = Some(Duration::from_secs(2));
    /// let r = copas::client::http::Request::get("http://127.0.0.1/").timeouts(s, s, None);
    /// # drop(r);
    /// ```
    pub fn timeouts(
        mut self,
        connect: Option<Duration>,
        send: Option<Duration>,
        receive: Option<Duration>,
    ) -> Request {
        self.connect_timeout = connect;
        self.send_timeout = send;
        self.receive_timeout = receive;
        self
    }

    /// Which redirects to follow (default [`Redirect::Safe`]).
    ///
    /// ```
    /// use copas::client::http::{Redirect, Request};
    /// let r = Request::get("http://127.0.0.1/").redirect(Redirect::None);
    /// # drop(r);
    /// ```
    pub fn redirect(mut self, policy: Redirect) -> Request {
        self.redirect = policy;
        self
    }

    /// How many redirects to follow at most (default [`MAX_REDIRECTS`]); one more is an
    /// [`ErrorKind::LimitExceeded`] error.
    ///
    /// ```
    /// let r = copas::client::http::Request::get("http://127.0.0.1/").max_redirects(2);
    /// # drop(r);
    /// ```
    pub fn max_redirects(mut self, max: usize) -> Request {
        self.max_redirects = max;
        self
    }

    /// Trusts `certificate` as a root in addition to the system's (for https).
    /// Verification stays on.
    ///
    /// ```no_run
    /// use copas::native_tls::Certificate;
    /// let ca = Certificate::from_pem(&std::fs::read("ca.pem").unwrap()).unwrap();
    /// let r = copas::client::http::Request::get("https://localhost/").root_certificate(ca);
    /// # drop(r);
    /// ```
    pub fn root_certificate(mut self, certificate: Certificate) -> Request {
        self.root = Some(certificate);
        self
    }

    /// Uses `connector` for https (client certificates, protocol versions…); it replaces
    /// [`root_certificate`](Request::root_certificate). Connections made with a custom
    /// connector are not pooled.
    ///
    /// ```
    /// let c = copas::native_tls::TlsConnector::new().unwrap();
    /// let r = copas::client::http::Request::get("https://localhost/").tls_connector(c);
    /// # drop(r);
    /// ```
    pub fn tls_connector(mut self, connector: TlsConnector) -> Request {
        self.connector = Some(connector);
        self
    }

    /// Limits on the response head: at most `max_headers` fields and `max_bytes` bytes
    /// (defaults [`MAX_HEADERS`], [`MAX_HEAD_BYTES`]); beyond either the request fails with
    /// [`ErrorKind::LimitExceeded`]. `usize::MAX` lifts a limit (the trailer of a chunked
    /// body is held to `max_bytes` too). The least limits are 1 field and 16 bytes: smaller
    /// values are taken as those.
    ///
    /// ```
    /// let r = copas::client::http::Request::get("http://127.0.0.1/").head_limits(20, 8192);
    /// # drop(r);
    /// ```
    pub fn head_limits(mut self, max_headers: usize, max_bytes: usize) -> Request {
        self.max_headers = max_headers.max(1);
        // Room to add the line ending's bytes to the limit without overflow: `usize::MAX`
        // asks for no limit, and gets the largest a buffer can be.
        self.max_head_bytes = max_bytes.clamp(16, isize::MAX as usize);
        self
    }

    /// The largest response body [`send`](Request::send) collects into memory (default
    /// [`MAX_BODY_BYTES`]); a longer one fails with [`ErrorKind::LimitExceeded`] — at once
    /// when its `Content-Length` says so, else once that many bytes have come. Streaming
    /// with [`send_to`](Request::send_to) or [`stream`](Request::stream) is not limited.
    ///
    /// ```
    /// let r = copas::client::http::Request::get("http://127.0.0.1/").max_body(1 << 20);
    /// # drop(r);
    /// ```
    pub fn max_body(mut self, max: u64) -> Request {
        self.max_body = max;
        self
    }

    /// Whether the connection may be kept for later requests (default `true`); `false`
    /// sends `Connection: close` and neither takes from nor gives to the pool.
    ///
    /// ```
    /// let r = copas::client::http::Request::get("http://127.0.0.1/").keep_alive(false);
    /// # drop(r);
    /// ```
    pub fn keep_alive(mut self, keep: bool) -> Request {
        self.keep_alive = keep;
        self
    }

    /// Sends the request, follows redirects, and returns the response with its whole body
    /// in memory. A server that answers before it has read the whole body and closes (a
    /// 413 to a large upload), resetting the connection under the body, gives that answer,
    /// not the reset.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`], before anything is sent, for a URL that does not parse,
    /// an unknown scheme, a method or header name that is not a token, a header value with
    /// a control character other than tab (CR, LF, NUL…), a `Content-Length` field that is
    /// not the body's length in decimal digits, or a `Transfer-Encoding` field on anything
    /// but a [`body_reader`](Request::body_reader) of unknown length (the one body sent
    /// chunked), beside a `Content-Length`, or without `chunked` last; the connection's
    /// errors ([`ErrorKind::Refused`], [`ErrorKind::HostNotFound`], [`ErrorKind::Tls`],
    /// [`ErrorKind::Timeout`], [`ErrorKind::Closed`]…, also for a body cut short: never a
    /// short body reported as complete); [`ErrorKind::Protocol`] for a malformed response
    /// (bad status line or status code outside 100–599, bad header syntax, bad chunk,
    /// conflicting or invalid `Content-Length`); [`ErrorKind::LimitExceeded`] for a head,
    /// chunk line or trailer past its limit, a body past [`max_body`](Request::max_body),
    /// more than 16 interim (1xx) responses or too many redirects; [`ErrorKind::Rejected`]
    /// (with the redirect's code) for a redirect from https to http, with Copas's message
    /// `"Unallowed insecure redirect https to http"`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// let r = copas::client::http::Request::get("http://127.0.0.1:8080/").send().unwrap();
    /// println!("{}", r.status());
    /// ```
    pub fn send(self) -> Result<Response> {
        let max = self.max_body;
        let (mut response, mut reader) = self.stream()?;
        let too_long = || {
            Error::with_message(
                ErrorKind::LimitExceeded,
                format!("response body longer than {max} bytes"),
            )
        };
        if matches!(reader.framing, Framing::Length(n) if n > max) {
            return Err(too_long());
        }
        let mut body = Vec::new();
        if let Framing::Length(n) = reader.framing {
            // Room for a declared length at once, up to a bound: the declaration is the
            // peer's word, and the bytes may never come.
            body.reserve(n.min(PRESIZE_LIMIT) as usize);
        }
        (&mut reader)
            .take(max.saturating_add(1))
            .read_to_end(&mut body)
            .map_err(Error::from)?;
        if body.len() as u64 > max {
            return Err(too_long());
        }
        response.trailers = reader.trailers().to_vec();
        response.body = body;
        Ok(response)
    }

    /// Like [`send`](Request::send), writing the body into `out` instead; the returned
    /// response has an empty body.
    ///
    /// # Errors
    ///
    /// As [`send`](Request::send), and `out`'s errors (as [`ErrorKind::Io`]).
    ///
    /// # Example
    ///
    /// ```no_run
    /// let mut file = std::fs::File::create("index.html").unwrap();
    /// copas::client::http::Request::get("http://127.0.0.1:8080/").send_to(&mut file).unwrap();
    /// ```
    pub fn send_to(self, out: &mut dyn Write) -> Result<Response> {
        let (mut response, mut reader) = self.stream()?;
        // Not `io::copy`: the body's errors and `out`'s must stay apart.
        let mut buf = vec![0; SEND_TO_CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from(e)),
            };
            out.write_all(&buf[..n])
                .map_err(|e| super::callers_io_error(e, "writing the body to its destination"))?;
        }
        response.trailers = reader.trailers().to_vec();
        Ok(response)
    }

    /// Sends the request and returns the response head (empty body) with a [`BodyReader`]
    /// that streams the body: memory stays bounded whatever its size. Read it to its end
    /// for the connection to go back to the pool; dropping it earlier closes the connection.
    ///
    /// # Errors
    ///
    /// As [`send`](Request::send); reading the body gives the body's errors as
    /// [`io::Error`]s that convert back into copas [`Error`]s.
    ///
    /// # Example
    ///
    /// ```no_run
    /// let (response, mut body) = copas::client::http::Request::get("http://127.0.0.1:8080/big")
    ///     .stream()
    ///     .unwrap();
    /// let n = std::io::copy(&mut body, &mut std::io::sink()).unwrap();
    /// println!("{} bytes, status {}", n, response.status());
    /// ```
    pub fn stream(mut self) -> Result<(Response, BodyReader)> {
        // What the caller gives goes into the head as is: a name with a colon or a space,
        // or a CR or LF anywhere, would make the server read other fields or requests.
        for (n, v) in &self.headers {
            if !is_token(n) || !is_field_value(v) {
                return Err(Error::with_message(
                    ErrorKind::InvalidInput,
                    format!("invalid header field {n:?}"),
                ));
            }
        }
        if !is_token(&self.method) {
            return Err(Error::with_message(
                ErrorKind::InvalidInput,
                "invalid method",
            ));
        }
        self.check_framing()?;
        let mut url = parse_url(&self.url)?;
        let mut redirects = 0;
        loop {
            let (response, mut reader) = self.exchange(&url)?;
            let Some(next) = self.redirect_target(&url, &response)? else {
                return Ok((response, reader));
            };
            if redirects >= self.max_redirects {
                return Err(Error::with_message(
                    ErrorKind::LimitExceeded,
                    format!("more than {} redirects", self.max_redirects),
                ));
            }
            redirects += 1;
            reader.drain();
            if drops_body(response.status, &self.method) {
                if self.method != "HEAD" {
                    self.method = "GET".to_string();
                }
                self.body = Body::Empty;
                self.headers.retain(|(n, _)| {
                    !n.eq_ignore_ascii_case("content-length")
                        && !n.eq_ignore_ascii_case("content-type")
                        && !n.eq_ignore_ascii_case("transfer-encoding")
                });
            }
            if next.origin() != url.origin() {
                // Credentials and a chosen Host were meant for the origin the caller named,
                // not wherever it redirects to (curl's CVE-2018-1000007).
                self.headers.retain(|(n, _)| !is_origin_bound(n));
            }
            url = next;
        }
    }

    /// Checks the caller's `Content-Length` and `Transfer-Encoding` fields against the
    /// body, before anything is sent: the server frames the body by them, so a body longer
    /// than they say would have its extra bytes read as the start of another request on the
    /// connection (request smuggling), and a shorter one would leave both sides waiting. A
    /// reader of unknown length takes the caller's `Content-Length` as its declared length.
    fn check_framing(&mut self) -> Result<()> {
        let invalid = |message: String| Err(Error::with_message(ErrorKind::InvalidInput, message));
        let mut length = None;
        let mut coded = None;
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case("content-length") {
                let digits = value.trim();
                let n = match digits.parse::<u64>() {
                    Ok(n) if digits.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => return invalid(format!("invalid Content-Length {value:?}")),
                };
                if length.is_some_and(|l| l != n) {
                    return invalid("conflicting Content-Length fields".to_string());
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                coded = Some(value);
            }
        }
        if let Some(codings) = coded {
            // Only a reader of unknown length goes out chunked; anything else would not be
            // framed the way the field says.
            let last = codings.rsplit(',').next().unwrap_or("").trim();
            if length.is_some()
                || !matches!(self.body, Body::Reader(_, None))
                || !last.eq_ignore_ascii_case("chunked")
            {
                return invalid(format!(
                    "Transfer-Encoding {codings:?} is only for a body_reader of unknown length, \
                     chunked last and without Content-Length"
                ));
            }
        }
        let Some(length) = length else {
            return Ok(());
        };
        let actual = match &mut self.body {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Reader(_, Some(n)) => *n,
            Body::Reader(_, declared @ None) => {
                *declared = Some(length);
                length
            }
        };
        if actual != length {
            return invalid(format!(
                "Content-Length {length} for a body of {actual} bytes"
            ));
        }
        Ok(())
    }

    /// Where a response redirects to, if this request follows it.
    fn redirect_target(&self, url: &Url, response: &Response) -> Result<Option<Url>> {
        let status = response.status;
        if !matches!(status, 301 | 302 | 303 | 307 | 308) || self.redirect == Redirect::None {
            return Ok(None);
        }
        let Some(location) = response.header("location").filter(|l| !l.is_empty()) else {
            return Ok(None);
        };
        // Only a body we still have can go again: a reader's was consumed by the first send.
        if !drops_body(status, &self.method) && matches!(self.body, Body::Reader(..)) {
            return Ok(None);
        }
        let safe_method = self.method == "GET" || self.method == "HEAD";
        let follow = match self.redirect {
            Redirect::None => false,
            Redirect::Safe => safe_method || status == 303,
            Redirect::All => true,
        };
        if !follow {
            return Ok(None);
        }
        let next = url.join(location).map_err(|e| {
            Error::with_message(
                ErrorKind::Protocol,
                format!("bad Location {location:?}: {e}"),
            )
        })?;
        let scheme = next.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                format!("redirect to unsupported scheme {scheme:?}"),
            ));
        }
        if url.scheme() == "https" && scheme == "http" && self.redirect != Redirect::All {
            return Err(Error::rejected(
                status,
                "Unallowed insecure redirect https to http",
            ));
        }
        Ok(Some(next))
    }

    /// One request and its response head, on a pooled or fresh connection.
    fn exchange(&mut self, url: &Url) -> Result<(Response, BodyReader)> {
        let target = Target::of(url, self)?;
        let replayable = !matches!(self.body, Body::Reader(..));
        let idempotent = matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        );
        // A request that goes out with `Connection: close` must be the connection's last
        // (RFC 9112 §9.6): it neither takes a pooled connection nor gives its own back.
        let pooled = self.connector.is_none() && !self.closes_connection();
        if pooled {
            if let Some(sock) = super::pool::take(&target.key) {
                match self.exchange_on(sock, url, &target, pooled) {
                    Ok(r) => return Ok(r),
                    // A reused connection the server had closed: once more on a fresh one.
                    Err((e, nothing_back)) => {
                        let stale =
                            nothing_back && matches!(e.kind(), ErrorKind::Closed | ErrorKind::Io);
                        if !(stale && replayable && idempotent) {
                            return Err(e);
                        }
                    }
                }
            }
        }
        let sock = self.open(&target)?;
        self.exchange_on(sock, url, &target, pooled)
            .map_err(|(e, _)| e)
    }

    /// Whether the request goes out with `Connection: close`: the client's own (without
    /// keep-alive), or a caller's `Connection` field that lists `close`.
    fn closes_connection(&self) -> bool {
        !self.keep_alive
            || lists_close(
                self.headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                    .map(|(_, v)| v.as_str()),
            )
    }

    fn open(&self, target: &Target) -> Result<Socket> {
        let addr = (target.host.as_str(), target.port);
        let sock = if target.tls {
            let built;
            let connector = match &self.connector {
                Some(c) => c,
                None => {
                    let mut b = TlsConnector::builder();
                    if let Some(root) = &self.root {
                        b.add_root_certificate(root.clone());
                    }
                    built = b.build().map_err(|e| {
                        Error::with_message(ErrorKind::Tls, format!("TLS setup: {e}"))
                    })?;
                    &built
                }
            };
            match target.ip {
                Some(ip) => crate::connect_tls(
                    SocketAddr::new(ip, target.port),
                    &target.host,
                    connector,
                    self.connect_timeout,
                )?,
                None => crate::connect_tls(addr, &target.host, connector, self.connect_timeout)?,
            }
        } else {
            match target.ip {
                Some(ip) => crate::connect(SocketAddr::new(ip, target.port), self.connect_timeout)?,
                None => crate::connect(addr, self.connect_timeout)?,
            }
        };
        let _ = sock.set_nodelay(true);
        Ok(sock)
    }

    /// Sends the request on `sock` and reads the response head; the connection goes back to
    /// the pool after the body only when `pooled` and the response allows. On failure,
    /// tells whether no byte of a response had come back.
    fn exchange_on(
        &mut self,
        mut sock: Socket,
        url: &Url,
        target: &Target,
        pooled: bool,
    ) -> std::result::Result<(Response, BodyReader), (Error, bool)> {
        sock.settimeouts(
            self.connect_timeout,
            self.send_timeout,
            self.receive_timeout,
        );
        // A server may answer before it has read the whole body (a 413, a 401) and close the
        // connection, which cuts the send short: its answer is already here, and is what the
        // caller needs, not the reset it caused. Without one the send's error stands (and a
        // stale pooled connection, which has no answer, is tried again on a fresh one).
        let mut pooled = pooled;
        // With `Expect: 100-continue` the body waits for the server's word (RFC 9110
        // §10.1.1): a refusal (a 413, a 401) then costs the head alone.
        let mut body_owed = self.expects_continue();
        let sent = if body_owed {
            self.send_head(&mut sock, url, target)
        } else {
            self.send_request(&mut sock, url, target)
        };
        if let Err(e) = sent {
            if e.kind() != ErrorKind::Closed || !answered_early(&mut sock) {
                return Err((e, true));
            }
            pooled = false;
        }
        let head_only = self.method == "HEAD";
        let mut first = true;
        for _ in 0..=MAX_INTERIM_RESPONSES {
            if body_owed
                && heard_within(&mut sock, CONTINUE_WAIT)
                    .map_err(|e| (e, first))?
                    .is_none()
            {
                // No word from the server (an end of stream is one, for the head reader to
                // report): it ignores the field.
                body_owed = false;
                self.send_owed_body(&mut sock, &mut pooled)
                    .map_err(|e| (e, first))?;
            }
            let head = read_head(&mut sock, self.max_head_bytes).map_err(|e| {
                let nothing = first && e.partial().is_empty();
                (e, nothing)
            })?;
            first = false;
            let response = parse_head(&head, self.max_headers, url).map_err(|e| (e, false))?;
            let status = response.status;
            if status == 100 && body_owed {
                body_owed = false;
                self.send_owed_body(&mut sock, &mut pooled)
                    .map_err(|e| (e, false))?;
                continue;
            }
            if (100..200).contains(&status) && status != 101 {
                continue; // 100 Continue and other interim responses
            }
            if body_owed {
                // Answered without the body: the server may still read a body's worth of
                // bytes before a next request, so the connection goes no further.
                pooled = false;
            }
            let framing = if head_only || status == 204 || status == 304 || status < 200 {
                Framing::Length(0)
            } else {
                framing(&response).map_err(|e| (e, false))?
            };
            // Transfer-Encoding with Content-Length may be a smuggling attempt (RFC 9112
            // §6.3): the chunked framing wins, and the connection is not trusted again.
            let ambiguous = response.header("transfer-encoding").is_some()
                && response.header("content-length").is_some();
            let reusable = pooled
                && response.version == 1
                && !ambiguous
                && !matches!(framing, Framing::UntilClose)
                && !lists_close(response.header_values("connection"))
                && status != 101;
            let key = if reusable {
                Some(target.key.clone())
            } else {
                None
            };
            let mut reader = BodyReader {
                sock: Some(sock),
                framing,
                chunked: ChunkedDecoder::new(self.max_headers, self.max_head_bytes),
                key,
                done: false,
                failed: false,
            };
            reader.finish_if_done();
            return Ok((response, reader));
        }
        Err((
            Error::with_message(
                ErrorKind::LimitExceeded,
                format!("more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"),
            ),
            false,
        ))
    }

    /// The request head.
    fn build_head(&self, url: &Url, target: &Target) -> Result<Vec<u8>> {
        // Built piece by piece: a `format!` per line was several thousand instructions of
        // every request.
        let mut head = String::with_capacity(256);
        head.push_str(&self.method);
        head.push(' ');
        match url.path() {
            "" => head.push('/'),
            path => head.push_str(path),
        }
        if let Some(q) = url.query() {
            head.push('?');
            head.push_str(q);
        }
        head.push_str(" HTTP/1.1\r\n");
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        if !has("host") {
            push_field(&mut head, "Host", &target.host_header);
        }
        if !has("user-agent") {
            push_field(&mut head, "User-Agent", USERAGENT);
        }
        if !self.keep_alive && !has("connection") {
            head.push_str("Connection: close\r\n");
        }
        if !url.username().is_empty() && !has("authorization") {
            use base64::Engine as _;
            let user = percent_decode(url.username());
            let pass = percent_decode(url.password().unwrap_or(""));
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            head.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        match &self.body {
            Body::Empty => {
                if matches!(self.method.as_str(), "POST" | "PUT" | "PATCH")
                    && !has("content-length")
                {
                    head.push_str("Content-Length: 0\r\n");
                }
            }
            Body::Bytes(b) => {
                if !has("content-length") {
                    push_field(&mut head, "Content-Length", &decimal(b.len() as u64));
                }
            }
            Body::Reader(_, Some(n)) => {
                if !has("content-length") {
                    push_field(&mut head, "Content-Length", &decimal(*n));
                }
            }
            // `check_framing` gave a reader the caller's `Content-Length` as its length.
            Body::Reader(_, None) => {
                if !has("transfer-encoding") {
                    head.push_str("Transfer-Encoding: chunked\r\n");
                }
            }
        }
        for (n, v) in &self.headers {
            push_field(&mut head, n, v);
        }
        head.push_str("\r\n");
        Ok(head.into_bytes())
    }

    /// Sends the request head only; the body goes with [`Request::send_owed_body`].
    fn send_head(&mut self, sock: &mut Socket, url: &Url, target: &Target) -> Result<()> {
        let head = self.build_head(url, target)?;
        sock.send(&head)?;
        Ok(())
    }

    /// Sends the body of a request whose head went out alone. A server that answers and
    /// closes while it goes has its answer read, as for a whole request (and the
    /// connection is not `pooled` again).
    fn send_owed_body(&mut self, sock: &mut Socket, pooled: &mut bool) -> Result<()> {
        match self.send_body(sock, None) {
            Err(e) if e.kind() == ErrorKind::Closed && answered_early(sock) => {
                *pooled = false;
                Ok(())
            }
            sent => sent,
        }
    }

    /// Sends the whole request.
    fn send_request(&mut self, sock: &mut Socket, url: &Url, target: &Target) -> Result<()> {
        let head = self.build_head(url, target)?;
        self.send_body(sock, Some(&head))
    }

    /// Whether the caller asked for `Expect: 100-continue` on a request with a body.
    fn expects_continue(&self) -> bool {
        !matches!(self.body, Body::Empty)
            && self.headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("expect") && v.trim().eq_ignore_ascii_case("100-continue")
            })
    }

    /// Sends the body, after `head` when given (with it in one system call when it can).
    fn send_body(&mut self, sock: &mut Socket, head: Option<&[u8]>) -> Result<()> {
        let head = head.unwrap_or_default();
        match &mut self.body {
            Body::Empty => {
                if !head.is_empty() {
                    sock.send(head)?;
                }
            }
            Body::Bytes(b) => {
                // One system call for head and body, neither copied.
                sock.send_vectored(&[IoSlice::new(head), IoSlice::new(b)])?;
            }
            Body::Reader(r, length) => {
                if !head.is_empty() {
                    sock.send(head)?;
                }
                let mut buf = vec![0u8; 16 * 1024];
                // With a declared length: what the reader still owes. It is read no further
                // than that, then one byte past it to see that it has ended: a reader that
                // yields more or less than it declared would put the server's framing out
                // of step with ours (the extra bytes taken as a next request).
                let mut owed = *length;
                loop {
                    let want =
                        owed.map_or(buf.len(), |owed| owed.clamp(1, buf.len() as u64) as usize);
                    let n = match r.read(&mut buf[..want]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // The caller's source, not the connection: `Io` whatever its kind,
                        // so that a `BrokenPipe` from it is neither taken for the server
                        // closing (which lets an early answer stand for the request's) nor
                        // for any other failure of the server's.
                        Err(e) => {
                            return Err(super::callers_io_error(
                                e,
                                "reading the body from its source",
                            ))
                        }
                    };
                    if let Some(owed) = owed.as_mut() {
                        check_body_length(n, *owed)?;
                        *owed -= n as u64;
                    }
                    if length.is_none() {
                        // Chunked (the head says so): size line, data and CRLF in one
                        // system call; the last chunk
                        // ("0\r\n\r\n") has no data.
                        let size = format!("{n:x}\r\n");
                        sock.send_vectored(&[
                            IoSlice::new(size.as_bytes()),
                            IoSlice::new(&buf[..n]),
                            IoSlice::new(b"\r\n"),
                        ])?;
                    } else if n > 0 {
                        sock.send(&buf[..n])?;
                    }
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// What the server says within `wait` (the socket's own receive timeout permitting), left
/// buffered for the head reader: `Some(true)` bytes, `Some(false)` the end of the stream,
/// `None` nothing yet.
fn heard_within(sock: &mut Socket, wait: Duration) -> Result<Option<bool>> {
    let timeouts = sock.gettimeouts();
    let wait = timeouts.2.map_or(wait, |t| t.min(wait));
    sock.settimeouts(timeouts.0, timeouts.1, Some(wait));
    let heard = match sock.fill_buf() {
        Ok(bytes) => Ok(Some(!bytes.is_empty())),
        Err(e) => match Error::from(e) {
            e if e.kind() == ErrorKind::Timeout => Ok(None),
            e => Err(e),
        },
    };
    sock.settimeouts(timeouts.0, timeouts.1, timeouts.2);
    heard
}

/// Whether the peer of a connection that failed a send had already sent something to read
/// (its response), without waiting for more.
fn answered_early(sock: &mut Socket) -> bool {
    matches!(heard_within(sock, Duration::ZERO), Ok(Some(true)))
}

/// Whether following a redirect with `status` drops the request's body (and turns the
/// method into GET, HEAD staying HEAD): a 303 always, a 301 or 302 for methods other than
/// GET and HEAD. The others send the same request, body included, again.
fn drops_body(status: u16, method: &str) -> bool {
    status == 303 || (matches!(status, 301 | 302) && method != "GET" && method != "HEAD")
}

/// Whether `Connection` field values list the `close` option (a comma-separated list of
/// case-insensitive tokens).
fn lists_close<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    values
        .into_iter()
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// Whether a caller-set header field is for the request's origin only, and dropped when a
/// redirect leads to another (scheme, host or port).
fn is_origin_bound(name: &str) -> bool {
    ["authorization", "proxy-authorization", "cookie", "host"]
        .iter()
        .any(|bound| name.eq_ignore_ascii_case(bound))
}

/// Whether a read of `n` bytes from a body's reader fits the `owed` bytes its declared
/// length still expects: not more, and not its end (0) while bytes are owed.
fn check_body_length(n: usize, owed: u64) -> Result<()> {
    let message = if n as u64 > owed {
        "the body's reader yielded more than its declared length".to_string()
    } else if n == 0 && owed > 0 {
        format!("the body's reader ended {owed} bytes short of its declared length")
    } else {
        return Ok(());
    };
    Err(Error::with_message(ErrorKind::InvalidInput, message))
}

/// Appends the header field `name: value` and its CRLF.
fn push_field(head: &mut String, name: &str, value: &str) {
    head.push_str(name);
    head.push_str(": ");
    head.push_str(value);
    head.push_str("\r\n");
}

/// `n` in decimal, without the formatting machinery (on every request's path).
fn decimal(mut n: u64) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[at..].iter().map(|&d| char::from(d)).collect()
}

/// Whether `value` may be a header field's value: no control character but tab (RFC 9110
/// §5.5; bytes past ASCII are allowed, as obs-text).
fn is_field_value(value: &str) -> bool {
    !value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_url(s: &str) -> Result<Url> {
    // The last URL parsed on this thread, kept: a client asking the same URL again and
    // again (polling, a benchmark, a health check) would parse it again each time, which
    // costs more than the rest of making the request.
    thread_local! {
        static LAST: RefCell<Option<(String, Url)>> = const { RefCell::new(None) };
    }
    let s = s.trim();
    // `try_with`: at thread exit the cache may be gone already; then it is not used.
    let known = LAST
        .try_with(|last| match &*last.borrow() {
            Some((text, url)) if text == s => Some(url.clone()),
            _ => None,
        })
        .ok()
        .flatten();
    if let Some(url) = known {
        return Ok(url);
    }
    let url = Url::parse(s).map_err(|e| {
        Error::with_message(ErrorKind::InvalidInput, format!("invalid URL {s:?}: {e}"))
    })?;
    match url.scheme() {
        "http" | "https" => {
            let _ = LAST.try_with(|last| *last.borrow_mut() = Some((s.to_string(), url.clone())));
            Ok(url)
        }
        other => Err(Error::with_message(
            ErrorKind::InvalidInput,
            format!("unsupported URL scheme {other:?} (http and https are)"),
        )),
    }
}

/// Where to connect for a URL.
struct Target {
    tls: bool,
    host: String,
    ip: Option<IpAddr>,
    port: u16,
    host_header: String,
    key: String,
}

impl Target {
    fn of(url: &Url, request: &Request) -> Result<Target> {
        let tls = url.scheme() == "https";
        let default = if tls { SSLPORT } else { PORT };
        let port = url.port().unwrap_or(default);
        let shown = url.host_str().unwrap_or_default();
        let (host, ip) = match url.host() {
            Some(url::Host::Domain(d)) => (d.to_string(), None),
            // The URL's own text of the address (dotted, as `url` normalises it).
            Some(url::Host::Ipv4(a)) => (shown.to_string(), Some(IpAddr::V4(a))),
            // Without the brackets `shown` has.
            Some(url::Host::Ipv6(a)) => (a.to_string(), Some(IpAddr::V6(a))),
            None => {
                return Err(Error::with_message(
                    ErrorKind::InvalidInput,
                    "URL without a host",
                ))
            }
        };
        let port_text = decimal(port.into());
        let mut host_header = shown.to_string();
        if port != default {
            host_header.push(':');
            host_header.push_str(&port_text);
        }
        let mut key = String::with_capacity(url.scheme().len() + shown.len() + 9);
        key.push_str(url.scheme());
        key.push_str("://");
        key.push_str(shown);
        key.push(':');
        key.push_str(&port_text);
        if tls {
            if let Some(root) = &request.root {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                root.to_der().unwrap_or_default().hash(&mut h);
                key.push_str(&format!("#{:x}", h.finish()));
            }
        }
        Ok(Target {
            tls,
            host,
            ip,
            port,
            host_header,
            key,
        })
    }
}

/// A socket whose receive timeout is one deadline for a whole read made of many receives
/// (a response head; a read of a chunked body, size line and trailers included): each
/// receive waits only for the time left. Otherwise a server sending a byte at a time, each
/// just within the timeout, would hold the caller for as many timeouts as it sent bytes.
struct WithinDeadline<'a> {
    sock: &'a mut Socket,
    deadline: Option<Instant>,
}

impl<'a> WithinDeadline<'a> {
    fn new(sock: &'a mut Socket) -> WithinDeadline<'a> {
        let deadline = crate::net::deadline(sock.gettimeouts().2);
        WithinDeadline { sock, deadline }
    }
}

impl Read for WithinDeadline<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let deadline = self.deadline;
        self.sock.read_within(out, |_| deadline)
    }
}

impl BufRead for WithinDeadline<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let deadline = self.deadline;
        self.sock.fill_buf_within(|_| deadline)
    }

    fn consume(&mut self, amt: usize) {
        self.sock.consume(amt);
    }
}

/// Reads a response head up to and including its empty line, within one receive timeout
/// for all of it. Blank lines before it are skipped, and count against `max` like the
/// head's own: a peer sending nothing else would otherwise hold the call for as long as it
/// kept sending.
fn read_head(sock: &mut Socket, max: usize) -> Result<Vec<u8>> {
    let mut sock = WithinDeadline::new(sock);
    let mut head = Vec::new();
    let mut skipped = 0usize;
    loop {
        let buf = match sock.fill_buf() {
            Ok(b) => b,
            Err(e) => return Err(Error::from(e).with_partial(head)),
        };
        if buf.is_empty() {
            return Err(Error::with_message(
                ErrorKind::Closed,
                "connection closed before the response head",
            )
            .with_partial(head));
        }
        if head.is_empty() {
            // Usually the whole head is in this first read.
            head.reserve(buf.len().min(max + 1));
        }
        let mut used = 0;
        let mut complete = false;
        // Line by line: each LF may end the head (an empty line) or a blank line before
        // the status line, which is skipped (RFC 9112 §2.2).
        while let Some(lf) = find_byte(&buf[used..], b'\n') {
            let end = used + lf + 1;
            if skipped + head.len() + (end - used) > max {
                break; // over the limit: reported below
            }
            head.extend_from_slice(&buf[used..end]);
            used = end;
            if head.ends_with(b"\n\r\n") || head.ends_with(b"\n\n") {
                if head.iter().all(|&c| c == b'\r' || c == b'\n') {
                    skipped += head.len();
                    head.clear();
                    continue;
                }
                complete = true;
                break;
            }
        }
        if !complete {
            // A partial line: keep it, up to the limit.
            let rest = (buf.len() - used).min((max + 1).saturating_sub(skipped + head.len()));
            head.extend_from_slice(&buf[used..used + rest]);
            used += rest;
        }
        sock.consume(used);
        if complete {
            return Ok(head);
        }
        if skipped + head.len() > max {
            return Err(Error::with_message(
                ErrorKind::LimitExceeded,
                format!("response head longer than {max} bytes"),
            ));
        }
    }
}

/// How many header fields `parse_head` makes room for on the stack; a response with more
/// is parsed again with room for `max_headers`.
const HEADERS_ON_STACK: usize = 32;

fn parse_head(head: &[u8], max_headers: usize, url: &Url) -> Result<Response> {
    let mut on_stack = [httparse::EMPTY_HEADER; HEADERS_ON_STACK];
    let mut on_heap: Vec<httparse::Header<'_>>;
    let room = max_headers.min(HEADERS_ON_STACK);
    let mut parsed = httparse::Response::new(&mut on_stack[..room]);
    let mut outcome = parse_response(&mut parsed, head);
    if matches!(outcome, Err(httparse::Error::TooManyHeaders)) && max_headers > room {
        // A field takes a line: room for as many as the head has line ends, not for
        // however many the caller allows (`usize::MAX` would not fit in memory).
        let lines = head.iter().filter(|&&b| b == b'\n').count();
        on_heap = vec![httparse::EMPTY_HEADER; max_headers.min(lines)];
        parsed = httparse::Response::new(&mut on_heap);
        outcome = parse_response(&mut parsed, head);
    }
    match outcome {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                "incomplete response head",
            ))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::with_message(
                ErrorKind::LimitExceeded,
                format!("more than {max_headers} response header fields"),
            ))
        }
        Err(e) => {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                format!("malformed response head: {e}"),
            ))
        }
    }
    let status = parsed.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err(Error::with_message(
            ErrorKind::Protocol,
            format!("status code {status} outside 100-599"),
        ));
    }
    let headers = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_string(), field_value(h.value)))
        .collect();
    Ok(Response {
        status,
        reason: parsed.reason.unwrap_or("").to_string(),
        version: parsed.version.unwrap_or(1),
        headers,
        trailers: Vec::new(),
        body: Vec::new(),
        url: url.clone(),
    })
}

/// `httparse` with obsolete line folding accepted, as Copas (LuaSocket) does.
fn parse_response<'h, 'b>(
    parsed: &mut httparse::Response<'h, 'b>,
    head: &'b [u8],
) -> std::result::Result<httparse::Status<usize>, httparse::Error> {
    let mut config = httparse::ParserConfig::default();
    config.allow_obsolete_multiline_headers_in_responses(true);
    config.parse_response(parsed, head)
}

/// A header field's value as text: trimmed, its folded lines (obsolete line folding)
/// joined by single spaces, bytes that are not UTF-8 replaced.
fn field_value(raw: &[u8]) -> String {
    // A folded value has a line break, always with an LF (httparse takes no lone CR).
    if find_byte(raw, b'\n').is_none() {
        // The usual case, checked as UTF-8 at once rather than chunk by chunk.
        let raw = raw.trim_ascii();
        return match std::str::from_utf8(raw) {
            Ok(text) => text.trim().to_owned(),
            Err(_) => String::from_utf8_lossy(raw).trim().to_owned(),
        };
    }
    String::from_utf8_lossy(raw)
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How the end of a response body is found (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// The framing of a response that has a body. A `Transfer-Encoding` overrides any
/// `Content-Length` (the connection is then not reused); `chunked` must be its last coding,
/// else the body runs until close. Several `Content-Length` values must all agree.
fn framing(response: &Response) -> Result<Framing> {
    let te: Vec<&str> = response.header_values("transfer-encoding").collect();
    if !te.is_empty() {
        let last = te
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty())
            .unwrap_or("");
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length: Option<u64> = None;
    for value in response.header_values("content-length") {
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::with_message(
                    ErrorKind::Protocol,
                    format!("invalid Content-Length {value:?}"),
                ));
            }
            let n: u64 = part.parse().map_err(|_| {
                Error::with_message(
                    ErrorKind::Protocol,
                    format!("invalid Content-Length {value:?}"),
                )
            })?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::with_message(
                    ErrorKind::Protocol,
                    "conflicting Content-Length values",
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// An HTTP response: status, reason, header fields (in order, repeated ones kept), the
/// body (empty when it was streamed) and the URL it came from after redirects.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    reason: String,
    version: u8,
    headers: Vec<(String, String)>,
    trailers: Vec<(String, String)>,
    body: Vec<u8>,
    url: Url,
}

impl Response {
    /// The status code (Copas's `code`).
    ///
    /// ```no_run
    /// let r = copas::client::http::request("http://127.0.0.1/").unwrap();
    /// assert_eq!(r.status(), 200);
    /// ```
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase of the status line (`"OK"`).
    ///
    /// ```no_run
    /// let r = copas::client::http::request("http://127.0.0.1/").unwrap();
    /// println!("{}", r.reason());
    /// ```
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The status line as Copas gives it (`"HTTP/1.1 200 OK"`).
    ///
    /// ```no_run
    /// let r = copas::client::http::request("http://127.0.0.1/").unwrap();
    /// println!("{}", r.status_line());
    /// ```
    pub fn status_line(&self) -> String {
        format!("HTTP/1.{} {} {}", self.version, self.status, self.reason)
    }

    /// Every header field, in the order received (repeated names kept, as sent).
    ///
    /// ```no_run
    /// let r = copas::client::http::request("http://127.0.0.1/").unwrap();
    /// for (name, value) in r.headers() { println!("{name}: {value}"); }
    /// ```
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive).
    ///
    /// ```no_run
    /// let r = copas::client::http::request("http://127.0.0.1/").unwrap();
    /// println!("{:?}", r.header("content-type"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    ///
    /// ```no_run
    /// let r = copas::client::http::request("http://127.0.0.1/").unwrap();
    /// let cookies: Vec<&str> = r.header_values("set-cookie").collect();
    /// ```
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The trailer fields of a chunked body (after [`Request::send`] or
    /// [`Request::send_to`]; with [`Request::stream`] see [`BodyReader::trailers`]).
    ///
    /// ```no_run
    /// let r = copas::client::http::request("http://127.0.0.1/").unwrap();
    /// assert!(r.trailers().len() < 100);
    /// ```
    pub fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    /// The body.
    ///
    /// ```no_run
    /// let r = copas::client::http::request("http://127.0.0.1/").unwrap();
    /// println!("{}", String::from_utf8_lossy(r.body()));
    /// ```
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Takes the body out.
    ///
    /// ```no_run
    /// let body: Vec<u8> = copas::client::http::request("http://127.0.0.1/").unwrap().into_body();
    /// ```
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The URL this response came from, after redirects.
    ///
    /// ```no_run
    /// let r = copas::client::http::request("http://127.0.0.1/redirect").unwrap();
    /// println!("{}", r.url());
    /// ```
    pub fn url(&self) -> &Url {
        &self.url
    }
}

/// The body of a response, read as it arrives ([`Request::stream`]). Read to its end, the
/// connection goes back to the per-thread pool when it can be reused; dropped earlier, the
/// connection is closed. Errors are [`io::Error`]s wrapping copas [`Error`]s
/// (`Error::from(io_error)` gives the copas error back, with its kind).
pub struct BodyReader {
    sock: Option<Socket>,
    framing: Framing,
    chunked: ChunkedDecoder,
    key: Option<String>,
    done: bool,
    failed: bool,
}

impl std::fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader")
            .field("framing", &self.framing)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl BodyReader {
    /// The trailer fields of a chunked body, once it has been read to its end.
    ///
    /// ```no_run
    /// use std::io::Read;
    /// let (_, mut body) = copas::client::http::Request::get("http://127.0.0.1/chunked")
    ///     .stream()
    ///     .unwrap();
    /// std::io::copy(&mut body, &mut std::io::sink()).unwrap();
    /// println!("{:?}", body.trailers());
    /// ```
    pub fn trailers(&self) -> &[(String, String)] {
        self.chunked.trailers()
    }

    fn finish_if_done(&mut self) {
        if matches!(self.framing, Framing::Length(0)) && !self.done {
            self.finish();
        }
    }

    /// The body ended: the connection goes back to the pool, when it can.
    fn finish(&mut self) {
        self.done = true;
        if let (Some(sock), Some(key)) = (self.sock.take(), self.key.take()) {
            super::pool::put(key, sock);
        }
    }

    /// Drops what is left of a body (a redirect's) when it has all come already (up to a
    /// bound), so the connection can serve the next request; otherwise closes the
    /// connection rather than wait for the rest. Copas follows a redirect at once: a body
    /// that runs until close, or one a server trickles, must not hold it.
    fn drain(&mut self) {
        if let Some(sock) = &self.sock {
            // Zero: take what is there, never wait. `exchange_on` sets the request's
            // timeouts again before the connection's next use.
            let (connect, send, _) = sock.gettimeouts();
            sock.settimeouts(connect, send, Some(Duration::ZERO));
        }
        // On the heap: a redirect is rare, and an 8 KiB array here would sit in the frame of
        // every request (`drain` is inlined into `stream`), which a 16 KiB stack cannot hold.
        let mut sink = vec![0u8; 8192];
        let mut total = 0usize;
        while !self.done && total < 256 * 1024 {
            match self.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        if !self.done {
            self.sock = None;
            self.done = true;
        }
    }

    fn sock(&mut self) -> Result<&mut Socket> {
        self.sock
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Closed))
    }

    fn read_body(&mut self, out: &mut [u8]) -> Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        match self.framing {
            Framing::Length(left) => {
                let want = (out.len() as u64).min(left) as usize;
                let n = self.sock()?.read(&mut out[..want]).map_err(Error::from)?;
                if n == 0 {
                    self.sock = None;
                    return Err(Error::with_message(
                        ErrorKind::Closed,
                        format!("connection closed with {left} body bytes missing"),
                    ));
                }
                let left = left - n as u64;
                self.framing = Framing::Length(left);
                if left == 0 {
                    self.finish();
                }
                Ok(n)
            }
            Framing::UntilClose => {
                let n = self.sock()?.read(out).map_err(Error::from)?;
                if n == 0 {
                    self.sock = None;
                    self.done = true;
                }
                Ok(n)
            }
            Framing::Chunked => {
                let sock = self
                    .sock
                    .as_mut()
                    .ok_or_else(|| Error::new(ErrorKind::Closed))?;
                let n = self.chunked.read(&mut WithinDeadline::new(sock), out)?;
                if self.chunked.is_done() {
                    self.finish();
                }
                Ok(n)
            }
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(Error::with_message(
                ErrorKind::Closed,
                "the body's connection failed earlier",
            )
            .into());
        }
        match self.read_body(out) {
            Ok(n) => Ok(n),
            Err(e) => {
                // A connection left mid-body can never be reused.
                self.sock = None;
                self.key = None;
                self.done = true;
                self.failed = true;
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_writes_what_to_string_writes() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            65_535,
            1 << 32,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(decimal(n), n.to_string());
        }
    }

    #[test]
    fn a_remembered_url_is_the_one_asked_for() {
        let a = parse_url("http://127.0.0.1:1/a?x=1").unwrap();
        let b = parse_url(" http://127.0.0.1:2/b ").unwrap();
        assert_eq!(a.as_str(), "http://127.0.0.1:1/a?x=1");
        assert_eq!(b.as_str(), "http://127.0.0.1:2/b");
        assert_eq!(parse_url("http://127.0.0.1:1/a?x=1").unwrap(), a);
        // A refused URL is refused every time, and not remembered in place of the last
        // good one.
        for _ in 0..2 {
            let refused = parse_url("ftp://127.0.0.1/").unwrap_err();
            assert_eq!(refused.kind(), ErrorKind::InvalidInput);
        }
        assert_eq!(parse_url("http://127.0.0.1:2/b").unwrap(), b);
    }
}
