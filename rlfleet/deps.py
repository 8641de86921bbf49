"""Runtime dependencies as declared by the installed ``rlfleet`` distribution.

Commands check them before starting anything, so a plain install that lacks one stops with
its name instead of running and giving wrong answers (a reward of 0 for a correct answer is
the worst failure a verifier can have).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from importlib import metadata

DISTRIBUTION = "rlfleet"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class MissingDependency(RuntimeError):
    """Declared runtime dependencies are not installed; ``names`` lists them."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        super().__init__(
            f"missing runtime dependencies: {', '.join(names)} "
            f"(reinstall {DISTRIBUTION} with its dependencies: pip install {DISTRIBUTION})"
        )


def runtime_requirements(requirements: Iterable[str]) -> list[str]:
    """Distribution names of the requirements that hold without any extra."""
    names = []
    for req in requirements:
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        m = _NAME.match(spec)
        if m:
            names.append(m.group(1))
    return names


def missing(
    requirements: Iterable[str] | None = None,
    version: Callable[[str], str] = metadata.version,
) -> list[str]:
    """Declared runtime dependencies that are not installed. ``requirements`` defaults to
    the installed distribution's own; when rlfleet runs from a source tree that was never
    installed there is nothing to read, and nothing is reported."""
    if requirements is None:
        try:
            requirements = metadata.requires(DISTRIBUTION) or []
        except metadata.PackageNotFoundError:
            return []
    absent = []
    for name in runtime_requirements(requirements):
        try:
            version(name)
        except metadata.PackageNotFoundError:
            absent.append(name)
    return absent


def require() -> None:
    """Raise ``MissingDependency`` naming every declared runtime dependency not installed."""
    absent = missing()
    if absent:
        raise MissingDependency(absent)
