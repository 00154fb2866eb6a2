//! Faults the operating system throws at the dispatcher: signals interrupting system calls
//! (`EINTR`), running out of file descriptors (`EMFILE`) while accepting or before the
//! dispatcher has made its poller, and a seccomp filter refusing `epoll_pwait2`.
//!
//! Each changes process-wide state (signal handlers, timers, descriptor limits, a filter),
//! so each runs in a child process started by the test of the same name.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use copas::Pattern;

const EINTR_CHILD: &str = "COPAS_TEST_EINTR_CHILD";
const EMFILE_CHILD: &str = "COPAS_TEST_EMFILE_CHILD";

/// The byte at position `i` of the transferred stream.
fn pattern_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is given; RUSAGE_THREAD is valid on Linux.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[test]
fn signals_interrupting_system_calls_never_reach_handlers() {
    if util::is_child(EINTR_CHILD) {
        return eintr_child();
    }
    util::assert_child_passes(
        "signals_interrupting_system_calls_never_reach_handlers",
        EINTR_CHILD,
        "EINTR-OK",
        Duration::from_secs(120),
    );
}

/// 64 MiB through copas, and 50 connect/accept round trips, while the dispatcher's thread
/// gets a `SIGALRM` every 500 µs whose handler is installed without `SA_RESTART`, so its
/// blocking system calls (the poller's wait) fail with `EINTR`.
fn eintr_child() {
    // SAFETY: installs a handler that does nothing, without SA_RESTART; it only changes this
    // child process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as *const () as usize;
        action.sa_flags = 0;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()),
            0
        );
    }
    // Signal this (the dispatcher's) thread every 500 µs: a process-wide timer would mostly
    // interrupt other threads.
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let signaller = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: `me` is the test thread, alive until it joins this thread.
                unsafe { libc::pthread_kill(me, libc::SIGALRM) };
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    const TOTAL: usize = 64 << 20;
    let _dog = util::Watchdog::new("eintr child", Duration::from_secs(100));
    let (listener, addr) = util::local_listener();
    let received = Rc::new(std::cell::RefCell::new(Vec::new()));
    let errors = Rc::new(std::cell::RefCell::new(Vec::<String>::new()));
    let served = Rc::new(std::cell::Cell::new(0usize));
    let server = {
        let (received, errors, served) = (received.clone(), errors.clone(), served.clone());
        copas::addserver(listener, move |mut sock| {
            sock.settimeout(Some(Duration::from_secs(30)));
            match sock.receive(Pattern::Line) {
                Ok(first) if first == b"bulk" => match sock.receive(Pattern::All) {
                    Ok(data) => *received.borrow_mut() = data,
                    Err(e) => errors.borrow_mut().push(format!("server receive: {e}")),
                },
                Ok(line) => {
                    let reply = [&line[..], b"\n"].concat();
                    if let Err(e) = sock.send(&reply) {
                        errors.borrow_mut().push(format!("server send: {e}"));
                    }
                    served.set(served.get() + 1);
                }
                Err(e) => errors.borrow_mut().push(format!("server line: {e}")),
            }
        })
        .expect("addserver")
    };
    {
        let errors = errors.clone();
        copas::addthread(move || {
            let outcome = (|| -> copas::Result<()> {
                let mut sock = copas::connect(addr, Some(Duration::from_secs(10)))?;
                sock.settimeout(Some(Duration::from_secs(30)));
                sock.send(b"bulk\n")?;
                let data: Vec<u8> = (0..TOTAL).map(pattern_byte).collect();
                for chunk in data.chunks(1 << 20) {
                    sock.send(chunk)?;
                }
                sock.close();
                for i in 0..50 {
                    let mut s = copas::connect(addr, Some(Duration::from_secs(10)))?;
                    s.settimeout(Some(Duration::from_secs(10)));
                    s.send(format!("ping {i}\n").as_bytes())?;
                    let back = s.receive(Pattern::Line)?;
                    assert_eq!(back, format!("ping {i}").into_bytes());
                    copas::pause(Duration::from_millis(2));
                }
                Ok(())
            })();
            if let Err(e) = outcome {
                errors.borrow_mut().push(format!("client: {e}"));
            }
            // Give the server time to finish the bulk receive, then stop.
            while copas::status().coroutines > 2 {
                copas::pause(Duration::from_millis(10));
            }
            copas::removeserver(server, false).expect("removeserver");
        })
        .expect("client");
    }
    let result = copas::run();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    signaller.join().expect("signaller");
    result.expect("run is not broken by EINTR");
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent > 100, "only {sent} signals were sent");
    let errors = errors.borrow();
    assert!(errors.is_empty(), "errors: {errors:?}");
    let received = received.borrow();
    assert_eq!(received.len(), TOTAL);
    assert!(
        received
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i)),
        "the data was altered"
    );
    assert_eq!(served.get(), 50);
    println!("EINTR-OK {} bytes under {sent} signals", received.len());
}

#[test]
fn accept_backs_off_when_out_of_descriptors_and_serves_again() {
    if util::is_child(EMFILE_CHILD) {
        return emfile_child();
    }
    util::assert_child_passes(
        "accept_backs_off_when_out_of_descriptors_and_serves_again",
        EMFILE_CHILD,
        "EMFILE-OK",
        Duration::from_secs(60),
    );
}

/// Five clients connect while the process has no descriptor left: accepting fails with
/// `EMFILE`. For a second the dispatcher must back off (little CPU, no handler started); once
/// descriptors are freed, every client is served.
fn emfile_child() {
    let _dog = util::Watchdog::new("emfile child", Duration::from_secs(50));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let started = Rc::new(std::cell::Cell::new(0usize));
    {
        let started = started.clone();
        copas::addserver(listener, move |mut sock| {
            started.set(started.get() + 1);
            sock.settimeout(Some(Duration::from_secs(10)));
            if let Ok(line) = sock.receive(Pattern::Line) {
                let _ = sock.send(&[&line[..], b"\n"].concat());
            }
        })
        .expect("addserver");
    }
    // Clients on a helper thread: connected and waiting for their echo before we run out.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let clients = std::thread::spawn(move || {
        let mut streams: Vec<TcpStream> = (0..5)
            .map(|i| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                s.write_all(format!("client {i}\n").as_bytes())
                    .expect("write");
                s
            })
            .collect();
        ready_tx.send(()).expect("ready");
        let mut ok = 0;
        for (i, s) in streams.iter_mut().enumerate() {
            let mut line = String::new();
            if BufReader::new(s).read_line(&mut line).is_ok() && line == format!("client {i}\n") {
                ok += 1;
            }
        }
        ok
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("clients ready");
    // Use up every descriptor.
    let mut spare = Vec::new();
    loop {
        // SAFETY: dup of standard input; each copy is closed below.
        let fd = unsafe { libc::dup(0) };
        if fd < 0 {
            break;
        }
        spare.push(fd);
        assert!(spare.len() < 100_000, "no descriptor limit?");
    }
    // For one second, the server cannot accept: it must back off, not spin.
    let cpu_before = thread_cpu();
    let start = Instant::now();
    let mut steps = 0;
    while start.elapsed() < Duration::from_secs(1) {
        copas::step(Some(Duration::from_millis(50))).expect("step");
        steps += 1;
        assert!(steps < 10_000, "the dispatcher spins");
    }
    let cpu = thread_cpu() - cpu_before;
    assert_eq!(started.get(), 0, "a handler started without a descriptor");
    assert!(
        cpu < Duration::from_millis(200),
        "the dispatcher used {cpu:?} of CPU in 1 s without descriptors"
    );
    // Free the descriptors: every client is served.
    for fd in spare {
        // SAFETY: closes the copies made above, each once.
        unsafe { libc::close(fd) };
    }
    let start = Instant::now();
    while started.get() < 5 && start.elapsed() < Duration::from_secs(10) {
        copas::step(Some(Duration::from_millis(50))).expect("step");
    }
    assert_eq!(started.get(), 5, "not every client was accepted");
    let served_until = Instant::now() + Duration::from_secs(5);
    while !clients.is_finished() && Instant::now() < served_until {
        copas::step(Some(Duration::from_millis(20))).expect("step");
    }
    let ok = clients.join().expect("clients");
    assert_eq!(ok, 5, "every client gets its echo");
    println!("EMFILE-OK steps={steps} cpu={cpu:?}");
}

const NO_POLLER_CHILD: &str = "COPAS_TEST_NO_POLLER_CHILD";
const CONTEXT_CHILD: &str = "COPAS_TEST_CONTEXT_CHILD";
const FORK_CHILD: &str = "COPAS_TEST_FORK_CHILD";
const EXEC_CHILD: &str = "COPAS_TEST_EXEC_CHILD";
const SECCOMP_CHILD: &str = "COPAS_TEST_SECCOMP_CHILD";

/// Uses up every descriptor the process may open; returns them for [`free_descriptors`].
fn exhaust_descriptors() -> Vec<libc::c_int> {
    let mut held = Vec::new();
    for _ in 0..200_000 {
        // SAFETY: duplicates standard input, which the child holds; `free_descriptors`
        // closes each copy once.
        let fd = unsafe { libc::dup(0) };
        if fd < 0 {
            return held;
        }
        held.push(fd);
    }
    panic!("no descriptor limit below 200,000");
}

fn free_descriptors(held: Vec<libc::c_int>) {
    for fd in held {
        // SAFETY: closes a copy made by `exhaust_descriptors`, once.
        unsafe { libc::close(fd) };
    }
}

/// A thread's first copas call comes while the process has no descriptor to spare, so its
/// dispatcher cannot make its poller: that call fails, and once descriptors are free again
/// the dispatcher works (the poller is made by the next call that needs it).
#[test]
fn a_dispatcher_first_used_without_descriptors_works_once_they_are_back() {
    if util::is_child(NO_POLLER_CHILD) {
        let _dog = util::Watchdog::new("the no-poller child", Duration::from_secs(20));
        let (listener, addr) = util::local_listener();
        let held = exhaust_descriptors();
        let first = copas::step(Some(Duration::ZERO));
        free_descriptors(held);
        assert_eq!(first.unwrap_err().kind(), copas::ErrorKind::Io);

        let served = Rc::new(std::cell::Cell::new(false));
        let flag = served.clone();
        let server = copas::addserver(listener, move |mut sock| {
            if sock.receive(Pattern::Line).is_ok_and(|l| l == b"hello") {
                flag.set(true);
            }
        })
        .expect("addserver once descriptors are back");
        copas::addthread(move || {
            let mut sock = copas::connect(addr, Some(Duration::from_secs(5))).expect("connect");
            sock.send(b"hello\n").expect("send");
        })
        .expect("addthread");
        for _ in 0..1_000 {
            if served.get() {
                break;
            }
            copas::step(Some(Duration::from_millis(10))).expect("step");
        }
        assert!(served.get(), "the server did not get the line");
        copas::removeserver(server, false).expect("removeserver");
        println!("NO-POLLER-OK");
        return;
    }
    util::assert_child_passes(
        "a_dispatcher_first_used_without_descriptors_works_once_they_are_back",
        NO_POLLER_CHILD,
        "NO-POLLER-OK",
        Duration::from_secs(30),
    );
}

/// Out of descriptors, `handle()` (its wake-up handle) and `offload` (its helper thread's
/// wake-up handle) fail with `Io` and the `EMFILE` behind it, which a program can tell
/// apart (their text named it, but `io_error()` was `None`).
#[test]
fn out_of_descriptors_handle_and_offload_keep_the_system_error() {
    if util::is_child(CONTEXT_CHILD) {
        let _dog = util::Watchdog::new("the context child", Duration::from_secs(20));
        copas::step(Some(Duration::ZERO)).expect("the poller is made");
        let held = exhaust_descriptors();
        let handle = copas::handle().expect_err("no descriptor for a wake-up handle");
        let offloaded = Rc::new(std::cell::RefCell::new(None));
        let out = offloaded.clone();
        copas::addthread(move || {
            *out.borrow_mut() = Some(copas::offload(|| 1).expect_err("no descriptor"));
        })
        .expect("addthread");
        copas::step(Some(Duration::from_millis(10))).expect("step");
        free_descriptors(held);
        let offload = offloaded.borrow_mut().take().expect("the offload ran");
        for (what, e) in [("handle", handle), ("offload", offload)] {
            assert_eq!(e.kind(), copas::ErrorKind::Io, "{what}: {e}");
            let errno = e.io_error().and_then(std::io::Error::raw_os_error);
            assert_eq!(errno, Some(libc::EMFILE), "{what}: {e}");
        }
        println!("CONTEXT-OK");
        return;
    }
    util::assert_child_passes(
        "out_of_descriptors_handle_and_offload_keep_the_system_error",
        CONTEXT_CHILD,
        "CONTEXT-OK",
        Duration::from_secs(30),
    );
}

/// After a `fork` without `exec`, the child's inherited dispatcher refuses with
/// `InvalidState` instead of using the epoll instance and timerfd it shares with the parent
/// (the child re-armed the shared timerfd and took its expiry, and the parent's `pause`
/// never returned); a new thread in the child runs copas normally, and the parent is
/// undisturbed.
#[test]
fn a_dispatcher_inherited_through_fork_refuses_and_leaves_the_parent_alone() {
    if util::is_child(FORK_CHILD) {
        let _dog = util::Watchdog::new("the fork child", Duration::from_secs(20));
        copas::step(Some(Duration::ZERO)).expect("the poller is made");
        // SAFETY: the forked process runs only this thread's code below and leaves with
        // `_exit`, running no destructor of the parent's state.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let inherited = copas::run_with(|| {
                for _ in 0..40 {
                    copas::pause(Duration::from_millis(100));
                }
            });
            let refused = inherited
                .as_ref()
                .is_err_and(|e| e.kind() == copas::ErrorKind::InvalidState);
            let fresh = std::thread::spawn(|| {
                copas::run_with(|| {
                    for _ in 0..3 {
                        copas::pause(Duration::from_millis(50));
                    }
                })
            })
            .join()
            .is_ok_and(|r| r.is_ok());
            let code = if refused && fresh { 0 } else { 1 };
            // SAFETY: ends the forked process at once.
            unsafe { libc::_exit(code) };
        }
        assert!(pid > 0, "fork failed");
        let started = Instant::now();
        copas::run_with(|| {
            copas::pause(Duration::from_millis(300));
        })
        .expect("the parent's run");
        let took = started.elapsed();
        let mut status = 0;
        // SAFETY: waits for the process forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            took < Duration::from_secs(3),
            "the parent's pause took {took:?}"
        );
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the forked child: refused and ran fresh? status {status}"
        );
        println!("FORK-OK");
        return;
    }
    util::assert_child_passes(
        "a_dispatcher_inherited_through_fork_refuses_and_leaves_the_parent_alone",
        FORK_CHILD,
        "FORK-OK",
        Duration::from_secs(30),
    );
}

/// The descriptors a program started with `exec` holds (its `/proc/self/fd`, read by `ls`).
fn exec_inherits() -> String {
    let out = std::process::Command::new("ls")
        .arg("/proc/self/fd")
        .output()
        .expect("ls");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A program started from a handler (fork and `exec`) inherits none of copas's descriptors:
/// the poller's epoll instance, eventfd and timerfd, a `Handle`'s wake-up, a listener, an
/// accepted and a connected socket, a UDP socket. `docs/threads.md` says every descriptor
/// copas makes is close-on-exec.
#[test]
fn a_program_started_from_a_handler_inherits_no_descriptor_of_copas() {
    if util::is_child(EXEC_CHILD) {
        let _dog = util::Watchdog::new("the exec child", Duration::from_secs(20));
        let before = exec_inherits();
        let (listener, addr) = util::local_listener();
        let seen = Rc::new(std::cell::RefCell::new(None));
        let out = seen.clone();
        let server = copas::addserver(listener, move |mut sock| {
            let _handle = copas::handle().expect("handle");
            let _udp = copas::UdpSocket::bind("127.0.0.1:0").expect("udp");
            // Arms the timerfd: a wait of 50 ms or more uses it.
            copas::pause(Duration::from_millis(60));
            *out.borrow_mut() = Some(exec_inherits());
            let _ = sock.send(b"done\n");
        })
        .expect("addserver");
        copas::addthread(move || {
            let mut sock = copas::connect(addr, Some(Duration::from_secs(5))).expect("connect");
            let _ = sock.receive(Pattern::Line);
        })
        .expect("addthread");
        assert!(util::step_until(Duration::from_secs(10), || seen
            .borrow()
            .is_some()));
        copas::removeserver(server, false).expect("removeserver");
        util::run_bounded(Duration::from_secs(10));
        let during = seen.borrow_mut().take().expect("listed");
        assert_eq!(during, before, "descriptors inherited from a handler");
        println!("EXEC-OK");
        return;
    }
    util::assert_child_passes(
        "a_program_started_from_a_handler_inherits_no_descriptor_of_copas",
        EXEC_CHILD,
        "EXEC-OK",
        Duration::from_secs(30),
    );
}

/// Makes `epoll_pwait2` fail with `EPERM` on this thread, as a seccomp profile written
/// before the call existed does (Docker's default did, before moby#42681).
fn refuse_epoll_pwait2() {
    const LOAD_WORD_ABSOLUTE: u16 = 0x20;
    const JUMP_IF_EQUAL: u16 = 0x15;
    const RETURN: u16 = 0x06;
    const ALLOW: u32 = 0x7fff_0000;
    const FAIL_WITH_ERRNO: u32 = 0x0005_0000;
    let filter = [
        // The system call's number (offset 0 of `seccomp_data`).
        libc::sock_filter {
            code: LOAD_WORD_ABSOLUTE,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JUMP_IF_EQUAL,
            jt: 0,
            jf: 1,
            k: libc::SYS_epoll_pwait2 as u32,
        },
        libc::sock_filter {
            code: RETURN,
            jt: 0,
            jf: 0,
            k: FAIL_WITH_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: RETURN,
            jt: 0,
            jf: 0,
            k: ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with valid arguments; the kernel copies the filter, which outlives the
    // call. It only restricts this child's thread.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        let probe = libc::syscall(libc::SYS_epoll_pwait2, -1, 0, 0, 0, 0, 0);
        assert_eq!(probe, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EPERM),
            "the filter is not in place"
        );
    }
}

/// Where a seccomp filter refuses `epoll_pwait2` with `EPERM` instead of `ENOSYS`, waits
/// with a deadline fall back to `epoll_wait`, as on a kernel without the call.
#[test]
fn timed_waits_work_where_a_seccomp_filter_refuses_epoll_pwait2() {
    if util::is_child(SECCOMP_CHILD) {
        let _dog = util::Watchdog::new("the seccomp child", Duration::from_secs(20));
        refuse_epoll_pwait2();
        let start = Instant::now();
        copas::run_with(|| {
            copas::pause(Duration::from_millis(30));
        })
        .expect("run with a timed wait");
        assert!(start.elapsed() >= Duration::from_millis(30));
        println!("SECCOMP-OK");
        return;
    }
    util::assert_child_passes(
        "timed_waits_work_where_a_seccomp_filter_refuses_epoll_pwait2",
        SECCOMP_CHILD,
        "SECCOMP-OK",
        Duration::from_secs(30),
    );
}
