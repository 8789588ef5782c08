# SPDX-License-Identifier: GPL-2.0
# Functions for guest scenarios (busybox sh). Sourced.
FAILS=0
pass() { echo "IVSHM-RESULT PASS $*"; }
fail() { echo "IVSHM-RESULT FAIL $*"; FAILS=$((FAILS + 1)); }
# check NAME COMMAND...: PASS if COMMAND succeeds, else FAIL with its output.
check() {
	_name=$1
	shift
	if _out=$("$@" 2>&1); then
		pass "$_name"
	else
		fail "$_name $(echo "$_out" | tail -n 5 | tr '\n' ' ')"
	fi
}
info() { echo "IVSHM-INFO $*"; }
# wait_until SECONDS COMMAND...: retry COMMAND every 0.2 s.
wait_until() {
	_t=$(($1 * 5))
	shift
	while ! "$@" >/dev/null 2>&1; do
		_t=$((_t - 1))
		[ $_t -le 0 ] && return 1
		sleep 0.2
	done
}
# ivshm_bdf N: PCI address of /dev/ivshmN.
ivshm_bdf() { basename "$(readlink -f /sys/class/misc/ivshm${1:-0}/device)"; }
# first_ivshmem_bdf: PCI address of the first 1af4:1110 device.
first_ivshmem_bdf() {
	for d in /sys/bus/pci/devices/*; do
		if [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1110 ]; then
			basename "$d"
			return 0
		fi
	done
	return 1
}
finish() { [ "$FAILS" -eq 0 ]; exit $?; }

# ---- hangs explain themselves ----
# hang_dump WHY: what every task of the guest is blocked on, on the console
# between IVSHM-DUMP lines: each user task's threads (state, wchan, kernel
# stack), the kernel's blocked tasks (sysrq w) and each FUSE connection's
# waiting requests. Shell builtins only where it loops: a guest that hangs
# may not fork well. The host asks for it when a guest misses its bound.
_dump_file() { # _dump_file PREFIX FILE: FILE's lines, each after PREFIX
	[ -r "$2" ] || return 0
	while IFS= read -r _l || [ -n "$_l" ]; do echo "$1$_l"; done < "$2" 2>/dev/null
}
hang_dump() {
	echo "IVSHM-DUMP begin: $*"
	for _p in /proc/[0-9]*; do
		# Kernel threads have no command line: sysrq w shows those blocked.
		[ -e "$_p/exe" ] || continue
		_pid=${_p#/proc/}
		_cmd=
		read -r _cmd < "$_p/comm" 2>/dev/null
		for _t in "$_p"/task/[0-9]*; do
			_tid=${_t##*/} _st= _wchan= _comm=
			read -r _comm < "$_t/comm" 2>/dev/null
			while read -r _k _v; do
				[ "$_k" = State: ] && _st=$_v && break
			done < "$_t/status" 2>/dev/null
			read -r _wchan < "$_t/wchan" 2>/dev/null
			echo "IVSHM-DUMP task $_pid/$_tid $_cmd/$_comm state=$_st wchan=${_wchan:-0}"
			_dump_file "IVSHM-DUMP   " "$_t/stack"
		done
	done
	grep -q ' /sys/fs/fuse/connections ' /proc/mounts ||
		mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null
	for _c in /sys/fs/fuse/connections/*; do
		[ -r "$_c/waiting" ] || continue
		read -r _w < "$_c/waiting"
		echo "IVSHM-DUMP fuse connection ${_c##*/}: $_w requests waiting"
	done
	# Blocked (D state) tasks with their stacks, kernel threads included.
	echo w > /proc/sysrq-trigger 2>/dev/null
	echo "IVSHM-DUMP end"
}
# bounded SECONDS NAME COMMAND...: runs COMMAND; when it takes longer than
# SECONDS, dumps what every task waits for (hang_dump, on the console: a
# check's output is cut to a few lines), then kills it and
# returns 124 (as timeout(1) does). Otherwise COMMAND's status.
bounded() {
	_secs=$1 _what=$2
	shift 2
	"$@" &
	_bpid=$!
	_ticks=$((_secs * 5))
	while kill -0 "$_bpid" 2>/dev/null; do
		_ticks=$((_ticks - 1))
		if [ "$_ticks" -le 0 ]; then
			hang_dump "$_what still running after $_secs s" > /dev/console 2>&1
			kill -TERM "$_bpid" 2>/dev/null
			sleep 1
			kill -KILL "$_bpid" 2>/dev/null
			wait "$_bpid" 2>/dev/null
			return 124
		fi
		sleep 0.2
	done
	wait "$_bpid"
}

# ---- end-to-end content ----
# Partition K of the e2e scenario holds: a text line, then BINLEN
# pseudo-random bytes (seed 100+K), then any extra lines of later phases.
text_of() { # text_of K HOSTID
	if [ "$1" = "$2" ]; then echo "hello from host"; else echo "hello from vm$1"; fi
}
content_of() { # content_of K HOSTID BINLEN [EXTRA]
	text_of "$1" "$2"
	ivshm-test gen $((100 + $1)) "$3"
	[ -n "${4:-}" ] && printf '%b' "$4"
	return 0
}
size_of() { content_of "$@" | wc -c; }
sha_of() { content_of "$@" | sha256sum | cut -d' ' -f1; }
file_size() { wc -c < "$1" 2>/dev/null || echo 0; }
# has_size FILE N: FILE holds at least N bytes
has_size() { [ "$(file_size "$1")" -ge "$2" ]; }
# prefix_sha FILE N
prefix_sha() { head -c "$2" "$1" | sha256sum | cut -d' ' -f1; }
# check_partition K MOUNT HOSTID BINLEN: waits until MOUNT/vmK holds K's text
# and binary data in full, then checks both (the text line, the sha256).
check_partition() {
	_k=$1 _m=$2 _n=$(size_of "$1" "$3" "$4")
	if wait_until 300 has_size "$_m/vm$_k" "$_n"; then
		check "read-vm$_k-text" test "$(head -n 1 "$_m/vm$_k")" = "$(text_of "$_k" "$3")"
		check "read-vm$_k-binary-sha256" test "$(prefix_sha "$_m/vm$_k" "$_n")" = "$(sha_of "$_k" "$3" "$4")"
	else
		fail "read-vm$_k timed out: $(file_size "$_m/vm$_k") of $_n bytes"
	fi
}
is_mounted() { grep -q " $1 fuse" /proc/mounts; }
