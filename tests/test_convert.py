"""Records survive the trip through the proto messages; enums map one to one; problem refs
are pinned hashes of canonical bytes, whatever the message looked like."""

from __future__ import annotations

import grpc
import pytest

from rlfleet.sandbox.cases import CaseError
from rlfleet.sandbox.convert import (
    UnknownEnumValue,
    case_to_request,
    checker_kind_from_pb,
    error_code_to_pb,
    problem_bytes,
    problem_ref,
    request_to_case,
    response_to_result,
    result_to_response,
    verdict_from_pb,
    verdict_to_pb,
)
from rlfleet.sandbox.records import (
    CallTest,
    CaseResult,
    CheckerKind,
    CheckerSpec,
    CodeCase,
    MathCase,
    StdioTest,
    Verdict,
)
from rlfleet.sandbox.records import (
    TestResult as OneTest,
)
from rlfleet.v1 import verifier_pb2 as pb


def test_result_round_trip_keeps_per_test_details() -> None:
    result = CaseResult(
        id="r",
        verdict=Verdict.RE,
        passed=1,
        total=2,
        reward=0.5,
        message="boom",
        tests=(
            OneTest(verdict=Verdict.AC, time_s=0.01, memory_mb=2.5, wall_s=0.02),
            OneTest(
                verdict=Verdict.RE, time_s=0.02, memory_mb=3.0, wall_s=0.03, message="Traceback ..."
            ),
        ),
    )
    assert response_to_result(result_to_response(result)) == result
    math = CaseResult(id="m", verdict=Verdict.AC, passed=1, total=1, reward=1.0, extracted="1/2")
    assert response_to_result(result_to_response(math)) == math


def test_case_round_trip() -> None:
    cases: list[CodeCase | MathCase] = [
        CodeCase(
            id="s",
            language="cpp",
            code="int main() {}",
            time_limit_s=1.5,
            memory_limit_mb=128,
            tests=(StdioTest(stdin="1", stdout="2"),),
            checker=CheckerSpec(kind=CheckerKind.FLOAT, abs_tol=1e-3, rel_tol=0.0),
        ),
        CodeCase(
            id="f",
            language="python",
            code="def f(x): return x",
            fn_name="f",
            tests=(CallTest(args=[[1, 2]], kwargs={"k": None}, expected={"a": [1]}),),
        ),
        MathCase(id="m", completion="\\boxed{2}", gold="2"),
    ]
    for case in cases:
        assert request_to_case(case_to_request(case), problems=None) == case


def test_enums_map_one_to_one_and_unspecified_is_never_a_value() -> None:
    # Every proto value but UNSPECIFIED has its domain member, and back.
    assert sorted(verdict_from_pb(n, "verdict") for n in pb.Verdict.values() if n) == sorted(
        Verdict
    )
    assert all(verdict_from_pb(verdict_to_pb(v), "verdict") is v for v in Verdict)
    assert {checker_kind_from_pb(n) for n in pb.CheckerKind.values() if n} == set(CheckerKind)
    for n in (pb.VERDICT_UNSPECIFIED, max(pb.Verdict.values()) + 1):
        with pytest.raises(UnknownEnumValue, match=f"^verdict: unknown value {n} "):
            verdict_from_pb(n, "verdict")
    with pytest.raises(CaseError, match=r"^checker\.type: missing \(one of exact, tokens, "):
        checker_kind_from_pb(pb.CHECKER_KIND_UNSPECIFIED)
    with pytest.raises(CaseError, match=r"^checker\.type: unknown value 99 "):
        checker_kind_from_pb(99)


def test_error_codes_are_grpc_status_codes() -> None:
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK:
            assert error_code_to_pb(code) == code.value[0]
    assert grpc.StatusCode.OK.value[0] == pb.ERROR_CODE_UNSPECIFIED  # "no error"


STDIO = CodeCase(
    id="s", language="python", code="", tests=(StdioTest(stdin="1 2\n", stdout="3\n"),)
)
CALL = CodeCase(
    id="f",
    language="python",
    code="",
    fn_name="f",
    time_limit_s=1.5,
    memory_limit_mb=128,
    checker=CheckerSpec(kind=CheckerKind.FLOAT, abs_tol=1e-3, rel_tol=0.0),
    tests=(
        CallTest(args=["é", 0.1], kwargs={"z": None, "a": [1, 2.5]}, expected={"b": 1, "a": "✓"}),
    ),
)


def test_problem_refs_are_pinned() -> None:
    # Refs are shared by every client and server of a fleet: a change in the canonical form
    # must be deliberate, with a new version in PROBLEM_BYTES_PREFIX.
    assert problem_bytes(STDIO) == (
        b'rlfleet.problem.v1\n{"checker":{"abs_tol":1e-06,"code":"","rel_tol":1e-06,"type":"exact"},'
        b'"memory_limit_mb":256,"tests":[{"stdin":"1 2\\n","stdout":"3\\n"}],"time_limit_s":2.0}'
    )
    assert problem_ref(STDIO) == "7c35c305c66d62530f4a14a962c6aabf05d38dc77ebcf3620485da01126af65b"
    assert problem_bytes(CALL).decode() == (
        'rlfleet.problem.v1\n{"checker":{"abs_tol":0.001,"code":"","rel_tol":0.0,"type":"float"},'
        '"fn_name":"f","memory_limit_mb":128,"tests":[{"args":["é",0.1],"expected":{"a":"✓","b":1},'
        '"kwargs":{"a":[1,2.5],"z":null}}],"time_limit_s":1.5}'
    )
    assert problem_ref(CALL) == "3483909f82e56670cdf91fae39fc15a54e7852ce4b67ac79138f671d96f085db"


def _server_ref(problem: pb.Problem, *, case_id: str = "x", code: str = "") -> str:
    """The ref the server computes for ``problem`` arriving inline."""
    req = pb.VerifyRequest(
        id=case_id, code=pb.CodeCase(language="python", code=code, problem=problem)
    )
    case = request_to_case(req, problems=None)
    assert isinstance(case, CodeCase)
    return problem_ref(case)


def test_problem_ref_is_the_same_however_the_message_was_written() -> None:
    plain = pb.Problem(
        fn_name="f",
        call_tests=[
            pb.CallTest(args_json="[1, 2]", kwargs_json='{"x": 1, "y": 2}', expected_json="3")
        ],
    )
    # The same suite written otherwise: fields in another order on the wire, the JSON spaced
    # and ordered differently, the default checker and limits spelt out.
    parts = [
        pb.Problem(time_limit_s=2.0, memory_limit_mb=256),
        pb.Problem(checker=pb.Checker(type=pb.CHECKER_KIND_EXACT, abs_tol=1e-6, rel_tol=1e-6)),
        pb.Problem(
            call_tests=[
                pb.CallTest(args_json="[1,2]", kwargs_json='{"y":2,"x":1}', expected_json=" 3")
            ]
        ),
        pb.Problem(fn_name="f"),
    ]
    wire = b"".join(p.SerializeToString() for p in parts)
    spelt_out = pb.Problem.FromString(wire)
    assert spelt_out.SerializeToString(deterministic=True) != plain.SerializeToString(
        deterministic=True
    )
    ref = _server_ref(plain)
    assert ref == _server_ref(spelt_out) == _server_ref(plain, case_id="y", code="other")
    # What a client computes from its record of the same suite.
    client_side = CodeCase(
        id="c",
        language="python",
        code="x",
        fn_name="f",
        tests=(CallTest(args=[1, 2], kwargs={"y": 2, "x": 1}, expected=3),),
    )
    assert problem_ref(client_side) == ref
    assert ref != _server_ref(pb.Problem(fn_name="g", call_tests=plain.call_tests))
    assert problem_ref(STDIO) == _server_ref(
        pb.Problem(stdio_tests=[pb.StdioTest(stdin="1 2\n", stdout="3\n")])
    )
