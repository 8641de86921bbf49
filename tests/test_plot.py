"""The reward-curve PNG: its title and axis names are drawn, pixel for pixel, where the layout
puts them; the bitmap font behind them."""

from __future__ import annotations

import struct
import zlib

import pytest

from rlfleet.learner.font import ADVANCE, GLYPHS, HEIGHT, WIDTH, text_pixels, text_width
from rlfleet.learner.plot import (
    TEXT,
    TEXT_SCALE,
    WHITE,
    Box,
    Color,
    layout,
    reward_curve_png,
    step_ticks,
)

Pixels = list[list[Color]]


def decode(png: bytes) -> Pixels:
    """The RGB pixels of a PNG as ``Canvas.png`` writes it (8-bit RGB, filter 0 rows)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", data[:8])
            assert data[8:10] == b"\x08\x02"  # (8 bits, RGB)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    width, height = size
    raw = zlib.decompress(idat)
    rows = []
    for y in range(height):
        row = raw[y * (1 + 3 * width) : (y + 1) * (1 + 3 * width)]
        assert row[0] == 0
        rows.append([(row[1 + 3 * x], row[2 + 3 * x], row[3 + 3 * x]) for x in range(width)])
    return rows


def inked(pixels: Pixels, box: Box) -> set[tuple[int, int]]:
    """Text-coloured pixels in ``box``, relative to its top left; every other pixel there
    must be background."""
    found = set()
    for y in range(box.top, box.bottom):
        for x in range(box.left, box.right):
            if pixels[y][x] == TEXT:
                found.add((x - box.left, y - box.top))
            else:
                assert pixels[y][x] == WHITE, (x, y, pixels[y][x])
    return found


def horizontal(text: str) -> set[tuple[int, int]]:
    return set(text_pixels(text, TEXT_SCALE))


def turned(text: str) -> set[tuple[int, int]]:
    """``text`` turned a quarter to the left, relative to its box."""
    span = text_width(text, TEXT_SCALE)
    return {(y, span - 1 - x) for x, y in text_pixels(text, TEXT_SCALE)}


STEPS = list(range(120))
REWARDS = [min(1.0, s / 100) for s in STEPS]


def test_the_title_and_axis_names_are_drawn() -> None:
    pixels = decode(reward_curve_png(STEPS, REWARDS))
    parts = layout(800, 400)
    assert parts.title and parts.x_label and parts.y_label
    assert inked(pixels, parts.title) == horizontal("mean reward per step (dark: moving average)")
    assert inked(pixels, parts.x_label) == horizontal("step")
    assert inked(pixels, parts.y_label) == turned("reward")
    # Each name sits outside the plot area: below it, above it, left of it.
    assert parts.x_label.top > parts.plot.bottom and parts.title.bottom < parts.plot.top
    assert parts.y_label.right < parts.plot.left


def test_the_names_are_the_callers() -> None:
    png = reward_curve_png(STEPS, REWARDS, 640, 300, title="run 7", x_label="t", y_label="r")
    pixels = decode(png)
    parts = layout(640, 300, "run 7", "t", "r")
    assert parts.title and parts.x_label and parts.y_label
    assert inked(pixels, parts.title) == horizontal("run 7")
    assert inked(pixels, parts.x_label) == horizontal("t")
    assert inked(pixels, parts.y_label) == turned("r")


def test_axis_values_are_labelled() -> None:
    pixels = decode(reward_curve_png(STEPS, REWARDS))
    plot = layout(800, 400).plot
    ink = {(x, y) for y, row in enumerate(pixels) for x, c in enumerate(row) if c == TEXT}
    # Values of the y axis (0, 0.5, 1) end just left of it; steps are written under it.
    assert any(plot.left - 12 < x < plot.left and plot.top - 10 < y < plot.top + 10 for x, y in ink)
    assert any(plot.bottom < y < plot.bottom + 40 for _, y in ink)
    assert step_ticks(0, 119) == [0, 50, 119]  # (100 is too close to 119)


def test_a_small_picture_has_no_text() -> None:
    pixels = decode(reward_curve_png(list(range(50)), [i / 50 for i in range(50)], 64, 32))
    assert len(pixels) == 32 and len(pixels[0]) == 64
    assert not any(c == TEXT for row in pixels for c in row)


@pytest.mark.parametrize(
    ("first", "last", "ticks"),
    [
        (0, 999, [0, 200, 400, 600, 800, 999]),
        (5, 17, [5, 10, 17]),
        (3, 3, [3]),
        (0, 3, [0, 1, 2, 3]),
    ],
)
def test_step_ticks_are_round(first: int, last: int, ticks: list[int]) -> None:
    assert step_ticks(first, last) == ticks


def test_the_font() -> None:
    assert all(len(rows) == HEIGHT for rows in GLYPHS.values())
    assert all(len(r) == WIDTH and set(r) <= {"#", "."} for rows in GLYPHS.values() for r in rows)
    assert len({rows for rows in GLYPHS.values()}) == len(GLYPHS)  # (no two alike)
    assert text_width("ab", 2) == (2 * ADVANCE - 1) * 2
    # "i" is a dot (column 2 of row 0) over a stem: the dot's pixel, scaled.
    assert {(4, 0), (5, 0), (4, 1), (5, 1)} <= set(text_pixels("i", 2))
    assert (4, 2) not in set(text_pixels("i", 2))
    assert set(text_pixels("I")) == set(text_pixels("i"))
    with pytest.raises(ValueError, match="no glyph for '#'"):
        list(text_pixels("#"))
