//! `client::http` against a real nginx on loopback (plain and HTTPS with a CA made at test
//! time with the openssl CLI, `../shared/test-peers.md` A.1–A.2), and Copas's
//! `http-timeout` scenarios against a small copas server.
//!
//! Without nginx (or openssl) the nginx tests are skipped with a note, and fail when `CI`
//! is set.

mod util;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::client::http::{self, Redirect, Request};
use copas::native_tls::Certificate;
use copas::{ErrorKind, Socket};
use util::{ms, secs};
use util::{run_bounded, Watchdog};

/// The tests of this file take turns: `against_nginx` checks the process's VmRSS around a
/// 50 MiB download, which a sibling test's 32 MiB request body would otherwise distort.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two distinct ports free on 127.0.0.1 at the time of the call (both held until both are
/// known, so the kernel cannot hand out the same one twice).
fn free_port_pair() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    )
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const BIG: usize = 50 * 1024 * 1024;

fn big_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

struct Nginx {
    child: Child,
    dir: PathBuf,
    http: u16,
    https: u16,
    ca: Vec<u8>,
}

impl Nginx {
    fn start() -> Option<Nginx> {
        let module = "/usr/lib/nginx/modules/ngx_http_echo_module.so";
        if !have("nginx", "-v") || !have("openssl", "version") || !Path::new(module).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "nginx (with its echo module) and openssl are required in CI"
            );
            let _ = writeln!(
                std::io::stderr(),
                "note: nginx with the echo module or openssl not found; skipping the nginx tests"
            );
            return None;
        }
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = root.join(format!("http-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["pki", "tmp", "www"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        let pki = dir.join("pki");
        util::make_test_pki(&pki);
        let ca = std::fs::read(pki.join("ca.pem")).expect("ca.pem");
        std::fs::write(dir.join("www/index.html"), "hello static\n").expect("index");
        let big: Vec<u8> = (0..BIG).map(big_byte).collect();
        std::fs::write(dir.join("www/big.bin"), big).expect("big.bin");
        // A port picked free can be taken again before nginx binds it (other tests connect
        // and listen all the time): nginx then exits, and another pair is tried.
        for _attempt in 0..5 {
            let (http, https) = free_port_pair();
            if let Some(child) = Self::spawn_on(&dir, module, http, https) {
                return Some(Nginx {
                    child,
                    dir,
                    http,
                    https,
                    ca,
                });
            }
        }
        panic!("nginx did not start listening on any of 5 port pairs");
    }

    /// Starts nginx on `http` and `https`; `None` when it exited (a port was taken).
    fn spawn_on(dir: &Path, module: &str, http: u16, https: u16) -> Option<Child> {
        let conf = format!(
            r#"load_module {module};
worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fcgi;
    uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    default_type text/plain;
    keepalive_timeout 65; keepalive_requests 1000; client_body_buffer_size 1m;
    server {{
        listen 127.0.0.1:{http} backlog=1024;
        listen 127.0.0.1:{https} ssl backlog=1024;
        ssl_certificate     pki/server-chain.pem;
        ssl_certificate_key pki/server.key;
        root www;
        location = /redirect      {{ return 302 /index.html; }}
        location = /chain1        {{ return 302 /chain2; }}
        location = /chain2        {{ return 301 http://127.0.0.1:{http}/index.html; }}
        location = /to-http       {{ return 302 http://127.0.0.1:{http}/index.html; }}
        location = /redirect-loop {{ return 302 /redirect-loop; }}
        location = /chunked  {{ echo "chunk one"; echo_flush; echo_sleep 0.05; echo "chunk two"; }}
        location = /empty    {{ return 204; }}
        location = /not-modified {{ return 304; }}
        location = /conn     {{ return 200 "$connection\n"; }}
        location = /status/404 {{ return 404 "nope\n"; }}
        location = /echo-body {{ echo_read_request_body; echo_request_body; }}
        location = /small-body {{ client_max_body_size 1k; echo_read_request_body; echo_request_body; }}
        location = /headers   {{ echo $echo_client_request_headers; }}
    }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("conf");
        let p = dir.to_string_lossy().into_owned();
        let conf = dir.join("nginx.conf").to_string_lossy().into_owned();
        let mut child = Command::new("nginx")
            .args(["-e", "stderr", "-p", &p, "-c", &conf, "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx");
        let mut exited = false;
        let ready = util::wait_until(secs(10), || {
            exited = child.try_wait().ok().flatten().is_some();
            exited
                || (std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
                    && std::net::TcpStream::connect(("127.0.0.1", https)).is_ok())
        });
        if exited {
            return None;
        }
        assert!(ready, "nginx did not start listening");
        Some(child)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http, path)
    }

    fn surl(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.https, path)
    }

    fn ca(&self) -> Certificate {
        Certificate::from_pem(&self.ca).expect("ca")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SIGQUIT: graceful stop.
        unsafe {
            libc::kill(pid, libc::SIGQUIT);
        }
        let start = Instant::now();
        loop {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            if start.elapsed() > secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(ms(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A destination whose every write fails with its kind.
struct FailingWriter(io::ErrorKind);

impl Write for FailingWriter {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(self.0, "the destination failed"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Every nginx scenario, one nginx for all, from plain `main` and from coroutines.
#[test]
fn against_nginx() {
    let _turn = serial();
    let _dog = Watchdog::new("against_nginx", secs(400));
    let Some(ng) = Nginx::start() else { return };

    // GET
    let r = http::request(&ng.url("/index.html")).expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.reason(), "OK");
    assert_eq!(r.body(), b"hello static\n");
    assert_eq!(r.header("content-length"), Some("13"));
    assert!(r.header("Server").is_some_and(|s| s.starts_with("nginx")));
    assert_eq!(r.status_line(), "HTTP/1.1 200 OK");

    // 404 is a response, not an error
    let r = http::request(&ng.url("/status/404")).expect("404");
    assert_eq!((r.status(), r.body()), (404, &b"nope\n"[..]));

    // POST with a body, bytes and a reader of unknown length (chunked)
    let r = Request::post(&ng.url("/echo-body"))
        .header("Content-Type", "text/plain")
        .body("hello body")
        .send()
        .expect("POST");
    assert_eq!((r.status(), r.body()), (200, &b"hello body"[..]));
    // A body bigger than the socket takes at once: head and body go out as two slices of
    // one send, resumed inside the body.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let r = Request::post(&ng.url("/echo-body"))
        .body(big.clone())
        .send()
        .expect("POST big");
    assert_eq!(r.status(), 200);
    assert!(r.body() == big, "big request body echoed");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 26) as u8 + b'a').collect();
    let r = Request::post(&ng.url("/echo-body"))
        .body_reader(std::io::Cursor::new(data.clone()), None)
        .send()
        .expect("POST chunked");
    assert_eq!(r.status(), 200);
    assert!(r.body() == data, "chunked request body echoed");
    let r = Request::new("PUT", &ng.url("/echo-body"))
        .body_reader(std::io::Cursor::new(data.clone()), Some(data.len() as u64))
        .send()
        .expect("PUT with length");
    assert!(r.body() == data);

    // Request headers arrive (and a repeated one is sent twice)
    let r = Request::get(&ng.url("/headers"))
        .header("X-Test", "one")
        .header("X-Test", "two")
        .send()
        .expect("headers");
    let text = String::from_utf8_lossy(r.body()).to_string();
    assert!(
        text.contains("X-Test: one") && text.contains("X-Test: two"),
        "{text}"
    );
    assert!(text.contains(http::USERAGENT), "{text}");

    // Chunked response
    let r = http::request(&ng.url("/chunked")).expect("chunked");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body(), b"chunk one\nchunk two\n");

    // HEAD and 204: no body, and the connection stays usable
    let r = Request::head(&ng.url("/index.html")).send().expect("HEAD");
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("content-length"), Some("13"));
    assert!(r.body().is_empty());
    let r = http::request(&ng.url("/empty")).expect("204");
    assert_eq!(r.status(), 204);
    assert!(r.body().is_empty());
    assert_eq!(
        http::request(&ng.url("/index.html"))
            .expect("after")
            .status(),
        200
    );

    // Redirects: a chain 302 -> 301 -> 200, the final URL reported
    let r = http::request(&ng.url("/chain1")).expect("chain");
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), b"hello static\n");
    assert_eq!(r.url().as_str(), ng.url("/index.html"));
    let r = Request::get(&ng.url("/chain1"))
        .redirect(Redirect::None)
        .send()
        .expect("no follow");
    assert_eq!(r.status(), 302);
    assert!(r.header("location").is_some_and(|l| l.ends_with("/chain2")));
    // The limit
    let e = http::request(&ng.url("/redirect-loop")).expect_err("loop");
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    let e = Request::get(&ng.url("/chain1"))
        .max_redirects(1)
        .send()
        .expect_err("limit 1");
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    let r = Request::get(&ng.url("/chain1"))
        .max_redirects(2)
        .send()
        .expect("limit 2");
    assert_eq!(r.status(), 200);

    // HTTPS, verified against the test CA; scheme case-insensitive
    let r = Request::get(&ng.surl("/index.html"))
        .root_certificate(ng.ca())
        .send()
        .expect("https");
    assert_eq!((r.status(), r.body()), (200, &b"hello static\n"[..]));
    let upper = format!("HTTPS://127.0.0.1:{}/index.html", ng.https);
    let r = Request::get(&upper)
        .root_certificate(ng.ca())
        .send()
        .expect("HTTPS://");
    assert_eq!(r.url().scheme(), "https");
    assert_eq!(r.status(), 200);
    // Without the CA: the certificate is refused
    let e = http::request(&ng.surl("/index.html")).expect_err("untrusted");
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    // https -> http refused unless Redirect::All
    let e = Request::get(&ng.surl("/to-http"))
        .root_certificate(ng.ca())
        .send()
        .expect_err("https->http");
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert_eq!(e.reply_code(), Some(302));
    assert_eq!(
        e.message(),
        Some("Unallowed insecure redirect https to http")
    );
    let r = Request::get(&ng.surl("/to-http"))
        .root_certificate(ng.ca())
        .redirect(Redirect::All)
        .send()
        .expect("all");
    assert_eq!(r.status(), 200);
    assert_eq!(r.url().scheme(), "http");
    // Unknown scheme
    let e = http::request("gopher://127.0.0.1/").expect_err("gopher");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);

    // Keep-alive: 10 sequential requests on one TCP connection (nginx's $connection)
    let conns: Vec<String> = (0..10)
        .map(|_| {
            let r = http::request(&ng.url("/conn")).expect("conn");
            String::from_utf8_lossy(r.body()).trim().to_string()
        })
        .collect();
    assert!(conns.iter().all(|c| c == &conns[0]), "{conns:?}");
    // ... and over TLS
    let conns: Vec<String> = (0..10)
        .map(|_| {
            let r = Request::get(&ng.surl("/conn"))
                .root_certificate(ng.ca())
                .send()
                .expect("conn tls");
            String::from_utf8_lossy(r.body()).trim().to_string()
        })
        .collect();
    assert!(conns.iter().all(|c| c == &conns[0]), "{conns:?}");
    // keep_alive(false): a new connection each time
    let a = Request::get(&ng.url("/conn"))
        .keep_alive(false)
        .send()
        .expect("close");
    let b = Request::get(&ng.url("/conn"))
        .keep_alive(false)
        .send()
        .expect("close");
    assert_ne!(a.body(), b.body());

    // send_to a Write
    let mut out = Vec::new();
    let r = Request::get(&ng.url("/chunked"))
        .send_to(&mut out)
        .expect("send_to");
    assert_eq!(r.status(), 200);
    assert_eq!(out, b"chunk one\nchunk two\n");
    // ... whose own errors are `Io` with their kind kept, not taken for the server's
    // (a `BrokenPipe` came back as `Closed`, a `TimedOut` as `Timeout`).
    for kind in [
        io::ErrorKind::BrokenPipe,
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::TimedOut,
        io::ErrorKind::PermissionDenied,
    ] {
        let err = Request::get(&ng.url("/chunked"))
            .keep_alive(false)
            .send_to(&mut FailingWriter(kind))
            .expect_err("the destination fails");
        assert_eq!(err.kind(), ErrorKind::Io, "{kind:?}: {err}");
        assert_eq!(io::Error::from(err).kind(), kind);
    }

    // The http_get example, over https with the test CA, following a redirect
    let ca_file = ng.dir.join("pki/ca.pem");
    let out = Command::new(util::example_binary("http_get"))
        .arg(ng.surl("/redirect"))
        .arg("--ca")
        .arg(&ca_file)
        .stdin(Stdio::null())
        .output()
        .expect("run http_get");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains(&format!("(from {})", ng.surl("/index.html"))),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("content-length: 13"),
        "{text}"
    );
    assert!(text.ends_with("\n\nhello static\n"), "{text}");
    // Without the CA it fails, with the TLS error on stderr
    let out = Command::new(util::example_binary("http_get"))
        .arg(ng.surl("/index.html"))
        .stdin(Stdio::null())
        .output()
        .expect("run http_get");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http_get:"));

    // 50 MiB streamed with bounded memory, checked byte by byte
    let before = vm_rss_kib();
    let (r, mut body) = Request::get(&ng.url("/big.bin")).stream().expect("stream");
    assert_eq!(r.status(), 200);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = body.read(&mut buf).expect("read big");
        if n == 0 {
            break;
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, big_byte(total + k), "byte {}", total + k);
        }
        total += n;
    }
    assert_eq!(total, BIG);
    let grown = vm_rss_kib().saturating_sub(before);
    assert!(
        grown < 20 * 1024,
        "VmRSS grew by {grown} KiB for a 50 MiB download"
    );

    // From coroutines: 200 concurrent requests while a 10 ms ticker keeps ticking
    let ok = Rc::new(Cell::new(0usize));
    let ticks = Rc::new(Cell::new(0usize));
    let max_gap = Rc::new(Cell::new(Duration::ZERO));
    let running = Rc::new(Cell::new(true));
    {
        let (ticks, max_gap, running) = (ticks.clone(), max_gap.clone(), running.clone());
        copas::addthread(move || {
            let mut last = Instant::now();
            while running.get() {
                copas::pause(ms(10));
                ticks.set(ticks.get() + 1);
                max_gap.set(max_gap.get().max(last.elapsed()));
                last = Instant::now();
            }
        })
        .expect("ticker");
    }
    let errors = Rc::new(RefCell::new(Vec::new()));
    let left = Rc::new(Cell::new(200usize));
    for i in 0..200 {
        let (ok, errors, left, running) =
            (ok.clone(), errors.clone(), left.clone(), running.clone());
        let url = if i % 2 == 0 {
            ng.url("/chunked")
        } else {
            ng.url("/index.html")
        };
        copas::addthread(move || {
            match Request::get(&url).timeout(secs(30)).send() {
                Ok(r) if r.status() == 200 && !r.body().is_empty() => ok.set(ok.get() + 1),
                Ok(r) => errors.borrow_mut().push(format!("status {}", r.status())),
                Err(e) => errors.borrow_mut().push(e.to_string()),
            }
            left.set(left.get() - 1);
            if left.get() == 0 {
                running.set(false);
            }
        })
        .expect("addthread");
    }
    let took = run_bounded(secs(60));
    assert_eq!(ok.get(), 200, "errors: {:?}", errors.borrow());
    // Not starved: the ticker ran, and never waited long between turns. (How often it ran
    // in all is not asserted: on a loaded shared machine the whole process may be
    // descheduled for a while, which says nothing about the dispatcher.) A starved ticker
    // would wait out the requests; a loaded machine stretches every step alike, hence the
    // bound relative to the run.
    assert!(ticks.get() >= 1, "ticker ticked in {took:?}");
    let limit = ms(500).max(took / 4);
    assert!(
        max_gap.get() < limit,
        "ticker gap {:?} (limit {limit:?})",
        max_gap.get()
    );
}

/// Copas's http-timeout scenarios: a server that stalls at a given point of the exchange.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stall {
    None,
    RequestHeaders,
    RequestBody,
    /// Stalls before reading a 32 MiB chunked body: the client's send itself times out.
    RequestBodyLarge,
    ResponseHeaders,
    ResponseBody,
}

const BODY_LEN: usize = 1024;

fn serve(mut sock: Socket, stall: Stall) {
    sock.settimeout(Some(secs(5)));
    let stall_for = || {
        copas::pause(secs(2));
    };
    // Request head
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let Ok(b) = sock.receive(copas::Pattern::Exact(1)) else {
            return;
        };
        head.extend_from_slice(&b);
        if stall == Stall::RequestHeaders && head.len() == 100 {
            stall_for();
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if stall == Stall::RequestBody || stall == Stall::RequestBodyLarge {
        let _ = sock.receive(copas::Pattern::Exact(len / 2));
        stall_for();
        return;
    }
    let Ok(body) = sock.receive(copas::Pattern::Exact(len)) else {
        return;
    };
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if stall == Stall::ResponseHeaders {
        let _ = sock.send(&response.as_bytes()[..100.min(response.len() - 1)]);
        stall_for();
        return;
    }
    let _ = sock.send(response.as_bytes());
    if stall == Stall::ResponseBody {
        let _ = sock.send(&body[..body.len() / 2]);
        stall_for();
        return;
    }
    let _ = sock.send(&body);
}

#[test]
fn http_timeout_scenarios() {
    let _turn = serial();
    let (listener, addr) = util::local_listener();
    let stall = Rc::new(Cell::new(Stall::None));
    let server = {
        let stall = stall.clone();
        copas::addserver(listener, move |sock| serve(sock, stall.get())).expect("addserver")
    };
    let results = Rc::new(RefCell::new(Vec::new()));
    {
        let (stall, results) = (stall.clone(), results.clone());
        copas::addthread(move || {
            let body: Vec<u8> = (0..BODY_LEN).map(|i| b'a' + (i % 26) as u8).collect();
            for s in [
                Stall::None,
                Stall::RequestHeaders,
                Stall::RequestBody,
                Stall::RequestBodyLarge,
                Stall::ResponseHeaders,
                Stall::ResponseBody,
                Stall::None,
            ] {
                stall.set(s);
                let mut req = Request::post(&format!("http://{addr}/")).timeout(ms(500));
                req = if s == Stall::RequestBodyLarge {
                    let big = std::io::Cursor::new(vec![b'z'; 32 << 20]);
                    req.body_reader(big, None)
                } else {
                    req.body(body.clone())
                };
                for i in 1..=6 {
                    req = req.header(&format!("X-Custom-{i}"), &"x".repeat(20));
                }
                let started = Instant::now();
                let outcome = match req.send() {
                    Ok(r) => {
                        assert_eq!(r.body(), &body[..]);
                        Ok(r.status())
                    }
                    Err(e) => Err(e.kind()),
                };
                results.borrow_mut().push((s, outcome, started.elapsed()));
            }
            copas::removeserver(server, false).expect("removeserver");
        })
        .expect("client");
    }
    run_bounded(secs(30));
    let results = results.borrow();
    assert_eq!(results.len(), 7, "{results:?}");
    for (s, outcome, took) in results.iter() {
        match s {
            Stall::None => assert_eq!(*outcome, Ok(200), "{results:?}"),
            _ => {
                assert_eq!(*outcome, Err(ErrorKind::Timeout), "{s:?}: {results:?}");
                assert!(*took < secs(2), "{s:?} took {took:?}");
            }
        }
    }
}

/// Malformed responses give typed errors (a tiny copas server sends canned replies).
#[test]
fn framing_errors() {
    let _turn = serial();
    let cases: Vec<(&'static str, Result<&'static [u8], ErrorKind>)> = vec![
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            Err(ErrorKind::Protocol),
        ),
        ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", Err(ErrorKind::Protocol)),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            Err(ErrorKind::Protocol),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            Ok(b"hello world"),
        ),
        (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Ok(b"ok"),
        ),
        ("HTTP/1.0 200 OK\r\n\r\nuntil close", Ok(b"until close")),
        (
            "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
            Ok(b"ok"),
        ),
        ("garbage\r\n\r\n", Err(ErrorKind::Protocol)),
    ];
    let many = format!(
        "HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n",
        "X-H: v\r\n".repeat(200)
    );
    let long_chunk = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1{}\r\n",
        ";".repeat(10_000)
    );
    let huge = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "v".repeat(100_000));
    let mut cases: Vec<(String, Result<Vec<u8>, ErrorKind>)> = cases
        .into_iter()
        .map(|(s, r)| (s.to_string(), r.map(|b| b.to_vec())))
        .collect();
    cases.push((many, Err(ErrorKind::LimitExceeded)));
    cases.push((long_chunk, Err(ErrorKind::LimitExceeded)));
    cases.push((huge, Err(ErrorKind::LimitExceeded)));
    let n = cases.len();
    let replies: Rc<Vec<String>> = Rc::new(cases.iter().map(|(s, _)| s.clone()).collect());
    let (listener, addr) = util::local_listener();
    let next = Rc::new(Cell::new(0usize));
    let server = {
        let (replies, next) = (replies.clone(), next.clone());
        copas::addserver(listener, move |mut sock| {
            sock.settimeout(Some(secs(5)));
            let i = next.get();
            next.set(i + 1);
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                match sock.receive(copas::Pattern::Exact(1)) {
                    Ok(b) => head.extend_from_slice(&b),
                    Err(_) => return,
                }
            }
            let _ = sock.send(replies[i].as_bytes());
            sock.close();
        })
        .expect("addserver")
    };
    let got = Rc::new(RefCell::new(Vec::new()));
    {
        let got = got.clone();
        copas::addthread(move || {
            for _ in 0..n {
                let r = Request::get(&format!("http://{addr}/"))
                    .timeout(secs(5))
                    .keep_alive(false)
                    .send();
                got.borrow_mut()
                    .push(r.map(|r| r.into_body()).map_err(|e| e.kind()));
            }
            copas::removeserver(server, false).expect("removeserver");
        })
        .expect("client");
    }
    run_bounded(secs(30));
    let got = got.borrow();
    for (i, (case, expected)) in cases.iter().enumerate() {
        assert_eq!(
            &got[i],
            expected,
            "case {i}: {:?}",
            &case[..case.len().min(80)]
        );
    }
}

/// A peer on a thread that reads one request's head, sends `head_and_data` (a chunked
/// response cut after a chunk's data, before its CRLF), then waits for `go` (or its
/// sender's drop) and sends `rest`, or with no `rest` ends its sending side at once.
fn chunked_body_cut_before_a_crlf(
    rest: Option<&'static [u8]>,
) -> (
    String,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (listener, addr) = util::local_listener();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(secs(10))).expect("timeout");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 65_536 {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello",
        )
        .expect("write");
        match rest {
            Some(rest) => {
                let _ = wait.recv_timeout(secs(10));
                let _ = s.write_all(rest);
            }
            None => s.shutdown(std::net::Shutdown::Write).expect("shutdown"),
        }
        let _ = s.read_to_end(&mut Vec::new());
    });
    (format!("http://{addr}/"), go, peer)
}

/// Before: the read that took a chunk's data went on to read the CRLF after it, and when
/// that failed (a receive timeout here) the data it had read was dropped with the error,
/// against std's `Read` (an error means nothing was read; `read_to_end` keeps what came).
#[test]
fn a_chunk_whose_crlf_is_late_is_handed_over_before_the_timeout() {
    let _turn = serial();
    let (url, go, peer) = chunked_body_cut_before_a_crlf(Some(b"\r\n0\r\n\r\n"));
    let (_, mut body) = Request::get(&url)
        .timeouts(Some(secs(10)), Some(secs(10)), Some(ms(300)))
        .stream()
        .expect("head");
    let mut got = Vec::new();
    let r = body.read_to_end(&mut got);
    assert_eq!(
        r.expect_err("the CRLF never came in time").kind(),
        io::ErrorKind::TimedOut
    );
    assert_eq!(got, b"hello", "the chunk's data, read before the timeout");
    drop(body);
    drop(go);
    peer.join().expect("peer");
}

/// The same for a peer that closes right after a chunk's data: the data first, then the
/// error for the body cut short.
#[test]
fn a_chunk_cut_before_its_crlf_is_read_and_then_reported_cut() {
    let _turn = serial();
    let (url, _go, peer) = chunked_body_cut_before_a_crlf(None);
    let (_, mut body) = Request::get(&url).timeout(secs(10)).stream().expect("head");
    let mut buf = [0u8; 64];
    assert_eq!(body.read(&mut buf).expect("the chunk's data"), 5);
    assert_eq!(&buf[..5], b"hello");
    let e = body.read(&mut buf).expect_err("the body was cut");
    let e = copas::Error::from(e);
    assert_eq!(e.kind(), ErrorKind::Closed, "{e:?}");
    drop(body);
    peer.join().expect("peer");
}

/// A response head sent in small pieces, with blank lines before its status line, more
/// fields than the client first makes room for, a folded value, a value that is not
/// UTF-8 and padded values: every field arrives as the head said it.
#[test]
fn response_head_fields_arrive_whole_and_in_order() {
    let _turn = serial();
    let mut head = String::from("\r\n\nHTTP/1.1 200 OK\r\n");
    for i in 0..40 {
        head.push_str(&format!("X-F{i}: value {i}\r\n"));
    }
    head.push_str("X-Folded: first\r\n  second\r\n\tthird\r\n");
    head.push_str("X-Padded: \t spaced out \t\r\n");
    head.push_str("Content-Length: 2\r\n\r\nok");
    let mut reply = head.into_bytes();
    // A value that is not UTF-8, before the Content-Length field.
    let at = reply
        .windows(16)
        .position(|w| w == b"Content-Length: ")
        .unwrap();
    reply.splice(at..at, b"X-Latin1: caf\xe9\r\n".iter().copied());
    let (listener, addr) = util::local_listener();
    let server = copas::addserver(listener, move |mut sock| {
        sock.settimeout(Some(secs(5)));
        let mut asked = Vec::new();
        while !asked.ends_with(b"\r\n\r\n") {
            match sock.receive(copas::Pattern::Exact(1)) {
                Ok(b) => asked.extend_from_slice(&b),
                Err(_) => return,
            }
        }
        // Seven bytes at a time, so lines and the head's end straddle the reads.
        for piece in reply.chunks(7) {
            if sock.send(piece).is_err() {
                return;
            }
            copas::pause(Duration::ZERO);
        }
        sock.close();
    })
    .expect("addserver");
    let got = Rc::new(RefCell::new(None));
    {
        let got = got.clone();
        copas::addthread(move || {
            let r = Request::get(&format!("http://{addr}/"))
                .timeout(secs(5))
                .keep_alive(false)
                .send();
            *got.borrow_mut() = Some(r);
            copas::removeserver(server, false).expect("removeserver");
        })
        .expect("client");
    }
    run_bounded(secs(30));
    let r = got
        .borrow_mut()
        .take()
        .expect("the client ran")
        .expect("the response");
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), b"ok");
    let names: Vec<&str> = r.headers().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 44, "{names:?}");
    for i in 0..40 {
        assert_eq!(r.headers()[i], (format!("X-F{i}"), format!("value {i}")));
    }
    assert_eq!(r.header("x-folded"), Some("first second third"));
    assert_eq!(r.header("x-padded"), Some("spaced out"));
    assert_eq!(r.header("x-latin1"), Some("caf\u{fffd}"));
    assert_eq!(r.header("content-length"), Some("2"));
}

/// A pooled connection the server closes when the next request arrives: an idempotent
/// request is retried once on a fresh connection; a POST is not.
#[test]
fn stale_pooled_connection_is_retried_once() {
    let _turn = serial();
    let (listener, addr) = util::local_listener();
    let accepted = Rc::new(Cell::new(0usize));
    let server = {
        let accepted = accepted.clone();
        copas::addserver(listener, move |mut sock| {
            accepted.set(accepted.get() + 1);
            sock.settimeout(Some(secs(5)));
            let mut served = 0;
            loop {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match sock.receive(copas::Pattern::Exact(1)) {
                        Ok(b) => head.extend_from_slice(&b),
                        Err(_) => return,
                    }
                }
                if served == 1 {
                    // The keep-alive race: the server gives up on the connection just as
                    // the next request arrives.
                    sock.close();
                    return;
                }
                served += 1;
                let _ = sock.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        })
        .expect("addserver")
    };
    let got = Rc::new(RefCell::new(Vec::new()));
    {
        let got = got.clone();
        copas::addthread(move || {
            let url = format!("http://{addr}/");
            let push = |r: copas::Result<http::Response>| {
                got.borrow_mut()
                    .push(r.map(|r| r.status()).map_err(|e| e.kind()))
            };
            push(Request::get(&url).timeout(secs(5)).send()); // connection 1, pooled
            push(Request::get(&url).timeout(secs(5)).send()); // reuse fails, retried on 2
            push(Request::post(&url).body("x").timeout(secs(5)).send()); // reuse of 2 fails: no retry
            copas::removeserver(server, false).expect("removeserver");
        })
        .expect("client");
    }
    run_bounded(secs(30));
    let got = got.borrow();
    assert_eq!(got[0], Ok(200));
    assert_eq!(got[1], Ok(200));
    assert_eq!(got[2], Err(ErrorKind::Closed), "{got:?}");
    assert_eq!(accepted.get(), 2);
}

/// A reader of `len` bytes that counts what has been read from it.
struct CountingReader {
    left: u64,
    read: Rc<Cell<u64>>,
}

impl std::io::Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        buf[..n].fill(b'x');
        self.left -= n as u64;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// `Expect: 100-continue` holds the body for the server's word: nginx's `100 Continue`
/// lets it go, its `413` for a body over `client_max_body_size` means none is sent.
#[test]
fn expect_100_continue_sends_the_body_only_when_the_server_wants_it() {
    let _turn = serial();
    let _dog = Watchdog::new("Expect: 100-continue", secs(60));
    let Some(ng) = Nginx::start() else { return };

    // Wanted: nginx says 100 Continue, the body goes and comes back.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = Request::post(&ng.url("/echo-body"))
        .header("Expect", "100-continue")
        .body(data.clone())
        .send()
        .expect("POST with Expect");
    assert_eq!(r.status(), 200);
    assert!(r.body() == data, "the body went after 100 Continue");

    // Refused: 413 at once, and not a byte of 8 MiB read from the reader.
    let read = Rc::new(Cell::new(0u64));
    let reader = CountingReader {
        left: 8 << 20,
        read: read.clone(),
    };
    let r = Request::post(&ng.url("/small-body"))
        .header("Expect", "100-continue")
        .body_reader(reader, Some(8 << 20))
        .send()
        .expect("POST refused");
    assert_eq!(r.status(), 413);
    assert_eq!(read.get(), 0, "the body was held back");
    // The same without the field sends the body (nginx reads and drops it before its 413,
    // or resets): the difference the field makes.
    let read_plain = Rc::new(Cell::new(0u64));
    let reader = CountingReader {
        left: 8 << 20,
        read: read_plain.clone(),
    };
    let _ = Request::post(&ng.url("/small-body"))
        .body_reader(reader, Some(8 << 20))
        .send();
    assert!(read_plain.get() > 0, "without Expect the body goes at once");
    // The client goes on: the refused request's connection was not pooled.
    let r = Request::post(&ng.url("/small-body"))
        .header("Expect", "100-continue")
        .body("small")
        .send()
        .expect("POST small");
    assert_eq!((r.status(), r.body()), (200, &b"small"[..]));
}

/// A server that ignores `Expect` (says nothing before the body) gets the body after
/// `CONTINUE_WAIT`, not never.
#[test]
fn expect_100_continue_sends_the_body_after_a_second_of_silence() {
    let _dog = Watchdog::new("Expect without an answer", secs(30));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(secs(10))).expect("timeout");
        let mut reader = std::io::BufReader::new(conn.try_clone().expect("clone"));
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).expect("head line");
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            if line == "\r\n" {
                break;
            }
        }
        let head_done = Instant::now();
        let mut body = vec![0u8; length];
        std::io::Read::read_exact(&mut reader, &mut body).expect("body");
        let waited = head_done.elapsed();
        let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        std::io::Write::write_all(&mut conn, reply.as_bytes()).expect("reply");
        std::io::Write::write_all(&mut conn, &body).expect("reply body");
        (body, waited)
    });
    let r = Request::post(&format!("http://{addr}/"))
        .header("Expect", "100-continue")
        .body("held a while")
        .send()
        .expect("POST");
    assert_eq!((r.status(), r.body()), (200, &b"held a while"[..]));
    let (body, waited) = server.join().expect("server");
    assert_eq!(body, b"held a while");
    assert!(
        waited >= http::CONTINUE_WAIT - ms(50) && waited < secs(10),
        "the body came {waited:?} after the head"
    );
}

/// Serves `connections` HTTP/1.1 requests on `listener`, one per connection, on a thread:
/// `/old` is redirected to `/new`, anything else is answered `200 OK`.
fn serve_redirects(listener: std::net::TcpListener, connections: usize) {
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut peer, _)) = listener.accept() else {
                return;
            };
            let _ = peer.set_read_timeout(Some(secs(10)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                match peer.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let reply: &[u8] = if head.starts_with(b"GET /old ") {
                b"HTTP/1.1 301 Moved Permanently\r\nLocation: /new\r\nContent-Length: 0\r\n\
                  Connection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
            };
            let _ = peer.write_all(reply);
        }
    });
}

#[test]
fn http_get_example_names_the_final_url_only_when_a_redirect_changed_it() {
    let _turn = serial();
    let _dog = Watchdog::new("http_get example", secs(400));
    let program = util::example_binary("http_get");
    let (listener, addr) = util::local_listener();
    serve_redirects(listener, 4);
    let get = |url: &str| -> String {
        let mut cmd = Command::new(&program);
        cmd.arg(url);
        let out = util::output_within(cmd, b"", secs(30));
        assert!(
            out.status.success(),
            "{url}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The same URL as the one fetched, written differently: no redirect happened.
    for url in [format!("http://{addr}"), format!("HTTP://{addr}/new")] {
        let text = get(&url);
        assert!(text.starts_with("HTTP/1.1 200 OK\n"), "{url}: {text:?}");
    }
    let text = get(&format!("http://{addr}/old"));
    assert!(
        text.starts_with(&format!("(from http://{addr}/new)\nHTTP/1.1 200 OK\n")),
        "{text:?}"
    );
}

const SMALL_STACK_CHILD: &str = "COPAS_TEST_HTTP_SMALL_STACK_CHILD";

/// The stack a coroutine needs for a request, as `docs/stacks.md` gives it: a GET, a POST
/// and a GET over HTTPS fit the 16 KiB minimum in a release build (a redirect's drain
/// buffer in the request's own frame made it need 20 KiB, 24 over HTTPS), and 40 KiB in a
/// debug one. Run in a child, against the parent's nginx (its URLs and CA in the child's
/// environment): an overflow aborts the process with copas's message.
#[test]
fn requests_fit_the_stack_sizes_the_docs_give() {
    if util::is_child(SMALL_STACK_CHILD) {
        let var = |name: &str| std::env::var(name).expect(name);
        let (plain, post, secure) = (var("SMALL_GET"), var("SMALL_POST"), var("SMALL_HTTPS"));
        let ca = Certificate::from_pem(var("SMALL_CA").as_bytes()).expect("ca");
        let kib = if cfg!(debug_assertions) { 40 } else { 16 };
        copas::set_stack_size(kib * 1024);
        let done = Rc::new(Cell::new(false));
        let finished = done.clone();
        copas::addnamedthread("small-stack", move || {
            let r = http::request(&plain).expect("GET");
            assert_eq!((r.status(), r.body()), (200, &b"hello static\n"[..]));
            let r = Request::post(&post).body("posted").send().expect("POST");
            assert_eq!((r.status(), r.body()), (200, &b"posted"[..]));
            let r = Request::get(&secure)
                .root_certificate(ca)
                .send()
                .expect("HTTPS GET");
            assert_eq!(r.status(), 200);
            finished.set(true);
        })
        .expect("addthread");
        run_bounded(secs(20));
        assert!(done.get(), "the requests did not complete");
        println!("SMALL-STACK-OK {kib} KiB");
        return;
    }
    let _turn = serial();
    let Some(ng) = Nginx::start() else { return };
    let (get, post, https) = (
        ng.url("/index.html"),
        ng.url("/echo-body"),
        ng.surl("/index.html"),
    );
    let ca = String::from_utf8(ng.ca.clone()).expect("PEM");
    util::assert_child_passes_with(
        &[
            ("SMALL_GET", &get),
            ("SMALL_POST", &post),
            ("SMALL_HTTPS", &https),
            ("SMALL_CA", &ca),
        ],
        "requests_fit_the_stack_sizes_the_docs_give",
        SMALL_STACK_CHILD,
        "SMALL-STACK-OK",
        secs(60),
    );
}

/// A GET with a 500 ms timeout of a peer on a thread that reads the request's head, sends
/// `at_once`, then `dribbled` one byte every 150 ms until it is all sent, the client has
/// gone, or the GET has returned; gives what the GET returned and how long it took.
fn get_from_dribbling_peer(
    at_once: &'static [u8],
    dribbled: &'static [u8],
) -> (copas::Result<http::Response>, Duration) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (listener, addr) = util::local_listener();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(secs(10))).expect("timeout");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 65_536 {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        if s.write_all(at_once).is_err() {
            return;
        }
        for byte in dribbled {
            if stopped.load(Ordering::Relaxed) || s.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(ms(150));
        }
    });
    let start = Instant::now();
    let got = Request::get(&format!("http://{addr}/"))
        .timeout(ms(500))
        .send();
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    peer.join().expect("peer");
    (got, took)
}

/// Before: every read of the head waited a whole receive timeout, so a server sending its
/// 68-byte head a byte every 150 ms held a request with a 500 ms timeout for about 10 s,
/// and it succeeded. The head now has one deadline.
#[test]
fn a_response_head_sent_a_byte_at_a_time_cannot_outlast_the_receive_timeout() {
    let _turn = serial();
    let _dog = Watchdog::new("dribbled head", secs(60));
    let head = b"HTTP/1.1 200 OK\r\nX-Slow: abcdefghijklmnopqrst\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(head.len(), 68);
    let (got, took) = get_from_dribbling_peer(b"", head);
    assert_eq!(
        got.map(|r| r.status()).map_err(|e| e.kind()),
        Err(ErrorKind::Timeout)
    );
    assert!(took < secs(2), "took {took:?}");
}

/// The same for a chunked body's trailer section, read in one go after the last chunk.
#[test]
fn chunked_trailers_sent_a_byte_at_a_time_cannot_outlast_the_receive_timeout() {
    let _turn = serial();
    let _dog = Watchdog::new("dribbled trailers", secs(60));
    let (got, took) = get_from_dribbling_peer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
        b"0\r\nX-Trailer: abcdefghijklmnopqrstuvwxyz\r\n\r\n",
    );
    assert_eq!(
        got.map(|r| r.into_body()).map_err(|e| e.kind()),
        Err(ErrorKind::Timeout)
    );
    assert!(took < secs(2), "took {took:?}");
}
