#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A host peer of ivshm-server (QEMU's ivshmem server protocol), standard library only.

    ivshm_peer.py SOCKET [--vectors N] [--ring ID[:VECTOR]] [--wait SECONDS]

Connects like an ivshmem-doorbell device does and prints what it receives:
its id, the shared memory's size, the peers and their eventfds. --ring
writes 1 to peer ID's eventfd for VECTOR (the doorbell); --wait keeps
listening for interrupts and peers coming and going. The tests import the
Peer class.
"""
import argparse
import os
import select
import socket
import struct
import sys
import time


def wait_for(cond, timeout=20.0, what="condition"):
    """Polls cond() every 10 ms; fails the test when it is not true within timeout seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class ProtocolError(Exception):
    pass


class Peer:
    """One connection to the server: the set-up, then notices as they come."""

    def __init__(self, path, vectors=1, timeout=10.0):
        self.vectors = vectors
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.id = None
        self.shm_fd = None
        self.own = []        # eventfds that interrupt us, one per vector
        self.peers = {}      # peer id -> eventfds that interrupt that peer
        self.left = []       # ids whose disconnect notice arrived

    # ---- messages ----
    def recv_message(self):
        """(value, fd or None); raises EOFError when the server closed."""
        data = b""
        fds = []
        while len(data) < 8:
            msg, got, _flags, _addr = socket.recv_fds(self.sock, 8 - len(data), 1)
            if not msg:
                for fd in got:
                    os.close(fd)
                raise EOFError("server closed the connection")
            data += msg
            fds += got
        if len(fds) > 1:
            raise ProtocolError("more than one descriptor with one message")
        return struct.unpack("<q", data)[0], (fds[0] if fds else None)

    def handshake(self):
        """Reads version, id, shared memory, peers, then our own eventfds."""
        version, fd = self.recv_message()
        if version != 0 or fd is not None:
            raise ProtocolError(f"version message {version} (fd {fd})")
        self.id, fd = self.recv_message()
        if fd is not None or not 0 <= self.id <= 65535:
            raise ProtocolError(f"id message {self.id} (fd {fd})")
        value, self.shm_fd = self.recv_message()
        if value != -1 or self.shm_fd is None:
            raise ProtocolError(f"shared memory message {value} (fd {self.shm_fd})")
        while len(self.own) < self.vectors:
            self.handle(*self.recv_message())
        return self

    def handle(self, value, fd):
        if value == self.id:
            if fd is None:
                raise ProtocolError("disconnect notice for our own id")
            self.own.append(fd)
        elif fd is not None:
            if value in self.left:
                self.left.remove(value)
            self.peers.setdefault(value, []).append(fd)
        else:
            for efd in self.peers.pop(value, []):
                os.close(efd)
            self.left.append(value)
        return value, fd

    def next_notice(self, timeout=10.0):
        """Waits for one message after the set-up; returns (value, fd)."""
        self.sock.settimeout(timeout)
        return self.handle(*self.recv_message())

    def drain(self, quiet=0.3):
        """Handles notices until none comes for QUIET seconds; returns them."""
        seen = []
        while True:
            try:
                seen.append(self.next_notice(timeout=quiet))
            except (socket.timeout, TimeoutError):
                return seen

    def wait_peer(self, peer_id, present=True, timeout=10.0):
        """Handles notices until PEER_ID has all its eventfds (or has left)."""
        end = time.monotonic() + timeout
        while (len(self.peers.get(peer_id, [])) == self.vectors) != present:
            self.next_notice(timeout=max(0.01, end - time.monotonic()))

    def read_until_eof(self, timeout=10.0):
        """Handles notices until the server closes the connection."""
        try:
            while True:
                self.next_notice(timeout=timeout)
        except (EOFError, ConnectionResetError):
            return

    # ---- doorbells ----
    def ring(self, peer_id, vector=0):
        os.write(self.peers[peer_id][vector], struct.pack("=q", 1))

    def wait_interrupt(self, vector=0, timeout=10.0):
        """The count of interrupts on our VECTOR (0 when none came in time)."""
        fd = self.own[vector]
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return 0
        return struct.unpack("=q", os.read(fd, 8))[0]

    def close(self):
        for fd in self.own + [f for fds in self.peers.values() for f in fds]:
            os.close(fd)
        self.own, self.peers = [], {}
        if self.shm_fd is not None:
            os.close(self.shm_fd)
            self.shm_fd = None
        self.sock.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("socket")
    ap.add_argument("--vectors", type=int, default=1)
    ap.add_argument("--ring", action="append", default=[], metavar="ID[:VECTOR]")
    ap.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    args = ap.parse_args()
    p = Peer(args.socket, args.vectors).handshake()
    print(f"id {p.id}; shared memory {os.fstat(p.shm_fd).st_size} bytes; "
          f"peers {sorted(p.peers)}", flush=True)
    for r in args.ring:
        pid, _, vec = r.partition(":")
        p.ring(int(pid), int(vec or 0))
        print(f"rang peer {pid} vector {vec or 0}", flush=True)
    end = time.monotonic() + args.wait
    while time.monotonic() < end:
        fds = [p.sock] + p.own
        ready, _, _ = select.select(fds, [], [], max(0.0, end - time.monotonic()))
        for fd in ready:
            if fd is p.sock:
                value, efd = p.next_notice()
                print(f"peer {value} {'joined' if efd is not None else 'left'}", flush=True)
            else:
                n = struct.unpack("=q", os.read(fd, 8))[0]
                print(f"interrupt on vector {p.own.index(fd)} (x{n})", flush=True)
    p.close()


if __name__ == "__main__":
    try:
        main()
    except (OSError, EOFError, ProtocolError) as e:
        print(f"ivshm_peer: {e}", file=sys.stderr)
        sys.exit(1)
