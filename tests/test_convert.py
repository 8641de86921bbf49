"""Records survive the trip through the proto messages; enums map one to one."""

from __future__ import annotations

import grpc
import pytest

from rlfleet.sandbox.cases import CaseError
from rlfleet.sandbox.convert import (
    UnknownEnumValue,
    case_to_request,
    checker_kind_from_pb,
    error_code_to_pb,
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
    cases = [
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
