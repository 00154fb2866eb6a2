//! A WebSocket echo server: the blocking `tungstenite` crate running over copas sockets.
//!
//! ```text
//! cargo run --example websocket_echo            # listens on ws://127.0.0.1:9002
//! cargo run --example websocket_echo -- 9102    # or on the port you give (0: any free port)
//! ```
//!
//! Try it from a browser's developer console:
//!
//! ```text
//! let ws = new WebSocket("ws://127.0.0.1:9002");
//! ws.onmessage = (e) => console.log("echo:", e.data);
//! ws.onopen = () => ws.send("hello");
//! ```
//!
//! or with any WebSocket client (`websocat ws://127.0.0.1:9002`, Python's `websockets`).
//!
//! `tungstenite` knows nothing about copas: it is written for blocking streams, any
//! `Read + Write`. A copas [`Socket`] is one, and its reads and writes suspend only the
//! calling coroutine, so the crate's blocking loop becomes one coroutine per connection
//! and a single thread serves every client. The same holds for any crate that speaks a
//! protocol over `Read`/`Write` (or `BufRead`): no async port needed.
//!
//! What copas does not change: the crate's own calls must not block the thread in other
//! ways (no `std::net`, no `thread::sleep` inside it). tungstenite only reads and writes
//! the stream it is given.

use std::io;
use std::net::TcpListener;
use std::time::Duration;

use copas::{ErrorKind, ServerOptions, Socket};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error as WsError, Message};

/// The port used when none is given on the command line.
const DEFAULT_PORT: u16 = 9002;

/// The largest message accepted. tungstenite's default is 64 MiB; an echo server holds a
/// whole message in memory, so a smaller bound keeps what one client can make it allocate
/// small.
const MAX_MESSAGE: usize = 1024 * 1024;

/// A connection silent for this long (no frame, not even a ping) is dropped, so idle or
/// vanished clients do not hold a coroutine for ever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

fn websocket_handler(sock: Socket) {
    let peer = sock
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    // The HTTP upgrade handshake: tungstenite reads the request and writes the response
    // through the socket; each read that finds nothing suspends this coroutine only.
    let mut ws = match tungstenite::accept_with_config(sock, Some(config)) {
        Ok(ws) => ws,
        Err(e) => {
            println!("websocket_echo: {peer}: handshake failed: {e}");
            return;
        }
    };
    println!("websocket_echo: {peer} connected");
    loop {
        match ws.read() {
            // Data messages go back as they came: text as text, binary as binary.
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                if let Err(e) = ws.send(msg) {
                    println!("websocket_echo: {peer}: send failed: {e}");
                    break;
                }
            }
            // tungstenite answers pings and the client's close frame itself; the answer is
            // written by the next `read`, which then reports `ConnectionClosed`.
            Ok(_) => {}
            Err(WsError::ConnectionClosed) => {
                println!("websocket_echo: {peer} closed the connection");
                break;
            }
            // A copas `Timeout` reaches tungstenite as an `io::Error` of kind `TimedOut`.
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                println!("websocket_echo: {peer}: idle for {IDLE_TIMEOUT:?}, dropping it");
                break;
            }
            Err(e) => {
                println!("websocket_echo: {peer}: {e}");
                break;
            }
        }
    }
    // Returning closes the connection (copas's autoclose).
}

fn main() -> copas::Result<()> {
    let port = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|_| {
            copas::Error::with_message(ErrorKind::InvalidInput, format!("bad port {arg:?}"))
        })?,
        None => DEFAULT_PORT,
    };
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!(
        "websocket_echo: listening on ws://{}",
        listener.local_addr()?
    );
    // Every accepted connection inherits the timeout for its reads and writes.
    let options = ServerOptions::new()
        .name("websocket_echo")
        .timeout(IDLE_TIMEOUT);
    copas::addserver_with(listener, options, websocket_handler)?;
    copas::run()
}
