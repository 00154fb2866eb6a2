//! Error handlers, and where copas reports what goes wrong outside any caller's reach.
//!
//! A panic is caught at the coroutine's boundary and turned into a [`PanicReport`], which
//! goes to the coroutine's own handler if it set one, else to the thread's default handler.
//! The default reports the message with the coroutine's and socket's names, as Copas does:
//! as an error record through the `log` facade when the application installed a logger,
//! else on standard error. A handler that panics itself is reported the same way and
//! ignored.
//!
//! `log_or_print!` is that rule for the dispatcher's other reports (a failed accept, a
//! connection dropped for lack of resources): a program with a logger sees them in its own
//! logs, filtered by its own levels, and a program without one still sees on standard
//! error what Copas would print. Reports that only explain normal behaviour (back-off
//! steps, aborted connections) use the `log` macros directly: without a logger they stay
//! silent, as before.

use std::any::Any;
use std::fmt;
use std::rc::Rc;

use super::task::Coroutine;

/// Reports through `log` at `$level` (target: the calling module) when a logger is
/// installed, else prints `copas: <message>` on standard error.
///
/// "Installed" means `log::max_level()` is above `Off`: `log` starts at `Off`, and setting
/// a logger without raising the level would drop every record anyway.
macro_rules! log_or_print {
    ($level:expr, $($arg:tt)+) => {
        if ::log::max_level() == ::log::LevelFilter::Off {
            ::std::eprintln!("copas: {}", ::std::format_args!($($arg)+));
        } else {
            ::log::log!($level, $($arg)+);
        }
    };
}
pub(crate) use log_or_print;

/// A function that handles coroutine panics (see [`seterrorhandler`](crate::seterrorhandler)).
pub type ErrorHandler = Rc<dyn Fn(&PanicReport)>;

/// What is known about a panic caught at a coroutine's boundary.
pub struct PanicReport {
    pub(crate) coroutine: Option<Coroutine>,
    pub(crate) thread_name: String,
    pub(crate) socket_name: Option<String>,
    pub(crate) payload: Box<dyn Any + Send>,
}

impl PanicReport {
    /// The panic's message (or a placeholder when the payload is not a string). For a
    /// [`copas::Error`](crate::Error) payload (how [`handler`](crate::handler) reports a
    /// failed TLS handshake), the error's message, or its kind's word.
    pub fn message(&self) -> &str {
        if let Some(e) = self.payload.downcast_ref::<crate::Error>() {
            return e.message().unwrap_or(e.kind().as_str());
        }
        copas_coro::panic_message(&*self.payload)
    }

    /// The coroutine that panicked; `None` for a `copas::timeout` callback, which runs on
    /// the dispatcher (named `copas_core_timer`, as in Copas).
    pub fn coroutine(&self) -> Option<Coroutine> {
        self.coroutine
    }

    /// The coroutine's name at the time of the panic.
    pub fn thread_name(&self) -> &str {
        &self.thread_name
    }

    /// The name of the coroutine's connection, for server handlers.
    pub fn socket_name(&self) -> Option<&str> {
        self.socket_name.as_deref()
    }

    /// The value the panic carried.
    pub fn payload(&self) -> &(dyn Any + Send) {
        &*self.payload
    }
}

impl fmt::Debug for PanicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanicReport")
            .field("message", &self.message())
            .field("thread_name", &self.thread_name)
            .field("socket_name", &self.socket_name)
            .finish()
    }
}

impl fmt::Display for PanicReport {
    /// Copas's format: `<message> (coroutine: <name>, socket: <name or nil>)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (coroutine: {}, socket: {})",
            self.message(),
            self.thread_name,
            self.socket_name.as_deref().unwrap_or("nil")
        )
    }
}

/// The handler every thread starts with: an error record `<message> (coroutine: <name>,
/// socket: <name>)` through `log`, or that line on standard error without a logger.
pub(crate) fn default_handler() -> ErrorHandler {
    Rc::new(|report: &PanicReport| log_or_print!(log::Level::Error, "{report}"))
}
