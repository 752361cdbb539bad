"""BlurHash encoding (the algorithm of woltapp/blurhash, as pict-rs answers it on
``GET /image/blurhash``, pict-rs ``src/blurhash.rs``). Pure: pixels in, string out.

The engine worker shrinks the image to at most ``SIDE`` pixels a side first (the hash keeps
only a few cosine components, so more pixels change nothing a viewer can see), then calls
``encode`` on its 8-bit sRGB pixels. Alpha is not part of a BlurHash; callers pass colour
bands only.
"""

from __future__ import annotations

import math

SIDE = 32  # pixels per side the engine shrinks to before encoding
BASE83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
MAX_COMPONENTS = 9

# sRGB byte -> linear light, once (the module is imported by the engine worker only).
_LINEAR = tuple(
    v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
    for v in (b / 255 for b in range(256))
)


def components_for(width: int, height: int) -> tuple[int, int]:
    """Component counts (x, y): 4 along the longer side, 3 along the shorter, the usual
    BlurHash choice, turned with the image so a portrait keeps its detail vertically."""
    return (4, 3) if width >= height else (3, 4)


def base83(value: int, length: int) -> str:
    """``value`` in ``length`` base-83 digits, most significant first."""
    return "".join(BASE83[(value // 83 ** (length - 1 - i)) % 83] for i in range(length))


def _to_srgb(value: float) -> int:
    v = min(max(value, 0.0), 1.0)
    if v <= 0.0031308:
        return int(v * 12.92 * 255 + 0.5)
    return int((1.055 * v ** (1 / 2.4) - 0.055) * 255 + 0.5)


def _sign_sqrt(value: float) -> float:
    return math.copysign(math.sqrt(abs(value)), value)


def encode(pixels: bytes, width: int, height: int, bands: int, x: int, y: int) -> str:
    """The BlurHash of ``width`` x ``height`` pixels of ``bands`` 8-bit bands each, row by
    row (the first three bands are R, G, B), with ``x`` by ``y`` components.

    Raises ValueError for component counts outside 1..9, a band count below 3, or pixel
    data of the wrong length.
    """
    if not (1 <= x <= MAX_COMPONENTS and 1 <= y <= MAX_COMPONENTS):
        raise ValueError("component counts must be between 1 and 9")
    if bands < 3 or width < 1 or height < 1 or len(pixels) != width * height * bands:
        raise ValueError("pixel data does not match its size")
    # Each colour plane, in linear light, as rows.
    planes = [
        [
            [_LINEAR[pixels[(row * width + col) * bands + c]] for col in range(width)]
            for row in range(height)
        ]
        for c in range(3)
    ]
    cos_x = [[math.cos(math.pi * i * col / width) for col in range(width)] for i in range(x)]
    cos_y = [[math.cos(math.pi * j * row / height) for row in range(height)] for j in range(y)]
    factors: list[tuple[float, float, float]] = []
    for j in range(y):
        for i in range(x):
            scale = (1.0 if i == j == 0 else 2.0) / (width * height)
            basis_x = cos_x[i]
            sums = []
            for plane in planes:
                total = 0.0
                for row, weight in zip(plane, cos_y[j], strict=True):
                    total += weight * math.fsum(b * v for b, v in zip(basis_x, row, strict=True))
                sums.append(total * scale)
            factors.append((sums[0], sums[1], sums[2]))

    dc, ac = factors[0], factors[1:]
    out = [base83((x - 1) + (y - 1) * 9, 1)]
    if ac:
        actual = max(abs(v) for factor in ac for v in factor)
        quantised = int(max(0, min(82, math.floor(actual * 166 - 0.5))))
        maximum = (quantised + 1) / 166
        out.append(base83(quantised, 1))
    else:
        maximum = 1.0
        out.append(base83(0, 1))
    out.append(base83((_to_srgb(dc[0]) << 16) + (_to_srgb(dc[1]) << 8) + _to_srgb(dc[2]), 4))
    for factor in ac:
        r, g, b = (
            int(max(0, min(18, math.floor(_sign_sqrt(v / maximum) * 9 + 9.5)))) for v in factor
        )
        out.append(base83(r * 19 * 19 + g * 19 + b, 2))
    return "".join(out)
