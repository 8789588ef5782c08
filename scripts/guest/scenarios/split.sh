# SPDX-License-Identifier: GPL-2.0
# Split-region phase of vm0, vm1 and vm2 (run concurrently; see split.sh of
# the harness). Arguments: ME HOW ROGUE BINLEN
#   ME     this guest's partition id
#   HOW    how ivshmfs finds it: hostname (vmME), id (-o id=ME) or probe
#          (no id: the only piece that takes writes)
#   ROGUE  the partition id of the guest that turns rogue after the exchange
#   BINLEN bytes of binary data each guest writes
# The guest has every piece of the split region (its own read-write, the
# others readonly=on, from `ivshmctl qemu-args`) and one more device, a
# shared-mode region of ROGUE+2 partitions: partition K for vmK, the last one
# the host's, where it signals phases with go:* lines.
#   all:   mount with no backend (discovery), write text + binary to the own
#          file, read the others' (sha256), check EACCES and the PROT_READ
#          mappings of peers' pieces; peers also write their content to
#          their partition of the shared-mode region; IVSHM-READY exchange.
#   rogue: on go:attack unmount, then as root write pseudo-random bytes over
#          its own piece's first page (header, table, control block) and
#          over every peer's piece through mmap of /dev/ivshmN, then of sysfs
#          resource2 (the driver unbound: the kernel refuses that mapping
#          while a driver holds the BAR), and try write() on resource2;
#          report whether the bytes read back; IVSHM-READY attacked-split.
#          On go:shared the same over the shared-mode region (half through
#          each path); IVSHM-READY attacked-shared.
#   peers: on go:after append a line, read the other peer's file again
#          (with its new line), list the mount; IVSHM-READY after; unmount.
. /scenarios/common.sh
ME=$1 HOW=$2 ROGUE=$3 BINLEN=$4
M=/mnt/ivshm
HOSTID=none

# The devices: the split region's pieces by partition id, and the shared one.
SH=
PIECES=
for d in /dev/ivshm*; do
	st=$(ivshmctl status --json "$d" 2>/tmp/status.err) || { info "$d: $(cat /tmp/status.err)"; continue; }
	case "$st" in
	*'"split_pieces":0,'*) SH=$d ;;
	*'"partitions":[{"id":'*)
		k=$(echo "$st" | sed 's/.*"partitions":\[{"id":\([0-9]*\),.*/\1/')
		PIECES="$PIECES $k=$d"
		;;
	esac
done
info "pieces:$PIECES; shared-mode region: ${SH:-none}"
piece_dev() { for p in $PIECES; do [ "${p%%=*}" = "$1" ] && echo "${p#*=}"; done; }
OWN=$(piece_dev "$ME")
[ -n "$SH" ] || fail "no shared-mode region device"
[ -n "$OWN" ] || fail "no device holds piece $ME"
SHLAST=$((ROGUE + 1))
# go_seen WORD: the host's partition of the shared-mode region holds go:WORD.
go_seen() { ivshmctl read "$SH" "$SHLAST" 2>/dev/null | grep -q "^go:$1\$"; }
others() { for p in $PIECES; do [ "${p%%=*}" != "$ME" ] && echo "${p%%=*}"; done; }

case "$HOW" in
id) opts="-o id=$ME" ;;
*) opts= ;;
esac
# shellcheck disable=SC2086
if ivshmfs $opts $M > /tmp/ivshmfs.log 2>&1 && wait_until 10 is_mounted $M; then
	pass "mount-ivshmfs-discovery vm$ME ($HOW)"
else
	fail "mount-ivshmfs-discovery $(tail -n 5 /tmp/ivshmfs.log | tr '\n' ' ')"
	finish
fi
sed 's/^/IVSHM-INFO ivshmfs: /' /tmp/ivshmfs.log
case "$HOW" in
hostname) want="peer id $ME (from hostname" ;;
id) want="peer id $ME (from option" ;;
probe) want="peer id $ME (from the only writable piece" ;;
esac
check "identity-from-$HOW" grep -q "$want" /tmp/ivshmfs.log
check "one-file-per-piece" test "$(ls $M | grep -c '^vm[0-9]')" = "$(echo $PIECES | wc -w)"

# Own piece mapped shared read-write, every peer's read-only.
pid=$(pidof ivshmfs)
for p in $PIECES; do
	k=${p%%=*} d=${p#*=}
	perms=$(awk -v d="$d" '$6 == d { print $2 }' "/proc/$pid/maps" | sort -u | tr '\n' ' ')
	if [ "$k" = "$ME" ]; then want="rw-s "; else want="r--s "; fi
	check "mapping-of-vm$k-$d-is-$want" test "$perms" = "$want"
done

text_of "$ME" "$HOSTID" >> $M/vm$ME && ivshm-test gen $((100 + ME)) "$BINLEN" >> $M/vm$ME
check write-own-file test "$(sha256sum < $M/vm$ME | cut -d' ' -f1)" = "$(sha_of "$ME" "$HOSTID" "$BINLEN")"
for k in $(others); do
	check_partition "$k" "$M" "$HOSTID" "$BINLEN"
	r=$(echo intrusion | ivshm-test append $M/vm$k)
	check "append-vm$k-is-EACCES" test "$r" = EACCES
done
if [ "$ME" != "$ROGUE" ]; then
	# The shared-mode region: the same content in this guest's partition.
	if out=$(content_of "$ME" "$HOSTID" "$BINLEN" | ivshmctl write "$SH" "$ME" 2>&1); then
		pass "shared-mode-write-vm$ME"
	else
		fail "shared-mode-write-vm$ME $out"
	fi
fi
echo "IVSHM-READY exchange"

if [ "$ME" = "$ROGUE" ]; then
	wait_until 600 go_seen attack || { fail "no go:attack from the host"; finish; }
	check rogue-umount umount $M
	# attack DEV OFF LEN SEED HOW: write through a mapping, then report
	# whether the bytes read back (they must not, on a readonly=on piece).
	attack() {
		if out=$(ivshm-test fill "$1" "$2" "$3" "$4" 2>&1); then
			if ivshm-test check "$1" "$2" "$3" "$4" >/dev/null 2>&1; then
				info "attack $5 $1 [$2, +$3): written, and the bytes read back (the write stuck in this guest)"
			else
				info "attack $5 $1 [$2, +$3): written, the bytes do not read back (discarded)"
			fi
		else
			info "attack $5 $1 [$2, +$3): refused: $out"
		fi
	}
	# unbind DEV: detach /dev/ivshmN from the driver, so that the kernel lets
	# root map its BAR through sysfs (IO_STRICT_DEVMEM refuses that while a
	# driver holds it); sets res to its resource2 file.
	unbind() {
		_bdf=$(ivshm_bdf "${1#/dev/ivshm}")
		res=/sys/bus/pci/devices/$_bdf/resource2
		echo "$_bdf" > /sys/bus/pci/drivers/ivshm/unbind || fail "unbind $1"
	}
	attack "$OWN" 0 4096 220 "own-header"
	for k in $(others); do
		d=$(piece_dev "$k")
		size=$(ivshm-test info "$d" | sed -n 's/^bar2_size=\([0-9]*\) .*/\1/p')
		attack "$d" 0 "$size" $((200 + k)) "mmap-dev"
		unbind "$d"
		attack "$res" 0 "$size" $((210 + k)) "mmap-resource2"
		if dd if=/dev/urandom of="$res" bs=4096 count=1 conv=notrunc 2>/tmp/dd.err; then
			info "attack write() $res: accepted"
		else
			info "attack write() $res: refused: $(grep -v records /tmp/dd.err | head -n 1)"
		fi
	done
	echo "IVSHM-READY attacked-split"

	wait_until 600 go_seen shared || { fail "no go:shared from the host"; finish; }
	size=$(ivshm-test info "$SH" | sed -n 's/^bar2_size=\([0-9]*\) .*/\1/p')
	half=$((size / 2))
	attack "$SH" 0 "$half" 230 "mmap-dev"
	unbind "$SH"
	attack "$res" "$half" "$((size - half))" 231 "mmap-resource2"
	echo "IVSHM-READY attacked-shared"
	finish
fi

# A peer: keep serving after the attack.
wait_until 900 go_seen after || { fail "no go:after from the host"; finish; }
printf 'after the attack from vm%s\n' "$ME" >> $M/vm$ME
check write-after-attack test "$(tail -c 26 $M/vm$ME)" = "after the attack from vm$ME"
for k in $(others); do
	[ "$k" = "$ROGUE" ] && continue
	n=$(size_of "$k" "$HOSTID" "$BINLEN")
	check "read-vm$k-after-attack" test "$(prefix_sha $M/vm$k "$n")" = "$(sha_of "$k" "$HOSTID" "$BINLEN")"
	check "see-vm$k-write-after-attack" wait_until 120 grep -q "after the attack from vm$k" $M/vm$k
done
for k in $(others) $ME; do
	[ "$k" = "$ROGUE" ] || check "stat-vm$k-after-attack" stat $M/vm$k
done
info "after the attack: ls -l: $(ls -l $M 2>&1 | tr '\n' ';')"
if head -c 16 $M/vm$ROGUE > /tmp/rogue.head 2>/tmp/rogue.err; then
	info "vm$ROGUE after the attack: readable, $(wc -c < /tmp/rogue.head) bytes at its start: $(od -An -tx1 /tmp/rogue.head | head -n 1)"
else
	info "vm$ROGUE after the attack: $(cat /tmp/rogue.err)"
fi
echo "IVSHM-READY after"
check umount umount $M
finish
