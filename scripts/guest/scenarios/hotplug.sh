# SPDX-License-Identifier: GPL-2.0
# Hot-plug phase of vm0 and vm1 (see hotplug.sh of the harness). Arguments:
# ME BINLEN. The guest has the two pieces of a split region (its own
# read-write); it mounts them by discovery, writes its text, says
# IVSHM-READY mounted, then waits for the host to hot-plug piece 2: the
# driver must probe the new device (a new /dev/ivshmN), and the running
# daemon must show vm2 without a remount (readdir, lookup, .status,
# follow/vm2) and read the host's text and binary data in it.
. /scenarios/common.sh
ME=$1 BINLEN=$2
M=/mnt/ivshm

devices() { ls /dev/ivshm* 2>/dev/null | wc -l; }
info "devices before: $(ls /dev/ivshm* 2>/dev/null | tr '\n' ' ')"
if ivshmfs -o id="$ME" $M > /tmp/ivshmfs.log 2>&1 && wait_until 10 is_mounted $M; then
	pass "mount-ivshmfs-discovery vm$ME"
else
	fail "mount-ivshmfs-discovery $(tail -n 5 /tmp/ivshmfs.log | tr '\n' ' ')"
	finish
fi
check "two-files-before" test "$(ls $M | grep -c '^vm[0-9]')" = 2
check "no-vm2-before" test ! -e $M/vm2
echo "hello from vm$ME" >> $M/vm$ME
before=$(devices)
echo "IVSHM-READY mounted"

# The host hot-plugs piece 2 (readonly for us) once both guests are here.
more_devices() { [ "$(devices)" -gt "$before" ]; }
if wait_until 200 more_devices; then
	pass "hotplugged-device-probed $(ls /dev/ivshm* | tr '\n' ' ')"
else
	fail "hotplugged-device-probed: no new /dev/ivshmN; $(dmesg | grep -i -e ivshm -e pci | tail -n 5 | tr '\n' ' ')"
	finish
fi
dmesg | grep -i ivshm | tail -n 3 | sed 's/^/IVSHM-INFO dmesg: /'
# The host wrote into piece 2 before plugging it in: the whole content is there.
want=$( (echo "hello from the new piece"; ivshm-test gen 102 "$BINLEN") | wc -c)
want_sha=$( (echo "hello from the new piece"; ivshm-test gen 102 "$BINLEN") | sha256sum | cut -d' ' -f1)
if wait_until 30 has_size $M/vm2 "$want"; then
	pass "vm2-shown-without-remount"
else
	fail "vm2-shown-without-remount: $(ls $M | tr '\n' ' '); $(tail -n 5 /tmp/ivshmfs.log | tr '\n' ' ')"
	finish
fi
check "readdir-lists-vm2" sh -c "ls $M | grep -qx vm2"
check "follow-lists-vm2" sh -c "ls $M/follow | grep -qx vm2"
check "status-shows-vm2" grep -q 'partition id=2 file=vm2' $M/.status
check "read-vm2-text" test "$(head -n 1 $M/vm2)" = "hello from the new piece"
check "read-vm2-binary-sha256" test "$(prefix_sha $M/vm2 "$want")" = "$want_sha"
check "vm2-read-only-here" sh -c "! echo x >> $M/vm2"
check "own-file-still-written" grep -q "hello from vm$ME" $M/vm$ME
umount $M 2>/dev/null || umount -l $M
finish
