"""``rlfleet verify CASES.jsonl``: verify cases from a JSONL file, results in input order.

One JSON result per input line on stdout; invalid lines yield ``{"id" or "line", "error"}``
and the exit code 2, the other cases still run. A verifier that cannot be reached
(``rlfleet.errors.Unavailable``, raised once its client's retries are spent) ends the run
instead: what was printed stays, every line of it a real result. Printing in input order
never holds the workers back: cases start as slots free and early results wait in a reorder
buffer, bounded in bytes (see ``verify_lines``). Progress goes to stderr. Everything started
(workers, their cgroups, math processes) is stopped before returning, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import IO, Any, Protocol

from rlfleet.errors import EXIT_OK, EXIT_USAGE, Unavailable
from rlfleet.sandbox.cases import CaseError, parse_case
from rlfleet.sandbox.records import Case, CaseResult, Verdict

log = logging.getLogger(__name__)

CONCURRENCY_PER_WORKER = 4
"""Default cases running at once per sandbox worker: the next case is always queued."""
MAX_UNPRINTED_BYTES = 64 << 20
"""Default bound on finished results (as JSON text) held back behind a slower earlier case."""


class Verifier(Protocol):
    async def verify(self, case: Case) -> CaseResult:
        """The case's result; raises ``Unavailable`` when no verifier can be reached."""
        ...


@dataclass(frozen=True, kw_only=True)
class Line:
    number: int
    case: Case | None = None
    error: dict[str, Any] | None = None


def read_lines(stream: IO[bytes]) -> Iterator[Line]:
    """Parse each non-blank line (bytes: a line that is not UTF-8 is one invalid line)."""
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


@dataclass(frozen=True, kw_only=True)
class Output:
    """One input line's result, ready to print."""

    text: str
    """A JSON object, without the newline: the case's result or ``{"id"/"line", "error"}``."""
    invalid: bool = False


async def verify_lines(
    verifier: Verifier,
    lines: Iterator[Line],
    concurrency: int,
    max_unprinted_bytes: int = MAX_UNPRINTED_BYTES,
) -> AsyncGenerator[Output, None]:
    """Yield each line's output in input order while up to ``concurrency`` cases run at once.

    A case starts as soon as one of the ``concurrency`` slots frees, whatever case is still
    running ahead of it: results that finish early wait in a reorder buffer, already encoded,
    until every earlier line is out. Memory is bounded apart from that: ``lines`` is read only
    while the buffer holds less than ``max_unprinted_bytes`` of text (a result bigger than
    that still goes through), so at most ``concurrency`` parsed cases and about
    ``max_unprinted_bytes`` of finished results are held at once. Closing the generator
    (also by cancellation) cancels every running case and waits for them to stop; so does
    ``Unavailable`` from the verifier, which the generator then raises.
    """
    if concurrency < 1 or max_unprinted_bytes < 1:
        raise ValueError("concurrency and max_unprinted_bytes must be >= 1")
    running: dict[asyncio.Task[CaseResult], int] = {}  # -> its input position
    # Finished tasks, in the order they finished, and the wait for the next one: a done
    # callback instead of ``asyncio.wait``, which would hook every running task per result.
    completed: deque[asyncio.Task[CaseResult]] = deque()
    wake: asyncio.Future[None] | None = None

    def on_done(task: asyncio.Task[CaseResult]) -> None:
        completed.append(task)
        if wake is not None and not wake.done():
            wake.set_result(None)

    finished: dict[int, Output] = {}  # input position -> output, until every earlier one is out
    unprinted_bytes = 0
    read = printed = 0  # input positions: next to read, next to print

    async def safe_verify(case: Case) -> CaseResult:
        try:
            return await verifier.verify(case)
        except (asyncio.CancelledError, Unavailable):
            raise  # (Unavailable: no case can run, and none was judged)
        except Exception as e:  # one case failing must not lose the others
            log.exception("case %s failed", case.id)
            return _system_error(case, f"{type(e).__name__}: {e}")

    def finish(position: int, output: Output) -> None:
        nonlocal unprinted_bytes
        finished[position] = output
        unprinted_bytes += len(output.text)

    try:
        while True:
            while len(running) < concurrency and unprinted_bytes < max_unprinted_bytes:
                line = next(lines, None)
                if line is None:
                    break
                if line.case is None:
                    assert line.error is not None
                    finish(read, Output(text=json.dumps(line.error), invalid=True))
                else:
                    task = asyncio.create_task(safe_verify(line.case))
                    task.add_done_callback(on_done)
                    running[task] = read
                read += 1
            if printed in finished:
                output = finished.pop(printed)
                unprinted_bytes -= len(output.text)
                printed += 1
                yield output
                continue
            if not running:  # nothing left to wait for: every line was read and printed
                assert not finished
                return
            if not completed:
                wake = asyncio.get_running_loop().create_future()
                try:
                    await wake
                finally:
                    wake = None
            while completed:
                task = completed.popleft()
                finish(running.pop(task), Output(text=json.dumps(task.result().to_json())))
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def run_verify(
    verifier: Verifier,
    cases: IO[bytes],
    out: IO[str],
    concurrency: int,
    progress_every_s: float = 5.0,
    max_unprinted_bytes: int = MAX_UNPRINTED_BYTES,
) -> int:
    """Verify the JSONL ``cases``, printing each line's result to ``out`` in input order.

    Returns 0, or 2 when a line was invalid; raises ``Unavailable`` (after printing the
    results that came before) when the verifier cannot be reached.
    """
    invalid = done = 0
    started = last = time.monotonic()
    outputs = verify_lines(verifier, read_lines(cases), concurrency, max_unprinted_bytes)
    async with aclosing(outputs):  # also when writing fails: stop the running cases
        async for output in outputs:
            invalid += output.invalid
            out.write(output.text + "\n")
            out.flush()
            done += 1
            now = time.monotonic()
            if now - last >= progress_every_s:
                last = now
                rate = done / (now - started)
                print(f"rlfleet verify: {done} done ({rate:.1f}/s)", file=sys.stderr)
    if done and time.monotonic() - started >= progress_every_s:
        print(f"rlfleet verify: {done} done, {invalid} invalid", file=sys.stderr)
    return EXIT_USAGE if invalid else EXIT_OK
