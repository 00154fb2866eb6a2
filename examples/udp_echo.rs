//! A UDP echo server: every datagram goes back to its sender.
//!
//! ```text
//! cargo run --example udp_echo            # listens on 127.0.0.1:9000 (UDP)
//! cargo run --example udp_echo -- 9100    # or on the port you give (0: any free port)
//! nc -u 127.0.0.1 9000                    # type lines; they come back
//! ```
//!
//! As in Copas, a UDP server is one coroutine (`<server>:handler`) that owns the socket and
//! loops on `receivefrom`/`sendto`; it starts as soon as the server is added. Each
//! `receivefrom` takes exactly one datagram; one larger than the buffer is reported, not
//! cut silently.

use std::net::UdpSocket as StdUdpSocket;

use copas::{ErrorKind, UdpSocket};

/// The port used when none is given on the command line.
const DEFAULT_PORT: u16 = 9000;

/// The largest UDP payload over IPv4: nothing a peer sends is too large for it.
const MAX_DATAGRAM: usize = 65_507;

fn echo_handler(sock: UdpSocket) {
    loop {
        match sock.receivefrom(MAX_DATAGRAM) {
            Ok((data, from)) => {
                if let Err(e) = sock.sendto(&data, from) {
                    eprintln!("udp_echo: send to {from}: {e}");
                }
            }
            // A datagram too large for the buffer (impossible with MAX_DATAGRAM).
            Err(e) if e.kind() == ErrorKind::LimitExceeded => eprintln!("udp_echo: {e}"),
            Err(e) => {
                // Closed, or a system error: the server ends.
                eprintln!("udp_echo: {e}");
                break;
            }
        }
    }
}

fn main() -> copas::Result<()> {
    let port = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|_| {
            copas::Error::with_message(ErrorKind::InvalidInput, format!("bad port {arg:?}"))
        })?,
        None => DEFAULT_PORT,
    };
    let sock = StdUdpSocket::bind(("127.0.0.1", port))?;
    println!("udp echo server listening on {}", sock.local_addr()?);
    copas::addudpserver(sock, echo_handler)?;
    copas::run()
}
