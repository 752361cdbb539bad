"""This tree against an earlier commit, in one run: uploads, first-time thumbnails and cached
variants, each side measured alternately, reported as ratios (this ÷ that).

    .venv/bin/python bench/compare.py                  # against HEAD~1
    .venv/bin/python bench/compare.py --against 14923d0 --rounds 5

The earlier commit is checked out into a temporary git worktree (removed afterwards) and run
with this tree's virtualenv, so only the code differs. Both servers run at once with the
same default configuration on fresh data folders; the sides alternate order every round,
because this machine is noisy (25-35 % between identical runs). Timings are reported, never
asserted; the script exits 1 only when a request of either side fails.

Per round and side:

    upload c1       20 distinct 12 MP JPEGs, one POST /image at a time (bench/ingest.py's
                    corpus)
    first-time c1   fresh thumbnails (a new size each: a render each) of those photos, one
    first-time c8   at a time, and eight in flight
    cached c32      5 s of GETs of 40 rendered thumbnails, 32 in flight (bench/process.py's
                    lean client: httpx would be the bottleneck)

The ratio of a side is the median over rounds of (this rate ÷ earlier rate) in the same
round; server CPU per request is the server process tree's CPU time over the requests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    Corpus,
    build_corpus,
    dqt_entries,
    free_port,
    upload_round,
)
from bench.process import lean_load, load, tree_cpu_seconds  # noqa: E402

PHOTOS = 20
CACHED_URLS = 40


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


class Side:
    """One server, run from ``tree`` with this tree's Python."""

    def __init__(self, name: str, tree: Path, workdir: Path) -> None:
        self.name, self.tree, self.workdir = name, tree, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.aliases: list[str] = []
        self.sizes = itertools.count(64)

    def start(self) -> None:
        self.workdir.mkdir(parents=True)
        env = {
            **os.environ,
            "PYTHONPATH": str(self.tree),
            "PICTRS__SERVER__TEMPORARY_DIRECTORY": str(self.workdir / "tmp"),
        }
        argv = [sys.executable, "-m", "pictrs_trio", "run", "-a", f"127.0.0.1:{self.port}",
                "filesystem", "-p", str(self.workdir / "files"),
                "sqlite", "-p", str(self.workdir / "sqlite")]  # fmt: skip
        log_file = (self.workdir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=self.tree, env=env, stdout=log_file, stderr=subprocess.STDOUT
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


async def measure(side: Side, corpus: Corpus, results: dict[str, list[dict[str, float]]]) -> None:
    pid = side.pid
    async with httpx.AsyncClient(base_url=side.url, timeout=120) as client:
        cpu0 = tree_cpu_seconds(pid)
        up = await upload_round(client, corpus, PHOTOS, 1)
        if up.errors:
            raise SystemExit(f"{side.name} upload failed: {up.errors[:3]}")
        side.aliases.extend(up.aliases)
        results["upload c1"].append(
            {"rate": PHOTOS / up.wall, "cpu_ms": (tree_cpu_seconds(pid) - cpu0) / PHOTOS * 1e3}
        )
        for concurrency, count in ((1, 20), (8, 40)):
            urls = [
                f"/image/process.webp?src={side.aliases[i % len(side.aliases)]}"
                f"&thumbnail={next(side.sizes)}"
                for i in range(count)
            ]
            run = await load(client, urls, concurrency, pid=pid)
            if run.errors:
                raise SystemExit(f"{side.name} render failed: {run.errors[:3]}")
            results[f"first-time c{concurrency}"].append(
                {"rate": count / run.wall, "cpu_ms": run.server_cpu / count * 1e3}
            )
        cached = [  # two sizes of each of the first photos
            f"/image/process.webp?src={side.aliases[i % PHOTOS]}&thumbnail={40 + i // PHOTOS}"
            for i in range(CACHED_URLS)
        ]
        await load(client, cached, 4, pid=pid)  # render them once
    run = await lean_load(side.url, cached, 32, seconds=5.0, pid=pid)
    if run.errors:
        raise SystemExit(f"{side.name} cached reads failed: {run.errors[:3]}")
    done = len(run.latencies)
    results["cached c32"].append(
        {"rate": done / run.wall, "cpu_ms": run.server_cpu / max(done, 1) * 1e3}
    )


async def run_sides(
    sides: list[Side], corpora: dict[str, Corpus], rounds: int
) -> dict[str, dict[str, list[dict[str, float]]]]:
    results = {s.name: {k: [] for k in ("upload c1", "first-time c1", "first-time c8",
                                        "cached c32")} for s in sides}  # fmt: skip
    try:
        for s in sides:
            s.start()
        for s in sides:
            await s.wait_healthy()
        log(f"{sides[0].name} on {sides[0].url}, {sides[1].name} on {sides[1].url}")
        for r in range(rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for s in order:
                log(f"round {r + 1}/{rounds}: {s.name}")
                await measure(s, corpora[s.name], results[s.name])
    finally:
        for s in sides:
            s.stop()
    return results


def report(results: dict[str, dict[str, list[dict[str, float]]]], rev: str, rounds: int) -> None:
    this, that = results["this"], results[rev]
    rows: dict[str, dict[str, float]] = {}
    print(f"\n{'':16}{'this /s':>10}{rev + ' /s':>12}{'ratio':>8}{'cpu ms':>10}{'was':>8}")
    for key in this:
        ratios = [a["rate"] / b["rate"] for a, b in zip(this[key], that[key], strict=True)]
        row = {
            "this_rate": statistics.median(x["rate"] for x in this[key]),
            "that_rate": statistics.median(x["rate"] for x in that[key]),
            "ratio": statistics.median(ratios),
            "this_cpu_ms": statistics.median(x["cpu_ms"] for x in this[key]),
            "that_cpu_ms": statistics.median(x["cpu_ms"] for x in that[key]),
        }
        rows[key] = row
        print(f"{key:16}{row['this_rate']:10.1f}{row['that_rate']:12.1f}{row['ratio']:8.2f}"
              f"{row['this_cpu_ms']:10.2f}{row['that_cpu_ms']:8.2f}")  # fmt: skip
    print(json.dumps({"bench": "compare", "against": rev, "rounds": rounds,
                      "when": time.strftime("%Y-%m-%d"), "sides": rows}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD~1", help="the earlier commit (default HEAD~1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' data and logs")
    args = parser.parse_args()
    paths = build_corpus(ROOT / "bench" / "out" / "corpus-v1", PHOTOS, log)
    data = [p.read_bytes() for p in paths]
    work = Path(tempfile.mkdtemp(prefix="pictrs-compare-"))
    baseline = work / "baseline"
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.against],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(baseline), rev],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    sides = [Side("this", ROOT, work / "this"), Side(rev, baseline, work / "that")]
    # The same uploads on both sides: each side gets its own corpus cursor.
    corpora = {s.name: Corpus(paths, data, [dqt_entries(d) for d in data]) for s in sides}
    try:
        results = trio.run(run_sides, sides, corpora, args.rounds)
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, capture_output=True
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, rev, args.rounds)


if __name__ == "__main__":
    main()
