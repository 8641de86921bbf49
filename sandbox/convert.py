"""Proto messages <-> typed records, at the edge of the service and the client.

Incoming requests become the same JSON-shaped dict the CLI reads and go through the same
validation (``cases.parse_case``), so both front doors refuse the same inputs with the
same field-naming messages.

Enums map one to one (``Verdict.AC`` <-> ``VERDICT_AC``). A number this side does not know
(from a peer built from another version of the proto, or UNSPECIFIED) is never guessed at: in
a request it is a ``CaseError`` naming the field, in a response an ``UnknownEnumValue``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

import grpc

from rlfleet.sandbox.cases import CaseError, parse_case
from rlfleet.sandbox.records import (
    CallTest,
    Case,
    CaseResult,
    CheckerKind,
    CodeCase,
    CodeTest,
    MathCase,
    TestResult,
    Verdict,
)
from rlfleet.v1 import verifier_pb2 as pb

_VERDICT_TO_PB: dict[Verdict, pb.Verdict] = {
    Verdict.AC: pb.VERDICT_AC,
    Verdict.WA: pb.VERDICT_WA,
    Verdict.TLE: pb.VERDICT_TLE,
    Verdict.MLE: pb.VERDICT_MLE,
    Verdict.RE: pb.VERDICT_RE,
    Verdict.CE: pb.VERDICT_CE,
    Verdict.OLE: pb.VERDICT_OLE,
    Verdict.SE: pb.VERDICT_SE,
}
_VERDICT_FROM_PB: dict[int, Verdict] = {n: v for v, n in _VERDICT_TO_PB.items()}
_CHECKER_TO_PB: dict[CheckerKind, pb.CheckerKind] = {
    CheckerKind.EXACT: pb.CHECKER_KIND_EXACT,
    CheckerKind.TOKENS: pb.CHECKER_KIND_TOKENS,
    CheckerKind.FLOAT: pb.CHECKER_KIND_FLOAT,
    CheckerKind.CUSTOM: pb.CHECKER_KIND_CUSTOM,
}
_CHECKER_FROM_PB: dict[int, CheckerKind] = {n: k for k, n in _CHECKER_TO_PB.items()}


class UnknownEnumValue(RuntimeError):
    """A response carries an enum number this side does not know: the server was built from
    a newer proto (upgrade clients before servers), or it left the field UNSPECIFIED."""

    def __init__(self, field: str, number: int) -> None:
        super().__init__(
            f"{field}: unknown value {number} "
            "(is the server built from a newer proto than this client?)"
        )
        self.field = field
        self.number = number


def verdict_to_pb(verdict: Verdict) -> pb.Verdict:
    return _VERDICT_TO_PB[verdict]


def verdict_from_pb(number: int, field: str) -> Verdict:
    try:
        return _VERDICT_FROM_PB[number]
    except KeyError:
        raise UnknownEnumValue(field, number) from None


def error_code_to_pb(code: grpc.StatusCode) -> pb.ErrorCode:
    """``ErrorCode`` numbers are gRPC's status codes; looked up by name all the same."""
    return cast(pb.ErrorCode, pb.ErrorCode.Value(f"ERROR_CODE_{code.name}"))


def checker_kind_from_pb(number: int, field: str = "checker.type") -> CheckerKind:
    """The checker kind of a request; UNSPECIFIED or an unknown number is a ``CaseError``
    (INVALID_ARGUMENT naming the field, as ``cases.parse_checker`` names it)."""
    try:
        return _CHECKER_FROM_PB[number]
    except KeyError:
        names = ", ".join(k.value for k in CheckerKind)
        what = "missing" if number == pb.CHECKER_KIND_UNSPECIFIED else f"unknown value {number}"
        raise CaseError(field, f"{what} (one of {names})") from None


PROBLEM_BYTES_PREFIX = b"rlfleet.problem.v1\n"
"""Starts the canonical bytes; a new canonical form gets a new version, hence new refs."""


def problem_json(case: CodeCase) -> dict[str, Any]:
    """The test suite of ``case`` (what a ``Problem`` carries) in the case format of
    ``rlfleet verify``, every default filled in, numbers in the types a ``Problem`` gives;
    test-code suites have no checker."""
    tests: list[dict[str, Any]] = []
    for t in case.tests:
        if isinstance(t, CallTest):
            tests.append({"args": t.args, "kwargs": t.kwargs, "expected": t.expected})
        elif isinstance(t, CodeTest):
            tests.append({"test_code": t.test_code})
        else:
            tests.append({"stdin": t.stdin, "stdout": t.stdout})
    out: dict[str, Any] = {
        "tests": tests,
        "time_limit_s": float(case.time_limit_s),
        "memory_limit_mb": int(case.memory_limit_mb),
    }
    # Test code decides for itself: no checker (one is refused), none in its canonical form.
    if not _has_code_tests(case):
        out["checker"] = {
            "type": case.checker.kind.value,
            "abs_tol": float(case.checker.abs_tol),
            "rel_tol": float(case.checker.rel_tol),
            "code": case.checker.custom_code,
        }
    if case.fn_name is not None:
        out["fn_name"] = case.fn_name
    return out


def _has_code_tests(case: CodeCase) -> bool:
    return any(isinstance(t, CodeTest) for t in case.tests)


def problem_bytes(case: CodeCase) -> bytes:
    """The canonical bytes of ``case``'s test suite: ``PROBLEM_BYTES_PREFIX``, then
    ``problem_json`` as JSON with sorted keys, no whitespace, non-ASCII characters as
    themselves, floats as Python's ``repr``, encoded as UTF-8.

    Protobuf's serialisation is not canonical (not across versions or languages, even
    "deterministic"), and two messages for the same suite may differ (field order, JSON
    spacing in ``args_json``); the validated record does not.
    """
    text = json.dumps(problem_json(case), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return PROBLEM_BYTES_PREFIX + text.encode("utf-8")


def problem_ref(case: CodeCase) -> str:
    """Content hash of ``case``'s test suite (``ProblemRef.sha256``): the sha256, in
    lowercase hex, of ``problem_bytes``. The server and the client both compute it."""
    return hashlib.sha256(problem_bytes(case)).hexdigest()


def _json_field(text: str, field: str, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError as e:
        raise CaseError(field, f"invalid JSON: {e}") from None


def problem_to_dict(problem_pb: pb.Problem, where: str = "problem.") -> dict[str, Any]:
    kinds = [k for k in ("stdio_tests", "call_tests", "code_tests") if getattr(problem_pb, k)]
    if len(kinds) > 1:
        raise CaseError(
            f"{where}{kinds[1]}", "a problem has one kind of tests: stdio, call or code tests"
        )
    out: dict[str, Any] = {}
    if problem_pb.code_tests:
        if problem_pb.fn_name:
            raise CaseError("fn_name", "not used with code tests (they call the program)")
        out["tests"] = [{"test_code": t.test_code} for t in problem_pb.code_tests]
    elif problem_pb.call_tests:
        out["fn_name"] = problem_pb.fn_name or None
        out["tests"] = [
            {
                "args": _json_field(t.args_json, f"tests[{i}].args_json", None),
                "kwargs": _json_field(t.kwargs_json, f"tests[{i}].kwargs_json", {}),
                "expected": _json_field(t.expected_json, f"tests[{i}].expected_json", None),
            }
            for i, t in enumerate(problem_pb.call_tests)
        ]
        if out["fn_name"] is None:
            raise CaseError("fn_name", "missing (required with call tests)")
    else:
        out["tests"] = [{"stdin": t.stdin, "stdout": t.stdout} for t in problem_pb.stdio_tests]
    if problem_pb.HasField("checker"):
        c = problem_pb.checker
        kind = checker_kind_from_pb(c.type)
        checker: dict[str, Any] = {"type": kind.value, "code": c.code}
        if c.HasField("abs_tol"):
            checker["abs_tol"] = c.abs_tol
        if c.HasField("rel_tol"):
            checker["rel_tol"] = c.rel_tol
        out["checker"] = checker
    if problem_pb.HasField("time_limit_s"):
        out["time_limit_s"] = problem_pb.time_limit_s
    if problem_pb.HasField("memory_limit_mb"):
        out["memory_limit_mb"] = problem_pb.memory_limit_mb
    return out


def request_to_case(req: pb.VerifyRequest, problems: Any) -> Case:
    """Validate a request into a record; ``problems`` resolves ``problem_ref``s."""
    kind = req.WhichOneof("case")
    if kind == "math":
        obj: dict[str, Any] = {
            "id": req.id or None,
            "kind": "math",
            "completion": req.math.completion,
            "gold": req.math.gold,
            "extraction": req.math.extraction or None,
        }
        return parse_case(obj)
    if kind != "code":
        raise CaseError("case", "missing (set code or math)")
    code = req.code
    suite = code.WhichOneof("suite")
    if suite == "problem_ref":
        problem_pb = problems.get(code.problem_ref)
    elif suite == "problem":
        problem_pb = code.problem
    else:
        raise CaseError("suite", "missing (set problem or problem_ref)")
    obj = {
        "id": req.id or None,
        "kind": "code",
        "language": code.language or None,
        "code": code.code,
        "early_stop": code.early_stop,
        **problem_to_dict(problem_pb),
    }
    return parse_case({k: v for k, v in obj.items() if v is not None})


def problem_from_case(case: CodeCase) -> pb.Problem:
    problem = pb.Problem(
        time_limit_s=case.time_limit_s,
        memory_limit_mb=case.memory_limit_mb,
        checker=pb.Checker(
            type=_CHECKER_TO_PB[case.checker.kind],
            abs_tol=case.checker.abs_tol,
            rel_tol=case.checker.rel_tol,
            code=case.checker.custom_code,
        ),
    )
    if _has_code_tests(case):
        problem.ClearField("checker")
        for t in case.tests:
            assert isinstance(t, CodeTest)
            problem.code_tests.add(test_code=t.test_code)
    elif case.is_call:
        problem.fn_name = case.fn_name or ""
        for t in case.tests:
            assert isinstance(t, CallTest)
            problem.call_tests.add(
                args_json=json.dumps(t.args),
                kwargs_json=json.dumps(t.kwargs),
                expected_json=json.dumps(t.expected),
            )
    else:
        for t in case.tests:
            problem.stdio_tests.add(stdin=t.stdin, stdout=t.stdout)  # type: ignore[union-attr]
    return problem


def case_to_request(case: Case, problem_ref: str | None = None) -> pb.VerifyRequest:
    if isinstance(case, MathCase):
        math = pb.MathCase(
            completion=case.completion, gold=case.gold, extraction=case.extraction or ""
        )
        return pb.VerifyRequest(id=case.id, math=math)
    code = pb.CodeCase(language=case.language, code=case.code, early_stop=case.early_stop)
    if problem_ref:
        code.problem_ref = problem_ref
    else:
        code.problem.CopyFrom(problem_from_case(case))
    return pb.VerifyRequest(id=case.id, code=code)


def result_to_response(result: CaseResult) -> pb.VerifyResponse:
    resp = pb.VerifyResponse(
        id=result.id,
        verdict=verdict_to_pb(result.verdict),
        passed=result.passed,
        total=result.total,
        reward=result.reward,
        message=result.message,
        tests=[
            pb.TestResult(
                verdict=verdict_to_pb(t.verdict),
                time_s=t.time_s,
                memory_mb=t.memory_mb,
                wall_s=t.wall_s,
                message=t.message,
            )
            for t in result.tests
        ],
    )
    if result.extracted is not None:
        resp.extracted = result.extracted
    return resp


def response_to_result(resp: pb.VerifyResponse) -> CaseResult:
    """Raises ``UnknownEnumValue`` for a verdict this client does not know."""
    return CaseResult(
        id=resp.id,
        verdict=verdict_from_pb(resp.verdict, "verdict"),
        passed=resp.passed,
        total=resp.total,
        reward=resp.reward,
        message=resp.message,
        extracted=resp.extracted if resp.HasField("extracted") else None,
        tests=tuple(
            TestResult(
                verdict=verdict_from_pb(t.verdict, f"tests[{i}].verdict"),
                time_s=t.time_s,
                memory_mb=t.memory_mb,
                wall_s=t.wall_s,
                message=t.message,
            )
            for i, t in enumerate(resp.tests)
        ),
    )
