#!/bin/bash
# Samples one echo bench server under load with `perf record -e cpu-clock` and prints the
# share of the server's samples in user space and on the prefetches that first touch a
# resumed coroutine's stack (the run phase's, in `Dispatcher::run_phase` (in `Dispatcher::step` before 28a8902), and the wake pass's, in
# `State::wake_popped`). Used for "Where 1,000 connections' gap goes" in docs/benchmarks.md.
#
# usage: profile.sh SERVER CONNS SIZE SECS NAME     (e.g. profile.sh copas 1000 1024 5 a)
#   SERVER: a server of benches/echo.rs (copas, copas@16, polling, ...)
#   BIN: the echo bench binary (default: the newest target/release/deps/echo-*)
#   OUT: where NAME.data and NAME.load go (default: /tmp/stack-walk)
set -e
BIN=${BIN:-$(ls -t target/release/deps/echo-* | grep -v '\.d$' | head -1)}
OUT=${OUT:-/tmp/stack-walk}
mkdir -p "$OUT"
S=$1; C=$2; Z=$3; T=$4; N=$5
coproc SRV { exec "$BIN" __server "$S"; }
read -r line <&"${SRV[0]}"
PORT=${line#port=}
# The load role (pinned to CPU 1, the server pins itself to CPU 0): port, server pid,
# connections, message size, warm-up s, measured s, no perf of its own.
"$BIN" __load "$PORT" "$SRV_PID" "$C" "$Z" 1 $((T + 2)) 0 > "$OUT/$N.load" &
LOAD=$!
sleep 1.5
perf record -q -e cpu-clock -F 4000 -p "$SRV_PID" -o "$OUT/$N.data" -- sleep "$T" 2>/dev/null
wait $LOAD
kill "$SRV_PID"
wait || true
share() { perf report -i "$OUT/$N.data" --stdio --sort sym 2>/dev/null | grep "$1" | awk '{s += $1} END {print s + 0}'; }
stalled() {
    perf annotate -i "$OUT/$N.data" --stdio -s "$1" 2>/dev/null |
        grep -E ':\s+[0-9a-f]+:\s+prefetcht0' | awk '{s += $1} END {print s + 0}'
}
python3 - "$S" "$(share '\[\.\]')" "$(share 'Dispatcher::run_phase')" \
    "$(stalled 'copas::dispatcher::Dispatcher::run_phase')" "$(share 'State::wake_popped')" \
    "$(stalled 'copas::dispatcher::State::wake_popped')" "$(cat "$OUT/$N.load")" <<'EOF'
import sys
s, user, step, in_step, wake, in_wake, load = sys.argv[1:]
v = dict(kv.split("=") for kv in load.split())
cpu = (float(v["srv_user_s"]) + float(v["srv_sys_s"])) / float(v["all_msgs"]) * 1e6
print(f"{s}: user {float(user):.2f} % of samples, run-phase stall {float(step) * float(in_step) / 100:.2f} %, "
      f"wake stall {float(wake) * float(in_wake) / 100:.2f} %, server CPU {cpu:.2f} us/msg")
EOF
