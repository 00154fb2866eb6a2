//! The HTTP client's per-thread pool of idle keep-alive connections.
//!
//! A server decides which hosts and ports a client talks to (a redirect names any of
//! them), so the pool is bounded as a whole, not only per host: at most [`POOL_MAX`] idle
//! connections per thread, at most [`POOL_PER_HOST`] of them per scheme, host and port, the
//! oldest closed first to make room. Every use of the pool closes the connections idle for
//! [`POOL_IDLE`] or longer, whatever their host, and a connection goes in only while it is
//! still usable. Nothing closes them on a clock: a timer would keep [`crate::run`] from
//! ending, so [`close_idle_connections`] is there for a program that wants them gone now.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::{Error, ErrorKind, Socket};

/// How many idle connections the per-thread pool keeps per scheme, host and port.
pub const POOL_PER_HOST: usize = 4;
/// How many idle connections the per-thread pool keeps in all; past it, the one idle the
/// longest is closed.
pub const POOL_MAX: usize = 32;
/// How long an idle connection may be reused. An older one is closed by the next use of the
/// pool on its thread (a request or [`close_idle_connections`]), and never reused.
pub const POOL_IDLE: Duration = Duration::from_secs(30);

/// One idle connection and what it may be reused for.
struct Idle {
    /// Scheme, host and port, as the client spells them.
    key: String,
    sock: Socket,
    since: Instant,
}

thread_local! {
    /// Oldest first.
    static POOL: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// An idle, still usable connection for `key`, the most recently pooled one, if any.
pub(super) fn take(key: &str) -> Option<Socket> {
    loop {
        // `try_with` throughout: at thread exit (a thread-local destructor that runs after
        // the pool's) there is no pool, and a connection to put is closed instead.
        let (found, expired) = POOL
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                let expired = take_expired(&mut pool);
                let found = pool
                    .iter()
                    .rposition(|idle| idle.key == key)
                    .map(|i| pool.remove(i).sock);
                (found, expired)
            })
            .unwrap_or_default();
        // Closed outside the pool's borrow: closing wakes waiters, which may use the pool.
        close_all(expired);
        let mut sock = found?;
        if still_usable(&mut sock) {
            return Some(sock);
        }
        sock.close();
    }
}

/// Keeps `sock` for later requests to `key`, or closes it when it is no longer usable.
pub(super) fn put(key: String, mut sock: Socket) {
    if !still_usable(&mut sock) {
        sock.close();
        return;
    }
    let closing = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        let mut closing = take_expired(&mut pool);
        let same_host = pool.iter().filter(|idle| idle.key == key).count();
        let oldest = if same_host >= POOL_PER_HOST {
            pool.iter().position(|idle| idle.key == key)
        } else if pool.len() >= POOL_MAX {
            Some(0)
        } else {
            None
        };
        if let Some(i) = oldest {
            closing.push(pool.remove(i).sock);
        }
        pool.push(Idle {
            key,
            sock,
            since: Instant::now(),
        });
        closing
    });
    // Without a pool, `sock` went with the closure, closed as it dropped.
    close_all(closing.unwrap_or_default());
}

/// Closes every idle connection the HTTP client keeps for reuse on this thread, and
/// returns how many it closed. Connections in use by a request are not affected.
///
/// The pool closes a connection idle for [`POOL_IDLE`] only when it is next used; call this
/// when a program is done with HTTP for a while (or before it forks) to release the
/// descriptors at once.
pub fn close_idle_connections() -> usize {
    let all = POOL
        .try_with(|pool| std::mem::take(&mut *pool.borrow_mut()))
        .unwrap_or_default();
    let closed = all.len();
    close_all(all.into_iter().map(|idle| idle.sock).collect());
    closed
}

/// Takes out the connections idle for [`POOL_IDLE`] or longer, to be closed.
fn take_expired(pool: &mut Vec<Idle>) -> Vec<Socket> {
    // Oldest first: the expired ones are a prefix.
    let fresh = pool
        .iter()
        .position(|idle| idle.since.elapsed() < POOL_IDLE)
        .unwrap_or(pool.len());
    pool.drain(..fresh).map(|idle| idle.sock).collect()
}

fn close_all(socks: Vec<Socket>) {
    for sock in socks {
        sock.close();
    }
}

/// Whether an idle connection can carry a request: open, and with nothing to read (end of
/// stream, or bytes nobody asked for). Never waits.
fn still_usable(sock: &mut Socket) -> bool {
    if sock.is_closed() {
        return false;
    }
    let (connect, send, receive) = sock.gettimeouts();
    sock.settimeouts(connect, send, Some(Duration::ZERO));
    let alive = match std::io::BufRead::fill_buf(sock) {
        Err(e) => Error::from(e).kind() == ErrorKind::Timeout,
        Ok(_) => false,
    };
    sock.settimeouts(connect, send, receive);
    alive
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the pool's end and the peer's, which the caller keeps open.
    fn pair(listener: &std::net::TcpListener) -> (Socket, std::net::TcpStream) {
        let addr = listener.local_addr().unwrap();
        let sock = crate::connect(addr, Some(Duration::from_secs(5))).unwrap();
        (sock, listener.accept().unwrap().0)
    }

    fn pooled() -> usize {
        POOL.with(|pool| pool.borrow().len())
    }

    #[test]
    fn the_pool_holds_at_most_pool_max_connections_closing_the_oldest() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peers = Vec::new();
        let mut first = None;
        for i in 0..POOL_MAX + 5 {
            let (sock, peer) = pair(&listener);
            peers.push(peer);
            if i == 0 {
                first = Some(sock.share());
            }
            put(format!("http://host{i}:80"), sock);
        }
        assert_eq!(pooled(), POOL_MAX);
        assert!(
            first.unwrap().is_closed(),
            "the oldest was closed to make room"
        );
        assert!(take("http://host0:80").is_none());
        assert!(take(&format!("http://host{}:80", POOL_MAX + 4)).is_some());
        assert_eq!(close_idle_connections(), POOL_MAX - 1);
        assert_eq!(pooled(), 0);
    }

    #[test]
    fn the_pool_keeps_pool_per_host_connections_per_key_the_newest() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peers = Vec::new();
        let mut socks = Vec::new();
        for _ in 0..POOL_PER_HOST + 2 {
            let (sock, peer) = pair(&listener);
            peers.push(peer);
            socks.push(sock.share());
            put("http://one:80".to_string(), sock);
        }
        assert_eq!(pooled(), POOL_PER_HOST);
        assert!(socks[0].is_closed() && socks[1].is_closed());
        assert!(socks[2..].iter().all(|s| !s.is_closed()));
        close_idle_connections();
    }

    #[test]
    fn a_connection_its_peer_closed_is_not_pooled() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (sock, peer) = pair(&listener);
        drop(peer);
        let watch = sock.share();
        // On loopback the end of stream is there long before this.
        std::thread::sleep(Duration::from_millis(100));
        put("http://gone:80".to_string(), sock);
        assert_eq!(pooled(), 0);
        assert!(watch.is_closed());
    }

    #[test]
    fn a_connection_idle_for_pool_idle_is_closed_by_the_next_use_of_the_pool_whatever_its_host() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (old, _old_peer) = pair(&listener);
        let (new, _new_peer) = pair(&listener);
        let (old_watch, new_watch) = (old.share(), new.share());
        put("http://a:80".to_string(), old);
        put("http://b:80".to_string(), new);
        // As if the first had been idle for POOL_IDLE already.
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            pool[0].since = Instant::now().checked_sub(POOL_IDLE).unwrap();
        });
        assert!(take("http://c:80").is_none());
        assert!(
            old_watch.is_closed(),
            "expired, though its host was not asked for"
        );
        assert!(!new_watch.is_closed());
        assert_eq!(pooled(), 1);
        close_idle_connections();
        assert!(new_watch.is_closed());
    }
}
