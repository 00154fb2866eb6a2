//! The examples of issue 8, run as programs and checked from outside: `websocket_echo`
//! against tungstenite's own client, `chat` with several real TCP clients (one of them
//! never reading), and `timers` and `queue_workers`, which end by themselves, by their
//! output.
//!
//! `cargo test --test examples_interop` does not build examples, and a binary left from an
//! older build would test old code; so each test builds the example it runs
//! (`util::example_binary`, a no-op when it is up to date).

mod util;

use util::running::{Running, LINE_LIMIT};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tungstenite::{Error as WsError, Message};

/// Socket timeouts of the test clients: generous, they only turn a hang into a failure.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

// ----- websocket_echo ----------------------------------------------------------------------

type WsClient = tungstenite::WebSocket<TcpStream>;

fn ws_connect(addr: SocketAddr) -> WsClient {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).expect("connect");
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("timeout");
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .expect("timeout");
    let (ws, response) =
        tungstenite::client(format!("ws://{addr}/"), stream).expect("WebSocket handshake");
    assert_eq!(response.status(), 101, "switching protocols");
    ws
}

/// Sends `msg` and checks that the same message comes back.
fn ws_round_trip(ws: &mut WsClient, msg: Message) {
    ws.send(msg.clone()).expect("send");
    let back = ws.read().expect("read the echo");
    assert!(
        back == msg,
        "the echo differs: sent {} bytes, got {back:?}",
        msg.len()
    );
}

/// Closes from the client side and drives the close handshake to its end: the server
/// answers the close frame and then closes the TCP connection.
fn ws_close(mut ws: WsClient) {
    ws.close(None).expect("close");
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < LINE_LIMIT,
            "the close handshake did not end"
        );
        match ws.read() {
            Ok(Message::Close(_)) => {} // the server's answer
            Ok(other) => panic!("unexpected message while closing: {other:?}"),
            Err(WsError::ConnectionClosed) => break,
            Err(e) => panic!("the close handshake failed: {e}"),
        }
    }
}

#[test]
fn websocket_echo_example_echoes_text_binary_and_large_messages_and_closes_cleanly() {
    let _dog = util::Watchdog::new("websocket_echo test", Duration::from_secs(400));
    let (mut server, addr) = Running::server("websocket_echo", "listening on ws://");

    // Each client in its own thread, at the same time: one coroutine each on the server.
    let clients: Vec<JoinHandle<()>> = (0..3u8)
        .map(|n| {
            std::thread::spawn(move || {
                let mut ws = ws_connect(addr);
                ws_round_trip(&mut ws, Message::text(format!("hello from client {n}")));
                ws_round_trip(&mut ws, Message::text("héllo, ünïcode ✓"));
                ws_round_trip(&mut ws, Message::binary(vec![0, 1, 2, 0xff, n]));
                ws_round_trip(&mut ws, Message::binary(Vec::new()));
                // 100 KiB: several reads and writes on the copas side.
                let big: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8 ^ n).collect();
                ws_round_trip(&mut ws, Message::binary(big));
                let big_text: String = (0..100 * 1024u32)
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect();
                ws_round_trip(&mut ws, Message::text(big_text));
                ws_close(ws);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a WebSocket client failed");
    }
    for _ in 0..3 {
        server.wait_for_line("a clean close", |l| l.contains("closed the connection"));
    }
    server.assert_still_running();
}

#[test]
fn websocket_echo_example_ends_only_the_connection_that_sends_an_oversized_message() {
    let _dog = util::Watchdog::new("websocket_echo limit test", Duration::from_secs(400));
    let (mut server, addr) = Running::server("websocket_echo", "listening on ws://");

    let mut bystander = ws_connect(addr);
    ws_round_trip(&mut bystander, Message::text("before"));

    // 2 MiB is over the example's 1 MiB limit: that connection ends (with or without a
    // close frame), and the server goes on.
    let mut offender = ws_connect(addr);
    let huge = Message::binary(vec![7u8; 2 * 1024 * 1024]);
    let _ = offender.send(huge); // may fail half-way once the server gives up
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < LINE_LIMIT,
            "the oversized connection was not ended"
        );
        match offender.read() {
            Ok(Message::Close(_)) | Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
            Ok(other) => panic!("the oversized message must not come back: {other:?}"),
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the server did not end the connection within {CLIENT_TIMEOUT:?}")
            }
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("the server did not end the connection within {CLIENT_TIMEOUT:?}")
            }
            Err(_) => break, // closed or reset: ended
        }
    }
    server.wait_for_line("the refusal", |l| {
        l.to_lowercase().contains("message too long")
    });

    ws_round_trip(&mut bystander, Message::text("after"));
    ws_close(bystander);
    server.assert_still_running();
}

// ----- chat --------------------------------------------------------------------------------

/// A chat client: a person at `nc`, scripted.
struct Chatter {
    name: String,
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Chatter {
    fn connect_stream(stream: TcpStream, name: &str) -> Chatter {
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("timeout");
        stream
            .set_write_timeout(Some(CLIENT_TIMEOUT))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("try_clone"));
        let mut chatter = Chatter {
            name: name.to_string(),
            writer: stream,
            reader,
        };
        assert_eq!(chatter.line(), "* welcome to copas chat; your name?");
        chatter.send(name);
        chatter
    }

    /// Connects and gives `name`; checks the greeting lists exactly `others`.
    fn join(addr: SocketAddr, name: &str, others: &[&str]) -> Chatter {
        let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).expect("connect");
        let mut chatter = Chatter::connect_stream(stream, name);
        let expected = if others.is_empty() {
            format!("* hello {name}; nobody else is here")
        } else {
            format!("* hello {name}; here: {}", others.join(", "))
        };
        assert_eq!(chatter.line(), expected);
        chatter
    }

    fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\n").as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// The next line, without its newline.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{}: read a line: {e}", self.name));
        assert!(n > 0, "{}: end of stream instead of a line", self.name);
        assert!(
            line.ends_with('\n'),
            "{}: a whole line: {line:?}",
            self.name
        );
        line.pop();
        line
    }

    /// Checks that `line` comes and then the connection ends, or that the connection is
    /// reset (which discards what the client had not read yet).
    fn expect_line_then_end(&mut self, line: &str) {
        let mut got = String::new();
        match self.reader.read_line(&mut got) {
            Ok(_) => assert_eq!(got, format!("{line}\n"), "{}", self.name),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{}: expected {line:?} or a reset: {e}", self.name),
        }
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{}: nothing more expected", self.name),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{}: expected the end of the connection: {e}", self.name),
        }
    }

    /// Checks that the server closed the connection, with nothing more before.
    fn expect_end(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "{}: nothing more expected, got {:?}",
                self.name,
                String::from_utf8_lossy(&rest)
            ),
            Err(e) => panic!("{}: expected end of stream: {e}", self.name),
        }
    }
}

#[test]
fn chat_example_sends_each_line_to_every_other_client_and_announces_arrivals_and_departures() {
    let _dog = util::Watchdog::new("chat test", Duration::from_secs(400));
    let (mut server, addr) = Running::server("chat", "chat: listening on");

    let mut alice = Chatter::join(addr, "alice", &[]);
    let mut bob = Chatter::join(addr, "bob", &["alice"]);
    assert_eq!(alice.line(), "* bob joined");
    let mut carol = Chatter::join(addr, "carol", &["alice", "bob"]);
    assert_eq!(alice.line(), "* carol joined");
    assert_eq!(bob.line(), "* carol joined");
    let mut dave = Chatter::join(addr, "dave", &["alice", "bob", "carol"]);
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.line(), "* dave joined");
    }

    // Every line reaches every other client, in the order it was sent, and never its
    // sender: if a sender got its own line back, its next line would not be the one
    // expected below.
    for round in 0..3 {
        let mut chatters = [&mut alice, &mut bob, &mut carol, &mut dave];
        for speaker in 0..chatters.len() {
            let text = format!("line {round} from {}", chatters[speaker].name);
            chatters[speaker].send(&text);
            let from = chatters[speaker].name.clone();
            for (i, listener) in chatters.iter_mut().enumerate() {
                if i != speaker {
                    assert_eq!(listener.line(), format!("{from}: {text}"));
                }
            }
        }
    }
    // Several lines in one write, CRLF-ended too, arrive as separate lines.
    dave.send_bytes(b"one\r\ntwo\nthree\n");
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.line(), "dave: one");
        assert_eq!(c.line(), "dave: two");
        assert_eq!(c.line(), "dave: three");
    }

    // Leaving with /quit: a farewell, then the server closes; the others are told.
    alice.send("/quit");
    assert_eq!(alice.line(), "* bye");
    alice.expect_end();
    for c in [&mut bob, &mut carol, &mut dave] {
        assert_eq!(c.line(), "* alice left");
    }
    // Leaving by closing the connection is announced the same way.
    drop(bob);
    for c in [&mut carol, &mut dave] {
        assert_eq!(c.line(), "* bob left");
    }
    carol.send("still here");
    assert_eq!(dave.line(), "carol: still here");
    // A newcomer sees who is left.
    let _erin = Chatter::join(addr, "erin", &["carol", "dave"]);
    server.assert_still_running();
}

#[test]
fn chat_example_reads_lines_with_bufreader_refusing_non_utf8_and_overlong_lines() {
    let _dog = util::Watchdog::new("chat lines test", Duration::from_secs(400));
    let (mut server, addr) = Running::server("chat", "chat: listening on");

    let mut alice = Chatter::join(addr, "alice", &[]);
    let mut bob = Chatter::join(addr, "bob", &["alice"]);
    assert_eq!(alice.line(), "* bob joined");

    // Not UTF-8: refused to its sender, not broadcast; the next line goes through.
    bob.send_bytes(b"caf\xe9\n");
    assert_eq!(bob.line(), "* that line was not UTF-8; not sent");
    bob.send("café");
    assert_eq!(alice.line(), "bob: café");

    // A line of exactly 1,024 bytes is fine; one byte more ends the connection.
    let longest = "x".repeat(1024);
    bob.send(&longest);
    assert_eq!(alice.line(), format!("bob: {longest}"));
    bob.send(&"y".repeat(1025));
    assert_eq!(bob.line(), "* line longer than 1024 bytes; bye");
    bob.expect_end();
    assert_eq!(alice.line(), "* bob left");

    // A line with no end at all: cut off after the limit too (the server must not wait
    // for a newline that never comes, buffering it all).
    let mut carol = Chatter::join(addr, "carol", &["alice"]);
    assert_eq!(alice.line(), "* carol joined");
    carol.send_bytes(&vec![b'z'; 64 * 1024]);
    // The server closes with some of those bytes unread, which makes its kernel send a
    // reset; that may overtake the farewell line.
    carol.expect_line_then_end("* line longer than 1024 bytes; bye");
    assert_eq!(alice.line(), "* carol left");
    server.assert_still_running();
}

#[test]
fn chat_example_does_not_count_the_cr_of_a_crlf_line_against_the_limit() {
    let _dog = util::Watchdog::new("chat crlf limit test", Duration::from_secs(400));
    let (mut server, addr) = Running::server("chat", "chat: listening on");

    let mut alice = Chatter::join(addr, "alice", &[]);
    let mut bob = Chatter::join(addr, "bob", &["alice"]);
    assert_eq!(alice.line(), "* bob joined");

    // The longest line, as telnet (or `nc -C`) sends it: the CR is part of the ending.
    let longest = "x".repeat(1024);
    bob.send_bytes(format!("{longest}\r\n").as_bytes());
    assert_eq!(alice.line(), format!("bob: {longest}"));
    // A CR that is not the ending's is part of the line: here the 1,025th byte.
    bob.send_bytes(format!("{longest}\r\r\n").as_bytes());
    assert_eq!(bob.line(), "* line longer than 1024 bytes; bye");
    bob.expect_end();
    assert_eq!(alice.line(), "* bob left");

    let mut carol = Chatter::join(addr, "carol", &["alice"]);
    assert_eq!(alice.line(), "* carol joined");
    // One byte too many before a CRLF.
    carol.send_bytes(format!("y{longest}\r\n").as_bytes());
    assert_eq!(carol.line(), "* line longer than 1024 bytes; bye");
    carol.expect_end();
    assert_eq!(alice.line(), "* carol left");
    server.assert_still_running();
}

#[test]
fn chat_example_disconnects_a_client_that_does_not_read_without_stalling_the_others() {
    let _dog = util::Watchdog::new("chat slow client test", Duration::from_secs(400));
    let (mut server, addr) = Running::server("chat", "chat: listening on");

    let mut alice = Chatter::join(addr, "alice", &[]);
    let mut bob = Chatter::join(addr, "bob", &["alice"]);
    assert_eq!(alice.line(), "* bob joined");
    let mut carol = Chatter::join(addr, "carol", &["alice", "bob"]);
    assert_eq!(alice.line(), "* carol joined");
    assert_eq!(bob.line(), "* carol joined");
    // The slow one joins, then never reads again.
    let mut slow = Chatter::join(addr, "slow", &["alice", "bob", "carol"]);
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.line(), "* slow joined");
    }

    // Alice talks; bob and carol read every line as it comes. If the slow client's full
    // buffers held up the server, their reads would time out. Bounded: the chat must give
    // up on the slow client within 64 MiB of talk.
    let line = "w".repeat(1000);
    let max_lines = 64 * 1024;
    let mut kicked_after = None;
    for n in 0..max_lines {
        let text = format!("{n:06} {line}");
        alice.send(&text);
        for c in [&mut bob, &mut carol] {
            let got = c.line();
            if got == "* slow was disconnected (too slow)" {
                kicked_after.get_or_insert(n);
                assert_eq!(c.line(), format!("alice: {text}"), "{}", c.name);
            } else {
                assert_eq!(got, format!("alice: {text}"), "{}", c.name);
            }
        }
        if kicked_after.is_some() {
            break;
        }
    }
    let kicked_after = kicked_after.expect("the slow client was never disconnected");
    // Alice hears of it too, after her own lines (which she never gets back).
    alice.send("is slow gone?");
    assert_eq!(bob.line(), "alice: is slow gone?");
    assert_eq!(alice.line(), "* slow was disconnected (too slow)");

    // The slow client finds, after whatever had reached its buffers, that the server
    // closed the connection: end of stream or a reset, within a bounded amount of data.
    slow.reader
        .get_ref()
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("timeout");
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match slow.reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("slow: expected the end of the connection: {e}"),
        }
        assert!(received < 128 * 1024 * 1024, "slow: unbounded data");
    }
    println!(
        "slow client disconnected after {kicked_after} lines of ~1 KB; it had {received} bytes \
         waiting"
    );
    server.assert_still_running();
}

// ----- timers and queue_workers ------------------------------------------------------------

/// The milliseconds and the text of a `timers` output line (`  100 ms  heartbeat 1`).
fn timeline(line: &str) -> (u64, &str) {
    let (ms, text) = line
        .trim_start()
        .split_once(" ms  ")
        .unwrap_or_else(|| panic!("not a timeline line: {line:?}"));
    (ms.parse().expect("milliseconds"), text)
}

#[test]
fn timers_example_fires_recurring_and_one_shot_timers_never_a_cancelled_one_and_ends() {
    let _dog = util::Watchdog::new("timers example test", Duration::from_secs(400));
    let mut timers = Running::start(&util::example_binary("timers"), &[], &[]);
    let (status, lines) = timers.wait_for_exit(LINE_LIMIT);
    assert!(status.success(), "timers failed ({status}): {lines:?}");
    let events: Vec<(u64, &str)> = lines.iter().map(|l| timeline(l)).collect();
    let position = |text: &str| {
        let found: Vec<usize> = (0..events.len()).filter(|&i| events[i].1 == text).collect();
        assert_eq!(found.len(), 1, "{text:?} exactly once in {lines:?}");
        found[0]
    };

    // The recurring timer beats five times, in order, each not before its due time, then
    // cancels itself: no sixth beat.
    let mut previous = 0;
    for beat in 1..=5u64 {
        let at = position(&format!("heartbeat {beat}"));
        assert!(at > previous, "beats in order: {lines:?}");
        assert!(events[at].0 >= beat * 100, "beat {beat} early: {lines:?}");
        previous = at;
    }
    assert!(position("heartbeat cancelled itself") > previous);
    assert!(
        !lines.iter().any(|l| l.contains("heartbeat 6")),
        "{lines:?}"
    );

    // The one-shot timer fires once, not before 250 ms; the cancelled one never.
    let reminder = position("reminder fired once");
    assert!(events[reminder].0 >= 250, "{lines:?}");
    position("cancelled \"never\" before it was due");
    assert!(!lines.iter().any(|l| l.contains("BUG")), "{lines:?}");

    // The sleepers wake in the order of their delays, not of their start, each after at
    // least its delay.
    let mut previous = 0;
    for (name, ms) in [
        ("sleeper-a", 200u64),
        ("sleeper-b", 400),
        ("sleeper-c", 600),
    ] {
        let at = (0..events.len())
            .find(|&i| events[i].1.starts_with(&format!("{name} woke after ")))
            .unwrap_or_else(|| panic!("{name} never woke: {lines:?}"));
        let slept: u64 = events[at]
            .1
            .rsplit(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("slept ms");
        assert!(slept >= ms && events[at].0 >= ms, "{name}: {lines:?}");
        assert!(at > previous, "{name} out of order: {lines:?}");
        previous = at;
    }
    // And `run` returned by itself, last.
    assert_eq!(
        events.last().map(|e| e.1),
        Some("nothing left to do: run returned")
    );
}

#[test]
fn queue_workers_example_does_every_job_once_spread_over_the_pool_then_refuses_new_ones() {
    let _dog = util::Watchdog::new("queue_workers example test", Duration::from_secs(400));
    let mut example = Running::start(&util::example_binary("queue_workers"), &[], &[]);
    let (status, lines) = example.wait_for_exit(LINE_LIMIT);
    assert!(
        status.success(),
        "queue_workers failed ({status}): {lines:?}"
    );

    // `jobs:worker_<n> did producer-<x>#<k>`: every job of both producers, exactly once.
    let mut done: Vec<(&str, &str)> = lines.iter().filter_map(|l| l.split_once(" did ")).collect();
    let mut jobs: Vec<&str> = done.iter().map(|&(_, job)| job).collect();
    jobs.sort_unstable();
    let mut expected: Vec<String> = ["producer-a", "producer-b"]
        .iter()
        .flat_map(|p| (1..=6).map(move |k| format!("{p}#{k}")))
        .collect();
    expected.sort_unstable();
    assert_eq!(jobs, expected, "each job once: {lines:?}");
    // Each producer's jobs are started in the order it pushed them (FIFO).
    for producer in ["producer-a", "producer-b"] {
        let order: Vec<u32> = done
            .iter()
            .filter_map(|&(_, job)| job.strip_prefix(producer)?.strip_prefix('#')?.parse().ok())
            .collect();
        assert_eq!(
            order,
            (1..=6).collect::<Vec<u32>>(),
            "{producer}: {lines:?}"
        );
    }
    // All three workers took part: a job that waits frees the pool for the next one.
    done.sort_unstable();
    let mut workers: Vec<&str> = done.iter().map(|&(w, _)| w).collect();
    workers.dedup();
    assert_eq!(
        workers,
        ["jobs:worker_1", "jobs:worker_2", "jobs:worker_3"],
        "{lines:?}"
    );

    // The shutdown: after the producers, finish drains the queue, then a late push is
    // refused and handed back; the summary comes after the loop ended.
    let index = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
    };
    let drained = index("coordinator: queue drained, all workers ended");
    let last_job = lines
        .iter()
        .rposition(|l| l.contains(" did "))
        .expect("jobs");
    assert!(
        drained > last_job,
        "finish returned before the last job: {lines:?}"
    );
    assert!(index("coordinator: producers pushed 12 jobs") < drained);
    assert!(index("coordinator: a late job was refused and handed back") > drained);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("summary: 12 jobs done by 3 workers (jobs:worker_1, jobs:worker_2, jobs:worker_3)")
    );
}
