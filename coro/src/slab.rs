//! Stacks carved from shared mappings, each guarded by a lightweight guard region.
//!
//! A stack mapped on its own is two memory mappings, because its `PROT_NONE` guard page
//! splits the mapping: Linux's default `vm.max_map_count` (65,530) then caps a process near
//! 32,000 coroutines, and each stack costs an `mmap` and an `mprotect`, and later a `munmap`
//! (creating one took 9–14 µs here, giving one back 6–10 µs, both more as the process's
//! mappings grow). Since Linux
//! 6.13, `madvise(MADV_GUARD_INSTALL)` makes pages fault like `PROT_NONE` ones through
//! markers in the page tables, which split nothing. So here one mapping, a *slab*, holds up
//! to 64 slots, each a guard page with a stack above it; a slot's guard is installed when it
//! is first handed out, a finished stack's pages go back to the kernel with `MADV_DONTNEED`
//! (guard regions survive it), and the slab is unmapped with its last stack.
//!
//! Kernels without guard regions answer `EINVAL` to the first one (and a sandbox filtering
//! `madvise` may refuse it otherwise); from then on the process maps each stack on its own
//! (`stack.rs`), as before. So does a process whose new mappings are locked
//! (`mlockall(MCL_FUTURE)`), which the kernel also answers with `EINVAL`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::stack::{page_size, release_mappings, reserve_mappings};

/// `MADV_GUARD_INSTALL` (Linux `<asm-generic/mman-common.h>`; the `libc` crate lacks it).
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// Most slots in one slab: a slab's free slots are the bits of a `u64`.
const MAX_SLOTS: usize = 64;

/// The address space a slab aims at: fewer slots when stacks are large, never fewer than one.
const SLAB_TARGET: usize = 16 << 20;

/// Whether this kernel has guard regions; unknown until the first slab tries one.
static SUPPORT: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const SUPPORTED: u8 = 1;
const UNSUPPORTED: u8 = 2;

/// One mapping of `slots` slots of `slot` bytes each (a guard page, then the stack).
struct Slab {
    slot: usize,
    slots: usize,
    /// Bit `i`: slot `i` is not handed out.
    free: u64,
    /// Bit `i`: slot `i`'s guard is installed (it stays installed until the slab goes).
    guarded: u64,
}

impl Slab {
    fn all_free(&self) -> u64 {
        if self.slots == MAX_SLOTS {
            u64::MAX
        } else {
            (1 << self.slots) - 1
        }
    }
}

/// The process's slabs. Stacks are handed out and given back rarely (a pool in front of
/// this keeps finished coroutines' stacks for reuse), so one lock serves every thread.
struct Slabs {
    /// Every slab, by its start address.
    all: BTreeMap<usize, Slab>,
    /// The slabs with a free slot, by slot size and then start address: the lowest goes
    /// first, so stacks pack into few slabs and the others can empty and be unmapped.
    with_room: BTreeSet<(usize, usize)>,
}

static SLABS: Mutex<Slabs> = Mutex::new(Slabs {
    all: BTreeMap::new(),
    with_room: BTreeSet::new(),
});

impl Slabs {
    /// Takes the slab at `start` out of the tables; its length, for [`unmap`].
    fn remove(&mut self, start: usize) -> Option<usize> {
        let slab = self.all.remove(&start)?;
        self.with_room.remove(&(slab.slot, start));
        Some(slab.slots * slab.slot)
    }
}

/// Unmaps a slab that [`Slabs::remove`] took out of the tables (or that never went in), with
/// none of its slots handed out.
fn unmap(start: usize, len: usize) {
    // SAFETY: a whole slab this module mapped, out of the tables, no slot of it in use.
    unsafe { libc::munmap(start as *mut libc::c_void, len) };
    release_mappings(1);
}

fn slabs() -> MutexGuard<'static, Slabs> {
    // Nothing panics while holding the lock; a poisoned one still holds consistent tables.
    SLABS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stack slot: its guard page starts at `limit`, its stack ends at `top`.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) limit: usize,
    pub(crate) top: usize,
}

/// Whether stacks come from slabs (known once the first stack has been made).
pub(crate) fn in_use() -> bool {
    SUPPORT.load(Ordering::Relaxed) == SUPPORTED
}

/// Whether the first guard has told if the kernel has guard regions.
pub(crate) fn known() -> bool {
    SUPPORT.load(Ordering::Relaxed) != UNKNOWN
}

/// A slot for a stack of `size` usable bytes (a multiple of the page size), or `None` when
/// this kernel has no guard regions and stacks must be mapped on their own.
pub(crate) fn allocate(size: usize) -> Option<io::Result<Slot>> {
    if SUPPORT.load(Ordering::Relaxed) == UNSUPPORTED {
        return None;
    }
    let page = page_size();
    let slot = size + page;
    let mut slabs = slabs();
    let start = match slabs.with_room.range((slot, 0)..(slot + 1, 0)).next() {
        Some(&(_, start)) => start,
        None => match new_slab(&mut slabs, slot) {
            Ok(start) => start,
            // A slab reserves 64 stacks' address space at once; under a tight
            // `RLIMIT_AS` one stack's worth may still be had: map this one on its own.
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => return None,
            Err(e) => return Some(Err(e)),
        },
    };
    let Some(slab) = slabs.all.get_mut(&start) else {
        return Some(Err(io::Error::other("stack slab tables out of step")));
    };
    let index = slab.free.trailing_zeros() as usize;
    let limit = start + index * slot;
    if slab.guarded & (1 << index) == 0 {
        if let Err(e) = install_guard(limit) {
            // The first guard tells whether the kernel has guard regions: `EINVAL` before
            // Linux 6.13, and a sandbox filtering `madvise` may refuse it otherwise. A later
            // `EINVAL` or `EPERM` means this mapping takes none: the process locked its
            // memory (`mlockall(MCL_FUTURE)` locks every new mapping, and locked mappings
            // take no guard regions). Either way stacks get mappings of their own from now
            // on, and this slab goes if it has none out.
            let first = SUPPORT.load(Ordering::Relaxed) == UNKNOWN;
            if !first && !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) {
                return Some(Err(e));
            }
            SUPPORT.store(UNSUPPORTED, Ordering::Relaxed);
            if slab.free == slab.all_free() {
                if let Some(len) = slabs.remove(start) {
                    unmap(start, len);
                }
            }
            return None;
        }
        slab.guarded |= 1 << index;
        SUPPORT.store(SUPPORTED, Ordering::Relaxed);
    }
    slab.free &= !(1 << index);
    if slab.free == 0 {
        slabs.with_room.remove(&(slot, start));
    }
    Some(Ok(Slot {
        limit,
        top: limit + slot,
    }))
}

/// Gives a slot back: its pages to the kernel, the slot to its slab, and the slab's mapping
/// too if it was the last one handed out (then without giving the pages back first).
pub(crate) fn release(slot: &Slot) {
    release_many(&mut [Slot {
        limit: slot.limit,
        top: slot.top,
    }]);
}

/// Gives many slots back at once ([`release`] for each, in fewer system calls): a slab none
/// of whose slots stays out is unmapped without first giving its pages back, and the pages
/// of neighbouring slots of one slab go back in one `MADV_DONTNEED` (the guard pages between
/// them survive it). Measured here: 2.5–2.8 µs per slot one by one, 0.5 µs per slot over a
/// whole slab.
pub(crate) fn release_many(slots: &mut [Slot]) {
    if slots.is_empty() {
        return;
    }
    slots.sort_unstable_by_key(|s| s.limit);
    let page = page_size();
    // Per slab with slots staying out: its start and the slots to mark free once their
    // pages are back; and the ranges to give back.
    let mut to_free: Vec<(usize, u64)> = Vec::new();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut emptied: Vec<(usize, usize)> = Vec::new();
    {
        let mut slabs = slabs();
        let mut i = 0;
        while i < slots.len() {
            let Some((&start, slab)) = slabs.all.range(..=slots[i].limit).next_back() else {
                i += 1; // not a slot of any slab: cannot happen
                continue;
            };
            let (size, count, out) = (slab.slot, slab.slots, slab.all_free() & !slab.free);
            let end = start + count * size;
            let group_end = i + slots[i..].iter().take_while(|s| s.limit < end).count();
            if group_end == i {
                i += 1; // not a slot of this slab: cannot happen
                continue;
            }
            let bits = slots[i..group_end]
                .iter()
                .fold(0u64, |bits, s| bits | 1 << ((s.limit - start) / size));
            if bits == out {
                // Nothing of it stays out: no page needs giving back before the unmap.
                if let Some(len) = slabs.remove(start) {
                    emptied.push((start, len));
                }
            } else {
                to_free.push((start, bits));
                for s in &slots[i..group_end] {
                    match ranges.last_mut() {
                        Some(last) if last.1 == s.limit => last.1 = s.top,
                        _ => ranges.push((s.limit + page, s.top)),
                    }
                }
            }
            i = group_end;
        }
    }
    for (start, len) in emptied {
        unmap(start, len);
    }
    for (from, to) in ranges {
        // SAFETY: stack pages of slots handed out and no longer used (their `Stack`s are
        // gone), in slabs that stay mapped while those slots are out; the guard pages a
        // range spans survive `MADV_DONTNEED`.
        unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
    }
    let mut unmaps = Vec::new();
    {
        let mut slabs = slabs();
        for (start, bits) in to_free {
            let Some(slab) = slabs.all.get_mut(&start) else {
                continue; // a slab stays while slots of it are out: cannot happen
            };
            slab.free |= bits;
            let (size, all_free) = (slab.slot, slab.free == slab.all_free());
            if all_free {
                // Other threads gave back the rest meanwhile.
                if let Some(len) = slabs.remove(start) {
                    unmaps.push((start, len));
                }
            } else {
                slabs.with_room.insert((size, start));
            }
        }
    }
    for (start, len) in unmaps {
        unmap(start, len);
    }
}

/// Maps a slab of `slot`-byte slots and enters it in the tables.
fn new_slab(slabs: &mut Slabs, slot: usize) -> io::Result<usize> {
    let slots = (SLAB_TARGET / slot).clamp(1, MAX_SLOTS);
    let len = slots
        .checked_mul(slot)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "stack size too large"))?;
    reserve_mappings(1)?;
    // MAP_NORESERVE: like any stack, committed page by page as it is touched.
    // SAFETY: a fresh anonymous private mapping at an address of the kernel's choosing.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        release_mappings(1);
        return Err(io::Error::last_os_error());
    }
    // A huge page would commit 2 MiB where a stack touches a page or two. Advice only.
    // SAFETY: the range is the mapping just made.
    unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
    let start = addr as usize;
    let mut slab = Slab {
        slot,
        slots,
        free: 0,
        guarded: 0,
    };
    slab.free = slab.all_free();
    slabs.all.insert(start, slab);
    slabs.with_room.insert((slot, start));
    Ok(start)
}

/// Makes the page at `addr` fault on any access.
fn install_guard(addr: usize) -> io::Result<()> {
    // SAFETY: `addr` is a page inside a slab this module mapped, not handed out as stack.
    let ret = unsafe { libc::madvise(addr as *mut libc::c_void, page_size(), MADV_GUARD_INSTALL) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The start of every mapped slab of `slot`-byte slots (for tests, which use a slot size of
/// their own so that other tests do not interfere).
#[cfg(test)]
pub(crate) fn slabs_of(slot: usize) -> Vec<usize> {
    slabs()
        .all
        .iter()
        .filter(|(_, s)| s.slot == slot)
        .map(|(&start, _)| start)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{Stack, MIN_STACK_SIZE};
    use corosensei::stack::Stack as _;

    /// Whether the running kernel is Linux 6.13 or later, which has guard regions.
    fn kernel_has_guard_regions() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (6, 13)
    }

    /// `(start, end)` of every mapping of this process.
    fn mappings() -> Vec<(usize, usize)> {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|line| {
                let range = line.split_whitespace().next()?;
                let (a, b) = range.split_once('-')?;
                Some((
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                ))
            })
            .collect()
    }

    #[test]
    fn many_stacks_share_few_mappings_where_the_kernel_has_guard_regions() {
        // A size no other test uses: the slabs counted here are this test's alone.
        let size = MIN_STACK_SIZE + 5 * page_size();
        let before = mappings().len();
        let stacks: Vec<Stack> = (0..1000).map(|_| Stack::new(size).unwrap()).collect();
        let grown = mappings().len().saturating_sub(before);
        if !kernel_has_guard_regions() {
            assert!(!Stack::shares_mappings());
            assert!(grown >= 1000, "two mappings per stack: {grown} for 1,000");
            return;
        }
        assert!(Stack::shares_mappings(), "Linux >= 6.13 has guard regions");
        let slabs = slabs_of(size + page_size());
        assert_eq!(slabs.len(), 1000_usize.div_ceil(MAX_SLOTS), "{slabs:x?}");
        // Other tests map memory meanwhile; 1,000 stacks on their own would be 2,000.
        assert!(grown < 100, "1,000 stacks added {grown} mappings");
        // Every stack lies in one mapping with others.
        let maps = mappings();
        for stack in &stacks {
            let (limit, top) = (stack.limit().get(), stack.base().get());
            let holder = maps.iter().find(|(a, b)| *a <= limit && top <= *b);
            assert!(holder.is_some(), "no mapping holds {limit:#x}..{top:#x}");
        }
        drop(stacks);
        assert!(
            slabs_of(size + page_size()).is_empty(),
            "each slab went with its last stack"
        );
    }

    /// Whether the kernel faults on reading `addr` (a guard page), through `write(2)` from it
    /// into a pipe: `EFAULT` instead of the process's `SIGSEGV`.
    fn faults(addr: usize) -> bool {
        let mut fds = [0; 2];
        // SAFETY: `pipe` writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the kernel checks the source address; a bad one gives `EFAULT`.
        let n = unsafe { libc::write(fds[1], addr as *const libc::c_void, 1) };
        let err = std::io::Error::last_os_error().raw_os_error();
        // SAFETY: both descriptors are this function's, closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        n < 0 && err == Some(libc::EFAULT)
    }

    /// Whether the page at `addr` is in memory.
    fn resident(addr: usize) -> bool {
        let mut vec = [0u8; 1];
        // SAFETY: one page-aligned page of a live mapping; `mincore` writes one byte.
        let r = unsafe { libc::mincore(addr as *mut libc::c_void, page_size(), vec.as_mut_ptr()) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        vec[0] & 1 == 1
    }

    #[test]
    fn stacks_given_back_together_return_their_memory_and_keep_their_guards() {
        const NAME: &str =
            "slab::tests::stacks_given_back_together_return_their_memory_and_keep_their_guards";
        if !kernel_has_guard_regions() {
            return;
        }
        // Its last check reads the process's memory map, where another test's thread stack or
        // mapping may take the slab's range the moment it is freed: in a child, alone.
        if !in_child_process(NAME) {
            return;
        }
        // A size no other test uses: the slab here is this test's alone.
        let size = MIN_STACK_SIZE + 11 * page_size();
        let slot = size + page_size();
        let mut pool = crate::stack::StackPool::new(size, 0);
        let stacks: Vec<Stack> = (0..10).map(|_| pool.allocate().unwrap()).collect();
        let slabs = slabs_of(slot);
        assert_eq!(slabs.len(), 1, "{slabs:x?}");
        let limits: Vec<usize> = stacks.iter().map(|s| s.limit().get()).collect();
        let bases: Vec<usize> = stacks.iter().map(|s| s.base().get()).collect();
        for (i, pair) in limits.windows(2).enumerate() {
            assert_eq!(
                pair[1] - pair[0],
                slot,
                "slots {i} and {} are neighbours",
                i + 1
            );
        }
        let top_page = |limit: usize| limit + slot - page_size();
        for stack in &stacks {
            // SAFETY: 8 bytes below the base, inside the stack's memory, only this test's.
            unsafe { ((stack.base().get() - 8) as *mut u64).write_volatile(7) };
        }
        assert!(limits.iter().all(|&l| resident(top_page(l))));
        // Keep slots 0, 5 and 9 out: 1–4 and 6–8 go back in two ranges, spanning the guard
        // pages between them, and the slab stays.
        const KEPT: [usize; 3] = [0, 5, 9];
        let (kept, given): (Vec<_>, Vec<_>) = stacks
            .into_iter()
            .enumerate()
            .partition(|(i, _)| KEPT.contains(i));
        for (_, stack) in given {
            pool.retire(stack);
        }
        assert_eq!(pool.trim(usize::MAX), 7);
        assert_eq!(
            slabs_of(slot),
            slabs,
            "the slab stays while stacks of it are out"
        );
        for (i, &limit) in limits.iter().enumerate() {
            if KEPT.contains(&i) {
                assert!(resident(top_page(limit)), "slot {i} kept its memory");
                // SAFETY: as above; the stack is still out.
                let v = unsafe { ((bases[i] - 8) as *const u64).read_volatile() };
                assert_eq!(v, 7, "slot {i} kept its contents");
                continue;
            }
            assert!(!resident(top_page(limit)), "slot {i}: memory given back");
            assert!(faults(limit), "slot {i}: the guard survived");
            assert!(
                !faults(limit + page_size()),
                "slot {i}: the stack is mapped"
            );
        }
        // The slots are handed out again, zeroed.
        let again: Vec<Stack> = (0..7).map(|_| pool.allocate().unwrap()).collect();
        let mut reused: Vec<usize> = again.iter().map(|s| s.limit().get()).collect();
        reused.sort_unstable();
        let given_limits: Vec<usize> = (0..10)
            .filter(|i| !KEPT.contains(i))
            .map(|i| limits[i])
            .collect();
        assert_eq!(reused, given_limits);
        for stack in &again {
            // SAFETY: as above.
            let v = unsafe { ((stack.base().get() - 8) as *const u64).read_volatile() };
            assert_eq!(v, 0, "a slot handed out again starts zeroed");
        }
        // All ten together: the slab goes whole.
        for stack in again.into_iter().chain(kept.into_iter().map(|(_, s)| s)) {
            pool.retire(stack);
        }
        assert_eq!(pool.trim(usize::MAX), 10);
        assert!(
            slabs_of(slot).is_empty(),
            "the slab went with its last stacks"
        );
        assert!(
            !mappings()
                .iter()
                .any(|&(a, b)| a <= slabs[0] && slabs[0] < b),
            "the slab is unmapped"
        );
    }

    /// Names the test a child process was started to run (see [`in_child_process`]).
    const CHILD_ENV: &str = "COPAS_CORO_TEST_CHILD";

    /// For a test of what changes the whole process: true in the child process started to
    /// run the test `name` alone; in the test process, runs that child, fails if it fails,
    /// and returns false.
    fn in_child_process(name: &str) -> bool {
        if std::env::var_os(CHILD_ENV).is_some_and(|v| v == name) {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(CHILD_ENV, name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed: {}\n{stdout}\n{stderr}",
            out.status
        );
        false
    }

    /// Checks that each stack's guard page starts a `PROT_NONE` mapping of its own (how a
    /// stack is guarded when it does not come from a slab).
    fn assert_guards_are_mappings_of_their_own<'a>(stacks: impl IntoIterator<Item = &'a Stack>) {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for stack in stacks {
            let guard = stack.limit().get();
            let line = maps
                .lines()
                .find(|l| l.starts_with(&format!("{guard:x}-")))
                .unwrap_or_else(|| panic!("no mapping starts at the guard {guard:#x}"));
            assert!(line.contains(" ---p "), "the guard is PROT_NONE: {line}");
        }
    }

    #[test]
    fn without_guard_regions_each_stack_is_a_guarded_mapping_of_its_own() {
        const NAME: &str =
            "slab::tests::without_guard_regions_each_stack_is_a_guarded_mapping_of_its_own";
        // What a kernel without guard regions does is process-wide: try it in a child.
        if !in_child_process(NAME) {
            return;
        }
        // As if the first guard region had been refused with EINVAL.
        SUPPORT.store(UNSUPPORTED, Ordering::Relaxed);
        let size = MIN_STACK_SIZE + 7 * page_size();
        let before = mappings().len();
        let stacks: Vec<Stack> = (0..10).map(|_| Stack::new(size).unwrap()).collect();
        assert!(!Stack::shares_mappings());
        assert!(slabs_of(size + page_size()).is_empty());
        assert!(mappings().len() >= before + 20, "two mappings per stack");
        assert_guards_are_mappings_of_their_own(&stacks);
    }

    #[test]
    fn stacks_made_and_dropped_on_several_threads_never_overlap() {
        const THREADS: usize = 4;
        const STACKS: usize = 300;
        const ROUNDS: u64 = 3;
        let size = MIN_STACK_SIZE + 8 * page_size();
        let barrier = std::sync::Barrier::new(THREADS);
        // Per round, every live stack's range; and what each thread found wrong. Threads
        // record rather than panic: a panicking thread would leave the others at a barrier.
        let ranges = std::sync::Mutex::new(vec![Vec::new(); ROUNDS as usize]);
        let wrong = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (barrier, ranges, wrong) = (&barrier, &ranges, &wrong);
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        let stacks: Vec<Stack> =
                            (0..STACKS).filter_map(|_| Stack::new(size).ok()).collect();
                        let marker = (t as u64) << 32 | round;
                        for stack in &stacks {
                            let at = (stack.base().get() - 8) as *mut u64;
                            // SAFETY: 8 bytes below the base, inside the stack's memory, which
                            // no coroutine uses and only this thread holds.
                            unsafe { at.write_volatile(marker) };
                        }
                        ranges.lock().unwrap()[round as usize]
                            .extend(stacks.iter().map(|s| (s.limit().get(), s.base().get())));
                        // Every thread's stacks are alive and marked here.
                        barrier.wait();
                        let clobbered = stacks
                            .iter()
                            .filter(|s| {
                                let at = (s.base().get() - 8) as *const u64;
                                // SAFETY: as above.
                                unsafe { at.read_volatile() != marker }
                            })
                            .count();
                        if clobbered > 0 || stacks.len() < STACKS {
                            wrong.lock().unwrap().push(format!(
                                "thread {t} round {round}: {clobbered} stacks written by another \
                                 thread, {} of {STACKS} made",
                                stacks.len()
                            ));
                        }
                        barrier.wait();
                    }
                });
            }
        });
        let wrong = wrong.into_inner().unwrap();
        assert!(wrong.is_empty(), "{wrong:#?}");
        for (round, mut all) in ranges.into_inner().unwrap().into_iter().enumerate() {
            assert_eq!(all.len(), THREADS * STACKS);
            all.sort_unstable();
            for pair in all.windows(2) {
                assert!(pair[0].1 <= pair[1].0, "round {round}, overlap: {pair:x?}");
            }
        }
        assert!(slabs_of(size + page_size()).is_empty(), "every slab went");
    }

    #[test]
    fn after_mlockall_new_stacks_get_mappings_of_their_own() {
        const NAME: &str = "slab::tests::after_mlockall_new_stacks_get_mappings_of_their_own";
        // Locking is process-wide: try it in a child.
        if !in_child_process(NAME) {
            return;
        }
        let size = MIN_STACK_SIZE + 9 * page_size();
        let before = Stack::new(size).unwrap();
        let shared = Stack::shares_mappings();
        // SAFETY: mlockall has no memory-safety preconditions.
        if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
            // Without CAP_IPC_LOCK and a large RLIMIT_MEMLOCK there is nothing to see.
            // SAFETY: geteuid has no preconditions.
            assert_ne!(unsafe { libc::geteuid() }, 0, "mlockall failed as root");
            println!("mlockall refused for this user: not tested");
            return;
        }
        let after: Vec<Stack> = (0..5).map(|_| Stack::new(size).unwrap()).collect();
        if shared {
            assert!(!Stack::shares_mappings(), "stacks left the slabs");
            assert_eq!(
                slabs_of(size + page_size()).len(),
                1,
                "the first stack's slab stays"
            );
        }
        drop(before);
        assert!(slabs_of(size + page_size()).is_empty());
        drop(after);
        // SAFETY: as above.
        unsafe { libc::munlockall() };
    }

    /// Makes this thread's `madvise(_, _, MADV_GUARD_INSTALL)` fail with `errno`, as a
    /// sandbox's seccomp filter may, whatever the kernel supports; every other call is let
    /// through. False when this kernel has no seccomp filters (`EINVAL`).
    #[cfg(target_arch = "x86_64")]
    fn refuse_guard_regions_with(errno: i32) -> bool {
        const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
        // Offsets into `struct seccomp_data`: nr, arch, then six 64-bit arguments (the
        // advice is the third; its low half comes first on this little-endian machine).
        const NR: u32 = 0;
        const ARCH: u32 = 4;
        const ARG2_LOW: u32 = 16 + 2 * 8;
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let ret = libc::BPF_RET | libc::BPF_K;
        let mut filter = [
            stmt(load, ARCH),
            jeq(AUDIT_ARCH_X86_64, 1, 0),
            stmt(ret, libc::SECCOMP_RET_ALLOW),
            stmt(load, NR),
            jeq(libc::SYS_madvise as u32, 0, 3),
            stmt(load, ARG2_LOW),
            jeq(MADV_GUARD_INSTALL as u32, 0, 1),
            stmt(ret, libc::SECCOMP_RET_ERRNO | errno as u32),
            stmt(ret, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: prctl with plain integer arguments; then with a pointer to a filter program
        // that lives across the call (the kernel copies it).
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            ) == 0
            {
                return true;
            }
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "seccomp filter: {e}");
        false
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_sandbox_refusing_the_first_guard_region_leaves_stacks_on_mappings_of_their_own() {
        const NAME: &str = "slab::tests::a_sandbox_refusing_the_first_guard_region_leaves_stacks_on_mappings_of_their_own";
        // A seccomp filter stays with the process: try it in a child.
        if !in_child_process(NAME) {
            return;
        }
        assert!(!known(), "no stack was made before the filter");
        // Neither EINVAL (no guard regions) nor EPERM (locked memory): what a filter says.
        if !refuse_guard_regions_with(libc::ENOSYS) {
            println!("this kernel has no seccomp filters: not tested");
            return;
        }
        let size = MIN_STACK_SIZE + 10 * page_size();
        let probe = Stack::new(size).expect("a stack despite the refused guard region");
        // The filter did refuse: the fallback was taken, not the guard installed.
        // SAFETY: advice on a page of a mapping this test owns; refused by the filter.
        let refused = unsafe {
            libc::madvise(
                (probe.base().get() - page_size()) as *mut libc::c_void,
                page_size(),
                MADV_GUARD_INSTALL,
            )
        };
        assert_eq!(refused, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOSYS)
        );
        let stacks: Vec<Stack> = (0..5).map(|_| Stack::new(size).unwrap()).collect();
        assert!(!Stack::shares_mappings());
        assert!(
            slabs_of(size + page_size()).is_empty(),
            "the probing slab went"
        );
        assert_guards_are_mappings_of_their_own(stacks.iter().chain([&probe]));
    }

    #[test]
    fn a_stack_is_still_made_when_the_address_space_has_room_for_it_but_not_a_slab() {
        const NAME: &str = "slab::tests::a_stack_is_still_made_when_the_address_space_has_room_for_it_but_not_a_slab";
        // The limit is process-wide: try it in a child.
        if !in_child_process(NAME) {
            return;
        }
        // A slab of these (32 slots) takes 16 MiB; leave 8 MiB of address space.
        let size = 512 * 1024 - page_size();
        let vm: u64 = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let limit = vm * 1024 + 8 * 1024 * 1024;
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads a valid rlimit; lowering the soft limit is always allowed.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) }, 0);
        let stack = Stack::new(size).expect("one stack fits where a slab does not");
        assert!(slabs_of(size + page_size()).is_empty(), "no slab was made");
        drop(stack);
    }

    #[test]
    fn a_stack_too_large_for_the_address_space_is_an_error() {
        for size in [usize::MAX, usize::MAX / 2, 1 << 60] {
            let e = Stack::new(size).expect_err("no such stack");
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::InvalidInput | io::ErrorKind::OutOfMemory
                ),
                "{size:#x}: {e}"
            );
        }
    }

    #[test]
    fn a_released_slot_is_handed_out_again_with_its_pages_zeroed() {
        let size = MIN_STACK_SIZE + 6 * page_size();
        let a = Stack::new(size).unwrap();
        let keep = Stack::new(size).unwrap(); // keeps the slab mapped
        let (limit, probe) = (a.limit().get(), a.base().get() - 64);
        // SAFETY: `probe` is 64 bytes below the stack's base, inside its mapped stack, and no
        // coroutine runs on it.
        unsafe { (probe as *mut u64).write_volatile(0xdead_beef) };
        drop(a);
        let b = Stack::new(size).unwrap();
        if Stack::shares_mappings() {
            assert_eq!(b.limit().get(), limit, "the lowest free slot goes first");
        }
        if b.limit().get() == limit {
            // SAFETY: as above, for the stack now at the same address.
            let seen = unsafe { (probe as *const u64).read_volatile() };
            assert_eq!(
                seen, 0,
                "the finished stack's pages went back to the kernel"
            );
        }
        drop((b, keep));
    }
}
