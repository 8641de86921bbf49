"""How math answers are found, chosen per case and as a default: the case field, its gRPC
form and the `--math-extraction` flag of `rlfleet verify` / `rlfleet serve sandbox`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlfleet.sandbox.cases import CaseError, parse_case
from rlfleet.sandbox.convert import case_to_request, request_to_case
from rlfleet.sandbox.records import MathCase

PROSE = "So the total is 42 apples."  # no answer format: only prose extraction finds 42


def math(**kw: object) -> dict[str, object]:
    return {"id": "m", "kind": "math", "completion": PROSE, "gold": "42", **kw}


def test_a_case_may_say_how_its_answer_is_found() -> None:
    assert parse_case(math()) == MathCase(id="m", completion=PROSE, gold="42")
    assert parse_case(math(extraction="prose")).extraction == "prose"  # type: ignore[union-attr]
    with pytest.raises(CaseError, match=r"^extraction: unknown 'loose' \(one of strict, prose\)"):
        parse_case(math(extraction="loose"))
    with pytest.raises(CaseError, match=r"^extraction: unknown 3 "):
        parse_case(math(extraction=3))


def test_the_extraction_crosses_grpc() -> None:
    for case in (
        MathCase(id="m", completion=PROSE, gold="42"),
        MathCase(id="m", completion=PROSE, gold="42", extraction="prose"),
        MathCase(id="m", completion=PROSE, gold="42", extraction="strict"),
    ):
        assert request_to_case(case_to_request(case), problems=None) == case


def verdicts(tmp_path: Path, cases: list[dict[str, object]], *flags: str) -> list[str]:
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    proc = subprocess.run(
        [sys.executable, "-m", "rlfleet.cli", "verify", str(path), "--workers", "1", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["verdict"] for line in proc.stdout.splitlines()]


def test_the_default_is_strict_and_the_flag_or_the_case_changes_it(tmp_path: Path) -> None:
    cases = [math(id="default"), math(id="prose", extraction="prose"), math(id="strict")]
    cases[2]["extraction"] = "strict"
    assert verdicts(tmp_path, cases) == ["WA", "AC", "WA"]
    assert verdicts(tmp_path, cases, "--math-extraction", "prose") == ["AC", "AC", "WA"]
