#!/bin/sh
# SPDX-License-Identifier: MIT
# Writes and reads through two ivshmfs mounts with ordinary shell tools, the
# way a user would. Usage: roundtrip.sh PATH/TO/ivshmfs. Exit 77 = skipped.
set -eu

bin=$1
skip() { echo "skipped: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root"
[ -w /dev/fuse ] || skip "/dev/fuse is not usable"
command -v fusermount3 >/dev/null || skip "fusermount3 is not installed (Debian package fuse3)"

tag=ivshmfs-sh-$$
region=/dev/shm/$tag
a=$(mktemp -d "/tmp/$tag-a.XXXXXX")
b=$(mktemp -d "/tmp/$tag-b.XXXXXX")
work=$(mktemp -d "/tmp/$tag-work.XXXXXX")
follower=
cleanup() {
	[ -n "$follower" ] && kill "$follower" 2>/dev/null || true
	for m in "$a" "$b"; do
		fusermount3 -u -q "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		rmdir "$m" 2>/dev/null || true
	done
	rm -rf "$work" "$region"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
# Waits (up to 30 s) until a command succeeds: only for "eventually" facts.
eventually() {
	i=0
	until "$@"; do
		i=$((i + 1))
		[ "$i" -lt 300 ] || return 1
		sleep 0.1
	done
}

"$bin" -o create,size=4M,partitions=2,id=0,poll_max_ms=20 "$region" "$a" || fail "mount as vm0"
"$bin" -o id=1,poll_max_ms=20 "$region" "$b" || fail "mount as vm1"

echo hello >> "$a/vm0"
[ "$(cat "$b/vm0")" = hello ] || fail "vm1 does not see vm0's append"
echo world >> "$a/vm0"
[ "$(cat "$b/vm0")" = "hello
world" ] || fail "second append"
echo replaced > "$a/vm0"
[ "$(cat "$b/vm0")" = replaced ] || fail "> did not reset the partition"
[ "$(stat -c %s "$b/vm0")" = 9 ] || fail "size seen by vm1: $(stat -c %s "$b/vm0")"

# Binary data through dd and cmp.
head -c 300000 /dev/urandom > "$work/data"
: > "$a/vm0"
dd if="$work/data" of="$a/vm0" bs=64k oflag=append conv=notrunc status=none
cmp "$work/data" "$b/vm0" || fail "binary data differs"

# Another peer's file is read-only, even for root.
if (echo nope >> "$a/vm1") 2>/dev/null; then fail "vm0 wrote into vm1"; fi
if rm "$a/vm0" 2>/dev/null; then fail "rm vm0 succeeded"; fi

# .status for grep and awk; xattrs where getfattr exists.
grep -q '^partition id=0 .* alive=1 ' "$b/.status" || fail ".status: vm0 not alive"
len=$(awk '$1 == "partition" && $2 == "id=0" { for (i = 3; i <= NF; i++) if ($i ~ /^length=/) { sub("length=", "", $i); print $i } }' "$b/.status")
[ "$len" = 300000 ] || fail ".status length=$len"
[ "$(ls "$a" | tr '\n' ' ')" = "follow vm0 vm1 " ] || fail "ls shows: $(ls "$a")"

# tail -f style streaming through follow/.
cat "$a/follow/vm1" > "$work/followed" &
follower=$!
printf 'one\n' >> "$b/vm1"
eventually grep -q '^one$' "$work/followed" || fail "follow/vm1 did not stream 'one'"
printf 'two\n' >> "$b/vm1"
eventually grep -q '^two$' "$work/followed" || fail "follow/vm1 did not stream 'two'"
kill "$follower"
wait "$follower" 2>/dev/null || true
follower=

# Plain tail -f on the peer's file (it polls the size, as on any FUSE file
# system): appends show up, and a reset is reported as a truncation.
tail -f "$a/vm1" > "$work/tailed" 2> "$work/tail.err" &
follower=$!
eventually [ -e "$work/tailed" ]
printf 'three\n' >> "$b/vm1"
eventually grep -q '^three$' "$work/tailed" || fail "tail -f vm1 did not show 'three'"
printf 'anew\n' > "$b/vm1"
eventually grep -q 'truncated' "$work/tail.err" || fail "tail -f did not report the reset as a truncation"
eventually grep -q '^anew$' "$work/tailed" || fail "tail -f vm1 did not show 'anew' after the reset"
kill "$follower"
wait "$follower" 2>/dev/null || true
follower=

fusermount3 -u "$a"
fusermount3 -u "$b"
echo "ok: shell round trip through two mounts"
