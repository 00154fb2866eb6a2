//! A TLS line echo server: the `echo` example behind `copas::handler`.
//!
//! ```text
//! cargo run --example tls_echo                          # 127.0.0.1:9443, throwaway certificate
//! cargo run --example tls_echo -- cert.pem key.pem      # your chain (PEM) and PKCS#8 key
//! cargo run --example tls_echo -- --port 0 [cert key]   # any free port (printed)
//! openssl s_client -connect 127.0.0.1:9443 -servername localhost -CAfile <cert> -quiet
//! ```
//!
//! Without a certificate it makes a throwaway self-signed one for `localhost` and
//! `127.0.0.1` with the `openssl` command into a temporary directory, and says so. It prints
//! the `openssl s_client` command that trusts it. Type lines; they come back; `quit` ends the
//! session.
//!
//! `copas::handler` does the TLS handshake in each connection's coroutine (under
//! `copas::DEFAULT_HANDSHAKE_TIMEOUT`, the server having no timeout of its own) and runs
//! `echo_handler` only when it succeeded; a failed handshake is printed by the default
//! error handler and the server goes on.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use copas::native_tls::{Identity, TlsAcceptor};
use copas::{Pattern, Socket};

/// The port used when none is given.
const DEFAULT_PORT: u16 = 9443;

fn echo_handler(mut sock: Socket) {
    while let Ok(line) = sock.receive(Pattern::Line) {
        if line == b"quit" {
            break;
        }
        let mut reply = line;
        reply.push(b'\n');
        if sock.send(&reply).is_err() {
            break;
        }
    }
}

fn fail(message: String) -> Box<dyn std::error::Error> {
    message.into()
}

/// Makes a self-signed certificate for `localhost`/`127.0.0.1` in a new temporary directory;
/// returns the paths of the certificate and the key.
fn throwaway_certificate() -> Result<(PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("copas-tls-echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| fail(format!("cannot run openssl to make a certificate: {e}")))?;
    if !status.success() {
        return Err(fail(format!(
            "openssl failed to make a certificate ({status})"
        )));
    }
    Ok((cert, key))
}

fn load_identity(cert: &Path, key: &Path) -> Result<Identity, Box<dyn std::error::Error>> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| fail(format!("{}: {e}", p.display())));
    Ok(Identity::from_pkcs8(&read(cert)?, &read(key)?)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut port = DEFAULT_PORT;
    if let Some(i) = args.iter().position(|a| a == "--port") {
        let value = args
            .get(i + 1)
            .ok_or_else(|| fail("--port needs a value".into()))?;
        port = value
            .parse()
            .map_err(|_| fail(format!("bad port {value:?}")))?;
        args.drain(i..i + 2);
    }
    let (cert, identity) = match &args[..] {
        [cert, key] => {
            let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
            let identity = load_identity(&cert, &key)?;
            println!(
                "tls_echo: loaded the certificate {} and key {}",
                cert.display(),
                key.display()
            );
            (cert, identity)
        }
        [] => {
            let (cert, key) = throwaway_certificate()?;
            let identity = load_identity(&cert, &key)?;
            // The key is in memory now; do not leave it lying around.
            std::fs::remove_file(&key)?;
            println!(
                "tls_echo: generated a throwaway self-signed certificate for localhost and \
                 127.0.0.1: {}",
                cert.display()
            );
            (cert, identity)
        }
        _ => return Err(fail("usage: tls_echo [--port N] [CERT.pem KEY.pem]".into())),
    };
    let acceptor = TlsAcceptor::new(identity)?;
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let addr = listener.local_addr()?;
    println!("tls_echo: listening on {addr}");
    println!(
        "tls_echo: connect with: openssl s_client -connect {addr} -servername localhost \
         -CAfile {} -quiet",
        cert.display()
    );
    copas::addserver(listener, copas::handler(echo_handler, acceptor))?;
    copas::run()?;
    Ok(())
}
