#!/usr/bin/env bash
# Fuzzes the region code with clang's libFuzzer under AddressSanitizer and
# UBSan, for a bounded time. Targets (tests/fuzz/):
#   fuzz_region  Region::open and everything a peer does with a region it
#                accepted, on scribbled metadata (the default)
#   fuzz_live    a peer storing into the live control blocks, partition table
#                and header of an open region while this peer reads and writes
# Each target's corpus stays in BUILD_DIR/corpus-TARGET (fuzz_region's in
# BUILD_DIR/corpus), so later runs start where this one ended.
#
#   scripts/fuzz.sh [--target NAME] [--seconds N] BUILD_DIR      (default 60 s)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=60
target=fuzz_region
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option '$1'" >&2; exit 2 ;;
    *) break ;;
  esac
done
build=${1:?usage: scripts/fuzz.sh [--target NAME] [--seconds N] BUILD_DIR}
# -timeout: one input that takes that long is a hang. fuzz_live gets more:
# a peer that keeps a generation odd makes every read, view and snapshot of
# that partition retry its bounded 10000 times before it answers "busy", and
# on a loaded machine each retry may yield the processor for a while.
case "$target" in
  fuzz_region) corpus=corpus; timeout=5 ;;
  fuzz_live) corpus="corpus-fuzz_live"; timeout=30 ;;
  fuzz_table) corpus="corpus-fuzz_table"; timeout=30 ;;
  *) echo "fuzz.sh: unknown target '$target' (fuzz_region, fuzz_live, fuzz_table)" >&2; exit 2 ;;
esac

command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (scripts/setup.sh installs it)" >&2; exit 1; }
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DIVSHMFS_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target "$target" >/dev/null
mkdir -p "$build/$corpus"
cd "$build"
# The rss limit catches runaway allocation.
exec "./tests/fuzz/$target" -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb=2048 -print_final_stats=1 \
  "$corpus"
