#!/usr/bin/env bash
# `make test`: the whole suite, three ways, each bounded in time.
#   1. the Criterion suites on the normal build (ctest; stress tests run alone);
#   2. the same suites under AddressSanitizer + UndefinedBehaviorSanitizer;
#   3. the libFuzzer harnesses (descriptor validation, options loader, segment snapshots),
#      FUZZ_SECONDS each.
# Ends with one line: "N passed, N failed" over all Criterion tests of both builds.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BUILD_ASAN=${BUILD_ASAN:-build-asan}
BUILD_FUZZ=${BUILD_FUZZ:-build-fuzz}
JOBS=${JOBS:-2}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
status=0

count() { # the "criterion: P passed, F failed" line of run-suite.sh
  sed -n 's/^criterion: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$1" | tail -n 1
}

echo "== 1/3 test suite (${BUILD})"
./tests/run-suite.sh "$BUILD" "$JOBS" 2>&1 | tee /tmp/eng-suite-$$.log
rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || status=1

echo "== 2/3 test suite under ASan+UBSan (${BUILD_ASAN})"
cmake -S . -B "$BUILD_ASAN" -DCMAKE_BUILD_TYPE=Debug -DENG_ASAN=ON >/dev/null &&
  cmake --build "$BUILD_ASAN" -j "$JOBS" >/tmp/eng-asan-build-$$.log 2>&1 ||
  { tail -n 40 /tmp/eng-asan-build-$$.log; status=1; }
ASAN_OPTIONS=handle_segv=0:detect_leaks=1 LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ./tests/run-suite.sh "$BUILD_ASAN" "$JOBS" 2>&1 | tee /tmp/eng-asan-$$.log
rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || status=1

echo "== 3/3 fuzzers, ${FUZZ_SECONDS} s each (${BUILD_FUZZ})"
./fuzz/run-fuzzers.sh "$FUZZ_SECONDS" "$BUILD_FUZZ" || status=1

read -r p1 f1 <<<"$(count /tmp/eng-suite-$$.log)"
read -r p2 f2 <<<"$(count /tmp/eng-asan-$$.log)"
rm -f /tmp/eng-suite-$$.log /tmp/eng-asan-$$.log /tmp/eng-asan-build-$$.log
passed=$(( ${p1:-0} + ${p2:-0} ))
failed=$(( ${f1:-0} + ${f2:-0} ))
[ "$status" = 0 ] || [ "$failed" -gt 0 ] || failed=1 # a failure outside Criterion counts
echo "all: ${passed} passed, ${failed} failed"
exit $status
