"""`rlfleet sample`: selection (correctness, duplicates, the cap) with fake completions and a
fake verifier; end to end on the embedded fleet and on an existing one, with a tiny model
made to answer the built-in task with a random digit (so about one sample in ten is right);
Ctrl-C leaves a valid file and no server behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlfleet.learner.fleet import RUN_MARKER, embedded_fleet
from rlfleet.learner.rewards import Component, Reward
from rlfleet.learner.sample import (
    SampleConfig,
    Scored,
    Selection,
    Totals,
    is_correct,
    pass_rate_histogram,
    select,
    sft_record,
    summary_lines,
)
from rlfleet.learner.tasks import addition_task, builtin_tasks, gold_digit
from rlfleet.learner.templates import get_template
from rlfleet.rollout.model_init import write_model
from rlfleet.rollout.records import Completion, FinishReason, GenerateRequest, VersionSpan
from rlfleet.sandbox.records import Case, CaseResult, MathCase, Verdict

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]
DIGIT_IDS = range(18, 28)
"""The tiny tokenizer's tokens ``0`` ... ``9``."""
EQUALS_ID = 31
"""Its token ``=``, the last of every built-in prompt."""


# -- pure parts ------------------------------------------------------------------------------


def completion(sample: int, text: str, result: CaseResult | None = None) -> Completion:
    return Completion(
        prompt_id="p",
        sample=sample,
        prompt_token_ids=(1, 2),
        token_ids=(3,),
        logprobs=(-0.5,),
        finish_reason=FinishReason.STOP,
        versions=(VersionSpan(version=0, start=0, end=1),),
        text=text,
        seed=100 + sample,
        result=result,
    )


def reward(accuracy: float | None, fmt: float = 1.0) -> Reward:
    rules = (Component(name="format", value=fmt, weight=0.1),)
    if accuracy is None:
        return Reward(total=None, components=rules, unscored_reason="no result")
    comps = (Component(name="accuracy", value=accuracy, weight=0.9), *rules)
    return Reward(total=sum(c.weighted for c in comps), components=comps)


def scored(sample: int, text: str, accuracy: float | None, fmt: float = 1.0) -> Scored:
    r = reward(accuracy, fmt)
    return Scored(completion=completion(sample, text), reward=r, correct=is_correct(r, True))


def test_correct_means_full_accuracy_and_the_format() -> None:
    assert is_correct(reward(1.0), require_format=True)
    assert not is_correct(reward(0.75), require_format=True)  # (a code pass rate)
    assert not is_correct(reward(1.0, fmt=0.0), require_format=True)
    assert is_correct(reward(1.0, fmt=0.0), require_format=False)
    assert not is_correct(reward(None), require_format=False)
    assert not is_correct(reward(0.0), require_format=False)


def test_selection_dedupes_caps_and_keeps_the_first_samples() -> None:
    samples = [
        scored(5, "7", 1.0),
        scored(0, "x", 0.0),
        scored(1, "07", 1.0),
        scored(2, " 07\n", 1.0),  # the same text as sample 1 once stripped
        scored(3, "007", 1.0),
        scored(4, "0007", 1.0, fmt=0.0),  # right, but not in the template's shape
        scored(6, "8", None),  # unscored
        scored(7, "7", 1.0),
    ]
    sel = select(samples, max_per_prompt=2)
    assert [s.completion.sample for s in sel.kept] == [1, 3]
    assert (sel.scored, sel.correct, sel.duplicates, sel.over_cap) == (7, 5, 2, 1)
    assert sel.pass_rate == 5 / 7
    wide = select(samples, max_per_prompt=10)
    assert [s.completion.text for s in wide.kept] == ["07", "007", "7"]
    assert (wide.duplicates, wide.over_cap) == (2, 0)
    nothing = select([scored(0, "1", None)], max_per_prompt=1)
    assert nothing.kept == () and nothing.pass_rate is None


def test_a_line_is_sft_data_with_its_scores() -> None:
    task = addition_task(3, 4)
    result = CaseResult(id="0", verdict=Verdict.AC, passed=1, total=1, reward=1.0)
    s = Scored(completion=completion(2, "7", result), reward=reward(1.0), correct=True)
    sel = Selection(kept=(s,), scored=4, correct=1, duplicates=0, over_cap=0)
    line = sft_record(task, get_template("plain"), s, sel)
    assert line["id"] == "add-3-4#2" and line["prompt_id"] == "add-3-4"
    assert (line["prompt"], line["completion"], line["source"]) == ("3+4=", "7", "builtin")
    assert line["messages"] == [
        {"role": "user", "content": "3+4="},
        {"role": "assistant", "content": "7"},
    ]
    assert line["verdict"] == "AC" and line["pass_rate"] == 0.25
    assert line["reward"] == pytest.approx(1.0) and line["rewards"]["accuracy"] == 1.0
    assert line["token_ids"] == [3] and line["seed"] == 102 and line["policy_version"] == 0
    json.dumps(line)  # (a JSON line)


def test_summary_counts_and_pass_rate_bins() -> None:
    assert pass_rate_histogram([0.0, 0.1, 0.25, 0.3, 0.8, 1.0, 1.0]) == [
        ("0", 1),
        ("<=25%", 2),
        ("<=50%", 1),
        ("<=75%", 0),
        ("<100%", 1),
        ("100%", 2),
    ]
    t = Totals()
    t.add(4, select([scored(0, "1", 1.0), scored(1, "1", 1.0), scored(2, "2", 0.0)], 4))
    t.add(4, select([scored(0, "1", 0.0)], 4))
    text = "\n".join(summary_lines(t, 5))
    assert "prompts: 2 of 5 sampled, 1 with a correct completion" in text
    assert "samples: 8, scored 4, correct 2 (50.0%)" in text
    assert "kept: 1 (dropped 1 duplicates, 0 over the cap)" in text


class FakeRollout:
    """Returns the given texts as the ``n`` completions of any prompt."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.requests: list[GenerateRequest] = []

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Completion]:
        self.requests.append(request)
        for i, text in reversed(list(enumerate(self.texts))):  # (any order)
            yield completion(i, text)


class IntegerVerifier:
    """AC when the boxed answer is the gold as an integer."""

    def __init__(self) -> None:
        self.seen = 0

    async def verify_many(self, cases: Iterable[Case]) -> AsyncIterator[CaseResult]:
        for case in cases:
            assert isinstance(case, MathCase)
            self.seen += 1
            answer = case.completion.removeprefix("\\boxed{").removesuffix("}").strip()
            ok = answer.isdigit() and int(answer) == int(case.gold)
            verdict = Verdict.AC if ok else Verdict.WA
            yield CaseResult(id=case.id, verdict=verdict, passed=int(ok), total=1, reward=ok)


async def test_a_prompt_is_sampled_scored_and_selected() -> None:
    from rlfleet.learner.sample import Sampler
    from rlfleet.rollout.records import SamplingParams

    rollout = FakeRollout(["7", "07", "7", "x", "007", " 7", "6"])
    verifier = IntegerVerifier()
    sampler = Sampler(
        config=SampleConfig(n=7, max_per_prompt=2, seed=3),
        template=get_template("plain"),
        sampling=SamplingParams(max_new_tokens=4, temperature=0.9, top_p=0.8),
        rollout=rollout,
        verifier=verifier,
    )
    results, sel = await sampler.prompt(0, addition_task(3, 4))
    assert [s.correct for s in results] == [True, True, True, False, True, True, False]
    assert [s.completion.text for s in sel.kept] == ["7", "07"]
    assert (sel.correct, sel.duplicates, sel.over_cap) == (5, 2, 1)
    assert verifier.seen == 6  # ("7" twice is verified once)
    (request,) = rollout.requests
    assert request.prompts[0].text == "3+4=" and request.prompts[0].n == 7
    assert request.sampling.temperature == 0.9 and request.sampling.seed is not None


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, changed to answer a built-in prompt with a uniformly random digit:
    with every attention and MLP output zeroed, the last hidden state is the embedding of
    ``=`` (normalised), and an untied head gives the ten digit tokens the same large logit
    for it and every other token 0."""
    path = tmp_path_factory.mktemp("digits")
    write_model(path, seed=0)
    weights = load_file(str(path / "model.safetensors"))
    for name in list(weights):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = torch.zeros_like(weights[name])
    embed = weights["model.embed_tokens.weight"]
    x = embed[EQUALS_ID]
    h = x * torch.rsqrt(x.pow(2).mean() + 1e-6) * weights["model.norm.weight"]
    head = torch.zeros_like(embed)
    head[DIGIT_IDS.start : DIGIT_IDS.stop] = 12 * h / h.pow(2).sum()
    weights["lm_head.weight"] = head
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    return path


def marked_processes(under: Path) -> list[int]:
    """Live processes started by a sample run whose logs went under ``under``."""
    prefix = f"{RUN_MARKER}={under.resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if any(v.startswith(prefix) for v in env) and state != "Z":
            found.append(int(entry.name))
    return found


def sample_env(tmp: Path) -> dict[str, str]:
    import os

    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp)}


def check_lines(out: Path, cap: int) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    golds = {t.id: gold_digit(t) for t in builtin_tasks()}
    pairs = [(line["prompt_id"], line["completion"]) for line in lines]
    assert len(set(pairs)) == len(pairs), "a completion kept twice"
    for line in lines:
        assert line["verdict"] == "AC" and line["completion"] == golds[str(line["prompt_id"])]
        assert line["rewards"]["format"] == 1.0
    per_prompt = [p for p, _ in pairs]
    assert max(per_prompt.count(p) for p in per_prompt) <= cap
    return lines


def test_sample_on_the_embedded_fleet(
    digit_model: Path, tmp_path: Path, require_root: None
) -> None:
    out = tmp_path / "sft.jsonl"
    args = ["--model", str(digit_model), "--n", "8", "--limit", "40", "--out", str(out)]
    r = subprocess.run(
        [*RLFLEET, "sample", *args, "--temperature", "1.5"],
        capture_output=True,
        text=True,
        timeout=240,
        env=sample_env(tmp_path / "tmp"),
        check=False,
    )
    assert r.returncode == 0, r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert all(line.startswith("rlfleet sample: ") for line in err), r.stderr
    lines = check_lines(out, cap=4)
    # About 1 - 0.9**8 = 57 % of the prompts have a right digit among their 8 samples.
    assert 5 <= len(lines) <= 40, r.stdout
    assert "prompts: 40 of 40 sampled" in r.stdout and f"kept: {len(lines)} " in r.stdout
    assert "per-prompt pass rate: mean" in r.stdout
    assert marked_processes(tmp_path / "tmp") == [], "embedded servers left running"
    assert list((tmp_path / "tmp").iterdir()) == [], "the servers' logs left behind"


async def test_sample_on_an_existing_fleet(
    digit_model: Path, tmp_path: Path, require_root: None
) -> None:
    import asyncio

    async with embedded_fleet(
        run_dir=tmp_path / "fleet",
        model=digit_model,
        rollout=None,
        verifier=None,
        sandbox_workers=1,
        start_timeout_s=120,
    ) as targets:
        proc = await asyncio.create_subprocess_exec(
            *RLFLEET,
            "sample",
            "--rollout",
            targets.rollout,
            "--verifier",
            targets.verifier,
            "--n",
            "16",
            "--limit",
            "20",
            "--max-per-prompt",
            "1",
            "--out",
            "-",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 240)
    err = stderr.decode()
    assert proc.returncode == 0, err
    assert "embedded fleet" not in err  # (nothing started)
    out = tmp_path / "out.jsonl"
    out.write_bytes(stdout)  # (stdout holds the lines alone; the summary goes to stderr)
    lines = check_lines(out, cap=1)
    assert len(lines) >= 5
    assert "rlfleet sample: kept: " in err


def test_ctrl_c_leaves_a_valid_file_and_no_server(
    digit_model: Path, tmp_path: Path, require_root: None
) -> None:
    out = tmp_path / "sft.jsonl"
    args = ["--model", str(digit_model), "--n", "64", "--concurrency", "1", "--out", str(out)]
    proc = subprocess.Popen(
        [*RLFLEET, "sample", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=sample_env(tmp_path / "tmp"),
    )
    try:
        deadline = time.monotonic() + 180
        while not (out.is_file() and out.stat().st_size > 0):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "nothing kept in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "rlfleet sample: interrupted", err
    assert "Traceback" not in err
    assert out.read_text().endswith("\n")
    assert len(check_lines(out, cap=4)) >= 1
    assert marked_processes(tmp_path / "tmp") == [], "embedded servers left running"
