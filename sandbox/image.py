"""The sandbox image: its content-addressed tag, building it, and `rlfleet sandbox prepare`.

The tag is a hash of the build definition (``Dockerfile``, ``.dockerignore``) and every file
under ``worker/`` the build copies, so a changed worker means a new tag and never a stale
image. The build context is this directory; its ``.dockerignore`` lets in only the Dockerfile
and ``worker/`` (no ``__pycache__``), the same files the hash reads.

Where no image registry is reachable, ``deploy/host/setup.sh`` debootstraps a local base image
(``rlfleet/bookworm-base:local``) from apt's own mirror; the build then uses it as ``BASE``.

Stdlib-only at import time (the docker SDK is imported where it is used), so the script form
works under the system Python before any virtualenv exists; ``deploy/host/setup.sh`` runs::

    python3 -I sandbox/image.py mirror   # apt's bookworm main mirror, for debootstrap
    python3 -I sandbox/image.py tag      # the sandbox image's tag
    python3 -I sandbox/image.py ensure   # build it if missing (docker SDK, else the CLI)
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import re
import shutil
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


# --- apt's mirror (for debootstrap) ------------------------------------------------------

_URI_SCHEMES = ("http://", "https://", "file:/")


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()


def _from_deb822(text: str, suite: str) -> Iterator[str]:
    for st in _deb822_stanzas(text):
        if st.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in st.get("types", "").split():
            continue
        if suite in st.get("suites", "").split() and "main" in st.get("components", "").split():
            yield from st.get("uris", "").split()


def _from_one_line(text: str, suite: str) -> Iterator[str]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=... signed-by=...] options
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "deb" and parts[2] == suite and "main" in parts[3:]:
            yield parts[1]


def apt_mirror(etc_apt: Path = Path("/etc/apt"), suite: str = "bookworm") -> str | None:
    """The first apt source serving ``suite`` ``main`` (deb, not deb-src), in apt's own order:
    ``sources.list``, then ``sources.list.d/*.list`` and ``*.sources`` sorted by name."""
    files = [etc_apt / "sources.list"]
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        uris = _from_deb822(text, suite) if f.suffix == ".sources" else _from_one_line(text, suite)
        for uri in uris:
            if uri.startswith(_URI_SCHEMES):
                return uri
    return None


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


class _SdkEngine:
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


class _CliEngine:
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


def _pick_base(engine: _Engine) -> str | None:
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
        base = _pick_base(engine)
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
    return _ensure(_SdkEngine(client), base, progress)


# --- `rlfleet sandbox prepare` -----------------------------------------------------------


def _check(ok: bool, what: str, hint: str = "") -> bool:
    mark = "ok     " if ok else "MISSING"
    print(f"  {mark} {what}" + (f": {hint}" if hint and not ok else ""), flush=True)
    return ok


def _docker_socket() -> Path | None:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return Path(host.removeprefix("unix://")) if host.startswith("unix://") else None


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def prepare_docker() -> int:
    print("docker backend:")
    sock = _docker_socket()
    if sock is not None and not sock.exists():
        _check(
            False,
            "a Docker engine",
            f"no engine running (no socket {sock}); start one with {SETUP_HINT}",
        )
        return 1
    if sock is not None and not os.access(sock, os.R_OK | os.W_OK):
        _check(
            False,
            "a Docker engine",
            f"no permission on {sock}: run as root or as a member of its group "
            f"({_group_name(sock.stat().st_gid)})",
        )
        return 1
    try:
        import docker
    except ImportError:
        _check(False, "the docker Python SDK", "pip install -e . (it is a dependency)")
        return 1
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        version = client.version()
    except Exception as e:
        _check(False, "a Docker engine answering", f"{e}; start one with {SETUP_HINT}")
        return 1
    _check(True, f"Docker engine {version.get('Version', '?')} (API {version.get('ApiVersion')})")
    engine = _SdkEngine(client)
    if not engine.has_image(image_tag()) and _pick_base(engine) is None:
        print(f"  note: neither {STANDARD_BASE} nor {LOCAL_BASE} is here; trying a pull")
    try:
        tag = ensure_image(client, progress=lambda line: print(f"    {line}", flush=True))
    except Exception as e:
        _check(False, "the sandbox image", str(e))
        return 1
    _check(True, f"sandbox image {tag}")
    print(tag)
    return 0


def _privileges() -> tuple[bool, str]:
    if os.geteuid() == 0:
        return True, "running as root"
    try:
        max_ns = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        max_ns = 0
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    allowed = max_ns > 0 and (not clone.exists() or clone.read_text().strip() != "0")
    return allowed, "unprivileged user namespaces" + ("" if allowed else " (not root either)")


def _cgroups() -> tuple[bool, str]:
    from rlfleet.sandbox import cgroups

    try:
        h = cgroups.prepare()  # as the backend will: read-only mounts in a container remounted
    except cgroups.CgroupError as e:
        return False, str(e)
    unwritable = [str(p) for p in sorted(set(h.roots.values())) if not os.access(p, os.W_OK)]
    controllers = ", ".join(h.roots) if h.version == 1 else "memory, pids, cpu"
    if unwritable:
        return False, f"cgroup v{h.version} not writable here: {', '.join(unwritable)}"
    return True, f"cgroup v{h.version} ({controllers}) writable"


def prepare_local() -> int:
    print("local backend:")
    ok, what = _privileges()
    ok = _check(ok, what, "run as root, or enable user namespaces")
    cg_ok, cg_what = _cgroups()
    ok &= _check(cg_ok, "cgroups" if not cg_ok else cg_what, cg_what)
    ok &= _check(
        os.access("/usr/bin/python3", os.X_OK), "/usr/bin/python3", "apt-get install python3"
    )
    gxx = shutil.which("g++")
    ok &= _check(gxx is not None, f"g++ ({gxx})" if gxx else "g++", "apt-get install g++")
    try:
        ctypes.CDLL("libseccomp.so.2")
        ok &= _check(True, "libseccomp.so.2 loads")
    except OSError as e:
        ok &= _check(False, "libseccomp.so.2", f"{e}; apt-get install libseccomp2")
    return 0 if ok else 1


def prepare(backend: str) -> int:
    """`rlfleet sandbox prepare --backend B`: check (and for docker build) what the backend
    needs, printing each check; 0 when ready."""
    if backend == "docker":
        return prepare_docker()
    if backend == "local":
        return prepare_local()
    raise ValueError(f"unknown backend {backend!r}")


# --- script form -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="image.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tag", help="print the sandbox image's tag")
    sub.add_parser("mirror", help="print apt's bookworm main mirror")
    ens = sub.add_parser("ensure", help="build the sandbox image if missing; print its tag")
    ens.add_argument(
        "--base",
        help=f"BASE build argument (default: {STANDARD_BASE} if here, else {LOCAL_BASE} if here)",
    )
    prep = sub.add_parser("prepare", help="same as `rlfleet sandbox prepare`")
    prep.add_argument("--backend", choices=("docker", "local"), default="local")
    args = p.parse_args(argv)

    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.cmd == "tag":
        print(image_tag())
    elif args.cmd == "mirror":
        mirror = apt_mirror()
        if mirror is None:
            err("no apt source for bookworm main in /etc/apt/sources.list{,.d/}")
            return 1
        print(mirror)
    elif args.cmd == "ensure":
        engine: _Engine
        try:
            import docker

            engine = _SdkEngine(docker.from_env(timeout=600))
        except ImportError:
            engine = _CliEngine()
        try:
            print(_ensure(engine, args.base, err))
        except BuildError as e:
            err(str(e))
            return 1
    else:
        return prepare(args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
