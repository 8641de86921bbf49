"""The reward of one finished completion: one typed result, its parts named and weighted.

``Reward.total`` is the weighted sum of the components below (weights in ``RewardConfig``;
a component with weight 0 is still measured, for metrics, and adds nothing):

- ``accuracy``: from the verifier's ``CaseResult``, by task type (``ACCURACY``). Math: 1 if
  the verdict is AC, else 0. Code: ``all_pass`` (1 if every test passed, else 0) or
  ``pass_rate`` (tests passed / tests), chosen by ``RewardConfig.code_accuracy``.
- ``format``: 1 if the completion has the shape the prompt template asked for
  (``Template.format_ok``: R1's ``<think>...</think><answer>...</answer>`` for ``r1``), else 0.
- ``language``: R1's language-consistency reward, ``language_share`` of the template's
  reasoning part: the share of its words written in a target script.
- ``overlong``: a length penalty in [-1, 0] (``OVERLONG``): DAPO's soft penalty, 0 up to
  ``max_tokens - overlong_buffer`` tokens, then falling linearly to -1 at ``max_tokens``;
  or ``hard``: -1 for a completion cut off at the token limit, else 0.

Unscored completions: when the verifier gave no result (the rollout service's
``unscored_reason``: verifier down, timeout) or a system error (verdict SE, which the
verifier never charges to the program), the accuracy is unknown and ``total`` is None, never
0: such a completion carries no reward and must be left out of the batch (its group's
advantages computed over the scored ones). The rule-based components are still reported.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from rlfleet.learner.data import TaskType
from rlfleet.learner.templates import Template
from rlfleet.rollout.records import Completion, FinishReason
from rlfleet.sandbox.records import CaseResult, Verdict

CodeAccuracy = Literal["all_pass", "pass_rate"]
Overlong = Literal["soft", "hard"]
COMPONENTS = ("accuracy", "format", "language", "overlong")


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    accuracy: float = 1.0
    """Weight of the verifier's accuracy."""
    format: float = 0.0
    """Weight of the format reward (the template's answer shape)."""
    language: float = 0.0
    """Weight of the language-consistency reward."""
    overlong: float = 0.0
    """Weight of the overlong penalty (the penalty is in [-1, 0])."""
    code_accuracy: CodeAccuracy = "all_pass"
    """Code: 1 only when every test passes, or the share of tests passed."""
    overlong_mode: Overlong = "soft"
    """``soft``: DAPO's linear penalty over the last ``overlong_buffer`` tokens; ``hard``: -1
    for a completion cut off at the limit."""
    overlong_buffer: int = 0
    """DAPO's L_cache, in tokens; 0: a quarter of the completion's token limit."""
    target_scripts: tuple[str, ...] = ("LATIN",)
    """Scripts that count as the target language: first word of a letter's Unicode name
    (LATIN, CYRILLIC, GREEK, CJK, HIRAGANA, KATAKANA, HANGUL, ARABIC, ...)."""

    def __post_init__(self) -> None:
        if self.code_accuracy not in CODE_ACCURACY:
            raise ValueError(f"code_accuracy: unknown {self.code_accuracy!r}")
        if self.overlong_mode not in OVERLONG:
            raise ValueError(f"overlong_mode: unknown {self.overlong_mode!r}")
        if self.overlong_buffer < 0:
            raise ValueError("overlong_buffer: must be >= 0")
        if not self.target_scripts:
            raise ValueError("target_scripts: give at least one")

    def weight(self, component: str) -> float:
        weights = {
            "accuracy": self.accuracy,
            "format": self.format,
            "language": self.language,
            "overlong": self.overlong,
        }
        return weights[component]


@dataclass(frozen=True, kw_only=True)
class Component:
    name: str
    value: float
    weight: float

    @property
    def weighted(self) -> float:
        return self.value * self.weight


@dataclass(frozen=True, kw_only=True)
class Reward:
    total: float | None
    """The weighted sum of the components; None when unscored (leave the sample out)."""
    components: tuple[Component, ...]
    """Every component measured (accuracy only when scored), weight 0 ones included."""
    unscored_reason: str = ""
    """Why ``total`` is None."""

    @property
    def scored(self) -> bool:
        return self.total is not None

    def value(self, name: str) -> float | None:
        """A component's unweighted value, None when it was not measured."""
        return next((c.value for c in self.components if c.name == name), None)


@dataclass(frozen=True, kw_only=True)
class RewardInput:
    """A finished completion, as the reward needs it."""

    text: str
    tokens: int
    """Completion tokens generated."""
    max_tokens: int
    """The completion's token limit (``SamplingParams.max_new_tokens``)."""
    truncated: bool
    """Cut off at the limit (finish reason ``length``)."""
    task_type: TaskType
    result: CaseResult | None
    """The verifier's result; None when unscored."""
    unscored_reason: str = ""


def reward_input(completion: Completion, task_type: TaskType, max_tokens: int) -> RewardInput:
    """A rollout service completion (scored by the service, or with ``result`` replaced by the
    learner's own verification) as the reward's input."""
    return RewardInput(
        text=completion.text,
        tokens=len(completion.token_ids),
        max_tokens=max_tokens,
        truncated=completion.finish_reason is FinishReason.LENGTH,
        task_type=task_type,
        result=completion.result,
        unscored_reason=completion.unscored_reason,
    )


# -- components (pure) -----------------------------------------------------------------------


def math_accuracy(result: CaseResult, config: RewardConfig) -> float:
    return 1.0 if result.verdict is Verdict.AC else 0.0


def all_pass(result: CaseResult) -> float:
    return 1.0 if result.verdict is Verdict.AC and result.passed == result.total else 0.0


def pass_rate(result: CaseResult) -> float:
    return result.passed / result.total if result.total > 0 else 0.0


CODE_ACCURACY: dict[str, Callable[[CaseResult], float]] = {
    "all_pass": all_pass,
    "pass_rate": pass_rate,
}


def code_accuracy(result: CaseResult, config: RewardConfig) -> float:
    return CODE_ACCURACY[config.code_accuracy](result)


ACCURACY: dict[TaskType, Callable[[CaseResult, RewardConfig], float]] = {
    "math": math_accuracy,
    "code": code_accuracy,
}


def soft_overlong(tokens: int, max_tokens: int, buffer: int, truncated: bool) -> float:
    """DAPO's soft overlong punishment (DAPO paper, eq. 13) with L_max = ``max_tokens`` and
    L_cache = ``buffer``: 0 up to L_max - L_cache tokens, then (L_max - L_cache - tokens) /
    L_cache, reaching -1 at L_max; -1 beyond."""
    free = max_tokens - buffer
    if tokens <= free:
        return 0.0
    if tokens > max_tokens or buffer == 0:
        return -1.0
    return (free - tokens) / buffer


def hard_overlong(tokens: int, max_tokens: int, buffer: int, truncated: bool) -> float:
    """-1 for a completion cut off at the token limit, else 0."""
    return -1.0 if truncated or tokens > max_tokens else 0.0


OVERLONG: dict[str, Callable[[int, int, int, bool], float]] = {
    "soft": soft_overlong,
    "hard": hard_overlong,
}


def script(ch: str) -> str:
    """The script of a letter: the first word of its Unicode name (``LATIN``, ``CJK``...)."""
    return unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]


def words(text: str) -> list[str]:
    """Maximal runs of letters (``str.isalpha``); digits, marks and punctuation split them."""
    out: list[str] = []
    start = -1
    for i, ch in enumerate(text):
        if ch.isalpha():
            if start < 0:
                start = i
        elif start >= 0:
            out.append(text[start:i])
            start = -1
    if start >= 0:
        out.append(text[start:])
    return out


def language_share(text: str, scripts: tuple[str, ...]) -> float:
    """R1's language consistency, as a testable rule: the share of ``text``'s words (runs of
    letters) whose letters are all in one of ``scripts``. No words at all: 1 (nothing is
    inconsistent). CJK text has no spaces, so a run of ideographs is one word."""
    found = words(text)
    if not found:
        return 1.0
    target = set(scripts)
    return sum(all(script(ch) in target for ch in w) for w in found) / len(found)


# -- the reward ------------------------------------------------------------------------------


class RewardFunction:
    """Turns a finished completion into its ``Reward`` (pure: no I/O)."""

    def __init__(self, config: RewardConfig, template: Template) -> None:
        self.config = config
        self.template = template

    def _component(self, name: str, value: float) -> Component:
        return Component(name=name, value=value, weight=self.config.weight(name))

    def __call__(self, inp: RewardInput) -> Reward:
        cfg = self.config
        buffer = cfg.overlong_buffer or max(1, inp.max_tokens // 4)
        rules = (
            self._component("format", float(self.template.format_ok(inp.text))),
            self._component(
                "language",
                language_share(self.template.reasoning(inp.text), cfg.target_scripts),
            ),
            self._component(
                "overlong",
                OVERLONG[cfg.overlong_mode](inp.tokens, inp.max_tokens, buffer, inp.truncated),
            ),
        )
        if inp.result is None:
            return Reward(
                total=None, components=rules, unscored_reason=inp.unscored_reason or "no result"
            )
        if inp.result.verdict is Verdict.SE:
            reason = f"verifier system error: {inp.result.message}".rstrip(": ")
            return Reward(total=None, components=rules, unscored_reason=reason)
        accuracy = self._component("accuracy", ACCURACY[inp.task_type](inp.result, cfg))
        components = (accuracy, *rules)
        return Reward(total=sum(c.weighted for c in components), components=components)
