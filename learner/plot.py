"""The reward curve as a PNG, written with the standard library (zlib) alone.

The picture: reward (y) against step (x); grey grid lines at every 0.1 of reward (darker at
0, 0.5 and 1), the per-step mean reward in light blue, its moving average in dark blue. No
text: the numbers are in ``metrics.jsonl``.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
GRID: Color = (225, 225, 225)
GRID_MAJOR: Color = (170, 170, 170)
RAW: Color = (150, 190, 235)
SMOOTH: Color = (20, 70, 160)


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


def reward_curve_png(
    steps: Sequence[int], rewards: Sequence[float], width: int = 800, height: int = 400
) -> bytes:
    """The PNG of ``rewards`` over ``steps`` (y from min(0, lowest) to max(1, highest))."""
    canvas = Canvas(width, height)
    margin = 20
    low = min([0.0, *rewards])
    high = max([1.0, *rewards])
    first = steps[0] if steps else 0
    last = steps[-1] if steps else 1
    span = max(1, last - first)

    def px(step: int, value: float) -> tuple[int, int]:
        x = margin + round((step - first) / span * (width - 2 * margin))
        y = height - margin - round((value - low) / (high - low) * (height - 2 * margin))
        return x, y

    for tenth in range(round(low * 10), round(high * 10) + 1):
        _, y = px(first, tenth / 10)
        color = GRID_MAJOR if tenth % 5 == 0 else GRID
        canvas.line(margin, y, width - margin, y, color)
    for series, color, size in (
        (list(rewards), RAW, 1),
        (moving_average(rewards, max(1, len(rewards) // 40)), SMOOTH, 2),
    ):
        points = [px(s, v) for s, v in zip(steps, series, strict=True)]
        if len(points) == 1:
            canvas.dot(*points[0], color, size + 2)
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            canvas.line(x0, y0, x1, y1, color, size)
    return canvas.png()


def write_reward_curve(path: Path, steps: Sequence[int], rewards: Sequence[float]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(reward_curve_png(steps, rewards))
    partial.replace(path)
