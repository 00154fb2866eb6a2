//! The timer queue: every deadline the dispatcher keeps (sleepers, operation timeouts,
//! `copas::timeout` callbacks, accept back-off).
//!
//! Most timers are cancelled, not fired: a socket operation with a timeout arms one before
//! it waits and cancels it when the socket is ready, once per message, and with one timeout
//! for every connection each deadline (`now + timeout`) is the latest yet. So the queue
//! keeps two orders of `(deadline, sequence)` entries beside a slab of the timers' values:
//!
//! - the **run**, a deque of deadlines armed in non-decreasing order: a timer later than
//!   every one in it goes to its back, and the earliest is at its front;
//! - a binary min-heap for the others (a shorter timeout among longer ones, sleepers with
//!   random deadlines).
//!
//! Cancelling frees the value's slot in O(1) and leaves the entry behind as stale (the
//! slot's sequence number no longer matches it). Stale entries are dropped when they reach
//! a front, which is where a socket timeout's usually is (the connection that waited
//! longest is served first), and all of them at once when they outnumber the armed ones, so
//! the queue holds at most twice the armed timers plus a small constant however many are
//! cancelled. So arming and cancelling a socket timeout is a push and a pop at the two ends
//! of a deque, with no allocation once the queue has grown to the load.
//!
//! Entries with the same deadline fire in insertion order (the sequence breaks the tie).
//! Deadlines are `Instant`s, a monotonic clock, so a wall-clock jump changes nothing (Copas
//! issue #100).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

/// Identifies one armed timer; needed to cancel it. Its queue entry: the entry is stale
/// once the timer has fired or been cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerKey(Entry);

impl TimerKey {
    /// When the timer fires.
    pub(crate) fn at(self) -> Instant {
        self.0.at
    }
}

/// A queue entry: ordered by deadline, then by when it was armed (the fields' order; no
/// two entries share a sequence number, so `slot` never decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Instant,
    seq: u64,
    slot: u32,
}

/// Stale entries tolerated beyond the number of armed timers before they are all dropped
/// at once.
const STALE_SLACK: usize = 64;

/// Deadlines with a value each, fired in deadline order.
#[derive(Debug)]
pub(crate) struct TimerQueue<T> {
    /// Entries armed in non-decreasing order; the front is armed.
    run: VecDeque<Entry>,
    /// The other entries; the top is armed.
    heap: BinaryHeap<Reverse<Entry>>,
    /// The armed timers' values, with the sequence number of the timer holding the slot.
    slots: Vec<Option<(u64, T)>>,
    /// Vacant indices of `slots`.
    vacant: Vec<u32>,
    /// How many timers are armed.
    armed: usize,
    seq: u64,
}

impl<T> TimerQueue<T> {
    pub(crate) fn new() -> Self {
        TimerQueue {
            run: VecDeque::new(),
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            vacant: Vec::new(),
            armed: 0,
            seq: 0,
        }
    }

    /// Arms a timer for `at`.
    pub(crate) fn insert(&mut self, at: Instant, value: T) -> TimerKey {
        self.seq += 1;
        let seq = self.seq;
        let slot = match self.vacant.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some((seq, value));
                slot
            }
            None => {
                self.slots.push(Some((seq, value)));
                // More than 2^32 armed timers would need more memory than a process has.
                (self.slots.len() - 1) as u32
            }
        };
        let entry = Entry { at, seq, slot };
        // A later sequence breaks a tie, so an equal deadline keeps the run in order.
        if self.run.back().is_none_or(|last| last.at <= at) {
            self.run.push_back(entry);
        } else {
            self.heap.push(Reverse(entry));
        }
        self.armed += 1;
        TimerKey(entry)
    }

    /// Cancels a timer, returning its value if it had not fired yet.
    pub(crate) fn remove(&mut self, key: TimerKey) -> Option<T> {
        let value = self.take(key.0.slot, key.0.seq)?;
        self.settle();
        Some(value)
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.earliest().map(|(e, _)| e.at)
    }

    /// Removes and returns the earliest timer if its deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<T> {
        let (first, in_run) = self.earliest()?;
        if first.at > now {
            return None;
        }
        if in_run {
            self.run.pop_front();
        } else {
            self.heap.pop();
        }
        let value = self.take(first.slot, first.seq);
        self.settle();
        value
    }

    /// The earliest entry (armed, by the invariants), and whether it is the run's.
    fn earliest(&self) -> Option<(Entry, bool)> {
        match (self.run.front(), self.heap.peek()) {
            (Some(r), Some(Reverse(h))) if h < r => Some((*h, false)),
            (Some(r), _) => Some((*r, true)),
            (None, Some(Reverse(h))) => Some((*h, false)),
            (None, None) => None,
        }
    }

    /// The value of the timer `seq` in `slot`, which is vacated; `None` if that timer is
    /// no longer armed.
    fn take(&mut self, slot: u32, seq: u64) -> Option<T> {
        let entry = self.slots.get_mut(slot as usize)?;
        match entry {
            Some((armed, _)) if *armed == seq => {}
            _ => return None,
        }
        let (_, value) = entry.take()?;
        self.vacant.push(slot);
        self.armed -= 1;
        Some(value)
    }

    fn is_armed(slots: &[Option<(u64, T)>], e: &Entry) -> bool {
        matches!(slots.get(e.slot as usize), Some(Some((seq, _))) if *seq == e.seq)
    }

    /// Restores the invariants after a timer left: both fronts are armed, and stale
    /// entries are at most as many as armed ones plus [`STALE_SLACK`].
    fn settle(&mut self) {
        let slots = &self.slots;
        if self.run.len() + self.heap.len() > 2 * self.armed + STALE_SLACK {
            self.run.retain(|e| Self::is_armed(slots, e));
            self.heap.retain(|Reverse(e)| Self::is_armed(slots, e));
            return;
        }
        while self.run.front().is_some_and(|e| !Self::is_armed(slots, e)) {
            self.run.pop_front();
        }
        while self
            .heap
            .peek()
            .is_some_and(|Reverse(e)| !Self::is_armed(slots, e))
        {
            self.heap.pop();
        }
    }

    /// Gives back memory a burst of timers left: vacant slots past the last armed one, and
    /// capacity well beyond what is held (see [`shrink_table`](super::shrink_table)).
    pub(crate) fn shrink(&mut self) {
        use super::{shrink_table, shrink_vec};
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        let held = self.slots.len();
        if self.vacant.len() > held - self.armed {
            self.vacant.retain(|&slot| (slot as usize) < held);
        }
        shrink_vec(&mut self.slots);
        shrink_vec(&mut self.vacant);
        let (run, heap) = (&mut self.run, &mut self.heap);
        shrink_table(run.len(), run.capacity(), |n| run.shrink_to(n));
        shrink_table(heap.len(), heap.capacity(), |n| heap.shrink_to(n));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.armed
    }

    /// Entries held, armed and stale.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.run.len() + self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Fires every timer due at `now`, in order.
    fn fire_due<T>(q: &mut TimerQueue<T>, now: Instant) -> Vec<T> {
        std::iter::from_fn(|| q.pop_expired(now)).collect()
    }

    #[test]
    fn fires_in_deadline_then_insertion_order() {
        let mut q = TimerQueue::new();
        let t0 = Instant::now();
        q.insert(t0 + Duration::from_millis(20), "late");
        q.insert(t0 + Duration::from_millis(10), "a");
        q.insert(t0 + Duration::from_millis(10), "b");
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(q.pop_expired(t0), None);
        let now = t0 + Duration::from_millis(15);
        assert_eq!(q.pop_expired(now), Some("a"));
        assert_eq!(q.pop_expired(now), Some("b"));
        assert_eq!(q.pop_expired(now), None);
        assert_eq!(q.len(), 1);
    }

    /// After a burst, shrinking gives back the slots past the last armed timer and the
    /// entries' capacity, and what stays armed (at a high slot and a low one) still fires
    /// in order; keys of timers that are gone find nothing, even in a slot used again.
    #[test]
    fn shrinking_after_a_burst_keeps_what_is_armed() {
        let mut q = TimerQueue::new();
        let t0 = Instant::now();
        let keys: Vec<_> = (0..10_000u64)
            .map(|i| q.insert(t0 + Duration::from_millis(i % 97), i))
            .collect();
        for (i, &key) in keys.iter().enumerate() {
            if i != 3 && i != 2_000 {
                assert_eq!(q.remove(key), Some(i as u64));
            }
        }
        let before = q.slots.capacity() + q.run.capacity() + q.heap.capacity();
        q.shrink();
        let after = q.slots.capacity() + q.run.capacity() + q.heap.capacity();
        assert!(after * 3 < before, "{before} -> {after}");
        assert_eq!(q.slots.len(), 2_001);
        assert!(q.vacant.iter().all(|&slot| (slot as usize) < q.slots.len()));
        assert_eq!(q.remove(keys[9_999]), None);
        let fresh: Vec<_> = (0..6_000u64)
            .map(|i| q.insert(t0 + Duration::from_secs(1), 100_000 + i))
            .collect();
        assert_eq!(
            q.remove(keys[1_000]),
            None,
            "an old key in a slot used again"
        );
        assert_eq!(q.remove(fresh[5_999]), Some(105_999));
        let fired = fire_due(&mut q, t0 + Duration::from_millis(100));
        // Deadlines 3 ms and 2,000 % 97 = 60 ms.
        assert_eq!(fired, vec![3, 2_000]);
    }

    #[test]
    fn cancelled_timers_leave_nothing_behind() {
        let mut q = TimerQueue::new();
        let t0 = Instant::now();
        let keys: Vec<_> = (0..100_000)
            .map(|i| q.insert(t0 + Duration::from_secs(1), i))
            .collect();
        for k in &keys[1000..] {
            assert!(q.remove(*k).is_some());
        }
        assert_eq!(q.len(), 1000);
        assert_eq!(
            q.remove(keys[5000]),
            None,
            "a cancelled timer cannot be cancelled twice"
        );
        let fired = fire_due(&mut q, t0 + Duration::from_secs(2));
        assert_eq!(fired, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn arming_and_cancelling_forever_keeps_the_heap_bounded() {
        // The pattern of a socket timeout: armed before each wait, cancelled after it,
        // every deadline later than the last, with a few long-lived timers beside.
        let mut q = TimerQueue::new();
        let t0 = Instant::now();
        let kept: Vec<_> = (0..10)
            .map(|i| q.insert(t0 + Duration::from_secs(3600), i))
            .collect();
        for i in 0..100_000u64 {
            let k = q.insert(
                t0 + Duration::from_micros(i) + Duration::from_secs(60),
                1_000,
            );
            assert_eq!(q.remove(k), Some(1_000));
            assert!(q.held() <= 2 * q.len() + STALE_SLACK, "held {}", q.held());
        }
        assert_eq!(q.len(), 10);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(3600)));
        assert!(q.slots.len() <= 11, "slots are reused: {}", q.slots.len());
        let fired = fire_due(&mut q, t0 + Duration::from_secs(7200));
        assert_eq!(fired, (0..10).collect::<Vec<_>>());
        assert!(
            kept.iter().all(|k| q.remove(*k).is_none()),
            "fired timers are gone"
        );
    }

    #[test]
    fn equal_deadlines_fire_in_insertion_order_across_the_run_and_the_heap() {
        let mut q = TimerQueue::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        q.insert(t0 + ms(10), "run 10");
        q.insert(t0 + ms(20), "run 20");
        q.insert(t0 + ms(10), "heap 10");
        q.insert(t0 + ms(20), "run 20 again");
        q.insert(t0 + ms(15), "heap 15");
        let fired = fire_due(&mut q, t0 + ms(30));
        assert_eq!(
            fired,
            ["run 10", "heap 10", "heap 15", "run 20", "run 20 again"]
        );
    }

    #[test]
    fn the_next_deadline_skips_cancelled_timers() {
        let mut q = TimerQueue::new();
        let t0 = Instant::now();
        let first = q.insert(t0 + Duration::from_millis(1), "first");
        let second = q.insert(t0 + Duration::from_millis(2), "second");
        q.insert(t0 + Duration::from_millis(3), "third");
        assert_eq!(q.remove(first), Some("first"));
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(2)));
        assert_eq!(q.remove(second), Some("second"));
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(3)));
        assert_eq!(q.pop_expired(t0 + Duration::from_millis(2)), None);
        assert_eq!(q.pop_expired(t0 + Duration::from_millis(3)), Some("third"));
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn a_reused_slot_does_not_revive_a_cancelled_key() {
        let mut q = TimerQueue::new();
        let t0 = Instant::now();
        let old = q.insert(t0 + Duration::from_millis(5), "old");
        assert_eq!(q.remove(old), Some("old"));
        let new = q.insert(t0 + Duration::from_millis(9), "new");
        assert_eq!(q.remove(old), None, "the slot now belongs to another timer");
        // The stale entry at 5 ms must not fire the new timer early.
        assert_eq!(q.pop_expired(t0 + Duration::from_millis(6)), None);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(9)));
        assert_eq!(q.remove(new), Some("new"));
        assert_eq!(q.len(), 0);
    }

    /// The queue against a sorted list, over random arm / cancel / fire sequences.
    #[test]
    fn matches_a_sorted_model_under_random_use() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        // (deadline in µs, sequence, value, key)
        let mut model: Vec<(u64, u64, u64, TimerKey)> = Vec::new();
        let mut now = 0u64;
        for step in 0..20_000u64 {
            match next(10) {
                0..=4 => {
                    let due = now + next(5_000);
                    let key = q.insert(t0 + Duration::from_micros(due), step);
                    model.push((due, step, step, key));
                }
                5..=7 if !model.is_empty() => {
                    let i = next(model.len() as u64) as usize;
                    let (_, _, value, key) = model.swap_remove(i);
                    assert_eq!(q.remove(key), Some(value));
                }
                _ => {
                    now += next(300);
                    model.sort_by_key(|&(due, seq, _, _)| (due, seq));
                    let due: Vec<u64> = model
                        .iter()
                        .take_while(|m| m.0 <= now)
                        .map(|m| m.2)
                        .collect();
                    model.drain(..due.len());
                    let fired = fire_due(&mut q, t0 + Duration::from_micros(now));
                    assert_eq!(fired, due, "step {step}");
                }
            }
            assert_eq!(q.len(), model.len());
            let earliest = model.iter().map(|m| (m.0, m.1)).min().map(|m| m.0);
            assert_eq!(
                q.next_deadline(),
                earliest.map(|d| t0 + Duration::from_micros(d))
            );
            assert!(q.held() <= 2 * q.len() + STALE_SLACK);
        }
    }
}
