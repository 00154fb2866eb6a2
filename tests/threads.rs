//! Several cores (issue 9): `copas::threads` runs one dispatcher per OS thread, and
//! `copas::bind_reuseport` lets their listeners share one port.
//!
//! Four dispatcher threads on one port serve 2,000 clients (eight client threads, one
//! connection at a time each): every reply is right and every dispatcher served some. A
//! panic or an error in one thread's setup is that thread's typed outcome while the others
//! run to their end. The multicore echo example serves from every thread.
//!
//! Loopback only; every test has a watchdog and every loop is bounded.

mod util;

use util::ChildGuard;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use copas::{Error, ErrorKind, Pattern, Socket};

const DISPATCHERS: usize = 4;
const CLIENT_THREADS: usize = 8;
const CLIENTS: usize = 2_000;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to `addr`, sends `line`, and returns the reply line (without its newline).
fn round_trip(addr: SocketAddr, line: &str) -> String {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    (&stream).write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    assert!(reply.ends_with('\n'), "a whole reply line, got {reply:?}");
    reply.pop();
    reply
}

/// The dispatcher index a reply `"<index> <line>"` names, after checking it echoes `line`.
fn served_by(reply: &str, line: &str) -> usize {
    let (index, echoed) = reply
        .split_once(' ')
        .unwrap_or_else(|| panic!("reply {reply:?} has no index"));
    assert_eq!(echoed, line, "the reply echoes the line");
    let index: usize = index.parse().expect("index");
    assert!(index < DISPATCHERS, "index {index} out of range");
    index
}

#[test]
fn four_dispatchers_on_one_port_serve_2000_clients_and_each_serves_some() {
    let _dog = util::Watchdog::new("four dispatchers, 2,000 clients", Duration::from_secs(240));
    // Holds the port (picked by the kernel) until all four listeners are bound to it.
    let reserve = copas::bind_reuseport("127.0.0.1:0").expect("bind_reuseport");
    let addr = reserve.local_addr().unwrap();
    let served: Arc<Vec<AtomicUsize>> =
        Arc::new((0..DISPATCHERS).map(|_| AtomicUsize::new(0)).collect());
    let (ready, handles) = mpsc::channel::<(usize, copas::Handle, std::thread::ThreadId)>();

    let counts = served.clone();
    let dispatchers = std::thread::spawn(move || {
        copas::threads(DISPATCHERS, |index| {
            let listener = copas::bind_reuseport(addr)?;
            let counts = counts.clone();
            let server = copas::addserver(listener, move |mut sock: Socket| {
                while let Ok(line) = sock.receive(Pattern::Line) {
                    let reply = [format!("{index} ").as_bytes(), &line, b"\n"].concat();
                    if sock.send(&reply).is_err() {
                        return;
                    }
                    counts[index].fetch_add(1, Ordering::Relaxed);
                }
            })?;
            // Exit (from the test, through the handle) removes the server, ending the loop.
            copas::addthread(move || {
                let _ = copas::waitforexit();
                let _ = copas::removeserver(server, false);
            })?;
            ready
                .send((index, copas::handle()?, std::thread::current().id()))
                .expect("test waits");
            Ok(())
        })
    });

    let mut started = Vec::new();
    for _ in 0..DISPATCHERS {
        started.push(
            handles
                .recv_timeout(Duration::from_secs(30))
                .expect("every dispatcher thread runs its setup"),
        );
    }
    started.sort_by_key(|(index, ..)| *index);
    let indices: Vec<usize> = started.iter().map(|(i, ..)| *i).collect();
    assert_eq!(indices, (0..DISPATCHERS).collect::<Vec<_>>());
    let thread_ids: HashSet<_> = started.iter().map(|(_, _, id)| *id).collect();
    assert_eq!(
        thread_ids.len(),
        DISPATCHERS,
        "one OS thread per dispatcher"
    );
    assert!(!thread_ids.contains(&std::thread::current().id()));
    drop(reserve); // all four listeners are bound: the kernel spreads over them alone

    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut seen = [0usize; DISPATCHERS];
                for k in 0..CLIENTS / CLIENT_THREADS {
                    let line = format!("client-{t}-{k}");
                    seen[served_by(&round_trip(addr, &line), &line)] += 1;
                }
                seen
            })
        })
        .collect();
    let mut seen = [0usize; DISPATCHERS];
    for client in clients {
        for (total, n) in seen.iter_mut().zip(client.join().expect("client thread")) {
            *total += n;
        }
    }

    for (_, handle, _) in &started {
        handle.exit().expect("the dispatcher is alive");
    }
    let outcomes = dispatchers
        .join()
        .expect("threads returns")
        .expect("threads started");
    assert_eq!(outcomes.len(), DISPATCHERS);
    for (index, outcome) in outcomes.iter().enumerate() {
        assert!(outcome.is_ok(), "dispatcher {index}: {outcome:?}");
    }
    let on_server: Vec<usize> = served.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    println!("connections per dispatcher: {on_server:?}");
    assert_eq!(on_server, seen.to_vec(), "both sides count the same");
    assert_eq!(seen.iter().sum::<usize>(), CLIENTS);
    assert!(
        seen.iter().all(|&n| n > 0),
        "every dispatcher served some: {seen:?}"
    );
    // The dispatchers are gone with their threads: their handles say so.
    for (_, handle, _) in &started {
        assert!(handle.is_closed());
        assert_eq!(handle.exit().unwrap_err().kind(), ErrorKind::Closed);
    }
}

#[test]
fn each_thread_runs_setup_with_its_index_on_its_own_dispatcher() {
    let _dog = util::Watchdog::new("setup per thread", Duration::from_secs(60));
    let seen = Mutex::new(Vec::new());
    let outcomes = copas::threads(3, |index| {
        // A fresh dispatcher: nothing registered by the other threads' setups.
        assert_eq!(copas::status().coroutines, 0);
        let name = std::thread::current().name().map(str::to_string);
        copas::addthread(move || {
            copas::pause(Duration::from_millis(20));
        })?;
        assert_eq!(copas::status().coroutines, 1);
        seen.lock().unwrap().push((index, name));
        Ok(())
    })
    .expect("threads");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let mut seen = seen.into_inner().unwrap();
    seen.sort();
    assert_eq!(
        seen,
        (0..3)
            .map(|i| (i, Some(format!("copas-{i}"))))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_panic_or_error_in_one_thread_is_its_outcome_and_the_others_run_to_their_end() {
    let _dog = util::Watchdog::new("failing thread", Duration::from_secs(60));
    // Coroutines need `'static` closures: the count lives in a static.
    static FINISHED: AtomicUsize = AtomicUsize::new(0);
    let outcomes = copas::threads(3, |index| {
        match index {
            1 => panic!("setup of thread one failed"),
            2 => return Err(Error::with_message(ErrorKind::InvalidInput, "no config")),
            _ => {}
        }
        copas::addthread(|| {
            copas::pause(Duration::from_millis(200));
            FINISHED.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(())
    })
    .expect("threads");
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    let panicked = outcomes[1].as_ref().unwrap_err();
    assert_eq!(panicked.kind(), ErrorKind::Panicked);
    let message = panicked.message().unwrap_or_default();
    assert!(
        message.contains("copas-1") && message.contains("setup of thread one failed"),
        "{message}"
    );
    assert_eq!(
        outcomes[2].as_ref().unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        FINISHED.load(Ordering::Relaxed),
        1,
        "thread 0 ran its loop to the end"
    );
}

#[test]
fn zero_threads_is_invalid_input() {
    let err = copas::threads(0, |_| Ok(())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// A thread count past what `threads` starts is refused before any thread or vector is made
/// (`usize::MAX` panicked with "capacity overflow").
#[test]
fn a_thread_count_past_the_limit_is_invalid_input_not_a_panic() {
    let ran = std::sync::atomic::AtomicUsize::new(0);
    for n in [4097, 1 << 40, usize::MAX] {
        let err = copas::threads(n, |_| {
            ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{n} threads");
    }
    assert_eq!(ran.into_inner(), 0, "a setup ran");
}

#[test]
fn reuseport_listeners_share_a_port_that_a_plain_listener_holds_alone() {
    let first = copas::bind_reuseport("127.0.0.1:0").expect("first");
    let addr = first.local_addr().unwrap();
    let second = copas::bind_reuseport(addr).expect("a second listener on the same port");
    assert_eq!(second.local_addr().unwrap(), addr);

    let (plain, plain_addr) = util::local_listener();
    let err = copas::bind_reuseport(plain_addr).unwrap_err();
    assert_eq!(
        err.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::AddrInUse),
        "{err}"
    );
    drop(plain);

    let err = copas::bind_reuseport("not an address").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    drop((first, second));
}

#[test]
fn echo_multicore_example_serves_from_several_threads() {
    let port = util::local_listener().1.port();
    echo_multicore_serves_from_every_thread(&port.to_string());
}

/// With port 0 each listener bound its own free port, and the banner named only the first.
#[test]
fn echo_multicore_example_with_port_0_serves_from_every_thread_on_the_announced_port() {
    echo_multicore_serves_from_every_thread("0");
}

/// Starts `echo_multicore 3 <port>` and asks on the address its banner names until each of
/// the three dispatcher threads has answered there (bounded).
fn echo_multicore_serves_from_every_thread(port: &str) {
    let _dog = util::Watchdog::new("echo_multicore example", Duration::from_secs(400));
    let program = util::example_binary("echo_multicore");
    let mut child = Command::new(program)
        .args(["3", port])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start echo_multicore");
    let stdout = child.stdout.take().expect("stdout");
    let example = ChildGuard(child);
    let mut banner = String::new();
    BufReader::new(stdout)
        .read_line(&mut banner)
        .expect("banner");
    // "echo server listening on 127.0.0.1:P with 3 dispatcher threads"
    let addr: SocketAddr = banner
        .split(" with 3 dispatcher threads")
        .next()
        .filter(|_| banner.contains(" with 3 dispatcher threads"))
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in the banner {banner:?}"));
    assert_ne!(addr.port(), 0, "the banner names the port: {banner:?}");
    let mut seen = [false; 3];
    // The kernel spreads connections by a hash, and the other threads may still be binding
    // when the banner comes: ask until each has answered (bounded).
    util::wait_until(Duration::from_secs(30), || {
        for k in 0..60 {
            let line = format!("hello {k}");
            let reply = round_trip(addr, &line);
            let (index, echoed) = reply.split_once(": ").expect("index: line");
            assert_eq!(echoed, line);
            seen[index.parse::<usize>().expect("index")] = true;
        }
        seen.iter().all(|&s| s)
    });
    assert_eq!(
        seen, [true; 3],
        "the banner says 3 dispatcher threads listen on {addr}; these answered there"
    );
    drop(example);
}

#[test]
fn echo_multicore_example_exits_non_zero_when_its_dispatchers_fail() {
    use std::os::unix::process::CommandExt;
    let _dog = util::Watchdog::new("echo_multicore failures", Duration::from_secs(400));
    let program = util::example_binary("echo_multicore");
    let check = |mut cmd: Command, why: &str| {
        cmd.env("RUST_BACKTRACE", "0");
        let out = util::output_within(cmd, b"", Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some_and(|c| c != 0),
            "it serves nowhere, yet ends with {}; stderr: {stderr}",
            out.status
        );
        assert!(stderr.contains(why), "the error says why: {stderr}");
        assert!(
            !stderr.contains("panicked"),
            "an error, not a panic: {stderr}"
        );
    };

    // A plain listener (no SO_REUSEPORT) holds the port alone: nothing can bind it.
    let (_holder, addr) = util::local_listener();
    let mut cmd = Command::new(&program);
    cmd.args(["2", &addr.port().to_string()]);
    check(cmd, "in use");

    // Descriptors for the standard streams and one listener only: the port is bound, but
    // every dispatcher fails to set up (no descriptor for its poller or its own listener).
    // Whatever else the test inherited is closed first, so the listener gets descriptor 3.
    let mut cmd = Command::new(&program);
    cmd.args(["2", "0"]);
    // SAFETY: close and setrlimit are async-signal-safe, and are all that runs between fork
    // and exec (closing std's own error pipe only leaves an exec failure unreported).
    unsafe {
        cmd.pre_exec(|| {
            for fd in 3..1024 {
                libc::close(fd);
            }
            let four = libc::rlimit {
                rlim_cur: 4,
                rlim_max: 4,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &four) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    check(cmd, "dispatcher thread 1: ");
}
