//! The decoder of HTTP/1.1 chunked bodies (RFC 9112 §7.1), over any [`BufRead`].
//!
//! It lives apart from the HTTP client so that it can be fed anything — a socket in the
//! client, plain byte slices split at random points in the property tests — and reads
//! exactly the chunked body: not one byte past the final CRLF, so a kept-alive connection
//! stays in step. Every line it buffers is bounded (chunk-size lines by
//! [`MAX_CHUNK_LINE`](super::http::MAX_CHUNK_LINE), trailers by the head limits), and every
//! malformed input is a typed error, never a panic or a short body reported as complete.

use std::io::BufRead;

use crate::{Error, ErrorKind, Result};

use super::http::MAX_CHUNK_LINE;

/// Decoding state of one chunked body.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    /// Data bytes left in the current chunk; 0 between chunks.
    left: u64,
    /// A chunk's data has all been handed over and the CRLF after it is still to be read.
    crlf_owed: bool,
    trailers: Vec<(String, String)>,
    max_trailers: usize,
    max_trailer_bytes: usize,
    done: bool,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body, allowing at most `max_trailers` trailer fields of
    /// `max_trailer_bytes` bytes in all.
    pub(crate) fn new(max_trailers: usize, max_trailer_bytes: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            left: 0,
            crlf_owed: false,
            trailers: Vec::new(),
            max_trailers,
            max_trailer_bytes,
            done: false,
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The trailer fields, once the body is done.
    pub(crate) fn trailers(&self) -> &[(String, String)] {
        &self.trailers
    }

    /// Reads body bytes from `src` into `out`: at least one, or 0 once the body has ended
    /// (or `out` is empty). The CRLF that ends a chunk is read by the next call, so an error
    /// there never takes with it data this call has read.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`] for a malformed chunk size, data not followed by CRLF or a
    /// malformed trailer; [`ErrorKind::LimitExceeded`] for a chunk-size line past
    /// [`MAX_CHUNK_LINE`], a size past `u64`, or trailers past their limits;
    /// [`ErrorKind::Closed`] when `src` ends before the body does; `src`'s errors.
    pub(crate) fn read<R: BufRead>(&mut self, src: &mut R, out: &mut [u8]) -> Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        if self.crlf_owed {
            chunk_end(src)?;
            self.crlf_owed = false;
        }
        if self.left == 0 {
            self.next_chunk(src)?;
            if self.done {
                return Ok(0);
            }
        }
        let want = (out.len() as u64).min(self.left) as usize;
        let n = src.read(&mut out[..want]).map_err(Error::from)?;
        if n == 0 {
            return Err(Error::with_message(
                ErrorKind::Closed,
                "connection closed inside a chunk",
            ));
        }
        self.left -= n as u64;
        // The CRLF after the data is the next call's to read: bytes taken off `src` are the
        // caller's whatever comes after them (std's `Read::read` reads nothing when it fails),
        // and the caller need not wait for a CRLF that is late to have them.
        self.crlf_owed = self.left == 0;
        Ok(n)
    }

    /// Reads a chunk-size line; for the last chunk, the trailer section too.
    fn next_chunk<R: BufRead>(&mut self, src: &mut R) -> Result<()> {
        let line = read_line(src, MAX_CHUNK_LINE)?;
        let text = String::from_utf8_lossy(&line);
        // chunk-size [ BWS ";" extension ]: extensions are ignored, as RFC 9112 allows.
        let size = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim_matches([' ', '\t']);
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                format!("bad chunk size {:?}", truncate(size)),
            ));
        }
        let n = u64::from_str_radix(size, 16).map_err(|_| {
            Error::with_message(
                ErrorKind::LimitExceeded,
                format!("chunk size {} too large", truncate(size)),
            )
        })?;
        if n > 0 {
            self.left = n;
            return Ok(());
        }
        let mut total = 0;
        loop {
            let line = read_line(src, self.max_trailer_bytes)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            if total > self.max_trailer_bytes || self.trailers.len() >= self.max_trailers {
                return Err(Error::with_message(
                    ErrorKind::LimitExceeded,
                    "chunked-body trailers too large",
                ));
            }
            let line = String::from_utf8_lossy(&line);
            let (name, value) = line
                .split_once(':')
                .filter(|(name, _)| is_token(name))
                .ok_or_else(|| {
                    Error::with_message(
                        ErrorKind::Protocol,
                        format!("bad trailer {:?}", truncate(&line)),
                    )
                })?;
            self.trailers
                .push((name.to_string(), value.trim().to_string()));
        }
        self.done = true;
        Ok(())
    }
}

/// Reads a line of at most `limit` bytes before its line ending (CRLF, or a bare LF), and
/// returns it without the ending.
fn read_line<R: BufRead>(src: &mut R, limit: usize) -> Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let buf = src.fill_buf().map_err(Error::from)?;
        if buf.is_empty() {
            return Err(Error::with_message(
                ErrorKind::Closed,
                "connection closed inside a chunked body",
            ));
        }
        // Never take more than the limit allows (plus CRLF) into memory.
        let room = limit.saturating_add(2).saturating_sub(line.len()).max(1);
        let window = &buf[..buf.len().min(room)];
        let (n, found) = match window.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), false),
        };
        line.extend_from_slice(&window[..n]);
        src.consume(n);
        if found {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > limit {
                break;
            }
            return Ok(line);
        }
        if line.len() > limit + 1 {
            break;
        }
    }
    Err(Error::with_message(
        ErrorKind::LimitExceeded,
        format!("chunked-body line longer than {limit} bytes"),
    ))
}

/// Reads the CRLF (or bare LF) that must follow a chunk's data.
fn chunk_end<R: BufRead>(src: &mut R) -> Result<()> {
    let mut seen_cr = false;
    loop {
        let buf = src.fill_buf().map_err(Error::from)?;
        let Some(&b) = buf.first() else {
            return Err(Error::with_message(
                ErrorKind::Closed,
                "connection closed inside a chunked body",
            ));
        };
        src.consume(1);
        match b {
            b'\n' => return Ok(()),
            b'\r' if !seen_cr => seen_cr = true,
            _ => {
                return Err(Error::with_message(
                    ErrorKind::Protocol,
                    "chunk data not followed by CRLF (chunk longer than its size?)",
                ))
            }
        }
    }
}

/// Whether `name` is an HTTP token (a valid field name or method, RFC 9110 §5.6.2).
pub(super) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::io::{self, BufRead, Read};

    use proptest::prelude::*;

    use super::*;

    /// Cases per property: a fixed number in `cargo test`, more when `PROPTEST_CASES` asks
    /// (the soak runs them longer).
    fn config(default_cases: u32) -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_cases);
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// A source that hands out its bytes in pieces of the given sizes (cycled), as a socket
    /// does when data arrives in several segments.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        pieces: Vec<usize>,
        next: usize,
        /// End of the current piece.
        piece_end: usize,
    }

    impl Trickle {
        fn new(data: Vec<u8>, pieces: Vec<usize>) -> Trickle {
            Trickle {
                data,
                pos: 0,
                pieces,
                next: 0,
                piece_end: 0,
            }
        }

        fn rest(&self) -> &[u8] {
            &self.data[self.pos..]
        }
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = {
                let buf = self.fill_buf()?;
                let n = buf.len().min(out.len());
                out[..n].copy_from_slice(&buf[..n]);
                n
            };
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for Trickle {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            if self.pos >= self.piece_end {
                let size = self.pieces[self.next % self.pieces.len()].max(1);
                self.next += 1;
                self.piece_end = (self.pos + size).min(self.data.len());
            }
            Ok(&self.data[self.pos..self.piece_end])
        }

        fn consume(&mut self, n: usize) {
            self.pos = (self.pos + n).min(self.piece_end);
        }
    }

    /// Decodes all of `src` with reads of the given sizes (cycled); the body, or the error.
    fn decode(src: &mut Trickle, reads: &[usize]) -> Result<(Vec<u8>, ChunkedDecoder)> {
        let mut decoder = ChunkedDecoder::new(100, 64 * 1024);
        let mut body = Vec::new();
        let mut buf = vec![0u8; 512];
        // Each successful read takes at least one byte, so this many rounds always suffice.
        for round in 0..=src.data.len() + 1 {
            let want = reads[round % reads.len()].clamp(1, buf.len());
            let n = decoder.read(src, &mut buf[..want])?;
            if n == 0 {
                assert!(decoder.is_done(), "0 bytes from a decoder that is not done");
                return Ok((body, decoder));
            }
            body.extend_from_slice(&buf[..n]);
        }
        panic!("the decoder made no progress");
    }

    fn extension() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z]{1,8}".prop_map(|n| format!(";{n}")),
            ("[a-z]{1,8}", "[a-zA-Z0-9]{0,8}").prop_map(|(n, v)| format!(";{n}={v}")),
            ("[a-z]{1,8}", "[a-z ;=]{0,8}").prop_map(|(n, v)| format!(" ;{n}=\"{v}\"")),
        ]
    }

    fn size_line(size: usize, upper: bool, zeros: usize, ext: &str) -> String {
        let hex = if upper {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        format!("{}{hex}{ext}\r\n", "0".repeat(zeros))
    }

    /// `body` in chunked form, with chunks of `sizes` (cycled), extensions `exts` (cycled),
    /// hex digits in upper or lower case after `zeros` leading zeros, and `trailers`.
    fn encode(
        body: &[u8],
        sizes: &[usize],
        exts: &[String],
        upper: bool,
        zeros: usize,
        trailers: &[(String, String)],
    ) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < body.len() {
            let n = sizes[i % sizes.len()].min(body.len() - at);
            wire.extend_from_slice(size_line(n, upper, zeros, &exts[i % exts.len()]).as_bytes());
            wire.extend_from_slice(&body[at..at + n]);
            wire.extend_from_slice(b"\r\n");
            at += n;
            i += 1;
        }
        wire.extend_from_slice(size_line(0, upper, zeros, &exts[i % exts.len()]).as_bytes());
        for (name, value) in trailers {
            wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }

    proptest! {
        #![proptest_config(config(500))]

        #[test]
        fn any_body_chunked_any_way_decodes_to_exactly_that_body(
            body in proptest::collection::vec(any::<u8>(), 0..4096),
            sizes in proptest::collection::vec(1usize..700, 1..20),
            exts in proptest::collection::vec(extension(), 1..8),
            upper: bool,
            zeros in 0usize..3,
            trailers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}"), 0..4),
            pieces in proptest::collection::vec(1usize..64, 1..10),
            reads in proptest::collection::vec(1usize..600, 1..10),
        ) {
            let mut wire = encode(&body, &sizes, &exts, upper, zeros, &trailers);
            // What follows the body (the next response on a kept-alive connection) must be
            // left alone.
            wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let mut src = Trickle::new(wire, pieces);
            let (got, decoder) = decode(&mut src, &reads).expect("well-formed body");
            prop_assert_eq!(&got, &body);
            prop_assert_eq!(src.rest(), b"HTTP/1.1 200 OK\r\n");
            let expected: Vec<(String, String)> = trailers
                .iter()
                .map(|(n, v)| (n.clone(), v.trim().to_string()))
                .collect();
            prop_assert_eq!(decoder.trailers(), &expected[..]);
        }

        #[test]
        fn mutated_encodings_never_panic_and_decode_or_fail_typed(
            body in proptest::collection::vec(any::<u8>(), 0..1024),
            sizes in proptest::collection::vec(1usize..300, 1..8),
            exts in proptest::collection::vec(extension(), 1..4),
            trailers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}"), 0..3),
            // (where, what): 0 replaces the byte there, 1 inserts one, 2 removes one.
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6),
            pieces in proptest::collection::vec(1usize..64, 1..10),
            reads in proptest::collection::vec(1usize..600, 1..10),
        ) {
            let mut wire = encode(&body, &sizes, &exts, false, 0, &trailers);
            for (at, op, byte) in edits {
                let i = at.index(wire.len() + 1);
                match op {
                    0 if i < wire.len() => wire[i] = byte,
                    2 if i < wire.len() => { wire.remove(i); }
                    _ => wire.insert(i, byte),
                }
            }
            check_arbitrary(wire, pieces, reads)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_decode_or_fail_typed(
            wire in proptest::collection::vec(any::<u8>(), 0..2048),
            pieces in proptest::collection::vec(1usize..64, 1..10),
            reads in proptest::collection::vec(1usize..600, 1..10),
        ) {
            check_arbitrary(wire, pieces, reads)?;
        }

        #[test]
        fn near_chunked_bytes_never_panic_and_decode_or_fail_typed(
            wire in proptest::collection::vec(
                // Mostly the bytes chunked framing is made of, sometimes any byte.
                any::<u8>().prop_map(|b| {
                    const FRAMING: &[u8] = b"0123aF\r\n\r\n;: =-";
                    if b < 224 { FRAMING[usize::from(b) % FRAMING.len()] } else { b }
                }),
                0..512,
            ),
            pieces in proptest::collection::vec(1usize..16, 1..10),
            reads in proptest::collection::vec(1usize..64, 1..10),
        ) {
            check_arbitrary(wire, pieces, reads)?;
        }
    }

    fn check_arbitrary(
        wire: Vec<u8>,
        pieces: Vec<usize>,
        reads: Vec<usize>,
    ) -> std::result::Result<(), TestCaseError> {
        let len = wire.len();
        let mut src = Trickle::new(wire, pieces);
        match decode(&mut src, &reads) {
            Ok((body, _)) => prop_assert!(body.len() <= len),
            Err(e) => prop_assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Protocol | ErrorKind::LimitExceeded | ErrorKind::Closed
                ),
                "untyped error {:?}",
                e
            ),
        }
        Ok(())
    }

    #[test]
    fn limits_hold_at_their_boundaries() {
        let run = |wire: &[u8]| {
            let mut src = Trickle::new(wire.to_vec(), vec![7]);
            decode(&mut src, &[100])
                .map(|(b, _)| b)
                .map_err(|e| e.kind())
        };
        // A size line of exactly MAX_CHUNK_LINE bytes is read; one more is refused.
        let ext = |len: usize| ";".to_string() + &"x".repeat(len - 2);
        let at_limit = format!("1{}\r\nA\r\n0\r\n\r\n", ext(MAX_CHUNK_LINE));
        assert_eq!(at_limit.find('\r'), Some(MAX_CHUNK_LINE));
        assert_eq!(run(at_limit.as_bytes()), Ok(b"A".to_vec()));
        let over = format!("1{}\r\nA\r\n0\r\n\r\n", ext(MAX_CHUNK_LINE + 1));
        assert_eq!(run(over.as_bytes()), Err(ErrorKind::LimitExceeded));
        // Trailers: at most 100 fields.
        let fields = |n: usize| format!("0\r\n{}\r\n", "T: v\r\n".repeat(n));
        assert_eq!(run(fields(100).as_bytes()), Ok(Vec::new()));
        assert_eq!(run(fields(101).as_bytes()), Err(ErrorKind::LimitExceeded));
        // The largest u64 size is accepted (and then cut short); one digit more is refused.
        assert_eq!(run(b"ffffffffffffffff\r\nab"), Err(ErrorKind::Closed));
        assert_eq!(
            run(b"10000000000000000\r\nab"),
            Err(ErrorKind::LimitExceeded)
        );
    }
}
