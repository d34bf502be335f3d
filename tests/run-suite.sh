#!/usr/bin/env bash
# Runs every registered test of a build tree through ctest, then prints each Criterion
# binary's "Synthesis" line and one total line. Exit status is ctest's.
set -uo pipefail
build=${1:-build}
jobs=${2:-2}
cd "$build" || exit 2
ctest --output-on-failure -j "$jobs" --timeout 1200
rc=$?
log=Testing/Temporary/LastTest.log
if [ -f "$log" ]; then
  echo "== Criterion summaries"
  grep -h '^\[====\] Synthesis' "$log" || true
  grep -h '^\[====\] Synthesis' "$log" | awk -F'|' '
    { for (i = 1; i <= NF; i++) {
        if ($i ~ /Passing:/) { split($i, a, ":"); p += a[2] }
        if ($i ~ /Failing:/) { split($i, a, ":"); f += a[2] }
        if ($i ~ /Crashing:/) { split($i, a, ":"); f += a[2] } } }
    END { printf "criterion: %d passed, %d failed\n", p, f }'
fi
exit $rc
