#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
# qmp.py SOCKET: send the QMP commands read from standard input (one JSON
# object a line, as `ivshmctl qemu-args --hotplug` prints them) to the QEMU
# monitor at the Unix socket SOCKET. Prints each command's answer; exits 1
# on the first error answer (printing QEMU's message), 0 when all succeeded.
import json
import socket
import sys
import time


def main():
    path = sys.argv[1]
    sock = socket.socket(socket.AF_UNIX)
    for _ in range(100):
        try:
            sock.connect(path)
            break
        except OSError:
            time.sleep(0.1)
    else:
        print(f"qmp: cannot connect to {path}", file=sys.stderr)
        return 1
    stream = sock.makefile("rw")

    def answer():
        while True:
            line = stream.readline()
            if not line:
                raise EOFError("QEMU closed the monitor")
            message = json.loads(line)
            if "event" in message:
                print(f"qmp: event {message['event']}")
                continue
            return message

    answer()  # the greeting
    commands = [{"execute": "qmp_capabilities"}]
    commands += [json.loads(line) for line in sys.stdin if line.strip()]
    for command in commands:
        stream.write(json.dumps(command) + "\n")
        stream.flush()
        reply = answer()
        if "error" in reply:
            print(f"qmp: {command['execute']}: {reply['error'].get('desc', reply['error'])}", file=sys.stderr)
            return 1
        print(f"qmp: {command['execute']}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
