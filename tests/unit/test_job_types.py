"""Job payloads are stored rows: they round-trip, and rows written by older versions (with
fewer fields) still decode."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from pictrs_trio.rules import jobs
from pictrs_trio.services.handlers import _cleanup_decoder, _generate_decoder, _ingest_decoder

text = st.text(max_size=30)


@given(st.lists(text, max_size=5))
def test_remove_files_round_trip(identifiers: list[str]) -> None:
    job = jobs.RemoveFiles(identifiers=identifiers)
    assert _cleanup_decoder.decode(msgspec.json.encode(job)) == job


@given(text, text, st.lists(st.tuples(text, text), max_size=4))
def test_ingest_and_generate_round_trip(a: str, b: str, query: list[tuple[str, str]]) -> None:
    ingest = jobs.IngestUpload(upload_id=a, raw_identifier=b, query=query)
    assert _ingest_decoder.decode(msgspec.json.encode(ingest)) == ingest
    generate = jobs.Generate(alias=a, ext=b, query=query)
    assert _generate_decoder.decode(msgspec.json.encode(generate)) == generate


def test_rows_from_older_versions_decode() -> None:
    # an ingest row written before uploads carried their query
    old = b'{"type":"ingest_upload","upload_id":"u","raw_identifier":"r"}'
    assert _ingest_decoder.decode(old).query == []
    for tag in ("expire_variants", "remove_all_variants", "sweep_orphans"):
        payload = _cleanup_decoder.decode(b'{"type":"%s"}' % tag.encode())
        assert type(payload).__name__.lower().replace("_", "") == tag.replace("_", "")
