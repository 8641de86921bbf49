"""Times of day: ``7:00``, ``7:30 pm``, ``19:30:15``, compared as times, never as numbers.

Without this rule ``7:00`` reads as the ratio 7:0, which is 7/0, and every time on the hour
would equal every other (two undefined values). A text is a time of day when it is
``H:MM`` or ``H:MM:SS`` (minutes and seconds of exactly two digits), optionally followed by
am/pm, or an hour with am/pm (``5am``, ``5 p.m.``); a ratio such as ``2:9`` is not a time.
"""

from __future__ import annotations

import re

_TIME = re.compile(
    r"^(\d{1,2}):([0-5]\d)(?::([0-5]\d))?(?:\s*(a\.?m\.?|p\.?m\.?))?$",
    re.IGNORECASE,
)
_HOUR = re.compile(r"^(\d{1,2})\s*(a\.?m\.?|p\.?m\.?)$", re.IGNORECASE)  # 5am, 5 p.m.


def seconds_of_day(text: str) -> int | None:
    """Seconds since midnight of a normalised time of day; None when it is not one.

    ``12:05 am`` is 00:05 and ``12:05 pm`` is 12:05; without am/pm the hours are read on a
    24-hour clock (``7:00`` is 07:00, not 19:00)."""
    m = _TIME.match(text)
    if m is not None:
        hours, minutes, seconds = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        meridiem = (m.group(4) or "").lower().replace(".", "")
    else:
        hour = _HOUR.match(text)
        if hour is None:
            return None
        hours, minutes, seconds = int(hour.group(1)), 0, 0
        meridiem = hour.group(2).lower().replace(".", "")
    if meridiem:
        if not 1 <= hours <= 12:
            return None
        hours = hours % 12 + (12 if meridiem == "pm" else 0)
    elif hours > 24:
        return None
    return (hours * 3600 + minutes * 60 + seconds) % (24 * 3600)
