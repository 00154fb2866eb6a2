//! `client::smtp` against a real aiosmtpd (tests/peers/smtp_peer.py) on loopback.
//!
//! Each test starts its own server on a free port and checks what it stored
//! (OUTDIR/NNNN.eml and .json). Without python3 + aiosmtpd the tests skip with a note,
//! unless `CI` is set, where they fail.

mod util;

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use copas::client::smtp::{self, AuthMechanism, Mail, Message, StartTls};
use copas::native_tls::Certificate;
use copas::ErrorKind;
use util::Watchdog;

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "copas-smtp-{}-{}-{what}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A running smtp_peer.py; stopped with SIGTERM when dropped.
struct Peer {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Peer {
    fn start(args: &[&str]) -> Peer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtp_peer.py");
        let out = temp_dir("out");
        for _attempt in 0..3 {
            let port = {
                let l = TcpListener::bind("127.0.0.1:0").expect("bind");
                l.local_addr().unwrap().port()
            };
            let mut child = Command::new("python3")
                .arg(&script)
                .arg(port.to_string())
                .arg(&out)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn python3");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            let ready = loop {
                match rx.recv_timeout(Duration::from_secs(15)) {
                    Ok(line) if line.starts_with("READY") => break true,
                    Ok(_) => continue,
                    Err(_) => break false,
                }
            };
            if ready {
                // Keep draining its output in the reader thread (the channel is dropped).
                return Peer { child, port, out };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("smtp_peer.py did not get READY");
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn stored(&self, n: usize) -> (Vec<u8>, String) {
        let base = self.out.join(format!("{n:04}"));
        let eml = std::fs::read(base.with_extension("eml")).expect("stored .eml");
        let json = std::fs::read_to_string(base.with_extension("json")).expect("stored .json");
        (eml, json)
    }

    fn count(&self) -> usize {
        std::fs::read_dir(&self.out)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))
                })
                .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its id.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..200 {
            if self.child.try_wait().ok().flatten().is_some() {
                let _ = std::fs::remove_dir_all(&self.out);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.out);
    }
}

/// The test PKI of test-peers.md A.1: a CA, a server certificate for localhost and
/// 127.0.0.1, and an unrelated CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make() -> Pki {
        let dir = temp_dir("pki");
        util::make_test_pki(&dir);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn cert(&self, name: &str) -> Certificate {
        Certificate::from_pem(&std::fs::read(self.dir.join(name)).unwrap()).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn mail(peer: &Peer) -> Mail {
    Mail::new(peer.addr(), "sender@example.org")
        .domain("client.test")
        .timeout(TIMEOUT)
}

/// A watchdog of a minute for `what` and a server started with `args`; `None` (the test
/// skips) without aiosmtpd outside CI.
fn served(what: &str, args: &[&str]) -> Option<(Watchdog, Peer)> {
    if !util::aiosmtpd_available() {
        return None;
    }
    let dog = Watchdog::new(what, Duration::from_secs(60));
    Some((dog, Peer::start(args)))
}

/// Starts a server, sends it `message` for `a@example.org`, checks that it stored the bytes
/// unchanged, and returns it for the stored file to be read back.
fn delivered(message: &[u8]) -> Peer {
    let peer = Peer::start(&[]);
    mail(&peer)
        .to("a@example.org")
        .message(message.to_vec())
        .send()
        .expect("send");
    assert_eq!(peer.stored(1).0, message);
    peer
}

#[test]
fn three_recipients_with_dot_stuffing_from_coroutines() {
    let Some((_dog, peer)) = served("smtp three recipients", &[]) else {
        return;
    };
    let message = b"From: sender@example.org\r\nTo: a@example.org\r\nSubject: dots\r\n\r\n\
first line\r\n.dot line\r\n..two dots\r\n.\r\nlast line\r\n"
        .to_vec();
    let m = mail(&peer)
        .to("a@example.org")
        .to("b@example.org")
        .to("c@example.org")
        .message(message.clone());

    // Inside a coroutine, with a ticker that must keep ticking meanwhile.
    let result = Rc::new(RefCell::new(None));
    let ticks = Rc::new(RefCell::new(0u32));
    {
        let slot = result.clone();
        copas::addthread(move || {
            *slot.borrow_mut() = Some(smtp::send(&m).map(|r| r.code()));
        })
        .unwrap();
        let result = result.clone();
        let ticks = ticks.clone();
        copas::addthread(move || {
            for _ in 0..2000 {
                if result.borrow().is_some() {
                    break;
                }
                *ticks.borrow_mut() += 1;
                copas::pause(Duration::from_millis(1));
            }
        })
        .unwrap();
    }
    copas::run().unwrap();
    let code = result.borrow_mut().take().expect("send finished");
    assert_eq!(code.expect("send"), 250);
    assert!(*ticks.borrow() > 0);

    let (eml, json) = peer.stored(1);
    assert_eq!(eml, message, "stored:\n{}", String::from_utf8_lossy(&eml));
    assert!(
        json.contains(r#""mail_from": "sender@example.org""#),
        "{json}"
    );
    assert!(
        json.contains(r#""rcpt_tos": ["a@example.org", "b@example.org", "c@example.org"]"#),
        "{json}"
    );
    assert!(json.contains(r#""tls": false"#), "{json}");

    // Bare LF is sent as CRLF; from plain main (blocking).
    let reply = mail(&peer)
        .to("d@example.org")
        .message(b"Subject: lf\n\n.x\nend".to_vec())
        .send()
        .expect("send from main");
    assert_eq!(reply.code(), 250);
    let (eml, _) = peer.stored(2);
    assert_eq!(eml, b"Subject: lf\r\n\r\n.x\r\nend\r\n");

    // 8-bit content (BODY=8BITMIME, which aiosmtpd offers) arrives byte for byte.
    let eight = "Subject: 8bit\r\n\r\nGrüße, ünïcödé\r\n"
        .as_bytes()
        .to_vec();
    mail(&peer)
        .to("e@example.org")
        .message(eight.clone())
        .send()
        .expect("8-bit send");
    assert_eq!(peer.stored(3).0, eight);
}

#[test]
fn auth_plain_and_login() {
    let Some((_dog, peer)) = served("smtp auth", &["--require-auth"]) else {
        return;
    };
    let body = b"Subject: auth\r\n\r\nhello\r\n".to_vec();

    for (n, mech) in [(1, AuthMechanism::Plain), (2, AuthMechanism::Login)] {
        mail(&peer)
            .to("a@example.org")
            .message(body.clone())
            .auth("user", "secret")
            .auth_mechanism(mech)
            .send()
            .unwrap_or_else(|e| panic!("{mech:?}: {e}"));
        let (_, json) = peer.stored(n);
        assert!(json.contains(r#""authenticated": true"#), "{json}");
        assert!(json.contains(r#""login": "user""#), "{json}");
    }

    // Wrong password: the 535 reply comes back.
    for mech in [AuthMechanism::Auto, AuthMechanism::Login] {
        let e = mail(&peer)
            .to("a@example.org")
            .message(body.clone())
            .auth("user", "wrong")
            .auth_mechanism(mech)
            .send()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
        assert_eq!(e.reply_code(), Some(535), "{e}");
    }

    // No credentials where they are required: 530 at MAIL FROM.
    let e = mail(&peer)
        .to("a@example.org")
        .message(body)
        .send()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert_eq!(e.reply_code(), Some(530), "{e}");
    assert_eq!(peer.count(), 2);
}

#[test]
fn starttls_when_offered_and_required() {
    if !util::aiosmtpd_available() {
        return;
    }
    let _dog = Watchdog::new("smtp starttls", Duration::from_secs(90));
    let pki = Pki::make();
    let peer = Peer::start(&[
        "--tls",
        &pki.path("server-chain.pem"),
        &pki.path("server.key"),
        "--require-auth",
    ]);
    let body = b"Subject: tls\r\n\r\nsecret stuff\r\n.dot\r\n".to_vec();

    // Required, with our CA, and AUTH over the encrypted channel.
    let reply = mail(&peer)
        .to("a@example.org")
        .to("b@example.org")
        .message(body.clone())
        .starttls(StartTls::Required)
        .add_root_certificate(pki.cert("ca.pem"))
        .auth("user", "secret")
        .send()
        .expect("STARTTLS send");
    assert_eq!(reply.code(), 250);
    let (eml, json) = peer.stored(1);
    assert_eq!(eml, body);
    assert!(json.contains(r#""tls": true"#), "{json}");
    assert!(json.contains(r#""login": "user""#), "{json}");

    // When offered (the default) it is used too; server name "localhost" verifies.
    mail(&peer)
        .to("a@example.org")
        .message(body.clone())
        .add_root_certificate(pki.cert("ca.pem"))
        .tls_server_name("localhost")
        .auth("user", "secret")
        .send()
        .expect("STARTTLS when offered");
    assert!(peer.stored(2).1.contains(r#""tls": true"#));

    // An unrelated CA: the handshake fails, nothing is delivered.
    let e = mail(&peer)
        .to("a@example.org")
        .message(body.clone())
        .add_root_certificate(pki.cert("other.pem"))
        .auth("user", "secret")
        .send()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert_eq!(peer.count(), 2);

    // Required but not offered (a plain server): refused before MAIL FROM.
    let plain = Peer::start(&[]);
    let e = mail(&plain)
        .to("a@example.org")
        .message(body)
        .starttls(StartTls::Required)
        .send()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert_eq!(plain.count(), 0);
}

#[test]
fn rejected_recipient_is_a_typed_error() {
    let Some((_dog, peer)) = served("smtp 550", &["--reject-rcpt", "nobody@example.org"]) else {
        return;
    };
    let e = mail(&peer)
        .to("a@example.org")
        .to("nobody@example.org")
        .message(b"Subject: x\r\n\r\nx\r\n".to_vec())
        .send()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert_eq!(e.reply_code(), Some(550));
    assert!(e.to_string().contains("No such user"), "{e}");
    assert_eq!(peer.count(), 0);
    // The server is still fine for the next mail.
    mail(&peer)
        .to("a@example.org")
        .message(b"Subject: y\r\n\r\ny\r\n".to_vec())
        .send()
        .expect("next send");
    assert_eq!(peer.count(), 1);
}

#[test]
fn crlf_injection_refused_before_connecting() {
    let _dog = Watchdog::new("smtp crlf", Duration::from_secs(30));
    let (listener, addr) = util::local_listener();
    listener.set_nonblocking(true).unwrap();
    let server = addr.to_string();
    let cases = [
        Mail::new(&server, "a@example.org\r\nRCPT TO:<evil@example.org>").to("b@example.org"),
        Mail::new(&server, "a@example.org").to("b@example.org\nDATA"),
        Mail::new(&server, "a@example.org")
            .to("b@example.org")
            .to("c@example.org\r"),
        Mail::new(&server, "a@example.org")
            .to("b@example.org")
            .domain("x\r\nMAIL FROM:<evil>"),
        Mail::new(&server, "a@example.org"),
        // Addresses go inside `<…>`: no way out of it, nor ESMTP parameters after it.
        Mail::new(&server, "a@example.org").to("b@example.org> NOTIFY=SUCCESS,FAILURE"),
        Mail::new(&server, "a@example.org> SIZE=1").to("b@example.org"),
        Mail::new(&server, "a@example.org").to("b@example.org\tx"),
        Mail::new(&server, "<a@example.org").to("b@example.org"),
    ];
    for m in cases {
        let e = smtp::send(&m.message(b"x\r\n".to_vec())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
    for bad in [
        Message::new().subject("hi\r\nBcc: evil@example.org"),
        Message::new().from("a@example.org\nBcc: evil@example.org"),
        Message::new().to("b@example.org\r"),
        Message::new().header("X-Tag", "a\nb"),
        Message::new().attach("a\r\n.txt", "text/plain", vec![1]),
    ] {
        assert_eq!(bad.build().unwrap_err().kind(), ErrorKind::InvalidInput);
    }
    // Nobody connected.
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

/// Finds the base64 body of the part whose headers name `filename`, and decodes it.
fn attachment(eml: &str, filename: &str) -> Vec<u8> {
    let at = eml
        .find(&format!("filename=\"{filename}\""))
        .unwrap_or_else(|| panic!("no part {filename} in:\n{eml}"));
    let rest = &eml[at..];
    let body = &rest[rest.find("\r\n\r\n").expect("part body") + 4..];
    let mut b64 = String::new();
    for line in body.split("\r\n") {
        if line.starts_with("--") || line.is_empty() {
            break;
        }
        assert!(line.len() <= 76, "base64 line of {} chars", line.len());
        b64.push_str(line);
    }
    BASE64.decode(b64).expect("base64")
}

#[test]
fn attachments_round_trip() {
    let Some((_dog, peer)) = served("smtp attachments", &[]) else {
        return;
    };
    let binary: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let csv = b"a,b\n1,2\n.3,4\n".to_vec();
    let message = Message::new()
        .from("Sender <sender@example.org>")
        .to("a@example.org")
        .to("b@example.org")
        .subject("Report — two files")
        .header("X-Mailer", "copas tests")
        .text("Hello,\n.files attached.\n")
        .attach("data.bin", "application/octet-stream", binary.clone())
        .attach("table.csv", "text/csv", csv.clone())
        .build()
        .expect("build");
    mail(&peer)
        .to("a@example.org")
        .to("b@example.org")
        .message(message.clone())
        .send()
        .expect("send");
    let (eml, json) = peer.stored(1);
    assert_eq!(eml, message);
    assert!(json.contains(r#""rcpt_tos": ["a@example.org", "b@example.org"]"#));
    let eml = String::from_utf8(eml).unwrap();
    for header in [
        "From: Sender <sender@example.org>\r\n",
        "To: a@example.org, b@example.org\r\n",
        "Subject: =?UTF-8?B?",
        "X-Mailer: copas tests\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: multipart/mixed; boundary=",
        "\r\nDate: ",
        "\r\nMessage-ID: <",
    ] {
        assert!(eml.contains(header), "{header:?} missing in:\n{eml}");
    }
    assert!(eml.contains("\r\n.files attached.\r\n"));
    assert_eq!(attachment(&eml, "data.bin"), binary);
    assert_eq!(attachment(&eml, "table.csv"), csv);

    // Python's email parser agrees.
    let script = format!(
        "import email,sys\nm=email.message_from_bytes(open(sys.argv[1],'rb').read())\n\
         parts=[p for p in m.walk() if p.get_filename()]\n\
         print(str(email.header.make_header(email.header.decode_header(m['Subject']))))\n\
         print(len(parts), parts[0].get_filename(), len(parts[0].get_payload(decode=True)), \
         parts[1].get_payload(decode=True)=={csv:?}.encode())",
        csv = String::from_utf8(csv).unwrap()
    );
    let path = peer.out.join("0001.eml");
    let out = Command::new("python3")
        .args(["-c", &script])
        .arg(&path)
        .output()
        .expect("python3");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out, "Report — two files\n2 data.bin 20000 True\n", "{out}");
}

/// File names that are not short plain ASCII go in RFC 2231's form: a non-ASCII name, one
/// with `"` and `\` (refused with `InvalidInput` before), and long ones in numbered pieces,
/// every header line within 78 octets. Python's parser reads each name back as given;
/// before, non-ASCII names went as RFC 2047 words inside quotes, which RFC 2047 §5 forbids
/// and Python's `get_filename` returned undecoded, and a 148-character name made a
/// 160-octet line.
#[test]
fn attachment_file_names_of_any_text_reach_the_reader_unchanged() {
    let _dog = Watchdog::new("smtp file names", Duration::from_secs(60));
    let names = [
        "plain name.txt".to_string(),
        "résumé – 2026.pdf".to_string(),
        r#"a "quoted" \ name; x=y.txt"#.to_string(),
        format!("{}.pdf", "Überweisungsbeleg für März ".repeat(6)),
        format!("{}.log", "long-ascii-name_".repeat(9)),
    ];
    let message = names
        .iter()
        .fold(
            Message::new()
                .from("sender@example.org")
                .to("a@example.org")
                .subject("names")
                .text("see attached\n"),
            |m, name| m.attach(name, "application/octet-stream", name.as_bytes().to_vec()),
        )
        .build()
        .expect("build");
    let eml = String::from_utf8(message.clone()).expect("ASCII mail");
    assert!(eml.is_ascii());
    let longest = eml.split("\r\n").map(str::len).max().unwrap();
    assert!(longest <= 78, "a line of {longest} octets:\n{eml}");
    assert!(eml.contains("filename=\"plain name.txt\""), "{eml}");
    if !util::aiosmtpd_available() {
        return;
    }
    let peer = delivered(&message);
    let script = "import email,email.utils,sys\n\
                  m=email.message_from_bytes(open(sys.argv[1],'rb').read())\n\
                  for p in m.walk():\n\
                  \x20   n=p.get_filename()\n\
                  \x20   if n: print(n == p.get_payload(decode=True).decode(), \
                  n == email.utils.collapse_rfc2231_value(p.get_param('name')), n)";
    let out = python_on(&peer.out.join("0001.eml"), script);
    let expected: String = names.iter().map(|n| format!("True True {n}\n")).collect();
    assert_eq!(out, expected);
}

/// Mail lines carry at most 998 octets (RFC 5322 §2.1.1): a text with a longer line goes
/// `quoted-printable`, every line of it within 76 characters, and a real parser (Python's)
/// decodes it back to the text, `=`, trailing spaces and non-ASCII included.
#[test]
fn a_text_line_over_998_octets_is_sent_quoted_printable() {
    if !util::aiosmtpd_available() {
        return;
    }
    let _dog = Watchdog::new("smtp long lines", Duration::from_secs(60));
    let text = format!(
        "short line\n{}= done \nnaïve line ending in a space \n.dot\nlast",
        "x=y ".repeat(500)
    );
    let message = Message::new()
        .from("sender@example.org")
        .to("a@example.org")
        .subject("long lines")
        .text(&text)
        .build()
        .expect("build");
    let eml = String::from_utf8(message.clone()).unwrap();
    assert!(eml.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
    let body = &eml[eml.find("\r\n\r\n").unwrap() + 4..];
    assert!(
        body.split("\r\n").all(|l| l.len() <= 76 && l.is_ascii()),
        "{body}"
    );
    let peer = delivered(&message);
    let script = "import email,sys\n\
                  m=email.message_from_bytes(open(sys.argv[1],'rb').read())\n\
                  sys.stdout.write(m.get_payload(decode=True).decode('utf-8').replace('\\r\\n','\\n'))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(peer.out.join("0001.eml"))
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{text}\n"));
}

#[test]
fn sendmail_example_delivers() {
    if !util::aiosmtpd_available() {
        return;
    }
    let _dog = Watchdog::new("sendmail example", Duration::from_secs(360));
    let bin = util::example_binary("sendmail");
    let peer = Peer::start(&["--require-auth"]);
    let mut child = Command::new(bin)
        .args([
            &peer.addr(),
            "me@example.org",
            "a@example.org,b@example.org",
            "From the example",
            "--user",
            "user",
            "--password",
            "secret",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sendmail");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"Hello from sendmail.\n.leading dot\n")
            .unwrap();
    }
    let out = child.wait_with_output().expect("sendmail output");
    assert!(
        out.status.success(),
        "sendmail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sent: 250"));
    let (eml, json) = peer.stored(1);
    let eml = String::from_utf8(eml).unwrap();
    assert!(eml.contains("Subject: From the example\r\n"), "{eml}");
    assert!(
        eml.contains("\r\n\r\nHello from sendmail.\r\n.leading dot\r\n"),
        "{eml}"
    );
    assert!(
        json.contains(r#""rcpt_tos": ["a@example.org", "b@example.org"]"#),
        "{json}"
    );
    assert!(json.contains(r#""login": "user""#), "{json}");
}

/// A scripted server on a thread: it answers EHLO with `ehlo_answer` (a refusal plays an
/// RFC 821 server that does not know EHLO), the end of a message with `queued`, everything
/// else with 250. Returns its address and the thread, which returns the commands it received.
fn scripted_server(
    ehlo_answer: &'static [u8],
    queued: &'static [u8],
) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, Write};
    let (listener, addr) = util::local_listener();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        let mut seen = Vec::new();
        w.write_all(b"220 old.example ready\r\n").unwrap();
        let mut in_data = false;
        for _ in 0..100 {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let line = line.trim_end_matches("\r\n").to_string();
            seen.push(line.clone());
            let answer: &[u8] = if in_data {
                if line == "." {
                    in_data = false;
                    queued
                } else {
                    continue;
                }
            } else if line.starts_with("EHLO") {
                ehlo_answer
            } else if line == "DATA" {
                in_data = true;
                b"354 go ahead\r\n"
            } else if line == "QUIT" {
                w.write_all(b"221 bye\r\n").unwrap();
                break;
            } else {
                b"250 ok\r\n"
            };
            w.write_all(answer).unwrap();
        }
        seen
    });
    (addr, server)
}

/// A server that does not know EHLO: the client must fall back to HELO.
#[test]
fn helo_fallback_when_ehlo_is_refused() {
    let _dog = Watchdog::new("smtp helo fallback", Duration::from_secs(30));
    let (addr, server) = scripted_server(b"500 5.5.1 command unrecognized\r\n", b"250 queued\r\n");
    let reply = Mail::new(addr.to_string(), "a@example.org")
        .domain("client.test")
        .to("b@example.org")
        .message(b"Subject: old\r\n\r\n.\r\n".to_vec())
        .timeout(TIMEOUT)
        .auth("user", "secret")
        .auth_mechanism(AuthMechanism::Plain)
        .send();
    // AUTH was asked for but a HELO server offers no extensions: AUTH PLAIN is tried anyway
    // (the mechanism was forced) and this server says 250, which is not 235.
    let e = reply.unwrap_err();
    assert_eq!(e.reply_code(), Some(250), "{e}");
    let seen = server.join().unwrap();
    assert_eq!(seen[0], "EHLO client.test");
    assert_eq!(seen[1], "HELO client.test");
    assert!(seen[2].starts_with("AUTH PLAIN "));

    // Without AUTH the mail goes through, the lone "." line stuffed.
    let (addr, server) = scripted_server(b"502 5.5.2 not implemented\r\n", b"250 queued as 42\r\n");
    let reply = Mail::new(addr.to_string(), "a@example.org")
        .domain("client.test")
        .to("b@example.org")
        .message(b"Subject: old\r\n\r\n.\r\n".to_vec())
        .timeout(TIMEOUT)
        .send()
        .expect("send to a HELO server");
    assert_eq!(reply.to_string(), "250 queued as 42");
    let seen = server.join().unwrap();
    assert_eq!(
        seen,
        [
            "EHLO client.test",
            "HELO client.test",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<b@example.org>",
            "DATA",
            "Subject: old",
            "",
            "..",
            ".",
            "QUIT"
        ]
    );
}

/// Extensions offered without `AUTH`: credentials cannot be used, and `send` says so with
/// `Protocol` (as its docs say), before any mail command.
#[test]
fn no_usable_auth_mechanism_is_a_protocol_error() {
    let _dog = Watchdog::new("smtp no AUTH", Duration::from_secs(30));
    let (addr, server) = scripted_server(b"250-scripted\r\n250 8BITMIME\r\n", b"250 queued\r\n");
    let e = Mail::new(addr.to_string(), "a@example.org")
        .domain("client.test")
        .to("b@example.org")
        .message(b"Subject: x\r\n\r\nx\r\n".to_vec())
        .timeout(TIMEOUT)
        .auth("user", "secret")
        .send()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    assert_eq!(server.join().unwrap(), ["EHLO client.test"]);
}

/// The header of a built message, without the blank line.
fn head_of(message: &[u8]) -> String {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a blank line after the header");
    String::from_utf8(message[..end].to_vec()).expect("UTF-8 header")
}

/// Runs python3 `script` with `path` as its argument; returns what it printed (and its
/// errors, to show in a failed assertion).
fn python_on(path: &Path, script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// RFC 5322 §2.1.1: a line carries at most 998 octets and should keep to 78. 80 `To`
/// addresses made one 2,632-octet line, which aiosmtpd refused (`500 Line too long`); the
/// list is folded after each `, `, and a reader finds the same 80 addresses.
#[test]
fn a_long_address_list_is_folded_within_998_octets() {
    let _dog = Watchdog::new("smtp long To", Duration::from_secs(60));
    let recipients: Vec<String> = (0..80)
        .map(|i| format!("recipient-number-{i}@example.org"))
        .collect();
    let message = recipients
        .iter()
        .fold(Message::new().from("sender@example.org"), |m, r| m.to(r))
        .subject("many")
        .text("hi\n")
        .build()
        .expect("build");
    let head = head_of(&message);
    let longest = head.split("\r\n").map(str::len).max().unwrap();
    assert!(longest <= 78, "a header line of {longest} octets:\n{head}");
    if !util::aiosmtpd_available() {
        return;
    }
    let peer = delivered(&message);
    let script = "import email,email.utils,sys\n\
                  m=email.message_from_bytes(open(sys.argv[1],'rb').read())\n\
                  for _,a in email.utils.getaddresses(m.get_all('To')): print(a)";
    let out = python_on(&peer.out.join("0001.eml"), script);
    assert_eq!(out, recipients.join("\n") + "\n");
}

/// A 1,500-character subject was one 1,509-octet line, and a non-ASCII one came in encoded
/// words of 72 characters (81 with `Subject: `). Both are folded at white space into lines
/// of at most 78, encoded words within RFC 2047's 75, and a reader (Python's) unfolds and
/// decodes them back to the same text.
#[test]
fn long_subjects_are_folded_within_78_octets_and_read_back_unchanged() {
    let _dog = Watchdog::new("smtp long subjects", Duration::from_secs(60));
    let subjects = [
        format!("{}and  two  spaces", "word ".repeat(300)),
        "Grüße aus München, schöne Grüße — ".repeat(20) + "Ende",
    ];
    let messages: Vec<Vec<u8>> = subjects
        .iter()
        .map(|s| {
            Message::new()
                .subject(s)
                .text("x\n")
                .build()
                .expect("build")
        })
        .collect();
    for message in &messages {
        let head = head_of(message);
        let longest = head.split("\r\n").map(str::len).max().unwrap();
        assert!(longest <= 78, "a header line of {longest} octets:\n{head}");
        for word in head.split_whitespace().filter(|w| w.starts_with("=?")) {
            assert!(word.len() <= 75, "an encoded word of {} chars", word.len());
        }
    }
    if !util::aiosmtpd_available() {
        return;
    }
    let peer = Peer::start(&[]);
    for message in &messages {
        mail(&peer)
            .to("a@example.org")
            .message(message.clone())
            .send()
            .expect("send");
    }
    let script = "import email,email.policy,sys\n\
                  m=email.message_from_bytes(open(sys.argv[1],'rb').read(),policy=email.policy.default)\n\
                  print(m['Subject'])";
    for (n, subject) in subjects.iter().enumerate() {
        let out = python_on(&peer.out.join(format!("{:04}.eml", n + 1)), script);
        assert_eq!(out, format!("{subject}\n"));
    }
}

/// Where a value has no white space to fold at, a line over 998 octets (header name
/// included) cannot be avoided: `build` refuses it. 998 octets exactly still go, and a run
/// of 990 after white space goes on a line of its own.
#[test]
fn a_header_run_over_998_octets_without_white_space_is_invalid_input() {
    let too_long = [
        Message::new().subject("x".repeat(990)),
        Message::new().header("X-Token", "y".repeat(990)),
        Message::new().to(format!("{}@example.org", "z".repeat(990))),
        // Folded after "fine words", the run still takes 999 octets with its space.
        Message::new().subject(format!("fine words {}", "x".repeat(998))),
    ];
    for (i, m) in too_long.iter().enumerate() {
        let e = m.build().map(|_| ()).expect_err(&format!("case {i}"));
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "case {i}: {e}");
    }
    let longest = Message::new()
        .subject("x".repeat(989))
        .build()
        .expect("998 octets");
    let head = head_of(&longest);
    assert_eq!(head.split("\r\n").map(str::len).max(), Some(998));
    let folded = Message::new()
        .subject(format!("fine words {}", "x".repeat(990)))
        .build()
        .expect("folded before the run");
    assert!(head_of(&folded).contains("Subject: fine words\r\n xxx"));
}

/// RFC 2047 §5 allows encoded words in a display name only. A non-ASCII display name made
/// the whole address one encoded word (`Zoë <zoe@…>, bob@…` one word for both), so readers
/// found no address. Each address is written on its own, only its display name encoded
/// (a long one in several words) or quoted when it has specials, and a reader (Python's
/// `getaddresses`) finds every address and decodes every name back.
#[test]
fn a_non_ascii_display_name_is_encoded_apart_from_its_address() {
    let _dog = Watchdog::new("smtp display names", Duration::from_secs(60));
    let message = Message::new()
        .from("Jürgen Müller <juergen@example.org>")
        .to("Zoë <zoe@example.org>")
        .to("bob@example.org")
        .to("John Q. Public <jqp@example.org>")
        .cc("\"Müller, Jürgen\" <j@example.org>")
        .cc("Bérénice-Amélie Rosemonde Dûbois-Bénard <rose@example.org>")
        .header("Reply-To", "Zoë <zoe@example.org>")
        .subject("names")
        .text("x\n")
        .build()
        .expect("build");
    let head = head_of(&message);
    assert!(head.contains(" <juergen@example.org>\r\n"), "{head}");
    assert!(head.split("\r\n").all(|l| l.len() <= 78), "{head}");
    if !util::aiosmtpd_available() {
        return;
    }
    let peer = delivered(&message);
    let script = "import email,email.header,email.utils,sys\n\
                  m=email.message_from_bytes(open(sys.argv[1],'rb').read())\n\
                  for h in ['From','To','Cc','Reply-To']:\n\
                  \x20   for n,a in email.utils.getaddresses(m.get_all(h)):\n\
                  \x20       print(h, a, str(email.header.make_header(email.header.decode_header(n))))";
    let out = python_on(&peer.out.join("0001.eml"), script);
    assert_eq!(
        out,
        "From juergen@example.org Jürgen Müller\n\
         To zoe@example.org Zoë\n\
         To bob@example.org \n\
         To jqp@example.org John Q. Public\n\
         Cc j@example.org Müller, Jürgen\n\
         Cc rose@example.org Bérénice-Amélie Rosemonde Dûbois-Bénard\n\
         Reply-To zoe@example.org Zoë\n",
        "header:\n{head}"
    );
}

#[test]
fn many_sends_in_flight_from_coroutines() {
    let Some((_dog, peer)) = served("smtp concurrent", &[]) else {
        return;
    };
    const N: usize = 10;
    let done = Rc::new(RefCell::new(Vec::new()));
    let ticks = Rc::new(RefCell::new(0u32));
    for i in 0..N {
        let m = mail(&peer)
            .to(format!("r{i}@example.org"))
            .message(format!("Subject: n{i}\r\n\r\nbody {i}\r\n").into_bytes());
        let done = done.clone();
        copas::addthread(move || {
            let r = smtp::send(&m).map(|r| r.code());
            done.borrow_mut().push((i, r));
        })
        .unwrap();
    }
    {
        let done = done.clone();
        let ticks = ticks.clone();
        copas::addthread(move || {
            for _ in 0..5000 {
                if done.borrow().len() == N {
                    break;
                }
                *ticks.borrow_mut() += 1;
                copas::pause(Duration::from_millis(1));
            }
        })
        .unwrap();
    }
    copas::run().unwrap();
    let done = done.borrow();
    assert_eq!(done.len(), N);
    for (i, r) in done.iter() {
        assert_eq!(r.as_ref().map_err(|e| e.to_string()), Ok(&250), "send {i}");
    }
    assert!(*ticks.borrow() > 0);
    assert_eq!(peer.count(), N);
    let mut seen: Vec<String> = (1..=N)
        .map(|n| {
            let (eml, json) = peer.stored(n);
            let eml = String::from_utf8(eml).unwrap();
            let i = eml["Subject: n".len()..]
                .split("\r\n")
                .next()
                .unwrap()
                .to_string();
            assert!(eml.ends_with(&format!("body {i}\r\n")), "{eml}");
            assert!(json.contains(&format!(r#"["r{i}@example.org"]"#)), "{json}");
            i
        })
        .collect();
    seen.sort_by_key(|i| i.parse::<usize>().unwrap());
    assert_eq!(seen, (0..N).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[test]
fn a_silent_server_times_out() {
    let _dog = Watchdog::new("smtp timeout", Duration::from_secs(30));
    let (listener, addr) = util::local_listener();
    let holder = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        drop(stream);
    });
    let start = std::time::Instant::now();
    let e = Mail::new(addr.to_string(), "a@example.org")
        .to("b@example.org")
        .timeouts(
            Some(Duration::from_secs(5)),
            Some(Duration::from_secs(5)),
            Some(Duration::from_millis(300)),
        )
        .send()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        start.elapsed() < Duration::from_millis(1200),
        "{:?}",
        start.elapsed()
    );
    holder.join().unwrap();
}

/// A comma inside a comment (`Jane (work, main) <jane@…>`) is not a comma between
/// addresses: each address keeps its name, and a reader finds every address whole.
#[test]
fn a_comma_inside_a_comment_does_not_split_an_address() {
    let _dog = Watchdog::new("smtp comments", Duration::from_secs(60));
    let message = Message::new()
        .from("me@example.org")
        .to("Jane (work, main) <jane@example.org>")
        .to("bob@example.org (Bob, home)")
        .cc("Ann ((nested, comment)) <ann@example.org>, carl@example.org")
        .subject("comments")
        .text("x\n")
        .build()
        .expect("build");
    let head = head_of(&message);
    if !util::aiosmtpd_available() {
        return;
    }
    let peer = delivered(&message);
    let script = "import email,email.utils,sys\n\
                  m=email.message_from_bytes(open(sys.argv[1],'rb').read())\n\
                  for h in ['To','Cc']:\n\
                  \x20   for n,a in email.utils.getaddresses(m.get_all(h)):\n\
                  \x20       print(h, a)";
    let out = python_on(&peer.out.join("0001.eml"), script);
    assert_eq!(
        out,
        "To jane@example.org\n\
         To bob@example.org\n\
         Cc ann@example.org\n\
         Cc carl@example.org\n",
        "header:\n{head}"
    );
}

/// Before: addresses that are not ASCII went without `SMTPUTF8` (RFC 6531 §3.2 forbids it),
/// which a server reading strict ASCII refused with `500`.
#[test]
fn addresses_that_are_not_ascii_go_with_smtputf8_where_offered() {
    let Some((_dog, peer)) = served("smtp SMTPUTF8", &["--smtputf8"]) else {
        return;
    };
    let message = Message::new()
        .from("Zoë <zoë@example.org>")
        .to("jörg@example.org")
        .subject("utf-8")
        .text("grüße\n")
        .build()
        .expect("build");
    Mail::new(peer.addr(), "zoë@example.org")
        .domain("client.test")
        .timeout(TIMEOUT)
        .to("jörg@example.org")
        .to("a@example.org")
        .message(message.clone())
        .send()
        .expect("send");
    let (eml, json) = peer.stored(1);
    assert_eq!(
        eml, message,
        "the message, headers in UTF-8 (RFC 6532), unchanged"
    );
    for want in [
        r#""mail_from": "zo\u00eb@example.org""#,
        r#""rcpt_tos": ["j\u00f6rg@example.org", "a@example.org"]"#,
        r#""mail_options": ["BODY=8BITMIME", "SMTPUTF8"]"#,
    ] {
        assert!(json.contains(want), "{want} in {json}");
    }

    // ASCII throughout: no parameter, though the server offers it.
    mail(&peer)
        .to("a@example.org")
        .message(b"Subject: ascii\r\n\r\nx\r\n".to_vec())
        .send()
        .expect("send");
    let (_, json) = peer.stored(2);
    assert!(json.contains(r#""mail_options": []"#), "{json}");

    // An ASCII head over an 8-bit body, written with bare LF endings: 8BITMIME only. Before,
    // the head's end was looked for as CRLF CRLF in the caller's bytes, so with LF endings
    // the whole message counted as head and went with SMTPUTF8.
    mail(&peer)
        .to("a@example.org")
        .message("Subject: lf\n\ngrüße\n".as_bytes().to_vec())
        .send()
        .expect("send");
    let (_, json) = peer.stored(3);
    assert!(
        json.contains(r#""mail_options": ["BODY=8BITMIME"]"#),
        "{json}"
    );
}

#[test]
fn an_address_that_is_not_ascii_is_refused_by_a_server_without_smtputf8() {
    let Some((_dog, peer)) = served("smtp without SMTPUTF8", &[]) else {
        return;
    };
    for (from, to) in [
        ("zoë@example.org", "a@example.org"),
        ("me@example.org", "jörg@example.org"),
    ] {
        let e = Mail::new(peer.addr(), from)
            .domain("client.test")
            .timeout(TIMEOUT)
            .to(to)
            .message(b"Subject: x\r\n\r\nx\r\n".to_vec())
            .send()
            .expect_err("no SMTPUTF8 to carry the address");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("SMTPUTF8"), "{e}");
    }
    assert_eq!(peer.count(), 0);
    // A head that is not ASCII alone still goes, as to servers without the extension.
    let message = b"Subject: x\r\nTo: J\xc3\xb6rg <j@example.org>\r\n\r\nx\r\n";
    mail(&peer)
        .to("a@example.org")
        .message(message.to_vec())
        .send()
        .expect("send");
    assert_eq!(peer.stored(1).0, message);
}
