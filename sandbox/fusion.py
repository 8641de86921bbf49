"""SandboxFusion's ``/run_code`` API, translated to and from the verifier's own records.

Pure functions, no I/O: ``parse_run_code`` validates a decoded JSON request into a
``runcode.ProgramRun`` (errors are ``CaseError``s naming the field, ``memory_limit_MB:
expected an integer``), ``run_code_response`` turns the outcome into the response JSON.
``http_door.py`` serves them. See docs/run_code.md for what is the same as SandboxFusion and
what differs.

SandboxFusion's semantics kept here: a command's ``status`` is ``Finished`` (with its
``return_code``, negative for a signal as Python reports it), ``TimeLimitExceeded`` (no
return code) or ``Error`` (the sandbox failed: the message in ``stderr``); the response's
``status`` is ``SandboxError`` when a command has ``Error``, else ``Failed`` when one ran out
of time or exited non-zero, else ``Success``; ``run_result`` is null when compiling failed,
``compile_result`` null for languages that run from source.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any

from rlfleet.sandbox.cases import MAX_CODE_BYTES, MAX_MEMORY_MB, MAX_TIME_LIMIT_S, CaseError
from rlfleet.sandbox.languages import LANGUAGES, Language, get_language
from rlfleet.sandbox.runcode import CommandOutcome, ProgramOutcome, ProgramRun

# SandboxFusion's names for the languages this project runs (or will, once built here: a name
# whose language this server lacks is refused with the list of those it has).
LANGUAGE_NAMES = {
    "python": "python",
    "cpp": "cpp",
    "nodejs": "javascript",
    "go": "go",
    "java": "java",
    "rust": "rust",
}
# The rest of SandboxFusion's language names: known, and refused as not run here.
OTHER_NAMES = (
    "go_test",
    "php",
    "csharp",
    "bash",
    "typescript",
    "sql",
    "cuda",
    "lua",
    "R",
    "perl",
    "D_ut",
    "ruby",
    "scala",
    "julia",
    "pytest",
    "junit",
    "kotlin_script",
    "jest",
    "verilog",
    "python_gpu",
    "lean",
    "swift",
    "racket",
)
DEFAULT_TIMEOUT_S = 10.0
"""SandboxFusion's default for both ``compile_timeout`` and ``run_timeout``."""
MAX_FILES_BYTES = 32 << 20
"""All of a request's ``files`` together, decoded (they live in the run's /tmp)."""
IGNORED_FILE_MARK = "IGNORE_THIS_FILE"
"""SandboxFusion skips files whose name holds this; so do we."""


@dataclass(frozen=True, kw_only=True)
class RunCodeConfig:
    memory_mb: int = 1024
    """Memory of a run whose request sets none (``memory_limit_MB`` <= 0, SandboxFusion's
    "no limit": every run here has one)."""
    queue_wait_s: float = 600.0
    """How long a request waits for a slot while the service's queue is full, before a 504.
    SandboxFusion queues every request, and reward clients written for it (verl) score any
    other answer as a failed test, retrying only a 504: a refusal would be a wrong reward."""

    def __post_init__(self) -> None:
        if not self.queue_wait_s > 0:
            raise ValueError(f"queue_wait_s must be > 0, got {self.queue_wait_s}")
        if not 16 <= self.memory_mb <= MAX_MEMORY_MB:
            raise ValueError(f"memory_mb must be in [16, {MAX_MEMORY_MB}], got {self.memory_mb}")


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """The HTTP door (``http_door.py``)."""

    port: int = 8080
    """0 picks a free one (``HttpDoor.port`` says which). Host, TLS, largest body and drain
    time are the gRPC port's (``ServerConfig``)."""
    run_code: RunCodeConfig = field(default_factory=RunCodeConfig)
    """Defaults of ``/run_code`` requests."""


def served_names() -> list[str]:
    """The SandboxFusion language names this server runs now."""
    return [name for name, ours in LANGUAGE_NAMES.items() if ours in LANGUAGES]


def resolve_language(name: Any) -> Language:
    if not isinstance(name, str):
        raise CaseError("language", f"expected a string, got {_type(name)}")
    served = ", ".join(served_names())
    if name in LANGUAGE_NAMES:
        lang = get_language(LANGUAGE_NAMES[name])
        if lang is not None:
            return lang
        raise CaseError("language", f"{name!r} is not available on this server (it runs: {served})")
    if name in OTHER_NAMES:
        raise CaseError("language", f"{name!r} is not supported here (supported: {served})")
    raise CaseError("language", f"unknown {name!r} (supported: {served})")


def parse_run_code(obj: Any, config: RunCodeConfig = RunCodeConfig()) -> ProgramRun:
    """A ``/run_code`` request body (decoded JSON) as a ``ProgramRun``; raises ``CaseError``.

    Fields not listed in the API are ignored, as SandboxFusion does; ``null`` stands for a
    field's default.
    """
    if not isinstance(obj, dict):
        raise CaseError("body", f"expected a JSON object, got {_type(obj)}")
    if obj.get("code") is None:
        raise CaseError("code", "missing")
    code = obj["code"]
    if not isinstance(code, str):
        raise CaseError("code", f"expected a string, got {_type(code)}")
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > MAX_CODE_BYTES:
        raise CaseError("code", f"{size} bytes, more than the {MAX_CODE_BYTES} allowed")
    if obj.get("language") is None:
        raise CaseError("language", "missing")
    lang = resolve_language(obj["language"])
    stdin = obj.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise CaseError("stdin", f"expected a string or null, got {_type(stdin)}")
    fetch = obj.get("fetch_files")
    if fetch is not None and not isinstance(fetch, list):
        raise CaseError("fetch_files", f"expected a list, got {_type(fetch)}")
    if fetch:
        raise CaseError("fetch_files", "not supported: this server returns no files")
    return ProgramRun(
        language=lang,
        code=code,
        stdin=(stdin or "").encode("utf-8", "surrogatepass"),
        compile_timeout_s=_timeout(obj, "compile_timeout"),
        run_timeout_s=_timeout(obj, "run_timeout"),
        memory_mb=_memory(obj, config),
        files=_files(obj.get("files"), lang),
    )


def _timeout(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    if value is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CaseError(key, f"expected a number of seconds, got {value!r}")
    if not 0 < value <= MAX_TIME_LIMIT_S:
        raise CaseError(key, f"must be in (0, {MAX_TIME_LIMIT_S:g}] seconds, got {value!r}")
    return float(value)


def _memory(obj: dict[str, Any], config: RunCodeConfig) -> int:
    value = obj.get("memory_limit_MB")
    if value is None:
        return config.memory_mb
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CaseError("memory_limit_MB", f"expected an integer, got {value!r}")
    if value <= 0:
        return config.memory_mb
    if not 16 <= value <= MAX_MEMORY_MB:
        raise CaseError(
            "memory_limit_MB", f"must be in [16, {MAX_MEMORY_MB}] (or <= 0: default), got {value}"
        )
    return value


def _files(raw: Any, lang: Language) -> tuple[tuple[str, bytes], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise CaseError("files", f"expected an object of name: base64 content, got {_type(raw)}")
    taken = {p.rsplit("/", 1)[-1] for p in (lang.source_path, lang.artifact_path) if p}
    files: list[tuple[str, bytes]] = []
    total = 0
    for name, content in raw.items():
        where = f"files[{name!r}]"
        if content is None or IGNORED_FILE_MARK in name:
            continue
        if not isinstance(content, str):
            raise CaseError(where, f"expected base64 text, got {_type(content)}")
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise CaseError(where, "a file name in the working directory, without '/', please")
        if name in taken:
            raise CaseError(where, f"taken by the program itself in {lang.name}")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise CaseError(where, "not valid base64") from None
        total += len(data)
        if total > MAX_FILES_BYTES:
            raise CaseError("files", f"more than the {MAX_FILES_BYTES} bytes allowed in all")
        files.append((name, data))
    return tuple(files)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -- response -------------------------------------------------------------------------------


def command_result(outcome: CommandOutcome | None) -> dict[str, Any] | None:
    """SandboxFusion's ``CommandRunResult``."""
    if outcome is None:
        return None
    if outcome.label == "SE":
        return {
            "status": "Error",
            "execution_time": None,
            "return_code": None,
            "stdout": None,
            "stderr": outcome.system_error,
        }
    if outcome.timed_out:
        status, code = "TimeLimitExceeded", None
    else:
        status = "Finished"
        code = outcome.exit_code if outcome.exit_code is not None else -(outcome.signal or 0)
    return {
        "status": status,
        "execution_time": outcome.wall_s,
        "return_code": code,
        "stdout": outcome.stdout.decode("utf-8", "replace"),
        "stderr": outcome.stderr.decode("utf-8", "replace"),
    }


def run_code_response(outcome: ProgramOutcome) -> dict[str, Any]:
    """SandboxFusion's ``RunCodeResponse`` for an outcome."""
    compiled, ran = command_result(outcome.compile), command_result(outcome.run)
    commands = [c for c in (compiled, ran) if c is not None]
    status, message = "Success", ""
    errors = [c for c in commands if c["status"] == "Error"]
    if errors:
        status, message = "SandboxError", errors[0]["stderr"]
    elif any(c["status"] == "TimeLimitExceeded" or c["return_code"] != 0 for c in commands):
        status = "Failed"
    return {
        "status": status,
        "message": message,
        "compile_result": compiled,
        "run_result": ran,
        "executor_pod_name": None,
        "files": {},
    }
