"""Files and buckets: object URLs in, local files staged, results streamed into a bucket.

Against a real S3-protocol server on loopback (moto), with the fake Monica server
fetching the presigned URLs it is sent.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from monica_async import (
    APIConnectionError,
    APIResponseValidationError,
    BadRequestError,
    InternalServerError,
    InvalidRequestError,
    MonicaClient,
    RetryPolicy,
    StorageError,
    UpscaleResult,
)
from monica_async._storage import MIN_PRESIGN, PART_SIZE, presign_seconds, redact
from monica_async.testing import FakeMonicaServer, make_sample_image

if TYPE_CHECKING:
    from conftest_moto import Bucket, MotoServer

pytest_plugins = ["conftest_moto"]
pytestmark = pytest.mark.storage

KEY = "storage-test-key"
S3_HINT = (
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials)"
)
PICTURE = make_sample_image(24, 16)
Start = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]


@pytest.fixture
async def server() -> AsyncIterator[FakeMonicaServer]:
    """A fake Monica server that really fetches and upscales what it is sent."""
    async with FakeMonicaServer(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeMonicaServer, no_retry_sleep: None) -> AsyncIterator[MonicaClient]:
    """A client of the fake server, without staging."""
    async with MonicaClient(
        KEY, base_url=server.base_url, retry=RetryPolicy(max_attempts=2)
    ) as api:
        yield api


@pytest.fixture
async def staging_client(
    server: FakeMonicaServer, bucket: Bucket, no_retry_sleep: None
) -> AsyncIterator[MonicaClient]:
    """A client of the fake server staging local files under ``tmp/`` in the bucket."""
    async with MonicaClient(
        KEY, base_url=server.base_url, staging=bucket.url("tmp/"), retry=RetryPolicy(max_attempts=2)
    ) as api:
        yield api


def sent_urls(server: FakeMonicaServer) -> list[str]:
    """The image URLs the fake server was asked to upscale."""
    return list(server.stats.attempts_by_image)


def size_of(data: bytes) -> tuple[int, int]:
    """A picture's width and height."""
    with Image.open(io.BytesIO(data)) as picture:
        return picture.size


async def fetched(url: str) -> bytes:
    """The bytes at *url*."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        return await response.read()


def png_of_size(size: int) -> bytes:
    """*size* bytes that start like a PNG (download checks look at the signature)."""
    head = b"\x89PNG\r\n\x1a\n"
    return head + bytes(size - len(head))


# -- object URLs in --------------------------------------------------------------------------


async def test_object_input_is_sent_presigned_and_fetched_by_the_server(
    client: MonicaClient, server: FakeMonicaServer, bucket: Bucket
) -> None:
    """An s3:// input reaches the API as a presigned GET URL the server could fetch."""
    source = bucket.put("photos/cat.png", PICTURE)
    result = await client.upscale(source)
    [sent] = sent_urls(server)
    parts = urlsplit(sent)
    query = parse_qs(parts.query)
    assert (f"/{bucket.name}/photos/cat.png", True, (48, 32)) == (
        parts.path,
        "X-Amz-Signature" in query,
        size_of(await fetched(result.url)),
    )


async def test_object_input_result_records_the_object_url(
    client: MonicaClient, bucket: Bucket
) -> None:
    """The result's source is the object URL given, not the presigned URL sent."""
    source = bucket.put("cat.png", PICTURE)
    result = await client.upscale(source)
    assert source == result.source


@pytest.mark.parametrize(
    ("policy", "timeout", "expected"),
    [
        (RetryPolicy(), 120.0, MIN_PRESIGN),
        (RetryPolicy(deadline=7200.0, max_attempts=100), 120.0, 7200.0 + 120.0 + 900.0),
        (RetryPolicy(deadline=None, max_attempts=5), 600.0, 5 * (600.0 + 60.0) + 900.0),
    ],
)
async def test_presigned_url_outlives_the_retry_deadline(
    server: FakeMonicaServer,
    bucket: Bucket,
    no_retry_sleep: None,
    policy: RetryPolicy,
    timeout: float,
    expected: float,
) -> None:
    """The URL sent stays valid past the last moment a retry could fetch it."""
    source = bucket.put("cat.png", PICTURE)
    async with MonicaClient(KEY, base_url=server.base_url, retry=policy, timeout=timeout) as api:
        await api.upscale(source)
    [sent] = sent_urls(server)
    expires = float(parse_qs(urlsplit(sent).query)["X-Amz-Expires"][0])
    assert (expected, True) == (expires, expires > (policy.deadline or 0) + timeout)


def test_presign_seconds_without_a_total_timeout_is_the_longest_allowed() -> None:
    """With no per-attempt bound, a call has no bound either: S3's 7-day maximum."""
    assert 7 * 24 * 3600.0 == presign_seconds(RetryPolicy(), aiohttp.ClientTimeout(total=None))


async def test_batch_mixes_urls_and_object_urls(
    client: MonicaClient, server: FakeMonicaServer, bucket: Bucket
) -> None:
    """upscale_many takes object URLs next to plain URLs; each outcome names its input."""
    inputs = [
        bucket.put("a.png", PICTURE),
        server.add_image(PICTURE, name="b.png"),
        bucket.put("c.png", PICTURE),
    ]
    outcomes = await client.upscale_all(inputs)
    assert ([True] * 3, inputs, inputs) == (
        [o.ok for o in outcomes],
        [o.source for o in outcomes],
        [o.result.source for o in outcomes if o.ok],
    )


async def test_missing_object_fails_before_any_api_call(
    client: MonicaClient, server: FakeMonicaServer, bucket: Bucket
) -> None:
    """A missing object is one StorageError naming it; nothing is sent (nor billed)."""
    with pytest.raises(StorageError) as caught:
        await client.upscale(bucket.url("absent.png"))
    assert (bucket.url("absent.png"), "read", True, 0) == (
        caught.value.url,
        caught.value.operation,
        "no such object" in str(caught.value),
        server.stats.total,
    )


async def test_missing_bucket_is_named(client: MonicaClient, bucket: Bucket) -> None:
    """An input in a bucket that does not exist fails with a StorageError."""
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-here/cat\.png"):
        await client.upscale("s3://no-such-bucket-here/cat.png")


@pytest.mark.slow
async def test_missing_credentials_say_which_variables_to_set(
    client: MonicaClient, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without credentials (and no metadata service), the error names the variables."""
    source = bucket.put("cat.png", PICTURE)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError) as caught:
        await client.upscale(source)
    assert "no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(
        caught.value
    )


async def test_input_the_credentials_may_not_read_is_refused(
    client: MonicaClient, server: FakeMonicaServer, bucket: Bucket, moto_server: MotoServer
) -> None:
    """An object the store refuses to show: 'access denied', naming the variables to check."""
    source = bucket.put("cat.png", PICTURE)
    with moto_server.auth_enforced(), pytest.raises(StorageError) as caught:
        await client.upscale(source)
    assert (True, 0) == (
        "access denied: the credentials were refused, or may not read it; check "
        "AWS_ACCESS_KEY_ID" in str(caught.value),
        server.stats.total,
    )


async def test_refused_credentials_are_reported_as_such(
    client: MonicaClient, server: FakeMonicaServer, bucket: Bucket, moto_server: MotoServer
) -> None:
    """Credentials the store does not know give 'the credentials were refused'."""
    result = await client.upscale(server.add_image(PICTURE))
    with moto_server.auth_enforced(), pytest.raises(StorageError) as caught:
        await client.download(result, bucket.url("out.png"))
    assert (True, []) == (
        "the credentials were refused (InvalidAccessKeyId)" in str(caught.value),
        bucket.keys(),
    )


async def test_presigned_query_never_appears_in_errors(
    client: MonicaClient, server: FakeMonicaServer, bucket: Bucket
) -> None:
    """A server error quoting the presigned URL is shown with the object URL instead."""
    source = bucket.put("cat.png", PICTURE)
    server.max_download_bytes = 10  # the server fails, quoting the URL it fetched
    with pytest.raises(BadRequestError) as caught:
        await client.upscale(source)
    error = caught.value
    shown = str(error) + error.message + error.body + repr(error.args)
    assert (False, True) == ("X-Amz-Signature" in shown, f"{source} (presigned)" in error.message)


async def test_presigned_query_never_appears_in_logs(
    client: MonicaClient,
    server: FakeMonicaServer,
    bucket: Bucket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Debug logs of a call with a retry name the object, never the signature."""
    from monica_async.testing import Fault

    source = bucket.put("cat.png", PICTURE)
    server.queue_faults([Fault.HTTP_503])
    with caplog.at_level(logging.DEBUG, logger="monica_async"):
        result = await client.upscale(source)
    assert (2, False, True) == (
        result.attempts,
        "X-Amz-Signature" in caplog.text,
        "retrying" in caplog.text,
    )


def test_redact_removes_every_query_string() -> None:
    """Store errors are shown without the query of any URL in them (SAS tokens, signatures)."""
    text = "GET https://acct.blob.core.windows.net/c/k.png?sv=2024&sig=SECRET failed (403)"
    assert "GET https://acct.blob.core.windows.net/c/k.png?<redacted> failed (403)" == redact(text)


# -- local files in ----------------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [False, True])
async def test_local_file_is_staged_sent_and_deleted(
    staging_client: MonicaClient,
    server: FakeMonicaServer,
    bucket: Bucket,
    tmp_path: Path,
    as_path: bool,
) -> None:
    """A local file goes through the staging prefix and is gone from it after the call."""
    file = tmp_path / "holiday photo.png"
    file.write_bytes(PICTURE)
    image = file if as_path else str(file)
    result = await staging_client.upscale(image)
    [sent] = sent_urls(server)
    staged_path = urlsplit(sent).path
    assert (str(file), (48, 32), True, []) == (
        result.source,
        size_of(await fetched(result.url)),
        staged_path.startswith(f"/{bucket.name}/tmp/")
        and staged_path.endswith("/holiday_photo.png"),
        bucket.keys("tmp/"),
    )


async def test_file_url_is_a_local_file(
    staging_client: MonicaClient, bucket: Bucket, tmp_path: Path
) -> None:
    """A file:// URL is staged like a path, and recorded as given."""
    file = tmp_path / "cat.png"
    file.write_bytes(PICTURE)
    result = await staging_client.upscale(file.as_uri())
    assert (file.as_uri(), []) == (result.source, bucket.keys("tmp/"))


async def test_staged_file_is_deleted_after_a_definitive_failure(
    staging_client: MonicaClient, bucket: Bucket, tmp_path: Path
) -> None:
    """A file the API refuses (not a picture) is still removed from the staging prefix."""
    file = tmp_path / "notes.png"
    file.write_bytes(b"not a picture at all")
    with pytest.raises(BadRequestError):
        await staging_client.upscale(file)
    assert [] == bucket.keys("tmp/")


async def test_staged_file_is_deleted_after_retries_run_out(
    staging_client: MonicaClient, server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """When every attempt fails, the staged object is removed once the call gives up."""
    from monica_async.testing import Fault

    file = tmp_path / "cat.png"
    file.write_bytes(PICTURE)
    server.queue_faults([Fault.HTTP_503, Fault.HTTP_503])
    with pytest.raises(InternalServerError):
        await staging_client.upscale(file)
    assert [] == bucket.keys("tmp/")


async def test_batch_of_files_leaves_the_staging_prefix_empty(
    staging_client: MonicaClient, bucket: Bucket, tmp_path: Path
) -> None:
    """Every file of a batch (as Path objects) is staged and cleaned up; outcomes name them."""
    files = []
    for i in range(5):
        file = tmp_path / f"p{i}.png"
        file.write_bytes(PICTURE)
        files.append(str(file))
    outcomes = await staging_client.upscale_all([Path(f) for f in files])
    assert ([True] * 5, files, []) == (
        [o.ok for o in outcomes],
        [o.source for o in outcomes],
        bucket.keys("tmp/"),
    )


@pytest.mark.parametrize("image", ["cat.png", Path("photos/cat.png"), "file:///tmp/cat.png"])
async def test_local_path_without_staging_names_the_option(
    client: MonicaClient, server: FakeMonicaServer, image: Any
) -> None:
    """Without a staging location a local path is refused, saying how to allow it."""
    with pytest.raises(InvalidRequestError) as caught:
        await client.upscale(image)
    assert (True, 0) == ("staging='s3://bucket/prefix/'" in str(caught.value), server.stats.total)


async def test_missing_local_file_is_refused_before_any_upload(
    staging_client: MonicaClient, bucket: Bucket, tmp_path: Path
) -> None:
    """A path that is not a file is an InvalidRequestError; nothing reaches the bucket."""
    with pytest.raises(InvalidRequestError, match="neither an http"):
        await staging_client.upscale(tmp_path / "absent.png")
    assert [] == bucket.keys()


async def test_staging_in_a_missing_bucket_fails_the_input(
    server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """A staging bucket that does not exist gives a StorageError; nothing is sent."""
    file = tmp_path / "cat.png"
    file.write_bytes(PICTURE)
    async with MonicaClient(
        KEY, base_url=server.base_url, staging="s3://no-such-staging-bucket/tmp/"
    ) as api:
        with pytest.raises(StorageError) as caught:
            await api.upscale(file)
    assert ("stage", True, 0) == (
        caught.value.operation,
        "'no-such-staging-bucket' does not exist" in str(caught.value),
        server.stats.total,
    )


# -- results out --------------------------------------------------------------------------------


async def test_download_writes_the_result_into_the_bucket(
    client: MonicaClient, bucket: Bucket
) -> None:
    """download(result, 's3://...') stores the image, typed, and returns the object URL."""
    result = await client.upscale(bucket.put("cat.png", PICTURE))
    target = bucket.url("out/cat@2x.png")
    written = await client.download(result, target)
    data = bucket.read("out/cat@2x.png")
    assert (target, (48, 32), "image/png", data) == (
        written,
        size_of(data),
        bucket.content_type("out/cat@2x.png"),
        await fetched(result.url),
    )


async def test_result_larger_than_a_part_is_uploaded_in_parts(
    client: MonicaClient, bucket: Bucket, loopback: Start
) -> None:
    """A result of several parts arrives whole, and no upload is left open."""
    body = png_of_size(2 * PART_SIZE + 12345)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="image/png")

    url = await loopback(handler) + "/big.png"
    await client.download(url, bucket.url("big.png"))
    assert (body, 0) == (bucket.read("big.png"), bucket.open_uploads())


@pytest.mark.parametrize("size", [1000, PART_SIZE + 1000], ids=["one-put", "multipart"])
async def test_result_cut_short_leaves_no_object(
    client: MonicaClient, bucket: Bucket, loopback: Start, size: int
) -> None:
    """A body that breaks off is retried, then fails; no object, no open upload remains."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "image/png", "Content-Length": str(size * 2)}
        )
        await response.prepare(request)
        await response.write(png_of_size(size))
        assert request.transport is not None
        request.transport.close()
        return response

    url = await loopback(handler) + "/cut.png"
    with pytest.raises(APIConnectionError) as caught:
        await client.download(url, bucket.url("cut.png"))
    assert (2, [], 0) == (caught.value.attempts, bucket.keys(), bucket.open_uploads())


@pytest.mark.parametrize("size", [1000, PART_SIZE + 1000], ids=["one-put", "multipart"])
async def test_result_that_is_no_image_leaves_no_object(
    client: MonicaClient, bucket: Bucket, loopback: Start, size: int
) -> None:
    """A body that turns out not to be an image is refused at its end; nothing is written."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"<html>" + bytes(size), content_type="text/html")

    url = await loopback(handler) + "/page"
    with pytest.raises(APIResponseValidationError, match="not an image"):
        await client.download(url, bucket.url("page.png"))
    assert ([], 0) == (bucket.keys(), bucket.open_uploads())


async def test_result_over_the_byte_limit_leaves_no_object(
    client: MonicaClient, bucket: Bucket, loopback: Start
) -> None:
    """max_bytes applies to objects too: the upload is aborted past the limit."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(png_of_size(2 * PART_SIZE))
        return response

    url = await loopback(handler) + "/huge.png"
    with pytest.raises(APIResponseValidationError, match="limit"):
        await client.download(url, bucket.url("huge.png"), max_bytes=PART_SIZE + 10)
    assert ([], 0) == (bucket.keys(), bucket.open_uploads())


async def test_denied_write_is_one_clear_error(
    client: MonicaClient, bucket: Bucket, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials that may read but not write: 'access denied', and no object."""
    result = await client.upscale(bucket.put("cat.png", PICTURE))
    for name, value in bucket.reader_credentials().items():
        monkeypatch.setenv(name, value)
    async with MonicaClient(KEY, base_url=client.base_url) as reader:
        with moto_server.auth_enforced(), pytest.raises(StorageError) as caught:
            await reader.download(result, bucket.url("out.png"))
    assert ("write", True, ["cat.png"]) == (
        caught.value.operation,
        "access denied (AccessDenied)" in str(caught.value),
        bucket.keys(),
    )


async def test_write_to_a_missing_bucket_is_named(client: MonicaClient, bucket: Bucket) -> None:
    """A result written to a bucket that does not exist: one StorageError naming it."""
    result = await client.upscale(bucket.put("cat.png", PICTURE))
    with pytest.raises(StorageError, match="'no-such-results-bucket' does not exist"):
        await client.download(result, "s3://no-such-results-bucket/out.png")


@pytest.mark.parametrize("target", ["s3://bucket/", "s3://bucket", "s3:///key.png"])
async def test_download_target_must_name_an_object(client: MonicaClient, target: str) -> None:
    """An object URL without a key (or a bucket) is refused before anything is fetched."""
    with pytest.raises(InvalidRequestError, match="path must"):
        await client.download("http://127.0.0.1:9/x.png", target)


# -- stores given by the user, configuration ------------------------------------------------


async def test_given_store_is_used_for_its_bucket(
    server: FakeMonicaServer, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store passed in ``stores`` serves its bucket, whatever the environment says."""
    from obstore.store import S3Store

    store = S3Store(
        bucket.name,
        endpoint=bucket.server.endpoint,
        access_key_id="test-key",
        secret_access_key="test-secret",
        region="us-east-1",
        client_options={"allow_http": True},
    )
    source = bucket.put("cat.png", PICTURE)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    async with MonicaClient(KEY, base_url=server.base_url, stores={bucket.url(): store}) as api:
        result = await api.upscale(source)
        await api.download(result, bucket.url("out.png"))
    assert ["cat.png", "out.png"] == bucket.keys()


async def test_given_store_rooted_at_a_prefix(server: FakeMonicaServer, bucket: Bucket) -> None:
    """A store given for a prefix URL gets keys relative to that prefix."""
    from obstore.store import S3Store

    store = S3Store(bucket.name, prefix="results")
    async with MonicaClient(
        KEY, base_url=server.base_url, stores={bucket.url("results/"): store}
    ) as api:
        result = await api.upscale(server.add_image(PICTURE))
        await api.download(result, bucket.url("results/day1/cat.png"))
    assert ["results/day1/cat.png"] == bucket.keys()


async def test_store_that_cannot_presign_is_refused_for_inputs(
    client: MonicaClient, server: FakeMonicaServer
) -> None:
    """An input in a store that cannot presign (an in-memory one) is an InvalidRequestError."""
    from obstore.store import MemoryStore

    async with MonicaClient(
        KEY, base_url=server.base_url, stores={"s3://memory": MemoryStore()}
    ) as api:
        with pytest.raises(InvalidRequestError, match="MemoryStore cannot make"):
            await api.upscale("s3://memory/cat.png")


async def test_any_store_can_receive_results(
    client: MonicaClient, server: FakeMonicaServer
) -> None:
    """Results can go to any obstore store mapped to a URL (here one in memory)."""
    import obstore
    from obstore.store import MemoryStore

    memory = MemoryStore()
    async with MonicaClient(KEY, base_url=server.base_url, stores={"gs://results": memory}) as api:
        result = await api.upscale(server.add_image(PICTURE))
        await api.download(result, "gs://results/out/cat.png")
    stored = await obstore.get_async(memory, "out/cat.png")
    assert (48, 32) == size_of(bytes(await stored.bytes_async()))


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"staging": "/tmp/staging"}, "staging must be an object URL"),
        ({"staging": "s3://"}, "staging must be an object URL"),
        ({"staging": "s3://bucket/t//mp/"}, "staging must not have empty"),
        ({"staging": "s3://bucket/t\x07/"}, "staging must not contain control characters"),
        ({"staging": 42}, "staging must be an object URL string"),
        ({"stores": ["s3://bucket"]}, "stores must map location URLs"),
        ({"stores": {"https://bucket": object()}}, "a key of stores must be an object URL"),
    ],
)
def test_invalid_storage_options_are_refused(api_key: str, kwargs: Any, says: str) -> None:
    """Invalid ``staging`` and ``stores`` fail at construction, naming the option."""
    with pytest.raises(InvalidRequestError, match=says):
        MonicaClient(**kwargs)


def test_object_urls_without_obstore_name_the_extra(
    api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without obstore, a storage option says which extra to install."""
    monkeypatch.setitem(sys.modules, "obstore", None)
    with pytest.raises(InvalidRequestError, match=r'pip install "monica-async\[storage\]"'):
        MonicaClient(staging="s3://bucket/tmp/")


async def test_object_input_without_obstore_names_the_extra(
    api_key: str, monkeypatch: pytest.MonkeyPatch, mock_http: Any
) -> None:
    """Without obstore, an object input is an InvalidRequestError naming the extra."""
    monkeypatch.setitem(sys.modules, "obstore", None)
    async with MonicaClient(base_url="https://api.test") as api:
        with pytest.raises(InvalidRequestError, match=r"monica-async\[storage\]"):
            await api.upscale("s3://bucket/cat.png")
    assert {} == mock_http.requests


def test_importing_the_library_does_not_import_obstore() -> None:
    """obstore is imported when storage is used, never by ``import monica_async``."""
    code = "import sys, monica_async, monica_async.cli; print('obstore' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False" == done.stdout.strip()


async def test_result_of_plain_url_is_unchanged(
    client: MonicaClient, server: FakeMonicaServer
) -> None:
    """A plain URL input is sent as given and recorded as given (no storage involved)."""
    url = server.add_image(PICTURE)
    result = await client.upscale(url)
    assert isinstance(result, UpscaleResult)
    assert ([url], url) == (sent_urls(server), result.source)


# -- edges: store errors, content types, clean-up failures ------------------------------------


async def test_store_that_cannot_be_configured_is_a_storage_error(
    client: MonicaClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Azure URL without an account configured: one StorageError, no network."""
    for name in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT", "AZURE_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError, match=r"opening a store for az://photos/cat\.png failed") as e:
        await client.upscale("az://photos/cat.png")
    assert (
        "no account found; set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, "
        "or with AZURE_STORAGE_SAS_TOKEN, or with a service principal (AZURE_CLIENT_ID, "
        "AZURE_CLIENT_SECRET and AZURE_TENANT_ID)" in str(e.value)
    )


@pytest.mark.parametrize(
    ("error", "operation", "says"),
    [
        (
            FileNotFoundError("Object at location k not found: <Code>NoSuchKey</Code>"),
            "read",
            "no such object (or no such bucket)",
        ),
        (FileNotFoundError("<Code>NoSuchBucket</Code>"), "read", "the bucket 'b' does not exist"),
        (
            FileNotFoundError("Object at location k not found"),
            "write",
            "the bucket 'b' does not exist",
        ),
        (RuntimeError(""), "write", "failed: RuntimeError"),
        (
            RuntimeError("Generic S3 error: boom\n\nDebug source: ..."),
            "write",
            "failed: Generic S3 error: boom",
        ),
    ],
)
def test_store_errors_are_explained(error: Exception, operation: str, says: str) -> None:
    """What a store's error means is said in one line, without its debug dump."""
    from monica_async._storage import ObjectLocation, storage_error

    message = str(storage_error(error, operation, ObjectLocation("s3://b", "k")))
    assert (True, False) == (says in message, "Debug" in message)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png"),
        (b"\xff\xd8\xff\xe0" + bytes(100), "image/jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(100), "image/webp"),
        (b"GIF89a" + bytes(100), "image/gif"),
    ],
)
async def test_object_type_comes_from_the_bytes_when_not_announced(
    client: MonicaClient, bucket: Bucket, loopback: Start, body: bytes, kind: str
) -> None:
    """A result served as application/octet-stream is stored with its image type."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/octet-stream")

    await client.download(await loopback(handler) + "/x", bucket.url("x"))
    assert kind == bucket.content_type("x")


async def test_failed_cleanup_is_logged_and_the_result_stands(
    staging_client: MonicaClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A staged object that cannot be deleted is a warning naming it; the call succeeds."""
    import obstore

    async def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("delete refused: https://store.test/k?sig=SECRET")

    monkeypatch.setattr(obstore, "delete_async", refuse)
    file = tmp_path / "cat.png"
    file.write_bytes(PICTURE)
    with caplog.at_level(logging.WARNING, logger="monica_async"):
        result = await staging_client.upscale(file)
    assert (str(file), True, False) == (
        result.source,
        "could not delete the staged object s3://" in caplog.text,
        "SECRET" in caplog.text,
    )


async def test_presign_failure_after_staging_removes_the_copy(
    staging_client: MonicaClient, bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the staged copy cannot be presigned, it is deleted and the input fails."""
    import obstore

    async def refuse(*args: object, **kwargs: object) -> str:
        raise RuntimeError("cannot sign")

    monkeypatch.setattr(obstore, "sign_async", refuse)
    file = tmp_path / "cat.png"
    file.write_bytes(PICTURE)
    with pytest.raises(StorageError, match=r"staging a file at .* failed: cannot sign"):
        await staging_client.upscale(file)
    assert [] == bucket.keys()


def test_scrub_leaves_errors_without_a_body_readable() -> None:
    """Errors without a body (a broken connection) are scrubbed too."""
    from monica_async._storage import Prepared

    secret = "http://127.0.0.1:1/b/k.png?X-Amz-Signature=abc"
    error = APIConnectionError(f"GET {secret} failed", url="https://api.test")
    Prepared(secret, "s3://b/k.png").scrub(error)
    assert ("GET s3://b/k.png (presigned) failed", ("GET s3://b/k.png (presigned) failed",)) == (
        error.message,
        error.args,
    )


async def test_file_url_of_another_host_is_refused(staging_client: MonicaClient) -> None:
    """file://host/... names another machine's file: refused before anything is uploaded."""
    with pytest.raises(InvalidRequestError, match="file URL of another host"):
        await staging_client.upscale("file://elsewhere/photos/cat.png")


async def test_longest_store_location_wins(server: FakeMonicaServer, bucket: Bucket) -> None:
    """With stores for a bucket and for a prefix in it, the prefix's store serves the prefix."""
    from obstore.store import S3Store

    stores = {bucket.url(): S3Store(bucket.name), bucket.url("results/"): S3Store(bucket.name)}
    async with MonicaClient(KEY, base_url=server.base_url, stores=stores) as api:
        result = await api.upscale(server.add_image(PICTURE))
        await api.download(result, bucket.url("results/a.png"))
        await api.download(result, bucket.url("b.png"))
    # The prefix's store is rooted at the bucket here, so its keys lose "results/".
    assert ["a.png", "b.png"] == bucket.keys()


async def test_cancelled_download_to_a_bucket_leaves_no_object(
    client: MonicaClient, bucket: Bucket, loopback: Start
) -> None:
    """Cancelled in the middle of a multipart upload: no object appears, the upload is aborted."""
    started = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(png_of_size(PART_SIZE + 1000))
        started.set()
        await asyncio.sleep(30)
        return response

    url = await loopback(handler) + "/slow.png"
    task = asyncio.create_task(client.download(url, bucket.url("slow.png")))
    await asyncio.wait_for(started.wait(), timeout=10)
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ([], 0) == (bucket.keys(), bucket.open_uploads())


# -- the download's completeness checks hold for objects too ----------------------------------


def unsized(body: bytes, content_type: str = "image/png") -> Callable[[web.Request], Any]:
    """Send *body* with neither Content-Length nor chunking, ending it by closing."""

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        request.transport.close()
        return web.Response()

    return handler


def big_png(size: int) -> bytes:
    """A real PNG of about *size* bytes (noise does not compress), ending with IEND."""
    side = int((size / 3) ** 0.5) + 1
    picture = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    picture.save(out, "PNG", compress_level=0)
    return out.getvalue()


@pytest.mark.parametrize("size", [20_000, PART_SIZE + 100_000], ids=["one-put", "multipart"])
async def test_image_cut_short_without_content_length_leaves_no_object(
    client: MonicaClient, bucket: Bucket, loopback: Start, size: int
) -> None:
    """No Content-Length and no PNG end: cut short, retried, and nothing is written."""
    url = await loopback(unsized(big_png(size)[: size // 2])) + "/x.png"
    with pytest.raises(APIConnectionError, match="cut short"):
        await client.download(url, bucket.url("x.png"))
    assert ([], 0) == (bucket.keys(), bucket.open_uploads())


@pytest.mark.parametrize("size", [20_000, PART_SIZE + 100_000], ids=["one-put", "multipart"])
async def test_whole_image_without_content_length_is_written(
    client: MonicaClient, bucket: Bucket, loopback: Start, size: int
) -> None:
    """No Content-Length, but the PNG ends where it should: the object is written whole."""
    body = big_png(size)
    await client.download(await loopback(unsized(body)) + "/x.png", bucket.url("x.png"))
    assert body == bucket.read("x.png")


async def test_small_image_only_pillow_can_vouch_for_is_decoded_first(
    client: MonicaClient, bucket: Bucket, loopback: Start
) -> None:
    """A BMP without Content-Length is decoded before its put: a cut one is refused."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, "BMP")
    bmp = out.getvalue()
    whole = await loopback(unsized(bmp, "image/bmp")) + "/whole.bmp"
    cut = await loopback(unsized(bmp[:2000], "image/bmp")) + "/cut.bmp"
    await client.download(whole, bucket.url("whole.bmp"))
    with pytest.raises(APIConnectionError, match="cut short"):
        await client.download(cut, bucket.url("cut.bmp"))
    assert (["whole.bmp"], bmp) == (bucket.keys(), bucket.read("whole.bmp"))


# -- at scale and at the edges: literal keys, no credentials, no leftovers --------------------

ODD_KEY = "dir with space/cat é.png"


async def test_key_with_spaces_and_non_ascii_is_an_input(
    client: MonicaClient, server: FakeMonicaServer, bucket: Bucket
) -> None:
    """An object whose key has spaces and an accent is read, presigned and upscaled."""
    source = bucket.put(ODD_KEY, make_sample_image(24, 16))
    result = await client.upscale(source)
    assert ((48, 32), source) == (size_of(await fetched(result.url)), result.source)


async def test_key_with_spaces_and_non_ascii_is_a_download_target(
    client: MonicaClient, server: FakeMonicaServer, bucket: Bucket
) -> None:
    """A result is written to the literal key, spaces and accent included."""
    result = await client.upscale(server.add_image(PICTURE))
    target = bucket.url("out dir/" + ODD_KEY)
    assert target == await client.download(result, target)
    assert (["out dir/" + ODD_KEY], (48, 32)) == (
        bucket.keys(),
        size_of(bucket.read("out dir/" + ODD_KEY)),
    )


async def test_staging_prefix_with_spaces_and_non_ascii(
    server: FakeMonicaServer, bucket: Bucket, tmp_path: Path, no_retry_sleep: None
) -> None:
    """A staging prefix with spaces holds the copy while it is sent, and is empty after."""
    picture = tmp_path / "my photo é.png"
    picture.write_bytes(PICTURE)
    async with MonicaClient(KEY, base_url=server.base_url, staging=bucket.url("tmp dir/é/")) as api:
        result = await api.upscale(picture)
    [sent] = sent_urls(server)
    assert (True, [], str(picture)) == (
        "/tmp%20dir/%C3%A9/" in sent,
        bucket.keys(),
        result.source,
    )


async def test_percent_encoded_key_is_another_object(client: MonicaClient, bucket: Bucket) -> None:
    """``a%20b.png`` and ``a b.png`` are two objects, each read as named."""
    encoded = bucket.put("a%20b.png", make_sample_image(10, 10))
    spaced = bucket.put("a b.png", make_sample_image(20, 20))
    sizes = [size_of(await fetched((await client.upscale(url)).url)) for url in (encoded, spaced)]
    assert [(20, 20), (40, 40)] == sizes


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3://bucket/a//b.png", "empty, '.' or '..' path segments"),
        ("s3://bucket//b.png", "empty, '.' or '..' path segments"),
        ("s3://bucket/a/./b.png", "empty, '.' or '..' path segments"),
        ("s3://bucket/a/../b.png", "empty, '.' or '..' path segments"),
        ("s3://bucket/a\tb.png", "control characters"),
        ("s3://bucket/a\x85b.png", "control characters"),
    ],
)
async def test_keys_the_store_would_change_are_refused(
    client: MonicaClient, server: FakeMonicaServer, s3_env: dict[str, str], url: str, says: str
) -> None:
    """A key obstore would refuse or rewrite is an InvalidRequestError, before any request.

    (The store, were it asked, is moto's: never another machine.)
    """
    with pytest.raises(InvalidRequestError, match=says):
        await client.upscale(url)
    with pytest.raises(InvalidRequestError, match=says):
        await client.download("http://127.0.0.1:9/x.png", url)
    assert 0 == server.stats.total


@pytest.mark.slow
async def test_batch_of_objects_without_credentials_fails_fast(
    client: MonicaClient, server: FakeMonicaServer, no_credentials: dict[str, str]
) -> None:
    """40 inputs of a store without credentials: the chain is walked once, not 40 times.

    Each input still fails with its own error, naming the variables; nothing is sent.
    (Walking the chain takes seconds: 40 walks, one after another, took 129 s.)
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    outcomes = await client.upscale_all(f"s3://no-credentials/in/{n}.png" for n in range(40))
    elapsed = loop.time() - began
    messages = {str(o.error).split(" failed: ")[1] for o in outcomes if not o.ok}
    assert (0, {f"no credentials found; set {S3_HINT}"}, 0) == (
        sum(o.ok for o in outcomes),
        messages,
        server.stats.total,
    )
    assert elapsed < 60, f"{elapsed:.1f}s: the credential chain was walked more than once"


@pytest.mark.slow
async def test_downloads_to_a_store_without_credentials_fail_fast(
    client: MonicaClient, server: FakeMonicaServer, no_credentials: dict[str, str]
) -> None:
    """Concurrent downloads into a store without credentials fail together, naming them."""
    url = server.add_image(PICTURE)
    loop = asyncio.get_running_loop()
    began = loop.time()
    results = await asyncio.gather(
        *(client.download(url, f"s3://no-credentials/out/{n}.png") for n in range(10)),
        return_exceptions=True,
    )
    elapsed = loop.time() - began
    assert [True] * 10 == [
        isinstance(r, StorageError) and f"no credentials found; set {S3_HINT}" in str(r)
        for r in results
    ]
    assert elapsed < 30, f"{elapsed:.1f}s: the credential chain was walked more than once"


async def test_cancelled_staging_aborts_its_upload(
    staging_client: MonicaClient, bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file cancelled while it goes up in parts leaves neither object nor upload."""
    from monica_async import _storage

    picture = tmp_path / "big.png"
    picture.write_bytes(png_of_size(PART_SIZE + 1000))

    async def slow_pieces(path: Path) -> AsyncIterator[bytes]:
        yield path.read_bytes()[:PART_SIZE]
        await asyncio.sleep(30)
        yield b""

    monkeypatch.setattr(_storage, "_file_pieces", slow_pieces)
    task = asyncio.create_task(staging_client.upscale(picture))
    await wait_for_upload(bucket)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ([], 0) == (bucket.keys(), bucket.open_uploads())


async def test_download_cancelled_again_while_aborting_still_aborts(
    client: MonicaClient, bucket: Bucket, loopback: Start
) -> None:
    """Two cancellations in a row: the abort is still waited for, the upload gone."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(png_of_size(PART_SIZE + 1000))
        await asyncio.sleep(30)
        return response

    url = await loopback(handler) + "/slow.png"
    task = asyncio.create_task(client.download(url, bucket.url("slow.png")))
    await wait_for_upload(bucket)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ([], 0) == (bucket.keys(), bucket.open_uploads())


async def wait_for_upload(bucket: Bucket) -> None:
    """Return once a multipart upload is open in *bucket*."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await asyncio.to_thread(bucket.open_uploads):
        assert loop.time() < deadline, "no multipart upload started"
        await asyncio.sleep(0.02)


async def test_missing_credentials_are_held_for_a_while_then_looked_for_again() -> None:
    """A store whose credential chain came up empty fails at once for a while, not forever."""
    from monica_async._storage import NO_CREDENTIALS_HOLD, _Gate

    now = asyncio.get_running_loop().time()
    held = _Gate(missing="no credentials found", missing_until=now + NO_CREDENTIALS_HOLD)
    over = _Gate(missing="no credentials found", missing_until=now - 0.001)
    assert ("no credentials found", None, None) == (
        held.why_missing(),
        over.why_missing(),
        over.missing,
    )


async def test_local_path_with_spaces_without_staging_names_the_option(
    client: MonicaClient, tmp_path: Path
) -> None:
    """A path with spaces is refused for want of a staging location, not for its spaces."""
    with pytest.raises(InvalidRequestError) as caught:
        await client.upscale(str(tmp_path / "my photo.png"))
    assert ("staging=" in str(caught.value), "must not contain" in str(caught.value)) == (
        True,
        False,
    )
