"""`rlfleet train`: its pure parts (batch schedule, config, verdict cache, PNG), and short
embedded runs as real processes on loopback: the run dir contract, children stopped on every
way out (normal end, SIGTERM, kill -9 of the learner), and a resumed run taking the same
batches as an uninterrupted one."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path

import pytest

from rlfleet.learner import loop
from rlfleet.learner.commands import read_metrics
from rlfleet.learner.config import (
    ConfigError,
    RolloutConfig,
    TrainConfig,
    load_config,
    write_config,
)
from rlfleet.learner.fleet import RUN_MARKER
from rlfleet.learner.plot import reward_curve_png
from rlfleet.learner.schedule import batch_indices, epoch_order, sample_seed
from rlfleet.learner.scoring import BatchScorer, VerdictCache, score
from rlfleet.learner.tasks import BuiltinConfig, builtin_tasks
from rlfleet.sandbox.records import Case, CaseResult, Verdict

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]
SMALL = [
    "rollout.prompts_per_step=4",
    "rollout.n=4",
    "log_every=1",
    "fleet.sandbox_workers=1",
]
STEP_FIELDS = {
    "step",
    "reward_mean",
    "policy_version",
    "prompt_ids",
    "time_generate_s",
    "time_reward_s",
    "time_train_s",
    "time_push_s",
    "time_step_s",
}


# -- pure parts ------------------------------------------------------------------------------


def test_batches_are_a_function_of_the_position() -> None:
    whole = batch_indices(10, 3, 0, 25)
    assert sorted(whole[:10]) == list(range(10)) and sorted(whole[10:20]) == list(range(10))
    assert whole[:10] == epoch_order(10, 3, 0) and whole[10:20] == epoch_order(10, 3, 1)
    # Any position continues the same stream.
    assert batch_indices(10, 3, 7, 9) == whole[7:16]
    assert batch_indices(10, 4, 0, 10) != whole[:10]


def test_sample_seeds_differ_by_step_and_group() -> None:
    seeds = {sample_seed(0, s, g) for s in range(20) for g in range(32)}
    assert len(seeds) == 640 and max(seeds) < 2**62
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3)


def test_config_from_toml_overrides_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text(
        "seed = 3\nsteps = 50\n[optim]\nlr = 3e-4\nbetas = [0.9, 0.95]\n"
        '[rollout]\nn = 8\n[algorithm]\nalgorithm = "dapo"\nmax_length = 4\n'
    )
    config = load_config(path, ["rollout.temperature=0.7", "fleet.verifier=127.0.0.1:9"], steps=60)
    assert config.seed == 3 and config.steps == 60
    assert config.optim.lr == 3e-4 and config.optim.betas == (0.9, 0.95)
    assert config.rollout.n == 8 and config.rollout.temperature == 0.7
    assert config.algorithm.algorithm == "dapo" and config.fleet.verifier == "127.0.0.1:9"
    write_config(config, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == config
    assert load_config() == TrainConfig()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[optim]\nlrr = 1\n", "unknown key optim.lrr"),
        ("stepz = 1\n", "unknown key stepz"),
        ("[optim]\nlr = -1\n", "lr: must be > 0"),
        ('[algorithm]\nalgorithm = "ppo"\n', "'ppo' is not one of"),
        ("steps = 1.5\n", "steps: expected int"),
        ("[fleet]\nrollout_threads = -1\n", "rollout_threads: must be >= 0"),
        ("[optim\n", "not valid toml"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as e:
        load_config(path)
    assert says.lower() in str(e.value).lower()


class FakeVerifier:
    def __init__(self, verdict: Verdict = Verdict.WA) -> None:
        self.seen: list[Case] = []
        self.verdict = verdict

    async def verify_many(self, cases: Iterable[Case]) -> AsyncIterator[CaseResult]:
        for case in cases:
            self.seen.append(case)
            yield CaseResult(id=case.id, verdict=self.verdict, passed=0, total=1, reward=0.0)


async def test_pairs_are_verified_once_and_kept_verdicts_reused() -> None:
    tasks = builtin_tasks(BuiltinConfig(seed=0))[:2]
    pairs = [(tasks[0], "1"), (tasks[0], "1"), (tasks[1], "1"), (tasks[0], "2")]
    cache, fake = VerdictCache(), FakeVerifier()
    results, stats = await score(fake, pairs, cache)
    assert [r.verdict for r in results] == [Verdict.WA] * 4
    assert (stats.unique, stats.cache_hits, stats.verified) == (3, 0, 3)
    assert len(fake.seen) == 3
    _, again = await score(fake, pairs, cache)
    assert (again.cache_hits, again.verified) == (3, 0) and len(fake.seen) == 3


async def test_resource_verdicts_are_asked_again() -> None:
    tasks = builtin_tasks(BuiltinConfig(seed=0))[:1]
    cache, fake = VerdictCache(), FakeVerifier(Verdict.TLE)
    await score(fake, [(tasks[0], "1")], cache)
    await score(fake, [(tasks[0], "1")], cache)
    assert len(fake.seen) == 2 and len(cache) == 0


class StreamVerifier:
    """One stream at a time, answered as its cases come; or failing after ``fail_after``."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.streams = 0
        self.seen: list[Case] = []
        self.fail_after = fail_after

    async def verify_many(self, cases: AsyncIterable[Case]) -> AsyncIterator[CaseResult]:
        self.streams += 1
        async for case in cases:
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise ConnectionError("verifier gone")
            self.seen.append(case)
            yield CaseResult(id=case.id, verdict=Verdict.WA, passed=0, total=1, reward=0.0)


async def test_a_batch_scorer_sends_each_pair_once_over_one_stream() -> None:
    tasks = builtin_tasks(BuiltinConfig(seed=0))[:2]
    cache, fake = VerdictCache(), StreamVerifier()
    async with BatchScorer(fake, cache) as scorer:
        groups = [
            [(tasks[0], "1"), (tasks[0], "1"), (tasks[0], "2")],
            [(tasks[1], "1"), (tasks[0], "2")],  # (tasks[0], "2"): asked by the first group
        ]
        (first, s1), (second, s2) = await asyncio.gather(*(scorer.score(g) for g in groups))
    assert fake.streams == 1 and len(fake.seen) == 3
    assert [r.verdict for r in first + second] == [Verdict.WA] * 5
    assert (s1.unique, s1.verified) == (2, 2) and (s2.unique, s2.verified) == (2, 1)
    async with BatchScorer(fake, cache) as scorer:  # (the next batch: the cache answers)
        _, s3 = await scorer.score(groups[0])
    assert s3.cache_hits == 2 and len(fake.seen) == 3


async def test_a_failed_verifier_stream_fails_every_waiting_group() -> None:
    tasks = builtin_tasks(BuiltinConfig(seed=0))[:3]
    scorer = BatchScorer(StreamVerifier(fail_after=1), VerdictCache())
    with pytest.raises(ConnectionError, match="verifier gone"):
        async with scorer:
            await asyncio.gather(*(scorer.score([(t, "1")]) for t in tasks))
    with pytest.raises(ConnectionError):
        await scorer.score([(tasks[0], "5")])


class CancelledStream(StreamVerifier):
    """A stream that ends in cancellation it did not ask for (as a gRPC call cancelled
    under it does)."""

    async def verify_many(self, cases: AsyncIterable[Case]) -> AsyncIterator[CaseResult]:
        async for case in cases:
            self.seen.append(case)
            raise asyncio.CancelledError
        yield CaseResult(id="never", verdict=Verdict.WA, passed=0, total=1, reward=0.0)


async def test_a_cancelled_verifier_stream_fails_the_waiting_groups_instead_of_hanging() -> None:
    tasks = builtin_tasks(BuiltinConfig(seed=0))[:2]
    scorer = BatchScorer(CancelledStream(), VerdictCache())
    async with scorer:
        waiting = asyncio.gather(*(scorer.score([(t, "1")]) for t in tasks))
        with pytest.raises(RuntimeError, match="verifier stream ended with cases unanswered"):
            await asyncio.wait_for(waiting, 10)


@pytest.mark.parametrize("ahead", [0, 1, 2])
async def test_each_steps_batch_is_generated_once(
    ahead: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop starts each step's batch once, ``ahead`` steps early at most: a batch its
    step has taken is never started again (each would be a whole batch generated for
    nothing, beside the one that counts)."""
    produced: list[int] = []
    trained: list[int] = []
    trainer = object.__new__(loop.Trainer)
    trainer.config = TrainConfig(rollout=RolloutConfig(max_staleness=ahead))

    async def begin(start: int) -> None:
        pass

    async def produce(step: int) -> int:
        produced.append(step)
        await asyncio.sleep(0)
        return step

    async def step(batch: int, *, wait_s: float, since: float) -> int:
        trained.append(batch)
        # Never more than ``ahead`` batches started beyond the one trained now.
        assert max(produced) <= batch + ahead
        return batch

    async def on_step(record: object) -> None:
        pass

    monkeypatch.setattr(trainer, "begin", begin)
    monkeypatch.setattr(trainer, "produce", produce)
    monkeypatch.setattr(trainer, "step", step)
    monkeypatch.setattr(loop, "freeze_startup_objects", lambda: None)
    await trainer.run(3, 9, on_step)
    assert trained == list(range(3, 9))
    assert sorted(produced) == list(range(3, 9))


def test_the_reward_curve_is_a_png() -> None:
    data = reward_curve_png(list(range(50)), [i / 50 for i in range(50)], width=64, height=32)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (64, 32)
    idat = data.index(b"IDAT")
    (size,) = struct.unpack(">I", data[idat - 4 : idat])
    assert len(zlib.decompress(data[idat + 4 : idat + 4 + size])) == 32 * (1 + 64 * 3)


def test_metrics_after_the_checkpoint_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(5)) + '{"step": 5, "rew')
    assert [r["step"] for r in read_metrics(path, 3)] == [0, 1, 2]
    assert [r["step"] for r in read_metrics(path, 9)] == [0, 1, 2, 3, 4]


# -- embedded runs ---------------------------------------------------------------------------


def run_processes(run_dir: Path) -> list[int]:
    """Pids of live processes started for ``run_dir`` (the servers and what they started)."""
    marker = f"{RUN_MARKER}={run_dir.resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in env.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(run_dir: Path, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := run_processes(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RLFLEET, "train", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def start_train(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RLFLEET, "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def records(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_steps(
    proc: subprocess.Popen[str], run_dir: Path, steps: int, timeout_s: float = 180
) -> None:
    deadline = time.monotonic() + timeout_s
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if path.is_file() and len(path.read_text().splitlines()) >= steps:
            return
        time.sleep(0.1)
    raise AssertionError(f"{steps} steps not done in {timeout_s} s")


def test_a_short_run_keeps_the_contract(tmp_path: Path, require_root: None) -> None:
    run_dir = tmp_path / "run"
    r = train(
        "--run-dir", str(run_dir), "--steps", "3", "--seed", "5", *SMALL, "checkpoint_every=2"
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert all(line.startswith("rlfleet train: ") for line in lines), r.stderr
    assert "step 3/3" in r.stderr and "run dir:" in r.stdout
    steps = records(run_dir)
    assert [s["step"] for s in steps] == [0, 1, 2]
    for s in steps:
        assert set(s) >= STEP_FIELDS, set(s)
        assert len(s["prompt_ids"]) == 4  # type: ignore[arg-type]
        assert s["samples"] == 16
    assert [s["policy_version"] for s in steps] == [0, 1, 2]
    assert (run_dir / "reward.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000003",
    ]
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 5
    assert run_processes(run_dir) == [], "embedded servers left running"


def test_sigterm_stops_the_run_and_its_servers(tmp_path: Path, require_root: None) -> None:
    run_dir = tmp_path / "run"
    proc = start_train("--run-dir", str(run_dir), "--steps", "1000", *SMALL)
    try:
        wait_steps(proc, run_dir, 1)
        assert run_processes(run_dir), "the servers should be running"
        # The embedded rollout server shares the cores: one decode thread (fleet.rollout_threads).
        argvs = [
            Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in run_processes(run_dir)
        ]
        rollout = [a for a in argvs if b"rollout" in a and b"serve" in a]
        assert len(rollout) == 1, argvs
        assert rollout[0][rollout[0].index(b"--threads") + 1] == b"1", rollout
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-1] == "rlfleet train: interrupted", err
        assert "Traceback" not in err
        assert run_processes(run_dir) == [], "embedded servers left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resume_after_kill_9_takes_the_same_batches(tmp_path: Path, require_root: None) -> None:
    steps = ["--steps", "6", "--seed", "2", *SMALL, "checkpoint_every=2"]
    whole = tmp_path / "whole"
    r = train("--run-dir", str(whole), *steps)
    assert r.returncode == 0, r.stderr

    cut = tmp_path / "cut"
    proc = start_train("--run-dir", str(cut), *steps)
    try:
        wait_steps(proc, cut, 3)  # past the checkpoint at step 2
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_gone(cut) == [], "servers outlived a learner killed with -9"
    resumed = train("--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stderr
    got, want = records(cut), records(whole)
    assert [s["step"] for s in got] == list(range(6))
    assert [s["prompt_ids"] for s in got] == [s["prompt_ids"] for s in want]
    assert [s["policy_version"] for s in got] == list(range(6))
    assert run_processes(cut) == []


def test_a_seed_reproduces_the_run(tmp_path: Path, require_root: None) -> None:
    """Two runs with the same seed, at the same time (so their requests reach their rollout
    servers at different moments): every step's rewards, loss metrics (the engine's
    logprobs among them, through the learner/engine mismatch) and gradient norm are equal
    to the bit."""
    args = ["--steps", "5", "--seed", "3", *SMALL, "rollout.prompts_per_step=8"]
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [start_train("--run-dir", str(d), *args) for d in runs]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    a, b = (records(d) for d in runs)
    assert len(a) == len(b) == 5
    for x, y in zip(a, b, strict=True):
        for key in ("prompt_ids", "reward_mean", "tokens", "grad_norm", "train"):
            assert x[key] == y[key], (x["step"], key, x[key], y[key])


@pytest.mark.slow
@pytest.mark.timeout(900)  # the run may take up to its 10 minutes (the suite's default is 300 s)
def test_the_default_learns_within_ten_minutes(tmp_path: Path, require_root: None) -> None:
    """The acceptance run: `rlfleet train` with its defaults, on this machine's cores."""
    run_dir = tmp_path / "run"
    r = train("--run-dir", str(run_dir), timeout=900)
    assert r.returncode == 0, r.stderr
    steps = records(run_dir)
    first = [float(s["reward_mean"]) for s in steps[:10]]  # type: ignore[arg-type]
    assert sum(first) / len(first) <= 0.3
    reached = [s for s in steps if float(s["reward_mean"]) >= 0.9]  # type: ignore[arg-type]
    assert reached, f"best {max(float(s['reward_mean']) for s in steps)}"  # type: ignore[arg-type]
    assert float(reached[0]["wall_s"]) <= 600  # type: ignore[arg-type]
