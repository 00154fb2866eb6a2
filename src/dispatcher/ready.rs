//! The ready queue: coroutines to resume in the coming run phases, in order, each with the
//! addresses its resume will read first (prefetched one coroutine ahead).
//!
//! A coroutine woken from outside the run phase by a deadline or an event, while more are
//! queued than one step resumes ([`MAX_RESUMES_PER_STEP`]), goes ahead of that backlog: a
//! burst of new coroutines (30,000 `addthread`s, 10,000 accepted connections) then delays
//! timers and I/O by one step, not by the whole burst. That lane takes at most half of a run
//! phase while the backlog has more than the other half, so a stream of deadlines and events
//! under overload delays the backlog but cannot starve it; each lane keeps its own order.
//! Without a backlog the order is plain first-in, first-out, as Copas's.

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

/// Where a coroutine made ready is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Last: made ready by a coroutine, by `addthread`, or passed readiness in the run phase.
    Last,
    /// Woken from outside the run phase by a deadline or a poller event: last, or ahead of
    /// the backlog if more are queued than one step resumes.
    Woken,
}

/// The coroutines to resume: the queue proper, and the lane of those that jump its backlog.
#[derive(Debug, Default)]
pub(super) struct ReadyQueue {
    queue: VecDeque<ReadyEntry>,
    /// Woken by a deadline or an event while `queue` held a backlog, in the order they came,
    /// from `ahead_head` on; each run phase moves its share of them to the front of `queue`,
    /// so resuming (the hot path) sees one queue. A `Vec`: pushing to a second `VecDeque`
    /// in the wake path cost 15 instructions per echoed message (cachegrind), this nothing.
    ahead: Vec<ReadyEntry>,
    ahead_head: usize,
}

impl ReadyQueue {
    /// Queues a coroutine as its [`Lane`] says.
    #[inline]
    pub(super) fn push(&mut self, entry: ReadyEntry, lane: Lane) {
        if lane == Lane::Woken && self.queue.len() >= MAX_RESUMES_PER_STEP {
            self.ahead.push(entry);
        } else {
            self.queue.push_back(entry);
        }
    }

    /// Plans a run phase: returns how many coroutines it resumes from the front (those
    /// queued now, at most [`MAX_RESUMES_PER_STEP`]). The lane ahead goes first, but takes
    /// at most half of them while the backlog has more than the other half: a stream of
    /// deadlines and events can then delay the backlog, never starve it.
    #[inline]
    pub(super) fn begin_run_phase(&mut self) -> usize {
        let batch = self.len().min(MAX_RESUMES_PER_STEP);
        if !self.ahead.is_empty() {
            self.move_ahead(batch);
        }
        batch
    }

    #[cold]
    fn move_ahead(&mut self, batch: usize) {
        let share = (batch / 2).max(batch.saturating_sub(self.queue.len()));
        let n = (self.ahead.len() - self.ahead_head).min(share);
        let moved = self.ahead_head..self.ahead_head + n;
        for &entry in self.ahead[moved].iter().rev() {
            self.queue.push_front(entry);
        }
        self.ahead_head += n;
        if self.ahead_head == self.ahead.len() {
            self.ahead.clear();
            self.ahead_head = 0;
        } else if self.ahead_head > self.ahead.len() / 2 {
            self.ahead.drain(..self.ahead_head);
            self.ahead_head = 0;
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
        self.queue.len() + self.ahead.len() - self.ahead_head
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives back capacity a burst left (see [`shrink_table`](super::shrink_table)).
    pub(super) fn shrink(&mut self) {
        let queue = &mut self.queue;
        super::shrink_table(queue.len(), queue.capacity(), |n| queue.shrink_to(n));
        super::shrink_vec(&mut self.ahead);
    }

    /// The coroutines queued, in no promised order, stale entries included (a coroutine
    /// removed while queued stays here until a run phase skips it).
    pub(super) fn coroutines(&self) -> impl Iterator<Item = Coroutine> + '_ {
        let ahead = &self.ahead[self.ahead_head..];
        self.queue.iter().chain(ahead).map(|entry| entry.co)
    }

    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.ahead.clear();
        self.ahead_head = 0;
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

    /// Run phases until the queue is empty: the order of resumes.
    fn drain(q: &mut ReadyQueue) -> Vec<u32> {
        let mut order = Vec::new();
        while !q.is_empty() {
            let batch = q.begin_run_phase();
            order.extend((0..batch).map(|_| q.pop_front().expect("planned").co.index));
        }
        order
    }

    #[test]
    fn without_a_backlog_woken_coroutines_queue_last() {
        let mut q = ReadyQueue::default();
        q.push(entry(1), Lane::Last);
        q.push(entry(2), Lane::Woken);
        q.push(entry(3), Lane::Last);
        assert_eq!(drain(&mut q), [1, 2, 3]);
    }

    #[test]
    fn with_a_backlog_woken_coroutines_go_first_in_the_order_they_came() {
        let mut q = ReadyQueue::default();
        let backlog = MAX_RESUMES_PER_STEP as u32;
        for i in 0..backlog {
            q.push(entry(10_000 + i), Lane::Last);
        }
        q.push(entry(1), Lane::Woken);
        q.push(entry(2), Lane::Woken);
        q.push(entry(3), Lane::Last);
        assert_eq!(q.len(), MAX_RESUMES_PER_STEP + 3);
        let order = drain(&mut q);
        assert_eq!(order[..3], [1, 2, 10_000]);
        assert_eq!(*order.last().unwrap(), 3);
        assert!(q.is_empty());
    }

    #[test]
    fn a_stream_of_woken_coroutines_takes_at_most_half_of_a_run_phase_from_the_backlog() {
        let mut q = ReadyQueue::default();
        for i in 0..2_000 {
            q.push(entry(10_000 + i), Lane::Last);
        }
        for i in 0..2_000 {
            q.push(entry(i), Lane::Woken);
        }
        let batch = q.begin_run_phase();
        assert_eq!(batch, MAX_RESUMES_PER_STEP);
        let phase: Vec<u32> = (0..batch)
            .map(|_| q.pop_front().unwrap().co.index)
            .collect();
        let half = (MAX_RESUMES_PER_STEP / 2) as u32;
        assert_eq!(phase[..half as usize], (0..half).collect::<Vec<_>>()[..]);
        assert_eq!(
            phase[half as usize..],
            (10_000..10_000 + half).collect::<Vec<_>>()[..],
            "the backlog keeps half of the run phase"
        );
        // Each lane stays in its order across run phases.
        let rest = drain(&mut q);
        let woken: Vec<u32> = rest.iter().copied().filter(|&i| i < 10_000).collect();
        assert_eq!(woken, (half..2_000).collect::<Vec<_>>());
    }
}
