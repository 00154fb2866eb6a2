//! The line of coroutines waiting on one lock, semaphore, queue or future, and what their
//! wakers hand them.
//!
//! A line is first come first served, and a waiter may leave it from anywhere (its deadline
//! passed, or its coroutine was removed), so it is a doubly linked list whose nodes live in a
//! [`Slab`]: joining, leaving and serving the head are O(1), and once the slab has grown to
//! the longest line seen, a wait allocates nothing.
//!
//! A waiter served (taken off the line and woken) keeps its node until it has run and
//! collected what it was handed: the node is where the waker leaves it, so nothing is
//! shared between waker and waiter and nothing is allocated for the hand-over. Only the
//! waiter frees its node ([`WaitList::leave`], from its guard's `Drop`), so a [`WaiterId`]
//! stays valid for the whole wait; each also carries a serial number, so that an id kept
//! after its wait (a lock remembers whom it was handed to) never reaches a later waiter
//! given the same slab key.

use slab::Slab;

use crate::dispatcher::{self, Coroutine};

/// A waiter's node in its [`WaitList`], from [`push`](WaitList::push).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaiterId {
    key: usize,
    serial: u64,
}

/// One coroutine waiting in a [`WaitList`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry<D> {
    pub(crate) co: Coroutine,
    /// What the waiter asked for (a semaphore's permit count).
    pub(crate) data: D,
}

/// No node: the end of the line.
const NIL: usize = usize::MAX;

/// A line longer than this, once empty again, gives its memory back.
const KEEP: usize = 64;

struct Node<S, D> {
    entry: Entry<D>,
    serial: u64,
    /// Neighbours in line; both `NIL` once the waiter is off the line.
    prev: usize,
    next: usize,
    in_line: bool,
    /// What a waker handed over and the waiter has not collected yet.
    handed: Option<S>,
}

/// Coroutines waiting on one object, first come first served, and what was handed to those
/// of them that were served but have not run yet.
pub(crate) struct WaitList<S, D = ()> {
    nodes: Slab<Node<S, D>>,
    head: usize,
    tail: usize,
    len: usize,
    serial: u64,
}

impl<S, D: Copy> WaitList<S, D> {
    pub(crate) fn new() -> Self {
        WaitList {
            nodes: Slab::new(),
            head: NIL,
            tail: NIL,
            len: 0,
            serial: 0,
        }
    }

    /// Puts `co` at the end of the line; returns its id, under which it finds what it is
    /// handed ([`take`](WaitList::take)) and leaves ([`leave`](WaitList::leave)).
    pub(crate) fn push(&mut self, co: Coroutine, data: D) -> WaiterId {
        self.serial += 1;
        let key = self.nodes.insert(Node {
            entry: Entry { co, data },
            serial: self.serial,
            prev: self.tail,
            next: NIL,
            in_line: true,
            handed: None,
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

    fn node(&mut self, id: WaiterId) -> Option<&mut Node<S, D>> {
        self.nodes.get_mut(id.key).filter(|n| n.serial == id.serial)
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

    /// The waiter `id` is done waiting (served, timed out, or its coroutine removed): frees
    /// its node. Returns its entry if it was still in line, and what it was handed and did
    /// not collect.
    pub(crate) fn leave(&mut self, id: WaiterId) -> (Option<Entry<D>>, Option<S>) {
        let Some(node) = self.node(id) else {
            return (None, None);
        };
        let in_line = node.in_line;
        if in_line {
            self.unlink(id.key);
        }
        let node = self.nodes.remove(id.key);
        if self.nodes.is_empty() && self.nodes.capacity() > KEEP {
            self.nodes.shrink_to_fit();
        }
        (in_line.then_some(node.entry), node.handed)
    }

    /// Collects what was handed to the waiter `id`, if anything was.
    pub(crate) fn take(&mut self, id: WaiterId) -> Option<S> {
        self.node(id).and_then(|n| n.handed.take())
    }

    /// Replaces what was handed to `id` and not collected yet, if anything was (a lock
    /// destroyed after it was handed over).
    pub(crate) fn replace(&mut self, id: WaiterId, signal: S) {
        if let Some(handed) = self.node(id).and_then(|n| n.handed.as_mut()) {
            *handed = signal;
        }
    }

    pub(crate) fn front(&self) -> Option<Entry<D>> {
        self.nodes.get(self.head).map(|n| n.entry)
    }

    /// Takes the first waiter off the line; its node stays until it leaves.
    pub(crate) fn pop_front(&mut self) -> Option<(WaiterId, Entry<D>)> {
        let key = self.head;
        let node = self.nodes.get(key)?;
        let served = (
            WaiterId {
                key,
                serial: node.serial,
            },
            node.entry,
        );
        self.unlink(key);
        Some(served)
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
        let Some(node) = self.node(id) else {
            return Err(signal);
        };
        if !dispatcher::try_with(|d| d.unpark(waiter.co)).unwrap_or(false) {
            return Err(signal);
        }
        node.handed = Some(signal);
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many wait in line (not counting those served that have not run yet).
    pub(crate) fn len(&self) -> usize {
        self.len
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
        line.nodes[new.key].handed = Some("granted");
        line.replace(old, "destroyed");
        assert_eq!(line.take(old), None);
        assert_eq!(line.take(new), Some("granted"));
        assert_eq!(line.leave(old), (None, None));
        assert!(line.nodes.contains(new.key));
    }

    #[test]
    fn a_long_line_gives_its_memory_back_once_empty() {
        let mut line: WaitList<()> = WaitList::new();
        let ids: Vec<WaiterId> = (0..1_000).map(|i| line.push(co(i), ())).collect();
        assert!(line.nodes.capacity() >= 1_000);
        for id in ids {
            line.leave(id);
        }
        assert!(line.is_empty());
        assert!(line.nodes.capacity() <= KEEP, "{}", line.nodes.capacity());
    }
}
