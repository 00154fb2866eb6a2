//! Property tests: the parsers that read what a peer sends never panic, whatever it sends,
//! and read well-formed input exactly. A fixed number of cases runs in `cargo test`.
//!
//! Covered: the SMTP/FTP reply-line parser, the FTP PASV/EPSV parsers, and the socket's line
//! reader (over a real loopback connection, with random input split at random points and a
//! random line limit).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use copas::client::ftp::{parse_epsv, parse_pasv, pasv_target};
use copas::client::reply::parse_line;
use copas::{ErrorKind, Pattern};
use proptest::prelude::*;

/// `cases` in `cargo test`; `PROPTEST_CASES=N` runs every property N times instead (the soak
/// does, see docs/reliability.md). proptest reads that variable only for its default config,
/// which an explicit count overrides.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // No regression files: the integration tests have no src/ to put them beside.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn reply_line_parser_never_panics_and_finds_codes(line in "\\PC{0,40}") {
        let parsed = parse_line(&line);
        let b = line.as_bytes();
        let has_code = b.len() >= 3
            && b[..3].iter().all(u8::is_ascii_digit)
            && matches!(b.get(3), None | Some(b' ') | Some(b'-'));
        prop_assert_eq!(parsed.code.is_some(), has_code);
        if let Some(code) = parsed.code {
            prop_assert_eq!(code.to_string(), format!("{:03}", code));
            prop_assert_eq!(format!("{:03}", code), &line[..3]);
        }
    }

    #[test]
    fn reply_line_parser_reads_well_formed_lines(code in 100u16..600, more: bool, text in "[ -~]{0,30}") {
        let line = format!("{code}{}{text}", if more { '-' } else { ' ' });
        let parsed = parse_line(&line);
        prop_assert_eq!(parsed.code, Some(code));
        prop_assert_eq!(parsed.more, more);
        prop_assert_eq!(parsed.text, text.as_str());
    }

    #[test]
    fn pasv_and_epsv_parsers_never_panic(text in "\\PC{0,60}") {
        let _ = parse_pasv(&text);
        let _ = parse_epsv(&text);
        let _ = pasv_target(&text, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    // Port 0 is refused by design (`parse_pasv`'s doc); any other port is read.
    #[test]
    fn pasv_reads_any_valid_address(a: u8, b: u8, c: u8, d: u8, port in 1u16.., noise in "[a-zA-Z .]{0,20}") {
        let text = format!("Entering Passive Mode {noise}({a},{b},{c},{d},{},{})", port >> 8, port & 0xff);
        prop_assert_eq!(parse_pasv(&text), Some((Ipv4Addr::new(a, b, c, d), port)));
        let peer = IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        let target = pasv_target(&text, peer);
        prop_assert!(target.is_ok());
        prop_assert_eq!(target.unwrap().port(), port);
    }

    #[test]
    fn pasv_octets_out_of_range_are_refused(big in 256u32..100_000) {
        let text = format!("Entering Passive Mode (127,0,0,{big},4,0)");
        prop_assert_eq!(parse_pasv(&text), None);
    }
}

/// A connected pair: a std writer and a copas socket (used outside any coroutine, so its
/// calls block the thread).
fn pair() -> (TcpStream, copas::Socket) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let writer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    let sock = copas::wrap(accepted).expect("wrap");
    sock.settimeout(Some(Duration::from_secs(10)));
    (writer, sock)
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn line_reader_returns_exactly_the_lines_within_the_limit(
        input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..3000),
        cuts in proptest::collection::vec(1usize..700, 0..8),
        limit in 1usize..600,
    ) {
        let (mut writer, mut sock) = pair();
        sock.set_line_limit(limit);
        let data = input.clone();
        let feeder = std::thread::spawn(move || {
            let mut at = 0;
            for cut in cuts {
                let end = (at + cut).min(data.len());
                writer.write_all(&data[at..end]).expect("write");
                at = end;
                std::thread::sleep(Duration::from_millis(1));
            }
            writer.write_all(&data[at..]).expect("write");
            // Dropping the writer ends the stream.
        });
        // What a correct reader must produce: each LF-terminated line without CRs; a line
        // longer than the limit comes out as LimitExceeded with exactly `limit` bytes, the
        // rest of it following; the unterminated tail as Closed with its bytes.
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut received = Vec::new();
        for _ in 0..input.len() + 2 {
            match sock.receive(Pattern::Line) {
                Ok(line) => {
                    prop_assert!(line.len() <= limit, "a line of {} bytes past a limit of {}", line.len(), limit);
                    received.extend(line.iter().copied());
                    received.push(b'\n');
                    got.push(line);
                }
                Err(e) if e.kind() == ErrorKind::LimitExceeded => {
                    prop_assert_eq!(e.partial().len(), limit);
                    received.extend_from_slice(e.partial());
                }
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorKind::Closed, "{}", e);
                    received.extend_from_slice(e.partial());
                    break;
                }
            }
        }
        feeder.join().expect("feeder");
        // No byte lost or invented: what came out, CRs aside, is the input with CRs removed
        // (CRs inside over-long lines are kept in `partial`, so compare without any CR).
        let strip = |v: &[u8]| v.iter().copied().filter(|&b| b != b'\r').collect::<Vec<u8>>();
        prop_assert_eq!(strip(&received), strip(&input));
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn line_limit_holds_at_its_boundary(limit in prop_oneof![1usize..4, 1usize..300]) {
        let (mut writer, mut sock) = pair();
        sock.set_line_limit(limit);
        let lengths: Vec<usize> = [limit.saturating_sub(1), limit, limit + 1, limit + 2].to_vec();
        let mut data = Vec::new();
        for &n in &lengths {
            data.extend(std::iter::repeat_n(b'a', n));
            data.push(b'\n');
        }
        writer.write_all(&data).expect("write");
        drop(writer);
        for &n in &lengths {
            if n <= limit {
                let line = sock.receive(Pattern::Line).expect("a line within the limit");
                prop_assert_eq!(line.len(), n);
            } else {
                // Over the limit: chunks of exactly `limit` bytes, then the rest of the line
                // (which may itself take several chunks when the limit is tiny).
                let mut consumed = 0;
                let mut chunks = 0;
                loop {
                    match sock.receive(Pattern::Line) {
                        Ok(rest) => {
                            prop_assert!(rest.len() <= limit);
                            consumed += rest.len();
                            break;
                        }
                        Err(e) => {
                            prop_assert_eq!(e.kind(), ErrorKind::LimitExceeded);
                            prop_assert_eq!(e.partial().len(), limit);
                            consumed += limit;
                            chunks += 1;
                            prop_assert!(chunks <= n, "endless chunks");
                        }
                    }
                }
                prop_assert!(chunks >= 1, "a line of {} bytes passed a limit of {}", n, limit);
                prop_assert_eq!(consumed, n);
            }
        }
        let end = sock.receive(Pattern::Line).expect_err("end of stream");
        prop_assert_eq!(end.kind(), ErrorKind::Closed);
    }
}
