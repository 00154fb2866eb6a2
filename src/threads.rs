//! Several cores: [`threads`] runs one dispatcher per OS thread, and [`bind_reuseport`]
//! gives each its own listener on a shared port.
//!
//! Nothing is shared between the dispatchers: each thread registers its own servers in its
//! own thread-local dispatcher, so the hot path stays lock-free and nothing needs to be
//! `Send`. The kernel spreads incoming connections over the listeners bound with
//! `SO_REUSEPORT` (on Linux by a hash of the connection's addresses and ports). What crosses
//! threads is explicit: [`Handle`](crate::Handle), [`channel`](crate::channel) and
//! [`offload`](crate::offload). See `docs/threads.md`.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, ErrorKind, Result};

/// The listen backlog of [`bind_reuseport`]: room for a burst of connections while the
/// dispatcher is busy (std's `TcpListener::bind` uses 128).
const REUSEPORT_BACKLOG: i32 = 1024;

/// The most threads [`threads`] starts: far more than any machine has cores, and few enough
/// that the vectors for them are small and the system's thread limit is not what refuses.
const MOST_THREADS: usize = 4096;

/// Runs `n` dispatchers on `n` new OS threads (beyond Copas, which is one Lua state on one
/// core) and waits for them all to end.
///
/// Thread `i` (named `copas-<i>`) calls `setup(i)`, which registers that thread's servers
/// and tasks with its own dispatcher — typically a listener from [`bind_reuseport`] on a
/// port all threads share, and [`addserver`](crate::addserver) — then [`run`](crate::run)s
/// the loop until nothing is left to do. `setup` may borrow from the caller (the threads
/// are scoped); it is shared, so it must be `Sync`. The threads start only once all `n`
/// exist, so a failure to start one leaves none running.
///
/// Returns each thread's outcome, in index order: `Ok(())` when its loop ended normally,
/// the error `setup` returned (the loop is then not run), the error `run` returned, or
/// [`ErrorKind::Panicked`] (with the thread's name and the panic's message) when `setup`
/// or the dispatcher panicked. Panics inside coroutines go to their error handlers as
/// usual and do not end the thread.
///
/// One thread failing does not stop the others: they run until their own loops end, and
/// `threads` returns when the last one has. A failed thread's dispatcher is dropped with
/// it, closing its sockets; with `SO_REUSEPORT` the kernel then sends new connections to
/// the remaining listeners (connections already queued on the closed one are reset). To
/// stop the others, have each `setup` hand out its [`handle`](crate::handle) and keep a
/// coroutine in [`waitforexit`](crate::waitforexit) that removes its servers; then call
/// [`Handle::exit`](crate::Handle::exit) on each.
///
/// # Errors
///
/// [`ErrorKind::InvalidInput`] when `n` is 0 or above 4,096 (a thread count no machine
/// gives a use to, which would only exhaust the system's threads); [`ErrorKind::Io`] when a
/// thread cannot be started (then none ran `setup`).
///
/// # Example
///
/// ```no_run
/// use copas::{Pattern, Socket};
///
/// fn echo(mut sock: Socket) {
///     while let Ok(line) = sock.receive(Pattern::Line) {
///         if sock.send(&[&line[..], b"\n"].concat()).is_err() {
///             break;
///         }
///     }
/// }
///
/// fn main() -> copas::Result<()> {
///     let n = std::thread::available_parallelism().map_or(1, |n| n.get());
///     let outcomes = copas::threads(n, |_index| {
///         copas::addserver(copas::bind_reuseport("127.0.0.1:9000")?, echo)?;
///         Ok(())
///     })?;
///     for outcome in outcomes {
///         outcome?;
///     }
///     Ok(())
/// }
/// ```
pub fn threads<F>(n: usize, setup: F) -> Result<Vec<Result<()>>>
where
    F: Fn(usize) -> Result<()> + Sync,
{
    if n == 0 {
        return Err(Error::with_message(
            ErrorKind::InvalidInput,
            "threads needs at least one thread",
        ));
    }
    if n > MOST_THREADS {
        return Err(Error::with_message(
            ErrorKind::InvalidInput,
            format!("threads starts at most {MOST_THREADS} threads, not {n}"),
        ));
    }
    let setup = &setup;
    std::thread::scope(|scope| {
        let mut started = Vec::with_capacity(n);
        let mut gates = Vec::with_capacity(n);
        for index in 0..n {
            // Each thread waits at its gate until all exist; a gate dropped unopened tells
            // it to end without running anything.
            let (open, gate) = mpsc::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name(format!("copas-{index}"))
                .spawn_scoped(scope, move || {
                    if gate.recv().is_err() {
                        return None;
                    }
                    Some(run_one(index, setup))
                });
            match spawned {
                Ok(thread) => {
                    started.push(thread);
                    gates.push(open);
                }
                Err(e) => {
                    drop(gates); // the scope joins the threads already started
                    return Err(
                        Error::from(e).with_context("a dispatcher thread could not be started")
                    );
                }
            }
        }
        for gate in gates {
            let _ = gate.send(());
        }
        let outcomes = started
            .into_iter()
            .enumerate()
            .map(|(index, thread)| match thread.join() {
                Ok(Some(outcome)) => outcome,
                Ok(None) => Err(Error::with_message(ErrorKind::Io, "thread not started")),
                // `run_one` catches panics; only a panic while reporting one lands here.
                Err(payload) => Err(panicked(index, &*payload)),
            })
            .collect();
        Ok(outcomes)
    })
}

/// The body of dispatcher thread `index`.
fn run_one(index: usize, setup: &(impl Fn(usize) -> Result<()> + Sync)) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(|| {
        setup(index)?;
        crate::run()
    })) {
        Ok(outcome) => outcome,
        Err(payload) => Err(panicked(index, &*payload)),
    }
}

fn panicked(index: usize, payload: &(dyn std::any::Any + Send)) -> Error {
    Error::with_message(
        ErrorKind::Panicked,
        format!(
            "dispatcher thread copas-{index} panicked: {}",
            copas_coro::panic_message(payload)
        ),
    )
}

/// A listening TCP socket with `SO_REUSEPORT` (and `SO_REUSEADDR`) set, so that several
/// threads, each with its own listener on the same address and port, share the incoming
/// connections (for [`threads`]). Resolves `addr` like `TcpListener::bind` (a host name
/// is resolved on the calling thread, blocking it) and binds the first address that works,
/// with a backlog of 1024 (std's `TcpListener::bind` uses 128).
///
/// All listeners of a port must set `SO_REUSEPORT` and belong to the same user. On Linux
/// the kernel picks a listener for each new connection by a hash of its addresses and
/// ports: the spread is even on average, not per connection (see `docs/threads.md`).
/// Other systems accept the option but may not spread connections at all (macOS gives
/// them to one listener; FreeBSD needs `SO_REUSEPORT_LB`).
///
/// Port 0 picks a free port for this listener alone: bind the first listener with port 0,
/// read its port with `local_addr`, and bind the others to that port.
///
/// # Errors
///
/// The system's error when no address can be bound (for example
/// `io::ErrorKind::AddrInUse` when a listener without `SO_REUSEPORT` holds the port);
/// [`ErrorKind::InvalidInput`] when `addr` names no address.
pub fn bind_reuseport(addr: impl ToSocketAddrs) -> Result<TcpListener> {
    let mut last = None;
    for addr in addr.to_socket_addrs()? {
        match bind_one(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => Error::with_message(ErrorKind::InvalidInput, "no address to bind"),
    })
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(REUSEPORT_BACKLOG)?;
    Ok(socket.into())
}
