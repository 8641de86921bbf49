"""Weights pushed by broadcast (``push.transport = "distributed"``), end to end on CPU with
gloo: a 2-rank FSDP learner (real processes) gathers its shards and broadcasts each version
from rank 0 through four rollout servers: three with the sglang engine (http surface) whose
SGLang is the fake server process that really joins the learner's group and really
receives: one takes both versions, whose received tensors equal the learner's full state
dict; one exits mid-broadcast; one serves a model of another shape and refuses the
manifest; and one with the torch engine, which receives on its own and then serves exactly
those weights. Neither failure holds the learner or the good servers. Then the service's own
answers: an engine that cannot receive broadcasts, an unjoined group, bad group fields."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from learner_launch import launch
from rollout_fakes import FakeEngine, Running
from safetensors.torch import load_file, save_file

from rlfleet.learner.broadcast import (
    BroadcastFailed,
    BroadcastPusher,
    BroadcastUnsupported,
    PushConfig,
    local_address_towards,
)
from rlfleet.rollout.client import GroupNotJoined, RolloutClient, WeightsRejected
from rlfleet.rollout.model_init import write_model
from rlfleet.rollout.records import DType, TensorSpec, WeightGroup, WeightManifest
from rlfleet.rollout.sglang_engine import SglangEngine, SglangEngineConfig, tensor_parallel_ranks
from rlfleet.rollout.torch_engine import TorchEngine, TorchEngineConfig

pytestmark = pytest.mark.timeout(240)

TESTS = Path(__file__).resolve().parent
FAKE_SERVER = (sys.executable, str(TESTS / "sglang_fake_server.py"))


def sglang_config(model: Path, work: Path, *fake_flags: str) -> SglangEngineConfig:
    return SglangEngineConfig(
        model_dir=model,
        surface="http",
        launcher=FAKE_SERVER,
        extra_args=fake_flags,
        env={"GLOO_SOCKET_IFNAME": "lo"},
        work_dir=work,
        start_timeout_s=60,
        request_timeout_s=60,
        update_timeout_s=60,
    )


def reshaped_copy(model: Path, out: Path) -> Path:
    """``model`` with one tensor of another shape (a server serving another model)."""
    shutil.copytree(model, out)
    tensors = load_file(str(out / "model.safetensors"))
    name = next(n for n in tensors if n.endswith("mlp.up_proj.weight"))
    tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("broadcast")
    model = tmp / "model"
    write_model(model, seed=5)
    other = reshaped_copy(model, tmp / "other")
    received = {k: tmp / f"received-{k}" for k in ("good", "dies", "other")}
    for d in received.values():
        d.mkdir()
    configs = {
        "good": sglang_config(model, tmp / "w-good", "--fake-receive-dir", str(received["good"])),
        "dies": sglang_config(
            model,
            tmp / "w-dies",
            "--fake-receive-dir",
            str(received["dies"]),
            "--fake-die-after-tensors",
            "2",
        ),
        "other": sglang_config(
            other, tmp / "w-other", "--fake-receive-dir", str(received["other"])
        ),
    }

    async def run() -> dict[str, Any]:
        engines: dict[str, Any] = dict(
            zip(
                configs,
                await asyncio.gather(*(SglangEngine.start(c) for c in configs.values())),
                strict=True,
            )
        )
        # The torch engine receives too (its own gloo side, in this process).
        engines["torch"] = TorchEngine(TorchEngineConfig(model=model, max_batch=2, max_seq_len=64))
        try:
            async with (
                Running(engines["good"]) as good,
                Running(engines["dies"]) as dies,
                Running(engines["other"]) as other_server,
                Running(engines["torch"]) as torch_server,
            ):
                targets = {
                    "good": good.target,
                    "dies": dies.target,
                    "other": other_server.target,
                    "torch": torch_server.target,
                }
                await launch(
                    {
                        "model": str(model),
                        "out": str(tmp),
                        "mode": "broadcast",
                        "targets": list(targets.values()),
                        "timeout_s": 30.0,
                    },
                    ranks=2,
                )
                served = {
                    n: p.detach().clone()
                    for n, p in engines["torch"].model.named_parameters(remove_duplicate=False)
                }
                return {
                    "targets": targets,
                    "versions": {k: e.version for k, e in engines.items()},
                    "torch_served": served,
                }
        finally:
            await asyncio.gather(*(e.close() for e in engines.values()))

    found = asyncio.run(run())
    return {**found, "received": received, **torch.load(tmp / "broadcast.pt")}


def test_received_tensors_are_the_learners_full_state_dict(pushed: dict[str, Any]) -> None:
    # The tiny model ties its head to the embedding: exported once, under the first name
    # (the engines tie it again from the config).
    tied = {"lm_head.weight": "model.embed_tokens.weight"}
    for version, full in zip((1, 2), pushed["full"], strict=True):
        got = torch.load(pushed["received"]["good"] / f"v{version}.pt")
        assert set(got) == set(full) - set(tied)
        for name, tensor in full.items():
            assert torch.equal(got[tied.get(name, name)], tensor), (version, name)
    # The step between the pushes changed the weights: version 2 is not version 1 again.
    first, second = pushed["full"]
    assert any(not torch.equal(first[n], second[n]) for n in first)
    assert pushed["versions"]["good"] == 2


def test_the_torch_engine_serves_exactly_the_broadcast_weights(pushed: dict[str, Any]) -> None:
    assert pushed["versions"]["torch"] == 2
    served, full = pushed["torch_served"], pushed["full"][1]
    assert served.keys() == full.keys()  # (tied names included: the head is the embedding)
    for name, tensor in full.items():
        assert torch.equal(served[name], tensor), name


def test_a_server_gone_mid_broadcast_or_refusing_leaves_the_others_served(
    pushed: dict[str, Any],
) -> None:
    targets = pushed["targets"]
    first, second = pushed["reports"]
    took = [targets["good"], targets["torch"]]
    assert first["served"] == took and second["served"] == took
    assert set(first["failed"]) == {targets["dies"], targets["other"]}
    assert "broadcast of" in first["failed"][targets["dies"]]
    assert first["failed"][targets["other"]].startswith("WeightsRejected: tensors:")
    assert "up_proj" in first["failed"][targets["other"]]
    # Neither took a version; the one that died received nothing whole.
    assert pushed["versions"]["dies"] == 0 and pushed["versions"]["other"] == 0
    assert not list(pushed["received"]["dies"].iterdir())
    assert not list(pushed["received"]["other"].iterdir())
    assert first["bytes"] > 0


# -- the service's answers, in process -------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    write_model(d, seed=5)
    return d


@pytest.fixture
async def unable_server() -> AsyncIterator[Running]:
    """A rollout server whose engine cannot receive broadcasts."""
    engine = FakeEngine()
    try:
        async with Running(engine) as server:
            yield server
    finally:
        await engine.close()


def group(name: str = "g", **override: Any) -> WeightGroup:
    fields: dict[str, Any] = {
        "master_address": "127.0.0.1",
        "master_port": 29999,
        "group_name": name,
        "backend": "gloo",
        "world_size": 2,
        "rank_offset": 1,
    }
    return WeightGroup(**{**fields, **override})


async def test_an_engine_that_cannot_receive_says_so(unable_server: Running) -> None:
    async with RolloutClient(unable_server.target) as client:
        assert (await client.status()).broadcast_ranks == 0
        with pytest.raises(WeightsRejected, match="cannot receive weights by broadcast") as e:
            await client.join_weight_group(group(), timeout_s=10)
        assert e.value.code is grpc.StatusCode.FAILED_PRECONDITION
        pusher = BroadcastPusher(PushConfig(transport="distributed"), torch.device("cpu"), 10.0)
        with pytest.raises(BroadcastUnsupported, match=r"engine fake.*push.transport = \"grpc\""):
            await pusher.check([client])


async def test_bad_group_fields_and_unjoined_groups_are_refused(unable_server: Running) -> None:
    manifest = WeightManifest(
        version=1, tensors=(TensorSpec(name="x", dtype=DType.FLOAT32, shape=(1,)),)
    )
    async with RolloutClient(unable_server.target) as client:
        for bad, field in (
            (group(backend="mpi"), "backend"),
            (group(rank_offset=0), "rank_offset"),
            (group(world_size=1), "world_size"),
            (group(master_port=0), "master_port"),
        ):
            with pytest.raises(WeightsRejected, match=field) as e:
                await client.join_weight_group(bad, timeout_s=10)
            assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT
        call = client.broadcast_weights(manifest, "never-joined", timeout_s=10)
        # (This engine cannot receive at all: refused before the group is looked at.)
        with pytest.raises(WeightsRejected, match="cannot receive"):
            await call.accepted()


async def test_a_group_the_server_is_not_in_is_not_found(model_dir: Path, tmp_path: Path) -> None:
    engine = await SglangEngine.start(sglang_config(model_dir, tmp_path / "w"))
    try:
        async with Running(engine) as server, RolloutClient(server.target) as client:
            assert (await client.status()).broadcast_ranks == 1
            manifest = WeightManifest(
                version=1,
                tensors=(TensorSpec(name="lm_head.weight", dtype=DType.FLOAT32, shape=(1,)),),
            )
            call = client.broadcast_weights(manifest, "never-joined", timeout_s=10)
            with pytest.raises(GroupNotJoined, match="join it first"):
                await call.accepted()
    finally:
        await engine.close()


async def test_a_server_that_hangs_is_bounded_and_the_other_one_served(
    model_dir: Path, tmp_path: Path
) -> None:
    """In this process, as a world of one: the hung server's call ends at its deadline,
    the learner goes on, the other server takes the version."""
    from transformers import AutoModelForCausalLM

    received = tmp_path / "received"
    received.mkdir()
    flags = ("--fake-receive-dir", str(received))
    good, hung = await asyncio.gather(
        SglangEngine.start(sglang_config(model_dir, tmp_path / "w-good", *flags)),
        SglangEngine.start(
            sglang_config(model_dir, tmp_path / "w-hung", *flags, "--fake-stall-receive")
        ),
    )
    try:
        async with (
            Running(good) as good_server,
            Running(hung) as hung_server,
            RolloutClient(good_server.target) as good_client,
            RolloutClient(hung_server.target) as hung_client,
        ):
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
            config = PushConfig(transport="distributed", timeout_s=15)
            pusher = BroadcastPusher(config, torch.device("cpu"), call_timeout_s=90)
            outcomes = await pusher.push([good_client, hung_client], model, 1)
            assert not isinstance(outcomes[0], Exception), outcomes[0]
            assert outcomes[0].version == 1
            # The learner's broadcast to it timed out (gloo's wait), and its call was ended.
            assert isinstance(outcomes[1], BroadcastFailed), outcomes[1]
            assert good_server.target in pusher.groups and hung_server.target not in pusher.groups
            assert good.version == 1 and hung.version == 0
            await hung.close()  # (its update call waits on the hung server until then)
    finally:
        await asyncio.gather(good.close(), hung.close())


def test_tensor_parallel_ranks_from_sglang_flags() -> None:
    assert tensor_parallel_ranks(()) == 1
    assert tensor_parallel_ranks(("--tp-size", "4")) == 4
    assert tensor_parallel_ranks(("--tp=2", "--mem-fraction-static", "0.8")) == 2
    assert tensor_parallel_ranks(("--tp-size", "2", "--dp-size", "2")) == 0
    assert tensor_parallel_ranks(("--pp-size", "2")) == 0


def test_local_address_towards_a_loopback_server() -> None:
    assert local_address_towards("127.0.0.1:50052") == "127.0.0.1"
    assert local_address_towards("localhost:50052") in ("127.0.0.1", "::1")


def test_push_config_is_checked() -> None:
    from rlfleet.learner.config import ConfigError, load_config

    config = load_config(overrides=["push.transport=distributed", "push.dtype=bfloat16"])
    assert config.push.transport == "distributed" and config.push.dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"push\.transport"):
        load_config(overrides=["push.transport=nccl"])
    with pytest.raises(ValueError, match="timeout_s"):
        PushConfig(timeout_s=0)
    with pytest.raises(ValueError, match="nccl needs the learner on CUDA"):
        BroadcastPusher(PushConfig(backend="nccl"), torch.device("cpu"), 10.0)
    assert BroadcastPusher(PushConfig(), torch.device("cpu"), 10.0).backend == "gloo"
    assert PushConfig(dtype="bfloat16").torch_dtype is torch.bfloat16
