"""Math answer checking for rule-based rewards: extraction, normalisation and equivalence,
the algebra in worker processes with a hard wall-time bound per check.

Importing this package starts nothing; a ``MathChecker`` starts its workers.
"""

from rlfleet.sandbox.mathcheck.checker import MathCheckConfig, MathChecker, MathResult
from rlfleet.sandbox.mathcheck.extract import extract_answer

__all__ = ["MathCheckConfig", "MathChecker", "MathResult", "extract_answer"]
