"""Deployment files stay in step with the CLI they start."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
from pathlib import Path

from harness import dashboard_exprs

from rlfleet.cli import build_parser

REPO = Path(__file__).resolve().parent.parent


def test_systemd_unit_starts_a_valid_command_with_delegation() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "deploy" / "systemd" / "rlfleet-sandbox.service")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "rlfleet"
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on an unknown flag
    assert (args.command, args.backend, args.metrics_port) == ("serve", "local", 9400)
    assert service["Delegate"] == "yes"  # the local backend's cgroups go under the unit's
    assert service["KillSignal"] == "SIGTERM"  # the server drains on SIGTERM


PROMETHEUS = REPO / "deploy" / "prometheus"


def exported_series() -> set[str]:
    """Every series name the verifier's services export."""
    from prometheus_client import CollectorRegistry

    from rlfleet.sandbox.engine import EngineMetrics
    from rlfleet.sandbox.servicer import ServiceMetrics

    registry = CollectorRegistry()
    EngineMetrics(registry)
    ServiceMetrics(registry)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {m.name + s for m in registry.collect() for s in suffixes[m.type]}


def recorded_names() -> set[str]:
    text = (PROMETHEUS / "rlfleet-verifier.rules.yml").read_text()
    return set(re.findall(r"record: (\S+)", text))


def test_prometheus_rules_pass_promtool_checks_and_unit_tests() -> None:
    for args in (
        ["check", "rules", "rlfleet-verifier.rules.yml"],
        ["test", "rules", "rlfleet-verifier.rules.test.yml"],
    ):
        proc = subprocess.run(
            ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_and_dashboard_use_only_exported_or_recorded_series() -> None:
    known = exported_series() | recorded_names()
    rules = (PROMETHEUS / "rlfleet-verifier.rules.yml").read_text()
    used = set(re.findall(r"\brlfleet[:_][a-z0-9_:]+", rules + "\n".join(dashboard_exprs())))
    assert used, "no rlfleet series referenced"
    assert used - known == set()
    shown = set(re.findall(r"\brlfleet:[a-z0-9_:]+", "\n".join(dashboard_exprs())))
    assert recorded_names() <= shown  # every recording rule is on the dashboard
