"""The reward contract: components by hand, weights, and unscored completions never 0."""

from __future__ import annotations

import math

import pytest

from rlfleet.learner.rewards import (
    Reward,
    RewardConfig,
    RewardFunction,
    RewardInput,
    hard_overlong,
    language_share,
    reward_input,
    soft_overlong,
    words,
)
from rlfleet.learner.templates import get_template, r1_format_ok, r1_reasoning
from rlfleet.rollout.records import Completion, FinishReason
from rlfleet.sandbox.records import CaseResult, Verdict

R1 = get_template("r1")
GOOD = "<think>2 and 2 make 4</think> <answer>4</answer>"


def result(verdict: Verdict, passed: int = 0, total: int = 1, message: str = "") -> CaseResult:
    return CaseResult(
        id="c", verdict=verdict, passed=passed, total=total, reward=0.0, message=message
    )


def inp(
    text: str = GOOD,
    res: CaseResult | None = None,
    task_type: str = "math",
    tokens: int = 10,
    max_tokens: int = 100,
    truncated: bool = False,
    reason: str = "",
) -> RewardInput:
    assert task_type in ("math", "code")
    return RewardInput(
        text=text,
        tokens=tokens,
        max_tokens=max_tokens,
        truncated=truncated,
        task_type="math" if task_type == "math" else "code",
        result=res,
        unscored_reason=reason,
    )


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (GOOD, True),
        ("<think></think><answer>4</answer>", True),  # the reasoning may be empty
        ("  <think>a</think>\n\n<answer>\n4\n</answer>\n", True),  # whitespace around
        ("<think>a</think><answer>  </answer>", False),  # a blank answer
        ("<think>a</think>", False),
        ("<answer>4</answer>", False),
        ("<answer>4</answer><think>a</think>", False),  # order
        ("so <think>a</think><answer>4</answer>", False),  # text before
        ("<think>a</think><answer>4</answer> done", False),  # text after
        ("<think>a</think> x <answer>4</answer>", False),  # text between
        ("<think>a<think>b</think><answer>4</answer>", False),  # a tag twice
        ("<think>a</think><answer>4</answer></answer>", False),
        ("<think>a</think><answer>4 <answer>5</answer>", False),
    ],
)
def test_r1_format_rule(text: str, ok: bool) -> None:
    assert r1_format_ok(text) is ok
    assert R1.format_ok(text) is ok


def test_r1_reasoning_is_the_think_part() -> None:
    assert r1_reasoning(GOOD) == "2 and 2 make 4"
    assert r1_reasoning("no tags") == "no tags"


def test_plain_template_format_is_one_integer() -> None:
    plain = get_template("plain")
    assert [plain.format_ok(t) for t in ("7", " 7\n", "-12", "7 8", "x", "", "7.0")] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="template: unknown 'chatml'"):
        get_template("chatml")


def test_words_and_language_share() -> None:
    assert words("Hello, world 42 foo_bar") == ["Hello", "world", "foo", "bar"]
    assert language_share("the answer is 4", ("LATIN",)) == 1.0
    # 3 words: two Latin, one a run of CJK ideographs -> 2/3
    assert language_share("so 答案是 four", ("LATIN",)) == pytest.approx(2 / 3)
    assert language_share("答案是 four", ("CJK",)) == pytest.approx(1 / 2)
    # A word mixing scripts is not in the target (a Cyrillic a, U+0430, inside a Latin word).
    assert language_share("p\u0430ss", ("LATIN",)) == 0.0
    assert language_share("4 + 4 = 8", ("LATIN",)) == 1.0  # no words: nothing inconsistent
    assert language_share("Ελληνικά", ("GREEK",)) == 1.0


def test_soft_overlong_by_hand() -> None:
    # L_max 100, L_cache 20: free up to 80, then linear to -1 at 100.
    assert soft_overlong(80, 100, 20, False) == 0.0
    assert soft_overlong(90, 100, 20, False) == pytest.approx(-0.5)
    assert soft_overlong(100, 100, 20, True) == pytest.approx(-1.0)
    assert soft_overlong(101, 100, 20, True) == -1.0
    assert hard_overlong(100, 100, 20, True) == -1.0
    assert hard_overlong(99, 100, 20, False) == 0.0


def test_weighted_total_by_hand() -> None:
    config = RewardConfig(accuracy=1.0, format=0.5, language=0.25, overlong=2.0, overlong_buffer=20)
    reward = RewardFunction(config, R1)(inp(res=result(Verdict.AC, 1), tokens=90))
    # accuracy 1, format 1, language 1 ("2 and 2 make 4": all Latin), overlong -0.5
    assert reward.total == pytest.approx(1.0 + 0.5 + 0.25 - 1.0)
    assert [(c.name, c.value, c.weight) for c in reward.components] == [
        ("accuracy", 1.0, 1.0),
        ("format", 1.0, 0.5),
        ("language", 1.0, 0.25),
        ("overlong", -0.5, 2.0),
    ]
    assert reward.scored and reward.value("overlong") == -0.5


def test_default_overlong_buffer_is_a_quarter_of_the_limit() -> None:
    config = RewardConfig(overlong=1.0)
    reward = RewardFunction(config, R1)(inp(res=result(Verdict.WA), tokens=90, max_tokens=100))
    assert reward.value("overlong") == pytest.approx((75 - 90) / 25)


def test_code_accuracy_all_pass_or_pass_rate() -> None:
    partial = result(Verdict.WA, passed=3, total=4)
    full = result(Verdict.AC, passed=4, total=4)
    all_pass = RewardFunction(RewardConfig(code_accuracy="all_pass"), R1)
    rate = RewardFunction(RewardConfig(code_accuracy="pass_rate"), R1)
    assert all_pass(inp(res=partial, task_type="code")).total == 0.0
    assert all_pass(inp(res=full, task_type="code")).total == 1.0
    assert rate(inp(res=partial, task_type="code")).total == pytest.approx(0.75)
    assert rate(inp(res=result(Verdict.CE, 0, 0), task_type="code")).total == 0.0
    with pytest.raises(ValueError, match="code_accuracy: unknown"):
        RewardConfig(code_accuracy="most")  # type: ignore[arg-type]


def test_math_accuracy_is_the_verdict() -> None:
    fn = RewardFunction(RewardConfig(), R1)
    assert fn(inp(res=result(Verdict.AC, 1))).total == 1.0
    assert fn(inp(res=result(Verdict.WA))).total == 0.0


def test_unscored_is_none_never_zero() -> None:
    fn = RewardFunction(RewardConfig(format=1.0), R1)
    down = fn(inp(res=None, reason="verifier unavailable: no server"))
    assert down.total is None and not down.scored
    assert down.unscored_reason == "verifier unavailable: no server"
    assert down.value("accuracy") is None and down.value("format") == 1.0  # still measured
    system = fn(inp(res=result(Verdict.SE, message="worker lost")))
    assert system.total is None
    assert system.unscored_reason == "verifier system error: worker lost"
    assert fn(inp(res=None)).unscored_reason == "no result"


def test_reward_input_from_a_rollout_completion() -> None:
    completion = Completion(
        prompt_id="p",
        sample=0,
        prompt_token_ids=(1, 2),
        token_ids=(3, 4, 5),
        logprobs=(-0.1, -0.2, -0.3),
        finish_reason=FinishReason.LENGTH,
        versions=(),
        text="abc",
        seed=0,
        result=None,
        unscored_reason="not requested",
    )
    got = reward_input(completion, "code", max_tokens=3)
    assert got == RewardInput(
        text="abc",
        tokens=3,
        max_tokens=3,
        truncated=True,
        task_type="code",
        result=None,
        unscored_reason="not requested",
    )


def test_reward_is_a_plain_record() -> None:
    reward = Reward(total=0.5, components=())
    assert reward.scored and reward.value("accuracy") is None
    assert not math.isnan(reward.total or 0.0)


def test_r1_template_renders_the_paper_preamble_per_task_type() -> None:
    from rlfleet.learner.data import Task
    from rlfleet.learner.templates import R1_PREAMBLE
    from rlfleet.sandbox.records import CodeCase, MathCase, StdioTest

    math_task = Task(
        id="m", prompt="What is 2+2?", verification=MathCase(id="", completion="", gold="4")
    )
    code_task = Task(
        id="c",
        prompt="Add two numbers.",
        verification=CodeCase(
            id="", language="python", code="", tests=(StdioTest(stdin="", stdout="0"),)
        ),
        starter_code="def add(a, b):\n",
    )
    text = R1.render(math_task)
    assert text.startswith("A conversation between User and Assistant. The user asks a question")
    assert (
        text
        == f"{R1_PREAMBLE} Put the final answer alone in the answer tags.\nUser: What is 2+2?\nAssistant:"
    )
    code_text = R1.render(code_task)
    assert "```python code block" in code_text
    assert code_text.endswith(
        "User: Add two numbers.\nComplete this code:\n```python\ndef add(a, b):\n```\nAssistant:"
    )
    assert get_template("plain").render(math_task) == "What is 2+2?"
    with pytest.raises(ValueError, match=r"verification\.completion must be empty"):
        Task(id="m", prompt="p", verification=MathCase(id="", completion="x", gold="4"))
