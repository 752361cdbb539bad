"""Records the journal hands out, its policy Structs, and its errors.

Times in records are wall-clock seconds (floats) from the journal's clock; the table stores
them as integer nanoseconds, like the rest of the database.
"""

from __future__ import annotations

import random
from typing import Literal, TypeVar

import msgspec

__all__ = [
    "Abort",
    "Backoff",
    "Event",
    "EventName",
    "Job",
    "JobNotFound",
    "JournalError",
    "Outcome",
    "Retry",
    "Status",
    "encode_payload",
]

T = TypeVar("T")
Status = Literal["pending", "running", "done", "dead"]
STATUSES: tuple[Status, ...] = ("pending", "running", "done", "dead")

# Immutable, so a module constant (msgspec perf tips: build each once).
_ENCODER = msgspec.json.Encoder()


class JournalError(Exception):
    """The journal's database failed or refused (busy past the timeout, schema too new…)."""


class JobNotFound(JournalError):
    """No such job: never pushed, or already purged."""


class Retry(Exception):
    """Raised by a handler: this attempt failed, try again after a backoff (until
    ``max_attempts``). Any exception other than ``Abort`` counts as ``Retry``."""


class Abort(Exception):
    """Raised by a handler: the job can never succeed; it goes to ``dead`` at once."""


class Job(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    queue: str
    kind: str  # type tag of the payload: the Struct's msgspec tag, else its class name
    payload: bytes  # msgspec JSON
    unique_key: str | None
    status: Status
    attempts: int  # times claimed so far (a claim whose worker died counts)
    max_attempts: int
    run_after: float
    worker: str | None
    lease_until: float | None
    heartbeat: float | None
    last_error: str | None
    created: float
    updated: float

    def decode(self, into: type[T] | msgspec.json.Decoder[T]) -> T:
        """The payload as ``into`` (a type, or a Decoder built once by the caller). Raises
        ``msgspec.DecodeError``/``ValidationError``; the runner turns those into ``Abort``."""
        if isinstance(into, msgspec.json.Decoder):
            return into.decode(self.payload)
        return msgspec.json.decode(self.payload, type=into)


EventName = Literal[
    "pushed", "started", "finished", "failed", "retried", "requeued", "progress", "done"
]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the event log (docs/journal.md "Events"). Job state changes:
    ``pushed``, ``started`` (claimed: attempt n), ``finished``, ``retried`` (failed, will
    run again after a backoff; ``error`` says why), ``failed`` (dead; ``error``),
    ``requeued`` (a dead job retried by hand). ``announce`` adds ``progress`` and ``done``
    for work that is not one job (``job`` is None then). ``id`` grows with every event:
    a reader that saw id n reads on from n."""

    id: int
    at: float
    event: EventName
    job: int | None
    queue: str
    kind: str
    attempt: int
    payload: bytes | None  # msgspec JSON, as pushed or announced
    error: str | None


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """How a job ended, for ``wait_done``: ``last_error`` is the error that killed a dead job
    (a done job may still carry errors of earlier attempts in its row; not here)."""

    id: int
    status: Literal["done", "dead"]
    last_error: str | None = None


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Delay before attempt n+1 after n failed attempts: ``base * factor**(n-1)``, at most
    ``cap``, then shortened by up to ``jitter`` (a fraction) so jobs that failed together do
    not all come back in the same instant."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.2

    def delay(self, failed_attempts: int, rng: random.Random) -> float:
        exponent = max(failed_attempts - 1, 0)
        # min() before the power would overflow for absurd attempt counts.
        raw = self.cap if exponent > 64 else min(self.base * self.factor**exponent, self.cap)
        return raw * (1.0 - self.jitter * rng.random())


def encode_payload(payload: msgspec.Struct) -> tuple[str, bytes]:
    """(kind, JSON bytes) of a caller Struct. A tagged Struct keeps its tag inside the JSON,
    so a tagged-union Decoder reads it back; ``kind`` is for people reading the table."""
    tag = type(payload).__struct_config__.tag
    kind = tag if isinstance(tag, str) else type(payload).__name__
    return kind, _ENCODER.encode(payload)
