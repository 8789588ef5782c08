# SPDX-License-Identifier: GPL-2.0
# The guest-to-guest benchmark (issue 13), host side; sourced by run-e2e.sh
# (which provides INITRD, BUILD_DIR, WORK, TIMEOUT, new_shm, PIDS and
# HOST_CLEANUP). Two guests boot together, each with
#   /dev/ivshm0  the ivshmfs region (3 partitions: vm0, vm1, the host's vm2)
#   /dev/ivshm1  a control page (scripts/guest/scenarios/xvm.sh); raw rings
#                use /dev/ivshm0 before it is formatted
#   virtio-net   a socket netdev between the two (vm0 listens, vm1 connects)
#   virtiofs     a virtiofsd each (cache=none), guest RAM in a shared memfd
#   9p           -virtfs on the same host directory (cache=none in the guest)
# and run scenarios/xvm.sh; the host takes part in the host -> guest steps
# (raw ring, then its own ivshmfs mount as peer 2). Then the host checks every
# received stream's sha256 against the pattern it was sent from and prints a
# table of figures and ratios (scripts/guest/xvm-table.py).
#
# Quick by default (the ctest guest_xvm: 1 MiB, 50 round trips, 256 MiB
# guests); XVM_FULL=1 measures 16 and 64 MiB and 1000 round trips in 512 MiB
# guests (docs/benchmarks.md). XVM_SIZES (bytes, ':'-joined) and XVM_ROUNDS
# override either. XVM_TABLE=FILE keeps the table as markdown.

XVM_VIRTIOFSD=${XVM_VIRTIOFSD:-/usr/lib/qemu/virtiofsd}

xvm_free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# xvm_host_side CTL FS SIZES RAW_RING: the host's steps, as in the scenario:
# first a raw ring of RAW_RING bytes at the start of the blank FS, then (from
# step 1000) its own ivshmfs mount.
xvm_host_side() {
	local ctl=$1 fs=$2 sizes=$3 raw=raw:$2:0:$4 x=$BUILD_DIR/bench/ivshm-xvm s=0 size out hmnt=$WORK/xvm-hostmnt
	for size in $sizes; do
		"$x" prepare "$raw" && "$x" barrier "$ctl" 2 $((s + 1)) 1 || return 1
		s=$((s + 2))
		out=$("$x" send "$raw" "$ctl" 2 $s 1 $s "$size") || return 1
		echo "IVSHM-XVM host-raw bulk size=$size seed=$s side=send $out"
	done
	# The guests have formatted the region for the last time.
	s=1000
	"$x" barrier "$ctl" 2 $s 1 || return 1
	mkdir -p "$hmnt"
	"$BUILD_DIR/fs/ivshmfs" -o id=2 "$fs" "$hmnt" >"$WORK/xvm-hostfs.log" 2>&1 || { cat "$WORK/xvm-hostfs.log" >&2; return 1; }
	HOST_CLEANUP="${HOST_CLEANUP:-}; fusermount3 -u -z '$hmnt' 2>/dev/null"
	for size in $sizes; do
		"$x" prepare "file:$hmnt/vm2" && "$x" barrier "$ctl" 2 $((s + 1)) 1 || break
		s=$((s + 2))
		out=$("$x" send "file:$hmnt/vm2" "$ctl" 2 $s 1 $s "$size") || break
		echo "IVSHM-XVM host-mount bulk size=$size seed=$s side=send $out"
	done
	fusermount3 -u "$hmnt" || fusermount3 -u -z "$hmnt"
	"$x" barrier "$ctl" 2 2000 1
	# The host's own floors, for comparison with the guests' (they are
	# shutting down: nothing else runs).
	out=$("$x" floors) && echo "IVSHM-XVM floors host $out"
}

run_xvm() {
	local t=$SECONDS rc=0 sizes rounds fsz mem ring mult port share pid0 pid1 v0 v1 s0=$WORK/xvm-vfs0.sock s1=$WORK/xvm-vfs1.sock
	local x=$BUILD_DIR/bench/ivshm-xvm fs ctl hostlog=$WORK/xvm-host.log
	[ -x "$x" ] || die "xvm: $x is not built (cmake --build $BUILD_DIR --target ivshm-xvm)"
	[ -x "$XVM_VIRTIOFSD" ] || die "xvm: no virtiofsd at $XVM_VIRTIOFSD (Debian 12's qemu-system-common ships it there)"
	if [ "${XVM_FULL:-0}" = 1 ]; then
		sizes=16777216:67108864 rounds=1000 mem=512M ring=1048576 mult=12
	else
		sizes=1048576 rounds=50 mem=256M ring=262144 mult=12
	fi
	sizes=${XVM_SIZES:-$sizes} rounds=${XVM_ROUNDS:-$rounds}
	# The raw rings use /dev/ivshm0 before it is formatted: a bulk ring as
	# large as the largest transfer, then two small ones (see the scenario).
	# The region holds three partitions of the largest size, and is a power
	# of two (QEMU's BAR): 8 MiB for 1 MiB, 256 MiB for 64 MiB.
	local raw_ring fsz=8
	raw_ring=$(echo "$sizes" | tr : '\n' | sort -n | tail -n 1)
	while [ $((fsz << 20)) -lt $((3 * raw_ring + 4194304)) ]; do fsz=$((fsz * 2)); done
	fsz=${fsz}M
	log "xvm: two guests ($mem each), sizes $sizes, $rounds round trips, a ring of $ring streamed $mult times"
	fs=$(new_shm xvm-fs "$fsz")
	ctl=$(new_shm xvm-ctl 1M)
	share=$WORK/xvm-share
	rm -rf "$share" && mkdir -p "$share"
	rm -f "$s0" "$s1"
	# One virtiofsd per guest, both on the share. sandbox=chroot: namespaces
	# are not always available to the harness (containers).
	"$XVM_VIRTIOFSD" --socket-path="$s0" -o source="$share" -o cache=none -o sandbox=chroot >"$WORK/xvm-vfs0.log" 2>&1 &
	v0=$!
	"$XVM_VIRTIOFSD" --socket-path="$s1" -o source="$share" -o cache=none -o sandbox=chroot >"$WORK/xvm-vfs1.log" 2>&1 &
	v1=$!
	HOST_CLEANUP="kill $v0 $v1 2>/dev/null; wait $v0 $v1 2>/dev/null"
	for _ in $(seq 50); do [ -S "$s0" ] && [ -S "$s1" ] && break; sleep 0.1; done
	[ -S "$s0" ] && [ -S "$s1" ] || { cat "$WORK"/xvm-vfs*.log >&2; log "xvm: virtiofsd did not start"; return 1; }
	port=$(xvm_free_port)
	# The QEMU lines (docs/benchmarks.md shows them): guest_start adds the
	# kernel, initrd, serial console and the two ivshmem-plain devices.
	local common="-object memory-backend-memfd,id=mem,size=$mem,share=on -numa node,memdev=mem"
	common="$common -virtfs local,path=$share,mount_tag=x9p,security_model=none,id=x9p"
	XVM_QEMU0="$common -chardev socket,id=vfs,path=$s0 -device vhost-user-fs-pci,chardev=vfs,tag=xvmfs"
	XVM_QEMU0="$XVM_QEMU0 -netdev socket,id=n0,listen=127.0.0.1:$port -device virtio-net-pci,netdev=n0"
	XVM_QEMU1="$common -chardev socket,id=vfs,path=$s1 -device vhost-user-fs-pci,chardev=vfs,tag=xvmfs"
	XVM_QEMU1="$XVM_QEMU1 -netdev socket,id=n0,connect=127.0.0.1:$port -device virtio-net-pci,netdev=n0"
	local args="$sizes,$rounds,$ring,$mult,$raw_ring"
	pid0=$(GUEST_MEM=$mem GUEST_QEMU_ARGS="${GUEST_QEMU_ARGS:-} $XVM_QEMU0" \
		guest_start vm0 "$INITRD" "$fs" xvm "$args" "$WORK/xvm-vm0.log" "$ctl")
	PIDS+=("$pid0")
	sleep 0.5 # vm0's QEMU listens before vm1's connects
	pid1=$(GUEST_MEM=$mem GUEST_QEMU_ARGS="${GUEST_QEMU_ARGS:-} $XVM_QEMU1" \
		guest_start vm1 "$INITRD" "$fs" xvm "$args" "$WORK/xvm-vm1.log" "$ctl")
	PIDS+=("$pid1")
	log "xvm: vm0 QEMU: $(tr '\0' ' ' </proc/"$pid0"/cmdline 2>/dev/null)"
	log "xvm: vm1 QEMU: $(tr '\0' ' ' </proc/"$pid1"/cmdline 2>/dev/null)"
	IVSHM_XVM_WAIT=$TIMEOUT xvm_host_side "$ctl" "$fs" "$(echo "$sizes" | tr : ' ')" "$raw_ring" >"$hostlog" 2>&1 ||
		{ log "xvm: the host side failed: $(tail -n 3 "$hostlog")"; rc=1; }
	guest_finish "$pid0" "$WORK/xvm-vm0.log" "$TIMEOUT" || rc=1
	guest_finish "$pid1" "$WORK/xvm-vm1.log" "$TIMEOUT" || rc=1
	kill "$v0" "$v1" 2>/dev/null
	wait "$v0" "$v1" 2>/dev/null
	HOST_CLEANUP=
	rm -rf "$share" "$s0" "$s1"
	tr -d '\r' <"$WORK/xvm-vm0.log" | grep '^IVSHM-INFO' >&2 || true
	tr -d '\r' <"$WORK/xvm-vm1.log" | grep '^IVSHM-INFO' >&2 || true
	cat "$hostlog" "$WORK/xvm-vm0.log" "$WORK/xvm-vm1.log" | tr -d '\r' | grep -E '^IVSHM-XVM(-COST)? ' >"$WORK/xvm-results.txt" || true
	python3 "$GUEST_DIR/xvm-table.py" --gen "$x" --sizes "$sizes" ${XVM_TABLE:+--markdown "$XVM_TABLE"} \
		"$WORK/xvm-results.txt" || rc=1
	[ $rc -eq 0 ] && log "xvm: PASS, every transfer checked ($((SECONDS - t)) s)" || log "xvm: FAIL"
	return $rc
}
