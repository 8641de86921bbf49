"""`rlfleet train` on several servers: the rollout pool's re-send and rejoin rules with fake
servers, and a run on two rollout and two sandbox servers (real processes on loopback) that
loses one of each mid-run and goes on with no prompt lost or trained on twice."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from digit_model import write_digit_model

from rlfleet.learner.fleet import Child, start_child, stop_child, wait_listening
from rlfleet.learner.pool import NoRolloutServer, PoolConfig, RolloutPool, endpoints
from rlfleet.learner.schedule import batch_indices
from rlfleet.learner.tasks import BuiltinConfig, builtin_tasks
from rlfleet.rollout.records import (
    Completion,
    FinishReason,
    GenerateRequest,
    Prompt,
    SamplingParams,
    VersionSpan,
    WeightUpdateResult,
)

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]


# -- the pool, with fake servers -------------------------------------------------------------


def completion(prompt: str, sample: int, server: str, reason: FinishReason) -> Completion:
    return Completion(
        prompt_id=prompt,
        sample=sample,
        prompt_token_ids=(1,),
        token_ids=(2,),
        logprobs=(-0.5,),
        finish_reason=reason,
        versions=(VersionSpan(version=0, start=0, end=1),),
        text=server,
        seed=sample,
    )


class FakeClient:
    """Answers Generate with ``good`` samples (over the call's prompts in order), then fails
    as told; records each call's request."""

    def __init__(
        self, name: str, good: int | None, fail: str = "unavailable", up: bool = True
    ) -> None:
        self.name, self.good, self.fail, self.up = name, good, fail, up
        self.calls = 0
        self.requests: list[GenerateRequest] = []

    async def status(self) -> Any:
        if not self.up:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
            )
        return type("Status", (), {"version": 0})()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Completion]:
        self.calls += 1
        self.requests.append(request)
        given = 0
        for prompt in request.prompts:
            for i in range(prompt.n):
                if given == self.good:
                    if self.fail == "abort":
                        yield completion(prompt.id, i, self.name, FinishReason.ABORT)
                        return
                    raise grpc.aio.AioRpcError(
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.aio.Metadata(),
                        grpc.aio.Metadata(),
                        "gone",
                    )
                yield completion(prompt.id, i, self.name, FinishReason.STOP)
                given += 1

    async def close(self) -> None:
        pass


def pool_of(clients: dict[str, FakeClient], version: int = 3) -> RolloutPool:
    pool = RolloutPool(",".join(clients), PoolConfig(max_resends=2))
    for address, client in clients.items():
        pool.servers[address].client = client  # type: ignore[assignment]
        pool.servers[address].version = version
    return pool


def request(n: int = 4) -> GenerateRequest:
    return GenerateRequest(
        prompts=(Prompt(id="p", text="x", n=n),),
        sampling=SamplingParams(max_new_tokens=1, seed=7),
    )


@pytest.mark.parametrize("fail", ["unavailable", "abort"])
async def test_a_group_cut_off_is_re_sent_whole_to_another_server(fail: str) -> None:
    bad = FakeClient("bad", good=2, fail=fail)
    good = FakeClient("good", good=None)
    pool = pool_of({"10.0.0.1:1": bad, "10.0.0.2:1": good})
    got = [await pool.generate(request(), version=3) for _ in range(3)]
    # The failing server was tried once, its two samples dropped, and never asked again.
    assert bad.calls == 1 and pool.servers["10.0.0.1:1"].version is None
    for group in got:
        assert [c.sample for c in group.completions] == [0, 1, 2, 3]
        assert {c.text for c in group.completions} == {"good"}
    assert sorted(g.resent for g in got) == [0, 0, 1]


def requests(ids: Sequence[str], n: int = 2) -> list[GenerateRequest]:
    return [
        GenerateRequest(
            prompts=(Prompt(id=pid, text="x", n=n),),
            sampling=SamplingParams(max_new_tokens=1, seed=100 * k),
        )
        for k, pid in enumerate(ids)
    ]


async def test_groups_asked_together_go_out_as_one_call_per_server() -> None:
    """A step's groups reach each server in one call (its engine takes them in together),
    dealt to the servers in turn, each prompt with its own request's seed; duplicate
    prompt ids are told apart in the call and given back as they were."""
    a, b = FakeClient("a", good=None), FakeClient("b", good=None)
    pool = pool_of({"10.0.0.1:1": a, "10.0.0.2:1": b})
    asked = requests(["p0", "p1", "p2", "p1", "p4"], n=3)
    got = [x async for x in pool.generate_groups(asked, version=3)]
    assert sorted(i for i, _ in got) == [0, 1, 2, 3, 4]
    assert a.calls == 1 and b.calls == 1
    calls = {c.name: c.requests[0] for c in (a, b)}
    ids = sorted(p.id for call in calls.values() for p in call.prompts)
    assert ids == ["p0", "p1", "p1#1", "p2", "p4"]
    for call in calls.values():
        assert call.sampling.seed is None
        for p in call.prompts:
            assert p.seed == {"p0": 0, "p1": 100, "p2": 200, "p1#1": 300, "p4": 400}[p.id]
    for i, group in got:
        assert [c.sample for c in group.completions] == [0, 1, 2]
        assert {c.prompt_id for c in group.completions} == {asked[i].prompts[0].id}
        assert group.resent == 0


@pytest.mark.parametrize("fail", ["unavailable", "abort"])
async def test_a_failed_call_keeps_its_whole_groups_and_re_sends_the_rest(fail: str) -> None:
    """Each server gets two of the four groups; one fails in its second group (one sample
    of it came): its first group, whole, is kept; its second goes again to the other
    server. Every group comes back once."""
    bad = FakeClient("bad", good=3 + 1, fail=fail)
    good = FakeClient("good", good=None)
    pool = pool_of({"10.0.0.1:1": bad, "10.0.0.2:1": good})
    asked = requests(["p0", "p1", "p2", "p3"], n=3)
    got = [x async for x in pool.generate_groups(asked, version=3)]
    assert sorted(i for i, _ in got) == [0, 1, 2, 3]
    first, second = (p.id for p in bad.requests[0].prompts)
    assert bad.calls == 1 and pool.servers["10.0.0.1:1"].version is None
    assert good.calls == 2 and [second] in ([p.id for p in r.prompts] for r in good.requests)
    by_id = {asked[i].prompts[0].id: group for i, group in got}
    assert by_id[first].server == "10.0.0.1:1" and by_id[first].resent == 0
    assert by_id[second].server == "10.0.0.2:1" and by_id[second].resent == 1
    for group in by_id.values():
        assert [c.sample for c in group.completions] == [0, 1, 2]


async def test_only_servers_on_a_recent_enough_version_get_prompts() -> None:
    old, new = FakeClient("old", good=None), FakeClient("new", good=None)
    pool = pool_of({"10.0.0.1:1": old, "10.0.0.2:1": new})
    pool.servers["10.0.0.1:1"].version = 2
    for _ in range(4):
        assert (await pool.generate(request(), version=3)).server == "10.0.0.2:1"
    assert old.calls == 0
    pool.servers["10.0.0.2:1"].version = None
    with pytest.raises(NoRolloutServer, match="no rollout server serves version 3"):
        await pool.generate(request(), version=3)


async def test_prompts_are_spread_over_the_servers() -> None:
    a, b = FakeClient("a", good=None), FakeClient("b", good=None)
    pool = pool_of({"10.0.0.1:1": a, "10.0.0.2:1": b})
    await asyncio.gather(*(pool.generate(request(), version=3) for _ in range(10)))
    assert a.calls + b.calls == 10 and min(a.calls, b.calls) >= 4


async def test_too_many_failures_stop_the_group() -> None:
    clients = {f"10.0.0.{i}:1": FakeClient(str(i), good=1) for i in range(1, 5)}
    pool = pool_of(clients)
    with pytest.raises(NoRolloutServer, match="failed on 3 servers"):
        await pool.generate(request(), version=3)


async def test_a_push_revives_a_server_and_drops_one_that_fails() -> None:
    a, b = FakeClient("a", good=None), FakeClient("b", good=None)
    c = FakeClient("c", good=None, up=False)
    pool = pool_of({"10.0.0.1:1": a, "10.0.0.2:1": b, "10.0.0.3:1": c})
    for dead in ("10.0.0.1:1", "10.0.0.3:1"):
        pool.servers[dead].version = None  # (failed earlier)

    async def push(clients: Sequence[Any]) -> list[Any]:
        # The dead one that answers is pushed to again; the one that does not, is not.
        assert clients == [a, b]
        return [WeightUpdateResult(version=4, bytes=10, receive_s=0, apply_s=0), OSError("down")]

    report = await pool.push(4, push)
    assert report.served == ["10.0.0.1:1"] and "OSError: down" in report.failed["10.0.0.2:1"]
    assert "UNAVAILABLE" in report.failed["10.0.0.3:1"]
    assert pool.servers["10.0.0.1:1"].version == 4 and pool.servers["10.0.0.2:1"].version is None

    async def nobody(clients: Sequence[Any]) -> list[Any]:
        return [OSError("down")] * len(clients)

    with pytest.raises(NoRolloutServer, match="no rollout server took weights version 5"):
        await pool.push(5, nobody)


def test_endpoints_of_lists_and_names() -> None:
    assert endpoints("10.0.0.1:5, 10.0.0.2:6") == ["10.0.0.1:5", "10.0.0.2:6"]
    assert endpoints("localhost:7") == ["localhost:7"]
    assert endpoints("dns:///localhost:7")[0] in ("127.0.0.1:7", "[::1]:7")
    with pytest.raises(ValueError, match="dns:///name:port"):
        endpoints("dns:///localhost")


# -- two of each, one of each killed ---------------------------------------------------------


def _kill_group(child: Child) -> None:
    os.killpg(child.pgid, signal.SIGKILL)
    child.proc.wait()


@pytest.mark.timeout(600)
async def test_a_run_survives_losing_a_rollout_and_a_sandbox_server(
    tmp_path: Path, require_root: None
) -> None:
    model = tmp_path / "model"
    subprocess.run(
        [*RLFLEET, "model", "init", "--preset", "tiny", "--seed", "0", str(model)], check=True
    )
    fleet_dir = tmp_path / "fleet"
    children = [
        start_child(
            f"rollout{i}",
            ["serve", "rollout", "--engine", "torch", "--model", str(model)],
            fleet_dir / f"rollout{i}.log",
            fleet_dir,
        )
        for i in range(2)
    ] + [
        start_child(
            f"sandbox{i}",
            ["serve", "sandbox", "--workers", "1"],
            fleet_dir / f"sandbox{i}.log",
            fleet_dir,
        )
        for i in range(2)
    ]
    run_dir = tmp_path / "run"
    steps, per, n = 8, 4, 4
    try:
        for child in children:
            await wait_listening(child, 120)
        rollout = ",".join(c.target for c in children[:2])
        verifier = ",".join(c.target for c in children[2:])
        proc = subprocess.Popen(
            [
                *RLFLEET, "train", "--run-dir", str(run_dir), "--steps", str(steps),
                "--seed", "4", "--rollout", rollout, "--verifier", verifier,
                f"model={json.dumps(str(model))}", f"rollout.prompts_per_step={per}",
                f"rollout.n={n}", "rollout.max_staleness=1", "log_every=1",
                # (generation the longest phase: a batch is generating at the kill)
                "rollout.max_new_tokens=128",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not metrics.is_file() or len(metrics.read_text().splitlines()) < 3:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "3 steps not done in 300 s"
            await asyncio.sleep(0.05)
        _kill_group(children[0])
        _kill_group(children[2])
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the run did not end within 300 s of the kill; its stderr:\n{err}")
        assert proc.returncode == 0, err
    finally:
        for child in children:
            stop_child(child)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(steps))
    tasks = builtin_tasks(BuiltinConfig(seed=4))
    for r in records:
        want = [tasks[i].id for i in batch_indices(len(tasks), 4, r["step"] * per, per)]
        assert r["prompt_ids"] == want
        # Every prompt's group whole, once: a duplicate would make more, a loss fewer.
        assert r["samples"] == per * n and r["scored"] == per * n, r
        assert r["staleness"] <= 1
    # The run went on with one rollout server once the other was gone.
    assert records[0]["servers"] == 2 and records[-1]["servers"] == 1
    # The groups the killed server was generating were generated again elsewhere.
    assert sum(r["resent"] for r in records) >= 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("rlfleet train: ") for line in lines), err
    assert "re-sent" in err


def test_bench_train_prints_both_modes(require_root: None) -> None:
    r = subprocess.run(
        [*RLFLEET, "bench", "train", "--steps", "2", "--warmup", "1", "rollout.prompts_per_step=2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].strip().startswith("synchronous:") and "over 2 steps" in lines[0]
    assert lines[2].strip().startswith("max_staleness=1:") and "staleness <= 1" in lines[2]
    for cpu in (lines[1], lines[3]):
        # Every component did work in the measured steps, and the bound follows from it.
        found = dict(re.findall(r"(learner|rollout server|sandbox server) ([0-9.]+)", cpu))
        assert set(found) == {"learner", "rollout server", "sandbox server"}, cpu
        assert all(float(v) > 0 for v in found.values()), cpu
        total = float(re.search(r"= ([0-9.]+);", cpu).group(1))  # type: ignore[union-attr]
        assert abs(total - sum(float(v) for v in found.values())) < 0.005, cpu
    assert lines[4].startswith("speed-up of max_staleness=1: ")
    assert lines[-1].startswith("its step time over the CPU bound: ")


@pytest.mark.timeout(600)
def test_train_under_torchrun_on_two_ranks_takes_the_step_one_rank_takes(
    tmp_path: Path, require_root: None
) -> None:
    """Rank 0 leads (fleet, run dir), rank 1 follows its collectives; on the same first
    batch the two-rank FSDP step has the one-rank step's loss and gradient norm."""
    model = write_digit_model(tmp_path / "digits")
    args = [
        "train", "--steps", "2", "--seed", "3", f"model={json.dumps(str(model))}",
        "rollout.prompts_per_step=8", "rollout.n=8", "checkpoint_every=1",
    ]  # fmt: skip
    one = subprocess.run(
        [*RLFLEET, *args, "--run-dir", str(tmp_path / "one")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    two = subprocess.run(
        [*torchrun, "--nproc-per-node", "2", "-m", "rlfleet.cli", *args,
         "--run-dir", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    got = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    want = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").open()]
    assert [r["step"] for r in got] == [0, 1]
    assert got[0]["prompt_ids"] == want[0]["prompt_ids"]
    assert got[0]["reward_mean"] == want[0]["reward_mean"]
    assert 0 < want[0]["reward_mean"] < 1  # (rewards differ: the step moves the weights)
    assert got[0]["grad_norm"] == pytest.approx(want[0]["grad_norm"], rel=1e-4)
    assert got[0]["train"]["loss"] == pytest.approx(want[0]["train"]["loss"], abs=1e-6)
    assert got[0]["train"]["tokens"] == want[0]["train"]["tokens"]
    # Both ranks wrote their shards of each checkpoint; rank 0 alone the rest.
    checkpoints = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000001", "step-00000002"]
    assert (tmp_path / "two" / "final" / "model.safetensors").is_file()


@pytest.mark.timeout(600)
def test_dapo_refills_dropped_groups_and_kl_and_tis_are_reported(
    tmp_path: Path, require_root: None
) -> None:
    """DAPO's dynamic sampling, the KL term to the frozen initial policy and truncated
    importance sampling, in a real run: groups whose rewards are all equal are replaced by
    refill prompts, and the loss reports its KL and TIS terms."""
    model = write_digit_model(tmp_path / "digits")
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [
            *RLFLEET, "train", "--run-dir", str(run_dir), "--steps", "2", "--seed", "5",
            f"model={json.dumps(str(model))}", "rollout.prompts_per_step=6", "rollout.n=4",
            'algorithm.algorithm="dapo"', "algorithm.max_length=1",
            "algorithm.kl_beta=0.05", "algorithm.tis_cap=2.0",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [rec["step"] for rec in records] == [0, 1]
    # With one right digit in ten, most groups of 4 are all wrong: refills are needed.
    assert any(rec["refill_ids"] for rec in records)
    for rec in records:
        assert rec["samples"] == 4 * (6 + len(rec["refill_ids"]))
        assert rec["trained_samples"] <= 6 * 4 and rec["trained_samples"] % 4 == 0
        assert rec["train"]["sequences"] == rec["trained_samples"]
        assert "kl" in rec["train"] and rec["train"]["tis_weight_mean"] > 0
    # Step 0 trains the initial policy itself: no divergence from the reference yet.
    assert records[0]["train"]["kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.timeout(600)
async def test_a_resumed_run_numbers_its_versions_above_what_the_servers_serve(
    tmp_path: Path, require_root: None
) -> None:
    """Servers that outlived the learner serve a newer version than the checkpoint's step:
    the resumed run pushes its weights above it before its first batch, and goes on."""
    model = tmp_path / "model"
    subprocess.run(
        [*RLFLEET, "model", "init", "--preset", "tiny", "--seed", "0", str(model)], check=True
    )
    fleet_dir = tmp_path / "fleet"
    children = [
        start_child(
            "rollout",
            ["serve", "rollout", "--engine", "torch", "--model", str(model)],
            fleet_dir / "rollout.log",
            fleet_dir,
        ),
        start_child(
            "sandbox", ["serve", "sandbox", "--workers", "1"], fleet_dir / "sb.log", fleet_dir
        ),
    ]
    run_dir = tmp_path / "run"
    try:
        for child in children:
            await wait_listening(child, 120)
        first = subprocess.run(
            [
                *RLFLEET, "train", "--run-dir", str(run_dir), "--steps", "4", "--seed", "1",
                "--rollout", children[0].target, "--verifier", children[1].target,
                f"model={json.dumps(str(model))}", "rollout.prompts_per_step=2", "rollout.n=2",
                "checkpoint_every=2",
            ],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        # Back to the checkpoint at step 2, while the server serves version 4.
        shutil.rmtree(run_dir / "checkpoints" / "step-00000004")
        resumed = subprocess.run(
            [*RLFLEET, "train", "--resume", str(run_dir), "--steps", "5"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
    finally:
        for child in children:
            stop_child(child)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    # Steps 2.. trained versions 5.. (base 3: the server served 4), none stale.
    assert [r["policy_version"] for r in records] == [0, 1, 5, 6, 7]
    assert all(r["staleness"] == 0 for r in records)
