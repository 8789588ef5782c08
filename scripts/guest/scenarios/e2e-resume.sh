# SPDX-License-Identifier: GPL-2.0
# vm1 booted again after its QEMU was killed: everything it had committed is
# still there, and its daemon appends after it.
# Arguments: HOSTID BINLEN
. /scenarios/common.sh
HOSTID=$1 BINLEN=$2
ME=$(hostname | sed 's/^vm//')
M=/mnt/ivshm
BEFORE='committed before kill\n'

# With no backend, ivshmctl and ivshmfs pick the first ivshmem device.
check ivshmctl-status-default-backend ivshmctl status
if ivshmfs $M > /tmp/ivshmfs.log 2>&1 && wait_until 10 is_mounted $M; then
	pass "remount-ivshmfs-default-backend vm$ME"
else
	fail "remount-ivshmfs-default-backend $(tail -n 5 /tmp/ivshmfs.log | tr '\n' ' ')"
	finish
fi
check committed-data-survived-kill test "$(sha256sum < $M/vm$ME | cut -d' ' -f1)" = "$(sha_of "$ME" "$HOSTID" "$BINLEN" "$BEFORE")"
printf 'appended after reboot\n' >> $M/vm$ME
check append-after-reboot test "$(sha256sum < $M/vm$ME | cut -d' ' -f1)" = "$(sha_of "$ME" "$HOSTID" "$BINLEN" "${BEFORE}appended after reboot\n")"
ivshmctl status /dev/ivshm0 2>&1 | sed 's/^/IVSHM-INFO /'
check umount umount $M
finish
