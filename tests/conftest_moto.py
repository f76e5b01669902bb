"""A real S3-protocol server on loopback (moto's server mode), for the storage tests.

Loaded with ``pytest_plugins`` by the modules that need it. Without moto the tests
skip, except under ``CI=true``, where a missing moto fails them instead.

Every test gets a bucket of its own and an environment that points the AWS
variables at the loopback server (and the instance-metadata endpoint at a loopback
port where nothing listens), so no test ever reaches another machine.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

#: Variables that could send a store to another machine or other credentials.
_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_TOKEN",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL_S3",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SKIP_SIGNATURE",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "AWS_DEFAULT_REGION",
)
#: Prefixes of the variables through which a store of another cloud finds an account
#: or credentials.
_OTHER_CLOUDS = ("GOOGLE_", "GCE_", "AZURE_", "IDENTITY_", "MSI_")
REGION = "us-east-1"
# urllib honours *_proxy variables; moto is on loopback and must be reached directly.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.frozen
class MotoServer:
    """moto's S3 server on 127.0.0.1."""

    endpoint: str

    @contextmanager
    def auth_enforced(self) -> Iterator[None]:
        """Check signatures and IAM policies inside the ``with`` (moto's default: neither)."""
        self._set_auth(b"0")
        try:
            yield
        finally:
            self._set_auth(b"inf")

    def _set_auth(self, requests_without_auth: bytes) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=requests_without_auth,
            method="POST",
            # Not a form: moto reads the raw body.
            headers={"Content-Type": "text/plain"},
        )
        with _DIRECT.open(request, timeout=10) as answer:
            answer.read()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session (each test gets its own bucket)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        reason = 'moto is not installed (pip install "moto[server]")'
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true the storage tests must run")
        pytest.skip(reason)
    # Werkzeug logs every request on stderr.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield MotoServer(f"http://{host}:{port}")
    finally:
        server.stop()


def aws_environment(
    endpoint: str, *, key: str = "test-key", secret: str = "test-secret"
) -> dict[str, str]:
    """The AWS variables that point a store (in this process or a child) at *endpoint*."""
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        # Without credentials a store asks the instance metadata service: keep it local.
        "AWS_METADATA_ENDPOINT": f"http://127.0.0.1:{_free_port()}",
    }


def credential_free_environment(home: Path) -> dict[str, str]:
    """Settings under which no store finds credentials, and none asks another machine.

    Every cloud's metadata service (where a store without credentials goes looking)
    is pointed at a loopback port where nothing listens, and ``HOME`` at *home*, so
    that no credentials file of the machine is read.
    """
    closed = f"127.0.0.1:{_free_port()}"
    return {
        "AWS_METADATA_ENDPOINT": f"http://{closed}",
        "GCE_METADATA_HOST": closed,
        "GCE_METADATA_IP": closed,
        "AZURE_MSI_ENDPOINT": f"http://{closed}/msi",
        "HOME": str(home),
    }


@pytest.fixture
def no_credentials(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """No cloud credentials in this process (the moto endpoint stays); return the variables.

    The returned variables are those a child process needs on top of an environment
    cleared of ``AWS_*`` (see ``Cli(cleared=...)``).
    """
    for name in list(os.environ):
        if name.startswith(_OTHER_CLOUDS):
            monkeypatch.delenv(name)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    env = credential_free_environment(tmp_path / "home")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    kept = {
        k: v for k, v in s3_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    return {**kept, **env}


@attrs.define
class Bucket:
    """A fresh bucket on the moto server, with helpers to look inside it."""

    server: MotoServer
    name: str
    client: Any = attrs.field(repr=False)

    def url(self, key: str = "") -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> str:
        """Store *data* at *key*; return its object URL."""
        self.client.put_object(Bucket=self.name, Key=key, Body=data, ContentType=content_type)
        return self.url(key)

    def keys(self, prefix: str = "") -> list[str]:
        """The keys of the complete objects under *prefix*, sorted."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        """The bytes of the object at *key*."""
        body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body

    def content_type(self, key: str) -> str:
        """The Content-Type stored with the object at *key*."""
        kind: str = self.client.head_object(Bucket=self.name, Key=key)["ContentType"]
        return kind

    def open_uploads(self) -> int:
        """Multipart uploads started and neither completed nor aborted."""
        return len(self.upload_keys())

    def upload_keys(self) -> list[str]:
        """The keys of the multipart uploads started and neither completed nor aborted."""
        found = self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])
        return sorted(upload["Key"] for upload in found)

    def start_upload(self, key: str) -> None:
        """Start a multipart upload of *key* and leave it open, with one part."""
        upload = self.client.create_multipart_upload(Bucket=self.name, Key=key)
        self.client.upload_part(
            Bucket=self.name, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"part"
        )

    def reader_credentials(self) -> dict[str, str]:
        """Credentials of a new IAM user that may read but not write (enforced with auth)."""
        return self.credentials_for("s3:GetObject", "s3:ListBucket")

    def credentials_for(self, *actions: str) -> dict[str, str]:
        """Credentials of a new IAM user allowed *actions* only (enforced with auth)."""
        iam = _boto_client("iam", self.server.endpoint)
        user = f"user-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }


def _boto_client(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    )


@pytest.fixture
def s3_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this process's AWS variables at the moto server; return them (for children)."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = aws_environment(moto_server.endpoint)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket(moto_server: MotoServer, s3_env: dict[str, str]) -> Bucket:
    """A bucket of its own on the moto server (its objects are left to the session's end)."""
    client = _boto_client("s3", moto_server.endpoint)
    name = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(moto_server, name, client)
