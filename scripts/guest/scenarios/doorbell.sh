# SPDX-License-Identifier: GPL-2.0
# ivshmem-doorbell as the second device (/dev/ivshm1): MSI-X reported, the
# vector count, IVPosition = the id the server gave, the region readable.
# Arguments: PEER_ID VECTORS SEED
. /scenarios/common.sh
ID=$1 VEC=$2 SEED=$3
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
check doorbell-region ivshm-test check $DEV 0 65536 "$SEED"
check plain-still-plain test "$(cat /sys/class/misc/ivshm0/msix)" = 0
dmesg | grep ivshm | sed 's/^/IVSHM-INFO dmesg: /'
finish
