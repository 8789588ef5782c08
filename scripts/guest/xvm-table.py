#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Check and tabulate the IVSHM-XVM lines of run-e2e.sh --mode xvm.

Every received stream (bulk "recv" lines, ping "rtt" lines) must carry the
sha256 of the pattern it was sent from (ivshm-xvm gen SEED LEN, run here on
the host): a missing line or a wrong hash fails (exit 1). Figures are
printed, with ratios, and never judged.
"""
import argparse
import hashlib
import math
import re
import subprocess
import sys

GUEST = ["raw", "lib", "mount", "tcp", "virtiofs", "9p"]
NAMES = {
    "raw": "raw shared memory",
    "lib": "library (C API)",
    "mount": "ivshmfs mount",
    "tcp": "TCP (virtio-net)",
    "virtiofs": "virtiofs",
    "9p": "9p",
}


def expected_sha(gen, seed, size, cache={}):
    key = (seed, size)
    if key not in cache:
        out = subprocess.run([gen, "gen", str(seed), str(size)], check=True, stdout=subprocess.PIPE).stdout
        cache[key] = hashlib.sha256(out).hexdigest()
    return cache[key]


def fields(line):
    words = line.split()
    return words[1], words[2], dict(w.split("=", 1) for w in words[3:] if "=" in w)


def mib(n):
    return f"{n / (1 << 20):g} MiB"


def bar_chart(size, seconds, p50, width=40):
    """Text bars: bulk MiB/s (linear) and round-trip p50 (log scale, 0.1 µs .. 100 ms)."""
    lines = [f"{mib(size)} guest → guest, MiB/s (longer is better)"]
    rates = {n: size / (1 << 20) / seconds(n) for n in GUEST if seconds(n)}
    top = max(rates.values(), default=1)
    for n in GUEST:
        r = rates.get(n)
        bar = "█" * max(1, round(r / top * width)) if r else ""
        lines.append(f"  {NAMES[n]:<18} {bar:<{width}} {f'{r:.0f}' if r else 'failed'}")
    lines.append("")
    lines.append("64-byte round trip p50, µs (shorter is better; log scale from 0.1 µs to 100 ms)")
    for n in GUEST:
        v = p50(n)
        bar = "█" * max(1, round((math.log10(max(v, 0.1)) + 1) / 6 * width)) if v is not None else ""
        lines.append(f"  {NAMES[n]:<18} {bar:<{width}} {f'{v:.1f}' if v is not None else 'failed'}")
    return lines


def floor_lines(floors, raw_rate, mount_rate, mount_p50, tcp_p50):
    """Each system's own primitives (ivshm-xvm floors) and the bounds they set for the mount."""
    out = ["Floors: what each system's own primitives cost, measured alone in the same run (`ivshm-xvm floors`;"
           " informative):", "",
           "| system | copy in user space (memcpy) | copy by the kernel (pread from the page cache) |"
           " process round trip p50 (two pipes) | thread round trip p50 |",
           "| --- | --- | --- | --- | --- |"]
    for name in sorted(floors):
        f = floors[name]
        out.append(f"| {name} | {float(f['memcpy_mib_s']):.0f} MiB/s | {float(f['kernel_copy_mib_s']):.0f} MiB/s | "
                   f"{float(f['process_rtt_p50_us']):.1f} µs | {float(f['thread_rtt_p50_us']):.1f} µs |")
    guests = [floors[n] for n in ("vm0", "vm1") if n in floors]
    if "vm1" not in floors:
        return out
    # vm1 receives every bulk transfer; both guests take part in a round trip.
    user = float(floors["vm1"]["memcpy_mib_s"])
    kernel = float(floors["vm1"]["kernel_copy_mib_s"])
    proc = sum(float(f["process_rtt_p50_us"]) for f in guests) / len(guests)
    bulk = 1 / (1 / user + 1 / kernel)
    out += ["", "What these bound (the mount's data path, docs/benchmarks.md; estimates from the floors above,"
            " which move from run to run as every figure here does):", ""]
    # Each bound, then what the run shows beside it when it has the figure.
    bounds = [
        (f"- Bulk through the mount: in the receiving guest (vm1) every byte is copied once in user space (the"
         f" daemon's copy out of shared memory) and once by the kernel (the FUSE reply into the reader's buffer),"
         f" one after the other in the daemon's thread: about {bulk:.0f} MiB/s at most",
         [(raw_rate, lambda: f" = {bulk / raw_rate:.2f}x raw"),
          (mount_rate, lambda: f"; measured {mount_rate:.0f} MiB/s ({mount_rate / bulk:.2f} of that bound)")]),
        (f"- A round trip through the mount: each message is a write request in one guest (a process round trip:"
         f" program, daemon, program) and a reply to a parked read in the other (half of one), so at least"
         f" 3 process round trips = {3 * proc:.0f} µs (both guests' mean)",
         [(tcp_p50, lambda: f" (0.5x TCP's p50 = {tcp_p50 / 2:.0f} µs)"),
          (mount_p50, lambda: f"; measured {mount_p50:.0f} µs")]),
    ]
    for head, beside in bounds:
        out.append(head + "".join(text() for figure, text in beside if figure) + ".")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gen", required=True, help="the host's ivshm-xvm")
    ap.add_argument("--sizes", required=True, help="bulk sizes, ':'-joined")
    ap.add_argument("--markdown", help="also write the tables here")
    ap.add_argument("results")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(":")]
    send, recv, rtt = {}, {}, {}
    costs = []
    floors = {}
    for line in open(a.results):
        if line.startswith("IVSHM-XVM-COST "):
            costs.append(fields(line.strip()))
            continue
        if not line.startswith("IVSHM-XVM "):
            continue
        name, kind, f = fields(line.strip())
        if name == "floors":
            floors[f"vm{f['vm']}" if kind == "guest" else kind] = f
        elif kind == "bulk" and f.get("side") == "send":
            send[(name, int(f["size"]))] = f
        elif kind == "bulk" and f.get("side") == "recv":
            recv[(name, int(f["size"]))] = f
        elif kind == "ping" and f.get("side") == "ping":
            rtt[name] = f
    fails = []

    def check(name, size, f, what):
        if f is None:
            fails.append(f"{name} {what}: no result")
            return False
        want = expected_sha(a.gen, int(f["seed"]), size)
        if f.get("sha256") != want:
            fails.append(f"{name} {what}: sha256 {f.get('sha256')} != {want} (the pattern sent)")
            return False
        return True

    ok = {}
    for name in GUEST + ["host-raw", "host-mount"]:
        for size in sizes:
            good = check(name, size, recv.get((name, size)), f"bulk {mib(size)}")
            if good and (name, size) not in send:
                fails.append(f"{name} bulk {mib(size)}: no sender figure")
                good = False
            ok[(name, size)] = good
    for name in GUEST:
        f = rtt.get(name)
        ok[name] = check(name, int(f["size"]), f, "ping-pong") if f else check(name, 0, None, "ping-pong")
    if "mount-poll1ms" in rtt:
        ok["mount-poll1ms"] = check("mount-poll1ms", int(rtt["mount-poll1ms"]["size"]), rtt["mount-poll1ms"],
                                    "ping-pong")
    ring = [k for k in recv if k[0] == "ring"]
    if not ring:
        fails.append("ring stream: no result")
    for k in ring:
        ok[k] = check("ring", k[1], recv[k], f"stream {mib(k[1])}")
        if int(recv[k].get("overruns", "0")) != 0:
            fails.append(f"ring stream: the follower was lapped {recv[k]['overruns']} time(s)")

    def secs(name, size):
        f = send.get((name, size))
        return float(f["seconds"]) if f and ok.get((name, size)) else None

    def p(name, key):
        f = rtt.get(name)
        return float(f[key]) if f and ok.get(name) else None

    def ratio(x, y):
        return f"{x / y:.2f}x" if x and y else "n/a"

    out = []
    out.append("| guest → guest | " + " | ".join(NAMES[n] for n in GUEST) + " |")
    out.append("| --- |" + " --- |" * len(GUEST))
    for size in sizes:
        cells = []
        for n in GUEST:
            s = secs(n, size)
            cells.append(f"{s:.3f} s ({size / (1 << 20) / s:.0f} MiB/s)" if s else "failed")
        out.append(f"| {mib(size)} bulk | " + " | ".join(cells) + " |")
    cells = []
    for n in GUEST:
        p50, p99 = p(n, "p50_us"), p(n, "p99_us")
        cells.append(f"{p50:.1f} / {p99:.1f} µs" if p50 is not None else "failed")
    n_rt = next((rtt[n]["n"] for n in GUEST if n in rtt), "?")
    out.append(f"| ping-pong round trip p50 / p99 ({n_rt}) | " + " | ".join(cells) + " |")
    if p("mount-poll1ms", "p50_us") is not None:
        out.append(f"| ping-pong through the mount, daemons with -o poll_min_us=1000 | | | "
                   f"{p('mount-poll1ms', 'p50_us'):.1f} / {p('mount-poll1ms', 'p99_us'):.1f} µs | | | |")
    out.append("")
    out.append("Bulk throughput as a fraction of raw shared memory's (raw's time ÷ theirs; target for the mount:"
               " ≥ 0.8x), and round-trip p50 as a multiple of raw's (target for the library: ≤ 10x):")
    out.append("")
    out.append("| ratio to raw | " + " | ".join(NAMES[n] for n in GUEST) + " |")
    out.append("| --- |" + " --- |" * len(GUEST))
    for size in sizes:
        out.append(f"| {mib(size)} bulk throughput, × raw | " + " | ".join(
            ratio(secs("raw", size), secs(n, size)) for n in GUEST) + " |")
    out.append("| ping-pong p50, × raw | " + " | ".join(ratio(p(n, "p50_us"), p("raw", "p50_us")) for n in GUEST) + " |")
    out.append("")
    out.append("The mount against the alternatives (> 1 means the mount is faster):")
    out.append("")
    out.append("| mount vs | TCP | virtiofs | 9p |")
    out.append("| --- | --- | --- | --- |")
    for size in sizes:
        out.append(f"| {mib(size)} bulk (their time ÷ mount's) | " + " | ".join(
            ratio(secs(n, size), secs("mount", size)) for n in ("tcp", "virtiofs", "9p")) + " |")
    out.append("| ping-pong p50 (theirs ÷ mount's) | " + " | ".join(
        ratio(p(n, "p50_us"), p("mount", "p50_us")) for n in ("tcp", "virtiofs", "9p")) + " |")
    out.append("")
    out.append("| host → guest bulk | raw ring | ivshmfs mount (host daemon → follow/ in the guest) | mount at × raw |")
    out.append("| --- | --- | --- | --- |")
    for size in sizes:
        r, m = secs("host-raw", size), secs("host-mount", size)
        out.append(f"| {mib(size)} | {f'{r:.3f} s' if r else 'failed'} | {f'{m:.3f} s' if m else 'failed'} | "
                   f"{ratio(r, m)} |")
    for k in ring:
        f = recv[k]
        out.append("")
        out.append(f"Ring stream (issue 12): {mib(k[1])} through a ring partition, follower lapped "
                   f"{f.get('overruns')} time(s), sha256 {'checked' if ok[k] else 'WRONG'}; "
                   f"{float(send[k]['seconds']):.3f} s" if k in send else "")
    if costs:
        out.append("")
        out.append("Where the mount's time goes: each guest's ivshmfs daemon during the transfer (read and write system"
                   " calls: a FUSE request taken, a reply sent; context switches of all its threads; CPU time):")
        out.append("")
        out.append("| transfer | guest | requests | replies | context switches | daemon CPU | per MiB or per round trip |")
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        for name, kind, f in costs:
            if not name.startswith("mount"):
                continue
            role = "vm0 (writer, pinger)" if f["vm"] == "0" else "vm1 (reader, ponger)"
            r, w, c, t = (int(f[k]) for k in ("reads", "writes", "ctxsw", "ticks"))
            if kind == "bulk":
                unit = int(f["size"]) / (1 << 20)
                what = f"{mib(int(f['size']))} bulk"
                per = f"{r / unit:.1f} req, {c / unit:.1f} switches, {t * 10 / unit:.0f} ms CPU per MiB"
            else:
                unit = int(f["rounds"])
                what = f"ping-pong ({unit} round trips{', poll_min_us=1000' if name != 'mount' else ''})"
                per = f"{r / unit:.2f} req, {c / unit:.1f} switches, {t * 10000 / unit:.0f} µs CPU per round trip"
            out.append(f"| {what} | {role} | {r} | {w} | {c} | {t / 100:.2f} s | {per} |")
    if floors:
        out += [""] + floor_lines(floors, secs("raw", sizes[-1]) and sizes[-1] / (1 << 20) / secs("raw", sizes[-1]),
                                  secs("mount", sizes[-1]) and sizes[-1] / (1 << 20) / secs("mount", sizes[-1]),
                                  p("mount", "p50_us"), p("tcp", "p50_us"))
    chart = bar_chart(sizes[-1], lambda n: secs(n, sizes[-1]), lambda n: p(n, "p50_us"))
    out += ["", "```", *chart, "```"]
    text = "\n".join(out)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(text + "\n")
    for f in fails:
        print(f"xvm: FAIL {f}", file=sys.stderr)
    if not fails:
        print(f"xvm: every transfer arrived intact (sha256 of {len(ok)} streams checked)", file=sys.stderr)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
