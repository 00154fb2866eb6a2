#!/usr/bin/env python3
"""A closed-loop client for `examples/tls_echo`: the load for counting the server's
instructions per TLS message under cachegrind (docs/benchmarks.md, "TLS echo").

    python3 benches/tls_echo_client.py PORT MESSAGES CONNECTIONS

Opens CONNECTIONS connections one after another (no certificate check: the example makes a
throwaway one), sends MESSAGES lines of 64 bytes on each, waiting for each echo, then `quit`.
Run it once with MESSAGES=1 (handshakes, start-up) and once with many; the difference of the
server's instruction counts divided by the difference of messages is the cost per message.
"""

import socket
import ssl
import sys
import time


def main(port, messages, connections):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    line = b"x" * 63 + b"\n"
    start = time.monotonic()
    for _ in range(connections):
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            reader = sock.makefile("rb")
            for _ in range(messages):
                sock.sendall(line)
                if reader.readline() != line:
                    sys.exit("the echo differs from the line sent")
            sock.sendall(b"quit\n")
    took = time.monotonic() - start
    print(f"{connections} connections x {messages} messages in {took:.2f} s")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
