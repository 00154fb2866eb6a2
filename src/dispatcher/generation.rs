//! Generations: the half of a handle ([`Coroutine`](super::Coroutine), a server's or a
//! socket's key) that tells a slot's occupants apart over time.
//!
//! They are unique across all the dispatchers of the process, not only within one:
//! `Coroutine` and `Server` are plain `Copy` values, a `Coroutine` is `Send` (it may travel
//! into a [`Handle::spawn`](crate::Handle::spawn) closure), and each thread has its own
//! dispatcher with its own slots. With generations counted per dispatcher, the first
//! coroutine of two threads had the same handle, and one thread's `removethread` or
//! `removeserver` with the other's handle acted on its own. Each dispatcher takes blocks of
//! [`BLOCK`] values from one process-wide counter, so the shared counter is touched once
//! per `BLOCK` coroutines, not once per coroutine.

use std::sync::atomic::{AtomicU32, Ordering};

/// How many generations a dispatcher takes from a counter at a time.
const BLOCK: u32 = 4096;

/// A process-wide source of generations.
pub(crate) struct GenerationCounter(AtomicU32);

/// Coroutines' generations.
pub(crate) static COROUTINES: GenerationCounter = GenerationCounter(AtomicU32::new(0));
/// Sources' generations (servers and sockets).
pub(crate) static SOURCES: GenerationCounter = GenerationCounter(AtomicU32::new(0));

/// One dispatcher's current block of a [`GenerationCounter`].
pub(crate) struct Generations {
    counter: &'static GenerationCounter,
    next: u32,
    end: u32,
}

impl Generations {
    /// An empty block: the first [`Generations::next`] takes one from `counter`.
    pub(crate) const fn new(counter: &'static GenerationCounter) -> Generations {
        Generations {
            counter,
            next: 0,
            end: 0,
        }
    }

    /// A generation no dispatcher of this process has handed out (until the counter wraps
    /// after 2³² of them); never 0.
    pub(crate) fn next(&mut self) -> u32 {
        if self.next == self.end {
            // Blocks start at multiples of BLOCK, so the one holding 0 starts there.
            let start = self.counter.0.fetch_add(BLOCK, Ordering::Relaxed);
            self.end = start.wrapping_add(BLOCK);
            self.next = start.max(1);
        }
        let generation = self.next;
        self.next = self.next.wrapping_add(1);
        generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_dispatchers_never_hand_out_the_same_generation_and_never_zero() {
        static COUNTER: GenerationCounter = GenerationCounter(AtomicU32::new(0));
        let mut a = Generations::new(&COUNTER);
        let mut b = Generations::new(&COUNTER);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 * BLOCK {
            assert!(seen.insert(a.next()));
            assert!(seen.insert(b.next()));
        }
        assert!(!seen.contains(&0));
    }

    #[test]
    fn the_counter_wraps_past_zero() {
        static COUNTER: GenerationCounter = GenerationCounter(AtomicU32::new(u32::MAX - BLOCK + 1));
        let mut a = Generations::new(&COUNTER);
        let last_block: Vec<u32> = (0..BLOCK).map(|_| a.next()).collect();
        assert_eq!(*last_block.last().unwrap(), u32::MAX);
        assert_eq!(a.next(), 1);
    }
}
