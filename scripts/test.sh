#!/usr/bin/env bash
# Runs every ivshmfs test: installs what is missing, builds a normal, a
# sanitizer (ASan+UBSan) and a ThreadSanitizer tree, runs the whole suite on
# the first (unit tests, real FUSE mounts, fault injection, QEMU guests, a
# bounded fuzzing run, the style gate, the quick benchmark), on the second
# the unit, CLI, mount and fault tests (the guests, benchmark, fuzzer and
# linters have nothing more to show there), and on the third the unit and
# mount tests (lib, fs), where any ThreadSanitizer report, of a test program
# or of a daemon it started, fails the stage. Needs root (FUSE mounts,
# apt-get).
#
#   scripts/test.sh [ctest arguments, e.g. -L fs or -R Claims]
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build"
"$root/scripts/setup.sh" --guest --sanitize --tsan --build-dir "$build" || {
  echo "test.sh: setup failed"
  echo "0 passed, 1 failed"
  exit 1
}

log=$(mktemp)
tsan_logs=$(mktemp -d)
trap 'rm -rf "$log" "$tsan_logs"' EXIT
status=0
# Regions in /dev/shm are RAM: every test removes what it made. Checked below.
shm_before=$(ls -1d /dev/shm/ivshm* 2>/dev/null | sort)
echo "== tests: $build"
ctest --test-dir "$build" --output-on-failure --timeout 1500 "$@" 2>&1 | tee -a "$log" || status=1
echo "== tests under AddressSanitizer and UndefinedBehaviorSanitizer: $build-asan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$build-asan" --output-on-failure --timeout 1500 -LE 'guest|bench|fuzz|lint|package' "$@" 2>&1 | tee -a "$log" || status=1

echo "== tests under ThreadSanitizer: $build-tsan (labels lib, fs)"
started=$(date +%s)
# Reports go to files (the daemons' too, whose stderr the tests keep in
# temporary logs); every file with a ThreadSanitizer warning counts as one
# failure below (exitcode=0, so a test is not counted twice). handle_segv=0,
# handle_sigbus=0: the guard-page and SIGBUS tests expect a child to die of
# that signal (the library's own SIGBUS guard chains to it). Not run here:
# AppendAndReadMakeNoSystemCalls, whose child runs under strict seccomp,
# where the sanitizer runtime's own calls are fatal (it hangs the child).
TSAN_OPTIONS="suppressions=$root/tests/tsan.supp log_path=$tsan_logs/report exitcode=0 handle_segv=0 handle_sigbus=0 second_deadlock_stack=1" \
  ctest --test-dir "$build-tsan" --output-on-failure --timeout 1500 -L 'lib|fs' -E 'AppendAndReadMakeNoSystemCalls' "$@" \
  2>&1 | tee -a "$log" || status=1
tsan_reports=0
for report in "$tsan_logs"/report*; do
  [ -e "$report" ] || continue
  grep -q 'WARNING: ThreadSanitizer' "$report" || continue
  tsan_reports=$((tsan_reports + 1))
  echo "-- ThreadSanitizer report $report:"
  cat "$report"
done
echo "ThreadSanitizer stage: $(( $(date +%s) - started )) s, $tsan_reports process(es) with reports"

left=$(comm -13 <(echo "$shm_before") <(ls -1d /dev/shm/ivshm* 2>/dev/null | sort) | grep -v '^$')
if [ -n "$left" ]; then
  echo "== FAILED: the tests left regions behind in /dev/shm:"
  echo "$left" | sed 's/^/   /'
  status=1
fi

# One closing line for all runs, from ctest's own summaries; every
# ThreadSanitizer report file counts as one more failure.
read -r passed failed < <(awk '/tests passed, [0-9]+ tests? failed out of/ {
    total += $NF; failed += $4 } END { print total - failed, failed + 0 }' "$log")
failed=$(( ${failed:-0} + tsan_reports ))
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "${passed:-0} passed, ${failed} failed"
[ "$status" = 0 ] && [ "$failed" = 0 ]
