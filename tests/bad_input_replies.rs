//! The SMTP and FTP clients against scripted raw peers (std threads on loopback) that answer
//! with malformed replies (no code, a code out of range, garbage, continuation lines with
//! another code) or endless ones (a line that never ends, a multi-line reply that never
//! ends): each is a typed error (`Protocol` or `LimitExceeded`, or `Timeout` from the client's
//! own timeout when the peer just stops), with bounded memory, and nothing hangs. Also:
//! `ftp::get`, which collects a download into memory, stops at its limit; a transfer
//! answered by its completion at once; a URL's explicit port 21.

#[path = "util/heap.rs"]
mod heap;
#[path = "util/raw_peer.rs"]
mod raw_peer;
mod util;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use copas::client::ftp;
use copas::client::ftp::MAX_GET_BYTES;
use copas::client::reply::{MAX_REPLY_BYTES, MAX_REPLY_LINE};
use copas::client::smtp::{self, Mail, StartTls};
use copas::ErrorKind;
use heap::peak_heap;
use raw_peer::{peer, send, PeerLog, Step, ENDLESS};
use util::secs;

/// The heap a client may hold while it reads one reply: the reply's limit, its copy as
/// text lines, and the socket's buffer.
const REPLY_HEAP: usize = 4 * MAX_REPLY_BYTES;

/// A mail to the peer at `addr`, with a short timeout and no STARTTLS.
fn mail(addr: SocketAddr) -> Mail {
    Mail::new(addr.to_string(), "alice@example.org")
        .to("bob@example.org")
        .message("Subject: hi\r\n\r\nhello\r\n")
        .starttls(StartTls::Never)
        .timeout(secs(5))
}

/// An SMTP peer that greets with `greeting`, answers `EHLO` with `ehlo`, and everything
/// else of a normal session correctly.
fn smtp_peer(greeting: Step, ehlo: Step) -> (SocketAddr, JoinHandle<PeerLog>) {
    peer(vec![smtp_script(greeting, ehlo, send("221 bye\r\n"))])
}

/// The script of [`smtp_peer`], with `goodbye` as the answer to `QUIT`.
fn smtp_script(greeting: Step, ehlo: Step, goodbye: Step) -> Vec<Step> {
    vec![
        greeting,
        Step::ReadLine, // EHLO
        ehlo,
        Step::ReadLine, // MAIL FROM
        send("250 sender ok\r\n"),
        Step::ReadLine, // RCPT TO
        send("250 recipient ok\r\n"),
        Step::ReadLine, // DATA
        send("354 go ahead\r\n"),
        Step::ReadLine, // Subject
        Step::ReadLine, // blank
        Step::ReadLine, // hello
        Step::ReadLine, // .
        send("250 queued\r\n"),
        Step::ReadLine, // QUIT
        goodbye,
    ]
}

fn smtp_outcome(greeting: Step, ehlo: Step) -> (Result<u16, ErrorKind>, PeerLog, usize) {
    let (addr, peer) = smtp_peer(greeting, ehlo);
    let (got, heap) = peak_heap(|| smtp::send(&mail(addr)));
    let log = peer.join().expect("peer");
    (got.map(|r| r.code()).map_err(|e| e.kind()), log, heap)
}

/// An FTP peer that greets with `greeting`, then answers one command with `reply`.
fn ftp_peer(greeting: Step, reply: Step) -> (SocketAddr, JoinHandle<PeerLog>) {
    peer(vec![vec![greeting, Step::ReadLine, reply]])
}

/// Connects to an FTP peer and sends `NOOP`; the reply's lines, or the error's kind.
fn ftp_outcome(greeting: Step, reply: Step) -> (Result<Vec<String>, ErrorKind>, PeerLog, usize) {
    let (addr, peer) = ftp_peer(greeting, reply);
    let (got, heap) = peak_heap(|| {
        let mut client = ftp::Client::connect(addr, Some(secs(5)))?;
        client.command("NOOP", None)
    });
    let log = peer.join().expect("peer");
    (
        got.map(|r| r.lines().to_vec()).map_err(|e| e.kind()),
        log,
        heap,
    )
}

const MALFORMED: &[&str] = &[
    "hello there\r\n",
    "\r\n",
    "99 short\r\n",
    "000 zero\r\n",
    "099 low\r\n",
    "600 high\r\n",
    "999 high\r\n",
    "2200 ready\r\n",
    "22 0 ready\r\n",
    "22a ready\r\n",
    "-220 ready\r\n",
    " 220 ready\r\n",
    "\u{0}\u{1}\u{2} binary\r\n",
];

#[test]
fn smtp_replies_without_a_valid_code_are_protocol_errors() {
    let _dog = util::Watchdog::new("smtp malformed", secs(60));
    let good_ehlo = || send("250 hello\r\n");
    for greeting in MALFORMED {
        let (got, _, _) = smtp_outcome(send(greeting), good_ehlo());
        assert_eq!(got, Err(ErrorKind::Protocol), "greeting {greeting:?}");
        let (got, _, _) = smtp_outcome(send("220 ready\r\n"), send(greeting));
        assert_eq!(got, Err(ErrorKind::Protocol), "EHLO reply {greeting:?}");
    }
    let (got, _, _) = smtp_outcome(
        Step::Send(b"220 \xff\xfe not UTF-8\r\n".to_vec()),
        good_ehlo(),
    );
    assert_eq!(got, Err(ErrorKind::Protocol), "not UTF-8");
    // The control: the same peer with well-formed replies delivers.
    let (got, _, _) = smtp_outcome(send("220 ready\r\n"), good_ehlo());
    assert_eq!(got, Ok(250));
}

#[test]
fn smtp_continuation_lines_with_another_code_are_protocol_errors() {
    let _dog = util::Watchdog::new("smtp continuation", secs(60));
    for ehlo in [
        "250-hello\r\n251 other code\r\n",
        "250-hello\r\n250-SIZE 1000\r\n550 other code last\r\n",
        "250-hello\r\n220-other code inside\r\n250 end\r\n",
        "250-hello\r\nfree text\r\n250 end\r\n",
        "250-hello\r\n250x no separator\r\n250 end\r\n",
    ] {
        let (got, _, _) = smtp_outcome(send("220 ready\r\n"), send(ehlo));
        assert_eq!(got, Err(ErrorKind::Protocol), "EHLO reply {ehlo:?}");
    }
    let (got, _, _) = smtp_outcome(send("220-ready\r\n221 bye\r\n"), send("250 hello\r\n"));
    assert_eq!(got, Err(ErrorKind::Protocol), "greeting with two codes");
    // The control: a well-formed multi-line reply.
    let (got, _, _) = smtp_outcome(
        send("220-ready\r\n220 really\r\n"),
        send("250-hello\r\n250-SIZE 1000\r\n250 HELP\r\n"),
    );
    assert_eq!(got, Ok(250));
}

#[test]
fn ftp_replies_without_a_valid_code_are_protocol_errors() {
    let _dog = util::Watchdog::new("ftp malformed", secs(60));
    for bad in MALFORMED {
        let (got, _, _) = ftp_outcome(send(bad), send("200 ok\r\n"));
        assert_eq!(got, Err(ErrorKind::Protocol), "greeting {bad:?}");
        let (got, _, _) = ftp_outcome(send("220 ready\r\n"), send(bad));
        assert_eq!(got, Err(ErrorKind::Protocol), "NOOP reply {bad:?}");
    }
    let (got, _, _) = ftp_outcome(send("220 ready\r\n"), send("200 ok\r\n"));
    assert_eq!(got, Ok(vec!["ok".to_string()]));
}

/// FTP's rule (RFC 959 §4.2): only the reply's own code and a space end a multi-line reply;
/// lines with another code are text. So they cannot end it early — and an endless run of
/// them ends at the line-count limit.
#[test]
fn ftp_lines_with_another_code_stay_inside_a_multi_line_reply() {
    let _dog = util::Watchdog::new("ftp continuation", secs(60));
    let (got, _, _) = ftp_outcome(
        send("220 ready\r\n"),
        send("200-start\r\n211 other code\r\n 200 indented\r\n200-more\r\n200 end\r\n"),
    );
    assert_eq!(
        got,
        Ok(["start", "211 other code", " 200 indented", "more", "end"]
            .map(String::from)
            .to_vec())
    );
    let (got, log, _) = ftp_outcome(
        send("220 ready\r\n"),
        Step::Send(
            [
                b"200-start\r\n".to_vec(),
                b"211 other code\r\n".repeat(5000),
            ]
            .concat(),
        ),
    );
    assert_eq!(
        got,
        Err(ErrorKind::LimitExceeded),
        "peer wrote {}",
        log.written
    );
}

#[test]
fn an_endless_reply_line_is_refused_at_the_line_limit_with_bounded_memory() {
    let _dog = util::Watchdog::new("endless reply line", secs(60));
    let endless = || vec![send("220 "), Step::Endless(b"x".to_vec())];
    let (got, log, heap) = {
        let (addr, smtp_peer) = peer(vec![endless()]);
        let (got, heap) = peak_heap(|| smtp::send(&mail(addr)).map(|r| r.code()));
        (
            got.map_err(|e| e.kind()),
            smtp_peer.join().expect("peer"),
            heap,
        )
    };
    eprintln!(
        "smtp: client peak heap {heap} B; peer wrote {} B",
        log.written
    );
    assert_eq!(got, Err(ErrorKind::LimitExceeded));
    assert!(
        heap < 4 * MAX_REPLY_LINE + 256 * 1024,
        "the client held {heap} bytes"
    );
    assert!(log.written < ENDLESS / 4, "the peer wrote {}", log.written);

    let (addr, ftp_peer) = peer(vec![endless()]);
    let (got, heap) = peak_heap(|| ftp::Client::connect(addr, Some(secs(5))).map(|_| ()));
    let log = ftp_peer.join().expect("peer");
    eprintln!(
        "ftp: client peak heap {heap} B; peer wrote {} B",
        log.written
    );
    assert_eq!(got.map_err(|e| e.kind()), Err(ErrorKind::LimitExceeded));
    assert!(
        heap < 4 * MAX_REPLY_LINE + 256 * 1024,
        "the client held {heap} bytes"
    );
    assert!(log.written < ENDLESS / 4, "the peer wrote {}", log.written);
}

#[test]
fn an_endless_multi_line_reply_is_refused_at_the_reply_limits_with_bounded_memory() {
    let _dog = util::Watchdog::new("endless multi-line reply", secs(60));
    let long_line = format!("220-{}\r\n", "y".repeat(MAX_REPLY_LINE - 10));
    for (what, line) in [
        ("short lines", "220-more\r\n".to_string()),
        ("long lines", long_line),
    ] {
        let endless = Step::Endless(line.into_bytes());
        let (got, log, heap) = smtp_outcome(endless.clone(), send("250 hello\r\n"));
        eprintln!(
            "smtp {what}: client peak heap {heap} B; peer wrote {} B",
            log.written
        );
        assert_eq!(got, Err(ErrorKind::LimitExceeded), "smtp {what}");
        assert!(
            heap < REPLY_HEAP,
            "smtp {what}: the client held {heap} bytes"
        );
        assert!(log.written < ENDLESS / 4, "the peer wrote {}", log.written);

        let (got, log, heap) = ftp_outcome(endless, send("200 ok\r\n"));
        eprintln!(
            "ftp {what}: client peak heap {heap} B; peer wrote {} B",
            log.written
        );
        assert_eq!(got, Err(ErrorKind::LimitExceeded), "ftp {what}");
        assert!(
            heap < REPLY_HEAP,
            "ftp {what}: the client held {heap} bytes"
        );
        assert!(log.written < ENDLESS / 4, "the peer wrote {}", log.written);
    }
}

#[test]
fn a_reply_that_stops_midway_times_out_or_is_closed() {
    let _dog = util::Watchdog::new("stalled replies", secs(60));
    for stalled in [
        "220-first line\r\n",
        "220 no line end",
        "220-first\r\n220 half",
    ] {
        for close in [false, true] {
            // Closed at the end of the script, or silent for longer than the timeout.
            let script = if close {
                vec![send(stalled)]
            } else {
                vec![send(stalled), Step::Hold(secs(10))]
            };
            let expected = if close {
                ErrorKind::Closed
            } else {
                ErrorKind::Timeout
            };
            let (addr, smtp_peer) = peer(vec![script.clone()]);
            let start = Instant::now();
            let got = smtp::send(&mail(addr).timeout(Duration::from_millis(300)));
            let took = start.elapsed();
            smtp_peer.join().expect("peer");
            assert_eq!(
                got.map(|r| r.code()).map_err(|e| e.kind()),
                Err(expected),
                "smtp {stalled:?}"
            );
            assert!(took < secs(5), "smtp {stalled:?} took {took:?}");

            let (addr, ftp_peer) = peer(vec![script]);
            let start = Instant::now();
            let got = ftp::Client::connect(addr, Some(Duration::from_millis(300))).map(|_| ());
            let took = start.elapsed();
            ftp_peer.join().expect("peer");
            assert_eq!(got.map_err(|e| e.kind()), Err(expected), "ftp {stalled:?}");
            assert!(took < secs(5), "ftp {stalled:?} took {took:?}");
        }
    }
}

/// An FTP session with one transfer over a data connection at `data_port` (the peer's data
/// thread serves it): login, binary, `EPSV`, the transfer's `150`, then its `226` whether or
/// not the client took it all, and `QUIT`.
fn one_transfer_script(data_port: u16) -> Vec<Step> {
    let reply = |text: &str| vec![Step::ReadLine, send(text)];
    [
        vec![send("220 ready\r\n")],
        reply("331 password\r\n"),
        reply("230 in\r\n"),
        reply("200 binary\r\n"),
        reply(&format!(
            "229 Entering Extended Passive Mode (|||{data_port}|)\r\n"
        )),
        reply("150 here it comes\r\n"),
        vec![send("226 done\r\n")],
        reply("221 bye\r\n"),
    ]
    .concat()
}

/// A data connection that serves `bytes` to the one client that connects, and
/// [`one_transfer_script`] for its port.
fn one_transfer_of(bytes: &'static [u8]) -> (JoinHandle<()>, Vec<Step>) {
    let (data_listener, data_addr) = util::local_listener();
    let data = std::thread::spawn(move || {
        let (mut s, _) = data_listener.accept().expect("data accept");
        std::io::Write::write_all(&mut s, bytes).expect("data write");
    });
    (data, one_transfer_script(data_addr.port()))
}

/// A server may answer a transfer with its completion at once, in place of the `150`
/// (LuaSocket takes that as success): what the data connection carried is the download,
/// and the session goes on to its `QUIT`.
#[test]
fn ftp_a_completion_in_place_of_the_preliminary_reply_is_a_finished_transfer() {
    let _dog = util::Watchdog::new("ftp completion at once", secs(60));
    let (data, mut script) = one_transfer_of(b"all of it");
    // Login, binary and EPSV as usual; RETR's first reply is its last.
    let preliminary = script
        .iter()
        .position(|step| matches!(step, Step::Send(text) if text.starts_with(b"150")))
        .expect("the script has a 150");
    script[preliminary] = send("226 done at once\r\n");
    script.remove(preliminary + 1);
    let (addr, peer) = peer(vec![script]);
    let url = format!("ftp://127.0.0.1:{}/f.bin", addr.port());
    let got = ftp::get(&url).map_err(|e| (e.kind(), e.reply_code()));
    data.join().expect("data");
    let log = peer.join().expect("peer");
    assert_eq!(got, Ok(b"all of it".to_vec()));
    assert_eq!(log.accepted, 1);
}

/// `ftp://host:21/` names port 21, which `Options::port` must not replace (the URL parser
/// reports no port for the scheme's default).
#[test]
fn ftp_a_url_that_names_port_21_is_not_sent_to_the_options_port() {
    let _dog = util::Watchdog::new("ftp port 21", secs(60));
    let (listener, other) = util::local_listener();
    listener.set_nonblocking(true).expect("nonblocking");
    let opts = ftp::Options::new()
        .port(other.port())
        .timeout(Some(secs(5)));
    let _ = ftp::Client::open("ftp://127.0.0.1:21/f.bin", &opts);
    assert!(
        listener.accept().is_err(),
        "the client connected to the options' port {}",
        other.port()
    );
}

/// `ftp::get` collects into memory: a download past `MAX_GET_BYTES` is refused, while
/// `get_to` streams the same file whole (the peer serves it over a real data connection).
#[test]
fn ftp_get_refuses_a_download_past_its_memory_limit() {
    let _dog = util::Watchdog::new("ftp get limit", secs(120));
    let size = MAX_GET_BYTES as usize + 1;
    for streamed in [false, true] {
        let (data_listener, data_addr) = util::local_listener();
        let data = std::thread::spawn(move || {
            let (mut s, _) = data_listener.accept().expect("data accept");
            let block = vec![b'd'; 1 << 20];
            let mut sent = 0;
            while sent < size {
                let n = block.len().min(size - sent);
                if std::io::Write::write_all(&mut s, &block[..n]).is_err() {
                    break;
                }
                sent += n;
            }
            sent
        });
        let (addr, peer) = peer(vec![one_transfer_script(data_addr.port())]);
        let url = format!("ftp://127.0.0.1:{}/big.bin", addr.port());
        let got = if streamed {
            let mut counter = CountingSink(0);
            ftp::get_to(
                &url,
                &ftp::Options::new().timeout(Some(secs(20))),
                &mut counter,
            )
            .map(|n| (n, counter.0))
            .map_err(|e| e.kind())
        } else {
            ftp::get(&url)
                .map(|v| (v.len() as u64, v.len() as u64))
                .map_err(|e| e.kind())
        };
        let sent = data.join().expect("data");
        peer.join().expect("peer");
        if streamed {
            assert_eq!(
                got,
                Ok((size as u64, size as u64)),
                "get_to streams it whole"
            );
            assert_eq!(sent, size);
        } else {
            assert_eq!(
                got,
                Err(ErrorKind::LimitExceeded),
                "get collects at most the limit"
            );
        }
    }
}

/// A `Write` that only counts.
struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A server that accepts the mail and then never answers `QUIT` holds `send` a second at
/// most, not for the whole receive timeout: the mail is delivered by then.
#[test]
fn a_silent_goodbye_after_an_accepted_mail_does_not_hold_the_sender() {
    let _dog = util::Watchdog::new("smtp silent goodbye", secs(60));
    let (addr, peer) = peer(vec![smtp_script(
        send("220 ready\r\n"),
        send("250 hello\r\n"),
        Step::Hold(secs(15)),
    )]);
    let start = Instant::now();
    let got = smtp::send(&mail(addr).timeout(secs(10)));
    let took = start.elapsed();
    peer.join().expect("peer");
    assert_eq!(got.map(|r| r.code()).map_err(|e| e.kind()), Ok(250));
    assert!(
        took < secs(5),
        "send took {took:?} for a goodbye nobody answered"
    );
}

/// A reply that could not be read whole leaves the control connection out of step: what
/// the server says next may answer the command before. The client closes it, so a later
/// command fails with `Closed` instead of taking another command's reply (here the late
/// `200` of a `NOOP` would have been read as the reply to a `DELE` the server refused).
#[test]
fn ftp_a_reply_that_came_too_late_closes_the_control_connection() {
    let _dog = util::Watchdog::new("ftp late reply", secs(30));
    let (addr, peer) = peer(vec![vec![
        send("220 hi\r\n"),
        Step::ReadLine, // NOOP
        Step::Hold(Duration::from_millis(1200)),
        send("200 NOOP ok\r\n"),
        send("550 x: no such file\r\n"),
        Step::Hold(secs(2)),
    ]]);
    let mut client = ftp::Client::connect(addr, Some(Duration::from_millis(300))).unwrap();
    let noop = client.command("NOOP", None).map(|r| r.code());
    assert_eq!(noop.map_err(|e| e.kind()), Err(ErrorKind::Timeout));
    client.set_timeout(Some(secs(5)));
    let dele = client.dele("x").map(|r| r.code()).map_err(|e| e.kind());
    drop(client);
    peer.join().expect("peer");
    assert_eq!(dele, Err(ErrorKind::Closed));
}

/// The same after a reply line over the line limit: its tail stays buffered, and the
/// commands after it would have read the tail, then each the reply of the one before.
#[test]
fn ftp_a_reply_line_over_the_limit_closes_the_control_connection() {
    let _dog = util::Watchdog::new("ftp long reply line", secs(30));
    let long = format!("200 {}\r\n", "x".repeat(MAX_REPLY_LINE + 100));
    let (addr, peer) = peer(vec![vec![
        send("220 hi\r\n"),
        Step::ReadLine, // NOOP
        Step::Send(long.into_bytes()),
        Step::Hold(secs(2)),
    ]]);
    let mut client = ftp::Client::connect(addr, Some(secs(5))).unwrap();
    let noop = client.command("NOOP", None).map(|r| r.code());
    assert_eq!(noop.map_err(|e| e.kind()), Err(ErrorKind::LimitExceeded));
    let dele = client.dele("x").map(|r| r.code()).map_err(|e| e.kind());
    let mkd = client.mkd("d").map(|r| r.code()).map_err(|e| e.kind());
    drop(client);
    peer.join().expect("peer");
    assert_eq!(
        (dele, mkd),
        (Err(ErrorKind::Closed), Err(ErrorKind::Closed))
    );
}

/// `MAX_LISTING` bounds a listing's entries as well as its bytes: millions of one-letter
/// names (24 bytes of `String` each, and their own allocation) used to take many times the
/// limit in memory; such a listing is refused, with the heap bounded near the limit.
#[test]
fn ftp_a_listing_of_millions_of_short_names_is_refused_with_bounded_memory() {
    let _dog = util::Watchdog::new("ftp listing entries", secs(60));
    // Under MAX_LISTING bytes, over MAX_LISTING when counted as entries.
    let names = ftp::MAX_LISTING / 20;
    let (data_listener, data_addr) = util::local_listener();
    let data = std::thread::spawn(move || {
        let (mut s, _) = data_listener.accept().expect("data accept");
        let block = b"a\n".repeat(1 << 16);
        for _ in 0..names.div_ceil(1 << 16) {
            if std::io::Write::write_all(&mut s, &block).is_err() {
                break;
            }
        }
    });
    let (addr, peer) = peer(vec![one_transfer_script(data_addr.port())]);
    let url = format!("ftp://127.0.0.1:{}/", addr.port());
    let (got, heap) = peak_heap(|| ftp::list(&url).map(|v| v.len()).map_err(|e| e.kind()));
    data.join().expect("data");
    peer.join().expect("peer");
    assert_eq!(got, Err(ErrorKind::LimitExceeded));
    // The bytes received (in a vector that may have doubled) and the entries up to the limit.
    assert!(heap < 4 * ftp::MAX_LISTING, "peak heap {heap} bytes");
}

/// The receive timeout bounds a whole reply, as `Mail::timeouts` says ("for each reply"): a
/// server sending a long reply a line at a time, each line within the timeout, held the
/// client for as many timeouts as lines (up to 1,000). Here 12 lines 250 ms apart under a
/// 400 ms timeout took 3 s, for SMTP's `EHLO` and for an FTP greeting alike.
#[test]
fn a_reply_dribbled_a_line_at_a_time_is_bounded_by_one_receive_timeout() {
    let _dog = util::Watchdog::new("dribbled replies", secs(60));
    let dribbled = |first: &str| {
        let mut steps = Vec::new();
        for i in 0..12 {
            steps.push(send(&format!("{first}-line {i}\r\n")));
            steps.push(Step::Hold(Duration::from_millis(250)));
        }
        steps.push(send(&format!("{first} last\r\n")));
        steps
    };
    let mut smtp_steps = vec![send("220 ready\r\n"), Step::ReadLine];
    smtp_steps.extend(dribbled("250"));
    let (addr, smtp_peer) = peer(vec![smtp_steps]);
    let start = Instant::now();
    let got = smtp::send(&mail(addr).timeouts(
        Some(secs(5)),
        Some(secs(5)),
        Some(Duration::from_millis(400)),
    ));
    let took = start.elapsed();
    smtp_peer.join().expect("peer");
    assert_eq!(
        got.map(|r| r.code()).map_err(|e| e.kind()),
        Err(ErrorKind::Timeout)
    );
    assert!(
        took < Duration::from_millis(2000),
        "smtp: EHLO's reply took {took:?}"
    );

    let (addr, ftp_peer) = peer(vec![dribbled("220")]);
    let start = Instant::now();
    let got = ftp::Client::connect(addr, Some(Duration::from_millis(400))).map(|_| ());
    let took = start.elapsed();
    ftp_peer.join().expect("peer");
    assert_eq!(got.map_err(|e| e.kind()), Err(ErrorKind::Timeout));
    assert!(
        took < Duration::from_millis(2000),
        "ftp: the greeting took {took:?}"
    );
}

/// A one-call transfer whose server never answers `QUIT` returns a second after the work is
/// done at most, not after a whole receive timeout (as SMTP's silent goodbye): the file had
/// come whole with its `226`, and the reply to `QUIT` changes nothing.
#[test]
fn ftp_a_silent_quit_after_a_finished_transfer_does_not_hold_the_caller() {
    let _dog = util::Watchdog::new("ftp silent quit", secs(60));
    let (data, mut script) = one_transfer_of(b"all of it");
    let bye = script.len() - 1;
    script[bye] = Step::Hold(secs(15));
    let (addr, peer) = peer(vec![script]);
    let url = format!("ftp://127.0.0.1:{}/f.bin", addr.port());
    let start = Instant::now();
    let mut out = Vec::new();
    let got = ftp::get_to(&url, &ftp::Options::new().timeout(Some(secs(10))), &mut out);
    let took = start.elapsed();
    data.join().expect("data");
    peer.join().expect("peer");
    assert_eq!(got.map_err(|e| e.kind()), Ok(9));
    assert_eq!(out, b"all of it");
    assert!(
        took < secs(5),
        "get took {took:?} for a QUIT nobody answered"
    );
}
