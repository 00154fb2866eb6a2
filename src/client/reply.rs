//! Multi-line replies of the line-based protocols SMTP and FTP.
//!
//! Both answer with a three-digit code and text, on one line (`250 OK`) or several: SMTP
//! repeats the code on every line with `-` after all but the last (`250-a`, `250 b`,
//! RFC 5321 §4.2); FTP starts with `code-` and ends at the first line that starts with the
//! same code and a space, with any text between (RFC 959 §4.2). [`read_reply`] reads either
//! kind; [`read_smtp_reply`] holds an SMTP server to its rule, so a line with another code
//! (or none) is an error instead of text. Both limit line length, line count and total size,
//! so an endless reply cannot grow memory.

use std::fmt;
use std::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::net::socket::Socket;

/// The longest reply line accepted (RFC 5321 allows 512 octets; servers send more).
pub const MAX_REPLY_LINE: usize = 8 * 1024;

/// The most lines one reply may have (a `HELP` or `FEAT` answer is a few dozen).
pub const MAX_REPLY_LINES: usize = 1000;

/// The most text one reply may have in all, line endings included (without it, the line
/// limits alone would allow 8 MiB).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;

/// A server's reply: its code and its text lines (without codes and separators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The text of each line, without the code and separator.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// All lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The first digit of the code: 1 preliminary, 2 completion, 3 intermediate,
    /// 4 transient failure, 5 permanent failure.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// The reply as an [`ErrorKind::Rejected`] error.
    pub fn to_error(&self) -> Error {
        Error::rejected(self.code, self.text())
    }

    /// `Ok(self)` when the code is one of `expected`, else the reply as an error.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] carrying this reply.
    pub fn expect(self, expected: &[u16]) -> Result<Reply> {
        if expected.contains(&self.code) {
            Ok(self)
        } else {
            Err(self.to_error())
        }
    }

    /// `Ok(self)` when the code's first digit is `class`, else the reply as an error.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] carrying this reply.
    pub fn expect_class(self, class: u16) -> Result<Reply> {
        if self.class() == class {
            Ok(self)
        } else {
            Err(self.to_error())
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

/// One parsed reply line: its code (if it starts with three digits), whether it continues
/// (`-`), and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLine<'a> {
    /// The code, when the line starts with three digits followed by ` `, `-` or the end.
    pub code: Option<u16>,
    /// The line ends with `-` after the code: more lines follow.
    pub more: bool,
    /// The text after the code and separator (or the whole line without a code).
    pub text: &'a str,
}

/// Parses one reply line (without its line ending). Never panics, for any input.
pub fn parse_line(line: &str) -> ReplyLine<'_> {
    let bytes = line.as_bytes();
    if bytes.len() >= 3 && bytes[..3].iter().all(u8::is_ascii_digit) {
        let code = u16::from(bytes[0] - b'0') * 100
            + u16::from(bytes[1] - b'0') * 10
            + u16::from(bytes[2] - b'0');
        match bytes.get(3) {
            None => {
                return ReplyLine {
                    code: Some(code),
                    more: false,
                    text: "",
                }
            }
            Some(b' ') | Some(b'-') => {
                return ReplyLine {
                    code: Some(code),
                    more: bytes[3] == b'-',
                    text: &line[4..],
                }
            }
            _ => {}
        }
    }
    ReplyLine {
        code: None,
        more: false,
        text: line,
    }
}

/// Reads one complete reply from `sock`, by FTP's rule (RFC 959 §4.2): a multi-line reply
/// ends at the first line with its code and a space; lines between are text, whatever they
/// start with. Well-formed SMTP replies read the same.
///
/// # Errors
///
/// [`ErrorKind::Protocol`] for a first line without a valid code (100–599) or a reply that is
/// not UTF-8; [`ErrorKind::LimitExceeded`] for a line longer than [`MAX_REPLY_LINE`], more
/// than [`MAX_REPLY_LINES`] lines or more than [`MAX_REPLY_BYTES`] in all; the socket's
/// errors (`Closed`, `Timeout`: the socket's receive timeout bounds the whole reply).
pub fn read_reply(sock: &mut Socket) -> Result<Reply> {
    with_reply_limits(sock, |sock, deadline| {
        read_reply_lines(sock, false, deadline)
    })
}

/// Reads one complete reply from `sock`, by SMTP's rule (RFC 5321 §4.2.1): every line has
/// the same code, followed by `-` on all lines but the last.
///
/// # Errors
///
/// As [`read_reply`], and [`ErrorKind::Protocol`] for a line of a multi-line reply with
/// another code or none.
pub fn read_smtp_reply(sock: &mut Socket) -> Result<Reply> {
    with_reply_limits(sock, |sock, deadline| {
        read_reply_lines(sock, true, deadline)
    })
}

/// Runs `read` with the reply line limit, and with the receive timeout as one deadline for
/// the whole reply: a server sending a long reply a line at a time, each line just within
/// the timeout, would otherwise hold the caller for as many timeouts as the reply has lines.
fn with_reply_limits(
    sock: &mut Socket,
    read: impl FnOnce(&mut Socket, Option<Instant>) -> Result<Reply>,
) -> Result<Reply> {
    let old_limit = sock.line_limit();
    let deadline = crate::net::deadline(sock.gettimeouts().2);
    sock.set_line_limit(MAX_REPLY_LINE);
    let result = read(sock, deadline);
    sock.set_line_limit(old_limit);
    result
}

fn next_line(sock: &mut Socket, deadline: Option<Instant>) -> Result<String> {
    let line = sock.receive_line_until(deadline)?;
    String::from_utf8(line)
        .map_err(|_| Error::with_message(ErrorKind::Protocol, "reply is not UTF-8"))
}

fn read_reply_lines(sock: &mut Socket, strict: bool, deadline: Option<Instant>) -> Result<Reply> {
    let first = next_line(sock, deadline)?;
    let mut total = first.len() + 2;
    let parsed = parse_line(&first);
    let code = match parsed.code {
        Some(code) if (100..600).contains(&code) => code,
        _ => {
            return Err(Error::with_message(
                ErrorKind::Protocol,
                format!("malformed reply line: {:?}", truncate(&first)),
            ))
        }
    };
    let mut lines = vec![parsed.text.to_string()];
    let mut more = parsed.more;
    while more {
        if lines.len() >= MAX_REPLY_LINES {
            return Err(Error::with_message(
                ErrorKind::LimitExceeded,
                format!("reply longer than {MAX_REPLY_LINES} lines"),
            ));
        }
        let line = next_line(sock, deadline)?;
        total += line.len() + 2;
        if total > MAX_REPLY_BYTES {
            return Err(Error::with_message(
                ErrorKind::LimitExceeded,
                format!("reply longer than {MAX_REPLY_BYTES} bytes"),
            ));
        }
        let parsed = parse_line(&line);
        match parsed.code {
            Some(c) if c == code && !parsed.more => {
                lines.push(parsed.text.to_string());
                more = false;
            }
            Some(c) if c == code => lines.push(parsed.text.to_string()),
            _ if strict => {
                return Err(Error::with_message(
                    ErrorKind::Protocol,
                    format!(
                        "line without the code {code} inside a multi-line reply: {:?}",
                        truncate(&line)
                    ),
                ))
            }
            // FTP allows free text inside a multi-line reply.
            _ => lines.push(line),
        }
    }
    Ok(Reply { code, lines })
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_codes_and_separators() {
        assert_eq!(
            parse_line("250-first"),
            ReplyLine {
                code: Some(250),
                more: true,
                text: "first"
            }
        );
        assert!(!parse_line("250 last").more);
        assert_eq!(parse_line("250").code, Some(250));
        assert_eq!(parse_line("25x ok").code, None);
        assert_eq!(parse_line("2500 ok").code, None);
        assert_eq!(parse_line(" free text").text, " free text");
        assert_eq!(parse_line("").code, None);
        assert_eq!(parse_line("é").code, None);
    }

    #[test]
    fn expect_turns_unexpected_codes_into_rejections() {
        let reply = Reply {
            code: 550,
            lines: vec!["no such user".into()],
        };
        let err = reply.clone().expect(&[250, 251]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert_eq!(err.reply_code(), Some(550));
        assert_eq!(err.to_string(), "rejected: 550 no such user");
        assert!(reply.expect_class(5).is_ok());
    }
}
