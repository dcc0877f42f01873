#!/usr/bin/env python3
"""What half-sent request heads cost a node: opens N connections to its HTTP port, sends SIZE
bytes of a request head that never ends on each, and prints the node's resident memory
(VmRSS) before, at its peak while the connections are held, and whether /health answers
from another loopback address meanwhile.

    scripts/headflood.py PORT PID [N=1000] [SIZE=400000] [FROM=127.0.0.1]

Only for nodes you run on this host (it reads /proc/PID/status). Connections over the node's
caps are refused by it; the script counts how many it could fill.
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def health(port, source="127.0.0.2"):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return s.recv(64).split(b" ")[1].decode()
    except OSError as e:
        return f"failed ({e})"


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 400_000
    source = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.1"
    head = b"GET /health HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * size
    before = rss_kib(pid)
    socks, filled = [], 0
    started = time.monotonic()
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
            s.setblocking(False)
            socks.append([s, 0])
        except OSError:
            pass
    # Push every head as far as the node reads it (non-blocking, round robin, up to 5 s).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        progress = False
        for entry in socks:
            s, sent = entry
            if sent < 0 or sent >= len(head):
                continue
            try:
                k = s.send(head[sent:sent + 65536])
                entry[1] += k
                progress = progress or k > 0
            except BlockingIOError:
                pass
            except OSError:
                entry[1] = -1
        if not progress:
            time.sleep(0.05)
            if all(e[1] < 0 or e[1] >= len(head) for e in socks):
                break
    filled = sum(1 for e in socks if e[1] >= len(head))
    peak = rss_kib(pid)
    for _ in range(10):
        time.sleep(0.1)
        peak = max(peak, rss_kib(pid))
    status = health(port)
    print(f"connections opened {len(socks)}, heads fully sent {filled} of {size} B, "
          f"cut by the node {sum(1 for e in socks if e[1] < 0)} "
          f"(in {time.monotonic() - started:.1f} s)")
    print(f"rss before {before} kB -> peak during {peak} kB (+{(peak - before) / 1024:.1f} MiB); "
          f"/health from 127.0.0.2 -> {status}")
    for s, _ in socks:
        s.close()


if __name__ == "__main__":
    main()
