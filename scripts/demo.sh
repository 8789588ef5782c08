#!/usr/bin/env bash
# The ivshmfs demo, no VM needed: formats a region in /dev/shm, mounts two
# peers' views of it (as vm0 and vm1 would see it from two VMs) and shows data
# passing between them through ordinary file I/O. Needs root (FUSE mounts).
#
#   scripts/demo.sh [--keep]     --keep leaves both views mounted afterwards
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="${IVSHMFS_BUILD_DIR:-$root/build}"
keep=0
[ "${1:-}" = "--keep" ] && keep=1
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }

"$root/scripts/setup.sh" --build-dir "$build"
ivshmctl="$build/tools/ivshmctl"
ivshmfs="$build/fs/ivshmfs"
region=/dev/shm/ivshmfs-demo
views=/tmp/ivshmfs-demo
view0=$views/vm0-view
view1=$views/vm1-view

unmount_all() {
  for v in "$view0" "$view1"; do
    mountpoint -q "$v" 2>/dev/null && fusermount3 -u "$v" || true
  done
}
# Without --keep nothing stays behind, also after a failure or Ctrl-C: the
# views are unmounted, their directories and the 64 MiB region removed.
remove_all() {
  unmount_all
  rm -f "$views/blob" "$region"
  rmdir "$view0" "$view1" "$views" 2>/dev/null || true
}
if [ "$keep" != 1 ]; then
  trap remove_all EXIT
  trap 'exit 130' INT TERM
fi
unmount_all

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; }
run() { step "$*"; eval "$@"; }

run "$ivshmctl" format --force --size 64M --partitions 4 "$region"
mkdir -p "$view0" "$view1"
# Two daemons over one region, as two VMs would run them over /dev/ivshm0.
run "$ivshmfs" -o id=0 "$region" "$view0"
run "$ivshmfs" -o id=1 "$region" "$view1"
run ls -l "$view0"

run "echo 'hello from vm0' >> $view0/vm0"
run "echo 'hello from vm1' >> $view1/vm1"
run cat "$view1/vm0"
run cat "$view0/vm1"
run "echo 'appends, whatever the offset' > /dev/null; echo 'second line from vm0' >> $view0/vm0; cat $view1/vm0"

step "echo 'not mine' >> $view0/vm1    # another peer's file: refused, even for root"
if echo 'not mine' 2>/dev/null >> "$view0/vm1"; then
  echo "unexpected: the write to another peer's partition succeeded" >&2
  exit 1
fi
echo "refused: $(echo x 2>&1 >> "$view0/vm1" | sed 's/.*: //')"

run "head -c 4M /dev/urandom > $views/blob && cat $views/blob > $view0/vm0"
run "sha256sum $views/blob $view0/vm0 $view1/vm0"
run "cat $view1/.status"
run "$ivshmctl" status "$region"
rm -f "$views/blob"

if [ "$keep" = 1 ]; then
  printf '\nBoth views stay mounted: %s (vm0) and %s (vm1). Unmount with fusermount3 -u.\n' "$view0" "$view1"
else
  printf '\nDone; unmounting both views and removing %s. Run with --keep to explore them.\n' "$region"
fi
