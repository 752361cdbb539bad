"""JPEG decoding scaled in the DCT, through libjpeg-turbo's TurboJPEG API (ctypes).

Runs only inside engine workers. libvips stays the engine; this replaces one step of it:
decoding a JPEG at 1/2, 1/4 or 1/8 scale for a variant that shrinks (``thumbnail=N`` of a
camera photo is almost all decode). On this platform the same decode costs ~19 ms through
TurboJPEG against ~22 ms through the wheel's ``jpegload(shrink=8)`` (bench/README.md), with
the same libjpeg defaults (fancy upsampling, accurate DCT), so the pixels match libvips'
decode to within rounding.

Only plain cases go this way: 8-bit greyscale or YCbCr/RGB files that decode without any
warning. CMYK/YCCK, a missing library, or any error or warning (truncated, corrupt data)
answer None, and the caller decodes with libvips, whose strictness (``fail_on``) then
decides. The output buffer is bounded by the scaled size of a header already validated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading
from typing import NamedTuple

# TurboJPEG constants (turbojpeg.h)
_TJCS_RGB, _TJCS_YCBCR, _TJCS_GRAY = 0, 1, 2
_TJPF_RGB, _TJPF_GRAY = 0, 6
_TJFLAG_FASTUPSAMPLE, _TJFLAG_FASTDCT = 256, 2048


class Decoded(NamedTuple):
    pixels: memoryview  # rows of ``width`` x ``bands`` bytes, no padding
    width: int  # libjpeg's scaled size: ceil(full size / denominator)
    height: int
    bands: int  # 1 (grey) or 3 (RGB)
    full_width: int
    full_height: int


# The compressed bytes: ``bytes``, or a writable buffer such as an ``ACCESS_COPY`` mmap of
# the file (read in place, never copied).
Source = bytes | bytearray | mmap.mmap


def _pointer(data: Source) -> bytes | ctypes.Array[ctypes.c_char]:
    if isinstance(data, bytes):
        return data
    return (ctypes.c_char * len(data)).from_buffer(data)


class TurboJPEG:
    """One decompressor handle; not thread-safe (a worker runs one job at a time)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.tjInitDecompress.restype = ctypes.c_void_p
        lib.tjInitDecompress.argtypes = []
        lib.tjDestroy.argtypes = [ctypes.c_void_p]
        lib.tjDecompressHeader3.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_ulong,
            *[ctypes.POINTER(ctypes.c_int)] * 4,
        ]
        lib.tjDecompress2.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
            *[ctypes.c_int] * 5,
        ]
        handle = lib.tjInitDecompress()
        if not handle:
            raise OSError("tjInitDecompress failed")
        self._handle = ctypes.c_void_p(handle)

    def close(self) -> None:
        if self._handle:
            self._lib.tjDestroy(self._handle)
            self._handle = ctypes.c_void_p()

    def header(self, data: Source) -> tuple[int, int, int] | None:
        """(width, height, colourspace) or None when TurboJPEG cannot read the header."""
        w, h, sub, cs = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        ok = self._lib.tjDecompressHeader3(
            self._handle, _pointer(data), len(data), *(ctypes.byref(v) for v in (w, h, sub, cs))
        )
        return (w.value, h.value, cs.value) if ok == 0 else None

    def decode(self, data: Source, denominator: int, *, fast: bool = False) -> Decoded | None:
        """Decode at 1/``denominator`` (1, 2, 4 or 8); None when this path does not apply.

        ``fast`` trades the last bit of accuracy for speed (plain chroma upsampling, the fast
        integer IDCT), as Pillow's draft mode does: for plain sampling (``thumbnail``)."""
        if denominator not in (1, 2, 4, 8):
            raise ValueError(f"unsupported scale 1/{denominator}")
        head = self.header(data)
        if head is None:
            return None
        width, height, colourspace = head
        if colourspace == _TJCS_GRAY:
            pixel_format, bands = _TJPF_GRAY, 1
        elif colourspace in (_TJCS_RGB, _TJCS_YCBCR):
            pixel_format, bands = _TJPF_RGB, 3
        else:
            return None  # CMYK / YCCK: libvips handles the inversion and conversion
        # libjpeg's scaled size: ceil(dimension / denominator), as libvips' shrink gives.
        out_w = -(-width // denominator)
        out_h = -(-height // denominator)
        buffer = ctypes.create_string_buffer(out_w * out_h * bands)
        ok = self._lib.tjDecompress2(
            self._handle,
            _pointer(data),
            len(data),
            buffer,
            out_w,
            0,
            out_h,
            pixel_format,
            _TJFLAG_FASTUPSAMPLE | _TJFLAG_FASTDCT if fast else 0,
        )
        if ok != 0:
            return None  # an error or a warning: let libvips decide with its own policy
        return Decoded(memoryview(buffer).cast("B"), out_w, out_h, bands, width, height)


_lock = threading.Lock()
_instance: TurboJPEG | None = None
_missing = False


def decoder() -> TurboJPEG | None:
    """The process's decoder, or None when libturbojpeg is not installed."""
    global _instance, _missing
    with _lock:
        if _instance is None and not _missing:
            name = ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0"
            try:
                _instance = TurboJPEG(ctypes.CDLL(name))
            except (OSError, AttributeError):
                _missing = True
        return _instance
