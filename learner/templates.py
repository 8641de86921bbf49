"""Prompt templates: the text the policy sees for a task, and the answer shape it asks for.

A template renders a ``Task`` into the prompt and says whether a completion has the shape
the prompt asked for (the format reward, ``rewards.py``). Chosen by name from ``TEMPLATES``.

- ``r1``: DeepSeek-R1-Zero's template (DeepSeek-R1 paper, table 1), the problem in place of
  its ``prompt``; a per-task-type line says what goes in the answer. Its format rule is R1's
  (``R1_FORMAT``).
- ``plain``: the problem text alone, nothing added (the built-in task of the tiny default,
  whose model has never seen a word); its format rule: the completion is one integer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from rlfleet.learner.data import Task, TaskType

R1_PREAMBLE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>."
)

R1_FORMAT = re.compile(
    r"\A\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*\Z", re.DOTALL
)
"""R1's format rule: the completion is ``<think>`` reasoning ``</think>`` then ``<answer>``
answer ``</answer>``, only whitespace around and between them, each tag exactly once (see
``r1_format_ok``), and a non-blank answer. The reasoning may be empty."""

_R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")

INSTRUCTIONS: dict[TaskType, str] = {
    "math": "Put the final answer alone in the answer tags.",
    "code": "Put the complete program in a ```python code block in the answer tags.",
}
"""R1 template: what goes in the answer, per task type."""


def r1_format_ok(completion: str) -> bool:
    """Whether ``completion`` follows R1's format (``R1_FORMAT``, each tag exactly once)."""
    m = R1_FORMAT.match(completion)
    if m is None or not m.group("answer").strip():
        return False
    return all(completion.count(tag) == 1 for tag in _R1_TAGS)


def r1_reasoning(completion: str) -> str:
    """The reasoning of an R1-format completion (inside ``<think>``), else the whole text."""
    m = R1_FORMAT.match(completion)
    return m.group("think") if m else completion


class Template(Protocol):
    @property
    def name(self) -> str: ...

    def render(self, task: Task) -> str:
        """The prompt text for ``task``."""
        ...

    def format_ok(self, completion: str) -> bool:
        """Whether ``completion`` has the shape the prompt asked for."""
        ...

    def reasoning(self, completion: str) -> str:
        """The part of ``completion`` that is reasoning (the language reward reads it)."""
        ...


def _problem(task: Task) -> str:
    text = task.prompt.strip()
    if task.task_type == "code" and task.starter_code.strip():
        text += "\nComplete this code:\n```python\n" + task.starter_code.rstrip() + "\n```"
    return text


@dataclass(frozen=True)
class R1Template:
    name: str = "r1"

    def render(self, task: Task) -> str:
        return f"{R1_PREAMBLE} {INSTRUCTIONS[task.task_type]}\nUser: {_problem(task)}\nAssistant:"

    def format_ok(self, completion: str) -> bool:
        return r1_format_ok(completion)

    def reasoning(self, completion: str) -> str:
        return r1_reasoning(completion)


_INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class PlainTemplate:
    name: str = "plain"

    def render(self, task: Task) -> str:
        return task.prompt

    def format_ok(self, completion: str) -> bool:
        return _INTEGER.fullmatch(completion.strip()) is not None

    def reasoning(self, completion: str) -> str:
        return completion


TEMPLATES: dict[str, Template] = {t.name: t for t in (R1Template(), PlainTemplate())}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"template: unknown {name!r} (one of {', '.join(TEMPLATES)})") from None
