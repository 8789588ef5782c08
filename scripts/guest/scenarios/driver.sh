# SPDX-License-Identifier: GPL-2.0
# Driver checks: probe, ioctl, sysfs, mmap argument checks, data exchange with
# the host file, cacheable memtype, unbind/rmmod with a live mapping.
# Arguments: HOST_OFF HOST_LEN HOST_SEED GUEST_OFF GUEST_LEN GUEST_SEED
. /scenarios/common.sh
HOFF=$1 HLEN=$2 HSEED=$3 GOFF=$4 GLEN=$5 GSEED=$6
DEV=/dev/ivshm0

check probe test -c $DEV
BDF=$(ivshm_bdf 0)
info "bdf=$BDF"
dmesg | grep -E 'ivshm' | sed 's/^/IVSHM-INFO dmesg: /'
check probe-message sh -c "dmesg | grep -q 'ivshm0: BAR2 [0-9]* bytes'"

INFO=$(ivshm-test info $DEV) && pass ioctl-info || fail ioctl-info "$INFO"
info "$INFO"
SYS=/sys/class/misc/ivshm0
for f in bar2_size ivposition revision vectors minor; do
	v=$(cat $SYS/$f 2>&1)
	case " $INFO " in
	*" $f=$v "*) pass "sysfs-$f=$v" ;;
	*) fail "sysfs-$f $v does not match ioctl: $INFO" ;;
	esac
done
check sysfs-msix test "$(cat $SYS/msix)" = 0
# A 16 MiB BAR2 gets struct pages, and the ioctl says so (the daemon relies on it).
check ioctl-flag-pages sh -c "echo '$INFO' | grep -q ' pages=1 '"
check ioctl-info-version sh -c "echo '$INFO' | grep -q ' info_version=1'"
check sysfs-size-is-bar2 test "$(cat $SYS/bar2_size)" = "$(stat -c %s /sys/bus/pci/devices/$BDF/resource2)"
check sysfs-readonly sh -c "! echo 1 > $SYS/bar2_size"

out=$(ivshm-test selftest $DEV 2>&1) && pass mmap-selftest || fail mmap-selftest "$(echo "$out" | grep FAIL | tr '\n' ' ')"
echo "$out" | sed 's/^/IVSHM-INFO /'

check read-host-pattern-devivshm ivshm-test check $DEV "$HOFF" "$HLEN" "$HSEED"
check write-guest-pattern ivshm-test fill $DEV "$GOFF" "$GLEN" "$GSEED"
# With CONFIG_IO_STRICT_DEVMEM a region claimed by a driver cannot be mapped
# through sysfs: resource2 is for guests without ivshm bound.
check resource2-exclusive-while-bound sh -c "! ivshm-test check /sys/bus/pci/devices/$BDF/resource2 $GOFF $GLEN $GSEED"

# The PAT memtype the kernel recorded for BAR2 (what user PTEs inherit).
START=$(awk 'NR == 3 {print $1; exit}' /sys/bus/pci/devices/$BDF/resource | sed 's/^0x0*//')
MT=$(grep -i "$START" /sys/kernel/debug/x86/pat_memtype_list 2>/dev/null | head -n 3 | tr '\n' ' ')
info "BAR2 at 0x$START memtype: ${MT:-unknown}"
info "mtrr: $(tr '\n' ';' < /proc/mtrr 2>/dev/null)"
# The driver asks for write-back; x86 PAT downgrades it to uncached-minus when
# the firmware's MTRRs mark the range uncachable (SeaBIOS does so for the PCI
# hole below 4 GiB). Either way the memtype must be a cacheable request or the
# MTRR-imposed one, never a conflict.
case "$MT" in
*write-back*|*uncached-minus*) pass "memtype-recorded $(echo "$MT" | grep -o 'write-back\|uncached-minus')" ;;
*) fail memtype-recorded "$MT" ;;
esac

# Unbind and rmmod with a live mapping.
ivshm-test hold $DEV "$HOFF" "$HLEN" "$HSEED" > /tmp/hold.out 2>&1 &
HOLD=$!
if wait_until 20 grep -q waiting /tmp/hold.out; then pass hold-mapping; else fail hold-mapping "$(cat /tmp/hold.out)"; fi
check rmmod-busy-while-mapped sh -c '! rmmod ivshm'
check unbind-while-mapped sh -c "echo $BDF > /sys/bus/pci/drivers/ivshm/unbind"
check devnode-gone sh -c "wait_dev() { for i in 1 2 3 4 5 6 7 8 9 10; do [ -e $DEV ] || return 0; sleep 0.1; done; return 1; }; wait_dev"
check rmmod-busy-after-unbind sh -c '! rmmod ivshm'
check read-host-pattern-resource2 ivshm-test check /sys/bus/pci/devices/$BDF/resource2 "$HOFF" "$HLEN" "$HSEED"
check read-guest-pattern-resource2 ivshm-test check /sys/bus/pci/devices/$BDF/resource2 "$GOFF" "$GLEN" "$GSEED"
kill -USR1 $HOLD
wait $HOLD
rc=$?
cat /tmp/hold.out | sed 's/^/IVSHM-INFO /'
if [ $rc -eq 0 ]; then pass mapping-revoked-sigbus; else fail mapping-revoked-sigbus "rc=$rc"; fi
check rebind sh -c "echo $BDF > /sys/bus/pci/drivers/ivshm/bind && test -c $DEV"
check data-survives-rebind ivshm-test check $DEV "$HOFF" "$HLEN" "$HSEED"

# A page pinned by a pipe nobody reads (vmsplice), after its process closed
# and unmapped the device: rmmod refuses, unbind finishes in bounded time, a
# new bind refuses while the pin lasts, and all say why in the kernel log.
ivshm-test pin $DEV "$HOFF" > /tmp/pin.out 2>&1 &
PIN=$!
if wait_until 20 grep -q waiting /tmp/pin.out; then pass pin-page; else fail pin-page "$(cat /tmp/pin.out)"; fi
check pin-watch-says-why sh -c "dmesg | grep -q 'still pinned after the last close of /dev/ivshm0'"
T0=$(date +%s)
check rmmod-refused-while-pinned sh -c '! timeout 30 rmmod ivshm'
check rmmod-refusal-bounded test $(($(date +%s) - T0)) -le 10
T0=$(date +%s)
check unbind-while-pinned timeout 60 sh -c "echo $BDF > /sys/bus/pci/drivers/ivshm/unbind"
T1=$(date +%s)
info "unbind with a pinned page took $((T1 - T0)) s"
check unbind-bounded test $((T1 - T0)) -le 15
check unbind-pinned-says-why sh -c "dmesg | grep -q 'unbound with 1 page(s) of BAR2 still pinned'"
check devnode-gone-while-pinned sh -c "! test -e $DEV"
check rmmod-refused-after-unbind-while-pinned sh -c '! timeout 30 rmmod ivshm'
check bind-refused-while-pinned sh -c "! timeout 30 sh -c 'echo $BDF > /sys/bus/pci/drivers/ivshm/bind'"
check bind-refusal-says-why sh -c "dmesg | grep -q 'pages of the previous binding are still pinned'"
kill -USR1 $PIN
wait $PIN
rc=$?
cat /tmp/pin.out | sed 's/^/IVSHM-INFO /'
check pin-released-by-process test $rc -eq 0
check pin-watch-releases wait_until 20 sh -c "dmesg | grep -q 'pinned pages of BAR2 released after .*can be bound again'"
check bind-after-pin-released sh -c "echo $BDF > /sys/bus/pci/drivers/ivshm/bind && test -c $DEV"
check data-survives-pin ivshm-test check $DEV "$HOFF" "$HLEN" "$HSEED"
check rmmod rmmod ivshm
check insmod-again insmod /lib/modules/ivshm.ko
check devnode-back test -c $DEV
check data-survives-reload ivshm-test check $DEV "$GOFF" "$GLEN" "$GSEED"
# A second, small device: /dev/ivshm1 in probe order, mapped without struct
# pages (BAR2 below 2 MiB).
check second-device test -c /dev/ivshm1
check second-device-minor test "$(cat /sys/class/misc/ivshm1/minor)" = 1
check second-device-size test "$(cat /sys/class/misc/ivshm1/bar2_size)" = 1048576
check small-bar-no-pages-flag sh -c "ivshm-test info /dev/ivshm1 | grep -q ' pages=0 '"
out=$(ivshm-test selftest /dev/ivshm1 2>&1) && pass small-bar-selftest || fail small-bar-selftest "$(echo "$out" | grep FAIL | tr '\n' ' ')"
# ivshmfs on it: without struct pages (the ioctl says so) the daemon must copy
# its own reads through a buffer; replying from the mapping fails with EFAULT.
if command -v ivshmfs >/dev/null && command -v ivshmctl >/dev/null; then
	mkdir -p /mnt/small
	# Every step bounded: a step that hangs fails here, naming itself, with
	# the daemon's log and what every task waits for (hang_dump), instead of
	# the whole guest timing out.
	if bounded 60 small-bar-format ivshmctl format --force --partitions 2 /dev/ivshm1 > /tmp/fmt1.log 2>&1 &&
	   bounded 60 small-bar-mount ivshmfs -o id=0 /dev/ivshm1 /mnt/small > /tmp/fs1.log 2>&1 && wait_until 10 is_mounted /mnt/small; then
		check small-bar-ivshmfs-append bounded 60 small-bar-append sh -c 'echo small-bar-own-read >> /mnt/small/vm0'
		check small-bar-ivshmfs-own-read test "$(bounded 60 small-bar-own-read cat /mnt/small/vm0)" = small-bar-own-read
		check small-bar-ivshmfs-umount bounded 60 small-bar-umount umount /mnt/small
		umount -l /mnt/small 2>/dev/null
		tail -n 5 /tmp/fs1.log | sed 's/^/IVSHM-INFO small-bar ivshmfs: /'
	else
		fail "small-bar-ivshmfs $(cat /tmp/fmt1.log /tmp/fs1.log | tail -n 5 | tr '\n' ' ')"
	fi
fi
check small-bar-write ivshm-test fill /dev/ivshm1 4096 8192 33
check small-bar-independent sh -c "! ivshm-test check $DEV 4096 8192 33"

# ivshmfs over the device, then unbind under the daemon: the daemon loses its
# mapping (SIGBUS), the kernel must stay healthy.
if command -v ivshmfs >/dev/null && command -v ivshmctl >/dev/null; then
	if ivshmctl format --force --partitions 2 $DEV > /tmp/fmt.log 2>&1 &&
	   ivshmfs -o id=0 $DEV /mnt/ivshm > /tmp/fs.log 2>&1 && wait_until 10 is_mounted /mnt/ivshm; then
		echo hello-through-ivshmfs >> /mnt/ivshm/vm0
		check ivshmfs-over-driver test "$(cat /mnt/ivshm/vm0)" = hello-through-ivshmfs
		check unbind-under-ivshmfs sh -c "echo $BDF > /sys/bus/pci/drivers/ivshm/unbind"
		sleep 2
		cat /mnt/ivshm/vm0 > /dev/null 2>&1
		umount -l /mnt/ivshm 2>/dev/null
		check rebind-after-ivshmfs sh -c "echo $BDF > /sys/bus/pci/drivers/ivshm/bind && test -c $DEV"
		check data-after-ivshmfs-unbind sh -c "ivshmctl read $DEV 0 | grep -q hello-through-ivshmfs"
	else
		fail "ivshmfs-over-driver $(cat /tmp/fmt.log /tmp/fs.log | tail -n 5 | tr '\n' ' ')"
	fi
else
	info "ivshmfs/ivshmctl not in the initramfs: skipping the unbind-under-ivshmfs check"
fi

dmesg | grep -iE 'bug|oops|warning|ivshm' | sed 's/^/IVSHM-INFO dmesg: /'
check no-kernel-warnings sh -c "! dmesg | grep -qE 'BUG:|Oops|WARNING:|general protection'"
finish
