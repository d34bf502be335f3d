#!/usr/bin/env bash
# tests/check-symbols.sh BUILD_DIR SRC_DIR: the library offers exactly its API.
#  - libshmengine.so's dynamic symbol table defines only eng_ names;
#  - libshmengine.a defines only eng_ globals (its hidden symbols were made local);
#  - every function a public header marks ENG_API is exported by both.
set -euo pipefail
build=${1:?usage: check-symbols.sh BUILD_DIR SRC_DIR}
src=${2:?usage: check-symbols.sh BUILD_DIR SRC_DIR}
so=$(find "$build" -maxdepth 2 -name 'libshmengine.so' | head -n 1)
ar=$(find "$build" -maxdepth 2 -name 'libshmengine.a' | head -n 1)
[ -n "$so" ] && [ -n "$ar" ] || { echo "libshmengine.so/.a not found under $build" >&2; exit 1; }
fail=0

dyn=$(nm -D --defined-only "$so" | awk '{print $NF}' | sort -u)
bad=$(grep -v '^eng_' <<<"$dyn" || true)
if [ -n "$bad" ]; then
  echo "FAIL: $so exports names without the eng_ prefix:"; sed 's/^/  /' <<<"$bad"; fail=1
fi
sta=$(nm -g --defined-only "$ar" | awk 'NF == 3 {print $3}' | sort -u)
bad=$(grep -v '^eng_' <<<"$sta" || true)
if [ -n "$bad" ]; then
  echo "FAIL: $ar defines globals without the eng_ prefix:"; sed 's/^/  /' <<<"$bad"; fail=1
fi

api=$(cat "$src/engine/engine.h" "$src/alloc/arena.h" "$src/proto/proto.h" |
      grep -o '^ENG_API [^(]*\beng_[a-z0-9_]*(' | grep -o 'eng_[a-z0-9_]*($' | tr -d '(' | sort -u)
[ -n "$api" ] || { echo "FAIL: no ENG_API declarations found in the public headers"; exit 1; }
missing=$(comm -23 <(echo "$api") <(echo "$dyn"))
if [ -n "$missing" ]; then
  echo "FAIL: declared ENG_API but not exported by $so:"; sed 's/^/  /' <<<"$missing"; fail=1
fi
missing=$(comm -23 <(echo "$api") <(echo "$sta"))
if [ -n "$missing" ]; then
  echo "FAIL: declared ENG_API but not defined by $ar:"; sed 's/^/  /' <<<"$missing"; fail=1
fi
extra=$(comm -13 <(echo "$api") <(echo "$dyn"))
if [ -n "$extra" ]; then
  echo "FAIL: exported by $so but not declared ENG_API in a public header:"
  sed 's/^/  /' <<<"$extra"; fail=1
fi
[ $fail -eq 0 ] && echo "check-symbols: $(wc -l <<<"$dyn") eng_ symbols exported, all declared, nothing else"
exit $fail
