//! The one error type of copas.
//!
//! Copas reports failures as `nil, "timeout"`, `nil, "closed", partial` and so on. Here they
//! are an [`Error`] with an [`ErrorKind`] instead of a string, and the extra values Copas
//! returns travel with it: a receive error carries the bytes received before it
//! ([`Error::partial`]), a send error how many bytes went out ([`Error::sent`]). No byte read
//! from the kernel is ever dropped.

use std::fmt;
use std::io;
use std::sync::Arc;

/// A `Result` whose error is [`copas::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as Copas names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operation's timeout expired (Copas `"timeout"`).
    Timeout,
    /// The connection is closed: the peer closed or reset it, or it was closed through
    /// copas while the operation waited (Copas `"closed"`).
    Closed,
    /// The peer refused the connection (Copas `"connection refused"`).
    Refused,
    /// A host name could not be resolved to any address (LuaSocket's `"host not found"`).
    /// The resolver's own error, when there is one, is in [`Error::io_error`].
    HostNotFound,
    /// A TLS handshake or record failed.
    Tls,
    /// A peer-controlled amount went past its limit (for example a line longer than the
    /// socket's line limit). The data received so far is kept in [`Error::partial`].
    LimitExceeded,
    /// The object waited on was destroyed (a lock, semaphore or queue).
    Destroyed,
    /// More was asked of a semaphore than it can ever hold, or given back than fits under
    /// its maximum (Copas `"too many"`).
    TooMany,
    /// A lock was released by a coroutine that does not own it (Copas
    /// `"cannot release a lock not owned"`).
    NotOwned,
    /// A timer was armed while it already was (Copas `"already armed"`).
    AlreadyArmed,
    /// A timer was cancelled while it was not armed (Copas `"not armed"`).
    NotArmed,
    /// A queue that was told to stop refused an item (Copas `"stopping"`).
    Stopping,
    /// The task behind a [`Future`](crate::future::Future) panicked; the error's message is
    /// the panic's (Copas hands back the error message itself).
    Panicked,
    /// The waiting coroutine was cancelled (removed with `removethread`, `cancelall`, or
    /// dropped) while it waited, or the task of a [`Future`](crate::future::Future) was
    /// cancelled or removed before it finished (Copas `"cancelled"`).
    Cancelled,
    /// The call needs a coroutine, a running dispatcher, or another context it was not given.
    InvalidState,
    /// The caller passed something unusable, refused before anything was sent: a URL that
    /// does not parse, an unsupported scheme, CR or LF in an address, header or path.
    InvalidInput,
    /// A protocol peer sent something that does not follow its protocol (a malformed
    /// reply line, a bad chunk size, conflicting lengths…).
    Protocol,
    /// A protocol server answered with a reply code that means failure (an SMTP `550`, an
    /// FTP `530`, an HTTP redirect that is not allowed…); [`Error::reply_code`] has the code
    /// and the message the server's text.
    Rejected,
    /// Any other I/O error; [`Error::io_error`] holds it.
    Io,
}

impl ErrorKind {
    /// Copas's own word for this kind (`"timeout"`, `"closed"`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Refused => "connection refused",
            ErrorKind::HostNotFound => "host not found",
            ErrorKind::Tls => "tls error",
            ErrorKind::LimitExceeded => "limit exceeded",
            ErrorKind::Destroyed => "destroyed",
            ErrorKind::TooMany => "too many",
            ErrorKind::NotOwned => "cannot release a lock not owned",
            ErrorKind::AlreadyArmed => "already armed",
            ErrorKind::NotArmed => "not armed",
            ErrorKind::Stopping => "stopping",
            ErrorKind::Panicked => "panicked",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::InvalidState => "invalid state",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Io => "i/o error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A copas error: a kind, an optional cause, and what had been transferred before it.
///
/// Converts to and from [`io::Error`], so `?` works in functions returning either; an error
/// that is nothing but a system error converts to that system error
/// ([`io::Error::raw_os_error`] kept), any other wraps this one, and converting back gives
/// it whole.
///
/// Cloning is cheap: a clone shares everything (the kind, the [`io::Error`] behind it, the
/// message, the partial data), so a [`Future`](crate::future::Future) whose task returns a
/// [`Result`] can hand it to every waiter; [`take_partial`](Error::take_partial) on a shared
/// error copies it first.
///
/// One pointer wide: every `Result` of a socket operation stays small, so the frames of a
/// coroutine waiting in one stay small too (each of their cache lines is missed again when
/// thousands of connections take turns). An error of a kind alone (a timeout with nothing
/// received, `Closed`, `Cancelled`…) allocates nothing: it shares its thread's copy of that
/// kind, made on the thread's first use, so a handler that polls with short timeouts pays no
/// allocation per expiry. An error with more attached (a message, a system error, partial
/// data) allocates.
#[derive(Clone)]
pub struct Error {
    inner: Arc<ErrorInner>,
}

#[derive(Clone)]
struct ErrorInner {
    kind: ErrorKind,
    // Shared, not owned: `io::Error` is not `Clone`, and a copy that kept only its kind
    // and text would lose a custom payload a caller may downcast.
    source: Option<Arc<io::Error>>,
    message: Option<Box<str>>,
    partial: Vec<u8>,
    sent: usize,
    reply_code: Option<u16>,
}

impl ErrorInner {
    fn bare(kind: ErrorKind) -> ErrorInner {
        ErrorInner {
            kind,
            source: None,
            message: None,
            partial: Vec::new(),
            sent: 0,
            reply_code: None,
        }
    }
}

/// Every kind, in declaration order: `BARE_KINDS[k as usize] == k` (a unit test checks it).
const BARE_KINDS: [ErrorKind; 19] = [
    ErrorKind::Timeout,
    ErrorKind::Closed,
    ErrorKind::Refused,
    ErrorKind::HostNotFound,
    ErrorKind::Tls,
    ErrorKind::LimitExceeded,
    ErrorKind::Destroyed,
    ErrorKind::TooMany,
    ErrorKind::NotOwned,
    ErrorKind::AlreadyArmed,
    ErrorKind::NotArmed,
    ErrorKind::Stopping,
    ErrorKind::Panicked,
    ErrorKind::Cancelled,
    ErrorKind::InvalidState,
    ErrorKind::InvalidInput,
    ErrorKind::Protocol,
    ErrorKind::Rejected,
    ErrorKind::Io,
];

thread_local! {
    /// One shared error per kind with nothing attached, made on a thread's first use, which
    /// [`Error::new`] hands out: a timeout or a close returned in a hot loop costs a
    /// reference count, not an allocation. Per thread, so that threads returning errors at
    /// a high rate do not all count on one cache line.
    static BARE: Vec<Arc<ErrorInner>> = BARE_KINDS
        .iter()
        .map(|&kind| Arc::new(ErrorInner::bare(kind)))
        .collect();
}

/// This thread's shared error of `kind`; `None` while the thread's locals are being torn
/// down, or for a kind missing from the table ([`Error::new`] then allocates one).
fn shared_bare(kind: ErrorKind) -> Option<Arc<ErrorInner>> {
    BARE.try_with(|bare| {
        bare.get(kind as usize)
            .filter(|shared| shared.kind == kind)
            .cloned()
    })
    .ok()
    .flatten()
}

impl Error {
    /// An error of `kind` with nothing else attached.
    pub fn new(kind: ErrorKind) -> Error {
        match shared_bare(kind) {
            Some(inner) => Error { inner },
            None => Error::of(ErrorInner::bare(kind)),
        }
    }

    /// An error of its own (not a shared bare one) made of `inner`.
    fn of(inner: ErrorInner) -> Error {
        Error {
            inner: Arc::new(inner),
        }
    }

    /// The error's parts, for changing: copied first if a clone shares them.
    fn inner_mut(&mut self) -> &mut ErrorInner {
        Arc::make_mut(&mut self.inner)
    }

    /// An error of `kind` with a message saying more.
    pub fn with_message(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error::of(ErrorInner {
            message: Some(message.into().into_boxed_str()),
            ..ErrorInner::bare(kind)
        })
    }

    /// A [`ErrorKind::Rejected`] error for a server's reply `code` and `text`.
    pub fn rejected(code: u16, text: impl Into<String>) -> Error {
        let mut e = Error::with_message(ErrorKind::Rejected, text);
        e.inner_mut().reply_code = Some(code);
        e
    }

    /// The protocol reply code behind an [`ErrorKind::Rejected`] error (SMTP, FTP, HTTP).
    pub fn reply_code(&self) -> Option<u16> {
        self.inner.reply_code
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The bytes received before the error (receive operations); empty otherwise.
    pub fn partial(&self) -> &[u8] {
        &self.inner.partial
    }

    /// Takes the bytes received before the error, leaving none behind.
    pub fn take_partial(&mut self) -> Vec<u8> {
        if self.inner.partial.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut self.inner_mut().partial)
    }

    /// How many bytes a send operation had sent before the error.
    pub fn sent(&self) -> usize {
        self.inner.sent
    }

    /// The message saying more about the error, if it has one (for
    /// [`ErrorKind::Panicked`], the panic's message).
    pub fn message(&self) -> Option<&str> {
        self.inner.message.as_deref()
    }

    /// The operating-system error behind this one, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.inner.source.as_deref()
    }

    pub(crate) fn with_partial(mut self, partial: Vec<u8>) -> Error {
        if !partial.is_empty() || !self.inner.partial.is_empty() {
            self.inner_mut().partial = partial;
        }
        self
    }

    /// An error of `kind` caused by `source`, with a message saying more.
    pub(crate) fn from_io(kind: ErrorKind, source: io::Error, message: impl Into<String>) -> Error {
        let mut e = Error::with_message(kind, message);
        e.inner_mut().source = Some(Arc::new(source));
        e
    }

    /// Puts `context` (what was being done) before the message; the kind and the
    /// operating-system error behind it stay, so a caller can still tell `EMFILE` apart.
    pub(crate) fn with_context(mut self, context: &str) -> Error {
        let inner = self.inner_mut();
        let text = match inner.message.take() {
            Some(m) => format!("{context}: {m}"),
            None => context.to_string(),
        };
        inner.message = Some(text.into_boxed_str());
        self
    }

    /// The same error (kind, system error, partial data) told by `message` instead.
    pub(crate) fn reworded(mut self, message: String) -> Error {
        self.inner_mut().message = Some(message.into_boxed_str());
        self
    }

    pub(crate) fn with_sent(mut self, sent: usize) -> Error {
        if sent != self.inner.sent {
            self.inner_mut().sent = sent;
        }
        self
    }

    /// The system error code of an error that carries nothing else (no message, partial
    /// data, count or reply code) and whose kind that code converts back to.
    fn bare_os_error(&self) -> Option<i32> {
        let inner = &self.inner;
        if inner.message.is_some()
            || !inner.partial.is_empty()
            || inner.sent != 0
            || inner.reply_code.is_some()
        {
            return None;
        }
        let source = inner.source.as_ref()?;
        let code = source.raw_os_error()?;
        (Error::kind_of_io(source.kind()) == inner.kind).then_some(code)
    }

    /// The copas kind of an `io::Error` of `kind` (see `From<io::Error>`).
    fn kind_of_io(kind: io::ErrorKind) -> ErrorKind {
        match kind {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
            io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            k if Error::io_kind_closes(k) => ErrorKind::Closed,
            _ => ErrorKind::Io,
        }
    }

    /// Whether `kind` tells of a connection the peer closed or reset.
    pub(crate) fn io_kind_closes(kind: io::ErrorKind) -> bool {
        matches!(
            kind,
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::NotConnected
                | io::ErrorKind::UnexpectedEof
        )
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        // An io::Error that wraps a copas Error (see the conversion below) comes back whole.
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = err.into_inner() {
                if let Ok(e) = inner.downcast::<Error>() {
                    return *e;
                }
            }
            return Error::new(ErrorKind::Io);
        }
        let kind = Error::kind_of_io(err.kind());
        Error::of(ErrorInner {
            source: Some(Arc::new(err)),
            ..ErrorInner::bare(kind)
        })
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        if let Some(code) = err.bare_os_error() {
            // Nothing but a system error: given back as one, so `raw_os_error` still
            // tells `ECONNRESET` from `EPIPE` to code written for any `Read + Write`, and
            // converting it back gives this error again.
            return io::Error::from_raw_os_error(code);
        }
        let kind = match err.inner.kind {
            // A `WouldBlock` (a blocking socket's own timeout) comes back as it went in.
            ErrorKind::Timeout => match &err.inner.source {
                Some(s) => s.kind(),
                None => io::ErrorKind::TimedOut,
            },
            ErrorKind::Closed => match &err.inner.source {
                Some(s) => s.kind(),
                None => io::ErrorKind::ConnectionAborted,
            },
            ErrorKind::Refused => io::ErrorKind::ConnectionRefused,
            ErrorKind::HostNotFound => io::ErrorKind::NotFound,
            ErrorKind::LimitExceeded => io::ErrorKind::InvalidData,
            ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
            ErrorKind::InvalidState => io::ErrorKind::Unsupported,
            ErrorKind::Io => match &err.inner.source {
                Some(s) => s.kind(),
                None => io::ErrorKind::Other,
            },
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(m) = &self.inner.message {
            d.field("message", m);
        }
        if let Some(s) = &self.inner.source {
            d.field("source", s);
        }
        if !self.inner.partial.is_empty() {
            d.field("partial_len", &self.inner.partial.len());
        }
        if self.inner.sent != 0 {
            d.field("sent", &self.inner.sent);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.inner.kind.as_str())?;
        if let Some(code) = self.inner.reply_code {
            write!(f, ": {code}")?;
            if let Some(m) = &self.inner.message {
                write!(f, " {m}")?;
            }
        } else if let Some(m) = &self.inner.message {
            write!(f, ": {m}")?;
        }
        if let Some(s) = &self.inner.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    /// The cause's own cause: the cause itself is already in this error's `Display`
    /// ("closed: Connection reset by peer (os error 104)"), so a reporter that walks the
    /// chain names it once (as `io::Error` does for the error it wraps). The cause is
    /// [`Error::io_error`].
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_deref()?.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_bare_errors_cover_every_kind_in_order() {
        for (i, &kind) in BARE_KINDS.iter().enumerate() {
            assert_eq!(kind as usize, i, "{kind:?}");
        }
        // Exhaustive: a kind added to the enum fails to compile here until it is listed.
        let last = |kind: ErrorKind| match kind {
            ErrorKind::Timeout
            | ErrorKind::Closed
            | ErrorKind::Refused
            | ErrorKind::HostNotFound
            | ErrorKind::Tls
            | ErrorKind::LimitExceeded
            | ErrorKind::Destroyed
            | ErrorKind::TooMany
            | ErrorKind::NotOwned
            | ErrorKind::AlreadyArmed
            | ErrorKind::NotArmed
            | ErrorKind::Stopping
            | ErrorKind::Panicked
            | ErrorKind::Cancelled
            | ErrorKind::InvalidState
            | ErrorKind::InvalidInput
            | ErrorKind::Protocol
            | ErrorKind::Rejected => false,
            ErrorKind::Io => true,
        };
        assert!(last(BARE_KINDS[BARE_KINDS.len() - 1]));
        assert_eq!(ErrorKind::Io as usize + 1, BARE_KINDS.len());
        let a = Error::new(ErrorKind::Timeout);
        let b = Error::new(ErrorKind::Timeout);
        assert!(
            Arc::ptr_eq(&a.inner, &b.inner),
            "a bare error is shared, not allocated"
        );
    }

    #[test]
    fn changing_a_shared_error_leaves_its_clones_alone() {
        let bare = Error::new(ErrorKind::Closed);
        let mut with_data = Error::new(ErrorKind::Closed).with_partial(b"abc".to_vec());
        let clone = with_data.clone();
        assert_eq!(with_data.take_partial(), b"abc");
        assert!(with_data.partial().is_empty());
        assert_eq!(clone.partial(), b"abc");
        assert!(bare.partial().is_empty());
        assert!(Error::new(ErrorKind::Closed).partial().is_empty());
        let worded = Error::new(ErrorKind::Closed).with_context("reading");
        assert_eq!(worded.message(), Some("reading"));
        assert_eq!(Error::new(ErrorKind::Closed).message(), None);
        let sent = Error::new(ErrorKind::Closed).with_sent(5);
        assert_eq!((sent.sent(), Error::new(ErrorKind::Closed).sent()), (5, 0));
    }

    /// Context goes before the message; the kind and the system error stay (they were
    /// dropped, so `io_error()` said `None` for an `EMFILE` whose text named it).
    #[test]
    fn context_keeps_the_kind_and_the_system_error() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let e = Error::from(emfile).with_context("no helper thread could be started");
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(
            e.io_error().and_then(io::Error::raw_os_error),
            Some(libc::EMFILE)
        );
        let text = e.to_string();
        assert!(
            text.starts_with("i/o error: no helper thread could be started: ")
                && text.contains("os error 24"),
            "{text}"
        );
        let e = Error::with_message(ErrorKind::Closed, "reset").with_context("the pool");
        assert_eq!(e.message(), Some("the pool: reset"));
        assert_eq!(e.kind(), ErrorKind::Closed);
    }

    /// `io::Error` → `Error` → `io::Error` keeps the kind, `WouldBlock` (which becomes
    /// `Timeout`) included: it came back as `TimedOut`.
    #[test]
    fn an_io_error_converted_there_and_back_keeps_its_kind() {
        for kind in [
            io::ErrorKind::WouldBlock,
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::InvalidInput,
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::Other,
        ] {
            let back = io::Error::from(Error::from(io::Error::from(kind)));
            assert_eq!(back.kind(), kind);
        }
        // A timeout of copas's own has no source: `TimedOut`.
        assert_eq!(
            io::Error::from(Error::new(ErrorKind::Timeout)).kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[test]
    fn io_errors_map_to_copas_kinds() {
        let k = |k| Error::from(io::Error::from(k)).kind();
        assert_eq!(k(io::ErrorKind::TimedOut), ErrorKind::Timeout);
        assert_eq!(k(io::ErrorKind::ConnectionRefused), ErrorKind::Refused);
        assert_eq!(k(io::ErrorKind::ConnectionReset), ErrorKind::Closed);
        assert_eq!(k(io::ErrorKind::BrokenPipe), ErrorKind::Closed);
        assert_eq!(k(io::ErrorKind::PermissionDenied), ErrorKind::Io);
    }

    #[test]
    fn round_trip_through_io_error_keeps_partial_data() {
        let e = Error::new(ErrorKind::Timeout).with_partial(b"abc".to_vec());
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
        let back = Error::from(io);
        assert_eq!(back.kind(), ErrorKind::Timeout);
        assert_eq!(back.partial(), b"abc");
    }

    /// A bare system error (a reset, `EMFILE`) becomes that system error again, so code
    /// that matches `raw_os_error` works over a copas socket as over a std one; converting
    /// it back gives the same copas error. One with more to carry stays wrapped.
    #[test]
    fn a_system_error_converted_to_io_keeps_its_raw_os_error() {
        for code in [libc::ECONNRESET, libc::EPIPE, libc::EMFILE, libc::ETIMEDOUT] {
            let e = Error::from(io::Error::from_raw_os_error(code));
            let kind = e.kind();
            let io: io::Error = e.into();
            assert_eq!(io.raw_os_error(), Some(code));
            let back = Error::from(io);
            assert_eq!(back.kind(), kind);
            assert_eq!(
                back.io_error().and_then(io::Error::raw_os_error),
                Some(code)
            );
        }
        let partial =
            Error::from(io::Error::from_raw_os_error(libc::ECONNRESET)).with_partial(b"ab".into());
        let io: io::Error = partial.into();
        assert_eq!(io.raw_os_error(), None);
        assert_eq!(Error::from(io).partial(), b"ab");
    }

    /// The cause shows in `Display`, so a reporter walking `source()` must not print it
    /// again ("closed: Connection reset by peer (os error 104): Connection reset by peer
    /// (os error 104)" it was).
    #[test]
    fn a_chain_reporter_names_the_cause_once() {
        let e = Error::from(io::Error::from_raw_os_error(libc::ECONNRESET));
        let mut report = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            report = format!("{report}: {c}");
            cause = c.source();
        }
        assert_eq!(report.matches("os error 104").count(), 1, "{report}");
        assert_eq!(
            e.io_error().and_then(io::Error::raw_os_error),
            Some(libc::ECONNRESET)
        );
    }

    #[test]
    fn synchronisation_kinds_use_copas_words() {
        assert_eq!(ErrorKind::TooMany.as_str(), "too many");
        assert_eq!(
            ErrorKind::NotOwned.as_str(),
            "cannot release a lock not owned"
        );
        assert_eq!(ErrorKind::AlreadyArmed.as_str(), "already armed");
        assert_eq!(ErrorKind::NotArmed.as_str(), "not armed");
        assert_eq!(ErrorKind::Stopping.as_str(), "stopping");
        let e = Error::with_message(ErrorKind::Panicked, "boom");
        assert_eq!(e.message(), Some("boom"));
        assert_eq!(e.to_string(), "panicked: boom");
    }

    #[test]
    fn display_uses_copas_words() {
        assert_eq!(Error::new(ErrorKind::Closed).to_string(), "closed");
        assert_eq!(
            Error::with_message(ErrorKind::LimitExceeded, "line longer than 10 bytes").to_string(),
            "limit exceeded: line longer than 10 bytes"
        );
    }
}
