"""The languages a submission may be written in: a table, so adding one is a few lines.

A language either runs inside the worker's warm interpreter (Python: no exec, no
interpreter start per test) or is prepared once per submission in the sandbox (compiled,
or for JavaScript syntax-checked) and its artifact placed again and executed per test.

Commands are templates. ``{file}`` and ``{main}`` come from the source (only Java names
them: the file after its public class, the class that declares ``main``); ``{heap_mb}`` is
the memory a managed runtime may give the program's heap: the test's memory limit less what
the runtime needs for itself (``runtime_mb``), so that its collector works within the limit
instead of growing the heap into the kernel's OOM killer (docs/sandbox.md, "Languages").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Threads a managed runtime may start: every task counts against the run's pids limit, and
# runtimes size their pools by the host's CPUs (64 on a large host), not by that limit.
GO_ENV = (("GOMAXPROCS", "2"), ("GOCACHE", "/tmp/.gocache"), ("GOTELEMETRY", "off"))
JAVA_HOME = "/usr/lib/jvm/default-java"
# The compiler's own JVMs: short-lived, so the client compiler only and the serial
# collector (two compiler threads at most, one GC thread), heaps well inside the build's
# memory limit.
JAVA_ENV = (
    ("JAVA", JAVA_HOME),
    ("JVM", "-J-XX:+UseSerialGC -J-XX:TieredStopAtLevel=1 -J-XX:-UsePerfData"),
)


class SourceError(ValueError):
    """The source cannot be built as asked (a Java source that declares no ``main``): CE."""


@dataclass(frozen=True, kw_only=True)
class Command:
    """One command of a run: argv and the environment added to the sandbox's clean one."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Language:
    name: str
    in_process_python: bool = False
    """Run in the worker's forked interpreter (fast path, Python only)."""
    source_path: str = ""
    """Where the source is placed in the sandbox's /tmp for compiling (a template)."""
    compile_argv: tuple[str, ...] = ()
    """Compiler command (templates); empty for languages that run from source."""
    compile_env: tuple[tuple[str, str], ...] = ()
    artifact_path: str = ""
    """What the compiler leaves behind, kept and placed again for each test run."""
    run_argv: tuple[str, ...] = ()
    """The test's command (templates)."""
    run_env: tuple[tuple[str, str], ...] = ()
    """Added to the run's environment (templates)."""
    runtime_mb: int = 0
    """Memory the runtime needs beside the program's heap; ``{heap_mb}`` is the limit less
    this, and never under half the limit."""
    needs_cgroups: bool = False
    """Its runtime reserves far more address space (and threads) than it uses, which the
    local backend's rlimit fallback (rootless without cgroups) counts as used: it cannot
    run there, and such cases are SE (our limitation, never the program's verdict)."""
    memory_errors: tuple[str, ...] = ()
    """What the runtime writes at the end of stderr when it refuses an allocation (MLE)."""
    names: Callable[[str], Mapping[str, str]] | None = None
    """Template values read from the source (raises ``SourceError``)."""
    packages: tuple[str, ...] = ()
    """The Debian packages its toolchain comes from (deploy/host/setup.sh, the image)."""
    probe: str = ""
    """A program that prints its first input line back: ``rlfleet sandbox prepare`` runs it."""
    compile_time_s: float = 20.0
    """Wall-time limit for compiling (CPU limit is the same)."""
    compile_memory_mb: int = 1024
    supports_call: bool = False
    """Whether function-call tests (``fn_name``) are supported."""
    supports_test_code: bool = False
    """Whether test-code tests (``test_code``) are supported."""

    def _names(self, code: str) -> Mapping[str, str]:
        return self.names(code) if self.names is not None else {}

    def compile_command(self, code: str) -> tuple[str, Command]:
        """Where the source goes, and the command that builds it (``SourceError``: CE)."""
        names = self._names(code)
        argv = tuple(a.format_map(names) for a in self.compile_argv)
        return self.source_path.format_map(names), Command(argv=argv, env=self.compile_env)

    def run_command(self, code: str, memory_mb: int) -> Command:
        """The command of one test under a memory limit of ``memory_mb``."""
        heap = max(memory_mb - self.runtime_mb, memory_mb // 2) if self.runtime_mb else memory_mb
        values = {**self._names(code), "heap_mb": str(heap), "memory_mb": str(memory_mb)}
        return Command(
            argv=tuple(a.format_map(values) for a in self.run_argv),
            env=tuple((k, v.format_map(values)) for k, v in self.run_env),
        )


# ---------------------------------------------------------------------------- Java

_JAVA_NOISE = re.compile(
    r'"""[\s\S]*?"""|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|//[^\n]*|/\*[\s\S]*?\*/'
)
_JAVA_TOKENS = re.compile(
    r"(?P<decl>(?<![\w$.])(?P<mods>(?:(?:public|protected|private|abstract|final|static"
    r"|strictfp|sealed|non-sealed)\s+)*)(?:class|interface|enum|record)\s+(?P<name>[^\W\d][\w$]*))"
    r"|(?P<main>(?<![\w$])static\s[^;{}()]*?\bvoid\s+main\s*\()"
    r"|(?P<open>\{)|(?P<close>\})"
)
_JAVA_PACKAGE = re.compile(r"^\s*package\s+([^\W\d][\w$]*(?:\s*\.\s*[^\W\d][\w$]*)*)\s*;")


def java_names(code: str) -> dict[str, str]:
    """``file``: the public top-level class (the source's file must be named after it), else
    the top-level class holding ``main``; ``main``: the binary name of the class declaring
    ``static void main`` (the public class's when several do), with its package."""
    text = _JAVA_NOISE.sub(lambda m: '""' if m.group().startswith(('"', "'")) else " ", code)
    package = _JAVA_PACKAGE.match(text)
    prefix = re.sub(r"\s+", "", package.group(1)) + "." if package else ""
    stack: list[str | None] = []  # the names of the classes whose bodies are open
    pending: str | None = None
    public = ""
    mains: list[list[str]] = []
    for m in _JAVA_TOKENS.finditer(text):
        if m.group("decl"):
            pending = m.group("name")
            if not stack and "public" in m.group("mods").split():
                public = pending
        elif m.group("main"):
            named = [n for n in stack if n is not None]
            if named:
                mains.append(named)
        elif m.group("open"):
            stack.append(pending)
            pending = None
        elif stack:
            stack.pop()
    if not mains:
        raise SourceError("no class declares `public static void main(String[] args)`")
    chosen = next((path for path in mains if path[0] == public), mains[0])
    return {"file": public or chosen[0], "main": prefix + "$".join(chosen)}


LANGUAGES: dict[str, Language] = {
    "python": Language(
        name="python",
        packages=("python3",),
        probe=("print(input())\n"),
        in_process_python=True,
        memory_errors=("MemoryError",),
        supports_call=True,
        supports_test_code=True,
    ),
    "cpp": Language(
        name="cpp",
        packages=("g++",),
        probe=(
            "#include <iostream>\n#include <string>\nint main() { std::string s;"
            " std::getline(std::cin, s); std::cout << s << std::endl; }\n"
        ),
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
        memory_errors=("std::bad_alloc",),
    ),
    "java": Language(
        name="java",
        needs_cgroups=True,
        packages=("default-jdk-headless",),
        probe=(
            "public class Main { public static void main(String[] a) {"
            " System.out.println(new java.util.Scanner(System.in).nextLine()); } }\n"
        ),
        source_path="/tmp/{file}.java",
        # javac leaves a class file per class: one jar carries them all to the tests.
        compile_argv=(
            "/bin/sh",
            "-c",
            "$JAVA/bin/javac $JVM -J-Xmx640m -J-Xss16m -encoding UTF-8 -nowarn -d /tmp/classes"
            ' "/tmp/$1.java" && exec $JAVA/bin/jar $JVM -J-Xmx128m'
            ' --create --file /tmp/main.jar --main-class "$2" -C /tmp/classes .',
            "javac",
            "{file}",
            "{main}",
        ),
        compile_env=JAVA_ENV,
        artifact_path="/tmp/main.jar",
        run_argv=(
            f"{JAVA_HOME}/bin/java",
            "-XX:+UseSerialGC",
            "-XX:CICompilerCount=2",
            "-XX:-UsePerfData",
            "-Xss64m",
            "-Xmx{heap_mb}m",
            "-jar",
            "/tmp/main.jar",
        ),
        runtime_mb=48,
        # Not "unable to create native thread": that is the pids limit, not memory.
        memory_errors=(
            "java.lang.OutOfMemoryError: Java heap space",
            "java.lang.OutOfMemoryError: Requested array size exceeds VM limit",
            "java.lang.OutOfMemoryError: GC overhead limit exceeded",
            "java.lang.OutOfMemoryError: Metaspace",
        ),
        names=java_names,
    ),
    "javascript": Language(
        name="javascript",
        needs_cgroups=True,
        packages=("nodejs",),
        probe=("console.log(require('fs').readFileSync(0, 'utf8').split('\\n')[0]);\n"),
        source_path="/tmp/main.js",
        # No compiler: a syntax check (CE), and the checked source is the artifact.
        compile_argv=("/usr/bin/node", "--check", "/tmp/main.js"),
        artifact_path="/tmp/main.js",
        run_argv=(
            "/usr/bin/node",
            "--max-old-space-size={heap_mb}",
            "--v8-pool-size=1",
            "--stack-size=32768",
            "/tmp/main.js",
        ),
        runtime_mb=48,
        memory_errors=("JavaScript heap out of memory",),
    ),
    "go": Language(
        name="go",
        needs_cgroups=True,
        packages=("golang-go",),
        probe=(
            'package main\nimport ("bufio"; "fmt"; "os")\n'
            "func main() { s := bufio.NewScanner(os.Stdin); s.Scan(); fmt.Println(s.Text()) }\n"
        ),
        source_path="/tmp/main.go",
        compile_argv=("/usr/bin/go", "build", "-p", "2", "-o", "/tmp/main", "/tmp/main.go"),
        compile_env=(*GO_ENV, ("GO111MODULE", "off")),
        artifact_path="/tmp/main",
        run_argv=("/tmp/main",),
        # A soft limit: the collector works harder near it instead of letting the heap
        # double into the kernel's OOM killer.
        run_env=(("GOMAXPROCS", "2"), ("GOMEMLIMIT", "{heap_mb}MiB")),
        runtime_mb=16,
        memory_errors=("runtime: out of memory",),
    ),
    "rust": Language(
        name="rust",
        packages=("rustc",),
        probe=(
            "fn main() { let mut s = String::new(); std::io::stdin().read_line(&mut s).unwrap();"
            ' print!("{}", s); }\n'
        ),
        source_path="/tmp/main.rs",
        compile_argv=(
            "/usr/bin/rustc",
            "--edition=2021",
            "-O",
            "-C",
            "strip=symbols",
            "-o",
            "/tmp/main",
            "/tmp/main.rs",
        ),
        artifact_path="/tmp/main",
        run_argv=("/tmp/main",),
        memory_errors=("memory allocation of",),
    ),
}
ALIASES = {
    "python3": "python",
    "py": "python",
    "c++": "cpp",
    "cpp17": "cpp",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
    "golang": "go",
    "rs": "rust",
}


def get_language(name: str) -> Language | None:
    key = name.strip().lower()
    return LANGUAGES.get(ALIASES.get(key, key))
