"""What the journal reports as it works, for whoever counts it (pictrs-trio's metrics).

A ``Journal`` calls its ``Monitor`` synchronously, from the event loop, at each push, each
job a worker claimed (or stopped waiting for), and each job's start and end. The default,
``Unmonitored``, does nothing. A monitor must be quick and must not raise.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["Ending", "Monitor", "Unmonitored"]

# How a job's run ended: done; failed and pending again (``retry``); failed for good
# (``dead``); ``lost``: its lease was lost, or its outcome could not be recorded (it runs again
# when the lease ends); ``stopped``: the workers were cancelled (shutdown) mid-job, which
# leaves it leased until its owner is found dead.
Ending = Literal["done", "retry", "dead", "lost", "stopped"]


class Monitor(Protocol):
    def pushed(self, queue: str, count: int, *, completed: bool) -> None:
        """``count`` jobs were queued on ``queue`` (``completed`` false: the write failed)."""

    def popped(self, queue: str, seconds: float, *, completed: bool) -> None:
        """A worker of ``queue`` waited ``seconds`` and got a job (``completed`` false: it
        was cancelled while waiting)."""

    def job_started(self, queue: str, worker: str) -> None:
        """``worker`` (``Journal.worker_id``) started a job of ``queue``."""

    def job_ended(self, queue: str, worker: str, seconds: float, ending: Ending) -> None:
        """The job ``worker`` ran for ``seconds`` ended so."""


class Unmonitored:
    """A monitor that does nothing."""

    def pushed(self, queue: str, count: int, *, completed: bool) -> None:
        pass

    def popped(self, queue: str, seconds: float, *, completed: bool) -> None:
        pass

    def job_started(self, queue: str, worker: str) -> None:
        pass

    def job_ended(self, queue: str, worker: str, seconds: float, ending: Ending) -> None:
        pass
