#!/usr/bin/env bash
# Installs what ivshmfs needs from Debian's packages (only what is missing)
# and builds it. Idempotent: a second run installs nothing and rebuilds only
# what changed.
#
#   scripts/setup.sh [--guest] [--sanitize] [--tsan] [--build-dir DIR]
#
#   --guest      also install what the QEMU guest tests need
#   --sanitize   also build an AddressSanitizer+UBSan tree in DIR-asan
#   --tsan       also build a ThreadSanitizer tree in DIR-tsan
#   --build-dir  where to build (default: build/ in the repository)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build"
guest=0
sanitize=0
tsan=0
while [ $# -gt 0 ]; do
  case "$1" in
    --guest) guest=1 ;;
    --sanitize) sanitize=1 ;;
    --tsan) tsan=1 ;;
    --build-dir) build=$2; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done

# Build: compiler, CMake, pkg-config. Libraries: libfuse3 (the filesystem),
# spdlog (logging), GoogleTest (tests), Google Benchmark (benchmarks).
# Runtime: fuse3 (fusermount3, mount.fuse3), python3 (a test writes through
# the mount from Python), gnuplot (the benchmark chart).
# Checks: clang-format and clang-tidy (scripts/lint.sh), clang with its
# libFuzzer runtime (scripts/fuzz.sh).
packages=(g++ gcc make cmake pkg-config libfuse3-dev fuse3 libspdlog-dev libgtest-dev libbenchmark-dev
          python3 gnuplot-nox clang clang-format clang-tidy libclang-rt-dev)
# Packaging (scripts/package.sh, tests/package): dpkg-dev and file for CPack's
# DEB generator, lintian, mmdebstrap for the clean-room root, systemd for
# systemd-analyze verify.
packages+=(dpkg-dev file lintian mmdebstrap systemd)
# The fs tests run real programs against the mount (tests/fs/programs_test.cpp):
# rsync, sqlite3, nodejs, rustc, less, tmux (tar, gzip, perl, dd are essential);
# the benchmark compares against fio.
packages+=(rsync sqlite3 nodejs rustc less tmux fio)
if [ "$guest" = 1 ]; then
  # The guest harness boots Debian's kernel under QEMU with a busybox initramfs
  # and builds the ivshm module against Debian's headers; its list is the one
  # it installs itself.
  # shellcheck source=guest/lib.sh
  read -ra guest_packages <<<"$(. "$root/scripts/guest/lib.sh" && echo "$GUEST_PACKAGES")"
  packages+=("${guest_packages[@]}")
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: missing packages: ${missing[*]}; run as root (or sudo) to install them" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

configure_and_build() {
  local dir=$1; shift
  cmake -S "$root" -B "$dir" -DIVSHMFS_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
}
configure_and_build "$build"
if [ "$sanitize" = 1 ]; then
  configure_and_build "$build-asan" -DIVSHMFS_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
fi
if [ "$tsan" = 1 ]; then
  configure_and_build "$build-tsan" -DIVSHMFS_TSAN=ON -DIVSHMFS_BENCHMARKS=OFF
fi
