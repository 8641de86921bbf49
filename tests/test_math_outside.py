"""The math checker against the outside corpus: pairs from other projects' graders and
evaluation outputs (tests/data/math_outside.md), not written alongside the checker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlfleet.sandbox.mathcheck import MathCheckConfig, MathChecker
from rlfleet.sandbox.mathcheck.corpus import load_outside

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "math_outside.jsonl"

MIN_AGREEMENT = 0.98
"""Agreement with the labels below which the checker has regressed (the issue's bar; it was
5549/5597 on a heavily loaded machine, where most misses are algebra timeouts)."""


@pytest.fixture(scope="module")
def checker() -> Iterator[MathChecker]:
    with MathChecker(MathCheckConfig(processes=2)) as c:
        yield c


def test_every_pair_is_sourced_and_hand_labels_say_why() -> None:
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    readme = (DATA / "math_outside.md").read_text(encoding="utf-8")
    assert len(rows) >= 5000
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert f"`{r['source']}`" in readme, r["id"]  # every source has its provenance
        assert r["label_by"] in ("source", "hand"), r["id"]
        assert r["label_by"] == "source" or r.get("note"), r["id"]
    assert {r["label"] for r in rows} == {True, False}


def test_a_malformed_line_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completion": "x", "gold": "1", "label": "yes", "source": "s"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: label"):
        load_outside(bad)
    bad.write_text('{"gold": "1"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not a pair"):
        load_outside(bad)


@pytest.mark.slow
def test_no_false_positive_and_agreement_on_the_outside_corpus(checker: MathChecker) -> None:
    pairs = load_outside(CORPUS)
    verdicts = [checker.check(p.completion, p.gold).correct for p in pairs]
    false_positives = [
        (p.kind, p.gold, p.completion[-80:])
        for p, v in zip(pairs, verdicts, strict=True)
        if v and not p.expected
    ]
    assert false_positives == []
    agreement = sum(v == p.expected for p, v in zip(pairs, verdicts, strict=True)) / len(pairs)
    assert agreement >= MIN_AGREEMENT


def test_bench_math_prints_both_checkers_and_each_source(tmp_path: Path) -> None:
    # Two sources; one pair of each labelled wrongly on purpose, so the figures must move.
    rows = [
        ("a", "\\boxed{4}", "4", True),
        ("a", "\\boxed{5}", "4", False),
        ("a", "\\boxed{5}", "4", True),  # mislabelled: a false negative for both checkers
        ("a", "\\boxed{(x+1)^2}", "x^2+2x+1", True),  # algebra: the slowest check
        ("b", "The answer is $\\frac{1}{2}$.", "0.5", True),
        ("b", "\\boxed{7}", "7", False),  # mislabelled: a false positive for both checkers
    ]
    corpus = tmp_path / "pairs.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"completion": c, "gold": g, "label": label, "source": s}) + "\n"
            for s, c, g, label in rows
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "rlfleet.cli", "bench", "math", "--corpus", str(corpus)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"# math: 6 labelled pairs of {corpus}"
    table = {line.split()[0]: line.split() for line in lines[2:4]}
    for checker in ("ours", "math-verify"):
        # agreement 4 of 6, one false positive, one false negative, then speed and worst case
        assert table[checker][1:4] == ["66.67%", "1", "1"], run.stdout
        assert float(table[checker][4]) > 0 and float(table[checker][5]) > 0
    ratio = [line for line in lines if line.startswith("throughput ratio")]
    assert len(ratio) == 1 and float(ratio[0].rsplit(" ", 1)[1]) > 0
    by_source = {line.split()[0]: line for line in lines[lines.index(ratio[0]) + 3 :]}
    assert set(by_source) == {"a", "b"}
    assert by_source["a"].split()[1:3] == ["4", "75.00%"]
    assert by_source["b"].split()[1:5] == ["2", "50.00%", "(", "1)"]
