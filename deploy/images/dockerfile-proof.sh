#!/usr/bin/env bash
# Build deploy/Dockerfile here, where no registry can be pulled from, on a stand-in for python:3.11-slim, and
# run what it built. Used by tests/deploy/test_dockerfile.py.
#
#   1. A Debian bookworm root filesystem made with debootstrap (--variant=minbase: Debian's own packages, as
#      the slim image's base is), plus the host's CPython 3.11 laid out as the official image lays out its
#      own: interpreter, standard library and libpython under /usr/local, pip in site-packages, `python`,
#      `python3` and `pip` links, ENV PATH/LANG as the official image sets them. Imported with `docker import`
#      as symbi-proof/python:3.11-slim (a throwaway name: nothing here is ever tagged python:3.11-slim).
#   2. docker build --build-arg BASE=symbi-proof/python:3.11-slim -f deploy/Dockerfile: the Dockerfile's own
#      steps, unchanged: pip install uv, uv sync --frozen --no-dev --no-editable from PyPI, the second stage,
#      useradd, the venv copied over.
#   3. The built image runs: `symbi --help`, every service's module imports, and its nats-server starts and
#      answers /healthz.
#
# What this proves: the Dockerfile's instructions build a working runtime on a Debian bookworm base with
# Python 3.11 under /usr/local. What it does not: the real python:3.11-slim's exact contents (its Python is
# built from source by its maintainers, ours is the host's; its package set is close to but not exactly
# minbase), nor its other architectures. The stand-in also sets SSL_CERT_FILE to the host's CA bundle (see
# build_base: this machine's TLS proxy), which the real image does not need. The stand-in is cached by tag
# (delete it to rebuild).
#
# Usage:  deploy/images/dockerfile-proof.sh [TAG]   (default symbi-proof/runtime:dockerfile); prints TAG.
# Needs:  root, Docker, debootstrap (Debian package; installed with apt when missing), network to Debian's
#         mirror (debootstrap) and PyPI (the Dockerfile's RUN steps).
set -euo pipefail
shopt -s inherit_errexit

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE=symbi-proof/python:3.11-slim
TAG=${1:-symbi-proof/runtime:dockerfile}
fail() { echo "dockerfile-proof: $*" >&2; exit 1; }
log() { echo "dockerfile-proof: $*" >&2; }

[ "$(id -u)" = 0 ] || fail "debootstrap needs root"
if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || fail "debootstrap is missing and apt-get is not usable"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

build_base() {
    local root py prefix ver lib
    py="$(cd "$repo" && uv python find 3.11)" || fail "no Python 3.11 for the stand-in base"
    py="$(readlink -f "$py")"
    read -r prefix ver <<<"$("$py" -c 'import sys; print(sys.base_prefix, "%d.%d" % sys.version_info[:2])')"
    [ "$ver" = 3.11 ] || fail "the stand-in needs Python 3.11, found $ver"
    root="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" RETURN
    log "debootstrap bookworm (minbase) into $root"
    debootstrap --variant=minbase bookworm "$root" >/dev/null || fail "debootstrap failed"
    mkdir -p "$root/usr/local/bin" "$root/usr/local/lib"
    cp -L "$py" "$root/usr/local/bin/python$ver"
    ln -sf "python$ver" "$root/usr/local/bin/python3"
    ln -sf "python3" "$root/usr/local/bin/python"
    cp -a "$prefix"/lib/libpython*.so* "$root/usr/local/lib/"
    tar -C "$prefix/lib" -c --exclude="python$ver/test" --exclude='__pycache__' \
        --exclude="python$ver/site-packages" "python$ver" | tar -C "$root/usr/local/lib" -x
    mkdir -p "$root/usr/local/lib/python$ver/site-packages"
    cp -a "$prefix/lib/python$ver/site-packages"/pip "$prefix/lib/python$ver/site-packages"/pip-*.dist-info \
        "$root/usr/local/lib/python$ver/site-packages/" || fail "no pip in $prefix"
    printf '#!/usr/local/bin/python%s\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n' \
        "$ver" >"$root/usr/local/bin/pip"
    chmod 755 "$root/usr/local/bin/pip"
    ln -sf pip "$root/usr/local/bin/pip3"
    # Shared libraries the interpreter's extension modules link that minbase lacks (libssl, libffi, ...):
    # the host's, which is bookworm too, at the same paths.
    for lib in $(ldd "$py" "$prefix/lib/python$ver/lib-dynload"/*.so 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
        case "$lib" in "$prefix"/*) continue ;; esac
        [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"; }
    done
    # The host's CA bundle where Debian's ca-certificates (which the official image has) keeps it, named by
    # SSL_CERT_FILE: uv trusts only its built-in roots otherwise, and this machine reaches PyPI through a TLS
    # proxy whose CA only the host's bundle holds. A property of this network, not of the Dockerfile.
    mkdir -p "$root/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    chroot "$root" /sbin/ldconfig
    chroot "$root" /usr/local/bin/python3 -c 'import ssl, sqlite3, ctypes, pip' || fail "the stand-in's Python is incomplete"
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'ENV LANG=C.UTF-8' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - "$BASE" >/dev/null || fail "docker import of $BASE failed"
    log "built $BASE"
}

docker image inspect "$BASE" >/dev/null 2>&1 || build_base
log "docker build -f deploy/Dockerfile --build-arg BASE=$BASE -t $TAG"
docker build -q -f "$repo/deploy/Dockerfile" --build-arg "BASE=$BASE" -t "$TAG" "$repo" >&2 \
    || fail "docker build of deploy/Dockerfile failed"
echo "$TAG"
