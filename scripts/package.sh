#!/usr/bin/env bash
# Builds the Debian packages of ivshmfs from a fresh release build:
#   ivshmfs, libivshmfs, libivshmfs-dev (architecture-specific) and
#   ivshm-dkms (architecture all).
#
#   scripts/package.sh [--build-dir DIR] [--lintian]
#
#   --build-dir DIR  where to build (default: build-package/ in the repository);
#                    the packages land in DIR/packages/
#   --lintian        run lintian on the packages; fails on any error
#
# The packages are built with CPack's DEB generator from the same install
# rules as 'cmake --install' (see packaging/CMakeLists.txt). Needs dpkg-dev
# (dpkg-shlibdeps), python3 (man pages) and, for --lintian, lintian.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-package"
lintian=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build=$2; shift ;;
    --lintian) lintian=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done

# No tests, benchmarks or sanitizers in a package build; warnings stay errors.
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
  -DIVSHMFS_WERROR=ON -DIVSHMFS_SANITIZE=OFF -DIVSHMFS_TESTS=OFF -DIVSHMFS_BENCHMARKS=OFF >/dev/null
cmake --build "$build" -j"${JOBS:-2}"
rm -rf "$build/packages"
(cd "$build" && cpack -G DEB >/dev/null)
# CPack leaves its staging tree next to the packages.
rm -rf "$build/packages/_CPack_Packages"

debs=("$build"/packages/*.deb)
[ ${#debs[@]} -eq 4 ] || { echo "package.sh: expected 4 packages, got: ${debs[*]}" >&2; exit 1; }
for d in "${debs[@]}"; do
  printf '%s\n' "$d"
done

if [ "$lintian" = 1 ]; then
  command -v lintian >/dev/null || { echo "package.sh: lintian is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
  # Errors fail; the warnings that stay are listed, with why, in
  # docs/packaging.md. Any other warning fails too, so the list stays true.
  rc=0
  report=$(lintian --fail-on error --tag-display-limit 0 "${debs[@]}" 2>&1) || rc=$?
  report=$(echo "$report" | grep -v 'running with root privileges' || true)
  echo "$report"
  [ "$rc" -eq 0 ] || { echo "package.sh: lintian found errors (exit $rc)" >&2; exit 1; }
  known='package-name-doesnt-match-sonames|maintscript-calls-ldconfig|systemd-service-file-refers-to-unusual-wantedby-target'
  unexpected=$(echo "$report" | grep -E '^[EW]: ' | grep -Ev "$known" || true)
  if [ -n "$unexpected" ]; then
    echo "package.sh: lintian tags not listed in docs/packaging.md:" >&2
    echo "$unexpected" >&2
    exit 1
  fi
  echo "lintian: no errors; the remaining warnings are the listed ones"
fi
