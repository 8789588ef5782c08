#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""ivshmfs daemons on the host as clients of ivshm-server (-o server=).

    mount_test.py IVSHM_SERVER IVSHMFS [unittest arguments, e.g. WakeTest]

Every test makes a 4 MiB region file in /dev/shm, a real ivshm-server on a
socket in a temporary directory, and real mounts (foreground daemons whose
log is kept). Wake-ups are checked by the daemons' .status counters, never by
timing: the reader's `doorbells` counter (its own eventfd fired) and the
writer's `rings` counter. Needs root, /dev/fuse and fusermount3 (else
"skipped", exit 77).
"""
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ivshm_peer import wait_for  # noqa: E402

SERVER = None
IVSHMFS = None
REGION_SIZE = 4 << 20
SKIP = 77


def wakeups(mountpoint):
    """The .status 'wakeups' line as a dict of its fields."""
    with open(os.path.join(mountpoint, ".status")) as f:
        for line in f:
            if line.startswith("wakeups "):
                return dict(field.split("=", 1) for field in line.split()[1:])
    raise AssertionError(f"{mountpoint}/.status has no wakeups line")


class Mounts(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ivshmfs-server-test-")
        self.region = f"/dev/shm/ivshmfs-server-test-{os.getpid()}-{id(self)}"
        with open(self.region, "wb") as f:
            f.truncate(REGION_SIZE)
        self.sock = os.path.join(self.dir, "server.sock")
        self.server = None
        self.daemons = []  # (process, mountpoint, log path)
        self.extra_files = []

    def tearDown(self):
        bad_exits = []
        for proc, mnt, log in self.daemons:
            if proc.poll() is None:
                subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
                # A mounted daemon exits 0 after its unmount (also under
                # the sanitizers, which report through the exit status).
                if proc.returncode != 0:
                    bad_exits.append(f"{mnt}: exit {proc.returncode}\n{self.read_log(log)[-3000:]}")
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=20)
        for f in [self.region, *self.extra_files]:
            if os.path.exists(f):
                os.unlink(f)
        shutil.rmtree(self.dir, ignore_errors=True)
        if bad_exits:
            self.fail("\n".join(bad_exits))

    def start_server(self, shm=None):
        log = open(os.path.join(self.dir, "server.log"), "ab")
        self.server = subprocess.Popen([SERVER, "--shm", shm or self.region, "--socket", self.sock],
                                       stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: os.path.exists(self.sock), what="the server's socket")

    def mount(self, name, *options, region=None, expect_mount=True):
        mnt = os.path.join(self.dir, name)
        os.mkdir(mnt)
        log = os.path.join(self.dir, name + ".log")
        opts = ",".join(("create", *options))
        cmd = [IVSHMFS, "-f", *(["-o", opts] if opts else []), region or self.region, mnt]
        with open(log, "ab") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        self.daemons.append((proc, mnt, log))
        if not expect_mount:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.fail(f"{cmd} did not exit")
            return proc.returncode, self.read_log(log)

        def mounted():
            if proc.poll() is not None:
                raise AssertionError(f"{cmd} exited {proc.returncode}:\n{self.read_log(log)}")
            return os.path.exists(os.path.join(mnt, ".status"))

        wait_for(mounted, what=f"the mount {mnt}")
        return mnt

    @staticmethod
    def read_log(path):
        with open(path, errors="replace") as f:
            return f.read()

    def log_of(self, mnt):
        return self.read_log(next(log for _p, m, log in self.daemons if m == mnt))

    def follow_read(self, mnt, partition, nbytes, result):
        """Reads the nbytes after what vmN holds now from follow/vmN (which
        starts at 0 and blocks at the end) into result."""
        skip = os.stat(os.path.join(mnt, f"vm{partition}")).st_size

        def run():
            with open(os.path.join(mnt, "follow", f"vm{partition}"), "rb", buffering=0) as f:
                data = b""
                while len(data) < skip + nbytes:
                    chunk = f.read(skip + nbytes - len(data))
                    if not chunk:
                        break
                    data += chunk
                result.append(data[skip:])
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def append(self, mnt, partition, data):
        with open(os.path.join(mnt, f"vm{partition}"), "ab", buffering=0) as f:
            f.write(data)

    def relay(self, writer, wid, reader, message, what):
        """A follow/vmWID reader in `reader` parks and announces that it waits;
        `writer` appends `message`: the reader gets exactly that."""
        result = []
        t = self.follow_read(reader, wid, len(message), result)
        bit = 1 << wid
        wait_for(lambda: int(wakeups(reader)["announced"], 16) & bit,
                 what=f"{reader} to announce that it waits for vm{wid}")
        self.append(writer, wid, message)
        t.join(timeout=20)
        self.assertFalse(t.is_alive(), f"{what}: the follow/vm{wid} reader in {reader} never got the append")
        self.assertEqual(result, [message], what)

    def one_wake(self, writer, wid, reader, what):
        """A follow/ reader in `reader` parks, `writer` appends: the reader
        gets the bytes, its eventfd fired and the writer rang."""
        before_r, before_w = wakeups(reader), wakeups(writer)
        self.relay(writer, wid, reader, f"{what}\n".encode(), what)
        after_r, after_w = wakeups(reader), wakeups(writer)
        self.assertGreater(int(after_w["rings"]), int(before_w["rings"]),
                           f"{what}: the writer rang no eventfd: {before_w} -> {after_w}")
        self.assertGreater(int(after_r["doorbells"]), int(before_r["doorbells"]),
                           f"{what}: the reader's eventfd did not fire: {before_r} -> {after_r}")


class WakeTest(Mounts):
    def test_two_mounts_ring_each_other(self):
        self.start_server()
        m0 = self.mount("m0", f"server={self.sock}")
        m1 = self.mount("m1", f"server={self.sock}")
        w0, w1 = wakeups(m0), wakeups(m1)
        # Ids come from the server (the first client gets 0).
        self.assertEqual((w0["source"], w0["transport"], w0["server"], w0["id"]), ("doorbell", "eventfd", "connected", "0"))
        self.assertEqual((w1["transport"], w1["server"], w1["id"], w1["peers"]), ("eventfd", "connected", "1", "0"))
        wait_for(lambda: wakeups(m0)["peers"] == "1", what="m0 to be told that peer 1 joined")
        self.assertIn("peer id 0 (from ivshm-server", self.log_of(m0))
        self.assertIn("wake-ups: eventfds of ivshm-server", self.log_of(m0))
        for i in range(5):
            self.one_wake(m0, 0, m1, f"round {i}: vm0 to m1")
            self.one_wake(m1, 1, m0, f"round {i}: vm1 to m0")
        # A peer that leaves is told to the others; its partition is then
        # polled, so a reader still gets its data.
        proc1, _mnt, _log = self.daemons[1]
        subprocess.run(["fusermount3", "-u", m1], check=True)
        proc1.wait(timeout=20)
        wait_for(lambda: wakeups(m0)["peers"] == "none", what="m0 to be told that peer 1 left")
        self.assertEqual(wakeups(m0)["leaves"], "1")

    def test_with_a_futex_peer(self):
        """A host daemon without -o server= (futex source) next to one with
        it: the library's writer still wakes it by futex, and it is polled
        by the server's client (its owner is no client of the server)."""
        self.start_server()
        m0 = self.mount("m0", f"server={self.sock}")
        m2 = self.mount("m2", "id=2")
        self.assertEqual(wakeups(m2)["source"], "futex")
        for i in range(3):
            before = wakeups(m2)
            self.relay(m0, 0, m2, b"f%d\n" % i, "vm0 read in the futex peer")
            after = wakeups(m2)
            self.assertGreater(int(after["peer_wakes"]) + int(after["changed"]),
                               int(before["peer_wakes"]) + int(before["changed"]),
                               f"the -o server= writer did not wake the futex peer: {before} -> {after}")
            self.relay(m2, 2, m0, b"g%d\n" % i, "vm2 read in the -o server= peer (polled)")

    def test_pinned_id_and_agreeing_option(self):
        self.start_server()
        m0 = self.mount("m0", f"server={self.sock}", "id=0")
        self.assertEqual(wakeups(m0)["id"], "0")


class ServerLostTest(Mounts):
    def test_server_killed_under_mounts(self):
        self.start_server()
        m0 = self.mount("m0", f"server={self.sock}")
        m1 = self.mount("m1", f"server={self.sock}")
        wait_for(lambda: wakeups(m0)["peers"] == "1", what="m0 to see peer 1")
        self.one_wake(m0, 0, m1, "before the server died")
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()
        for m in (m0, m1):
            wait_for(lambda m=m: wakeups(m)["server"] == "lost", what=f"{m}/.status to say server=lost")
            wait_for(lambda m=m: "wake-ups fall back" in self.log_of(m), what=f"{m}'s log to say it falls back")
        # Both keep serving: appends still reach a follow/ reader both ways.
        for writer, wid, reader in ((m0, 0, m1), (m1, 1, m0)):
            self.relay(writer, wid, reader, b"after\n", f"vm{wid} read in {reader} after the server died")
        for proc, _m, _l in self.daemons:
            self.assertIsNone(proc.poll(), "a daemon exited when the server died")


class FakeServer:
    """A socket that plays the server's part with scripted messages."""

    def __init__(self, path):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.conn = None

    def accept(self):
        self.conn, _ = self.listener.accept()

    def send(self, value, fd=None):
        data = struct.pack("<q", value)
        socket.send_fds(self.conn, [data], [fd]) if fd is not None else self.conn.sendall(data)

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


class BadServerTest(Mounts):
    def test_region_file_differs(self):
        other = f"/dev/shm/ivshmfs-server-test-other-{os.getpid()}"
        self.extra_files.append(other)
        with open(other, "wb") as f:
            f.truncate(65536)
        self.start_server(shm=other)
        status, log = self.mount("m0", f"server={self.sock}", expect_mount=False)
        self.assertEqual(status, 1, log)
        self.assertIn(f"shares {other}", log)
        self.assertIn(self.region, log)
        self.assertIn("not this region's", log)

    def test_id_disagrees(self):
        self.start_server()
        status, log = self.mount("m0", f"server={self.sock}", "id=3", expect_mount=False)
        self.assertEqual(status, 1, log)
        self.assertIn("-o id=3 but ivshm-server", log)
        self.assertIn("gave this peer id 0", log)

    def test_no_server(self):
        status, log = self.mount("m0", f"server={self.sock}", expect_mount=False)
        self.assertEqual(status, 1, log)
        self.assertIn(f"ivshm-server socket {self.sock}: connect", log)

    def test_bad_options(self):
        for opts, message in ((f"server={self.sock},ro", "does not go with -o ro"),
                              (f"server={self.sock},id=auto", "does not go with -o id=auto"),
                              (f"server={self.sock},nodoorbell", "does not go with -o nodoorbell")):
            r = subprocess.run([IVSHMFS, "-f", "-o", opts, self.region, self.dir], capture_output=True, text=True)
            self.assertEqual(r.returncode, 1, opts)
            self.assertIn(message, r.stderr, opts)
        help_text = subprocess.run([IVSHMFS, "--help"], capture_output=True, text=True).stdout
        self.assertIn("-o server=SOCKET", help_text)

    def scripted(self, script, expect_mount):
        """Mounts against a fake server that runs script(fake) once connected."""
        fake = FakeServer(self.sock)
        errors = []

        def serve():
            try:
                fake.accept()
                script(fake)
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            result = self.mount("m0", f"server={self.sock}", expect_mount=expect_mount)
            t.join(timeout=20)
            self.assertEqual(errors, [])
            return result, fake
        except BaseException:
            fake.close()
            raise

    def test_garbage_in_the_set_up(self):
        cases = [
            (lambda s: s.send(7), "protocol version 7"),
            (lambda s: (s.send(0), s.send(70000)), "the id message holds 70000"),
            (lambda s: (s.send(0), s.send(0), s.send(5)), "expected -1 with the shared memory"),
            (lambda s: (s.send(0), s.conn.sendall(b"\x00\x00\x00"), s.conn.close()),
             "closed the connection during the set-up"),
            (lambda s: s.conn.close(), "closed the connection at once"),
        ]
        for i, (script, message) in enumerate(cases):
            with self.subTest(message=message):
                (status, log), fake = self.scripted(script, expect_mount=False)
                fake.close()
                self.assertEqual(status, 1, log)
                self.assertIn(message, log)
                os.rmdir(os.path.join(self.dir, "m0"))
                os.unlink(self.sock)
                self.daemons.clear()

    def test_garbage_after_the_set_up(self):
        """A server that sends nonsense once the daemon runs: the daemon logs
        it, falls back and keeps serving."""
        own = os.eventfd(0, os.EFD_NONBLOCK)
        shm = os.open(self.region, os.O_RDWR)
        try:
            def script(s):
                s.send(0)
                s.send(2)  # our id
                s.send(-1, shm)
                s.send(2, own)
            mnt, fake = self.scripted(script, expect_mount=True)
            try:
                self.assertEqual(wakeups(mnt)["server"], "connected")
                fake.send(-5)
                wait_for(lambda: wakeups(mnt)["server"] == "lost", what="the daemon to drop the server")
                self.assertIn("protocol error: a notice for id -5", self.log_of(mnt))
                self.append(mnt, 2, b"still here\n")
                with open(os.path.join(mnt, "vm2"), "rb") as f:
                    self.assertEqual(f.read(), b"still here\n")
            finally:
                fake.close()
        finally:
            os.close(own)
            os.close(shm)


if __name__ == "__main__":
    SERVER = sys.argv.pop(1)
    IVSHMFS = sys.argv.pop(1)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        print("skipped: needs root, /dev/fuse and fusermount3")
        sys.exit(SKIP)
    unittest.main(verbosity=2)
