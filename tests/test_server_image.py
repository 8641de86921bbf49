"""The verifier service image (deploy/server) run the way the Kubernetes manifests say:
deploy/k8s/verifier.yaml (its capabilities, no seccomp profile, its command, not
privileged) and deploy/k8s/verifier-rootless.yaml (a uid that is not root, no capabilities,
its Localhost seccomp profile, no privilege escalation). It answers real cases over
loopback, contains a fork bomb, and drains on stop."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import nobody_processes

from rlfleet.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "deploy" / "k8s" / "verifier.yaml"
ROOTLESS = REPO / "deploy" / "k8s" / "verifier-rootless.yaml"
SECCOMP_DIR = REPO / "deploy" / "k8s" / "seccomp"
MATH_SET = REPO / "tests" / "data" / "math_symbolic.jsonl"
RLFLEET = [sys.executable, "-m", "rlfleet.cli"]

pytestmark = pytest.mark.docker


def manifest(path: Path = MANIFEST) -> dict[str, Any]:
    docs = {d["kind"]: d for d in yaml.safe_load_all(path.read_text())}
    return docs


def pod_spec(path: Path = MANIFEST) -> dict[str, Any]:
    return dict(manifest(path)["Deployment"]["spec"]["template"]["spec"])


def container_spec(path: Path = MANIFEST) -> dict[str, Any]:
    (container,) = pod_spec(path)["containers"]
    return dict(container)


def docker_security(path: Path) -> list[str]:
    """A manifest's security settings as `docker run` flags (user namespaces aside: a uid
    that is not root without any capability is what the pod's process has, or less)."""
    pod, sec = pod_spec(path), container_spec(path)["securityContext"]
    flags = [f"--cap-drop={x}" for x in sec["capabilities"]["drop"]]
    flags += [f"--cap-add={x}" for x in sec["capabilities"].get("add", [])]
    seccomp = sec["seccompProfile"]
    if seccomp["type"] == "Localhost":
        flags += ["--security-opt", f"seccomp={SECCOMP_DIR / seccomp['localhostProfile']}"]
    else:
        assert seccomp == {"type": "Unconfined"}
        flags += ["--security-opt", "seccomp=unconfined"]
    if sec.get("appArmorProfile") == {"type": "Unconfined"}:
        flags += ["--security-opt", "apparmor=unconfined"]
    if sec.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    user = pod.get("securityContext", {})
    if "runAsUser" in user:
        flags += ["--user", f"{user['runAsUser']}:{user.get('runAsGroup', user['runAsUser'])}"]
    return flags


def test_manifest_is_consistent_with_the_cli_and_itself() -> None:
    docs = manifest()
    deployment, service = docs["Deployment"], docs["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["clusterIP"] == "None"  # headless: round_robin sees every pod
    c = container_spec()
    args = build_parser().parse_args(c["args"])  # exits (fails) on an unknown flag
    assert (args.command, args.backend, args.host) == ("serve", "local", "0.0.0.0")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": args.port, "metrics": args.metrics_port}
    assert c["readinessProbe"]["grpc"] == {"port": args.port, "service": "rlfleet.v1.Verifier"}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert "privileged" not in c["securityContext"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 30  # room to drain calls in flight


@pytest.fixture(scope="module")
def image() -> str:
    proc = subprocess.run(
        [str(REPO / "deploy" / "server" / "build.sh"), "rlfleet/verifier:test"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rootless_manifest_is_the_same_service_without_privileges() -> None:
    plain, rootless = manifest(), manifest(ROOTLESS)
    assert rootless["Service"] == plain["Service"]
    c, c0 = container_spec(ROOTLESS), container_spec()
    assert {k: v for k, v in c.items() if k != "securityContext"} == {
        k: v for k, v in c0.items() if k != "securityContext"
    }
    pod = pod_spec(ROOTLESS)
    assert pod["hostUsers"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sec = c["securityContext"]
    assert sec["capabilities"] == {"drop": ["ALL"]}  # nothing added
    assert "Unconfined" not in yaml.safe_dump(pod)
    assert sec["allowPrivilegeEscalation"] is False
    assert "privileged" not in sec
    # The profile: the sandbox's own deny list, less what a worker's set-up calls. (Read
    # from the worker's source: its modules import each other as scripts do.)
    filters = ast.parse((REPO / "sandbox" / "worker" / "filters.py").read_text())
    (listed,) = [
        node.value
        for node in filters.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", "") for t in node.targets] == ["DENIED_SYSCALLS"]
    ]
    deny_list = ast.literal_eval(listed)
    profile = json.loads((SECCOMP_DIR / sec["seccompProfile"]["localhostProfile"]).read_text())
    (denied,) = profile["syscalls"]
    assert (denied["action"], denied["errnoRet"]) == ("SCMP_ACT_ERRNO", 1)
    setup = {"unshare", "mount", "umount2", "pivot_root", "sethostname"}
    assert denied["names"] == [n for n in deny_list if n not in setup]


@pytest.fixture(params=[MANIFEST, ROOTLESS], ids=["verifier", "rootless"])
def server(image: str, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(container name, target): the image, started as a manifest starts it, on loopback."""
    path: Path = request.param
    c = container_spec(path)
    port = free_port()
    args = list(c["args"])
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    args[args.index("--metrics-port") + 1] = "0"
    args[args.index("--workers") + 1] = "2"
    name = f"rlfleet-verifier-test-{port}"
    run = [
        "docker", "run", "-d", "--name", name, "--network", "host",
        *docker_security(path),
        "--memory", "2g", "--pids-limit", "512",
        image, *args,
    ]  # fmt: skip
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    try:
        deadline = time.monotonic() + 60
        logs = ""
        while "listening on" not in logs and time.monotonic() < deadline:
            time.sleep(0.2)
            logs = subprocess.run(
                ["docker", "logs", name], capture_output=True, text=True, timeout=30
            ).stderr
        assert "listening on" in logs, logs
        if path == ROOTLESS:
            # Its one line on how runs are isolated (a warning: not as root): the fallback,
            # a container's cgroups not being the user's.
            (mode,) = [line for line in logs.splitlines() if "local backend mode" in line]
            assert "local backend mode rootless-rlimits:" in mode, logs
        yield name, f"127.0.0.1:{port}"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def test_image_serves_cases_contains_a_fork_bomb_and_drains(
    server: tuple[str, str], tmp_path: Path
) -> None:
    name, target = server
    cases = (REPO / "examples" / "cases.jsonl").read_text().splitlines()
    bomb = {
        "id": "bomb",
        "kind": "code",
        "language": "python",
        "code": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "tests": [{"stdin": "", "stdout": ""}],
        "time_limit_s": 1,
    }
    # Correct LaTeX that only the symbolic path proves: the image has the declared
    # dependencies only, as a deployed fleet does.
    math = [json.loads(line) for line in MATH_SET.read_text().splitlines()]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join([*cases, json.dumps(bomb), *map(json.dumps, math)]) + "\n")
    proc = subprocess.run(
        [*RLFLEET, "verify", str(path), "--server", target],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    got = {r["id"]: r["verdict"] for r in results}
    expected = {
        "py-sum-ac": "AC",
        "py-sum-wa": "WA",
        "py-loop-tle": "TLE",
        "py-bomb-mle": "MLE",
        "py-syntax-ce": "CE",
        "py-call-ac": "AC",
        "cpp-sum-ac": "AC",
        "cpp-float-ac": "AC",
        "math-frac": "AC",
        "math-hedge": "WA",
        "bomb": got["bomb"],
        **{m["id"]: m["expect"] for m in math},
    }
    assert got.keys() == expected.keys()
    wrong = {
        r["id"]: (r["verdict"], r.get("message", "")[:300])
        for r in results
        if r["verdict"] != expected[r["id"]]
    }
    assert wrong == {}
    assert got["bomb"] in ("TLE", "RE"), got["bomb"]
    assert nobody_processes() == []
    # `docker stop` sends SIGTERM: the server drains and exits cleanly.
    subprocess.run(["docker", "stop", "-t", "60", name], check=True, capture_output=True)
    state = subprocess.run(
        ["docker", "inspect", name, "--format", "{{.State.ExitCode}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert state.stdout.strip() == "0"
