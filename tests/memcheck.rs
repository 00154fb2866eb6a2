//! The library under valgrind's memcheck: a program of coroutines, sockets and unwinding
//! runs without a single error reported.
//!
//! Memcheck must be told where each coroutine stack is, or it takes every switch between
//! stacks for a huge frame pushed or popped, marks the frames it skipped as unusable and
//! reports thousands of false errors that bury any real one. This checks that copas tells it,
//! so a user can run their own program under memcheck. The program runs in a child process
//! started under valgrind by the test of the same name. `.ci/run` installs valgrind.

mod util;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use copas::Pattern;

const CHILD: &str = "COPAS_TEST_MEMCHECK_CHILD";
const MARKER: &str = "memcheck child done";

/// Coroutines that pause, echo over loopback, are removed while suspended (their stacks
/// unwound) and panic (a handler's report), with stacks reused from the pool in between.
fn coroutines_sockets_and_unwinding() {
    util::make_dispatcher();
    let panics = util::record_panics();
    let (listener, addr) = util::local_listener();
    let server = copas::addserver(listener, |mut sock| {
        while let Ok(line) = sock.receive(Pattern::Line) {
            let mut reply = line;
            reply.push(b'\n');
            if sock.send(&reply).is_err() {
                break;
            }
        }
    })
    .expect("addserver");
    let echoed = Rc::new(Cell::new(0));
    for i in 0..4 {
        let echoed = echoed.clone();
        copas::addthread(move || {
            let mut sock = copas::connect(addr, Some(util::secs(10))).expect("connect");
            sock.settimeout(Some(util::secs(10)));
            for j in 0..20 {
                let line = format!("client {i} line {j}\n");
                sock.send(line.as_bytes()).expect("send");
                let back = sock.receive(Pattern::Line).expect("receive");
                assert_eq!(back, line.trim_end().as_bytes());
                echoed.set(echoed.get() + 1);
            }
        })
        .expect("addthread");
    }
    let done = echoed.clone();
    copas::addthread(move || {
        for round in 0..3 {
            let sleepers: Vec<_> = (0..8)
                .map(|_| copas::addthread(loop_pausing).expect("addthread"))
                .collect();
            copas::addthread(move || panic!("deliberate panic {round}")).expect("addthread");
            copas::pause(util::ms(5));
            for co in sleepers {
                assert!(copas::removethread(co), "the sleeper was live");
            }
        }
        assert!(util::pause_until(util::secs(60), || done.get() == 80));
        copas::removeserver(server, false).expect("removeserver");
    })
    .expect("addthread");
    util::run_bounded(util::secs(120));
    assert_eq!(echoed.get(), 80);
    assert_eq!(panics.borrow().len(), 3, "{:?}", panics.borrow());
    println!("{MARKER}");
}

/// Pauses until removed, with a frame of its own on the stack to unwind.
fn loop_pausing() {
    let held = vec![1u8; 100];
    loop {
        copas::pause(util::ms(1));
        std::hint::black_box(&held);
    }
}

#[test]
fn a_program_of_coroutines_and_sockets_runs_under_memcheck_without_errors() {
    if util::is_child(CHILD) {
        coroutines_sockets_and_unwinding();
        return;
    }
    if !util::peer_available("valgrind", "valgrind", &["--version"]) {
        return;
    }
    let out = util::run_child_under(
        &["valgrind", "--tool=memcheck", "--error-exitcode=9"],
        "a_program_of_coroutines_and_sockets_runs_under_memcheck_without_errors",
        CHILD,
        Duration::from_secs(240),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr
        .lines()
        .find(|l| l.contains("ERROR SUMMARY"))
        .unwrap_or("(no error summary)");
    assert!(
        out.status.success() && stdout.contains(MARKER),
        "under memcheck ({}, {summary}):\n--- stdout\n{stdout}\n--- stderr (first 60 lines)\n{}",
        out.status,
        stderr.lines().take(60).collect::<Vec<_>>().join("\n")
    );
    assert!(summary.contains("ERROR SUMMARY: 0 errors"), "{summary}");
}
