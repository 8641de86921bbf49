"""The reward curve as a PNG, written with the standard library (zlib) alone.

The picture: reward (y) against step (x); grey grid lines at every 0.1 of reward (darker at
0, 0.5 and 1), the per-step mean reward in light blue, its moving average in dark blue. A
title above, the axes' names (``step`` under, ``reward`` up the left side) and values at
the darker grid lines and a few steps, drawn with a built-in bitmap font
(``learner.font``). Text needs room: a picture under ``MIN_TEXT_SIZE`` is drawn bare.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rlfleet.learner.font import HEIGHT as FONT_HEIGHT
from rlfleet.learner.font import text_pixels, text_width

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
GRID: Color = (225, 225, 225)
GRID_MAJOR: Color = (170, 170, 170)
RAW: Color = (150, 190, 235)
SMOOTH: Color = (20, 70, 160)
TEXT: Color = (40, 40, 40)
AXIS: Color = (90, 90, 90)

TITLE = "mean reward per step (dark: moving average)"
X_LABEL = "step"
Y_LABEL = "reward"
TEXT_SCALE = 2
MIN_TEXT_SIZE = (240, 120)
"""(width, height) under which no text is drawn."""


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def dot(self, x: int, y: int, color: Color, size: int = 1) -> None:
        for dx in range(size):
            for dy in range(size):
                px, py = x + dx, y + dy
                if 0 <= px < self.width and 0 <= py < self.height:
                    i = 3 * (py * self.width + px)
                    self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, size: int = 1) -> None:
        """Bresenham's line."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, color, size)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(
        self, x: int, y: int, text: str, color: Color, scale: int = 1, vertical: bool = False
    ) -> None:
        """``text`` with its box's top left at (x, y); ``vertical``: turned a quarter to the
        left (read bottom to top, as a y axis's name)."""
        span = text_width(text, scale)
        for px, py in text_pixels(text, scale):
            if vertical:
                self.dot(x + py, y + span - 1 - px, color)
            else:
                self.dot(x + px, y + py, color)

    def png(self) -> bytes:
        rows = b"".join(
            b"\x00" + bytes(self.pixels[3 * y * self.width : 3 * (y + 1) * self.width])
            for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b"")
        )


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


@dataclass(frozen=True, kw_only=True)
class Box:
    """A rectangle in pixels: [left, right) x [top, bottom)."""

    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True, kw_only=True)
class Layout:
    plot: Box
    """Where the curve and the grid go."""
    title: Box | None
    x_label: Box | None
    y_label: Box | None
    """The texts' boxes (None: no text, the picture is too small)."""


def layout(
    width: int, height: int, title: str = TITLE, x_label: str = X_LABEL, y_label: str = Y_LABEL
) -> Layout:
    """Where each part of the picture goes: the title centred on top, ``x_label`` centred
    under the x axis's values, ``y_label`` turned and centred left of the y axis's values."""
    if width < MIN_TEXT_SIZE[0] or height < MIN_TEXT_SIZE[1]:
        margin = 20
        plot = Box(left=margin, top=margin, right=width - margin, bottom=height - margin)
        return Layout(plot=plot, title=None, x_label=None, y_label=None)
    line = FONT_HEIGHT * TEXT_SCALE  # (the height of a line of text)
    plot = Box(left=4 * line + 8, top=line + 16, right=width - 24, bottom=height - 2 * line - 20)
    middle_x = (plot.left + plot.right) // 2
    middle_y = (plot.top + plot.bottom) // 2

    def centred(text: str, top: int) -> Box:
        left = middle_x - text_width(text, TEXT_SCALE) // 2
        return Box(left=left, top=top, right=left + text_width(text, TEXT_SCALE), bottom=top + line)

    y_span = text_width(y_label, TEXT_SCALE)
    return Layout(
        plot=plot,
        title=centred(title, 6),
        x_label=centred(x_label, height - line - 4),
        y_label=Box(
            left=4,
            top=middle_y - y_span // 2,
            right=4 + line,
            bottom=middle_y - y_span // 2 + y_span,
        ),
    )


def _round_strides() -> Iterator[int]:
    """1, 2, 5, 10, 20, 50, ..."""
    power = 1
    while True:
        yield from (power, 2 * power, 5 * power)
        power *= 10


def step_ticks(first: int, last: int, most: int = 6) -> list[int]:
    """Round steps to label between ``first`` and ``last`` (1, 2 or 5 times a power of ten
    apart, at most ``most`` of them), the two ends included."""
    span = last - first
    if span <= 0:
        return [first]
    stride = next(s for s in _round_strides() if span / s <= most - 1)
    inner = range((first // stride + 1) * stride, last, stride)
    # (an inner tick closer than half a stride to an end would crowd its label)
    return [first, *(t for t in inner if min(t - first, last - t) >= stride / 2), last]


def reward_curve_png(
    steps: Sequence[int],
    rewards: Sequence[float],
    width: int = 800,
    height: int = 400,
    *,
    title: str = TITLE,
    x_label: str = X_LABEL,
    y_label: str = Y_LABEL,
) -> bytes:
    """The PNG of ``rewards`` over ``steps`` (y from min(0, lowest) to max(1, highest))."""
    canvas = Canvas(width, height)
    parts = layout(width, height, title, x_label, y_label)
    box = parts.plot
    low = min([0.0, *rewards])
    high = max([1.0, *rewards])
    first = steps[0] if steps else 0
    last = steps[-1] if steps else 1
    span = max(1, last - first)

    def px(step: int, value: float) -> tuple[int, int]:
        x = box.left + round((step - first) / span * (box.right - box.left))
        y = box.bottom - round((value - low) / (high - low) * (box.bottom - box.top))
        return x, y

    labelled = parts.title is not None
    for tenth in range(round(low * 10), round(high * 10) + 1):
        _, y = px(first, tenth / 10)
        major = tenth % 5 == 0
        canvas.line(box.left, y, box.right, y, GRID_MAJOR if major else GRID)
        if labelled and major:
            value = f"{tenth / 10:g}"
            left = box.left - 8 - text_width(value, TEXT_SCALE)
            canvas.text(left, y - FONT_HEIGHT * TEXT_SCALE // 2, value, TEXT, TEXT_SCALE)
    if labelled:
        canvas.line(box.left, box.top, box.left, box.bottom, AXIS)
        canvas.line(box.left, box.bottom, box.right, box.bottom, AXIS)
        for tick in step_ticks(first, last) if steps else []:
            x, _ = px(tick, low)
            canvas.line(x, box.bottom, x, box.bottom + 4, AXIS)
            value = str(tick)
            left = min(
                x - text_width(value, TEXT_SCALE) // 2, width - 2 - text_width(value, TEXT_SCALE)
            )
            canvas.text(left, box.bottom + 12, value, TEXT, TEXT_SCALE)
    for series, color, size in (
        (list(rewards), RAW, 1),
        (moving_average(rewards, max(1, len(rewards) // 40)), SMOOTH, 2),
    ):
        points = [px(s, v) for s, v in zip(steps, series, strict=True)]
        if len(points) == 1:
            canvas.dot(*points[0], color, size + 2)
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            canvas.line(x0, y0, x1, y1, color, size)
    for text, where, vertical in (
        (title, parts.title, False),
        (x_label, parts.x_label, False),
        (y_label, parts.y_label, True),
    ):
        if where is not None:
            canvas.text(where.left, where.top, text, TEXT, TEXT_SCALE, vertical)
    return canvas.png()


def write_reward_curve(path: Path, steps: Sequence[int], rewards: Sequence[float]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(reward_curve_png(steps, rewards))
    partial.replace(path)
