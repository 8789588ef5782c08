# SPDX-License-Identifier: GPL-2.0
# The page cache under load in a guest (run-e2e.sh --mode cache): while the
# host appends to its partition (peer HOSTID) and now and then empties it,
# this guest, for SECONDS seconds, in three loops at once: appends to its
# own file, reads it back through the cache and empties it now and then;
# twice, reads the host's file with cat, stat, grep and a shared mapping.
# A step that takes longer than 60 s is a hang: the guest dumps what every
# task waits for and fails.
# Arguments: HOSTID SECONDS [MOUNT_OPTIONS]
. /scenarios/common.sh
HOSTID=$1 SECS=$2 OPT=${3:-}
OPTS=${OPT:+-o $OPT}
ME=$(hostname | sed 's/^vm//')
M=/mnt/ivshm
B=60

mount_fs() {
	# shellcheck disable=SC2086
	ivshmfs $OPTS /dev/ivshm0 $M > /tmp/ivshmfs.log 2>&1 && wait_until 10 is_mounted $M
}
if mount_fs; then
	pass "mount-ivshmfs vm$ME"
else
	fail "mount-ivshmfs $(tail -n 5 /tmp/ivshmfs.log | tr '\n' ' ')"
	finish
fi

# A file of whole lines "N:xxxxxxxx" (the host's, or ours): any other byte is
# something that was never written (zeros from a stale page, a torn read).
well_formed() { ! tr -d '0-9:x\n' < "$1" | grep -q .; }
# Each loop notes the step it starts in /tmp/hb-LOOP (shell builtins only:
# a step costs its command's fork); the watchdog below dumps what every
# task waits for when a step takes longer than B seconds.
now() { read -r _up _rest < /proc/uptime; echo "${_up%.*}"; }
# step NAME COMMAND...: a failure is reported once per name.
step() {
	_n=$1
	shift
	read -r _up _rest < /proc/uptime
	echo "${_up%.*} $_n" > "/tmp/hb-$LOOP"
	if ! "$@" > /dev/null 2>/tmp/step-$LOOP.err; then
		# A read racing a peer's reset may fail with ESTALE (documented).
		grep -q 'Stale file handle' /tmp/step-$LOOP.err && return 0
		[ -e "/tmp/failed-$_n" ] || fail "$_n $(tail -n 2 /tmp/step-$LOOP.err | tr '\n' ' ')"
		: > "/tmp/failed-$_n"
		return 1
	fi
	return 0
}

end=$(($(now) + SECS))
running() { [ "$(now)" -lt "$end" ] && [ ! -e /tmp/hung ]; }

own_loop() {
	LOOP=own i=0
	while running; do
		i=$((i + 1))
		if [ $((i % 25)) = 0 ]; then
			step own-reset sh -c ": > $M/vm$ME"
			step own-empty test "$(stat -c %s $M/vm$ME)" = 0
		fi
		step own-append sh -c "echo $i:xxxxxxxx >> $M/vm$ME" || continue
		step own-cat cat $M/vm$ME
		step own-tail sh -c "tail -n 1 $M/vm$ME | grep -qx '$i:xxxxxxxx'"
		step own-well-formed well_formed $M/vm$ME
	done
	rm -f /tmp/hb-$LOOP
	info "own loop: $i appends"
}
peer_loop() {
	LOOP=peer$1 j=0
	while running; do
		j=$((j + 1))
		step peer-cat cat $M/vm$HOSTID
		step peer-well-formed well_formed $M/vm$HOSTID
		step peer-grep sh -c "grep -c x $M/vm$HOSTID; [ \$? -le 1 ]"
		step peer-stat stat -c %s $M/vm$HOSTID
		# -o direct_io: no mmap (ENODEV).
		[ "$OPT" = direct_io ] || step peer-mmap ivshm-test mapcat $M/vm$HOSTID
		step peer-head head -c 100 $M/vm$HOSTID
	done
	rm -f /tmp/hb-$LOOP
	info "peer loop $1: $j rounds"
}
own_loop &
p1=$!
peer_loop 1 &
p2=$!
peer_loop 2 &
p3=$!
# The watchdog: a step running longer than B seconds is a hang.
while kill -0 $p1 2>/dev/null || kill -0 $p2 2>/dev/null || kill -0 $p3 2>/dev/null; do
	sleep 2
	t=$(now)
	for hb in /tmp/hb-*; do
		[ -e "$hb" ] || continue
		since= name=
		read -r since name < "$hb"
		# Empty while its loop rewrites it.
		[ -n "$since" ] || continue
		if [ $((t - since)) -gt $B ]; then
			fail "$name (loop ${hb#/tmp/hb-}) still running after $((t - since)) s"
			: > /tmp/hung
			hang_dump "$name (loop ${hb#/tmp/hb-}) hangs" > /dev/console 2>&1
			finish
		fi
	done
done
grep -v ' debug: ' /tmp/ivshmfs.log | tail -n 20 | sed 's/^/IVSHM-INFO ivshmfs: /'
FAILS=$(ls /tmp/failed-* 2>/dev/null | wc -l)
[ "$FAILS" -eq 0 ] && pass "cache-under-load $SECS s"
is_mounted $M && check umount bounded $B umount umount $M
finish
