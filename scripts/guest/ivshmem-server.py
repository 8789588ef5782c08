#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Minimal ivshmem-doorbell server for tests (QEMU's ivshmem-spec protocol).

    ivshmem-server.py SOCKET SHMFILE PEER_ID [VECTORS]

Serves one client at a time: sends protocol version 0, the client's id
(PEER_ID, so its IVPosition register reads PEER_ID), the shared memory fd,
then one eventfd per vector for the client itself. Keeps the connection
open until the client goes away. Debian's QEMU ships no ivshmem-server.
"""
import os
import socket
import struct
import sys


def send(conn, value, fd=None):
    data = struct.pack("<q", value)
    if fd is None:
        conn.sendall(data)
    else:
        socket.send_fds(conn, [data], [fd])


def main():
    path, shm, peer = sys.argv[1], sys.argv[2], int(sys.argv[3])
    vectors = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    shm_fd = os.open(shm, os.O_RDWR)
    while True:
        conn, _ = srv.accept()
        send(conn, 0)            # protocol version
        send(conn, peer)         # the client's own id
        send(conn, -1, shm_fd)   # the shared memory
        for _ in range(vectors):
            send(conn, peer, os.eventfd(0))
        while conn.recv(4096):
            pass
        conn.close()


if __name__ == "__main__":
    main()
