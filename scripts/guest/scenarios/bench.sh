# SPDX-License-Identifier: GPL-2.0
# Copy bandwidth through /dev/ivshm0 (cacheable) and sysfs resource2 (uncached).
# resource2 can only be mapped while ivshm is not bound (IO_STRICT_DEVMEM), so
# the two are measured alternately, unbinding in between.
# Arguments: MIB ROUNDS
. /scenarios/common.sh
MIB=${1:-16} ROUNDS=${2:-5}
BDF=$(ivshm_bdf 0)
START=$(awk 'NR == 3 {print $1; exit}' /sys/bus/pci/devices/$BDF/resource | sed 's/^0x0*//')
info "BAR2 at 0x$START memtype: $(grep -i "$START" /sys/kernel/debug/x86/pat_memtype_list 2>/dev/null | head -n 1)"
for i in 1 2; do
	out=$(ivshm-test bench /dev/ivshm0 "$MIB" "$ROUNDS") && pass "bench-devivshm-$i" || fail "bench-devivshm-$i"
	echo "IVSHM-BENCH $out"
	echo "$BDF" > /sys/bus/pci/drivers/ivshm/unbind
	out=$(ivshm-test bench /sys/bus/pci/devices/$BDF/resource2 "$MIB" "$ROUNDS") && pass "bench-resource2-$i" || fail "bench-resource2-$i"
	echo "IVSHM-BENCH $out"
	echo "$BDF" > /sys/bus/pci/drivers/ivshm/bind
done
finish
