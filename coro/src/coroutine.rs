//! The coroutine type, `suspend`, and the running coroutine's identity.
//!
//! A [`Coro`] wraps a `corosensei` coroutine that yields nothing and is resumed with one
//! `u32` (passed in a register through the switch): a scheduler can say why it resumes a
//! coroutine ([`Coro::resume_with`], [`suspend_value`]) without the coroutine looking that
//! up in the scheduler's tables afterwards. While a coroutine runs, a thread-local pointer
//! names its [`Frame`]; that is how [`suspend`] finds the yielder from any depth of the call
//! stack, how [`current`] answers, and how the stack-overflow reporter knows whose guard
//! page was hit.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use corosensei::stack::Stack as _;
use corosensei::{Coroutine, CoroutineResult, Yielder};

use crate::label::Label;
use crate::overflow;
use crate::stack::{page_size, Stack, STATE_AREA};

/// What a running coroutine exposes to code on its stack and to the fault handler.
pub(crate) struct Frame {
    /// The yielder of the running coroutine; set by the coroutine's first instructions.
    yielder: Cell<*const Yielder<u32, ()>>,
    /// Set while the coroutine is being force-unwound: suspending is then refused.
    unwinding: Cell<bool>,
    /// An address near the stack pointer at the last suspend: where resuming will touch
    /// the stack first (see [`Coro::resume_hint`]).
    sp_hint: Cell<usize>,
    /// The top of the frames (exclusive; the state area is above it): a suspended
    /// coroutine's frames are `sp_hint..base`.
    base: usize,
    /// The caller's identity tag.
    tag: u64,
    /// While this coroutine's unstarted closure is dropped (on the stack of whoever drops
    /// it, with this frame marked as the running one): the frame of the coroutine that
    /// drops it, or null. The fault handler checks that coroutine's guard page too.
    pub(crate) host: Cell<*const Frame>,
    /// Lowest and highest+1 address of the guard page.
    pub(crate) guard: (usize, usize),
    pub(crate) label: Label,
}

impl Frame {
    /// Usable stack bytes, for the overflow message: from the guard to the state area.
    /// Worked out when needed rather than stored by every `Coro::new`.
    pub(crate) fn stack_size(&self) -> usize {
        (self.base + STATE_AREA).saturating_sub(self.guard.1)
    }
}

thread_local! {
    /// The frame of the coroutine running on this thread, or null.
    static CURRENT: Cell<*const Frame> = const { Cell::new(ptr::null()) };
}

/// The frame of the running coroutine, or null. Async-signal-safe: a const-initialised
/// thread-local without destructor is a plain TLS load.
#[inline]
pub(crate) fn current_frame() -> *const Frame {
    CURRENT.with(|c| c.get())
}

/// The outcome of [`Coro::resume`].
pub enum Resumed {
    /// The coroutine called [`suspend`]; resume it again later.
    Suspended,
    /// The coroutine's closure returned.
    Finished,
    /// The coroutine's closure panicked; the payload is what `panic!` was given. The
    /// coroutine is finished.
    Panicked(Box<dyn Any + Send>),
}

impl fmt::Debug for Resumed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resumed::Suspended => f.write_str("Suspended"),
            Resumed::Finished => f.write_str("Finished"),
            Resumed::Panicked(p) => write!(f, "Panicked({:?})", crate::panic_message(&**p)),
        }
    }
}

/// Why [`suspend`] did not suspend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspendError {
    /// Called outside any coroutine (for example from `main`).
    NotInCoroutine,
    /// The coroutine is being dropped and its stack unwound, or the thread is panicking
    /// (the coroutine unwinds from a panic, or it was resumed by code that does, such as a
    /// destructor running during a panic): it may not wait any more.
    Unwinding,
}

impl fmt::Display for SuspendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuspendError::NotInCoroutine => f.write_str("not inside a coroutine"),
            SuspendError::Unwinding => f.write_str("the coroutine is being cancelled"),
        }
    }
}

impl std::error::Error for SuspendError {}

/// The largest closure, in bytes, that [`Coro::new`] moves onto a new stack as it is; a
/// larger one is boxed first. (corosensei moves at most 1 KiB, `Unstarted`'s flag included.)
pub const INLINE_BODY: usize = 1024 - 64;

/// A stackful coroutine running a closure on a [`Stack`].
///
/// Its state lives in a reserved area at the top of its own stack, next to the frames a
/// resume reads first, so creating one allocates nothing and moving a `Coro` (for example
/// in and out of a table between resumes) moves one pointer.
///
/// # Dropping a coroutine
///
/// Dropping a coroutine that is suspended unwinds its stack: the pending [`suspend`] panics
/// with a private payload, every local on the coroutine's stack is dropped, and only then is
/// the stack released. Code running during that unwind that tries to suspend again gets
/// [`SuspendError::Unwinding`] instead (so it can never spin the unwind forever). A closure
/// that catches the unwind with `catch_unwind` and keeps running is a bug; don't.
///
/// # Send
///
/// `Coro` is neither `Send` nor `Sync`: everything on its stack would have to be `Send`.
pub struct Coro {
    /// In the state area of the stack that `state.inner` owns (`Stack::state_area`).
    /// Written once in `new`, moved out once in `take_state`.
    state: NonNull<State>,
}

// The state must fit the area reserved for it at the top of every stack.
const _: () = assert!(std::mem::size_of::<State>() <= STATE_AREA);
const _: () = assert!(std::mem::align_of::<State>() <= 64);

struct State {
    inner: Coroutine<u32, (), (), Stack>,
    frame: Frame,
}

impl fmt::Debug for Coro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coro")
            .field("tag", &self.state().frame.tag)
            .field("label", &self.label())
            .field("done", &self.is_done())
            .finish()
    }
}

impl Coro {
    /// A coroutine that will run `body` on `stack` when first resumed. `tag` is returned by
    /// [`current`] while it runs; `label` names it in the stack-overflow message.
    ///
    /// A `body` of up to [`INLINE_BODY`] bytes (what it captures) is moved onto the new stack
    /// and costs no allocation; a larger one is boxed first (one allocation), because the
    /// context switch moves at most 1 KiB onto a new stack.
    pub fn new<F>(stack: Stack, tag: u64, label: impl Into<Label>, body: F) -> Coro
    where
        F: FnOnce() + 'static,
    {
        // Decided at compile time for each closure type.
        if std::mem::size_of::<F>() > INLINE_BODY {
            let boxed: Box<dyn FnOnce()> = Box::new(body);
            return Coro::new_inline(stack, tag, label, boxed);
        }
        Coro::new_inline(stack, tag, label, body)
    }

    fn new_inline<F>(stack: Stack, tag: u64, label: impl Into<Label>, body: F) -> Coro
    where
        F: FnOnce() + 'static,
    {
        overflow::install();
        let limit = stack.limit().get();
        let base = stack.base().get();
        let area = stack.state_area().cast::<State>();
        let body = Unstarted(Some(body));
        let inner = Coroutine::with_stack(stack, move |yielder: &Yielder<u32, ()>, _first: u32| {
            let frame = current_frame();
            // SAFETY: `resume` points CURRENT at this coroutine's frame before switching to
            // it, and the frame outlives the switch (it is borrowed by `resume`).
            unsafe { (*frame).yielder.set(yielder) };
            body.run();
        });
        let state = State {
            inner,
            frame: Frame {
                yielder: Cell::new(ptr::null()),
                unwinding: Cell::new(false),
                sp_hint: Cell::new(0),
                host: Cell::new(ptr::null()),
                base,
                tag,
                guard: (limit, limit + page_size()),
                label: label.into(),
            },
        };
        // SAFETY: `area` is the state area of the stack `inner` now owns: mapped, writable,
        // aligned for `State` (a page top less a multiple of 64 bytes, checked above), as
        // large as `State`, and outside the frames (the stack's base is below it). Moving the
        // stack into `inner` moved its handle, not the mapping. The area stays valid until
        // `take_state` moves the state out, before the stack is dropped or handed back.
        unsafe { area.write(state) };
        Coro {
            // SAFETY: derived from a mapping's address, never null.
            state: unsafe { NonNull::new_unchecked(area) },
        }
    }

    #[inline]
    fn state(&self) -> &State {
        // SAFETY: written in `new` and valid until `take_state`, which consumes `self`.
        unsafe { self.state.as_ref() }
    }

    #[inline]
    fn state_mut(&mut self) -> &mut State {
        // SAFETY: as in `state`; `&mut self` makes the borrow unique.
        unsafe { self.state.as_mut() }
    }

    /// Moves the state out of the stack's state area, for the stack to be dropped or
    /// recycled; the `Coro` must not be used (or dropped) afterwards.
    fn take_state(&mut self) -> State {
        // SAFETY: the state was written in `new` and not moved out yet (callers consume or
        // forget `self` right after); reading it leaves the area unused, never read again.
        unsafe { self.state.as_ptr().read() }
    }

    /// Runs the coroutine until it suspends, returns or panics.
    ///
    /// # Panics
    ///
    /// When the coroutine has already finished.
    #[inline]
    pub fn resume(&mut self) -> Resumed {
        self.resume_with(0)
    }

    /// Like [`Coro::resume`], handing `value` to the coroutine: its pending
    /// [`suspend_value`] returns it (the first resume, which starts the closure, drops it).
    ///
    /// # Panics
    ///
    /// When the coroutine has already finished.
    // Always inlined, so that a scheduler's resume loop holds the switch itself and a
    // coroutine that suspends lands in that loop, not in a frame that must return to it
    // (a mispredicted return per resume otherwise).
    #[inline(always)]
    pub fn resume_with(&mut self, value: u32) -> Resumed {
        let state = self.state_mut();
        let inner = &mut state.inner;
        if inner.done() {
            panic!("resume of a finished coroutine");
        }
        let prev = CURRENT.with(|c| c.replace(&state.frame));
        let result = catch_unwind(AssertUnwindSafe(|| inner.resume(value)));
        CURRENT.with(|c| c.set(prev));
        match result {
            Ok(CoroutineResult::Yield(())) => Resumed::Suspended,
            Ok(CoroutineResult::Return(())) => Resumed::Finished,
            Err(payload) => Resumed::Panicked(payload),
        }
    }

    /// Where resuming this coroutine will touch memory first — its state and the top of its
    /// suspended stack — as a small value a scheduler can keep beside its run queue and pass
    /// to [`ResumeHint::prefetch`] shortly before resuming, so those cache and TLB misses
    /// overlap with other work. Only meaningful while the coroutine stays suspended.
    #[inline]
    pub fn resume_hint(&self) -> ResumeHint {
        let frame = &self.state().frame;
        let stack = frame.sp_hint.get();
        ResumeHint {
            state: self.state.as_ptr() as usize,
            stack,
            span: u32::try_from(frame.base.saturating_sub(stack)).unwrap_or(u32::MAX),
        }
    }

    /// Whether the coroutine has run to its end (returned or panicked).
    #[inline]
    pub fn is_done(&self) -> bool {
        self.state().inner.done()
    }

    /// Whether the coroutine has been resumed at least once.
    pub fn is_started(&self) -> bool {
        self.state().inner.started()
    }

    /// The identity tag given to [`Coro::new`].
    pub fn tag(&self) -> u64 {
        self.state().frame.tag
    }

    /// The name printed if this coroutine overflows its stack.
    pub fn label(&self) -> &Label {
        &self.state().frame.label
    }

    /// Changes the name printed if this coroutine overflows its stack.
    pub fn set_label(&mut self, label: impl Into<Label>) {
        self.state_mut().frame.label = label.into();
    }

    /// Finishes the coroutine (unwinding it if it is suspended) and gives back its stack for
    /// reuse. A panic the unwinding raised is dropped: see [`Coro::unwind_into_stack`].
    pub fn into_stack(self) -> Stack {
        self.unwind_into_stack().0
    }

    /// As [`Coro::into_stack`], and the panic the unwinding raised, if any: the coroutine
    /// caught the unwind and panicked anew, or dropping its unstarted closure panicked. The
    /// coroutine has ended either way, so its stack is reusable.
    pub fn unwind_into_stack(mut self) -> (Stack, Option<Box<dyn Any + Send>>) {
        // Most coroutines come here having run to their end: nothing to unwind, and the
        // unwinding machinery stays out of line.
        let panic = if self.is_done() { None } else { self.unwind() };
        let state = self.take_state();
        std::mem::forget(self);
        (state.inner.into_stack(), panic)
    }

    /// Unwinds a suspended coroutine's stack, dropping its locals, with this coroutine marked
    /// as the running one so code in its destructors sees the right identity. Returns the
    /// panic that ended the unwinding instead of letting it run on through the caller, which
    /// would also leave this coroutine marked as the running one.
    #[inline(never)]
    fn unwind(&mut self) -> Option<Box<dyn Any + Send>> {
        let state = self.state_mut();
        let inner = &mut state.inner;
        if inner.started() && !inner.done() {
            state.frame.unwinding.set(true);
            let prev = CURRENT.with(|c| c.replace(&state.frame));
            let unwound = catch_unwind(AssertUnwindSafe(|| inner.force_unwind()));
            CURRENT.with(|c| c.set(prev));
            unwound.err()
        } else if !inner.started() {
            // Drops the closure without running it. `Unstarted` catches a panic from its
            // captures: corosensei would otherwise see the drop fail, still count the
            // coroutine as unstarted, and drop the closure again later. The captures'
            // destructors run on the caller's stack, but as this coroutine being unwound,
            // as a started one's do: they must not act as the caller (its identity, its
            // locks), nor suspend it (`suspend` refuses while `unwinding` is set).
            state.frame.unwinding.set(true);
            let prev = CURRENT.with(|c| c.replace(&state.frame));
            // The captures are dropped on `prev`'s stack (if a coroutine's): an overflow
            // there must still be reported as that coroutine's.
            state.frame.host.set(prev);
            inner.force_unwind();
            state.frame.host.set(ptr::null());
            CURRENT.with(|c| c.set(prev));
            UNSTARTED_DROP_PANIC.try_with(Cell::take).ok().flatten()
        } else {
            None
        }
    }
}

impl Drop for Coro {
    fn drop(&mut self) {
        // A panic the unwind raised (the closure caught it and panicked anew; a destructor
        // that panics during it aborts the process instead) has no one to go to here; use
        // `unwind_into_stack` to see it.
        drop(self.unwind());
        // Out of the stack before the stack goes (dropping the state drops the stack).
        drop(self.take_state());
    }
}

/// A coroutine's closure until its first resume runs it.
///
/// Dropped unrun (a coroutine removed before it started), it drops the closure under
/// `catch_unwind` and leaves a panic from the captures' destructors in
/// [`UNSTARTED_DROP_PANIC`] for [`Coro::unwind`] to return. The drop must not unwind: when
/// corosensei's drop of an unstarted coroutine's closure unwinds, the closure has been dropped
/// (drop glue finishes the other fields while unwinding) but the coroutine still counts as
/// unstarted, and dropping it drops the closure a second time.
struct Unstarted<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Unstarted<F> {
    fn run(mut self) {
        if let Some(body) = self.0.take() {
            body();
        }
    }
}

impl<F: FnOnce()> Drop for Unstarted<F> {
    fn drop(&mut self) {
        if let Some(body) = self.0.take() {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(body))) {
                // During the thread's teardown the slot may be gone: the report is lost then,
                // as any panic in a thread-local's destructor would be.
                let _ = UNSTARTED_DROP_PANIC.try_with(|slot| slot.set(Some(payload)));
            }
        }
    }
}

thread_local! {
    /// The panic raised by dropping an unstarted coroutine's closure, from [`Unstarted`]'s
    /// drop to the [`Coro::unwind`] that caused it, which takes it at once.
    static UNSTARTED_DROP_PANIC: Cell<Option<Box<dyn Any + Send>>> = const { Cell::new(None) };
}

/// Suspends the running coroutine, returning to whoever resumed it, and returns when it is
/// resumed again.
///
/// # Errors
///
/// [`SuspendError::NotInCoroutine`] outside any coroutine, and
/// [`SuspendError::Unwinding`] while the coroutine is being dropped or is unwinding from a
/// panic (a destructor running during the unwind may not wait). The test is the thread's
/// ([`std::thread::panicking`]): a coroutine resumed by code that is itself unwinding (a
/// destructor that drives a scheduler during a panic) cannot suspend either, though it is
/// not unwinding (copas's `run` and `step` refuse to run then).
#[inline]
pub fn suspend() -> Result<(), SuspendError> {
    suspend_value().map(drop)
}

/// Like [`suspend`], returning the value the coroutine was resumed with
/// ([`Coro::resume_with`]; 0 from [`Coro::resume`]).
///
/// # Errors
///
/// As [`suspend`].
#[inline]
pub fn suspend_value() -> Result<u32, SuspendError> {
    let frame = current_frame();
    if frame.is_null() {
        return Err(SuspendError::NotInCoroutine);
    }
    // SAFETY: CURRENT only ever points at the frame of the coroutine running on this thread,
    // which `resume` keeps borrowed (so alive and unmoved) until control returns to it.
    let yielder = unsafe { (*frame).yielder.get() };
    // SAFETY: as above.
    if unsafe { unwinding(frame) } {
        return Err(SuspendError::Unwinding);
    }
    let here = 0u8;
    // SAFETY: as above; the frame is alive while the coroutine runs.
    unsafe { (*frame).sp_hint.set(std::ptr::addr_of!(here) as usize) };
    // SAFETY: the yielder lives on the running coroutine's stack, which is alive while the
    // coroutine runs; it was stored by the coroutine's first instructions.
    Ok(unsafe { (*yielder).suspend(()) })
}

/// Whether the coroutine of `frame` may not suspend: it is being dropped or unwinds from a
/// panic, or the thread panics. Suspending half-way through a panic's unwinding would leave
/// the coroutine stuck mid-panic, and dropping it later would abort the process.
///
/// # Safety
///
/// `frame` is the running coroutine's, non-null ([`current_frame`]).
#[inline(always)]
unsafe fn unwinding(frame: *const Frame) -> bool {
    // SAFETY: the caller's contract: the frame of the running coroutine, alive while it runs.
    let dropping = unsafe { (*frame).unwinding.get() };
    dropping || std::thread::panicking()
}

/// Whether [`suspend`] would suspend now: inside a coroutine that is not being dropped or
/// unwinding, on a thread that is not panicking. For a caller that must prepare its
/// wake-up before it suspends and could not take that back if the suspension were refused.
#[inline]
pub fn can_suspend() -> bool {
    let frame = current_frame();
    // SAFETY: a non-null CURRENT points at the running coroutine's live frame.
    !frame.is_null() && !unsafe { unwinding(frame) }
}

/// The tag of the coroutine running on this thread, or `None` outside any coroutine.
#[inline]
pub fn current() -> Option<u64> {
    let frame = current_frame();
    if frame.is_null() {
        None
    } else {
        // SAFETY: as in `suspend`, a non-null CURRENT points at the live running frame.
        Some(unsafe { (*frame).tag })
    }
}

/// Whether the calling code runs inside a coroutine.
#[inline]
pub fn in_coroutine() -> bool {
    !current_frame().is_null()
}

/// Where resuming a coroutine will touch memory first (see [`Coro::resume_hint`]).
///
/// Plain addresses, never dereferenced: a stale hint is harmless.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeHint {
    state: usize,
    stack: usize,
    /// Bytes from `stack` up to the top of the stack: the suspended frames.
    span: u32,
}

impl ResumeHint {
    /// Asks the CPU to start loading the coroutine's state and the frames of its suspended
    /// call chain, up to 1 KiB of them: what resuming it reads, switch and returns, before
    /// its own code runs. Meant for shortly before the resume (the next one in a run queue);
    /// [`ResumeHint::prefetch`] is the cheaper one for long before.
    #[inline]
    pub fn prefetch_frames(self) {
        self.prefetch_state();
        if self.stack != 0 {
            let end = self.stack + (self.span as usize).min(MAX_PREFETCH_SPAN);
            let mut line = self.stack.wrapping_sub(128);
            while line < end {
                prefetch(line);
                line += 64;
            }
        }
    }

    /// Asks the CPU to start loading the coroutine's state and the top of its stack (the
    /// lines the switch lands on). Unrolled: it runs for every woken coroutine.
    #[inline]
    pub fn prefetch(self) {
        self.prefetch_state();
        if self.stack != 0 {
            for offset in [-128isize, -64, 0, 64] {
                prefetch(self.stack.wrapping_add_signed(offset));
            }
        }
    }

    /// The first two lines of the coroutine's state.
    #[inline(always)]
    fn prefetch_state(self) {
        if self.state != 0 {
            prefetch(self.state);
            prefetch(self.state + 64);
        }
    }
}

/// How much of a suspended stack above its stack pointer [`ResumeHint::prefetch_frames`]
/// loads: a typical handler's chain from its own frame to the switch is 400-700 bytes.
const MAX_PREFETCH_SPAN: usize = 1024;

/// Asks the CPU to start loading the cache line at `addr` into its caches. A hint: it never
/// faults and changes nothing, whatever the address (a stale or null one is harmless).
#[inline(always)]
pub fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address, and SSE (which
    // provides it) is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::StackPool;
    use std::rc::Rc;

    #[test]
    fn suspend_value_returns_what_each_resume_passed() {
        let mut pool = StackPool::new(64 * 1024, 1);
        let seen = Rc::new(std::cell::RefCell::new(Vec::new()));
        let log = seen.clone();
        let mut co = Coro::new(pool.allocate().unwrap(), 1, "values", move || {
            for _ in 0..3 {
                log.borrow_mut().push(suspend_value().unwrap());
            }
        });
        // The first resume starts the closure; its value reaches no `suspend_value`.
        assert!(matches!(co.resume_with(99), Resumed::Suspended));
        assert!(matches!(co.resume_with(7), Resumed::Suspended));
        assert!(matches!(co.resume(), Resumed::Suspended));
        assert!(matches!(co.resume_with(u32::MAX), Resumed::Finished));
        assert_eq!(*seen.borrow(), [7, 0, u32::MAX]);
    }

    #[test]
    fn resume_hint_spans_the_suspended_frames() {
        let mut pool = StackPool::new(64 * 1024, 1);
        let local_at = Rc::new(Cell::new(0usize));
        let seen = local_at.clone();
        let mut co = Coro::new(pool.allocate().unwrap(), 7, "hinted", move || {
            let local = [1u8; 64];
            seen.set(std::hint::black_box(&local).as_ptr() as usize);
            suspend().unwrap();
            std::hint::black_box(&local);
        });
        assert!(matches!(co.resume(), Resumed::Suspended));
        let hint = co.resume_hint();
        let local = local_at.get();
        // The handler's local lies in the span the hint covers: between the stack pointer at
        // the suspension and the top of the stack, and within what `prefetch_frames` loads.
        assert!(hint.stack < local, "local below the suspension point");
        assert!(
            local < hint.stack + hint.span as usize,
            "local above the stack"
        );
        assert!(
            local - hint.stack < MAX_PREFETCH_SPAN,
            "a shallow suspension outgrows the prefetched span: {} bytes",
            local - hint.stack
        );
        hint.prefetch_frames();
        assert!(matches!(co.resume(), Resumed::Finished));
    }
}
