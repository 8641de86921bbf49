"""The child process that does the algebra: reads ``[answer, gold]`` JSON lines on stdin and
answers each on stdout with ``["ok", bool]``, ``["error", message]`` (the answer cannot be
read or compared: a parse error) or ``["fault", message]`` (an error of ours: the check
proves nothing either way). Started and killed by ``algebra.AlgebraRunner``.

A separate interpreter (not a fork of the caller): safe to start from threaded or async
servers, and killing it can never leave the caller's locks or state half-updated. Its
imports happen before it says ready, so a missing dependency stops the checker at start-up
(the reason on stderr), never a check.
"""

from __future__ import annotations

import json
import resource
import sys


def _limit_memory(megabytes: int) -> None:
    """A parse that balloons fails with MemoryError here instead of swapping the host."""
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> int:
    if len(sys.argv) > 1:
        _limit_memory(int(sys.argv[1]))
    from rlfleet.sandbox.mathcheck.symbolic import ANSWER_ERRORS, equivalent

    if not equivalent("\\frac{x^2-1}{x-1}", "x+1"):  # loads sympy and both parsers
        print("self-check failed: (x^2-1)/(x-1) is not x+1", file=sys.stderr)
        return 1
    # Loads the solvers behind sets of inequalities, whose first use costs a second or more:
    # paid here, before ready, and not by the first check that needs them.
    if not equivalent("(-1, 4]", "-1 < x \\le 4"):
        print("self-check failed: (-1, 4] is not -1 < x <= 4", file=sys.stderr)
        return 1
    unreadable: tuple[type[BaseException], ...] = (*ANSWER_ERRORS, MemoryError)  # ballooned
    sys.setrecursionlimit(3000)
    out = sys.stdout
    out.write('["ready", null]\n')
    out.flush()
    for line in sys.stdin:
        answer, gold = json.loads(line)
        try:
            reply = ["ok", bool(equivalent(answer, gold))]
        except unreadable as e:
            reply = ["error", f"{type(e).__name__}: {e}"[:200]]
        except Exception as e:  # a bug or a broken install: say so, never a verdict
            reply = ["fault", f"{type(e).__name__}: {e}"[:500]]
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
