"""Stop strings: found in the completion decoded so far, and cut from its text.

The engine checks the decoded completion after each token (``StopMatcher.found``); the
caller cuts the final text before the earliest stop string (``cut_at_stop``), as SGLang
does. The tokens stay as generated, the one that completed the stop string included.
"""

from __future__ import annotations

from collections.abc import Sequence

# Decoding can rewrite the last few characters of the text (an incomplete UTF-8 sequence
# shows as U+FFFD until its last byte arrives), so each search starts a little earlier.
REWRITE_MARGIN = 8


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._searched = 0  # text length at the previous call

    def found(self, text: str) -> bool:
        """Whether ``text`` (the whole completion so far) contains a stop string."""
        start = max(0, min(self._searched, len(text)) - self._longest - REWRITE_MARGIN)
        self._searched = len(text)
        tail = text[start:]
        return any(s in tail for s in self.stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string in it."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]
