//! UDP over loopback (issue 4, item 2).
//!
//! Copas's `udptimeout` (an echo round trip, then a 10 ms timeout, with `setpeername` +
//! `send`/`receive` and with `sendto`/`receivefrom`), then the contract: a datagram larger
//! than the buffer is reported with what fitted, each receive takes one datagram, `close`
//! wakes a waiting receiver, the UDP server's names, and the same calls blocking the thread
//! outside any coroutine. Then what reading two datagrams per system call must keep: the one
//! read ahead delivered as the kernel would have (cut to the next size, its own sender),
//! dropped at close, shared exactly once by two receivers, and no datagram stranded by a
//! receive that found the queue empty.
//!
//! Every run has a watchdog; every loop is bounded.

mod util;

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::{ErrorKind, ServerOptions, UdpSocket, DATAGRAM_SIZE};
use util::{ms, secs};

/// A UDP echo server as in Copas's `udptimeout`: a wrapped server socket looping on
/// `receivefrom`/`sendto`. Returns its address and a handle to close it with.
fn echo_server() -> (SocketAddr, UdpSocket) {
    let sock = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = sock.local_addr().expect("local_addr");
    let handle: Rc<RefCell<Option<UdpSocket>>> = Rc::new(RefCell::new(None));
    let h = handle.clone();
    copas::addudpserver(sock, move |server| {
        *h.borrow_mut() = Some(server.clone());
        // Ends when the test closes the socket.
        for _ in 0..1000 {
            let Ok((data, from)) = server.receivefrom(DATAGRAM_SIZE) else {
                break;
            };
            if server.sendto(&data, from).is_err() {
                break;
            }
        }
    })
    .expect("addudpserver");
    // The handler started at once and is waiting in receivefrom.
    let server = handle.borrow_mut().take().expect("handler started at once");
    (addr, server)
}

/// Copas `udptimeout`, first half: `setpeername` + `send`/`receive`.
#[test]
fn udptimeout_with_setpeername_send_receive() {
    let (addr, server) = echo_server();
    let outcome = Rc::new(RefCell::new(None));
    let out = outcome.clone();
    copas::addthread(move || {
        let run = || -> copas::Result<(Vec<u8>, copas::Error, Duration)> {
            let client = UdpSocket::bind("127.0.0.1:0")?;
            // Copas uses 10 ms throughout; the reply gets more room on a loaded machine.
            client.settimeout(Some(secs(5)));
            client.setpeername(addr)?;
            assert_eq!(client.peer_addr()?, addr);
            client.send(b"foo")?;
            let echoed = client.receive(DATAGRAM_SIZE)?;
            client.settimeout(Some(ms(10)));
            let start = Instant::now();
            let e = client.receive(DATAGRAM_SIZE).expect_err("a second reply");
            Ok((echoed, e, start.elapsed()))
        };
        *out.borrow_mut() = Some(run());
        server.close();
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let (echoed, e, took) = outcome
        .borrow_mut()
        .take()
        .expect("client finished")
        .expect("client");
    assert_eq!(echoed, b"foo");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    assert!(took >= ms(10), "timed out early: {took:?}");
    assert!(took < secs(1), "timed out late: {took:?}");
}

/// Copas `udptimeout`, second half: `sendto`/`receivefrom`.
#[test]
fn udptimeout_with_sendto_receivefrom() {
    let (addr, server) = echo_server();
    let outcome = Rc::new(RefCell::new(None));
    let out = outcome.clone();
    copas::addthread(move || {
        let run = || -> copas::Result<(Vec<u8>, SocketAddr, copas::Error, Duration)> {
            let client = UdpSocket::bind("127.0.0.1:0")?;
            client.settimeout(Some(secs(5)));
            client.sendto(b"foo", addr)?;
            let (echoed, from) = client.receivefrom(DATAGRAM_SIZE)?;
            client.settimeout(Some(ms(10)));
            let start = Instant::now();
            let e = client
                .receivefrom(DATAGRAM_SIZE)
                .expect_err("a second reply");
            Ok((echoed, from, e, start.elapsed()))
        };
        *out.borrow_mut() = Some(run());
        server.close();
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let (echoed, from, e, took) = outcome
        .borrow_mut()
        .take()
        .expect("client finished")
        .expect("client");
    assert_eq!(echoed, b"foo");
    assert_eq!(from, addr);
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    assert!(took >= ms(10), "timed out early: {took:?}");
    assert!(took < secs(1), "timed out late: {took:?}");
}

/// A datagram larger than the buffer is reported with what fitted, and consumed; the next
/// one arrives whole. Inside a coroutine and outside.
/// A plain std socket to send from, and a copas socket (5 s receive timeout) to receive on
/// at the address returned.
fn sender_and_receiver() -> (StdUdpSocket, UdpSocket, SocketAddr) {
    let sender = StdUdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
    receiver.settimeout(Some(secs(5)));
    let to = receiver.local_addr().expect("local_addr");
    (sender, receiver, to)
}

#[test]
fn oversized_datagram_is_reported_not_cut() {
    fn check(receiver: &UdpSocket, sender: &StdUdpSocket) {
        let to = receiver.local_addr().expect("local_addr");
        let big: Vec<u8> = (0..100u8).collect();
        sender.send_to(&big, to).expect("send big");
        sender.send_to(b"small", to).expect("send small");
        let e = receiver.receive(10).expect_err("100 bytes fitted in 10");
        assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e:?}");
        assert_eq!(e.partial(), &big[..10]);
        if cfg!(target_os = "linux") {
            assert!(e.to_string().contains("100 bytes"), "{e}");
        }
        assert_eq!(receiver.receive(10).expect("small"), b"small");

        sender.send_to(&big, to).expect("send big");
        let e = receiver
            .receivefrom(99)
            .expect_err("100 bytes fitted in 99");
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        assert_eq!(e.partial(), &big[..99]);
        let from = sender.local_addr().expect("sender addr");
        assert!(e.to_string().contains(&from.to_string()), "{e}");
        // Exactly the buffer's size fits.
        sender.send_to(&big, to).expect("send big");
        let (data, got_from) = receiver.receivefrom(100).expect("exact fit");
        assert_eq!((data, got_from), (big, from));
    }

    outside_then_in_a_coroutine(None, check);
}

/// Runs `check` on a receiver (5 s receive timeout, or `timeout`) and its sender, first
/// outside any coroutine, where the calls block the thread, then in one.
fn outside_then_in_a_coroutine(timeout: Option<Duration>, check: fn(&UdpSocket, &StdUdpSocket)) {
    let _dog = util::Watchdog::new("outside, then in a coroutine", secs(20));
    let (sender, receiver, _) = sender_and_receiver();
    if timeout.is_some() {
        receiver.settimeout(timeout);
    }
    check(&receiver, &sender);

    let done = Rc::new(RefCell::new(false));
    let d = done.clone();
    copas::addthread(move || {
        check(&receiver, &sender);
        *d.borrow_mut() = true;
    })
    .expect("addthread");
    util::run_checked(secs(20));
    assert!(*done.borrow());
}

/// Each receive takes exactly one datagram, however many are queued.
#[test]
fn each_receive_takes_one_datagram() {
    let (sender, receiver, to) = sender_and_receiver();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    copas::addthread(move || {
        for i in 0..50u8 {
            sender.send_to(&[i; 3], to).expect("send");
        }
        for _ in 0..50 {
            g.borrow_mut()
                .push(receiver.receive(DATAGRAM_SIZE).expect("receive"));
        }
        receiver.settimeout(Some(ms(10)));
        let e = receiver
            .receive(DATAGRAM_SIZE)
            .expect_err("a 51st datagram");
        assert_eq!(e.kind(), ErrorKind::Timeout);
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let expected: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 3]).collect();
    assert_eq!(*got.borrow(), expected);
}

/// A receive sized for the largest datagram returns a small one without holding the rest
/// of that size: a handler that keeps what it receives keeps its bytes, not 64 KiB each.
#[test]
fn a_small_datagram_received_with_a_large_size_holds_only_its_bytes() {
    const LARGEST: usize = 65_507;
    let (sender, receiver, to) = sender_and_receiver();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    copas::addthread(move || {
        sender.send_to(b"ten bytes!", to).expect("send");
        sender.send_to(&[7; 60_000], to).expect("send");
        g.borrow_mut()
            .push(receiver.receive(LARGEST).expect("receive"));
        g.borrow_mut()
            .push(receiver.receive(LARGEST).expect("receive"));
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let got = got.borrow();
    assert_eq!(got[0], b"ten bytes!");
    assert!(
        got[0].capacity() < LARGEST / 4,
        "a 10-byte datagram holds {} bytes",
        got[0].capacity()
    );
    assert_eq!(got[1], vec![7; 60_000]);
}

/// A size larger than any datagram can be (the caller's to choose, up to `usize::MAX`)
/// receives as the largest would, rather than reserving that much memory or panicking; the
/// same through `receivefrom`.
#[test]
fn a_size_beyond_any_datagram_receives_like_the_largest() {
    let (sender, receiver, to) = sender_and_receiver();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    copas::addthread(move || {
        sender.send_to(b"one", to).expect("send");
        sender.send_to(b"two", to).expect("send");
        sender.send_to(b"three", to).expect("send");
        let from = sender.local_addr().expect("addr");
        let mut g = g.borrow_mut();
        g.push(util::kind(receiver.receive(usize::MAX)));
        g.push(util::kind(receiver.receive(1 << 40)));
        let third = util::kind(receiver.receivefrom(usize::MAX));
        g.push(third.map(|(data, peer)| {
            assert_eq!(peer, from);
            data
        }));
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let got = got.borrow();
    assert_eq!(
        *got,
        [
            Ok(b"one".to_vec()),
            Ok(b"two".to_vec()),
            Ok(b"three".to_vec())
        ]
    );
    assert!(got.iter().flatten().all(|d| d.capacity() < 1024));
}

/// A zero timeout never waits, but takes a datagram that is there: outside a coroutine,
/// one that came after an earlier receive emptied the queue (no event announced it).
#[test]
fn zero_timeout_outside_a_coroutine_receives_what_came_after_a_drain() {
    let _dog = util::Watchdog::new("zero timeout udp", secs(20));
    let (sender, receiver, to) = sender_and_receiver();
    sender.send_to(b"one", to).expect("send");
    assert_eq!(receiver.receive(100).expect("one"), b"one");
    receiver.settimeout(Some(Duration::ZERO));
    let before = util::kind(receiver.receive(100));
    sender.send_to(b"two", to).expect("send");
    // When the kernel queues it is its business: ask until it is there (without the fix,
    // every call failed however long the datagram had waited).
    let mut after = Err(ErrorKind::Timeout);
    util::wait_until(secs(10), || {
        after = util::kind(receiver.receive(100));
        after != Err(ErrorKind::Timeout)
    });
    assert_eq!(before, Err(ErrorKind::Timeout), "nothing was there yet");
    assert_eq!(after, Ok(b"two".to_vec()));
}

/// Closing the socket wakes a coroutine waiting to receive, with `Closed`.
#[test]
fn close_wakes_a_waiting_receiver() {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let outcome = Rc::new(RefCell::new(None));
    let (s, out) = (sock.clone(), outcome.clone());
    copas::addthread(move || {
        let start = Instant::now();
        let r = s.receivefrom(DATAGRAM_SIZE).map(|_| ());
        *out.borrow_mut() = Some((r, start.elapsed()));
    })
    .expect("addthread");
    copas::addthread(move || {
        copas::pause(ms(20));
        sock.close();
        assert!(sock.is_closed());
        assert_eq!(
            sock.send(b"x").expect_err("send after close").kind(),
            ErrorKind::Closed
        );
    })
    .expect("addthread");
    util::run_checked(secs(20));
    let (r, took) = outcome.borrow_mut().take().expect("receiver returned");
    assert_eq!(r.expect_err("received").kind(), ErrorKind::Closed);
    assert!(took < secs(1), "woken after {took:?}");
    assert_eq!(copas::status().sockets, 0);
}

/// The UDP server's coroutine is `<server>:handler`, started at once; its socket carries
/// the server's name; the timeout given applies to it.
#[test]
fn udp_server_names_and_timeout() {
    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    let std_sock = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = std_sock.local_addr().expect("local_addr");
    let co = copas::addudpserver_with(
        std_sock,
        ServerOptions::new().name("dns").timeout(ms(10)),
        move |sock| {
            let thread = copas::getthreadname(None);
            let e = sock.receive(DATAGRAM_SIZE).expect_err("nobody sends");
            *s.borrow_mut() = Some((thread, sock.name(), sock.gettimeouts(), e.kind()));
        },
    )
    .expect("addudpserver_with");
    // Started at once: it is already waiting.
    assert_eq!(
        copas::getthreadname(Some(co)).as_deref(),
        Some("dns:handler")
    );
    assert_eq!(copas::status().read, 1);
    util::run_checked(secs(20));
    let (thread, name, timeouts, kind) = seen.borrow_mut().take().expect("handler ran");
    assert_eq!(thread.as_deref(), Some("dns:handler"));
    assert_eq!(name, "dns");
    assert_eq!(timeouts, (Some(ms(10)), Some(ms(10)), Some(ms(10))));
    assert_eq!(kind, ErrorKind::Timeout);

    // The default name comes from the address.
    let std_sock = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr2 = std_sock.local_addr().expect("local_addr");
    let co = copas::addudpserver(std_sock, |sock| sock.close()).expect("addudpserver");
    assert_eq!(
        copas::getthreadname(Some(co)),
        None,
        "the handler ran to its end at once"
    );
    let _ = (addr, addr2);
    util::run_checked(secs(20));
}

#[test]
fn default_names_tell_connected_from_unconnected() {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    assert_eq!(sock.name(), format!("udp{{unconnected}}:{fd}"));
    let peer = StdUdpSocket::bind("127.0.0.1:0").expect("bind peer");
    sock.setpeername(peer.local_addr().expect("addr"))
        .expect("setpeername");
    assert_eq!(sock.name(), format!("udp{{connected}}:{fd}"));
    sock.set_name("mine");
    assert_eq!(sock.name(), "mine");

    let std_sock = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = std_sock.local_addr().expect("local_addr");
    let name = Rc::new(RefCell::new(String::new()));
    let n = name.clone();
    copas::addudpserver(std_sock, move |sock| *n.borrow_mut() = sock.name()).expect("addudpserver");
    assert_eq!(*name.borrow(), format!("udp{{server}}:{addr}"));
    util::run_checked(secs(20));
}

/// TCP sockets, and Unix-domain datagram sockets (not UDP: a datagram from them has no IP
/// sender to report), are refused with `InvalidState`.
#[test]
fn tcp_and_unix_datagram_sockets_are_refused() {
    let (unix, _other_end) = std::os::unix::net::UnixDatagram::pair().expect("pair");
    let e = copas::wrapudp(unix).expect_err("a Unix datagram socket");
    assert_eq!(e.kind(), ErrorKind::InvalidState);
    let (unix, _other_end) = std::os::unix::net::UnixDatagram::pair().expect("pair");
    let e = copas::addudpserver(unix, |_| {}).expect_err("a Unix datagram socket");
    assert_eq!(e.kind(), ErrorKind::InvalidState);
    let (listener, _) = util::local_listener();
    let e = copas::addudpserver(listener, |_| {}).expect_err("a TCP listener");
    assert_eq!(e.kind(), ErrorKind::InvalidState);
    let (listener, _) = util::local_listener();
    let e = copas::wrapudp(listener).expect_err("a TCP listener");
    assert_eq!(e.kind(), ErrorKind::InvalidState);
}

/// Outside any coroutine: a receive timeout blocks the thread for that long, then
/// `Timeout`; `setpeername` by host name resolves (inline) and `send`/`receive` work.
#[test]
fn blocking_use_outside_a_coroutine() {
    let _dog = util::Watchdog::new("blocking udp", secs(20));
    let peer = StdUdpSocket::bind("127.0.0.1:0").expect("bind peer");
    let port = peer.local_addr().expect("addr").port();
    let sock = UdpSocket::bind(("localhost", 0)).expect("bind by name");
    sock.settimeout(Some(ms(30)));
    let start = Instant::now();
    let e = sock.receive(DATAGRAM_SIZE).expect_err("nothing sent");
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(start.elapsed() >= ms(30), "{:?}", start.elapsed());
    sock.setpeername(format!("localhost:{port}"))
        .expect("setpeername by name");
    sock.send(b"ping").expect("send");
    let mut buf = [0u8; 16];
    let (n, from) = peer.recv_from(&mut buf).expect("peer recv");
    assert_eq!(&buf[..n], b"ping");
    peer.send_to(b"pong", from).expect("peer send");
    sock.settimeout(Some(secs(5)));
    assert_eq!(sock.receive(DATAGRAM_SIZE).expect("receive"), b"pong");
    let e = sock
        .setpeername("no-such-host.invalid:53")
        .expect_err("resolved");
    assert_eq!(e.kind(), ErrorKind::HostNotFound);
}

/// Two coroutines wait to receive on one connected socket; then, in one event, a datagram
/// from the peer and an error (the peer's port closed, our next send refused by ICMP)
/// arrive. The event wakes one receiver, which gets the error; the datagram behind it is
/// the other's, and no later event announces it, so the first must hand the turn on.
#[test]
fn a_receiver_woken_for_an_error_hands_the_datagram_behind_it_on() {
    let peer = StdUdpSocket::bind("127.0.0.1:0").expect("bind peer");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.setpeername(peer.local_addr().expect("peer addr"))
        .expect("setpeername");
    sock.settimeout(Some(secs(10)));
    let local = sock.local_addr().expect("local addr");
    let results: Rc<RefCell<Vec<copas::Result<Vec<u8>>>>> = Rc::default();
    for _ in 0..2 {
        let (s, results) = (sock.clone(), results.clone());
        copas::addthread(move || {
            let got = s.receive(DATAGRAM_SIZE);
            results.borrow_mut().push(got);
        })
        .expect("receiver");
    }
    copas::addthread(move || {
        let start = Instant::now();
        while copas::status().read < 2 && start.elapsed() < secs(5) {
            copas::pause(ms(1));
        }
        assert_eq!(copas::status().read, 2, "the receivers never waited");
        // No yield from here to the end: both arrive before the dispatcher polls again.
        peer.send_to(b"behind the error", local).expect("peer send");
        drop(peer);
        // The ICMP port-unreachable comes back within this send on loopback.
        sock.send(b"to a closed port").expect("send");
    })
    .expect("sender");
    let took = util::run_checked(secs(30));
    let results = results.borrow();
    assert_eq!(results.len(), 2, "{results:?}");
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.kind() == ErrorKind::Refused))
        .count();
    let datagrams: Vec<&Vec<u8>> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(refused, 1, "{results:?}");
    assert_eq!(datagrams, [&b"behind the error".to_vec()], "{results:?}");
    assert!(
        took < secs(5),
        "took {took:?}: a receiver slept until its timeout"
    );
}

/// A datagram read in the same system call as the one before it (`recvmmsg` on Linux) is
/// delivered as the kernel would have: cut to the next receive's size with its real length
/// reported, and with its own sender, an empty datagram included.
#[test]
fn a_datagram_received_ahead_is_cut_to_the_next_receives_size() {
    let (sender, receiver, to) = sender_and_receiver();
    let other = StdUdpSocket::bind("127.0.0.1:0").expect("bind other sender");
    let (from, from_other) = (
        sender.local_addr().expect("addr"),
        other.local_addr().expect("addr"),
    );
    let done = Rc::new(RefCell::new(false));
    let d = done.clone();
    copas::addthread(move || {
        let big: Vec<u8> = (0..100u8).collect();
        sender.send_to(b"ten bytes!", to).expect("send");
        sender.send_to(&big, to).expect("send big");
        assert_eq!(receiver.receive(50).expect("first"), b"ten bytes!");
        let e = receiver.receive(50).expect_err("100 bytes fitted in 50");
        assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e:?}");
        assert_eq!(e.partial(), &big[..50]);
        if cfg!(target_os = "linux") {
            assert!(e.to_string().contains("100 bytes"), "{e}");
        }

        other.send_to(b"", to).expect("send empty");
        sender.send_to(&[9; 60_000], to).expect("send large");
        other.send_to(b"last", to).expect("send last");
        assert_eq!(
            receiver.receivefrom(DATAGRAM_SIZE).expect("empty"),
            (Vec::new(), from_other)
        );
        assert_eq!(
            receiver.receivefrom(65_507).expect("large"),
            (vec![9; 60_000], from)
        );
        assert_eq!(
            receiver.receivefrom(DATAGRAM_SIZE).expect("last"),
            (b"last".to_vec(), from_other)
        );
        receiver.settimeout(Some(ms(10)));
        let e = receiver.receive(DATAGRAM_SIZE).expect_err("a fourth");
        assert_eq!(e.kind(), ErrorKind::Timeout);
        *d.borrow_mut() = true;
    })
    .expect("addthread");
    util::run_checked(secs(20));
    assert!(*done.borrow());
}

/// A datagram received ahead of its turn goes with the socket when it is closed.
#[test]
fn close_drops_a_datagram_received_ahead() {
    let (sender, receiver, to) = sender_and_receiver();
    let done = Rc::new(RefCell::new(false));
    let d = done.clone();
    copas::addthread(move || {
        sender.send_to(b"one", to).expect("send");
        sender.send_to(b"two", to).expect("send");
        assert_eq!(receiver.receive(DATAGRAM_SIZE).expect("one"), b"one");
        receiver.close();
        let e = receiver.receive(DATAGRAM_SIZE).expect_err("after close");
        assert_eq!(e.kind(), ErrorKind::Closed);
        *d.borrow_mut() = true;
    })
    .expect("addthread");
    util::run_checked(secs(20));
    assert!(*done.borrow());
}

/// Two coroutines receiving on one socket, yielding after each datagram, share bursts of
/// datagrams: each reaches exactly one of them, none is left behind when a receive takes
/// two from the kernel, and both get some.
#[test]
fn two_receivers_share_bursts_exactly_once() {
    const BURSTS: u16 = 20;
    const PER_BURST: u16 = 25;
    let (sender, receiver, to) = sender_and_receiver();
    let got: Rc<RefCell<Vec<(usize, u16)>>> = Rc::default();
    for who in 0..2 {
        let (s, got) = (receiver.clone(), got.clone());
        copas::addthread(move || {
            s.settimeout(Some(ms(300)));
            // Ends at the first quiet 300 ms after the last burst.
            for _ in 0..usize::from(BURSTS * PER_BURST) + 1 {
                let Ok(data) = s.receive(DATAGRAM_SIZE) else {
                    break;
                };
                let n = u16::from_be_bytes([data[0], data[1]]);
                got.borrow_mut().push((who, n));
                // Lets the other receiver in: it waits, and must be handed the turn for
                // a datagram this one took from the kernel ahead of its own.
                copas::pause(Duration::ZERO);
            }
        })
        .expect("receiver");
    }
    copas::addthread(move || {
        for burst in 0..BURSTS {
            for i in 0..PER_BURST {
                let n = burst * PER_BURST + i;
                sender.send_to(&n.to_be_bytes(), to).expect("send");
            }
            copas::pause(ms(2));
        }
    })
    .expect("sender");
    util::run_checked(secs(30));
    let got = got.borrow();
    let mut numbers: Vec<u16> = got.iter().map(|&(_, n)| n).collect();
    numbers.sort_unstable();
    let expected: Vec<u16> = (0..BURSTS * PER_BURST).collect();
    assert_eq!(numbers, expected, "lost or doubled datagrams");
    for who in 0..2 {
        assert!(
            got.iter().any(|&(w, _)| w == who),
            "receiver {who} got nothing"
        );
    }
}

/// A request and its answer, 999 times against the echo server: each receive that
/// found the queue empty waits for the next datagram's edge and must still see it.
#[test]
fn request_response_rounds_lose_no_datagram() {
    let (addr, server) = echo_server();
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client.setpeername(addr).expect("setpeername");
    client.settimeout(Some(secs(5)));
    let rounds = Rc::new(RefCell::new(0));
    let r = rounds.clone();
    copas::addthread(move || {
        for i in 0..999u32 {
            client.send(&i.to_be_bytes()).expect("send");
            let echo = client.receive(DATAGRAM_SIZE).expect("echo");
            assert_eq!(echo, i.to_be_bytes());
            *r.borrow_mut() += 1;
        }
        server.close();
    })
    .expect("client");
    let took = util::run_checked(secs(60));
    assert_eq!(*rounds.borrow(), 999);
    assert!(
        took < secs(30),
        "took {took:?}: a receive waited for its timeout"
    );
}

#[test]
fn a_udp_servers_socket_ends_with_its_handler_whatever_autoclose_says() {
    // `set_autoclose` is about accepted TCP connections (Copas: "only applies to sockets
    // accepted on a TCP server"); a UDP server lives as long as its handler.
    let _dog = util::Watchdog::new("udp server lifetime", secs(30));
    let results = Rc::new(RefCell::new(Vec::new()));
    for autoclose in [true, false] {
        copas::set_autoclose(autoclose);
        let std_sock = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = std_sock.local_addr().expect("local_addr");
        let r = results.clone();
        copas::addudpserver(std_sock, move |sock| {
            // Another coroutine keeps a handle; the handler returns at once.
            let kept = sock.clone();
            copas::addthread(move || {
                copas::pause(ms(20));
                let peer = StdUdpSocket::bind("127.0.0.1:0").expect("bind peer");
                peer.send_to(b"ping", addr).expect("send_to");
                kept.settimeout(Some(ms(500)));
                r.borrow_mut().push(kept.receive(100).map_err(|e| e.kind()));
            })
            .expect("addthread");
        })
        .expect("addudpserver");
        util::run_checked(secs(5));
    }
    copas::set_autoclose(true);
    // Before: with autoclose off the socket outlived its handler and got the datagram.
    assert_eq!(
        *results.borrow(),
        [Err(ErrorKind::Closed), Err(ErrorKind::Closed)]
    );
}

/// `send` on a socket without a peer is the system's refusal, `EDESTADDRREQ`, an `Io`
/// error (not `Closed`, which the socket is not), as its docs say.
#[test]
fn send_without_a_peer_is_the_systems_destination_address_required() {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let err = sock.send(b"nowhere").expect_err("sent without a peer");
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    let os = err.io_error().and_then(std::io::Error::raw_os_error);
    assert_eq!(os, Some(libc::EDESTADDRREQ), "{err}");
    // Still usable once it has a peer.
    let peer = StdUdpSocket::bind("127.0.0.1:0").expect("bind the peer");
    sock.setpeername(peer.local_addr().expect("peer address"))
        .expect("setpeername");
    assert_eq!(sock.send(b"somewhere").expect("send"), 9);
}

// ----- recv_from / recv into a caller's buffer (std-shaped) ------------------------------------

/// `recv_from` into a caller's buffer, inside a coroutine and outside: the datagram and its
/// sender; one larger than the buffer is `LimitExceeded` with what fitted in the buffer, and
/// consumed; exactly the buffer's size fits; an empty datagram is 0 bytes; the datagram
/// received ahead of its turn (two queued) lands in the next call's buffer, cut to it.
#[test]
fn recv_from_fills_the_callers_buffer_and_reports_what_did_not_fit() {
    fn check(receiver: &UdpSocket, sender: &StdUdpSocket) {
        let to = receiver.local_addr().expect("local_addr");
        let from = sender.local_addr().expect("sender addr");
        let big: Vec<u8> = (0..100u8).collect();
        let mut buf = [0u8; 100];

        sender.send_to(b"hello", to).expect("send");
        assert_eq!(receiver.recv_from(&mut buf).expect("hello"), (5, from));
        assert_eq!(&buf[..5], b"hello");

        // Two queued: the first read by the system call, the second kept for the next one.
        sender.send_to(&big, to).expect("send big");
        sender.send_to(&big, to).expect("send big again");
        let e = receiver
            .recv_from(&mut buf[..10])
            .expect_err("100 bytes fitted in 10");
        assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e:?}");
        assert_eq!(&buf[..10], &big[..10]);
        if cfg!(target_os = "linux") {
            assert!(e.to_string().contains("100 bytes"), "{e}");
        }
        let e = receiver
            .recv_from(&mut buf[..99])
            .expect_err("the one behind, 100 bytes, fitted in 99");
        assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e:?}");
        assert_eq!(&buf[..99], &big[..99]);
        assert!(e.to_string().contains(&from.to_string()), "{e}");

        sender.send_to(&big, to).expect("send big");
        sender.send_to(b"", to).expect("send empty");
        buf.fill(0);
        assert_eq!(
            receiver.recv_from(&mut buf).expect("exact fit"),
            (100, from)
        );
        assert_eq!(&buf[..], &big[..]);
        assert_eq!(receiver.recv(&mut buf).expect("empty"), 0);
        assert_eq!(
            receiver.recv(&mut []).expect_err("nothing came").kind(),
            ErrorKind::Timeout
        );
    }

    outside_then_in_a_coroutine(Some(ms(20)), check);
}

/// `recv_from` and `receivefrom` on one socket share its queue: a datagram read ahead by
/// one is delivered by the other, whole, once, in order.
#[test]
fn recv_from_and_receivefrom_share_the_datagram_read_ahead() {
    let (sender, receiver, to) = sender_and_receiver();
    let from = sender.local_addr().expect("addr");
    let done = Rc::new(RefCell::new(false));
    let d = done.clone();
    copas::addthread(move || {
        for round in 0..50u8 {
            sender.send_to(&[round; 3], to).expect("send a");
            sender.send_to(&[round; 7], to).expect("send b");
            let mut buf = [0u8; 64];
            let (n, got_from) = receiver.recv_from(&mut buf).expect("first");
            assert_eq!((&buf[..n], got_from), (&[round; 3][..], from));
            assert_eq!(
                receiver.receivefrom(64).expect("second"),
                (vec![round; 7], from)
            );
            sender.send_to(&[round; 5], to).expect("send c");
            sender.send_to(&[round; 9], to).expect("send d");
            assert_eq!(receiver.receive(64).expect("third"), vec![round; 5]);
            assert_eq!(receiver.recv(&mut buf).expect("fourth"), 9);
            assert_eq!(&buf[..9], &[round; 9]);
        }
        receiver.settimeout(Some(ms(10)));
        let e = receiver.recv(&mut [0u8; 8]).expect_err("nothing left");
        assert_eq!(e.kind(), ErrorKind::Timeout);
        *d.borrow_mut() = true;
    })
    .expect("addthread");
    util::run_checked(secs(20));
    assert!(*done.borrow());
}
