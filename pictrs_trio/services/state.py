"""AppState: everything a request or job needs, opened once by ``service`` and passed down."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from journal import Journal
from pictrs_trio.config import Config
from pictrs_trio.media.tools import MediaTools
from pictrs_trio.metrics import Metrics
from pictrs_trio.repo import Repo
from pictrs_trio.rules.errors import ReadOnly
from pictrs_trio.services.access import AccessLog
from pictrs_trio.services.outbound import Outbound
from pictrs_trio.services.single_flight import SingleFlight
from pictrs_trio.services.tracing import Tracer
from pictrs_trio.store import Store


@dataclasses.dataclass(frozen=True, slots=True)
class AppState:
    config: Config
    repo: Repo
    store: Store
    media: MediaTools
    tmp_dir: Path  # private scratch folder for spooled uploads and tool outputs
    journal: Journal  # durable jobs, in the repo's database
    http: Outbound  # every outbound request (downloads, proxies); closed at shutdown
    metrics: Metrics = dataclasses.field(default_factory=Metrics)  # off unless configured
    generations: SingleFlight = dataclasses.field(default_factory=SingleFlight)
    accesses: AccessLog = dataclasses.field(default_factory=AccessLog)
    tracer: Tracer = dataclasses.field(default_factory=Tracer)  # spans (services/tracing.py)

    def require_writable(self) -> None:
        """Raises ReadOnly (400 read-only) when ``server.read_only`` is set."""
        if self.config.server.read_only:
            raise ReadOnly("Server is in read-only mode")
