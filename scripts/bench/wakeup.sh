#!/bin/bash
# Wake-up latency of sporadic messages (issue 11): one small message after a
# quiet period, many times; a reader on follow/ answers, and the one-way
# latency (round trip / 2, so no clocks of two systems are compared) is
# reported as p50/p99/max, in one run:
#   host-host    two ivshmfs mounts of one /dev/shm file, with futex
#                wake-ups (the default on a host file), with the eventfds
#                of ivshm-server (both mounts -o server=) and with
#                -o nofutex (polling)
#   guest-guest  two TCG guests with ivshmem-doorbell devices served by
#                ivshm-server (scripts/guest/run-e2e.sh --mode doorbell),
#                with doorbells and with -o nodoorbell (polling)
#   host-guest   in the same guest run, a guest and an ivshmfs mount on the
#                host: doorbells and the host's -o server= eventfds, vs the
#                guest's -o nodoorbell and the host polling the guest
#
#   scripts/bench/wakeup.sh [--quick] [--only host|guest|hostguest] BUILD_DIR
#
# --quick: 10 messages after 0.3 s of quiet; default: 50 after 1 s.
# --only: run one part (guest and hostguest boot the same guests; without
# --only one guest run reports both). Needs root, /dev/fuse, BUILD_DIR/fs/ivshmfs, ivshmctl
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
      case "$only" in host|guest|hostguest) ;; *) echo "wakeup.sh: --only takes host, guest or hostguest" >&2; exit 2 ;; esac
      shift ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "wakeup.sh: unknown option $1" >&2; exit 2 ;;
    *) build="$1" ;;
  esac
  shift
done
[ -n "$build" ] || { echo "usage: wakeup.sh [--quick] [--only host|guest|hostguest] BUILD_DIR" >&2; exit 2; }
build=$(realpath "$build")
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ $quick = 1 ]; then count=10 quiet=300; else count=50 quiet=1000; fi

work=$(mktemp -d)
shm=/dev/shm/ivshmfs-wakeup-$$
m0=$work/m0 m1=$work/m1
sock=$work/server.sock
echo_pid="" server_pid=""
cleanup() {
  [ -n "$echo_pid" ] && kill "$echo_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
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
# default on a host file), the server's eventfds (-o server=, ids 0 and 1
# from the server) and polling (-o nofutex).
host_run() {  # LABEL EXTRA_OPTIONS [server]
  local label=$1 extra=$2 with_server=${3:-}
  rm -f "$shm" "$sock"
  truncate -s 4M "$shm"
  mkdir -p "$m0" "$m1"
  local o0="id=0$extra" o1="id=1$extra"
  if [ -n "$with_server" ]; then
    "$build/server/ivshm-server" --shm "$shm" --socket "$sock" --quiet &
    server_pid=$!
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    o0="server=$sock$extra" o1="server=$sock$extra"
  fi
  if "$build/tools/ivshmctl" format --partitions 2 "$shm" >/dev/null &&
     "$build/fs/ivshmfs" -o "$o0" "$shm" "$m0" 2>/dev/null &&
     "$build/fs/ivshmfs" -o "$o1" "$shm" "$m1" 2>/dev/null; then
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
  if [ -n "$server_pid" ]; then
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null
    server_pid=""
  fi
  rm -f "$shm"
}
if [ -z "$only" ] || [ "$only" = host ]; then
  host_run futex ""
  host_run eventfd "" server
  host_run polling ",nofutex"
fi

# ---- guest <-> guest, host <-> guest ----
# One guest run (scripts/guest/run-e2e.sh --mode doorbell) measures both:
# vm0 pings vm1, then the host's mount (docs/server.md, Tests).
glog=$work/guest.log
if [ "$only" = host ]; then
  :
elif DOORBELL_PINGS=$count DOORBELL_QUIET_MS=$quiet GUEST_TIMEOUT=$((count * quiet * 5 / 1000 + 300)) \
   "$repo/scripts/guest/run-e2e.sh" --mode doorbell "$build" >"$glog" 2>&1; then
  if [ "$only" != hostguest ]; then
    while read -r _ _ tag rest; do
      results+=("guest-guest ${tag/poll/polling}: $rest")
    done < <(grep '^guest-guest latency ' "$glog")
  fi
  if [ "$only" != guest ]; then
    while read -r _ _ tag rest; do
      tag=${tag#hg-}
      results+=("host-guest ${tag/poll/polling}: $rest")
    done < <(grep '^host-guest latency ' "$glog")
    # Why the host's waits ended (its daemon's .status counters).
    while read -r line; do results+=("  host ${line#*host mount }"); done < <(grep 'doorbell: host mount ' "$glog")
  fi
else
  echo "wakeup.sh: the guest part failed; its log:" >&2
  tail -n 40 "$glog" >&2
  rc=1
fi

echo "one small message after ${quiet} ms of quiet, ${count} times; one-way latency (round trip / 2) in microseconds"
for r in "${results[@]}"; do echo "  $r"; done
exit $rc
