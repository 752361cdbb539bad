"""How migrate-store tells its progress: the line, the terminal bar, the summary."""

from __future__ import annotations

import io

import trio
import trio.testing
from loguru import logger

from pictrs_trio.runtime import migrate_command as mc
from pictrs_trio.services.abandon import Abandoned
from pictrs_trio.services.migrate import Progress


def test_progress_line_counts_rate_and_eta() -> None:
    p = Progress(total=300, moved=100, missing=2, failed=1, bytes=2_000_000)
    assert mc.progress_line(p, 10.0) == (
        "103/300 files (34%), 2 missing, 1 failed, 10.3 files/s, 200.0 KB/s, ETA 0:00:19"
    )
    assert mc.progress_line(Progress(total=5), 0.0).endswith("0 B/s, ETA ?")
    assert mc.progress_line(Progress(total=2, moved=2), 1.0).endswith("ETA 0:00:00")
    assert mc.progress_line(Progress(), 1.0).startswith("0/0 files (100%)")


def test_progress_bar_fills_with_the_count() -> None:
    bar = mc.progress_bar(Progress(total=4, moved=1), 1.0, width=8)
    assert bar.startswith("[##------] 1/4 files (25%)")
    assert mc.progress_bar(Progress(total=0), 1.0, width=4).startswith("[####]")


def test_summary_says_what_to_do_next() -> None:
    done = Progress(total=3, moved=3, done_before=2, finished=True, bytes=1500)
    lines = mc.summary(done, 2.5, "filesystem -p /a", "filesystem -p /b")
    assert lines[0] == (
        "migrate-store: moved 3 files (1.5 KB) in 2.5 s; skipped 2 (moved before); "
        "missing 0; failed 0"
    )
    assert "every file the repo names is in filesystem -p /b now" in lines[1]
    assert "PICTRS__STORE__PATH=/b" in lines[2] and "remove it" in lines[2]
    missing = Progress(total=3, moved=2, missing=1, finished=True)
    assert "prune_missing" in " ".join(mc.summary(missing, 1.0, "a", "object-storage -e x"))
    failed = Progress(total=3, moved=2, failed=1, stopped="store down")
    text = " ".join(mc.summary(failed, 3700.0, "filesystem -p /a", "filesystem -p /b"))
    assert "in 1:01:40" in text
    assert "Unfinished (store down)" in text and "run the same command again" in text
    assert "refuses to start" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_the_bar_is_redrawn_on_a_terminal(autojump_clock: trio.testing.MockClock) -> None:
    progress = Progress(total=10, walking=True, started=trio.current_time())
    out = _Terminal()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mc._report, progress, out)
        await trio.sleep(1)
        progress.moved = 5
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    text = out.getvalue()
    assert text.startswith("\r[") and "\x1b[K" in text
    assert "5/10 files (50%)" in text
    assert text.endswith("\n")  # the last bar stays, the summary goes below it


async def test_no_bar_off_a_terminal(autojump_clock: trio.testing.MockClock) -> None:
    progress = Progress(total=10, walking=True, started=trio.current_time())
    out = io.StringIO()
    logged: list[str] = []
    sink = logger.add(logged.append, format="{message}")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mc._report, progress, out)
            await trio.sleep(mc.LOG_EVERY * 2.5)
            nursery.cancel_scope.cancel()
    finally:
        logger.remove(sink)
    assert out.getvalue() == ""
    assert len(logged) == 2 and logged[0].startswith("migrate-store: 0/10 files (0%)")


def test_abandon_summary_says_where_the_files_are_and_what_is_left() -> None:
    done = Abandoned(total=5, moved_back=5, missing=1, removed=4, finished=True)
    lines = mc.abandon_summary(done, "filesystem -p /a", "filesystem -p /b")
    assert lines[0] == (
        "migrate-store --abandon: moved back 5 of 5 files; missing 1; failed 0; removed 4 "
        "copies from filesystem -p /b"
    )
    assert lines[1].startswith("Abandoned: the repo names the files in filesystem -p /a again")
    assert "1 files were missing from filesystem -p /a" in lines[2]
    assert len(lines) == 3

    kept = Abandoned(total=5, moved_back=3, missing=1, failed=1, kept=2, unreachable="gone")
    lines = mc.abandon_summary(kept, "filesystem -p /a", "filesystem -p /b")
    assert lines[1].startswith("Unfinished: 2 moved files were left moved")
    assert "--skip-missing-files" in lines[1] and "without --abandon" in lines[1]
    assert lines[2] == (
        "Copies in filesystem -p /b were not removed (gone): remove them with that folder or "
        "bucket, if it is still there."
    )
