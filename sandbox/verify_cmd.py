"""``rlfleet verify CASES.jsonl``: verify cases from a JSONL file, results in input order.

One JSON result per input line on stdout; invalid lines yield ``{"id" or "line", "error"}``
and the exit code 2, the other cases still run. Progress goes to stderr. Everything started
(workers, their cgroups, math processes) is stopped before returning, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from rlfleet.sandbox.cases import CaseError, parse_case
from rlfleet.sandbox.records import Case, CaseResult, Verdict

log = logging.getLogger(__name__)


class Verifier(Protocol):
    async def verify(self, case: Case) -> CaseResult: ...


@dataclass(frozen=True, kw_only=True)
class Line:
    number: int
    case: Case | None = None
    error: dict[str, Any] | None = None


def read_lines(stream: IO[str]) -> Iterator[Line]:
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as e:
            yield Line(number=number, error={"line": number, "error": f"invalid JSON: {e}"})
            continue
        try:
            yield Line(number=number, case=parse_case(obj))
        except CaseError as e:
            ref: dict[str, Any] = {"line": number}
            if isinstance(obj, dict) and isinstance(obj.get("id"), str | int):
                ref = {"id": obj["id"]}
            yield Line(number=number, error={**ref, "error": str(e)})


def _system_error(case: Case, message: str) -> CaseResult:
    return CaseResult(
        id=case.id, verdict=Verdict.SE, passed=0, total=0, reward=0.0, message=message
    )


async def verify_lines(
    verifier: Verifier, lines: Iterator[Line], concurrency: int
) -> AsyncIterator[tuple[Line, CaseResult | None]]:
    """Yield (line, result) in input order while up to ``concurrency`` cases run at once."""
    pending: asyncio.Queue[tuple[Line, asyncio.Task[CaseResult] | None] | None] = asyncio.Queue(
        maxsize=concurrency
    )

    async def safe_verify(case: Case) -> CaseResult:
        try:
            return await verifier.verify(case)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # one case failing must not lose the others
            log.exception("case %s failed", case.id)
            return _system_error(case, f"{type(e).__name__}: {e}")

    async def feed() -> None:
        for line in lines:
            task = asyncio.create_task(safe_verify(line.case)) if line.case else None
            await pending.put((line, task))
        await pending.put(None)

    feeder = asyncio.create_task(feed())
    try:
        while (item := await pending.get()) is not None:
            line, task = item
            yield line, (await task if task else None)
        await feeder
    finally:
        feeder.cancel()
        while not pending.empty():
            item = pending.get_nowait()
            if item and item[1]:
                item[1].cancel()


async def run_verify(
    verifier: Verifier, path: Path, out: IO[str], concurrency: int, progress_every_s: float = 5.0
) -> int:
    invalid = done = 0
    started = last = time.monotonic()
    with path.open(encoding="utf-8") as stream:
        async for line, result in verify_lines(verifier, read_lines(stream), concurrency):
            if result is None:
                assert line.error is not None
                invalid += 1
                out.write(json.dumps(line.error) + "\n")
            else:
                out.write(json.dumps(result.to_json()) + "\n")
            out.flush()
            done += 1
            now = time.monotonic()
            if now - last >= progress_every_s:
                last = now
                rate = done / (now - started)
                print(f"rlfleet verify: {done} done ({rate:.1f}/s)", file=sys.stderr)
    if done and time.monotonic() - started >= progress_every_s:
        print(f"rlfleet verify: {done} done, {invalid} invalid", file=sys.stderr)
    return 2 if invalid else 0
