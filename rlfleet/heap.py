"""The garbage collector in long-running processes: what start-up made is set aside.

A server or a learner makes hundreds of thousands of objects while it starts (a model and
its modules, transformers' and protobuf's tables) and keeps them to the end. Left in the
collector's generations, every full collection walks them all: a few each second while
completions stream, about a tenth of a second each here. Frozen once start-up is over,
they are never walked again; what the work makes after is collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect what start-up left as garbage, then move every object alive now out of the
    collector's reach (``gc.freeze``). Call once, when start-up is over."""
    gc.collect()
    gc.freeze()
