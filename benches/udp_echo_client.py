#!/usr/bin/env python3
"""A closed-loop UDP client for `examples/udp_echo`: the load for counting the server's
system calls per datagram (docs/benchmarks.md, "UDP echo: system calls per datagram").

    python3 benches/udp_echo_client.py PORT CLIENTS SECONDS

CLIENTS sockets, each sending a 64-byte datagram and sending the next when the echo comes
back, for SECONDS; prints the number of echoes received. Datagrams lost on the way are not
resent (none are, on loopback, at these rates). Python is slower than the server, so the
server is not saturated: its figures are those of a server waiting for work.
"""

import select
import socket
import sys
import time


def main(port, clients, seconds):
    poller = select.epoll()
    socks = {}
    for _ in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks[s.fileno()] = s
        poller.register(s.fileno(), select.EPOLLIN)
        s.send(b"x" * 64)
    echoes = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for fd, _ in poller.poll(1.0):
            s = socks[fd]
            while True:
                try:
                    s.recv(2048)
                except BlockingIOError:
                    break
                echoes += 1
                s.send(b"x" * 64)
    print(echoes)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
