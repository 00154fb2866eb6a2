//! Protocol clients built on copas sockets: `http` (and https), `smtp`, `ftp`.
//!
//! They use only the public [`Socket`](crate::Socket) API, so they work the same inside
//! coroutines (many requests in flight at once, each suspending only its coroutine) and from
//! plain `main` (blocking). Every buffer a server can grow is bounded, and every reply is
//! checked; failures are typed [`Error`](crate::Error)s that carry the server's reply.

mod chunked;
pub mod ftp;
pub mod http;
mod pool;
pub mod reply;
pub mod smtp;

/// An error of the caller's own reader or writer (the body's destination in
/// `http::Request::send_to` and `ftp::Client::retr`, the source in
/// `http::Request::body_reader` and `ftp::Client::stor`):
/// [`ErrorKind::Io`](crate::ErrorKind::Io) whatever its kind, as their docs say, so that it
/// is not taken for the server's (a `BrokenPipe` from the destination is not the server
/// closing). The `io::Error` stays its source and keeps its kind when converted back.
pub(crate) fn callers_io_error(source: std::io::Error, what: &str) -> crate::Error {
    crate::Error::from_io(crate::ErrorKind::Io, source, what)
}
