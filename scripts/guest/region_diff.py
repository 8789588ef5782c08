#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Which bytes of an ivshmfs region (or split piece) file changed.

    region_diff.py BEFORE AFTER

BEFORE and AFTER are copies of one host file. The layout is read from BEFORE
(lib/include/ivshmfs/layout.h): the 128-byte header, the partition table,
one 128-byte control block per partition, the data areas. Prints one line per
area with the number of bytes that differ. The heartbeat word of a control
block (owner_heartbeat_ns) is refreshed by a live owner all the time: when
the partition is claimed with the same owner token before and after, its
changes are listed apart and do not count. Exit status 0: no other byte
changed; 1: some did; 2: usage or unreadable files.
"""
import struct
import sys

HEADER = 128
ENTRY = 32
CONTROL = 128
OWNER_TOKEN = 64  # offsets in a control block
HEARTBEAT = 72
MAGIC = 0x0053464D48535649


def areas(data):
    """[(name, start, end)] of the layout in data, or one 'unformatted' area."""
    magic, version, _, _, _, _, count, _, _, data_offset = struct.unpack_from("<QIIQQQIIQQ", data, 0)
    if magic != MAGIC or version != 2 or not 1 <= count <= 256:
        return [("whole file (no layout v2 header)", 0, len(data))], []
    out = [("header", 0, HEADER), ("partition table", HEADER, HEADER + ENTRY * count)]
    heartbeats = []
    for i in range(count):
        pid, _, control, start, capacity = struct.unpack_from("<IIQQQ", data, HEADER + ENTRY * i)
        out.append((f"partition {pid} control block", control, control + CONTROL))
        out.append((f"partition {pid} data", start, start + capacity))
        heartbeats.append((pid, control))
    covered = sorted((s, e) for _, s, e in out)
    pos, gaps = 0, []
    for s, e in covered:
        if s > pos:
            gaps.append((pos, s))
        pos = max(pos, e)
    if pos < len(data):
        gaps.append((pos, len(data)))
    out += [("padding", s, e) for s, e in gaps]
    return out, heartbeats


def changed(a, b, start, end):
    if a[start:end] == b[start:end]:
        return 0
    return sum(1 for x, y in zip(a[start:end], b[start:end]) if x != y)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        before = open(sys.argv[1], "rb").read()
        after = open(sys.argv[2], "rb").read()
    except OSError as e:
        print(f"region_diff: {e}", file=sys.stderr)
        return 2
    if len(before) != len(after):
        print(f"size changed: {len(before)} -> {len(after)} bytes")
        return 1
    layout, heartbeats = areas(before)
    masked = bytearray(after)
    for pid, control in heartbeats:
        token, off = control + OWNER_TOKEN, control + HEARTBEAT
        if before[token:token + 8] == bytes(8) or before[token:token + 8] != after[token:token + 8]:
            continue  # not the same live owner: a heartbeat change counts
        if before[off:off + 8] != after[off:off + 8]:
            print(f"  partition {pid} heartbeat refreshed (a live owner; not counted)")
            masked[off:off + 8] = before[off:off + 8]
    total = 0
    for name, start, end in layout:
        n = changed(before, masked, start, end)
        total += n
        if n:
            print(f"  {name} [{start}, {end}): {n} of {end - start} bytes changed")
    print(f"{total} bytes changed of {len(before)}" + (" (byte-identical but for heartbeats)" if total == 0 else ""))
    return 0 if total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
