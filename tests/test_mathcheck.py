"""Math checker: extraction, equivalence by category, hedging, known false positives of
other checkers, bounded time from any thread, and no processes left after close."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import pytest

from rlfleet.sandbox.mathcheck import MathCheckConfig, MathChecker, extract_answer
from rlfleet.sandbox.mathcheck.corpus import PATHOLOGICAL
from rlfleet.sandbox.mathcheck.screen import pathological


@pytest.fixture(scope="module")
def checker() -> Iterator[MathChecker]:
    with MathChecker(MathCheckConfig(workers=2)) as c:
        yield c


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("<think>\\boxed{1}</think><answer>\\boxed{2}</answer>", "2"),
        ("<think>x</think><answer> 7 </answer> and \\boxed{9}", "7"),
        ("first \\boxed{1}\n\nthen \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
        ("\\fbox{5}", "5"),
        ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("work\nFinal Answer: 42.", "42"),
        ("work\nThe final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("Answer: x = 4", "x = 4"),
        ("the answer here is unclear", None),
        ("nothing", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extraction(completion: str, answer: str | None) -> None:
    assert extract_answer(completion).answer == answer


def test_several_boxes_in_the_final_region_are_hedging() -> None:
    assert extract_answer("so \\boxed{2} or \\boxed{3}").hedged
    assert extract_answer("<answer>\\boxed{2}, \\boxed{3}</answer>").hedged
    assert not extract_answer("\\boxed{2} and again \\boxed{2}").hedged
    assert not extract_answer("step \\boxed{7}\n\nso finally \\boxed{3}").hedged


@pytest.mark.parametrize(
    ("answer", "gold", "same"),
    [
        ("42", "42", True),
        ("42", "43", False),
        ("-7", "-7.0", True),
        ("\\frac{3}{4}", "0.75", True),
        ("\\dfrac{6}{8}", "3/4", True),
        ("\\frac34", "0.75", True),
        ("0.333", "\\frac{1}{3}", True),
        ("0.3", "\\frac{1}{3}", False),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("3\\sqrt{3}", "\\sqrt{28}", False),
        ("(x+1)^2", "x^2+2x+1", True),
        ("(x+1)^2", "x^2+2x+2", False),
        ("\\frac{x^2-1}{x-1}", "x+1", True),
        ("\\pi/2", "\\frac{\\pi}{2}", True),
        ("\\sin^2 x + \\cos^2 x", "1", True),
        ("1-\\frac{1}{e}", "1+\\frac{1}{e}", False),  # Math-Verify #82
        ("y = 2x + 1", "2x - y + 1 = 0", True),
        ("y = 2x + 2", "y = 2x + 1", False),  # Math-Verify #60
        ("y = 3x + 1", "y = 2x + 1", False),
        ("(1, 2)", "(1,2)", True),
        ("(2, 1)", "(1,2)", False),
        ("[1, 2)", "[1,2)", True),
        ("(1, 2]", "[1,2]", False),
        ("(-\\infty, 3]", "(-\\infty,3]", True),
        ("\\{3, 1, 2\\}", "\\{1,2,3\\}", True),
        ("\\{1, 2\\}", "\\{1,2,3\\}", False),
        ("1, 2", "2, 1", True),
        ("50\\%", "50\\%", True),
        ("50\\%", "0.5", True),
        ("50\\%", "50", True),
        ("5\\text{ cm}", "5", True),
        ("12 meters", "12", True),
        ("90^\\circ", "90", True),
        ("1,000", "1000", True),
        ("x = 3", "3", True),
        ("x", "y", False),
    ],
)
def test_equivalence(checker: MathChecker, answer: str, gold: str, same: bool) -> None:
    r = checker.check(f"so \\boxed{{{answer}}}", gold)
    assert r.correct is same, r
    assert r.extracted == answer


@pytest.mark.parametrize("answer", ["2 or 3", "either 2 or 3", "2 \\text{ or } 3", "2, 3"])
def test_hedged_candidates_earn_nothing(checker: MathChecker, answer: str) -> None:
    assert not checker.check(f"\\boxed{{{answer}}}", "3").correct


def test_no_answer(checker: MathChecker) -> None:
    r = checker.check("I am not sure.", "3")
    assert (r.correct, r.reason, r.extracted) == (False, "no_answer", None)


@pytest.mark.parametrize("text", PATHOLOGICAL)
def test_pathological_answers_are_refused_quickly(checker: MathChecker, text: str) -> None:
    assert pathological(text)
    r = checker.check(f"\\boxed{{{text}}}", "5")
    assert (r.correct, r.reason) == (False, "rejected")
    assert checker.check("\\boxed{2\\sqrt{2}}", "\\sqrt{8}").correct  # the pool still works


def test_timeout_kills_and_replaces_the_worker() -> None:
    with MathChecker(MathCheckConfig(workers=1, timeout_s=0.001)) as c:
        before = set(c.worker_pids)
        r = c.check("\\boxed{(x+1)^3}", "x^3+3x^2+3x+1")
        assert (r.correct, r.reason) == (False, "timeout")
    with MathChecker(MathCheckConfig(workers=1, timeout_s=5)) as c:
        assert c.check("\\boxed{(x+1)^3}", "x^3+3x^2+3x+1").correct
    assert before


def test_checks_from_threads_and_asyncio(checker: MathChecker) -> None:
    results: list[bool] = []

    def worker() -> None:
        results.append(checker.check("\\boxed{\\sqrt{12}}", "2\\sqrt{3}").correct)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 4

    async def many() -> list[bool]:
        rs = await asyncio.gather(
            *(checker.check_async(f"\\boxed{{{i}/2}}", str(i / 2)) for i in range(10))
        )
        return [r.correct for r in rs]

    assert asyncio.run(many()) == [True] * 10


def test_close_leaves_no_processes() -> None:
    c = MathChecker(MathCheckConfig(workers=2))
    pids = c.worker_pids
    assert len(pids) == 2
    c.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
