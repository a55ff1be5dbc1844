"""A tiny pure-Python PNG bar chart (no matplotlib: the bench adds no dependency).

Only what the fleet report needs: filled rectangles, lines and 5×7 bitmap text, written as an
8-bit RGB PNG with zlib.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

# 5x7 glyphs, one string of 7 rows of 5 bits each ('#' on).
_FONT_ROWS = {
    "0": ".###.#...##..###.#.###..##...#.###.",
    "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#....#####",
    "3": "#####...#...#.....#....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.",
    "5": "#####....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.",
    "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.",
    "9": ".###.#...##...#.####....#...#..##..",
    ".": "..............................##...",
    ",": ".........................##...#...#.",
    "-": "...............###...............",
    "_": "..............................#####",
    "/": ".........#...#...#...#...#.........",
    "%": "##...##..#...#...#...#...#..##...##",
    "(": "...#...#...#....#....#.....#.....#.",
    ")": ".#.....#.....#....#....#...#...#...",
    ":": ".......##...##.........##...##.....",
    "=": "..........#####.....#####..........",
    "<": "...#...#...#...#.....#.....#.....#",
    ">": ".#.....#.....#.....#...#...#...#...",
    "+": ".......#....#..#####..#....#.......",
    "@": ".###.#...##.###.#.##.###.#.....###.",
    "x": "..........#...#.#.#...#...#.#.#...#",
    " ": "...................................",
}
_LETTERS = {
    "A": ".###.#...##...#######...##...##...#",
    "B": "####.#...##...#####.#...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.",
    "D": "###..#..#.#...##...##...##..#.###..",
    "E": "######....#....####.#....#....#####",
    "F": "######....#....####.#....#....#....",
    "G": ".###.#...##....#.####...##...#.####",
    "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.",
    "J": "..###...#....#....#....#.#..#..##..",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#",
    "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##...##...##...##...#",
    "N": "#...##...###..##.#.##..###...##...#",
    "O": ".###.#...##...##...##...##...#.###.",
    "P": "####.#...##...#####.#....#....#....",
    "Q": ".###.#...##...##...##.#.##..#..##.#",
    "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".####.....#.....###.....#....#####.",
    "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.",
    "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.##.#.#.#.#.",
    "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..",
    "Z": "#####....#...#...#...#...#....#####",
}
_FONT_ROWS.update(_LETTERS)


def _glyph(ch: str) -> list[int]:
    bits = _FONT_ROWS.get(ch.upper(), _FONT_ROWS[" "]).ljust(35, ".")[:35]
    return [i for i, b in enumerate(bits) if b == "#"]


Color = tuple[int, int, int]


class Canvas:
    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        self.w, self.h = width, height
        self.px = bytearray(bytes(background) * (width * height))

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        xa, xb = sorted((int(round(x0)), int(round(x1))))
        ya, yb = sorted((int(round(y0)), int(round(y1))))
        xa, ya, xb, yb = max(xa, 0), max(ya, 0), min(xb, self.w), min(yb, self.h)
        row = bytes(color) * max(0, xb - xa)
        for y in range(ya, yb):
            start = (y * self.w + xa) * 3
            self.px[start : start + len(row)] = row

    def hline(self, x0: float, x1: float, y: float, color: Color) -> None:
        self.rect(x0, y, x1, y + 1, color)

    def vline(self, x: float, y0: float, y1: float, color: Color) -> None:
        self.rect(x, y0, x + 1, y1, color)

    def text(self, x: float, y: float, s: str, color: Color = (0, 0, 0), scale: int = 1) -> None:
        for n, ch in enumerate(s):
            for bit in _glyph(ch):
                gx, gy = bit % 5, bit // 5
                px = int(x) + (n * 6 + gx) * scale
                py = int(y) + gy * scale
                self.rect(px, py, px + scale, py + scale, color)

    def text_width(self, s: str, scale: int = 1) -> int:
        return len(s) * 6 * scale

    def save(self, path: Path) -> None:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3 : (y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (
                struct.pack(">I", len(data))
                + kind
                + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
            )

        png = b"\x89PNG\r\n\x1a\n"
        png += chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
        png += chunk(b"IDAT", zlib.compress(raw, 9))
        png += chunk(b"IEND", b"")
        path.write_bytes(png)


PALETTE: list[Color] = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def bar_panel(
    canvas: Canvas,
    box: tuple[int, int, int, int],
    title: str,
    groups: list[str],
    series: list[str],
    values: list[list[float | None]],
    *,
    log: bool,
    unit: str,
    reference: float | None = None,
) -> None:
    """Grouped bars: ``values[g][s]`` for group g and series s, in one panel inside ``box``."""
    x0, y0, x1, y1 = box
    canvas.text(x0, y0, title, scale=2)
    left, top, bottom = x0 + 60, y0 + 30, y1 - 40
    right = x1 - 10
    flat = [v for row in values for v in row if v is not None and v > 0]
    vmax = max(flat + ([reference] if reference else []) + [1e-9])
    if log:
        vmin = min(flat + [vmax]) if flat else 1.0
        lo = math.floor(math.log10(max(vmin, 1e-3)))
        hi = math.ceil(math.log10(vmax * 1.001))
        hi = max(hi, lo + 1)

        def ypos(v: float) -> float:
            lv = math.log10(max(v, 10**lo))
            return bottom - (lv - lo) / (hi - lo) * (bottom - top)

        ticks = [10.0**e for e in range(lo, hi + 1)]
    else:
        step = 10 ** math.floor(math.log10(vmax)) if vmax > 0 else 1
        top_value = math.ceil(vmax / step) * step
        ticks = [step * i for i in range(int(top_value / step) + 1)]

        def ypos(v: float) -> float:
            return bottom - v / top_value * (bottom - top)

    for t in ticks:
        y = ypos(t)
        canvas.hline(left, right, y, (225, 225, 225))
        label = f"{t:g}"
        canvas.text(left - 6 - canvas.text_width(label), y - 3, label)
    canvas.vline(left, top, bottom, (0, 0, 0))
    canvas.hline(left, right, bottom, (0, 0, 0))
    canvas.text(x0, top - 12, unit)
    if reference is not None:
        y = ypos(reference)
        for xx in range(left, right, 8):
            canvas.hline(xx, xx + 4, y, (214, 39, 40))
        canvas.text(
            right - canvas.text_width(f"target {reference:g}"), y - 10, f"target {reference:g}", (214, 39, 40)
        )
    group_w = (right - left) / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for g, name in enumerate(groups):
        gx = left + g * group_w + group_w * 0.1
        for s, value in enumerate(values[g]):
            if value is None:
                continue
            bx = gx + s * bar_w
            canvas.rect(bx + 1, ypos(value), bx + bar_w - 1, bottom, PALETTE[s % len(PALETTE)])
        canvas.text(gx + (group_w * 0.8 - canvas.text_width(name)) / 2, bottom + 8, name)
    lx = left + 8
    for s, name in enumerate(series):
        canvas.rect(lx, bottom + 24, lx + 10, bottom + 34, PALETTE[s % len(PALETTE)])
        canvas.text(lx + 14, bottom + 26, name)
        lx += 24 + canvas.text_width(name)
