"""What metrics cost: this tree with ``metrics.prometheus_address`` set against the same tree
without it, in one run, reported as ratios (on ÷ off).

    .venv/bin/python bench/metrics.py                 # 3 rounds
    .venv/bin/python bench/metrics.py --rounds 5 --seconds 8
    .venv/bin/python bench/metrics.py --both-off       # calibration: off against off

Both servers run at once on fresh data folders with the default configuration; the sides
alternate order every round (this machine is noisy). Per round and side:

    first-time c4   fresh thumbnails of small JPEGs (a new size each: a render each, so every
                    series of a render moves: request, generate, process, job-less)
    cached c32      GETs of rendered thumbnails, 32 in flight, with bench/process.py's lean
                    client: the path where per-request overhead shows most

While the "on" side is measured it is scraped every 15 s, Prometheus's default
(``--scrape-every``; 0: never), so the scrape's own cost is in its numbers. ``--both-off``
runs the same comparison with metrics off on both sides, to see this machine's noise between
the two servers. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pyvips
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import free_port  # noqa: E402
from bench.process import lean_load, load  # noqa: E402

PHOTOS = 8
CACHED_URLS = 32


def log(msg: str) -> None:
    print(f"[metrics] {msg}", file=sys.stderr, flush=True)


class Side:
    def __init__(self, name: str, workdir: Path, *, metrics: bool) -> None:
        self.name, self.workdir = name, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{free_port()}" if metrics else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.aliases: list[str] = []
        self.sizes = itertools.count(64)

    def start(self) -> None:
        self.workdir.mkdir(parents=True)
        env = {**os.environ, "PICTRS__SERVER__TEMPORARY_DIRECTORY": str(self.workdir / "tmp")}
        if self.metrics_url is not None:
            env["PICTRS__METRICS__PROMETHEUS_ADDRESS"] = self.metrics_url.removeprefix("http://")
        argv = [sys.executable, "-m", "pictrs_trio", "run", "-a", f"127.0.0.1:{self.port}",
                "filesystem", "-p", str(self.workdir / "files"),
                "sqlite", "-p", str(self.workdir / "sqlite")]  # fmt: skip
        log_file = (self.workdir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )

    async def wait_healthy(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            for _ in range(600):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
        raise SystemExit(f"{self.name} did not start; see {self.workdir / 'server.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def photos(folder: Path) -> list[bytes]:
    """Small photo-like JPEGs (noise over a gradient), 1600x1200."""
    out = []
    for i in range(PHOTOS):
        noise = pyvips.Image.perlin(1600, 1200, cell_size=64 + 16 * i, uchar=True)
        image = noise.bandjoin([noise.flip("horizontal"), noise.flip("vertical")])
        out.append(image.jpegsave_buffer(Q=85))
    return out


async def scraper(url: str, every: float) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            answer = await client.get(url + "/metrics")
            assert answer.status_code == 200
            await trio.sleep(every)


async def measure(
    side: Side, seconds: float, scrape_every: float, results: dict[str, list[dict[str, float]]]
) -> None:
    pid = side.pid
    async with trio.open_nursery() as nursery:
        if side.metrics_url is not None and scrape_every > 0:
            nursery.start_soon(scraper, side.metrics_url, scrape_every)
        async with httpx.AsyncClient(base_url=side.url, timeout=120) as client:
            count = 24
            urls = [
                f"/image/process.webp?src={side.aliases[i % PHOTOS]}&thumbnail={next(side.sizes)}"
                for i in range(count)
            ]
            run = await load(client, urls, 4, pid=pid)
            if run.errors:
                raise SystemExit(f"{side.name} render failed: {run.errors[:3]}")
            results["first-time c4"].append(
                {"rate": count / run.wall, "cpu_ms": run.server_cpu / count * 1e3}
            )
        cached = [
            f"/image/process.webp?src={side.aliases[i % PHOTOS]}&thumbnail={40 + i // PHOTOS}"
            for i in range(CACHED_URLS)
        ]
        run = await lean_load(side.url, cached, 32, seconds=seconds, pid=pid)
        if run.errors:
            raise SystemExit(f"{side.name} cached reads failed: {run.errors[:3]}")
        done = len(run.latencies)
        results["cached c32"].append(
            {"rate": done / run.wall, "cpu_ms": run.server_cpu / max(done, 1) * 1e3}
        )
        nursery.cancel_scope.cancel()


async def run(
    rounds: int, seconds: float, scrape_every: float, both_off: bool, workdir: Path
) -> dict[str, dict[str, list[dict[str, float]]]]:
    sides = [
        Side("on", workdir / "on", metrics=not both_off),
        Side("off", workdir / "off", metrics=False),
    ]
    results = {s.name: {"first-time c4": [], "cached c32": []} for s in sides}
    corpus = photos(workdir)
    try:
        for s in sides:
            s.start()
        for s in sides:
            await s.wait_healthy()
            async with httpx.AsyncClient(base_url=s.url, timeout=120) as client:
                for n, data in enumerate(corpus):
                    answer = await client.post("/image", files={"images[]": (f"{n}.jpg", data)})
                    answer.raise_for_status()
                    s.aliases.append(answer.json()["files"][0]["file"])
                cached = [
                    f"/image/process.webp?src={s.aliases[i % PHOTOS]}&thumbnail={40 + i // PHOTOS}"
                    for i in range(CACHED_URLS)
                ]
                await load(client, cached, 4, pid=s.pid)  # render them once
        for r in range(rounds):
            for s in sides if r % 2 == 0 else sides[::-1]:
                log(f"round {r + 1}/{rounds}: {s.name}")
                await measure(s, seconds, scrape_every, results[s.name])
    finally:
        for s in sides:
            s.stop()
    return results


def report(results: dict[str, dict[str, list[dict[str, float]]]], rounds: int) -> None:
    on, off = results["on"], results["off"]
    print(f"metrics on vs off, {rounds} rounds (median of per-round ratios)")
    print(f"{'side':<15} {'on /s':>9} {'off /s':>9} {'ratio':>7}  server CPU ms/request on (off)")
    for name in on:
        rate_on = statistics.median(r["rate"] for r in on[name])
        rate_off = statistics.median(r["rate"] for r in off[name])
        ratio = statistics.median(
            a["rate"] / b["rate"] for a, b in zip(on[name], off[name], strict=True)
        )
        cpu_on = statistics.median(r["cpu_ms"] for r in on[name])
        cpu_off = statistics.median(r["cpu_ms"] for r in off[name])
        rates = f"{rate_on:>9.1f} {rate_off:>9.1f} {ratio:>7.2f}"
        print(f"{name:<15} {rates}  {cpu_on:.2f} ({cpu_off:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="of cached GETs per round")
    parser.add_argument(
        "--scrape-every", type=float, default=15.0, help="seconds between scrapes (0: none)"
    )
    parser.add_argument(
        "--both-off", action="store_true", help="calibration: metrics off on both sides"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pictrs-metrics-bench-") as tmp:
        results = trio.run(
            run, args.rounds, args.seconds, args.scrape_every, args.both_off, Path(tmp)
        )
    report(results, args.rounds)


if __name__ == "__main__":
    main()
