#!/usr/bin/env bash
# ivshmctl end to end on region files in /dev/shm: format, status (table and
# JSON), write/read round trips with binary data, reset, refusal while a live
# writer owns a partition and --force, error messages and exit codes, --help.
#
#   tests/cli/ivshmctl_test.sh PATH/TO/ivshmctl [shared|split]
#
# With "split" the regions of the status, write/read, reset, full-partition,
# wrong-id and live-owner checks are split regions (PREFIX.vmN pieces), and
# split-only checks replace the single-file format checks.
#
# Prints each check and ends with "N passed, M failed"; exits non-zero if any
# check failed.
set -u

ctl=${1:?usage: $0 PATH/TO/ivshmctl [shared|split]}
mode=${2:-shared}
[ -x "$ctl" ] || {
  echo "not executable: $ctl"
  echo "0 passed, 1 failed"
  exit 1
}

# shellcheck source=report.sh
. "$(dirname "${BASH_SOURCE[0]}")/report.sh"
tmp=$(mktemp -d "/dev/shm/ivshmctl-test-$$-XXXXXX")
bg_pids=()
cleanup() {
  local pid
  for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null; done
  exec 3>&-
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

n=0
# Sets $file to a fresh, unique region file name (not created). Not called
# through $(...): the counter must survive.
next_file() {
  n=$((n + 1))
  file="$tmp/region-$n"
}

# run ARGS...: runs ivshmctl with stdin from /dev/null unless redirected by
# the caller; sets $status, $out (stdout file) and $err (stderr text).
out="$tmp/stdout"
run() {
  "$ctl" "$@" >"$out" 2>"$tmp/stderr"
  status=$?
  err=$(cat "$tmp/stderr")
}


# expect_status N DESCRIPTION
expect_status() {
  if [ "$status" = "$1" ]; then
    pass "$2 (exit $1)"
  else
    fail "$2: exit $status, expected $1" "stdout: $(head -c 300 "$out")" "stderr: $err"
  fi
}
# expect_err TEXT DESCRIPTION: stderr contains TEXT
expect_err() {
  if [[ "$err" == *"$1"* ]]; then
    pass "$2: stderr says '$1'"
  else
    fail "$2: stderr lacks '$1'" "stderr: $err"
  fi
}
# expect_out TEXT DESCRIPTION: stdout contains TEXT
expect_out() {
  if grep -qF -- "$1" "$out"; then
    pass "$2: stdout says '$1'"
  else
    fail "$2: stdout lacks '$1'" "stdout: $(head -c 500 "$out")"
  fi
}
expect_eq() { # ACTUAL EXPECTED DESCRIPTION
  if [ "$1" = "$2" ]; then
    pass "$3"
  else
    fail "$3: got '$1', expected '$2'"
  fi
}

# json_field FILE EXPR: evaluates a Python expression over the parsed JSON `j`.
json_field() {
  python3 -c '
import json, sys
try:
    j = json.load(open(sys.argv[1]))
    print(eval(sys.argv[2]))
except Exception as e:
    print("invalid JSON or field (%s: %s)" % (type(e).__name__, e))
' "$1" "$2"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# format_region BYTES PARTITIONS PATH: a fresh region of BYTES in all, one
# file, or in split mode PARTITIONS pieces of BYTES/PARTITIONS rounded up to
# a power of two (the capacities come out the same).
format_region() {
  if [ "$mode" = split ]; then
    local piece=8192
    while [ $((piece * $2)) -lt "$1" ]; do piece=$((piece * 2)); done
    run format --split --size "$piece" --partitions "$2" "$3"
  else
    run format --size "$1" --partitions "$2" "$3"
  fi
}

echo "== help and usage"
run --help
expect_status 0 "ivshmctl --help"
expect_out "Usage: ivshmctl COMMAND" "ivshmctl --help"
for cmd in format status read write reset qemu-args; do
  run "$cmd" --help
  expect_status 0 "ivshmctl $cmd --help"
  expect_out "Usage: ivshmctl $cmd" "ivshmctl $cmd --help"
  run "$cmd" -h
  expect_status 0 "ivshmctl $cmd -h"
done
run --version
expect_status 0 "ivshmctl --version"
run
expect_status 2 "no command"
expect_err "no command" "no command"
run frobnicate
expect_status 2 "unknown command"
expect_err "unknown command 'frobnicate'" "unknown command"
next_file
run status --bogus "$file"
expect_status 2 "unknown option"
expect_err "--bogus" "unknown option"
run read --force "$file" 0
expect_status 2 "an option another command has (read --force)"

if [ "$mode" = shared ]; then
echo "== format"
next_file
f=$file
run format "$f"
expect_status 1 "format of a missing file without --size"
expect_err "$f" "format of a missing file names it"
expect_err "--size" "format of a missing file says what to pass"
[ ! -e "$f" ] && pass "no file created without --size" || fail "a file was created without --size"

for bad in 12X abc "" -5 1.5M 99999999999999999999T; do
  run format --size "$bad" "$f"
  expect_status 2 "format --size '$bad'"
  expect_err "'$bad'" "format --size '$bad' quotes the bad size"
done
for bad in 0 65 abc -1; do
  run format --size 1M --partitions "$bad" "$f"
  expect_status 2 "format --partitions '$bad'"
  expect_err "--partitions" "format --partitions '$bad'"
done
[ ! -e "$f" ] && pass "no file created by refused formats" || fail "a refused format created $f"

run format --size 1M "$f"
expect_status 0 "format --size 1M"
expect_out "formatted $f" "format"
expect_out "4 partitions" "format defaults to 4 partitions"
expect_eq "$(stat -c %s "$f")" 1048576 "format --size 1M makes a 1 MiB file"

run format "$f"
expect_status 1 "format of a formatted region without --force"
expect_err "$f" "refused format names the file"
expect_err "--force" "refused format says how to proceed"

run format --size 2M "$f"
expect_status 1 "format --size that differs from the existing file"
expect_err "$f" "size mismatch names the file"

run format --force --partitions 2 "$f"
expect_status 0 "format --force --partitions 2 of an existing file (no --size)"
expect_out "2 partitions" "format --partitions 2"

next_file
small=$file
run format --size 4K "$small"
expect_status 1 "format of a region too small for its partitions"
expect_err "$small" "too-small format names the file"
expect_err "too small" "too-small format says so"

next_file
blank=$file
truncate -s 64K "$blank"
run format --partitions 8 "$blank"
expect_status 0 "format of an existing blank file without --size"
expect_out "8 partitions" "format --partitions 8"

fi

if [ "$mode" = split ]; then
  echo "== format --split"
  next_file
  f=$file
  for bad in 96K 4K 0 1000; do
    run format --split --size "$bad" --partitions 3 "$f"
    expect_status 2 "format --split --size $bad"
    expect_err "power of two" "format --split --size $bad says a piece is a power of two"
  done
  run format --split --partitions 3 "$f"
  expect_status 2 "format --split without --size"
  expect_err "--size" "format --split without --size says what to pass"
  [ ! -e "$f.vm0" ] && pass "no piece created by refused formats" || fail "a refused format created $f.vm0"
  run format --split --size 64K --partitions 3 "$f"
  expect_status 0 "format --split --size 64K --partitions 3"
  expect_out "3 pieces" "format --split says how many pieces"
  for id in 0 1 2; do
    expect_eq "$(stat -c %s "$f.vm$id" 2>&1)" 65536 "piece $f.vm$id is 64 KiB"
  done
  [ ! -e "$f" ] && pass "the prefix itself is no file" || fail "format --split created $f"
  run status --json "$f"
  expect_eq "$(json_field "$out" 'j["split_pieces"]')" 3 "JSON split_pieces"
  expect_eq "$(json_field "$out" '[p["backend"] for p in j["partitions"]]')" "['$f.vm0', '$f.vm1', '$f.vm2']" \
    "JSON names each partition's piece"
  run status "$f"
  expect_out "split, 3 of 3" "status says the region is split"
  printf 'keep' | "$ctl" write "$f" 2
  sum_before=$(cat "$f".vm* | sha256sum)
  run format --split --size 64K --partitions 2 "$f"
  expect_status 1 "format --split of a region holding data, without --force"
  expect_err "--force" "the refusal says how to proceed"
  expect_eq "$(cat "$f".vm* | sha256sum)" "$sum_before" "a refused format --split changes no piece"
  run format "$f"
  expect_status 1 "a single-file format of a split prefix"
  expect_err "--split" "the refusal says to use --split"
  run format --split --force --size 64K --partitions 2 "$f"
  expect_status 0 "format --split --force with fewer pieces"
  [ ! -e "$f.vm2" ] && pass "--force removed the piece of the older format" || fail "$f.vm2 is left over"
  next_file
  other=$file
  run format --split --size 64K --partitions 2 "$other"
  cp "$other.vm1" "$f.vm1"
  run status "$f"
  expect_status 1 "status of pieces from two regions"
  expect_err "another split region" "mixed pieces are refused"

  echo "== qemu-args"
  next_file
  q=$file
  run format --split --size 64K --partitions 6 "$q"
  run qemu-args --peer 2 "$q"
  expect_status 0 "qemu-args --peer 2 on 6 pieces"
  expect_eq "$(grep -c '^-object memory-backend-file,' "$out")" 6 "one memory backend per piece"
  expect_eq "$(grep -c '^-device ivshmem-plain,' "$out")" 6 "one ivshmem-plain device per piece"
  expect_eq "$(grep -c 'readonly=on' "$out")" 5 "every piece but the own one is readonly=on"
  own_line="-object memory-backend-file,id=ivshmfs-vm2,mem-path=$q.vm2,size=65536,share=on"
  if grep -qxF -- "$own_line" "$out"; then pass "the own piece is read-write"; else
    fail "the own piece is read-write: no line '$own_line'" "$(cat "$out")"
  fi
  cp "$out" "$q.before"
  run qemu-args "$q" --peer 2
  expect_status 0 "qemu-args with the option after the operand"
  if cmp -s "$out" "$q.before"; then pass "options after the operand mean the same"; else
    fail "options after the operand mean the same" "$(diff "$q.before" "$out")"
  fi
  rm -f "$q.before"
  run qemu-args --peer 2 --libvirt "$q"
  expect_status 0 "qemu-args --libvirt"
  expect_out "<qemu:commandline>" "libvirt form"
  expect_eq "$(grep -c "<qemu:arg value='-device'/>" "$out")" 6 "libvirt form has every device"
  run qemu-args --peer 2 --bridge "$q"
  expect_out "-device pci-bridge,id=ivshmfs-bridge0,chassis_nr=1" "--bridge adds a pci-bridge"
  expect_out "bus=ivshmfs-bridge0,addr=0x6" "--bridge places the sixth piece in slot 6 of the bridge"
  run qemu-args "$q"
  expect_status 2 "qemu-args without --peer"
  run qemu-args --peer 6 "$q"
  expect_status 1 "qemu-args --peer of no partition"
  expect_err "no partition 6" "qemu-args names the missing partition"
  if command -v qemu-system-x86_64 >/dev/null; then
    # QEMU itself accepts them: 6 pieces on the root bus, and behind a bridge.
    for extra in "" --bridge; do
      # shellcheck disable=SC2046
      qtree=$(printf 'info qtree\nquit\n' | timeout 120 qemu-system-x86_64 -accel tcg -S -display none -nodefaults \
        -monitor stdio $("$ctl" qemu-args --peer 2 $extra "$q") 2>&1)
      expect_eq "$(grep -c 'dev: ivshmem-plain' <<<"$qtree")" 6 "QEMU starts with the 6 devices of qemu-args $extra"
    done
  else
    pass "skipped: QEMU is not installed, its acceptance of qemu-args is not checked"
  fi
  next_file
  single=$file
  run format --size 64K "$single"
  run qemu-args --peer 1 "$single"
  expect_status 0 "qemu-args on a single-file region"
  expect_eq "$(grep -c '^-device ivshmem-plain' "$out")" 1 "one device for a single-file region"
  expect_eq "$(grep -c 'readonly' "$out")" 0 "a single-file region is shared read-write"
  run qemu-args --peer 1 --hotplug 0 "$single"
  expect_status 1 "qemu-args --hotplug on a single-file region"
  expect_err "split region" "--hotplug says it is for the pieces of a split region"

  echo "== add and remove pieces of a split region"
  next_file
  g=$file
  run format --split --size 64K --partitions 2 "$g"
  run add --size 128K "$g"
  expect_status 0 "add --size 128K to a split region"
  expect_out "added partition 2 (vm2): piece $g.vm2" "add names the new piece"
  expect_eq "$(stat -c %s "$g.vm2" 2>&1)" 131072 "the new piece has the size asked for"
  expect_eq "$(ls "$g".vm2.* 2>/dev/null | wc -l)" 0 "no temporary file is left"
  run status --json "$g"
  expect_eq "$(json_field "$out" '[p["id"] for p in j["partitions"]]')" "[0, 1, 2]" "status shows the added piece"
  expect_eq "$(json_field "$out" 'j["split_pieces"]')" 2 "split_pieces stays the count formatted together"
  printf 'in vm2' | "$ctl" write "$g" 2
  expect_eq "$("$ctl" read "$g" 2)" "in vm2" "the added piece is written and read"
  for bad in 96K 4K; do
    run add --size "$bad" "$g"
    expect_status 1 "add --size $bad to a split region"
    expect_err "power of two" "add --size $bad says a piece is a power of two"
  done
  run add --id 1 --size 64K "$g"
  expect_status 1 "add --id 1: its piece exists"
  expect_err "exists" "add of an existing id says so"
  run add --ring --size 64K "$g"
  expect_status 2 "add --ring to a split region"
  [ ! -e "$g.vm3" ] && pass "no piece created by refused adds" || fail "a refused add created $g.vm3"
  run qemu-args --peer 0 --hotplug 2 "$g"
  expect_status 0 "qemu-args --hotplug 2"
  expect_eq "$(wc -l < "$out")" 2 "--hotplug prints two QMP commands"
  expect_eq "$(python3 -c 'import json,sys; print([json.loads(l)["execute"] for l in open(sys.argv[1])])' "$out")" \
    "['object-add', 'device_add']" "--hotplug: object-add, then device_add"
  expect_out "\"mem-path\":\"$g.vm2\",\"size\":131072,\"share\":true,\"readonly\":true" \
    "--hotplug: the piece, readonly for another VM"
  run qemu-args --peer 2 --hotplug 2 "$g"
  if grep -q readonly "$out"; then fail "--hotplug of the own piece is read-write" "$(cat "$out")"; else
    pass "--hotplug of the own piece is read-write"
  fi
  run qemu-args --peer 0 --hotplug 7 "$g"
  expect_status 1 "qemu-args --hotplug of a piece that does not exist"
  expect_err "no piece $g.vm7" "--hotplug names the missing piece"
  run qemu-args --peer 0 --unplug 2 "$g"
  expect_eq "$(python3 -c 'import json,sys; print([json.loads(l)["execute"] for l in open(sys.argv[1])])' "$out")" \
    "['device_del', 'object-del']" "--unplug: device_del, then object-del"
  run remove --id 2 "$g"
  expect_status 0 "remove --id 2 of a split region"
  [ ! -e "$g.vm2" ] && pass "remove deleted the piece file" || fail "$g.vm2 is still there"
  run add --size 64K "$g"
  expect_status 0 "add after a remove"
  expect_out "added partition 2" "the removed id is used again"
  expect_eq "$("$ctl" read "$g" 2 | wc -c)" 0 "the new piece starts empty"
  if command -v qemu-system-x86_64 >/dev/null; then
    # QEMU starts with the pieces there are now (three, one added).
    # shellcheck disable=SC2046
    qtree=$(printf 'info qtree\nquit\n' | timeout 120 qemu-system-x86_64 -accel tcg -S -display none -nodefaults \
      -monitor stdio $("$ctl" qemu-args --peer 0 "$g") 2>&1)
    expect_eq "$(grep -c 'dev: ivshmem-plain' <<<"$qtree")" 3 "QEMU starts with the 3 pieces, one of them added"
  fi
fi
echo "== status"
next_file
f=$file
format_region 1048576 4 "$f"
expect_status 0 "format for status"
run status "$f"
expect_status 0 "status"
expect_out "$f" "status names the region"
expect_out "ID" "status table header"
expect_out "LENGTH/CAPACITY" "status table header"
for id in 0 1 2 3; do
  if grep -qE "^$id +- +- +0/" "$out"; then pass "status row for partition $id (unclaimed, empty)"; else
    fail "status row for partition $id" "$(cat "$out")"
  fi
done
run status --json "$f"
expect_status 0 "status --json"
if command -v python3 >/dev/null; then
  expect_eq "$(json_field "$out" 'j["partition_count"]')" 4 "JSON partition_count"
  expect_eq "$(json_field "$out" 'len(j["partitions"])')" 4 "JSON partitions list"
  expect_eq "$(json_field "$out" 'j["region_size"]')" 1048576 "JSON region_size"
  expect_eq "$(json_field "$out" 'j["backend"]')" "$f" "JSON backend"
  expect_eq "$(json_field "$out" '[p["id"] for p in j["partitions"]]')" "[0, 1, 2, 3]" "JSON partition ids"
  expect_eq "$(json_field "$out" 'all(p["length"] == 0 and not p["claimed"] and not p["alive"] for p in j["partitions"])')" \
    True "JSON: all partitions empty and unclaimed"
  expect_eq "$(json_field "$out" 'j["partitions"][0]["capacity"] % 4096 == 0 and j["partitions"][0]["capacity"] > 0')" \
    True "JSON capacity is a positive page multiple"
else
  fail "python3 is needed to parse status --json"
fi

echo "== write and read"
data="$tmp/data"
head -c 200000 /dev/urandom >"$data"
printf 'zero\0bytes\0\0end' >>"$data"
run write "$f" 1 <"$data"
expect_status 0 "write of binary data from stdin"
run read "$f" 1
expect_status 0 "read to stdout"
expect_eq "$(sha "$out")" "$(sha "$data")" "read returns exactly what write appended (sha256)"
printf 'more' >"$tmp/more"
run write "$f" 1 <"$tmp/more"
expect_status 0 "second write appends"
cat "$data" "$tmp/more" >"$tmp/both"
run read "$f" 1
expect_eq "$(sha "$out")" "$(sha "$tmp/both")" "read after two writes is their concatenation"
run read "$f" 2
expect_status 0 "read of an empty partition"
expect_eq "$(stat -c %s "$out")" 0 "an empty partition reads as nothing"
run write "$f" 3 </dev/null
expect_status 0 "write of empty stdin"
run status --json "$f"
if command -v python3 >/dev/null; then
  expect_eq "$(json_field "$out" 'j["partitions"][1]["length"]')" "$(stat -c %s "$tmp/both")" "JSON length after writes"
  expect_eq "$(json_field "$out" 'j["partitions"][1]["claimed"]')" False "write released its claim on exit"
  expect_eq "$(json_field "$out" 'j["partitions"][1]["last_write_ns"] > 0')" True "JSON last_write_ns set"
  gen_before=$(json_field "$out" 'j["partitions"][1]["generation"]')
fi

echo "== reset"
run reset "$f" 1
expect_status 0 "reset"
run read "$f" 1
expect_eq "$(stat -c %s "$out")" 0 "read after reset is empty"
run status --json "$f"
if command -v python3 >/dev/null; then
  if [[ "${gen_before:-}" =~ ^[0-9]+$ ]]; then
    expect_eq "$(json_field "$out" 'j["partitions"][1]["generation"]')" "$((gen_before + 2))" "reset bumps the generation by 2"
  else
    fail "generation before the reset is unknown: ${gen_before:-}"
  fi
  expect_eq "$(json_field "$out" 'j["partitions"][1]["length"]')" 0 "JSON length after reset"
fi

echo "== a full partition"
next_file
tiny=$file
format_region 20480 4 "$tiny"
expect_status 0 "format a region with 4 KiB partitions"
head -c 5000 /dev/urandom >"$tmp/5000"
run write "$tiny" 0 <"$tmp/5000"
expect_status 1 "write beyond the capacity"
expect_err "$tiny" "full partition error names the file"
expect_err "full" "full partition error says so"
expect_err "4096 bytes" "full partition error says how much was written"
run read "$tiny" 0
expect_eq "$(stat -c %s "$out")" 4096 "the partition holds what fitted"
expect_eq "$(sha "$out")" "$(head -c 4096 "$tmp/5000" | sha256sum | cut -d' ' -f1)" "and exactly those bytes"

echo "== ids and files that are wrong"
run read "$f" 4
expect_status 1 "read of an id out of range"
expect_err "$f" "out-of-range id error names the file"
expect_err "no partition 4" "out-of-range id error names the id"
run write "$f" 9 </dev/null
expect_status 1 "write of an id out of range"
expect_err "no partition 9" "write to an out-of-range id"
run reset "$f" 64
expect_status 1 "reset of an id out of range"
for bad in abc -1 1x 99999999999; do
  run read "$f" "$bad"
  expect_status 2 "read with id '$bad'"
  expect_err "'$bad'" "read with id '$bad' quotes it"
done
run read "$f"
expect_status 2 "read without an id"
run read "$f" 1 2
expect_status 2 "read with an extra argument"
run status
expect_status 2 "status without a backend"
if [ "$mode" = shared ]; then
next_file
missing=$file
for cmd in "status $missing" "read $missing 0" "write $missing 0" "reset $missing 0"; do
  # shellcheck disable=SC2086
  run $cmd </dev/null
  expect_status 1 "ivshmctl $cmd on a missing file"
  expect_err "$missing" "ivshmctl ${cmd%% *} on a missing file names it"
done
[ ! -e "$missing" ] && pass "no command created the missing file" || fail "a command created $missing"
next_file
blank=$file
truncate -s 64K "$blank"
run status "$blank"
expect_status 1 "status of a blank file"
expect_err "$blank" "blank file error names the file"
expect_err "not formatted" "blank file error says it is not formatted"
next_file
garbage=$file
head -c 65536 /dev/urandom >"$garbage"
run status "$garbage"
expect_status 1 "status of random bytes"
expect_err "$garbage" "bad magic error names the file"
expect_err "magic" "bad magic error says so"
next_file
corrupt=$file
run format --size 64K "$corrupt"
printf '\x07' | dd of="$corrupt" bs=1 seek=44 conv=notrunc status=none # page_size
run status "$corrupt"
expect_status 1 "status of a region with a corrupt page_size"
expect_err "$corrupt" "corrupt header error names the file"
expect_err "page_size" "corrupt header error names the field"
next_file
shrunk=$file
run format --size 64K "$shrunk"
truncate -s 60K "$shrunk"
run read "$shrunk" 0
expect_status 1 "read of a region whose file was truncated"
expect_err "$shrunk" "size mismatch names the file"
run status /dev/null
expect_status 1 "status of a character device that is not an ivshm device"
expect_err "/dev/null" "the device error names it"

fi

echo "== a live owner"
next_file
f=$file
format_region 1048576 4 "$f"
fifo="$tmp/fifo"
mkfifo "$fifo"
exec 3<>"$fifo" # keeps the fifo open, so the writer below waits for data
"$ctl" write "$f" 2 <"$fifo" 2>"$tmp/holder.err" &
holder=$!
bg_pids+=("$holder")
claimed=False
for _ in $(seq 1 400); do
  "$ctl" status --json "$f" >"$tmp/status.json" 2>/dev/null
  claimed=$(json_field "$tmp/status.json" 'j["partitions"][2]["claimed"] and j["partitions"][2]["alive"]')
  [ "$claimed" = True ] && break
  sleep 0.05
done
expect_eq "$claimed" True "a background 'ivshmctl write' holds partition 2"
expect_eq "$(json_field "$tmp/status.json" 'j["partitions"][2]["owner_pid"]')" "$holder" "status --json shows the owner's pid"
run status "$f"
if grep -qE "^2 +pid $holder \(here\) +yes" "$out"; then pass "status table shows the live owner"; else
  fail "status table shows the live owner" "$(cat "$out")"
fi
printf 'intruder' >"$tmp/intruder"
run write "$f" 2 <"$tmp/intruder"
expect_status 1 "write refused while a live owner holds the partition"
expect_err "$f" "refusal names the file"
expect_err "partition 2" "refusal names the partition"
expect_err "pid $holder" "refusal names the owner's pid"
expect_err "--force" "refusal says how to override"
run reset "$f" 2
expect_status 1 "reset refused while a live owner holds the partition"
expect_err "pid $holder" "reset refusal names the owner"
run write "$f" 3 <"$tmp/intruder"
expect_status 0 "other partitions stay writable"
printf 'forced' >"$tmp/forced"
run write --force "$f" 2 <"$tmp/forced"
expect_status 0 "write --force takes the partition"
run read "$f" 2
expect_eq "$(cat "$out")" "forced" "the forced write landed"
printf 'late' >&3
exec 3>&-
wait "$holder"
holder_status=$?
bg_pids=()
expect_eq "$holder_status" 1 "the displaced writer fails its next append"
holder_err=$(cat "$tmp/holder.err")
if [[ "$holder_err" == *"no longer owned"* && "$holder_err" == *"$f"* ]]; then
  pass "the displaced writer says it lost the partition"
else
  fail "the displaced writer says it lost the partition" "stderr: $holder_err"
fi
run read "$f" 2
expect_eq "$(cat "$out")" "forced" "nothing from the displaced writer reached the partition"
run reset --force "$f" 2
expect_status 0 "reset --force"

# Partitions of different sizes and ring partitions (format --partition, --ring).
next_file
run format --size 1M --partitions 3 --partition 0=64K,ring --partition 2=128K "$file"
expect_status 0 "format with per-partition sizes and a ring"
expect_out "0=64 KiB,ring 1=828 KiB 2=128 KiB" "format names every partition's size and the ring"
run status --json "$file"
expect_eq "$(json_field "$out" 'j["partitions"][0]["capacity"]')" "65536" "status: partition 0 has the size asked for"
if grep -q '"id":0,[^}]*"ring":true' "$out" && grep -q '"id":1,[^}]*"ring":false' "$out" &&
  grep -q '"id":2,[^}]*"capacity":131072' "$out" && grep -q '"id":1,[^}]*"capacity":847872' "$out"; then
  pass "status --json: ring flags and capacities (the rest shared out)"
else
  fail "status --json: ring flags and capacities (the rest shared out)" "$(cat "$out")"
fi
head -c 200000 /dev/urandom >"$tmp/stream"
run write "$file" 0 <"$tmp/stream"
expect_status 0 "write 3 rings' worth into a ring (never ENOSPC)"
run read "$file" 0
if cmp -s "$out" <(tail -c 65536 "$tmp/stream"); then
  pass "read of a wrapped ring gives its newest 64 KiB exactly"
else
  fail "read of a wrapped ring gives its newest 64 KiB exactly" "got $(wc -c <"$out") bytes"
fi
run status "$file"
expect_out "partition 0: ring (r): 200000 bytes written since the reset, retains [134464, 200000), 134464 bytes overwritten" \
  "status shows total written, retained range and bytes lost"
run status --json "$file"
if grep -q '"id":0,[^}]*"length":200000,[^}]*"retained_from":134464,"lost":134464' "$out"; then
  pass "status --json: length, retained_from, lost"
else
  fail "status --json: length, retained_from, lost" "$(cat "$out")"
fi
for spec in "5=64K|partition 5: no such partition" "0=5000|not a positive multiple of the page size" \
  "0=64K --partition 0=ring|given more than once" "0=2M|too small for 4 partitions" \
  "0=x|invalid size 'x'" "0=|gives neither a size nor ring"; do
  args=${spec%%|*}
  want=${spec#*|}
  # shellcheck disable=SC2086 # the spec may hold a second --partition
  run format --force --partition $args "$file"
  if [ "$status" != 0 ] && [[ "$err" == *"$want"* ]]; then
    pass "format --partition $args refused: $want"
  else
    fail "format --partition $args refused: $want" "exit $status" "stderr: $err"
  fi
done
run read "$file" 0
if cmp -s "$out" <(tail -c 65536 "$tmp/stream"); then
  pass "a refused format left the region as it was"
else
  fail "a refused format left the region as it was"
fi
run format --force --ring --partitions 2 "$file"
expect_status 0 "format --ring"
expect_out "2 ring partitions of" "format --ring makes every partition a ring"

# Live partition tables: format with free slots, add, status, remove, reuse.
if [ "$mode" = shared ]; then
  next_file
  run format --size 1M --partitions 2 --slots 4 "$file"
  expect_status 0 "format --slots"
  expect_out "2 free table slots" "format --slots reports the free slots"
  run add --size 64K "$file"
  expect_status 0 "add --size 64K"
  expect_out "added partition 2 (vm2): 64 KiB" "add takes the lowest unused id"
  first_offset=$(sed -n 's/.* at offset \([0-9]*\);.*/\1/p' "$out")
  printf 'joined' | "$ctl" write "$file" 2 >/dev/null 2>&1
  run read "$file" 2
  expect_out "joined" "the added partition takes writes and reads back"
  run status "$file"
  expect_out "live partition table: 1 of 4 slots free" "status shows the free slots"
  run status --json "$file"
  expect_out '"live_table":true,"table_slots":4,"free_slots":1' "status --json shows the live table"
  run add --size 64K --id 2 "$file"
  expect_status 1 "add of an existing id"
  expect_err "partition 2 exists" "add names the existing id"
  run add --size 64M "$file"
  expect_status 1 "add of more than is free"
  expect_err "no free extent holds 64 MiB" "add says what does not fit"
  run add "$file"
  expect_status 2 "add without --size"
  run remove --id 2 "$file"
  expect_status 0 "remove --id 2"
  run read "$file" 2
  expect_status 1 "read of a removed partition"
  expect_err "no partition 2" "a removed partition is gone"
  run add --size 64K --ring "$file"
  expect_status 0 "add again after the removal"
  expect_out "at offset $first_offset;" "the removed partition's space is reused"
  run read "$file" 2
  if [ "$status" = 0 ] && [ ! -s "$out" ]; then
    pass "the new partition starts empty"
  else
    fail "the new partition starts empty" "exit $status" "stdout: $(head -c 100 "$out")"
  fi
  run remove --id 9 "$file"
  expect_status 1 "remove of a missing id"
  next_file
  run format --size 1M --partitions 2 "$file"
  run add --size 64K "$file"
  expect_status 1 "add to a fixed table"
  expect_err "format it with --slots" "add to a fixed table says how to get a live one"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
