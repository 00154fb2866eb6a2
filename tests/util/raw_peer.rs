//! A scripted raw TCP peer on loopback (std threads, no copas) for tests whose point is to
//! send malformed or endless input: each accepted connection plays a script of reads,
//! writes, endless writes and silences. Include it with
//! `#[path = "util/raw_peer.rs"] mod raw_peer;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// What a scripted peer does on one connection, in order.
#[derive(Clone)]
pub enum Step {
    /// Reads a request head (up to its empty line).
    ReadRequest,
    /// Reads one line (a command).
    ReadLine,
    /// Writes these bytes.
    Send(Vec<u8>),
    /// Writes this pattern again and again, up to [`ENDLESS`] bytes or until the client
    /// goes away.
    Endless(Vec<u8>),
    /// Keeps the connection open, silent, this long (or until the client closes it).
    Hold(Duration),
}

/// How much an endless peer offers: far more than any limit of the client.
pub const ENDLESS: u64 = 64 * 1024 * 1024;

/// What a peer did.
#[derive(Debug, Default)]
pub struct PeerLog {
    /// Connections accepted.
    pub accepted: usize,
    /// Bytes written, over all connections.
    pub written: u64,
}

/// Writes `text`.
pub fn send(text: &str) -> Step {
    Step::Send(text.as_bytes().to_vec())
}

/// A raw peer on loopback that plays one script per connection it accepts (each on its own
/// thread, so a held connection does not stop the next accept), for at most 20 s.
pub fn peer(scripts: Vec<Vec<Step>>) -> (SocketAddr, JoinHandle<PeerLog>) {
    let (listener, addr) = super::util::local_listener();
    listener.set_nonblocking(true).expect("nonblocking");
    let handle = std::thread::spawn(move || accept_and_play(listener, scripts));
    (addr, handle)
}

fn accept_and_play(listener: TcpListener, scripts: Vec<Vec<Step>>) -> PeerLog {
    let deadline = Instant::now() + secs(20);
    let mut players: Vec<JoinHandle<u64>> = Vec::new();
    let mut scripts = scripts.into_iter().peekable();
    let mut idle_since: Option<Instant> = None;
    while scripts.peek().is_some() && Instant::now() < deadline {
        match listener.accept() {
            Ok((sock, _)) => {
                let script = scripts.next().expect("script");
                players.push(std::thread::spawn(move || play(sock, script)));
                idle_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Scripts left over once every connection is done and the client has been
                // quiet for a second were not needed (a test may expect fewer connections).
                if !players.is_empty() && players.iter().all(|p| p.is_finished()) {
                    if idle_since.get_or_insert_with(Instant::now).elapsed() > secs(1) {
                        break;
                    }
                } else {
                    idle_since = None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    let accepted = players.len();
    let written = players
        .into_iter()
        .map(|p| p.join().expect("peer thread"))
        .sum();
    PeerLog { accepted, written }
}

/// Plays `script` on `sock`; returns how many bytes it wrote.
fn play(mut sock: TcpStream, script: Vec<Step>) -> u64 {
    sock.set_nonblocking(false).expect("blocking");
    sock.set_read_timeout(Some(secs(10))).expect("read timeout");
    sock.set_write_timeout(Some(secs(10)))
        .expect("write timeout");
    let mut written = 0u64;
    for step in script {
        match step {
            Step::ReadRequest => {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match sock.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return written,
                    }
                }
            }
            Step::ReadLine => {
                let mut byte = [0u8; 1];
                loop {
                    match sock.read(&mut byte) {
                        Ok(1) if byte[0] == b'\n' => break,
                        Ok(1) => {}
                        _ => return written,
                    }
                }
            }
            Step::Send(bytes) => {
                if sock.write_all(&bytes).is_err() {
                    return written;
                }
                written += bytes.len() as u64;
            }
            Step::Endless(pattern) => {
                let block = pattern.repeat((64 * 1024 / pattern.len()).max(1));
                while written < ENDLESS {
                    if sock.write_all(&block).is_err() {
                        return written;
                    }
                    written += block.len() as u64;
                }
            }
            Step::Hold(how_long) => {
                sock.set_read_timeout(Some(how_long)).expect("read timeout");
                let mut sink = [0u8; 1024];
                let until = Instant::now() + how_long;
                while Instant::now() < until {
                    match sock.read(&mut sink) {
                        Ok(0) => return written,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }
    }
    written
}
