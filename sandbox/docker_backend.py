"""The ``docker`` backend: the same worker, one per long-lived container.

Each container runs ``zygote.py`` as its main process, fed over the container's attached
stdin/stdout, so a test costs a fork inside the container, never a ``docker run`` or
``docker exec``. The container adds Docker's own walls around the worker's: no network,
read-only root, memory and task caps for the whole container. The worker needs
CAP_SYS_ADMIN inside it (namespaces, mounts, run cgroups); submitted programs never have
it (they run as uid 65534 with no capabilities, no_new_privs and seccomp).

Containers are labelled, and a crashed owner's leftovers are removed at the next start.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlfleet.sandbox.worker_handle import BackendUnavailable, WorkerHandle

LABEL = "io.rlfleet.sandbox"
OWNER_LABEL = "io.rlfleet.owner"
WORKER_PATH = "/opt/rlfleet/worker/zygote.py"
GVISOR = "runsc"
RUNTIMES = ("", "runc", GVISOR)
GVISOR_TASKS_PER_PID = 8
CAPS = ["SYS_ADMIN", "SYS_CHROOT", "SETUID", "SETGID", "KILL", "CHOWN", "DAC_OVERRIDE", "FOWNER"]


@dataclass(frozen=True, kw_only=True)
class DockerConfig:
    image: str = ""
    """Sandbox image; empty: the tag ``rlfleet.sandbox.image`` computes for this checkout."""
    memory_mb: int = 4096
    """Memory cap of one container (the worker and its run together)."""
    pids: int = 512
    """Task cap of one container."""
    cpus: float = 0.0
    """CPU cap of one container (0: none; per-run CPU time is enforced inside)."""
    tmp_mb: int = 64
    """Size of each run's private /tmp."""
    extra_security_opt: tuple[str, ...] = field(default_factory=tuple)
    """More ``--security-opt`` values (e.g. a custom seccomp profile)."""
    runtime: str = ""
    """OCI runtime of the containers, as registered with the engine: ``runc`` or ``runsc``
    (gVisor: a second wall around the worker's, docs/sandbox.md); empty: the engine's
    default."""

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime: unknown {self.runtime!r} (one of runc, runsc)")


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _apparmor_enabled() -> bool:
    try:
        return Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        return False


class _Demux(threading.Thread):
    """Copies the container's stdout out of Docker's multiplexed stream into a pipe."""

    def __init__(self, sock: socket.socket, wfd: int) -> None:
        super().__init__(daemon=True, name="docker-demux")
        self._sock = sock
        self._wfd = wfd

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def run(self) -> None:
        try:
            while True:
                stream, size = struct.unpack(">BxxxI", self._recv_exact(8))
                payload = self._recv_exact(size)
                if stream == 1:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(self._wfd, view) :]
        except (EOFError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(self._wfd)


def _own_socket(raw: Any) -> socket.socket:
    """The attached stream as a socket this worker alone owns, docker-py's objects closed.

    docker-py hands out the attach request's socket, but its response object (kept alive by
    a reference cycle) still holds the connection, and closes its socket whenever the cycle
    is collected, if the response is finalised before its own reader: a worker's channel
    closed under it at a moment set by the garbage collector (seen as EBADF on a worker's
    first runs, and its fd number free for the next file to take). The worker's socket is a
    duplicate of that one; docker-py's are closed here, which leaves the connection open."""
    attached = getattr(raw, "_sock", raw)
    own = socket.socket(fileno=os.dup(attached.fileno()))
    response = getattr(raw, "_response", None)
    with contextlib.suppress(Exception):
        if response is not None:
            response.close()
    with contextlib.suppress(Exception):
        raw.close()
    with contextlib.suppress(OSError):
        attached.close()
    return own


class DockerWorker(WorkerHandle):
    def __init__(self, client: Any, index: int, config: DockerConfig, image: str) -> None:
        super().__init__()
        self._client = client
        gvisor = config.runtime == GVISOR
        security_opt = list(config.extra_security_opt)
        if _apparmor_enabled():
            security_opt.append("apparmor=unconfined")
        self.container = client.containers.create(
            image,
            command=["/usr/bin/python3", "-I", "-S", "-B", WORKER_PATH],
            name=f"rlfleet-sandbox-{os.getpid()}-{index}-{uuid.uuid4().hex[:8]}",
            labels={LABEL: "1", OWNER_LABEL: _owner()},
            stdin_open=True,
            tty=False,
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            cap_add=CAPS,
            security_opt=security_opt,
            mem_limit=f"{config.memory_mb}m",
            memswap_limit=f"{config.memory_mb}m",
            # Under gVisor the container's tasks are the runtime's own (its threads and a
            # host process per guest address space), not the programs': those are capped
            # by gVisor's pids cgroup per run. Capping the runtime at the programs' cap
            # would crash the whole sandbox at the first fork past it.
            pids_limit=config.pids * GVISOR_TASKS_PER_PID if gvisor else config.pids,
            nano_cpus=int(config.cpus * 1e9) if config.cpus else None,
            environment={},
            init=False,
            runtime=config.runtime or None,
        )
        try:
            raw = self.container.attach_socket(
                params={"stdin": 1, "stdout": 1, "stderr": 0, "stream": 1}
            )
            self._sock: socket.socket = _own_socket(raw)
            rfd, wfd = os.pipe()
            # The read end is owned by this object, and closed by close() or with the object
            # (see kill()).
            self._reader = os.fdopen(rfd, "rb", buffering=0)
            self._rfd = rfd
            self._wfd = self._sock.fileno()
            self._demux = _Demux(self._sock, wfd)
            self._demux.start()
            self.container.start()
            cgroup = cgroup_spec_in_container_for(client, config.runtime)
            setup = {"cgroup": cgroup, "tmp_mb": config.tmp_mb, "gvisor": gvisor}
            self._handshake(setup, 60.0)
        except BaseException:
            self.kill()
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)  # EOF on the worker's stdin: it exits
        with contextlib.suppress(Exception):
            self.container.wait(timeout=2)
        self.kill()
        # No run is using the channel (the pool closes idle workers only): close it.
        with contextlib.suppress(OSError, AttributeError):
            self._sock.close()
        with contextlib.suppress(OSError, AttributeError):
            self._reader.close()

    def kill(self) -> None:
        # The channel is shut, not closed: a run's thread may still be writing the request
        # or reading the reply by fd number, which must not be given to another worker's
        # channel meanwhile. The writes fail, the reader sees EOF (the demux thread closes
        # the pipe's write end), and both fds close with this object (close(), or when the
        # last thread using the handle lets go of it).
        with contextlib.suppress(Exception):
            self.container.remove(force=True)
        with contextlib.suppress(OSError, AttributeError):
            self._sock.shutdown(socket.SHUT_RDWR)


def cgroup_spec_in_container_for(client: Any, runtime: str = "") -> dict[str, Any]:
    """Where the container's own cgroups appear inside it; the worker makes runs below.

    The engine's cgroup version decides. On v2 the container has its own cgroup namespace,
    whose root is the container's cgroup; the worker moves itself to a leaf first. Under
    gVisor the cgroups are its own (v1 only, whatever the host's), mounted by the worker.
    """
    if runtime == GVISOR:
        return {
            "version": 1,
            "paths": {c: f"/sys/fs/cgroup/{c}" for c in ("memory", "pids", "cpuacct")},
            "mount": True,
            "memory_watch": True,
        }
    version = str(client.info().get("CgroupVersion", "1"))
    if version == "2":
        return {"version": 2, "path": "/sys/fs/cgroup", "remount": True, "nested": True}
    return {
        "version": 1,
        "paths": {c: f"/sys/fs/cgroup/{c}" for c in ("memory", "pids", "cpuacct")},
        "remount": True,
    }


def remove_leftovers(client: Any) -> int:
    """Remove sandbox containers whose owner process on this host is gone."""
    host = socket.gethostname()
    removed = 0
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        owner = c.labels.get(OWNER_LABEL, "")
        name, _, pid = owner.rpartition(":")
        if name == host and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(Exception):
                c.remove(force=True)
                removed += 1
    return removed


def own_containers(client: Any) -> list[Any]:
    """This process's sandbox containers (for leak checks)."""
    return client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={_owner()}"})


class DockerWorkerFactory:
    """Makes ``DockerWorker``s; connects and checks the image once."""

    def __init__(self, config: DockerConfig | None = None) -> None:
        import docker
        import docker.errors

        from rlfleet.sandbox.image import image_tag

        self.config = config or DockerConfig()
        try:
            self._client = docker.from_env()
            self._client.ping()
        except (docker.errors.DockerException, OSError) as e:
            raise BackendUnavailable(
                f"docker backend: no Docker engine answers ({e}); start one, or run "
                "deploy/host/setup.sh"
            ) from e
        runtime = self.config.runtime
        if runtime:
            registered = sorted(self._client.info().get("Runtimes", {}))
            if runtime not in registered:
                raise BackendUnavailable(
                    f"docker backend: the engine has no runtime {runtime!r} (it has "
                    f"{', '.join(registered) or 'none'}); deploy/host/setup.sh installs and "
                    "registers runsc"
                )
        self.image = self.config.image or image_tag()
        try:
            self._client.images.get(self.image)
        except docker.errors.ImageNotFound as e:
            raise BackendUnavailable(
                f"docker backend: image {self.image} is missing; build it with "
                "`rlfleet sandbox prepare --backend docker`"
            ) from e
        remove_leftovers(self._client)
        self._ids = itertools.count()

    def __call__(self, index: int) -> DockerWorker:
        del index  # names stay unique across restarts of a slot
        return DockerWorker(self._client, next(self._ids), self.config, self.image)
