# SPDX-License-Identifier: GPL-2.0
# ivshmem-doorbell as the second device (/dev/ivshm1): MSI-X reported, the
# vector count, IVPosition = the id the server gave, the region readable.
# With OTHER (the other guest's id, both running): the interrupt interface's
# argument checks, each guest rings the other's vector 1 and wakes on its own,
# and no interrupt arrives while idle. Then ivshmfs on the doorbell device in
# both guests (ids from IVPosition): the guest with the higher id sends
# PINGS messages, each after QUIET_MS of quiet, to a follow/ reader in the
# other, which answers; first with doorbells, then with -o nodoorbell
# (polling). Latencies are printed as IVSHM-BENCH lines; a parked follow/
# reader gets no interrupt while nothing is written.
# With HOST (the partition id of an ivshmfs mount on the host, a client of
# the same server with -o server=), the pinging guest then pings the host the
# same way in each round: it asks the host for the mount on the console
# ("IVSHM-HOST ROUND mount", the driver mounts with -o server= for the
# doorbell round and without it, polling the guest, for the poll round), the
# host's echo answers, and the doorbell round checks that the host's replies
# woke this guest by doorbell (.status, /proc/interrupts); the driver checks
# that the guest's pings woke the host by eventfd.
# Arguments: PEER_ID VECTORS SEED [OTHER [PINGS QUIET_MS [HOST]]]
. /scenarios/common.sh
ID=$1 VEC=$2 SEED=$3 OTHER=${4:-} PINGS=${5:-20} QUIET=${6:-300} HOST=${7:-}
DEV=/dev/ivshm1 SYS=/sys/class/misc/ivshm1
check doorbell-devnode test -c $DEV
INFO=$(ivshm-test info $DEV 2>&1)
info "$INFO"
check doorbell-ioctl-flags-msix sh -c "echo '$INFO' | grep -q ' msix=1 '"
check doorbell-ioctl-vectors sh -c "echo '$INFO' | grep -q 'vectors=$VEC '"
check doorbell-ioctl-ivposition sh -c "echo '$INFO' | grep -q 'ivposition=$ID '"
check doorbell-sysfs-msix test "$(cat $SYS/msix)" = 1
check doorbell-sysfs-vectors test "$(cat $SYS/vectors)" = "$VEC"
check doorbell-sysfs-ivposition test "$(cat $SYS/ivposition)" = "$ID"
# From 4096: the selftest of the other guest writes a byte at offset 64.
check doorbell-region ivshm-test check $DEV 4096 61440 "$SEED"
check plain-still-plain test "$(cat /sys/class/misc/ivshm0/msix)" = 0
check doorbell-ioctl-interrupts sh -c "echo '$INFO' | grep -q ' doorbell=1 '"
# /proc/interrupts: the count of the line named ivshm1-V (summed over CPUs).
irqs() { awk -v n="ivshm1-$1" '$NF == n { s = 0; for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print s }' /proc/interrupts; }
check doorbell-irqs-requested sh -c "grep -q 'ivshm1-0\$' /proc/interrupts && grep -q 'ivshm1-1\$' /proc/interrupts"
if [ -n "$OTHER" ]; then
	out=$(ivshm-test selftest $DEV 2>&1) && pass doorbell-selftest || fail doorbell-selftest "$(echo "$out" | grep FAIL | tr '\n' ' ')"
	echo "$out" | sed 's/^/IVSHM-INFO /'
	before=$(irqs 1)
	out=$(ivshm-test pingpong $DEV "$ID" "$OTHER" 1048576 150 2>&1) && pass "doorbell-ring-and-wake" || fail "doorbell-ring-and-wake $(echo "$out" | tr '\n' ' ')"
	echo "$out" | sed 's/^/IVSHM-INFO /'
	after=$(irqs 1)
	info "ivshm1-1 interrupts: $before before, $after after the ring"
	check doorbell-irq-counted test "$after" -gt "$before"
	# Idle: nobody rings any more (the other guest stops once it saw our
	# answer, at most 0.2 s later), so no interrupt may arrive.
	sleep 1
	i0=$(irqs 0) i1=$(irqs 1)
	sleep 3
	info "idle 3 s: ivshm1-0 $i0 -> $(irqs 0), ivshm1-1 $i1 -> $(irqs 1)"
	check doorbell-idle-no-interrupts test "$(irqs 0)/$(irqs 1)" = "$i0/$i1"
fi
dmesg | grep ivshm | sed 's/^/IVSHM-INFO dmesg: /'
# Alone (the restarted guest): a reader blocked in read() when the device is
# unbound wakes with ENODEV; ringing ourselves wakes a reader.
if [ -z "$OTHER" ]; then
	ivshm-test waitread $DEV > /tmp/wr.out 2>&1 &
	WR=$!
	wait_until 10 grep -q waiting /tmp/wr.out
	check doorbell-ring-self ivshm-test ring $DEV "$ID" 0
	wait $WR
	check doorbell-self-ring-wakes-reader grep -q '^counter [1-9]' /tmp/wr.out
	ivshm-test waitread $DEV > /tmp/wr.out 2>&1 &
	WR=$!
	wait_until 10 grep -q waiting /tmp/wr.out
	BDF=$(ivshm_bdf 1)
	check doorbell-unbind-with-reader sh -c "echo $BDF > /sys/bus/pci/drivers/ivshm/unbind"
	wait $WR
	check doorbell-unbind-wakes-reader-enodev grep -q '^ENODEV' /tmp/wr.out
	check doorbell-rebind sh -c "echo $BDF > /sys/bus/pci/drivers/ivshm/bind"
	check doorbell-devnode-back wait_until 10 test -c $DEV
	check doorbell-irqs-after-rebind sh -c "grep -q 'ivshm1-0\$' /proc/interrupts"
fi
# ---- ivshmfs over the doorbell device ----
MNT=/mnt/ivshm
# fs_mount TAG [OPTIONS]: mount, with the daemon's start-up lines in /tmp/fs-TAG.log
fs_mount() {
	_tag=$1
	shift
	if ivshmfs "$@" $DEV $MNT > /tmp/fs-$_tag.log 2>&1 && wait_until 10 is_mounted $MNT; then
		pass "fs-mount-$_tag"
	else
		fail "fs-mount-$_tag $(tail -n 3 /tmp/fs-$_tag.log | tr '\n' ' ')"
		return 1
	fi
	sed "s/^/IVSHM-INFO fs-$_tag: /" /tmp/fs-$_tag.log
}
fs_umount() { umount $MNT || umount -l $MNT; }
# host_alive 0|1: partition HOST's claim is (1) or is not (0) held by a live owner.
host_alive() {
	if [ "$1" = 1 ]; then
		grep -q "^partition id=$HOST .* claimed=1 alive=1 " $MNT/.status
	else
		! grep -q "^partition id=$HOST .* claimed=1 alive=1 " $MNT/.status
	fi
}
# announces ID: this mount's control block says a reader waits for partition
# ID (the announced= mask of .status's wakeups line has its bit).
announces() {
	_m=$(sed -n 's/^wakeups .* announced=\(0x[0-9a-f]*\).*/\1/p' $MNT/.status)
	[ -n "$_m" ] && [ $((_m >> $1 & 1)) = 1 ]
}
# doorbell_wakes: the doorbells= counter of this mount's change source.
doorbell_wakes() { sed -n 's/^wakeups .* doorbells=\([0-9]*\) .*/\1/p' $MNT/.status; }
# ping_host ROUND: ping the host's mount (partition HOST), which echoes.
ping_host() {
	_round=$1
	echo "IVSHM-HOST $_round mount"
	if ! wait_until 120 host_alive 1; then
		fail "fs-host-$_round-mounted (no live owner of partition $HOST)"
		return 1
	fi
	pass "fs-host-$_round-mounted"
	if [ "$_round" = doorbell ]; then
		# The host rings us when it commits while we wait for its partition.
		# A ping's reply may land before this (emulated) guest announced
		# that it waits, and is then found by the look after the
		# announcement, unrung. So first a reader parks on follow/, this
		# mount announces it (.status), and only then the host is asked for
		# a reply: that commit must ring our vector 0.
		_d0=$(doorbell_wakes) _i0=$(irqs 0)
		cat $MNT/follow/vm$HOST > /tmp/parked.out 2>&1 &
		_cat=$!
		check fs-host-doorbell-announced wait_until 20 announces $HOST
		printf 'ping hg-%s-parked\n' "$_round" >> $MNT/vm$ID
		check fs-host-doorbell-reply wait_until 30 grep -q "^pong hg-$_round-parked\$" /tmp/parked.out
		kill $_cat 2>/dev/null
		wait $_cat 2>/dev/null
		info "host reply to a parked reader: doorbells $_d0 -> $(doorbell_wakes), ivshm1-0 interrupts $_i0 -> $(irqs 0)"
		check fs-host-doorbell-woke-guest test "$(doorbell_wakes)" -gt "$_d0"
		check fs-host-doorbell-interrupted test "$(irqs 0)" -gt "$_i0"
	fi
	_d0=$(doorbell_wakes) _i0=$(irqs 0)
	_out=$(ivshm-test ping $MNT/vm$ID $MNT/follow/vm$HOST "hg-$_round" "$PINGS" "$QUIET" 2>&1) &&
		pass "fs-host-$_round-ping" || fail "fs-host-$_round-ping $_out"
	echo "$_out" | sed "s/^/IVSHM-BENCH host-guest /"
	info "host $_round pings: doorbells $_d0 -> $(doorbell_wakes), ivshm1-0 interrupts $_i0 -> $(irqs 0)"
	# The host unmounts once its echo ended: the next round's mount must
	# not find this one.
	check "fs-host-$_round-released" wait_until 60 host_alive 0
}
if [ -n "$OTHER" ] && command -v ivshmfs >/dev/null && command -v ivshmctl >/dev/null; then
	mkdir -p $MNT
	# The other guest may still look at its pingpong slot for 0.2 s.
	sleep 1
	if [ "$ID" -lt "$OTHER" ]; then
		check fs-format ivshmctl format --force --partitions $((OTHER + 1)) $DEV
	else
		check fs-formatted wait_until 60 ivshmctl status $DEV
	fi
	for round in doorbell poll; do
		opts=
		[ $round = poll ] && opts="-o nodoorbell"
		# shellcheck disable=SC2086
		fs_mount $round $opts || break
		check "fs-$round-id-from-ivposition" grep -q "peer id $ID (from IVPosition register)" /tmp/fs-$round.log
		if [ $round = doorbell ]; then
			check fs-doorbell-wakeups grep -q "wake-ups: doorbells" /tmp/fs-$round.log
		else
			check fs-poll-wakeups grep -q "wake-ups: polling .*-o nodoorbell" /tmp/fs-$round.log
		fi
		if [ "$ID" -lt "$OTHER" ]; then
			check "fs-$round-echo" ivshm-test echo $MNT/follow/vm$OTHER $MNT/vm$ID $round
		else
			i0=$(irqs 0)
			out=$(ivshm-test ping $MNT/vm$ID $MNT/follow/vm$OTHER $round "$PINGS" "$QUIET" 2>&1) &&
				pass "fs-$round-ping" || fail "fs-$round-ping $out"
			echo "$out" | sed "s/^/IVSHM-BENCH guest-guest /"
			info "ivshm1-0 interrupts during the $round pings: $i0 -> $(irqs 0)"
			if [ $round = doorbell ]; then
				check fs-doorbell-interrupted test "$(irqs 0)" -gt "$i0"
				# Idle: a follow/ reader parked on the other's partition, the
				# other writes nothing: no interrupt arrives.
				cat $MNT/follow/vm$OTHER > /dev/null &
				CAT=$!
				sleep 1
				i0=$(irqs 0)
				sleep 3
				info "idle 3 s with a parked follow/ reader: ivshm1-0 $i0 -> $(irqs 0)"
				check fs-idle-reader-no-interrupts test "$(irqs 0)" = "$i0"
				kill $CAT 2>/dev/null
				wait $CAT 2>/dev/null
			fi
			[ -n "$HOST" ] && ping_host $round
		fi
		# Why the change source's waits ended (doorbell, kick, timeout).
		sed -n "s/^wakeups /IVSHM-INFO fs-$round wakeups: /p" $MNT/.status
		fs_umount
	done
fi
dmesg | grep -E 'BUG:|Oops|WARNING:|general protection' | sed 's/^/IVSHM-INFO dmesg: /'
# Case-sensitive: "..MP-BIOS bug: 8254 timer ..." is a firmware note under TCG.
check no-kernel-warnings sh -c "! dmesg | grep -qE 'BUG:|Oops|WARNING:|general protection'"
finish
