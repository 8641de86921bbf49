"""Math checker: extraction, equivalence by category, hedging, known false positives of
math-verify, pathological inputs, bounded time from any thread, no processes left after close."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from rlfleet.sandbox.mathcheck import MathCheckConfig, MathChecker, MathResult, extract_answer
from rlfleet.sandbox.mathcheck.corpus import PATHOLOGICAL, build
from rlfleet.sandbox.mathcheck.extract import extract
from rlfleet.sandbox.mathcheck.screen import pathological


@pytest.fixture(scope="module")
def checker() -> Iterator[MathChecker]:
    with MathChecker(MathCheckConfig(processes=2)) as c:
        yield c


def _children() -> set[int]:
    """Live child processes of this test process (Linux /proc), zombies included."""
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            found.update(int(pid) for pid in f.read().split())
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _all_gone(pids: set[int], within_s: float = 10.0) -> bool:
    """Whether every process has ended and been reaped: a child killed for overrunning
    ends in a thread, after the check has returned."""
    deadline = time.monotonic() + within_s
    while not all(_gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- extraction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("<think>\\boxed{1}</think><answer>\\boxed{2}</answer>", "2"),
        ("<think>x</think><answer> 7 </answer> and \\boxed{9}", "7"),
        ("<answer>$\\frac{1}{2}$</answer>", "\\frac{1}{2}"),
        ("first \\boxed{1}\n\nthen \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
        ("\\fbox{5}", "5"),
        ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("\\boxed{a \\\\ b}", "a \\\\ b"),
        ("work\nFinal Answer: 42.", "42"),
        ("work\n**Final Answer:** 42", "42"),
        ("work\nThe final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("work\nThe answer is: 12", "12"),
        ("Final Answer: The final answer is $7$. I hope it is correct.", "7"),
        ("Answer: x = 4", "x = 4"),
        ("The answer is 3.\nBut let me double check this.", None),
        ("the answer here is unclear", None),
        ("nothing", None),
        ("\\boxed{unclosed", None),
        ("\\boxed{}", None),
        ("", None),
    ],
)
def test_extraction(completion: str, answer: str | None) -> None:
    assert extract_answer(completion) == answer


def test_extraction_is_linear_on_hostile_completions() -> None:
    assert extract_answer("\\boxed{" * 20_000) is None
    assert extract_answer("x" * 200_000 + "\\boxed{3}") == "3"
    assert extract_answer("<answer>" * 100_000) is None
    assert extract_answer("<answer>1</answer>" * 10_000) == "1"
    assert extract_answer("Answer: " * 100_000) is None


def test_several_different_boxes_in_the_final_region_are_hedging() -> None:
    assert extract("so \\boxed{2} or \\boxed{3}").hedged
    assert extract("<answer>\\boxed{2}, \\boxed{3}</answer>").hedged
    assert not extract("\\boxed{2} and again \\boxed{ 2 }").hedged
    assert not extract("step \\boxed{7}\n\nso finally \\boxed{3}").hedged


# --- equivalence, by category (true and false pairs) --------------------------------------

EQUIVALENCE = [
    # integers and decimals
    ("42", "42", True),
    ("42", "43", False),
    ("-7", "-7.0", True),
    ("0.50", "0.5", True),
    ("2.5", "2.05", False),
    ("1e-3", "0.001", True),
    # fractions
    ("\\frac{3}{4}", "0.75", True),
    ("\\dfrac{6}{8}", "3/4", True),
    ("\\tfrac{3}{4}", "\\frac{3}{4}", True),
    ("\\frac34", "0.75", True),
    ("\\frac{4}{3}", "\\frac{3}{4}", False),
    ("2\\frac{1}{4}", "\\frac{9}{4}", True),  # a mixed number
    ("2\\frac{1}{4}", "\\frac{1}{2}", False),
    # approximations: >= 6 decimals, correct to the last one, of a non-terminating value
    ("0.333333", "\\frac{1}{3}", True),
    ("0.3333333", "\\frac{1}{3}", True),
    ("0.333", "\\frac{1}{3}", False),
    ("0.333334", "\\frac{1}{3}", False),
    ("\\frac{2}{3}", "0.666667", True),
    ("0.312500", "\\frac{5}{16}", True),
    ("0.312499", "\\frac{5}{16}", False),  # 5/16 terminates: it must be exact
    ("1.41421356", "\\sqrt{2}", True),
    ("1.414", "\\sqrt{2}", False),
    ("\\pi", "3.141593", True),
    ("\\pi", "3.14", False),
    # radicals and LaTeX forms
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("3\\sqrt{3}", "\\sqrt{28}", False),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\sqrt[3]{8}", "2", True),
    ("sqrt(8)", "2\\sqrt{2}", True),
    ("\\pi/2", "\\frac{\\pi}{2}", True),
    ("3.14", "\\pi", False),
    # symbolic expressions
    ("(x+1)^2", "x^2+2x+1", True),
    ("(x+1)^2", "x^2+2x+2", False),
    ("\\frac{x^2-1}{x-1}", "x+1", True),
    ("\\sin^2 x + \\cos^2 x", "1", True),
    ("a+b", "b+a", True),
    ("2xy", "2yx", True),
    ("0.5x", "\\frac{x}{2}", True),
    ("x^2", "x^3", False),
    ("|x|", "x", False),  # equal for x > 0 only: sampled at negative points too
    ("\\sqrt{x^2}", "|x|", True),
    ("\\tan x", "\\frac{\\sin x}{\\cos x}", True),
    ("x+10^{-12}", "x", False),
    ("1+10^{-12}", "1", False),
    ("\\log_2 8", "3", True),
    ("e^{i\\pi}", "-1", True),  # a free i is the imaginary unit
    ("3+2i", "2i+3", True),
    ("3-2i", "3+2i", False),
    ("\\sum_{i=1}^{3} i", "6", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    ("2π", "2\\pi", True),
    ("\\binom{5}{2}", "10", True),
    # the known math-verify false positives
    ("1+\\frac{1}{e}", "1-\\frac{1}{e}", False),  # Math-Verify #82 (and #14)
    ("1 + \\frac{1}{\\mathrm{e}}", "1 - \\frac{1}{\\mathrm{e}}", False),
    ("1-e^{-1}", "1-\\frac{1}{e}", True),
    ("\\frac{1}{2^{98}}", "\\frac{1}{2^{99}}", False),  # tiny values are not "close enough"
    ("\\frac{1}{2006!}", "\\frac{1}{2004!}", False),
    # equations: the same relation, never two different lines (Math-Verify #60)
    ("y = 2x + 1", "2x - y + 1 = 0", True),
    ("2y = 4x + 2", "y = 2x + 1", True),
    ("y = 2x + 2", "y = 2x + 1", False),
    ("y = 3x + 1", "y = 2x + 1", False),
    ("3x + 4y + 14 = 0", "3x - y + 13 = 0", False),
    ("x > 3", "3 < x", True),
    ("x \\geq 3", "x > 3", False),
    # x = 3 against 3
    ("x = 3", "3", True),
    ("x = 4", "3", False),
    ("f(x) = 2x+1", "2x+1", True),
    # tuples, sets, intervals (open and closed ends matter)
    ("(1, 2)", "(1,2)", True),
    ("(2, 1)", "(1,2)", False),
    ("(1, 2, 3)", "(1,2)", False),
    ("\\left(\\frac{1}{2}, \\sqrt{2}\\right)", "(0.5,\\sqrt{2})", True),
    ("[1, 2)", "[1,2)", True),
    ("(1, 2]", "[1,2]", False),
    ("(1, 2)", "(1, 2]", False),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(-\\infty, 3)", "(-\\infty,3]", False),
    ("(-\\infty, 0) \\cup (1, \\infty)", "(1,\\infty)\\cup(-\\infty,0)", True),
    ("(-\\infty, 0] \\cup (1, \\infty)", "(-\\infty,0)\\cup(1,\\infty)", False),
    ("\\{3, 1, 2\\}", "\\{1,2,3\\}", True),
    ("\\{1, 2\\}", "\\{1,2,3\\}", False),
    ("x \\geq 3", "[3, \\infty)", True),  # an inequality describes an interval
    ("x > 3", "[3, \\infty)", False),
    ("x \\in [-2, 7]", "[-2,7]", True),
    ("x", "(1,2)", False),
    ("1, 2", "2, 1", True),
    ("1, 2, and 3", "3, 2, 1", True),
    ("1 \\text{ and } 2", "1, 2", True),
    ("a=2, b=3", "(2,3)", True),  # named values in order are the tuple
    ("a=3, b=2", "(2,3)", False),
    # units
    ("5\\text{ cm}", "5", True),
    ("5 \\text{ meters}", "5", True),
    ("12 meters", "12", True),
    ("12 meters", "13", False),
    ("2 pi", "2", False),  # a word of mathematics is not a unit
    ("2 and 3", "2", False),
    ("5 \\text{m}", "5", True),
    ("3 \\text{ km/h}", "3", True),
    ("12 \\text{ percent}", "12\\%", True),
    ("90^\\circ", "90", True),
    ("\\$5", "5", True),
    # percentages: p% == p == p/100
    ("50\\%", "50\\%", True),
    ("50\\%", "0.5", True),
    ("50\\%", "50", True),
    ("0.5", "50\\%", True),
    ("50", "50\\%", True),
    ("51\\%", "0.5", False),
    ("5", "50\\%", False),
    # thousands separators
    ("1,000", "1000", True),
    ("1{,}000{,}000", "1000000", True),
    ("1,001", "1000", False),
    ("11,\\! 111", "11111", True),
    # multiple choice
    ("\\text{(B)}", "B", True),
    ("(C)", "B", False),
]


@pytest.mark.parametrize(("answer", "gold", "same"), EQUIVALENCE)
def test_equivalence(checker: MathChecker, answer: str, gold: str, same: bool) -> None:
    r = checker.check(f"so \\boxed{{{answer}}}", gold)
    assert r.correct is same, r
    assert r.extracted == answer
    assert r.reason == ("match" if same else "mismatch"), r


# --- hedging ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion",
    [
        "\\boxed{2 or 3}",
        "\\boxed{either 2 or 3}",
        "\\boxed{2 \\text{ or } 3}",
        "\\boxed{2, 3}",
        "\\boxed{\\{2, 3\\}}",
        "\\boxed{x = 2 \\text{ or } x = 3}",
        "So it is \\boxed{2} or maybe \\boxed{3}",
        "<answer>\\boxed{3} \\boxed{2}</answer>",
        "work\nFinal Answer: 2 or 3",
    ],
)
def test_hedged_candidates_earn_nothing(checker: MathChecker, completion: str) -> None:
    r = checker.check(completion, "3")
    assert (r.correct, r.reason) == (False, "hedged"), r


def test_repeated_boxes_of_the_same_value_are_fine(checker: MathChecker) -> None:
    assert checker.check("\\boxed{3}, so again: \\boxed{3}", "3").correct
    assert checker.check("\\boxed{0.5}, that is \\boxed{\\frac{1}{2}}", "1/2").correct


def test_a_gold_with_alternatives_compares_as_a_set(checker: MathChecker) -> None:
    assert checker.check("\\boxed{x = 3 \\text{ or } x = 2}", "x=2 \\text{ or } x=3").correct
    assert not checker.check("\\boxed{x = 3 \\text{ or } x = 1}", "x=2 \\text{ or } x=3").correct


def test_a_boxed_gold_is_unboxed(checker: MathChecker) -> None:
    assert checker.check("so \\boxed{\\frac{1}{2}}", "$\\boxed{0.5}$").correct


def test_no_answer(checker: MathChecker) -> None:
    r = checker.check("I am not sure.", "3")
    assert r == MathResult(correct=False, extracted=None, reason="no_answer")


def test_unparseable_answers_are_parse_errors(checker: MathChecker) -> None:
    r = checker.check("\\boxed{\\frac{}{}}", "x+1")
    assert (r.correct, r.reason) == (False, "parse_error"), r


# --- pathological inputs and time bounds ------------------------------------------------


@pytest.mark.parametrize("text", PATHOLOGICAL)
def test_pathological_answers_are_refused_before_algebra(checker: MathChecker, text: str) -> None:
    assert pathological(text)
    r = checker.check(f"\\boxed{{{text}}}", "x+1")
    assert (r.correct, r.reason) == (False, "rejected"), r
    assert checker.check("\\boxed{2\\sqrt{2}}", "\\sqrt{8}").correct  # the pool still works


@pytest.mark.parametrize("text", ["(2n)!", "2004!", "x^2y^2", "\\frac{1}{2^{99}}", "e^{-100}"])
def test_the_screen_lets_ordinary_answers_through(text: str) -> None:
    assert pathological(text) is None


# Needs latex2sympy (\\cosh: not the fast parser's) and sympy's simplify: tens of
# milliseconds, far over a 1 ms budget.
SLOW = ("\\boxed{\\cosh^2 x - \\sinh^2 x}", "1")


def test_timeout_kills_and_replaces_the_worker() -> None:
    with MathChecker(MathCheckConfig(processes=1, timeout_s=0.001)) as c:
        before = set(c.process_pids)
        r = c.check(*SLOW)
        assert (r.correct, r.reason) == (False, "timeout")
        assert _all_gone(before)
        assert c.check("\\boxed{7}", "7").correct  # fast paths need no worker
    with MathChecker(MathCheckConfig(processes=1, timeout_s=5)) as c:
        assert c.check(*SLOW).correct


def test_a_standby_takes_the_place_of_a_killed_worker() -> None:
    with MathChecker(MathCheckConfig(processes=1, timeout_s=0.001)) as c:
        deadline = time.monotonic() + 60
        while not c.standby_pids and time.monotonic() < deadline:
            time.sleep(0.05)  # the standby starts in the background
        (standby,) = c.standby_pids
        (worker,) = c.process_pids
        assert standby != worker
        assert c.check(*SLOW).reason == "timeout"
        # At once, not after a start: the standby does the checks now.
        assert c.process_pids == [standby]
        assert _all_gone({worker})
        while not c.standby_pids and time.monotonic() < deadline:
            time.sleep(0.05)  # and a new standby starts
        assert c.standby_pids and c.standby_pids != [standby]


def _hold(pid: int, seconds: float) -> threading.Thread:
    """Stop a process for ``seconds`` (a host so loaded it gets no CPU), then let it go."""

    def hold() -> None:
        time.sleep(seconds)
        with contextlib.suppress(ProcessLookupError):  # killed for overrunning: gone
            os.kill(pid, signal.SIGCONT)

    os.kill(pid, signal.SIGSTOP)
    thread = threading.Thread(target=hold)
    thread.start()
    return thread


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_the_budget_is_cpu_time_a_starved_process_is_not_timed_out() -> None:
    # 0.5 s of CPU: the check needs far less, but waits 1.5 s of wall time for the CPU.
    with MathChecker(MathCheckConfig(processes=1, timeout_s=0.5, wall_limit_s=10)) as c:
        (pid,) = c.process_pids
        held = _hold(pid, 1.5)
        start = time.monotonic()
        r = c.check("\\boxed{\\frac{d}{dx} x^2}", "2x")
        held.join()
        assert (r.correct, r.reason) == (True, "match")
        assert time.monotonic() - start >= 1.4
        assert c.process_pids == [pid]  # not killed


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_the_wall_limit_caps_a_process_that_gets_no_cpu() -> None:
    with MathChecker(MathCheckConfig(processes=1, timeout_s=0.5, wall_limit_s=0.8)) as c:
        (pid,) = c.process_pids
        held = _hold(pid, 3)
        start = time.monotonic()
        r = c.check("\\boxed{\\frac{d}{dx} x^2}", "2x")
        assert (r.correct, r.reason) == (False, "timeout")
        assert 0.7 < time.monotonic() - start < 2.5
        held.join()
        assert _all_gone({pid})


def test_the_wall_limit_is_no_less_than_the_cpu_budget() -> None:
    with pytest.raises(ValueError, match="wall_limit_s"):
        MathCheckConfig(timeout_s=3, wall_limit_s=2)


def test_a_slow_check_does_not_block_the_pool() -> None:
    # Whatever the screen lets through is still bounded by the deadline; afterwards the
    # replacement worker answers.
    with MathChecker(MathCheckConfig(processes=1, timeout_s=0.5)) as c:
        r = c.check("\\boxed{\\sum_{k=1}^{9999} k^{k}}", "x")
        assert r.reason in ("timeout", "mismatch", "rejected")
        assert c.check("\\boxed{\\sqrt{12}}", "2\\sqrt{3}").correct


# --- threads, asyncio, lifecycle -------------------------------------------------------


def test_checks_from_other_threads(checker: MathChecker) -> None:
    results: list[bool] = []

    def work() -> None:
        results.append(checker.check("\\boxed{\\sqrt{12}}", "2\\sqrt{3}").correct)
        results.append(checker.check("\\boxed{1+\\frac{1}{e}}", "1-\\frac{1}{e}").correct)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [False] * 4 + [True] * 4


async def test_checks_from_asyncio(checker: MathChecker) -> None:
    results = await asyncio.gather(
        *(checker.check_async(f"\\boxed{{\\frac{{{i}}}{{2}}}}", str(i / 2)) for i in range(10)),
        checker.check_async("\\boxed{(x+1)^2}", "x^2+2x+1"),
        checker.check_async("\\boxed{(x+1)^2}", "x^2+2x+2"),
        checker.check_async("\\boxed{2 or 3}", "2"),
    )
    assert [r.correct for r in results] == [True] * 11 + [False, False]
    assert results[-1].reason == "hedged"


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_close_leaves_no_processes() -> None:
    before = _children()
    c = MathChecker(MathCheckConfig(processes=2, timeout_s=0.001))
    pids = c.process_pids
    assert len(pids) == 2
    assert set(pids) <= _children()
    assert c.check(*SLOW).reason == "timeout"  # a replacement is starting
    c.close()
    assert c.process_pids == []
    assert _all_gone(set(pids))  # the one killed for overrunning ends in a thread
    assert _children() <= before
    with pytest.raises(RuntimeError):
        c.check("\\boxed{x^2}", "x^3")


def test_a_dropped_checker_stops_its_workers() -> None:
    c = MathChecker(MathCheckConfig(processes=1))
    pids = c.process_pids
    del c
    gc.collect()
    assert all(_gone(pid) for pid in pids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_checker_refuses_to_cross_a_fork(checker: MathChecker) -> None:
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the inherited checker refuses to work
        try:
            checker.check("\\boxed{x^2}", "x^3")
        except RuntimeError:
            os._exit(0)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert checker.check("\\boxed{x^2}", "x^2").correct


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        MathCheckConfig(processes=0)
    with pytest.raises(ValueError):
        MathCheckConfig(timeout_s=0)


# --- the benchmark corpus --------------------------------------------------------------


def test_corpus_is_deterministic_and_labelled() -> None:
    pairs = build()
    assert len(pairs) >= 1000
    assert pairs == build()
    assert {p.kind for p in pairs if p.mv_known_wrong}
    assert any(p.expected for p in pairs) and any(not p.expected for p in pairs)


@pytest.mark.slow
def test_checker_agrees_with_the_corpus_labels(checker: MathChecker) -> None:
    wrong = [
        p for p in build(n_per_kind=5) if checker.check(p.completion, p.gold).correct != p.expected
    ]
    assert wrong == []
