# SPDX-License-Identifier: GPL-2.0
# The end-to-end scenario, host side; sourced by run-e2e.sh (which provides
# INITRD, TESTPROG, BUILD_DIR, WORK, TIMEOUT, new_shm, PIDS and HOST_CLEANUP).
#
# The host formats a region; vm0 and vm1 mount ivshmfs over /dev/ivshm0 and
# the host mounts its own view as peer 2. Guests and host exchange text and
# binary data (checked by sha256), guests check EACCES on others' files, and
# `ivshmctl status` of each guest is compared with the host's. A third guest
# with vm0's id must be refused. vm1's QEMU is killed and booted again: its
# committed data survives and its daemon appends after it. The host signals
# phases to the guests with go:* lines appended to its own partition.

E2E_HOSTID=2
E2E_BINLEN=200000

e2e_pass() { echo "E2E PASS $*" >&2; }
e2e_fail() { echo "E2E FAIL $*" >&2; E2E_FAILS=$((E2E_FAILS + 1)); }

# e2e_content K [EXTRA]: the bytes partition K should hold (see common.sh).
e2e_content() {
	if [ "$1" = "$E2E_HOSTID" ]; then echo "hello from host"; else echo "hello from vm$1"; fi
	"$TESTPROG" gen $((100 + $1)) "$E2E_BINLEN"
	[ -n "${2:-}" ] && printf '%b' "$2"
	return 0
}
e2e_sha() { e2e_content "$@" | sha256sum | cut -d' ' -f1; }

# e2e_status_matches GUEST_LOG HOST_JSON: the guest's `ivshmctl status --json`
# agrees with the host's on the layout and on every partition's owner, length,
# generation and last write (liveness and heartbeats are time-dependent).
e2e_status_matches() {
	python3 - "$1" "$2" <<'PY'
import json, sys
guest = None
for line in open(sys.argv[1], errors="replace"):
    line = line.strip("\r\n")
    if line.startswith("IVSHM-STATUS "):
        guest = json.loads(line[len("IVSHM-STATUS "):])
host = json.loads(open(sys.argv[2]).read())
if guest is None:
    sys.exit("no IVSHM-STATUS line in the guest console")
top = ["version", "region_size", "format_id", "format_time_ns", "partition_count"]
part = ["id", "claimed", "owner_pid", "owner_since_ns", "length", "capacity",
        "generation", "last_write_ns"]
diffs = [f"{k}: guest {guest.get(k)} host {host.get(k)}" for k in top if guest.get(k) != host.get(k)]
for g, h in zip(guest.get("partitions", []), host.get("partitions", [])):
    diffs += [f"partition {h.get('id')} {k}: guest {g.get(k)} host {h.get(k)}"
              for k in part if g.get(k) != h.get(k)]
if diffs:
    sys.exit("; ".join(diffs))
print(f"{len(host['partitions'])} partitions agree")
PY
}

run_e2e() {
	local ctl=$BUILD_DIR/tools/ivshmctl fs=$BUILD_DIR/fs/ivshmfs
	local shm mnt t0=$SECONDS t pid0 pid1 pid1b piddup log0 log1 log1b logdup k out
	E2E_FAILS=0
	if [ ! -x "$ctl" ] || [ ! -x "$fs" ]; then
		log "e2e: FAIL: needs $ctl and $fs (build the project first)"
		return 1
	fi
	command -v python3 >/dev/null || { log "e2e: FAIL: needs python3"; return 1; }

	shm=$(new_shm e2e 16M)
	rm -f "$shm"
	"$ctl" format --size 16M --partitions 3 "$shm" >&2 || { log "e2e: format failed"; return 1; }
	mnt=$(mktemp -d /tmp/ivshmfs-e2e-host.XXXXXX)
	HOST_CLEANUP="fusermount3 -u '$mnt' 2>/dev/null || umount -l '$mnt' 2>/dev/null; rmdir '$mnt' 2>/dev/null"
	if "$fs" -o id=$E2E_HOSTID "$shm" "$mnt" >"$WORK/e2e-host-ivshmfs.log" 2>&1; then
		e2e_pass "host mounts its view as peer $E2E_HOSTID"
	else
		e2e_fail "host mount: $(cat "$WORK/e2e-host-ivshmfs.log")"
		return 1
	fi
	e2e_content $E2E_HOSTID >> "$mnt/vm$E2E_HOSTID" || e2e_fail "host writes its partition"

	log "e2e: phase 1: vm0 and vm1 exchange data with each other and the host"
	log0=$WORK/e2e-vm0.log log1=$WORK/e2e-vm1.log
	pid0=$(guest_start vm0 "$INITRD" "$shm" e2e "1,$E2E_HOSTID,$E2E_BINLEN" "$log0"); PIDS+=("$pid0")
	pid1=$(guest_start vm1 "$INITRD" "$shm" e2e "0,$E2E_HOSTID,$E2E_BINLEN" "$log1"); PIDS+=("$pid1")
	t=$SECONDS
	if guest_wait_line "$pid0" "$log0" '^IVSHM-READY status' "$TIMEOUT" &&
	   guest_wait_line "$pid1" "$log1" '^IVSHM-READY status' "$TIMEOUT"; then
		e2e_pass "vm0 and vm1 wrote, read each other and the host ($((SECONDS - t)) s)"
	else
		e2e_fail "phase 1 did not complete"
		guest_show_log "$log0"; guest_show_log "$log1"
		return 1
	fi
	for k in 0 1; do
		if [ "$(cat "$mnt/vm$k" | sha256sum | cut -d' ' -f1)" = "$(e2e_sha $k)" ]; then
			e2e_pass "host reads vm$k through its mount"
		else
			e2e_fail "host reads vm$k through its mount"
		fi
		if [ "$("$ctl" read "$shm" $k | sha256sum | cut -d' ' -f1)" = "$(e2e_sha $k)" ]; then
			e2e_pass "host reads vm$k with ivshmctl read"
		else
			e2e_fail "host reads vm$k with ivshmctl read"
		fi
	done
	"$ctl" status --json "$shm" > "$WORK/e2e-host-status.json"
	"$ctl" status "$shm" >&2
	for k in 0 1; do
		local lg=$log0
		[ $k = 1 ] && lg=$log1
		if out=$(e2e_status_matches "$lg" "$WORK/e2e-host-status.json" 2>&1); then
			e2e_pass "ivshmctl status in vm$k matches the host's: $out"
		else
			e2e_fail "ivshmctl status in vm$k differs from the host's: $out"
		fi
	done

	log "e2e: phase 2: a second guest with vm0's id is refused"
	logdup=$WORK/e2e-vm0-duplicate.log
	piddup=$(guest_start vm0 "$INITRD" "$shm" e2e-dup "" "$logdup"); PIDS+=("$piddup")
	if guest_finish "$piddup" "$logdup" "$TIMEOUT"; then
		e2e_pass "second daemon for id 0 refused: $(tr -d '\r' < "$logdup" | sed -n 's/^IVSHM-INFO ivshmfs exit status //p')"
	else
		e2e_fail "duplicate id"
	fi

	log "e2e: phase 3: vm1 commits, is killed, boots again and appends"
	printf 'go:kill\n' >> "$mnt/vm$E2E_HOSTID"
	if guest_wait_line "$pid1" "$log1" '^IVSHM-READY killme' "$TIMEOUT"; then
		guest_kill "$pid1"
		e2e_pass "vm1's QEMU killed (SIGKILL) after its commit"
	else
		e2e_fail "vm1 did not commit before the kill"
		guest_show_log "$log1"
		guest_kill "$pid1"
	fi
	if tr -d '\r' < "$log1" | grep -q 'IVSHM-RESULT FAIL'; then
		e2e_fail "vm1 (before the kill) reported failures"
		guest_show_log "$log1"
	fi
	if [ "$("$ctl" read "$shm" 1 | sha256sum | cut -d' ' -f1)" = "$(e2e_sha 1 'committed before kill\n')" ]; then
		e2e_pass "vm1's committed data is in the region after the kill"
	else
		e2e_fail "vm1's committed data after the kill"
	fi
	# The killed daemon's claim goes stale once its heartbeat stops.
	t=$SECONDS
	until "$ctl" status --json "$shm" | python3 -c 'import json,sys; p=json.load(sys.stdin)["partitions"][1]; sys.exit(0 if not p["alive"] else 1)'; do
		if [ $((SECONDS - t)) -ge 60 ]; then
			e2e_fail "vm1's claim still alive 60 s after the kill"
			break
		fi
		sleep 0.5
	done
	log "e2e: vm1's claim seen as not alive $((SECONDS - t)) s after the kill"
	log1b=$WORK/e2e-vm1-reboot.log
	pid1b=$(guest_start vm1 "$INITRD" "$shm" e2e-resume "$E2E_HOSTID,$E2E_BINLEN" "$log1b"); PIDS+=("$pid1b")
	if guest_finish "$pid1b" "$log1b" "$TIMEOUT"; then
		e2e_pass "vm1 booted again: its data survived and it appended after it"
	else
		e2e_fail "vm1 after reboot"
	fi
	if [ "$(sha256sum < "$mnt/vm1" | cut -d' ' -f1)" = "$(e2e_sha 1 'committed before kill\nappended after reboot\n')" ]; then
		e2e_pass "host sees vm1's data before the kill and after the reboot"
	else
		e2e_fail "host view of vm1 after the reboot"
	fi

	log "e2e: phase 4: vm0 finishes"
	printf 'go:finish\n' >> "$mnt/vm$E2E_HOSTID"
	if guest_finish "$pid0" "$log0" "$TIMEOUT"; then
		e2e_pass "vm0 read vm1's appended data and unmounted"
	else
		e2e_fail "vm0"
	fi
	"$ctl" status "$shm" >&2
	eval "$HOST_CLEANUP"; HOST_CLEANUP=
	if [ "$E2E_FAILS" -eq 0 ]; then
		log "e2e: PASS ($((SECONDS - t0)) s)"
	else
		log "e2e: FAIL: $E2E_FAILS check(s) failed ($((SECONDS - t0)) s)"
		return 1
	fi
}
