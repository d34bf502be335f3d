#!/usr/bin/env bash
# run-examples.sh BIN_DIR: run the examples against each other. Starts echo-server on a
# segment name of its own, waits for its "ready" line, runs echo-client, many-streams and
# zero-copy-send against it, checks a client's failure against a missing server, stops the
# server (SIGTERM, then SIGKILL if it does not go) and checks it removed its segment.
# Exit status 0 only if everything passed. Everything it starts or creates goes on exit.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -x "$1/echo-server" ]; then
  echo "usage: $0 BIN_DIR   (the directory holding echo-server and the example clients)" >&2
  exit 2
fi
BIN=$1
NAME=/ex-$$-$RANDOM
CLIENT_TIMEOUT=60 # seconds each client may take at most
WORK=$(mktemp -d "${TMPDIR:-/tmp}/run-examples.XXXXXX")
server=""

cleanup() {
  local rc=$?
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -f "/dev/shm${NAME}"
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
  echo "run-examples: FAILED: $*" >&2
  for f in server.out server.err; do
    [ -s "$WORK/$f" ] && { echo "--- $f" >&2; cat "$WORK/$f" >&2; }
  done
  exit 1
}

# Every program answers --help and --version (exit 0) and refuses an unknown option (exit 2).
for p in echo-server echo-client many-streams zero-copy-send; do
  "$BIN/$p" --help > /dev/null || die "$p --help"
  "$BIN/$p" --version | grep "^$p (shmengine) [0-9]" > /dev/null || die "$p --version"
  set +e
  "$BIN/$p" --no-such-option > /dev/null 2>&1
  rc=$?
  set -e
  [ "$rc" = 2 ] || die "$p --no-such-option exited $rc, not 2"
done

# A client with no server: a clear error and exit 1, at once (no --wait).
set +e
timeout 20 "$BIN/echo-client" --name "$NAME-none" --count 1 > /dev/null 2> "$WORK/none.err"
rc=$?
set -e
[ "$rc" = 1 ] || die "echo-client without a server exited $rc, not 1"
grep -q "echo-client: $NAME-none: " "$WORK/none.err" || die "no error message without a server"

# The server, stopping by itself after 100 s should this script be killed outright.
"$BIN/echo-server" --name "$NAME" --seconds 100 > "$WORK/server.out" 2> "$WORK/server.err" &
server=$!
for _ in $(seq 100); do # up to 10 s
  grep -qsx "ready $NAME" "$WORK/server.out" && break
  kill -0 "$server" 2>/dev/null || die "echo-server exited before it was ready"
  sleep 0.1
done
grep -qsx "ready $NAME" "$WORK/server.out" || die "echo-server not ready within 10 s"
[ -e "/dev/shm$NAME" ] || die "no segment /dev/shm$NAME while the server is ready"

run() {
  local p=$1
  shift
  local rc=0
  timeout "$CLIENT_TIMEOUT" "$BIN/$p" --name "$NAME" "$@" > "$WORK/$p.out" 2> "$WORK/$p.err" ||
    rc=$?
  cat "$WORK/$p.out"
  [ "$rc" = 0 ] || { cat "$WORK/$p.err" >&2; die "$p $* exited $rc"; }
}
run echo-client --count 2000
grep -q "^server says: stream 1 (pid [0-9]*): 2000 echoes" "$WORK/echo-client.out" ||
  die "echo-client: no statistics from the server"
run many-streams --streams 16 --count 500
run zero-copy-send --rounds 16
run zero-copy-send --size 8 --rounds 3

# Several clients at once.
pids=()
for i in 1 2 3; do
  timeout "$CLIENT_TIMEOUT" "$BIN/echo-client" --name "$NAME" --count 500 > "$WORK/par$i.out" \
    2>&1 &
  pids+=($!)
done
for i in 0 1 2; do
  wait "${pids[$i]}" || { cat "$WORK/par$((i + 1)).out" >&2; die "parallel echo-client $i"; }
done

# Stop: SIGTERM, up to 10 s, then SIGKILL (a failure either way if it had to be killed).
kill -TERM "$server"
for _ in $(seq 100); do
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$server" 2>/dev/null; then
  kill -KILL "$server"
  wait "$server" 2>/dev/null || true
  server=""
  die "echo-server did not stop within 10 s of SIGTERM"
fi
rc=0
wait "$server" || rc=$?
server=""
[ "$rc" = 0 ] || die "echo-server exited $rc"
grep -q "SIGTERM: stopped after" "$WORK/server.err" || die "echo-server did not say it stopped"
[ ! -e "/dev/shm$NAME" ] || die "echo-server left /dev/shm$NAME behind"
echo "run-examples: all examples passed ($(grep -o "stopped after.*" "$WORK/server.err"))"
