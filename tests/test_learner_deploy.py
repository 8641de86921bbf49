"""The learner's deploy pieces stay in step with its metrics, its config, the CLI and each
other: Prometheus rules (promtool unit tests, and a real Prometheus scraping live learner
metrics and answering every dashboard query), the one-node compose file (its mounts, images,
commands, ports, scrape jobs, health checks; `docker-compose config`), the image's
Dockerfile, the Kubernetes torchrun job and the GPU preset."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from harness import dashboard_exprs
from learner_fakes import step_record
from prometheus_client import CollectorRegistry, start_http_server
from promlive import prom_query, prometheus

from rlfleet.cli import build_parser
from rlfleet.learner.commands import load_task_list
from rlfleet.learner.config import TrainConfig, load_config
from rlfleet.learner.metrics import LearnerMetrics

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "rlfleet-learner.rules.yml"
DASHBOARD = "rlfleet-learner"
JOB = "rlfleet-learner"  # the scrape job the rules expect
COMPOSE = REPO / "deploy" / "compose.yaml"
DOCKERFILE = REPO / "deploy" / "learner" / "Dockerfile"
MANIFEST = REPO / "deploy" / "k8s" / "learner.yaml"
PRESET = REPO / "deploy" / "presets" / "qwen2.5-0.5b.toml"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


# --- Prometheus rules and the dashboard ------------------------------------------------------


def test_rules_pass_promtool_checks_and_unit_tests() -> None:
    for args in (
        ["check", "rules", RULES.name],
        ["test", "rules", "rlfleet-learner.rules.test.yml"],
    ):
        proc = subprocess.run(
            ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def exported_series() -> set[str]:
    registry = CollectorRegistry()
    LearnerMetrics(registry, max_staleness=0)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {m.name + s for m in registry.collect() for s in suffixes[m.type]}


def recorded_names() -> set[str]:
    return set(re.findall(r"record: (\S+)", RULES.read_text()))


def test_rules_and_dashboard_use_only_exported_or_recorded_series() -> None:
    queries = "\n".join(dashboard_exprs(DASHBOARD))
    used = set(re.findall(r"\brlfleet[:_][a-z0-9_:]+", RULES.read_text() + "\n" + queries))
    assert used - (exported_series() | recorded_names()) == set()
    assert recorded_names() <= set(re.findall(r"\brlfleet:[a-z0-9_:]+", queries))
    # Every metric of the learner is looked at somewhere.
    assert {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported_series()} <= {
        re.sub(r"_(bucket|sum|count)$", "", n) for n in used
    }


@contextlib.contextmanager
def live_learner_metrics() -> Iterator[int]:
    """The learner's metrics on a loopback port, a healthy asynchronous run's steps coming
    in (the learner itself is not needed to check the rules and the dashboard)."""
    registry = CollectorRegistry()
    m = LearnerMetrics(registry, max_staleness=1)
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    stop = threading.Event()

    def exercise() -> None:
        step = 0
        while True:
            m.observe(
                step_record(
                    step=step,
                    staleness=step % 2,
                    reward_mean=0.2 + (step % 10) / 20,
                    train={
                        "loss": 0.1,
                        "mismatch_abs_mean": 0.01,
                        "mismatch_abs_max": 0.2,
                        "mismatch_ratio_mean": 1.0,
                    },
                )
            )
            step += 1
            if stop.wait(0.05):
                return

    worker = threading.Thread(target=exercise, daemon=True)
    worker.start()
    try:
        yield int(httpd.server_port)
    finally:
        stop.set()
        worker.join(5)
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_a_real_prometheus_answers_every_dashboard_query_from_live_metrics(
    tmp_path: Path,
) -> None:
    queries = dashboard_exprs(DASHBOARD)
    with live_learner_metrics() as port, prometheus(tmp_path, RULES, JOB, port) as web:
        # Rates need two scrapes, the recorded series a rule evaluation after them.
        deadline = time.monotonic() + 60
        empty = queries
        while empty and time.monotonic() < deadline:
            time.sleep(1)
            with contextlib.suppress(OSError):
                empty = [q for q in queries if not prom_query(web, q)]
        assert empty == [], f"no data for {empty}"
        (up,) = prom_query(web, f'up{{job="{JOB}"}}')
        assert up["value"][1] == "1"
        (version,) = prom_query(web, "rlfleet_learner_policy_version")
        assert float(version["value"][1]) > 1
        # A healthy learner trips no alert, not even a pending one (the rules are loaded:
        # their recorded series answered above).
        alerts = prom_query(web, "ALERTS")
        assert alerts == [], [a["metric"] for a in alerts]


# --- deploy/compose.yaml -----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def service(name: str) -> dict[str, Any]:
    return dict(compose()["services"][name])


def overrides(args: list[str]) -> list[str]:
    return [a for a in args if "=" in a and not a.startswith("-")]


BUILD_SCRIPTS = {"verifier": "server", "rollout": "rollout", "learner": "learner"}
"""rlfleet's images (rlfleet/NAME) and the deploy/DIR/build.sh that makes each."""


def test_compose_images_are_the_ones_the_build_scripts_make() -> None:
    images = {s["image"] for s in compose()["services"].values()}
    ours = {i for i in images if i.startswith("rlfleet/")}
    assert ours == {f"rlfleet/{name}:{VERSION}" for name in BUILD_SCRIPTS}
    for name, folder in BUILD_SCRIPTS.items():
        script = REPO / "deploy" / folder / "build.sh"
        dockerfile = REPO / "deploy" / folder / "Dockerfile"
        assert script.is_file() and dockerfile.is_file(), folder
        text = script.read_text()
        # The default tag is rlfleet/NAME:<version>: the server's own, or the torch images'
        # (deploy/dev/torch-image.sh NAME).
        assert f"rlfleet/{name}:$version" in text or f'torch-image.sh" {name} ' in text, name
    assert "rlfleet/$name:$version" in (REPO / "deploy" / "dev" / "torch-image.sh").read_text()
    # Third-party images are pinned to a release.
    assert all(re.fullmatch(r"[a-z/]+:v?\d+\.\d+\.\d+", i) for i in images - ours), images


def test_compose_mounts_exist_and_volumes_are_declared() -> None:
    doc = compose()
    named = set(doc["volumes"])
    used = set()
    for name, svc in doc["services"].items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"
            else:
                assert source in named, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == named


def test_compose_commands_parse_and_point_at_each_other() -> None:
    parser = build_parser()
    sandbox = parser.parse_args(service("sandbox")["command"])
    rollout = parser.parse_args(service("rollout")["command"])
    assert (sandbox.service, sandbox.backend, sandbox.host) == ("sandbox", "local", "0.0.0.0")
    assert (rollout.service, rollout.engine, rollout.host) == ("rollout", "torch", "0.0.0.0")
    # The sandbox runs as the verifier's manifest runs it.
    k8s = {
        d["kind"]: d for d in yaml.safe_load_all((REPO / "deploy/k8s/verifier.yaml").read_text())
    }
    (verifier,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    caps = verifier["securityContext"]["capabilities"]
    assert service("sandbox")["cap_add"] == caps["add"]
    assert service("sandbox")["cap_drop"] == caps["drop"]
    # The policy service writes the model the rollout server and the learner load.
    policy = service("policy")
    assert policy["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = policy["command"]
    init = shlex.split(script.split("exec ", 1)[1])
    assert init[0] == "rlfleet"
    made = parser.parse_args(init[1:])
    assert (made.command, made.preset) == ("model", "tiny")
    assert Path(made.out_dir) == Path(rollout.model)
    assert f"test -f {made.out_dir}/config.json" in script  # written once, kept after
    # The learner: its flags parse, its overrides load, its fleet is the services above.
    args = service("learner")["command"]
    learner = parser.parse_args(args)
    assert learner.command == "train"
    config = load_config(None, learner.overrides)
    assert config.model == Path(rollout.model)
    assert learner.rollout == f"rollout:{rollout.port}"
    assert learner.verifier == f"sandbox:{sandbox.port}"
    assert config.metrics_host == "0.0.0.0" and config.metrics_port
    depends = service("learner")["depends_on"]
    assert depends == {
        "sandbox": {"condition": "service_healthy"},
        "rollout": {"condition": "service_healthy"},
    }
    assert service("rollout")["depends_on"] == {
        "policy": {"condition": "service_completed_successfully"}
    }
    # Health checks ask each server's own gRPC port for its own service.
    for name, port, full in (
        ("sandbox", sandbox.port, "rlfleet.v1.Verifier"),
        ("rollout", rollout.port, "rlfleet.v1.Rollout"),
    ):
        test = service(name)["healthcheck"]["test"]
        assert test[:3] == ["CMD", "/opt/rlfleet/bin/python", "-c"]
        assert test[4:] == [f"127.0.0.1:{port}", full]


def test_compose_health_check_script_tells_serving_from_not() -> None:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    script = service("rollout")["healthcheck"]["test"][3]
    server = grpc.server(ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        check = lambda name: subprocess.run(  # noqa: E731
            [sys.executable, "-c", script, f"127.0.0.1:{port}", name],
            capture_output=True, timeout=60,
        ).returncode  # fmt: skip
        servicer.set("rlfleet.v1.Rollout", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert check("rlfleet.v1.Rollout") != 0
        servicer.set("rlfleet.v1.Rollout", health_pb2.HealthCheckResponse.SERVING)
        assert check("rlfleet.v1.Rollout") == 0
        assert check("rlfleet.v1.Verifier") != 0  # unknown here
    finally:
        server.stop(None)


def test_compose_prometheus_scrapes_every_service_under_its_rules_job(tmp_path: Path) -> None:
    prom = service("prometheus")
    mounts = {
        m.split(":")[1]: COMPOSE.parent / m.split(":")[0]
        for m in prom["volumes"]
        if m.startswith(".")
    }
    (config_arg,) = [a for a in prom["command"] if a.startswith("--config.file=")]
    config_path = mounts[config_arg.split("=", 1)[1]]
    config = yaml.safe_load(config_path.read_text())
    # Every shipped rules file is loaded, from where it is mounted.
    shipped = {p.name for p in PROMETHEUS.glob("*.rules.yml")}
    assert {Path(f).name for f in config["rule_files"]} == shipped
    for f in config["rule_files"]:
        assert mounts[f] == PROMETHEUS / Path(f).name
    # Each job scrapes its service's metrics port, under the name its rules expect.
    parser = build_parser()
    ports = {
        "sandbox": parser.parse_args(service("sandbox")["command"]).metrics_port,
        "rollout": parser.parse_args(service("rollout")["command"]).metrics_port,
        "learner": load_config(None, overrides(service("learner")["command"])).metrics_port,
    }
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs == {
        "rlfleet-verifier": [f"sandbox:{ports['sandbox']}"],
        "rlfleet-rollout": [f"rollout:{ports['rollout']}"],
        "rlfleet-learner": [f"learner:{ports['learner']}"],
    }
    for job in ("rlfleet-rollout", "rlfleet-learner"):
        assert f'job="{job}"' in (PROMETHEUS / f"{job}.rules.yml").read_text()
    # promtool accepts the config, with the rules at their paths in this checkout.
    local = tmp_path / "prometheus.yml"
    local.write_text(
        yaml.safe_dump({**config, "rule_files": [str(mounts[f]) for f in config["rule_files"]]})
    )
    proc = subprocess.run(
        ["promtool", "check", "config", str(local)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_grafana_provisions_every_dashboard() -> None:
    graf = service("grafana")
    mounts = {
        m.split(":")[1]: COMPOSE.parent / m.split(":")[0]
        for m in graf["volumes"]
        if m.startswith(".")
    }
    provisioning = "/etc/grafana/provisioning"
    (datasources,) = [p for t, p in mounts.items() if t.startswith(f"{provisioning}/datasources/")]
    (source,) = yaml.safe_load(datasources.read_text())["datasources"]
    assert source["type"] == "prometheus"
    prom_port = service("prometheus")["ports"][0].rsplit(":", 1)[1]
    assert source["url"] == f"http://prometheus:{prom_port}"
    (providers,) = [p for t, p in mounts.items() if t.startswith(f"{provisioning}/dashboards/")]
    (provider,) = yaml.safe_load(providers.read_text())["providers"]
    folder = mounts[provider["options"]["path"]]
    assert folder == REPO / "deploy" / "grafana"
    assert {p.stem for p in folder.glob("*.json")} >= {
        "rlfleet-verifier",
        "rlfleet-rollout",
        "rlfleet-learner",
    }


def test_docker_compose_accepts_the_file() -> None:
    """Debian's docker-compose (deploy/host/setup.sh installs it) validates the file; it
    needs no Docker engine for that."""
    binary = shutil.which("docker-compose")
    assert binary is not None, "docker-compose is missing: run deploy/host/setup.sh"
    proc = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the image ---------------------------------------------------------------------------------


def dockerfile_cmd() -> list[str]:
    (line,) = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD ")]
    return list(json.loads(line.removeprefix("CMD ")))


def test_dockerfile_runs_rlfleet_train_not_as_root() -> None:
    text = DOCKERFILE.read_text()
    lines = text.splitlines()
    assert 'ENTRYPOINT ["/opt/rlfleet/bin/rlfleet"]' in lines
    assert "ARG BASE=debian:bookworm-slim" in lines  # torch-image.sh passes BASE
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER [1-9]", final, re.M)
    assert "--no-index" in text and "'rlfleet[rollout]'" in text
    # The shipped sets sit in the working directory, as the presets' relative paths expect.
    workdir = re.search(r"^WORKDIR (\S+)", final, re.M)
    assert workdir is not None
    assert f"COPY examples/ {workdir[1]}/examples/" in final
    args = build_parser().parse_args(dockerfile_cmd())
    assert args.command == "train"
    assert Path(args.run_dir).parts[:2] == ("/", "runs")
    # The volumes compose and the manifest mount start out the learner's.
    assert "chown 65532:65532 /models /runs" in final


# --- deploy/k8s/learner.yaml -------------------------------------------------------------------


def manifest() -> dict[str, Any]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


def container() -> dict[str, Any]:
    (c,) = manifest()["Job"]["spec"]["template"]["spec"]["containers"]
    return dict(c)


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` in args, as the kubelet expands it."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in args]


def test_manifest_is_a_torchrun_job_meeting_on_its_headless_service() -> None:
    from torch.distributed.run import get_args_parser

    docs = manifest()
    job, svc = docs["Job"], docs["Service"]
    spec, pod = job["spec"], job["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == svc["metadata"]["name"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    c = container()
    assert c["command"] == ["/opt/rlfleet/bin/torchrun"]
    env = {e["name"]: e for e in c["env"]}
    index = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "batch.kubernetes.io/job-completion-index" in index
    for node in range(spec["completions"]):
        run = get_args_parser().parse_args(expand(c["args"], {"JOB_COMPLETION_INDEX": str(node)}))
        assert int(run.nnodes) == spec["completions"]
        assert run.node_rank == node
        assert int(run.nproc_per_node) == c["resources"]["limits"]["nvidia.com/gpu"]
        # Node 0 (global rank 0) is pod 0, by its name on the headless Service.
        assert run.master_addr == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
        assert run.rdzv_backend == "static"
        assert run.no_python and run.training_script == "/opt/rlfleet/bin/rlfleet"
        args = build_parser().parse_args(run.training_script_args)
        assert args.command == "train"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["rendezvous"] == run.master_port
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(ports)
    # The train command: the fleet's Services, the mounted config and volumes.
    assert args.rollout.startswith("dns:///rlfleet-rollout.")
    assert args.verifier.startswith("dns:///rlfleet-verifier.")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(mounts.values()) <= set(volumes)
    assert mounts[str(Path(args.config).parent)] == "config"
    assert "configMap" in volumes["config"]
    assert Path(args.run_dir).parent.as_posix() in mounts
    config = load_config(PRESET, args.overrides)
    assert config.model is not None and config.model.as_posix() in mounts
    assert config.metrics_host == "0.0.0.0"
    assert ports["metrics"] == config.metrics_port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(config.metrics_port)
    # The rollout servers load the same starting policy.
    rollout = {
        d["kind"]: d for d in yaml.safe_load_all((REPO / "deploy/k8s/rollout.yaml").read_text())
    }
    rollout_pod = rollout["StatefulSet"]["spec"]["template"]["spec"]
    claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
        for v in rollout_pod["volumes"]
    }
    assert (
        volumes[mounts[config.model.as_posix()]]["persistentVolumeClaim"]["claimName"]
        == claims["model"]
    )
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["runAsUser"] == 65532


# --- the GPU preset ----------------------------------------------------------------------------


def test_the_gpu_preset_loads_and_trains_on_the_shipped_code_and_math_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)  # its data paths are relative to the checkout (and the image's workdir)
    config = load_config(PRESET)
    assert isinstance(config, TrainConfig)
    assert config.dist.device == "cuda"
    assert config.model == Path("/models/policy")
    assert config.template == "r1"
    tasks = load_task_list(config)
    assert {t.task_type for t in tasks} == {"code", "math"}
    shipped = sorted((REPO / "examples" / "data").glob("*.jsonl"))
    assert isinstance(config.data.path, tuple)
    assert sorted(REPO / p for p in config.data.path) == shipped
    assert config.rollout.prompts_per_step == len(tasks)
    assert config.optim.total_steps == config.steps
    # (The fleet it names is the one docs/learner.md starts: checked below.)


def doc_commands() -> list[list[str]]:
    """The `rlfleet ...` command lines of docs/learner.md's GPU preset, as argv."""
    text = (REPO / "docs" / "learner.md").read_text()
    block = text[text.index("## A GPU preset") :]
    block = block[block.index("```") + 3 :]
    block = block[: block.index("```")].replace("\\\n", " ")
    lines = [ln.strip().removesuffix("&") for ln in block.splitlines()]
    return [
        shlex.split(ln.replace("$MODEL", "/models/policy"))[1:]
        for ln in lines
        if ln.startswith("rlfleet ")
    ]


def test_the_gpu_preset_commands_in_the_docs_parse() -> None:
    parser = build_parser()
    commands = [parser.parse_args(argv) for argv in doc_commands()]
    sandbox, rollout, train = commands
    assert (sandbox.command, sandbox.service) == ("serve", "sandbox")
    assert (rollout.service, rollout.engine, rollout.sglang_surface) == (
        "rollout",
        "sglang",
        "http",
    )
    assert train.command == "train" and train.config == PRESET.relative_to(REPO)
    config = load_config(PRESET, train.overrides)
    assert config.model == Path(rollout.model)
    assert config.fleet.rollout == f"127.0.0.1:{rollout.port}"
    assert config.fleet.verifier == f"127.0.0.1:{sandbox.port}"
