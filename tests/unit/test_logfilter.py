"""pict-rs's log filter syntax (tracing-subscriber's EnvFilter), read for our loggers."""

from __future__ import annotations

import pytest

from pictrs_trio.config import logfilter


def test_default_level_and_targets() -> None:
    f = logfilter.parse("warn,pictrs_trio.services=debug,hypercorn=off")
    assert f.default == "WARNING"
    assert f.level_of("pictrs_trio.services.ingest") == "DEBUG"
    assert f.level_of("pictrs_trio.services") == "DEBUG"
    assert f.level_of("pictrs_trio.servicesx") == "WARNING"  # a prefix is a whole name part
    assert f.level_of("pictrs_trio.http.exchange") == "WARNING"
    assert f.level_of("hypercorn.error") is None  # off


def test_the_longest_target_wins_whatever_the_order() -> None:
    f = logfilter.parse("pictrs_trio.services.ingest=trace,pictrs_trio=error,info")
    assert f.level_of("pictrs_trio.services.ingest") == "TRACE"
    assert f.level_of("pictrs_trio.services.render") == "ERROR"
    assert f.level_of("journal.queue") == "INFO"


def test_pict_rs_target_names_select_ours() -> None:
    f = logfilter.parse("warn,tracing_actix_web=info,actix_server=INFO,pict_rs=debug")
    assert f.level_of("pictrs_trio.http.access_log") == "INFO"
    assert f.level_of("hypercorn.error") == "INFO"
    assert f.level_of("pictrs_trio.repo.sqlite") == "DEBUG"
    assert logfilter.parse("pict_rs::queue=debug").targets == {"pictrs_trio.queue": "DEBUG"}


def test_no_default_directive_means_errors_only() -> None:
    f = logfilter.parse("pictrs_trio=debug")
    assert (f.default, f.level_of("hypercorn")) == ("ERROR", "ERROR")
    assert logfilter.parse("").default == "ERROR"


def test_span_and_field_filters_parse_and_only_the_target_counts() -> None:
    f = logfilter.parse("info,pictrs_trio[request{path=/x}]=debug")
    assert f.targets == {"pictrs_trio": "DEBUG"}


@pytest.mark.parametrize("bad", ["loud", "pictrs_trio=loud", "=info", "a=b=c", "info;warn"])
def test_bad_directives_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="not a filter directive"):
        logfilter.parse(f"info,{bad}")
