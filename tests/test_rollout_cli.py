"""The rollout service's operator commands end to end: `rlfleet generate` and
`rlfleet push-weights` as subprocesses against an in-process server with the fake engine,
and `serve rollout`'s command function with the fake engine started through its hook.
(Failure modes of every command: tests/test_cli_conventions.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from rollout_fakes import PARAMS, FakeEngine, FakeVerifier, Running, sample_text
from safetensors.torch import save_file

from rlfleet.errors import UsageError
from rlfleet.grpc_server import ServerConfig
from rlfleet.rollout import commands
from rlfleet.rollout.client import RolloutClient
from rlfleet.rollout.records import DType
from rlfleet.sandbox.cases import CaseError
from rlfleet.sandbox.records import CodeCase, MathCase, StdioTest

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]
ROOT = Path(__file__).resolve().parent.parent


async def rlfleet(*args: str, stdin: str = "", path: tuple[str, ...] = ()) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*path, str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        *RLFLEET,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


PROMPTS = [
    {"id": "m", "prompt": "2+2=", "kind": "math", "gold": "x"},
    {
        "id": "c",
        "prompt": "add",
        "kind": "code",
        "language": "python",
        "tests": [{"stdin": "1 2", "stdout": "3"}],
    },
    {"id": 7, "prompt": [104, 105]},
    {"id": "m", "prompt": "again", "kind": "math", "gold": "1"},
    {"id": "bad", "prompt": "x", "kind": "code", "language": "python", "tests": [{"stdin": "1"}]},
]


async def test_generate_prints_one_line_per_completion_and_flags_invalid_lines() -> None:
    verifier = FakeVerifier()
    lines = [json.dumps(p) for p in PROMPTS]
    lines.insert(2, "{not json")
    async with Running(FakeEngine(), verifier) as s:
        code, out, err = await rlfleet(
            "generate", "--server", s.target, "--prompts", "-", "--n", "2", "--seed", "5",
            "--max-new-tokens", "6", stdin="\n".join(lines) + "\n",
        )  # fmt: skip
    assert code == 2, err
    assert err == ""
    rows = [json.loads(line) for line in out.splitlines()]
    errors = [r for r in rows if "error" in r]
    assert errors == [
        {"line": 3, "error": errors[0]["error"]},
        {"id": "m", "error": "id: duplicate (each prompt's id must be unique)"},
        {"id": "bad", "error": "tests[0].stdout: missing"},
    ]
    assert errors[0]["error"].startswith("invalid JSON")
    done = sorted(((r["id"], r["sample"]), r) for r in rows if "error" not in r)
    assert [k for k, _ in done] == [("7", 0), ("7", 1), ("c", 0), ("c", 1), ("m", 0), ("m", 1)]
    for (pid, sample), r in done:
        assert r["seed"] == 5 + sample
        assert r["text"] == sample_text(tuple(r["prompt_token_ids"]), r["seed"], 6)
        assert r["token_ids"] == list(r["text"].encode()) and len(r["logprobs"]) == 6
        assert (r["finish_reason"], r["policy_version"]) == ("length", 0)
        assert r["versions"] == [{"version": 0, "start": 0, "end": 6}]
        if pid == "7":
            assert r["prompt_token_ids"] == [104, 105]
            assert (r["reward"], r["verdict"], r["unscored_reason"]) == (
                None,
                None,
                "not requested",
            )
        elif pid == "m":
            assert r["reward"] == float("x" in r["text"]) and r["verdict"] in ("AC", "WA")
        else:
            assert (r["reward"], r["verdict"], r["result"]["passed"]) == (1.0, "AC", 1)
    code_case = next(c for c in verifier.seen if c.id == "c/0")
    assert isinstance(code_case, CodeCase) and code_case.tests == (
        StdioTest(stdin="1 2", stdout="3"),
    )


def write_model(path: Path, seed: int = 0) -> Path:
    path.mkdir()
    dtypes = {DType.FLOAT32: torch.float32, DType.BFLOAT16: torch.bfloat16}
    g = torch.Generator().manual_seed(seed)
    save_file(
        {t.name: torch.randn(t.shape, generator=g).to(dtypes[t.dtype]) for t in PARAMS},
        str(path / "model.safetensors"),
    )
    return path


async def test_push_weights_then_refused_for_an_old_version(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    engine = FakeEngine()
    async with Running(engine) as s:
        code, out, err = await rlfleet(
            "push-weights", "--server", s.target, "--model", str(model), "--version", "3",
            "--bucket-mb", "1",
        )  # fmt: skip
        assert code == 0, err
        summary = json.loads(out)
        assert (summary["version"], summary["bytes"]) == (3, sum(t.nbytes for t in PARAMS))
        assert engine.version == 3
        code, out, err = await rlfleet(
            "push-weights", "--server", s.target, "--model", str(model), "--version", "2"
        )
        assert (code, out) == (2, ""), err
        assert err.startswith("rlfleet push-weights: the server refused the update: ")
        assert "begin.version: 2 is not newer than the version serving (3)" in err
        assert engine.version == 3


async def test_push_weights_transports(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    engine = FakeEngine()
    async with Running(engine, data_plane=False) as s:
        code, out, err = await rlfleet(
            "push-weights", "--server", s.target, "--model", str(model), "--version", "1",
            "--transport", "data-plane",
        )  # fmt: skip
        assert (code, out) == (1, ""), err
        assert err.startswith("rlfleet push-weights: ") and "no data plane offered" in err
        assert "--transport auto or grpc" in err and engine.version == 0
        for version, transport in ((1, "auto"), (2, "grpc")):
            code, out, err = await rlfleet(
                "push-weights", "--server", s.target, "--model", str(model),
                "--version", str(version), "--transport", transport,
            )  # fmt: skip
            assert code == 0, err
            assert engine.version == version


async def test_push_weights_without_xxhash_says_what_to_install(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m")
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'xxhash':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    engine = FakeEngine()
    async with Running(engine) as s:
        code, out, err = await rlfleet(
            "push-weights", "--server", s.target, "--model", str(model), "--version", "1",
            path=(str(blocker),),
        )  # fmt: skip
    assert (code, out) == (1, ""), err
    assert err.startswith("rlfleet push-weights: xxh3-128 checksums need the xxhash package")
    assert "install rlfleet[rollout]" in err and "Traceback" not in err
    assert engine.version == 0 and engine.updates == []


async def test_serve_rollout_runs_the_engine_until_cancelled(tmp_path: Path) -> None:
    engine = FakeEngine()
    announced: asyncio.Queue[str] = asyncio.Queue()
    config = commands.ServeRolloutConfig(
        server=ServerConfig(port=0, grace_s=1),
        engine=commands.RolloutEngineConfig(model=tmp_path),
    )

    async def start(c: commands.RolloutEngineConfig) -> Any:
        assert c.model == tmp_path
        return engine

    task = asyncio.create_task(commands.serve_rollout(config, start, announced.put_nowait))
    line = await asyncio.wait_for(announced.get(), 10)
    port = line.rsplit(":", 1)[1]
    async with RolloutClient(f"127.0.0.1:{port}") as client:
        assert (await client.status()).engine == "fake"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.closed


async def test_serve_rollout_refuses_a_missing_model_dir(tmp_path: Path) -> None:
    config = commands.ServeRolloutConfig(
        server=ServerConfig(port=0), engine=commands.RolloutEngineConfig(model=tmp_path / "no")
    )
    with pytest.raises(UsageError, match="no such directory"):
        await commands.serve_rollout(config)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ({"prompt": "x"}, "id: missing"),
        ({"id": "a"}, "prompt: missing"),
        ({"id": "a", "prompt": [1, -2]}, "prompt: expected text or a list of token ids"),
        ({"id": "a", "prompt": "x", "kind": "poem"}, "kind: unknown 'poem'"),
        ({"id": "a", "prompt": "x", "kind": "math"}, "gold: missing"),
        ({"id": "a", "prompt": "x", "kind": "code", "tests": []}, "language: missing"),
        ({"id": "a", "prompt": "x", "kind": "code", "language": "python"}, "tests: missing"),
    ],
)
def test_prompt_lines_name_the_field(line: dict[str, Any], error: str) -> None:
    with pytest.raises(CaseError) as err:
        commands.parse_prompt(line, 1)
    assert str(err.value).startswith(error), str(err.value)


def test_prompt_lines_become_prompts_with_their_spec() -> None:
    p = commands.parse_prompt({"id": 3, "prompt": "q", "kind": "math", "gold": 4}, 2)
    assert (p.id, p.text, p.n, p.verification) == (
        "3",
        "q",
        2,
        MathCase(id="3", completion="", gold="4"),
    )
    c = commands.parse_prompt(
        {"id": "c", "prompt": [1, 2], "kind": "code", "language": "python", "fn_name": "f",
         "tests": [{"args": [1], "expected": 2}], "time_limit_s": 1},
        1,
    )  # fmt: skip
    assert c.token_ids == (1, 2) and isinstance(c.verification, CodeCase)
    assert (c.verification.fn_name, c.verification.time_limit_s, c.verification.code) == (
        "f",
        1.0,
        "",
    )


async def test_serve_rollout_starts_sglang_on_the_surface_asked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rlfleet.cli import build_parser
    from rlfleet.rollout import sglang_engine

    started: list[sglang_engine.SglangEngineConfig] = []

    async def start(config: sglang_engine.SglangEngineConfig) -> Any:
        started.append(config)
        return FakeEngine()

    monkeypatch.setattr(sglang_engine.SglangEngine, "start", start)
    for argv, surface in (([], "grpc"), (["--sglang-surface", "http"], "http")):
        args = build_parser().parse_args(
            ["serve", "rollout", "--engine", "sglang", "--model", str(tmp_path), *argv]
        )
        engine = commands.RolloutEngineConfig(
            kind="sglang", model=args.model, sglang_surface=args.sglang_surface
        )
        await commands.start_engine(engine)
        assert started[-1].surface == surface


async def test_serve_rollout_threads_reach_the_torch_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rlfleet.cli import build_parser
    from rlfleet.rollout import torch_engine

    made: list[torch_engine.TorchEngineConfig] = []

    def engine(config: torch_engine.TorchEngineConfig) -> Any:
        made.append(config)
        return FakeEngine()

    monkeypatch.setattr(torch_engine, "TorchEngine", engine)
    for argv, threads in (([], None), (["--threads", "1"], 1), (["--threads", "3"], 3)):
        args = build_parser().parse_args(["serve", "rollout", "--model", str(tmp_path), *argv])
        await commands.start_engine(
            commands.RolloutEngineConfig(model=args.model, threads=args.threads)
        )
        assert made[-1].threads == threads
    with pytest.raises(ValueError, match="--threads: an option of the torch engine only"):
        commands.RolloutEngineConfig(kind="sglang", model=tmp_path, threads=1)
    with pytest.raises(ValueError, match="--threads: must be >= 1"):
        commands.RolloutEngineConfig(model=tmp_path, threads=0)
