#!/usr/bin/env bash
# Runs every ivshmfs test: installs what is missing, builds a normal and a
# sanitizer (ASan+UBSan) tree, runs the whole suite on the first (unit tests,
# real FUSE mounts, QEMU guests, a bounded fuzzing run, the style gate, the
# quick benchmark) and, on the second, the unit, CLI and mount tests (the
# guests, benchmark, fuzzer and linters have nothing more to show there).
# Needs root (FUSE mounts, apt-get).
#
#   scripts/test.sh [ctest arguments, e.g. -L fs or -R Claims]
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build"
"$root/scripts/setup.sh" --guest --sanitize --build-dir "$build" || {
  echo "test.sh: setup failed"
  echo "0 passed, 1 failed"
  exit 1
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Regions in /dev/shm are RAM: every test removes what it made. Checked below.
shm_before=$(ls -1d /dev/shm/ivshm* 2>/dev/null | sort)
echo "== tests: $build"
ctest --test-dir "$build" --output-on-failure --timeout 1500 "$@" 2>&1 | tee -a "$log" || status=1
echo "== tests under AddressSanitizer and UndefinedBehaviorSanitizer: $build-asan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$build-asan" --output-on-failure --timeout 1500 -LE 'guest|bench|fuzz|lint|package' "$@" 2>&1 | tee -a "$log" || status=1

left=$(comm -13 <(echo "$shm_before") <(ls -1d /dev/shm/ivshm* 2>/dev/null | sort) | grep -v '^$')
if [ -n "$left" ]; then
  echo "== FAILED: the tests left regions behind in /dev/shm:"
  echo "$left" | sed 's/^/   /'
  status=1
fi

# One closing line for both runs, from ctest's own summaries.
read -r passed failed < <(awk '/tests passed, [0-9]+ tests? failed out of/ {
    total += $NF; failed += $4 } END { print total - failed, failed + 0 }' "$log")
if [ "$status" != 0 ] && [ "${failed:-0}" = 0 ]; then failed=1; fi
echo "${passed:-0} passed, ${failed:-0} failed"
[ "$status" = 0 ] && [ "${failed:-0}" = 0 ]
