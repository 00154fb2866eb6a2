//! The Copas "hello world": a line echo server.
//!
//! ```text
//! cargo run --example echo            # listens on 127.0.0.1:9000
//! cargo run --example echo -- 9100    # or on the port you give
//! nc 127.0.0.1 9000                   # type lines; they come back; `quit` ends the session
//! ```
//!
//! Each connection gets its own coroutine running `echo_handler`, an ordinary loop that
//! reads a line and writes it back. `receive` looks blocking but only suspends this
//! coroutine, so one thread serves any number of clients at once.

use std::net::TcpListener;

use copas::{Pattern, Socket};

/// The port used when none is given on the command line.
const DEFAULT_PORT: u16 = 9000;

fn echo_handler(mut sock: Socket) {
    // `receive` fails when the client goes away; that ends the loop too.
    while let Ok(line) = sock.receive(Pattern::Line) {
        if line == b"quit" {
            break;
        }
        let mut reply = line;
        reply.push(b'\n');
        if sock.send(&reply).is_err() {
            break;
        }
    }
    // Returning closes the connection.
}

fn main() -> copas::Result<()> {
    let port = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|_| {
            copas::Error::with_message(copas::ErrorKind::InvalidInput, format!("bad port {arg:?}"))
        })?,
        None => DEFAULT_PORT,
    };
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("echo server listening on {}", listener.local_addr()?);
    copas::addserver(listener, echo_handler)?;
    copas::run()
}
