"""Object storage that checks signatures: moto's server with authentication on (its
``/moto-api/reset-auth``), an IAM user whose keys may use S3. Our requests, signed by
botocore's SigV4 and sent by httpx, pass; a wrong secret or an unknown key is refused with
one clear line. A server of its own: authentication is a server-wide switch."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from pictrs_trio.rules.errors import StoreError, StoreNotFound
from pictrs_trio.store.object import open_object_store
from tests.s3 import REGION, MotoServer, moto_server


class Secured:
    def __init__(self, moto: MotoServer, bucket: str, access_key: str, secret_key: str) -> None:
        self.moto, self.bucket = moto, bucket
        self.access_key, self.secret_key = access_key, secret_key
        self.writer: tuple[str, str] = ("", "")  # keys that may put, not get or list


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    import boto3

    for moto in moto_server(tmp_path_factory.mktemp("moto-auth")):
        bucket = moto.create_bucket()
        iam = boto3.client(
            "iam",
            endpoint_url=moto.endpoint,
            region_name=REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="pictrs")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="pictrs", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="pictrs")["AccessKey"]
        iam.create_user(UserName="writer")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="writer", PolicyName="s3", PolicyDocument=json.dumps(policy))
        writer = iam.create_access_key(UserName="writer")["AccessKey"]
        # From now on every request must be signed by a known key.
        httpx.post(f"{moto.endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        secured = Secured(moto, bucket, key["AccessKeyId"], key["SecretAccessKey"])
        secured.writer = (writer["AccessKeyId"], writer["SecretAccessKey"])
        yield secured


async def test_signed_requests_pass(secured: Secured, tmp_path: Path) -> None:
    config = secured.moto.config(
        secured.bucket, access_key=secured.access_key, secret_key=secured.secret_key
    )
    async with open_object_store(config) as store:
        await store.health()
        src = tmp_path / "f.bin"
        src.write_bytes(b"signed" * 1000)
        ident = await store.save_file(
            src, identifier=store.new_identifier(".png"), content_type="image/png"
        )
        assert b"".join([c async for c in store.read(ident, 6)]) == b"signed" * 999
        assert [i async for i in store.identifiers()] == [ident]
        await store.remove(ident, partial=True)
        big = tmp_path / "big.bin"  # multipart: every part's payload hash is signed too
        big.write_bytes(bytes(range(256)) * (36 * 1024 + 1))  # 9 MiB and a bit
        ident = await store.save_file(
            big, identifier=store.new_identifier(".mp4"), content_type="video/mp4"
        )
        assert await store.length(ident) == 256 * (36 * 1024 + 1)


async def test_a_wrong_secret_is_named(secured: Secured) -> None:
    config = secured.moto.config(
        secured.bucket, access_key=secured.access_key, secret_key="not-the-secret"
    )
    async with open_object_store(config) as store:
        with pytest.raises(StoreError) as info:
            await store.health()
    where = f"{secured.moto.endpoint} bucket {secured.bucket}"
    assert info.value.msg == (
        f"object storage {where} refused the request signature (SignatureDoesNotMatch): "
        "check store.secret_key (and store.session_token if set)"
    )
    assert "not-the-secret" not in info.value.msg


async def test_an_unknown_key_is_named(secured: Secured) -> None:
    config = secured.moto.config(secured.bucket, access_key="AKIAUNKNOWN", secret_key="x")
    async with open_object_store(config) as store:
        with pytest.raises(StoreError) as info:
            await store.health(write=False)
    assert info.value.msg == (
        f"object storage {secured.moto.endpoint} bucket {secured.bucket} does not know the "
        "access key (InvalidAccessKeyId): check store.access_key"
    )


async def test_a_refused_read_says_the_key_may_be_missing(secured: Secured) -> None:
    """Without s3:ListBucket, AWS answers a read of a missing key with 403, not 404. That is
    never taken for missing (prune-missing would forget, migrate-store --skip-missing-files
    skip, a file that is there), but the line says it may be, and what makes S3 say so.
    Here the key may put and not get: a HEAD (no body) and a GET (AccessDenied) alike."""
    access, secret = secured.writer
    config = secured.moto.config(secured.bucket, access_key=access, secret_key=secret)
    async with open_object_store(config) as store:
        ident = await store.save_bytes(
            b"x", identifier=store.new_identifier(".png"), content_type="x"
        )
        for read in (
            store.length(ident),
            collect(store.read(ident)),
            collect(store.read(ident, 1)),
        ):
            with pytest.raises(StoreError) as info:
                await read
            assert not isinstance(info.value, StoreNotFound)
            where = f"{secured.moto.endpoint} bucket {secured.bucket}"
            assert info.value.msg.startswith(f"object storage {where} denied reading {ident} (")
            assert info.value.msg.endswith(
                "): the key may be missing (S3 answers 403, not 404, for a missing key unless the "
                "access key has s3:ListBucket on the bucket), or the access key may not read it "
                "(s3:GetObject)"
            )


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])
