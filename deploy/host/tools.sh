#!/usr/bin/env bash
# Build the pinned Go tools the tests and operators use, once, into a cache keyed by tool and version:
#
#   natscli  v0.5.0   `nats`    the NATS CLI (docs/operators.md, "Reading the streams with the NATS CLI")
#   jaeger   v1.75.0  `jaeger`  Jaeger all-in-one: OTLP receiver, in-memory store, query API (tests/e2e/test_jaeger.py)
#   prometheus  v0.316.0 (the Go module version of Prometheus 3.16.0)  `prometheus`  scrapes the compose stack
#   compose-v5  v5.6.0   `docker-compose`  Docker Compose v5 (github.com/docker/compose/v5, its ./cmd): what
#               deploy/compose.sh and tests/deploy run docker-compose.yml with when it is built (it works with
#               Docker Engine 20.10.24, API 1.41); also usable as the `docker compose` plugin (link it into
#               ~/.docker/cli-plugins/)
#
# With no argument it also makes sure Debian's chromium and chromium-driver are installed (apt, as root): the
# console's browser test (cli/tests/test_console_browser.py) drives them; no browser is downloaded. The compose
# stack's tools are asked for by name (tests/deploy, deploy/images/build.sh): `prometheus`, and `compose`,
# which installs Debian's docker-compose 1.29.2 (apt, as root), the compose docker-compose.yml is tested with.
#
# All come from the Go module proxy and are built here with the machine's Go (1.26; nothing is downloaded
# prebuilt). Jaeger's and Prometheus's dependency sets are pinned by deploy/tools/<tool>/go.mod and go.sum
# (made with `go get -tool <module>/cmd/<tool>@<version>`). A tool already in the cache is never rebuilt;
# delete its directory to force a build. Jaeger takes about 9 minutes on two cores, Prometheus about 11.
#
# Compose v5 is built inside its own module (downloaded with `go mod download`, verified with the Go
# checksum database like any module), from that module's go.mod and go.sum: `go install ...@v5.6.0` refuses
# it, because its go.mod has `exclude` directives, which only a main module may have.
#
# Usage:  deploy/host/tools.sh [natscli|jaeger|prometheus|compose|compose-v5]...  (no argument: natscli, jaeger,
#         chromium)
#         deploy/host/tools.sh --print natscli|jaeger|prometheus|compose-v5 (the cached binary's path; exit 1 if
#         not built)
# Cache:  ${SYMBI_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/symbi/tools}/<tool>-<version>/<binary>
set -euo pipefail

NATSCLI_VERSION=v0.5.0
JAEGER_VERSION=v1.75.0
PROMETHEUS_VERSION=v0.316.0
COMPOSE_VERSION=v5.6.0

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${SYMBI_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/symbi/tools}"

binary_path() {
    case "$1" in
        natscli) echo "$cache/natscli-$NATSCLI_VERSION/nats" ;;
        jaeger) echo "$cache/jaeger-$JAEGER_VERSION/jaeger" ;;
        prometheus) echo "$cache/prometheus-$PROMETHEUS_VERSION/prometheus" ;;
        compose-v5) echo "$cache/compose-$COMPOSE_VERSION/docker-compose" ;;
        *)
            echo "error: unknown tool '$1' (known: natscli, jaeger, prometheus, compose, compose-v5)" >&2
            return 2
            ;;
    esac
}

need_go() {
    if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
        export PATH="/usr/local/go/bin:$PATH" # the Go tarball's place, often not on a non-login PATH
    fi
    if ! command -v go >/dev/null 2>&1; then
        echo "error: the go command is not on PATH; install Go 1.26 (Debian: golang-go, or the go.dev tarball)" >&2
        exit 1
    fi
}

# Build into a temporary directory and move the binary into place last, so an interrupted build never
# leaves a half-written binary that later runs would take for a cached one.
build() {
    local tool="$1" dest tmp started
    dest="$(binary_path "$tool")"
    if [ -x "$dest" ]; then
        echo "--- $tool: cached at $dest"
        return 0
    fi
    need_go
    mkdir -p "$(dirname "$dest")"
    tmp="$(mktemp -d "$(dirname "$dest")/.build-XXXXXX")"
    started=$SECONDS
    echo "--- $tool: building (go $(go env GOVERSION)), this takes a while the first time"
    case "$tool" in
        natscli)
            CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-trimpath \
                go install "github.com/nats-io/natscli/nats@$NATSCLI_VERSION"
            ;;
        jaeger)
            (cd "$repo/deploy/tools/jaeger" \
                && CGO_ENABLED=0 go build -trimpath -mod=readonly -o "$tmp/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
            ;;
        prometheus)
            # Pinned by deploy/tools/prometheus/go.mod (`go get -tool .../cmd/prometheus@v0.316.0`). Built without
            # the `builtinassets` tag: the web UI's compiled assets are not in the module, the HTTP API is.
            (cd "$repo/deploy/tools/prometheus" \
                && CGO_ENABLED=0 go build -trimpath -mod=readonly \
                    -ldflags "-X github.com/prometheus/common/version.Version=3.${PROMETHEUS_VERSION#v0.3}" \
                    -o "$tmp/prometheus" github.com/prometheus/prometheus/cmd/prometheus)
            ;;
        compose-v5)
            local module
            module="$(go mod download -json "github.com/docker/compose/v5@$COMPOSE_VERSION" \
                | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
            [ -f "$module/go.mod" ] || { echo "error: go mod download gave no module directory" >&2; exit 1; }
            (cd "$module" \
                && CGO_ENABLED=0 go build -trimpath -mod=readonly \
                    -ldflags "-w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION" \
                    -o "$tmp/docker-compose" ./cmd)
            ;;
    esac
    mv "$tmp/$(basename "$dest")" "$dest"
    rmdir "$tmp"
    echo "--- $tool: built in $((SECONDS - started)) s -> $dest"
}

if [ "${1:-}" = "--print" ]; then
    dest="$(binary_path "${2:?usage: tools.sh --print natscli|jaeger|prometheus|compose-v5}")"
    [ -x "$dest" ] || exit 1
    echo "$dest"
    exit 0
fi

# A Debian package that provides COMMAND, installed with apt when COMMAND is missing (root only).
# Usage: apt_tool LABEL COMMAND PACKAGE...
apt_tool() {
    local label=$1 command=$2
    shift 2
    if command -v "$command" >/dev/null 2>&1; then
        echo "--- $label: $command at $(command -v "$command")"
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "error: $command is missing and apt-get is not usable: install $* (Debian packages)" >&2
        exit 1
    fi
    echo "--- $label: installing $* (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Debian's docker-compose (1.29.2 on bookworm), the compose implementation docker-compose.yml is tested with.
install_compose() { apt_tool compose docker-compose docker-compose; }
install_browser() { apt_tool chromium chromedriver chromium chromium-driver; }

tools=("$@")
if [ ${#tools[@]} -eq 0 ]; then
    tools=(natscli jaeger) # what the default test run uses; prometheus and compose serve tests/deploy (-m deploy)
    install_browser
fi
for tool in "${tools[@]}"; do
    if [ "$tool" = compose ]; then
        install_compose
        continue
    fi
    binary_path "$tool" >/dev/null
    build "$tool"
done
