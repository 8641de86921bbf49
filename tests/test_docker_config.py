"""The docker backend's settings: OCI runtimes are checked where they are set."""

from __future__ import annotations

import pytest

from rlfleet.sandbox.docker_backend import DockerConfig, cgroup_spec_in_container_for
from rlfleet.sandbox.engine import EngineConfig


class FakeClient:
    def __init__(self, cgroup_version: str) -> None:
        self.cgroup_version = cgroup_version

    def info(self) -> dict[str, str]:
        return {"CgroupVersion": self.cgroup_version}


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="runtime: unknown 'kata'"):
        DockerConfig(runtime="kata")


def test_runtime_belongs_to_the_docker_backend() -> None:
    EngineConfig(backend="docker", docker=DockerConfig(runtime="runsc"))
    with pytest.raises(ValueError, match="only the docker backend"):
        EngineConfig(backend="local", docker=DockerConfig(runtime="runsc"))


@pytest.mark.parametrize("version", ["1", "2"])
def test_gvisor_cgroups_are_its_own_whatever_the_host(version: str) -> None:
    # gVisor has only its own v1 cgroupfs, mounted by the worker, with a watched memory.
    spec = cgroup_spec_in_container_for(FakeClient(version), "runsc")
    assert spec["version"] == 1 and spec["mount"] and spec["memory_watch"]
    assert set(spec["paths"]) == {"memory", "pids", "cpuacct"}
    runc = cgroup_spec_in_container_for(FakeClient(version), "runc")
    assert runc["version"] == int(version) and not runc.get("memory_watch")
