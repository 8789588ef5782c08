# shellcheck shell=bash
# Pass/fail bookkeeping shared by the CLI test scripts: each check prints one
# line, and the script ends with the counts (its exit status is the verdict).
passed=0
failed=0
pass() {
  passed=$((passed + 1))
  echo "ok   - $1"
}
# fail DESCRIPTION [DETAIL...]
fail() {
  failed=$((failed + 1))
  echo "FAIL - $1"
  shift
  local line
  for line in "$@"; do echo "       $line"; done
}
