//! A scripted raw TCP peer on loopback (std threads, no copas) for tests whose point is to
//! send malformed, endless or oddly split input: each accepted connection plays a script of
//! reads, writes (whole or in pieces), endless writes, silences and a half-close. Include it
//! with `#[path = "util/raw_peer.rs"] mod raw_peer;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// What a scripted peer does on one connection, in order.
#[derive(Clone, Debug)]
pub enum Step {
    /// Reads a request head (up to its empty line).
    ReadRequest,
    /// Reads one line (a command).
    ReadLine,
    /// Writes these bytes.
    Send(Vec<u8>),
    /// Writes `bytes` in pieces of the lengths in `cuts` and the rest in one, pausing 1 ms
    /// after each piece when `pause`, so that the client gets them in as many reads.
    Pieces {
        bytes: Vec<u8>,
        cuts: Vec<usize>,
        pause: bool,
    },
    /// Writes this pattern again and again, up to [`ENDLESS`] bytes or until the client
    /// goes away.
    Endless(Vec<u8>),
    /// Keeps the connection open, silent, this long (or until the client closes it).
    Hold(Duration),
    /// Shuts the writing side down: the client reads the end of the stream. A `Hold` after
    /// it reads what the client still sends until it closes, so that bytes left unread do
    /// not turn the peer's close into a reset, which can discard replies the client has not
    /// read yet.
    Shutdown,
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
/// thread, so a held connection does not stop the next accept), for at most 20 s: its
/// address, and its thread, which ends once every script is played or not needed.
pub fn peer(scripts: Vec<Vec<Step>>) -> (SocketAddr, JoinHandle<PeerLog>) {
    let Peer { addr, thread, .. } = Peer::start(scripts);
    (addr, thread)
}

/// A [`peer`] that can be told to stop waiting for connections, for a test whose client
/// may never connect (a refused or failed dialog before a data connection, say): it does
/// not have to wait out the 20 s.
pub struct Peer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<PeerLog>,
}

impl Peer {
    /// Starts a peer playing `scripts`, as [`peer`] does.
    pub fn start(scripts: Vec<Vec<Step>>) -> Peer {
        let (listener, addr) = super::util::local_listener();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let told = stop.clone();
        let thread = std::thread::spawn(move || accept_and_play(listener, scripts, &told));
        Peer { addr, stop, thread }
    }

    /// Stops waiting for connections (a connection already queued is still accepted, and
    /// every accepted one is played to the end of its script) and returns what the peer did.
    pub fn finish(self) -> PeerLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("peer thread")
    }
}

fn accept_and_play(listener: TcpListener, scripts: Vec<Vec<Step>>, stop: &AtomicBool) -> PeerLog {
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
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Scripts left over once every connection is done and the client has been
                // quiet for a second were not needed (a test may expect fewer connections).
                if !players.is_empty() && players.iter().all(|p| p.is_finished()) {
                    if idle_since.get_or_insert_with(Instant::now).elapsed() > secs(1) {
                        break;
                    }
                } else {
                    idle_since = None;
                }
                // A client hears nothing until it is accepted: a short poll keeps that wait
                // small for tests that start a peer per case, hundreds of them.
                std::thread::sleep(Duration::from_millis(1));
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
    // Each write leaves at once, not held back until the client has acknowledged the one
    // before (Nagle's algorithm): the pieces of a `Pieces` step reach the client apart, as
    // the script means, without waiting out its delayed acknowledgements. For the other
    // steps it changes at most when bytes leave, never which.
    sock.set_nodelay(true).expect("nodelay");
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
                if !write_in_pieces(&mut sock, &bytes, &[], false, &mut written) {
                    return written;
                }
            }
            Step::Pieces { bytes, cuts, pause } => {
                if !write_in_pieces(&mut sock, &bytes, &cuts, pause, &mut written) {
                    return written;
                }
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
            Step::Shutdown => {
                let _ = sock.shutdown(Shutdown::Write);
            }
        }
    }
    written
}

/// Writes `bytes` in pieces of the lengths in `cuts` and the rest in one, pausing 1 ms
/// after each when `pause`, adding what went out to `written`; false when the client is
/// gone.
fn write_in_pieces(
    sock: &mut TcpStream,
    bytes: &[u8],
    cuts: &[usize],
    pause: bool,
    written: &mut u64,
) -> bool {
    let mut at = 0usize;
    for &cut in cuts.iter().chain([&usize::MAX]) {
        let end = at.saturating_add(cut).min(bytes.len());
        if sock.write_all(&bytes[at..end]).is_err() {
            return false;
        }
        *written += (end - at) as u64;
        at = end;
        if pause {
            std::thread::sleep(Duration::from_millis(1));
        }
        if at == bytes.len() {
            return true;
        }
    }
    true
}
