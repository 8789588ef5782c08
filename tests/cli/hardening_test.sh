#!/usr/bin/env bash
# What ivshmctl and ivshmfs do when their surroundings cannot be trusted:
# closed standard descriptors (nothing but the intended append may reach the
# region), FIFOs and other files that are not regions, a mount point that is
# not a directory, unknown options, implicit formatting of regions that are
# not blank, failed creates (nothing left behind), a sparse region on a full
# tmpfs (ENOSPC, not SIGBUS), a backend truncated under a reader, read-only
# peers on a read-only file.
#
#   tests/cli/hardening_test.sh PATH/TO/ivshmctl PATH/TO/ivshmfs
#
# Prints each check and ends with "N passed, M failed"; exits non-zero if any
# check failed. The daemon checks need root, /dev/fuse and fusermount3 and say
# "skipped" without them.
set -u

ctl=${1:?usage: $0 PATH/TO/ivshmctl PATH/TO/ivshmfs}
fs=${2:?usage: $0 PATH/TO/ivshmctl PATH/TO/ivshmfs}

# shellcheck source=report.sh
. "$(dirname "${BASH_SOURCE[0]}")/report.sh"
skipped=0
tmp=$(mktemp -d "/dev/shm/ivshm-hardening-test-$$-XXXXXX")
work=$(mktemp -d "/tmp/ivshm-hardening-test-$$-XXXXXX")
bg_pids=()
mounts=()
cleanup() {
  local pid m
  for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null; done
  for m in "${mounts[@]}"; do
    fusermount3 -u -q "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
  for pid in "${bg_pids[@]}"; do wait "$pid" 2>/dev/null; done
  rm -rf "$tmp"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

skip() {
  skipped=$((skipped + 1))
  echo "skip - $1"
}
check() { # DESCRIPTION COMMAND...: passes when COMMAND succeeds
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
expect_eq() { # ACTUAL EXPECTED DESCRIPTION
  if [ "$1" = "$2" ]; then pass "$3"; else fail "$3: got '$1', expected '$2'"; fi
}
expect_in() { # TEXT NEEDLE DESCRIPTION
  if [[ "$1" == *"$2"* ]]; then pass "$3"; else fail "$3: lacks '$2'" "text: $1"; fi
}
expect_not_in() { # TEXT NEEDLE DESCRIPTION
  if [[ "$1" != *"$2"* ]]; then pass "$3"; else fail "$3: says '$2'" "text: $1"; fi
}

# region_diff OLD NEW: the parts of the region that differ, by name ("header",
# "table", "control N", "data N"), one per line; nothing when identical.
region_diff() {
  python3 - "$1" "$2" <<'PY'
import struct, sys
old = open(sys.argv[1], "rb").read()
new = open(sys.argv[2], "rb").read()
if len(old) != len(new):
    print("size %d -> %d" % (len(old), len(new)))
    sys.exit()
count = struct.unpack_from("<I", old, 40)[0]
areas = [("header", 0, 64), ("table", 64, 64 + 32 * count)]
for i in range(count):
    pid, flags, ctl, data, cap = struct.unpack_from("<IIQQQ", old, 64 + 32 * i)
    areas += [("control %d" % pid, ctl, ctl + 128), ("data %d" % pid, data, data + cap)]
changed = set()
for i in range(len(old)):
    if old[i] != new[i]:
        for name, lo, hi in areas:
            if lo <= i < hi:
                changed.add(name)
                break
        else:
            changed.add("padding at %d" % i)
for name in sorted(changed):
    print(name)
PY
}

fuse_ok=yes
if [ "$(id -u)" != 0 ] || [ ! -w /dev/fuse ] || ! command -v fusermount3 >/dev/null; then
  fuse_ok="no (needs root, /dev/fuse and fusermount3)"
fi

is_mounted() { grep -q " $1 fuse.ivshmfs " /proc/self/mounts; }

# start_daemon LOG MOUNTPOINT ARGS...: runs ivshmfs -f in the background
# (descriptor redirections are the caller's, see below); waits for the mount.
wait_mounted() { # MOUNTPOINT PID
  local _
  for _ in $(seq 1 300); do
    is_mounted "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
stop_daemon() { # MOUNTPOINT PID: unmounts, waits for the daemon; its status
  fusermount3 -u "$1" 2>/dev/null
  local _
  for _ in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  kill -9 "$2" 2>/dev/null
  wait "$2"
}

echo "== closed standard descriptors: ivshmctl"
region="$tmp/fds"
"$ctl" format --size 1M "$region" >/dev/null || fail "format for the descriptor checks"
printf 'peer zero' | "$ctl" write "$region" 0
expected=""
for fd in 0 1 2; do
  cp "$region" "$tmp/before"
  case $fd in
    0) "$ctl" status "$region" >/dev/null 2>&1 0<&- ;;
    1) "$ctl" status "$region" 2>/dev/null 1>&- ;;
    2) "$ctl" status "$region" >/dev/null 2>&- ;;
  esac
  expect_eq "$(region_diff "$tmp/before" "$region" | tr '\n' ' ')" "" "status with fd $fd closed leaves the region byte-identical"
  case $fd in
    0) "$ctl" read "$region" 0 >/dev/null 2>&1 0<&- ;;
    1) "$ctl" read "$region" 0 2>/dev/null 1>&- ;;
    2) "$ctl" read "$region" 0 >/dev/null 2>&- ;;
  esac
  expect_eq "$(region_diff "$tmp/before" "$region" | tr '\n' ' ')" "" "read with fd $fd closed leaves the region byte-identical"

  record="record-$fd;"
  case $fd in
    0)
      "$ctl" write "$region" 1 >/dev/null 2>&1 0<&-
      status=$? # stdin is then /dev/null: nothing to append
      ;;
    1)
      printf '%s' "$record" | "$ctl" write "$region" 1 2>/dev/null 1>&-
      status=$?
      expected+=$record
      ;;
    2)
      printf '%s' "$record" | "$ctl" write "$region" 1 >/dev/null 2>&-
      status=$?
      expected+=$record
      ;;
  esac
  expect_eq "$status" 0 "write with fd $fd closed succeeds"
  changed=$(region_diff "$tmp/before" "$region" | tr '\n' ' ')
  if [ "$fd" = 0 ]; then
    # Only the claim's bookkeeping in partition 1's control block may change.
    case "$changed" in "" | "control 1 ") pass "write with fd 0 closed appends nothing ($changed)" ;;
      *) fail "write with fd 0 closed changed: $changed" ;; esac
  else
    expect_eq "$changed" "control 1 data 1 " "write with fd $fd closed changes only partition 1"
  fi
  expect_eq "$("$ctl" read "$region" 1)" "$expected" "partition 1 holds exactly the intended appends (fd $fd closed)"
done
expect_eq "$("$ctl" read "$region" 0)" "peer zero" "the other partition is untouched"

echo "== closed standard descriptors: ivshmfs"
if [ "$fuse_ok" != yes ]; then
  skip "ivshmfs with closed descriptors: $fuse_ok"
else
  mnt="$work/mnt"
  mkdir -p "$mnt"
  mounts+=("$mnt")
  for ro in "" ro; do
    for fd in 0 1 2; do
      cp "$region" "$tmp/before"
      opts="id=0,poll_max_ms=20"
      [ -n "$ro" ] && opts="ro"
      case $fd in
        0) "$fs" -f -o "$opts" "$region" "$mnt" >/dev/null 2>&1 0<&- & ;;
        1) "$fs" -f -o "$opts" "$region" "$mnt" 2>/dev/null 1>&- & ;;
        2) "$fs" -f -o "$opts" "$region" "$mnt" >/dev/null 2>&- & ;;
      esac
      pid=$!
      bg_pids+=("$pid")
      what="ivshmfs${ro:+ -o ro} with fd $fd closed"
      if ! wait_mounted "$mnt" "$pid"; then
        fail "$what: did not mount"
        stop_daemon "$mnt" "$pid"
        continue
      fi
      if [ -z "$ro" ]; then
        printf 'via-mount-%s;' "$fd" >>"$mnt/vm0" || fail "$what: append through the mount"
      fi
      content=$(cat "$mnt/vm0")
      stop_daemon "$mnt" "$pid"
      bg_pids=("${bg_pids[@]/$pid/}")
      changed=$(region_diff "$tmp/before" "$region" | tr '\n' ' ')
      if [ -n "$ro" ]; then
        expect_eq "$changed" "" "$what leaves the region byte-identical"
        expect_eq "$content" "$("$ctl" read "$region" 0)" "$what reads partition 0"
      else
        expect_eq "$changed" "control 0 data 0 " "$what changes only its own partition"
        expect_in "$("$ctl" read "$region" 0)" "via-mount-$fd;" "$what appended exactly the record"
      fi
    done
  done
  expect_eq "$("$ctl" read "$region" 0)" "peer zerovia-mount-0;via-mount-1;via-mount-2;" \
    "partition 0 holds exactly the appends made through the mounts"

  # Detached (no -f): the daemon's descriptors are /dev/null after the fork;
  # before it, the closed ones must not have become the backend either.
  cp "$region" "$tmp/before"
  "$fs" -o id=0,poll_max_ms=20 "$region" "$mnt" 0<&- 1>&- 2>&-
  status=$?
  expect_eq "$status" 0 "a detached ivshmfs with 0-2 closed mounts"
  if is_mounted "$mnt"; then
    printf 'detached;' >>"$mnt/vm0"
    fusermount3 -u "$mnt"
    # Wait until the detached daemon has released its claim (it exits then).
    for _ in $(seq 1 300); do
      [ "$("$ctl" status --json "$region" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitions"][0]["claimed"])')" = False ] && break
      sleep 0.05
    done
    expect_eq "$(region_diff "$tmp/before" "$region" | tr '\n' ' ')" "control 0 data 0 " \
      "a detached ivshmfs with 0-2 closed changes only its own partition"
    expect_eq "$("$ctl" read "$region" 0)" "peer zerovia-mount-0;via-mount-1;via-mount-2;detached;" \
      "the detached daemon appended exactly the record"
  else
    fail "a detached ivshmfs with 0-2 closed is not mounted"
  fi
fi

echo "== files that are not regions"
mkfifo "$work/fifo"
for cmd in "status" "read"; do
  args=("$work/fifo")
  [ "$cmd" = read ] && args+=(0)
  start=$(date +%s)
  err=$(timeout 20 "$ctl" "$cmd" "${args[@]}" 2>&1 >/dev/null)
  status=$?
  expect_eq "$status" 1 "ivshmctl $cmd on a FIFO fails (124 would mean it blocked)"
  expect_in "$err" "FIFO" "ivshmctl $cmd on a FIFO says so"
done
err=$("$ctl" status "$work" 2>&1 >/dev/null)
expect_in "$err" "directory" "ivshmctl status on a directory says so"

echo "== mount point, options"
"$ctl" format --size 1M "$tmp/opts" >/dev/null
cp "$tmp/opts" "$tmp/opts.before"
printf 'not a directory' >"$work/file-mountpoint"
err=$("$fs" -f -o id=0 "$tmp/opts" "$work/file-mountpoint" 2>&1)
expect_eq "$?" 1 "a MOUNTPOINT that is a file is refused"
expect_in "$err" "not a directory" "the refusal says the mount point is not a directory"
expect_eq "$(cat "$work/file-mountpoint")" "not a directory" "the file is untouched"
is_mounted "$work/file-mountpoint" && fail "the file was mounted over" || pass "nothing was mounted over the file"
mkdir -p "$work/m2"
err=$("$fs" -f -o idd=0 "$tmp/opts" "$work/m2" 2>&1)
expect_eq "$?" 1 "-o idd=0 is refused"
expect_in "$err" "unknown option" "-o idd=0 is reported as an unknown option"
expect_not_in "$err" "hostname" "-o idd=0 is not reported as a hostname problem"
expect_eq "$(region_diff "$tmp/opts.before" "$tmp/opts" | tr '\n' ' ')" "" "refused mounts leave the region byte-identical"

echo "== implicit formatting only of a blank region"
for damage in "0:0000000000000000" "0:8877665544332211" "8:6300000000000000" "0:495653484d465301"; do
  "$ctl" format --force --size 1M "$tmp/damaged" >/dev/null 2>&1 || "$ctl" format --size 1M "$tmp/damaged" >/dev/null
  printf 'peer data' | "$ctl" write "$tmp/damaged" 1
  offset=${damage%%:*}
  hex=${damage#*:}
  hex=${hex// /}
  printf "$(echo "$hex" | sed 's/../\\x&/g')" | dd of="$tmp/damaged" bs=1 seek="$offset" conv=notrunc status=none
  cp "$tmp/damaged" "$tmp/damaged.before"
  err=$("$ctl" format "$tmp/damaged" 2>&1)
  expect_eq "$?" 1 "ivshmctl format without --force refuses a damaged region ($damage)"
  if [ "$fuse_ok" = yes ]; then
    err=$("$fs" -f -o id=0,create "$tmp/damaged" "$work/m2" 2>&1)
    expect_eq "$?" 1 "ivshmfs -o create refuses a damaged region ($damage)"
    expect_in "$err" "$tmp/damaged" "the refusal names the file ($damage)"
    expect_not_in "$err" "formatted" "the refusal does not claim a format ($damage)"
  fi
  expect_eq "$(region_diff "$tmp/damaged.before" "$tmp/damaged" | tr '\n' ' ')" "" \
    "the damaged region is byte-identical afterwards ($damage)"
done
rm -f "$tmp/damaged" "$tmp/damaged.before"
if [ "$fuse_ok" = yes ]; then
  truncate -s 1M "$tmp/blank"
  "$fs" -f -o id=0,create "$tmp/blank" "$work/m2" >"$work/blank.log" 2>&1 &
  pid=$!
  bg_pids+=("$pid")
  mounts+=("$work/m2")
  if wait_mounted "$work/m2" "$pid"; then pass "ivshmfs -o create formats a blank file"; else
    fail "ivshmfs -o create formats a blank file" "$(cat "$work/blank.log")"
  fi
  stop_daemon "$work/m2" "$pid"
  "$ctl" status "$tmp/blank" >/dev/null 2>&1 && pass "the blank file is now a region" || fail "the blank file is no region"
fi

echo "== failed creates leave nothing"
err=$("$ctl" format --size 4K "$tmp/small" 2>&1)
expect_eq "$?" 1 "format --size 4K is refused (too small)"
[ ! -e "$tmp/small" ] && pass "the refused format left no file" || fail "the refused format left $tmp/small"
err=$("$ctl" format --size 1M "$tmp/small" 2>&1)
expect_eq "$?" 0 "the retry with a sane size works" "$err"
if [ "$fuse_ok" = yes ]; then
  err=$("$fs" -f -o id=0,create,size=4K "$tmp/small-fs" "$work/m2" 2>&1)
  expect_eq "$?" 1 "ivshmfs -o create,size=4K is refused"
  [ ! -e "$tmp/small-fs" ] && pass "the refused create left no file" || fail "the refused create left $tmp/small-fs"
fi

echo "== a tiny tmpfs: too large, and a sparse region that cannot be backed"
if [ "$(id -u)" != 0 ]; then
  skip "tiny tmpfs checks: mounting a tmpfs needs root"
else
  tiny="$work/tiny"
  mkdir -p "$tiny"
  if mount -t tmpfs -o size=1M tmpfs "$tiny"; then
    mounts+=("$tiny")
    err=$("$ctl" format --size 4M "$tiny/big" 2>&1)
    expect_eq "$?" 1 "format --size 4M on a 1 MiB tmpfs is refused"
    expect_in "$err" "4 MiB" "the refusal gives the size asked for"
    expect_in "$err" "free" "the refusal gives the free space"
    [ ! -e "$tiny/big" ] && pass "the refused format left no file" || fail "the refused format left $tiny/big"
    truncate -s 4M "$tiny/sparse"
    "$ctl" format --partitions 2 "$tiny/sparse" >/dev/null || fail "format of the sparse region"
    err=$(printf 'data' | "$ctl" write "$tiny/sparse" 0 2>&1)
    status=$?
    expect_eq "$status" 1 "write to a sparse region on a full tmpfs fails cleanly (135 would be SIGBUS)"
    expect_in "$err" "No space left" "the failure says ENOSPC"
    if [ "$fuse_ok" = yes ]; then
      err=$("$fs" -f -o id=1 "$tiny/sparse" "$work/m2" 2>&1)
      expect_eq "$?" 1 "ivshmfs on a sparse region on a full tmpfs refuses to start (not SIGBUS)"
      expect_in "$err" "No space left" "the daemon says ENOSPC"
    fi
    umount -l "$tiny"
  else
    fail "cannot mount a 1 MiB tmpfs"
  fi
fi

echo "== a backend truncated under ivshmctl read"
"$ctl" format --size 8M --partitions 2 "$tmp/shrink" >/dev/null
head -c 3000000 /dev/urandom | "$ctl" write "$tmp/shrink" 0
mkfifo "$work/pipe"
"$ctl" read "$tmp/shrink" 0 >"$work/pipe" 2>"$work/read.err" &
reader=$!
bg_pids+=("$reader")
exec 4<"$work/pipe"
head -c 1000 <&4 >/dev/null # the reader has mapped the region and is copying
truncate -s 4096 "$tmp/shrink"
cat <&4 >/dev/null
exec 4<&-
wait "$reader"
status=$?
expect_eq "$status" 1 "ivshmctl read fails cleanly when the backend shrinks under it (135 would be SIGBUS)"
expect_in "$(cat "$work/read.err")" "shrank" "ivshmctl read says the backing file shrank"

echo "== a read-only peer on a read-only file"
if [ "$fuse_ok" != yes ]; then
  skip "ivshmfs -o ro on a read-only file: $fuse_ok"
else
  rodir="$work/rofs"
  mkdir -p "$rodir" "$work/m3"
  if mount -t tmpfs -o size=2M tmpfs "$rodir"; then
    mounts+=("$work/m3" "$rodir")
    "$ctl" format --size 1M "$rodir/region" >/dev/null
    printf 'read me' | "$ctl" write "$rodir/region" 1
    mount -o remount,ro "$rodir"
    "$fs" -f -o ro "$rodir/region" "$work/m3" >"$work/ro.log" 2>&1 &
    pid=$!
    bg_pids+=("$pid")
    if wait_mounted "$work/m3" "$pid"; then
      pass "ivshmfs -o ro mounts a region on a read-only filesystem"
      expect_eq "$(cat "$work/m3/vm1")" "read me" "and reads it"
      maps=$(grep -F "$rodir/region" "/proc/$pid/maps" | awk '{print $2}' | sort -u | tr '\n' ' ')
      expect_eq "$maps" "r--s " "the daemon maps the region read-only (PROT_READ, shared)"
    else
      fail "ivshmfs -o ro mounts a region on a read-only filesystem" "$(cat "$work/ro.log")"
    fi
    stop_daemon "$work/m3" "$pid"
    umount -l "$rodir"
  else
    fail "cannot mount a tmpfs for the read-only checks"
  fi
fi

echo "== a partition left mid-reset (odd generation)"
"$ctl" format --size 1M "$tmp/midreset" >/dev/null
printf 'before the reset' | "$ctl" write "$tmp/midreset" 1
# What an owner killed inside a reset leaves: the generation of partition 1 odd.
python3 - "$tmp/midreset" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    header = f.read(64)
    control = struct.unpack_from("<Q", header, 48)[0]
    f.seek(control + 128 * 1 + 8)
    f.write(struct.pack("<Q", 7))
PY
out=$(timeout 20 "$ctl" status "$tmp/midreset" 2>&1)
expect_eq "$?" 0 "status of a region with a partition mid-reset succeeds"
if grep -q '^partition 1: a reset stays half done' <<<"$out"; then pass "status marks partition 1 mid-reset"; else
  fail "status marks partition 1 mid-reset" "$out"
fi
if grep -qE '^0 +- +- +0/' <<<"$out"; then pass "status still shows the other partitions"; else
  fail "status still shows the other partitions" "$out"
fi
out=$(timeout 20 "$ctl" status --json "$tmp/midreset" 2>&1)
expect_eq "$(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print([p["mid_reset"] for p in j["partitions"]])' "$out" 2>&1)" \
  "[False, True, False, False]" "status --json marks partition 1 mid_reset"
err=$(timeout 20 "$ctl" read "$tmp/midreset" 1 2>&1 >/dev/null)
expect_eq "$?" 1 "a read of the partition mid-reset fails at once (124 would mean it spun)"
expect_in "$err" "mid-reset" "the read says the partition is mid-reset"
printf 'after' | "$ctl" write "$tmp/midreset" 1
expect_eq "$?" 0 "the owner's next claim finishes the reset"
expect_eq "$("$ctl" read "$tmp/midreset" 1)" "after" "the partition works again (the reset it finishes empties it)"

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
