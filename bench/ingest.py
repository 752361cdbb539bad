#!/usr/bin/env python3
"""Ingest benchmark: upload 12-megapixel JPEGs with EXIF + GPS to a real pictrs-trio server.

    .venv/bin/python bench/ingest.py                 # spawn a server on a free loopback port
    .venv/bin/python bench/ingest.py --url http://127.0.0.1:8080
    .venv/bin/python bench/ingest.py --baseline-only # corpus + pict-rs tool chain timing only

Per round it times, alternating the order between rounds because the machine is noisy:
  * ours at concurrency 1 and 4: `POST /image` (multipart field `images[]`), one file per request;
  * the baseline: the subprocess chain pict-rs runs per uploaded JPEG (ffprobe -count_frames,
    exiftool -Orientation, exiftool -all= stripping, sha256), over the same files.

Every upload has distinct pixels, so the server can never deduplicate one against another:
the corpus holds N generated photos, and upload u sends photo (u mod N) with one entry of one
JPEG quantisation table nudged by a step chosen from (u div N). That changes the decoded
pixels (and the bytes kept after metadata stripping) without a slow re-encode per upload.
With --spawn the stored files are counted at the end to prove it.

It then checks a sample: the stored original has no EXIF or GPS left, and the details say
4000x3000. It prints a table and one JSON line. Targets (concurrency 1): >= 25 uploads/s,
p50 <= 40 ms. Nothing here asserts timings; a failed correctness check exits 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyvips
import trio

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 4000, 3000
QUALITY = 90
CORPUS_VERSION = 1  # bump when the generator changes, so cached corpora are rebuilt
TARGET_RATE = 25.0
TARGET_P50_MS = 40.0
STARTUP_S = 60.0  # the server must answer /healthz within this

# One exiftool run per file adds these (EXIF IFD0, EXIF sub-IFD and GPS IFD).
EXIF_ARGS = [
    "-Make=BenchCam",
    "-Model=Ingest 4000",
    "-Software=pictrs-trio bench",
    "-Artist=Bench Photographer",
    "-Copyright=CC0",
    "-DateTimeOriginal=2024:06:25 15:34:41",
    "-ExposureTime=1/250",
    "-FNumber=5.6",
    "-ISO=200",
    "-FocalLength=35",
    "-GPSLatitude=52.516272",
    "-GPSLatitudeRef=N",
    "-GPSLongitude=13.377722",
    "-GPSLongitudeRef=E",
    "-GPSAltitude=34",
    "-GPSAltitudeRef=0",
]


# --- corpus --------------------------------------------------------------------------------


def photo(seed: int) -> pyvips.Image:
    """A photo-like 4000x3000 sRGB image: smooth luminance structure at three scales, softer
    colour fields, a light gradient and sensor-like grain (grain is what makes real photos
    large at Q90)."""
    s = seed * 16
    lum = (
        pyvips.Image.perlin(WIDTH, HEIGHT, cell_size=900, seed=s + 1) * 200
        + pyvips.Image.perlin(WIDTH, HEIGHT, cell_size=160, seed=s + 2) * 60
        + pyvips.Image.perlin(WIDTH, HEIGHT, cell_size=24, seed=s + 3) * 20
    )
    bands = [
        lum + pyvips.Image.perlin(WIDTH, HEIGHT, cell_size=700, seed=s + 4 + b) * 90 + 128
        for b in range(3)
    ]
    img = bands[0].bandjoin(bands[1:])
    img = img + (pyvips.Image.xyz(WIDTH, HEIGHT)[0] * (50.0 / WIDTH) - 25)
    img = img + pyvips.Image.gaussnoise(WIDTH, HEIGHT, sigma=3.5, mean=0, seed=s + 9)
    return img.cast("uchar").copy(interpretation="srgb")


def build_corpus(directory: Path, count: int, log: Callable[[str], None]) -> list[Path]:
    """Generate (or reuse) `count` JPEGs with EXIF + GPS under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"photo-{i:03d}.jpg" for i in range(count)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        log(f"generating {len(missing)} photo(s) of {WIDTH}x{HEIGHT} at Q{QUALITY} in {directory}")
        started = time.perf_counter()
        for i, path in missing:
            partial = path.with_suffix(".partial.jpg")
            photo(i).jpegsave(str(partial), Q=QUALITY, subsample_mode="on")
            subprocess.run(
                [
                    "exiftool",
                    "-q",
                    "-overwrite_original",
                    *EXIF_ARGS,
                    f"-ImageDescription=bench photo {i}",
                    str(partial),
                ],
                check=True,
            )
            partial.rename(path)  # only complete files count as cached
        log(f"generated in {time.perf_counter() - started:.1f} s")
    # One exiftool run over the whole corpus proves the metadata is really there.
    out = subprocess.run(
        ["exiftool", "-j", "-G", "-n", "-GPSLatitude", "-Make", "-ImageWidth", *map(str, paths)],
        check=True,
        capture_output=True,
    ).stdout
    for entry in json.loads(out):
        if "EXIF:GPSLatitude" not in entry or "EXIF:Make" not in entry:
            raise SystemExit(f"corpus file lacks EXIF/GPS: {entry.get('SourceFile')}")
    return paths


def dqt_entries(jpeg: bytes) -> list[int]:
    """Byte offsets of the AC entries (zig-zag order 1..63, low frequencies first) of the
    8-bit quantisation table 0 (luma). Grain makes every luma coefficient non-zero in some
    block, so nudging any of them changes pixels; chroma tables are avoided because their high
    frequencies are all zero in a 4:2:0 photo."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    offsets: list[int] = []
    pos = 2
    while pos + 4 <= len(jpeg):
        if jpeg[pos] != 0xFF:
            raise ValueError(f"bad marker at {pos}")
        marker = jpeg[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        if marker == 0xDB:
            p, end = pos + 4, pos + 2 + length
            while p < end:
                precision, table = jpeg[p] >> 4, jpeg[p] & 0x0F
                size = 128 if precision else 64
                if precision == 0 and table == 0:
                    offsets.extend(p + 1 + k for k in range(1, 64))
                p += 1 + size
        if marker == 0xDA:  # start of scan: no tables after this in a baseline JPEG
            break
        pos += 2 + length
    if not offsets:
        raise ValueError("no 8-bit luma quantisation table")
    return offsets


def unique_variant(jpeg: bytes, variant: int, offsets: list[int]) -> bytes:
    """Variant 0 is the file itself; variant v >= 1 nudges luma quantiser entry (v-1) mod 63
    by a step of 1 + (v-1) div 63, so every (photo, variant) pair decodes to different pixels
    (low frequencies come first: the first variants change 10-40 % of the pixels)."""
    if variant == 0:
        return jpeg
    slot, step = (variant - 1) % len(offsets), 1 + (variant - 1) // len(offsets)
    off = offsets[slot]
    value = jpeg[off]
    new = value + step if value + step <= 255 else value - step
    if not 1 <= new <= 255:
        raise ValueError("ran out of distinct variants; use a larger corpus")
    return jpeg[:off] + bytes([new]) + jpeg[off + 1 :]


@dataclass
class Corpus:
    paths: list[Path]
    data: list[bytes]
    offsets: list[list[int]]
    counter: int = 0

    def next_upload(self) -> tuple[str, bytes]:
        u = self.counter
        self.counter += 1
        i, v = u % len(self.data), u // len(self.data)
        return f"photo-{i:03d}-{v:03d}.jpg", unique_variant(self.data[i], v, self.offsets[i])


# --- baseline: what pict-rs runs per uploaded JPEG -----------------------------------------------


def baseline_chain(path: Path, data: bytes) -> float:
    """Seconds for pict-rs's per-upload tool chain on one JPEG."""
    started = time.perf_counter()
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "quiet",
            "-count_frames",
            "-show_entries",
            "stream=width,height,nb_read_frames,codec_name,pix_fmt:format=format_name",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["exiftool", "-n", "-Orientation", "-"], input=data, check=True, capture_output=True
    )
    stripped = subprocess.run(
        ["exiftool", "-all=", "-", "-out", "-"], input=data, check=True, capture_output=True
    ).stdout
    hashlib.sha256(stripped).digest()
    elapsed = time.perf_counter() - started
    stream = json.loads(probe.stdout)["streams"][0]
    if (stream["width"], stream["height"]) != (WIDTH, HEIGHT) or len(stripped) >= len(data):
        raise SystemExit(f"baseline chain gave unexpected output for {path}")
    return elapsed


# --- our server ----------------------------------------------------------------------------------


@dataclass
class UploadRun:
    latencies: list[float] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    details: list[dict[str, object]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0


async def upload_round(
    client: httpx.AsyncClient, corpus: Corpus, count: int, concurrency: int
) -> UploadRun:
    run = UploadRun()
    jobs: Iterator[tuple[str, bytes]] = iter([corpus.next_upload() for _ in range(count)])

    async def worker() -> None:
        # Workers share one iterator; trio switches tasks only at awaits, so next() is safe.
        for name, data in jobs:
            started = time.perf_counter()
            try:
                resp = await client.post("/image", files=[("images[]", (name, data, "image/jpeg"))])
            except httpx.HTTPError as exc:
                run.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            if resp.status_code != 201:
                run.errors.append(f"{resp.status_code} {resp.text[:200]}")
                continue
            entry = resp.json()["files"][0]
            run.latencies.append(elapsed)
            run.aliases.append(entry["file"])
            run.details.append(entry["details"])

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    run.wall = time.perf_counter() - started
    return run


async def verify_sample(client: httpx.AsyncClient, aliases: list[str]) -> list[str]:
    """Problems found on the sampled uploads; empty means all is well."""
    problems: list[str] = []
    for alias in aliases:
        original = await client.get(f"/image/original/{alias}")
        if original.status_code != 200:
            problems.append(f"{alias}: original {original.status_code}")
            continue
        found = await trio.run_process(
            ["exiftool", "-j", "-G", "-"], stdin=original.content, capture_stdout=True
        )
        tags = json.loads(found.stdout)[0]
        leaked = sorted(k for k in tags if k.startswith(("EXIF:", "GPS:", "Composite:GPS")))
        if leaked:
            problems.append(f"{alias}: metadata left in stored original: {leaked[:6]}")
        header = pyvips.Image.new_from_buffer(original.content, "")
        if (header.width, header.height) != (WIDTH, HEIGHT):
            problems.append(f"{alias}: stored original is {header.width}x{header.height}")
        details = await client.get(f"/image/details/original/{alias}")
        if details.status_code != 200:
            problems.append(f"{alias}: details {details.status_code}")
            continue
        d = details.json()
        if (d.get("width"), d.get("height")) != (WIDTH, HEIGHT):
            problems.append(f"{alias}: details say {d.get('width')}x{d.get('height')}")
    return problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_binary() -> str:
    beside = Path(sys.executable).parent / "pictrs-trio"
    if beside.exists():
        return str(beside)
    found = shutil.which("pictrs-trio") or str(ROOT / ".venv" / "bin" / "pictrs-trio")
    return found


class SpawnedServer:
    """`pictrs-trio run` on a free loopback port with a throwaway data directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.files = workdir / "files"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            server_binary(),
            "run",
            "-a",
            f"127.0.0.1:{self.port}",
            "filesystem",
            "-p",
            str(self.files),
            "sqlite",
            "-p",
            str(self.workdir / "sqlite"),
        ]
        # Like scripts/serve, create the data folders up front.
        self.files.mkdir(parents=True, exist_ok=True)
        (self.workdir / "sqlite").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PICTRS__SERVER__TEMPORARY_DIRECTORY": str(self.workdir / "tmp")}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_healthy(self) -> None:
        assert self.proc is not None
        with trio.move_on_after(STARTUP_S):
            async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
                while True:
                    if self.proc.poll() is not None:
                        raise SystemExit(
                            f"server exited with {self.proc.returncode}:\n{self.log_tail()}"
                        )
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
        raise SystemExit(f"server not healthy after {STARTUP_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM by PID, then SIGKILL if it does not finish its graceful shutdown."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stored_files(self) -> int:
        # Names starting with "." are the store's in-progress temp files and health probes.
        return sum(1 for p in self.files.rglob("*") if p.is_file() and not p.name.startswith("."))


# --- reporting -----------------------------------------------------------------------------------


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(latencies: list[float], rates: list[float], errors: int) -> dict[str, float | int]:
    return {
        "uploads_per_s": round(statistics.median(rates), 2),
        "p50_ms": round(pct(latencies, 50) * 1000, 1),
        "p95_ms": round(pct(latencies, 95) * 1000, 1),
        "p99_ms": round(pct(latencies, 99) * 1000, 1),
        "samples": len(latencies),
        "errors": errors,
    }


def print_table(rows: dict[str, dict[str, float | int]]) -> None:
    print(f"{'side':<22}{'uploads/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'n':>6}{'err':>5}")
    for name, r in rows.items():
        print(
            f"{name:<22}{r['uploads_per_s']:>10}{r['p50_ms']:>9}{r['p95_ms']:>9}"
            f"{r['p99_ms']:>9}{r['samples']:>6}{r['errors']:>5}"
        )


# --- main ----------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    corpus_dir = args.corpus_dir or ROOT / "bench" / "out" / f"corpus-v{CORPUS_VERSION}"
    paths = build_corpus(corpus_dir, args.files, log)
    data = [p.read_bytes() for p in paths]
    corpus = Corpus(paths, data, [dqt_entries(d) for d in data])
    mean_mb = statistics.mean(len(d) for d in data) / 1e6
    log(f"corpus: {len(paths)} JPEGs, mean {mean_mb:.2f} MB")

    base_times: list[float] = []
    base_rates: list[float] = []
    ours: dict[int, list[UploadRun]] = {1: [], 4: []}
    server: SpawnedServer | None = None
    workdir: Path | None = None
    problems: list[str] = []
    stored: int | None = None
    try:
        url = args.url
        if not args.baseline_only and url is None:
            workdir = Path(tempfile.mkdtemp(prefix="pictrs-bench-"))
            server = SpawnedServer(workdir)
            server.start()
            log(
                f"spawned {server_binary()} pid {server.proc.pid if server.proc else '?'} "
                f"on {server.url}"
            )
            await server.wait_healthy()
            url = server.url
        async with httpx.AsyncClient(base_url=url or "http://unused", timeout=120.0) as client:
            if url is not None:
                warm = await upload_round(client, corpus, 2, 1)  # engine start-up, caches
                if warm.errors:
                    raise SystemExit(f"warm-up upload failed: {warm.errors[0]}")
            for r in range(args.rounds):
                sides = ["baseline", 1, 4] if r % 2 == 0 else [4, 1, "baseline"]
                for side in sides:
                    if side == "baseline":
                        times = [baseline_chain(p, d) for p, d in zip(paths, data, strict=True)]
                        base_times += times
                        base_rates.append(len(times) / sum(times))
                    elif url is not None:
                        ours[int(side)].append(
                            await upload_round(client, corpus, args.files, int(side))
                        )
                log(f"round {r + 1}/{args.rounds} done")
            if url is not None:
                runs = ours[1] + ours[4]
                sample = [a for run in runs[:1] for a in run.aliases[:3]]
                sample += [a for run in runs[-1:] for a in run.aliases[-2:]]
                problems += await verify_sample(client, sample)
                for run in runs:
                    for d in run.details:
                        if (d.get("width"), d.get("height")) != (WIDTH, HEIGHT):
                            problems.append(f"upload response details {d}")
                            break
    finally:
        if server is not None:
            stored = server.stored_files()
            code = server.stop()
            log(f"server stopped (exit {code})")
            if code not in (0, None, -signal.SIGTERM):
                log(server.log_tail())
        if workdir is not None and args.keep:
            log(f"kept server data and log in {workdir}")
        elif workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    rows: dict[str, dict[str, float | int]] = {}
    result: dict[str, object] = {
        "bench": "ingest",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "image": f"{WIDTH}x{HEIGHT} JPEG Q{QUALITY} with EXIF+GPS",
        "files": len(paths),
        "mean_mb": round(mean_mb, 2),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
    }
    rows["pict-rs tool chain c1"] = summary(base_times, base_rates, 0)
    result["baseline_chain"] = rows["pict-rs tool chain c1"]
    for c, runs in ours.items():
        if not runs:
            continue
        lat = [x for run in runs for x in run.latencies]
        errs = sum(len(run.errors) for run in runs)
        if not lat:
            problems.append(f"concurrency {c}: every upload failed, e.g. {runs[0].errors[:1]}")
            continue
        rates = [len(run.latencies) / run.wall for run in runs]
        rows[f"pictrs-trio c{c}"] = summary(lat, rates, errs)
        result[f"c{c}"] = rows[f"pictrs-trio c{c}"]
        if errs:
            problems.append(f"concurrency {c}: {errs} failed uploads, e.g. {runs[0].errors[:1]}")
    if "c1" in result:
        per_round = [
            (len(o.latencies) / o.wall) / b for o, b in zip(ours[1], base_rates, strict=True)
        ]
        c1 = rows["pictrs-trio c1"]
        result["ratio_c1_vs_baseline"] = round(statistics.median(per_round), 2)
        result["targets"] = {
            "c1_uploads_per_s_ge_25": c1["uploads_per_s"] >= TARGET_RATE,
            "c1_p50_ms_le_40": c1["p50_ms"] <= TARGET_P50_MS,
        }
    if stored is not None:
        total = sum(len(run.latencies) for runs in ours.values() for run in runs) + 2
        result["stored_files"] = stored
        if stored != total:
            problems.append(f"{stored} stored files for {total} uploads: something deduplicated")
    result["checks"] = problems or "ok"

    print_table(rows)
    if "c1" in result:
        c1 = rows["pictrs-trio c1"]
        rate_ok, p50_ok = c1["uploads_per_s"] >= TARGET_RATE, c1["p50_ms"] <= TARGET_P50_MS
        print(
            "ratio (ours c1 uploads/s / pict-rs chain uploads/s, median of rounds): "
            f"{result['ratio_c1_vs_baseline']}x"
        )
        print(
            f"targets at c1: >= {TARGET_RATE:g} uploads/s {'met' if rate_ok else 'MISSED'}, "
            f"p50 <= {TARGET_P50_MS:g} ms {'met' if p50_ok else 'MISSED'}"
        )
    for p in problems:
        print(f"CHECK FAILED: {p}")
    print(json.dumps(result))
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="benchmark a running server instead of spawning one")
    where.add_argument(
        "--spawn",
        action="store_true",
        help="start `pictrs-trio run` on a free loopback port (the default)",
    )
    where.add_argument(
        "--baseline-only",
        action="store_true",
        help="only build the corpus and time pict-rs's tool chain",
    )
    parser.add_argument(
        "-n",
        "--files",
        type=int,
        default=20,
        help="photos in the corpus = uploads per round and side (default 20)",
    )
    parser.add_argument(
        "-r",
        "--rounds",
        type=int,
        default=3,
        help="rounds; sides alternate order between rounds (default 3)",
    )
    parser.add_argument(
        "--corpus-dir",
        type=Path,
        help="where generated photos are cached (default bench/out/corpus-v1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the spawned server's data dir")
    args = parser.parse_args()
    if args.files < 2 or args.rounds < 1:
        parser.error("need --files >= 2 and --rounds >= 1")
    sys.exit(trio.run(bench, args))


if __name__ == "__main__":
    main()
