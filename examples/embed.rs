//! Controlling copas from an application's own main loop (Copas's "Controlling Copas").
//!
//! ```text
//! cargo run --example embed            # echo server on 127.0.0.1:9001
//! cargo run --example embed -- 9101    # or on the port you give
//! ```
//!
//! The application keeps its own loop: it does its own work (here: counting ticks and
//! printing the count now and then) and calls `copas::step` with a short timeout between
//! its chores. Copas serves the echo clients inside those steps. The loop ends after
//! `EMBED_TICKS` ticks if that environment variable is set (the tests use it), else never.

use std::net::TcpListener;
use std::time::Duration;

use copas::{Pattern, Socket};

const DEFAULT_PORT: u16 = 9001;

fn echo(mut sock: Socket) {
    while let Ok(line) = sock.receive(Pattern::Line) {
        if line == b"quit" || sock.send(&[&line[..], b"\n"].concat()).is_err() {
            break;
        }
    }
}

fn bad_input(message: String) -> copas::Error {
    copas::Error::with_message(copas::ErrorKind::InvalidInput, message)
}

fn main() -> copas::Result<()> {
    // A typo is refused rather than replaced by the default: that would serve somewhere
    // else, or forever, without a word.
    let port = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| bad_input(format!("bad port {arg:?}")))?,
        None => DEFAULT_PORT,
    };
    let max_ticks: Option<u64> = match std::env::var_os("EMBED_TICKS") {
        Some(v) => Some(
            v.to_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad_input(format!("bad EMBED_TICKS {v:?}")))?,
        ),
        None => None,
    };

    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("embed: echo server on {}", listener.local_addr()?);
    copas::addserver(listener, echo)?;

    let mut ticks: u64 = 0;
    loop {
        // The application's own work.
        ticks += 1;
        if ticks % 50 == 0 {
            println!("embed: tick {ticks}");
        }
        if max_ticks.is_some_and(|max| ticks >= max) {
            break;
        }
        // Let copas serve whatever is ready, waiting at most 10 ms.
        copas::step(Some(Duration::from_millis(10)))?;
    }
    println!("embed: done after {ticks} ticks");
    Ok(())
}
