# SPDX-License-Identifier: GPL-2.0
# Guest-to-guest transfers (issue 13) and a ring stream (issue 12), run in
# vm0 and vm1 booted together by run-e2e.sh --mode xvm (host side:
# scripts/guest/xvm.sh). First the host sends bulk to vm1 through a raw ring on
# the blank /dev/ivshm0. Then vm0 sends, vm1 receives, over: raw shared memory
# (rings on the still blank /dev/ivshm0: the floor), the library's C API on
# /dev/ivshm0 (formatted by vm0 now), TCP over virtio-net, virtiofs, 9p and
# the ivshmfs mount (and its ping-pong again with -o poll_min_us=1000). For
# each: bulk transfers of every size in SIZES and a 64-byte ping-pong of
# ROUNDS round trips. Then vm0 streams RING_MULT times a ring partition of
# RING bytes into vm0 while vm1 follows it; then the host sends bulk to vm1
# through its own mount. The peers pace each other through the control page
# of /dev/ivshm1 (ivshm-xvm barrier). Every result is an IVSHM-XVM line (the
# mount's daemon counters IVSHM-XVM-COST lines); the host checks each
# received stream's sha256 against the pattern it was sent from and prints
# the table. Steps from 1000 are shared with the host, as are the first
# ones (host -> vm1 raw). Each guest also measures its own floors (ivshm-xvm
# floors: a copy in user space and by the kernel, process and thread
# switches), alone, while the other waits. Transfers that fail print a FAIL.
# Arguments: SIZES (bytes, joined by ':') ROUNDS RING RING_MULT RAW_RING
. /scenarios/common.sh
SIZES=$(echo "$1" | tr : ' ') ROUNDS=$2 RING=$3 RING_MULT=$4
ID=$(hostname | sed "s/^vm//")
OTHER=$((1 - ID))
CTL=/dev/ivshm1 FS=/dev/ivshm0 MNT=/mnt/ivshm VFS=/mnt/vfs P9=/mnt/9p
# Raw rings on /dev/ivshm0 while it is still blank (it is formatted after
# them): one of RAW_RING bytes (the largest transfer: the writer never waits,
# as with a partition) at 0 for bulk, two of 64 KiB after it for the
# ping-pong. /dev/ivshm1 holds only the control page.
RAW_RING=$5
BULK_AB=raw:$FS:0:$RAW_RING
PING_AB=raw:$FS:$((RAW_RING + 65536)):65536 PING_BA=raw:$FS:$((RAW_RING + 262144)):65536
X=ivshm-xvm
S=0
export IVSHM_XVM_WAIT=${IVSHM_XVM_WAIT:-120}

sync_peers() { # the next step, with the other guest
	S=$((S + 1))
	$X barrier $CTL "$ID" $S $OTHER || fail "xvm-barrier-$S"
}
# run_side TAG LABEL COMMAND...: one side of a transfer; its output becomes an
# IVSHM-XVM line, a failure a FAIL line.
run_side() {
	_tag=$1 _label=$2
	shift 2
	if _res=$("$@" 2>&1); then
		echo "IVSHM-XVM $_label $(echo "$_res" | tail -n 1)"
	else
		fail "xvm-$_tag $(echo "$_res" | tail -n 3 | tr '\n' ' ')"
	fi
}
# daemon_counters: this guest's ivshmfs daemon: read and write system calls
# (a request taken from /dev/fuse, a reply; plus the few a poll makes),
# context switches of all its threads, CPU time in clock ticks (USER_HZ, 100
# on x86). Empty without
# a daemon.
daemon_counters() {
	_pid=$(pidof ivshmfs) || return 0
	_r=$(awk '/^syscr/ {print $2}' /proc/$_pid/io)
	_w=$(awk '/^syscw/ {print $2}' /proc/$_pid/io)
	_c=$(cat /proc/$_pid/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')
	_t=$(awk '{print $14 + $15}' /proc/$_pid/stat)
	echo "$_r $_w $_c $_t"
}
# cost_line LABEL BEFORE AFTER: the daemon's share of one transfer.
cost_line() {
	[ -n "$2" ] && [ -n "$3" ] || return 0
	set -- "$1" $2 $3
	echo "IVSHM-XVM-COST $1 reads=$(($6 - $2)) writes=$(($7 - $3)) ctxsw=$(($8 - $4)) ticks=$(($9 - $5))"
}
# bulk NAME OUT IN: vm0 sends every size in SIZES over OUT, vm1 reads IN.
bulk() {
	_tn=$1 _ep_out=$2 _ep_in=$3
	for size in $SIZES; do
		[ "$ID" = 0 ] && { $X prepare "$_ep_out" || fail "xvm-$_tn-prepare"; }
		sync_peers
		S=$((S + 1))
		_before=$(daemon_counters)
		if [ "$ID" = 0 ]; then
			run_side "$_tn-bulk-$size-send" "$_tn bulk size=$size seed=$S side=send" \
				$X send "$_ep_out" $CTL 0 $S 1 $S "$size"
		else
			run_side "$_tn-bulk-$size-recv" "$_tn bulk size=$size seed=$S side=recv" \
				$X recv "$_ep_in" $CTL 1 $S 0 "$size"
		fi
		cost_line "$_tn bulk size=$size vm=$ID" "$_before" "$(daemon_counters)"
	done
}
# pingpong NAME A_OUT A_IN B_IN B_OUT: vm0 pings over A_OUT and reads A_IN;
# vm1 reads B_IN and answers on B_OUT.
pingpong() {
	_tn=$1
	if [ "$ID" = 0 ]; then
		$X prepare "$2" || fail "xvm-$_tn-prepare"
	else
		$X prepare "$5" || fail "xvm-$_tn-prepare"
	fi
	sync_peers
	S=$((S + 1))
	_before=$(daemon_counters)
	if [ "$ID" = 0 ]; then
		run_side "$_tn-ping" "$_tn ping size=$(((ROUNDS + 5) * 64)) seed=$S side=ping" \
			$X ping "$2" "$3" $CTL 0 $S 1 $S "$ROUNDS"
	else
		run_side "$_tn-pong" "$_tn ping seed=$S side=pong" $X pong "$4" "$5" $CTL 1 $S 0 "$ROUNDS"
	fi
	cost_line "$_tn ping rounds=$((ROUNDS + 5)) vm=$ID" "$_before" "$(daemon_counters)"
}
fs_mount() {
	# shellcheck disable=SC2086
	if ivshmfs "$@" $FS $MNT > /tmp/fs.log 2>&1 && wait_until 10 is_mounted $MNT; then
		pass "xvm-mount $*"
	else
		fail "xvm-mount $* $(tail -n 3 /tmp/fs.log | tr '\n' ' ')"
	fi
}
fs_umount() { umount $MNT 2>/dev/null || umount -l $MNT; }

command -v $X >/dev/null || { fail "xvm: $X is not in the initramfs (build the ivshm-xvm target)"; finish; }
info "xvm: vm$ID, sizes $SIZES, $ROUNDS round trips, ring $RING x $RING_MULT"

# ---- set-up: network, virtiofs, 9p ----
mkdir -p $MNT $VFS $P9
ip link set eth0 up && ip addr add 10.9.0.$((ID + 1))/24 dev eth0 || fail "xvm-net eth0: $(ip link 2>&1 | tr '\n' ' ')"
check xvm-virtiofs-mount mount -t virtiofs xvmfs $VFS
check xvm-9p-mount mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 x9p $P9

# ---- host -> vm1 through a raw ring (steps shared with the host) ----
for size in $SIZES; do
	if [ "$ID" = 1 ]; then
		$X barrier $CTL 1 $((S + 1)) 2 || fail "xvm-barrier-host"
		S=$((S + 2))
		run_side "host-raw-$size" "host-raw bulk size=$size seed=$S side=recv" $X recv "$BULK_AB" $CTL 1 $S 2 "$size"
	else
		S=$((S + 2))
	fi
done
sync_peers

# ---- what this guest's own primitives cost (copies, process and thread
# switches): the bounds of every transport; one guest at a time ----
for g in 0 1; do
	[ "$ID" = $g ] && run_side floors "floors guest vm=$ID" $X floors
	sync_peers
done

# ---- raw shared memory: the floor ----
bulk raw "$BULK_AB" "$BULK_AB"
pingpong raw "$PING_AB" "$PING_BA" "$PING_AB" "$PING_BA"
sync_peers
if [ "$ID" = 0 ]; then
	check xvm-format ivshmctl format --force --partitions 3 $FS
fi
sync_peers
# ---- the library (C API, no FUSE) ----
bulk lib lib:$FS:0 lib:$FS:0
pingpong lib lib:$FS:0 lib:$FS:1 lib:$FS:0 lib:$FS:1
# ---- TCP over virtio-net (vm1 listens) ----
bulk tcp tcp:10.9.0.2:7001 tcp:10.9.0.2:7001
pingpong tcp tcp:10.9.0.2:7002 tcp:10.9.0.2:7002 tcp:10.9.0.2:7002 tcp:10.9.0.2:7002
# ---- virtiofs and 9p: one host directory; the reader retries at the end ----
bulk virtiofs file:$VFS/bulk tail:$VFS/bulk
pingpong virtiofs file:$VFS/ping-a tail:$VFS/ping-b tail:$VFS/ping-a file:$VFS/ping-b
bulk 9p file:$P9/bulk9 tail:$P9/bulk9
pingpong 9p file:$P9/ping9-a tail:$P9/ping9-b tail:$P9/ping9-a file:$P9/ping9-b
# ---- the ivshmfs mount: append to vmN, read follow/vmN ----
fs_mount
sync_peers
bulk mount file:$MNT/vm0 file:$MNT/follow/vm0
pingpong mount file:$MNT/vm0 file:$MNT/follow/vm1 file:$MNT/follow/vm0 file:$MNT/vm1
# Where the mount's time goes: the daemon's own counters.
cat $MNT/.status 2>/dev/null | sed "s/^/IVSHM-INFO vm$ID .status: /"
mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null
for w in /sys/fs/fuse/connections/*/waiting; do info "vm$ID fuse waiting $w: $(cat "$w")"; done
fs_umount
sync_peers
# The same ping-pong with the daemons polling at most every millisecond
# instead of every 50 µs: under TCG a 50 µs poll loop takes most of a vCPU.
fs_mount -o poll_min_us=1000
sync_peers
pingpong mount-poll1ms file:$MNT/vm0 file:$MNT/follow/vm1 file:$MNT/follow/vm0 file:$MNT/vm1
fs_umount
sync_peers

# ---- issue 12: a ring partition streamed past 10x its size ----
if [ "$ID" = 0 ]; then
	check xvm-format-ring ivshmctl format --force --partitions 3 --partition "0=$RING,ring" $FS
fi
sync_peers
fs_mount
sync_peers
S=$((S + 1))
LEN=$((RING * RING_MULT))
if [ "$ID" = 0 ]; then
	run_side ring-send "ring bulk size=$LEN seed=$S side=send" $X send file:$MNT/vm0 $CTL 0 $S 1 $S $LEN "$RING"
	info "ring after the stream: $(grep -E '^ *vm0|ring' $MNT/.status | head -n 3 | tr '\n' ' ')"
else
	run_side ring-recv "ring bulk size=$LEN seed=$S side=recv" $X recv file:$MNT/follow/vm0 $CTL 1 $S 0 $LEN
fi
sync_peers

# ---- host -> vm1 through the mount (steps from 1000 are the host's too) ----
S=1000
if [ "$ID" = 1 ]; then
	# The host mounts the region as it is now.
	$X barrier $CTL 1 $S 2 || fail "xvm-barrier-host"
	for size in $SIZES; do
		$X barrier $CTL 1 $((S + 1)) 2 || fail "xvm-barrier-host"
		S=$((S + 2))
		run_side "host-mount-$size" "host-mount bulk size=$size seed=$S side=recv" \
			$X recv file:$MNT/follow/vm2 $CTL 1 $S 2 "$size"
	done
	$X barrier $CTL 1 2000 0 2 || fail "xvm-barrier-end"
else
	$X barrier $CTL 0 2000 1 || fail "xvm-barrier-end"
fi
fs_umount
umount $VFS
umount $P9
dmesg | grep -E 'BUG:|Oops|WARNING:|general protection' | sed 's/^/IVSHM-INFO dmesg: /'
check no-kernel-warnings sh -c "! dmesg | grep -qE 'BUG:|Oops|WARNING:|general protection'"
finish
