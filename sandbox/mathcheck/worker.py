"""A math worker process: reads ``[answer, gold]`` JSON lines, answers ``["ok", bool]`` or
``["error", message]``. Started and killed by ``pool.AlgebraPool``."""

from __future__ import annotations

import json
import sys


def main() -> int:
    from rlfleet.sandbox.mathcheck.symbolic import equivalent

    equivalent("1", "1")  # load sympy and the LaTeX parser before saying ready
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
