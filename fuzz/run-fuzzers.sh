#!/usr/bin/env bash
# Build the libFuzzer harnesses with clang and run each for a bounded time.
#
#   fuzz/run-fuzzers.sh [SECONDS] [BUILD_DIR]
#
# SECONDS per harness (default 30, passed as -max_total_time); BUILD_DIR defaults to
# build-fuzz in the repository (like the Makefile's build dirs; $BUILD_FUZZ also works).
# Each harness fuzzes a copy of its committed corpus (fuzz/corpus/<name>) in a temporary
# directory: nothing is written into the repository. One line per harness; exit status 0 only
# if no harness found a crash, leak, timeout or sanitizer report. On a finding the temporary
# directory is kept and the line names the crash input (reproduce with: <harness> <input>).
# Installs nothing: it needs clang and libclang-rt-14-dev (libFuzzer) already installed.
set -uo pipefail

secs=${1:-30}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${2:-${BUILD_FUZZ:-$root/build-fuzz}}

if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
        echo "usage: $0 [SECONDS] [BUILD_DIR]" >&2
        exit 2
fi
if ! command -v clang >/dev/null; then
        echo "run-fuzzers: clang is not installed (Debian: clang libclang-rt-14-dev)" >&2
        exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/eng-fuzz-XXXXXX") || exit 2
keep=0
cleanup() {
        if [ "$keep" -eq 0 ]; then
                rm -rf "$work"
        fi
}
trap cleanup EXIT

echo "== configuring $build (clang, ENG_FUZZ=ON, ENG_TESTS=OFF)"
if ! CC=clang cmake -S "$root" -B "$build" -DENG_FUZZ=ON -DENG_TESTS=OFF \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$work/configure.log" 2>&1; then
        cat "$work/configure.log" >&2
        echo "run-fuzzers: configure failed (a build dir configured with gcc cannot be reused:" \
                "remove $build)" >&2
        exit 2
fi
echo "== building fuzz_options fuzz_desc fuzz_stat"
if ! cmake --build "$build" --target fuzz_options fuzz_desc fuzz_stat -j "$(nproc)" >"$work/build.log" 2>&1; then
        tail -n 40 "$work/build.log" >&2
        echo "run-fuzzers: build failed" >&2
        exit 2
fi

status=0
for h in options desc stat; do
        bin=$build/bin/fuzz_$h
        corpus=$work/corpus-$h
        art=$work/artifacts-$h
        mkdir -p "$art" "$work/tmp-$h"
        cp -r "$root/fuzz/corpus/$h" "$corpus"
        seeds=$(find "$corpus" -type f | wc -l)
        args=(-max_total_time="$secs" -timeout=20 -print_final_stats=1 -artifact_prefix="$art/")
        if [ -f "$root/fuzz/$h.dict" ]; then
                args+=(-dict="$root/fuzz/$h.dict")
        fi
        TMPDIR=$work/tmp-$h "$bin" "${args[@]}" "$corpus" >"$work/$h.log" 2>&1 &
        pid=$!
        wait "$pid"
        rc=$?
        # A harness that died cannot have removed its segment (the name carries its pid).
        rm -f "/dev/shm/engfuzz-$pid"
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$h.log")
        eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$h.log")
        files=$(find "$corpus" -type f | wc -l)
        found=$(find "$art" -type f | head -n 1)
        if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
                status=1
                keep=1
                why=$(grep -m1 -E 'ERROR: |==[0-9]+==|runtime error|fuzz_[a-z]+: ' "$work/$h.log" ||
                        true)
                echo "fuzz_$h: FAILED (exit $rc) after ${runs:-?} runs: ${why:-see log}; crash" \
                        "input: ${found:-none written}; log: $work/$h.log"
        else
                echo "fuzz_$h: ok: ${runs:-?} runs in ${secs} s (${eps:-?} exec/s), corpus" \
                        "$seeds -> $files inputs, no crash"
        fi
done
if [ "$keep" -eq 1 ]; then
        echo "== findings kept in $work"
fi
exit $status
