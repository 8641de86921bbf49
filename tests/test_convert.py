"""Records survive the trip through the proto messages."""

from __future__ import annotations

from rlfleet.sandbox.convert import (
    case_to_request,
    request_to_case,
    response_to_result,
    result_to_response,
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
