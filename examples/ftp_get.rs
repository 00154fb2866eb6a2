//! Downloads an `ftp://` URL to standard output or to a file, with `copas::client::ftp`.
//!
//! ```text
//! cargo run --example ftp_get -- ftp://127.0.0.1:2121/README             # to stdout
//! cargo run --example ftp_get -- ftp://user:secret@127.0.0.1:2121/big.iso big.iso
//! ```
//!
//! The login is anonymous unless the URL names a user (`user:password@`, percent-encoded).
//! The download runs in a coroutine and streams straight into its destination, so a file
//! of any size needs little memory. On failure the error (with the server's reply code,
//! such as `rejected: 550 No such file or directory.`) goes to standard error and the exit
//! status is 1.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use copas::client::ftp::{self, Options};

fn usage() -> ExitCode {
    eprintln!("usage: ftp_get URL [FILE]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        return usage();
    };
    let file = args.next();
    if args.next().is_some() {
        return usage();
    }

    let result = std::rc::Rc::new(std::cell::RefCell::new(None));
    let slot = result.clone();
    let run = copas::run_with(move || {
        let opts = Options::new().timeout(Some(Duration::from_secs(30)));
        let outcome = match &file {
            Some(path) => std::fs::File::create(path)
                .map_err(copas::Error::from)
                .and_then(|mut f| ftp::get_to(&url, &opts, &mut f)),
            None => {
                let mut out = std::io::stdout().lock();
                ftp::get_to(&url, &opts, &mut out)
                    .and_then(|n| out.flush().map(|_| n).map_err(copas::Error::from))
            }
        };
        *slot.borrow_mut() = Some(outcome);
    });
    if let Err(e) = run {
        eprintln!("ftp_get: {e}");
        return ExitCode::FAILURE;
    }
    let outcome = result.borrow_mut().take();
    match outcome {
        Some(Ok(n)) => {
            eprintln!("ftp_get: {n} bytes");
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("ftp_get: {e}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("ftp_get: the download did not finish");
            ExitCode::FAILURE
        }
    }
}
