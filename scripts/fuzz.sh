#!/usr/bin/env bash
# Fuzzes Region::open and everything a peer does with a region it accepted,
# with clang's libFuzzer under AddressSanitizer and UBSan, for a bounded time.
# The corpus stays in BUILD_DIR/corpus, so later runs start where this ended.
#
#   scripts/fuzz.sh [--seconds N] BUILD_DIR      (default 60 s)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=60
if [ "${1:-}" = "--seconds" ]; then seconds=$2; shift 2; fi
build=${1:?usage: scripts/fuzz.sh [--seconds N] BUILD_DIR}

command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (scripts/setup.sh installs it)" >&2; exit 1; }
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DIVSHMFS_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzz_region >/dev/null
mkdir -p "$build/corpus"
cd "$build"
# -timeout: one input that takes a second is a hang; the rss limit catches runaway allocation.
exec ./tests/fuzz/fuzz_region -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 corpus
