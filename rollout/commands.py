"""The rollout service's commands as typed calls (``rlfleet/cli.py`` parses the flags).

Expected failures are ``CommandError``s with one sentence (docs/cli.md): ``UsageError``
(exit 2) for what the user asked wrongly, plain ``CommandError`` (exit 1) for what the
machine could not do.
"""

from __future__ import annotations

from pathlib import Path

from rlfleet.errors import CommandError, UsageError
from rlfleet.rollout.model_init import Preset


def model_init(preset: Preset, seed: int, out_dir: Path, force: bool = False) -> int:
    """``rlfleet model init``: write the preset's model directory into ``out_dir``.

    A directory that exists and is not empty is refused unless ``force`` (its files of the
    same names are then overwritten, others left as they are)."""
    from rlfleet.rollout.model_init import write_model

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UsageError(f"{out_dir}: not empty; choose a new directory, or pass --force")
    try:
        write_model(out_dir, preset=preset, seed=seed)
    except OSError as e:
        raise CommandError(f"{out_dir}: cannot write it ({e.strerror or e})") from e
    return 0
