# SPDX-License-Identifier: GPL-2.0
# A second guest configured with an id whose owner is alive (same hostname
# as a running guest): its daemon must refuse to start, with a clear message.
. /scenarios/common.sh
M=/mnt/ivshm
ivshmfs /dev/ivshm0 $M > /tmp/ivshmfs.log 2>&1
rc=$?
msg=$(tr '\n' ' ' < /tmp/ivshmfs.log)
info "ivshmfs exit status $rc: $msg"
if [ $rc -ne 0 ] && ! is_mounted $M && [ -n "$msg" ]; then
	pass "duplicate-id-refused: $msg"
else
	fail "duplicate-id-refused rc=$rc mounted=$(is_mounted $M && echo yes || echo no) $msg"
	umount $M 2>/dev/null
fi
finish
