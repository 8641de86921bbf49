"""Math answer checking: extraction, normalisation and bounded equivalence."""

from rlfleet.sandbox.mathcheck.checker import MathCheckConfig, MathChecker, MathResult
from rlfleet.sandbox.mathcheck.extract import Extraction, extract_answer

__all__ = ["Extraction", "MathCheckConfig", "MathChecker", "MathResult", "extract_answer"]
