"""A math worker process: reads ``[answer, gold]`` JSON lines on stdin and answers each with
``["ok", bool]`` or ``["error", message]`` on stdout. Started and killed by ``pool``.

A separate interpreter (not a fork of the caller): safe to start from threaded or async
servers, and killing it can never leave the caller's locks or state half-updated.
"""

from __future__ import annotations

import json
import sys


def _limit_memory(megabytes: int) -> None:
    """A parse that balloons fails with MemoryError here instead of swapping the host."""
    try:
        import resource

        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass  # not on this platform: the deadline still bounds the check


def main() -> int:
    if len(sys.argv) > 1:
        _limit_memory(int(sys.argv[1]))
    from rlfleet.sandbox.mathcheck.symbolic import equivalent

    equivalent("\\frac{x^2-1}{x-1}", "x+1")  # load sympy and the parser before saying ready
    sys.setrecursionlimit(3000)
    out = sys.stdout
    out.write('["ready", null]\n')
    out.flush()
    for line in sys.stdin:
        try:
            answer, gold = json.loads(line)
            reply = ["ok", bool(equivalent(answer, gold))]
        except Exception as e:  # a parse failure is an answer too: "parse_error"
            reply = ["error", f"{type(e).__name__}: {e}"[:200]]
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
