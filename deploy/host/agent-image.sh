#!/usr/bin/env bash
# Build a local workload image with Python and the agent SDK (symbi_agent), without a registry pull:
# the root filesystem of symbi/busybox:1 (deploy/host/setup-docker.sh), the host's Python interpreter with
# its standard library (tests and GUI modules left out) and the shared libraries it links, and
# sdk/python/src/symbi_agent in its site-packages; imported with `docker import`. Also the DSL body runner
# (`python3 -m symbi_agent.dsl_run`, docs/dsl.md): libs/dsl's symbi_dsl with what its parser and interpreter
# import (lark, msgspec from the workspace's .venv, and symbi_common's errors module; nothing else of it).
#
# Usage: deploy/host/agent-image.sh [TAG]   (default symbi/agent-python:1). Idempotent: an existing TAG built
# from the same content (this script, the SDK, symbi_dsl, symbi_common's errors module, the lark and msgspec
# versions, the Python version: label org.symbi.content) is kept; one built from other content is rebuilt
# under the same tag.
#        deploy/host/agent-image.sh --tag   prints symbi/agent-python:<content hash>, the tag
#        deploy/host/agent-image.sh --content-tagged   builds under that tag and prints it (deploy/images/build.sh). Environment: PYTHON (default python3) names the interpreter to copy, SYMBI_IMAGE the busybox image,
# SYMBI_SITE_PACKAGES where lark and msgspec are (default the workspace's .venv, built for the same Python).
set -euo pipefail

TAG=${1:-symbi/agent-python:1}
BASE=${SYMBI_IMAGE:-symbi/busybox:1}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
SDK="$HERE/sdk/python/src/symbi_agent"
DSL="$HERE/libs/dsl/src/symbi_dsl"
COMMON="$HERE/libs/common/src/symbi_common"

fail() { echo "agent-image: $*" >&2; exit 1; }
read -r PREFIX VER EXE <<<"$("$PY" -c 'import sys; print(sys.base_prefix, "%d.%d" % sys.version_info[:2], sys.executable)')"
SITE=${SYMBI_SITE_PACKAGES:-$HERE/.venv/lib/python$VER/site-packages}
CONTENT=$( { "$PY" -V 2>&1; cat "$0"; find "$SDK" "$DSL" -name '*.py' -o -name '*.lark' | LC_ALL=C sort \
  | xargs cat; cat "$COMMON/__init__.py" "$COMMON/errors.py"; ls -d "$SITE"/lark-*.dist-info "$SITE"/msgspec-*.dist-info \
  2>/dev/null | xargs -rn1 basename; } | sha256sum | cut -c1-16)
case "$TAG" in
  --tag) echo "symbi/agent-python:$CONTENT"; exit 0 ;;
  --content-tagged) TAG="symbi/agent-python:$CONTENT"; PRINT_TAG=1 ;;
esac
have=$(docker image inspect -f '{{index .Config.Labels "org.symbi.content"}}' "$TAG" 2>/dev/null || true)
done_() { [ -z "${PRINT_TAG:-}" ] || echo "$TAG"; exit 0; }
[ "$have" = "$CONTENT" ] && done_
docker image inspect "$BASE" >/dev/null 2>&1 || fail "$BASE is missing; run deploy/host/setup-docker.sh"
[ -d "$SDK" ] || fail "$SDK not found"
[ -d "$DSL" ] || fail "$DSL not found"

EXE=$(readlink -f "$EXE")
STDLIB="$PREFIX/lib/python$VER"
[ -d "$STDLIB/lib-dynload" ] || fail "no standard library at $STDLIB"
[ -d "$SITE/lark" ] || fail "lark not found in $SITE (run uv sync, or set SYMBI_SITE_PACKAGES)"
ls "$SITE/msgspec/"_core.cpython-"${VER/./}"-*.so >/dev/null 2>&1 \
  || fail "no msgspec built for Python $VER in $SITE (set SYMBI_SITE_PACKAGES)"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
cid=$(docker create "$BASE" true)
docker export "$cid" | tar -C "$root" -x
docker rm "$cid" >/dev/null

mkdir -p "$root/usr/local/bin" "$root/usr/local/lib"
cp "$EXE" "$root/usr/local/bin/python$VER"
ln -sf "python$VER" "$root/usr/local/bin/python3"
ln -sf "python$VER" "$root/usr/local/bin/python"
tar -C "$PREFIX/lib" -c \
  --exclude="python$VER/test" --exclude="python$VER/site-packages" --exclude="python$VER/idlelib" \
  --exclude="python$VER/tkinter" --exclude="python$VER/ensurepip" --exclude="python$VER/lib2to3" \
  --exclude="python$VER/turtledemo" --exclude="python$VER/config-*" "python$VER" | tar -C "$root/usr/local/lib" -x
mkdir -p "$root/usr/local/lib/python$VER/site-packages"
SP="$root/usr/local/lib/python$VER/site-packages"
cp -r "$SDK" "$DSL" "$SITE/lark" "$SITE/msgspec" "$SP/"
mkdir -p "$SP/symbi_common"
cp "$COMMON/__init__.py" "$COMMON/errors.py" "$SP/symbi_common/"
find "$root/usr/local/lib/python$VER/site-packages" -name __pycache__ -prune -exec rm -rf {} +

# Shared libraries of the interpreter and its extension modules (msgspec's too), at the same paths as on the host.
for lib in $( { ldd "$EXE"; for so in "$STDLIB"/lib-dynload/*.so "$SITE"/msgspec/*.so; do ldd "$so" 2>/dev/null || true; done; } \
    | grep -o '/[^ ]*' | sort -u); do
  [ -e "$lib" ] || continue
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# glibc opens libgcc_s.so.1 itself (dlopen) when a thread ends through pthread_exit, as Python's daemon threads
# do at interpreter exit; ldd cannot name it, and without it such a process aborts ("libgcc_s.so.1 must be
# installed for pthread_exit to work", exit 134) at random.
GCC_S=$(PATH=$PATH:/sbin:/usr/sbin ldconfig -p | grep -m1 -o '/[^ ]*/libgcc_s\.so\.1$') || fail "libgcc_s.so.1 not found on this host (ldconfig -p)"
mkdir -p "$root$(dirname "$GCC_S")"
cp -L "$GCC_S" "$root$GCC_S"

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin' --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
  --change 'CMD ["/usr/local/bin/python3"]' --change "LABEL org.symbi.content=$CONTENT" - "$TAG" >/dev/null || fail "docker import of $TAG failed"
echo "agent-image: built $TAG" >&2
done_
