"""Training problems from local files into typed ``Task`` records.

A file is JSONL (one object a line; blank lines skipped) or parquet (read with ``pyarrow``
when it is installed). Each record is parsed by one format, given explicitly or recognised
from its keys through ``FORMATS``, a table of recognisers tried in order; a record that more
than one recogniser accepts is an error unless the format is given:

=================  ==========================================================  ========
format             recognised by the keys                                      kind
=================  ==========================================================  ========
``apps``           ``question`` and ``input_output`` (APPS, TACO)               code
``codecontests``   ``description`` and ``public_tests`` or ``private_tests``    code
``livecodebench``  ``question_content`` and ``public_test_cases`` or            code
                   ``private_test_cases``
``math``           ``problem`` and ``solution`` (MATH, MATH-500)                math
``gsm8k``          ``question`` and ``answer``                                 math
=================  ==========================================================  ========

The tests and gold go into the verifier's own records (``CodeCase`` with its code left
empty, ``MathCase`` with its completion left empty), so a task's ``verification`` is what
the rollout service's ``Prompt.verification`` takes. Every error names the file, the line
(or parquet row) and the field.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlfleet.rollout.records import Verification
from rlfleet.rollout.scoring import case_for
from rlfleet.sandbox.mathcheck.extract import extract_answer
from rlfleet.sandbox.records import (
    CallTest,
    Case,
    CheckerKind,
    CheckerSpec,
    CodeCase,
    MathCase,
    StdioTest,
)

TaskType = Literal["math", "code"]


@dataclass(frozen=True, kw_only=True)
class Task:
    """One training problem: what the policy is asked and what its answer is checked against."""

    id: str
    """Unique within its data set (the record's own id, else ``<file stem>:<line>``)."""
    prompt: str
    """The problem statement as the data set gives it, no template applied."""
    verification: Verification
    """The verifier's case with the completion part left empty (``CodeCase.code``,
    ``MathCase.completion``)."""
    source: str = ""
    """The format that produced it (a ``FORMATS`` name, or ``builtin``)."""
    starter_code: str = ""
    """Code the answer must complete (LiveCodeBench, APPS ``starter_code``)."""
    frame_before: str = ""
    """Put before the completion to make what the verifier sees (see ``case_for``)."""
    frame_after: str = ""
    """Put after the completion to make what the verifier sees."""

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id: missing")
        if isinstance(self.verification, MathCase) and self.verification.completion:
            raise ValueError(f"task {self.id!r}: verification.completion must be empty")
        if isinstance(self.verification, CodeCase) and self.verification.code:
            raise ValueError(f"task {self.id!r}: verification.code must be empty")

    @property
    def task_type(self) -> TaskType:
        return "math" if isinstance(self.verification, MathCase) else "code"

    @property
    def framed(self) -> bool:
        return bool(self.frame_before or self.frame_after)

    @property
    def rollout_verification(self) -> Verification | None:
        """The spec for the rollout service to score completions itself (``Prompt.verification``),
        or None for a framed task: the service scores the completion alone, so a framed task
        is verified by the learner through the verifier's client with ``case_for``."""
        return None if self.framed else self.verification

    def case_for(self, completion: str, case_id: str) -> Case:
        """The verifier's case for one completion: ``frame_before + completion + frame_after``
        through the rollout service's own rule (math: the whole text is the completion;
        code: the last fenced code block, or the whole text without one), so an unframed
        task is checked exactly as the service would check it."""
        text = self.frame_before + completion + self.frame_after
        return case_for(self.verification, text, case_id)


class DataError(ValueError):
    """A record (or file) cannot be read; the message names where and which field."""


class RecordError(ValueError):
    """A record's field is wrong (``field``: what); ``load_tasks`` adds the file and line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    format: str | None = None
    """A ``FORMATS`` name for every record; None: recognised per record from its keys."""
    language: str = "python"
    """The language code answers are written in (the verifier's language name)."""
    time_limit_s: float = 2.0
    """Per-test CPU time limit when the record gives none."""
    memory_limit_mb: int = 256
    """Memory limit when the record gives none."""
    checker: CheckerKind = CheckerKind.TOKENS
    """How stdout is compared for stdin/stdout tests (tokens: whitespace-insensitive, as the
    data sets' own graders are)."""
    max_tests: int = 0
    """Keep at most this many tests per problem (public ones first); 0: all."""

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format: unknown {self.format!r} (one of {', '.join(FORMATS)})")
        if self.max_tests < 0:
            raise ValueError("max_tests: must be >= 0")


# -- field helpers ---------------------------------------------------------------------------


def _str(obj: dict[str, Any], key: str) -> str:
    if key not in obj or obj[key] is None:
        raise RecordError(key, "missing")
    value = obj[key]
    if not isinstance(value, str):
        raise RecordError(key, f"expected a string, got {type(value).__name__}")
    return value


def _json_field(obj: dict[str, Any], key: str) -> Any:
    """A field that data sets store as a JSON string (or already decoded)."""
    value = obj.get(key)
    if value is None:
        raise RecordError(key, "missing")
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise RecordError(key, f"not valid JSON: {e}") from None


def _record_id(obj: dict[str, Any], keys: tuple[str, ...], fallback: str) -> str:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return fallback


def _text(value: Any, field: str) -> str:
    """A test's input or output: a string, or a list of lines (some APPS/TACO records)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value) + "\n"
    raise RecordError(field, f"expected a string or a list of strings, got {type(value).__name__}")


def _code_case(
    tests: list[StdioTest] | list[CallTest],
    fn_name: str | None,
    config: LoadConfig,
    time_limit_s: float | None = None,
    memory_limit_mb: int | None = None,
) -> CodeCase:
    if not tests:
        raise RecordError("tests", "none found")
    if config.max_tests:
        tests = tests[: config.max_tests]
    return CodeCase(
        id="",
        language=config.language,
        code="",
        tests=tuple(tests),  # type: ignore[arg-type]  # all stdio or all call, by construction
        fn_name=fn_name,
        time_limit_s=time_limit_s or config.time_limit_s,
        memory_limit_mb=memory_limit_mb or config.memory_limit_mb,
        checker=CheckerSpec(kind=config.checker),
    )


# -- formats ---------------------------------------------------------------------------------


def _unwrap(expected: Any) -> Any:
    # APPS wraps each expected return value in a one-element list (its grader accepts the
    # value or the wrapped value); the verifier compares with one value.
    return expected[0] if isinstance(expected, list) and len(expected) == 1 else expected


def parse_apps(obj: dict[str, Any], fallback_id: str, config: LoadConfig) -> Task:
    """APPS / TACO: ``question``; ``input_output`` a JSON string ``{"inputs": [...],
    "outputs": [...], "fn_name": optional}``; ``starter_code`` optional."""
    io_spec = _json_field(obj, "input_output")
    if not isinstance(io_spec, dict):
        raise RecordError("input_output", "expected an object with inputs and outputs")
    inputs, outputs = io_spec.get("inputs"), io_spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise RecordError("input_output", "inputs and outputs must be lists")
    if len(inputs) != len(outputs):
        raise RecordError("input_output", f"{len(inputs)} inputs but {len(outputs)} outputs")
    fn_name = io_spec.get("fn_name")
    if fn_name is not None and (not isinstance(fn_name, str) or not fn_name.isidentifier()):
        raise RecordError("input_output.fn_name", "expected a Python identifier")
    tests: list[StdioTest] | list[CallTest]
    if fn_name:
        calls = []
        for i, args in enumerate(inputs):
            if not isinstance(args, list):
                raise RecordError(f"input_output.inputs[{i}]", "expected a list of arguments")
            calls.append(CallTest(args=args, expected=_unwrap(outputs[i])))
        tests = calls
    else:
        tests = [
            StdioTest(
                stdin=_text(i, f"input_output.inputs[{n}]"),
                stdout=_text(o, f"input_output.outputs[{n}]"),
            )
            for n, (i, o) in enumerate(zip(inputs, outputs, strict=True))
        ]
    starter = obj.get("starter_code") or ""
    return Task(
        id=_record_id(obj, ("problem_id", "id"), fallback_id),
        prompt=_str(obj, "question"),
        verification=_code_case(tests, fn_name or None, config),
        source="apps",
        starter_code=starter if isinstance(starter, str) else "",
    )


def _io_lists(obj: dict[str, Any], key: str) -> list[StdioTest]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, dict):
        raise RecordError(key, "expected an object with input and output lists")
    inputs, outputs = value.get("input") or [], value.get("output") or []
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise RecordError(key, "input and output must be lists")
    if len(inputs) != len(outputs):
        raise RecordError(key, f"{len(inputs)} inputs but {len(outputs)} outputs")
    return [
        StdioTest(stdin=_text(i, f"{key}.input[{n}]"), stdout=_text(o, f"{key}.output[{n}]"))
        for n, (i, o) in enumerate(zip(inputs, outputs, strict=True))
    ]


def parse_codecontests(obj: dict[str, Any], fallback_id: str, config: LoadConfig) -> Task:
    """CodeContests: ``description``; ``public_tests`` / ``private_tests`` objects with
    ``input`` and ``output`` lists; ``time_limit`` ``{"seconds", "nanos"}`` and
    ``memory_limit_bytes`` optional."""
    tests = _io_lists(obj, "public_tests") + _io_lists(obj, "private_tests")
    limit = obj.get("time_limit")
    time_limit_s = None
    if isinstance(limit, dict):
        seconds = (limit.get("seconds") or 0) + (limit.get("nanos") or 0) / 1e9
        time_limit_s = min(seconds, 60.0) or None
    memory = obj.get("memory_limit_bytes")
    memory_mb = min(int(memory) >> 20, 8192) if isinstance(memory, int) and memory > 0 else None
    return Task(
        id=_record_id(obj, ("name", "id"), fallback_id),
        prompt=_str(obj, "description"),
        verification=_code_case(tests, None, config, time_limit_s, memory_mb or None),
        source="codecontests",
    )


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused {module}.{name}: plain data only")


def _lcb_cases(obj: dict[str, Any], key: str) -> list[Any]:
    """LiveCodeBench test cases: a JSON string, or (its released private tests) a JSON
    string pickled, zlib-compressed and base64-encoded. The pickle is read with no globals
    allowed, so it can only yield plain data."""
    raw = obj.get(key)
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            try:
                unpacked = _NoGlobals(io.BytesIO(zlib.decompress(base64.b64decode(raw)))).load()
                raw = json.loads(unpacked) if isinstance(unpacked, str | bytes) else unpacked
            except (ValueError, zlib.error, pickle.UnpicklingError, EOFError) as e:
                raise RecordError(key, f"neither JSON nor packed JSON: {e}") from None
    if not isinstance(raw, list):
        raise RecordError(key, "expected a list of test cases")
    return raw


def parse_livecodebench(obj: dict[str, Any], fallback_id: str, config: LoadConfig) -> Task:
    """LiveCodeBench: ``question_content``; ``public_test_cases`` / ``private_test_cases``
    lists of ``{"input", "output", "testtype": "stdin"|"functional"}``; functional tests give
    one JSON value per input line (the arguments) and the JSON return value; ``metadata``
    (a JSON string) gives ``func_name``; ``starter_code`` the class to complete."""
    cases = [
        (key, i, c)
        for key in ("public_test_cases", "private_test_cases")
        for i, c in enumerate(_lcb_cases(obj, key))
    ]
    for key, i, c in cases:
        if not isinstance(c, dict):
            raise RecordError(f"{key}[{i}]", "expected an object")
    kinds = {c.get("testtype") for _, _, c in cases}
    if not kinds <= {"stdin", "functional"} or len(kinds) > 1:
        got = ", ".join(sorted(map(str, kinds)))
        raise RecordError("testtype", f"expected all stdin or all functional, got {got}")
    fn_name = None
    tests: list[StdioTest] | list[CallTest]
    if kinds == {"functional"}:
        metadata = _json_field(obj, "metadata")
        fn_name = metadata.get("func_name") if isinstance(metadata, dict) else None
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise RecordError("metadata.func_name", "missing for functional tests")
        calls = []
        for key, i, c in cases:
            where = f"{key}[{i}]"
            try:
                args = [json.loads(line) for line in _str(c, "input").splitlines() if line.strip()]
                expected = json.loads(_str(c, "output"))
            except json.JSONDecodeError as e:
                raise RecordError(where, f"functional test is not JSON: {e}") from None
            calls.append(CallTest(args=args, expected=expected))
        tests = calls
    else:
        tests = [StdioTest(stdin=_str(c, "input"), stdout=_str(c, "output")) for _, _, c in cases]
    starter = obj.get("starter_code") or ""
    return Task(
        id=_record_id(obj, ("question_id", "id"), fallback_id),
        prompt=_str(obj, "question_content"),
        verification=_code_case(tests, fn_name, config),
        source="livecodebench",
        starter_code=starter if isinstance(starter, str) else "",
    )


def parse_math(obj: dict[str, Any], fallback_id: str, config: LoadConfig) -> Task:
    """MATH: ``problem``; ``solution`` whose ``\\boxed{}`` holds the gold (taken with the
    verifier's own extraction); an ``answer`` field (MATH-500) is the gold when present."""
    solution = _str(obj, "solution")
    answer = obj.get("answer")
    gold = answer.strip() if isinstance(answer, str) and answer.strip() else None
    if gold is None:
        gold = extract_answer(solution)
        if gold is None:
            raise RecordError("solution", "no \\boxed{} answer to take the gold from")
    return Task(
        id=_record_id(obj, ("unique_id", "id"), fallback_id),
        prompt=_str(obj, "problem"),
        verification=MathCase(id="", completion="", gold=gold),
        source="math",
    )


def parse_gsm8k(obj: dict[str, Any], fallback_id: str, config: LoadConfig) -> Task:
    """GSM8K: ``question``; ``answer`` the worked solution ending ``#### N`` (the gold is N,
    thousands separators removed)."""
    answer = _str(obj, "answer")
    marker = answer.rfind("####")
    if marker < 0:
        raise RecordError("answer", "no '#### N' final answer")
    gold = answer[marker + 4 :].strip().replace(",", "")
    if not gold:
        raise RecordError("answer", "empty after '####'")
    return Task(
        id=_record_id(obj, ("id",), fallback_id),
        prompt=_str(obj, "question"),
        verification=MathCase(id="", completion="", gold=gold),
        source="gsm8k",
    )


Parser = Callable[[dict[str, Any], str, LoadConfig], Task]


@dataclass(frozen=True, kw_only=True)
class Format:
    name: str
    parse: Parser
    needs: tuple[str, ...]
    """Keys a record must have to be recognised as this format."""
    needs_one_of: tuple[str, ...] = ()
    """And at least one of these, when given."""

    def recognises(self, obj: dict[str, Any]) -> bool:
        return all(k in obj for k in self.needs) and (
            not self.needs_one_of or any(k in obj for k in self.needs_one_of)
        )


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(name="apps", parse=parse_apps, needs=("question", "input_output")),
        Format(
            name="codecontests",
            parse=parse_codecontests,
            needs=("description",),
            needs_one_of=("public_tests", "private_tests"),
        ),
        Format(
            name="livecodebench",
            parse=parse_livecodebench,
            needs=("question_content",),
            needs_one_of=("public_test_cases", "private_test_cases"),
        ),
        Format(name="math", parse=parse_math, needs=("problem", "solution")),
        Format(name="gsm8k", parse=parse_gsm8k, needs=("question", "answer")),
    )
}


def recognise(obj: dict[str, Any]) -> Format:
    """The one format whose recogniser accepts ``obj``; raises ``RecordError`` otherwise."""
    found = [f for f in FORMATS.values() if f.recognises(obj)]
    if len(found) == 1:
        return found[0]
    keys = ", ".join(sorted(obj)[:12])
    if not found:
        raise RecordError("record", f"no known format has these keys ({keys}); give the format")
    names = " and ".join(f.name for f in found)
    raise RecordError("record", f"could be {names}; give the format")


def parse_record(obj: Any, fallback_id: str, config: LoadConfig = LoadConfig()) -> Task:
    if not isinstance(obj, dict):
        raise RecordError("record", f"expected a JSON object, got {type(obj).__name__}")
    fmt = FORMATS[config.format] if config.format else recognise(obj)
    return fmt.parse(obj, fallback_id, config)


# -- files -----------------------------------------------------------------------------------


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON: {e}") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert to JSONL"
        ) from None
    for n, row in enumerate(pq.read_table(path).to_pylist(), 1):
        yield f"{path}: row {n}", row


READERS: dict[str, Callable[[Path], Iterator[tuple[str, Any]]]] = {
    ".jsonl": _jsonl_rows,
    ".json": _jsonl_rows,
    ".parquet": _parquet_rows,
}


def load_tasks(
    path: str | Path | tuple[str | Path, ...] | list[str | Path],
    config: LoadConfig = LoadConfig(),
) -> list[Task]:
    """Every record of ``path`` (or of several files, in order) as a ``Task``; raises
    ``DataError`` naming the line and field of the first bad record, or an id seen twice."""
    if isinstance(path, tuple | list):
        tasks: list[Task] = []
        first: dict[str, Path] = {}
        for one in map(Path, path):
            for task in load_tasks(one, config):
                if task.id in first:
                    raise DataError(f"{one}: id {task.id!r} already used in {first[task.id]}")
                first[task.id] = one
                tasks.append(task)
        return tasks
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type (one of {', '.join(READERS)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    tasks = []
    seen: dict[str, str] = {}
    for where, obj in reader(path):
        fallback = f"{path.stem}:{where.rsplit(':', 1)[-1].strip().removeprefix('row ')}"
        try:
            task = parse_record(obj, fallback, config)
        except RecordError as e:
            raise DataError(f"{where}: {e}") from None
        if task.id in seen:
            raise DataError(f"{where}: id {task.id!r} already used at {seen[task.id]}")
        seen[task.id] = where
        tasks.append(task)
    return tasks
