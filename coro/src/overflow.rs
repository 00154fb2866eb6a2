//! Reporting a coroutine stack overflow instead of dying silently.
//!
//! Running off the end of a coroutine stack touches its guard page and raises `SIGSEGV`
//! (or `SIGBUS`). std's own overflow message only knows thread stacks, so without this the
//! process dies with no word. We install a handler on the alternate signal stack that checks
//! whether the faulting address lies in the running coroutine's guard page; if so it writes a
//! message naming the coroutine and aborts. Any other fault is passed to the handler that was
//! installed before ours (std's, usually), or to the default action.
//!
//! Recovering (unwinding the coroutine) is not attempted: it is only sound if the coroutine
//! wrote no memory outside volatile operations, which ordinary handlers cannot promise.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::{Once, OnceLock};

use crate::coroutine::current_frame;

static INSTALL: Once = Once::new();
static PREV_SEGV: OnceLock<libc::sigaction> = OnceLock::new();
static PREV_BUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Size of the alternate signal stack we map for threads that have none.
const ALT_STACK_SIZE: usize = 64 * 1024;

/// An alternate signal stack this crate mapped for the current thread.
struct AltStack {
    base: *mut libc::c_void,
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let disable = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: ALT_STACK_SIZE,
        };
        // SAFETY: disabling the alternate stack before unmapping it; both calls only touch
        // memory we mapped in `ensure_alt_stack`.
        unsafe {
            libc::sigaltstack(&disable, ptr::null_mut());
            libc::munmap(self.base, ALT_STACK_SIZE);
        }
    }
}

thread_local! {
    static ALT_CHECKED: Cell<bool> = const { Cell::new(false) };
    static ALT_STACK: Cell<Option<AltStack>> = const { Cell::new(None) };
}

/// Installs the fault handler (once per process) and makes sure the calling thread has an
/// alternate signal stack, without which the handler could not run on an exhausted stack.
pub(crate) fn install() {
    INSTALL.call_once(|| {
        for (sig, slot) in [(libc::SIGSEGV, &PREV_SEGV), (libc::SIGBUS, &PREV_BUS)] {
            // SAFETY: an all-zero sigaction is a valid value to be filled in; sigaction is
            // given valid pointers to a new and an old action.
            unsafe {
                let mut action: libc::sigaction = MaybeUninit::zeroed().assume_init();
                action.sa_sigaction = on_fault as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = MaybeUninit::zeroed().assume_init();
                if libc::sigaction(sig, &action, &mut old) == 0 {
                    let _ = slot.set(old);
                }
            }
        }
    });
    if !ALT_CHECKED.with(|c| c.replace(true)) {
        ensure_alt_stack();
    }
}

fn ensure_alt_stack() {
    // SAFETY: querying the current alternate stack into a zeroed stack_t.
    let mut current: libc::stack_t = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: a null new-stack pointer only queries.
    if unsafe { libc::sigaltstack(ptr::null(), &mut current) } != 0 {
        return;
    }
    if current.ss_flags & libc::SS_DISABLE == 0 {
        return; // std (or the application) already gave this thread one
    }
    // SAFETY: an anonymous private mapping with no address hint.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            ALT_STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return;
    }
    let stack = libc::stack_t {
        ss_sp: base,
        ss_flags: 0,
        ss_size: ALT_STACK_SIZE,
    };
    // SAFETY: `stack` describes the mapping just made, which lives until the thread-local
    // `AltStack` is dropped at thread exit (which disables it first).
    if unsafe { libc::sigaltstack(&stack, ptr::null_mut()) } == 0 {
        ALT_STACK.with(|s| s.set(Some(AltStack { base })));
    } else {
        // SAFETY: unmapping the region mapped above, never handed to the kernel.
        unsafe { libc::munmap(base, ALT_STACK_SIZE) };
    }
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    // The running coroutine's guard, then, while it is an unstarted one whose closure is
    // dropped on another coroutine's stack, that coroutine's (its `host`), and so on.
    let mut next = current_frame();
    while !next.is_null() {
        // SAFETY: the frame of the running coroutine is alive while it runs (see `suspend`),
        // and a fault inside it happens while it runs; a host's frame is the one `unwind`
        // replaced in CURRENT, alive until that call returns.
        let frame = unsafe { &*next };
        next = frame.host.get();
        if addr >= frame.guard.0 && addr < frame.guard.1 {
            let (text, infix, number) = frame.label.parts();
            report_overflow(
                text.as_bytes(),
                infix.as_bytes(),
                number,
                frame.stack_size(),
            );
        }
    }
    let prev = if sig == libc::SIGSEGV {
        PREV_SEGV.get()
    } else {
        PREV_BUS.get()
    };
    match prev {
        Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: with SA_SIGINFO the previous handler has the three-argument form.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO the previous handler has the one-argument form.
                let f: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // Restore the default action; returning re-executes the faulting instruction,
            // which then kills the process with the original signal.
            // SAFETY: a zeroed sigaction with SIG_DFL is a valid default disposition.
            unsafe {
                let mut dfl: libc::sigaction = MaybeUninit::zeroed().assume_init();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, ptr::null_mut());
            }
        }
    }
}

/// Writes the overflow message with async-signal-safe calls only, then aborts.
fn report_overflow(text: &[u8], infix: &[u8], number: Option<u64>, stack_size: usize) -> ! {
    let mut digits = [0u8; 20];
    let kib = format_decimal(stack_size / 1024, &mut digits);
    let mut number_digits = [0u8; 20];
    let number = match number {
        Some(n) => format_decimal(n as usize, &mut number_digits),
        None => b"",
    };
    for part in [
        b"\ncopas: coroutine '".as_slice(),
        text,
        infix,
        number,
        b"' has overflowed its stack (",
        kib,
        b" KiB); give it a larger stack (copas::set_stack_size) or recurse less\n",
    ] {
        // SAFETY: write(2) on stderr with a valid buffer is async-signal-safe.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: abort is async-signal-safe and never returns.
    unsafe { libc::abort() }
}

fn format_decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal_formatting() {
        let mut b = [0u8; 20];
        assert_eq!(super::format_decimal(0, &mut b), b"0");
        assert_eq!(super::format_decimal(256, &mut b), b"256");
        assert_eq!(
            super::format_decimal(usize::MAX, &mut b),
            usize::MAX.to_string().as_bytes()
        );
    }
}
