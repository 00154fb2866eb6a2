//! A multi-user line chat: every line a client sends goes to every other client. The
//! classic demonstration of a coroutine server.
//!
//! ```text
//! cargo run --example chat            # listens on 127.0.0.1:9003
//! cargo run --example chat -- 9103    # or on the port you give (0: any free port)
//! nc 127.0.0.1 9003                   # in two or more terminals: give a name, then chat
//! ```
//!
//! The protocol is lines of text. The server asks for a name; the first line is it. Then
//! each line is sent to everybody else as `<name>: <line>`; `/quit` leaves. Arrivals and
//! departures are announced as `* <name> joined` and `* <name> left`.
//!
//! # How it is built
//!
//! Each connection has two coroutines:
//!
//! * its **handler** reads lines with `BufReader::lines()` (std's own adapter: a copas
//!   [`Socket`] is `Read`, and a read that finds nothing suspends only this coroutine) and
//!   broadcasts them;
//! * its **writer**, a worker of the connection's **outbox** (a [`Queue`]), takes lines
//!   off the outbox and sends them.
//!
//! Broadcasting only pushes onto the other clients' outboxes, which never waits. So a client
//! that reads slowly, or not at all, delays nobody: its writer waits in `send` while its own
//! outbox fills. The room is an `Rc<RefCell<Room>>`: every coroutine runs on this one thread,
//! and no borrow is held across a wait.
//!
//! # Slow clients
//!
//! An outbox holds at most [`OUTBOX_LINES`] lines. When a broadcast finds one full, that
//! client is **disconnected** (announced as `* <name> was disconnected (too slow)`), not
//! silently skipped: a chat with holes in it misleads its reader, and a client that stays
//! that far behind is most likely gone. IRC servers do the same ("Max SendQ exceeded").
//! Memory per client is thus bounded: the outbox, plus what the kernel buffers.
//!
//! # Long lines
//!
//! `lines()` would buffer a line without end whole. [`LineLimit`], a small `Read` adapter
//! between the socket and the `BufReader`, ends the connection when a line passes
//! [`MAX_LINE`] bytes. A line that is not UTF-8 is refused, and the client may go on.
//!
//! [`Queue`]: copas::queue::Queue

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use copas::queue::Queue;
use copas::{ErrorKind, Socket};

/// The port used when none is given on the command line.
const DEFAULT_PORT: u16 = 9003;

/// The longest line a client may send, in bytes, without its ending (LF or CR LF).
const MAX_LINE: usize = 1024;

/// The most lines waiting to be sent to one client; a client that lets more pile up is
/// disconnected.
const OUTBOX_LINES: usize = 256;

/// Names are cut to this many characters.
const MAX_NAME: usize = 32;

/// How long a leaving client's writer may take to send what is still queued for it.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

/// One connected, named client.
struct Member {
    name: String,
    outbox: Queue<Rc<str>>,
    /// Another handle to the connection, to close it when the client is too slow.
    sock: Socket,
    /// Set when it was disconnected for being too slow, so its departure says so.
    too_slow: bool,
}

/// Everybody who is in the chat, by a number that stays unique.
#[derive(Default)]
struct Room {
    members: BTreeMap<u64, Member>,
    joined: u64,
}

type SharedRoom = Rc<RefCell<Room>>;

/// Queues `text` for every member but `from`. A member whose outbox is full is
/// disconnected instead. Never waits.
fn broadcast(room: &SharedRoom, from: Option<u64>, text: &str) {
    // One allocation shared by every outbox.
    let line: Rc<str> = Rc::from(format!("{text}\n"));
    let mut too_slow = Vec::new();
    for (&id, member) in room.borrow_mut().members.iter_mut() {
        if Some(id) == from || member.too_slow {
            continue;
        }
        if member.outbox.get_size() >= OUTBOX_LINES {
            member.too_slow = true;
            too_slow.push((member.sock.share(), member.outbox.clone()));
        } else {
            // Fails only for an outbox already stopped: its client is leaving anyway.
            let _ = member.outbox.push(line.clone());
        }
    }
    // Outside the borrow: closing wakes the client's coroutines (in a later step), whose
    // handler then leaves the room, announcing why.
    for (sock, outbox) in too_slow {
        let _ = outbox.destroy(); // drops the backlog; its writer ends
        sock.close();
    }
}

/// Removes a member from the room and announces it, however its handler ends: returning,
/// or panicking (then the error handler reports the panic, and the others still learn
/// that the member left).
struct Membership {
    room: SharedRoom,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let member = self.room.borrow_mut().members.remove(&self.id);
        if let Some(member) = member {
            let how = if member.too_slow {
                "was disconnected (too slow)"
            } else {
                "left"
            };
            broadcast(&self.room, None, &format!("* {} {how}", member.name));
        }
    }
}

/// Passes bytes through from a reader and fails once a line grows past `limit` bytes
/// without a newline, so that `BufRead::lines` over it holds at most about `limit` bytes
/// plus one buffer per line. A CR right before the newline is part of the line ending, as
/// `lines()` takes it, so the longest line may come with one more byte.
struct LineLimit<R> {
    inner: R,
    limit: usize,
    /// Bytes read since the last newline.
    current: usize,
    /// Set when a read found an over-long line after some good bytes: those were handed
    /// over, and the next read fails.
    exceeded: bool,
}

impl<R: Read> LineLimit<R> {
    fn new(inner: R, limit: usize) -> LineLimit<R> {
        LineLimit {
            inner,
            limit,
            current: 0,
            exceeded: false,
        }
    }

    fn too_long(&self) -> io::Error {
        // A copas error inside the io::Error: the handler gets its kind back with
        // `copas::Error::from`.
        copas::Error::with_message(
            ErrorKind::LimitExceeded,
            format!("line longer than {} bytes", self.limit),
        )
        .into()
    }
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded {
            return Err(self.too_long());
        }
        let n = self.inner.read(buf)?;
        // Everything up to the end of the last line that fits is good.
        for (i, &byte) in buf[..n].iter().enumerate() {
            if byte == b'\n' {
                self.current = 0;
            } else {
                self.current += 1;
                // Only a CR may follow the longest line: if a LF comes next, they are the
                // line's ending; anything else after it is one byte too many.
                let over = self.current > self.limit + 1
                    || (self.current == self.limit + 1 && byte != b'\r');
                if over {
                    self.exceeded = true;
                    let good = buf[..i]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |p| p + 1);
                    return if good > 0 {
                        Ok(good)
                    } else {
                        Err(self.too_long())
                    };
                }
            }
        }
        Ok(n)
    }
}

/// A name from what the client typed: printable, not too long, not empty.
fn clean_name(typed: &str, id: u64) -> String {
    let name: String = typed
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    if name.is_empty() {
        format!("guest{id}")
    } else {
        name
    }
}

/// The outbox of one connection; destroyed when dropped, so its writer never outlives the
/// handler, however the handler ends.
struct Outbox(Queue<Rc<str>>);

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = self.0.destroy(); // an error only says it already was
    }
}

fn chat_handler(room: SharedRoom, sock: Socket) {
    // The writer: one coroutine that owns the sending side. Only it writes to the socket, so
    // lines from different senders never interleave mid-line.
    let outbox = Outbox(Queue::named(&format!(
        "{}:outbox",
        copas::getsocketname(&sock)
    )));
    let mut writer = sock.share();
    let started = outbox.0.add_worker(move |line: Rc<str>| {
        if writer.send(line.as_bytes()).is_err() {
            // Gone, or closed because too slow: close it for the handler too, which then
            // leaves the room; later lines fail at once.
            writer.close();
        }
    });
    if started.is_err() {
        return; // no stack for the writer: drop the connection
    }
    converse(&room, &sock, &outbox.0);
    // Let the writer send what is left (the farewell) before the handler returns and the
    // connection is closed. An outbox destroyed for a slow client ends at once.
    let _ = outbox.0.finish(FAREWELL_TIMEOUT, false);
}

/// Asks for a name, joins the room, and broadcasts the client's lines until it leaves.
fn converse(room: &SharedRoom, sock: &Socket, outbox: &Queue<Rc<str>>) {
    let say = |text: &str| {
        let _ = outbox.push(Rc::from(format!("{text}\n")));
    };

    // std's own line reader over the copas socket (through the length limit).
    let mut lines = BufReader::new(LineLimit::new(sock.share(), MAX_LINE)).lines();
    say("* welcome to copas chat; your name?");
    let typed = match lines.next() {
        Some(Ok(typed)) => typed,
        _ => return, // gone before giving a name
    };

    let (id, name, others) = {
        let mut r = room.borrow_mut();
        r.joined += 1;
        let id = r.joined;
        let name = clean_name(&typed, id);
        let others: Vec<&str> = r.members.values().map(|m| m.name.as_str()).collect();
        let others = if others.is_empty() {
            "nobody else is here".to_string()
        } else {
            format!("here: {}", others.join(", "))
        };
        r.members.insert(
            id,
            Member {
                name: name.clone(),
                outbox: outbox.clone(),
                sock: sock.share(),
                too_slow: false,
            },
        );
        (id, name, others)
    };
    let _membership = Membership {
        room: room.clone(),
        id,
    };
    say(&format!("* hello {name}; {others}"));
    broadcast(room, Some(id), &format!("* {name} joined"));

    for line in lines {
        match line {
            Ok(line) if line == "/quit" => {
                say("* bye");
                break;
            }
            Ok(line) => broadcast(room, Some(id), &format!("{name}: {line}")),
            Err(e) => match copas::Error::from(e).kind() {
                ErrorKind::LimitExceeded => {
                    say(&format!("* line longer than {MAX_LINE} bytes; bye"));
                    break;
                }
                // `lines()` checks UTF-8 after taking the whole line, so the next line is
                // read cleanly.
                ErrorKind::Io => say("* that line was not UTF-8; not sent"),
                // Closed, reset, or disconnected as too slow.
                _ => break,
            },
        }
    }
    // Returning drops `_membership`: the client leaves the room, and the others are told.
}

fn main() -> copas::Result<()> {
    let port = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|_| {
            copas::Error::with_message(ErrorKind::InvalidInput, format!("bad port {arg:?}"))
        })?,
        None => DEFAULT_PORT,
    };
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("chat: listening on {}", listener.local_addr()?);
    let room = SharedRoom::default();
    copas::addserver(listener, move |sock| chat_handler(room.clone(), sock))?;
    copas::run()
}
