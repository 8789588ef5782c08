# SPDX-License-Identifier: GPL-2.0
# Shared functions of the ivshmfs guest harness; sourced, not run.

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$GUEST_DIR/../.." && pwd)

log() { printf '[guest-harness] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The Debian kernel the guests boot: newest /boot/vmlinuz-*-amd64 that has
# modules and headers installed, unless GUEST_KVER is set.
guest_kver() {
	if [ -n "${GUEST_KVER:-}" ]; then
		echo "$GUEST_KVER"
		return
	fi
	local k v
	for k in $(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sort -V -r); do
		v=${k#/boot/vmlinuz-}
		if [ -d "/lib/modules/$v/kernel" ] && [ -e "/usr/src/linux-headers-$v/Makefile" ]; then
			echo "$v"
			return
		fi
	done
	die "no Debian kernel with modules and headers found (install linux-image-amd64 linux-headers-amd64)"
}

guest_kdir() {
	local v
	v=$(guest_kver)
	if [ -e "/lib/modules/$v/build/Makefile" ]; then
		echo "/lib/modules/$v/build"
	else
		echo "/usr/src/linux-headers-$v"
	fi
}

# Work directory for build products of the harness (module, initramfs, logs).
guest_work() {
	local w=${GUEST_WORK:-${1:-$REPO_DIR/build}/guest}
	mkdir -p "$w"
	echo "$w"
}

pkg_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Install what the harness needs when it is missing (fresh CI machine).
# kmod gives modinfo/depmod, fuse3 the host-side fusermount3.
GUEST_PACKAGES="qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static cpio gzip gcc libc6-dev make kmod fuse3 python3 xz-utils"

guest_install_deps() {
	local missing=() p
	for p in $GUEST_PACKAGES; do
		pkg_installed "$p" || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		return 0
	fi
	[ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root to install them"
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# ---- building ----

# Build ivshm.ko out of the source tree into WORK/module; print its path.
guest_build_module() {
	local work=$1 kdir
	kdir=$(guest_kdir)
	rm -rf "$work/module"
	mkdir -p "$work/module"
	cp "$REPO_DIR"/kernel/Makefile "$REPO_DIR"/kernel/ivshm.c "$work/module/"
	cp -r "$REPO_DIR"/kernel/uapi "$work/module/"
	make -s -C "$work/module" KDIR="$kdir" W=1 >&2 || die "building ivshm.ko against $kdir failed"
	echo "$work/module/ivshm.ko"
}

# Build the static ivshm-test program; print its path.
guest_build_test_prog() {
	local work=$1
	cc -static -O2 -Wall -Wextra -Werror -I "$REPO_DIR/kernel/uapi" \
		-o "$work/ivshm-test" "$GUEST_DIR/ivshm-test.c" >&2 || die "building ivshm-test failed"
	echo "$work/ivshm-test"
}

# ---- booting ----

# guest_kernel WORK: the kernel image QEMU boots. Debian's bzImage is
# XZ-compressed and decompressing it under TCG takes seconds; the kernel has
# CONFIG_PVH, so QEMU can boot the ELF vmlinux inside it directly. Extract it
# once into WORK; fall back to the bzImage if that fails.
guest_kernel() {
	local work=$1 kver vmlinux
	kver=$(guest_kver)
	vmlinux=$work/vmlinux-$kver
	if [ ! -s "$vmlinux" ] && command -v python3 >/dev/null; then
		python3 - "/boot/vmlinuz-$kver" "$vmlinux.tmp" <<'PY' && mv "$vmlinux.tmp" "$vmlinux"
import lzma, sys
data = open(sys.argv[1], "rb").read()
off = data.find(b"\xfd7zXZ\x00")
if off < 0:
    sys.exit(1)
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
if elf[:4] != b"\x7fELF":
    sys.exit(1)
open(sys.argv[2], "wb").write(elf)
PY
		rm -f "$vmlinux.tmp"
	fi
	if [ -s "$vmlinux" ] && grep -q '^CONFIG_PVH=y' "/boot/config-$kver" 2>/dev/null; then
		echo "$vmlinux"
	else
		echo "/boot/vmlinuz-$kver"
	fi
}

# GUEST_ACCEL=kvm where KVM really works (GUEST_QEMU_ARGS="-cpu host" then);
# GUEST_QEMU_ARGS adds QEMU arguments. GUEST_KERNEL is set by guest_kernel.
GUEST_ACCEL=${GUEST_ACCEL:-tcg}
GUEST_MEM=${GUEST_MEM:-256M}

# guest_start NAME INITRD SHMFILE SCENARIO ARGS LOG [SHMFILE2]
# Boot one guest in the background, hostname NAME, its ivshmem-plain device
# backed by SHMFILE (whose size is the BAR2 size); SHMFILE2 adds a second
# ivshmem-plain device. SHMFILE "none": no device of the harness, only those
# of GUEST_QEMU_ARGS (e.g. the output of `ivshmctl qemu-args`). Prints QEMU's pid.
# The console is LOG; a second serial port, the socket LOG.ctl, is where
# guest_dump asks the guest what its tasks wait for (see /init).
guest_start() {
	local name=$1 initrd=$2 shm=$3 scenario=$4 args=$5 logf=$6 shm2=${7:-}
	local extra=()
	if [ "$shm" != none ]; then
		extra=(-object "memory-backend-file,id=shm,share=on,mem-path=$shm,size=$(stat -c %s "$shm")"
		       -device ivshmem-plain,memdev=shm)
	fi
	if [ -n "$shm2" ]; then
		extra+=(-object "memory-backend-file,id=shm2,share=on,mem-path=$shm2,size=$(stat -c %s "$shm2")"
		        -device ivshmem-plain,memdev=shm2)
	fi
	: > "$logf"
	# A socket's path has a length limit: no control port past it.
	local ctl=()
	[ ${#logf} -le 96 ] && ctl=(-serial "unix:$logf.ctl,server=on,wait=off")
	# shellcheck disable=SC2086
	qemu-system-x86_64 -accel "$GUEST_ACCEL" -machine "${GUEST_MACHINE:-pc}" -cpu max -smp 1 -m "$GUEST_MEM" \
		-nodefaults -no-reboot -display none -monitor none \
		-serial "file:$logf" "${ctl[@]}" \
		-kernel "${GUEST_KERNEL:-/boot/vmlinuz-$(guest_kver)}" -initrd "$initrd" \
		-append "console=ttyS0 quiet loglevel=4 panic=-1 ${GUEST_APPEND:-}ivshmfs.hostname=$name ivshmfs.scenario=$scenario ivshmfs.args=$args" \
		"${extra[@]}" \
		${GUEST_QEMU_ARGS:-} >"$logf.qemu" 2>&1 &
	echo $!
}

# guest_wait_line PID LOG REGEX TIMEOUT: wait until LOG has a line matching
# REGEX; fails if the guest exits or the time runs out first.
guest_wait_line() {
	local pid=$1 logf=$2 re=$3 timeout=$4 t0=$SECONDS
	while ! tr -d '\r' < "$logf" | grep -Eq "$re"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			tr -d '\r' < "$logf" | grep -Eq "$re" && return 0
			log "guest $logf exited before printing /$re/"
			return 1
		fi
		if [ $((SECONDS - t0)) -ge "$timeout" ]; then
			log "timeout ($timeout s) waiting for /$re/ in $logf"
			guest_dump "$pid" "$logf"
			return 1
		fi
		sleep 0.2
	done
}

# guest_dump PID LOG: a guest missed its bound: it prints, between
# IVSHM-DUMP lines on its console, what every task waits for (hang_dump in
# scenarios/common.sh); wait for that (GUEST_DUMP_WAIT seconds, default 60)
# so that the log of a hang explains it.
guest_dump() {
	local pid=$1 logf=$2 t0=$SECONDS before
	[ -S "$logf.ctl" ] && kill -0 "$pid" 2>/dev/null || return 0
	before=$(tr -d '\r' < "$logf" | grep -c '^IVSHM-DUMP end' || true)
	log "asking $(basename "$logf") what its tasks wait for"
	python3 - "$logf.ctl" <<'PY' || { log "no dump: the guest's control port did not answer"; return 0; }
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"dump\n")
time.sleep(1)  # the UART takes a few bytes at a time: let QEMU pass them on
s.close()
PY
	while [ "$(tr -d '\r' < "$logf" | grep -c '^IVSHM-DUMP end' || true)" -le "$before" ]; do
		kill -0 "$pid" 2>/dev/null || return 0
		if [ $((SECONDS - t0)) -ge "${GUEST_DUMP_WAIT:-60}" ]; then
			log "no complete dump from $(basename "$logf") within ${GUEST_DUMP_WAIT:-60} s"
			return 0
		fi
		sleep 0.5
	done
}

guest_kill() {
	local pid=$1
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

guest_show_log() {
	local logf=$1
	echo "----- console of $(basename "$logf") -----" >&2
	tr -d '\r' < "$logf" >&2
	if [ -s "$logf.qemu" ]; then
		echo "----- qemu stderr -----" >&2
		cat "$logf.qemu" >&2
	fi
	echo "----- end of $(basename "$logf") -----" >&2
}

# guest_finish PID LOG TIMEOUT: wait for the guest to power off (killing it
# after TIMEOUT seconds) and judge its console: success needs IVSHM-DONE with
# rc=0 and no FAIL line. The console is printed on failure.
guest_finish() {
	local pid=$1 logf=$2 timeout=$3 t0=$SECONDS ok=1
	while kill -0 "$pid" 2>/dev/null; do
		if [ $((SECONDS - t0)) -ge "$timeout" ]; then
			log "timeout: guest $(basename "$logf") still running after $timeout s; killing it"
			guest_dump "$pid" "$logf"
			ok=0
			break
		fi
		sleep 0.2
	done
	guest_kill "$pid"
	tr -d '\r' < "$logf" | grep -E '^IVSHM-RESULT' >&2 || true
	if ! tr -d '\r' < "$logf" | grep -Eq '^IVSHM-DONE .* rc=0( |$)'; then
		ok=0
	fi
	if tr -d '\r' < "$logf" | grep -q 'IVSHM-RESULT FAIL'; then
		ok=0
	fi
	if [ $ok -eq 0 ]; then
		guest_show_log "$logf"
		return 1
	fi
	return 0
}
