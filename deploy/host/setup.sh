#!/usr/bin/env bash
# Provision this host for rlfleet's tests and docker backend (Debian bookworm, as root):
# system packages, a running Docker engine, and the local base image the sandbox image is
# built FROM (no image registry needed: it is debootstrapped from apt's own mirror).
# Idempotent: each step is skipped when already done.
set -euo pipefail

log() { echo "setup: $*" >&2; }
STATE_DIR=${RLFLEET_STATE_DIR:-/var/lib/rlfleet}
BASE_IMAGE=rlfleet/bookworm-base:local
PACKAGES=(docker.io containerd runc iptables debootstrap prometheus g++ libseccomp2 python3-venv)

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
mkdir -p "$STATE_DIR"

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Docker engine: Debian's dockerd, started by hand when nothing answers.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  nohup /usr/sbin/dockerd --pidfile "$STATE_DIR/dockerd.pid" >"$STATE_DIR/dockerd.log" 2>&1 &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see $STATE_DIR/dockerd.log"; exit 1; }
fi

# apt's own mirror for bookworm main (deb822 .sources first, then sources.list).
apt_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    awk 'BEGIN{RS=""; FS="\n"}
         /Suites:[^\n]*bookworm( |\n|$)/ && /Components:[^\n]*main/ && !/-security/ {
           for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, a, " "); print a[2]; exit } }' "$f"
  done | head -n1
  grep -hE '^deb [^ ]+ bookworm .*main' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '{print $2}' | head -n1
}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  mirror=$(apt_mirror | head -n1)
  [ -n "$mirror" ] || { log "no bookworm main mirror found in apt's sources"; exit 1; }
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrapping $BASE_IMAGE from apt's mirror (about a minute)"
  debootstrap --variant=minbase --include=python3,libseccomp2 bookworm "$rootfs" "$mirror" \
    >"$STATE_DIR/debootstrap.log" 2>&1 || { log "debootstrap failed; see $STATE_DIR/debootstrap.log"; exit 1; }
  echo "deb $mirror bookworm main" >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
  log "imported $BASE_IMAGE"
fi
log "host ready"
