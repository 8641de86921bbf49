"""Validate a case given as JSON (one line of ``rlfleet verify``'s input) into a record.

Every error names the field that is wrong, e.g. ``tests[3].stdout: missing``.
"""

from __future__ import annotations

import math
from typing import Any

from rlfleet.sandbox.languages import LANGUAGES, get_language
from rlfleet.sandbox.mathcheck.extract import EXTRACTIONS
from rlfleet.sandbox.records import (
    CallTest,
    Case,
    CheckerKind,
    CheckerSpec,
    CodeCase,
    CodeTest,
    MathCase,
    StdioTest,
)
from rlfleet.sandbox.testcode import unittest_methods

MAX_TIME_LIMIT_S = 60.0
MAX_MEMORY_MB = 8192
MAX_CODE_BYTES = 1 << 20
MAX_COMPLETION_BYTES = 1 << 20
MAX_TESTS = 100_000


class CaseError(ValueError):
    """A case is invalid; ``field`` says where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    name = f"{where}{key}"
    if key not in obj:
        raise CaseError(name, "missing")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise CaseError(name, f"expected {expected}, got {type(value).__name__}")
    return value


def _optional_number(obj: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    if obj.get(key) is None:
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CaseError(key, f"expected a number, got {value!r}")
    if not lo < value <= hi:
        raise CaseError(key, f"must be in ({lo:g}, {hi:g}], got {value!r}")
    return float(value)


def parse_checker(raw: Any) -> CheckerSpec:
    if raw is None:
        return CheckerSpec()
    if not isinstance(raw, dict):
        raise CaseError("checker", f"expected an object, got {type(raw).__name__}")
    kind_name = _require(raw, "type", str, "checker.")
    try:
        kind = CheckerKind(kind_name)
    except ValueError:
        names = ", ".join(k.value for k in CheckerKind)
        raise CaseError("checker.type", f"unknown {kind_name!r} (one of {names})") from None
    abs_tol = _optional_number(raw, "abs_tol", 1e-6, -1e-300, 1e300)
    rel_tol = _optional_number(raw, "rel_tol", 1e-6, -1e-300, 1e300)
    if abs_tol < 0 or rel_tol < 0:
        raise CaseError("checker", "tolerances must be >= 0")
    code = ""
    if kind is CheckerKind.CUSTOM:
        code = _require(raw, "code", str, "checker.")
    return CheckerSpec(kind=kind, abs_tol=abs_tol, rel_tol=rel_tol, custom_code=code)


def _parse_tests(
    raw: Any, is_call: bool
) -> tuple[StdioTest, ...] | tuple[CallTest, ...] | tuple[CodeTest, ...]:
    if not isinstance(raw, list):
        raise CaseError("tests", f"expected a list, got {type(raw).__name__}")
    if not raw:
        raise CaseError("tests", "empty")
    if len(raw) > MAX_TESTS:
        raise CaseError("tests", f"{len(raw)} tests, more than the {MAX_TESTS} allowed")
    if any(isinstance(t, dict) and "test_code" in t for t in raw):
        if is_call:
            raise CaseError("fn_name", "not used with test-code tests (they call the program)")
        return tuple(_parse_code_test(t, i) for i, t in enumerate(raw))
    stdio: list[StdioTest] = []
    calls: list[CallTest] = []
    for i, t in enumerate(raw):
        where = f"tests[{i}]."
        if not isinstance(t, dict):
            raise CaseError(f"tests[{i}]", f"expected an object, got {type(t).__name__}")
        if is_call:
            args = _require(t, "args", list, where)
            kwargs = t.get("kwargs") or {}
            if not isinstance(kwargs, dict):
                raise CaseError(f"{where}kwargs", "expected an object")
            if "expected" not in t:
                raise CaseError(f"{where}expected", "missing")
            calls.append(CallTest(args=args, kwargs=kwargs, expected=t["expected"]))
        else:
            stdin = t.get("stdin", "")
            if not isinstance(stdin, str):
                raise CaseError(f"{where}stdin", "expected a string")
            stdio.append(StdioTest(stdin=stdin, stdout=_require(t, "stdout", str, where)))
    return tuple(calls) if is_call else tuple(stdio)


def _parse_code_test(t: Any, i: int) -> CodeTest:
    if not isinstance(t, dict):
        raise CaseError(f"tests[{i}]", f"expected an object, got {type(t).__name__}")
    if "test_code" not in t:
        raise CaseError(f"tests[{i}].test_code", "missing (a case's tests are all of one kind)")
    extra = sorted(set(t) - {"test_code"})
    if extra:
        raise CaseError(f"tests[{i}].{extra[0]}", "not used with test_code")
    where = f"tests[{i}].test_code"
    code = _limited(_require(t, "test_code", str, f"tests[{i}]."), where, MAX_CODE_BYTES)
    try:
        methods = unittest_methods(code)
    except SyntaxError as e:
        raise CaseError(where, f"syntax error: {e.msg} (line {e.lineno})") from None
    except ValueError as e:
        raise CaseError(where, str(e)) from None
    return CodeTest(test_code=code, methods=methods)


def parse_case(obj: Any) -> Case:
    """Build a record from a decoded JSON object; raises ``CaseError``."""
    if not isinstance(obj, dict):
        raise CaseError("case", f"expected a JSON object, got {type(obj).__name__}")
    case_id = obj.get("id")
    if not isinstance(case_id, str | int) or isinstance(case_id, bool):
        raise CaseError("id", "missing" if case_id is None else "expected a string")
    case_id = str(case_id)
    kind = _require(obj, "kind", str)
    if kind == "math":
        return MathCase(
            id=case_id,
            completion=_require(obj, "completion", str),
            gold=_gold(obj),
            extraction=_extraction(obj),
        )
    if kind != "code":
        raise CaseError("kind", f"unknown {kind!r} (one of code, math)")
    language = _require(obj, "language", str)
    lang = get_language(language)
    if lang is None:
        raise CaseError("language", f"unknown {language!r} (one of {', '.join(LANGUAGES)})")
    fn_name = obj.get("fn_name")
    if fn_name is not None:
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise CaseError("fn_name", "expected a Python identifier")
        if not lang.supports_call:
            raise CaseError("fn_name", f"function-call tests are not supported for {lang.name}")
    code = _limited(_require(obj, "code", str), "code", MAX_CODE_BYTES)
    tests = _parse_tests(obj["tests"], fn_name is not None) if "tests" in obj else _missing("tests")
    if tests and isinstance(tests[0], CodeTest):
        if not lang.supports_test_code:
            raise CaseError("tests", f"test-code tests are not supported for {lang.name}")
        if obj.get("checker") is not None:
            raise CaseError("checker", "not used with test-code tests (they decide themselves)")
    early_stop = obj.get("early_stop", False)
    if not isinstance(early_stop, bool):
        raise CaseError("early_stop", "expected true or false")
    return CodeCase(
        id=case_id,
        language=lang.name,
        code=code,
        tests=tests,
        fn_name=fn_name,
        time_limit_s=_optional_number(obj, "time_limit_s", 2.0, 0.0, MAX_TIME_LIMIT_S),
        memory_limit_mb=int(_optional_number(obj, "memory_limit_mb", 256, 15, MAX_MEMORY_MB)),
        checker=parse_checker(obj.get("checker")),
        early_stop=early_stop,
    )


def _limited(text: str, name: str, limit: int) -> str:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise CaseError(name, f"{size} bytes, more than the {limit} allowed")
    return text


def _extraction(obj: dict[str, Any]) -> str | None:
    extraction = obj.get("extraction")
    if extraction is not None and extraction not in EXTRACTIONS:
        raise CaseError("extraction", f"unknown {extraction!r} (one of {', '.join(EXTRACTIONS)})")
    return extraction


def _gold(obj: dict[str, Any]) -> str:
    gold = obj.get("gold")
    if gold is None or gold == "":
        raise CaseError("gold", "missing")
    if isinstance(gold, bool) or not isinstance(gold, str | int | float):
        raise CaseError("gold", f"expected a string or number, got {type(gold).__name__}")
    return str(gold)


def _missing(name: str) -> Any:
    raise CaseError(name, "missing")
