#!/usr/bin/env bash
# `make run`: create the sample files options.xml names, start engine-server, send every
# stream with two engine-client processes at once, verify the received files byte for byte,
# print a summary, stop the server. Exit status 0 only if every file arrived intact.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build}/bin
OUT=out
RECV=$OUT/received
CHUNK=$((256 * 1024 - 64)) # payload of a 256 KiB chunk block (options.xml chunk="256KiB")

declare -A SIZE=(
  [empty.bin]=0 [one-byte.bin]=1
  [chunk-minus-1.bin]=$((CHUNK - 1)) [chunk.bin]=$CHUNK [chunk-plus-1.bin]=$((CHUNK + 1))
  [page.bin]=4096 [1MiB.bin]=$((1 << 20)) [3MiB-odd.bin]=$((3 * (1 << 20) + 12345))
  [10MiB.bin]=$((10 << 20)) [64MiB.bin]=$((64 << 20)) [100MiB.bin]=$((100 << 20))
  [300MiB.bin]=$((300 << 20))
)

mkdir -p samples "$RECV"
for f in "${!SIZE[@]}"; do
  want=${SIZE[$f]}
  if [ ! -f "samples/$f" ] || [ "$(stat -c %s "samples/$f")" != "$want" ]; then
    head -c "$want" /dev/urandom > "samples/$f.tmp" && mv "samples/$f.tmp" "samples/$f"
  fi
done
rm -f "$RECV"/*.bin

"$BIN/engine-server" -c options.xml 2> "$OUT/server.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do
  grep -q serving "$OUT/server.log" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
  sleep 0.1
done

echo "== sending 12 streams from two client processes (1-6 and 7-12)"
start=$(date +%s.%N)
"$BIN/engine-client" -q -c options.xml 1 2 3 4 5 6 > "$OUT/client-a.txt" 2>&1 &
a=$!
"$BIN/engine-client" -q -c options.xml 7 8 9 10 11 12 > "$OUT/client-b.txt" 2>&1 &
b=$!
wait $a; ra=$?
wait $b; rb=$?
end=$(date +%s.%N)
grep -h '^stream' "$OUT/client-a.txt" "$OUT/client-b.txt" | sort -t' ' -k2 -n
grep -hv '^stream\|^total' "$OUT/client-a.txt" "$OUT/client-b.txt" || true

echo "== verifying received files"
bad=0
total=0
for f in "${!SIZE[@]}"; do
  if cmp -s "samples/$f" "$RECV/$f"; then
    total=$((total + SIZE[$f]))
  else
    echo "MISMATCH: $RECV/$f differs from samples/$f"; bad=1
  fi
done
leftover=$(find "$RECV" -name '.eng-*' | wc -l)
[ "$leftover" = 0 ] || { echo "temporary files left behind: $leftover"; bad=1; }

kill -TERM $server; wait $server; trap - EXIT
echo "== server log"
cat "$OUT/server.log"
secs=$(echo "$end - $start" | bc -l)
printf '== summary: %d files, %d bytes in %.2f s (%.0f MB/s overall), clients exited %d and %d, %s\n' \
  "${#SIZE[@]}" "$total" "$secs" "$(echo "$total / $secs / 1000000" | bc -l)" $ra $rb \
  "$([ $bad = 0 ] && [ $ra = 0 ] && [ $rb = 0 ] && echo 'all byte-identical' || echo FAILED)"
[ $bad = 0 ] && [ $ra = 0 ] && [ $rb = 0 ]
