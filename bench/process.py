#!/usr/bin/env python3
"""Variant benchmark: `GET /image/process.webp?src=<alias>&thumbnail=N` on a real server.

    .venv/bin/python bench/process.py --setup   # once: Debian imagemagick, thumbor venv
    .venv/bin/python bench/process.py           # the full run (about two minutes)
    .venv/bin/python bench/process.py --quick   # a small, fast smoke run

In one run it
  * builds (or reuses) a corpus: 4000x3000 photo-like JPEGs (bench/ingest.py's generator and
    cache), 1920x1080 PNGs and 320x240 20-frame GIFs, cached under bench/out/;
  * times the raw operation in this process on one of those JPEGs -> 256 px WebP: pyvips
    thumbnail_buffer, pyvips shrink-on-load + resize, Pillow draft() + thumbnail, and the
    ImageMagick command pict-rs runs (`convert JPEG:- -sample 256x256> WEBP:-`);
  * spawns `pictrs-trio run` on a free loopback port, uploads the corpus and measures
    first-time variants (every request a new (file, size) pair, so nothing is cached),
    cached variants (the same URLs again for a fixed time) and originals, at concurrency
    1, 8 and 32, while sampling the RSS of the server's whole process tree every 50 ms and
    reading the tree's CPU time around every measurement;
  * runs thumbor (PyPI, Pillow engine, ENGINE_THREADPOOL_SIZE = 2) from its own venv on the
    same JPEGs: first-time 256 px WebP at concurrency 1 and 8 without result storage, then
    cached at 32 with its file result storage. The cached c32 head-to-head runs twice: with
    httpx, and with a minimal keep-alive client, because httpx itself tops out near 800/s;
  * checks the returned thumbnails decode to the expected size, and prints a table, the
    ratios the issue asks for and one JSON line. Nothing asserts timings; a failed check
    exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyvips
import trio

# bench/ is not a package; running `bench/process.py` puts this folder first on sys.path.
from ingest import ROOT, SpawnedServer, build_corpus, free_port, pct, photo

THUMB = 256
OUT = ROOT / "bench" / "out"
EXTRA_CORPUS = OUT / "process-corpus-v1"  # bump the suffix when the PNG/GIF generator changes
THUMBOR_VENV = OUT / "thumbor-venv"
THUMBOR_VERSION = "7.8.0"
PNG_SIZE = (1920, 1080)
GIF_SIZE, GIF_FRAMES = (320, 240), 20
GOAL_LATENCY_RATIO = 1.3  # first-time p50 at c=1 / fastest raw in-process path, at most
GOAL_FIRST_VS_THUMBOR = 1.0  # first-time throughput at c=8 / thumbor's, at least
GOAL_CACHED_VS_THUMBOR = 1.5  # cached throughput at c=32 / thumbor's cached, at least
GOAL_RSS_MB = 150.0
STARTUP_S = 60.0
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)
REQUEST_TIMEOUT_S = 120.0


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """Everything --quick shrinks."""

    jpegs: int
    pngs: int
    gifs: int
    rounds: int  # first-time rounds; the two servers alternate order between rounds
    first_c1: int  # first-time requests per round and side
    first_c8: int
    first_c32: int
    other_first: int  # first-time requests per PNG / GIF file (each a different size)
    cached_s: float  # seconds per cached level (pictrs-trio); thumbor gets the same at c=32
    original_s: float
    raw_repeats: int


FULL = Sizes(
    jpegs=20,
    pngs=3,
    gifs=3,
    rounds=2,
    first_c1=20,
    first_c8=40,
    first_c32=96,
    other_first=4,
    cached_s=10.0,
    original_s=5.0,
    raw_repeats=15,
)
QUICK = Sizes(
    jpegs=4,
    pngs=1,
    gifs=1,
    rounds=1,
    first_c1=4,
    first_c8=8,
    first_c32=8,
    other_first=2,
    cached_s=1.0,
    original_s=1.0,
    raw_repeats=5,
)


# --- corpus --------------------------------------------------------------------------------------


def build_extra_corpus(pngs: int, gifs: int) -> tuple[list[Path], list[Path]]:
    """1920x1080 PNGs (ingest.py's photo generator, cropped) and 320x240 animated GIFs whose
    every frame differs; cached like the JPEGs, only complete files count."""
    EXTRA_CORPUS.mkdir(parents=True, exist_ok=True)
    png_paths = [EXTRA_CORPUS / f"still-{i:02d}.png" for i in range(pngs)]
    gif_paths = [EXTRA_CORPUS / f"anim-{i:02d}.gif" for i in range(gifs)]
    for i, path in enumerate(png_paths):
        if not path.exists():
            log(f"generating {path.name}")
            img = photo(100 + i).crop(0, 0, *PNG_SIZE)
            partial = path.with_suffix(".partial.png")
            img.pngsave(str(partial), compression=6)
            partial.rename(path)
    w, h = GIF_SIZE
    for i, path in enumerate(gif_paths):
        if not path.exists():
            log(f"generating {path.name}")
            frames = []
            for f in range(GIF_FRAMES):
                s = 1000 + i * 100 + f
                bands = [
                    pyvips.Image.perlin(w, h, cell_size=48, seed=s * 3 + b) * 120 + 128
                    for b in range(3)
                ]
                frames.append(bands[0].bandjoin(bands[1:]).cast("uchar"))
            strip = pyvips.Image.arrayjoin(frames, across=1).copy(interpretation="srgb")
            strip.set_type(pyvips.GValue.gint_type, "page-height", h)
            strip.set_type(pyvips.GValue.array_int_type, "delay", [80] * GIF_FRAMES)
            strip.set_type(pyvips.GValue.gint_type, "loop", 0)
            partial = path.with_suffix(".partial.gif")
            strip.gifsave(str(partial))
            partial.rename(path)
    return png_paths, gif_paths


def fit(width: int, height: int, box: int) -> tuple[int, int]:
    """The size a shrink-only "fit inside box x box" gives (rounded like ImageMagick)."""
    if width <= box and height <= box:
        return width, height
    scale = box / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


# --- raw in-process operations -------------------------------------------------------------------


def find_imagemagick() -> list[str] | None:
    """The real ImageMagick convert (IM7 `magick convert` or IM6 `convert`), not a stand-in."""
    for argv in (["magick", "convert"], ["/usr/bin/convert"], ["convert"]):
        exe = shutil.which(argv[0])
        if exe is None:
            continue
        try:
            out = subprocess.run([exe, *argv[1:], "-version"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        first_line = out.stdout.split(b"\n", 1)[0]
        if out.returncode == 0 and first_line.startswith(b"Version: ImageMagick"):
            return [exe, *argv[1:]]
    return None


def im_version(im: list[str]) -> str:
    out = subprocess.run([*im, "-version"], capture_output=True, check=True).stdout
    return out.decode().splitlines()[0].split("Version: ")[-1].split(" https")[0]


def raw_timings(data: bytes, repeats: int) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Median and min ms of each in-process way to make a 256 px WebP from `data`; each
    result is decoded and its size checked."""
    from PIL import Image  # tests-only dependency of the main venv; the bench may use it

    problems: list[str] = []
    src = pyvips.Image.new_from_buffer(data, "")
    want = fit(src.width, src.height, THUMB)

    def vips_thumbnail() -> bytes:
        return pyvips.Image.thumbnail_buffer(data, THUMB).webpsave_buffer()

    def vips_shrink() -> bytes:
        img = pyvips.Image.new_from_buffer(data, "", shrink=8)
        return img.resize(THUMB / max(img.width, img.height)).webpsave_buffer()

    def pillow_draft() -> bytes:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (THUMB, THUMB))  # DCT-domain downscale while decoding
            im.thumbnail((THUMB, THUMB))
            out = io.BytesIO()
            im.save(out, "WEBP")
            return out.getvalue()

    # (name, libvips threads or None, function); libvips' default is one thread per core.
    default_threads = pyvips.concurrency_get()
    ways: list[tuple[str, int | None, Callable[[], bytes]]] = []
    for threads in sorted({1, default_threads}):
        ways.append((f"pyvips thumbnail_buffer, {threads} thread(s)", threads, vips_thumbnail))
        ways.append((f"pyvips shrink=8 + resize, {threads} thread(s)", threads, vips_shrink))
    ways.append(("Pillow draft + thumbnail", None, pillow_draft))
    im = find_imagemagick()
    if im is not None:
        argv = [*im, "JPEG:-", "-sample", f"{THUMB}x{THUMB}>", "WEBP:-"]
        ways.append(
            (
                f"ImageMagick {' '.join(argv[len(im) :])}",
                None,
                lambda: subprocess.run(argv, input=data, capture_output=True, check=True).stdout,
            )
        )
    else:
        log("no real ImageMagick found (run with --setup); skipping its timing")

    results: dict[str, dict[str, float]] = {}
    try:
        for name, threads, fn in ways:
            pyvips.concurrency_set(threads or default_threads)
            pyvips.cache_set_max(0)  # every call decodes again
            out = fn()  # warm-up, and the output check
            got = pyvips.Image.new_from_buffer(out, "")
            if (got.width, got.height) != want or got.get("vips-loader") != "webpload_buffer":
                problems.append(f"raw {name}: {got.get('vips-loader')} {got.width}x{got.height}")
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            results[name] = {
                "median_ms": round(statistics.median(times) * 1000, 1),
                "min_ms": round(min(times) * 1000, 1),
                "n": repeats,
            }
            log(f"raw {name}: median {results[name]['median_ms']} ms")
    finally:
        pyvips.concurrency_set(default_threads)
    return results, problems


# --- process-tree memory -------------------------------------------------------------------------


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants, from the kernel's per-thread children lists."""
    pids, todo = [], [root]
    while todo and len(pids) < 1000:
        pid = todo.pop()
        pids.append(pid)
        try:
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task.name}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue  # exited meanwhile
    return pids


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def process_role(pid: int) -> str:
    """A short name for a process of the server's tree: its command line, trimmed."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv if a]
    if "-m" in words:  # python -m module: the module says what it is
        return words[words.index("-m") + 1].rsplit(".", 1)[-1]
    return next((w for w in words if not w.startswith(("python", "perl", "-"))), "?")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # without guest time (counted)


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process tree, including children it has already reaped."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


class TreeSampler:
    """Samples the summed RSS (and PSS, which splits shared pages fairly) of a process tree
    every `interval` seconds in a thread, keeping the peaks. Summed RSS counts libraries shared
    between the server and its workers once per process, so it is the pessimistic number."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = self.peak_root_rss = 0
        self.peak_procs = self.samples = 0
        self.phase = "start"  # set by the bench; peaks are also kept per phase
        self.phase_peaks: dict[str, int] = {}
        self.phase_main_peaks: dict[str, int] = {}  # the root process alone
        self.peak_parts: list[tuple[str, int]] = []  # (process, RSS) at the overall peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree_pids(self.root)
            parts = [(process_role(p), rss_bytes(p)) for p in pids]
            rss = sum(r for _, r in parts)
            pss = sum(pss_bytes(p) for p in pids)
            if rss > self.peak_rss:
                self.peak_parts = parts
            phase = self.phase
            self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), rss)
            main = parts[0][1] if parts else 0
            self.phase_main_peaks[phase] = max(self.phase_main_peaks.get(phase, 0), main)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_root_rss = max(self.peak_root_rss, rss_bytes(self.root))
            self.peak_procs = max(self.peak_procs, len(pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, float | int]:
        return {
            "peak_tree_rss_mb": round(self.peak_rss / 2**20, 1),
            "peak_tree_pss_mb": round(self.peak_pss / 2**20, 1),
            "peak_main_rss_mb": round(self.peak_root_rss / 2**20, 1),
            "peak_processes": self.peak_procs,
            "samples": self.samples,
            "peak_by_process_mb": [[n, round(r / 2**20, 1)] for n, r in self.peak_parts],
            "peak_by_phase_mb": {k: round(v / 2**20, 1) for k, v in self.phase_peaks.items()},
            "main_peak_by_phase_mb": {
                k: round(v / 2**20, 1) for k, v in self.phase_main_peaks.items()
            },
        }


# --- HTTP load -----------------------------------------------------------------------------------


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bytes: int = 0
    wall: float = 0.0
    server_cpu: float = 0.0  # CPU seconds the server's process tree used meanwhile
    client_cpu: float = 0.0  # CPU seconds of this process (the load generator) meanwhile
    machine_cpu: float = 0.0  # CPU seconds the whole machine was busy meanwhile
    bodies: dict[str, bytes] = field(default_factory=dict)  # first body per URL, when kept

    @property
    def foreign_cpu(self) -> float:
        return max(0.0, self.machine_cpu - self.server_cpu - self.client_cpu)

    def summary(self) -> dict[str, float | int]:
        lat = self.latencies or [float("nan")]
        n = max(1, len(self.latencies))
        return {
            "server_cpu_ms_per_req": round(self.server_cpu / n * 1000, 2),
            "client_cpu_ms_per_req": round(self.client_cpu / n * 1000, 2),
            # Cores busy with anything but the server and this client: other people's work on
            # a shared machine. Above about 0.2 the numbers of that row are disturbed.
            "foreign_cores": round(self.foreign_cpu / self.wall, 2) if self.wall else 0.0,
            "req_per_s": round(len(self.latencies) / self.wall, 1) if self.wall else 0.0,
            "p50_ms": round(pct(lat, 50) * 1000, 1),
            "p95_ms": round(pct(lat, 95) * 1000, 1),
            "p99_ms": round(pct(lat, 99) * 1000, 1),
            "mb_per_s": round(self.bytes / self.wall / 1e6, 1) if self.wall else 0.0,
            "n": len(self.latencies),
            "errors": len(self.errors),
        }


def merge(runs: list[Run]) -> Run:
    """Requests of several rounds as one sample (throughput over the summed wall time)."""
    out = Run()
    for r in runs:
        out.latencies += r.latencies
        out.errors += r.errors
        out.bytes += r.bytes
        out.wall += r.wall
        out.server_cpu += r.server_cpu
        out.client_cpu += r.client_cpu
        out.machine_cpu += r.machine_cpu
        for k, v in r.bodies.items():
            out.bodies.setdefault(k, v)
    return out


async def load(
    client: httpx.AsyncClient,
    urls: Iterable[str],
    concurrency: int,
    *,
    seconds: float | None = None,
    cap: int = 200_000,
    keep_bodies: bool = False,
    pid: int | None = None,
) -> Run:
    """GET every URL once (or cycle through them for `seconds`), `concurrency` at a time.
    The number of requests is bounded by `cap` either way. With `pid`, the CPU time of that
    process tree is measured too (what the server spent, whatever the client could do)."""
    run = Run()
    url_list = list(urls)
    source: Iterator[str] = iter(url_list)
    if seconds is not None:

        def cycle() -> Iterator[str]:
            for n in range(cap):
                yield url_list[n % len(url_list)]

        source = cycle()
    deadline = time.perf_counter() + (seconds if seconds is not None else 1e9)

    async def worker() -> None:
        # Workers share one iterator; trio switches tasks only at awaits, so next() is safe.
        for url in source:
            if time.perf_counter() >= deadline:
                return
            started = time.perf_counter()
            try:
                resp = await client.get(url)
            except httpx.HTTPError as exc:
                run.errors.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            if resp.status_code != 200:
                run.errors.append(f"{url}: {resp.status_code} {resp.text[:200]}")
                continue
            run.latencies.append(elapsed)
            run.bytes += len(resp.content)
            if keep_bodies and url not in run.bodies:
                run.bodies[url] = resp.content

    cpu0, mine0 = tree_cpu_seconds(pid) if pid else 0.0, time.process_time()
    busy0 = machine_busy_seconds()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    run.wall = time.perf_counter() - started
    run.client_cpu = time.process_time() - mine0
    run.server_cpu = tree_cpu_seconds(pid) - cpu0 if pid else 0.0
    run.machine_cpu = machine_busy_seconds() - busy0
    return run


class LeanConnection:
    """A minimal HTTP/1.1 keep-alive GET client on one trio socket. httpx spends about 1 ms of
    CPU per request here, so at a few hundred requests/s it, not the server, is the limit; this
    spends a tenth of that, which lets the cached and original measurements reach the servers'
    own limits on two cores. It understands only what these two servers send: a status line,
    headers, then a Content-Length or chunked body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.buf = bytearray()

    async def _fill(self) -> None:
        assert self.stream is not None
        chunk = await self.stream.receive_some(1 << 18)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    async def _line_block(self, end: bytes) -> bytes:
        while (i := self.buf.find(end)) < 0:
            await self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(end)]
        return out

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)  # TCP_NODELAY on
            self.buf.clear()
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n"
        await self.stream.send_all(request.encode())
        head = (await self._line_block(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        if "content-length" in headers:
            body = await self._exactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await self._line_block(b"\r\n")).split(b";")[0], 16):
                parts.append(await self._exactly(size))
                await self._exactly(2)
            while await self._line_block(b"\r\n"):  # trailers, up to the empty line
                pass
            body = b"".join(parts)
        else:
            raise ConnectionError(f"no body framing in {head[0]!r}")
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        return status, body

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


async def lean_load(
    base_url: str,
    urls: list[str],
    concurrency: int,
    *,
    seconds: float,
    pid: int,
    cap: int = 500_000,
) -> Run:
    """Like load(…, seconds=…) but with LeanConnection, one per concurrent worker."""
    parsed = httpx.URL(base_url)
    host, port = str(parsed.host), int(parsed.port or 80)
    run = Run()
    source = (urls[n % len(urls)] for n in range(cap))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        conn = LeanConnection(host, port)
        try:
            for url in source:
                if time.perf_counter() >= deadline:
                    return
                started = time.perf_counter()
                try:
                    status, body = await conn.get(url)
                except (OSError, ConnectionError, ValueError, trio.BrokenResourceError) as exc:
                    run.errors.append(f"{url}: {type(exc).__name__}: {exc}")
                    await conn.aclose()
                    continue
                if status != 200:
                    run.errors.append(f"{url}: {status}")
                    continue
                run.latencies.append(time.perf_counter() - started)
                run.bytes += len(body)
        finally:
            await conn.aclose()

    cpu0, mine0, busy0 = tree_cpu_seconds(pid), time.process_time(), machine_busy_seconds()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    run.wall = time.perf_counter() - started
    run.client_cpu = time.process_time() - mine0
    run.server_cpu = tree_cpu_seconds(pid) - cpu0
    run.machine_cpu = machine_busy_seconds() - busy0
    return run


def check_thumbs(
    label: str, bodies: dict[str, bytes], want: dict[str, tuple[int, int, int]]
) -> list[str]:
    """Every kept body is a WebP of the expected width, height (+-1 for sizes whose scaled
    side is not a whole number) and page count."""
    problems = []
    for url, body in bodies.items():
        w, h, pages = want[url]
        try:
            img = pyvips.Image.new_from_buffer(body, "")
            if img.get("vips-loader") == "webpload_buffer":  # all frames, to count them
                img = pyvips.Image.new_from_buffer(body, "", n=-1)
        except pyvips.Error as exc:
            problems.append(f"{label} {url}: does not decode: {str(exc)[:120]}")
            continue
        got_h = img.get("page-height") if img.get_typeof("page-height") else img.height
        got_pages = img.get("n-pages") if img.get_typeof("n-pages") else 1
        loader = img.get("vips-loader")
        exact = THUMB in (w, h)
        ok_size = (
            (img.width, got_h) == (w, h)
            if exact
            else abs(img.width - w) <= 1 and abs(got_h - h) <= 1
        )
        if loader != "webpload_buffer" or not ok_size or got_pages != pages:
            problems.append(
                f"{label} {url}: got {loader} {img.width}x{got_h} x{got_pages} pages, "
                f"want {w}x{h} x{pages}"
            )
    return problems


# --- thumbor -------------------------------------------------------------------------------------


class Thumbor:
    """thumbor from bench/out/thumbor-venv on a free loopback port, serving `root` with the file
    loader; with `result_storage` it keeps generated images on disk and serves repeats from
    there (unsafe URLs included)."""

    def __init__(self, root: Path, workdir: Path, *, result_storage: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.result_dir = workdir / "result-storage"
        self.conf = workdir / "thumbor.conf"
        self.log_path = workdir / "thumbor.log"
        lines = [
            "LOADER = 'thumbor.loaders.file_loader'",
            f"FILE_LOADER_ROOT_PATH = {str(root)!r}",
            "STORAGE = 'thumbor.storages.no_storage'",  # no cache of source images either
            "ALLOW_UNSAFE_URL = True",
            "ENGINE = 'thumbor.engines.pil'",
            "ENGINE_THREADPOOL_SIZE = 2",
            "RESULT_STORAGE_STORES_UNSAFE = True",
            f"RESULT_STORAGE_FILE_STORAGE_ROOT_PATH = {str(self.result_dir)!r}",
            "RESULT_STORAGE = "
            + ("'thumbor.result_storages.file_storage'" if result_storage else "None"),
        ]
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @staticmethod
    def binary() -> Path:
        return THUMBOR_VENV / "bin" / "thumbor"

    def start(self) -> None:
        with self.log_path.open("wb") as fh:
            self.proc = subprocess.Popen(
                [
                    str(self.binary()),
                    "-i",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-c",
                    str(self.conf),
                    "-l",
                    "error",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )

    async def wait_healthy(self) -> None:
        assert self.proc is not None
        with trio.move_on_after(STARTUP_S):
            async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
                while True:
                    if self.proc.poll() is not None:
                        raise SystemExit(f"thumbor exited: {self.log_path.read_text()[-2000:]}")
                    try:
                        if (await client.get("/healthcheck")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
        raise SystemExit("thumbor not healthy in time")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stored_results(self) -> int:
        return sum(1 for p in self.result_dir.rglob("*") if p.is_file())


def thumbor_url(name: str, size: int) -> str:
    return f"/unsafe/fit-in/{size}x{size}/filters:format(webp)/{name}"


def setup() -> int:
    """Install what the comparison sides need: Debian's imagemagick (only if no real convert
    is found) and thumbor into its own venv."""
    if find_imagemagick() is None:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "imagemagick"],
            check=True,
            env=env,
        )
    im = find_imagemagick()
    log(f"ImageMagick: {im_version(im) if im else 'MISSING'}")
    if not Thumbor.binary().exists():
        subprocess.run(["python3", "-m", "venv", str(THUMBOR_VENV)], check=True)
        subprocess.run(
            [str(THUMBOR_VENV / "bin" / "pip"), "install", "-q", f"thumbor=={THUMBOR_VERSION}"],
            check=True,
        )
    version = subprocess.run([str(Thumbor.binary()), "--version"], capture_output=True, text=True)
    log(f"thumbor: {version.stdout.strip() or version.stderr.strip()}")
    return 0


@contextlib.asynccontextmanager
async def running_thumbor(
    root: Path, workdir: Path, *, result_storage: bool
) -> AsyncIterator[tuple[Thumbor, TreeSampler] | None]:
    """A healthy thumbor with its memory sampled, stopped by PID on exit; None without venv."""
    if not Thumbor.binary().exists():
        yield None
        return
    thumbor = Thumbor(root, workdir, result_storage=result_storage)
    thumbor.start()
    assert thumbor.proc is not None
    try:
        with TreeSampler(thumbor.proc.pid) as sampler:
            await thumbor.wait_healthy()
            storage = "file result storage" if result_storage else "no result storage"
            log(f"thumbor ({storage}) pid {thumbor.proc.pid} on {thumbor.url}")
            yield thumbor, sampler
    finally:
        thumbor.stop()


# --- the measurements ----------------------------------------------------------------------------


async def upload(client: httpx.AsyncClient, path: Path, ctype: str) -> str:
    data = await trio.Path(path).read_bytes()
    resp = await client.post("/image", files=[("images[]", (path.name, data, ctype))])
    if resp.status_code != 201:
        raise SystemExit(f"upload of {path.name} failed: {resp.status_code} {resp.text[:300]}")
    return str(resp.json()["files"][0]["file"])


def unique_pairs(files: int) -> Iterator[tuple[int, int]]:
    """(file index, size) pairs, never the same twice: every file at 256, then 255, ..."""
    for size in range(THUMB, 16, -1):
        for i in range(files):
            yield i, size


def take(it: Iterator[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    return [next(it) for _ in range(n)]


@dataclass
class Session:
    """What the phases share: the uploaded corpus, expected thumbnail sizes per URL, results."""

    sz: Sizes
    ours: httpx.AsyncClient
    jpegs: list[Path]
    jpeg_dims: list[tuple[int, int]]
    jpeg_alias: list[str]
    png_alias: list[str]
    gif_alias: list[str]
    process_ok: bool
    ours_pid: int
    want: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    rows: dict[str, dict[str, float | int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    sampler: TreeSampler | None = None

    def phase(self, name: str) -> None:
        """Label what runs next, so memory peaks can be told apart per phase."""
        if self.sampler is not None:
            self.sampler.phase = name

    def ours_url(self, alias: str, size: int, dims: tuple[int, int], pages: int = 1) -> str:
        url = f"/image/process.webp?src={alias}&thumbnail={size}"
        self.want[url] = (*fit(*dims, size), pages)
        return url

    def their_url(self, i: int, size: int) -> str:
        url = thumbor_url(self.jpegs[i].name, size)
        self.want[url] = (*fit(*self.jpeg_dims[i], size), 1)
        return url

    def record(self, name: str, runs: list[Run], *, check: bool = False) -> None:
        run = merge(runs)
        self.rows[name] = run.summary()
        self.problems += [f"{name}: {e}" for e in run.errors[:3]]
        if check:
            self.problems += check_thumbs(name, run.bodies, self.want)


def row_order(name: str) -> tuple[bool, bool, bool, int, str]:
    """pictrs-trio before thumbor, JPEG before PNG before GIF, then by concurrency."""
    c = next(int(w[1:]) for w in name.split() if w[:1] == "c" and w[1:].isdigit())
    return name.startswith("thumbor"), "PNG" in name or "GIF" in name, "GIF" in name, c, name


async def first_time(s: Session, jpeg_dir: Path, workdir: Path) -> None:
    """New variants only: each request is a (file, size) pair that side has not seen."""
    sz, runs = s.sz, dict[str, list[Run]]()
    ours_pairs, their_pairs = unique_pairs(len(s.jpegs)), unique_pairs(len(s.jpegs))
    async with running_thumbor(jpeg_dir, workdir / "thumbor-first", result_storage=False) as th:
        theirs = httpx.AsyncClient(
            base_url=th[0].url if th else "http://unused", timeout=REQUEST_TIMEOUT_S, limits=LIMITS
        )
        async with theirs:
            steps = [("ours", 1), ("thumbor", 1), ("ours", 8), ("thumbor", 8)]
            for r in range(sz.rounds):  # the two servers alternate order between rounds
                for side, c in steps if r % 2 == 0 else steps[::-1]:
                    n = sz.first_c1 if c == 1 else sz.first_c8
                    s.phase(f"first-time c{c}")
                    if side == "ours" and s.process_ok:
                        urls = [
                            s.ours_url(s.jpeg_alias[i], size, s.jpeg_dims[i])
                            for i, size in take(ours_pairs, n)
                        ]
                        run = await load(s.ours, urls, c, keep_bodies=True, pid=s.ours_pid)
                        runs.setdefault(f"pictrs-trio first-time c{c}", []).append(run)
                    elif side == "thumbor" and th:
                        urls = [s.their_url(i, size) for i, size in take(their_pairs, n)]
                        run = await load(theirs, urls, c, keep_bodies=True, pid=th[0].pid)
                        runs.setdefault(f"thumbor first-time c{c}", []).append(run)
                log(f"first-time round {r + 1}/{sz.rounds} done")
        if th:
            s.memory["thumbor_first_time"] = th[1].summary()
    if s.process_ok:
        s.phase("first-time c32")
        urls = [
            s.ours_url(s.jpeg_alias[i], size, s.jpeg_dims[i])
            for i, size in take(ours_pairs, sz.first_c32)
        ]
        runs["pictrs-trio first-time c32"] = [
            await load(s.ours, urls, 32, keep_bodies=True, pid=s.ours_pid)
        ]
        s.phase("first-time PNG, GIF")
        sizes = range(THUMB, THUMB - sz.other_first, -1)
        urls = [s.ours_url(a, size, PNG_SIZE) for a in s.png_alias for size in sizes]
        runs[f"pictrs-trio first-time PNG {PNG_SIZE[0]}x{PNG_SIZE[1]} c1"] = [
            await load(s.ours, urls, 1, keep_bodies=True, pid=s.ours_pid)
        ]
        urls = [s.ours_url(a, size, GIF_SIZE, GIF_FRAMES) for a in s.gif_alias for size in sizes]
        runs[f"pictrs-trio first-time GIF {GIF_FRAMES} frames c1"] = [
            await load(s.ours, urls, 1, keep_bodies=True, pid=s.ours_pid)
        ]
    for name in sorted(runs, key=row_order):
        s.record(name, runs[name], check=True)


async def cached(s: Session, jpeg_dir: Path, workdir: Path) -> None:
    """The 256 px variants of every JPEG, requested again and again for a fixed time."""
    sz, runs = s.sz, dict[str, list[Run]]()
    s.phase("cached")
    ours_urls = [s.ours_url(a, THUMB, s.jpeg_dims[i]) for i, a in enumerate(s.jpeg_alias)]
    their_urls = [s.their_url(i, THUMB) for i in range(len(s.jpegs))]
    async with running_thumbor(jpeg_dir, workdir / "thumbor-cached", result_storage=True) as th:
        theirs = httpx.AsyncClient(
            base_url=th[0].url if th else "http://unused", timeout=REQUEST_TIMEOUT_S, limits=LIMITS
        )
        async with theirs:
            ours_warm = Run()
            if s.process_ok:  # most exist already; this makes sure all do
                ours_warm = await load(s.ours, ours_urls, 4, keep_bodies=True, pid=s.ours_pid)
                s.record("pictrs-trio cached warm-up", [ours_warm], check=True)
                del s.rows["pictrs-trio cached warm-up"]
            if th:
                s.record(
                    "thumbor cached warm-up", [await load(theirs, their_urls, 4, pid=th[0].pid)]
                )
                del s.rows["thumbor cached warm-up"]
                # thumbor writes its result storage after answering: wait for it (bounded).
                for _ in range(100):
                    if th[0].stored_results() >= len(their_urls):
                        break
                    await trio.sleep(0.05)
                if (stored := th[0].stored_results()) < len(their_urls):
                    s.problems.append(f"thumbor result storage holds {stored} files after warm-up")
            # c=32 head to head, alternating, first with httpx, then with the lean client.
            half, ours_base = sz.cached_s / 2, str(s.ours.base_url)
            for side in ("ours", "thumbor", "thumbor", "ours"):
                if side == "ours" and s.process_ok:
                    run = await load(s.ours, ours_urls, 32, seconds=half, pid=s.ours_pid)
                    runs.setdefault("pictrs-trio cached c32", []).append(run)
                elif side == "thumbor" and th:
                    run = await load(theirs, their_urls, 32, seconds=half, pid=th[0].pid)
                    runs.setdefault("thumbor cached c32", []).append(run)
            for side in ("thumbor", "ours", "ours", "thumbor"):
                if side == "ours" and s.process_ok:
                    run = await lean_load(ours_base, ours_urls, 32, seconds=half, pid=s.ours_pid)
                    runs.setdefault("pictrs-trio cached c32 lean", []).append(run)
                elif side == "thumbor" and th:
                    run = await lean_load(th[0].url, their_urls, 32, seconds=half, pid=th[0].pid)
                    runs.setdefault("thumbor cached c32 lean", []).append(run)
        if th:
            s.memory["thumbor_cached"] = th[1].summary()
    if s.process_ok:
        for c in (1, 8):
            runs[f"pictrs-trio cached c{c}"] = [
                await load(s.ours, ours_urls, c, seconds=sz.cached_s, pid=s.ours_pid)
            ]
        # A cached variant is served byte for byte as first stored.
        again = await load(s.ours, ours_urls[:3], 1, keep_bodies=True, pid=s.ours_pid)
        for url, body in again.bodies.items():
            if body != ours_warm.bodies.get(url):
                s.problems.append(f"cached {url}: bytes differ between requests")
    for name in sorted(runs, key=row_order):
        s.record(name, runs[name])


async def originals(s: Session) -> None:
    """`GET /image/original/{alias}` of the stored JPEGs (about 2.3 MB each)."""
    urls = [f"/image/original/{a}" for a in s.jpeg_alias]
    s.phase("originals")
    for c in (1, 8, 32):
        s.record(
            f"pictrs-trio original c{c}",
            [await load(s.ours, urls, c, seconds=s.sz.original_s, pid=s.ours_pid)],
        )
    run = await lean_load(str(s.ours.base_url), urls, 32, seconds=s.sz.original_s, pid=s.ours_pid)
    s.record("pictrs-trio original c32 lean", [run])


# --- reporting -----------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def verdict(value: float | None, goal: float, *, at_most: bool) -> bool | None:
    if value is None:
        return None
    return value <= goal if at_most else value >= goal


def print_report(result: dict[str, Any], s: Session, raw: dict[str, dict[str, float]]) -> None:
    head = (
        f"{'side (256 px WebP unless noted)':<42}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'p99 ms':>8}{'MB/s':>8}{'srv CPU ms/req':>15}{'other cores':>12}{'n':>7}{'err':>5}"
    )
    print(head)
    print("-" * len(head))
    for name, r in s.rows.items():
        print(
            f"{name:<42}{r['req_per_s']:>8}{r['p50_ms']:>8}{r['p95_ms']:>8}{r['p99_ms']:>8}"
            f"{r['mb_per_s']:>8}{r['server_cpu_ms_per_req']:>15}{r['foreign_cores']:>12}"
            f"{r['n']:>7}{r['errors']:>5}"
        )
    print()
    print(f"{'raw, in this process: 4000x3000 JPEG -> 256 px WebP':<58}{'median ms':>10}{'min':>8}")
    for name, r in raw.items():
        print(f"{name:<58}{r['median_ms']:>10}{r['min_ms']:>8}")
    print()
    mem = s.memory.get("pictrs", {})
    for name, m in s.memory.items():
        print(
            f"peak memory {name:<18} {m['peak_tree_rss_mb']:>7} MB RSS summed over "
            f"{m['peak_processes']} process(es), {m['peak_tree_pss_mb']} MB PSS, "
            f"main process {m['peak_main_rss_mb']} MB ({m['samples']} samples)"
        )
    if mem:
        parts = ", ".join(f"{n} {mb}" for n, mb in mem["peak_by_process_mb"])
        print(f"  at the peak (MB RSS): {parts}")
        phases = ", ".join(f"{k} {v}" for k, v in mem["peak_by_phase_mb"].items())
        print(f"  peak per phase (MB RSS summed): {phases}")
        phases = ", ".join(f"{k} {v}" for k, v in mem["main_peak_by_phase_mb"].items())
        print(f"  main process peak per phase (MB RSS): {phases}")
    ratios, goals = result["ratios"], result["goals"]
    word = {True: "met", False: "MISSED", None: "n/a"}
    lines = [
        (
            f"first-time p50 c1 / fastest raw path ({result['fastest_raw_ms']} ms)",
            ratios["first_p50_c1_over_fastest_raw"],
            f"<= {GOAL_LATENCY_RATIO}",
            goals["first_p50_c1_over_fastest_raw_le_1.3"],
        ),
        (
            "first-time req/s c8 / thumbor first-time c8",
            ratios["first_c8_over_thumbor_first_c8"],
            f">= {GOAL_FIRST_VS_THUMBOR}",
            goals["first_c8_over_thumbor_ge_1"],
        ),
        (
            "cached req/s c32 / thumbor cached c32 (httpx client)",
            ratios["cached_c32_over_thumbor_cached_c32"],
            f">= {GOAL_CACHED_VS_THUMBOR}",
            goals["cached_c32_over_thumbor_ge_1.5"],
        ),
        (
            "cached req/s c32 / thumbor cached c32 (lean client)",
            ratios["cached_c32_lean_over_thumbor_cached_c32_lean"],
            f">= {GOAL_CACHED_VS_THUMBOR}",
            goals["cached_c32_lean_over_thumbor_ge_1.5"],
        ),
        (
            "cached requests per server CPU-second / thumbor's (lean)",
            ratios["cached_c32_lean_cpu_efficiency_vs_thumbor"],
            "",
            None,
        ),
        (
            "peak RSS of the server's process tree, MB",
            mem.get("peak_tree_rss_mb"),
            f"<= {GOAL_RSS_MB:g}",
            goals["peak_tree_rss_le_150mb"],
        ),
    ]
    print()
    for label, value, goal, ok in lines:
        tail = f"   goal {goal:<7} {word[ok]}" if goal else ""
        print(f"{label:<58}{value!s:>8}{tail}")
    for p in s.problems:
        print(f"CHECK FAILED: {p}")


async def bench(args: argparse.Namespace) -> int:
    sz = QUICK if args.quick else FULL
    jpeg_dir = OUT / "corpus-v1"  # shared with bench/ingest.py
    jpegs = build_corpus(jpeg_dir, sz.jpegs, log)
    pngs, gifs = build_extra_corpus(sz.pngs, sz.gifs)
    jpeg_dims = []
    for p in jpegs:
        header = pyvips.Image.new_from_file(str(p))
        jpeg_dims.append((header.width, header.height))
    w0, h0 = jpeg_dims[0]
    log(f"corpus: {len(jpegs)} JPEGs {w0}x{h0}, {len(pngs)} PNGs, {len(gifs)} GIFs")

    raw, raw_problems = raw_timings(jpegs[0].read_bytes(), sz.raw_repeats)
    im = find_imagemagick()
    result: dict[str, Any] = {
        "bench": "process",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "cpus": os.cpu_count(),
        "libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
        "imagemagick": im_version(im) if im else None,
        "thumbor": THUMBOR_VERSION if Thumbor.binary().exists() else None,
        "corpus": {
            "jpeg": [len(jpegs), w0, h0],
            "png": [len(pngs), *PNG_SIZE],
            "gif": [len(gifs), *GIF_SIZE, GIF_FRAMES],
        },
        "raw": raw,
    }
    if not Thumbor.binary().exists():
        log("thumbor venv missing (run with --setup); skipping the thumbor side")

    workdir = Path(tempfile.mkdtemp(prefix="pictrs-bench-process-"))
    server = SpawnedServer(workdir / "pictrs")
    s: Session | None = None
    try:
        server.start()
        assert server.proc is not None
        log(f"spawned pictrs-trio pid {server.proc.pid} on {server.url}")
        with TreeSampler(server.proc.pid) as sampler:
            await server.wait_healthy()
            ours = httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S, limits=LIMITS)
            async with ours:
                sampler.phase = "upload"
                aliases = [
                    [await upload(ours, p, ctype) for p in paths]
                    for paths, ctype in (
                        (jpegs, "image/jpeg"),
                        (pngs, "image/png"),
                        (gifs, "image/gif"),
                    )
                ]
                log(f"uploaded {sum(map(len, aliases))} files")
                # The route may not exist on this branch yet: probe it once, with a size the
                # first-time rounds never ask for.
                probe = await ours.get(
                    f"/image/process.webp?src={aliases[0][-1]}&thumbnail={THUMB + 1}"
                )
                s = Session(
                    sz=sz,
                    ours=ours,
                    jpegs=jpegs,
                    jpeg_dims=jpeg_dims,
                    jpeg_alias=aliases[0],
                    png_alias=aliases[1],
                    gif_alias=aliases[2],
                    process_ok=probe.status_code == 200,
                    ours_pid=server.proc.pid,
                )
                s.problems += raw_problems
                if not s.process_ok:
                    s.problems.append(f"process route: {probe.status_code} {probe.text[:200]}")
                    log(f"process route not working: {probe.status_code} {probe.text[:200]}")
                s.sampler = sampler
                await first_time(s, jpeg_dir, workdir)
                await cached(s, jpeg_dir, workdir)
                await originals(s)
        s.memory = {"pictrs": sampler.summary(), **s.memory}
    finally:
        code = server.stop()
        log(f"server stopped (exit {code})")
        if code not in (0, None, -signal.SIGTERM):
            log(server.log_tail())
        if args.keep:
            log(f"kept server/thumbor data and logs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = s.rows
    fastest_raw = min((r["median_ms"] for r in raw.values()), default=None)

    def rate(name: str) -> float | None:
        return rows[name]["req_per_s"] if name in rows else None

    p50 = (
        rows["pictrs-trio first-time c1"]["p50_ms"] if "pictrs-trio first-time c1" in rows else None
    )

    def cpu(name: str) -> float | None:
        return rows[name]["server_cpu_ms_per_req"] if name in rows else None

    ratios = {
        "first_p50_c1_over_fastest_raw": ratio(p50, fastest_raw),
        "first_c8_over_thumbor_first_c8": ratio(
            rate("pictrs-trio first-time c8"), rate("thumbor first-time c8")
        ),
        "cached_c32_over_thumbor_cached_c32": ratio(
            rate("pictrs-trio cached c32"), rate("thumbor cached c32")
        ),
        "cached_c32_lean_over_thumbor_cached_c32_lean": ratio(
            rate("pictrs-trio cached c32 lean"), rate("thumbor cached c32 lean")
        ),
        # Requests per CPU-second, ours / thumbor's: the load generator cannot cap this one.
        "cached_c32_lean_cpu_efficiency_vs_thumbor": ratio(
            cpu("thumbor cached c32 lean"), cpu("pictrs-trio cached c32 lean")
        ),
        "first_c1_over_thumbor_first_c1": ratio(
            rate("pictrs-trio first-time c1"), rate("thumbor first-time c1")
        ),
    }
    peak = s.memory["pictrs"]["peak_tree_rss_mb"]
    result |= {
        "results": rows,
        "memory": s.memory,
        "fastest_raw_ms": fastest_raw,
        "ratios": ratios,
        "goals": {
            "first_p50_c1_over_fastest_raw_le_1.3": verdict(
                ratios["first_p50_c1_over_fastest_raw"], GOAL_LATENCY_RATIO, at_most=True
            ),
            "first_c8_over_thumbor_ge_1": verdict(
                ratios["first_c8_over_thumbor_first_c8"], GOAL_FIRST_VS_THUMBOR, at_most=False
            ),
            "cached_c32_over_thumbor_ge_1.5": verdict(
                ratios["cached_c32_over_thumbor_cached_c32"], GOAL_CACHED_VS_THUMBOR, at_most=False
            ),
            "cached_c32_lean_over_thumbor_ge_1.5": verdict(
                ratios["cached_c32_lean_over_thumbor_cached_c32_lean"],
                GOAL_CACHED_VS_THUMBOR,
                at_most=False,
            ),
            "peak_tree_rss_le_150mb": verdict(float(peak), GOAL_RSS_MB, at_most=True),
        },
        "checks": s.problems or "ok",
    }
    print_report(result, s, raw)
    print(json.dumps(result))
    return 1 if s.problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small corpus, short levels: a smoke test"
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help="install Debian's imagemagick (if no real convert) and thumbor (own venv), then exit",
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' data and logs")
    args = parser.parse_args()
    if args.setup:
        sys.exit(setup())
    sys.exit(trio.run(bench, args))


if __name__ == "__main__":
    main()
