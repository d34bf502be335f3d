#!/usr/bin/env bash
# bridge-bench.sh: the bridged path (engine-client -> engine-bridge -> TCP loopback ->
# engine-bridge -> engine-server) beside a plain TCP socket copy and an nc-style `cat >
# /dev/tcp/...` of the same file, in the same run; then 64-byte round trips over the bridge and
# locally. Prints one row per path and the ratio bridged / plain TCP (the issue's target:
# >= 0.8 for files). Not part of `make test`.
#
#   bench/bridge-bench.sh [BUILD_DIR]      (default build; needs engine-bridge built)
#   SIZE_MIB=1024 ROUNDS=3 PINGS=20000 CHUNK=256KiB BENCH_DIR=/dev/shm/... bench/bridge-bench.sh
#   WINDOW=N MEMORY=SIZE  set both bridges' <bridge window memory> (default: the defaults)
#
# Output: one row per path with the best time of ROUNDS, its rate in GB/s (10^9 bytes/s), the
# CPU-seconds its processes spent on one transfer (least of rounds) and every round's time; the
# rounds alternate the paths (tcp, nc, local, bridged, tcp, ...), so that a change of load on a
# shared machine hits all of them alike. Then the ratio of the best bridged rate to the best
# plain TCP rate, and the best ratio the bridged path's CPU-seconds allow on this many CPUs.
#
# Files live in BENCH_DIR (default: a folder under /dev/shm, so the disk is not what is
# measured; every receiver still fsyncs, as engine-server does). Each row is the best of ROUNDS.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BIN=$BUILD/bin
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
PINGS=${PINGS:-20000}
CHUNK=${CHUNK:-256KiB} # the senders' chunk (options.xml chunk)
BATTR="" # extra <bridge> attributes, both sides
[ -n "${WINDOW:-}" ] && BATTR+=" window=\"$WINDOW\""
[ -n "${MEMORY:-}" ] && BATTR+=" memory=\"$MEMORY\""
DIR=${BENCH_DIR:-/dev/shm/eng-bridge-bench-$$}
for p in engine-server engine-client engine-bridge; do
  [ -x "$BIN/$p" ] || { echo "bridge-bench: $BIN/$p missing (build first)" >&2; exit 2; }
done
mkdir -p "$DIR"/{src,outb,tcp}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT

# A plain TCP copy, the reference: read(2)/write(2) with 1 MiB buffers each way, fsync at the
# end (compiled here so the script needs nothing beyond gcc).
cat > "$DIR/tcpcopy.c" <<'EOF'
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static char buf[1 << 20];
static int pump(int in, int out)
{
        for (;;) {
                ssize_t n = read(in, buf, sizeof(buf));
                if (n == 0)
                        return 0;
                if (n < 0)
                        return -1;
                for (ssize_t d = 0; d < n;) {
                        ssize_t w = write(out, buf + d, (size_t)(n - d));
                        if (w <= 0)
                                return -1;
                        d += w;
                }
        }
}
int main(int argc, char **argv)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
        socklen_t sl = sizeof(sa);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (argc == 4 && strcmp(argv[1], "recv") == 0) { /* recv PORTFILE OUT */
                if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) || listen(s, 1) ||
                    getsockname(s, (struct sockaddr *)&sa, &sl))
                        return 1;
                FILE *pf = fopen(argv[2], "w");
                fprintf(pf, "%d\n", ntohs(sa.sin_port));
                fclose(pf);
                int c = accept(s, NULL, NULL);
                int fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
                return c < 0 || fd < 0 || pump(c, fd) || fsync(fd) ? 1 : 0;
        }
        if (argc == 4 && strcmp(argv[1], "send") == 0) { /* send PORT IN */
                sa.sin_port = htons((unsigned short)atoi(argv[2]));
                int fd = open(argv[3], O_RDONLY);
                return fd < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) || pump(fd, s) ? 1
                                                                                               : 0;
        }
        return 2;
}
EOF
gcc -O2 -o "$DIR/tcpcopy" "$DIR/tcpcopy.c" || exit 1

SRC=$DIR/src/big.bin
if [ ! -f "$SRC" ]; then
  head -c $((SIZE_MIB << 20)) /dev/urandom > "$SRC"
fi
BYTES=$(stat -c %s "$SRC")
now() { date +%s.%N; }
# CPU-seconds of our processes only (another job on the machine does not count): the
# daemons' (servers, bridges: utime + stime of /proc/PID/stat, every thread) plus those of this
# subshell's finished children (the senders, receivers, engine-client: bash's `times`).
# USER_HZ ticks, so +-0.01 s each.
HZ=$(getconf CLK_TCK)
daemons_cpu() { # PID...
  local t=0 p
  for p in "$@"; do
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$t / $HZ" | bc -l
}
children_cpu() { # of the calling (sub)shell, from the second line of `times`: "XmY.YYYs XmZ.ZZZs"
  times > "$DIR/times.out" # not in a $(...): that would be a subshell with no children yet
  sed -n 2p "$DIR/times.out" | sed 's/m/ /g; s/s//g' | awk '{print $1 * 60 + $2 + $3 * 60 + $4}'
}
best() { # the smallest of the numbers on stdin
  sort -g | head -n 1
}

# ---- the processes: server B, bridges R and S; a local server L for the reference rows ----
cat > "$DIR/r.xml" <<EOF
<streams>
  <server name="/engbench-b-$$" outputpath="outb" size="256MiB" timeout="30"/>
  <bridge listen="tcp://127.0.0.1:0"$BATTR/>
</streams>
EOF
"$BIN/engine-server" -c "$DIR/r.xml" 2> "$DIR/b.log" & pids+=($!); pid_b=$!
for _ in $(seq 100); do grep -qs serving "$DIR/b.log" && break; sleep 0.05; done
"$BIN/engine-bridge" -c "$DIR/r.xml" 2> "$DIR/r.log" & pids+=($!); pid_r=$!
for _ in $(seq 100); do grep -qs attached "$DIR/r.log" && break; sleep 0.05; done
port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$DIR/r.log" | head -n 1)
[ -n "$port" ] || { cat "$DIR/r.log"; exit 1; }
cat > "$DIR/s.xml" <<EOF
<streams>
  <server name="/engbench-s-$$" size="256MiB" chunk="$CHUNK" timeout="30"/>
  <bridge connect="tcp://127.0.0.1:$port"$BATTR/>
  <stream id="1" file="src/big.bin"/>
</streams>
EOF
"$BIN/engine-bridge" -c "$DIR/s.xml" 2> "$DIR/s.log" & pids+=($!); pid_s=$!
for _ in $(seq 100); do grep -qs "connected to the remote" "$DIR/s.log" && grep -qs serving "$DIR/s.log" && break; sleep 0.05; done
cat > "$DIR/l.xml" <<EOF
<streams>
  <server name="/engbench-l-$$" outputpath="outl" size="256MiB" chunk="$CHUNK" timeout="30"/>
  <stream id="1" file="src/big.bin"/>
</streams>
EOF
"$BIN/engine-server" -c "$DIR/l.xml" 2> "$DIR/l.log" & pids+=($!); pid_l=$!
for _ in $(seq 100); do grep -qs serving "$DIR/l.log" && break; sleep 0.05; done

run_tcp() { # plain TCP copy, seconds
  rm -f "$DIR/tcp/out" "$DIR/tcp/port"
  "$DIR/tcpcopy" recv "$DIR/tcp/port" "$DIR/tcp/out" & local r=$!
  for _ in $(seq 200); do [ -s "$DIR/tcp/port" ] && break; sleep 0.01; done
  local t0; t0=$(now)
  "$DIR/tcpcopy" send "$(cat "$DIR/tcp/port")" "$SRC"
  wait $r
  local t1; t1=$(now)
  local c; children_cpu > "$DIR/cpu.out"; c=$(cat "$DIR/cpu.out")
  cmp -s "$SRC" "$DIR/tcp/out" || { echo "tcp copy differs" >&2; exit 1; }
  echo "$(echo "$t1 - $t0" | bc -l) $c"
}
run_nc() { # nc-style: cat into bash's /dev/tcp, the same receiver
  rm -f "$DIR/tcp/out" "$DIR/tcp/port"
  "$DIR/tcpcopy" recv "$DIR/tcp/port" "$DIR/tcp/out" & local r=$!
  for _ in $(seq 200); do [ -s "$DIR/tcp/port" ] && break; sleep 0.01; done
  local t0; t0=$(now)
  cat "$SRC" > "/dev/tcp/127.0.0.1/$(cat "$DIR/tcp/port")"
  wait $r
  local t1; t1=$(now)
  local c; children_cpu > "$DIR/cpu.out"; c=$(cat "$DIR/cpu.out")
  cmp -s "$SRC" "$DIR/tcp/out" || { echo "nc-style copy differs" >&2; exit 1; }
  echo "$(echo "$t1 - $t0" | bc -l) $c"
}
run_engine() { # $1: options file, $2: output folder, $3...: the daemons on the path
  # prints: seconds, CPU-seconds of all, of engine-client, of each daemon in order
  local opt=$1 out=$2
  shift 2
  rm -f "$out/big.bin"
  local p d0=() t0
  for p in "$@"; do d0+=("$(daemons_cpu "$p")"); done
  t0=$(now)
  "$BIN/engine-client" -q -c "$opt" 1 > "$DIR/client.out" 2>&1 || { cat "$DIR/client.out" >&2; exit 1; }
  local t1 c all each="" i=0; t1=$(now)
  children_cpu > "$DIR/cpu.out"; c=$(cat "$DIR/cpu.out")
  all=$c
  for p in "$@"; do
    local d; d=$(echo "$(daemons_cpu "$p") - ${d0[$i]}" | bc -l)
    all=$(echo "$all + $d" | bc -l); each+=" $d"; i=$((i + 1))
  done
  cmp -s "$SRC" "$out/big.bin" || { echo "engine copy differs ($opt)" >&2; exit 1; }
  echo "$(echo "$t1 - $t0" | bc -l) $all $c$each"
}

# Rounds interleave the paths, so that a change of load on a shared machine hits them alike.
declare -A R
for _ in $(seq "$ROUNDS"); do
  R[tcp]+="$(run_tcp)"$'\n'
  R[nc]+="$(run_nc)"$'\n'
  R[local]+="$(run_engine "$DIR/l.xml" "$DIR/outl" "$pid_l")"$'\n'
  R[bridged]+="$(run_engine "$DIR/s.xml" "$DIR/outb" "$pid_b" "$pid_r" "$pid_s")"$'\n'
done
declare -A T C
for path in tcp nc local bridged; do
  T[$path]=$(printf '%s' "${R[$path]}" | grep . | cut -d' ' -f1 | best)
  C[$path]=$(printf '%s' "${R[$path]}" | grep . | cut -d' ' -f2 | best)
done
gbs() { echo "$BYTES / $1 / 1000000000" | bc -l; }
rounds() { printf '%s' "${R[$1]}" | grep . | cut -d' ' -f1 | xargs printf '%.3f '; }
echo "== ${SIZE_MIB} MiB file, client chunk $CHUNK, bridge${BATTR:- defaults}; best of $ROUNDS" \
  "rounds (paths alternate in each round); $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-46s %8s %8s %8s   %s\n' "path" "best s" "GB/s" "CPU s" "every round (s)"
row() {
  printf '%-46s %8.3f %8.2f %8.2f   %s\n' "$1" "${T[$2]}" "$(gbs "${T[$2]}")" "${C[$2]}" \
    "$(rounds "$2")"
}
row "plain TCP socket copy (read/write, loopback)" tcp
row "nc-style (cat > /dev/tcp, same receiver)" nc
row "engine, local shared memory (reference)" local
row "engine over two bridges (TCP loopback)" bridged
printf 'ratio bridged / plain TCP copy (best rates): %.2f (target >= 0.8)\n' \
  "$(echo "${T[tcp]} / ${T[bridged]}" | bc -l)"
# The bridged path's work cannot finish faster than its CPU-seconds spread over every CPU: the
# best ratio this machine allows it, were each of its stages (client, two bridges, server)
# running in parallel with no wait at all. Both figures are the kindest to the bridged path:
# its least CPU of any round against the best TCP copy.
ncpu=$(nproc)
printf 'CPU s per transfer (least of rounds, our processes): bridged %.2f, plain TCP %.2f (%.1fx);\n' \
  "${C[bridged]}" "${C[tcp]}" "$(echo "${C[bridged]} / ${C[tcp]}" | bc -l)"
# Where the bridged path's CPU goes: the round that used the least.
least=$(printf '%s' "${R[bridged]}" | grep . | sort -g -k2 | head -n 1)
printf '  bridged, that round: engine-client %.2f, sending bridge %.2f, receiving bridge %.2f, server %.2f\n' \
  "$(echo "$least" | cut -d' ' -f3)" "$(echo "$least" | cut -d' ' -f6)" \
  "$(echo "$least" | cut -d' ' -f5)" "$(echo "$least" | cut -d' ' -f4)"
printf '  on %d CPUs the bridged path needs >= %.3f s, the TCP copy took %.3f (best):' \
  "$ncpu" "$(echo "${C[bridged]} / $ncpu" | bc -l)" "${T[tcp]}"
printf ' ratio <= %.2f\n' "$(echo "${T[tcp]} * $ncpu / ${C[bridged]}" | bc -l)"

ping_row() { # $1 label, $2 options file
  "$BIN/engine-client" -c "$2" --ping "$PINGS" --payload 64 > "$DIR/ping.out" 2>&1 || { cat "$DIR/ping.out"; return; }
  local mean; mean=$(sed -n 's/.*mean \([0-9.]*\) us.*/\1/p' "$DIR/ping.out")
  local p50; p50=$(sed -n 's/.*p50 \([0-9.]*\) us.*/\1/p' "$DIR/ping.out")
  printf '%-44s p50 %8.1f us  %9.0f round trips/s\n' "$1" "$p50" "$(echo "1000000 / $mean" | bc -l)"
}
echo "== 64-byte messages, one stream, ${PINGS} round trips"
ping_row "engine over two bridges (TCP loopback)" "$DIR/s.xml"
ping_row "engine, local shared memory (reference)" "$DIR/l.xml"
