"""Assemble an APNG from PNG frames (libvips reads and writes PNG but not APNG).

Pure bytes in, bytes out. Every frame is a whole canvas (the engine has already composed
the animation), so each frame is written with offset 0, ``dispose_op`` none and
``blend_op`` source: no decoder state carries over between frames.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_DELAY_MS = 0xFFFF  # delay_num is 16 bits; with delay_den = 1000 that is 65.5 s


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _split(png: bytes) -> tuple[bytes, bytes]:
    """(IHDR payload, concatenated IDAT payloads) of one PNG image."""
    if not png.startswith(SIGNATURE):
        raise ValueError("frame is not a PNG")
    pos, ihdr, idat = len(SIGNATURE), b"", bytearray()
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        data = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            ihdr = data
        elif kind == b"IDAT":
            idat += data
        elif kind == b"IEND":
            break
        pos += 12 + length
    if len(ihdr) != 13 or not idat:
        raise ValueError("PNG frame without IHDR or IDAT")
    if ihdr[12] != 0:
        raise ValueError("interlaced PNG frames are not supported")
    return ihdr, bytes(idat)


def assemble(frames: Sequence[bytes], delays_ms: Sequence[int], loops: int) -> bytes:
    """An APNG showing ``frames`` (PNG images of one size and colour type) in order.

    ``delays_ms[i]`` is frame i's duration (missing entries: 100 ms); ``loops`` 0 = forever.
    Raises ValueError when the frames do not share one IHDR.
    """
    if not frames:
        raise ValueError("no frames")
    parts = [_split(f) for f in frames]
    ihdr = parts[0][0]
    if any(p[0] != ihdr for p in parts):
        raise ValueError("APNG frames differ in size or colour type")
    width, height = struct.unpack(">II", ihdr[:8])
    out = [SIGNATURE, _chunk(b"IHDR", ihdr)]
    out.append(_chunk(b"acTL", struct.pack(">II", len(frames), min(max(loops, 0), 0x7FFFFFFF))))
    seq = 0
    for index, (_, idat) in enumerate(parts):
        delay = delays_ms[index] if index < len(delays_ms) else 100
        fctl = struct.pack(
            ">IIIIIHHBB", seq, width, height, 0, 0, min(max(delay, 0), MAX_DELAY_MS), 1000, 0, 0
        )
        out.append(_chunk(b"fcTL", fctl))
        seq += 1
        if index == 0:
            out.append(_chunk(b"IDAT", idat))  # the first frame is also the default image
        else:
            out.append(_chunk(b"fdAT", struct.pack(">I", seq) + idat))
            seq += 1
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)
