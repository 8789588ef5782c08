# SPDX-License-Identifier: GPL-2.0
# The hot-plug scenario, host side; sourced by run-e2e.sh (which provides
# INITRD, TESTPROG, BUILD_DIR, WORK, TIMEOUT, PIDS and HOST_CLEANUP).
#
# A split region of two pieces; vm0 and vm1 boot with `ivshmctl qemu-args
# --peer K` (own piece read-write, the other readonly=on) and a QMP socket,
# mount it by discovery and write their text. Then, with both mounted, the
# host adds a third piece (`ivshmctl add --id 2`), writes text and binary
# data into it, and hot-plugs it into both running guests with the QMP
# commands `ivshmctl qemu-args --peer K --hotplug 2` prints (readonly for
# both: the host owns it). Each guest's driver must probe the new device and
# its mounted daemon show vm2 (readdir, lookup, .status, follow/) without a
# remount and read its data byte-exact (sha256).

HOTPLUG_BINLEN=100000

hotplug_pass() { echo "HOTPLUG PASS $*" >&2; }
hotplug_fail() { echo "HOTPLUG FAIL $*" >&2; HOTPLUG_FAILS=$((HOTPLUG_FAILS + 1)); }

run_hotplug() {
	local ctl=$BUILD_DIR/tools/ivshmctl fs=$BUILD_DIR/fs/ivshmfs
	local prefix t0=$SECONDS k args logs=() pids=() qmps=()
	HOTPLUG_FAILS=0
	if [ ! -x "$ctl" ] || [ ! -x "$fs" ]; then
		log "hotplug: FAIL: needs $ctl and $fs (build the project first)"
		return 1
	fi
	command -v python3 >/dev/null || { log "hotplug: FAIL: needs python3"; return 1; }
	prefix=/dev/shm/ivshmfs-test-$$-hotplug
	"$ctl" format --split --size 1M --partitions 2 "$prefix" >&2 || { log "hotplug: format --split failed"; return 1; }
	HOST_CLEANUP="rm -f '$WORK'/hotplug-vm*.qmp"

	log "hotplug: phase 1: vm0 and vm1 on a split region of two pieces (GUEST_MACHINE=${GUEST_MACHINE:-pc})"
	for k in 0 1; do
		args=$("$ctl" qemu-args --peer $k "$prefix") || { hotplug_fail "ivshmctl qemu-args --peer $k"; return 1; }
		logs[k]=$WORK/hotplug-vm$k.log
		qmps[k]=$WORK/hotplug-vm$k.qmp
		rm -f "${qmps[k]}"
		pids[k]=$(GUEST_QEMU_ARGS="${GUEST_QEMU_ARGS:-} ${args//$'\n'/ } -qmp unix:${qmps[k]},server=on,wait=off" \
			guest_start "vm$k" "$INITRD" none hotplug "$k,$HOTPLUG_BINLEN" "${logs[k]}")
		PIDS+=("${pids[k]}")
	done
	for k in 0 1; do
		if ! guest_wait_line "${pids[k]}" "${logs[k]}" '^IVSHM-READY mounted' "$TIMEOUT"; then
			hotplug_fail "vm$k did not mount"
			guest_show_log "${logs[k]}"
			return 1
		fi
	done
	hotplug_pass "vm0 and vm1 mounted the two pieces"

	log "hotplug: phase 2: a third piece, added on the host and hot-plugged into both"
	if "$ctl" add --id 2 --size 1M "$prefix" >&2; then
		hotplug_pass "ivshmctl add --id 2: $prefix.vm2"
	else
		hotplug_fail "ivshmctl add --id 2"
		return 1
	fi
	{ echo "hello from the new piece"; "$TESTPROG" gen 102 "$HOTPLUG_BINLEN"; } | "$ctl" write "$prefix" 2 ||
		{ hotplug_fail "ivshmctl write $prefix 2"; return 1; }
	for k in 0 1; do
		if ! args=$("$ctl" qemu-args --peer $k --hotplug 2 "$prefix"); then
			hotplug_fail "ivshmctl qemu-args --peer $k --hotplug 2"
			return 1
		fi
		echo "$args" | sed "s/^/  vm$k QMP: /" >&2
		if echo "$args" | grep -q '"readonly":true'; then
			hotplug_pass "qemu-args --hotplug 2 --peer $k: the new piece is readonly for vm$k"
		else
			hotplug_fail "qemu-args --hotplug 2 --peer $k: not readonly: $args"
		fi
		if out=$(echo "$args" | python3 "$GUEST_DIR/qmp.py" "${qmps[k]}" 2>&1); then
			hotplug_pass "QMP object-add + device_add of ivshmem-plain into running vm$k"
		else
			hotplug_fail "QMP hot-plug into vm$k: $out"
			guest_show_log "${logs[k]}"
			return 1
		fi
		echo "$out" | sed "s/^/  vm$k /" >&2
	done
	for k in 0 1; do
		if guest_finish "${pids[k]}" "${logs[k]}" "$TIMEOUT"; then
			hotplug_pass "vm$k: the hot-plugged piece probed, vm2 shown without a remount and read byte-exact"
		else
			hotplug_fail "vm$k after the hot-plug"
		fi
		tr -d '\r' < "${logs[k]}" | sed -n 's/^IVSHM-INFO \(.*\)/  vm'"$k"': \1/p' >&2
	done
	eval "$HOST_CLEANUP"; HOST_CLEANUP=
	rm -f "$prefix".vm*
	if [ "$HOTPLUG_FAILS" -eq 0 ]; then
		log "hotplug: PASS ($((SECONDS - t0)) s)"
	else
		log "hotplug: FAIL: $HOTPLUG_FAILS check(s) failed ($((SECONDS - t0)) s)"
		return 1
	fi
}
