//! The thread's spare socket read buffers, handed from a connection that has gone back to
//! waiting to the next one that reads.
//!
//! A [`Socket`](crate::Socket) with nothing buffered gives its read buffer up before it
//! waits, so that an idle connection holds none. Given back to the allocator, a buffer of
//! [`BUFFER_LEN`] (4 KiB) is past glibc's per-thread cache (1 KiB), and the next fill
//! allocated and zeroed a fresh one: in a line protocol that was a `malloc`, a 4 KiB
//! `memset` and a `free` for every request (`examples/http_hello` under `wrk`, about 4,700
//! of its 7,200 instructions per request). Kept here instead, a buffer is zeroed once, when
//! it is first made, and the last one given up is the first taken again, still warm in the
//! cache. At most [`KEPT`] are kept per thread; the rest go back to the allocator.
//!
//! A buffer holds bytes of the connections that used it before; a socket only ever reads the
//! part its own `recv` wrote.
//!
//! TLS connections keep a second kind here: the adapter's buffer for raw (encrypted) bytes,
//! a record's worth ([`RAW_LEN`]), given up the same way when a TLS connection waits.

use std::cell::RefCell;
use std::thread::LocalKey;

/// The length of every buffer kept here, and of a socket's first read buffer.
pub(crate) const BUFFER_LEN: usize = 4 * 1024;

/// How many spare buffers a thread keeps at most (256 KiB).
const KEPT: usize = 64;

/// The length of a TLS adapter's raw buffer: one full TLS record (16 KiB and its overhead)
/// and more.
pub(crate) const RAW_LEN: usize = 17 * 1024;

/// How many spare raw buffers a thread keeps at most (272 KiB).
const RAW_KEPT: usize = 16;

type Spare = RefCell<Vec<Vec<u8>>>;

thread_local! {
    static SPARE: Spare = const { RefCell::new(Vec::new()) };
    static SPARE_RAW: Spare = const { RefCell::new(Vec::new()) };
}

fn take_from(spare: &'static LocalKey<Spare>, len: usize) -> Vec<u8> {
    spare
        .try_with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; len])
}

fn give_to(spare: &'static LocalKey<Spare>, len: usize, kept: usize, buf: Vec<u8>) {
    if buf.len() != len {
        return;
    }
    let _ = spare.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < kept {
                spare.push(buf);
            }
        }
    });
}

/// A buffer of [`BUFFER_LEN`] initialised bytes (of unspecified value): the one given up
/// last, or a new zeroed one.
pub(crate) fn take() -> Vec<u8> {
    take_from(&SPARE, BUFFER_LEN)
}

/// Keeps `buf` for the next [`take`] if it is a buffer of [`BUFFER_LEN`] and fewer than
/// [`KEPT`] are kept; frees it otherwise.
pub(crate) fn give(buf: Vec<u8>) {
    give_to(&SPARE, BUFFER_LEN, KEPT, buf);
}

/// A raw buffer of [`RAW_LEN`] initialised bytes, as [`take`].
pub(crate) fn take_raw() -> Vec<u8> {
    take_from(&SPARE_RAW, RAW_LEN)
}

/// Keeps `buf` for the next [`take_raw`] if it is a buffer of [`RAW_LEN`] and fewer than
/// [`RAW_KEPT`] are kept; frees it otherwise.
pub(crate) fn give_raw(buf: Vec<u8>) {
    give_to(&SPARE_RAW, RAW_LEN, RAW_KEPT, buf);
}

/// How many buffers this thread keeps now.
#[cfg(test)]
pub(crate) fn kept() -> usize {
    SPARE.with(|spare| spare.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_up_is_the_next_one_taken() {
        let mut buf = take();
        assert_eq!(buf.len(), BUFFER_LEN);
        buf[0] = 7;
        let addr = buf.as_ptr();
        give(buf);
        let again = take();
        assert_eq!(again.as_ptr(), addr);
        assert_eq!(again.len(), BUFFER_LEN);
    }

    #[test]
    fn only_buffers_of_the_pool_size_are_kept_and_never_more_than_the_bound() {
        let before = kept();
        give(vec![0; BUFFER_LEN * 2]);
        give(Vec::new());
        assert_eq!(kept(), before);
        for _ in 0..KEPT + 10 {
            give(vec![0; BUFFER_LEN]);
        }
        assert_eq!(kept(), KEPT);
        for _ in 0..KEPT {
            assert_eq!(take().len(), BUFFER_LEN);
        }
        assert_eq!(kept(), 0);
        assert_eq!(take().len(), BUFFER_LEN, "an empty pool makes a new buffer");
    }
}
