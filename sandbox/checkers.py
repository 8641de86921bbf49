"""Output comparison, always in the judge's own process, never in the sandbox.

Each checker takes the expected and the actual output and says whether they match. The
program never sees the expected output, so nothing it prints can steer these functions
except by being right.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rlfleet.sandbox.records import CheckerKind, CheckerSpec


def normalize_lines(text: str) -> list[str]:
    """Strip trailing whitespace on each line and trailing blank lines (case kept)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def exact_match(expected: str, actual: str) -> bool:
    return normalize_lines(expected) == normalize_lines(actual)


def tokens_match(expected: str, actual: str) -> bool:
    return expected.split() == actual.split()


def _parse_float(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value


def floats_close(expected: float, actual: float, abs_tol: float, rel_tol: float) -> bool:
    if math.isnan(expected) or math.isnan(actual):
        return math.isnan(expected) and math.isnan(actual)
    if math.isinf(expected) or math.isinf(actual):
        return expected == actual
    return math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=abs_tol)


def float_tokens_match(expected: str, actual: str, abs_tol: float, rel_tol: float) -> bool:
    """Token-wise; where the expected token is a number, compare within tolerance."""
    exp, act = expected.split(), actual.split()
    if len(exp) != len(act):
        return False
    for e, a in zip(exp, act, strict=True):
        ef = _parse_float(e)
        if ef is None:
            if e != a:
                return False
            continue
        af = _parse_float(a)
        if af is None or not floats_close(ef, af, abs_tol, rel_tol):
            return False
    return True


def stdio_match(spec: CheckerSpec, expected: str, actual: str) -> bool:
    if spec.kind is CheckerKind.EXACT:
        return exact_match(expected, actual)
    if spec.kind is CheckerKind.TOKENS:
        return tokens_match(expected, actual)
    if spec.kind is CheckerKind.FLOAT:
        return float_tokens_match(expected, actual, spec.abs_tol, spec.rel_tol)
    raise ValueError(f"checker {spec.kind.value!r} is not a comparison function")


def normalize_json(value: Any) -> Any:
    """JSON-normalise a value: tuples become lists (so (1, 2) equals [1, 2])."""
    return json.loads(json.dumps(value))


def values_match(expected: Any, actual: Any, spec: CheckerSpec | None = None) -> bool:
    """Structural equality of JSON values. Numbers compare by value (1 == 1.0), booleans
    are not numbers, floats use the checker's tolerance when it is ``float``."""
    tol = spec if spec is not None and spec.kind is CheckerKind.FLOAT else None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        if tol is not None:
            return floats_close(float(expected), float(actual), tol.abs_tol, tol.rel_tol)
        if isinstance(expected, float) and math.isnan(expected):
            return isinstance(actual, float) and math.isnan(actual)
        return expected == actual
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            values_match(e, a, spec) for e, a in zip(expected, actual, strict=True)
        )
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            values_match(expected[k], actual[k], spec) for k in expected
        )
    if isinstance(expected, str) and isinstance(actual, str):
        return expected == actual
    return expected is None and actual is None


def call_output_match(expected: Any, stdout: str, spec: CheckerSpec | None = None) -> bool:
    """Compare a function-call test's expected value with the JSON the harness printed.

    The harness prints the result as the last line of stdout (the submission's own prints
    go to stderr; anything it writes to fd 1 directly comes before)."""
    lines = stdout.rstrip("\n").rsplit("\n", 1)
    try:
        actual = json.loads(lines[-1])
    except ValueError:
        return False
    return values_match(normalize_json(expected), actual, spec)
