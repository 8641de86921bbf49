#!/usr/bin/env bash
# Check both sandbox backends on a cgroup v2 kernel, from a host that may only have v1.
#
# Boots a throw-away Debian bookworm VM (qemu, software-emulated: no KVM needed) whose
# kernel mounts only cgroup2, with Debian's Docker engine started by hand inside, and runs:
#   1. the hostile, verdict, pool, CLI and cgroup tests against both backends (v2 host),
#   2. the local-backend tests from inside a delegated unit cgroup (systemd's
#      trusted.delegate mark, as for Delegate=yes),
#   3. the local-backend hostile tests inside a container with its own cgroup namespace and
#      the capabilities deploy/k8s/verifier.yaml grants (not privileged: a pod's view).
# Needs root, qemu-system-x86, debootstrap, a running dockerd with the sandbox image
# (`rlfleet sandbox prepare --backend docker`) and the dev venv (.venv). About 15 minutes
# on 2 cores, most of it the VM's first build; later runs reuse it. Not part of CI.
#
# Environment: RLFLEET_VM_DIR (default /var/tmp/rlfleet-v2vm) holds the VM; REBUILD=1 starts
# it afresh.
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO=$PWD
VM=${RLFLEET_VM_DIR:-/var/tmp/rlfleet-v2vm}
ROOT=$VM/root
log() { printf 'v2-check: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
command -v debootstrap >/dev/null || die "debootstrap missing"
[ -x .venv/bin/python ] || die "no .venv: run deploy/dev/test.sh once first"
TAG=$(.venv/bin/python -c "from rlfleet.sandbox.image import image_tag; print(image_tag())")
docker image inspect "$TAG" >/dev/null 2>&1 || die "image $TAG missing: rlfleet sandbox prepare --backend docker"

mkdir -p "$VM"
if [ "${REBUILD:-0}" = 1 ] || [ ! -x "$ROOT/usr/sbin/dockerd" ]; then
  mirror=$(/usr/bin/python3 -I sandbox/apt_mirror.py) || die "no bookworm main source in apt's config"
  log "building the VM's root from $mirror (log: $VM/debootstrap.log)"
  rm -rf "$ROOT"
  debootstrap --variant=minbase \
    --include=python3,libseccomp2,g++,linux-image-amd64,initramfs-tools,docker.io,containerd,runc,iptables,procps,kmod,udev \
    bookworm "$ROOT" "$mirror" >"$VM/debootstrap.log" 2>&1 \
    || { tail -n 20 "$VM/debootstrap.log" >&2; die "debootstrap failed"; }
fi

cat >"$ROOT/opt/init.sh" <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sys /sys 2>/dev/null; mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; mount -t cgroup2 none /sys/fs/cgroup
hostname v2check; ip link set lo up 2>/dev/null; modprobe overlay 2>/dev/null
echo "=== kernel $(uname -r); mounts: $(grep cgroup /proc/mounts | cut -d' ' -f1-3 | tr '\n' ' ')"
containerd >/tmp/containerd.log 2>&1 &
dockerd --iptables=false --ip6tables=false --bridge=none >/tmp/dockerd.log 2>&1 &
for i in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 1; done
echo "=== docker: $(docker info --format 'cgroup v{{.CgroupVersion}}, driver {{.CgroupDriver}}')"
docker load -q -i /opt/image.tar
cd /opt/rlfleet && sh /opt/check.sh 2>&1
sync; echo o > /proc/sysrq-trigger; sleep 10
EOF
cat >"$ROOT/opt/check.sh" <<'EOF'
export PYTHONPATH=/opt/rlfleet:/opt/site PYTHONDONTWRITEBYTECODE=1
T="-p no:cacheprovider -q -rfE --timeout 600 --color=no"
C=/sys/fs/cgroup
echo "=== PART 1: both backends, server in the root cgroup"
/usr/bin/python3 -m pytest $T tests/test_hostile.py tests/test_verdicts.py tests/test_pool.py tests/test_verify_cli.py tests/test_cgroups.py
echo "=== PART 1 exit: $?"
echo "=== PART 2: local backend in a delegated unit cgroup"
echo "+memory +pids +cpu" > $C/cgroup.subtree_control
mkdir -p $C/system.slice/rlfleet.service && echo "+memory +pids +cpu" > $C/system.slice/cgroup.subtree_control
/usr/bin/python3 -c 'import os; os.setxattr("/sys/fs/cgroup/system.slice/rlfleet.service", "trusted.delegate", b"1")'
echo $$ > $C/system.slice/rlfleet.service/cgroup.procs
cat > /tmp/twice.py <<'PY'
from rlfleet.sandbox import cgroups, local_backend
first = cgroups.prepare()
w = local_backend.LocalWorker("twice-0", first, local_backend.LocalWorkerConfig())  # vacates the unit
w.close()
second = cgroups.prepare()
print("parent:", first.roots["unified"], "then", second.roots["unified"])
assert first == second, "the parent moved after the server went into the unit's leaf"
PY
/usr/bin/python3 /tmp/twice.py || echo "=== PART 2 parent check failed"
/usr/bin/python3 -m pytest $T tests/test_hostile.py tests/test_verify_cli.py -k "local or verify"
echo "=== PART 2 exit: $?"
echo "unit cgroup after: $(cd $C/system.slice/rlfleet.service && find . -mindepth 1 -type d | sort | tr '\n' ' ')"
echo $$ > $C/cgroup.procs
echo "=== PART 3: local backend in a container with the k8s manifest's capabilities (own cgroup namespace, read-only cgroupfs)"
IMG=$(docker images --format '{{.Repository}}:{{.Tag}}' rlfleet/sandbox | head -1)
CAPS="--cap-drop ALL --cap-add SYS_ADMIN --cap-add SYS_CHROOT --cap-add SETUID --cap-add SETGID --cap-add KILL --cap-add CHOWN --cap-add DAC_OVERRIDE --cap-add FOWNER"
docker run --rm $CAPS --security-opt seccomp=unconfined --cgroupns=private --network none -v /opt/rlfleet:/src -v /opt/site:/site \
  -e PYTHONPATH=/src:/site -e PYTHONDONTWRITEBYTECODE=1 -w /src "$IMG" \
  /usr/bin/python3 -m pytest $T tests/test_hostile.py -k local
echo "=== PART 3 exit: $?"
EOF
chmod +x "$ROOT/opt/init.sh"

log "copying the checkout, its venv's packages and $TAG into the VM"
rm -rf "$ROOT/opt/rlfleet" "$ROOT/opt/site"
mkdir -p "$ROOT/opt/rlfleet" "$ROOT/opt/site"
git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | tar -x -C "$ROOT/opt/rlfleet"
cp -a .venv/lib/python3.11/site-packages/. "$ROOT/opt/site/"
docker save "$TAG" -o "$ROOT/opt/image.tar"
rm -f "$VM/disk.img"
mkfs.ext4 -q -F -d "$ROOT" "$VM/disk.img" 8G

log "booting (the log: $VM/boot.log)"
kernel=$(ls "$ROOT"/boot/vmlinuz-* | head -1)
initrd=$(ls "$ROOT"/boot/initrd.img-* | head -1)
timeout 3600 qemu-system-x86_64 -accel tcg,thread=multi -smp 2 -m 6144 -nographic -no-reboot \
  -kernel "$kernel" -initrd "$initrd" -nic none \
  -append "console=ttyS0 root=/dev/vda rw init=/opt/init.sh cgroup_no_v1=all panic=-1 quiet" \
  -drive "file=$VM/disk.img,format=raw,if=virtio" >"$VM/boot.log" 2>&1 || true
tr '\r' '\n' <"$VM/boot.log" | grep -E '^(===|FAILED|ERROR|parent:|unit cgroup)|passed|failed' >&2
for part in 1 2 3; do
  grep -q "=== PART $part exit: 0" "$VM/boot.log" || die "part $part failed (see $VM/boot.log)"
done
! grep -q "parent check failed" "$VM/boot.log" || die "part 2: the cgroup parent moved (see $VM/boot.log)"
log "all three parts passed on cgroup v2"
