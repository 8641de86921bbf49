#!/usr/bin/env bash
# Provision this host (Debian bookworm, as root) for rlfleet's tests and docker backend:
#   1. system packages (Debian's Docker engine and docker-compose, debootstrap, libseccomp2,
#      prometheus, the toolchains: g++, the JDK, Node, Go, Rust),
#   2. a running Docker engine (Debian's dockerd, started in the background if none answers),
#      with gVisor's runsc registered as the runtime `runsc` (the docker backend's
#      `--runtime runsc`) in /etc/docker/daemon.json, which a running engine re-reads on
#      SIGHUP (a reload, not a restart: other users' containers keep running),
#   3. the base image rlfleet/bookworm-base:local, debootstrapped from apt's own mirror
#      (no image registry needed),
#   4. the sandbox image rlfleet/sandbox:<content hash>, built FROM that base,
#   5. a user who is not root, rlfleet-ci, that tests/test_rootless.py runs the local
#      backend's hostile suite as.
# Idempotent: each step is skipped when already done. Progress goes to stderr.
#
# Environment (all optional):
#   DOCKER_HOST            unix:///path: the engine to use/start (default /var/run/docker.sock)
#   RLFLEET_STATE_DIR      dockerd's pidfile and logs (default: the repo's ignored .state/)
#   RLFLEET_DOCKERD_ARGS   extra dockerd flags (e.g. a second engine's --data-root/--exec-root)
#   RLFLEET_DOCKERD_WAIT   seconds to wait for a started engine to answer (default 60)
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO=$PWD
log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
START=$SECONDS

[ "$(id -u)" = 0 ] || die "run as root (installs packages, starts dockerd)"
STATE_DIR=${RLFLEET_STATE_DIR:-$REPO/.state}
mkdir -p "$STATE_DIR"
BASE_IMAGE=rlfleet/bookworm-base:local
DOCKERD=/usr/sbin/dockerd
# Toolchains of the languages the local backend runs (the docker backend's image has its own).
LANGUAGE_PACKAGES=(g++ default-jdk-headless nodejs golang-go rustc)
PACKAGES=(docker.io containerd runc runsc iptables debootstrap prometheus docker-compose libseccomp2
  openssl "${LANGUAGE_PACKAGES[@]}")
DAEMON_JSON=/etc/docker/daemon.json

# --- 1. packages ---------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >"$STATE_DIR/apt.log" 2>&1 || { tail -n 20 "$STATE_DIR/apt.log" >&2; die "apt-get install failed"; }
else
  log "packages present"
fi

# --- 2. the engine -------------------------------------------------------------------------
# This machine may ship another Docker CLI (fine: it talks API 1.41); the engine must be
# Debian's docker.io dockerd, named by absolute path.
dpkg-query -S "$DOCKERD" 2>/dev/null | grep -q '^docker.io:' || die "$DOCKERD is not docker.io's"
engine_up() { timeout 10 docker info >/dev/null 2>&1; }
runsc_registered() {
  timeout 10 docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'
}
# runsc with its network stack off: the sandbox has no network, and gVisor then needs no
# network namespace of its own from the host. Other keys of an existing file are kept.
changed=$(/usr/bin/python3 -I - "$DAEMON_JSON" <<'PY'
import json, os, sys
path = sys.argv[1]
config = {}
if os.path.exists(path):
    with open(path) as f:
        config = json.load(f)
want = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}
if config.get("runtimes", {}).get("runsc") == want:
    print("no")
else:
    config.setdefault("runtimes", {})["runsc"] = want
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(config, f, indent=2)
    os.replace(path + ".tmp", path)
    print("yes")
PY
) || die "cannot update $DAEMON_JSON"
[ "$changed" = no ] || log "registered runsc in $DAEMON_JSON"
if engine_up; then
  log "Docker engine answers"
else
  pidfile=$STATE_DIR/dockerd.pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    log "dockerd (pid $pid) is starting; waiting"
  else
    host_flag=()
    case "${DOCKER_HOST:-}" in
      unix://*) host_flag=(-H "$DOCKER_HOST") ;;
      "") ;;
      *) die "DOCKER_HOST=$DOCKER_HOST does not answer and is not a local unix socket" ;;
    esac
    log "starting $DOCKERD (log: $STATE_DIR/dockerd.log)"
    # shellcheck disable=SC2086  # RLFLEET_DOCKERD_ARGS is a list of flags
    setsid nohup "$DOCKERD" --pidfile "$pidfile" "${host_flag[@]}" ${RLFLEET_DOCKERD_ARGS:-} \
      </dev/null >>"$STATE_DIR/dockerd.log" 2>&1 &
    pid=$!
  fi
  deadline=$((SECONDS + ${RLFLEET_DOCKERD_WAIT:-60}))
  until engine_up; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$STATE_DIR/dockerd.log" >&2
      die "dockerd exited; see $STATE_DIR/dockerd.log"
    fi
    [ $SECONDS -lt $deadline ] || die "dockerd (pid $pid) did not answer in time; see $STATE_DIR/dockerd.log"
    sleep 0.5
  done
  log "Docker engine up (pid $pid)"
fi
if ! runsc_registered; then
  # A running engine re-reads daemon.json's runtimes on SIGHUP: no restart.
  pid=$(cat "$STATE_DIR/dockerd.pid" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then pid=$(pgrep -x -o dockerd || true); fi
  [ -n "$pid" ] || die "the Docker engine answers but lacks runsc, and no local dockerd to reload"
  log "reloading dockerd (pid $pid) for the runsc runtime"
  kill -HUP "$pid"
  deadline=$((SECONDS + 10))
  until runsc_registered; do
    [ $SECONDS -lt $deadline ] || die "dockerd did not register runsc; check $DAEMON_JSON"
    sleep 0.2
  done
fi
log "runtimes: $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' 2>/dev/null)"

# --- 3. the base image, without a registry ---------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "$BASE_IMAGE present"
else
  mirror=$(/usr/bin/python3 -I sandbox/apt_mirror.py) || die "no bookworm main source in apt's config"
  rootfs=$(mktemp -d /var/tmp/rlfleet-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrapping $BASE_IMAGE from apt's mirror (about a minute; log: $STATE_DIR/debootstrap.log)"
  t0=$SECONDS
  debootstrap --variant=minbase --include=python3,libseccomp2 bookworm "$rootfs" "$mirror" \
    >"$STATE_DIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$STATE_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
  # apt inside the image (docker build) uses the same mirror; no docs in later installs.
  printf 'deb %s bookworm main\n' "$mirror" >"$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-rlfleet-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  printf 'APT::Install-Recommends "false";\n' >"$rootfs/etc/apt/apt.conf.d/01-rlfleet-norecommends"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  : >"$rootfs/etc/hostname"
  : >"$rootfs/etc/resolv.conf"
  tar --numeric-owner -C "$rootfs" -c . \
    | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' -m "debootstrap --variant=minbase bookworm" - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "imported $BASE_IMAGE ($((SECONDS - t0)) s)"
fi

# --- 4. the sandbox image --------------------------------------------------------------------
# sandbox/image.py computes the tag and builds it with the docker CLI (no virtualenv needed).
t0=$SECONDS
tag=$(/usr/bin/python3 -I sandbox/image.py ensure "$BASE_IMAGE" 2> >(sed 's/^/setup:   /' >&2)) \
  || die "building the sandbox image failed"
log "sandbox image $tag ready ($((SECONDS - t0)) s)"

# --- 5. a user who is not root ---------------------------------------------------------------
if ! id rlfleet-ci >/dev/null 2>&1; then
  useradd --create-home --shell /usr/sbin/nologin rlfleet-ci
  log "created user rlfleet-ci"
fi
log "host ready in $((SECONDS - START)) s"
