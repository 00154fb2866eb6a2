//! The HTTP client's cost per request: `copas::client::http` fetching a small response
//! again and again over one kept-alive connection, beside the least a client can do (a
//! plain `std::net::TcpStream` writing a fixed request and reading until the response's
//! last byte, no parsing at all).
//!
//! ```text
//! cargo bench --bench http_client                    # 3 rounds of 20,000 requests each way
//! HTTP_CLIENT_ROUNDS=5 HTTP_CLIENT_REQUESTS=50000 cargo bench --bench http_client
//! ```
//!
//! The server is a std thread in this process answering every request with the same head
//! (the eight fields nginx sends for a static file) and a 12-byte body; the clients run on
//! the main thread, on the same CPU as the server, and each figure is that thread's own CPU
//! time (`getrusage(RUSAGE_THREAD)`), user and system apart, per request.
//! The ways alternate within each round. Figures: `docs/benchmarks.md`, "HTTP client".

#[path = "common/affinity.rs"]
mod affinity;
#[path = "common/host.rs"]
mod host;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const BODY: &[u8] = b"hello world\n";
const REQUEST: &[u8] = b"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// The response head: what nginx 1.22 sends for a static file.
fn response() -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\n\
        Server: nginx/1.22.1\r\n\
        Date: Sun, 22 Nov 2026 04:39:24 GMT\r\n\
        Content-Type: application/octet-stream\r\n\
        Content-Length: 12\r\n\
        Last-Modified: Sun, 22 Nov 2026 04:30:00 GMT\r\n\
        Connection: keep-alive\r\n\
        ETag: \"6740cd58-c\"\r\n\
        Accept-Ranges: bytes\r\n\r\n"
        .to_vec();
    r.extend_from_slice(BODY);
    r
}

/// Answers every request of every connection with `response()`, until the process ends.
fn serve(listener: TcpListener, cpu: usize) {
    let _ = affinity::pin_to_cpu(cpu);
    let reply = response();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let reply = reply.clone();
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut buf = vec![0u8; 4096];
            let mut have = 0;
            loop {
                match conn.read(&mut buf[have..]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => have += n,
                }
                // Every complete request in the buffer gets its answer.
                while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    if conn.write_all(&reply).is_err() {
                        return;
                    }
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                }
                if have == buf.len() {
                    return; // a request head this server does not expect
                }
            }
        });
    }
}

/// User and system CPU time of the calling thread.
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage writes a `rusage` into the zeroed struct we own.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut u);
        u
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(u.ru_utime), tv(u.ru_stime))
}

/// One way of making `n` requests; what it measured.
struct Cell {
    wall: Duration,
    user: Duration,
    system: Duration,
}

fn measure(n: usize, run: impl FnOnce(usize)) -> Cell {
    let (u0, s0) = thread_cpu();
    let t0 = Instant::now();
    run(n);
    let wall = t0.elapsed();
    let (u1, s1) = thread_cpu();
    Cell {
        wall,
        user: u1 - u0,
        system: s1 - s0,
    }
}

/// copas's client from plain `main`: each call blocks the thread.
fn copas_requests(url: &str, n: usize) {
    for _ in 0..n {
        let r = copas::client::http::request(url).expect("request");
        assert_eq!(r.body(), BODY);
    }
}

/// The least a client can do: a fixed request, then reads until the response's length.
fn raw_requests(addr: std::net::SocketAddr, n: usize) {
    let whole = response().len();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        s.write_all(REQUEST).expect("write");
        let mut got = 0;
        while got < whole {
            match s.read(&mut buf[got..]).expect("read") {
                0 => panic!("the server closed"),
                k => got += k,
            }
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rounds = env_or("HTTP_CLIENT_ROUNDS", 3);
    let n = env_or("HTTP_CLIENT_REQUESTS", 20_000);
    // Server and client on one CPU: each request then costs a context switch, not a
    // wake-up of another CPU, which in a virtual machine can cost more than the request.
    let cpu = affinity::online_cpus() - 1;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || serve(listener, cpu));
    let _ = affinity::pin_to_cpu(cpu);
    let url = format!("http://{addr}/small.txt");
    // Warm-up: the connection pool, the allocator, the server's thread.
    copas_requests(&url, 1_000);
    raw_requests(addr, 1_000);

    println!("## HTTP client: {n} GETs per cell over one kept-alive connection, {rounds} rounds");
    println!();
    println!("CPU: {}", host::cpu());
    println!();
    println!("| round | client | wall s | user µs/request | system µs/request | CPU µs/request |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        // Alternate which goes first.
        let mut cells = Vec::new();
        for way in if round % 2 == 1 { [0, 1] } else { [1, 0] } {
            let cell = if way == 0 {
                measure(n, |n| copas_requests(&url, n))
            } else {
                measure(n, |n| raw_requests(addr, n))
            };
            let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
            let name = if way == 0 { "copas" } else { "raw std" };
            println!(
                "| {round} | {name} | {:.3} | {:.2} | {:.2} | {:.2} |",
                cell.wall.as_secs_f64(),
                per(cell.user),
                per(cell.system),
                per(cell.user + cell.system)
            );
            cells.push((way, cell));
        }
        cells.sort_by_key(|(way, _)| *way);
        let cpu = |c: &Cell| (c.user + c.system).as_secs_f64();
        ratios.push(cpu(&cells[0].1) / cpu(&cells[1].1));
    }
    ratios.sort_by(f64::total_cmp);
    println!();
    println!(
        "copas ÷ raw std, CPU per request: median {:.2} (rounds: {})",
        ratios[ratios.len() / 2],
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
