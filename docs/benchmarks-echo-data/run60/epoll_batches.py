"""Events per epoll wait, from `perf script` of a recording of one process.

Reads `perf script` output on standard input, recorded with
  perf record -e 'syscalls:sys_enter_epoll_*wait' -e 'syscalls:sys_exit_epoll_*wait' \
      -e sched:sched_switch -p PID -- sleep 1
and prints the number of waits, how many had a zero timeout, the mean events per wait, how
many times the process went to sleep, and a histogram of events per wait in bins of five.
"""
import collections
import re
import sys

waits = zero = returned = events = sleeps = 0
bins = collections.Counter()
for line in sys.stdin:
    if "sys_enter_epoll" in line:
        waits += 1
        if re.search(r"timeout: 0x0+\b", line):
            zero += 1
    elif "sys_exit_epoll" in line:
        n = int(line.split()[-1], 16)
        returned += 1
        events += n
        bins[min(n, 50) // 5 * 5] += 1
    elif "sched_switch" in line and "prev_state=S" in line:
        sleeps += 1
print(f"waits {waits} timeout0 {zero} events/wait {events / max(returned, 1):.1f} "
      f"sleeps {sleeps} hist {sorted(bins.items())}")
