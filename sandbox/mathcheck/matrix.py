"""Matrices and vectors written as LaTeX environments, split into entries.

``\\begin{pmatrix} a & b \\\\ c & d \\end{pmatrix}`` (and bmatrix, Bmatrix, matrix,
smallmatrix) is a matrix value: the comparison takes its entries one by one through the
same rules as single answers, so ``\\sqrt{12}`` equals ``2\\sqrt{3}`` inside a vector as
outside it. ``vmatrix`` and ``Vmatrix`` are determinants and norms, a different thing: they
equal only their own kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlfleet.sandbox.mathcheck.normalize import split_top

_ENVIRONMENT = re.compile(r"^\\begin\{([pbBvV]?matrix|smallmatrix)\}(.*)\\end\{\1\}$", re.DOTALL)
_VALUE_KINDS = {"pmatrix", "bmatrix", "Bmatrix", "matrix", "smallmatrix"}


@dataclass(frozen=True)
class Matrix:
    kind: str
    """"matrix" for a value, else the environment (vmatrix: a determinant)."""
    rows: tuple[tuple[str, ...], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *(len(row) for row in self.rows))


def parse_matrix(text: str) -> Matrix | None:
    """The matrix a normalised text is, or None when it is not exactly one environment."""
    m = _ENVIRONMENT.match(text)
    if m is None or "\\begin" in m.group(2):
        return None  # a nested environment: not a plain matrix of entries
    rows = [row for row in split_top(m.group(2), "\\\\") if row]
    if not rows:
        return None
    kind = "matrix" if m.group(1) in _VALUE_KINDS else m.group(1)
    return Matrix(kind=kind, rows=tuple(tuple(split_top(row, "&")) for row in rows))
