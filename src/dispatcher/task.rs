//! Coroutines as the dispatcher sees them: their public handle, their names, and what each
//! one is waiting for.

use std::fmt;
use std::rc::Rc;
use std::time::Instant;

use copas_coro::{Coro, Label, ResumeHint};

use super::introspect::Blocker;
use super::report::ErrorHandler;
use super::timers::TimerKey;

/// A handle to a coroutine run by the dispatcher (what Copas calls a thread).
///
/// Returned by [`addthread`](crate::addthread) and friends, and by
/// [`current`](crate::current) inside a coroutine. It is a plain identifier: it stays valid
/// as a value after the coroutine ends, when operations on it simply do nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Coroutine {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl Coroutine {
    pub(crate) fn tag(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub(crate) fn from_tag(tag: u64) -> Coroutine {
        Coroutine {
            index: tag as u32,
            generation: (tag >> 32) as u32,
        }
    }

    /// A number unique among the coroutines of the process, whatever thread's dispatcher
    /// created them (until 2³² of them were), never 0. A handle from another thread's
    /// dispatcher names none of this thread's coroutines: operations on it do nothing.
    pub fn id(self) -> u32 {
        self.generation
    }
}

impl fmt::Debug for Coroutine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Coroutine({})", self.generation)
    }
}

/// Who calls an operation that may have to wait ([`Dispatcher::caller`](super::Dispatcher::caller)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Code outside any coroutine: a wait blocks the thread.
    Outside,
    /// A coroutine of the dispatcher: a wait suspends it.
    Coroutine(Coroutine),
    /// A coroutine being removed, its destructors running on its stack after its entry is
    /// gone: a wait ends at once, cancelled (blocking the thread would stop every other
    /// coroutine, and could wait for one of them).
    Removed,
}

/// A coroutine's name, generated lazily so that naming costs nothing per connection.
#[derive(Clone)]
pub(crate) enum TaskName {
    /// `thread_<id>`.
    Anonymous,
    Static(&'static str),
    /// `<server>:handler_<n>` for a connection handler.
    Handler {
        server: Rc<str>,
        n: u64,
    },
    Owned(Rc<str>),
}

impl TaskName {
    pub(crate) fn write(&self, id: u32, out: &mut impl fmt::Write) -> fmt::Result {
        match self {
            TaskName::Anonymous => write!(out, "thread_{id}"),
            TaskName::Static(s) => out.write_str(s),
            TaskName::Handler { server, n } => write!(out, "{server}:handler_{n}"),
            TaskName::Owned(s) => out.write_str(s),
        }
    }

    /// The name as the coroutine layer keeps it (no formatting).
    pub(crate) fn label(&self, id: u32) -> Label {
        match self {
            TaskName::Anonymous => Label::new("").numbered("thread_", u64::from(id)),
            TaskName::Static(s) => Label::new(s),
            TaskName::Handler { server, n } => {
                Label::shared(server.clone()).numbered(":handler_", *n)
            }
            TaskName::Owned(s) => Label::shared(s.clone()),
        }
    }

    pub(crate) fn render(&self, id: u32) -> String {
        let mut s = String::new();
        let _ = self.write(id, &mut s);
        s
    }
}

/// What a coroutine is doing, as far as the dispatcher is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Being resumed right now.
    Running,
    /// In the ready list, to be resumed in the coming run phase.
    Ready,
    /// In the ready list like `Ready`, woken by a socket's readiness (an event, or the
    /// previous waiter handing it on). An event wakes one waiter per direction, so if this
    /// coroutine is removed before it runs, the turn goes to the next waiter.
    Turn { source: u32, write: bool },
    /// `pause(d)`: until its timer fires or `wakeup`.
    Sleep,
    /// `pauseforever()`: until `wakeup`.
    PausedForever,
    /// Parked by a synchronisation primitive, until unparked (or its timer fires); what it
    /// waits on, for listings.
    Park(Blocker),
    /// Waiting for a socket to become readable (`write == false`) or writable.
    Io { source: u32, write: bool },
}

impl Wait {
    /// In the ready list, to be resumed in the coming run phase.
    #[inline]
    pub(crate) fn is_ready(self) -> bool {
        matches!(self, Wait::Ready | Wait::Turn { .. })
    }
}

/// Why a waiting coroutine was resumed.
///
/// Handed to the coroutine through the switch ([`Wake::code`], `copas_coro::resume_with`),
/// so that it need not look itself up in the dispatcher's table once resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Wake {
    /// The socket it waited on reported readiness.
    Event = 0,
    /// Its deadline passed.
    Timeout = 1,
    /// The socket it waited on was closed through copas.
    Closed = 2,
    /// `wakeup`, `unpark`, or `exit` released it.
    Woken = 3,
    /// It is being cancelled; it must not wait again.
    Cancelled = 4,
}

impl Wake {
    /// The value passed through the switch.
    #[inline]
    pub(crate) fn code(self) -> u32 {
        self as u32
    }

    /// The reason a [`Wake::code`] stands for; an unknown code is `Cancelled`.
    #[inline]
    pub(crate) fn from_code(code: u32) -> Wake {
        match code {
            0 => Wake::Event,
            1 => Wake::Timeout,
            2 => Wake::Closed,
            3 => Wake::Woken,
            _ => Wake::Cancelled,
        }
    }
}

/// Something a coroutine holds that error reports name, and that autoclose closes when the
/// coroutine ends (the accepted connection of a server handler).
pub(crate) trait TaskSocket {
    fn close(&self);
    fn name(&self) -> String;
    /// Bytes a read can take without the kernel, held above the socket (a TLS layer's
    /// decrypted records): ready although no edge will announce them.
    fn holds_readable(&self) -> bool {
        false
    }
}

/// One coroutine's entry in the dispatcher's table.
///
/// `repr(C)` with the fields every wait and wake touches first, so that they share one or two
/// cache lines: at 1,000 connections each entry is cold when its coroutine's turn comes.
#[repr(C)]
pub(crate) struct Task {
    pub(crate) generation: u32,
    pub(crate) wake: Wake,
    /// `removethread` was called while it ran: drop it when it next suspends.
    pub(crate) cancelled: bool,
    /// Renamed while running: its stack-overflow label needs updating when it suspends.
    pub(crate) relabel: bool,
    pub(crate) wait: Wait,
    /// The timer that ends the current wait, if it has a deadline.
    pub(crate) timer: Option<TimerKey>,
    /// When it entered `wait`, from the dispatcher's clock reading of that step; `None` for
    /// a coroutine created between steps until the next step dates it.
    pub(crate) since: Option<Instant>,
    /// `None` while it runs (the dispatcher holds it on its own stack then).
    pub(crate) coro: Option<Coro>,
    /// Where resuming it touches memory first, copied into the ready queue for prefetching.
    pub(crate) hint: ResumeHint,
    // Below: what only naming, reporting and ending a coroutine read.
    /// Closed when the coroutine ends (a server's accepted connection).
    pub(crate) autoclose: bool,
    pub(crate) name: TaskName,
    /// The `copas::timeout` armed for this coroutine.
    pub(crate) timeout: Option<TimerKey>,
    pub(crate) handler: Option<ErrorHandler>,
    pub(crate) socket: Option<Rc<dyn TaskSocket>>,
}

impl Task {
    /// Marks it ready to be resumed, dated `now` and told `why`; returns its resume hint
    /// for the ready queue.
    #[inline]
    pub(crate) fn make_ready(&mut self, now: Instant, why: Wake) -> ResumeHint {
        self.wait = Wait::Ready;
        self.since = Some(now);
        self.wake = why;
        self.hint
    }
}
