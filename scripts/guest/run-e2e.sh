#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# ivshmfs guest harness: one command from a fresh Debian 12 machine.
#
#   scripts/guest/run-e2e.sh [--mode MODE] [BUILD_DIR]
#
# MODE is one of
#   boot    boot one guest and power it off: measures boot time
#   driver  boot one guest: ivshm.ko probe, ioctl, sysfs, mmap checks, data
#           exchange with the host file, unbind/rmmod with a live mapping
#   doorbell two guests with ivshmem-doorbell devices served by ivshm-server
#           (BUILD_DIR/server/ivshm-server) and a host peer: MSI-X, vectors,
#           IVPosition = the id the server gave (5 by socket, 3 by -name); vm0
#           restarted gets 5 again; the host peer sees them come and go; the
#           two guests ring each other (poll/read wake, counters grow), then
#           run ivshmfs on the doorbell device: DOORBELL_PINGS (20) messages
#           after DOORBELL_QUIET_MS (300) of quiet, doorbells vs polling;
#           then vm0 pings an ivshmfs mount on the host (id 1, pinned):
#           with -o server= (eventfds both ways, checked by the .status
#           counters on both sides) vs without (polling)
#   cache   one guest reads and writes through ivshmfs's page cache for
#           CACHE_SECONDS (120) while the host appends and resets: every
#           step bounded, a hang dumps what each task waits for; CACHE_SIZE
#           (16M) is the region's size (1M: a BAR2 without struct pages);
#           CACHE_OPTIONS one -o option of the guest's mount (e.g.
#           direct_io). Not in the ctest suite yet: under Debian 12's kernel
#           a cached read racing the host's reset now and then fails with EIO
#           instead of ESTALE
#   bench   boot one guest: copy bandwidth through /dev/ivshm0 (cacheable)
#           vs sysfs resource2 (uncached)
#   e2e     the end-to-end scenario: vm0, vm1 and the host share one region
#           through ivshmfs (needs ivshmctl and ivshmfs built in BUILD_DIR)
#   split   three guests on a split region (one backend file per partition,
#           QEMU options from `ivshmctl qemu-args`), found by discovery; a
#           rogue guest attacks the others' pieces (they stay intact) and a
#           shared-mode region (its damage is reported); a fourth guest with
#           its own piece readonly=on and two regions mixed is refused
#           (needs ivshmctl and ivshmfs built in BUILD_DIR)
#   hotplug two guests on a split region of two pieces; the host adds a
#           third piece and hot-plugs it into both over QMP (`ivshmctl
#           qemu-args --hotplug`): their drivers probe it and their mounted
#           daemons show vm2 and read its data without a remount (needs
#           ivshmctl and ivshmfs built in BUILD_DIR)
#   package the driver checks with the module DKMS built and the packaged
#           ivshmfs/ivshmctl: GUEST_MODULE (an ivshm.ko) and GUEST_PROGRAMS
#           (a directory with ivshmfs and ivshmctl) name them; the clean-room
#           test (tests/package/cleanroom_test.sh) runs this
#   xvm     two guests together: bulk and 64-byte ping-pong vm0 -> vm1 over
#           raw shared memory, the library, the ivshmfs mount, TCP over
#           virtio-net, virtiofs and 9p, a ring partition streamed past 10x
#           its size, host -> guest bulk; every transfer checked by sha256;
#           each guest's and the host's floors (copies in user space and by
#           the kernel, process and thread switches: ivshm-xvm floors) and
#           the bounds they set; prints a table (see scripts/guest/xvm.sh; XVM_FULL=1: the
#           figures of docs/benchmarks.md; needs BUILD_DIR/bench/ivshm-xvm)
#   all     driver, doorbell, then e2e (default)
# BUILD_DIR is the CMake build directory (default: build/ in the repository).
# Installs missing packages (needs root), builds ivshm.ko against the installed
# Debian kernel headers, builds the initramfs, runs, and exits non-zero on any
# failure. Environment: GUEST_TIMEOUT (seconds per guest, default 240),
# GUEST_WORK (scratch directory, default BUILD_DIR/guest), GUEST_KEEP=1 keeps
# the shared-memory files.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mode=all
while [ $# -gt 0 ]; do
	case "$1" in
	--mode) mode=$2; shift 2 ;;
	-h|--help) sed -n '3,/^set -e/{/^set -e/d;p}' "$0"; exit 0 ;;
	-*) die "unknown option $1" ;;
	*) break ;;
	esac
done
BUILD_DIR=$(realpath -m "${1:-$REPO_DIR/build}")
TIMEOUT=${GUEST_TIMEOUT:-240}
T_START=$SECONDS

guest_install_deps
WORK=$(guest_work "$BUILD_DIR")
KVER=$(guest_kver)
log "kernel $KVER, headers $(guest_kdir), work dir $WORK"

t=$SECONDS
PROGRAMS_DIR=$BUILD_DIR
if [ "$mode" = package ]; then
	# The packaged programs, laid out as mkinitramfs.sh expects a build tree.
	[ -f "${GUEST_MODULE:-}" ] && [ -x "${GUEST_PROGRAMS:-}/ivshmfs" ] && [ -x "$GUEST_PROGRAMS/ivshmctl" ] ||
		die "--mode package needs GUEST_MODULE=ivshm.ko and GUEST_PROGRAMS=DIR with ivshmfs and ivshmctl"
	PROGRAMS_DIR=$WORK/packaged
	rm -rf "$PROGRAMS_DIR"
	mkdir -p "$PROGRAMS_DIR/tools" "$PROGRAMS_DIR/fs"
	cp "$GUEST_PROGRAMS/ivshmctl" "$PROGRAMS_DIR/tools/"
	cp "$GUEST_PROGRAMS/ivshmfs" "$PROGRAMS_DIR/fs/"
	MODULE=$GUEST_MODULE
	log "package: module $MODULE ($(modinfo -F vermagic "$MODULE" | cut -d' ' -f1)), programs from $GUEST_PROGRAMS"
else
	MODULE=$(guest_build_module "$WORK")
fi
TESTPROG=$(guest_build_test_prog "$WORK")
GUEST_KERNEL=$(guest_kernel "$WORK")
INITRD=$WORK/initramfs.cpio.gz
EXTRA_MODULES=
# xvm compares ivshmfs with the transports a user would pick instead.
[ "$mode" = xvm ] && EXTRA_MODULES="virtio_pci virtio_net virtiofs 9p 9pnet_virtio"
"$GUEST_DIR/mkinitramfs.sh" --build-dir "$PROGRAMS_DIR" --module "$MODULE" --test-prog "$TESTPROG" \
	${EXTRA_MODULES:+--modules "$EXTRA_MODULES"} -o "$INITRD"
log "build: $((SECONDS - t)) s; booting $GUEST_KERNEL"

SHMS=()
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do guest_kill "$p"; done
	[ -n "${HOST_CLEANUP:-}" ] && eval "$HOST_CLEANUP"
	rm -f "$WORK"/*.log.ctl  # the guests' control ports (lib.sh, guest_dump)
	if [ "${GUEST_KEEP:-0}" != 1 ]; then
		# new_shm runs in $(...), a subshell, so SHMS may not have them all:
		# the name pattern does ($$ is this script's pid in subshells too).
		for p in "${SHMS[@]}"; do rm -f "$p"; done
		rm -f /dev/shm/ivshmfs-test-$$-*
	fi
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

new_shm() { # new_shm NAME SIZE: a zeroed backing file in /dev/shm
	local f=/dev/shm/ivshmfs-test-$$-$1
	rm -f "$f"
	truncate -s "$2" "$f"
	SHMS+=("$f")
	echo "$f"
}

run_driver() {
	local shm shm2 pid logf=$WORK/driver.log t=$SECONDS
	log "driver: booting one guest with two ivshmem devices (16 MiB, 1 MiB)"
	shm=$(new_shm driver 16M)
	shm2=$(new_shm driver-small 1M)
	"$TESTPROG" fill "$shm" 1048576 65536 11
	pid=$(guest_start vm0 "$INITRD" "$shm" driver "1048576,65536,11,2097152,65536,22" "$logf" "$shm2")
	PIDS+=("$pid")
	guest_finish "$pid" "$logf" "$TIMEOUT" || { log "driver: FAIL"; return 1; }
	# The guest's raw writes reached the host files: a pattern in the small
	# device's file, ivshmfs data in the big one (formatted by the guest).
	"$TESTPROG" check "$shm2" 4096 8192 33 || { log "driver: guest pattern not in the host file"; return 1; }
	if [ -x "$PROGRAMS_DIR/tools/ivshmctl" ]; then
		"$PROGRAMS_DIR/tools/ivshmctl" read "$shm" 0 | grep -q hello-through-ivshmfs ||
			{ log "driver: data written through ivshmfs in the guest is not in the host file"; return 1; }
	fi
	log "driver: PASS ($((SECONDS - t)) s; guest up in $(tr -d '\r' < "$logf" | sed -n 's/^IVSHM-BOOTED [^ ]* //p'))"
}

run_boot() {
	local shm pid logf=$WORK/boot.log t
	shm=$(new_shm boot 16M)
	t=$(date +%s.%N)
	pid=$(guest_start vm0 "$INITRD" "$shm" boot "" "$logf")
	PIDS+=("$pid")
	guest_wait_line "$pid" "$logf" '^IVSHM-BOOTED' "$TIMEOUT" || { guest_show_log "$logf"; return 1; }
	local tb; tb=$(date +%s.%N)
	guest_finish "$pid" "$logf" "$TIMEOUT" || return 1
	log "boot: /init reached $(echo "$tb - $t" | bc 2>/dev/null || echo "?") s after starting QEMU (guest uptime $(tr -d '\r' < "$logf" | sed -n 's/^IVSHM-BOOTED [^ ]* //p')); powered off $(echo "$(date +%s.%N) - $t" | bc 2>/dev/null || echo "?") s after start"
}

# The host's ivshmfs mount for vm0's host rounds (doorbell.sh ping_host),
# over SHM as partition 1: asked for on vm0's console (LOG), mounted with
# -o server= on the pinned socket SOCK (eventfds) for the doorbell round and
# with -o id=1 (a host file's futex source, which polls a guest's partition)
# for the poll round; it echoes vm0's pings, then unmounts. Its log and its
# .status wakeups line are kept in $WORK/host-fs-ROUND.{log,status}.
host_fs_peer() {
	local shm=$1 sock=$2 vmlog=$3 mnt=$WORK/doorbell-host-mnt round opts fpid t0
	mkdir -p "$mnt"
	for round in doorbell poll; do
		t0=$SECONDS
		until grep -aq "^IVSHM-HOST $round mount" "$vmlog"; do
			[ $((SECONDS - t0)) -lt "$TIMEOUT" ] || { log "doorbell: vm0 never asked for the host's $round mount"; return 1; }
			sleep 0.2
		done
		if [ $round = doorbell ]; then opts="server=$sock"; else opts="id=1"; fi
		"$BUILD_DIR/fs/ivshmfs" -f -o "$opts" "$shm" "$mnt" >"$WORK/host-fs-$round.log" 2>&1 &
		fpid=$!
		t0=$SECONDS
		until [ -e "$mnt/.status" ]; do
			if ! kill -0 "$fpid" 2>/dev/null || [ $((SECONDS - t0)) -ge 30 ]; then
				log "doorbell: the host's $round mount failed: $(tail -n 3 "$WORK/host-fs-$round.log")"
				kill "$fpid" 2>/dev/null
				return 1
			fi
			sleep 0.1
		done
		timeout "$TIMEOUT" "$TESTPROG" echo "$mnt/follow/vm5" "$mnt/vm1" "hg-$round" >>"$WORK/host-fs-$round.log" 2>&1 ||
			log "doorbell: the host's $round echo failed"
		grep '^wakeups ' "$mnt/.status" >"$WORK/host-fs-$round.status"
		fusermount3 -u "$mnt" || fusermount3 -uz "$mnt"
		wait "$fpid"
	done
}

run_doorbell() {
	local shm shm2 pid0 pid1 srv peer hostfs server=$BUILD_DIR/server/ivshm-server t=$SECONDS rc=0
	local sock=$WORK/ivshm-server.sock vm0sock=$WORK/ivshm-vm0.sock slog=$WORK/ivshm-server.log plog=$WORK/host-peer.log
	local hostsock=$WORK/ivshm-host.sock
	local dev="-device ivshmem-doorbell,chardev=ivsrv,vectors=2"
	local pings=${DOORBELL_PINGS:-20} quiet=${DOORBELL_QUIET_MS:-300}
	[ -x "$server" ] || die "doorbell: $server is not built (cmake --build $BUILD_DIR --target ivshm-server)"
	log "doorbell: ivshm-server with a host peer, vm0 pinned to id 5 by its socket, vm1 to 3 by its -name, vm0 restarted"
	shm=$(new_shm doorbell-plain 16M)
	shm2=$(new_shm doorbell 16M)
	"$TESTPROG" fill "$shm2" 0 65536 44
	rm -f "$sock" "$vm0sock" "$hostsock" "$WORK"/host-fs-*
	"$server" --shm "$shm2" --vectors 2 --socket "$sock" --peer "vm0=5:$vm0sock" --peer vm1=3 \
		--peer "host=1:$hostsock" >"$slog" 2>&1 &
	srv=$!
	HOST_CLEANUP="kill $srv 2>/dev/null; wait $srv 2>/dev/null"
	for _ in $(seq 50); do grep -q '^ivshm-server.*serving ' "$slog" && break; sleep 0.1; done
	# A host program joins first, on the shared socket: id 0.
	: >"$plog"
	python3 "$REPO_DIR/tests/server/ivshm_peer.py" "$sock" --vectors 2 --wait "$((TIMEOUT * 3))" >"$plog" 2>&1 &
	peer=$!
	HOST_CLEANUP="kill $peer $srv 2>/dev/null; wait $peer $srv 2>/dev/null"
	for _ in $(seq 50); do grep -q '^id ' "$plog" && break; sleep 0.1; done
	grep -q '^id 0;' "$plog" || { log "doorbell: the host peer did not get id 0: $(cat "$plog")"; rc=1; }
	# Two guests at once: vm0 on its pinned socket (id 5), vm1 on the shared
	# socket, where its QEMU's -name (as libvirt gives it) pins id 3.
	pid0=$(GUEST_QEMU_ARGS="${GUEST_QEMU_ARGS:-} -chardev socket,path=$vm0sock,id=ivsrv $dev" \
		guest_start vm0 "$INITRD" "$shm" doorbell "5,2,44,3,$pings,$quiet,1" "$WORK/doorbell-vm0.log")
	PIDS+=("$pid0")
	host_fs_peer "$shm2" "$hostsock" "$WORK/doorbell-vm0.log" &
	hostfs=$!
	HOST_CLEANUP="kill $hostfs $peer $srv 2>/dev/null; fusermount3 -uz $WORK/doorbell-host-mnt 2>/dev/null; wait $hostfs $peer $srv 2>/dev/null"
	pid1=$(GUEST_QEMU_ARGS="${GUEST_QEMU_ARGS:-} -name guest=vm1,debug-threads=on -chardev socket,path=$sock,id=ivsrv $dev" \
		guest_start vm1 "$INITRD" "$shm" doorbell "3,2,44,5,$pings,$quiet" "$WORK/doorbell-vm1.log")
	PIDS+=("$pid1")
	guest_finish "$pid0" "$WORK/doorbell-vm0.log" "$TIMEOUT" || rc=1
	guest_finish "$pid1" "$WORK/doorbell-vm1.log" "$TIMEOUT" || rc=1
	wait "$hostfs" || rc=1
	HOST_CLEANUP="kill $peer $srv 2>/dev/null; wait $peer $srv 2>/dev/null"
	# The host's mount: its id from the server, and vm0's pings woke it by
	# eventfd (doorbells=, its own vector 0) with -o server=, by polling
	# (the futex source) without.
	local hs
	hs=$(cat "$WORK/host-fs-doorbell.status" 2>/dev/null || true)
	log "doorbell: host mount (-o server=): $hs"
	log "doorbell: host mount (polling): $(cat "$WORK/host-fs-poll.status" 2>/dev/null || true)"
	if ! grep -q "peer id 1 (from ivshm-server $hostsock)" "$WORK/host-fs-doorbell.log" 2>/dev/null ||
	   ! grep -q "wake-ups: eventfds of ivshm-server" "$WORK/host-fs-doorbell.log"; then
		log "doorbell: the host's -o server= mount did not take id 1 from the server or use its eventfds:"
		sed 's/^/  /' "$WORK/host-fs-doorbell.log" >&2
		rc=1
	fi
	case "$hs" in
	*" transport=eventfd server=connected id=1 "*) ;;
	*) log "doorbell: the host's -o server= mount's wake-ups are not the server's eventfds"; rc=1 ;;
	esac
	if ! echo "$hs" | grep -Eq ' doorbells=[1-9][0-9]* .* rings=[1-9]'; then
		log "doorbell: vm0's pings did not wake the host by eventfd, or the host's echoes rang nobody"
		rc=1
	fi
	grep -q '^wakeups source=futex ' "$WORK/host-fs-poll.status" 2>/dev/null ||
		{ log "doorbell: the host's polling mount is not the futex source"; rc=1; }
	# ivshmfs between the two guests and between vm0 and the host: one-way
	# latency after quiet, with doorbells and with polling (measured, not
	# judged).
	tr -d '\r' < "$WORK/doorbell-vm0.log" | sed -n 's/^IVSHM-BENCH //p' >&2
	# vm0 again (a QEMU restart): the same id 5.
	pid0=$(GUEST_QEMU_ARGS="${GUEST_QEMU_ARGS:-} -chardev socket,path=$vm0sock,id=ivsrv $dev" \
		guest_start vm0 "$INITRD" "$shm" doorbell "5,2,44" "$WORK/doorbell-vm0-again.log")
	PIDS+=("$pid0")
	guest_finish "$pid0" "$WORK/doorbell-vm0-again.log" "$TIMEOUT" || rc=1
	sleep 0.5
	# The host peer saw both guests come and go, vm0 twice (2 vectors each).
	local joined5 left5 joined3 left3
	joined5=$(grep -c '^peer 5 joined' "$plog" || true)
	left5=$(grep -c '^peer 5 left' "$plog" || true)
	joined3=$(grep -c '^peer 3 joined' "$plog" || true)
	left3=$(grep -c '^peer 3 left' "$plog" || true)
	if [ "$joined5/$left5/$joined3/$left3" != 4/2/2/1 ]; then
		log "doorbell: host peer saw peer 5 join/leave $joined5/$left5 (want 4/2), peer 3 $joined3/$left3 (want 2/1)"
		rc=1
	fi
	kill -TERM "$srv"
	wait "$srv" || { log "doorbell: ivshm-server did not exit 0 on SIGTERM"; rc=1; }
	kill "$peer" 2>/dev/null; wait "$peer" 2>/dev/null
	HOST_CLEANUP=
	[ -e "$sock" ] || [ -e "$vm0sock" ] && { log "doorbell: ivshm-server left its sockets"; rc=1; }
	sed 's/^/  /' "$slog" >&2
	[ $rc -eq 0 ] && log "doorbell: PASS ($((SECONDS - t)) s)" || log "doorbell: FAIL"
	return $rc
}

# The page cache under load: the host appends to its partition (and
# empties it every CACHE_RESET_EVERY lines, default 400) while one guest
# reads and writes through ivshmfs for CACHE_SECONDS (default 120), every
# step bounded (scenarios/cache.sh).
run_cache() {
	local ctl=$BUILD_DIR/tools/ivshmctl fs=$BUILD_DIR/fs/ivshmfs shm mnt pid writer rc=0 t=$SECONDS
	local logf=$WORK/cache-vm0.log secs=${CACHE_SECONDS:-120} every=${CACHE_RESET_EVERY:-400} size=${CACHE_SIZE:-16M}
	[ -x "$ctl" ] && [ -x "$fs" ] || die "cache: needs $ctl and $fs (build the project first)"
	shm=$(new_shm cache "$size")
	rm -f "$shm"
	"$ctl" format --size "$size" --partitions 3 "$shm" >&2 || { log "cache: format failed"; return 1; }
	mnt=$(mktemp -d /tmp/ivshmfs-cache-host.XXXXXX)
	HOST_CLEANUP="fusermount3 -u '$mnt' 2>/dev/null || umount -l '$mnt' 2>/dev/null; rmdir '$mnt' 2>/dev/null"
	"$fs" -o id=2 "$shm" "$mnt" >"$WORK/cache-host-ivshmfs.log" 2>&1 ||
		{ log "cache: host mount: $(cat "$WORK/cache-host-ivshmfs.log")"; return 1; }
	(
		i=0
		while [ -e "$mnt/vm2" ]; do
			i=$((i + 1))
			printf '%d:xxxxxxxx\n' "$i" >> "$mnt/vm2" || break
			[ $((i % every)) = 0 ] && : > "$mnt/vm2"
			sleep 0.005
		done
	) &
	writer=$!
	HOST_CLEANUP="kill $writer 2>/dev/null; wait $writer 2>/dev/null; $HOST_CLEANUP"
	log "cache: $size region; the host appends to vm2 (emptied every $every lines) while vm0 works for $secs s"
	pid=$(guest_start vm0 "$INITRD" "$shm" cache "2,$secs${CACHE_OPTIONS:+,$CACHE_OPTIONS}" "$logf")
	PIDS+=("$pid")
	guest_finish "$pid" "$logf" $((secs + TIMEOUT)) || rc=1
	eval "$HOST_CLEANUP"; HOST_CLEANUP=
	[ $rc -eq 0 ] && log "cache: PASS ($((SECONDS - t)) s)" || log "cache: FAIL"
	return $rc
}

run_bench() {
	local shm pid logf=$WORK/bench.log t=$SECONDS
	log "bench: booting one guest"
	shm=$(new_shm bench "${BENCH_SHM_SIZE:-64M}")
	pid=$(guest_start vm0 "$INITRD" "$shm" bench "${BENCH_MIB:-32},${BENCH_ROUNDS:-5}" "$logf")
	PIDS+=("$pid")
	guest_finish "$pid" "$logf" "$TIMEOUT" || { log "bench: FAIL"; return 1; }
	tr -d "\r" < "$logf" | sed -n -e "s/^IVSHM-BENCH //p" -e "s/^IVSHM-INFO \(BAR2 at .*\)/\1/p"
	log "bench: done ($((SECONDS - t)) s)"
}

rc=0
case "$mode" in
boot) run_boot || rc=1 ;;
doorbell) run_doorbell || rc=1 ;;
driver|package) run_driver || rc=1 ;;
bench) run_bench || rc=1 ;;
cache) run_cache || rc=1 ;;
xvm) . "$GUEST_DIR/xvm.sh"; run_xvm || rc=1 ;;
e2e) . "$GUEST_DIR/e2e.sh"; run_e2e || rc=1 ;;
split) . "$GUEST_DIR/split.sh"; run_split || rc=1 ;;
hotplug) . "$GUEST_DIR/hotplug.sh"; run_hotplug || rc=1 ;;
all)
	run_driver || rc=1
	run_doorbell || rc=1
	. "$GUEST_DIR/e2e.sh"; run_e2e || rc=1
	;;
*) die "unknown mode $mode" ;;
esac
log "total $((SECONDS - T_START)) s; $([ $rc -eq 0 ] && echo PASS || echo FAIL)"
exit $rc
