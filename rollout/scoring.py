"""Scoring a finished sample with the verifier fleet, the moment it finishes.

A completion becomes the verifier's case: a math case takes the whole text as its
completion, a code case the last fenced code block of the text (or the whole text when it
has none). Its prompt's spec (``Prompt.verification``) gives the rest.

A verifier that cannot answer never holds a completion back: whatever goes wrong on the
way (no server after the client's retries, a timeout, a refusal, an answer this side cannot
read) returns the completion unscored, with the reason, after at most ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from typing import Protocol

from rlfleet.errors import Unavailable
from rlfleet.rollout.metrics import RolloutMetrics
from rlfleet.rollout.records import Verification
from rlfleet.sandbox.records import Case, CaseResult, MathCase

log = logging.getLogger(__name__)

NOT_REQUESTED = "not requested"
NO_VERIFIER = "no verifier configured"

# An opening fence (``` or longer, an optional info string), the body, the same fence.
_FENCE = re.compile(r"^(?P<fence>`{3,})[^\n`]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)


class Verifier(Protocol):
    """``rlfleet.sandbox.client.VerifierClient``, or the verifier's engine in-process."""

    async def verify(self, case: Case) -> CaseResult: ...


def extract_code(text: str) -> str:
    """The last fenced code block of ``text`` (its body), or all of ``text`` without one."""
    blocks = list(_FENCE.finditer(text))
    return blocks[-1].group("body") if blocks else text


def case_for(spec: Verification, text: str, case_id: str) -> Case:
    """The verifier's case for a completion ``text`` of a prompt whose spec is ``spec``."""
    if isinstance(spec, MathCase):
        return dataclasses.replace(spec, id=case_id, completion=text)
    return dataclasses.replace(spec, id=case_id, code=extract_code(text))


@dataclass(frozen=True, kw_only=True)
class Score:
    result: CaseResult | None
    """None: unscored, see ``reason``."""
    reason: str = ""
    seconds: float = 0.0
    """The verifier's round trip (0 when it was not asked)."""


class Scorer:
    def __init__(
        self, verifier: Verifier | None, metrics: RolloutMetrics, timeout_s: float = 60.0
    ) -> None:
        self.verifier = verifier
        self.metrics = metrics
        self.timeout_s = timeout_s

    async def score(self, spec: Verification | None, text: str, case_id: str) -> Score:
        """The verifier's result for one completion, or why there is none."""
        if spec is None:
            return Score(result=None, reason=NOT_REQUESTED)
        if self.verifier is None:
            return Score(result=None, reason=NO_VERIFIER)
        case = case_for(spec, text, case_id)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await self.verifier.verify(case)
        except TimeoutError:
            return self._failed(f"verifier: no answer within {self.timeout_s:g} s", t0)
        except Unavailable as e:
            return self._failed(f"verifier unavailable: {e}", t0)
        except Exception as e:
            # Not a verdict: the completion goes back unscored, with the reason, and the
            # stream goes on. (Cancellation is a BaseException and still propagates.)
            log.warning("verifying %s failed", case_id, exc_info=e)
            return self._failed(f"verifier failed: {type(e).__name__}: {e}", t0)
        seconds = time.perf_counter() - t0
        self.metrics.verifier_seconds.observe(seconds)
        return Score(result=result, seconds=seconds)

    def _failed(self, reason: str, t0: float) -> Score:
        self.metrics.verifier_errors.inc()
        return Score(result=None, reason=reason, seconds=time.perf_counter() - t0)
