#!/bin/bash
# Wake-up latency of sporadic messages (issue 11): one small message after a
# quiet period, many times; a reader on follow/ answers, and the one-way
# latency (round trip / 2, so no clocks of two systems are compared) is
# reported as p50/p99/max, in one run:
#   host-host    two ivshmfs mounts of one /dev/shm file, with futex
#                wake-ups (the default on a host file) and with -o nofutex
#                (polling)
#   guest-guest  two TCG guests with ivshmem-doorbell devices served by
#                ivshm-server (scripts/guest/run-e2e.sh --mode doorbell),
#                with doorbells and with -o nodoorbell (polling)
#
#   scripts/bench/wakeup.sh [--quick] [--only host|guest] BUILD_DIR
#
# --quick: 10 messages after 0.3 s of quiet; default: 50 after 1 s.
# --only: run one part. Needs root, /dev/fuse, BUILD_DIR/fs/ivshmfs, ivshmctl
# and server/ivshm-server; the guest part needs what the guest harness needs
# (it installs it). Figures are printed, never judged: the exit status is
# non-zero only when a part fails to run.
set -u -o pipefail

quick=0
only=""
build=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --only)
      only=${2:-}
      case "$only" in host|guest) ;; *) echo "wakeup.sh: --only takes host or guest" >&2; exit 2 ;; esac
      shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "wakeup.sh: unknown option $1" >&2; exit 2 ;;
    *) build="$1" ;;
  esac
  shift
done
[ -n "$build" ] || { echo "usage: wakeup.sh [--quick] [--only host|guest] BUILD_DIR" >&2; exit 2; }
build=$(realpath "$build")
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ $quick = 1 ]; then count=10 quiet=300; else count=50 quiet=1000; fi

work=$(mktemp -d)
shm=/dev/shm/ivshmfs-wakeup-$$
m0=$work/m0 m1=$work/m1
echo_pid=""
cleanup() {
  [ -n "$echo_pid" ] && kill "$echo_pid" 2>/dev/null
  for m in "$m0" "$m1"; do mountpoint -q "$m" && { umount "$m" || umount -l "$m"; }; done
  rm -f "$shm"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rc=0
results=()
cc -O2 -Wall -Wextra -I "$repo/kernel/uapi" -o "$work/ivshm-test" "$repo/scripts/guest/ivshm-test.c" ||
  { echo "wakeup.sh: building ivshm-test failed" >&2; exit 1; }

# ---- host <-> host ----
# One run per wake-up mechanism, each over a fresh region: futex (the
# default on a host file) and polling (-o nofutex).
host_run() {  # LABEL EXTRA_OPTIONS
  local label=$1 extra=$2
  rm -f "$shm"
  truncate -s 4M "$shm"
  mkdir -p "$m0" "$m1"
  if "$build/tools/ivshmctl" format --partitions 2 "$shm" >/dev/null &&
     "$build/fs/ivshmfs" -o "id=0$extra" "$shm" "$m0" 2>/dev/null &&
     "$build/fs/ivshmfs" -o "id=1$extra" "$shm" "$m1" 2>/dev/null; then
    "$work/ivshm-test" echo "$m1/follow/vm0" "$m1/vm1" hh &
    echo_pid=$!
    if line=$(timeout $((count * (quiet + 1000) / 1000 + 60)) "$work/ivshm-test" ping "$m0/vm0" "$m0/follow/vm1" hh "$count" "$quiet"); then
      results+=("host-host $label: ${line#latency hh }")
      # Why the reader's waits ended (the .status counters of its daemon).
      results+=("  ($(grep '^wakeups ' "$m1/.status"))")
    else
      echo "wakeup.sh: host-host $label run failed" >&2
      rc=1
    fi
    wait "$echo_pid" 2>/dev/null
    echo_pid=""
  else
    echo "wakeup.sh: could not mount two views of $shm ($label)" >&2
    rc=1
  fi
  for m in "$m0" "$m1"; do mountpoint -q "$m" && { umount "$m" || umount -l "$m"; }; done
  rm -f "$shm"
}
if [ "$only" != guest ]; then
  host_run futex ""
  host_run polling ",nofutex"
fi

# ---- guest <-> guest ----
glog=$work/guest.log
if [ "$only" = host ]; then
  :
elif DOORBELL_PINGS=$count DOORBELL_QUIET_MS=$quiet GUEST_TIMEOUT=$((count * quiet * 3 / 1000 + 240)) \
   "$repo/scripts/guest/run-e2e.sh" --mode doorbell "$build" >"$glog" 2>&1; then
  while read -r _ _ tag rest; do
    results+=("guest-guest ${tag/poll/polling}: $rest")
  done < <(grep '^guest-guest latency ' "$glog")
else
  echo "wakeup.sh: the guest part failed; its log:" >&2
  tail -n 40 "$glog" >&2
  rc=1
fi

echo "one small message after ${quiet} ms of quiet, ${count} times; one-way latency (round trip / 2) in microseconds"
for r in "${results[@]}"; do echo "  $r"; done
exit $rc
