#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Build the test initramfs (gzip'd newc cpio) for the guest harness.
#
#   mkinitramfs.sh [--build-dir DIR] [--modules "NAME..."] --module ivshm.ko --test-prog ivshm-test -o OUT
#
# --modules adds Debian kernel modules (with their dependencies), loaded at
# boot before ivshm.ko.
# Contents: static busybox, the Debian kernel's fuse.ko (and its
# dependencies), ivshm.ko, ivshmctl and ivshmfs from the CMake build DIR (when
# built) with every shared library they need, ivshm-test, /init and the
# scenarios of scripts/guest/scenarios.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_dir= module= test_prog= out= extra_modules=
while [ $# -gt 0 ]; do
	case "$1" in
	--build-dir) build_dir=$2; shift 2 ;;
	--module) module=$2; shift 2 ;;
	--modules) extra_modules=$2; shift 2 ;;
	--test-prog) test_prog=$2; shift 2 ;;
	-o) out=$2; shift 2 ;;
	*) die "mkinitramfs.sh: unknown argument $1" ;;
	esac
done
[ -n "$out" ] && [ -f "$module" ] && [ -x "$test_prog" ] || die "usage: mkinitramfs.sh [--build-dir DIR] --module ivshm.ko --test-prog ivshm-test -o OUT"

kver=$(guest_kver)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,lib/modules,etc,proc,sys,dev,tmp,run,root,mnt/ivshm,scenarios}

# busybox and its applets.
file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' ||
	ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' || die "/bin/busybox is not static (install busybox-static)"
cp /bin/busybox "$stage/bin/busybox"
for a in $(/bin/busybox --list-full); do
	[ -e "$stage/$a" ] || ln -s /bin/busybox "$stage/$a"
done

# Kernel modules: name -> file, uncompressed, with dependencies first.
declare -A seen=()
order=()
add_module() {
	local name=$1 path dep
	[ -n "${seen[$name]:-}" ] && return
	seen[$name]=1
	path=$(modinfo -k "$kver" -n "$name" 2>/dev/null) || die "module $name not found for $kver"
	for dep in $(modinfo -k "$kver" -F depends "$name" | tr , ' '); do
		add_module "$dep"
	done
	case "$path" in
	*.ko) cp "$path" "$stage/lib/modules/$name.ko" ;;
	*.ko.xz) xz -dc "$path" > "$stage/lib/modules/$name.ko" ;;
	*.ko.zst) zstd -qdc "$path" > "$stage/lib/modules/$name.ko" ;;
	*.ko.gz) gzip -dc "$path" > "$stage/lib/modules/$name.ko" ;;
	*) die "unknown module format: $path" ;;
	esac
	order+=("$name.ko")
}
add_module fuse
for m in $extra_modules; do add_module "$m"; done
cp "$module" "$stage/lib/modules/ivshm.ko"
order+=(ivshm.ko)
printf '%s\n' "${order[@]}" > "$stage/lib/modules/load-order"

# Programs and the shared libraries they need (including the loader).
# Debug info is stripped from the copies: a smaller image unpacks faster
# under TCG.
copy_stripped() {
	cp -L "$1" "$2"
	strip --strip-debug "$2" 2>/dev/null || true
}
copy_with_libs() {
	local bin=$1 dest=$2 lib
	copy_stripped "$bin" "$stage$dest"
	ldd "$bin" 2>/dev/null | grep -q 'not a dynamic' && return 0
	for lib in $(ldd "$bin" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
		[ -e "$stage$lib" ] && continue
		mkdir -p "$stage$(dirname "$lib")"
		copy_stripped "$lib" "$stage$lib"
	done
}
copy_with_libs "$test_prog" /usr/local/bin/ivshm-test
programs="ivshm-test"
if [ -n "$build_dir" ]; then
	for p in tools/ivshmctl fs/ivshmfs; do
		if [ -x "$build_dir/$p" ]; then
			copy_with_libs "$build_dir/$p" "/usr/local/bin/$(basename "$p")"
			programs="$programs $(basename "$p")"
		else
			log "warning: $build_dir/$p is not built; left out of the initramfs"
		fi
	done
	# The transfers of --mode xvm, when built.
	if [ -x "$build_dir/bench/ivshm-xvm" ]; then
		copy_with_libs "$build_dir/bench/ivshm-xvm" /usr/local/bin/ivshm-xvm
		programs="$programs ivshm-xvm"
	fi
fi
if [ -x /usr/bin/fusermount3 ]; then
	copy_with_libs /usr/bin/fusermount3 /usr/bin/fusermount3
fi

# /etc: enough for root, FUSE and hostname-derived ids.
echo 'root:x:0:0:root:/root:/bin/sh' > "$stage/etc/passwd"
echo 'root:x:0:' > "$stage/etc/group"
echo 'user_allow_other' > "$stage/etc/fuse.conf"
ln -s /proc/mounts "$stage/etc/mtab"

cp "$GUEST_DIR/init" "$stage/init"
chmod 755 "$stage/init"
cp "$GUEST_DIR"/scenarios/*.sh "$stage/scenarios/"

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
log "initramfs $out ($(du -h "$out" | cut -f1)): kernel $kver, modules ${order[*]}, programs $programs"
