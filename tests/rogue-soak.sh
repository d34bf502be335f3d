#!/bin/sh
# rogue-soak.sh - hold the real server to the failure model against engine-rogue for longer than
# CI does: test_rogue once per seed, each seed attacked for S seconds (tests/test_rogue.c).
#
#   tests/rogue-soak.sh [--seconds S] [--seeds "1 2 3 ..."] [--build DIR]
#                       [--only CATS] [--skip CATS]
#
#   --seconds S   how long the rogue writes, per seed (default 60; at most 800: run more seeds
#                 for longer soaks)
#   --seeds LIST  the seeds, blank- or comma-separated (default "1 2 3")
#   --build DIR   a configured build folder (default: build, next to tests/); its test_rogue,
#                 engine-server, engine-client and engine-rogue are brought up to date first
#   --only/--skip rogue categories to keep or leave out (see engine-rogue --help), to narrow
#                 down which writes break a promise
#
# Prints each seed's summary (the rogue's writes per category, the honest rounds, the time back
# to the baseline) and Criterion's synthesis; a failing seed's report names the problems and
# where the whole server log was kept. Exit status: the test's (0: every seed kept every promise).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
seconds=60
seeds="1 2 3"
build="$here/../build"
only=""
skip=""

usage() {
        sed -n '2,/^[^#]/p' "$0" | sed -e '/^[^#]/d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
        case "$1" in
        --seconds) seconds=${2:?--seconds wants a number}; shift 2 ;;
        --seeds) seeds=${2:?--seeds wants a list}; shift 2 ;;
        --build) build=${2:?--build wants a folder}; shift 2 ;;
        --only) only=${2:?--only wants categories}; shift 2 ;;
        --skip) skip=${2:?--skip wants categories}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "rogue-soak.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
        esac
done

case "$seconds" in
'' | *[!0-9]*) echo "rogue-soak.sh: --seconds wants a whole number, not '$seconds'" >&2; exit 2 ;;
esac
if [ "$seconds" -gt 800 ]; then
        echo "rogue-soak.sh: --seconds $seconds: at most 800 per seed (use more seeds)" >&2
        exit 2
fi
if [ ! -f "$build/CMakeCache.txt" ]; then
        echo "rogue-soak.sh: $build is not a configured build folder (cmake -S . -B $build)" >&2
        exit 2
fi
cmake --build "$build" --target test_rogue engine-server engine-client engine-rogue >/dev/null

log=$(mktemp /tmp/rogue-soak-XXXXXX.log)
n=$(echo "$seeds" | tr ',' ' ' | wc -w)
echo "rogue-soak: $n seed(s) ($seeds), $seconds s each${only:+, only $only}${skip:+, skipping $skip}; full output in $log"

# One seed at a time (--jobs 1): each needs both cores, and none waits for another.
status=0
ROGUE_SEEDS="$seeds" ROGUE_SECONDS="$seconds" ROGUE_ONLY="$only" ROGUE_SKIP="$skip" \
        "$build/bin/test_rogue" --jobs 1 --verbose >"$log" 2>&1 || status=$?

# Everything but the tails of server logs quoted in failure reports (each failing seed names
# the file that keeps its whole server log).
grep -Ev '^\[----\] +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}[+-][0-9]{2}:[0-9]{2} [A-Z]+ engine-server\[[0-9]+\]: ' "$log" || true
exit $status
