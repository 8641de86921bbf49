from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_AC: _ClassVar[Verdict]
    VERDICT_WA: _ClassVar[Verdict]
    VERDICT_TLE: _ClassVar[Verdict]
    VERDICT_MLE: _ClassVar[Verdict]
    VERDICT_RE: _ClassVar[Verdict]
    VERDICT_CE: _ClassVar[Verdict]
    VERDICT_OLE: _ClassVar[Verdict]
    VERDICT_SE: _ClassVar[Verdict]

class CheckerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKER_KIND_UNSPECIFIED: _ClassVar[CheckerKind]
    CHECKER_KIND_EXACT: _ClassVar[CheckerKind]
    CHECKER_KIND_TOKENS: _ClassVar[CheckerKind]
    CHECKER_KIND_FLOAT: _ClassVar[CheckerKind]
    CHECKER_KIND_CUSTOM: _ClassVar[CheckerKind]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_CANCELLED: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_ARGUMENT: _ClassVar[ErrorCode]
    ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_ALREADY_EXISTS: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION_DENIED: _ClassVar[ErrorCode]
    ERROR_CODE_RESOURCE_EXHAUSTED: _ClassVar[ErrorCode]
    ERROR_CODE_FAILED_PRECONDITION: _ClassVar[ErrorCode]
    ERROR_CODE_ABORTED: _ClassVar[ErrorCode]
    ERROR_CODE_OUT_OF_RANGE: _ClassVar[ErrorCode]
    ERROR_CODE_UNIMPLEMENTED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_DATA_LOSS: _ClassVar[ErrorCode]
    ERROR_CODE_UNAUTHENTICATED: _ClassVar[ErrorCode]
VERDICT_UNSPECIFIED: Verdict
VERDICT_AC: Verdict
VERDICT_WA: Verdict
VERDICT_TLE: Verdict
VERDICT_MLE: Verdict
VERDICT_RE: Verdict
VERDICT_CE: Verdict
VERDICT_OLE: Verdict
VERDICT_SE: Verdict
CHECKER_KIND_UNSPECIFIED: CheckerKind
CHECKER_KIND_EXACT: CheckerKind
CHECKER_KIND_TOKENS: CheckerKind
CHECKER_KIND_FLOAT: CheckerKind
CHECKER_KIND_CUSTOM: CheckerKind
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_CANCELLED: ErrorCode
ERROR_CODE_UNKNOWN: ErrorCode
ERROR_CODE_INVALID_ARGUMENT: ErrorCode
ERROR_CODE_DEADLINE_EXCEEDED: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_ALREADY_EXISTS: ErrorCode
ERROR_CODE_PERMISSION_DENIED: ErrorCode
ERROR_CODE_RESOURCE_EXHAUSTED: ErrorCode
ERROR_CODE_FAILED_PRECONDITION: ErrorCode
ERROR_CODE_ABORTED: ErrorCode
ERROR_CODE_OUT_OF_RANGE: ErrorCode
ERROR_CODE_UNIMPLEMENTED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_DATA_LOSS: ErrorCode
ERROR_CODE_UNAUTHENTICATED: ErrorCode

class StdioTest(_message.Message):
    __slots__ = ("stdin", "stdout")
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    stdin: str
    stdout: str
    def __init__(self, stdin: _Optional[str] = ..., stdout: _Optional[str] = ...) -> None: ...

class CallTest(_message.Message):
    __slots__ = ("args_json", "kwargs_json", "expected_json")
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_JSON_FIELD_NUMBER: _ClassVar[int]
    args_json: str
    kwargs_json: str
    expected_json: str
    def __init__(self, args_json: _Optional[str] = ..., kwargs_json: _Optional[str] = ..., expected_json: _Optional[str] = ...) -> None: ...

class CodeTest(_message.Message):
    __slots__ = ("test_code",)
    TEST_CODE_FIELD_NUMBER: _ClassVar[int]
    test_code: str
    def __init__(self, test_code: _Optional[str] = ...) -> None: ...

class Checker(_message.Message):
    __slots__ = ("type", "abs_tol", "rel_tol", "code")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ABS_TOL_FIELD_NUMBER: _ClassVar[int]
    REL_TOL_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    type: CheckerKind
    abs_tol: float
    rel_tol: float
    code: str
    def __init__(self, type: _Optional[_Union[CheckerKind, str]] = ..., abs_tol: _Optional[float] = ..., rel_tol: _Optional[float] = ..., code: _Optional[str] = ...) -> None: ...

class Problem(_message.Message):
    __slots__ = ("stdio_tests", "call_tests", "fn_name", "checker", "time_limit_s", "memory_limit_mb", "code_tests")
    STDIO_TESTS_FIELD_NUMBER: _ClassVar[int]
    CALL_TESTS_FIELD_NUMBER: _ClassVar[int]
    FN_NAME_FIELD_NUMBER: _ClassVar[int]
    CHECKER_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_MB_FIELD_NUMBER: _ClassVar[int]
    CODE_TESTS_FIELD_NUMBER: _ClassVar[int]
    stdio_tests: _containers.RepeatedCompositeFieldContainer[StdioTest]
    call_tests: _containers.RepeatedCompositeFieldContainer[CallTest]
    fn_name: str
    checker: Checker
    time_limit_s: float
    memory_limit_mb: int
    code_tests: _containers.RepeatedCompositeFieldContainer[CodeTest]
    def __init__(self, stdio_tests: _Optional[_Iterable[_Union[StdioTest, _Mapping]]] = ..., call_tests: _Optional[_Iterable[_Union[CallTest, _Mapping]]] = ..., fn_name: _Optional[str] = ..., checker: _Optional[_Union[Checker, _Mapping]] = ..., time_limit_s: _Optional[float] = ..., memory_limit_mb: _Optional[int] = ..., code_tests: _Optional[_Iterable[_Union[CodeTest, _Mapping]]] = ...) -> None: ...

class ProblemRef(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class CodeCase(_message.Message):
    __slots__ = ("language", "code", "problem", "problem_ref", "early_stop")
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_REF_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOP_FIELD_NUMBER: _ClassVar[int]
    language: str
    code: str
    problem: Problem
    problem_ref: str
    early_stop: bool
    def __init__(self, language: _Optional[str] = ..., code: _Optional[str] = ..., problem: _Optional[_Union[Problem, _Mapping]] = ..., problem_ref: _Optional[str] = ..., early_stop: _Optional[bool] = ...) -> None: ...

class MathCase(_message.Message):
    __slots__ = ("completion", "gold", "extraction")
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    GOLD_FIELD_NUMBER: _ClassVar[int]
    EXTRACTION_FIELD_NUMBER: _ClassVar[int]
    completion: str
    gold: str
    extraction: str
    def __init__(self, completion: _Optional[str] = ..., gold: _Optional[str] = ..., extraction: _Optional[str] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("id", "code", "math")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MATH_FIELD_NUMBER: _ClassVar[int]
    id: str
    code: CodeCase
    math: MathCase
    def __init__(self, id: _Optional[str] = ..., code: _Optional[_Union[CodeCase, _Mapping]] = ..., math: _Optional[_Union[MathCase, _Mapping]] = ...) -> None: ...

class TestResult(_message.Message):
    __slots__ = ("verdict", "time_s", "memory_mb", "wall_s", "message")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    time_s: float
    memory_mb: float
    wall_s: float
    message: str
    def __init__(self, verdict: _Optional[_Union[Verdict, str]] = ..., time_s: _Optional[float] = ..., memory_mb: _Optional[float] = ..., wall_s: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("id", "verdict", "passed", "total", "reward", "tests", "message", "extracted", "error", "error_code")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TESTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXTRACTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    verdict: Verdict
    passed: int
    total: int
    reward: float
    tests: _containers.RepeatedCompositeFieldContainer[TestResult]
    message: str
    extracted: str
    error: str
    error_code: ErrorCode
    def __init__(self, id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., passed: _Optional[int] = ..., total: _Optional[int] = ..., reward: _Optional[float] = ..., tests: _Optional[_Iterable[_Union[TestResult, _Mapping]]] = ..., message: _Optional[str] = ..., extracted: _Optional[str] = ..., error: _Optional[str] = ..., error_code: _Optional[_Union[ErrorCode, str]] = ...) -> None: ...

class VerifyBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[VerifyRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[VerifyRequest, _Mapping]]] = ...) -> None: ...

class VerifyBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[VerifyResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[VerifyResponse, _Mapping]]] = ...) -> None: ...
