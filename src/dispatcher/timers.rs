//! The timer queue: every deadline the dispatcher keeps (sleepers, operation timeouts,
//! `copas::timeout` callbacks, accept back-off).
//!
//! An ordered map keyed by `(deadline, sequence)`: insert and cancel are O(log n), the next
//! deadline is the first key, entries with the same deadline fire in insertion order, and a
//! cancelled entry is really gone (nothing to skip later, no growth under cancel storms).
//! Deadlines are `Instant`s, a monotonic clock, so a wall-clock jump changes nothing (Copas
//! issue #100).

use std::collections::BTreeMap;
use std::time::Instant;

/// Identifies one armed timer; needed to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    at: Instant,
    seq: u64,
}

impl TimerKey {
    /// When the timer fires.
    pub(crate) fn at(self) -> Instant {
        self.at
    }
}

/// Deadlines with a value each, fired in deadline order.
#[derive(Debug)]
pub(crate) struct TimerQueue<T> {
    map: BTreeMap<TimerKey, T>,
    seq: u64,
}

impl<T> TimerQueue<T> {
    pub(crate) fn new() -> Self {
        TimerQueue {
            map: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Arms a timer for `at`.
    pub(crate) fn insert(&mut self, at: Instant, value: T) -> TimerKey {
        self.seq += 1;
        let key = TimerKey { at, seq: self.seq };
        self.map.insert(key, value);
        key
    }

    /// Cancels a timer, returning its value if it had not fired yet.
    pub(crate) fn remove(&mut self, key: TimerKey) -> Option<T> {
        self.map.remove(&key)
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.map.first_key_value().map(|(k, _)| k.at)
    }

    /// Removes and returns the earliest timer if its deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<T> {
        match self.map.first_key_value() {
            Some((k, _)) if k.at <= now => self.map.pop_first().map(|(_, v)| v),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        let mut fired = Vec::new();
        while let Some(v) = q.pop_expired(t0 + Duration::from_secs(2)) {
            fired.push(v);
        }
        assert_eq!(fired, (0..1000).collect::<Vec<_>>());
    }
}
