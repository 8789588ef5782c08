# SPDX-License-Identifier: MIT
"""What the Python mount tests share: the skip convention of ctest (exit 77)
and waiting for facts that become true eventually."""

import sys
import time

SKIP = 77


def skip(reason):
    print("skipped: " + reason)
    sys.exit(SKIP)


def eventually(predicate, deadline=30.0):
    """Polls predicate until true or the deadline passes: only for 'eventually' facts."""
    until = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > until:
            return False
        time.sleep(0.01)
    return True
