# SPDX-License-Identifier: GPL-2.0
# ivshmem-doorbell as the second device (/dev/ivshm1): MSI-X reported, the
# vector count, IVPosition = the id the server gave, the region readable.
# With OTHER (the other guest's id, both running): the interrupt interface's
# argument checks, each guest rings the other's vector 1 and wakes on its own,
# and no interrupt arrives while idle.
# Arguments: PEER_ID VECTORS SEED [OTHER]
. /scenarios/common.sh
ID=$1 VEC=$2 SEED=$3 OTHER=${4:-}
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
finish
