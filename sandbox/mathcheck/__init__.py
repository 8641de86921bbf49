"""Math answer checking for rule-based rewards: extraction, normalisation and equivalence,
the algebra in child processes with a hard wall-time bound per check.

Importing this package starts nothing; a ``MathChecker`` starts its processes.
"""

from rlfleet.sandbox.mathcheck.algebra import AlgebraStartError
from rlfleet.sandbox.mathcheck.checker import (
    AlgebraFault,
    MathCheckConfig,
    MathChecker,
    MathResult,
)
from rlfleet.sandbox.mathcheck.extract import EXTRACTIONS, extract_answer

__all__ = [
    "EXTRACTIONS",
    "AlgebraFault",
    "AlgebraStartError",
    "MathCheckConfig",
    "MathChecker",
    "MathResult",
    "extract_answer",
]
