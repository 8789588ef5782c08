#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Clean-room install test of the Debian packages.
#
#   tests/package/cleanroom_test.sh BUILD_DIR
#
# Builds the packages (scripts/package.sh into BUILD_DIR/package-build), then,
# in a fresh Debian 12 root made by mmdebstrap from Debian's packages (with
# nothing of the build tree), installs them with apt (dependencies resolved)
# and checks: ivshmctl --version; a region formatted in /dev/shm; two views
# mounted (one by ivshmfs, one by the documented fstab line) exchanging data;
# the daemons release their partitions on unmount; man ivshmfs renders;
# pkg-config and C programs built against the installed library and headers
# (shared and static); the DKMS package built the module against the
# installed 6.1 headers; systemd-analyze verify of the unit; purging the
# packages leaves nothing behind. Then a QEMU guest loads the DKMS-built
# module and runs the packaged ivshmfs (scripts/guest/run-e2e.sh --mode
# driver with those files; IVSHMFS_CLEANROOM_GUEST=0 skips it).
#
# The root is cached under IVSHMFS_ROOT_CACHE (default /var/cache/ivshmfs-test),
# keyed by its package list, the apt sources and the packages' dependencies,
# with the .debs of those dependencies downloaded once; each run works on an
# overlay of it that disappears afterwards. Needs root, mmdebstrap, overlayfs.
# Exit 77 (skipped) when one of those is missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=$(realpath -m "${1:-$repo/build}")
cache_root=${IVSHMFS_ROOT_CACHE:-/var/cache/ivshmfs-test}
sources=${IVSHMFS_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}
[ -f "$sources" ] || sources=/etc/apt/sources.list

say() { printf '[cleanroom] %s\n' "$*" >&2; }
skip() { say "skipped: $*"; exit 77; }
FAILS=0
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; FAILS=$((FAILS + 1)); }

[ "$(id -u)" -eq 0 ] || skip "needs root (chroot, mounts)"
command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (scripts/setup.sh installs it)"
command -v unshare >/dev/null || skip "unshare is missing"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || skip "no overlayfs"

# The kernel whose headers the DKMS build uses: the guest harness's kernel.
# shellcheck source=../../scripts/guest/lib.sh
. "$repo/scripts/guest/lib.sh"
kver=$(guest_kver)

t0=$SECONDS
say "building the packages"
"$repo/scripts/package.sh" --build-dir "$build/package-build" >"$build/package-build.log" 2>&1 ||
  { tail -n 30 "$build/package-build.log" >&2; say "FAIL scripts/package.sh"; exit 1; }
mapfile -t debs < <(ls "$build"/package-build/packages/*.deb)
version=$(dpkg-deb -f "${debs[0]}" Version)
say "packages: $(printf '%s ' "${debs[@]##*/}") ($((SECONDS - t0)) s)"

# ---- the cached root ----
# What the test itself uses besides the packages: man, C and C++ compilers,
# pkg-config, CMake, mount, systemd-analyze, the headers of the guest kernel.
base_packages="man-db gcc g++ libc6-dev pkg-config cmake mount systemd linux-headers-$kver"
deps=$(for d in "${debs[@]}"; do dpkg-deb -f "$d" Depends Recommends; done | sort -u)
key=$( { echo "$base_packages"; cat "$sources"; echo "$deps"; } | sha256sum | cut -c1-16)
root_cache=$cache_root/bookworm-$key
t1=$SECONDS
if [ ! -f "$root_cache/.complete" ]; then
  say "creating the Debian 12 root $root_cache (cold cache)"
  rm -rf "$root_cache"
  mkdir -p "$cache_root"
  # Keep apt's lists and archives: the test's apt install then resolves
  # against the same index and finds the dependencies already downloaded.
  if [ ! -f "$root_cache.tmp/.bootstrapped" ]; then
    rm -rf "$root_cache.tmp"
    mmdebstrap --variant=apt --skip=cleanup/apt --include="${base_packages// /,}" \
      bookworm "$root_cache.tmp" "$sources" >"$build/cleanroom-mmdebstrap.log" 2>&1 ||
      { tail -n 30 "$build/cleanroom-mmdebstrap.log" >&2; say "FAIL mmdebstrap"; rm -rf "$root_cache.tmp"; exit 1; }
    touch "$root_cache.tmp/.bootstrapped"
  fi
  mkdir -p "$root_cache.tmp/tmp/debs"
  cp "${debs[@]}" "$root_cache.tmp/tmp/debs/"
  # Download (only) what the packages depend on.
  chroot "$root_cache.tmp" env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get install -y -q --download-only --no-install-recommends /tmp/debs/*.deb' >>"$build/cleanroom-mmdebstrap.log" 2>&1 ||
    { tail -n 30 "$build/cleanroom-mmdebstrap.log" >&2; say "FAIL downloading the dependencies"; exit 1; }
  rm -rf "$root_cache.tmp/tmp/debs" "$root_cache.tmp/.bootstrapped"
  touch "$root_cache.tmp/.complete"
  mv "$root_cache.tmp" "$root_cache"
  # Roots of other keys are stale: keep the cache to one root.
  find "$cache_root" -mindepth 1 -maxdepth 1 -name 'bookworm-*' ! -path "$root_cache" -exec rm -rf {} +
  say "root created in $((SECONDS - t1)) s ($(du -sh "$root_cache" | cut -f1))"
else
  say "using the cached root $root_cache"
fi

# ---- an overlay of it, in private mount and PID namespaces ----
# Whatever the root mounts or starts ends with the namespaces.
work=$(mktemp -d /var/tmp/ivshmfs-cleanroom.XXXXXX)
out=$build/cleanroom
rm -rf "$out"
mkdir -p "$out"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work"/{upper,work,root}
cp "${debs[@]}" "$work/"
cp "$here/c_api_program.c" "$here/api2016_program.c" "$work/"
mkdir -p "$work/cmake_consumer"
cp "$here/cmake_consumer/CMakeLists.txt" "$work/cmake_consumer/"

# Runs inside the chroot (bash -s). Prints PASS/FAIL lines; the caller counts.
cat >"$work/inside.sh" <<'INSIDE'
set -uo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; }
check() {
  local n=$1; shift
  if out=$("$@" 2>&1); then pass "$n"; else fail "$n: $(echo "$out" | tail -n 5 | tr '\n' ' ')"; echo "$out" | sed 's/^/  | /'; fi
}
# Every path of the root, but apt's and dpkg's state, logs, caches and
# depmod's indexes (modules.alias, ...: regenerated by every depmod, owned by
# no package; that ivshm left them is checked separately).
snapshot() {
  find / -xdev \( -path /tmp -o -path /var/cache -o -path /var/lib/apt -o -path /var/lib/dpkg -o -path /var/log \
    -o -path /run -o -path /root -o -path /etc/ld.so.cache -o -path '/usr/lib/modules/*/modules.*' \) -prune -o -print | sort
  md5sum /etc/group /etc/gshadow /etc/passwd 2>/dev/null
}
snapshot > /tmp/before.list

check apt-install apt-get install -y -q --no-install-recommends /tmp/pkgs/*.deb
check ivshmctl-version sh -c "ivshmctl --version | grep -q '^ivshmctl $VERSION_UPSTREAM '"
check ivshmfs-version sh -c "ivshmfs --version 2>&1 | grep -q 'ivshmfs version $VERSION_UPSTREAM'"
check group-ivshm getent group ivshm
check udev-rule test -f /lib/udev/rules.d/60-ivshm.rules

# A region and two views of it: ivshmfs directly, and the documented fstab line.
check format ivshmctl format --size 4M --partitions 2 /dev/shm/cleanroom
mkdir -p /mnt/a /mnt/ivshm
check mount-ivshmfs ivshmfs -o id=0 /dev/shm/cleanroom /mnt/a
echo "/dev/shm/cleanroom /mnt/ivshm fuse.ivshmfs nofail,x-systemd.requires=dev-ivshm0.device,id=1,allow_other 0 0" >> /etc/fstab
check mount-fstab-line mount /mnt/ivshm
check fstab-mounted sh -c "grep -q ' /mnt/ivshm fuse.ivshmfs ' /proc/mounts"
echo "hello from 0" >> /mnt/a/vm0
echo "hello from 1" >> /mnt/ivshm/vm1
check exchange-0-to-1 sh -c "test \"\$(cat /mnt/ivshm/vm0)\" = 'hello from 0'"
check exchange-1-to-0 sh -c "test \"\$(cat /mnt/a/vm1)\" = 'hello from 1'"
check own-file-only sh -c "! echo x >> /mnt/a/vm1"
check umount-a umount /mnt/a
check umount-fstab umount /mnt/ivshm
rmdir /mnt/a /mnt/ivshm
# The daemons exit on unmount and release their partitions: a write without
# --force is accepted again. (The root has its own PID namespace: pgrep sees
# only its processes.)
for i in $(seq 50); do pgrep -x ivshmfs >/dev/null || break; sleep 0.1; done
check daemons-exited sh -c "! pgrep -a -x ivshmfs"
check partition-released sh -c "echo more | ivshmctl write /dev/shm/cleanroom 0 && ivshmctl read /dev/shm/cleanroom 0 | grep -q more"
sed -i '\|/mnt/ivshm fuse.ivshmfs|d' /etc/fstab

# What ivshmfs@.service does: ivshmfs -f in the foreground, stopped by SIGTERM,
# must unmount, release its partition and exit 0.
mkdir -p /mnt/unit
ivshmfs -f -o id=1 /dev/shm/cleanroom /mnt/unit 2>/tmp/unit.log &
unit_pid=$!
for i in $(seq 50); do grep -q ' /mnt/unit fuse.ivshmfs ' /proc/mounts && break; sleep 0.1; done
check unit-style-mounted sh -c "grep -q ' /mnt/unit fuse.ivshmfs ' /proc/mounts"
kill -TERM "$unit_pid"
wait "$unit_pid"
unit_rc=$?
check unit-style-sigterm-exit-0 sh -c "test $unit_rc -eq 0 || { cat /tmp/unit.log; exit 1; }"
check unit-style-unmounted sh -c "! grep -q ' /mnt/unit ' /proc/mounts"
check unit-style-released sh -c "echo unit | ivshmctl write /dev/shm/cleanroom 1"
rmdir /mnt/unit

check man-ivshmfs sh -c "MANWIDTH=80 man ivshmfs 2>&1 | grep -q 'mount an ivshmem shared-memory region'"
check man-ivshmctl sh -c "MANWIDTH=80 man 8 ivshmctl 2>&1 | grep -q 'ivshmctl format'"
check man-options-match-help sh -c "ivshmfs --help 2>&1 | grep -o -- '-o [a-z_]*=' | sort -u | while read -r o; do MANWIDTH=200 man ivshmfs | grep -qF -- \"\$o\" || { echo \"missing \$o\"; exit 1; }; done"

# The library: pkg-config, a C program on the shared library, the same
# program and a 2016-API program linked statically from what pkg-config says.
check pkg-config sh -c "pkg-config --cflags --libs ivshmfs | grep -q -- '-livshmfs'"
check pkg-config-static-names-deps sh -c "pkg-config --static --libs ivshmfs2016 | grep -- '-livshmfs2016' | grep -- '-livshmfs ' | grep -q -- '-lspdlog'"
check cc-shared sh -c "gcc -Wall -Wextra -Werror -o /tmp/c_shared /tmp/c_api_program.c \$(pkg-config --cflags --libs ivshmfs)"
check run-shared /tmp/c_shared /dev/shm/cleanroom 1
check ldd-shared sh -c "ldd /tmp/c_shared | grep -q 'libivshmfs.so.0 => .*/x86_64-linux-gnu/libivshmfs.so.0'"
static_libs() { pkg-config --static --libs "$1" | sed -e 's|-livshmfs2016 |/usr/lib/x86_64-linux-gnu/libivshmfs2016.a |' -e 's|-livshmfs |/usr/lib/x86_64-linux-gnu/libivshmfs.a |'; }
check cc-static sh -c "gcc -Wall -Wextra -Werror -o /tmp/c_static /tmp/c_api_program.c \$(pkg-config --cflags ivshmfs) $(static_libs ivshmfs)"
check run-static /tmp/c_static /dev/shm/cleanroom 1
check static-has-no-libivshmfs sh -c "! ldd /tmp/c_static | grep -q libivshmfs"
check cc-2016-static sh -c "gcc -Wall -Wextra -Werror -o /tmp/c_2016 /tmp/api2016_program.c \$(pkg-config --cflags ivshmfs2016) $(static_libs ivshmfs2016)"
check cmake-find-package sh -c "cmake -S /tmp/cmake_consumer -B /tmp/cmake_build >/tmp/cmake.log 2>&1 && cmake --build /tmp/cmake_build >>/tmp/cmake.log 2>&1 || { cat /tmp/cmake.log; exit 1; }"
check cmake-run-shared /tmp/cmake_build/consumer_shared /dev/shm/cleanroom 1
check cmake-run-static /tmp/cmake_build/consumer_static /dev/shm/cleanroom 1
rm -f /dev/shm/cleanroom

# DKMS built and installed the module for the headers' kernel.
check dkms-status sh -c "dkms status ivshm/$VERSION_UPSTREAM | grep -q '$KVER.*installed'"
ko=$(find /lib/modules/$KVER/updates -name 'ivshm.ko*' | head -n 1)
check dkms-module-file test -n "$ko"
check module-alias sh -c "/sbin/modinfo '$ko' | grep -q 'alias:.*pci:v00001AF4d00001110'"
check module-vermagic sh -c "/sbin/modinfo '$ko' | grep -q 'vermagic:.*$KVER '"
[ -n "$ko" ] && cp "$ko" /tmp/export/ivshm.ko
# The unit as installed, instantiated for /dev/ivshm0 (man pages included).
cp /lib/systemd/system/ivshmfs@.service /tmp/ivshmfs@ivshm0.service
check systemd-analyze-verify sh -c 'out=$(systemd-analyze verify /tmp/ivshmfs@ivshm0.service 2>&1); echo "$out"; test -z "$out"' 
cp /lib/systemd/system/ivshm-server@.service /tmp/ivshm-server@ivshm.service
check systemd-analyze-verify-server sh -c 'out=$(systemd-analyze verify /tmp/ivshm-server@ivshm.service 2>&1); echo "$out"; test -z "$out"'
check man-ivshm-server sh -c "MANWIDTH=80 man 8 ivshm-server 2>&1 | grep -q 'serve ivshmem-doorbell peers'"
# What ivshm-server@.service runs: the packaged server, stopped by SIGTERM.
truncate -s 1M /dev/shm/cleanroom-server
ivshm-server --shm /dev/shm/cleanroom-server --socket /run/ivshm-cleanroom/server.sock 2>/tmp/server.log &
server_pid=$!
for i in $(seq 50); do [ -S /run/ivshm-cleanroom/server.sock ] && break; sleep 0.1; done
check server-listens test -S /run/ivshm-cleanroom/server.sock
kill -TERM "$server_pid"
wait "$server_pid"
server_rc=$?
check server-sigterm-exit-0 sh -c "test $server_rc -eq 0 || { cat /tmp/server.log; exit 1; }"
check server-socket-removed sh -c "! test -e /run/ivshm-cleanroom/server.sock"
rm -rf /dev/shm/cleanroom-server /run/ivshm-cleanroom
cp /usr/bin/ivshmfs /usr/bin/ivshmctl /tmp/export/ 2>/dev/null

check apt-purge apt-get purge -y -q ivshmfs libivshmfs libivshmfs-dev ivshm-dkms
# What apt installed for the packages goes too (installed without recommends,
# so recommends do not keep anything).
check apt-autoremove apt-get autoremove --purge -y -q -o APT::AutoRemove::RecommendsImportant=false -o APT::AutoRemove::SuggestsImportant=false
check no-module-left sh -c "! find /lib/modules -name 'ivshm.ko*' | grep -q ."
check no-module-alias-left sh -c "! grep -qs 'pci:v00001AF4d00001110' /lib/modules/$KVER/modules.alias"
check no-dpkg-lists sh -c "! ls /var/lib/dpkg/info/ | grep -E '^(ivshmfs|libivshmfs|libivshmfs-dev|ivshm-dkms)[.:]'"
snapshot > /tmp/after.list
check nothing-left-behind diff /tmp/before.list /tmp/after.list
INSIDE

cat >"$work/ns.sh" <<'NS'
set -euo pipefail
w=$1 lower=$2
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$w/upper,workdir=$w/work" "$w/root"
r=$w/root
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
mount -t tmpfs -o mode=755,size=1M dev "$r/dev"
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0 fuse:10:229; do
  IFS=: read -r name maj min <<<"$n"
  mknod -m 666 "$r/dev/$name" c "$maj" "$min"
done
mkdir -p "$r/dev/shm" "$r/dev/pts"
mount -t tmpfs -o size=32M shm "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
mount -t tmpfs -o size=64M tmp "$r/tmp"
mkdir -p "$r/tmp/pkgs" "$r/tmp/export"
cp "$w"/*.deb "$r/tmp/pkgs/"
cp "$w"/*.c "$r/tmp/"
cp -r "$w/cmake_consumer" "$r/tmp/"
chroot "$r" env VERSION_UPSTREAM="$VERSION_UPSTREAM" KVER="$KVER" bash -s <"$w/inside.sh" || true
cp -a "$r/tmp/export/." "$w/export/" 2>/dev/null || true
# Everything of this namespace unmounts when it ends (the daemons are gone).
NS
mkdir -p "$work/export"
t2=$SECONDS
VERSION_UPSTREAM=${version%-*} KVER=$kver unshare --mount --pid --fork --propagation private bash "$work/ns.sh" "$work" "$root_cache" \
  >"$out/inside.log" 2>&1 || true
while read -r line; do
  case "$line" in
  PASS*) pass "${line#PASS }" ;;
  FAIL*) fail "${line#FAIL }" ;;
  esac
done <"$out/inside.log"
grep -q '^PASS nothing-left-behind' "$out/inside.log" || grep -A40 'nothing-left-behind\|^[<>]' "$out/inside.log" | head -n 40 >&2 || true
say "install/use/purge in the root: $((SECONDS - t2)) s"

# A guest loads the module DKMS built and runs the packaged ivshmfs.
if [ "${IVSHMFS_CLEANROOM_GUEST:-1}" = 1 ]; then
  if [ -f "$work/export/ivshm.ko" ] && [ -x "$work/export/ivshmfs" ]; then
    t3=$SECONDS
    if GUEST_MODULE="$work/export/ivshm.ko" GUEST_PROGRAMS="$work/export" GUEST_WORK="$build/guest-package" \
      "$repo/scripts/guest/run-e2e.sh" --mode package "$build" >"$out/guest.log" 2>&1; then
      pass "guest-dkms-module-and-packaged-ivshmfs ($((SECONDS - t3)) s)"
    else
      tail -n 40 "$out/guest.log" >&2
      fail guest-dkms-module-and-packaged-ivshmfs
    fi
  else
    fail "guest: no DKMS-built module or packaged ivshmfs to boot with"
  fi
fi

say "total $((SECONDS - t0)) s; $FAILS failure(s)"
[ "$FAILS" -eq 0 ]
