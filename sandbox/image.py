"""The sandbox image: its content-addressed tag, building it, and `rlfleet sandbox prepare`.

The tag is a hash of the Dockerfile and the worker, so a changed worker means a new image
and never a stale one. Building uses the sandbox directory as context.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SANDBOX_DIR = Path(__file__).resolve().parent
IMAGE_REPO = "rlfleet/sandbox"
LOCAL_BASE = "rlfleet/bookworm-base:local"
CONTEXT_FILES = ("Dockerfile", "worker/zygote.py", "worker/__init__.py")


def image_tag(root: Path = SANDBOX_DIR) -> str:
    digest = hashlib.sha256()
    for name in CONTEXT_FILES:
        digest.update(name.encode() + b"\0")
        digest.update((root / name).read_bytes())
    return f"{IMAGE_REPO}:{digest.hexdigest()[:16]}"


def _has_image(client: Any, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_image(
    client: Any, *, base: str | None = None, progress: Callable[[str], None] = print
) -> str:
    """Return the sandbox image's tag, building it first if the engine lacks it."""
    tag = image_tag()
    if _has_image(client, tag):
        return tag
    if base is None:
        # No registry may be reachable: prefer the locally imported base when present.
        base = LOCAL_BASE if _has_image(client, LOCAL_BASE) else None
    progress(f"building {tag} from {base or 'the Dockerfile default base'} ...")
    buildargs = {"BASE": base} if base else {}
    for chunk in client.api.build(
        path=str(SANDBOX_DIR), tag=tag, buildargs=buildargs, rm=True, decode=True
    ):
        if "error" in chunk:
            raise RuntimeError(f"building {tag} failed: {chunk['error'].strip()}")
        line = chunk.get("stream", "").strip()
        if line:
            progress(line)
    return tag


def _check(ok: bool, what: str, hint: str = "") -> bool:
    print(f"  [{'ok' if ok else 'missing'}] {what}" + ("" if ok or not hint else f" ({hint})"))
    return ok


def prepare_local() -> int:
    from rlfleet.sandbox import cgroups

    print("local backend:")
    ok = _check(os.geteuid() == 0, "running as root (namespaces, cgroups, setuid)", "run as root")
    try:
        h = cgroups.detect()
        ok &= _check(True, f"cgroup v{h.version} with memory, pids and cpu accounting")
    except cgroups.CgroupError as e:
        ok &= _check(False, "cgroup hierarchy", str(e))
    ok &= _check(os.access("/usr/bin/python3", os.X_OK), "/usr/bin/python3")
    ok &= _check(
        shutil.which("g++") is not None, "g++ (for C++ submissions)", "apt-get install g++"
    )
    try:
        ctypes.CDLL("libseccomp.so.2")
        ok &= _check(True, "libseccomp.so.2")
    except OSError:
        ok &= _check(False, "libseccomp.so.2", "apt-get install libseccomp2")
    return 0 if ok else 1


def prepare_docker() -> int:
    import docker

    print("docker backend:")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        _check(False, "a Docker engine answering", f"{e}; start one, e.g. deploy/host/setup.sh")
        return 1
    _check(True, f"Docker engine {client.version().get('Version', '?')}")
    try:
        tag = ensure_image(client, progress=lambda line: print(f"    {line}"))
    except Exception as e:
        _check(
            False,
            "sandbox image",
            f"{e}; without a registry, make the local base image "
            f"{LOCAL_BASE} first with deploy/host/setup.sh",
        )
        return 1
    _check(True, f"sandbox image {tag}")
    return 0


def prepare(backend: str) -> int:
    """`rlfleet sandbox prepare`: check (and build) what a backend needs; 0 when ready."""
    code = prepare_docker() if backend == "docker" else prepare_local()
    sys.stdout.flush()
    return code
