//! The echo server of `examples/echo.rs` on several cores: N dispatcher threads, each with
//! its own listener on one shared port (`SO_REUSEPORT`); the kernel spreads the
//! connections over them.
//!
//! ```text
//! cargo run --release --example echo_multicore            # one thread per core, port 9000
//! cargo run --release --example echo_multicore -- 4 9100  # 4 threads on port 9100
//! nc 127.0.0.1 9000                                       # type lines; they come back
//! ```
//!
//! Every reply starts with the index of the dispatcher thread that served the connection
//! (`2: hello`), so opening a few connections shows the spread. `quit` ends a session.
//! Apart from the first listener, handed to one thread at setup, nothing is shared between
//! the threads: each runs the same single-threaded handler in its own dispatcher. With port
//! 0 the system picks a free port; the first line printed names it.

use std::sync::Mutex;

use copas::{Pattern, Socket};

/// The port used when none is given on the command line.
const DEFAULT_PORT: u16 = 9000;

fn echo_handler(index: usize, mut sock: Socket) {
    while let Ok(line) = sock.receive(Pattern::Line) {
        if line == b"quit" {
            break;
        }
        let reply = [format!("{index}: ").as_bytes(), &line, b"\n"].concat();
        if sock.send(&reply).is_err() {
            break;
        }
    }
}

fn argument<T: std::str::FromStr>(n: usize, what: &str) -> copas::Result<Option<T>> {
    match std::env::args().nth(n) {
        Some(arg) => arg.parse().map(Some).map_err(|_| {
            copas::Error::with_message(
                copas::ErrorKind::InvalidInput,
                format!("bad {what} {arg:?}"),
            )
        }),
        None => Ok(None),
    }
}

fn main() -> copas::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: usize = argument(1, "thread count")?.unwrap_or(cores);
    let port: u16 = argument(2, "port")?.unwrap_or(DEFAULT_PORT);
    // Port 0 picks a free port for one listener alone: bind the first here, and the others
    // to the port it got, so that all of them share the port the banner names.
    let first = copas::bind_reuseport(("127.0.0.1", port))?;
    let addr = first.local_addr()?;
    let first = Mutex::new(Some(first));
    let outcomes = copas::threads(threads, |index| {
        // The first thread here serves the listener bound above; the others bind their own.
        let taken = first.lock().unwrap().take();
        let listener = match taken {
            Some(listener) => listener,
            None => copas::bind_reuseport(addr)?,
        };
        if index == 0 {
            println!("echo server listening on {addr} with {threads} dispatcher threads");
        }
        copas::addserver(listener, move |sock| echo_handler(index, sock))?;
        Ok(())
    })?;
    // Every failure is reported; the first one also makes the exit status.
    let mut failed = None;
    for (index, outcome) in outcomes.into_iter().enumerate() {
        if let Err(e) = outcome {
            eprintln!("dispatcher thread {index}: {e}");
            failed.get_or_insert(e);
        }
    }
    failed.map_or(Ok(()), Err)
}
