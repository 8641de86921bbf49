"""The sandbox image: its content-addressed tag, and building it.

The tag is a hash of the build definition (``Dockerfile``, ``.dockerignore``) and every file
under ``worker/`` the build copies, so a changed worker means a new tag and never a stale
image. The build context is this directory; its ``.dockerignore`` lets in only the Dockerfile
and ``worker/`` (no ``__pycache__``), the same files the hash reads.

Where no image registry is reachable, ``deploy/host/setup.sh`` debootstraps a local base image
(``rlfleet/bookworm-base:local``) from apt's own mirror (``apt_mirror.py``); the build then
uses it as ``BASE``.

Stdlib-only at import time (the docker SDK is imported where it is used), so the script form
works under the system Python before any virtualenv exists; ``deploy/host/setup.sh`` runs::

    python3 -I sandbox/image.py tag                 # the sandbox image's tag
    python3 -I sandbox/image.py ensure [BASE]       # build it with the docker CLI if missing
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

SANDBOX_DIR = Path(__file__).resolve().parent
IMAGE_REPO = "rlfleet/sandbox"
STANDARD_BASE = "debian:bookworm-slim"
"""The Dockerfile's default ``BASE`` (pulled from a registry where one is reachable)."""
LOCAL_BASE = "rlfleet/bookworm-base:local"
"""The registry-free base that ``deploy/host/setup.sh`` imports."""
SETUP_HINT = "deploy/host/setup.sh (as root)"
VERSION_LABEL = "io.rlfleet.sandbox.version"

Progress = Callable[[str], None]


# --- the tag -----------------------------------------------------------------------------


def _hashed_files(root: Path) -> Iterator[Path]:
    """The build's inputs: Dockerfile, .dockerignore, worker/** without bytecode caches."""
    for name in ("Dockerfile", ".dockerignore"):
        if (root / name).is_file():
            yield root / name
    worker = root / "worker"
    if worker.is_dir():
        for dirpath, dirnames, filenames in os.walk(worker):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for f in sorted(filenames):
                if not f.endswith((".pyc", ".pyo")):
                    yield Path(dirpath) / f


def image_version(root: Path = SANDBOX_DIR) -> str:
    """16 hex digits of SHA-256 over the build's inputs (names and contents)."""
    digest = hashlib.sha256()
    for path in _hashed_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        data = path.read_bytes()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def image_tag(root: Path = SANDBOX_DIR) -> str:
    """``rlfleet/sandbox:<content hash>`` for the sandbox directory at ``root``."""
    return f"{IMAGE_REPO}:{image_version(root)}"


# --- building ----------------------------------------------------------------------------


class BuildError(RuntimeError):
    pass


class _Engine(Protocol):
    def has_image(self, name: str) -> bool: ...

    def build(self, tag: str, buildargs: dict[str, str], progress: Progress) -> None: ...


def _build_options(tag: str) -> dict[str, Any]:
    # Host networking: the build only runs this Dockerfile's apt-get, and it then needs no
    # working bridge/NAT on the host. No pull: the base is local or pulled on first use.
    return {"tag": tag, "network_mode": "host", "labels": {VERSION_LABEL: tag.split(":")[1]}}


class SdkEngine:
    def __init__(self, client: Any) -> None:
        self.client = client

    def has_image(self, name: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(name)
        except docker.errors.ImageNotFound:
            return False
        return True

    def build(self, tag: str, buildargs: dict[str, str], progress: Progress) -> None:
        # The low-level call streams the legacy builder's output as it comes;
        # client.images.build() is the same request but returns the log only at the end.
        stream: Iterable[dict[str, Any]] = self.client.api.build(
            path=str(SANDBOX_DIR),
            dockerfile="Dockerfile",
            buildargs=buildargs,
            rm=True,
            forcerm=True,
            decode=True,
            **_build_options(tag),
        )
        for chunk in stream:
            if "error" in chunk:
                raise BuildError(str(chunk["error"]).strip())
            line = str(chunk.get("stream") or chunk.get("status") or "").strip()
            if line:
                progress(line)


class CliEngine:
    """The docker CLI, for the script form run before a virtualenv (and the SDK) exists."""

    def __init__(self, docker: str = "docker") -> None:
        self.docker = docker

    def has_image(self, name: str) -> bool:
        r = subprocess.run(
            [self.docker, "image", "inspect", name], capture_output=True, check=False
        )
        return r.returncode == 0

    def build(self, tag: str, buildargs: dict[str, str], progress: Progress) -> None:
        opts = _build_options(tag)
        cmd = [self.docker, "build", "--rm", "--force-rm", "-t", tag]
        cmd += ["--network", opts["network_mode"], "-f", str(SANDBOX_DIR / "Dockerfile")]
        cmd += [f"--label={k}={v}" for k, v in opts["labels"].items()]
        cmd += [f"--build-arg={k}={v}" for k, v in buildargs.items()]
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the legacy builder, as the SDK uses
        with subprocess.Popen(
            [*cmd, str(SANDBOX_DIR)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        ) as p:
            assert p.stdout is not None
            tail: list[str] = []
            for raw in p.stdout:
                line = raw.strip()
                if line:
                    progress(line)
                    tail = [*tail[-4:], line]
        if p.returncode != 0:
            raise BuildError(" | ".join(tail) or f"docker build exited {p.returncode}")


def pick_base(engine: _Engine) -> str | None:
    """``None`` (the Dockerfile's default) when that base is here or nothing better is;
    the local debootstrapped base when only it is here. No registry is tried first: on the
    machines that lack one, a pull attempt would only cost a timeout."""
    if engine.has_image(STANDARD_BASE):
        return None
    if engine.has_image(LOCAL_BASE):
        return LOCAL_BASE
    return None


def _ensure(engine: _Engine, base: str | None, progress: Progress) -> str:
    tag = image_tag()
    if engine.has_image(tag):
        return tag
    if base is None:
        base = pick_base(engine)
    progress(f"building {tag} FROM {base or STANDARD_BASE}")
    try:
        engine.build(tag, {"BASE": base} if base else {}, progress)
    except BuildError as e:
        hint = ""
        if base is None and not engine.has_image(STANDARD_BASE):
            hint = (
                f"; the base image {STANDARD_BASE} could not be had and {LOCAL_BASE} is "
                f"missing: make the local base with {SETUP_HINT}"
            )
        raise BuildError(f"building {tag} failed: {e}{hint}") from e
    if not engine.has_image(tag):
        raise BuildError(f"building {tag} finished but the engine has no such image")
    return tag


def ensure_image(client: Any, *, base: str | None = None, progress: Progress = print) -> str:
    """Return the sandbox image's tag, building it first if the engine lacks it.

    ``client`` is a ``docker.DockerClient``. ``base`` overrides the ``BASE`` build argument;
    by default the standard base is used when present locally, else the local debootstrapped
    base when present, else the standard base is pulled. Raises ``BuildError``.
    """
    return _ensure(SdkEngine(client), base, progress)


# --- script form -------------------------------------------------------------------------

USAGE = "usage: image.py tag | image.py ensure [BASE]"


def main(argv: list[str]) -> int:
    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if argv == ["tag"]:
        print(image_tag())
        return 0
    if argv[:1] == ["ensure"] and len(argv) <= 2:
        try:
            print(_ensure(CliEngine(), argv[1] if len(argv) == 2 else None, err))
        except BuildError as e:
            err(str(e))
            return 1
        return 0
    err(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
