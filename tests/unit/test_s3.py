"""The pure half of the object store (store/s3.py): addressing, signing, error lines."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pictrs_trio.store import s3

KEY = "01/a2/43/07/d3/f5/7e/28/a9/ec/eb15aa26e8c8.jpeg"


@pytest.mark.parametrize(
    ("endpoint", "path_style", "base"),
    [
        ("http://minio:9000", True, "http://minio:9000/media"),
        ("http://minio:9000/", True, "http://minio:9000/media"),
        ("https://s3.example.com/prefix/", True, "https://s3.example.com/prefix/media"),
        ("https://s3.us-east-005.backblazeb2.com", False,
         "https://media.s3.us-east-005.backblazeb2.com"),
        # pict-rs: the bucket is put in front of the host unless the host starts with it
        ("https://media.s3.eu-west-1.amazonaws.com", False,
         "https://media.s3.eu-west-1.amazonaws.com"),
        ("http://garage:3900", False, "http://media.garage:3900"),
    ],
)  # fmt: skip
def test_addressing(endpoint: str, path_style: bool, base: str) -> None:
    address = s3.addressing(endpoint, "media", path_style)
    assert address.base == base
    assert s3.key_url(address, KEY) == f"{base}/{KEY}"
    assert s3.key_url(address) == f"{base}/"


@pytest.mark.parametrize(
    "endpoint",
    ["ftp://x", "http://", "http://u:secret@host", "http://host?x=1", "http://host:port", "x"],
)
def test_addressing_refuses(endpoint: str) -> None:
    with pytest.raises(ValueError, match=r"store\.endpoint") as info:
        s3.addressing(endpoint, "b", True)
    assert "secret" not in str(info.value)


def test_query_is_canonical() -> None:
    address = s3.addressing("http://h", "b", True)
    url = s3.key_url(address, "a b/c", {"uploadId": "x+y/z=", "partNumber": "2"})
    assert url == "http://h/b/a%20b/c?partNumber=2&uploadId=x%2By%2Fz%3D"
    assert s3.key_url(address, query={"uploads": "", "prefix": KEY}).endswith(
        "?prefix=01%2Fa2%2F43%2F07%2Fd3%2Ff5%2F7e%2F28%2Fa9%2Fec%2Feb15aa26e8c8.jpeg&uploads="
    )


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("https://cdn.example.com", f"https://cdn.example.com/{KEY}"),
        ("https://cdn.example.com/", f"https://cdn.example.com/{KEY}"),
        ("https://cdn.example.com/media/", f"https://cdn.example.com/media/{KEY}"),
        ("https://cdn.example.com/media", f"https://cdn.example.com/media/{KEY}"),
    ],
)
def test_public_url(endpoint: str, url: str) -> None:
    assert s3.public_url(endpoint, KEY) == url


def test_signer_hashes_a_file_slice_as_its_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    signer = s3.Signer(access_key="AK", secret_key="SK", session_token="TOKEN", region="r")
    fd = os.open(path, os.O_RDONLY)
    try:
        piece = s3.FileSlice(fd, 1000, 2 * 1024 * 1024)
        headers = signer.sign("PUT", "http://h/b/k", {"Content-Type": "image/png"}, piece)
    finally:
        os.close(fd)
    expected = hashlib.sha256(data[1000 : 1000 + 2 * 1024 * 1024]).hexdigest()
    assert headers["X-Amz-Content-SHA256"] == expected
    assert headers["X-Amz-Security-Token"] == "TOKEN"
    assert headers["Content-Type"] == "image/png"
    auth = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AK/")
    assert "/r/s3/aws4_request" in auth
    assert "SK" not in repr(signer)


def test_file_slice_notices_a_shrunk_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="shrank"):
            s3.FileSlice(fd, 0, 10).read()
    finally:
        os.close(fd)


def error(code: str, message: str = "", status: int = 400, **headers: str) -> s3.S3Failure:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    return s3.parse_error(status, body, headers)


def describe(failure: s3.S3Failure) -> str:
    return s3.describe_failure(
        failure, where="https://s3.x bucket b", region="us-east-1", bucket="b"
    )


def test_failure_lines() -> None:
    assert describe(error("InvalidAccessKeyId", status=403)) == (
        "object storage https://s3.x bucket b does not know the access key "
        "(InvalidAccessKeyId): check store.access_key"
    )
    assert "check store.secret_key" in describe(error("SignatureDoesNotMatch", status=403))
    assert "create it first" in describe(error("NoSuchBucket", status=404))
    # pict-rs README: a wrong region, or a path-style endpoint without use_path_style
    readme = error("InvalidRequest", "Authorization header's Credential is malformed")
    for failure in (
        readme,
        error("AuthorizationHeaderMalformed", "the region 'us-east-1' is wrong; expecting "
              "'eu-west-1'", **{"x-amz-bucket-region": "eu-west-1"}),
        error("PermanentRedirect", status=301),
        s3.S3Failure(status=301),
    ):  # fmt: skip
        line = describe(failure)
        assert "rejected store.region = 'us-east-1'" in line
        assert "store.use_path_style = true" in line
    assert "the server says the bucket is in 'eu-west-1'" in describe(
        error("AuthorizationHeaderMalformed", **{"x-amz-bucket-region": "eu-west-1"})
    )
    assert "denied access (AccessDenied)" in describe(error("AccessDenied", status=403))
    assert describe(s3.S3Failure(status=403)).startswith(
        "object storage https://s3.x bucket b denied access (HTTP 403)"
    )
    assert "clock" in describe(error("RequestTimeTooSkewed", status=403))


def test_failure_lines_are_one_short_line() -> None:
    long = "line one\n  line two " + "x" * 1000
    line = describe(error("InternalError", long, status=500))
    assert "\n" not in line
    assert line.startswith("object storage https://s3.x bucket b failed (InternalError): line one")
    assert len(line) < 300
    assert describe(s3.parse_error(502, b"<html>bad gateway</html>", {})) == (
        "object storage https://s3.x bucket b failed (HTTP 502)"
    )


def test_a_refused_read_is_told_apart() -> None:
    assert s3.is_denied_read(s3.S3Failure(status=403))  # a HEAD: no body, no code
    assert s3.is_denied_read(error("AccessDenied", status=403))
    for other in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "RequestTimeTooSkewed"):
        assert not s3.is_denied_read(error(other, status=403))
    assert not s3.is_denied_read(error("NoSuchKey", status=404))
    line = s3.describe_denied_read(s3.S3Failure(status=403), where="https://s3.x bucket b", key=KEY)
    assert line.startswith(f"object storage https://s3.x bucket b denied reading {KEY} (HTTP 403)")
    assert "s3:ListBucket" in line
    assert "\n" not in line
