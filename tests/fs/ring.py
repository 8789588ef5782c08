#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Ring partitions through real mounts, checked with the programs users run:
cat, tail -f and Python. Usage: ring.py PATH/TO/ivshmfs PATH/TO/ivshmctl.
Exit status 77 means skipped.

Three daemons over one region whose partition 0 is a 64 KiB ring: the owner
(id 0) writes; peer B (id 1) reads with the default -o overrun=error; peer S
(read-only) reads with -o overrun=skip. Checks, as docs/filesystem.md says:
- stat and .status of a wrapped ring: size = bytes written since the reset,
  retained range, bytes lost; `cat vm0` prints exactly the newest 64 KiB;
- `cat follow/vm0` and `tail -f vm0` keep streaming past 10x the ring, every
  byte (sha256 of the whole stream), when they keep up;
- a Python reader lapped by the writer: one read raises BrokenPipeError
  (EPIPE), the next returns the bytes at the oldest retained offset;
  the same for follow/vm0; lapped `cat follow/vm0` and `tail -f vm0` stop
  with "Broken pipe";
- with -o overrun=skip the lapped reader gets the oldest retained bytes
  without an error and user.ivshmfs.skipped counts the bytes it skipped;
  `cat follow/vm0` keeps going;
- a write larger than the ring fails with EFBIG and changes nothing.
"""

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from fs_script import skip, eventually

RING = 64 * 1024
failures = []


def check(condition, what, detail=""):
    print(("ok   - " if condition else "FAIL - ") + what + ("" if condition or not detail else ": " + detail))
    if not condition:
        failures.append(what)


def stream(start, n):
    """The bytes at stream offsets [start, start+n): each 32-byte block is the
    sha256 of its index, so any slice can be checked against its offset."""
    out = bytearray()
    block = start // 32
    while len(out) < (start % 32) + n:
        out += hashlib.sha256(b"%d" % block).digest()
        block += 1
    return bytes(out[start % 32:start % 32 + n])


class Region:
    def __init__(self, ivshmfs, ivshmctl):
        self.ivshmfs = ivshmfs
        self.path = "/dev/shm/ivshmfs-ring-%d" % os.getpid()
        self.mounts = []
        self.written = 0
        self.writer = None
        subprocess.run([ivshmctl, "format", "--size", "1M", "--partitions", "2", "--partition", "0=64K,ring",
                        self.path], check=True, stdout=subprocess.DEVNULL)

    def mount(self, options):
        d = tempfile.mkdtemp(prefix="ivshmfs-ring.")
        self.mounts.append(d)
        subprocess.run([self.ivshmfs, self.path, d, "-o", options + ",log=warn"], check=True)
        return d

    def write(self, n, chunk=16384):
        if self.writer is None:
            self.writer = os.open(self.mounts[0] + "/vm0", os.O_WRONLY | os.O_APPEND)
        while n > 0:
            k = min(n, chunk)
            done = os.write(self.writer, stream(self.written, k))
            assert done == k, "short write %d of %d" % (done, k)
            self.written += k
            n -= k

    def close(self):
        if self.writer is not None:
            os.close(self.writer)
        for d in self.mounts:
            subprocess.run(["fusermount3", "-u", d], stderr=subprocess.DEVNULL)
            os.rmdir(d)
        if os.path.exists(self.path):
            os.unlink(self.path)


def status_fields(mount, pid):
    with open(mount + "/.status") as f:
        for line in f:
            if line.startswith("partition id=%d " % pid):
                return dict(kv.split("=", 1) for kv in line.split()[1:])
    return {}


def streamed(region, argv, out_path, total, chunk):
    """Runs argv (a follower writing to out_path) while the owner writes
    `total` bytes in `chunk`s, each only after the follower has everything
    before it (so it is never lapped). Returns (output, process)."""
    out = open(out_path, "wb")
    err = open(out_path + ".err", "wb")
    proc = subprocess.Popen(argv, stdout=out, stderr=err)
    start = region.written
    initial = min(RING, start)  # a new follower starts with what the ring retains
    ok = eventually(lambda: os.path.getsize(out_path) >= initial or proc.poll() is not None, 60)
    while region.written - start < total:
        region.write(chunk)
        target = initial + region.written - start
        if not eventually(lambda: os.path.getsize(out_path) >= target or proc.poll() is not None, 60):
            ok = False
            break
        if proc.poll() is not None:
            ok = False
            break
    proc.terminate()
    proc.wait()
    out.close()
    err.close()
    with open(out_path, "rb") as f:
        data = f.read()
    with open(out_path + ".err", "rb") as f:
        errors = f.read().decode(errors="replace")
    return data, start, ok, errors


def lapped(region, argv, then_more):
    """Starts a follower on a pipe, takes what it prints at once (the ring's
    64 KiB), then writes 6 rings while nobody drains the pipe, so the
    follower is lapped. With then_more: 1000 bytes more, and waits until the
    follower printed them. Returns (everything printed, process)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = bytearray()
    while len(out) < RING:
        got = os.read(proc.stdout.fileno(), RING - len(out))
        if not got:
            break
        out += got
    region.write(6 * RING)

    def drain():
        while True:
            got = os.read(proc.stdout.fileno(), 65536)
            if not got:
                return
            out.extend(got)

    reader = threading.Thread(target=drain)
    reader.start()
    if then_more:
        region.write(1000)
        newest = stream(region.written - 1000, 1000)
        eventually(lambda: bytes(out[-1000:]) == newest or proc.poll() is not None, 30)
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join()
    return bytes(out), proc


def main():
    ivshmfs, ivshmctl = sys.argv[1], sys.argv[2]
    if os.geteuid() != 0:
        skip("needs root")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        skip("/dev/fuse is not usable")
    for program in ("fusermount3", "tail", "cat"):
        if shutil.which(program) is None:
            skip(program + " is not installed")
    region = Region(ivshmfs, ivshmctl)
    scratch = tempfile.mkdtemp(prefix="ivshmfs-ring-out.")
    try:
        owner = region.mount("id=0")
        peer = region.mount("id=1")
        skipper = region.mount("ro,overrun=skip")

        # A wrapped ring: stat, .status, cat.
        region.write(3 * RING + 1000)
        size = os.stat(peer + "/vm0").st_size
        check(size == region.written, "stat: a ring's size is every byte written since the reset",
              "%d, expected %d" % (size, region.written))
        st = status_fields(peer, 0)
        check(st.get("ring") == "1" and st.get("retained_from") == str(region.written - RING)
              and st.get("lost") == str(region.written - RING) and st.get("length") == str(region.written),
              ".status: ring=1, retained_from, lost, length", str(st))
        check(os.getxattr(peer + "/vm0", "user.ivshmfs.retained_from") == str(region.written - RING).encode(),
              "xattr user.ivshmfs.retained_from")
        got = subprocess.run(["cat", peer + "/vm0"], capture_output=True)
        check(got.returncode == 0 and got.stdout == stream(region.written - RING, RING),
              "cat vm0 of a wrapped ring prints exactly the newest 64 KiB",
              "exit %d, %d bytes: %s" % (got.returncode, len(got.stdout), got.stderr.decode()))
        got = subprocess.run(["cat", owner + "/vm0"], capture_output=True)
        check(got.returncode == 0 and got.stdout == stream(region.written - RING, RING),
              "cat vm0 on the owner's mount too")

        # Followers that keep up stream past 10x the ring.
        total = 10 * RING + 12345
        data, start, ok, errors = streamed(region, ["cat", peer + "/follow/vm0"], scratch + "/follow.out",
                                           total, RING // 4)
        # cat follow/vm0 starts at the oldest retained byte (it is new).
        first = start - RING
        check(ok and data == stream(first, len(data)) and len(data) == region.written - first,
              "cat follow/vm0 streams past 10x the ring, every byte in order",
              "ok=%s, %d bytes, stderr %s" % (ok, len(data), errors))
        data, start, ok, errors = streamed(region, ["tail", "-c", "+1", "-s", "0.05", "-f", peer + "/vm0"],
                                           scratch + "/tail.out", total, RING // 4)
        check(ok and data == stream(start - RING, len(data)) and len(data) == region.written - start + RING
              and hashlib.sha256(data[RING:]).digest() == hashlib.sha256(stream(start, region.written - start)).digest()
              and region.written - start >= 10 * RING,
              "tail -f vm0 streams past 10x the ring (sha256 of what was written after it started)",
              "ok=%s, %d bytes, stderr %s" % (ok, len(data), errors))

        # A Python reader that handles EPIPE (default -o overrun=error).
        for name, path in (("vm0", peer + "/vm0"), ("follow/vm0", peer + "/follow/vm0")):
            fd = os.open(path, os.O_RDONLY)
            first = os.read(fd, 1000)
            oldest = region.written - RING
            check(first == stream(oldest, 1000), "python %s: a new reader starts at the oldest retained byte" % name)
            region.write(2 * RING)
            try:
                os.read(fd, 1000)
                check(False, "python %s: a lapped read raises BrokenPipeError" % name)
            except BrokenPipeError:
                check(True, "python %s: a lapped read raises BrokenPipeError" % name)
            after = os.read(fd, 1000)
            check(after == stream(region.written - RING, 1000),
                  "python %s: the read after EPIPE returns the oldest retained bytes" % name)
            more = os.read(fd, 1000)
            check(more == stream(region.written - RING + 1000, 1000), "python %s: and goes on from there" % name)
            os.close(fd)

        # Lapped cat follow/vm0 and tail -f stop with "Broken pipe". They fall
        # behind on a pipe nobody drains (blocked in write(), not in a read
        # of ours, so no signal is involved).
        for argv, name in ((["cat", peer + "/follow/vm0"], "cat follow/vm0"),
                           (["tail", "-c", "+1", "-s", "0.05", "-f", peer + "/vm0"], "tail -f vm0")):
            out, proc = lapped(region, argv, False)
            err = proc.stderr.read()
            check(proc.returncode != 0 and b"Broken pipe" in err,
                  "lapped %s stops with 'Broken pipe' (-o overrun=error)" % name,
                  "exit %s: %s" % (proc.returncode, err.decode()))

        # -o overrun=skip: no error, the skipped bytes counted.
        fd = os.open(skipper + "/vm0", os.O_RDONLY)
        os.read(fd, 1000)
        at = region.written - RING + 1000
        region.write(2 * RING)
        got = os.read(fd, 1000)
        check(got == stream(region.written - RING, 1000),
              "-o overrun=skip: a lapped read returns the oldest retained bytes, no error")
        skipped = int(os.getxattr(skipper + "/vm0", "user.ivshmfs.skipped"))
        check(skipped == region.written - RING - at, "user.ivshmfs.skipped counts exactly the bytes skipped",
              "%d, expected %d" % (skipped, region.written - RING - at))
        os.close(fd)
        for argv, name in ((["cat", skipper + "/follow/vm0"], "cat follow/vm0"),
                           (["tail", "-c", "+1", "-s", "0.05", "-f", skipper + "/vm0"], "tail -f vm0")):
            out, proc = lapped(region, argv, True)
            err = proc.stderr.read()
            check(out.endswith(stream(region.written - 1000, 1000)) and proc.returncode < 0,
                  "-o overrun=skip: lapped %s keeps going and ends with the newest bytes" % name,
                  "exit %s, %d bytes, %s" % (proc.returncode, len(out), err.decode()))

        # A write larger than the ring: EFBIG, nothing written.
        before = os.stat(peer + "/vm0").st_size
        fd = os.open(owner + "/vm0", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"x" * (RING + 1))
            check(False, "a write larger than the ring fails with EFBIG")
        except OSError as e:
            check(e.errno == errno.EFBIG, "a write larger than the ring fails with EFBIG", str(e))
        os.close(fd)
        check(os.stat(peer + "/vm0").st_size == before, "the refused write changed nothing")
    finally:
        region.close()
        shutil.rmtree(scratch, ignore_errors=True)
    print("%d failed" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
