#!/usr/bin/env bash
# Prepare a sandbox-agent host: Docker engine with the runc (Tier 1) and runsc/gVisor (Tier 2) runtimes,
# and the local workload image symbi/busybox:1 built from busybox-static (no registry pull needed).
#
# Idempotent: every step checks first and does nothing when already done, so a second run takes a
# second or two. Exits non-zero with a message naming the step that failed. Run as root.
#
# Environment:
#   SYMBI_DOCKER_LOG   dockerd's log file (default /var/log/dockerd.log)
#   SYMBI_IMAGE        tag of the workload image (default symbi/busybox:1)
set -euo pipefail

LOG=${SYMBI_DOCKER_LOG:-/var/log/dockerd.log}
IMAGE=${SYMBI_IMAGE:-symbi/busybox:1}
DAEMON_JSON=/etc/docker/daemon.json

fail() { echo "setup-docker: $*" >&2; exit 1; }
step() { echo "setup-docker: $*"; }

[ "$(id -u)" = 0 ] || fail "must run as root (installs packages and starts dockerd)"

# 1. Packages.
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v runsc >/dev/null 2>&1 || missing+=(runsc)
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || fail "apt-get update failed"
  apt-get install -y -qq "${missing[@]}" >/dev/null || fail "apt-get install ${missing[*]} failed"
fi
RUNSC=$(command -v runsc) || fail "runsc is not on PATH after installing it"

# 2. Register runsc as a Docker runtime. gVisor here needs its own network stack off (--network=none);
#    containers that get no network lose nothing by it. runsc-uds is the same with --host-uds=open: a
#    Tier 2 sandbox with the action gateway connects to the Unix socket in its mounted channel directory
#    (docs/agent-protocol.md), which plain runsc refuses with EPERM.
mkdir -p /etc/docker
want=$(python3 - "$DAEMON_JSON" "$RUNSC" <<'PY'
import json, sys
path, runsc = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        cfg = json.load(f)
except FileNotFoundError:
    cfg = {}
except json.JSONDecodeError as exc:
    sys.exit(f"{path} is not valid JSON: {exc}")
cfg.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": ["--network=none"]}
cfg["runtimes"]["runsc-uds"] = {"path": runsc, "runtimeArgs": ["--network=none", "--host-uds=open"]}
print(json.dumps(cfg, indent=2, sort_keys=True))
PY
) || fail "could not update $DAEMON_JSON"
config_changed=0
if [ ! -f "$DAEMON_JSON" ] || [ "$(cat "$DAEMON_JSON")" != "$want" ]; then
  step "writing $DAEMON_JSON"
  printf '%s\n' "$want" >"$DAEMON_JSON"
  config_changed=1
fi

# 3. Start dockerd (no init system here: in the background, its log in $LOG).
PIDFILE=/var/run/docker.pid
running() { docker info >/dev/null 2>&1; }
dockerd_pid() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && cat "$PIDFILE"; }
if running && [ "$config_changed" = 1 ]; then
  step "reloading dockerd for the new runtime config"
  pid=$(dockerd_pid) || fail "dockerd runs but $PIDFILE does not name it; restart it to load $DAEMON_JSON"
  kill -HUP "$pid"
  sleep 1
fi
if ! running; then
  if dockerd_pid >/dev/null; then
    step "dockerd is starting, waiting"
  else
    step "starting dockerd (log: $LOG)"
    nohup dockerd >>"$LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do
    running && break
    sleep 0.5
  done
  running || fail "dockerd did not come up within 30 s; see $LOG"
fi
for rt in runsc runsc-uds; do
  docker info --format '{{json .Runtimes}}' | grep -q "\"$rt\"" \
    || fail "dockerd does not list the $rt runtime; check $DAEMON_JSON and $LOG"
done

# 4. The workload image: a root filesystem with busybox-static and its applets, imported (no pull).
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  step "building $IMAGE from busybox-static"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,tmp,etc,proc,sys,dev,work}
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf /bin/busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >>"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import \
    --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' - "$IMAGE" >/dev/null \
    || fail "docker import of $IMAGE failed"
fi

# 5. Smoke test both tiers (hardened, as the sandbox-agent runs them).
for runtime in runc runsc; do
  out=$(docker run --rm --runtime "$runtime" --network none --read-only --cap-drop ALL \
    --security-opt no-new-privileges --user 65534:65534 --pids-limit 128 "$IMAGE" echo ok 2>&1) \
    || fail "a $runtime container does not start: $out (see $LOG)"
  [ "$out" = ok ] || fail "a $runtime container printed '$out' instead of 'ok'"
done
step "ready: dockerd with runc and runsc, image $IMAGE"
