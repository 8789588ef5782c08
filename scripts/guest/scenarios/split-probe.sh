# SPDX-License-Identifier: GPL-2.0
# Wrong QEMU options for a split region, as a guest sees them. Argument: ID.
# The guest (hostname without an id) has every piece of a split region, its
# own piece ID given readonly=on too, and the pieces of a second split region.
#   ivshmfs -o id=ID: the probe write of the own piece does not stick: a
#     clear error naming the device and readonly=on, nothing mounted.
#   ivshmfs (no id): pieces of two regions: a clear error naming both.
# Then the second region's devices and the split region's piece 2 are
# unbound from the driver (as if QEMU had not been given them):
#   ivshmfs -o id=2: its own piece missing: a clear error naming the option.
#   ivshmfs (no id): no piece takes writes (vm0's and vm1's are both
#     readonly=on here): a clear error.
. /scenarios/common.sh
ID=$1
M=/mnt/ivshm
for d in /dev/ivshm*; do
	info "$d: $(ivshmctl status --json "$d" 2>&1 | cut -c 1-160)"
done

# expect_refused NAME PATTERN OPTIONS...: ivshmfs OPTIONS fails, says PATTERN
# (a grep -E expression) and mounts nothing.
expect_refused() {
	_n=$1 _re=$2
	shift 2
	if ivshmfs "$@" $M > /tmp/ivshmfs.log 2>&1; then
		fail "$_n: ivshmfs $* succeeded"
		umount $M 2>/dev/null
		return
	fi
	sed "s/^/IVSHM-INFO $_n: /" /tmp/ivshmfs.log
	check "$_n-message" grep -Eq "$_re" /tmp/ivshmfs.log
	check "$_n-nothing-mounted" sh -c "! grep -q ' $M fuse' /proc/mounts"
}

expect_refused readonly-own-piece \
	"/dev/ivshm[0-9]+ \\(partition $ID, this VM's own piece\\) discards writes: QEMU backs it read-only; remove readonly=on" \
	-o id="$ID"
expect_refused two-regions-mixed \
	"the ivshmem devices hold pieces of two split regions: /dev/ivshm[0-9]+ .* and /dev/ivshm[0-9]+ .*give this VM the pieces of one region only"

for d in /dev/ivshm*; do
	st=$(ivshmctl status --json "$d" 2>/dev/null)
	# The other region's pieces (2 pieces), and the piece of partition 2.
	case "$st" in
	*'"split_pieces":2,'* | *'"split_pieces":3,'*'"partitions":[{"id":2,'*)
		bdf=$(ivshm_bdf "${d#/dev/ivshm}")
		echo "$bdf" > /sys/bus/pci/drivers/ivshm/unbind && info "unbound $d ($bdf)" || fail "unbind $d"
		;;
	esac
done
expect_refused own-piece-missing \
	"no ivshmem device holds partition 2 \\(this VM's own piece; found /dev/ivshm[0-9]+=vm0, /dev/ivshm[0-9]+=vm1\\): add '-object memory-backend-file,...,mem-path=PREFIX.vm2,share=on'" \
	-o id=2
expect_refused no-piece-writable \
	"no ivshmem device of the split region takes writes \\(.*\\): QEMU backs every piece read-only; remove readonly=on"
finish
