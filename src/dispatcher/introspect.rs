//! Seeing inside the dispatcher: what every coroutine is doing, and since when (Go's
//! goroutine dump, for copas).
//!
//! The wait path records only what it has at hand, as small copies in the coroutine's
//! entry: the kind of wait (`task::Wait`), for a parked coroutine a [`Blocker`] naming the
//! object by number, and the time it entered the state, taken from the dispatcher's clock
//! reading of the current step (no clock read, no allocation, no formatting per wait). Names
//! are looked up only when a listing is asked for: a coroutine's from its entry, a socket's
//! from the handle that owns it, a lock's, semaphore's or queue's from a per-thread table
//! that only named objects are entered in ([`ObjectTag`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::reactor::IoSource;
use super::task::{Coroutine, TaskName, TaskSocket, Wait};
use super::Dispatcher;

// ----- what the wait path records -------------------------------------------------------

/// Identifies one synchronisation object among those of its thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ObjectId(u32);

/// What a parked coroutine waits on, recorded when it parks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocker {
    /// A lock, semaphore or queue of `copas::sync`.
    Object(ObjectKind, ObjectId),
    /// A future's result; the coroutine computing it, when known.
    Future(Option<Coroutine>),
    /// A channel's receiving end, or a bounded channel's sending end.
    Channel { sending: bool },
    /// A closure running on an offload helper thread.
    Offload,
    /// `waitforexit`.
    Exit,
}

thread_local! {
    /// How many objects this thread has tagged; an id is its low 32 bits.
    static NEXT_OBJECT: Cell<u64> = const { Cell::new(0) };
    /// The names of the named objects alive on this thread.
    static OBJECT_NAMES: RefCell<HashMap<ObjectId, Rc<str>>> = RefCell::new(HashMap::new());
}

/// A synchronisation object's identity and, once given one, its name. Owned by the object's
/// shared state: dropping it forgets the name.
pub(crate) struct ObjectTag {
    id: ObjectId,
    named: Cell<bool>,
}

impl ObjectTag {
    pub(crate) fn new() -> ObjectTag {
        let id = NEXT_OBJECT.with(|n| loop {
            let count = n.get().wrapping_add(1);
            n.set(count);
            let id = ObjectId(count as u32);
            // Past 2^32 objects the ids come round again: one a live named object still
            // holds is skipped, or the new object would show (or, named, replace and then
            // forget) that object's name in listings.
            if count <= u64::from(u32::MAX) || object_name(id).is_none() {
                break id;
            }
        });
        ObjectTag {
            id,
            named: Cell::new(false),
        }
    }

    pub(crate) fn id(&self) -> ObjectId {
        self.id
    }

    pub(crate) fn set_name(&self, name: Rc<str>) {
        // At thread exit the table may be gone already (a thread-local destructor that runs
        // after it): the object then goes unnamed, as nothing can list it any more.
        let kept = OBJECT_NAMES.try_with(|names| names.borrow_mut().insert(self.id, name));
        if kept.is_ok() {
            self.named.set(true);
        }
    }

    pub(crate) fn name(&self) -> Option<Rc<str>> {
        if !self.named.get() {
            return None;
        }
        object_name(self.id)
    }
}

impl Drop for ObjectTag {
    fn drop(&mut self) {
        if self.named.get() {
            // At thread exit the table may be gone already; then there is nothing to forget.
            let _ = OBJECT_NAMES.try_with(|names| {
                if let Ok(mut names) = names.try_borrow_mut() {
                    names.remove(&self.id);
                }
            });
        }
    }
}

fn object_name(id: ObjectId) -> Option<Rc<str>> {
    OBJECT_NAMES
        .try_with(|names| names.borrow().get(&id).cloned())
        .ok()
        .flatten()
}

impl fmt::Debug for ObjectTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "#{} {name:?}", self.id.0),
            None => write!(f, "#{}", self.id.0),
        }
    }
}

// ----- what a listing shows -------------------------------------------------------------

/// One coroutine, as listed by [`coroutines`](crate::coroutines) and
/// [`dump`](crate::dump).
///
/// Its `Display` is one line of the dump, with times relative to now:
///
/// ```text
/// coroutine 7 "echo:handler_2" [reading "echo:client_2" (fd 12, peer 127.0.0.1:40112), for 1.204 s, no deadline]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoroutineInfo {
    /// Its handle.
    pub coroutine: Coroutine,
    /// Its name (see [`getthreadname`](crate::getthreadname)).
    pub name: String,
    /// What it is doing.
    pub state: CoroutineState,
    /// When it entered that state, to the dispatcher step: the dispatcher reads the clock
    /// once per step, and every change of state in a step is dated with that reading. A
    /// coroutine added between steps is dated by the next step (until then, by the time of
    /// the listing).
    pub since: Instant,
    /// The name of the connection it serves (a server handler's accepted socket).
    pub socket: Option<String>,
}

/// What a coroutine is doing (see [`CoroutineInfo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoroutineState {
    /// Running now: it is the one asking for the listing.
    Running,
    /// Ready to run in the coming step.
    Ready,
    /// In [`pause`](crate::pause), until `until` (or a [`wakeup`](crate::wakeup)).
    Sleeping {
        /// When it wakes.
        until: Instant,
    },
    /// In [`pauseforever`](crate::pauseforever), until a [`wakeup`](crate::wakeup).
    PausedForever,
    /// Waiting for `socket` to become readable (a `receive`, an `accept`…).
    Reading {
        /// The socket.
        socket: SocketInfo,
        /// The operation's deadline (its timeout), if any.
        until: Option<Instant>,
    },
    /// Waiting for `socket` to become writable (a `send` with a full buffer, a `connect`).
    Writing {
        /// The socket.
        socket: SocketInfo,
        /// The operation's deadline (its timeout), if any.
        until: Option<Instant>,
    },
    /// Waiting on a lock, semaphore, queue, future, offloaded closure or `waitforexit`.
    Waiting {
        /// What it waits on.
        on: WaitTarget,
        /// The wait's deadline, if any.
        until: Option<Instant>,
    },
}

/// A socket a coroutine waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// Its name (see [`getsocketname`](crate::getsocketname)), or `fd <n>` when no handle
    /// names it.
    pub name: String,
    /// Its descriptor, unless it is closed.
    pub fd: Option<RawFd>,
    /// Its local address, when it has one.
    pub local: Option<SocketAddr>,
    /// Its peer's address, when it is connected.
    pub peer: Option<SocketAddr>,
}

/// The kinds of synchronisation objects a coroutine can wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ObjectKind {
    /// [`Lock::get`](crate::lock::Lock::get).
    Lock,
    /// [`Semaphore::take`](crate::semaphore::Semaphore::take).
    Semaphore,
    /// [`Queue::pop`](crate::queue::Queue::pop).
    QueuePop,
    /// [`Queue::finish`](crate::queue::Queue::finish).
    QueueFinish,
}

/// What a [`CoroutineState::Waiting`] coroutine waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitTarget {
    /// A lock, semaphore or queue.
    Object {
        /// Which kind of object, and which operation.
        kind: ObjectKind,
        /// A number unique among this thread's synchronisation objects.
        id: u32,
        /// Its name: given with `set_name` for locks and semaphores, always present for a
        /// queue. `None` when unnamed.
        name: Option<String>,
    },
    /// A [`Future`](crate::future::Future)'s result.
    Future {
        /// The coroutine computing it, until it ends.
        task: Option<Coroutine>,
        /// That coroutine's name.
        task_name: Option<String>,
    },
    /// A [`channel`](crate::channel): an item to receive, or room to send in a bounded one.
    Channel {
        /// Waiting to send (the channel is full), not to receive.
        sending: bool,
    },
    /// A closure running on a helper thread ([`offload`](crate::offload), `connect` by
    /// host name).
    Offload,
    /// [`waitforexit`](crate::waitforexit).
    Exit,
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// `in 1.234 s`, or `0.002 s ago` for a deadline that has passed (its wake-up is due).
fn relative(at: Instant, now: Instant) -> String {
    if at >= now {
        format!("in {}", secs(at - now))
    } else {
        format!("{} ago", secs(now - at))
    }
}

impl fmt::Display for SocketInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} (", self.name)?;
        match self.fd {
            Some(fd) => write!(f, "fd {fd}")?,
            None => f.write_str("closed")?,
        }
        if let Some(local) = self.local {
            write!(f, ", local {local}")?;
        }
        if let Some(peer) = self.peer {
            write!(f, ", peer {peer}")?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for WaitTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitTarget::Object { kind, id, name } => {
                let what = match kind {
                    ObjectKind::Lock => "on lock",
                    ObjectKind::Semaphore => "on semaphore",
                    ObjectKind::QueuePop => "to pop from queue",
                    ObjectKind::QueueFinish => "for queue to finish:",
                };
                match name {
                    Some(name) => write!(f, "waiting {what} {name:?} (#{id})"),
                    None => write!(f, "waiting {what} #{id}"),
                }
            }
            WaitTarget::Future { task, task_name } => match (task, task_name) {
                (Some(co), Some(name)) => {
                    write!(
                        f,
                        "waiting for the future of coroutine {} {name:?}",
                        co.id()
                    )
                }
                (Some(co), None) => write!(f, "waiting for the future of coroutine {}", co.id()),
                _ => f.write_str("waiting for a future"),
            },
            WaitTarget::Channel { sending: false } => {
                f.write_str("waiting to receive from a channel")
            }
            WaitTarget::Channel { sending: true } => f.write_str("waiting to send on a channel"),
            WaitTarget::Offload => f.write_str("waiting for an offloaded closure"),
            WaitTarget::Exit => f.write_str("waiting for exit"),
        }
    }
}

impl CoroutineInfo {
    /// Writes the dump line, with times relative to `now`.
    fn write_line(&self, now: Instant, f: &mut impl fmt::Write) -> fmt::Result {
        write!(f, "coroutine {} {:?} [", self.coroutine.id(), self.name)?;
        let age = secs(now.saturating_duration_since(self.since));
        let deadline = |until: &Option<Instant>| match until {
            Some(at) => format!("deadline {}", relative(*at, now)),
            None => "no deadline".to_string(),
        };
        let mut shown_socket = None;
        match &self.state {
            CoroutineState::Running => write!(f, "running, for {age}")?,
            CoroutineState::Ready => write!(f, "ready, for {age}")?,
            CoroutineState::Sleeping { until } => {
                write!(f, "sleeping until {}, for {age}", relative(*until, now))?
            }
            CoroutineState::PausedForever => write!(f, "paused forever, for {age}")?,
            CoroutineState::Reading { socket, until } => {
                shown_socket = Some(&socket.name);
                write!(f, "reading {socket}, for {age}, {}", deadline(until))?
            }
            CoroutineState::Writing { socket, until } => {
                shown_socket = Some(&socket.name);
                write!(f, "writing {socket}, for {age}, {}", deadline(until))?
            }
            CoroutineState::Waiting { on, until } => {
                write!(f, "{on}, for {age}, {}", deadline(until))?
            }
        }
        f.write_str("]")?;
        match &self.socket {
            Some(name) if Some(name) != shown_socket => write!(f, " serving {name:?}"),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for CoroutineInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::new();
        self.write_line(Instant::now(), &mut line)?;
        f.write_str(&line)
    }
}

// ----- building a listing ---------------------------------------------------------------

/// What is copied out of a coroutine's entry under the state's borrow.
struct Entry {
    co: Coroutine,
    name: TaskName,
    wait: Wait,
    since: Instant,
    deadline: Option<Instant>,
    /// The socket of an I/O wait.
    io: Option<Rc<IoSource>>,
    socket: Option<Rc<dyn TaskSocket>>,
}

fn socket_info(io: &IoSource) -> SocketInfo {
    let sock = io.sock();
    let fd = sock.as_ref().map(|s| s.as_raw_fd());
    let local = sock
        .as_ref()
        .and_then(|s| s.local_addr().ok())
        .and_then(|a| a.as_socket());
    let peer = sock
        .as_ref()
        .and_then(|s| s.peer_addr().ok())
        .and_then(|a| a.as_socket());
    drop(sock);
    let name = io
        .owner
        .get()
        .and_then(|owner| owner.upgrade())
        .map(|owner| owner.name())
        .unwrap_or_else(|| match fd {
            Some(fd) => format!("fd {fd}"),
            None => "closed socket".to_string(),
        });
    SocketInfo {
        name,
        fd,
        local,
        peer,
    }
}

impl Dispatcher {
    /// Every coroutine of this dispatcher, in the order they were created.
    pub(crate) fn coroutines(&self) -> Vec<CoroutineInfo> {
        // A coroutine created since the last step has no date yet: it is new as of now.
        let now = Instant::now();
        let entries: Vec<Entry> = {
            let st = self.state.borrow();
            st.tasks
                .iter()
                .map(|(index, task)| {
                    let io = match task.wait {
                        Wait::Io { source, .. } => {
                            st.sources.get(source as usize).map(|s| s.io.clone())
                        }
                        _ => None,
                    };
                    Entry {
                        co: Coroutine {
                            index: index as u32,
                            generation: task.generation,
                        },
                        name: task.name.clone(),
                        wait: task.wait,
                        since: task.since.unwrap_or(now),
                        deadline: task.timer.map(|key| key.at()),
                        io,
                        socket: task.socket.clone(),
                    }
                })
                .collect()
        };
        // Names are resolved with no borrow held: a socket's name borrows its own state,
        // a future's task name the dispatcher's.
        let mut list: Vec<CoroutineInfo> = entries.into_iter().map(|e| self.resolve(e)).collect();
        list.sort_by_key(|info| info.coroutine.id());
        list
    }

    fn resolve(&self, e: Entry) -> CoroutineInfo {
        let socket_of = |io: &Option<Rc<IoSource>>| match io {
            Some(io) => socket_info(io),
            None => SocketInfo {
                name: "closed socket".to_string(),
                fd: None,
                local: None,
                peer: None,
            },
        };
        let state = match e.wait {
            Wait::Running => CoroutineState::Running,
            Wait::Ready | Wait::Turn { .. } => CoroutineState::Ready,
            Wait::Sleep => CoroutineState::Sleeping {
                until: e.deadline.unwrap_or(e.since),
            },
            Wait::PausedForever => CoroutineState::PausedForever,
            Wait::Io { write: false, .. } => CoroutineState::Reading {
                socket: socket_of(&e.io),
                until: e.deadline,
            },
            Wait::Io { write: true, .. } => CoroutineState::Writing {
                socket: socket_of(&e.io),
                until: e.deadline,
            },
            Wait::Park(blocker) => CoroutineState::Waiting {
                on: match blocker {
                    Blocker::Object(kind, id) => WaitTarget::Object {
                        kind,
                        id: id.0,
                        name: object_name(id).map(|n| n.to_string()),
                    },
                    Blocker::Future(task) => WaitTarget::Future {
                        task,
                        task_name: task.and_then(|co| self.name(Some(co))),
                    },
                    Blocker::Channel { sending } => WaitTarget::Channel { sending },
                    Blocker::Offload => WaitTarget::Offload,
                    Blocker::Exit => WaitTarget::Exit,
                },
                until: e.deadline,
            },
        };
        CoroutineInfo {
            coroutine: e.co,
            name: e.name.render(e.co.generation),
            state,
            since: e.since,
            socket: e.socket.map(|s| s.name()),
        }
    }

    /// The readable dump: a header, one line per coroutine, one per listening server.
    pub(crate) fn dump(&self) -> String {
        let list = self.coroutines();
        let servers: Vec<(String, SocketInfo)> = {
            let st = self.state.borrow();
            st.sources
                .iter()
                .filter_map(|(_, s)| Some((s.acceptor.clone()?, s.io.clone())))
                .collect::<Vec<_>>()
        }
        .into_iter()
        .map(|(acceptor, io)| (acceptor.name(), socket_info(&io)))
        .collect();
        let sockets = self.state.borrow().sources.len();
        let now = Instant::now();
        let thread = std::thread::current();
        let mut counts = [0usize; 7];
        for info in &list {
            let slot = match info.state {
                CoroutineState::Running => 0,
                CoroutineState::Ready => 1,
                CoroutineState::Sleeping { .. } => 2,
                CoroutineState::PausedForever => 3,
                CoroutineState::Reading { .. } => 4,
                CoroutineState::Writing { .. } => 5,
                CoroutineState::Waiting { .. } => 6,
            };
            counts[slot] += 1;
        }
        let [running, ready, sleeping, paused, reading, writing, waiting] = counts;
        let mut out = String::new();
        use fmt::Write;
        let _ = writeln!(
            out,
            "copas dump of thread {:?}: {} coroutines ({running} running, {ready} ready, \
             {sleeping} sleeping, {paused} paused forever, {reading} reading, {writing} writing, \
             {waiting} waiting), {} servers, {sockets} sockets{}",
            thread.name().unwrap_or("<unnamed>"),
            list.len(),
            servers.len(),
            if self.shutting_down() {
                ", shutting down"
            } else {
                ""
            },
        );
        for info in &list {
            let _ = info.write_line(now, &mut out);
            out.push('\n');
        }
        for (name, socket) in servers {
            let SocketInfo { fd, local, .. } = socket;
            let _ = write!(out, "server {name:?} [listening");
            if let Some(local) = local {
                let _ = write!(out, " on {local}");
            }
            if let Some(fd) = fd {
                let _ = write!(out, ", fd {fd}");
            }
            out.push_str("]\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_come_round_again_skip_a_live_named_object() {
        let kept = ObjectTag::new();
        kept.set_name("kept".into());
        let ObjectId(kept_id) = kept.id();
        // As if 2^32 more objects had been tagged since: the next id would be `kept`'s.
        NEXT_OBJECT.with(|n| n.set((1 << 32) + u64::from(kept_id) - 1));
        let late = ObjectTag::new();
        assert_ne!(late.id(), kept.id());
        late.set_name("late".into());
        drop(late);
        assert_eq!(kept.name().as_deref(), Some("kept"));
        // Where no named object holds the id, it is taken as it comes.
        let unnamed = ObjectTag::new();
        NEXT_OBJECT.with(|n| n.set((1 << 32) + u64::from(unnamed.id().0) - 1));
        assert_eq!(ObjectTag::new().id(), unnamed.id());
    }
}
