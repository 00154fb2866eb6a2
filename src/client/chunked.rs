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
    /// (or `out` is empty).
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
        if self.left == 0 {
            chunk_end(src)?;
        }
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
        let room = (limit + 2).saturating_sub(line.len()).max(1);
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

/// Whether `name` is an HTTP token (a valid field name, RFC 9110 §5.6.2).
fn is_token(name: &str) -> bool {
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
