//! Seeing inside a running dispatcher: a goroutine-style dump on demand, and a graceful
//! shutdown, both asked for on a control port.
//!
//! ```text
//! cargo run --example dump                # echo on 127.0.0.1:9000, control on 127.0.0.1:9001
//! cargo run --example dump -- 9100        # or on the ports you give (and the next one)
//! nc 127.0.0.1 9000                       # an echo session: its handler waits in `receive`
//! nc 127.0.0.1 9001                       # then type `dump`, or `shutdown`
//! ```
//!
//! Besides the echo server, a few coroutines are blocked in different ways, so the dump
//! has something to show: a ticker sleeping between ticks, one holding the lock `db` while
//! another waits for it, a queue worker waiting for jobs, and one paused forever.
//!
//! On the control port, `dump` answers with `copas::dump()` followed by a line `.`;
//! `job <text>` hands the text to the queue worker, which prints it; `shutdown` begins a
//! graceful shutdown (5 s of grace: echo sessions are told by `copas::exiting()` and end
//! after their current line), after which the program exits.
//! With port 0, the system picks the ports; the first line printed says which.

use std::net::TcpListener;
use std::time::Duration;

use copas::lock::Lock;
use copas::queue::Queue;
use copas::{Pattern, ServerOptions, Socket};

/// The echo port used when none is given; the control port is the next one.
const DEFAULT_PORT: u16 = 9000;

/// How long running sessions get when a shutdown is asked for.
const GRACE: Duration = Duration::from_secs(5);

fn echo_handler(mut sock: Socket) {
    // Until the client goes away, says `quit`, or a shutdown begins.
    while let Ok(line) = sock.receive(Pattern::Line) {
        if line == b"quit" || sock.send(&[&line[..], b"\n"].concat()).is_err() {
            break;
        }
        if copas::exiting() {
            let _ = sock.send(b"shutting down, bye\n");
            break;
        }
    }
}

fn control_handler(mut sock: Socket, jobs: &Queue<String>) {
    copas::setsocketname("control", &sock);
    while let Ok(command) = sock.receive(Pattern::Line) {
        let reply = match &command[..] {
            b"dump" => format!("{}.\n", copas::dump()),
            [b'j', b'o', b'b', b' ', job @ ..] => {
                match jobs.push(String::from_utf8_lossy(job).into_owned()) {
                    Ok(()) => "queued\n".to_string(),
                    Err(e) => format!("refused: {e}\n"),
                }
            }
            b"shutdown" => {
                copas::shutdown(GRACE);
                "shutting down\n".to_string()
            }
            b"quit" => break,
            _ => "commands: dump, job <text>, shutdown, quit\n".to_string(),
        };
        if sock.send(reply.as_bytes()).is_err() {
            break;
        }
    }
}

/// Coroutines blocked in different ways, for the dump to show; returns the queue whose
/// worker waits for jobs. A queue keeps its workers only while someone can still push to
/// it: dropped here, it would end its idle worker at once.
fn start_background() -> copas::Result<Queue<String>> {
    copas::addnamedthread("ticker", || {
        while !copas::exiting() {
            copas::pause(Duration::from_secs(1));
        }
    })?;

    let db = Lock::new(copas::FOREVER, false);
    db.set_name("db");
    {
        let db = db.clone();
        copas::addnamedthread("db-holder", move || {
            if db.get(None).is_ok() {
                // Holds it until a shutdown begins.
                while !copas::exiting() {
                    copas::pause(Duration::from_secs(1));
                }
                let _ = db.release();
            }
        })?;
    }
    copas::addnamedthread("db-waiter", move || {
        // Waits with a deadline, and tries again.
        while !copas::exiting() {
            if db.get(Duration::from_secs(60)).is_ok() {
                let _ = db.release();
                break;
            }
        }
    })?;

    let jobs: Queue<String> = Queue::named("jobs");
    jobs.add_worker(|job| println!("job: {job}"))?;

    copas::addnamedthread("idle", || {
        copas::pauseforever();
    })?;
    Ok(jobs)
}

fn main() -> copas::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|_| {
            copas::Error::with_message(copas::ErrorKind::InvalidInput, format!("bad port {arg:?}"))
        })?,
        None => DEFAULT_PORT,
    };
    // With port 0 the system picks both; else the control port is the next one, and 65535
    // has none.
    let control_port = match port {
        0 => 0,
        _ => port.checked_add(1).ok_or_else(|| {
            copas::Error::with_message(
                copas::ErrorKind::InvalidInput,
                format!("bad port {port}: the control port, the next one, would be past 65535"),
            )
        })?,
    };
    let echo = TcpListener::bind(("127.0.0.1", port))?;
    let control = TcpListener::bind(("127.0.0.1", control_port))?;
    println!(
        "dump: echo on {}, control on {}",
        echo.local_addr()?,
        control.local_addr()?
    );
    copas::addserver_with(echo, ServerOptions::new().name("echo"), echo_handler)?;
    let jobs = start_background()?;
    copas::addserver_with(control, ServerOptions::new().name("control"), move |sock| {
        control_handler(sock, &jobs)
    })?;
    copas::run()?;
    println!("dump: shut down");
    Ok(())
}
