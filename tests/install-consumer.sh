#!/usr/bin/env bash
# install-consumer.sh SRC_DIR BUILD_DIR: prove the installed package, not the build tree.
# Installs BUILD_DIR into a fresh prefix and, using nothing but that prefix:
#   a. builds every example with pkg-config alone (cc -std=c11 -Wall -Wextra -Werror);
#   b. configures and builds examples/ standalone with find_package(shmengine);
#   c. links the examples statically: pkg-config --static against libshmengine.a, and
#      examples/ with -DSHMENGINE_EXAMPLES_STATIC=ON (shmengine::static);
#   d. runs examples/run-examples.sh against each set of binaries;
#   e. checks the installed programs' --version against the library and the header, the
#      soname, the man pages, and that the pkg-config file still works once the prefix moved.
# Every header must come from the prefix: checked in each compiler's dependency output.
# Exit status 0 only if all of it passed; everything it creates is removed on exit.
set -euo pipefail

if [ $# -ne 2 ] || [ ! -f "$1/examples/CMakeLists.txt" ] || [ ! -f "$2/CMakeCache.txt" ]; then
  echo "usage: $0 SRC_DIR BUILD_DIR   (a source tree and its configured, built build tree)" >&2
  exit 2
fi
SRC=$(cd "$1" && pwd)
BUILD=$(cd "$2" && pwd)
CC=${CC:-cc}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/install-consumer.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
PREFIX=$TMP/prefix
EXAMPLES="echo_server:echo-server echo_client:echo-client many_streams:many-streams"
EXAMPLES="$EXAMPLES zero_copy_send:zero-copy-send"

step() { echo "== install-consumer: $*"; }
die() {
  echo "install-consumer: FAILED: $*" >&2
  exit 1
}

# Every header a compilation read (make-style dependency file $1) that is a shmengine header
# must lie in the prefix; and there must be at least one.
headers_from_prefix() {
  local dep=$1 hdrs
  hdrs=$(tr ' ' '\n' < "$dep" | grep -E '/(engine|proto|arena)\.h$' || true)
  [ -n "$hdrs" ] || die "$dep: no shmengine header was read"
  while read -r h; do
    [ -z "$h" ] && continue
    case $(realpath "$h") in
      "$(realpath "$PREFIX")"/include/shmengine/*) ;;
      *) die "$dep: header $h does not come from the installed prefix" ;;
    esac
  done <<< "$hdrs"
}

# ---- install --------------------------------------------------------------------------------
step "cmake --install $BUILD --prefix $PREFIX"
cmake --install "$BUILD" --prefix "$PREFIX" > "$TMP/install.log" ||
  { cat "$TMP/install.log" >&2; die "cmake --install"; }
PC=$(find "$PREFIX" -name shmengine.pc -path '*/pkgconfig/*' | head -1)
[ -n "$PC" ] || die "no shmengine.pc under $PREFIX"
PCDIR=$(dirname "$PC")
LIBDIR=$(dirname "$PCDIR") # lib or lib/<multiarch>
for h in engine.h proto.h arena.h; do
  [ -f "$PREFIX/include/shmengine/$h" ] || die "header shmengine/$h not installed"
done
[ -f "$LIBDIR/libshmengine.a" ] || die "no libshmengine.a in $LIBDIR"
[ -f "$LIBDIR/cmake/shmengine/shmengineConfig.cmake" ] || die "no CMake package in $LIBDIR"
export PKG_CONFIG_PATH=$PCDIR

# The examples are compiled from a copy: next to them there is nothing to include.
mkdir -p "$TMP/src"
for e in $EXAMPLES; do cp "$SRC/examples/${e%%:*}.c" "$TMP/src/"; done

# ---- a. pkg-config, shared ------------------------------------------------------------------
step "a. pkg-config: $(pkg-config --modversion shmengine), $(pkg-config --cflags --libs shmengine)"
mkdir -p "$TMP/pc"
for e in $EXAMPLES; do
  src=${e%%:*} prog=${e##*:}
  # shellcheck disable=SC2046 # the flags are words
  "$CC" -std=c11 -Wall -Wextra -Werror -MMD -MF "$TMP/pc/$prog.d" \
    $(pkg-config --cflags shmengine) "$TMP/src/$src.c" $(pkg-config --libs shmengine) \
    -o "$TMP/pc/$prog" || die "pkg-config build of $src.c"
  headers_from_prefix "$TMP/pc/$prog.d"
done
SONAME=$(readelf -d "$LIBDIR/libshmengine.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [ -z "$SONAME" ] || [ ! -e "$LIBDIR/$SONAME" ]; then
  die "soname '$SONAME' of libshmengine.so missing"
fi
readelf -d "$TMP/pc/echo-client" | grep "(NEEDED).*\[$SONAME\]" > /dev/null ||
  die "the pkg-config build does not need $SONAME"
LD_LIBRARY_PATH=$LIBDIR ldd "$TMP/pc/echo-client" | grep "$SONAME => $LIBDIR/" > /dev/null ||
  die "echo-client does not load $SONAME from $LIBDIR"

# ---- b. CMake, find_package -----------------------------------------------------------------
step "b. cmake -S examples (standalone) with CMAKE_PREFIX_PATH=$PREFIX"
cmake_examples() { # dir, extra arguments
  local dir=$1
  shift
  if ! cmake -S "$SRC/examples" -B "$dir" -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS=-Werror -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
    "$@" > "$dir.log" 2>&1 || ! cmake --build "$dir" -j2 >> "$dir.log" 2>&1; then
    cat "$dir.log" >&2
    die "cmake build in $dir"
  fi
  local found
  found=$(sed -n 's/^shmengine_DIR:PATH=//p' "$dir/CMakeCache.txt")
  [ "$(realpath "$found")" = "$(realpath "$LIBDIR/cmake/shmengine")" ] ||
    die "find_package(shmengine) found '$found', not the prefix's package"
  local deps
  deps=$(find "$dir" -name '*.c.o.d')
  [ -n "$deps" ] || die "$dir: no dependency files to check"
  while read -r d; do headers_from_prefix "$d"; done <<< "$deps"
}
cmake_examples "$TMP/ex"
readelf -d "$TMP/ex/echo-client" | grep "(NEEDED).*\[$SONAME\]" > /dev/null ||
  die "the CMake build does not need $SONAME"

# ---- c. static ------------------------------------------------------------------------------
step "c. static: pkg-config --static --libs: $(pkg-config --static --libs shmengine)"
mkdir -p "$TMP/pcs"
STATIC_LIBS=()
for w in $(pkg-config --static --libs shmengine); do
  if [ "$w" = -lshmengine ]; then
    STATIC_LIBS+=("-Wl,-Bstatic" -lshmengine "-Wl,-Bdynamic")
  else
    STATIC_LIBS+=("$w")
  fi
done
for e in $EXAMPLES; do
  src=${e%%:*} prog=${e##*:}
  # shellcheck disable=SC2046
  "$CC" -std=c11 -Wall -Wextra -Werror $(pkg-config --cflags shmengine) "$TMP/src/$src.c" \
    "${STATIC_LIBS[@]}" -o "$TMP/pcs/$prog" || die "static pkg-config build of $src.c"
done
step "c. static: cmake -DSHMENGINE_EXAMPLES_STATIC=ON (shmengine::static)"
cmake_examples "$TMP/exs" -DSHMENGINE_EXAMPLES_STATIC=ON
for b in "$TMP/pcs/echo-client" "$TMP/exs/echo-client"; do
  if readelf -d "$b" | grep "(NEEDED).*libshmengine" > /dev/null; then
    die "$b was to be linked statically but needs libshmengine.so"
  fi
done

# ---- d. run them ----------------------------------------------------------------------------
for dir in pc ex pcs exs; do
  step "d. run-examples.sh $TMP/$dir"
  LD_LIBRARY_PATH=$LIBDIR "$SRC/examples/run-examples.sh" "$TMP/$dir" ||
    die "run-examples.sh against the $dir binaries"
done

# ---- e. installed programs, versions, man pages ---------------------------------------------
VERSION=$(pkg-config --modversion shmengine)
cat > "$TMP/src/version.c" << 'EOF'
#include <stdio.h>
#include <string.h>
#include <shmengine/engine.h>
int main(void)
{
        printf("%s %s %u\n", ENG_VERSION_STRING, eng_version(), eng_version_number());
        return strcmp(ENG_VERSION_STRING, eng_version()) != 0 ||
               eng_version_number() != ENG_VERSION_NUMBER;
}
EOF
# shellcheck disable=SC2046
"$CC" -std=c11 -Wall -Wextra -Werror $(pkg-config --cflags shmengine) "$TMP/src/version.c" \
  $(pkg-config --libs shmengine) -o "$TMP/version" || die "version probe build"
probe=$(LD_LIBRARY_PATH=$LIBDIR "$TMP/version") || die "header and library versions differ: $probe"
read -r hdr_ver lib_ver _ <<< "$probe"
if [ "$hdr_ver" != "$VERSION" ] || [ "$lib_ver" != "$VERSION" ]; then
  die "versions: pkg-config $VERSION, header $hdr_ver, library $lib_ver"
fi
case $SONAME in
  libshmengine.so.0.*) [ "$SONAME" = "libshmengine.so.${VERSION%.*}" ] ;;
  *) [ "$SONAME" = "libshmengine.so.${VERSION%%.*}" ] ;;
esac || die "soname $SONAME does not follow version $VERSION"
grep -q "PACKAGE_VERSION \"$VERSION\"" "$LIBDIR/cmake/shmengine/shmengineConfigVersion.cmake" ||
  die "the CMake package's version is not $VERSION"

progs=$(find "$PREFIX/bin" -maxdepth 1 -type f -perm -u+x | sort)
[ -n "$progs" ] || die "no programs installed in $PREFIX/bin"
step "e. programs: $(echo "$progs" | xargs -n1 basename | xargs), version $VERSION, soname $SONAME"
for p in $progs; do
  n=$(basename "$p")
  out=$(LD_LIBRARY_PATH=$LIBDIR timeout 10 "$p" --version) || die "$n --version failed"
  # the first line; a program may name the libraries it runs on after it (engine-bridge: NNG)
  [ "${out%%$'\n'*}" = "$n (shmengine) $VERSION" ] || die "$n --version says '$out', not $VERSION"
  man=$PREFIX/share/man/man1/$n.1
  grep -qs '^\.TH' "$man" || die "no man page $man"
done

# The pkg-config file is relocatable: move the prefix, build and run one example again.
mv "$PREFIX" "$TMP/moved"
PREFIX=$TMP/moved
MOVED_PCDIR=${PCDIR/#$TMP\/prefix/$PREFIX}
LIBDIR=${LIBDIR/#$TMP\/prefix/$PREFIX}
# shellcheck disable=SC2046
"$CC" -std=c11 -Wall -Wextra -Werror -MMD -MF "$TMP/moved.d" \
  $(PKG_CONFIG_PATH=$MOVED_PCDIR pkg-config --cflags shmengine) "$TMP/src/echo_client.c" \
  $(PKG_CONFIG_PATH=$MOVED_PCDIR pkg-config --libs shmengine) -o "$TMP/moved-client" ||
  die "build against the moved prefix"
headers_from_prefix "$TMP/moved.d"
LD_LIBRARY_PATH=$LIBDIR "$TMP/moved-client" --version | grep "(shmengine) $VERSION" > /dev/null ||
  die "the client built against the moved prefix does not run"

step "passed: the installed package builds, links (shared and static) and runs the examples"
