//! The examples, run as programs and checked from outside (gevent's `test__example_*`).
//!
//! `cargo test` builds the examples into `target/<profile>/examples/`, but
//! `cargo test --test examples` does not, and a binary left from an older build would test
//! old code; so the first test that needs them runs `cargo build --example …` for the
//! profile this test binary was built with (a no-op when they are up to date).

mod util;

use util::running::Running;
use util::{output_within, read_all_in_thread};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Socket timeouts of the test clients.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The path of example `name`, built for this binary's profile.
fn example(name: &str) -> PathBuf {
    util::example_binary(name)
}

/// A blocking line client.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("timeout");
        stream
            .set_write_timeout(Some(CLIENT_TIMEOUT))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("try_clone"));
        Client {
            writer: stream,
            reader,
        }
    }

    fn send(&mut self, data: &[u8]) {
        self.writer.write_all(data).expect("send");
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        line
    }

    fn echo(&mut self, line: &str) {
        self.send(format!("{line}\n").as_bytes());
        assert_eq!(self.read_line(), format!("{line}\n"));
    }

    /// Sends "quit" and checks that the server closes the connection (end of stream).
    fn quit(&mut self) {
        self.send(b"quit\n");
        let mut rest = Vec::new();
        let n = self
            .reader
            .read_to_end(&mut rest)
            .expect("end of stream after quit");
        assert_eq!(
            n,
            0,
            "nothing after quit, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// `nc` talks to the echo server like a person at a terminal would.
fn check_with_nc(port: u16) {
    let nc = Path::new("/usr/bin/nc");
    if !nc.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/usr/bin/nc is missing, and CI is set: install netcat"
        );
        println!("note: /usr/bin/nc is missing; skipping the nc part of the echo test");
        return;
    }
    let mut child = Command::new(nc)
        .args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nc");
    let stdout = read_all_in_thread(child.stdout.take());
    let stderr = read_all_in_thread(child.stderr.take());
    {
        let mut stdin = child.stdin.take().expect("nc stdin");
        stdin.write_all(b"hello\nquit\n").expect("write to nc");
    } // end of input; nc keeps reading until the server closes
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().expect("nc stdout");
    let stderr = stderr.join().expect("nc stderr");
    let status = status.unwrap_or_else(|| {
        panic!(
            "nc did not end: the server did not close after quit; stderr: {}",
            String::from_utf8_lossy(&stderr)
        )
    });
    assert!(
        status.success(),
        "nc failed ({status}): {}",
        String::from_utf8_lossy(&stderr)
    );
    assert_eq!(String::from_utf8_lossy(&stdout), "hello\n");
}

#[test]
fn echo_example_echoes_lines_and_quit_closes() {
    let _dog = util::Watchdog::new("echo example test", Duration::from_secs(400));
    // Port 0: the example binds the port it is given and names the one it got (a port
    // picked free beforehand could be taken by another test before the example binds it).
    let (mut server, addr) = Running::server("echo", "listening on");
    let port = addr.port();

    let mut client = Client::connect(addr);
    client.echo("hello, copas");
    // Several lines in one write, one of them ended by CRLF, one empty.
    client.send(b"first\ncrlf line\r\n\nlast\n");
    assert_eq!(client.read_line(), "first\n");
    assert_eq!(client.read_line(), "crlf line\n", "the CR is removed");
    assert_eq!(client.read_line(), "\n");
    assert_eq!(client.read_line(), "last\n");
    client.quit();

    // Two clients at once: the server serves both, and the first quitting ends only its own
    // session.
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    a.echo("from a");
    b.echo("from b");
    a.quit();
    b.echo("b goes on");
    b.quit();

    check_with_nc(port);

    // It must keep running after its sessions end.
    server.assert_still_running();
}

#[test]
fn embed_example_serves_a_client_while_its_own_loop_keeps_counting() {
    let _dog = util::Watchdog::new("embed example test", Duration::from_secs(400));
    let (mut app, addr) =
        Running::server_with_env("embed", "echo server on", &[("EMBED_TICKS", "300")]);

    let tick_of = |line: &str| -> Option<u64> {
        line.strip_prefix("embed: tick ")
            .and_then(|n| n.trim().parse().ok())
    };
    // Its own loop counts before any client comes.
    let first_tick = app.wait_for_line("a tick line", |l| tick_of(l).is_some());
    let before = tick_of(&first_tick).expect("tick number");

    let mut client = Client::connect(addr);
    client.echo("embedded echo");
    client.send(b"crlf\r\nsecond\n");
    assert_eq!(client.read_line(), "crlf\n");
    assert_eq!(client.read_line(), "second\n");
    client.quit();
    // Every tick line read so far was printed before the exchange ended.
    let latest_before_end = app.seen().iter().filter_map(|l| tick_of(l)).max();

    let (status, rest) = app.wait_for_exit(Duration::from_secs(60));
    let stderr = app.stderr();
    assert!(status.success(), "embed failed ({status}): {stderr}");
    let after: Vec<u64> = rest.iter().filter_map(|l| tick_of(l)).collect();
    assert!(
        after.iter().any(|&t| Some(t) > latest_before_end),
        "it kept counting after the exchange: ticks before {before} (latest {latest_before_end:?}), \
         after {after:?}"
    );
    // The tick-300 line comes after the last step, so after everything the server did.
    assert!(after.contains(&300), "ticks after the exchange: {after:?}");
    assert_eq!(
        rest.last().map(String::as_str),
        Some("embed: done after 300 ticks"),
        "all output: {:?}",
        app.seen()
    );
}

#[test]
fn echo_example_rejects_a_bad_port_argument() {
    let _dog = util::Watchdog::new("echo bad port test", Duration::from_secs(400));
    let echo = example("echo");
    for bad in ["notaport", "70000", "-1"] {
        let mut cmd = Command::new(&echo);
        cmd.arg(bad).env("RUST_BACKTRACE", "0");
        let out = output_within(cmd, b"", Duration::from_secs(30));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "port {bad:?}: expected a non-zero exit code, got {}; stderr: {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked"),
            "port {bad:?}: an error, not a panic: {stderr}"
        );
        assert!(
            stderr.contains("bad port") && stderr.contains(bad),
            "port {bad:?}: the error names the argument: {stderr}"
        );
        assert!(
            !stdout.contains("listening"),
            "port {bad:?}: it must not listen: {stdout}"
        );
    }
}

#[test]
fn embed_example_rejects_a_bad_port_argument_and_a_bad_tick_count() {
    let _dog = util::Watchdog::new("embed bad arguments test", Duration::from_secs(400));
    let embed = example("embed");
    // A bad port with a good tick count, then a good port with a bad tick count: each is
    // refused before anything listens.
    let cases = [
        ("notaport", "20", "bad port"),
        ("70000", "20", "bad port"),
        ("-1", "20", "bad port"),
        ("0", "lots", "bad EMBED_TICKS"),
        ("0", "-5", "bad EMBED_TICKS"),
    ];
    for (port, ticks, error) in cases {
        let mut cmd = Command::new(&embed);
        cmd.arg(port)
            .env("EMBED_TICKS", ticks)
            .env("RUST_BACKTRACE", "0");
        let out = output_within(cmd, b"", Duration::from_secs(30));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let case = format!("port {port:?}, EMBED_TICKS {ticks:?}");
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "{case}: expected a non-zero exit code, got {}; stderr: {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked"),
            "{case}: an error, not a panic: {stderr}"
        );
        let bad = if error == "bad port" { port } else { ticks };
        assert!(
            stderr.contains(error) && stderr.contains(bad),
            "{case}: the error names the argument: {stderr}"
        );
        assert!(
            !stdout.contains("echo server on"),
            "{case}: it must not listen: {stdout}"
        );
    }
}

/// Starts `examples/http_hello` on a free port; returns it and the address it listens on.
fn start_http_hello() -> (Running, SocketAddr) {
    let mut server = Running::start(&example("http_hello"), &["0"], &[]);
    let line = server.wait_for_line("the listening line", |l| l.contains("listening on http://"));
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .map(|rest| rest.trim_end_matches('/'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (server, addr)
}

#[test]
fn http_hello_example_answers_pipelined_keep_alive_requests_and_closes_on_connection_close() {
    let (mut server, addr) = start_http_hello();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("timeout");
    // Three requests in one write: the server must answer each in turn on the one
    // connection, and close it after the one that asks for it.
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /again HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .expect("write");
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .expect("the server closes after `Connection: close`");
    assert_eq!(reply.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{reply}");
    assert_eq!(reply.matches("\r\n\r\nhello world").count(), 3, "{reply}");
    assert!(reply.ends_with("hello world"), "{reply}");
    server.assert_still_running();
}

#[test]
fn http_hello_example_refuses_endless_headers_and_bad_lengths_and_skips_large_bodies() {
    let (mut server, addr) = start_http_hello();
    let exchange = |request: &[u8]| http_exchange(addr, request);

    // A request whose headers never end: refused after the limit, not read forever.
    let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..5_000 {
        endless.extend_from_slice(format!("X-Filler-{i}: x\r\n").as_bytes());
    }
    let reply = exchange(&endless);
    assert!(
        reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{reply:?}"
    );

    // A length that is not a number, a signed one, two that differ: refused.
    for head in [
        "Content-Length: lots\r\n",
        "Content-Length: +3\r\n",
        "Content-Length: 3\r\nContent-Length: 4\r\n",
    ] {
        let reply = exchange(format!("POST / HTTP/1.1\r\n{head}\r\nabc").as_bytes());
        assert!(
            reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{head:?}: {reply:?}"
        );
    }

    // A body cut short by the end of the stream: the server closes, it does not wait
    // (or spin) for the rest.
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("timeout");
    stream
        .write_all(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly ten b")
        .expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut reply = Vec::new();
    let end = stream.read_to_end(&mut reply);
    assert!(
        end.is_ok() && reply.is_empty(),
        "the server closes without an answer: {end:?}, {reply:?}"
    );

    // A 4 MiB body is read and dropped, and the connection goes on to the next request.
    let body_len = 4 * 1024 * 1024;
    let mut big = format!("POST / HTTP/1.1\r\nContent-Length: {body_len}\r\n\r\n").into_bytes();
    big.resize(big.len() + body_len, b'b');
    big.extend_from_slice(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    let reply = exchange(&big);
    assert_eq!(reply.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{reply:?}");
    server.assert_still_running();
}

#[test]
fn http_hello_example_answers_any_transfer_encoding_with_501_and_closes() {
    let (mut server, addr) = start_http_hello();
    for coding in ["chunked", "gzip, chunked", "identity"] {
        // A chunked body whose lines would read as requests of their own, then a request
        // that would be answered too if the connection went on.
        let reply = http_exchange(
            addr,
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {coding}\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n\
                 GET / HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            .as_bytes(),
        );
        assert!(
            reply.starts_with("HTTP/1.1 501 Not Implemented\r\n"),
            "{coding:?}: {reply:?}"
        );
        assert_eq!(
            reply.matches("HTTP/1.1 ").count(),
            1,
            "{coding:?}: one answer, then the connection ends: {reply:?}"
        );
    }
    // Requests without one are served as before.
    let reply = http_exchange(
        addr,
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply:?}");
    server.assert_still_running();
}

/// `Connection` holds a list of options (RFC 9110 §7.6.1): `close` among others still
/// ends the connection after the answer (only the exact value `close` did).
#[test]
fn http_hello_example_closes_when_close_is_one_of_the_connection_options() {
    let (mut server, addr) = start_http_hello();
    for options in ["keep-alive, close", "close , Upgrade", "TE,close"] {
        let (end, reply) = http_exchange_ended(
            addr,
            format!("GET / HTTP/1.1\r\nConnection: {options}\r\n\r\n").as_bytes(),
        );
        assert!(
            end.is_ok(),
            "{options:?}: the server kept the connection open ({end:?}) after {reply:?}"
        );
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n"),
            "{options:?}: {reply:?}"
        );
    }
    server.assert_still_running();
}

/// A header line that is not a field (no colon, white space in or before the name, a line
/// folded onto the one before) is answered 400 and the connection closed; it was skipped, so
/// the server and a proxy in front of it could read the request differently.
#[test]
fn http_hello_example_refuses_header_lines_that_are_not_fields() {
    let (mut server, addr) = start_http_hello();
    for line in [
        "no colon here",
        "Bad Name: x",
        "Host : a",
        " folded: onto the line before",
        ": no name",
    ] {
        let reply = http_exchange(
            addr,
            format!("GET / HTTP/1.1\r\nHost: a\r\n{line}\r\n\r\n").as_bytes(),
        );
        assert!(
            reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{line:?}: {reply:?}"
        );
    }
    // An HTTP/1.0 request is still one with white space after its version: answered, then
    // closed (kept open before, the read below waiting out its timeout).
    let (end, reply) = http_exchange_ended(addr, b"GET / HTTP/1.0 \r\n\r\n");
    assert!(end.is_ok(), "HTTP/1.0 kept open ({end:?}) after {reply:?}");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply:?}");
    server.assert_still_running();
}

/// Sends `request` on a new connection and returns all that comes back until the server
/// closes (what came before a reset included: the server may answer and close before it
/// has read all of a refused request).
fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    http_exchange_ended(addr, request).1
}

/// [`http_exchange`], with how the read ended: `Ok` when the server closed the connection,
/// an error (a timeout) when it kept it open.
fn http_exchange_ended(addr: SocketAddr, request: &[u8]) -> (std::io::Result<usize>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("timeout");
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let end = stream.read_to_end(&mut reply);
    (end, String::from_utf8_lossy(&reply).into_owned())
}
