"""The rollout service end to end, as an operator runs it: real processes on loopback.

`rlfleet model init` makes two tiny models, `rlfleet serve sandbox` is the verifier,
`rlfleet serve rollout --engine torch` serves the first model, `rlfleet generate` samples
scored completions, `rlfleet push-weights` moves the server to the second model's weights,
and its greedy output then equals that of a server started on the second model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RLFLEET, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@contextmanager
def serving(*args: str) -> Iterator[str]:
    """Start `rlfleet serve ...` on port 0; yield its HOST:PORT; SIGTERM it afterwards."""
    proc = subprocess.Popen(
        [*RLFLEET, "serve", *args, "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        target = ""
        for line in proc.stderr:  # the announcement comes once the port accepts calls
            if "listening on" in line:
                target = line.rsplit(" ", 1)[1].strip()
                break
        assert target, f"`serve {args[0]}` exited with {proc.wait()} before listening"
        yield target
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0, "SIGTERM must drain and exit 0"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("models")
    for name, seed in (("a", 1), ("b", 2)):
        r = run("model", "init", "--preset", "tiny", "--seed", str(seed), str(base / name))
        assert r.returncode == 0, r.stderr
    return base / "a", base / "b"


def generate(target: str, prompts: Path, *extra: str) -> list[dict[str, Any]]:
    r = run("generate", "--server", target, "--prompts", str(prompts), *extra)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_generate_scores_pushes_and_matches_a_fresh_server(
    models: tuple[Path, Path], tmp_path: Path, require_root: None
) -> None:
    a, b = models
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "m1", "prompt": "1+1=", "kind": "math", "gold": "2"})
        + "\n"
        + json.dumps(
            {
                "id": "c1",
                "prompt": "print one:",
                "kind": "code",
                "language": "python",
                "tests": [{"stdin": "", "stdout": "1\n"}],
            }
        )
        + "\n"
    )
    with (
        serving("sandbox", "--workers", "1") as verifier,
        serving(
            "rollout", "--engine", "torch", "--model", str(a), "--verifier", verifier
        ) as server,
    ):
        sampled = generate(server, prompts, "--n", "3", "--max-new-tokens", "12", "--seed", "7")
        assert sorted((c["id"], c["sample"]) for c in sampled) == [
            (p, i) for p in ("c1", "m1") for i in range(3)
        ]
        for c in sampled:
            tokens, logprobs = c["token_ids"], c["logprobs"]
            assert isinstance(tokens, list) and isinstance(logprobs, list)
            assert 1 <= len(tokens) <= 12 and len(logprobs) == len(tokens)
            assert all(isinstance(x, float) and x <= 0 for x in logprobs)
            assert c["policy_version"] == 0
            # Scored by the real verifier: a random model's answers are wrong, not unscored.
            assert c["verdict"] is not None and c["reward"] == 0.0, c
        again = generate(server, prompts, "--n", "3", "--max-new-tokens", "12", "--seed", "7")
        assert {(c["id"], c["sample"], tuple(c["token_ids"])) for c in again} == {
            (c["id"], c["sample"], tuple(c["token_ids"])) for c in sampled
        }, "the same seeds give the same tokens"

        pushed = run("push-weights", "--server", server, "--model", str(b), "--version", "1")
        assert pushed.returncode == 0, pushed.stderr
        greedy = ("--n", "1", "--max-new-tokens", "16", "--temperature", "0")
        after_push = generate(server, prompts, *greedy)
        assert {c["policy_version"] for c in after_push} == {1}
    with serving("rollout", "--engine", "torch", "--model", str(b)) as fresh:
        on_b = generate(fresh, prompts, *greedy)
    by_id = sorted(after_push, key=lambda c: str(c["id"]))
    assert [c["token_ids"] for c in by_id] == [
        c["token_ids"] for c in sorted(on_b, key=lambda c: str(c["id"]))
    ]
    # Unscored without a verifier, with the reason.
    assert all(c["verdict"] is None and c["unscored_reason"] for c in on_b)


def test_serve_rollout_refuses_a_model_it_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    r = run("serve", "rollout", "--engine", "torch", "--model", str(tmp_path), "--port", "0")
    assert r.returncode in (1, 2)
    assert r.stderr.startswith("rlfleet serve rollout:") and "Traceback" not in r.stderr
    assert os.path.basename(str(tmp_path)) in r.stderr
