//! Connections at the edges of the socket contract: a peer's urgent byte (`MSG_OOB`) with
//! data queued behind it, and coroutines removed in the middle of a socket operation (a TLS
//! handshake, a line half received).
//!
//! The poller registers each socket once, edge-triggered, and a short read clears the
//! readable bit: whatever stops a read short of the queue's end without draining it leaves
//! bytes that no edge will announce. A coroutine removed while it waits is unwound at its
//! wait, so what an operation set aside for after the wait must be put right by its
//! destructors.
//!
//! Every run has a watchdog, every wait a bound; the peers are std threads on 127.0.0.1.

mod util;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use copas::{ErrorKind, Pattern, Socket};
use util::{ms, pause_until, secs};

/// The timeout of every socket here: long against loopback, short against a hung test.
const GUARD: Duration = Duration::from_secs(5);

/// A value shared between the coroutines of one test and the test itself.
type Shared<T> = Rc<RefCell<T>>;

// ----- urgent data ------------------------------------------------------------------------

/// Sends "AB", the urgent byte "!", then "DE\n", each in its own segment: the receiver's
/// queue then holds the urgent mark between two runs of ordinary bytes.
fn send_with_urgent_byte(stream: &TcpStream) {
    stream.set_nodelay(true).expect("nodelay");
    let fd = stream.as_raw_fd();
    for (bytes, flags) in [(&b"AB"[..], 0), (b"!", libc::MSG_OOB), (b"DE\n", 0)] {
        // SAFETY: `bytes` is valid for its length for the whole call; `fd` is the open
        // socket `stream` owns.
        let sent = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), flags) };
        assert_eq!(sent, bytes.len() as isize, "send {bytes:?}");
    }
}

/// What blocking std reads of such a stream return, up to its line feed: the reference a
/// copas socket must match (a level-triggered reader does not stall at the mark).
fn std_reads_past_urgent_byte() -> Vec<u8> {
    let (listener, addr) = util::local_listener();
    let peer = std::thread::spawn(move || {
        let stream = TcpStream::connect(addr).expect("connect");
        send_with_urgent_byte(&stream);
        std::thread::sleep(ms(500));
    });
    let (mut conn, _) = listener.accept().expect("accept");
    conn.set_read_timeout(Some(GUARD)).expect("read timeout");
    // All of it queued before the first read, as in the copas case.
    std::thread::sleep(ms(200));
    let mut all = Vec::new();
    let mut buf = [0u8; 64];
    while !all.ends_with(b"\n") {
        let n = conn.read(&mut buf).expect("std read");
        assert!(n > 0, "end of stream after {all:?}");
        all.extend_from_slice(&buf[..n]);
    }
    peer.join().expect("peer");
    all
}

/// Serves one connection whose peer sends [`send_with_urgent_byte`]'s stream; `read` runs
/// once it is all queued. Returns what `read` returned and how long it took.
fn read_urgent_stream(
    read: impl FnOnce(&mut Socket) -> copas::Result<Vec<u8>> + 'static,
) -> (copas::Result<Vec<u8>>, Duration) {
    let (listener, addr) = util::local_listener();
    let got: Shared<Option<(copas::Result<Vec<u8>>, Duration)>> = Default::default();
    let server: Shared<Option<copas::Server>> = Default::default();
    let (sink, slot) = (got.clone(), server.clone());
    let read = RefCell::new(Some(read));
    let handle = copas::addserver(listener, move |mut sock: Socket| {
        let Some(read) = read.borrow_mut().take() else {
            return;
        };
        if let Some(s) = slot.borrow_mut().take() {
            let _ = copas::removeserver(s, false);
        }
        sock.settimeout(Some(GUARD));
        // The whole stream in the kernel before the first read: the read that stops at the
        // mark then has bytes behind it that no later edge announces.
        copas::pause(ms(300));
        let start = Instant::now();
        let r = read(&mut sock);
        *sink.borrow_mut() = Some((r, start.elapsed()));
    })
    .expect("addserver");
    *server.borrow_mut() = Some(handle);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let stream = TcpStream::connect(addr).expect("connect");
        send_with_urgent_byte(&stream);
        // Open until the reader is done: an end of stream would wake it regardless.
        let _ = done_rx.recv_timeout(secs(10));
    });
    util::run_bounded(secs(20));
    drop(done_tx);
    peer.join().expect("peer");
    let outcome = got.borrow_mut().take().expect("the handler ran");
    outcome
}

#[test]
fn line_behind_an_urgent_byte_is_received_at_once() {
    let reference = std_reads_past_urgent_byte();
    assert_eq!(
        reference, b"ABDE\n",
        "what std reads (the urgent byte is not inline)"
    );
    let (got, took) = read_urgent_stream(|sock| sock.receive(Pattern::Line));
    let line = got.unwrap_or_else(|e| {
        panic!(
            "receive(Line) failed after {took:?}: {e} (partial {:?})",
            e.partial()
        )
    });
    assert_eq!(line, reference[..reference.len() - 1], "as std reads it");
    assert!(took < secs(1), "the line took {took:?}");
}

#[test]
fn partial_reads_behind_an_urgent_byte_reach_the_line_feed_at_once() {
    let reference = std_reads_past_urgent_byte();
    let (got, took) = read_urgent_stream(|sock| {
        let mut all = Vec::new();
        // Bounded: each part is at least a byte, and the stream has five before its LF.
        for _ in 0..8 {
            if all.ends_with(b"\n") {
                break;
            }
            let part = sock.receivepartial(4096)?;
            if part.is_empty() {
                break;
            }
            all.extend_from_slice(&part);
        }
        Ok(all)
    });
    let all = got.unwrap_or_else(|e| {
        panic!(
            "receivepartial failed after {took:?}: {e} (partial {:?})",
            e.partial()
        )
    });
    assert_eq!(all, reference, "as std reads it");
    assert!(took < secs(1), "the parts took {took:?}");
}

// ----- coroutines removed mid-operation --------------------------------------------------

#[test]
fn removed_handshake_closes_the_connection_for_every_handle() {
    let (listener, addr) = util::local_listener();
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    // Reads what the client sends, never answering, until the end of the stream; returns it
    // and whether that end came (rather than the read timeout).
    let peer = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(secs(10))).expect("read timeout");
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let ended = loop {
            match conn.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    seen.store(all.len(), Ordering::SeqCst);
                }
                Err(_) => break false,
            }
        };
        (all, ended)
    });
    let checks: Shared<Option<(bool, Result<usize, ErrorKind>)>> = Default::default();
    let out = checks.clone();
    copas::addthread(move || {
        let sock = copas::connect(addr, Some(GUARD)).expect("connect");
        let mut other = sock.share();
        let handshaking = copas::addthread(move || {
            let mut sock = sock;
            let connector = copas::native_tls::TlsConnector::new().expect("connector");
            let _ = sock.dohandshake(&connector, "localhost");
        })
        .expect("addthread");
        // Removed while it waits for the server's reply to its ClientHello.
        let hello_sent = pause_until(secs(5), || received.load(Ordering::SeqCst) >= 5);
        assert!(hello_sent, "no ClientHello reached the peer");
        assert!(copas::removethread(handshaking), "removethread");
        let closed = other.is_closed();
        let sent = util::kind(other.send(b"SECRET-IN-PLAINTEXT"));
        *out.borrow_mut() = Some((closed, sent));
        // The peer's read ends either way, so a failure shows its assertion, not a hang.
        other.close();
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let (all, ended) = peer.join().expect("peer");
    let (closed, sent) = checks.borrow_mut().take().expect("the coroutine ran");
    assert!(
        closed,
        "another handle still open after the handshake was removed"
    );
    assert_eq!(sent, Err(ErrorKind::Closed), "send through another handle");
    assert_eq!(
        &all[..1],
        [0x16],
        "the peer got a TLS handshake record first"
    );
    assert!(
        !all.windows(6).any(|w| w == b"SECRET"),
        "plaintext after the ClientHello: {:?}",
        String::from_utf8_lossy(&all)
    );
    assert!(ended, "the connection was not closed");
}

#[test]
fn removed_reader_leaves_its_buffered_bytes_for_the_next_receive() {
    let (listener, addr) = util::local_listener();
    let (more_tx, more_rx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.write_all(b"abc").expect("write abc");
        // The rest of the line only once the first reader is gone.
        let go = more_rx.recv_timeout(secs(10)).is_ok();
        if go {
            conn.write_all(b"def\n").expect("write def");
        }
        let _ = more_rx.recv_timeout(secs(10));
    });
    let outcome: Shared<Option<Result<Vec<u8>, String>>> = Default::default();
    let out = outcome.clone();
    copas::addthread(move || {
        let sock = copas::connect(addr, Some(GUARD)).expect("connect");
        sock.settimeout(Some(GUARD));
        let fd = sock.as_raw_fd();
        let slot: Shared<Socket> = Rc::new(RefCell::new(sock));
        let s = slot.clone();
        let reader = copas::addthread(move || {
            let _ = s.borrow_mut().receive(Pattern::Line);
        })
        .expect("addthread");
        // Not vacuous: the reader must have taken "abc" from the kernel into its buffer
        // and be waiting for the rest of the line when it is removed.
        let taken = pause_until(secs(5), || kernel_queue_is_empty(fd));
        assert!(taken, "the reader never read \"abc\"");
        copas::pause(ms(50));
        assert!(copas::removethread(reader), "removethread");
        more_tx.send(()).expect("peer");
        let line = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            slot.borrow_mut().receive(Pattern::Line)
        }));
        *out.borrow_mut() = Some(match line {
            Ok(r) => r.map_err(|e| format!("{e} (partial {:?})", e.partial())),
            Err(p) => Err(format!(
                "panicked: {}",
                p.downcast_ref::<String>().cloned().unwrap_or_default()
            )),
        });
        let _ = more_tx.send(());
    })
    .expect("addthread");
    util::run_checked(secs(20));
    peer.join().expect("peer");
    let line = outcome.borrow_mut().take().expect("the coroutine ran");
    assert_eq!(line.as_deref(), Ok(&b"abcdef"[..]));
}

/// Whether nothing waits in `fd`'s receive queue (a peek that would block).
fn kernel_queue_is_empty(fd: i32) -> bool {
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into `byte`, which outlives the call, from the open
    // socket `fd`; never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}
