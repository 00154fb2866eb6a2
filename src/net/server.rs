//! TCP servers: `addserver`, `removeserver`, and the accept loop.
//!
//! A listening socket is registered like any other; its readiness starts an accept round
//! that accepts up to [`ACCEPT_BUDGET`] connections (more wait for the next step, so a flood
//! of connections cannot starve established ones), starting each connection's handler at
//! once, in a coroutine named `<server>:handler_<n>` with the socket named
//! `<server>:client_<n>`. When accepting fails for lack of resources (`EMFILE`, `ENFILE`,
//! `ENOBUFS`, `ENOMEM`) the server backs off (10 ms, doubling to 1 s) instead of spinning.
//!
//! What it reports through `log` (target `copas::net::server`): the first failure of a
//! back-off at `warn` with its delay, the following ones at `debug`, accepting again at
//! `info`; an accept error other than a shortage at `warn` (also on standard error without
//! a logger, as before); a connection aborted before it was accepted at `debug`; a
//! connection dropped because it could not be set up at `warn`.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use crate::dispatcher::{
    self, log_or_print, AcceptOutcome, Acceptor, IoSource, SourceKey, TaskName,
};
use crate::error::{Error, ErrorKind, Result};
use crate::net::socket::{Connection, Socket, SocketName, Timeouts};
use crate::sys;

/// Connections accepted per readiness event before the other work gets a turn.
const ACCEPT_BUDGET: usize = 64;

/// First back-off after an accept failed for lack of resources.
const BACKOFF_MIN: Duration = Duration::from_millis(10);

/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A server registered with [`addserver`](crate::addserver); pass it to
/// [`removeserver`](crate::removeserver). Compares and hashes by identity, so it can key a
/// map of the servers a program runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Server {
    key: SourceKey,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Server({})", self.key.generation)
    }
}

/// Options of [`addserver_with`](crate::addserver_with).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    name: Option<String>,
    timeout: Option<Duration>,
}

impl ServerOptions {
    /// Default options: a generated name, no timeout.
    pub fn new() -> ServerOptions {
        ServerOptions::default()
    }

    /// Names the server; its connections are named `<name>:client_<n>` and their handlers
    /// `<name>:handler_<n>`.
    pub fn name(mut self, name: impl Into<String>) -> ServerOptions {
        self.name = Some(name.into());
        self
    }

    /// A timeout every accepted connection inherits for connect, send and receive
    /// (Copas's `addserver` timeout).
    ///
    /// As everywhere, zero never waits: every call that would have to wait for the peer
    /// fails with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) at once. That includes
    /// the TLS handshake [`handler`](crate::handler) runs under the connect timeout, so a
    /// TLS server with a zero timeout fails every handshake.
    pub fn timeout(mut self, timeout: Duration) -> ServerOptions {
        self.timeout = Some(timeout);
        self
    }

    /// The name and timeout given (for the UDP server, `net/udp.rs`).
    pub(crate) fn parts(&self) -> (Option<&str>, Option<Duration>) {
        (self.name.as_deref(), self.timeout)
    }
}

/// A listening socket and what to do with its connections.
struct Listener {
    io: Rc<IoSource>,
    handler: Rc<dyn Fn(Socket)>,
    name: Rc<str>,
    timeouts: Timeouts,
    accepted: Cell<u64>,
    backoff: Cell<Duration>,
}

fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl Listener {
    /// Starts the handler for one accepted connection (already non-blocking).
    fn start(&self, sock: socket2::Socket) {
        let n = self.accepted.get() + 1;
        self.accepted.set(n);
        let name = SocketName::Client {
            server: self.name.clone(),
            n,
        };
        let conn = match Connection::register(sock, self.timeouts, name) {
            Ok(conn) => conn,
            Err(e) => {
                log_or_print!(
                    log::Level::Warn,
                    "{}: dropping accepted connection: {e}",
                    self.name
                );
                return;
            }
        };
        conn.io.await_first_event();
        let socket = Socket::from_connection(conn.clone());
        let handler = self.handler.clone();
        let task_name = TaskName::Handler {
            server: self.name.clone(),
            n,
        };
        let spawned = dispatcher::with(|d| {
            let autoclose = d.autoclose();
            d.spawn(task_name, Some(conn.clone()), autoclose, true, move || {
                handler(socket)
            })
        });
        if let Err(e) = spawned {
            // No stack for a handler: shed the connection rather than fail the server.
            log_or_print!(log::Level::Warn, "{}: refusing connection: {e}", self.name);
            conn.close();
        }
    }
}

impl Acceptor for Listener {
    fn accept_ready(&self) -> AcceptOutcome {
        for _ in 0..ACCEPT_BUDGET {
            let accepted = {
                let sock = self.io.sock();
                match sock.as_ref() {
                    Some(sock) => sys::accept_nonblocking(sock),
                    None => return AcceptOutcome::Drained,
                }
            };
            match accepted {
                Ok(sock) => {
                    if self.backoff.get() > BACKOFF_MIN {
                        log::info!("{}: accepting again after backing off", self.name);
                    }
                    self.backoff.set(BACKOFF_MIN);
                    self.start(sock);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return AcceptOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionAborted
                        || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM)) =>
                {
                    // The client gave up (or a firewall refused it) before we accepted:
                    // normal on a busy server, nothing to act on.
                    log::debug!("{}: connection lost before accept: {e}", self.name);
                    continue;
                }
                Err(e) => {
                    let delay = self.backoff.get();
                    self.backoff.set((delay * 2).min(BACKOFF_MAX));
                    if !is_resource_shortage(&e) {
                        log_or_print!(
                            log::Level::Warn,
                            "{}: accept failed: {e}; backing off {delay:?}",
                            self.name
                        );
                    } else if delay == BACKOFF_MIN {
                        // The first failure since the last success: the one to act on (raise
                        // the descriptor limit, shed load). The rest of the run is detail.
                        log::warn!("{}: accept failed: {e}; backing off {delay:?}", self.name);
                    } else {
                        log::debug!(
                            "{}: accept still failing: {e}; backing off {delay:?}",
                            self.name
                        );
                    }
                    return AcceptOutcome::BackOff(delay);
                }
            }
        }
        AcceptOutcome::More
    }

    fn name(&self) -> String {
        self.name.to_string()
    }
}

/// Registers a listening TCP socket; `handler` runs in a new coroutine for every accepted
/// connection, started as soon as the connection is accepted.
pub(crate) fn addserver(
    listener: socket2::Socket,
    options: ServerOptions,
    handler: Rc<dyn Fn(Socket)>,
) -> Result<Server> {
    if listener.r#type()? != socket2::Type::STREAM || !crate::sys::is_ip(&listener)? {
        return Err(Error::with_message(
            ErrorKind::InvalidState,
            "addserver takes a listening TCP socket (use addudpserver for UDP)",
        ));
    }
    // Accepting on a socket that is not listening fails with `EINVAL` for ever: the server
    // would back off and log once a second and keep `run` from ending.
    if crate::sys::is_listener(&listener)? == Some(false) {
        return Err(Error::with_message(
            ErrorKind::InvalidState,
            "addserver takes a listening TCP socket (call listen first)",
        ));
    }
    listener.set_nonblocking(true)?;
    let name: Rc<str> = match options.name {
        Some(name) => Rc::from(name),
        None => {
            let addr = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map_or_else(|| "?".to_string(), |a| a.to_string());
            Rc::from(format!("tcp{{server}}:{addr}"))
        }
    };
    let timeouts = Timeouts {
        connect: options.timeout,
        send: options.timeout,
        receive: options.timeout,
    };
    let io = Rc::new(IoSource::new(listener));
    let acceptor = Rc::new(Listener {
        io: io.clone(),
        handler,
        name,
        timeouts,
        accepted: Cell::new(0),
        backoff: Cell::new(BACKOFF_MIN),
    });
    let key = dispatcher::with_or(dispatcher::destroyed, |d| d.register(&io, Some(acceptor)))?;
    Ok(Server { key })
}

/// Unregisters a server. Connections already accepted are not affected.
pub(crate) fn removeserver(server: Server, keep_open: bool) -> Result<Option<TcpListener>> {
    let Some(io) = dispatcher::with_or(|| None, |d| d.source_io(server.key)) else {
        return Err(Error::with_message(
            ErrorKind::InvalidState,
            "not a registered server",
        ));
    };
    let sock = dispatcher::with(|d| d.deregister(&io));
    match sock {
        Some(sock) if keep_open => {
            sock.set_nonblocking(false)?;
            Ok(Some(TcpListener::from(sock)))
        }
        _ => Ok(None),
    }
}
