//! # copas — Copas for Rust
//!
//! A coroutine dispatcher for network code that reads like blocking code. Every server
//! handler, task and timer runs in its own stackful coroutine; a call such as
//! [`Socket::receive`] or [`pause`] that would block suspends only that coroutine, and the
//! dispatcher resumes it when its socket is ready, its deadline passes, or what it waits on
//! is closed. One thread serves thousands of connections with plain sequential handlers,
//! no `async` anywhere. It is a port of Lua's [Copas](https://github.com/lunarmodules/copas)
//! and keeps its names and semantics (see `docs/copas-to-rust.md`). New to it? The manual in
//! `docs/manual/` goes from why coroutines to TLS, timers and the protocol clients.
//!
//! ## A first server
//!
//! ```no_run
//! use std::net::TcpListener;
//! use copas::{Pattern, Socket};
//!
//! fn echo(mut sock: Socket) {
//!     while let Ok(line) = sock.receive(Pattern::Line) {
//!         if line == b"quit" {
//!             break;
//!         }
//!         if sock.send(&[&line[..], b"\n"].concat()).is_err() {
//!             break;
//!         }
//!     }
//! } // the connection is closed when the handler returns
//!
//! fn main() -> copas::Result<()> {
//!     let listener = TcpListener::bind("127.0.0.1:9000")?;
//!     copas::addserver(listener, echo)?;
//!     copas::run() // until nothing is left to do
//! }
//! ```
//!
//! ## The model
//!
//! * One dispatcher per OS thread, created on first use. Coroutines, sockets and servers
//!   belong to the thread that made them: sockets are not `Send`, and a [`Coroutine`] or
//!   [`Server`] handle (plain identifiers, `Send`) names nothing on another thread, where
//!   operations on it do nothing.
//! * [`addthread`] schedules a coroutine: it starts in the next [`step`]. A server's
//!   handler starts as soon as its connection is accepted.
//! * [`run`] steps until nothing is left: no server, no socket wait, no ready or sleeping
//!   coroutine. A coroutine in [`pauseforever`] does not keep it alive. The first time the
//!   loop finds nothing to do it calls [`exit`], releasing [`waitforexit`] waiters, which may
//!   add work.
//! * Applications with their own main loop call [`step`] instead.
//! * A panic in a coroutine is caught, reported to its error handler (see
//!   [`seterrorhandler`]), its accepted connection is closed, and the loop goes on.
//! * Outside any coroutine, socket calls block the calling thread, so the same code (and
//!   the protocol clients) work from plain `main`.
//! * At thread exit the dispatcher ends what is left (coroutines are unwound, sockets
//!   closed) and is destroyed. A thread-local destroyed after it (one first used before
//!   copas on that thread) may still call copas from its destructor: what needs the
//!   dispatcher and returns a `Result` ([`step`], [`run`], [`addthread`], [`connect`],
//!   [`addserver`], [`handle`], a timer…) fails with [`ErrorKind::InvalidState`]; the rest
//!   finds an empty dispatcher ([`finished`] is true, [`status`] all zero) or works as
//!   outside any coroutine ([`offload`] runs its job inline, a queue or lock that needs no
//!   wait answers at once).
//! * Several cores: [`threads`] runs one dispatcher per thread, their listeners sharing a
//!   port through [`bind_reuseport`]; other threads reach a dispatcher through its
//!   [`Handle`] and send to its coroutines through a [`channel`] (see `docs/threads.md`).
//!
//! ## TLS
//!
//! TLS runs over [`native-tls`](native_tls) (re-exported as [`copas::native_tls`](native_tls),
//! OpenSSL on Linux), non-blocking: a TLS [`Socket`] has the same API as a plain one.
//! Clients use [`connect_tls`], or [`Socket::dohandshake`] to upgrade a connected socket in
//! place (`STARTTLS`); servers wrap their handler with [`handler`], which does the
//! handshake under the connection's timeout and runs the handler only on success.
//! Certificates and host names are verified by default; only the connector's
//! `danger_accept_invalid_certs`/`danger_accept_invalid_hostnames` turn that off.
//! `native-tls` cannot select a server certificate by SNI or demand client certificates.
//!
//! ```no_run
//! use copas::native_tls::TlsConnector;
//! use copas::Pattern;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! copas::run_with(|| {
//!     let connector = TlsConnector::new().unwrap();
//!     let timeout = Some(std::time::Duration::from_secs(10));
//!     // The name is resolved off the dispatcher; the certificate must be valid for it.
//!     let mut sock = copas::connect_tls("example.com:443", "example.com", &connector, timeout)
//!         .unwrap();
//!     sock.send(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n").unwrap();
//!     let status = sock.receive(Pattern::Line).unwrap();
//!     println!("{}", String::from_utf8_lossy(&status));
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Synchronisation
//!
//! Copas's submodules keep their names: [`timer`] (one-shot and recurring timers),
//! [`lock`] (a re-entrant lock with a FIFO line), [`semaphore`] (counted permits, strict
//! FIFO), [`queue`] (a FIFO queue with workers) and [`future`] (the result of a coroutine).
//! Waiting in them suspends only the calling coroutine. As in Copas, a timeout of `None`
//! means the object's default (10 s) and [`FOREVER`] means no timeout; a coroutine waiting
//! with a timeout keeps [`run`] going, one waiting forever does not.
//!
//! ```
//! use copas::queue::Queue;
//!
//! let jobs: Queue<u32> = Queue::new();
//! jobs.add_worker(|n| println!("job {n}")).unwrap();
//! jobs.push(1).unwrap();
//! jobs.push(2).unwrap();
//! let q = jobs.clone();
//! copas::run_with(move || q.finish(None, false).unwrap()).unwrap();
//! ```
//!
//! ## Protocol clients
//!
//! [`client::http`] (http and https, keep-alive, redirects, streaming bodies),
//! [`client::smtp`] (STARTTLS, AUTH, attachments) and [`client::ftp`] (passive mode,
//! streaming transfers) are built on [`Socket`] alone: in a coroutine each request suspends
//! only that coroutine, so many can be in flight; from `main` they simply block.
//!
//! ## Logging
//!
//! copas reports what no caller can be told through the [`log`](https://docs.rs/log)
//! facade, so an application sees it in its own logger (`env_logger`, `tracing`'s log
//! bridge, `syslog`…), filtered by target (`copas::…`) and level like its own records:
//!
//! | what | level | target |
//! |---|---|---|
//! | a coroutine panicked (the default error handler): `<message> (coroutine: <name>, socket: <name>)` | `error` | `copas::dispatcher::report` |
//! | an error handler panicked itself | `error` | `copas::dispatcher`, `copas::sync` |
//! | another thread could not wake the dispatcher (its eventfd failed), or no coroutine could be made for a task it posted | `error` | `copas::dispatcher::remote` |
//! | accepting failed for lack of resources (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): the first failure, with the back-off delay | `warn` | `copas::net::server` |
//! | … each further failure of that run, with its (doubling) delay | `debug` | `copas::net::server` |
//! | … accepting again afterwards | `info` | `copas::net::server` |
//! | any other accept error (the server backs off too) | `warn` | `copas::net::server` |
//! | an accepted connection dropped because it could not be set up, or no coroutine could be made for it | `warn` | `copas::net::server` |
//! | a connection that went away before it was accepted | `debug` | `copas::net::server` |
//!
//! Without a logger (`log::max_level()` is `Off`, as it is until a logger sets it), nothing
//! changes from Copas's behaviour: the `error` reports and the `warn` reports other than
//! the resource back-off print `copas: <message>` on standard error, as they always did, and
//! the other records are dropped. With a logger, copas writes nothing to standard error itself. A
//! handler set with [`seterrorhandler`] or [`setdefaulterrorhandler`] replaces the default
//! report entirely.
//!
//! ```
//! struct Stdout;
//! impl log::Log for Stdout {
//!     fn enabled(&self, m: &log::Metadata<'_>) -> bool {
//!         m.level() <= log::Level::Warn
//!     }
//!     fn log(&self, r: &log::Record<'_>) {
//!         println!("[{}] {}: {}", r.level(), r.target(), r.args());
//!     }
//!     fn flush(&self) {}
//! }
//!
//! log::set_logger(&Stdout).unwrap();
//! log::set_max_level(log::LevelFilter::Warn);
//! copas::addnamedthread("worker", || panic!("out of cheese")).unwrap();
//! copas::run().unwrap();
//! // [ERROR] copas::dispatcher::report: out of cheese (coroutine: worker, socket: nil)
//! ```
//!
//! ## Cooperative scheduling
//!
//! Coroutines switch only inside copas calls. A coroutine that computes for a second
//! delays every other one by a second; one that calls blocking `std` I/O blocks the whole
//! dispatcher. Hand such work to [`offload`], which runs it on a helper thread while only
//! the calling coroutine waits ([`connect`] resolves host names that way). Socket
//! operations that keep completing without waiting yield every 128 operations, so a busy
//! stream cannot starve the others.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod client;
mod dispatcher;
mod error;
mod net;
mod sync;
mod sys;
mod threads;

use std::net::TcpListener;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use dispatcher::{Coroutine, ErrorHandler, Handle, PanicReport, Status, StepStats};
pub use dispatcher::{CoroutineInfo, CoroutineState, ObjectKind, SocketInfo, WaitTarget};
pub use error::{Error, ErrorKind, Result};
pub use net::connect::ToAddrs;
pub use net::server::{Server, ServerOptions};
pub use net::socket::{Pattern, Socket, DEFAULT_LINE_LIMIT};
pub use net::tls::{handler, DEFAULT_HANDSHAKE_TIMEOUT};
pub use net::udp::{UdpSocket, DATAGRAM_SIZE};
pub use sync::{channel, future, lock, queue, semaphore, timer, FOREVER};
pub use threads::{bind_reuseport, threads};

pub use copas_coro::{DEFAULT_STACK_SIZE, MIN_STACK_SIZE};

/// The `native-tls` crate copas's TLS is built on, for its `TlsConnector`, `TlsAcceptor`,
/// `Certificate` and `Identity`.
pub use native_tls;

use dispatcher::TaskName;

// ----- the loop ---------------------------------------------------------------------------

/// Runs the dispatcher until nothing is left to do (Copas `loop`).
///
/// Returns when there is no server, no coroutine waiting on a socket, no ready or sleeping
/// coroutine, and no `timeout` that could wake a paused one. The first time it finds that,
/// it calls [`exit`] and goes on, so [`waitforexit`] waiters run once and may add work.
///
/// # Errors
///
/// Only the dispatcher's own failures (the poller failing); panics in coroutines go to
/// their error handlers. [`ErrorKind::InvalidState`] when called from inside a coroutine or
/// while the loop already runs (in `run`, or in a [`step`]: from an error handler or a
/// [`timeout`] callback), or from a destructor running during a panic
/// ([`std::thread::panicking`]: no coroutine could wait then, so each wait would end at once
/// and a coroutine waiting in a loop would spin), before it changes anything.
pub fn run() -> Result<()> {
    dispatcher::with_or(dispatcher::destroyed, |d| d.run(None, None))
}

/// Runs `init` as a coroutine named `copas_initializer`, then [`run`]s (Copas
/// `loop(init)`).
///
/// # Errors
///
/// As [`run`], and the error of [`addthread`] if no coroutine can be created.
pub fn run_with(init: impl FnOnce() + 'static) -> Result<()> {
    dispatcher::with_or(dispatcher::destroyed, |d| d.run(Some(Box::new(init)), None))
}

/// One iteration of the dispatcher (Copas `step`): waits up to `timeout` for an event or
/// the next deadline (`None`: as long as needed), then runs everything that became ready.
/// Returns whether any I/O event was handled. The wait may end sooner with nothing to run
/// (a signal interrupted it, or a deadline that was armed has since gone away), so a caller
/// that wants a given pause between its chores measures it rather than counting steps.
///
/// With `None` and nothing to wait for (no server, socket or deadline), it waits until
/// another thread posts through a [`Handle`]: there is no background timer. Copas's
/// `step()` returns within about 0.1 s there, because of its core timer thread; a main loop
/// with chores of its own passes `Some(interval)`.
///
/// Use it from an application's own main loop; see `examples/embed.rs`.
///
/// # Errors
///
/// The poller's error, or [`ErrorKind::InvalidState`] when called from inside a coroutine,
/// from a destructor running during a panic (as [`run`]), or after the thread's dispatcher
/// was destroyed (see [the model](crate#the-model)).
pub fn step(timeout: Option<Duration>) -> Result<bool> {
    dispatcher::with_or(dispatcher::destroyed, |d| d.step(timeout))
}

/// Whether the dispatcher has nothing left to do (what ends [`run`]): no work of its own,
/// no [`offload`] awaited, and nothing another thread posted through a [`Handle`] still
/// waiting for the next step.
pub fn finished() -> bool {
    dispatcher::with_or(|| true, |d| d.finished())
}

/// Signals exit (Copas `exit`): sets [`exiting`] and releases every [`waitforexit`] waiter.
/// Stops nothing by force; idempotent.
pub fn exit() {
    dispatcher::with_or(|| (), |d| d.exit())
}

/// Whether [`exit`] was called since the loop started.
pub fn exiting() -> bool {
    dispatcher::with_or(|| true, |d| d.exiting())
}

/// Suspends the calling coroutine until [`exit`] is called (by the loop when it runs out of
/// work, or explicitly). Returns at once if it already was.
///
/// # Errors
///
/// [`ErrorKind::InvalidState`] outside a coroutine; [`ErrorKind::Cancelled`] if the
/// coroutine is cancelled while it waits.
pub fn waitforexit() -> Result<()> {
    dispatcher::with_or(dispatcher::destroyed, |d| d.waitforexit())
}

/// Abandons everything (Copas `cancelall`): every coroutine is dropped (its stack unwound,
/// so its locals and sockets are released), every server and every socket with waiters is
/// closed, every timer forgotten, and [`exit`] is called. Called outside a coroutine, it
/// also cancels what the destructors of the dropped coroutines start (for up to 8 rounds).
/// The loop then ends promptly; a later [`run`] starts afresh. A [`shutdown`] under way
/// ends with it.
pub fn cancelall() {
    dispatcher::with_or(|| (), |d| d.cancelall())
}

/// Shuts the dispatcher down gracefully (beyond Copas): stops accepting, lets running
/// coroutines finish for up to `grace`, then cancels what is left. Callable from a coroutine
/// or between [`step`]s; returns at once.
///
/// At once, every listening server is closed (the kernel refuses new connections from
/// now on; connections queued but not yet accepted are reset) and [`exit`] is called:
/// [`exiting`] becomes true and [`waitforexit`] waiters are released. That is how
/// coroutines learn of it: a handler serving requests in a loop checks [`exiting`] between
/// requests and ends after the current one; [`shutdown_deadline`] says how long it has.
/// Everything else goes on as usual: connections already accepted keep working.
///
/// The shutdown completes when `grace` has passed or, earlier, when nothing is left that
/// could run by itself (what ends [`run`]). Completing it is [`cancelall`] — every
/// coroutine left is unwound (its locals dropped, so its sockets are closed and it leaves
/// every lock, semaphore or queue line), timers are forgotten — and then every socket still
/// registered with this dispatcher is closed, whoever holds it. Coroutines paused forever
/// or waiting without a deadline are cancelled too. [`run`] then returns; the dispatcher
/// holds nothing, and a later [`run`] starts afresh. Work other threads post through a
/// [`Handle`] that the dispatcher has not taken in by then waits for that later `run` (or
/// [`step`]): it does not hold this one past the deadline.
///
/// Called again during a shutdown it only brings the deadline forward. `Duration::ZERO`
/// cancels everything in the coming step; [`FOREVER`] waits as long as coroutines run.
/// An armed recurring [`timer`] can always run by itself, so it holds the
/// shutdown to its full `grace`: cancel such timers when [`exiting`] turns true.
///
/// Differences from [`exit`]: `exit` only signals (the loop ends when it runs out of work,
/// servers keep it going forever); `shutdown` also closes the servers and guarantees the
/// end by the deadline. UDP servers are coroutines like any other here: their handler sees
/// [`exiting`], or is cancelled at the deadline.
///
/// # Example
///
/// ```
/// use std::net::TcpListener;
/// use std::time::Duration;
/// use copas::Pattern;
///
/// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
/// copas::addserver(listener, |mut sock| {
///     // Serve requests until a shutdown begins, finishing the current one.
///     while !copas::exiting() {
///         match sock.receive(Pattern::Line) {
///             Ok(line) => drop(sock.send(&[&line[..], b"\n"].concat())),
///             Err(_) => break,
///         }
///     }
/// })
/// .unwrap();
/// copas::addthread(|| {
///     copas::pause(Duration::from_millis(50));
///     copas::shutdown(Duration::from_secs(5));
/// })
/// .unwrap();
/// copas::run().unwrap(); // returns once the shutdown is complete
/// assert_eq!(copas::status().servers, 0);
/// ```
pub fn shutdown(grace: Duration) {
    dispatcher::with_or(|| (), |d| d.shutdown(grace))
}

/// Whether a [`shutdown`] is under way (begun and not yet complete).
pub fn shutting_down() -> bool {
    dispatcher::with_or(|| false, |d| d.shutting_down())
}

/// When the [`shutdown`] under way cancels what is left; `None` when no shutdown is under
/// way or its grace has no end ([`FOREVER`]).
pub fn shutdown_deadline() -> Option<Instant> {
    dispatcher::with_or(|| None, |d| d.shutdown_deadline())
}

/// Whether [`run`] is running.
pub fn running() -> bool {
    dispatcher::with_or(|| false, |d| d.running())
}

// ----- coroutines -------------------------------------------------------------------------

/// Adds a coroutine running `f` (Copas `addthread`). It is scheduled: it starts in the next
/// [`step`], not inside this call.
///
/// `f` is moved onto the new coroutine's stack, so adding one allocates nothing; a closure
/// that captures more than 960 bytes (`copas_coro::INLINE_BODY`) is boxed first, one
/// allocation.
///
/// # Errors
///
/// [`ErrorKind::Io`] (out of memory) when no stack can be mapped for it.
pub fn addthread(f: impl FnOnce() + 'static) -> Result<Coroutine> {
    dispatcher::with_or(dispatcher::destroyed, |d| {
        d.spawn(TaskName::Anonymous, None, false, false, f)
    })
}

/// Like [`addthread`], with a name (see [`getthreadname`]).
///
/// # Errors
///
/// As [`addthread`].
pub fn addnamedthread(name: &str, f: impl FnOnce() + 'static) -> Result<Coroutine> {
    dispatcher::with_or(dispatcher::destroyed, |d| {
        d.spawn(TaskName::Owned(Rc::from(name)), None, false, false, f)
    })
}

/// Removes a coroutine (Copas `removethread`): it is never resumed again; its stack is
/// unwound (dropping its locals, giving up its places in wait lines) before this returns,
/// or, when it removes itself, as soon as it next waits. Called from a destructor that
/// another removal's unwind runs, the unwind follows that one's, before the outer removal
/// returns (two unwinds cannot nest). Returns false for a coroutine that already ended.
///
/// The unwind is a panic's: as anywhere in Rust, a destructor that panics during it aborts
/// the process ("panic in a destructor during cleanup"). Code on the coroutine's stack may
/// catch it (`catch_unwind`) but should let it go on: the coroutine cannot wait any more
/// (every wait returns at once, cancelled), and a panic it raises instead goes to the
/// default error handler. Its entry is gone while it unwinds, so its destructors see no
/// current coroutine: a [`Lock::release`](crate::lock::Lock::release) there fails with
/// `NotOwned` and a [`Lock::get`](crate::lock::Lock::get) with `Cancelled` (they never act
/// as the code outside coroutines would), and a lock it took with `get` stays held until
/// destroyed (as in Copas). Guards release as they drop: a lock taken with
/// [`Lock::lock`](crate::lock::Lock::lock), permits with
/// [`Semaphore::acquire`](crate::semaphore::Semaphore::acquire).
pub fn removethread(co: Coroutine) -> bool {
    dispatcher::with_or(|| false, |d| d.removethread(co))
}

/// The coroutine running now, or `None` outside any coroutine.
pub fn current() -> Option<Coroutine> {
    dispatcher::with_or(|| None, |d| d.current())
}

/// Suspends the calling coroutine for `delay` (Copas `pause`) and returns the time actually
/// paused. `Duration::ZERO` yields: the coroutine runs again in the next step, after the
/// others that are ready, and `Duration::ZERO` is returned without reading the clock (this
/// is the hot path of cooperative loops). Outside a coroutine it sleeps the thread.
///
/// A `delay` too long to add to the clock, such as [`FOREVER`] or `Duration::MAX`, has no
/// deadline: the coroutine pauses as in [`pauseforever`], and like it does not keep [`run`]
/// going; outside a coroutine such a `pause` returns at once, as `pauseforever` does there.
pub fn pause(delay: Duration) -> Duration {
    dispatcher::with_or(|| dispatcher::sleep_outside(delay), |d| d.pause(delay))
}

/// Suspends the calling coroutine until [`wakeup`] (Copas `pauseforever`). Returns the time
/// paused. Such a coroutine does not keep [`run`] going; if nothing wakes it, it is
/// abandoned when the loop ends. Outside a coroutine it returns at once.
pub fn pauseforever() -> Duration {
    dispatcher::with_or(|| Duration::ZERO, |d| d.pauseforever())
}

/// Wakes a coroutine in [`pause`] or [`pauseforever`] (Copas `wakeup`); it runs in the next
/// step. Returns false if it was not pausing (a coroutine waiting on a socket is not woken).
pub fn wakeup(co: Coroutine) -> bool {
    dispatcher::with_or(|| false, |d| d.wakeup(co))
}

/// Arms a timeout for the calling coroutine (Copas `timeout`): after `delay`, `callback`
/// runs on the dispatcher with the coroutine's handle (typically to [`wakeup`] it). A new
/// call replaces the previous timeout; `Duration::ZERO` only cancels it, and a delay that
/// ends past what [`std::time::Instant`] can hold (`Duration::MAX`) replaces it with none,
/// since it would never fire. A panic in the
/// callback goes to the default error handler, reported as coroutine `copas_core_timer`.
///
/// The timeout belongs to the coroutine, as the guard of its own waits: when the coroutine
/// ends or is removed, the callback is dropped unrun (with what it captured), and a pending
/// one no longer keeps [`run`] going. Copas's would still fire, with the dead coroutine's
/// handle. A callback that must outlive the coroutine that sets it up is a [`timer`].
///
/// # Errors
///
/// [`ErrorKind::InvalidState`] outside a coroutine; [`ErrorKind::Cancelled`] in one that is
/// being removed (from a destructor its unwinding runs).
pub fn timeout(delay: Duration, callback: impl FnOnce(Coroutine) + 'static) -> Result<()> {
    let callback: Option<Box<dyn FnOnce(Coroutine)>> = if delay.is_zero() {
        None
    } else {
        Some(Box::new(callback))
    };
    dispatcher::with_or(dispatcher::destroyed, |d| d.timeout(delay, callback))
}

/// The dispatcher's clock: monotonic, unaffected by changes to the wall clock (Copas
/// `gettime`, which uses the wall clock, is issue #100 upstream).
pub fn gettime() -> Instant {
    Instant::now()
}

/// Sets the stack size of coroutines created from now on (default
/// [`DEFAULT_STACK_SIZE`], at least [`MIN_STACK_SIZE`]). See `docs/stacks.md`.
pub fn set_stack_size(bytes: usize) {
    dispatcher::with_or(|| (), |d| d.set_stack_size(bytes))
}

/// The stack size of new coroutines.
pub fn stack_size() -> usize {
    dispatcher::with_or(|| DEFAULT_STACK_SIZE, |d| d.stack_size())
}

/// Whether connections accepted from now on are closed when their handler returns or
/// panics (Copas `autoclose`, default true; sampled at accept time). With it off, a
/// connection lives until its last [`Socket`] handle is closed or dropped. Accepted TCP
/// connections only, as in Copas: a UDP server's socket always ends with its handler.
pub fn set_autoclose(on: bool) {
    dispatcher::with_or(|| (), |d| d.set_autoclose(on))
}

/// See [`set_autoclose`].
pub fn autoclose() -> bool {
    dispatcher::with_or(|| true, |d| d.autoclose())
}

/// How many finished coroutines' stacks the dispatcher keeps for reuse (default 1024).
///
/// Stacks of coroutines that end beyond this bound are not given back to the kernel as they
/// end but when the dispatcher has an idle moment (no event pending, nothing ready, no timer
/// due within 1 ms; a step then gives back stacks for at most 0.5 ms and returns), one per
/// step after 5 s without such a moment, and when [`run`] returns; meanwhile new coroutines
/// reuse them. Lowering the bound gives back what is beyond it at once. See
/// `docs/stacks.md`.
pub fn set_pooled_stacks(max: usize) {
    dispatcher::with_or(|| (), |d| d.set_pooled_stacks(max))
}

// ----- names, errors, status --------------------------------------------------------------

/// Names a coroutine (`None`: the calling one). Returns false if there is no such
/// coroutine.
pub fn setthreadname(name: &str, co: Option<Coroutine>) -> bool {
    dispatcher::with_or(|| false, |d| d.set_name(co, name))
}

/// A coroutine's name (`None`: the calling one): the name given, or a generated one
/// (`thread_<id>`, `<server>:handler_<n>`, `copas_initializer`).
pub fn getthreadname(co: Option<Coroutine>) -> Option<String> {
    dispatcher::with_or(|| None, |d| d.name(co))
}

/// Names a socket (Copas `setsocketname`).
pub fn setsocketname(name: &str, socket: &Socket) {
    socket.set_name(name)
}

/// A socket's name (Copas `getsocketname`): the name given, `<server>:client_<n>` for an
/// accepted connection, or `tcp{client}:<fd>`.
pub fn getsocketname(socket: &Socket) -> String {
    socket.name()
}

/// Sets the error handler of the calling coroutine; outside a coroutine, sets the thread's
/// default handler (Copas `seterrorhandler`). The handler is called once with the report
/// of a panic in that coroutine.
pub fn seterrorhandler(handler: impl Fn(&PanicReport) + 'static) {
    let handler: ErrorHandler = Rc::new(handler);
    let set = dispatcher::with_or(|| true, |d| d.set_handler(Some(handler.clone())));
    if !set {
        setdefaulterrorhandler_rc(handler);
    }
}

/// Sets the thread's default error handler, used by coroutines without their own (Copas
/// `seterrorhandler(fn, true)`). The initial one logs
/// `<message> (coroutine: <name>, socket: <name>)` as an error record through the `log`
/// facade, or, when no logger is installed, prints it on standard error after `copas: `
/// (see [Logging](crate#logging)).
pub fn setdefaulterrorhandler(handler: impl Fn(&PanicReport) + 'static) {
    setdefaulterrorhandler_rc(Rc::new(handler))
}

fn setdefaulterrorhandler_rc(handler: ErrorHandler) {
    dispatcher::with_or(|| (), |d| d.set_default_handler(handler))
}

/// The error handler of a coroutine (`None`: the calling one), or the default handler
/// (Copas `geterrorhandler`).
pub fn geterrorhandler(co: Option<Coroutine>) -> ErrorHandler {
    dispatcher::with_or(dispatcher::default_handler, |d| d.handler(co))
}

/// Counts of what the dispatcher holds (Copas `status`).
pub fn status() -> Status {
    dispatcher::with_or(Status::default, |d| d.status())
}

/// Turns the timing statistics of this thread's dispatcher's steps on, afresh from now (so
/// also while on: the counters, `_ever` ones included, start again), or off (Copas
/// `status(true)` and `status(false)`). Off by default; see [`StepStats`]. A step under way
/// when they are turned on or read (from a coroutine, say) is not counted.
pub fn set_step_stats(on: bool) {
    dispatcher::with_or(|| (), |d| d.set_step_stats(on))
}

/// The steps' timing statistics since the previous call (or since they were turned on), and
/// a new period from now (Copas `status(true)`'s `time_*`, `steps` and `duration_*`
/// fields); `None` while they are off.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// copas::set_step_stats(true);
/// copas::addthread(|| {
///     for _ in 0..3 {
///         copas::pause(Duration::from_millis(1));
///     }
/// })
/// .unwrap();
/// copas::run().unwrap();
/// let stats = copas::step_stats().unwrap();
/// assert!(stats.steps >= 4);
/// assert!(stats.duration_max <= stats.duration_tot);
/// assert_eq!(copas::step_stats().unwrap().steps, 0); // a new period
/// copas::set_step_stats(false);
/// assert!(copas::step_stats().is_none());
/// ```
pub fn step_stats() -> Option<StepStats> {
    dispatcher::with_or(|| None, |d| d.step_stats())
}

/// Every coroutine of this thread's dispatcher — its name, what it is doing (running,
/// ready, sleeping until when, reading or writing which socket, waiting on which lock,
/// semaphore, queue, future or channel, paused forever) and since when — in the order they were
/// created (beyond Copas, whose `status` only counts). See [`dump`] for a readable form.
///
/// Cheap to keep available: waiting records only a few words in the coroutine's entry;
/// names and addresses are looked up here.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use copas::CoroutineState;
///
/// copas::addnamedthread("sleeper", || drop(copas::pause(Duration::from_secs(1)))).unwrap();
/// copas::addthread(|| {
///     copas::pause(Duration::from_millis(10));
///     let list = copas::coroutines();
///     let sleeper = list.iter().find(|c| c.name == "sleeper").unwrap();
///     assert!(matches!(sleeper.state, CoroutineState::Sleeping { .. }));
///     copas::wakeup(sleeper.coroutine);
/// })
/// .unwrap();
/// copas::run().unwrap();
/// ```
pub fn coroutines() -> Vec<CoroutineInfo> {
    dispatcher::with_or(Vec::new, |d| d.coroutines())
}

/// A readable dump of this thread's dispatcher, like Go's goroutine dump: a header with
/// counts by state, one line per coroutine (see [`coroutines`]) and one per listening
/// server. Times are relative to now (`for`: how long it has been in its state):
///
/// ```text
/// copas dump of thread "main": 4 coroutines (1 running, 0 ready, 1 sleeping, 0 paused forever, 1 reading, 0 writing, 1 waiting), 1 servers, 2 sockets
/// coroutine 1 "control:handler_1" [running, for 0.000 s]
/// coroutine 2 "echo:handler_1" [reading "echo:client_1" (fd 7, local 127.0.0.1:9000, peer 127.0.0.1:50122), for 2.108 s, no deadline]
/// coroutine 3 "ticker" [sleeping until in 0.492 s, for 0.508 s]
/// coroutine 4 "worker" [waiting on lock "db" (#1), for 1.955 s, deadline in 8.045 s]
/// server "echo" [listening on 127.0.0.1:9000, fd 6]
/// ```
pub fn dump() -> String {
    dispatcher::with_or(
        || "copas dump: the thread's dispatcher is gone (the thread is exiting)".to_string(),
        |d| d.dump(),
    )
}

// ----- sockets and servers ----------------------------------------------------------------

/// Registers a listening TCP socket (Copas `addserver`): `handler` runs in a new coroutine
/// for each accepted connection, started as soon as it is accepted, and the connection is
/// closed when the handler returns or panics.
///
/// Accepts a `std::net::TcpListener` or a `socket2::Socket` that listens.
///
/// # Errors
///
/// [`ErrorKind::InvalidState`] for a socket that is not a TCP socket or not listening; the
/// system's error if it cannot be made non-blocking or registered.
pub fn addserver(
    listener: impl Into<socket2::Socket>,
    handler: impl Fn(Socket) + 'static,
) -> Result<Server> {
    net::server::addserver(listener.into(), ServerOptions::new(), Rc::new(handler))
}

/// Like [`addserver`], with a name and a timeout that accepted connections inherit.
///
/// # Errors
///
/// As [`addserver`].
pub fn addserver_with(
    listener: impl Into<socket2::Socket>,
    options: ServerOptions,
    handler: impl Fn(Socket) + 'static,
) -> Result<Server> {
    net::server::addserver(listener.into(), options, Rc::new(handler))
}

/// Unregisters a server (Copas `removeserver`). Connections it accepted go on. With
/// `keep_open` the listener is handed back (in blocking mode) so it can be used or added
/// again; otherwise it is closed and `None` is returned.
///
/// # Errors
///
/// [`ErrorKind::InvalidState`] if the server was already removed.
pub fn removeserver(server: Server, keep_open: bool) -> Result<Option<TcpListener>> {
    net::server::removeserver(server, keep_open)
}

/// Takes over a connected TCP stream (Copas `wrap`).
///
/// # Errors
///
/// [`ErrorKind::InvalidState`] for a socket that is not a TCP stream (a UDP socket: use
/// [`wrapudp`]) or is a listener (use [`addserver`]); the system's error if the socket
/// cannot be made non-blocking or registered.
pub fn wrap(stream: impl Into<socket2::Socket>) -> Result<Socket> {
    net::connect::wrap(stream.into())
}

/// Opens a TCP connection (Copas `connect`), trying each address `addr` stands for in
/// turn, within `timeout` for the whole attempt, name resolution included (`None`: the
/// system's own limit). The socket's connect timeout is set to `timeout`.
///
/// `addr` is anything [`ToAddrs`] takes: a `SocketAddr` is used as is; a host name
/// (`"localhost:9000"`, `("example.org", 80)`) is resolved with the system resolver on a
/// helper thread ([`offload`]), so inside a coroutine only the coroutine waits, for the
/// resolution as for the connection. Outside any coroutine the thread waits, within `timeout`
/// all the same. A lookup still queued for a busy helper when the attempt is given up (out of
/// time, or cancelled) is dropped unrun: while a resolver hangs, connects that time out do not
/// pile lookups up behind it.
///
/// A peer that accepts and resets the connection before the connect has finished waiting
/// (one that sends a refusal and hangs up, say) is connected all the same, as a blocking
/// connect would be: reads return what it sent, then the reset (`Closed` with the system's
/// `ConnectionReset`), or, when the peer closed its side before resetting, a clean end of
/// stream.
///
/// # Errors
///
/// [`ErrorKind::Refused`] when nobody listens (on any of the addresses),
/// [`ErrorKind::Timeout`] when the attempt takes longer than `timeout`,
/// [`ErrorKind::HostNotFound`] when the name does not resolve, [`ErrorKind::InvalidInput`]
/// for an address that does not parse (such as a host without a port) and for an empty
/// list of addresses,
/// [`ErrorKind::Cancelled`] when the coroutine is cancelled meanwhile, or the system's error
/// for the last address tried.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// copas::addthread(|| {
///     match copas::connect("localhost:9000", Some(Duration::from_secs(5))) {
///         Ok(mut sock) => {
///             let _ = sock.send(b"hello\n");
///         }
///         Err(e) => eprintln!("connect: {e}"),
///     }
/// })
/// .unwrap();
/// copas::run().unwrap();
/// ```
pub fn connect(addr: impl ToAddrs, timeout: Option<Duration>) -> Result<Socket> {
    net::connect::connect(addr, timeout)
}

/// Runs a blocking closure on a helper thread and returns its result, suspending only the
/// calling coroutine meanwhile (beyond Copas: its documentation warns that anything
/// blocking, name resolution included, stops the whole scheduler).
///
/// Use it for what has no non-blocking form: name resolution, file I/O, a blocking
/// library call, a long computation. The helpers are a small process-wide pool (at most
/// four threads, started on demand, leaving after ten idle seconds); closures beyond that
/// wait their turn in order. The dispatcher sleeps while it waits (the helper wakes it
/// through its poller), and a coroutine waiting here keeps [`run`] going.
///
/// Outside a coroutine `f` simply runs on the calling thread.
///
/// # Errors
///
/// [`ErrorKind::Panicked`] when `f` panics (with the panic's message; the helper thread
/// survives); [`ErrorKind::Cancelled`] when the coroutine is cancelled while it waits: `f`
/// still runs to its end on its helper, and its result is dropped there;
/// [`ErrorKind::Io`] if no helper thread can be started.
///
/// # Example
///
/// ```
/// copas::addthread(|| {
///     let text = copas::offload(|| std::fs::read_to_string("Cargo.toml"));
///     assert!(text.unwrap().is_ok());
/// })
/// .unwrap();
/// copas::run().unwrap();
/// ```
pub fn offload<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    dispatcher::remote::offload(f, None, dispatcher::remote::WhenAbandoned::Run)
}

/// A `Send + Clone` [`Handle`] to the calling thread's dispatcher (beyond Copas), for other
/// threads: [`Handle::spawn`] adds a task to it, [`Handle::exit`] asks it to exit; either
/// wakes it at once. See `docs/threads.md`.
///
/// # Errors
///
/// [`ErrorKind::Io`] if the dispatcher's poller could not be created or gives no wake-up
/// handle.
pub fn handle() -> Result<Handle> {
    Handle::current()
}

/// Registers a UDP socket as a server (Copas `addserver` with a UDP socket): one
/// coroutine, named `<server>:handler`, runs `handler` with the socket, started at once
/// (when called from inside a coroutine: in the next step). The handler typically loops on
/// [`UdpSocket::receivefrom`] and [`UdpSocket::sendto`]. Returns the handler's coroutine.
///
/// Accepts a `std::net::UdpSocket` or a UDP `socket2::Socket`. The server's default name
/// is `udp{server}:<address>` (see [`addudpserver_with`]); its socket carries that name.
/// A UDP server is not counted in [`status`]`().servers`: its handler's wait keeps the loop
/// going, and it ends when the handler returns. Stop it by closing the socket (the waiting
/// handler then gets [`ErrorKind::Closed`]) or with [`removethread`].
///
/// # Errors
///
/// [`ErrorKind::InvalidState`] for a socket that is not a UDP socket; the system's error
/// if it cannot be made non-blocking or registered; [`ErrorKind::Io`] when no stack can be
/// mapped for the handler.
pub fn addudpserver(
    socket: impl Into<socket2::Socket>,
    handler: impl FnOnce(UdpSocket) + 'static,
) -> Result<Coroutine> {
    net::udp::addudpserver(socket.into(), ServerOptions::new(), Box::new(handler))
}

/// Like [`addudpserver`], with a name (the handler is then `<name>:handler`) and a timeout
/// set on the socket for send and receive.
///
/// # Errors
///
/// As [`addudpserver`].
pub fn addudpserver_with(
    socket: impl Into<socket2::Socket>,
    options: ServerOptions,
    handler: impl FnOnce(UdpSocket) + 'static,
) -> Result<Coroutine> {
    net::udp::addudpserver(socket.into(), options, Box::new(handler))
}

/// Takes over a UDP socket (Copas `wrap` of a UDP socket): a `std::net::UdpSocket` or a
/// UDP `socket2::Socket`, bound or not.
///
/// # Errors
///
/// [`ErrorKind::InvalidState`] for a socket that is not a UDP socket, or the system's error
/// if it cannot be made non-blocking or registered.
pub fn wrapudp(socket: impl Into<socket2::Socket>) -> Result<UdpSocket> {
    UdpSocket::wrap(socket.into())
}

/// Opens a TLS connection (Copas `connect` on a socket wrapped with TLS parameters):
/// [`connect`]s to `addr`, then does the TLS client handshake with `connector`, all within
/// `timeout` (`None`: no limit). The server's certificate must be valid for `server_name`
/// (a host name, sent as SNI, or an IP address, which is not: RFC 6066).
///
/// Verification is on by default. Trust a private CA with
/// `TlsConnector::builder().add_root_certificate(..)`; present a client certificate with
/// `.identity(..)`. Turning verification off is explicit and named as dangerous:
/// `danger_accept_invalid_certs(true)`, `danger_accept_invalid_hostnames(true)`.
///
/// # Errors
///
/// As [`connect`]; then [`ErrorKind::Tls`] when the handshake fails (untrusted
/// certificate, host-name mismatch, a server that does not speak TLS…),
/// [`ErrorKind::Timeout`] when `timeout` passes first, [`ErrorKind::Closed`] when the
/// server resets or closes the connection during the handshake. See
/// [`Socket::dohandshake`].
pub fn connect_tls(
    addr: impl ToAddrs,
    server_name: &str,
    connector: &native_tls::TlsConnector,
    timeout: Option<Duration>,
) -> Result<Socket> {
    let started = Instant::now();
    net::tls::connect_tls(
        connect(addr, timeout),
        started,
        server_name,
        connector,
        timeout,
    )
}

/// The manual's chapters (`docs/manual/`), compiled and run as doctests so that every code
/// block in them stays true to the API. Seen only by `cargo test --doc`; not public API.
#[cfg(doctest)]
mod manual_doctests {
    #[doc = include_str!("../docs/manual/01-introduction.md")]
    struct Introduction;
    #[doc = include_str!("../docs/manual/02-installing.md")]
    struct Installing;
    #[doc = include_str!("../docs/manual/03-first-server.md")]
    struct FirstServer;
    #[doc = include_str!("../docs/manual/04-existing-server.md")]
    struct ExistingServer;
    #[doc = include_str!("../docs/manual/05-step.md")]
    struct Step;
    #[doc = include_str!("../docs/manual/06-sockets.md")]
    struct Sockets;
    #[doc = include_str!("../docs/manual/07-tls.md")]
    struct Tls;
    #[doc = include_str!("../docs/manual/08-udp.md")]
    struct Udp;
    #[doc = include_str!("../docs/manual/09-timers-and-sync.md")]
    struct TimersAndSync;
    #[doc = include_str!("../docs/manual/10-clients.md")]
    struct Clients;
    #[doc = include_str!("../docs/manual/11-errors.md")]
    struct Errors;
    #[doc = include_str!("../docs/manual/12-threads.md")]
    struct Threads;
    #[doc = include_str!("../docs/manual/13-performance.md")]
    struct Performance;
    #[doc = include_str!("../docs/manual/14-from-copas.md")]
    struct FromCopas;
}
