# SPDX-License-Identifier: GPL-2.0
# End-to-end phase of vm0 and vm1 (run concurrently; the host is peer HOSTID).
# Arguments: PEER HOSTID BINLEN
#   mount ivshmfs over /dev/ivshm0 (id from the hostname), write our partition
#   (text + binary), read the peer's and the host's partitions and check them
#   by sha256 (read() and a shared mapping), check EACCES on others' files,
#   print `ivshmctl status --json`,
#   then wait for the host's go-lines in its partition:
#   vm1: on go:kill append one more line, report, and wait to be killed;
#   vm0: on go:finish unmount and finish.
. /scenarios/common.sh
PEER=$1 HOSTID=$2 BINLEN=$3
ME=$(hostname | sed 's/^vm//')
M=/mnt/ivshm

if ivshmfs /dev/ivshm0 $M > /tmp/ivshmfs.log 2>&1 && wait_until 10 is_mounted $M; then
	pass "mount-ivshmfs vm$ME"
else
	fail "mount-ivshmfs $(tail -n 5 /tmp/ivshmfs.log | tr '\n' ' ')"
	finish
fi
info "ls: $(ls -l $M | tr '\n' ';')"

# Our partition: text, then binary.
text_of "$ME" "$HOSTID" >> $M/vm$ME && ivshm-test gen $((100 + ME)) "$BINLEN" >> $M/vm$ME
check write-own-partition test "$(sha256sum < $M/vm$ME | cut -d' ' -f1)" = "$(sha_of "$ME" "$HOSTID" "$BINLEN")"

# The peer's and the host's partitions, as soon as they are complete.
for k in $PEER $HOSTID; do
	check_partition "$k" "$M" "$HOSTID" "$BINLEN"
done

# A shared read-only mapping of a peer's file (what mmap-reading programs
# do: through the page cache) holds the peer's bytes.
for k in $PEER $HOSTID; do
	check "mmap-vm$k-peer-bytes" test "$(ivshm-test mapcat $M/vm$k | head -c "$(size_of "$k" "$HOSTID" "$BINLEN")" |
		sha256sum | cut -d' ' -f1)" = "$(sha_of "$k" "$HOSTID" "$BINLEN")"
done

# Others' partitions are read-only to us.
for k in $PEER $HOSTID; do
	r=$(echo intrusion | ivshm-test append $M/vm$k)
	check "append-vm$k-is-EACCES" test "$r" = EACCES
	check "shell-append-vm$k-refused" sh -c "! echo intrusion >> $M/vm$k"
done
check own-file-writable-mode test "$(stat -c %A $M/vm$ME)" = "-rw-r--r--"
check peer-file-read-only-mode test "$(stat -c %A $M/vm$PEER)" = "-r--r--r--"

# What this guest sees; the host compares it with its own view.
if st=$(ivshmctl status --json /dev/ivshm0 2>&1); then
	pass ivshmctl-status
	echo "IVSHM-STATUS $st"
else
	fail "ivshmctl-status $st"
fi
ivshmctl status /dev/ivshm0 2>&1 | sed 's/^/IVSHM-INFO /'
echo "IVSHM-READY status"

if [ "$ME" = 1 ]; then
	if wait_until 600 grep -q go:kill $M/vm$HOSTID; then
		printf 'committed before kill\n' >> $M/vm$ME
		check commit-before-kill test "$(tail -c 22 $M/vm$ME)" = "committed before kill"
		echo "IVSHM-READY killme"
		sleep 100000
	else
		fail "no go:kill from the host"
	fi
else
	wait_until 900 grep -q go:finish $M/vm$HOSTID || fail "no go:finish from the host"
	check "vm$PEER-after-reboot" grep -q "appended after reboot" $M/vm$PEER
	# A new mapping shows what the peer appended since the first one.
	check "mmap-vm$PEER-after-reboot" sh -c "ivshm-test mapcat $M/vm$PEER | tail -c 22 | grep -qx 'appended after reboot'"
	check umount umount $M
fi
finish
