"""Every `rlfleet` command fails the same way (docs/cli.md): each line on stderr carries the
command's prefix, no traceback unless -v, and the exit code says what happened: 0 the work
was done, 1 it could not be done, 2 bad usage or invalid input.

Each failure mode runs the real CLI as a subprocess, on loopback only. The Docker cases point
DOCKER_HOST at a socket that does not exist, so they do not depend on this machine's engine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]
MATH_OK = '{"id": "ok", "kind": "math", "completion": "\\\\boxed{1}", "gold": "1"}'
TIMEOUT_S = 60.0
# One float32 tensor "w" of shape [1], value 0 (a model directory for push-weights).
TINY_SAFETENSORS = (
    b"@\x00\x00\x00\x00\x00\x00\x00"
    + b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'.ljust(64)
    + bytes(4)
)


@dataclass(frozen=True)
class Failure:
    """One way to use a command wrongly, and how it must end."""

    args: str
    """Arguments, split on spaces after ``{name}`` placeholders are filled (see ``places``)."""
    prefix: str
    """What every stderr line starts with (``rlfleet <command>:``)."""
    exit_code: int
    says: str = ""
    """Part of the error line."""
    engine: bool = False
    """Starts the local engine (needs root)."""
    env: dict[str, str] = field(default_factory=dict)


NO_DOCKER = {"DOCKER_HOST": "unix:///tmp/rlfleet-test-no-such-engine.sock"}

FAILURES = {
    # rlfleet itself
    "no command": Failure("", "rlfleet:", 2, "required: COMMAND"),
    "unknown command": Failure("frob", "rlfleet:", 2, "invalid choice: 'frob'"),
    "unknown flag before the command": Failure(
        "--frob verify {cases}", "rlfleet verify:", 2, "unrecognized arguments: --frob"
    ),
    "serve without service": Failure("serve", "rlfleet serve:", 2, "required: SERVICE"),
    # rlfleet verify
    "verify without file": Failure("verify", "rlfleet verify:", 2, "required: cases"),
    "verify missing file": Failure("verify {tmp}/nope.jsonl", "rlfleet verify:", 2, "no such file"),
    "verify directory": Failure("verify {tmp}", "rlfleet verify:", 2, "is a directory"),
    "verify unreadable": Failure("verify {loop}", "rlfleet verify:", 2, "cannot read it"),
    "verify unknown flag": Failure("verify {cases} --frob", "rlfleet verify:", 2, "--frob"),
    "verify bad workers": Failure(
        "verify {cases} --workers 0", "rlfleet verify:", 2, "--workers: must be >= 1"
    ),
    "verify workers not a number": Failure(
        "verify {cases} --workers two", "rlfleet verify:", 2, "not a whole number"
    ),
    "verify bad backend": Failure("verify {cases} --backend vm", "rlfleet verify:", 2, "--backend"),
    "verify runtime without docker": Failure(
        "verify {cases} --runtime runsc", "rlfleet verify:", 2, "--runtime: only the docker"
    ),
    "verify unknown runtime": Failure(
        "verify {cases} --backend docker --runtime kata", "rlfleet verify:", 2, "--runtime"
    ),
    "verify bad server list": Failure(
        "verify {cases} --server a,b", "rlfleet verify:", 2, "--server"
    ),
    "verify no engine": Failure(
        "verify {cases} --backend docker",
        "rlfleet verify:",
        1,
        "no Docker engine answers",
        env=NO_DOCKER,
    ),
    "verify no server": Failure(
        "verify {cases} --server 127.0.0.1:{closed}",
        "rlfleet verify:",
        1,
        "no verifier answers at 127.0.0.1:",
    ),
    "verify bad cgroup parent": Failure(
        "verify {cases} --cgroup-parent nope", "rlfleet verify:", 2, "cgroup", engine=True
    ),
    # rlfleet serve sandbox
    "serve unknown flag": Failure("serve sandbox --frob", "rlfleet serve sandbox:", 2, "--frob"),
    "serve bad port": Failure(
        "serve sandbox --port 70000", "rlfleet serve sandbox:", 2, "must be 0 to 65535"
    ),
    "serve port taken": Failure(
        "serve sandbox --port {taken}", "rlfleet serve sandbox:", 1, "Address already in use"
    ),
    "serve metrics port taken": Failure(
        "serve sandbox --port 0 --metrics-port {taken}",
        "rlfleet serve sandbox:",
        1,
        "--metrics-port",
    ),
    "serve http port taken": Failure(
        "serve sandbox --port 0 --http-port {taken}", "rlfleet serve sandbox:", 1, "--http-port"
    ),
    "serve bad http port": Failure(
        "serve sandbox --http-port -1", "rlfleet serve sandbox:", 2, "must be 0 to 65535"
    ),
    "serve bad run-code wait": Failure(
        "serve sandbox --http-port 0 --run-code-queue-wait-s 0",
        "rlfleet serve sandbox:",
        2,
        "queue_wait_s must be > 0",
    ),
    "serve unknown host": Failure(
        "serve sandbox --host no-such-host.invalid", "rlfleet serve sandbox:", 2, "--host"
    ),
    "serve tls files missing": Failure(
        "serve sandbox --port 0 --tls-cert {tmp}/no.pem --tls-key {tmp}/no.key",
        "rlfleet serve sandbox:",
        2,
        "no.pem: no such file",
    ),
    "serve tls cert only": Failure(
        "serve sandbox --port 0 --tls-cert {garbage}",
        "rlfleet serve sandbox:",
        2,
        "give both --tls-cert and --tls-key",
    ),
    "serve tls not pem": Failure(
        "serve sandbox --port 0 --tls-cert {garbage} --tls-key {garbage}",
        "rlfleet serve sandbox:",
        2,
        "not a PEM certificate",
    ),
    "serve no engine": Failure(
        "serve sandbox --port 0 --backend docker",
        "rlfleet serve sandbox:",
        1,
        "no Docker engine answers",
        env=NO_DOCKER,
    ),
    # rlfleet sandbox prepare
    "prepare without action": Failure("sandbox", "rlfleet sandbox:", 2, "required: ACTION"),
    "prepare bad backend": Failure(
        "sandbox prepare --backend vm", "rlfleet sandbox prepare:", 2, "--backend"
    ),
    "prepare no engine": Failure(
        "sandbox prepare --backend docker",
        "rlfleet sandbox prepare:",
        1,
        "not ready for the docker backend",
        env=NO_DOCKER,
    ),
    # rlfleet bench sandbox
    "bench without target": Failure("bench", "rlfleet bench:", 2, "required: TARGET"),
    "bench bogus backend": Failure(
        "bench sandbox --backends bogus", "rlfleet bench sandbox:", 2, "unknown bogus"
    ),
    "bench bogus runtime": Failure(
        "bench sandbox --runtimes runc,kata",
        "rlfleet bench sandbox:",
        2,
        "--runtimes: unknown kata",
    ),
    "bench bad math": Failure(
        "bench sandbox --math -1", "rlfleet bench sandbox:", 2, "--math: must be >= 0"
    ),
    "bench no engine": Failure(
        "bench sandbox --backends docker --tests 1 --math 0",
        "rlfleet bench sandbox:",
        1,
        "no Docker engine answers",
        env=NO_DOCKER,
    ),
    # rlfleet bench math
    "bench math missing corpus": Failure(
        "bench math --corpus {tmp}/nope.jsonl", "rlfleet bench math:", 2, "no such file"
    ),
    "bench math not a corpus": Failure(
        "bench math --corpus {cases}", "rlfleet bench math:", 2, "not a pair"
    ),
    "bench math bad pairs": Failure(
        "bench math --pairs 0", "rlfleet bench math:", 2, "--pairs: must be >= 1"
    ),
    # rlfleet bench train
    "bench train bad steps": Failure("bench train --steps 0", "rlfleet bench train:", 2, "--steps"),
    "bench train bad override": Failure(
        "bench train rollout.n=0", "rlfleet bench train:", 2, "n: must be >= 1"
    ),
    # rlfleet bench rollout
    "bench rollout bad batches": Failure(
        "bench rollout --batches 0,x", "rlfleet bench rollout:", 2, "--batches"
    ),
    "bench rollout not a model": Failure(
        "bench rollout --model {tmp}", "rlfleet bench rollout:", 2, "not a model directory"
    ),
    # rlfleet model init
    "model without action": Failure("model", "rlfleet model:", 2, "required: ACTION"),
    "model init without dir": Failure("model init", "rlfleet model init:", 2, "OUT_DIR"),
    "model init unknown preset": Failure(
        "model init {tmp}/m --preset huge", "rlfleet model init:", 2, "invalid choice: 'huge'"
    ),
    "model init bad seed": Failure(
        "model init {tmp}/m --seed -1", "rlfleet model init:", 2, "--seed: must be >= 0"
    ),
    "model init not empty": Failure(
        "model init {tmp}", "rlfleet model init:", 2, "not empty; choose a new directory"
    ),
    "model init onto a file": Failure(
        "model init {cases}", "rlfleet model init:", 2, "exists and is not a directory"
    ),
    "model init cannot write": Failure(
        "model init /proc/rlfleet-model", "rlfleet model init:", 1, "cannot write it"
    ),
    # rlfleet serve rollout
    "serve rollout without model": Failure(
        "serve rollout --port 0", "rlfleet serve rollout:", 2, "required: --model"
    ),
    "serve rollout unknown engine": Failure(
        "serve rollout --engine vllm --model {model}", "rlfleet serve rollout:", 2, "'vllm'"
    ),
    "serve rollout missing model": Failure(
        "serve rollout --model {tmp}/nope --port 0",
        "rlfleet serve rollout:",
        2,
        "nope: no such directory",
    ),
    "serve rollout compile with sglang": Failure(
        "serve rollout --engine sglang --model {model} --compile",
        "rlfleet serve rollout:",
        2,
        "--compile",
    ),
    "bench rollout bad compile": Failure(
        "bench rollout --compile maybe", "rlfleet bench rollout:", 2, "--compile"
    ),
    "serve rollout bad dtype": Failure(
        "serve rollout --model {model} --dtype int8", "rlfleet serve rollout:", 2, "--dtype"
    ),
    "serve rollout bad verifier list": Failure(
        "serve rollout --model {model} --port 0 --verifier a,b",
        "rlfleet serve rollout:",
        2,
        "--verifier: target 'a,b'",
    ),
    "serve rollout tls not pem": Failure(
        "serve rollout --model {model} --port 0 --tls-cert {garbage} --tls-key {garbage}",
        "rlfleet serve rollout:",
        2,
        "not a PEM certificate",
    ),
    "serve rollout port taken": Failure(
        "serve rollout --model {model} --port {taken}",
        "rlfleet serve rollout:",
        1,
        "Address already in use",
    ),
    # rlfleet generate
    "generate without server": Failure(
        "generate --prompts {prompts}", "rlfleet generate:", 2, "required: --server"
    ),
    "generate missing file": Failure(
        "generate --server 127.0.0.1:{closed} --prompts {tmp}/nope.jsonl",
        "rlfleet generate:",
        2,
        "no such file",
    ),
    "generate bad n": Failure(
        "generate --server 127.0.0.1:1 --prompts {prompts} --n 0",
        "rlfleet generate:",
        2,
        "--n: must be >= 1",
    ),
    "generate bad temperature": Failure(
        "generate --server 127.0.0.1:1 --prompts {prompts} --temperature -1",
        "rlfleet generate:",
        2,
        "--temperature: must be >= 0",
    ),
    "generate bad top-p": Failure(
        "generate --server 127.0.0.1:1 --prompts {prompts} --top-p 0",
        "rlfleet generate:",
        2,
        "--top-p: must be in (0, 1]",
    ),
    "generate bad server list": Failure(
        "generate --server a,b --prompts {prompts}", "rlfleet generate:", 2, "--server"
    ),
    "generate no server": Failure(
        "generate --server 127.0.0.1:{closed} --prompts {prompts}",
        "rlfleet generate:",
        1,
        "no rollout server answers at 127.0.0.1:",
    ),
    # rlfleet train (none of these starts a server)
    "train bad steps": Failure("train --steps 0", "rlfleet train:", 2, "--steps: must be >= 1"),
    "train missing config": Failure(
        "train --config {tmp}/nope.toml", "rlfleet train:", 2, "cannot read it"
    ),
    "train unknown key": Failure("train optim.lrr=1", "rlfleet train:", 2, "unknown key optim.lrr"),
    "train bad value": Failure("train optim.lr=-1", "rlfleet train:", 2, "lr: must be > 0"),
    "train bad override": Failure("train frob", "rlfleet train:", 2, "expected KEY=VALUE"),
    "train run dir not empty": Failure(
        "train --run-dir {tmp}", "rlfleet train:", 2, "not empty; continue it with --resume"
    ),
    "train resume not a run": Failure(
        "train --resume {tmp}", "rlfleet train:", 2, "no config.json there"
    ),
    "train resume with seed": Failure(
        "train --resume {tmp} --seed 1", "rlfleet train:", 2, "only --steps may go with it"
    ),
    # rlfleet sample (none of these samples anything)
    "sample without out": Failure(
        "sample --model {model}", "rlfleet sample:", 2, "required: --out"
    ),
    "sample without model": Failure(
        "sample --out {tmp}/o.jsonl", "rlfleet sample:", 2, "give --model DIR"
    ),
    "sample model and rollout": Failure(
        "sample --model {model} --rollout 127.0.0.1:1 --out {tmp}/o.jsonl",
        "rlfleet sample:",
        2,
        "give one of the two",
    ),
    "sample not a model": Failure(
        "sample --model {tmp} --out {tmp}/o.jsonl", "rlfleet sample:", 2, "no config.json there"
    ),
    "sample bad n": Failure(
        "sample --model {model} --n 0 --out {tmp}/o.jsonl", "rlfleet sample:", 2, "--n: must be"
    ),
    "sample bad cap": Failure(
        "sample --model {model} --max-per-prompt 0 --out {tmp}/o.jsonl",
        "rlfleet sample:",
        2,
        "--max-per-prompt: must be >= 1",
    ),
    "sample bad template": Failure(
        "sample --model {model} --template zz --out {tmp}/o.jsonl",
        "rlfleet sample:",
        2,
        "template: unknown 'zz'",
    ),
    "sample missing data": Failure(
        "sample --rollout 127.0.0.1:{closed} --data {tmp}/nope.jsonl --out {tmp}/o.jsonl",
        "rlfleet sample:",
        2,
        "nope.jsonl: no such file",
    ),
    "sample bad data": Failure(
        "sample --rollout 127.0.0.1:{closed} --data {cases} --out {tmp}/o.jsonl",
        "rlfleet sample:",
        2,
        "no known format has these keys",
    ),
    "sample format without data": Failure(
        "sample --rollout 127.0.0.1:{closed} --format gsm8k --out {tmp}/o.jsonl",
        "rlfleet sample:",
        2,
        "--format: goes with --data",
    ),
    "sample bad rollout list": Failure(
        "sample --rollout a,b --out {tmp}/o.jsonl", "rlfleet sample:", 2, "--rollout: target"
    ),
    "sample out holds data": Failure(
        "sample --rollout 127.0.0.1:{closed} --verifier 127.0.0.1:{closed} --out {cases}",
        "rlfleet sample:",
        2,
        "already holds data; choose a new file, or give --force",
    ),
    "sample no rollout server": Failure(
        "sample --rollout 127.0.0.1:{closed} --verifier 127.0.0.1:{closed} --out {tmp}/o.jsonl",
        "rlfleet sample:",
        1,
        "no rollout server answers at 127.0.0.1:",
    ),
    # rlfleet push-weights
    "push-weights without version": Failure(
        "push-weights --server 127.0.0.1:1 --model {model}",
        "rlfleet push-weights:",
        2,
        "required: --version",
    ),
    "push-weights bad version": Failure(
        "push-weights --server 127.0.0.1:1 --model {model} --version 0",
        "rlfleet push-weights:",
        2,
        "--version: must be >= 1",
    ),
    "push-weights bad bucket": Failure(
        "push-weights --server 127.0.0.1:1 --model {model} --version 1 --bucket-mb 64",
        "rlfleet push-weights:",
        2,
        "--bucket-mb: must be 1 to 63",
    ),
    "push-weights missing model": Failure(
        "push-weights --server 127.0.0.1:1 --model {tmp}/nope --version 1",
        "rlfleet push-weights:",
        2,
        "nope: not a directory",
    ),
    "push-weights no weights": Failure(
        "push-weights --server 127.0.0.1:1 --model {tmp} --version 1",
        "rlfleet push-weights:",
        2,
        "no *.safetensors files",
    ),
    "push-weights no server": Failure(
        "push-weights --server 127.0.0.1:{closed} --model {model} --version 1",
        "rlfleet push-weights:",
        1,
        "no rollout server answers at 127.0.0.1:",
    ),
}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def rlfleet(
    args: list[str], stdin: str = "", env: dict[str, str] | None = None, timeout: float = TIMEOUT_S
) -> Run:
    t0 = time.monotonic()
    proc = subprocess.run(
        [*RLFLEET, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


@pytest.fixture
def places(tmp_path: Path) -> Iterator[dict[str, str]]:
    """What the ``{name}``s in a failure's arguments stand for."""
    (tmp_path / "cases.jsonl").write_text(MATH_OK + "\n")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    (tmp_path / "prompts.jsonl").write_text(
        '{"id": "p", "prompt": "1+1=", "kind": "math", "gold": "2"}\n'
    )
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(TINY_SAFETENSORS)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # (root reads any file; not this one)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]  # released at once: nothing listens there
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield {
            "tmp": str(tmp_path),
            "cases": str(tmp_path / "cases.jsonl"),
            "prompts": str(tmp_path / "prompts.jsonl"),
            "model": str(model),
            "loop": str(tmp_path / "loop"),
            "garbage": str(tmp_path / "garbage.pem"),
            "closed": str(closed_port),
            "taken": str(taken.getsockname()[1]),
        }


def assert_convention(run: Run, prefix: str, exit_code: int) -> None:
    assert run.code == exit_code, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert all(line.startswith(prefix + " ") for line in run.lines), run.stderr


@pytest.mark.parametrize("name", FAILURES)
def test_failure_is_one_clear_line(
    name: str, places: dict[str, str], request: pytest.FixtureRequest
) -> None:
    failure = FAILURES[name]
    if failure.engine:
        request.getfixturevalue("require_root")
    run = rlfleet(failure.args.format(**places).split(), env=failure.env)
    assert_convention(run, failure.prefix, failure.exit_code)
    assert 1 <= len(run.lines) <= 2, run.stderr
    assert failure.says in run.lines[-1], run.stderr
    if not failure.args.startswith("sandbox prepare"):  # (its checks are its output)
        assert run.stdout == "", run.stdout


def leaf_commands(parser: argparse.ArgumentParser) -> Iterator[str]:
    """``verify``, ``serve sandbox``, ...: every command that runs something."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = [f"{name} {leaf}" for leaf in leaf_commands(sub)]
                yield from inner or [name]


def test_every_command_is_walked() -> None:
    from rlfleet.cli import build_parser

    leaves = set(leaf_commands(build_parser()))
    assert {"verify", "serve sandbox", "sandbox prepare", "bench sandbox"} <= leaves
    walked = {f.prefix.removeprefix("rlfleet ").rstrip(":") for f in FAILURES.values()}
    assert leaves <= walked


# The three cases of the issue that set the convention.


def test_no_docker_engine_is_one_line(places: dict[str, str]) -> None:
    run = rlfleet(["verify", places["cases"], "--backend", "docker"], env=NO_DOCKER)
    assert_convention(run, "rlfleet verify:", 1)
    assert len(run.lines) == 1, run.stderr
    assert "no Docker engine answers" in run.lines[0]
    assert run.lines[0].endswith("start one, or run deploy/host/setup.sh")


def test_unreachable_server_is_an_error_not_verdicts(places: dict[str, str]) -> None:
    cases = "".join(MATH_OK.replace('"ok"', f'"c{i}"') + "\n" for i in range(20))
    run = rlfleet(["verify", "-", "--server", f"127.0.0.1:{places['closed']}"], stdin=cases)
    assert_convention(run, "rlfleet verify:", 1)
    assert run.stdout == "", "no verdict for a case nobody verified"
    assert len(run.lines) == 1, run.stderr
    assert run.lines[0].startswith(
        f"rlfleet verify: no verifier answers at 127.0.0.1:{places['closed']} after 4 attempts ("
    )
    assert "Connection refused" in run.lines[0] and "rlfleet serve sandbox" in run.lines[0]
    assert run.seconds < 20, "the client's retries are bounded"


@pytest.mark.parametrize("path", ["-", "/dev/stdin"])
def test_cases_from_stdin(path: str, require_root: None) -> None:
    cases = f"{MATH_OK}\n{{not json\n{MATH_OK.replace('boxed{1}', 'boxed{2}')}\n"
    run = rlfleet(["verify", path], stdin=cases)
    # An invalid line: exit 2, and every valid line still has its result, in input order.
    assert_convention(run, "rlfleet verify:", 2)
    out = [json.loads(line) for line in run.stdout.splitlines()]
    assert [o.get("verdict", o.get("error", "")[:12]) for o in out] == ["AC", "invalid JSON", "WA"]


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    run = rlfleet(["verify", str(tmp_path / "nope.jsonl"), "-v"])
    assert run.code == 2
    assert "Traceback" in run.stderr and "UsageError" in run.stderr
    assert run.lines[-1] == f"rlfleet verify: {tmp_path / 'nope.jsonl'}: no such file"
    before = rlfleet(["-v", "verify", str(tmp_path / "nope.jsonl")])
    assert before.code == 2 and "Traceback" in before.stderr


def test_help_exits_zero() -> None:
    for args in (
        [],
        ["verify"],
        ["serve", "sandbox"],
        ["sandbox", "prepare"],
        ["bench", "sandbox"],
        ["bench", "math"],
        ["model", "init"],
        ["bench", "rollout"],
        ["serve", "rollout"],
        ["generate"],
        ["push-weights"],
        ["sample"],
    ):
        run = rlfleet([*args, "--help"])
        assert run.code == 0 and run.stdout.startswith("usage: rlfleet"), args
