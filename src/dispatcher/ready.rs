//! The ready queue: coroutines to resume in the coming run phases, in order, each with the
//! addresses its resume will read first (prefetched one coroutine ahead).
//!
//! A coroutine woken from outside the run phase by a deadline or an event, while more are
//! queued than one step resumes ([`MAX_RESUMES_PER_STEP`]), goes ahead of that backlog: a
//! burst of new coroutines (30,000 `addthread`s, 10,000 accepted connections) then delays
//! timers and I/O by one step, not by the whole burst. Without a backlog the order is plain
//! first-in, first-out, as Copas's.

use std::collections::VecDeque;

use copas_coro::ResumeHint;

use super::task::Coroutine;
use super::{IoSource, MAX_RESUMES_PER_STEP};

/// A coroutine in the ready queue, with where its resume will touch memory first.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadyEntry {
    pub(super) co: Coroutine,
    pub(super) hint: ResumeHint,
    /// Addresses the resumed coroutine will read soon (its task entry, the socket it waited
    /// on and that socket's owner), 0 where unknown; only ever prefetched.
    pub(super) data: [usize; 3],
}

/// Where a coroutine woken by `io` will read first once resumed: the socket's own record and
/// the handle that owns it (a `Connection`), as addresses to prefetch.
pub(super) fn near_data(io: &IoSource) -> [usize; 2] {
    let owner = io
        .owner
        .get()
        .map_or(0, |owner| owner.as_ptr() as *const u8 as usize);
    [io as *const IoSource as usize, owner]
}

impl ReadyEntry {
    pub(super) fn new(co: Coroutine, hint: ResumeHint) -> ReadyEntry {
        ReadyEntry {
            co,
            hint,
            data: [0; 3],
        }
    }

    /// Starts loading everything the resume will read before the coroutine's own code runs:
    /// issued one coroutine ahead in the run phase, it overlaps those misses (every line
    /// of a connection's state is cold when thousands take turns) with the current
    /// coroutine's system calls.
    #[inline]
    pub(super) fn prefetch(&self) {
        self.hint.prefetch_frames();
        for addr in self.data {
            if addr != 0 {
                copas_coro::prefetch(addr);
                copas_coro::prefetch(addr + 64);
            }
        }
    }
}

/// The coroutines to resume: the queue proper, and the lane of those that jump its backlog
/// until the next run phase puts them at its front.
#[derive(Debug, Default)]
pub(super) struct ReadyQueue {
    queue: VecDeque<ReadyEntry>,
    /// Woken by a deadline or an event while `queue` held a backlog; moved to the front of
    /// `queue` when the run phase begins (so resuming, the hot path, sees one queue).
    ahead: Vec<ReadyEntry>,
}

impl ReadyQueue {
    /// Queues a coroutine last.
    #[inline]
    pub(super) fn push(&mut self, entry: ReadyEntry) {
        self.queue.push_back(entry);
    }

    /// Queues a coroutine woken by a deadline or an event outside the run phase: last, or
    /// ahead of the backlog if more are queued than one step resumes.
    #[inline]
    pub(super) fn push_woken(&mut self, entry: ReadyEntry) {
        if self.queue.len() < MAX_RESUMES_PER_STEP {
            self.queue.push_back(entry);
        } else {
            self.ahead.push(entry);
        }
    }

    /// Puts the coroutines that jumped the backlog at the front, in the order they came.
    /// Called as the run phase begins.
    #[inline]
    pub(super) fn begin_run_phase(&mut self) {
        if !self.ahead.is_empty() {
            self.move_ahead();
        }
    }

    #[cold]
    fn move_ahead(&mut self) {
        for entry in self.ahead.drain(..).rev() {
            self.queue.push_front(entry);
        }
    }

    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<ReadyEntry> {
        self.queue.pop_front()
    }

    #[inline]
    pub(super) fn front(&self) -> Option<&ReadyEntry> {
        self.queue.front()
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len() + self.ahead.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.ahead.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.ahead.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u32) -> ReadyEntry {
        ReadyEntry::new(
            Coroutine {
                index,
                generation: 1,
            },
            ResumeHint::default(),
        )
    }

    fn drain(q: &mut ReadyQueue) -> Vec<u32> {
        q.begin_run_phase();
        std::iter::from_fn(|| q.pop_front().map(|e| e.co.index)).collect()
    }

    #[test]
    fn without_a_backlog_woken_coroutines_queue_last() {
        let mut q = ReadyQueue::default();
        q.push(entry(1));
        q.push_woken(entry(2));
        q.push(entry(3));
        assert_eq!(drain(&mut q), [1, 2, 3]);
    }

    #[test]
    fn with_a_backlog_woken_coroutines_go_first_in_the_order_they_came() {
        let mut q = ReadyQueue::default();
        let backlog = MAX_RESUMES_PER_STEP as u32;
        for i in 0..backlog {
            q.push(entry(10_000 + i));
        }
        q.push_woken(entry(1));
        q.push_woken(entry(2));
        q.push(entry(3));
        assert_eq!(q.len(), MAX_RESUMES_PER_STEP + 3);
        let order = drain(&mut q);
        assert_eq!(order[..3], [1, 2, 10_000]);
        assert_eq!(*order.last().unwrap(), 3);
        assert!(q.is_empty());
    }
}
