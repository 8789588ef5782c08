#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes and reads through two ivshmfs mounts with Python's standard library
only, the way an application would. Usage: roundtrip.py PATH/TO/ivshmfs.
Exit status 77 means skipped."""

import errno
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from fs_script import skip, eventually


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path and " - fuse.ivshmfs " in line:
                return True
    return False


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def main():
    binary = sys.argv[1]
    if os.geteuid() != 0:
        skip("needs root")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        skip("/dev/fuse is not usable")
    if shutil.which("fusermount3") is None:
        skip("fusermount3 is not installed (Debian package fuse3)")

    region = "/dev/shm/ivshmfs-py-%d" % os.getpid()
    a = tempfile.mkdtemp(prefix="ivshmfs-py-a.")
    b = tempfile.mkdtemp(prefix="ivshmfs-py-b.")
    try:
        subprocess.run([binary, "-o", "create,size=4M,partitions=2,id=0,poll_max_ms=20", region, a], check=True)
        subprocess.run([binary, "-o", "id=1,poll_max_ms=20", region, b], check=True)
        check(is_mounted(a) and is_mounted(b), "both mounts are up")
        vm0_a, vm0_b = os.path.join(a, "vm0"), os.path.join(b, "vm0")

        # open('ab') appends, open('w') resets, a pwrite at the end appends and
        # one anywhere else is refused with EPERM, as documented.
        with open(vm0_a, "ab") as f:
            f.write(b"spam\n")
        with open(vm0_b, "rb") as f:
            check(f.read() == b"spam\n", "vm1 reads vm0's append")
        with open(vm0_a, "w") as f:
            f.write("eggs\n")
        with open(vm0_b) as f:
            check(f.read() == "eggs\n", "open('w') resets")
        fd = os.open(vm0_a, os.O_WRONLY)
        try:
            os.pwrite(fd, b"ham\n", 0)
            raise AssertionError("pwrite at 0 over committed bytes succeeded")
        except OSError as e:
            check(e.errno == errno.EPERM, "EPERM for a pwrite at 0")
        check(os.pwrite(fd, b"ham\n", 5) == 4, "pwrite at the end")
        os.close(fd)
        with open(vm0_b, "rb") as f:
            check(f.read() == b"eggs\nham\n", "pwrite at the end appended")
        check(os.stat(vm0_b).st_size == 9, "size seen by vm1")

        payload = bytes(range(256)) * 1000
        with open(vm0_a, "wb") as f:
            f.write(payload)
        with open(vm0_b, "rb") as f:
            check(f.read() == payload, "binary payload")

        try:
            open(os.path.join(a, "vm1"), "ab")
            raise AssertionError("vm0 opened vm1 for writing")
        except PermissionError as e:
            check(e.errno == errno.EACCES, "EACCES for another peer's file")
        try:
            os.truncate(vm0_a, 3)
            raise AssertionError("truncate to 3 succeeded")
        except OSError as e:
            check(e.errno == errno.EPERM, "EPERM for truncate to a nonzero size")

        check(os.getxattr(vm0_b, "user.ivshmfs.length") == str(len(payload)).encode(), "length xattr")
        with open(os.path.join(b, ".status")) as f:
            records = [line.split() for line in f]
        fields = dict(kv.split("=", 1) for kv in records[1][1:])
        check(records[0][0] == "region" and fields["id"] == "0" and fields["alive"] == "1", ".status vm0")
        check(int(fields["length"]) == len(payload), ".status length")

        # select.poll wakes when the peer commits.
        with open(vm0_b, "rb") as reader:
            reader.read()
            poller = select.poll()
            poller.register(reader, select.POLLIN)
            check(poller.poll(0) == [], "nothing new to read")
            with open(vm0_a, "ab") as f:
                f.write(b"more")
            check(eventually(lambda: poller.poll(100) != []), "poll woke")
            check(reader.read() == b"more", "read after poll")

        # The follow view streams what the peer appends.
        got = []
        follow = open(os.path.join(a, "follow", "vm1"), "rb", buffering=0)

        def follow_two():
            while len(b"".join(got)) < 8:
                got.append(follow.read(64))

        thread = threading.Thread(target=follow_two, daemon=True)
        thread.start()
        with open(os.path.join(b, "vm1"), "ab") as f:
            f.write(b"abcd")
        check(eventually(lambda: b"".join(got) == b"abcd"), "follow got abcd")
        with open(os.path.join(b, "vm1"), "ab") as f:
            f.write(b"efgh")
        thread.join(30)
        check(b"".join(got) == b"abcdefgh", "follow got efgh")
        follow.close()
        print("ok: python round trip through two mounts")
    finally:
        for m in (a, b):
            if is_mounted(m):
                subprocess.run(["fusermount3", "-u", m])
            if is_mounted(m):
                subprocess.run(["umount", "-l", m])
            os.rmdir(m)
        if os.path.exists(region):
            os.unlink(region)


if __name__ == "__main__":
    main()
