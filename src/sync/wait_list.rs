//! Lines of waiters: [`Line`], first come first served, which one may leave from anywhere;
//! and on it [`WaitList`], the line of coroutines waiting on one lock, semaphore, queue or
//! future, with what their wakers hand them. (A channel's lines, which cross threads, are
//! `Line`s of their own under the channel's mutex.)
//!
//! A waiter may leave its line from anywhere (its deadline passed, or its coroutine was
//! removed), so a line is a doubly linked list whose nodes live in a [`Slab`]: joining,
//! leaving and serving the head are O(1), and once the slab has grown to the longest line
//! seen, a wait allocates nothing. A line that grew past 64 gives its memory back once empty.
//!
//! In a [`WaitList`], a waiter served (taken off the line and woken) keeps its node until it
//! has run and collected what it was handed: the node is where the waker leaves it, so
//! nothing is shared between waker and waiter and nothing is allocated for the hand-over.
//! Only the waiter frees its node ([`WaitList::leave`], from its guard's `Drop`), so a
//! [`WaiterId`] stays valid for the whole wait; each also carries a serial number, so that
//! an id kept after its wait (a lock remembers whom it was handed to) never reaches a later
//! waiter given the same slab key.

use slab::Slab;

use crate::dispatcher::{self, Coroutine};

/// A place in a [`Line`], from [`push`](Line::push).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaiterId {
    key: usize,
    serial: u64,
}

/// No node: the end of the line.
const NIL: usize = usize::MAX;

/// A line longer than this, once empty again, gives its memory back.
const KEEP: usize = 64;

struct Node<T> {
    value: T,
    serial: u64,
    /// Neighbours in line; both `NIL` once off the line.
    prev: usize,
    next: usize,
    in_line: bool,
}

/// A first-come-first-served line that one may leave from anywhere, of values that may
/// outlive their time in line: [`pop_front`](Line::pop_front) takes the head off the line
/// but keeps its value until [`remove`](Line::remove).
pub(crate) struct Line<T> {
    nodes: Slab<Node<T>>,
    head: usize,
    tail: usize,
    len: usize,
    serial: u64,
}

impl<T> Default for Line<T> {
    fn default() -> Self {
        Line {
            nodes: Slab::new(),
            head: NIL,
            tail: NIL,
            len: 0,
            serial: 0,
        }
    }
}

impl<T> Line<T> {
    /// Puts `value` at the end of the line.
    pub(crate) fn push(&mut self, value: T) -> WaiterId {
        self.serial += 1;
        let key = self.nodes.insert(Node {
            value,
            serial: self.serial,
            prev: self.tail,
            next: NIL,
            in_line: true,
        });
        match self.tail {
            NIL => self.head = key,
            tail => self.nodes[tail].next = key,
        }
        self.tail = key;
        self.len += 1;
        WaiterId {
            key,
            serial: self.serial,
        }
    }

    pub(crate) fn get_mut(&mut self, id: WaiterId) -> Option<&mut T> {
        self.nodes
            .get_mut(id.key)
            .filter(|n| n.serial == id.serial)
            .map(|n| &mut n.value)
    }

    /// Takes a node off the line (not out of the slab).
    fn unlink(&mut self, key: usize) {
        let node = &mut self.nodes[key];
        let (prev, next) = (node.prev, node.next);
        node.prev = NIL;
        node.next = NIL;
        node.in_line = false;
        match prev {
            NIL => self.head = next,
            prev => self.nodes[prev].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.nodes[next].prev = prev,
        }
        self.len -= 1;
    }

    /// Takes `id`'s value out, off the line if it still was in it (the flag says whether).
    /// `None` if it is gone already.
    pub(crate) fn remove(&mut self, id: WaiterId) -> Option<(T, bool)> {
        let in_line = self
            .nodes
            .get(id.key)
            .filter(|n| n.serial == id.serial)?
            .in_line;
        if in_line {
            self.unlink(id.key);
        }
        let node = self.nodes.remove(id.key);
        if self.nodes.is_empty() && self.nodes.capacity() > KEEP {
            self.nodes.shrink_to_fit();
        }
        Some((node.value, in_line))
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.nodes.get(self.head).map(|n| &n.value)
    }

    /// Takes the head off the line; its value stays until [`remove`](Line::remove)d.
    pub(crate) fn pop_front(&mut self) -> Option<(WaiterId, &mut T)> {
        let key = self.head;
        let serial = self.nodes.get(key)?.serial;
        self.unlink(key);
        Some((WaiterId { key, serial }, &mut self.nodes[key].value))
    }

    /// How many are in line (not counting values taken off it and not removed yet).
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// One coroutine waiting in a [`WaitList`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry<D> {
    pub(crate) co: Coroutine,
    /// What the waiter asked for (a semaphore's permit count).
    pub(crate) data: D,
}

/// A waiter and what was handed to it and not collected yet.
struct Spot<S, D> {
    entry: Entry<D>,
    handed: Option<S>,
}

/// Coroutines waiting on one object, first come first served, and what was handed to those
/// of them that were served but have not run yet.
pub(crate) struct WaitList<S, D = ()> {
    line: Line<Spot<S, D>>,
}

impl<S, D: Copy> WaitList<S, D> {
    pub(crate) fn new() -> Self {
        WaitList {
            line: Line::default(),
        }
    }

    /// Puts `co` at the end of the line; returns its id, under which it finds what it is
    /// handed ([`take`](WaitList::take)) and leaves ([`leave`](WaitList::leave)).
    pub(crate) fn push(&mut self, co: Coroutine, data: D) -> WaiterId {
        self.line.push(Spot {
            entry: Entry { co, data },
            handed: None,
        })
    }

    /// The waiter `id` is done waiting (served, timed out, or its coroutine removed): frees
    /// its node. Returns its entry if it was still in line, and what it was handed and did
    /// not collect.
    pub(crate) fn leave(&mut self, id: WaiterId) -> (Option<Entry<D>>, Option<S>) {
        match self.line.remove(id) {
            Some((spot, in_line)) => (in_line.then_some(spot.entry), spot.handed),
            None => (None, None),
        }
    }

    /// Collects what was handed to the waiter `id`, if anything was.
    pub(crate) fn take(&mut self, id: WaiterId) -> Option<S> {
        self.line.get_mut(id).and_then(|spot| spot.handed.take())
    }

    /// Replaces what was handed to `id` and not collected yet, if anything was (a lock
    /// destroyed after it was handed over).
    pub(crate) fn replace(&mut self, id: WaiterId, signal: S) {
        if let Some(handed) = self.line.get_mut(id).and_then(|s| s.handed.as_mut()) {
            *handed = signal;
        }
    }

    pub(crate) fn front(&self) -> Option<Entry<D>> {
        self.line.front().map(|spot| spot.entry)
    }

    /// Takes the first waiter off the line; its node stays until it leaves.
    pub(crate) fn pop_front(&mut self) -> Option<(WaiterId, Entry<D>)> {
        self.line.pop_front().map(|(id, spot)| (id, spot.entry))
    }

    /// Hands `signal` to a waiter taken off the line and wakes it. Gives `signal` back when
    /// the waiter no longer waits (its deadline passed, or it was removed), so the caller
    /// can pass it to the next one.
    pub(crate) fn grant(
        &mut self,
        id: WaiterId,
        waiter: Entry<D>,
        signal: S,
    ) -> std::result::Result<(), S> {
        // The node is there: only its waiter frees it, and it has not run since it was
        // served. Checked all the same, so that a signal is never lost to a missing node.
        let Some(spot) = self.line.get_mut(id) else {
            return Err(signal);
        };
        if !dispatcher::try_with(|d| d.unpark(waiter.co)).unwrap_or(false) {
            return Err(signal);
        }
        spot.handed = Some(signal);
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.line.len() == 0
    }

    /// How many wait in line (not counting those served that have not run yet).
    pub(crate) fn len(&self) -> usize {
        self.line.len()
    }

    /// Hands a copy of `signal` to every waiter, emptying the line.
    pub(crate) fn grant_all(&mut self, signal: S)
    where
        S: Clone,
    {
        while let Some((id, waiter)) = self.pop_front() {
            let _ = self.grant(id, waiter, signal.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn co(index: u32) -> Coroutine {
        Coroutine {
            index,
            generation: 0,
        }
    }

    #[test]
    fn serves_in_arrival_order_around_waiters_that_left() {
        let mut line: WaitList<(), u32> = WaitList::new();
        let ids: Vec<WaiterId> = (0..5).map(|i| line.push(co(i), i)).collect();
        assert_eq!(line.leave(ids[2]).0.map(|e| e.data), Some(2));
        assert_eq!(line.leave(ids[0]).0.map(|e| e.data), Some(0));
        assert_eq!(line.len(), 3);
        assert_eq!(line.front().map(|e| e.data), Some(1));
        let served: Vec<u32> =
            std::iter::from_fn(|| line.pop_front().map(|(_, e)| e.data)).collect();
        assert_eq!(served, [1, 3, 4]);
        assert!(line.is_empty());
        // Served waiters keep their nodes until they leave, no longer in line.
        assert_eq!(line.leave(ids[4]), (None, None));
        line.push(co(9), 9);
        assert_eq!(line.front().map(|e| e.data), Some(9));
    }

    #[test]
    fn an_id_kept_after_its_wait_never_reaches_a_later_waiter() {
        let mut line: WaitList<&str> = WaitList::new();
        let old = line.push(co(1), ());
        line.pop_front();
        line.leave(old);
        let new = line.push(co(2), ());
        assert_eq!(new.key, old.key, "the slab reuses the key");
        line.pop_front();
        line.line.get_mut(new).expect("node").handed = Some("granted");
        line.replace(old, "destroyed");
        assert_eq!(line.take(old), None);
        assert_eq!(line.take(new), Some("granted"));
        assert_eq!(line.leave(old), (None, None));
        assert!(line.line.get_mut(new).is_some());
    }

    #[test]
    fn a_long_line_gives_its_memory_back_once_empty() {
        let mut line: WaitList<()> = WaitList::new();
        let ids: Vec<WaiterId> = (0..1_000).map(|i| line.push(co(i), ())).collect();
        assert!(line.line.nodes.capacity() >= 1_000);
        for id in ids {
            line.leave(id);
        }
        assert!(line.is_empty());
        assert!(
            line.line.nodes.capacity() <= KEEP,
            "{}",
            line.line.nodes.capacity()
        );
    }
}
