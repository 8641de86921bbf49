"""`verify_lines` with a fake verifier: cases start as slots free whatever runs ahead of them,
output keeps input order, and reading pauses only when finished results pile up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from rlfleet.errors import Unavailable
from rlfleet.sandbox.batch import Line, Output, verify_lines
from rlfleet.sandbox.records import Case, CaseResult, CodeCase, StdioTest, Verdict

WAIT_S = 5.0  # bound on every wait below; a fake case takes no time


class FakeVerifier:
    """AC at once, except the ids in ``hold`` (wait for ``release``), ``fail`` (raise) and
    ``gone`` (raise ``Unavailable``: no verifier to reach)."""

    def __init__(
        self,
        hold: frozenset[str] = frozenset(),
        fail: frozenset[str] = frozenset(),
        gone: frozenset[str] = frozenset(),
    ):
        self.hold = hold
        self.fail = fail
        self.gone = gone
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.running = self.max_running = 0

    async def verify(self, case: Case) -> CaseResult:
        self.started.append(case.id)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if case.id in self.hold:
                await self.release.wait()
            else:
                await asyncio.sleep(0)
            if case.id in self.fail:
                raise RuntimeError("boom")
            if case.id in self.gone:
                raise Unavailable("no verifier answers")
            return CaseResult(id=case.id, verdict=Verdict.AC, passed=1, total=1, reward=1.0)
        except asyncio.CancelledError:
            self.cancelled.append(case.id)
            raise
        finally:
            self.running -= 1


class CountingLines:
    """Lines of one-test cases (``None``: an invalid line), counting how many were read."""

    def __init__(self, ids: list[str | None]) -> None:
        self.read = 0
        self._ids = ids

    def __iter__(self) -> Iterator[Line]:
        for number, case_id in enumerate(self._ids, start=1):
            self.read += 1
            if case_id is None:
                yield Line(number=number, error={"line": number, "error": "invalid JSON"})
            else:
                test = StdioTest(stdin="", stdout="")
                case = CodeCase(id=case_id, language="python", code="", tests=(test,))
                yield Line(number=number, case=case)


def ids(outputs: list[Output]) -> list[object]:
    return [(o := json.loads(x.text)).get("id", o.get("line")) for x in outputs]


async def collect(outputs: list[Output], it: AsyncIterator[Output]) -> None:
    async for output in it:
        outputs.append(output)


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), WAIT_S)


async def test_a_slow_head_does_not_hold_later_cases_back() -> None:
    names: list[str | None] = ["slow", *(f"f{i}" for i in range(20))]
    verifier = FakeVerifier(hold=frozenset({"slow"}))
    lines = CountingLines(names)
    outputs: list[Output] = []
    consumer = asyncio.create_task(collect(outputs, verify_lines(verifier, iter(lines), 3)))
    await until(lambda: len(verifier.started) == len(names))
    assert outputs == []  # the head still runs: nothing may be printed before it
    assert verifier.max_running <= 3
    verifier.release.set()
    await asyncio.wait_for(consumer, WAIT_S)
    assert ids(outputs) == names


async def test_reading_pauses_only_at_the_memory_cap() -> None:
    names: list[str | None] = ["slow", *(f"f{i}" for i in range(50))]
    verifier = FakeVerifier(hold=frozenset({"slow"}))
    lines = CountingLines(names)
    result_bytes = len(
        json.dumps(CaseResult(id="f0", verdict=Verdict.AC, passed=1, total=1, reward=1.0).to_json())
    )
    cap = 5 * result_bytes  # about five fast results (ids of 2 or 3 characters)
    outputs: list[Output] = []
    it = verify_lines(verifier, iter(lines), 3, max_unprinted_bytes=cap)
    consumer = asyncio.create_task(collect(outputs, it))
    # Reading stops once the finished results reach the cap (5 or 6 of them, as their ids
    # differ in length), plus the running slow head and at most 2 more running cases.
    await until(lambda: lines.read >= 6)
    for _ in range(20):
        await asyncio.sleep(0.001)
    assert 6 <= lines.read <= 9
    assert outputs == []
    verifier.release.set()
    await asyncio.wait_for(consumer, WAIT_S)
    assert ids(outputs) == names
    assert lines.read == len(names)


async def test_failures_and_invalid_lines_keep_their_place() -> None:
    names: list[str | None] = ["a", None, "bad", "b", None, "c"]
    verifier = FakeVerifier(fail=frozenset({"bad"}))
    outputs: list[Output] = []
    await collect(outputs, verify_lines(verifier, iter(CountingLines(names)), 2))
    assert ids(outputs) == ["a", 2, "bad", "b", 5, "c"]
    assert [o.invalid for o in outputs] == [False, True, False, False, True, False]
    bad = json.loads(outputs[2].text)
    assert (bad["verdict"], bad["message"]) == ("SE", "RuntimeError: boom")


async def test_an_unreachable_verifier_ends_the_run_after_what_was_printed() -> None:
    names: list[str | None] = ["a", None, "b", "gone", "c"]
    verifier = FakeVerifier(hold=frozenset({"gone"}), gone=frozenset({"gone"}))
    outputs: list[Output] = []
    consumer = asyncio.create_task(
        collect(outputs, verify_lines(verifier, iter(CountingLines(names)), 8))
    )
    await until(lambda: len(outputs) == 3)
    verifier.release.set()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(consumer, WAIT_S)
    # No SE result stands in for "gone", and nothing after it is printed.
    assert ids(outputs) == ["a", 2, "b"]
    assert verifier.running == 0


async def test_closing_cancels_every_running_case() -> None:
    names: list[str | None] = ["s0", "s1", "s2", "f"]
    verifier = FakeVerifier(hold=frozenset({"s0", "s1", "s2"}))
    outputs: list[Output] = []
    consumer = asyncio.create_task(
        collect(outputs, verify_lines(verifier, iter(CountingLines(names)), 8))
    )
    await until(lambda: len(verifier.started) == len(names))
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert sorted(verifier.cancelled) == ["s0", "s1", "s2"]
    assert verifier.running == 0
