"""The rollout service over real gRPC on loopback, with a fake engine and a fake verifier:
scored completions streamed as they finish, seeds, cancellation, verifier outages, invalid
input, and a SIGTERM drain of a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rollout_fakes import (
    FakeEngine,
    FakeVerifier,
    Running,
    code_prompt,
    generate_request,
    math_prompt,
    sample_text,
    until,
)

from rlfleet.errors import Unavailable
from rlfleet.rollout.engine import EngineError
from rlfleet.rollout.records import SampleRequest, TokenChunk
from rlfleet.rollout.scoring import NO_VERIFIER, NOT_REQUESTED, case_for, extract_code
from rlfleet.sandbox.client import ClientConfig, VerifierClient
from rlfleet.sandbox.records import CodeCase, MathCase, StdioTest
from rlfleet.v1 import rollout_pb2 as pb
from rlfleet.v1 import verifier_pb2 as vpb

ROOT = Path(__file__).resolve().parent.parent
SERVING = health_pb2.HealthCheckResponse.SERVING


async def collect(s: Running, request: pb.GenerateRequest, **kw: object) -> list[pb.Completion]:
    return [c async for c in s.stub.Generate(request, timeout=30, **kw)]


async def test_scored_completions_for_math_and_code() -> None:
    verifier = FakeVerifier()
    async with Running(FakeEngine(), verifier) as s:
        request = generate_request(
            math_prompt("m", gold="q", n=6), code_prompt("c", n=2), max_new_tokens=12, seed=7
        )
        out = await collect(s, request)
    assert sorted((c.prompt_id, c.sample) for c in out) == [
        ("c", 0),
        ("c", 1),
        *[("m", i) for i in range(6)],
    ]
    for c in out:
        prompt = "2+2=" if c.prompt_id == "m" else "write"
        assert list(c.prompt_token_ids) == list(prompt.encode())
        assert c.seed == 7 + c.sample
        assert c.text == sample_text(tuple(c.prompt_token_ids), c.seed, 12)
        assert list(c.token_ids) == list(c.text.encode())
        assert len(c.logprobs) == 12 and c.logprobs[0] == pytest.approx(-0.01)
        assert c.finish_reason == pb.FINISH_REASON_LENGTH
        assert [(v.version, v.start, v.end) for v in c.versions] == [(0, 0, 12)]
        assert c.scored and c.unscored_reason == ""
        assert c.verification.id == f"{c.prompt_id}/{c.sample}"
        if c.prompt_id == "m":
            assert c.verification.reward == float("q" in c.text)
        else:
            assert (c.verification.passed, c.verification.total) == (2, 2)
        assert 0 <= c.timings.first_token_s <= c.timings.generate_s
    # Each completion went to the verifier as what the spec asks: code gets the text.
    by_id = {case.id: case for case in verifier.seen}
    code = by_id["c/1"]
    assert isinstance(code, CodeCase) and code.language == "python" and len(code.tests) == 2
    assert code.code == next(c.text for c in out if (c.prompt_id, c.sample) == ("c", 1))
    math = by_id["m/0"]
    assert isinstance(math, MathCase) and math.gold == "q"


async def test_samples_get_distinct_seeds_and_a_seed_reproduces_its_sample() -> None:
    async with Running(FakeEngine()) as s:
        out = await collect(s, generate_request(math_prompt("a", n=4), math_prompt("b", n=4)))
        for pid in "ab":
            seeds = sorted(c.seed for c in out if c.prompt_id == pid)
            assert seeds == list(range(seeds[0], seeds[0] + 4)), "seed + i per prompt"
        assert len({c.text for c in out}) == 8
        again = out[3]
        (same,) = await collect(s, generate_request(math_prompt(again.prompt_id), seed=again.seed))
        assert (same.seed, same.token_ids) == (again.seed, again.token_ids)
        assert s.engine.started[-1].sampling.seed == again.seed


async def test_a_calls_samples_reach_the_engine_together_each_prompt_with_its_seed() -> None:
    """One ``generate_many`` per call, prompt by prompt, sample by sample; a prompt's own
    seed overrides the call's (a learner sends a step's groups, each seeded, in one call)."""
    async with Running(FakeEngine()) as s:
        a, b, c = math_prompt("a", n=2), math_prompt("b", n=3), math_prompt("c", n=2)
        b.seed, c.seed = 100, 2**64 - 1
        out = await collect(s, generate_request(a, b, c, seed=7))
        (keys,) = s.engine.together
        assert [k.split("/", 1)[1] for k in keys] == [
            *(f"a/{i}" for i in range(2)),
            *(f"b/{i}" for i in range(3)),
            *(f"c/{i}" for i in range(2)),
        ]
        seeds = {(c.prompt_id, c.sample): c.seed for c in out}
        assert seeds == {
            ("a", 0): 7,
            ("a", 1): 8,
            ("b", 0): 100,
            ("b", 1): 101,
            ("b", 2): 102,
            ("c", 0): 2**64 - 1,
            ("c", 1): 0,
        }


async def test_completions_stream_as_they_finish_not_batched() -> None:
    slow = asyncio.Event()
    engine = FakeEngine(gates={"slow": slow})
    async with Running(engine, FakeVerifier()) as s:
        call = s.stub.Generate(
            generate_request(math_prompt("slow"), math_prompt("fast", n=2)), timeout=30
        )
        # The slow sample cannot finish until the test has read both fast ones.
        first = await asyncio.wait_for(call.read(), 10)
        second = await asyncio.wait_for(call.read(), 10)
        assert {first.prompt_id, second.prompt_id} == {"fast"}
        assert first.scored and second.scored
        slow.set()
        third = await asyncio.wait_for(call.read(), 10)
        assert third.prompt_id == "slow"
        assert await call.read() == grpc.aio.EOF


async def test_cancelling_the_call_cancels_generation_and_verification() -> None:
    verifier = FakeVerifier(hang=True)
    engine = FakeEngine(step_s=0.01, length=lambda r: 2 if "/quick/" in r.key else None)
    async with Running(engine, verifier) as s:
        call = s.stub.Generate(
            generate_request(math_prompt("quick"), math_prompt("long", n=3), max_new_tokens=10_000),
            timeout=30,
        )
        await until(lambda: len(verifier.seen) == 1 and engine.running == 3, "work in flight")
        call.cancel()
        await until(lambda: len(engine.cancelled) == 3, "the engine to see the cancellations")
        await until(lambda: verifier.cancelled == ["quick/0"], "the verification cancelled")
        assert sorted(engine.cancelled) == [f"0/long/{i}" for i in range(3)]
        assert engine.running == 0
        await until(lambda: s.metric("rlfleet_rollout_requests_in_flight") == 0, "the call to end")


async def test_deadline_cancels_generation() -> None:
    engine = FakeEngine(step_s=0.01)
    async with Running(engine) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect_with_timeout(
                s, generate_request(math_prompt("a", n=2), max_new_tokens=10_000), 0.3
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: len(engine.cancelled) == 2, "the engine to see the deadline")


async def collect_with_timeout(
    s: Running, request: pb.GenerateRequest, timeout: float
) -> list[pb.Completion]:
    return [c async for c in s.stub.Generate(request, timeout=timeout)]


@pytest.mark.parametrize(
    ("verifier", "reason"),
    [
        (
            FakeVerifier(fail=type("Down", (Unavailable,), {})("no verifier at x")),
            "verifier unavailable: no verifier at x",
        ),
        (FakeVerifier(fail=RuntimeError("boom")), "verifier failed: RuntimeError: boom"),
        (FakeVerifier(hang=True), "verifier: no answer within 0.3 s"),
        (None, NO_VERIFIER),
    ],
    ids=["unavailable", "error", "hang", "none"],
)
async def test_a_verifier_outage_gives_unscored_completions_not_a_hang(
    verifier: FakeVerifier | None, reason: str
) -> None:
    async with Running(FakeEngine(), verifier, verify_timeout_s=0.3) as s:
        t0 = time.monotonic()
        out = await collect(s, generate_request(math_prompt("m", n=3), code_prompt("c")))
        assert time.monotonic() - t0 < 5
        assert len(out) == 4
        for c in out:
            assert not c.scored and not c.HasField("verification")
            assert c.unscored_reason == reason
            assert c.timings.verify_s == 0
        if verifier is not None:
            assert s.metric("rlfleet_rollout_verifier_errors_total") == 4


async def test_an_unreachable_verifier_fleet_gives_unscored_completions_in_bounded_time() -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = ClientConfig(attempts=2, backoff_s=0.01, timeout_s=2)
    client = VerifierClient(f"127.0.0.1:{port}", config)
    async with client, Running(FakeEngine(), client) as s:
        t0 = time.monotonic()
        out = await collect(s, generate_request(math_prompt("m", n=2)))
        assert time.monotonic() - t0 < 10
    assert [
        c.unscored_reason.startswith("verifier unavailable: no verifier answers") for c in out
    ] == [True, True]


async def test_prompts_without_a_spec_are_returned_unscored() -> None:
    verifier = FakeVerifier()
    async with Running(FakeEngine(), verifier) as s:
        (c,) = await collect(
            s, generate_request(pb.Prompt(id="p", token_ids=pb.TokenIds(ids=[5, 6]), n=1))
        )
    assert (c.scored, c.unscored_reason, list(c.prompt_token_ids)) == (False, NOT_REQUESTED, [5, 6])
    assert verifier.seen == []


async def test_stop_strings_are_cut_from_the_text_and_stop_ids_end_it() -> None:
    engine = FakeEngine(scripts={"s": "abcSTOPdef"})
    async with Running(engine) as s:
        (c,) = await collect(
            s, generate_request(pb.Prompt(id="s", text="x", n=1), max_new_tokens=20, stop=["STOP"])
        )
        assert c.finish_reason == pb.FINISH_REASON_STOP
        assert c.text == "abc"  # (the fake stops only at its script's end; the text is cut)
        (d,) = await collect(
            s,
            generate_request(
                pb.Prompt(id="s", text="x", n=1), max_new_tokens=20, stop_token_ids=[ord("S")]
            ),
        )
        assert (d.text, d.finish_reason) == ("abcS", pb.FINISH_REASON_STOP)


async def test_an_engine_failure_fails_the_call_and_the_server_stays_up() -> None:
    class Broken(FakeEngine):
        async def generate(self, request: SampleRequest) -> AsyncIterator[TokenChunk]:
            raise EngineError("the device is gone")
            yield  # (an async generator)

    async with Running(Broken()) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(s, generate_request(math_prompt("m")))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert await s.health() == SERVING


BAD = [
    (generate_request(), "prompts"),
    (pb.GenerateRequest(prompts=[math_prompt("m")]), "sampling"),
    (generate_request(math_prompt("m"), max_new_tokens=0), "sampling.max_new_tokens"),
    (generate_request(math_prompt("m"), top_p=0.0), "sampling.top_p"),
    (generate_request(math_prompt("m"), top_k=-1), "sampling.top_k"),
    (generate_request(math_prompt("m"), stop=["x", ""]), "sampling.stop[1]"),
    (generate_request(math_prompt("m"), stop_token_ids=[-3]), "sampling.stop_token_ids[0]"),
    (generate_request(math_prompt("a"), math_prompt("b"), math_prompt("c", n=0)), "prompts[2].n"),
    (generate_request(math_prompt("a"), math_prompt("a")), "prompts[1].id"),
    (generate_request(pb.Prompt(text="x", n=1)), "prompts[0].id"),
    (generate_request(pb.Prompt(id="p", n=1)), "prompts[0].input"),
    (generate_request(pb.Prompt(id="p", text="", n=1)), "prompts[0].text"),
    (
        generate_request(pb.Prompt(id="p", token_ids=pb.TokenIds(ids=[1, -1]), n=1)),
        "prompts[0].token_ids[1]",
    ),
    (generate_request(math_prompt("m", gold="")), "prompts[0].verification.math.gold"),
    (
        generate_request(pb.Prompt(id="p", text="x", n=1, verification=pb.Verification())),
        "prompts[0].verification.kind",
    ),
    (
        generate_request(
            pb.Prompt(
                id="p",
                text="x",
                n=1,
                verification=pb.Verification(
                    code=vpb.CodeCase(
                        language="cobol",
                        problem=vpb.Problem(stdio_tests=[vpb.StdioTest(stdout="1")]),
                    )
                ),
            )
        ),
        "prompts[0].verification.code.language",
    ),
    (
        generate_request(
            pb.Prompt(
                id="p",
                text="x",
                n=1,
                verification=pb.Verification(
                    code=vpb.CodeCase(
                        language="python",
                        problem=vpb.Problem(
                            stdio_tests=[vpb.StdioTest(stdout="1"), vpb.StdioTest(stdin="2")]
                        ),
                    )
                ),
            )
        ),
        "prompts[0].verification.code.tests[1].stdout",
    ),
    (
        generate_request(
            pb.Prompt(
                id="p",
                text="x",
                n=1,
                verification=pb.Verification(
                    code=vpb.CodeCase(language="python", problem_ref="ab")
                ),
            )
        ),
        "prompts[0].verification.code.problem_ref",
    ),
]


@pytest.mark.parametrize(("request_pb", "field"), BAD, ids=[f for _, f in BAD])
async def test_invalid_requests_name_the_field_and_the_server_stays_serving(
    request_pb: pb.GenerateRequest, field: str
) -> None:
    engine = FakeEngine()
    async with Running(engine) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(s, request_pb)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}: "), err.value.details()
        assert engine.started == []
        assert await s.health() == SERVING


async def test_garbage_bytes_are_invalid_argument() -> None:
    async with Running(FakeEngine()) as s:
        raw = s.channel.unary_stream("/rlfleet.v1.Rollout/Generate")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in raw(b"\xff\xfe\xfd\x00garbage"):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await s.health() == SERVING


async def test_too_many_samples_are_refused() -> None:
    async with Running(FakeEngine(), max_samples_per_call=4) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(s, generate_request(math_prompt("a", n=3), math_prompt("b", n=2)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("prompts: 5 samples")


async def test_status_and_metrics() -> None:
    async with Running(FakeEngine()) as s:
        await collect(s, generate_request(math_prompt("m", n=2), max_new_tokens=5))
        st = await s.stub.Status(pb.StatusRequest(), timeout=10)
        assert (st.engine, st.model, st.version, st.running, st.device) == (
            "fake",
            "fake-model",
            0,
            0,
            "cpu",
        )
        assert s.metric("rlfleet_rollout_tokens_generated_total") == 10
        assert (
            s.metric("rlfleet_rollout_completions_total", finish_reason="length", scored="false")
            == 2
        )
        assert s.metric("rlfleet_rollout_policy_version") == 0


def test_code_is_the_last_fenced_block_or_the_whole_text() -> None:
    text = "Idea:\n```python\nprint(1)\n```\nBetter:\n```py\nprint(2)\n```\nDone."
    assert extract_code(text) == "print(2)\n"
    assert extract_code("````\na ``` b\n````") == "a ``` b\n"
    assert extract_code("print(3)") == "print(3)"
    spec = CodeCase(id="x", language="python", code="", tests=(StdioTest(stdin="", stdout="2"),))
    case = case_for(spec, text, "p/1")
    assert isinstance(case, CodeCase) and (case.id, case.code, case.tests) == (
        "p/1",
        "print(2)\n",
        spec.tests,
    )
    math = case_for(MathCase(id="x", completion="", gold="4"), "so \\boxed{4}", "q/0")
    assert math == MathCase(id="q/0", completion="so \\boxed{4}", gold="4")


async def test_with_the_real_verifier_engine_on_math() -> None:
    if os.geteuid() != 0:
        pytest.fail("the local sandbox backend needs root (CI runs as root)")
    from rlfleet.sandbox.engine import Engine, EngineConfig
    from rlfleet.sandbox.worker_pool import PoolConfig

    verifier = await Engine.start(EngineConfig(pool=PoolConfig(workers=1)))
    engine = FakeEngine(scripts={"right": "so it is \\boxed{4}", "wrong": "\\boxed{5}"})
    try:
        async with Running(engine, verifier) as s:
            out = await collect(
                s,
                generate_request(
                    math_prompt("right", gold="4"),
                    math_prompt("wrong", gold="4"),
                    max_new_tokens=64,
                ),
            )
    finally:
        await verifier.close()
    by_id = {c.prompt_id: c for c in out}
    assert by_id["right"].verification.verdict == vpb.VERDICT_AC
    assert by_id["right"].verification.reward == 1.0
    assert by_id["right"].verification.extracted == "4"
    assert by_id["wrong"].verification.verdict == vpb.VERDICT_WA
    assert by_id["wrong"].verification.reward == 0.0
    assert all(c.timings.verify_s > 0 for c in out)


SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, "tests")
    from prometheus_client import CollectorRegistry
    from rollout_fakes import FakeEngine
    from rlfleet.grpc_server import ServerConfig, run_until_signalled
    from rlfleet.rollout.servicer import ServiceConfig, build_rollout_server

    async def main():
        config, registry = ServerConfig(port=0, grace_s=30), CollectorRegistry()
        srv, _ = build_rollout_server(config, ServiceConfig(), FakeEngine(step_s=0.02), None, registry)
        await run_until_signalled(srv, config, registry, lambda line: print(line, file=sys.stderr, flush=True))

    asyncio.run(main())
    print("server: stopped", file=sys.stderr, flush=True)
    """
)


async def test_sigterm_drains_calls_in_flight_then_exits_clean() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER_SCRIPT,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert "listening on 127.0.0.1:" in line, line
        target = line.rsplit(" ", 1)[1].strip()
        async with grpc.aio.insecure_channel(target) as channel:
            from rlfleet.v1 import rollout_pb2_grpc as pb_grpc

            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="rlfleet.v1.Rollout"), timeout=60
            )
            assert (await watch.read()).status == SERVING
            # 25 steps of 20 ms: still generating when the signal comes.
            call = pb_grpc.RolloutStub(channel).Generate(
                generate_request(math_prompt("inflight", n=2), max_new_tokens=25), timeout=60
            )
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            # Hang up the watch while the call in flight still holds the server open: a
            # watch left to the server's shutdown is cancelled there, and grpc prints that.
            watch.cancel()
            out = [c async for c in call]
            assert sorted(c.sample for c in out) == [0, 1]
            assert all(len(c.token_ids) == 25 for c in out)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        rest = (await proc.stderr.read()).decode()
        assert "server: stopped" in rest and "Traceback" not in rest, rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
