#!/usr/bin/env bash
# Run docker-compose.yml with locally built images and a deployment directory:
#   1. deploy/images/build.sh --env       builds (or finds, by content hash) the runtime, Jaeger and Prometheus images
#   2. symbi deploy init "$SYMBI_DEPLOY_DIR"  keys, per-service credentials and compose.env (kept if present)
#   3. docker-compose --env-file "$SYMBI_DEPLOY_DIR/compose.env" "$@", with the first compose found of:
#      $COMPOSE; Docker Compose v5.6.0 built by `deploy/host/tools.sh compose-v5`; Debian's docker-compose 1.29.2
#      (`deploy/host/tools.sh compose`); the `docker compose` plugin. tests/deploy runs the stack with both of
#      the first two on Docker Engine 20.10.24.
#
# Usage:  deploy/compose.sh up -d | ps | logs -f | down -v | ...   (any docker-compose command)
# Environment: SYMBI_DEPLOY_DIR (default .symbi-compose), SYMBI_COMPOSE_BASE_PORT (8080: services on +1…+6),
#   SYMBI_COMPOSE_NATS_PORT (4222), SYMBI_COMPOSE_JAEGER_PORT (16686), SYMBI_COMPOSE_PROMETHEUS_PORT (9090),
#   COMPOSE (a compose command; default as in step 3).
# After `up -d`: uv run symbi run examples/agents/hello.symbi --input world --home "$SYMBI_DEPLOY_DIR" --base-port 8080
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dir="${SYMBI_DEPLOY_DIR:-.symbi-compose}"

if [ -n "${COMPOSE:-}" ]; then
    read -r -a compose <<<"$COMPOSE"
elif v5="$(deploy/host/tools.sh --print compose-v5)"; then
    compose=("$v5")
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    echo "compose: neither docker-compose nor the compose plugin is installed (deploy/host/tools.sh compose-v5, or compose)" >&2
    exit 1
fi

case "${1:-}" in
    up | create | run | start | restart)
        images="$(deploy/images/build.sh --env)"
        uv run symbi deploy init "$dir" --images "$images" \
            --base-port "${SYMBI_COMPOSE_BASE_PORT:-8080}" --nats-port "${SYMBI_COMPOSE_NATS_PORT:-4222}" \
            --jaeger-port "${SYMBI_COMPOSE_JAEGER_PORT:-16686}" \
            --prometheus-port "${SYMBI_COMPOSE_PROMETHEUS_PORT:-9090}" \
            --docker-root "$(docker info -f '{{.DockerRootDir}}')" >/dev/null
        ;;
esac
[ -f "$dir/compose.env" ] || { echo "compose: $dir/compose.env is missing; run: deploy/compose.sh up -d" >&2; exit 1; }
exec "${compose[@]}" --env-file "$dir/compose.env" "$@"
