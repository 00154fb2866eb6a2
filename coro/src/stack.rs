//! Coroutine stacks and the pool that recycles them.
//!
//! A stack is lazily committed memory with a guard page below it. Where the kernel has
//! lightweight guard regions (Linux 6.13 and later) stacks are slots of shared mappings
//! (`slab.rs`): one mapping per 64 stacks, no `mprotect`, pages given back with
//! `MADV_DONTNEED`. Elsewhere each stack is `corosensei`'s own guarded mapping: one `mmap`
//! of `size + page` with the lowest page `PROT_NONE`, two memory mappings per stack.
//! Either way making a stack costs system calls, so finished coroutines hand their stack
//! back to a [`StackPool`] and the next coroutine reuses it. Allocation is fallible: when
//! the kernel refuses memory or a mapping (for example past `vm.max_map_count`) the caller
//! gets an `io::Error` and can refuse the work, where `corosensei::Coroutine::new` would
//! panic.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use corosensei::stack::valgrind::ValgrindStackRegistration;
use corosensei::stack::{DefaultStack, Stack as _, StackPointer};

use crate::slab::{self, Slot};

/// Memory mappings left to the rest of the process when stacks near `vm.max_map_count`:
/// past the limit even `malloc` fails, and the process aborts instead of refusing work.
const MAP_RESERVE: usize = 4096;

/// Stacks that exist now, in all pools of the process.
static STACKS: AtomicUsize = AtomicUsize::new(0);

/// Memory mappings those stacks hold: two per stack mapped on its own, one per slab.
static MAPPINGS: AtomicUsize = AtomicUsize::new(0);

/// Counts `n` more mappings against `vm.max_map_count`, or refuses.
pub(crate) fn reserve_mappings(n: usize) -> io::Result<()> {
    let held = MAPPINGS.fetch_add(n, Ordering::Relaxed) + n;
    if held + MAP_RESERVE > max_map_count() {
        MAPPINGS.fetch_sub(n, Ordering::Relaxed);
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "{} coroutine stacks hold {} memory mappings, near vm.max_map_count ({}); raise it to run more coroutines",
                STACKS.load(Ordering::Relaxed),
                held - n,
                max_map_count()
            ),
        ));
    }
    Ok(())
}

/// Gives back `n` mappings counted by [`reserve_mappings`].
pub(crate) fn release_mappings(n: usize) {
    MAPPINGS.fetch_sub(n, Ordering::Relaxed);
}

/// A coroutine stack: lazily committed memory with a guard page below it.
///
/// Counts itself against the process's map limit while it exists.
pub struct Stack {
    inner: Inner,
    /// A slot's registration with Valgrind (a no-op elsewhere), so that it takes switches
    /// onto and off this stack for what they are, not for frames pushed and popped
    /// (`DefaultStack` registers itself).
    valgrind: Option<ValgrindStackRegistration>,
}

enum Inner {
    /// A mapping of its own (kernels without guard regions).
    Mapped(DefaultStack),
    /// A slot of a shared mapping.
    Slot(Slot),
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("size", &usable_size(self))
            .field("shared_mapping", &matches!(self.inner, Inner::Slot(_)))
            .finish()
    }
}

impl Stack {
    /// Makes a stack of `size` usable bytes, rounded up to whole pages (plus its guard
    /// page).
    ///
    /// # Errors
    ///
    /// `OutOfMemory` when the stacks would hold so many memory mappings that the process
    /// could run out of them (`vm.max_map_count`, less a reserve of 4,096 for the rest of the
    /// process), `InvalidInput` for a size that does not fit the address space, or the error
    /// of `mmap`, `mprotect` or `madvise`.
    pub fn new(size: usize) -> io::Result<Stack> {
        let size = whole_pages(size.max(1))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "stack size too large"))?;
        let mut valgrind = None;
        let inner = match slab::allocate(size) {
            Some(slot) => {
                let slot = slot?;
                valgrind = Some(ValgrindStackRegistration::new(
                    slot.limit as *mut u8,
                    slot.top - slot.limit,
                ));
                Inner::Slot(slot)
            }
            None => {
                reserve_mappings(2)?;
                match DefaultStack::new(size) {
                    Ok(stack) => Inner::Mapped(stack),
                    Err(e) => {
                        release_mappings(2);
                        return Err(e);
                    }
                }
            }
        };
        STACKS.fetch_add(1, Ordering::Relaxed);
        Ok(Stack { inner, valgrind })
    }

    /// How many stacks exist in this process now.
    pub fn mapped() -> usize {
        STACKS.load(Ordering::Relaxed)
    }

    /// Whether new stacks are slots of shared mappings with lightweight guard regions
    /// (Linux 6.13 and later), rather than two mappings each. False on older kernels, and
    /// from the first stack made after the process locked its future mappings
    /// (`mlockall(MCL_FUTURE)`, which refuses guard regions). Makes and drops a stack to find
    /// out if none has been made yet.
    pub fn shares_mappings() -> bool {
        if !slab::known() {
            drop(Stack::new(MIN_STACK_SIZE));
        }
        slab::in_use()
    }

    /// The top of the stack (the state area included).
    #[inline]
    fn top(&self) -> usize {
        match &self.inner {
            Inner::Mapped(stack) => stack.base().get(),
            Inner::Slot(slot) => slot.top,
        }
    }
}

/// Gives back many stacks at once: slots of shared mappings in as few system calls as their
/// places allow (`slab::release_many`), the others one by one.
fn release_all(stacks: impl Iterator<Item = Stack>) {
    let mut slots = Vec::new();
    for mut stack in stacks {
        // Deregistered here: the `Stack` itself is forgotten below.
        drop(stack.valgrind.take());
        match &stack.inner {
            Inner::Slot(slot) => {
                // The copy takes over the release, so the `Stack` must not run its own.
                slots.push(Slot {
                    limit: slot.limit,
                    top: slot.top,
                });
                let _ = std::mem::ManuallyDrop::new(stack);
                STACKS.fetch_sub(1, Ordering::Relaxed);
            }
            Inner::Mapped(_) => drop(stack),
        }
    }
    slab::release_many(&mut slots);
}

impl Drop for Stack {
    fn drop(&mut self) {
        STACKS.fetch_sub(1, Ordering::Relaxed);
        match &self.inner {
            // `DefaultStack` unmaps itself.
            Inner::Mapped(_) => release_mappings(2),
            Inner::Slot(slot) => slab::release(slot),
        }
    }
}

/// Bytes at the top of every stack kept out of the frames' reach: the running coroutine's
/// own state lives there (see `Coro`), on the page its first frames use, instead of in a
/// heap allocation of its own. A multiple of the cache line, so the frames start on one.
pub(crate) const STATE_AREA: usize = 256;

impl Stack {
    /// The reserved area above [`corosensei::stack::Stack::base`]: `STATE_AREA` bytes,
    /// page-aligned at their top, mapped and writable as long as this `Stack` is.
    #[inline]
    pub(crate) fn state_area(&self) -> *mut u8 {
        (self.top() - STATE_AREA) as *mut u8
    }
}

// SAFETY: base and limit describe memory that lives as long as the `Stack`: either
// `DefaultStack`'s mapping (the guard page included in the limit, as the trait requires) or
// a slab slot, whose guard page is at its limit and whose stack is mapped read-write above
// it until the slot is released in `drop`. The base is the page-aligned top lowered by
// `STATE_AREA`, which keeps it 16-byte aligned and inside the memory.
unsafe impl corosensei::stack::Stack for Stack {
    #[inline]
    fn base(&self) -> StackPointer {
        // The top is a page boundary at least a page (of stack) above the guard, so this is
        // above the limit and never zero. (A fallback to the top would put the frames over
        // the state.)
        StackPointer::new(self.top() - STATE_AREA).expect("a stack is larger than its state area")
    }

    #[inline]
    fn limit(&self) -> StackPointer {
        match &self.inner {
            Inner::Mapped(stack) => stack.limit(),
            Inner::Slot(slot) => {
                StackPointer::new(slot.limit).expect("a mapped slot is not at address zero")
            }
        }
    }
}

/// `vm.max_map_count`, read once (65,530, Linux's default, if it cannot be read).
fn max_map_count() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(65_530)
    })
}

/// The default usable size of a coroutine stack: 256 KiB.
///
/// Only touched pages cost memory. The size leaves room for a panic that prints a backtrace
/// (which needs more than 16 KiB) and for TLS handshakes (8–16 KiB), because an overflow
/// aborts the process.
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;

/// The smallest stack size a [`StackPool`] hands out: 16 KiB. Smaller requests are rounded up.
///
/// At this size a panic with `RUST_BACKTRACE=1` overflows; use it only for coroutines known
/// to need little stack.
pub const MIN_STACK_SIZE: usize = 16 * 1024;

/// A bounded pool of reusable coroutine stacks of one size.
///
/// Stacks beyond the bound are given back either at once ([`recycle`](StackPool::recycle))
/// or when the owner chooses ([`retire`](StackPool::retire), then
/// [`trim`](StackPool::trim)): giving one back takes
/// 2–4 µs (`MADV_DONTNEED` of a shared mapping's slot) or 6–10 µs (`munmap` of a stack's own
/// mapping, after which the kernel frees the mapping's records in a thread that may preempt
/// this one), measured here, so a scheduler does it when nothing is due; `trim` gives back
/// neighbouring slots in one call, about 0.5 µs each.
///
/// # Example
///
/// ```
/// let mut pool = copas_coro::StackPool::new(64 * 1024, 2);
/// let a = pool.allocate().unwrap();
/// let b = pool.allocate().unwrap();
/// let c = pool.allocate().unwrap();
/// pool.recycle(a);
/// pool.recycle(b);
/// pool.recycle(c); // over the bound of 2: given back
/// assert_eq!(pool.idle(), 2);
/// ```
pub struct StackPool {
    size: usize,
    max_idle: usize,
    /// Most recently pooled at the back: handed out first (its lines may still be cached),
    /// while the front, the coldest, is what trimming gives back.
    idle: VecDeque<Stack>,
}

impl std::fmt::Debug for StackPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackPool")
            .field("size", &self.size)
            .field("max_idle", &self.max_idle)
            .field("idle", &self.idle.len())
            .finish()
    }
}

impl Drop for StackPool {
    fn drop(&mut self) {
        release_all(self.idle.drain(..));
    }
}

impl StackPool {
    /// A pool of stacks of `size` usable bytes (rounded up to whole pages, at least
    /// [`MIN_STACK_SIZE`]) that keeps at most `max_idle` unused stacks mapped.
    pub fn new(size: usize, max_idle: usize) -> StackPool {
        StackPool {
            size: round_size(size),
            max_idle,
            idle: VecDeque::new(),
        }
    }

    /// A stack from the pool, or a freshly mapped one when the pool is empty.
    ///
    /// # Errors
    ///
    /// As [`Stack::new`]: `OutOfMemory` near `vm.max_map_count`, or the error of `mmap`.
    pub fn allocate(&mut self) -> io::Result<Stack> {
        match self.idle.pop_back() {
            Some(stack) => Ok(stack),
            None => Stack::new(self.size),
        }
    }

    /// Returns a stack to the pool. A stack of another size, or one beyond the pool's bound,
    /// is given back to the kernel instead.
    pub fn recycle(&mut self, stack: Stack) {
        if self.idle.len() < self.max_idle && usable_size(&stack) == self.size {
            self.idle.push_back(stack);
        }
    }

    /// Returns a stack to the pool even beyond its bound; what is beyond it (the
    /// [`surplus`](StackPool::surplus)) stays mapped, and is handed out again, until
    /// [`trim`](StackPool::trim) gives it back. A stack of another size is given back
    /// at once.
    pub fn retire(&mut self, stack: Stack) {
        if usable_size(&stack) == self.size {
            self.idle.push_back(stack);
        }
    }

    /// How many idle stacks the pool holds beyond its bound.
    pub fn surplus(&self) -> usize {
        self.idle.len().saturating_sub(self.max_idle)
    }

    /// Gives back up to `max` of the least recently pooled idle stacks beyond the pool's
    /// bound, together: neighbouring stacks' memory in one system call, a shared mapping left
    /// with no stack in use unmapped whole. Returns how many went.
    pub fn trim(&mut self, max: usize) -> usize {
        let n = self.surplus().min(max);
        if n > 0 {
            release_all(self.idle.drain(..n));
            // The list itself, grown for the surplus, goes with it (at twice what is left,
            // so refilling to the bound does not grow it again at once): the rule the
            // dispatcher's `shrink_table` applies to its own tables.
            let left = self.idle.len();
            if self.surplus() == 0 && self.idle.capacity() > 64 && self.idle.capacity() / 4 > left {
                self.idle.shrink_to(2 * left);
            }
        }
        n
    }

    /// The usable size of the stacks this pool hands out.
    pub fn stack_size(&self) -> usize {
        self.size
    }

    /// Changes the size of stacks handed out from now on; idle stacks of the old size are
    /// given back.
    pub fn set_stack_size(&mut self, size: usize) {
        let size = round_size(size);
        if size != self.size {
            self.size = size;
            release_all(self.idle.drain(..));
        }
    }

    /// How many unused stacks the pool keeps at most.
    pub fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// Changes the bound on unused stacks, giving back any beyond it.
    pub fn set_max_idle(&mut self, max_idle: usize) {
        self.max_idle = max_idle;
        self.trim(usize::MAX);
    }

    /// How many unused stacks the pool holds now.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions; _SC_PAGESIZE is always supported on Unix.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as usize } else { 4096 };
    PAGE.store(page, Ordering::Relaxed);
    page
}

fn round_size(size: usize) -> usize {
    // A size beyond the address space stays beyond it (allocating then fails), never wraps.
    whole_pages(size.max(MIN_STACK_SIZE)).unwrap_or(usize::MAX - (page_size() - 1))
}

/// `size` rounded up to whole pages, `None` when that and a guard page would not fit the
/// address space.
fn whole_pages(size: usize) -> Option<usize> {
    let page = page_size();
    size.checked_next_multiple_of(page)
        .filter(|s| s.checked_add(page).is_some())
}

/// The stack's size as asked of the pool: from the guard page to the top, the state area
/// included (frames get `STATE_AREA` bytes less).
pub(crate) fn usable_size(stack: &Stack) -> usize {
    stack.top() - stack.limit().get() - page_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_rounded_to_pages_and_floored() {
        let pool = StackPool::new(1, 4);
        assert_eq!(pool.stack_size(), MIN_STACK_SIZE);
        let pool = StackPool::new(MIN_STACK_SIZE + 1, 4);
        assert_eq!(pool.stack_size(), MIN_STACK_SIZE + page_size());
    }

    #[test]
    fn a_size_beyond_the_address_space_is_refused_not_wrapped() {
        let mut pool = StackPool::new(usize::MAX, 1);
        assert!(pool.stack_size() > usize::MAX / 2);
        let e = pool.allocate().expect_err("no such stack");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    #[test]
    fn allocated_stack_has_the_configured_usable_size() {
        let mut pool = StackPool::new(128 * 1024, 4);
        let stack = pool.allocate().unwrap();
        assert_eq!(usable_size(&stack), 128 * 1024);
    }

    #[test]
    fn recycled_stack_is_reused_and_pool_is_bounded() {
        let mut pool = StackPool::new(64 * 1024, 1);
        let a = pool.allocate().unwrap();
        let base = a.base();
        let b = pool.allocate().unwrap();
        pool.recycle(a);
        pool.recycle(b);
        assert_eq!(pool.idle(), 1);
        assert_eq!(pool.allocate().unwrap().base(), base);
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn trim_gives_back_at_most_the_surplus_coldest_first() {
        let mut pool = StackPool::new(64 * 1024 + page_size(), 2);
        let stacks: Vec<Stack> = (0..6).map(|_| pool.allocate().unwrap()).collect();
        let bases: Vec<_> = stacks.iter().map(|s| s.base()).collect();
        for s in stacks {
            pool.retire(s);
        }
        assert_eq!(pool.trim(3), 3);
        assert_eq!((pool.idle(), pool.surplus()), (3, 1));
        assert_eq!(pool.trim(usize::MAX), 1);
        assert_eq!(pool.trim(usize::MAX), 0, "the bound itself is kept");
        // The most recently pooled are kept.
        let kept: Vec<_> = (0..2).map(|_| pool.allocate().unwrap().base()).collect();
        assert_eq!(kept, [bases[5], bases[4]]);
    }

    #[test]
    fn retired_stacks_beyond_the_bound_stay_until_trimmed_coldest_first() {
        let mut pool = StackPool::new(64 * 1024, 1);
        let stacks: Vec<Stack> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        let bases: Vec<_> = stacks.iter().map(|s| s.base()).collect();
        for s in stacks {
            pool.retire(s);
        }
        assert_eq!((pool.idle(), pool.surplus()), (3, 2));
        assert_eq!(pool.trim(1), 1);
        assert_eq!(pool.trim(1), 1);
        assert_eq!(pool.trim(1), 0, "the bound itself is kept");
        assert_eq!(pool.idle(), 1);
        assert_eq!(
            pool.allocate().unwrap().base(),
            bases[2],
            "the most recently retired stack is the one kept"
        );
        pool.retire(Stack::new(128 * 1024).unwrap());
        assert_eq!(pool.idle(), 0, "a stack of another size is not pooled");
    }

    #[test]
    fn changing_size_drops_idle_stacks_of_the_old_size() {
        let mut pool = StackPool::new(64 * 1024, 4);
        let a = pool.allocate().unwrap();
        pool.recycle(a);
        pool.set_stack_size(128 * 1024);
        assert_eq!(pool.idle(), 0);
        let old = Stack::new(64 * 1024).unwrap();
        pool.recycle(old);
        assert_eq!(pool.idle(), 0, "a stack of another size is not pooled");
    }
}
