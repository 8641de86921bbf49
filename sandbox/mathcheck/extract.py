"""Take the final answer out of a completion.

Order: R1 ``<answer>...</answer>`` tags (only their content counts; inside, a ``\\boxed{}``
if there is one); else the last ``\\boxed{}`` / ``\\fbox{}``; else a final ``Answer:`` line.
Several different boxed answers in the final region are hedging, not an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_COLON = "[:\uff1a]"  # ASCII or full-width
ANSWER_LINE = re.compile(
    rf"(?:final\s+answer\s*(?:is)?\s*{_COLON}?|the\s+answer\s+is\s*{_COLON}?|answer\s*{_COLON})"
    r"\s*(.+)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    hedged: bool = False


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` with balanced braces, in order."""
    out = []
    for m in BOX_START.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1].strip())
    return out


def _answer_line(text: str) -> str | None:
    for line in reversed([ln.strip() for ln in text.strip().splitlines() if ln.strip()]):
        m = ANSWER_LINE.search(line)
        if m:
            value = m.group(1).strip().strip("*").strip()
            value = value.rstrip(".").strip()
            if value.startswith("$") and value.endswith("$") and len(value) > 1:
                value = value.strip("$").strip()
            return value or None
        return None  # only the last non-empty line may carry the answer
    return None


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def extract_answer(completion: str) -> Extraction:
    tags = ANSWER_TAG.findall(completion)
    if tags:
        region = tags[-1]
        boxes = boxed_contents(region)
        if boxes:
            return Extraction(boxes[-1], hedged=len({_squash(b) for b in boxes}) > 1)
        content = region.strip()
        return Extraction(content or None)
    boxes = boxed_contents(completion)
    if boxes:
        # The final region: the last paragraph that holds a box.
        last = (
            completion.rfind("\\boxed") if "\\boxed" in completion else completion.rfind("\\fbox")
        )
        start = completion.rfind("\n\n", 0, last)
        final = boxed_contents(completion[start + 1 :] if start >= 0 else completion)
        return Extraction(boxes[-1], hedged=len({_squash(b) for b in final}) > 1)
    return Extraction(_answer_line(completion))
