"""Supervision of the media helpers: crashes, time limits, clean shutdown, run_tool errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pictrs_trio.config import Magick, Media
from pictrs_trio.media.exiftool import ExifTool
from pictrs_trio.media.protocol import Probe, ProbeResult, Render, RenderResult, Sleep
from pictrs_trio.media.run import run_tool
from pictrs_trio.media.tools import open_media_tools
from pictrs_trio.metrics.prometheus import PrometheusMetrics
from pictrs_trio.rules.errors import MediaToolError, status_of
from pictrs_trio.rules.formats import Fmt, Kind, MediaFormat

if shutil.which("exiftool") is None:
    pytest.skip("exiftool missing", allow_module_level=True)

SAMPLE = Path(os.environ.get("PICTRS_SAMPLE_MEDIA", "/work/shared/media")) / "cat.jpg"
JPEG = MediaFormat(kind=Kind.IMAGE, fmt=Fmt.JPEG)


def children() -> set[int]:
    """Live (non-zombie) child processes of this test process, from /proc."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == me:
            found.add(int(entry.name))
    return found


@pytest.fixture
def jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "in.jpeg"
    shutil.copyfile(SAMPLE, path)
    subprocess.run(
        ["exiftool", "-overwrite_original", "-GPSLatitude=1", str(path)],
        check=True,
        capture_output=True,
    )
    return path


async def test_exiftool_recovers_after_kill(tmp_path: Path, jpeg: Path) -> None:
    async with open_media_tools(Media(), tmp_dir=tmp_path, engine_workers=1) as tools:
        await tools.exiftool.strip(jpeg, tmp_path / "a.jpeg")
        pid = tools.exiftool.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await tools.exiftool.strip(jpeg, tmp_path / "b.jpeg")  # at once: retried on a new one
        assert tools.exiftool.pid not in (None, pid)
        assert (tmp_path / "b.jpeg").read_bytes() == (tmp_path / "a.jpeg").read_bytes()


async def test_exiftool_starts_on_demand_and_stops_when_idle(tmp_path: Path, jpeg: Path) -> None:
    before = children()
    et = ExifTool(timeout=10, idle_timeout=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(et.supervise)
        await trio.sleep(0.2)
        assert et.pid is None and children() - before == set()  # nothing until needed
        for turn in range(2):  # the second time it is started again
            await et.strip(jpeg, tmp_path / f"s{turn}.jpeg")
            pid = et.pid
            assert pid is not None and children() - before == {pid}
            for _ in range(3):  # used again within the idle time: the same process
                await trio.sleep(0.3)
                assert "GPSLatitude" not in await et.execute(["-j", str(tmp_path / "s0.jpeg")])
            assert et.pid == pid
            with trio.fail_after(5):
                while children() - before:  # noqa: ASYNC110 - polling another process
                    await trio.sleep(0.05)  # stopped (exit 0) and reaped once idle
            assert et.pid is None
        nursery.cancel_scope.cancel()
    assert (tmp_path / "s0.jpeg").read_bytes() == (tmp_path / "s1.jpeg").read_bytes()


FAKE_EXIFTOOL = """#!/bin/sh
# answers every command; "crash" kills it mid-command; "-stay_open False" ends it
while IFS= read -r line; do
  case "$line" in
    crash) sleep 0.3; exit 1;;
    False) exit 0;;
    -execute*) printf '{ready%s}\\n' "${line#-execute}";;
  esac
done
"""


async def test_exiftool_dying_mid_command_at_the_idle_deadline(tmp_path: Path) -> None:
    """A command still running when the idle time runs out, whose process then dies, gets
    'died during a command' at once, not a timeout after the full limit."""
    fake = tmp_path / "fake-exiftool"
    fake.write_text(FAKE_EXIFTOOL)
    fake.chmod(0o755)
    et = ExifTool(timeout=5, idle_timeout=0.5, executable=str(fake))
    async with trio.open_nursery() as nursery:
        await nursery.start(et.supervise)
        await et.execute(["-ver"])
        await trio.sleep(0.4)  # the next command crosses the idle deadline while it runs
        began = trio.current_time()
        with pytest.raises(MediaToolError, match="died during a command"):
            await et.execute(["crash"])
        assert trio.current_time() - began < 3
        await et.execute(["-ver"])  # and a fresh process answers the next one
        nursery.cancel_scope.cancel()


async def test_exiftool_that_exits_cleanly_is_restarted_with_backoff(tmp_path: Path) -> None:
    """Without an idle stop, a process that exits 0 on its own is a failure: restarted
    after the back-off, not in a tight loop."""
    starts = tmp_path / "starts"
    fake = tmp_path / "fake-exiftool"
    fake.write_text(f"#!/bin/sh\necho x >> {starts}\nexit 0\n")
    fake.chmod(0o755)
    et = ExifTool(timeout=5, executable=str(fake))
    async with trio.open_nursery() as nursery:
        await nursery.start(et.supervise)
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    assert 1 <= len(starts.read_text().split()) <= 3


async def test_exiftool_on_demand_reports_a_missing_binary(tmp_path: Path) -> None:
    et = ExifTool(timeout=10, idle_timeout=1, executable=str(tmp_path / "no-exiftool"))
    async with trio.open_nursery() as nursery:
        await nursery.start(et.supervise)
        for _ in range(3):  # each command fails at once (no hang until the timeout)
            with trio.fail_after(3), pytest.raises(MediaToolError) as info:
                await et.execute(["-ver"])
            assert (str(info.value.code), status_of(info.value)) == ("command-not-found", 500)
        nursery.cancel_scope.cancel()


async def test_exiftool_timeout_kills_and_restarts(tmp_path: Path) -> None:
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nexec cat > /dev/null\n")  # reads commands, never answers
    hang.chmod(0o755)
    et = ExifTool(timeout=0.3, executable=str(hang))
    before = children()  # other fixtures (an e2e server) may own children of this process
    async with trio.open_nursery() as nursery:
        await nursery.start(et.supervise)
        first = et.pid
        with pytest.raises(MediaToolError) as info:
            await et.execute(["-ver"])
        assert (str(info.value.code), status_of(info.value)) == ("command-timeout", 400)
        with trio.fail_after(5):
            while et.pid in (None, first):  # noqa: ASYNC110 - no event to wait for from outside
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert children() - before == set()


async def test_engine_worker_killed_mid_job(tmp_path: Path, jpeg: Path) -> None:
    async with open_media_tools(Media(), tmp_dir=tmp_path, engine_workers=1) as tools:
        (victim,) = tools.engine.pids

        async def kill_soon() -> None:
            await trio.sleep(0.2)
            os.kill(victim, signal.SIGKILL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_soon)
            with pytest.raises(MediaToolError, match="died"):
                await tools.submit(Sleep(seconds=10))
        probe = await tools.submit(Probe(path=str(jpeg), sniffed="jpeg"))
        assert isinstance(probe, ProbeResult)
        assert (probe.width, probe.height) == (1200, 1387)
        assert victim not in tools.engine.pids


async def test_engine_job_time_limit(tmp_path: Path, jpeg: Path) -> None:
    cfg = Media(process_timeout=0.5)
    async with open_media_tools(cfg, tmp_dir=tmp_path, engine_workers=1) as tools:
        (slow,) = tools.engine.pids
        with trio.fail_after(5), pytest.raises(MediaToolError) as info:
            await tools.submit(Sleep(seconds=30))
        assert str(info.value.code) == "command-timeout"
        probe = await tools.submit(Probe(path=str(jpeg), sniffed="jpeg"))
        assert isinstance(probe, ProbeResult)
        assert slow not in tools.engine.pids


async def test_runs_and_restarts_are_counted(tmp_path: Path, jpeg: Path) -> None:
    metrics = PrometheusMetrics()
    # Long enough that a loaded machine's worker start does not time out the later jobs too.
    cfg = Media(process_timeout=2)
    async with open_media_tools(cfg, tmp_dir=tmp_path, engine_workers=1, metrics=metrics) as tools:
        with trio.fail_after(15), pytest.raises(MediaToolError):
            await tools.submit(Sleep(seconds=30))  # killed at the time limit, replaced
        await tools.submit(Probe(path=str(jpeg), sniffed="jpeg"))
        await tools.exiftool.strip(jpeg, tmp_path / "a.jpeg")
        await tools.run(["ffprobe", "-version"])

    def ended(command: str, completed: str) -> float | None:
        labels = {"command": command, "completed": completed}
        return metrics.registry.get_sample_value("pict_rs_process_end_total", labels)

    assert ended("vips", "false") == 1  # the job that ran out of time
    assert ended("vips", "true") == 1
    assert ended("exiftool", "true") == 1
    assert ended("ffprobe", "true") == 1
    started = metrics.registry.get_sample_value("pict_rs_process_start_total", {"command": "vips"})
    assert started == 2
    restarts = "pictrs_trio_engine_worker_restarts_total"
    assert metrics.registry.get_sample_value(restarts, {"reason": "killed"}) == 1
    assert metrics.registry.get_sample_value(restarts, {"reason": "exited"}) is None


async def test_engine_refuses_other_loaders(tmp_path: Path) -> None:
    svg = tmp_path / "x.png"  # an SVG under a PNG name, sent as "png": pngload must refuse it
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')
    async with open_media_tools(Media(), tmp_dir=tmp_path, engine_workers=1) as tools:
        for sniffed in ("png", "svg", "tiff"):
            with pytest.raises(Exception, match="engine") as info:
                await tools.submit(Probe(path=str(svg), sniffed=sniffed))
            assert status_of(info.value) == 400


async def test_engine_converts_12mp_under_memory_limit(tmp_path: Path) -> None:
    import pyvips  # test-side only: make a big input

    big = tmp_path / "big.jpeg"
    pyvips.Image.jpegload(str(SAMPLE)).resize(4000 / 1200, vscale=3000 / 1387).jpegsave(str(big))
    async with open_media_tools(Media(), tmp_dir=tmp_path, engine_workers=1) as tools:
        out = await tools.submit(
            Render(
                src=str(big),
                sniffed="jpeg",
                dst=str(tmp_path / "o.webp"),
                ops=[],
                out_fmt="webp",
                autorot=True,
                strict=True,
            )
        )
        assert isinstance(out, RenderResult)
        assert (out.width, out.height) == (4000, 3000)


def _limit(pid: int, name: str) -> str:
    """The soft value of one line of /proc/<pid>/limits, like "Max file size"."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(name):
            return line[len(name) :].split()[0]
    raise AssertionError(f"{name} not in /proc/{pid}/limits")


async def test_engine_applies_the_magick_limits(tmp_path: Path) -> None:
    magick = Magick(max_width=1000, max_height=5000, memory=64, map=128, disk=1)
    cfg = Media(magick=magick)
    big = tmp_path / "big.png"
    import pyvips  # test-side only: noise compresses badly, so its PNG is several MiB

    noise = [pyvips.Image.gaussnoise(1000, 1400, sigma=60).cast("uchar") for _ in range(3)]
    noise[0].bandjoin(noise[1:]).pngsave(str(big), compression=0)
    assert big.stat().st_size > 3 << 20
    async with open_media_tools(cfg, tmp_dir=tmp_path, engine_workers=1) as tools:
        (pid,) = tools.engine.pids
        assert int(_limit(pid, "Max address space")) == (64 + 128 + 256) << 20
        assert int(_limit(pid, "Max file size")) == 1 << 20
        # cat.jpg is 1200 wide: refused before any pixel is decoded
        with pytest.raises(Exception, match="too large for the engine: 1200x1387") as info:
            await tools.submit(
                Render(src=str(SAMPLE), sniffed="jpeg", dst=str(tmp_path / "o.png"), ops=[],
                       out_fmt="png")
            )  # fmt: skip
        assert status_of(info.value) == 400
        assert not (tmp_path / "o.png").exists()
        # a PNG of more than 1 MiB cannot be written, and nothing partial is left
        with pytest.raises(Exception, match=r"engine: unable to call pngsave: .*File too large"):
            await tools.submit(
                Render(src=str(big), sniffed="png", dst=str(tmp_path / "o2.png"), ops=[],
                       out_fmt="png")
            )  # fmt: skip
        assert not (tmp_path / "o2.png").exists()
        # the worker lived through both; a small render still works
        assert tools.engine.pids == {pid}
        small = await tools.submit(
            Render(src=str(big), sniffed="png", dst=str(tmp_path / "o3.jpeg"), ops=[],
                   out_fmt="jpeg")
        )  # fmt: skip
        assert isinstance(small, RenderResult)
        assert (small.width, small.height) == (1000, 1400)


async def test_shutdown_leaves_no_children(tmp_path: Path, jpeg: Path) -> None:
    before = children()
    async with open_media_tools(Media(), tmp_dir=tmp_path, engine_workers=2) as tools:
        await tools.strip(jpeg, tmp_path / "s.jpeg", JPEG)  # in-process: no exiftool
        assert len(children() - before) == 2  # two engine workers
        await tools.exiftool.execute(["-ver"])
        assert len(children() - before) == 3  # and exiftool, started on demand
    assert children() - before == set()


async def test_run_tool_errors(tmp_path: Path) -> None:
    limiter = trio.CapacityLimiter(2)
    before = children()
    assert await run_tool(["sh", "-c", "printf ok"], timeout=5, limiter=limiter) == b"ok"
    cases = [
        (["sh", "-c", "echo broken >&2; exit 3"], "command-failure", 400, "broken"),
        (["sleep", "5"], "command-timeout", 400, "timed out"),
        ([str(tmp_path / "nope")], "command-not-found", 500, "not found"),
        ([str(tmp_path)], "command-permission-denied", 500, "not executable"),
    ]
    for argv, code, status, text in cases:
        with pytest.raises(MediaToolError, match=text) as info:
            await run_tool(argv, timeout=0.3, limiter=limiter)
        assert (str(info.value.code), status_of(info.value)) == (code, status)
    assert children() - before == set()


def test_server_side_never_loads_libvips() -> None:
    code = (
        "import sys, pictrs_trio.media.tools, pictrs_trio.media.discover, pictrs_trio.rules.policy;"
        "print('pyvips' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "False"


async def test_a_killed_engine_worker_is_restarting_not_down(tmp_path: Path) -> None:
    """/healthz's view of the engine (``EnginePool.down``): the only worker killed (a job
    past its time) is restarting, not down; the pool is down when a start fails."""
    async with open_media_tools(Media(), tmp_dir=tmp_path, engine_workers=1) as tools:
        engine = tools.engine
        (pid,) = engine.pids
        assert engine.ready == 1 and not engine.down()
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(30):
            while engine.ready == 1:  # noqa: ASYNC110 - polling another process
                await trio.sleep(0.001)
            saw_restart = False
            while engine.ready == 0:
                saw_restart = True
                assert not engine.down()  # restarting: still healthy
                assert engine.down(grace=0)  # ...but only within the grace
                await trio.sleep(0.005)
        assert saw_restart and engine.pids != {pid} and not engine.down()
