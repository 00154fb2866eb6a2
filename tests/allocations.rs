//! What the wait path allocates: nothing, for a socket wait or a `pause`, in steady state.
//!
//! The counting global allocator of `tests/util/heap.rs` counts the allocations made on the
//! dispatcher's thread while a measured window runs, so the tests of this file may run in
//! parallel. An echo of fixed-size messages through `Read::read` into a caller's buffer and
//! `send`, with and without a socket timeout (a timer armed and cancelled per wait), and
//! through the socket's own read buffer (a caller buffer smaller than what arrives), must
//! allocate nothing per message once warm: the poller's event buffer, the ready queue, the
//! timer queue and the task table are all reused. A wait on a lock, semaphore or queue
//! allocates its waker's hand-over slot (documented in `docs/shutdown-and-introspection.md`)
//! and is not checked here.

#[path = "util/heap.rs"]
mod heap;
mod util;

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;
use std::time::Duration;

use copas::Socket;
use heap::allocations_in;

const MSG: usize = 32;
const WARM: usize = 1_000;
const MEASURED: usize = 10_000;

/// Echo server: `Read::read` into a caller buffer, `send` back; no `Vec` per message.
fn start_echo_server(timeout: Option<Duration>) -> (std::net::SocketAddr, copas::Server) {
    let (listener, addr) = util::local_listener();
    let mut opts = copas::ServerOptions::new();
    if let Some(t) = timeout {
        opts = opts.timeout(t);
    }
    let server = copas::addserver_with(listener, opts, |mut sock: Socket| {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sock.send(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    })
    .expect("addserver");
    (addr, server)
}

/// One echo round trip of `MSG` bytes, read back into `buf`.
fn round_trip(sock: &mut Socket, buf: &mut [u8]) {
    let msg = [b'x'; MSG];
    assert_eq!(sock.send(&msg).expect("send"), MSG);
    let mut got = 0;
    while got < MSG {
        let n = sock.read(&mut buf[..]).expect("read");
        assert!(n > 0, "eof");
        got += n;
    }
}

/// Allocations on the dispatcher's thread over `MEASURED` echo messages after `WARM` warm-up
/// ones, both ends in coroutines of this thread.
fn echo_allocations(timeout: Option<Duration>, cap: usize) -> u64 {
    util::make_dispatcher();
    let (addr, server) = start_echo_server(timeout);
    let out = Rc::new(Cell::new(u64::MAX));
    let out2 = out.clone();
    copas::addthread(move || {
        let mut sock = copas::connect(addr, Some(util::secs(5))).expect("connect");
        sock.settimeout(timeout);
        let mut buf = vec![0u8; cap];
        for _ in 0..WARM {
            round_trip(&mut sock, &mut buf);
        }
        let ((), allocs) = allocations_in(|| {
            for _ in 0..MEASURED {
                round_trip(&mut sock, &mut buf);
            }
        });
        out2.set(allocs);
        sock.close();
        copas::removeserver(server, false).expect("removeserver");
    })
    .expect("addthread");
    util::run_bounded(util::secs(15));
    out.get()
}

#[test]
fn an_echo_in_steady_state_allocates_nothing_per_message() {
    for (what, timeout, cap) in [
        ("no timeout, a 4 KiB buffer", None, 4096),
        ("a 5 s timeout, a 4 KiB buffer", Some(util::secs(5)), 4096),
        ("no timeout, a 16-byte buffer", None, 16),
        ("a 5 s timeout, a 16-byte buffer", Some(util::secs(5)), 16),
    ] {
        let allocs = echo_allocations(timeout, cap);
        assert_eq!(allocs, 0, "{MEASURED} messages with {what}");
    }
}

#[test]
fn pauses_allocate_nothing() {
    util::make_dispatcher();
    let out = Rc::new(Cell::new((u64::MAX, u64::MAX)));
    let out2 = out.clone();
    copas::addthread(move || {
        for _ in 0..WARM {
            copas::pause(Duration::ZERO);
            copas::pause(Duration::from_micros(1));
        }
        let ((), yields) = allocations_in(|| {
            for _ in 0..MEASURED {
                copas::pause(Duration::ZERO);
            }
        });
        let ((), sleeps) = allocations_in(|| {
            for _ in 0..1_000 {
                copas::pause(Duration::from_micros(1));
            }
        });
        out2.set((yields, sleeps));
    })
    .expect("addthread");
    util::run_bounded(util::secs(30));
    assert_eq!(out.get(), (0, 0), "(10,000 pause(ZERO), 1,000 pause(1 us))");
}
