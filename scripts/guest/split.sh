# SPDX-License-Identifier: GPL-2.0
# The split-region scenario, host side; sourced by run-e2e.sh (which provides
# INITRD, TESTPROG, BUILD_DIR, WORK, TIMEOUT, new_shm, PIDS and HOST_CLEANUP).
#
# The host formats a split region of three pieces and boots vm0, vm1 and vm2
# together, each with the QEMU options `ivshmctl qemu-args --peer K` prints
# (its own piece read-write, the others readonly=on), plus a shared-mode
# region (one file, every guest read-write). Each guest finds its pieces with
# no backend given (vm0 by its hostname, vm1 by -o id=1, vm2 as the only piece
# that takes writes), writes text and binary data, reads the others'; the
# host checks them with ivshmctl read. Then vm2 turns rogue: as root it
# writes pseudo-random bytes over every peer's piece through mmap of
# /dev/ivshmN and of sysfs resource2, and over its own piece's header. The
# peers' piece files must be byte-identical (but for their live heartbeats),
# `ivshmctl status` unchanged for them, and vm0 and vm1 keep serving. The
# same attack on the shared-mode region is run and its damage REPORTED (not
# judged): the difference between the modes is shown.
# A fourth guest, at the same time, gets its own piece readonly=on and the
# pieces of a second split region, then loses (unbinds) some devices:
# ivshmfs must refuse its own piece read-only, two regions mixed, its own
# piece missing and no writable piece, each with its clear error.

SPLIT_BINLEN=200000
SPLIT_PIECE=4M
SPLIT_ROGUE=2

split_pass() { echo "SPLIT PASS $*" >&2; }
split_fail() { echo "SPLIT FAIL $*" >&2; SPLIT_FAILS=$((SPLIT_FAILS + 1)); }
split_report() { echo "SPLIT REPORT $*" >&2; }

# split_content K [EXTRA]: the bytes vmK's file should hold (common.sh of the
# scenarios: text_of/content_of with no host partition).
split_content() {
	echo "hello from vm$1"
	"$TESTPROG" gen $((100 + $1)) "$SPLIT_BINLEN"
	[ -n "${2:-}" ] && printf '%b' "$2"
	return 0
}
split_sha() { split_content "$@" | sha256sum | cut -d' ' -f1; }

# split_status_of JSON ID: partition ID's line of `ivshmctl status --json`,
# without what time alone changes (heartbeat) and where the file is.
split_status_of() {
	python3 - "$1" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for p in s["partitions"]:
    if p["id"] == int(sys.argv[2]):
        p.pop("owner_heartbeat_ns", None)
        print(json.dumps(p, sort_keys=True))
        break
else:
    print("absent")
PY
}

# split_go WORD: a go:WORD line in the host's partition of the shared-mode region.
split_go() {
	printf 'go:%s\n' "$1" | "$SPLIT_CTL" write "$SPLIT_SHARED" $((SPLIT_ROGUE + 1)) >&2
}

run_split() {
	local ctl=$BUILD_DIR/tools/ivshmctl fs=$BUILD_DIR/fs/ivshmfs
	local prefix other shared t0=$SECONDS t k out args logs=() pids=() logp pidp
	SPLIT_FAILS=0
	SPLIT_CTL=$ctl
	if [ ! -x "$ctl" ] || [ ! -x "$fs" ]; then
		log "split: FAIL: needs $ctl and $fs (build the project first)"
		return 1
	fi
	command -v python3 >/dev/null || { log "split: FAIL: needs python3"; return 1; }

	# The split region, a second one (for the mixed-regions probe) and the
	# shared-mode region: one partition per guest and one for the host.
	prefix=/dev/shm/ivshmfs-test-$$-split
	other=/dev/shm/ivshmfs-test-$$-other
	shared=$(new_shm shared "$SPLIT_PIECE")
	SPLIT_SHARED=$shared
	rm -f "$shared"
	"$ctl" format --split --size "$SPLIT_PIECE" --partitions 3 "$prefix" >&2 || { log "split: format --split failed"; return 1; }
	"$ctl" format --split --size 1M --partitions 2 "$other" >&2 || { log "split: format --split (second region) failed"; return 1; }
	"$ctl" format --size "$SPLIT_PIECE" --partitions $((SPLIT_ROGUE + 2)) "$shared" >&2 || { log "split: format failed"; return 1; }
	"$ctl" status "$prefix" >&2
	HOST_CLEANUP="rm -f '$WORK'/split-vm*.before '$WORK/shared.before'"

	log "split: phase 1: vm0, vm1, vm2 on the split region (qemu-args), a probe guest with wrong options"
	local shared_dev
	shared_dev="-object memory-backend-file,id=shared,share=on,mem-path=$shared,size=$(stat -c %s "$shared") -device ivshmem-plain,id=shared-dev,memdev=shared"
	local hows=(hostname id probe) names=(vm0 vm1 rogue)
	for k in 0 1 2; do
		if ! args=$("$ctl" qemu-args --peer $k "$prefix"); then
			split_fail "ivshmctl qemu-args --peer $k"
			return 1
		fi
		echo "$args" | sed "s/^/  vm$k: /" >&2
		# Exactly one piece read-write: vmK's own.
		if [ "$(echo "$args" | grep -c '^-object ')" = 3 ] &&
		   [ "$(echo "$args" | grep '^-object ' | grep -vc 'readonly=on')" = 1 ] &&
		   echo "$args" | grep '^-object ' | grep -v 'readonly=on' | grep -q "mem-path=$prefix.vm$k,"; then
			split_pass "qemu-args --peer $k: own piece read-write, the two others readonly=on"
		else
			split_fail "qemu-args --peer $k: $args"
		fi
		logs[k]=$WORK/split-vm$k.log
		pids[k]=$(GUEST_QEMU_ARGS="${GUEST_QEMU_ARGS:-} ${args//$'\n'/ } $shared_dev" \
			guest_start "${names[k]}" "$INITRD" none split "$k,${hows[k]},$SPLIT_ROGUE,$SPLIT_BINLEN" "${logs[k]}")
		PIDS+=("${pids[k]}")
	done
	# The probe guest: vm1's options with vm1's own piece readonly=on, and the
	# pieces of another region (renamed QEMU ids; its hostname names no id).
	args="$("$ctl" qemu-args --peer 1 "$prefix" | sed '/id=ivshmfs-vm1,/s/$/,readonly=on/')
$("$ctl" qemu-args --peer 0 "$other" | sed 's/ivshmfs-vm/other-vm/g')"
	logp=$WORK/split-probe.log
	pidp=$(GUEST_QEMU_ARGS="${GUEST_QEMU_ARGS:-} ${args//$'\n'/ }" \
		guest_start probe "$INITRD" none split-probe 1 "$logp")
	PIDS+=("$pidp")

	t=$SECONDS
	for k in 0 1 2; do
		if ! guest_wait_line "${pids[k]}" "${logs[k]}" '^IVSHM-READY exchange' "$TIMEOUT"; then
			split_fail "vm$k did not complete the exchange"
			guest_show_log "${logs[k]}"
			return 1
		fi
	done
	split_pass "vm0, vm1, vm2 wrote, read each other ($((SECONDS - t)) s)"
	for k in 0 1 2; do
		if tr -d '\r' < "${logs[k]}" | grep -q 'IVSHM-RESULT FAIL'; then
			split_fail "vm$k reported failures in the exchange"
			guest_show_log "${logs[k]}"
		fi
		if [ "$("$ctl" read "$prefix" $k | sha256sum | cut -d' ' -f1)" = "$(split_sha $k)" ]; then
			split_pass "host reads vm$k's text and binary data (ivshmctl read, sha256)"
		else
			split_fail "host reads vm$k (ivshmctl read)"
		fi
	done
	if guest_finish "$pidp" "$logp" "$TIMEOUT"; then
		split_pass "probe guest: own piece readonly=on, two regions mixed, own piece missing, no writable piece: refused with clear errors"
	else
		split_fail "probe guest"
	fi

	log "split: phase 2: vm2 turns rogue against the split region"
	"$ctl" status "$prefix" >&2
	"$ctl" status --json "$prefix" > "$WORK/split-status-before.json"
	for k in 0 1 2; do cp "$prefix.vm$k" "$WORK/split-vm$k.before"; done
	split_go attack
	if ! guest_wait_line "${pids[2]}" "${logs[2]}" '^IVSHM-READY attacked-split' "$TIMEOUT"; then
		split_fail "the rogue did not finish its attack"
		guest_show_log "${logs[2]}"
		return 1
	fi
	tr -d '\r' < "${logs[2]}" | sed -n 's/^IVSHM-INFO \(attack .*\)/  rogue: \1/p' >&2
	"$ctl" status "$prefix" >&2 2>&1
	"$ctl" status --json "$prefix" > "$WORK/split-status-after.json"
	for k in 0 1; do
		if out=$(python3 "$GUEST_DIR/region_diff.py" "$WORK/split-vm$k.before" "$prefix.vm$k"); then
			split_pass "vm$k's piece file is byte-identical after the attack, heartbeat aside: $(echo "$out" | tail -n 1)"
		else
			split_fail "vm$k's piece file changed: $out"
		fi
		if [ "$(split_status_of "$WORK/split-status-before.json" $k)" = "$(split_status_of "$WORK/split-status-after.json" $k)" ]; then
			split_pass "ivshmctl status unchanged for partition $k: $(split_status_of "$WORK/split-status-after.json" $k | cut -c 1-120)..."
		else
			split_fail "ivshmctl status of partition $k: before $(split_status_of "$WORK/split-status-before.json" $k), after $(split_status_of "$WORK/split-status-after.json" $k)"
		fi
	done
	out=$(python3 "$GUEST_DIR/region_diff.py" "$WORK/split-vm2.before" "$prefix.vm2")
	split_report "the rogue's own piece (its to damage): $(echo "$out" | tr '\n' ';')"
	split_report "partition 2 in ivshmctl status after the attack: $(split_status_of "$WORK/split-status-after.json" 2 | cut -c 1-160)"

	log "split: phase 3: vm0 and vm1 keep serving"
	split_go after
	for k in 0 1; do
		if guest_finish "${pids[k]}" "${logs[k]}" "$TIMEOUT"; then
			split_pass "vm$k wrote and read after the attack and unmounted"
		else
			split_fail "vm$k after the attack"
		fi
		if [ "$("$ctl" read "$prefix" $k | sha256sum | cut -d' ' -f1)" = "$(split_sha $k "after the attack from vm$k\n")" ]; then
			split_pass "host reads vm$k's data written after the attack"
		else
			split_fail "host reads vm$k after the attack"
		fi
	done

	log "split: phase 4: the same attack on the shared-mode region (reported, not judged)"
	"$ctl" status "$shared" >&2
	"$ctl" status --json "$shared" > "$WORK/shared-status-before.json"
	cp "$shared" "$WORK/shared.before"
	split_go shared
	if guest_finish "${pids[2]}" "${logs[2]}" "$TIMEOUT"; then
		split_pass "the rogue attacked the shared-mode region"
	else
		split_fail "the rogue on the shared-mode region"
	fi
	tr -d '\r' < "${logs[2]}" | sed -n '/attacked-split/,$s/^IVSHM-INFO \(attack .*\)/  rogue: \1/p' >&2
	out=$(python3 "$GUEST_DIR/region_diff.py" "$WORK/shared.before" "$shared")
	split_report "shared mode, damage to the region file: $(echo "$out" | tr '\n' ';')"
	if out=$("$ctl" status "$shared" 2>&1); then
		split_report "shared mode, ivshmctl status after the attack: $(echo "$out" | tr '\n' ';')"
	else
		split_report "shared mode, ivshmctl status after the attack fails: $out"
	fi
	for k in 0 1; do
		if [ "$("$ctl" read "$shared" $k 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$(split_sha $k)" ]; then
			split_report "shared mode, vm$k's data: intact"
		else
			split_report "shared mode, vm$k's data: lost or changed"
		fi
	done
	eval "$HOST_CLEANUP"; HOST_CLEANUP=

	if [ "$SPLIT_FAILS" -eq 0 ]; then
		log "split: PASS ($((SECONDS - t0)) s)"
	else
		log "split: FAIL: $SPLIT_FAILS check(s) failed ($((SECONDS - t0)) s)"
		return 1
	fi
}
