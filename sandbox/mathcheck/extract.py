"""Take the final answer out of a completion.

Order: R1 ``<answer>...</answer>`` tags (only the last tag's content counts; inside, a
``\\boxed{}`` if there is one, else the whole content); else a final ``Answer:`` line that
comes after the last box; else the last ``\\boxed{}`` / ``\\fbox{}``; else a final
``Answer:`` line whatever it says. Several different boxed answers in the final
region are hedging, not an answer.

All of it is linear in the completion (each box is scanned at most ``MAX_BOX_CHARS``), so a
hostile completion cannot make extraction slow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

MAX_BOX_CHARS = 10_000
"""A box longer than this is not closed as far as we care (bounds the scan per box)."""
MAX_BOXES = 64
"""Boxes looked at, counted from the end: the answer is in the last ones."""

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "A:" opening the line: the answer of the Q:/A: few-shot format (GSM8K's model solutions).
_ANSWER_LINE = re.compile(
    r"(?:final\s+answer\s*(?:is\b)?\s*[:\uff1a]?|the\s+answer\s+is\s*[:\uff1a]?|\banswer\s*[:\uff1a]"
    r"|(?-i:^A\s*:))\s*",
    re.IGNORECASE,
)
_MINERVA_TAIL = re.compile(r"\.?\s*I hope it is correct\.?\s*$", re.IGNORECASE)
# End-of-text tokens a completion may still carry: <|endoftext|>, <|im_end|>, </s>, <eos>.
_END_TOKENS = re.compile(r"(?:\s*(?:<\|[a-zA-Z_]{1,20}\|>|</s>|<eos>))+\s*$")
_END_TOKENS_WINDOW = 200
"""Characters at the end of a completion searched for end-of-text tokens (bounds the work)."""
# A sentence stating the value: "The smallest n is 17", "the sum equals 12".
_COPULA = re.compile(r"\b(?:is|are|equals|was|be)\b\s*[:\uff1a]?\s*", re.IGNORECASE)
_MATH_SPAN = re.compile(r"\$\$[^$]*\$\$|\$[^$]*\$")
_SPACE = re.compile(r"\s+")
EXTRACTIONS = ("strict", "prose")
"""The ways of finding the answer: the strict rules alone, or failing them the last
mathematical expression of the text (``extract(..., prose=True)``)."""
PROSE_WINDOW = 2000
"""Characters at the end of a completion searched for its last expression (prose mode)."""
_PROSE_MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_PROSE_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_HEDGE_WORD = re.compile(r"\bor\b|\beither\b", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"^(?:\\(?:phantom|hphantom|vphantom)\s*\{[^{}]*\}|\s)*$")
# The blank of a format instruction: "put it in the form \boxed{Your answer}".
_BLANK_WORDS = re.compile(
    r"^(?:\\text\s*\{)?\s*(?:your\s+)?(?:final\s+)?answer(?:\s+here)?\s*\}?$", re.IGNORECASE
)
_CHOICE = re.compile(r"^\(?[A-Ea-e]\)?$")


@dataclass(frozen=True)
class Extraction:
    """The extracted answer (None: nothing found) and, when the final region holds several
    different-looking boxes, all of them (the checker decides whether they differ in value)."""

    answer: str | None
    others: tuple[str, ...] = ()
    boxes: tuple[str, ...] = ()
    """Every box of the final region, in order (the last one is ``answer``)."""
    between: str = ""
    """The text between those boxes ("and", "or", commas, words)."""

    @property
    def hedged(self) -> bool:
        return bool(self.others)


def _box_end(text: str, start: int) -> int | None:
    """Index just past the brace closing the box whose content starts at ``start``."""
    depth = 1
    stop = min(len(text), start + MAX_BOX_CHARS)
    i = start
    while i < stop:
        ch = text[i]
        if ch == "\\":
            i += 2  # an escape: \{ of a set or \\ does not open or close anything
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _boxes(text: str) -> list[tuple[int, str]]:
    """(start, content) of the last ``MAX_BOXES`` closed boxes, in order."""
    return [(start, content) for start, _, content in _located_boxes(text)]


def _located_boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of the last ``MAX_BOXES`` closed boxes, in order."""
    starts = [m for m in _BOX_START.finditer(text)][-MAX_BOXES:]
    out = []
    for m in starts:
        end = _box_end(text, m.end())
        if end is None:
            continue
        content = text[m.end() : end - 1].strip()
        if _PLACEHOLDER.match(content) or _BLANK_WORDS.match(content):
            continue  # \boxed{\phantom{2}}, \boxed{Your answer}: a blank to fill in, no answer
        out.append((m.start(), end, content))
    return out


def boxed_contents(text: str) -> list[str]:
    """Contents of the ``\\boxed{...}`` (balanced braces) in ``text``, in order."""
    return [content for _, content in _boxes(text)]


def _final(text: str, located: list[tuple[int, int, str]]) -> Extraction:
    """The answer of the boxes ``located`` in ``text``, the last one; with the others and the
    text between them when there are several."""
    contents = [content for _, _, content in located]
    between = " ".join(text[end:start] for (_, end, _), (start, _, _) in pairwise(located))
    return Extraction(contents[-1] or None, _others(contents), tuple(contents), between)


def _strip_math(value: str) -> str:
    value = value.strip().strip("*").strip()
    value = _MINERVA_TAIL.sub("", value).strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if value.startswith(left) and value.endswith(right) and len(value) > len(left + right):
            value = value[len(left) : len(value) - len(right)].strip()
    return value


def _strip_end_tokens(completion: str) -> str:
    cut = max(0, len(completion) - _END_TOKENS_WINDOW)
    m = _END_TOKENS.search(completion, cut)
    return completion[: m.start()] if m else completion


def _stated_value(value: str) -> str:
    """The value a sentence states: what follows its last "is" outside math ("The smallest
    $n$ is $17$" -> "$17$"); then the math of a single ``$...$`` with only words or
    punctuation around it ("$17$ cm" -> "17")."""
    value = _MINERVA_TAIL.sub("", value.strip().strip("*").strip()).strip()
    masked = _MATH_SPAN.sub(lambda m: "#" * len(m.group()), value)
    copulas = list(_COPULA.finditer(masked))
    if copulas:
        value = value[copulas[-1].end() :]
    spans = _MATH_SPAN.findall(value)
    if len(spans) == 1 and not any(ch.isdigit() for ch in _MATH_SPAN.sub("", value)):
        value = spans[0]
    return _strip_math(value)


def _answer_line(text: str) -> tuple[int, str] | None:
    """(start, value) of a final "Answer: ..." line; None when the last line is none."""
    end = len(text.rstrip())
    start = text.rfind("\n", 0, end) + 1  # only the final line may carry the answer
    last = text[start:end]
    matches = list(_ANSWER_LINE.finditer(last))
    if not matches:
        return None
    # "Final Answer: The final answer is $42$." (Minerva style): the last marker wins.
    value = _stated_value(last[matches[-1].end() :])
    return (start, value) if value else None


def _is_math(value: str) -> bool:
    """Whether an answer line's value looks like an answer of mathematics (a digit, LaTeX, a
    choice letter) rather than words ("I hope the answer is correct")."""
    return any(ch.isdigit() for ch in value) or "\\" in value or bool(_CHOICE.match(value))


def _last_answer_tag(completion: str) -> str | None:
    """Content of the last closed ``<answer>`` tag. Two reverse searches, not a regex over
    every opening tag: linear even for a completion that repeats ``<answer>`` forever."""
    lower = completion.lower()
    end = lower.rfind("</answer>")
    if end < 0:
        return None
    start = lower.rfind("<answer>", 0, end)
    return None if start < 0 else completion[start + len("<answer>") : end]


def _others(boxes: list[str]) -> tuple[str, ...]:
    """The boxes that differ (ignoring spaces) from the last one."""
    last = _SPACE.sub("", boxes[-1])
    return tuple(b for b in boxes[:-1] if _SPACE.sub("", b) != last)


def extract(completion: str, *, prose: bool = False) -> Extraction:
    """The answer and whether it was hedged among different boxed answers.

    ``prose``: when the strict rules find nothing, the last mathematical expression of the
    text is the answer (for base models that write no answer format)."""
    found = _strict(completion)
    if found.answer is None and prose:
        return Extraction(_last_expression(_strip_end_tokens(completion)))
    return found


def _strict(completion: str) -> Extraction:
    completion = _strip_end_tokens(completion)
    region = _last_answer_tag(completion)
    if region is not None:
        in_tag = _located_boxes(region)
        if in_tag:
            return _final(region, in_tag)
        return Extraction(_strip_math(region) or None)
    located = _located_boxes(completion)
    line = _answer_line(completion)
    if line is not None and (not located or line[0] >= located[-1][1]) and _is_math(line[1]):
        # "... \boxed{5} ... The final answer is $7$.": the final statement wins over
        # intermediate boxes.
        return Extraction(line[1])
    if located:
        # The final region: the paragraph holding the last box.
        region_start = completion.rfind("\n\n", 0, located[-1][0])
        return _final(completion, [box for box in located if box[0] > region_start])
    return Extraction(line[1] if line else None)


def _last_expression(text: str) -> str | None:
    """The last ``$...$`` (or ``\\(...\\)``, ``\\[...\\]``) or plain number of the text's
    end, whichever ends later; the whole final sentence when it offers alternatives ("2 or
    3"), which the checker then refuses as a hedge. Looks at the last ``PROSE_WINDOW``
    characters only."""
    cut = max(0, len(text) - PROSE_WINDOW)
    tail = text[cut:]
    if text.count("$", 0, cut) % 2:  # the window starts inside a $...$: skip its end
        tail = tail[tail.find("$") + 1 :] if "$" in tail else tail
    best: tuple[int, str] | None = None
    for m in _PROSE_MATH.finditer(tail):
        inner = next(g for g in m.groups() if g is not None).strip()
        if inner:
            best = (m.end(), inner)
    numbers = list(_PROSE_NUMBER.finditer(tail))
    if numbers and (best is None or numbers[-1].end() > best[0]):
        best = (numbers[-1].end(), numbers[-1].group())
    if best is None:
        return None
    end, value = best
    sentence_start = max(tail.rfind(". ", 0, end), tail.rfind("\n", 0, end))
    sentence = tail[sentence_start + 1 : end]
    return sentence.strip() if _HEDGE_WORD.search(sentence) else value


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion, or None when it gives none (pure, no side effects)."""
    return extract(completion).answer
