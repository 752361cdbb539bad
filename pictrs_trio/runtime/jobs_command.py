"""``pictrs-trio jobs``: the journal's state for operators, read from the repo's file."""

from __future__ import annotations

from pathlib import Path

import trio

from journal import open_journal
from journal.records import STATUSES
from pictrs_trio.config import Config
from pictrs_trio.repo.sqlite import DB_FILE_NAME


async def _report(db_file: Path) -> str:
    async with open_journal(db_file) as journal:
        stats = await journal.stats()
        dead = await journal.dead_jobs(20)
    lines = [f"{'queue':<10}" + "".join(f"{s:>9}" for s in STATUSES)]
    lines.extend(
        f"{queue:<10}" + "".join(f"{stats[queue].get(s, 0):>9}" for s in STATUSES)
        for queue in sorted(stats)
    )
    if not stats:
        lines.append("(no jobs)")
    if dead:
        lines.append("")
        lines.append("dead jobs (newest first):")
        lines.extend(
            f"  #{job.id} {job.queue}/{job.kind} after {job.attempts} attempts: {job.last_error}"
            for job in dead
        )
    return "\n".join(lines)


def print_jobs(config: Config) -> None:
    db_file = Path(config.repo.path) / DB_FILE_NAME
    if not db_file.exists():
        raise SystemExit(f"error: no database at {db_file}")
    print(trio.run(_report, db_file))
