//! The examples of issue 4 (`udp_echo`, `echo_client`), run as programs and checked from
//! outside, as `tests/examples.rs` does for the others.
//!
//! `cargo test --test examples_net` does not build examples, and a binary left from an
//! older build would test old code; so the first test that needs them runs
//! `cargo build --example …` for this binary's profile (a no-op when up to date).

mod util;

use util::output_within;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Limit for a program to answer.
const LIMIT: Duration = Duration::from_secs(30);

/// The path of example `name`, built for this binary's profile.
fn example(name: &str) -> PathBuf {
    util::example_binary(name)
}

/// A server example started on port 0: killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `name` with port 0 and reads the address from its "… listening on <addr>" line.
    fn start(name: &str) -> Server {
        let mut child = Command::new(example(name))
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(LIMIT).expect("the server's first line");
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn udp_echo_example_echoes_datagrams() {
    let server = Server::start("udp_echo");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = vec![0u8; 70_000];
    for payload in [&b"hello"[..], &[7u8; 1000][..], &[9u8; 60_000][..]] {
        sock.send_to(payload, server.addr).expect("send_to");
        let (n, from) = sock.recv_from(&mut buf).expect("echo");
        assert_eq!(from, server.addr);
        assert_eq!(&buf[..n], payload);
    }
}

#[test]
fn echo_client_example_talks_to_the_echo_example_by_host_name() {
    let server = Server::start("echo");
    let target = format!("localhost:{}", server.addr.port());

    // Lines given as arguments.
    let mut cmd = Command::new(example("echo_client"));
    cmd.args([target.as_str(), "hello", "two words"]);
    let out = output_within(cmd, b"", LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\ntwo words\n");
    assert!(stderr.contains("connected to"), "{stderr}");

    // Lines from standard input.
    let mut cmd = Command::new(example("echo_client"));
    cmd.arg(&target);
    let out = output_within(cmd, b"one\r\ntwo\nthree", LIMIT);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\nthree\n");
}

#[test]
fn echo_client_example_reports_typed_errors() {
    // A port nobody listens on: bound (so nobody else takes it), not listening.
    let (_closed, port) = util::closed_port();
    let mut cmd = Command::new(example("echo_client"));
    cmd.args([format!("localhost:{port}").as_str(), "x"]);
    let out = output_within(cmd, b"", LIMIT);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connection refused"), "{stderr}");

    let mut cmd = Command::new(example("echo_client"));
    cmd.args(["no-such-host.invalid:9000", "x"]);
    let out = output_within(cmd, b"", LIMIT);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("host not found"), "{stderr}");
}

#[test]
fn echo_client_example_ends_successfully_when_the_server_closes_after_quit() {
    let server = Server::start("echo");
    let target = format!("127.0.0.1:{}", server.addr.port());
    // `quit` is how the echo example's docs end a session: the server closes, and that is
    // the session's normal end, from standard input or from the arguments.
    let mut cmd = Command::new(example("echo_client"));
    cmd.arg(&target);
    let out = output_within(cmd, b"hello\nquit\n", LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let mut cmd = Command::new(example("echo_client"));
    cmd.args([target.as_str(), "hello", "quit"]);
    let out = output_within(cmd, b"", LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    // A server that closes in the middle of a reply line, or resets the connection, has
    // failed: still an error.
    for reset in [false, true] {
        let (listener, addr) = util::local_listener();
        std::thread::spawn(move || {
            if let Ok((mut peer, _)) = listener.accept() {
                let _ = peer.set_read_timeout(Some(LIMIT));
                let mut line = String::new();
                let _ = BufReader::new(&peer).read_line(&mut line);
                if reset {
                    let _ = socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO));
                } else {
                    let _ = std::io::Write::write_all(&mut peer, b"half a li");
                }
            } // dropped: closed
        });
        let mut cmd = Command::new(example("echo_client"));
        cmd.args([addr.to_string().as_str(), "x"]);
        let out = output_within(cmd, b"", LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "reset {reset}: {stderr}");
        assert!(
            stderr.contains("echo_client: closed"),
            "reset {reset}: {stderr}"
        );
    }
}
