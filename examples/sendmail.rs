//! Sends one message through an SMTP server with `copas::client::smtp`.
//!
//! ```text
//! cargo run --example sendmail -- SERVER FROM TO[,TO...] SUBJECT [options] < body.txt
//!
//!   SERVER    host or host:port (port 25 by default)
//!   FROM      the sender's address
//!   TO        one or more recipients, separated by commas
//!   SUBJECT   the Subject header
//!
//! options:
//!   --user USER --password PASS   AUTH (PLAIN, or LOGIN when PLAIN is not offered)
//!   --starttls required|never     default: used when the server offers it
//!   --ca FILE.pem                 trust this CA as well (for STARTTLS)
//!   --attach FILE                 attach a file (repeatable)
//! ```
//!
//! The body is read from standard input (on a helper thread, through `copas::offload`);
//! the send runs in a coroutine. For example, against the test peer:
//!
//! ```text
//! python3 tests/peers/smtp_peer.py 2525 /tmp/mail &
//! echo "Hello there" | cargo run --example sendmail -- 127.0.0.1:2525 me@example.org \
//!     you@example.org,them@example.org "Greetings"
//! ```

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use copas::client::smtp::{self, Mail, Message, StartTls};
use copas::native_tls::Certificate;

/// Timeout for the connection and each exchange.
const TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    server: String,
    from: String,
    to: Vec<String>,
    subject: String,
    user: Option<String>,
    password: Option<String>,
    starttls: StartTls,
    ca: Option<String>,
    attach: Vec<String>,
}

fn usage() -> String {
    "usage: sendmail SERVER FROM TO[,TO...] SUBJECT [--user U --password P] \
     [--starttls required|never] [--ca FILE] [--attach FILE]... < body"
        .to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut args = Args {
        server: String::new(),
        from: String::new(),
        to: Vec::new(),
        subject: String::new(),
        user: None,
        password: None,
        starttls: StartTls::WhenOffered,
        ca: None,
        attach: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--user" => args.user = Some(value()?),
            "--password" => args.password = Some(value()?),
            "--ca" => args.ca = Some(value()?),
            "--attach" => args.attach.push(value()?),
            "--starttls" => {
                args.starttls = match value()?.as_str() {
                    "required" => StartTls::Required,
                    "never" => StartTls::Never,
                    "offered" => StartTls::WhenOffered,
                    other => return Err(format!("unknown --starttls {other}")),
                }
            }
            "-h" | "--help" => return Err(usage()),
            _ => positional.push(arg),
        }
    }
    let [server, from, to, subject] = <[String; 4]>::try_from(positional).map_err(|_| usage())?;
    args.server = server;
    args.from = from;
    args.to = to.split(',').map(|s| s.trim().to_string()).collect();
    args.subject = subject;
    Ok(args)
}

fn send(args: &Args) -> Result<String, String> {
    let body = copas::offload(|| {
        let mut body = String::new();
        std::io::stdin().read_to_string(&mut body).map(|_| body)
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("reading the body: {e}"))?;

    let mut message = Message::new()
        .from(args.from.as_str())
        .subject(args.subject.as_str())
        .header("X-Mailer", "copas sendmail example")
        .text(body);
    for to in &args.to {
        message = message.to(to.as_str());
    }
    for path in &args.attach {
        let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        let name = std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.clone());
        message = message.attach(name, "application/octet-stream", data);
    }
    let message = message.build().map_err(|e| e.to_string())?;

    let mut mail = Mail::new(args.server.as_str(), args.from.as_str())
        .recipients_from(args.to.iter().cloned())
        .message(message)
        .timeout(TIMEOUT)
        .starttls(args.starttls);
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).map_err(|e| format!("{ca}: {e}"))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| format!("{ca}: {e}"))?;
        mail = mail.add_root_certificate(cert);
    }
    if let Some(user) = &args.user {
        mail = mail.auth(user.as_str(), args.password.clone().unwrap_or_default());
    }
    match smtp::send(&mail) {
        Ok(reply) => Ok(reply.to_string()),
        Err(e) => match e.reply_code() {
            Some(code) => Err(format!("the server refused ({code}): {e}")),
            None => Err(e.to_string()),
        },
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let outcome = std::rc::Rc::new(std::cell::RefCell::new(None));
    let slot = outcome.clone();
    copas::addthread(move || *slot.borrow_mut() = Some(send(&args))).expect("addthread");
    if let Err(e) = copas::run() {
        eprintln!("copas: {e}");
        return ExitCode::FAILURE;
    }
    let result = outcome.borrow_mut().take();
    match result {
        Some(Ok(reply)) => {
            println!("sent: {reply}");
            ExitCode::SUCCESS
        }
        Some(Err(msg)) => {
            eprintln!("sendmail: {msg}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("sendmail: the send did not finish");
            ExitCode::FAILURE
        }
    }
}
