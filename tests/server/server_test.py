#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""ivshm-server against real clients speaking QEMU's ivshmem server protocol.

    server_test.py IVSHM_SERVER [unittest arguments, e.g. ProtocolTest]

Every test starts its own server on sockets in a temporary directory with a
64 KiB shared memory file in /dev/shm, and checks at the end that the server
survived and exits 0 on SIGTERM, removing its sockets.
"""
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ivshm_peer import Peer, wait_for  # noqa: E402

SERVER = None
SHM_SIZE = 65536


class ServerCase(unittest.TestCase):
    vectors = 2
    extra_args = []

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ivshm-server-test-")
        self.shm = f"/dev/shm/ivshm-server-test-{os.getpid()}-{id(self)}"
        with open(self.shm, "wb") as f:
            f.truncate(SHM_SIZE)
        self.sock = os.path.join(self.dir, "server.sock")
        self.log = os.path.join(self.dir, "server.log")
        self.proc = None
        self.peers = []

    def start(self, *args, socket_path=None, wait_paths=None):
        socket_path = socket_path or self.sock
        cmd = [SERVER, "--shm", self.shm, "--socket", socket_path,
               "--vectors", str(self.vectors), "--verbose", *self.extra_args, *args]
        self.starts = getattr(self, "starts", 0) + 1
        self.log = os.path.join(self.dir, f"server-{self.starts}.log")
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT)
        # "serving" is logged once every socket listens.
        wait_for(lambda: "serving " in self.server_log() or self.proc.poll() is not None,
                 what="the server to listen")
        self.assertIsNone(self.proc.poll(), f"server exited early:\n{self.server_log()}")
        for p in wait_paths or []:
            self.assertTrue(os.path.exists(p), f"socket {p}")

    def server_log(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def connect(self, path=None, vectors=None):
        p = Peer(path or self.sock, vectors or self.vectors).handshake()
        self.peers.append(p)
        return p

    def stop(self):
        """SIGTERM: exit status 0."""
        self.assertIsNone(self.proc.poll(), f"server died:\n{self.server_log()}")
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        self.assertEqual(rc, 0, f"exit status after SIGTERM:\n{self.server_log()}")

    def tearDown(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop()
                self.assertFalse(os.path.exists(self.sock), "the socket file is left after SIGTERM")
        finally:
            for p in self.peers:
                try:
                    p.close()
                except OSError:
                    pass
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc is not None:
                self.logf.close()
            os.unlink(self.shm)
            if os.environ.get("KEEP_SERVER_LOGS"):
                print(f"server logs kept in {self.dir}", file=sys.stderr)
            else:
                subprocess.run(["rm", "-rf", self.dir], check=False)

    def assert_wakes(self, sender, receiver, vector):
        sender.ring(receiver.id, vector)
        got = receiver.wait_interrupt(vector, timeout=5)
        self.assertEqual(got, 1, f"peer {receiver.id} vector {vector} not woken by peer {sender.id}")
        for other in range(self.vectors):
            if other != vector:
                self.assertEqual(receiver.wait_interrupt(other, timeout=0), 0,
                                 f"vector {other} woke when {vector} was rung")


class ProtocolTest(ServerCase):
    def test_two_clients_exchange_eventfds_memory_and_notices(self):
        self.start()
        a = self.connect()
        self.assertEqual(a.id, 0, "the first client gets id 0")
        self.assertEqual(a.peers, {}, "no peers before the second client")
        self.assertEqual(len(a.own), self.vectors)
        b = self.connect()
        self.assertEqual(b.id, 1, "the second client gets the lowest free id, 1")
        self.assertEqual(sorted(b.peers), [0], "the newcomer is told of peer 0")
        self.assertEqual(len(b.peers[0]), self.vectors, "one eventfd per vector of peer 0")
        for _ in range(self.vectors):
            self.assertEqual(a.next_notice(), (1, a.peers[1][-1]), "peer 0 is told of peer 1")
        self.assertEqual(len(a.peers[1]), self.vectors)

        # The same file, mapped through each client's descriptor.
        st = os.stat(self.shm)
        for p in (a, b):
            fst = os.fstat(p.shm_fd)
            self.assertEqual((fst.st_dev, fst.st_ino, fst.st_size), (st.st_dev, st.st_ino, SHM_SIZE))
        ma = mmap.mmap(a.shm_fd, SHM_SIZE)
        mb = mmap.mmap(b.shm_fd, SHM_SIZE)
        ma[4096:4101] = b"hello"
        self.assertEqual(mb[4096:4101], b"hello", "a write through one mapping is seen in the other")
        ma.close()
        mb.close()

        # Doorbells both ways, every vector.
        for v in range(self.vectors):
            self.assert_wakes(a, b, v)
            self.assert_wakes(b, a, v)

        # b leaves: a is told, without a descriptor.
        b.close()
        self.peers.remove(b)
        self.assertEqual(a.next_notice(), (1, None), "disconnect notice for peer 1")
        self.assertNotIn(1, a.peers)

    def test_third_client_gets_both_peers(self):
        self.start()
        a, b = self.connect(), self.connect()
        c = self.connect()
        self.assertEqual(c.id, 2)
        self.assertEqual(sorted(c.peers), [0, 1])
        a.wait_peer(2)
        b.wait_peer(2)
        self.assert_wakes(c, a, 0)
        self.assert_wakes(a, c, self.vectors - 1)
        self.assert_wakes(b, c, 0)

    def test_ids_do_not_grow_on_reconnect(self):
        self.start()
        a = self.connect()
        for i in range(20):
            b = self.connect()
            self.assertEqual(b.id, 1, f"reconnect {i}: id {b.id}, not 1")
            b.close()
            self.peers.remove(b)
            for _ in range(self.vectors):
                a.next_notice()
            self.assertEqual(a.next_notice(), (1, None))
        # A gap is filled first: 0 and 2 taken, 1 free.
        b, c = self.connect(), self.connect()
        b.close()
        self.peers.remove(b)
        a.wait_peer(2)
        a.wait_peer(1, present=False)
        d = self.connect()
        self.assertEqual((c.id, d.id), (2, 1), "the lowest free id is reused")


class PinnedTest(ServerCase):
    def test_pinned_sockets_keep_their_ids(self):
        vm5 = os.path.join(self.dir, "vm5.sock")
        vm1 = os.path.join(self.dir, "vm1.sock")
        self.start("--peer", f"vm5=5:{vm5}", "--peer", f"vm1=1:{vm1}",
                   wait_paths=[self.sock, vm5, vm1])
        s0 = self.connect()
        s1 = self.connect()
        self.assertEqual((s0.id, s1.id), (0, 2), "the shared socket skips pinned id 1")
        p5 = self.connect(vm5)
        self.assertEqual(p5.id, 5)
        self.assertEqual(sorted(p5.peers), [0, 2])
        s0.wait_peer(2)
        s0.wait_peer(5)
        for restart in range(3):
            p5.close()
            self.peers.remove(p5)
            self.assertEqual(s0.next_notice(), (5, None))
            # While vm5 is away, the shared socket does not hand out 5.
            for _ in range(4):
                self.connect()
            self.assertNotIn(5, [p.id for p in self.peers])
            for p in self.peers[2:]:
                p.close()
            stray = self.peers[2:]
            del self.peers[2:]
            for p in stray:
                s0.wait_peer(p.id, present=False)
            p5 = self.connect(vm5)
            self.assertEqual(p5.id, 5, f"restart {restart}: vm5 got {p5.id}")
            s0.wait_peer(5)
            self.assert_wakes(s0, p5, 0)
            self.assert_wakes(p5, s0, 1)
        p1 = self.connect(vm1)
        self.assertEqual(p1.id, 1)

    def test_qemu_name_pins_an_id_on_the_shared_socket(self):
        # Stock QEMU sends nothing; its command line says who it is.
        self.start("--peer", "vm7=7", "--peer", "web=9")
        watcher = self.connect()
        self.assertEqual(watcher.id, 0, "a client without -name gets the lowest free id")
        code = ("import sys; sys.path.insert(0, %r); from ivshm_peer import Peer; "
                "p = Peer(%r, %d).handshake(); print(p.id, flush=True); sys.stdin.read()"
                % (os.path.dirname(os.path.abspath(__file__)), self.sock, self.vectors))

        def client(*name_args):
            proc = subprocess.Popen([sys.executable, "-c", code, *name_args],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            return proc, int(proc.stdout.readline())

        def leave(proc):
            proc.stdin.close()
            proc.wait(timeout=10)

        for restart in range(2):
            vm7, id7 = client("-name", "guest=vm7,debug-threads=on")  # as libvirt starts QEMU
            self.assertEqual(id7, 7, f"restart {restart}: -name guest=vm7 got {id7}")
            web, id9 = client("-name", "web,process=qemu-web")
            self.assertEqual(id9, 9, "-name web,process=... gets 9")
            other, id1 = client("-name", "vm8")
            self.assertEqual(id1, 1, "an unpinned name gets the lowest free id")
            watcher.wait_peer(7)
            watcher.wait_peer(9)
            for proc in (vm7, web, other):
                leave(proc)
            watcher.wait_peer(7, present=False)
            watcher.wait_peer(9, present=False)
        self.assertIn("peer 7 (vm7, pid", self.server_log())

    def test_second_connection_takes_the_pinned_id_over(self):
        vm3 = os.path.join(self.dir, "vm3.sock")
        self.start("--peer", f"vm3=3:{vm3}", wait_paths=[self.sock, vm3])
        watcher = self.connect()
        old = self.connect(vm3)
        watcher.wait_peer(3)
        new = self.connect(vm3)
        self.assertEqual(new.id, 3)
        self.assertEqual(watcher.next_notice(), (3, None), "the others are told the old one left")
        for _ in range(self.vectors):
            self.assertEqual(watcher.next_notice()[0], 3, "then that the new one came")
        old.read_until_eof()  # the replaced connection is closed (a timeout fails)
        self.assert_wakes(watcher, new, 0)


class BadClientTest(ServerCase):
    extra_args = ["--max-clients", "8", "--send-timeout", "1"]

    def expect_eof(self, sock, timeout=5.0):
        sock.settimeout(timeout)
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, 4096, 64)
            except ConnectionResetError:
                return
            for fd in fds:
                os.close(fd)
            if not data:
                return


    def reading(self, peer):
        """Context: PEER handles its notices in a thread, as a live client does."""
        case = self

        class Reader:
            def __enter__(self):
                self.stop = threading.Event()
                self.error = None
                self.thread = threading.Thread(target=self.run)
                self.thread.start()

            def run(self):
                try:
                    while not self.stop.is_set():
                        try:
                            peer.next_notice(timeout=0.1)
                        except (socket.timeout, TimeoutError):
                            pass
                except Exception as e:  # noqa: BLE001 - reported by __exit__
                    self.error = e

            def __exit__(self, *exc):
                self.stop.set()
                self.thread.join()
                case.assertIsNone(self.error, "the good client lost its connection")

        return Reader()

    def raw(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.sock)
        return s

    def test_junk_bytes_are_dropped(self):
        self.start()
        good = self.connect()
        for i in range(20):
            s = self.raw()
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" * (i + 1))
            self.expect_eof(s)
            s.close()
        self.assertIn("clients must not send", self.server_log())
        # good saw 20 joins and 20 leaves of id 1, and is still served.
        seen = [good.next_notice() for _ in range(20 * (self.vectors + 1))]
        self.assertEqual(sum(1 for v, fd in seen if fd is None), 20, "20 disconnect notices")
        other = self.connect()
        self.assertEqual(other.id, 1)
        self.assert_wakes(other, good, 0)

    def test_early_close_mid_handshake(self):
        self.start()
        good = self.connect()
        for _ in range(50):
            s = self.raw()
            s.recv(4)  # half of the version message, then gone
            s.close()
        for _ in range(50):
            self.raw().close()  # gone before reading anything
        other = self.connect()
        good.drain(quiet=0.5)  # notices of the early leavers first, then other's join
        self.assert_wakes(good, other, 0)
        self.assertIsNone(self.proc.poll())

    def test_connections_beyond_the_limit_are_refused(self):
        self.start()
        good = self.connect()
        socks = [self.raw() for _ in range(200)]
        served = refused = 0
        for s in socks:
            s.settimeout(5)
            first = s.recv(8)
            if first:
                served += 1
            else:
                refused += 1
        self.assertEqual(served, 7, "--max-clients 8: seven more than the good client")
        self.assertEqual(refused, 193)
        self.assertIn("(--max-clients)", self.server_log())
        for s in socks:
            s.close()
        wait_for(lambda: self.server_log().count(" dropped: ") >= 7, what="the 7 to be dropped")
        other = self.connect()
        good.drain(quiet=0.5)  # the leavers' notices first, then other's join
        self.assert_wakes(good, other, 1)

    def test_client_that_never_reads_is_dropped(self):
        self.start()
        good = self.connect()
        stuck = self.raw()  # never reads
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Joins and leaves queue notices for stuck until its socket is full.
        t0 = time.monotonic()
        with self.reading(good):
            for _ in range(300):
                Peer(self.sock, self.vectors).handshake().close()
                if "messages not read" in self.server_log():
                    break
            wait_for(lambda: "messages not read" in self.server_log(),
                     what="the stuck client to be dropped")
        print(f"\nstuck client dropped {time.monotonic() - t0:.2f} s after the churn began",
              file=sys.stderr)
        self.expect_eof(stuck)
        stuck.close()
        # good kept up the whole time: it is still served and rings work.
        while True:
            try:
                good.next_notice(timeout=0.5)
            except (socket.timeout, TimeoutError):
                break
        self.assertEqual(good.peers, {}, "every churned peer left")
        other = self.connect()
        self.assert_wakes(other, good, 0)


    def test_client_that_never_reads_times_out(self):
        # A queue bound far above what the churn queues: --send-timeout drops it.
        self.start("--max-clients", "1000")
        good = self.connect()
        stuck = self.raw()
        t0 = time.monotonic()
        with self.reading(good):
            for _ in range(400):
                Peer(self.sock, self.vectors).handshake().close()
            wait_for(lambda: "did not read for 1 s" in self.server_log(), timeout=15,
                     what="the stuck client to time out")
        print(f"\nstuck client timed out {time.monotonic() - t0:.2f} s after the churn began",
              file=sys.stderr)
        self.assertNotIn("messages not read", self.server_log())
        self.expect_eof(stuck)
        stuck.close()
        good.drain(quiet=0.5)
        self.assertEqual(good.peers, {}, "every churned peer left")
        other = self.connect()
        self.assert_wakes(other, good, 1)


class LifecycleTest(ServerCase):
    def test_sigterm_and_sigint_exit_0_and_remove_sockets(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            vm2 = os.path.join(self.dir, "vm2.sock")
            self.start("--peer", f"vm2=2:{vm2}", wait_paths=[self.sock, vm2])
            a = self.connect()
            b = self.connect(vm2)
            self.proc.send_signal(sig)
            self.assertEqual(self.proc.wait(timeout=10), 0, f"exit status after {sig.name}")
            self.assertFalse(os.path.exists(self.sock), f"shared socket left after {sig.name}")
            self.assertFalse(os.path.exists(vm2), f"pinned socket left after {sig.name}")
            for p in (a, b):
                p.read_until_eof()  # closed by the server (a timeout fails)
                p.close()
                self.peers.remove(p)
            self.logf.close()

    def test_stale_socket_is_replaced_live_one_is_not(self):
        self.start()
        self.proc.kill()
        self.proc.wait()
        self.logf.close()
        self.assertTrue(os.path.exists(self.sock), "SIGKILL leaves the socket behind")
        self.start()  # removes the stale socket
        a = self.connect()
        self.assertEqual(a.id, 0)
        second = subprocess.run([SERVER, "--shm", self.shm, "--socket", self.sock],
                                capture_output=True, text=True, timeout=10)
        self.assertEqual(second.returncode, 1, second.stderr)
        self.assertIn("another server is listening", second.stderr)
        self.assertTrue(os.path.exists(self.sock), "the second server removed the first's socket")
        self.connect()

    def test_bad_arguments(self):
        def run(*args):
            return subprocess.run([SERVER, *args], capture_output=True, text=True, timeout=10)
        notpow2 = self.shm + "-odd"
        with open(notpow2, "wb") as f:
            f.truncate(100000)
        try:
            cases = [
                ([], "--shm FILE is required"),
                (["--shm", "/nonexistent/ivshm"], "No such file"),
                (["--shm", self.dir], "not a regular file"),
                (["--shm", notpow2], "power of two"),
                (["--shm", self.shm, "--vectors", "0"], "--vectors '0'"),
                (["--shm", self.shm, "--vectors", "65"], "--vectors '65'"),
                (["--shm", self.shm, "--peer", "vm1=65536:/tmp/x.sock"], "--peer id '65536'"),
                (["--shm", self.shm, "--peer", "vm1"], "NAME=ID[:PATH]"),
                (["--shm", self.shm, "--peer", "vm1=1:"], "empty PATH"),
                (["--shm", self.shm, "--peer", "vm/1=1"], "NAME must be"),
                (["--shm", self.shm, "--socket", "none", "--peer", "vm1=1"], "needs the shared socket"),
                (["--shm", self.shm, "--peer", "a=1:/tmp/a", "--peer", "b=1:/tmp/b"], "pinned twice"),
                (["--shm", self.shm, "--socket", "none"], "leaves no socket"),
                (["--shm", self.shm, "--max-clients", "0"], "--max-clients"),
                (["--shm", self.shm, "stray"], "unexpected argument"),
                (["--shm", self.shm, "--bogus"], "unknown option"),
            ]
            for args, message in cases:
                r = run(*args)
                self.assertEqual(r.returncode, 2, f"{args}: {r.stderr}")
                self.assertIn(message, r.stderr, f"{args}")
        finally:
            os.unlink(notpow2)
        self.assertEqual(run("--version").stdout.strip(), "ivshm-server " + run("--version").stdout.split()[1])
        self.assertIn("--peer NAME=ID[:PATH]", run("--help").stdout)


if __name__ == "__main__":
    SERVER = sys.argv.pop(1)
    unittest.main(verbosity=2)
