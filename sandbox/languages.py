"""The languages a submission may be written in: a table, so adding one is a few lines.

A language either runs inside the worker's warm interpreter (Python: no exec, no
interpreter start per test) or is compiled once per submission in the sandbox and its
artifact executed per test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Language:
    name: str
    in_process_python: bool = False
    """Run in the worker's forked interpreter (fast path, Python only)."""
    source_path: str = ""
    """Where the source is placed in the sandbox's /tmp for compiling."""
    compile_argv: tuple[str, ...] = ()
    """Compiler command; empty for languages that run from source."""
    artifact_path: str = ""
    """What the compiler leaves behind, kept and placed again for each test run."""
    run_argv: tuple[str, ...] = ()
    compile_time_s: float = 20.0
    """Wall-time limit for compiling (CPU limit is the same)."""
    compile_memory_mb: int = 1024
    supports_call: bool = False
    """Whether function-call tests (``fn_name``) are supported."""
    supports_test_code: bool = False
    """Whether test-code tests (``test_code``) are supported."""


LANGUAGES: dict[str, Language] = {
    "python": Language(
        name="python", in_process_python=True, supports_call=True, supports_test_code=True
    ),
    "cpp": Language(
        name="cpp",
        source_path="/tmp/main.cpp",
        compile_argv=(
            "/usr/bin/g++",
            "-O2",
            "-std=gnu++17",
            "-pipe",
            "-w",
            "-o",
            "/tmp/main",
            "/tmp/main.cpp",
        ),
        artifact_path="/tmp/main",
        run_argv=("/tmp/main",),
    ),
}
ALIASES = {"python3": "python", "py": "python", "c++": "cpp", "cpp17": "cpp"}


def get_language(name: str) -> Language | None:
    key = name.strip().lower()
    return LANGUAGES.get(ALIASES.get(key, key))
