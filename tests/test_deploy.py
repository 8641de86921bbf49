"""Deployment files stay in step with the CLI they start."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

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
