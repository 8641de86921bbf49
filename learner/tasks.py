"""The built-in task of ``rlfleet train``'s default: one-digit arithmetic for a tiny model
trained from random init, rewarded by the real verifier fleet.

The policy sees a bare prompt (template ``plain``) and must answer with one token, a digit
(completions are ``BUILTIN_MAX_NEW_TOKENS`` = 1 token long):

- math, checked by the verifier's math checker: ``a+b=`` (a, b >= 0, a + b <= 9), gold
  ``a+b``. The checker sees ``\\boxed{<completion>}`` (``frame_before`` / ``frame_after``),
  so the completion ``7`` is the answer 7 and any other token is wrong or no answer.
- code, run as a real program in the sandbox: ``a-b=`` (9 >= a >= b >= 0). The program is
  ``print(<completion>)`` and must print ``a-b``: the completion is the Python expression
  whose value is printed, run by the verifier's Python in its sandbox, compared by tokens.
  A wrong digit is WA, a token that is no expression (``(``) CE, an unknown name RE.

The rollout service scores a completion alone, so these framed tasks are verified by the
learner through the verifier's client with ``Task.case_for`` (``Task.rollout_verification``
is None for them).

Why it is learnable from random init, and why a random policy scores above zero: the tiny
tokenizer (``rlfleet model init --preset tiny``, 512 tokens) splits numbers into one token
per digit, so every answer is exactly one of its tokens and a single sampled token is right
with probability p(gold) (1/512 for a uniform policy). The format reward (weight 0.1: the
completion is an integer, i.e. one of the 10 digit tokens) is earned ten times as often and
first teaches the policy to answer with digits; among digits the right one is then a 1 in
10 chance. ``chance_reward`` gives the expected reward of a policy from its token
probabilities: 0.0037 for a uniform one, about that for the tiny random model.

Measured with an in-process GRPO loop on the tiny preset (random init, these tasks and
rewards, exact match standing in for the verifier, which accepts exactly the gold token:
tests/test_tasks.py): 32 prompts x G=16 per step, advantages (r - mean) / (std + 1e-4),
Adam lr 1e-3, clip 1.0, temperature 1: mean reward 0.10 by step ~40 (digits learned), 0.9 at
step 656 (seed 0) and 564 (seed 1), ~40 ms a step on 2 cores. lr 2e-3: step 737; hidden 128
instead of 64: steps 597 and 810 (no faster).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from rlfleet.learner.data import Task
from rlfleet.learner.rewards import RewardConfig
from rlfleet.sandbox.records import CheckerKind, CheckerSpec, CodeCase, MathCase, StdioTest

BUILTIN_TEMPLATE = "plain"
BUILTIN_MAX_NEW_TOKENS = 1
DIGITS = tuple(str(d) for d in range(10))

MATH_FRAME = ("\\boxed{", "}")
CODE_FRAME = ("print(", ")\n")


@dataclass(frozen=True, kw_only=True)
class BuiltinConfig:
    seed: int = 0
    """Orders the tasks (the set is the same for every seed)."""
    math: bool = True
    """Include the addition prompts (math checker)."""
    code: bool = True
    """Include the subtraction prompts (run in the sandbox)."""
    time_limit_s: float = 1.0
    """CPU time limit of one program run."""

    def __post_init__(self) -> None:
        if not (self.math or self.code):
            raise ValueError("math, code: include at least one kind")


def builtin_reward_config() -> RewardConfig:
    """Accuracy 0.9 plus format 0.1: a total in [0, 1], 1 only for the right digit. No
    overlong penalty (every completion is one token, cut off at the limit by design)."""
    return RewardConfig(accuracy=0.9, format=0.1, overlong=0.0)


def addition_task(a: int, b: int) -> Task:
    return Task(
        id=f"add-{a}-{b}",
        prompt=f"{a}+{b}=",
        verification=MathCase(id="", completion="", gold=str(a + b)),
        source="builtin",
        frame_before=MATH_FRAME[0],
        frame_after=MATH_FRAME[1],
    )


def subtraction_task(a: int, b: int, time_limit_s: float = 1.0) -> Task:
    return Task(
        id=f"sub-{a}-{b}",
        prompt=f"{a}-{b}=",
        verification=CodeCase(
            id="",
            language="python",
            code="",
            tests=(StdioTest(stdin="", stdout=f"{a - b}\n"),),
            time_limit_s=time_limit_s,
            memory_limit_mb=64,
            checker=CheckerSpec(kind=CheckerKind.TOKENS),
        ),
        source="builtin",
        frame_before=CODE_FRAME[0],
        frame_after=CODE_FRAME[1],
    )


def builtin_tasks(config: BuiltinConfig = BuiltinConfig()) -> list[Task]:
    """Every built-in problem (55 additions, 55 subtractions), in an order drawn from
    ``config.seed`` (the same list for the same config)."""
    tasks: list[Task] = []
    if config.math:
        tasks += [addition_task(a, b) for a in range(10) for b in range(10) if a + b <= 9]
    if config.code:
        tasks += [
            subtraction_task(a, b, config.time_limit_s)
            for a in range(10)
            for b in range(10)
            if a >= b
        ]
    random.Random(config.seed).shuffle(tasks)
    return tasks


def gold_digit(task: Task) -> str:
    """The one-token answer of a built-in task."""
    v = task.verification
    if isinstance(v, MathCase):
        return v.gold
    first = v.tests[0]
    assert isinstance(first, StdioTest), "built-in code tasks are stdin/stdout"
    return first.stdout.strip()


def chance_reward(
    p_gold: Sequence[float], p_digits: Sequence[float], config: RewardConfig | None = None
) -> float:
    """The expected reward of a one-token policy over the tasks: per task, p(gold token)
    earns accuracy and format, p(any digit token) earns format (every digit is a well-formed
    answer). A uniform policy over V tokens: p_gold = 1/V, p_digits = 10/V."""
    if len(p_gold) != len(p_digits) or not p_gold:
        raise ValueError("p_gold, p_digits: one probability per task each")
    cfg = config or builtin_reward_config()
    per_task = [cfg.accuracy * g + cfg.format * d for g, d in zip(p_gold, p_digits, strict=True)]
    return sum(per_task) / len(per_task)
