"""VerifierClient against in-process servers: round robin, retries of SE and of transient
errors on another server, transparent re-registration of evicted problems, streaming with
retries, and target parsing."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
from test_grpc_fakes import CannedVerifier, FakeEngine, Running, RunningCanned, code_case

from rlfleet.sandbox.client import ClientConfig, VerifierClient, VerifierUnavailable, channel_target
from rlfleet.sandbox.convert import UnknownEnumValue, problem_ref
from rlfleet.sandbox.records import (
    CallTest,
    Case,
    CheckerKind,
    CheckerSpec,
    CodeCase,
    MathCase,
    StdioTest,
    Verdict,
)
from rlfleet.sandbox.servicer import ProblemStore
from rlfleet.v1 import verifier_pb2 as pb

FAST = ClientConfig(backoff_s=0.001, attempts=6)


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_channel_target() -> None:
    assert channel_target("127.0.0.1:5001") == "127.0.0.1:5001"
    assert channel_target("dns:///verifier:5001") == "dns:///verifier:5001"
    assert channel_target("127.0.0.1:5001, 10.0.0.2:5002") == "ipv4:127.0.0.1:5001,10.0.0.2:5002"
    assert channel_target("[::1]:5001,[::1]:5002") == "ipv6:[::1]:5001,[::1]:5002"
    assert channel_target("ipv4:127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValueError, match="dns:///"):
        channel_target("a.example:1,b.example:2")


async def test_verify_code_and_math() -> None:
    async with Running(FakeEngine()) as s, VerifierClient(s.target, FAST) as client:
        r = await client.verify(code_case("c", tests=3))
        assert (r.id, r.verdict, r.passed, r.total) == ("c", Verdict.AC, 3, 3)
        m = await client.verify(MathCase(id="m", completion="\\boxed{42}", gold="42"))
        assert (m.verdict, m.extracted) == (Verdict.AC, "42")


async def test_round_robin_spreads_calls_over_both_servers() -> None:
    e1, e2 = FakeEngine(), FakeEngine()
    async with Running(e1) as a, Running(e2) as b:
        async with VerifierClient(f"{a.target},{b.target}", FAST) as client:
            for i in range(10):
                assert (await client.verify(code_case(f"c{i}"))).verdict is Verdict.AC
        assert e1.seen and e2.seen and len(e1.seen) + len(e2.seen) == 10


async def test_se_is_retried_on_the_other_server() -> None:
    good, bad = FakeEngine(), FakeEngine(verdict=Verdict.SE)
    async with Running(good) as a, Running(bad) as b:
        async with VerifierClient(f"{a.target},{b.target}", FAST) as client:
            results = [await client.verify(code_case(f"c{i}")) for i in range(6)]
            streamed = [r async for r in client.verify_many(code_case(f"m{i}") for i in range(6))]
        assert all(r.verdict is Verdict.AC for r in results + streamed)
        assert sorted(r.id for r in streamed) == sorted(f"m{i}" for i in range(6))
        assert bad.seen  # it was tried, and its SE answers were retried elsewhere
        assert sorted(good.seen) == sorted(
            [f"c{i}" for i in range(6)] + [f"m{i}" for i in range(6)]
        )


async def test_se_everywhere_returns_se_after_bounded_attempts() -> None:
    bad = FakeEngine(verdict=Verdict.SE)
    async with (
        Running(bad) as s,
        VerifierClient(s.target, ClientConfig(attempts=3, backoff_s=0.001)) as client,
    ):
        assert (await client.verify(code_case("c"))).verdict is Verdict.SE
        assert bad.seen == ["c"] * 3


async def test_unavailable_server_is_skipped() -> None:
    engine = FakeEngine()
    async with Running(engine) as s:
        target = f"127.0.0.1:{dead_port()},{s.target}"
        async with VerifierClient(target, FAST) as client:
            for i in range(4):
                assert (await client.verify(code_case(f"c{i}"))).verdict is Verdict.AC
    assert len(engine.seen) == 4


async def test_all_servers_down_raises_unavailable() -> None:
    async with VerifierClient(
        f"127.0.0.1:{dead_port()}", ClientConfig(attempts=2, backoff_s=0.001)
    ) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.verify(code_case("c"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # Typed, and readable: what ends a batch run with one line, never an SE verdict.
        assert isinstance(err.value, VerifierUnavailable)
        assert str(err.value).startswith(f"no verifier answers at {client.target} after 2 ")
        with pytest.raises(VerifierUnavailable):
            async for _ in client.verify_many([code_case("c")]):
                pass


async def test_queue_full_is_retried() -> None:
    gate = asyncio.Event()
    engine = FakeEngine(gate=gate)
    async with Running(engine, max_pending=1) as s:
        async with VerifierClient(
            s.target, ClientConfig(attempts=50, backoff_s=0.01, max_backoff_s=0.05)
        ) as client:
            blocker = asyncio.ensure_future(client.verify(code_case("first")))
            await asyncio.sleep(0)
            second = asyncio.ensure_future(client.verify(code_case("second")))
            for _ in range(500):
                if s.metric("rlfleet_verifier_rejected_total", reason="queue_full"):
                    break
                await asyncio.sleep(0.01)
            gate.set()
            assert (await blocker).verdict is Verdict.AC
            assert (await second).verdict is Verdict.AC
        assert (s.metric("rlfleet_verifier_rejected_total", reason="queue_full") or 0) >= 1


async def test_invalid_case_raises_value_error_naming_the_field() -> None:
    bad = CodeCase(id="x", language="cobol", code="1", tests=(StdioTest(stdin="", stdout="1"),))
    async with Running(FakeEngine()) as s, VerifierClient(s.target, FAST) as client:
        with pytest.raises(ValueError, match="language: unknown 'cobol'"):
            await client.verify(bad)
        with pytest.raises(ValueError, match="language: unknown 'cobol'"):
            _ = [r async for r in client.verify_many([code_case("ok"), bad])]


async def test_large_suites_go_by_ref_and_are_reregistered_after_eviction() -> None:
    engine = FakeEngine()
    async with Running(engine) as s:
        cfg = ClientConfig(register_min_tests=5, backoff_s=0.001)
        async with VerifierClient(s.target, cfg) as client:
            # Unknown to the server: NOT_FOUND, registered, sent inline, kept.
            assert (await client.verify(code_case("a", tests=20))).verdict is Verdict.AC
            assert len(s.service.problems) == 1
            # By reference now: nothing more to register.
            assert (await client.verify(code_case("b", tests=20))).total == 20
            assert s.metric("rlfleet_verifier_rejected_total", reason="unknown_problem") == 1
            # The server lost it (LRU eviction): the client re-registers transparently.
            s.service.problems = ProblemStore(1 << 20)
            assert (await client.verify(code_case("c", tests=20))).verdict is Verdict.AC
            assert len(s.service.problems) == 1
            assert s.metric("rlfleet_verifier_rejected_total", reason="unknown_problem") == 2
            s.service.problems = ProblemStore(1 << 20)
            streamed = [
                r async for r in client.verify_many(code_case(f"m{i}", tests=20) for i in range(5))
            ]
            assert sorted(r.id for r in streamed) == [f"m{i}" for i in range(5)]
            assert all(r.total == 20 for r in streamed)
        assert sorted(engine.seen) == sorted(["a", "b", "c", *(f"m{i}" for i in range(5))])


async def test_client_and_server_compute_the_same_problem_ref() -> None:
    cases = [
        code_case("s", tests=3),
        CodeCase(
            id="f",
            language="python",
            code="def f(*a, **k): return a",
            fn_name="f",
            time_limit_s=1,  # an int: the ref must not depend on how a number was typed
            checker=CheckerSpec(kind=CheckerKind.FLOAT, abs_tol=1e-3),
            tests=(CallTest(args=["é", (1, 2.5)], kwargs={"z": None, "a": {}}, expected=[1]),),
        ),
    ]
    async with Running(FakeEngine()) as s, VerifierClient(s.target, FAST) as client:
        for case in cases:
            assert await client.register(case) == problem_ref(case)


async def test_large_suites_spread_over_two_servers() -> None:
    e1, e2 = FakeEngine(), FakeEngine()
    async with Running(e1) as a, Running(e2) as b:
        cfg = ClientConfig(register_min_tests=5, backoff_s=0.001)
        async with VerifierClient(f"{a.target},{b.target}", cfg) as client:
            for i in range(10):
                assert (await client.verify(code_case(f"c{i}", tests=20))).verdict is Verdict.AC
        assert len(a.service.problems) == 1 and len(b.service.problems) == 1
        assert len(e1.seen) + len(e2.seen) == 10


async def test_verify_many_accepts_async_iterables_and_repeated_ids() -> None:
    async def cases() -> AsyncIterator[Case]:
        for i in range(30):
            yield code_case(f"c{i % 10}")  # each id three times

    async with Running(FakeEngine()) as s, VerifierClient(s.target, FAST) as client:
        ids = [r.id async for r in client.verify_many(cases())]
    assert sorted(ids) == sorted(f"c{i % 10}" for i in range(30))


async def test_verify_many_resends_unanswered_cases_when_a_server_goes_away() -> None:
    doomed = FakeEngine(gate=asyncio.Event())  # holds every case until it dies
    dying = Running(doomed)
    await dying.__aenter__()
    port = dying.srv.port
    results = []
    try:
        # Enough retries (about 2 s in all) to outlast the restart below.
        patient = ClientConfig(attempts=10, backoff_s=0.05, max_backoff_s=0.3)
        async with VerifierClient(dying.target, patient) as client:
            stream = client.verify_many(code_case(f"s{i}") for i in range(8))
            first = asyncio.ensure_future(anext(stream))
            for _ in range(500):
                if len(doomed.seen) == 8:
                    break
                await asyncio.sleep(0.01)
            assert len(doomed.seen) == 8
            await dying.srv.server.stop(0)  # the stream breaks with all 8 unanswered
            # A replacement comes up on the same address; the client resends there.
            async with Running(FakeEngine(), port=port) as replacement:
                results.append(await first)
                results += [r async for r in stream]
                assert sorted(replacement.engine.seen) == sorted(f"s{i}" for i in range(8))
    finally:
        await dying.channel.close()
    assert sorted(r.id for r in results) == sorted(f"s{i}" for i in range(8))
    assert all(r.verdict is Verdict.AC for r in results)


async def test_verify_many_keeps_a_live_source_when_its_server_dies_between_cases() -> None:
    """The stream waits on a source that yields later (a batch's groups as they finish)
    when its server dies: the next case and every later one reach the other server."""
    doomed, spare = FakeEngine(), FakeEngine()
    dying = Running(doomed)
    await dying.__aenter__()
    feed: asyncio.Queue[Case | None] = asyncio.Queue()

    async def live() -> AsyncIterator[Case]:
        while (case := await feed.get()) is not None:
            yield case

    try:
        async with Running(spare) as other:
            patient = ClientConfig(attempts=10, backoff_s=0.05, max_backoff_s=0.3)
            target = f"{dying.target},{other.target}"
            async with VerifierClient(target, patient) as client:
                stream = client.verify_many(live())
                results = []
                for i in range(4):
                    feed.put_nowait(code_case(f"a{i}"))
                    results.append(await asyncio.wait_for(anext(stream), 10))
                # The stream is idle, waiting on the source; its server goes away.
                await dying.srv.server.stop(0)
                await asyncio.sleep(0.2)
                for i in range(6):
                    feed.put_nowait(code_case(f"b{i}"))
                    results.append(await asyncio.wait_for(anext(stream), 10))
                feed.put_nowait(None)
                results += [r async for r in stream]
    finally:
        await dying.channel.close()
    assert sorted(r.id for r in results) == sorted(
        [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(6)]
    )


@pytest.mark.parametrize(
    ("reply", "field", "number"),
    [
        (
            pb.VerifyResponse(verdict=cast(pb.Verdict, 99), passed=1, total=1, reward=1.0),
            "verdict",
            99,
        ),
        (
            pb.VerifyResponse(
                verdict=pb.VERDICT_WA, total=2, tests=[pb.TestResult(verdict=pb.VERDICT_AC), {}]
            ),
            "tests[1].verdict",
            0,  # UNSPECIFIED: never a verdict either
        ),
    ],
)
async def test_a_verdict_the_client_does_not_know_is_a_typed_error_not_retried(
    reply: pb.VerifyResponse, field: str, number: int
) -> None:
    # A server built from a newer proto: its verdict has no meaning here, so no reward either.
    async with RunningCanned(reply) as s, VerifierClient(s.target, FAST) as client:
        with pytest.raises(UnknownEnumValue, match=rf"^{re.escape(field)}: unknown value ") as err:
            await client.verify(code_case("c"))
        assert (err.value.field, err.value.number) == (field, number)
        assert s.servicer.seen == ["c"]
        with pytest.raises(UnknownEnumValue, match=rf"^{re.escape(field)}: "):
            _ = [r async for r in client.verify_many(code_case(f"m{i}") for i in range(3))]


async def test_a_stream_refusal_with_an_unknown_error_code_is_not_retried() -> None:
    reply = pb.VerifyResponse(error="refused for a new reason", error_code=cast(pb.ErrorCode, 99))
    async with RunningCanned(reply) as s, VerifierClient(s.target, FAST) as client:
        with pytest.raises(ValueError, match="case 'm0': refused for a new reason"):
            _ = [r async for r in client.verify_many([code_case("m0")])]
        assert s.servicer.seen == ["m0"]


class _Leaving(CannedVerifier):
    """Answers ``per_stream`` cases of each stream, then ends it cleanly (a server going
    away in an orderly way), whatever the client still has to send."""

    def __init__(self, per_stream: int) -> None:
        super().__init__(pb.VerifyResponse(verdict=pb.VERDICT_AC, passed=1, total=1, reward=1.0))
        self.per_stream = per_stream
        self.streams = 0

    async def VerifyStream(
        self, request_iterator: AsyncIterator[pb.VerifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.VerifyResponse]:
        self.streams += 1
        answered = 0
        async for request in request_iterator:
            yield self._answer(request)
            answered += 1
            if answered == self.per_stream:
                return


async def test_verify_many_goes_on_when_a_server_ends_the_stream_before_taking_every_case() -> None:
    leaving = _Leaving(per_stream=3)

    async def slowly() -> AsyncIterator[Case]:
        for i in range(10):
            await asyncio.sleep(0.02)  # (the server ends each stream before the next)
            yield code_case(f"c{i}")

    patient = ClientConfig(attempts=3, backoff_s=0.01)
    async with (
        RunningCanned(pb.VerifyResponse(), leaving) as s,
        VerifierClient(s.target, patient) as c,
    ):
        ids = [r.id async for r in c.verify_many(slowly())]
    assert sorted(ids) == sorted(f"c{i}" for i in range(10))
    # Each stream took three at most; what the source gave later went on new streams.
    assert leaving.streams >= 3


class _Batching(CannedVerifier):
    """Answers VerifyBatches too, recording how many cases each message carried."""

    def __init__(self) -> None:
        super().__init__(pb.VerifyResponse(verdict=pb.VERDICT_AC, passed=1, total=1, reward=1.0))
        self.sizes: list[int] = []
        self.item_streams = 0

    async def VerifyStream(
        self, request_iterator: AsyncIterator[pb.VerifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.VerifyResponse]:
        self.item_streams += 1
        async for request in request_iterator:
            yield self._answer(request)

    async def VerifyBatches(
        self, request_iterator: AsyncIterator[pb.VerifyBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.VerifyBatchResponse]:
        async for batch in request_iterator:
            self.sizes.append(len(batch.requests))
            yield pb.VerifyBatchResponse(responses=[self._answer(r) for r in batch.requests])


async def test_verify_many_sends_the_cases_it_has_in_few_messages() -> None:
    batching = _Batching()
    config = ClientConfig(backoff_s=0.001, stream_batch=16)
    async with (
        RunningCanned(pb.VerifyResponse(), batching) as s,
        VerifierClient(s.target, config) as c,
    ):
        ids = [r.id async for r in c.verify_many(code_case(f"c{i}") for i in range(100))]
    assert sorted(ids) == sorted(f"c{i}" for i in range(100))
    assert sum(batching.sizes) == 100 and max(batching.sizes) <= 16
    assert len(batching.sizes) < 100 and batching.item_streams == 0


async def test_verify_many_with_a_batch_of_one_uses_verify_stream() -> None:
    batching = _Batching()
    config = ClientConfig(backoff_s=0.001, stream_batch=1)
    async with (
        RunningCanned(pb.VerifyResponse(), batching) as s,
        VerifierClient(s.target, config) as c,
    ):
        ids = [r.id async for r in c.verify_many(code_case(f"c{i}") for i in range(5))]
    assert sorted(ids) == sorted(f"c{i}" for i in range(5))
    assert batching.sizes == [] and batching.item_streams == 1


class _Older(CannedVerifier):
    """A server from before VerifyBatches: it answers it UNIMPLEMENTED (counted)."""

    def __init__(self) -> None:
        super().__init__(pb.VerifyResponse(verdict=pb.VERDICT_AC, passed=1, total=1, reward=1.0))
        self.batch_calls = 0

    async def VerifyBatches(
        self, request_iterator: AsyncIterator[pb.VerifyBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.VerifyBatchResponse]:
        self.batch_calls += 1
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        yield pb.VerifyBatchResponse()  # (never reached: makes this a stream handler)


async def test_verify_many_falls_back_to_verify_stream_on_an_older_server() -> None:
    older = _Older()
    async with RunningCanned(pb.VerifyResponse(), older) as s, VerifierClient(s.target, FAST) as c:
        ids = [r.id async for r in c.verify_many(code_case(f"a{i}") for i in range(30))]
        again = [r.id async for r in c.verify_many(code_case(f"b{i}") for i in range(3))]
    # Nothing the refused stream took is lost, none is sent twice, and the client asks once.
    assert sorted(ids) == sorted(f"a{i}" for i in range(30))
    assert sorted(again) == ["b0", "b1", "b2"]
    assert sorted(older.seen) == sorted([*ids, *again])
    assert older.batch_calls == 1
