#!/usr/bin/env bash
# Style gate: every C/C++ file of the project is clang-formatted, and
# clang-tidy (the root .clang-tidy) finds nothing in the library, the daemon,
# the tools and the server. The kernel module follows the kernel's own style instead.
#
#   scripts/lint.sh BUILD_DIR      (BUILD_DIR holds compile_commands.json)
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:?usage: scripts/lint.sh BUILD_DIR}
cd "$root" || exit 1
failed=0

unformatted=()
while IFS= read -r f; do
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || unformatted+=("$f")
done < <(git ls-files '*.c' '*.cc' '*.cpp' '*.h' '*.hpp' | grep -v '^kernel/')
if [ ${#unformatted[@]} -gt 0 ]; then
  echo "not clang-formatted (run clang-format -i): ${unformatted[*]}"
  failed=1
else
  echo "clang-format: clean"
fi

run-clang-tidy -p "$build" -quiet "$root/(lib/src|fs|tools|server)/.*\.cpp$" >"$build/clang-tidy.log" 2>&1
tidy_status=$?
findings=$(sed 's/\x1b\[[0-9;]*m//g' "$build/clang-tidy.log" | grep -E ': (warning|error):' | sort -u)
if [ "$tidy_status" != 0 ] || [ -n "$findings" ]; then
  echo "$findings"
  echo "clang-tidy: findings above (full log: $build/clang-tidy.log)"
  failed=1
else
  echo "clang-tidy: clean"
fi
exit $failed
