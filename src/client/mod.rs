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
