//! Fetches a URL and prints the status line, the header fields and the body.
//!
//! ```text
//! cargo run --example http_get -- http://127.0.0.1:8080/
//! cargo run --example http_get -- https://localhost:8443/ --ca ca.pem   # trust a private CA
//! ```
//!
//! The request runs in a coroutine (it could share the dispatcher with many others); the
//! body is streamed to standard output as it arrives, so any size works. Redirects are
//! followed (the safe policy); the final URL is printed when a redirect changed it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use copas::client::http::Request;
use copas::native_tls::Certificate;

fn usage() -> ExitCode {
    eprintln!("usage: http_get URL [--ca FILE]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut url = None;
    let mut ca = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--ca" {
            match args.next() {
                Some(file) => ca = Some(file),
                None => return usage(),
            }
        } else if url.is_none() {
            url = Some(arg);
        } else {
            return usage();
        }
    }
    let Some(url) = url else { return usage() };
    let mut request = Request::get(&url).timeout(Duration::from_secs(30));
    if let Some(file) = ca {
        let pem = match std::fs::read(&file) {
            Ok(pem) => pem,
            Err(e) => {
                eprintln!("http_get: {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match Certificate::from_pem(&pem) {
            Ok(cert) => request = request.root_certificate(cert),
            Err(e) => {
                eprintln!("http_get: {file}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let code = std::rc::Rc::new(std::cell::Cell::new(ExitCode::SUCCESS));
    let result = code.clone();
    copas::addthread(move || {
        let (response, mut body) = match request.stream() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("http_get: {e}");
                result.set(ExitCode::FAILURE);
                return;
            }
        };
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        // Compared as parsed URLs: `http://host` and `http://host/` are the same one.
        if url::Url::parse(&url).ok().as_ref() != Some(response.url()) {
            let _ = writeln!(out, "(from {})", response.url());
        }
        let _ = writeln!(out, "{}", response.status_line());
        for (name, value) in response.headers() {
            let _ = writeln!(out, "{name}: {value}");
        }
        let _ = writeln!(out);
        if let Err(e) = std::io::copy(&mut body, &mut out) {
            let _ = out.flush();
            eprintln!("http_get: reading the body: {}", copas::Error::from(e));
            result.set(ExitCode::FAILURE);
        }
        let _ = out.flush();
    })
    .expect("addthread");
    if let Err(e) = copas::run() {
        eprintln!("http_get: {e}");
        return ExitCode::FAILURE;
    }
    code.get()
}
