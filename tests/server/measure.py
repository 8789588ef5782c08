#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Informational figures of ivshm-server (nothing is asserted).

    measure.py IVSHM_SERVER [ROUNDS]

Starts a server on a temporary socket and reports: the time of one client's
whole set-up with 0 and with 30 peers connected, and the ring-to-wake time
between two host peers through the eventfds the server handed out (the
receiver in another process, blocked in select()).
"""
import os
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ivshm_peer import Peer  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def main():
    server, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    d = tempfile.mkdtemp(prefix="ivshm-server-measure-")
    shm = f"/dev/shm/ivshm-server-measure-{os.getpid()}"
    sock = os.path.join(d, "s.sock")
    with open(shm, "wb") as f:
        f.truncate(65536)
    proc = subprocess.Popen([server, "--shm", shm, "--socket", sock, "--quiet"])
    try:
        while not os.path.exists(sock):
            time.sleep(0.01)
        time.sleep(0.1)
        for npeers in (0, 30):
            others = [Peer(sock).handshake() for _ in range(npeers)]
            times = []
            for _ in range(200):
                t = time.perf_counter()
                Peer(sock).handshake().close()
                times.append((time.perf_counter() - t) * 1e6)
            print(f"set-up with {npeers} peers: p50 {statistics.median(times):.0f} us, "
                  f"p99 {pct(times, 99):.0f} us (200 connections)")
            for o in others:
                o.close()
            time.sleep(0.2)
        a = Peer(sock).handshake()
        b = Peer(sock).handshake()
        a.wait_peer(b.id)
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # b: wait, report when woken, until a says stop
            for _ in range(rounds):
                select.select([b.own[0]], [], [])
                os.read(b.own[0], 8)
                os.write(w, struct.pack("=d", time.perf_counter()))
            os._exit(0)
        lat = []
        for _ in range(rounds):
            time.sleep(0.001)  # the receiver is asleep when the bell rings
            t = time.perf_counter()
            a.ring(b.id, 0)
            woke = struct.unpack("=d", os.read(r, 8))[0]
            lat.append((woke - t) * 1e6)
        os.waitpid(child, 0)
        print(f"ring to wake, host peer to host peer: p50 {statistics.median(lat):.1f} us, "
              f"p99 {pct(lat, 99):.1f} us ({rounds} rings)")
    finally:
        proc.terminate()
        proc.wait()
        os.unlink(shm)
        subprocess.run(["rm", "-rf", d], check=False)


if __name__ == "__main__":
    main()
