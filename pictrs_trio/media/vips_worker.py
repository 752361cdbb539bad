"""Engine worker process: ``python -m pictrs_trio.media.vips_worker``.

Reads framed requests (``media.protocol``) on stdin, answers on stdout, one job at a time.
Only this process loads libvips (here and in ``vips_ops``, which holds the loader table and
the processing jobs). Started and supervised by ``media.vips``.

Hardening, because the input is untrusted:
* the limits of ``protocol.EngineLimits`` (``PICTRS_ENGINE_LIMITS``), applied before libvips
  loads: an address-space limit, a file-size limit, the in-memory decode threshold, and the
  largest frame it decodes;
* each sniffed type maps to exactly one loader; the generic ``new_from_file`` is never used
  (the wheel carries SVG/TIFF loaders), and the ``vips-loader`` of the result is checked again;
* stdout is moved to a private descriptor, so a stray write by a library cannot corrupt the
  protocol stream (fd 1 then points at stderr).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from pictrs_trio.media.protocol import (
    HEADER,
    LIMITS_ENV,
    MAX_FRAME,
    Blurhash,
    EngineLimits,
    Failed,
    Probe,
    ProbeResult,
    Ready,
    Render,
    Reply,
    Request,
    Slept,
    frame,
)
from pictrs_trio.media.vips_ops import LOADERS as LOADERS  # re-export: it lived here
from pictrs_trio.media.vips_ops import (
    MediaFault,
    blurhash,
    field,
    load,
    pages_of,
    remove_partial,
    render,
)

if TYPE_CHECKING:
    import pyvips

TRIM_ABOVE = 4 << 20  # free heap bytes worth handing back after a job


def probe(vips: type[pyvips.Image], job: Probe) -> ProbeResult:
    # Opening is lazy in libvips: this reads the header only, whatever the pixel count.
    image = load(vips, job.path, job.sniffed, access="sequential")
    orientation = field(image, "orientation")
    return ProbeResult(
        width=image.width,
        height=image.height,
        pages=pages_of(image),
        orientation=orientation if isinstance(orientation, int) and orientation > 0 else None,
        loader=str(image.get("vips-loader")),
        has_alpha=bool(image.hasalpha()),
    )


def handle(
    vips: type[pyvips.Image],
    error: type[Exception],
    job: Request,
    limits: EngineLimits = EngineLimits(),  # noqa: B008 (frozen: one shared default is fine)
) -> Reply:
    try:
        if isinstance(job, Probe):
            return probe(vips, job)
        if isinstance(job, Render):
            return render(vips, job, limits)
        if isinstance(job, Blurhash):
            return blurhash(vips, job, limits)
        time.sleep(job.seconds)
        return Slept()
    except MediaFault as exc:
        failed = Failed(message=str(exc), media=True)
    except error as exc:  # libvips refused the bytes: corrupt or truncated input
        failed = Failed(message=_vips_message(str(exc)), media=True)
    except (OSError, ValueError) as exc:
        failed = Failed(message=f"{type(exc).__name__}: {exc}", media=False)
    if isinstance(job, Render):
        remove_partial(job.dst)
    return failed


def _vips_message(text: str) -> str:
    """libvips' error log, short: its first line, and the first system error when there is
    one (a write over the file-size limit says "File too large" only there)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or ["libvips error"]
    system = next((line for line in lines if line.startswith("system error:")), None)
    message = lines[0] if system is None else f"{lines[0]}: {system}"
    return message[:300]


def _warm_up(vips: type[pyvips.Image]) -> None:
    """Pay libvips' lazy first-use costs now, not in the first upload (our own bytes only)."""
    pixel = vips.black(2, 2, bands=3)
    for fmt in ("jpeg", "png", "webp", "gif"):
        getattr(vips, f"{fmt}load_buffer")(getattr(pixel, f"{fmt}save_buffer")()).avg()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def memory_releaser() -> Callable[[], None]:
    """A function that gives freed heap memory back to the kernel when enough has piled up.

    libvips frees its pixel buffers, but glibc keeps the holes they leave in the heap: a
    worker that has processed a few PNGs and GIFs sits at ~45 MB RSS instead of ~30 MB.
    ``malloc_trim`` returns them (~0.5 ms), so it runs after a reply is sent, and only when
    more than ``TRIM_ABOVE`` bytes are free in the heap.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim, info = libc.malloc_trim, libc.mallinfo2
    except (OSError, AttributeError):  # not glibc (or older than 2.33): nothing to do
        return lambda: None
    info.restype = _MallInfo2
    trim.argtypes = [ctypes.c_size_t]

    def release() -> None:
        if info().fordblks > TRIM_ABOVE:
            trim(0)

    return release


def _read_exact(fd: int, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def apply_limits(limits: EngineLimits) -> None:
    """The process-wide limits, before libvips loads (it reads VIPS_DISC_THRESHOLD once)."""
    memory, size = limits.address_space_mb << 20, limits.file_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # Over the file-size limit a write fails with EFBIG (libvips reports it) instead of the
    # process dying of SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    os.environ["VIPS_DISC_THRESHOLD"] = f"{limits.in_memory_mb}m"


def main() -> None:
    raw = os.environ.get(LIMITS_ENV)
    limits = EngineLimits() if raw is None else msgspec.json.decode(raw, type=EngineLimits)
    apply_limits(limits)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import pyvips  # only here: the server process never loads libvips

    pyvips.cache_set_max(0)  # jobs are unrelated files; an op cache only holds memory
    _warm_up(pyvips.Image)

    decoder = msgspec.msgpack.Decoder(Request)
    encoder = msgspec.msgpack.Encoder()
    release_memory = memory_releaser()
    release_memory()  # what the warm-up left behind
    _write_all(out_fd, frame(encoder.encode(Ready())))
    while True:
        head = _read_exact(0, HEADER.size)
        if head is None:
            return  # server closed our stdin: orderly exit
        (size,) = HEADER.unpack(head)
        if size > MAX_FRAME:
            raise SystemExit(f"frame of {size} bytes refused")
        body = _read_exact(0, size)
        if body is None:
            return
        reply = handle(pyvips.Image, pyvips.Error, decoder.decode(body), limits)
        _write_all(out_fd, frame(encoder.encode(reply)))
        release_memory()


if __name__ == "__main__":
    main()
