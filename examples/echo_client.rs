//! A client for the `echo` example: connects by host name, sends lines, prints the replies.
//!
//! ```text
//! cargo run --example echo                                   # in one terminal
//! cargo run --example echo_client                            # lines from stdin to localhost:9000
//! cargo run --example echo_client -- localhost:9100 hi there # these lines to another port
//! ```
//!
//! Everything runs in one coroutine. The host name is resolved on a helper thread
//! (`copas::connect` does that through `copas::offload`), and so is reading standard input,
//! which has no non-blocking form: the dispatcher stays free for other coroutines while the
//! user types. Each reply is printed as it comes. The session ends at the end of the
//! input, or when the server closes the connection (as the echo server does after `quit`).

use std::io::BufRead;
use std::time::Duration;

/// Where the `echo` example listens by default.
const DEFAULT_ADDR: &str = "localhost:9000";

/// Connect, send and receive timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The next line of standard input (without its line ending), or `None` at its end.
fn next_stdin_line() -> copas::Result<Option<String>> {
    copas::offload(|| {
        let mut line = String::new();
        let n = std::io::stdin().lock().read_line(&mut line)?;
        Ok(if n == 0 {
            None
        } else {
            Some(line.trim_end_matches(['\r', '\n']).to_string())
        })
    })?
}

/// Whether `e` is the server ending the session between two lines, as the echo server does
/// after `quit`: the end of the stream, with no part of a line before it. A reset, or a
/// reply cut in the middle, is a failure.
fn server_ended(e: &copas::Error) -> bool {
    e.kind() == copas::ErrorKind::Closed && e.partial().is_empty() && e.io_error().is_none()
}

fn client(
    addr: String,
    mut args: std::vec::IntoIter<String>,
    from_stdin: bool,
) -> copas::Result<()> {
    let mut sock = copas::connect(addr.as_str(), Some(TIMEOUT))?;
    sock.settimeout(Some(TIMEOUT));
    eprintln!("connected to {addr} ({})", sock.peer_addr()?);
    loop {
        let line = if from_stdin {
            next_stdin_line()?
        } else {
            args.next()
        };
        let Some(line) = line else { break };
        sock.send(format!("{line}\n").as_bytes())?;
        let reply = match sock.receive_line() {
            Ok(reply) => reply,
            Err(e) if server_ended(&e) => {
                eprintln!("{addr} closed the connection");
                break;
            }
            Err(e) => return Err(e),
        };
        println!("{reply}");
    }
    Ok(())
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let addr = if args.is_empty() {
        DEFAULT_ADDR.to_string()
    } else {
        args.remove(0)
    };
    let from_stdin = args.is_empty();
    let args = args.into_iter();
    let failed = std::rc::Rc::new(std::cell::Cell::new(false));
    let f = failed.clone();
    let ran = copas::run_with(move || {
        if let Err(e) = client(addr, args, from_stdin) {
            eprintln!("echo_client: {e}");
            f.set(true);
        }
    });
    if let Err(e) = ran {
        eprintln!("echo_client: {e}");
        failed.set(true);
    }
    if failed.get() {
        std::process::exit(1);
    }
}
