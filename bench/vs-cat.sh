#!/usr/bin/env bash
# bench/vs-cat.sh: one file tmpfs -> tmpfs through a real engine-server + engine-client, against
# `cat src > dst` (coreutils cat: copy_file_range, one copy inside the kernel), back to back.
# The order alternates between rounds, every output is compared with cmp, and the median and
# best of each are printed (this VM has slow phases: compare best with best).
set -uo pipefail
usage() {
  echo "usage: bench/vs-cat.sh [--size BYTES] [--rounds N] [--dir TMPFS_DIR] [--build DIR]"
  echo "  defaults: --size 1073741824 (1 GiB) --rounds 9 --dir /dev/shm --build build"
}
SIZE=$((1 << 30)); N=9; DIR=/dev/shm; BUILD=build
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE=$2; shift 2 ;;
    --rounds) N=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
B=$PWD/$BUILD/bin
[ -x "$B/engine-server" ] && [ -x "$B/engine-client" ] || { echo "build first (make)" >&2; exit 2; }
D=$(mktemp -d "$DIR/vs-cat.XXXXXX") || exit 1
SEG=/vs-cat-$$
srv=
cleanup() { [ -n "$srv" ] && kill -TERM "$srv" 2>/dev/null && wait "$srv" 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
mkdir -p "$D/out"
head -c "$SIZE" /dev/urandom > "$D/src.bin"
printf '<streams><server outputpath="out" name="%s" size="64MiB"/><stream id="1" file="src.bin"/></streams>\n' \
  "$SEG" > "$D/opt.xml"
"$B/engine-server" -c "$D/opt.xml" 2> "$D/server.log" & srv=$!
for _ in $(seq 100); do grep -q serving "$D/server.log" && break; sleep 0.1; done
grep -q serving "$D/server.log" || { cat "$D/server.log" >&2; exit 1; }
cat "$D/src.bin" > /dev/null # source in the page cache for both

eng() {
  rm -f "$D/out/src.bin"
  local a b; a=$(date +%s.%N)
  "$B/engine-client" -q -c "$D/opt.xml" 1 > "$D/client.txt" 2>&1 || { cat "$D/client.txt" >&2; exit 1; }
  b=$(date +%s.%N)
  cmp -s "$D/src.bin" "$D/out/src.bin" || { echo "engine output differs" >&2; exit 1; }
  echo "$a $b"
}
kat() {
  rm -f "$D/cat.bin"
  local a b; a=$(date +%s.%N)
  cat "$D/src.bin" > "$D/cat.bin"
  b=$(date +%s.%N)
  cmp -s "$D/src.bin" "$D/cat.bin" || { echo "cat output differs" >&2; exit 1; }
  echo "$a $b"
}
echo "file of $SIZE bytes in $DIR, $N rounds"
for r in $(seq "$N"); do
  if [ $((r % 2)) = 1 ]; then e=$(eng) || exit 1; c=$(kat) || exit 1
  else c=$(kat) || exit 1; e=$(eng) || exit 1; fi
  echo "$r $e $c"
done | awk -v size="$SIZE" '
  function sort(A, n,  i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (A[j] < A[i]) { t = A[i]; A[i] = A[j]; A[j] = t } }
  { e = $3 - $2; c = $5 - $4; E[NR] = e; C[NR] = c
    printf "round %d (%s first): engine %.3f s %.2f GB/s   cat %.3f s %.2f GB/s\n", $1, ($1 % 2 ? "engine" : "cat"), e, size / e / 1e9, c, size / c / 1e9 }
  END { n = NR; sort(E, n); sort(C, n); m = int((n + 1) / 2)
    printf "median: engine %.3f s (%.2f GB/s), cat %.3f s (%.2f GB/s)\n", E[m], size / E[m] / 1e9, C[m], size / C[m] / 1e9
    printf "best:   engine %.3f s (%.2f GB/s), cat %.3f s (%.2f GB/s); engine speed / cat speed %.2fx\n", E[1], size / E[1] / 1e9, C[1], size / C[1] / 1e9, C[1] / E[1] }'
