//! Stackful coroutines for [copas](https://crates.io/crates/copas): the only crate of the
//! workspace that touches stacks and context switches.
//!
//! It offers four things, each in its own module:
//!
//! * [`StackPool`] — guarded, lazily committed stacks, reused instead of made and given back
//!   for every coroutine (a fresh stack cost 3.9–6.2 µs here, reusing one about 10 ns). On Linux
//!   6.13 and later, 64 stacks share one memory mapping, their guard pages lightweight guard
//!   regions.
//! * [`Coro`] — a coroutine that runs a closure on one of those stacks and can be resumed
//!   until it finishes. A panic inside it is caught at its boundary and handed back to the
//!   caller of [`Coro::resume`] as a value ([`Resumed::Panicked`]).
//! * [`suspend`] — gives control back to whoever resumed the running coroutine. It can be
//!   called from any depth of the coroutine's call stack, which is what lets copas offer
//!   blocking-looking `receive` and `send` inside ordinary closures.
//! * A stack-overflow reporter: running off the end of a coroutine stack hits its guard page;
//!   instead of a bare `SIGSEGV`, the process prints which coroutine overflowed and aborts.
//!
//! # Example
//!
//! ```
//! use copas_coro::{suspend, Coro, Resumed, StackPool};
//!
//! let mut pool = StackPool::new(copas_coro::DEFAULT_STACK_SIZE, 16);
//! let stack = pool.allocate().expect("no stack");
//! let mut co = Coro::new(stack, 7, "counter", || {
//!     for _ in 0..3 {
//!         assert_eq!(copas_coro::current(), Some(7));
//!         suspend().unwrap();
//!     }
//! });
//! let mut suspended = 0;
//! while let Resumed::Suspended = co.resume() {
//!     suspended += 1;
//! }
//! assert_eq!(suspended, 3);
//! pool.recycle(co.into_stack());
//! assert_eq!(pool.idle(), 1);
//! ```
//!
//! # Stack size
//!
//! [`DEFAULT_STACK_SIZE`] is 256 KiB. Stacks are committed lazily, so a coroutine only pays
//! for the pages it touches (one 4 KiB page for an echo handler in a release build, as
//! measured). The size is generous because a panic that prints a backtrace needs more than
//! 16 KiB of stack, a TLS handshake 8–16 KiB, and running off the end is fatal (see below).
//! On kernels without guard regions (before Linux 6.13) each stack costs two memory
//! mappings (the guard page and the stack), so the default `vm.max_map_count` of 65,530
//! caps a process near 32,000 live coroutines; with them, 64 stacks share one mapping and
//! memory is the only bound.
//!
//! # Stack overflow
//!
//! Overflowing a coroutine stack cannot be recovered from soundly: the process prints
//! `copas: coroutine '<name>' has overflowed its stack (<n> KiB)` on standard error and
//! aborts. Raise the stack size, or move deep recursion off the coroutine.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod coroutine;
mod label;
mod overflow;
mod panic;
mod slab;
mod stack;

pub use coroutine::{
    can_suspend, current, in_coroutine, prefetch, suspend, suspend_value, Coro, ResumeHint,
    Resumed, SuspendError, INLINE_BODY,
};
pub use label::Label;
pub use panic::panic_message;
pub use stack::{Stack, StackPool, DEFAULT_STACK_SIZE, MIN_STACK_SIZE};
