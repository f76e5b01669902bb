"""Unfinished multipart uploads in an S3 bucket: listed and aborted.

obstore has no call for either, and botocore, which has them, would add a large
dependency to the ``storage`` extra for two requests; so these two are made here, signed
with AWS
Signature Version 4 (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-authenticating-requests.html)
from the same environment variables obstore's stores are built from: static credentials
only (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), the
region (``AWS_REGION``, ``AWS_DEFAULT_REGION``), the endpoint (``AWS_ENDPOINT_URL``,
``AWS_ENDPOINT``), ``AWS_ALLOW_HTTP`` and ``AWS_VIRTUAL_HOSTED_STYLE_REQUEST``.
Credentials from an instance role or a web identity are not looked up.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp
import attrs
import yarl

from ._exceptions import InvalidRequestError, excerpt
from ._http import EnvProxies

__all__ = ["S3Settings", "Upload", "abort_upload", "list_uploads"]

#: SHA-256 of an empty body: every request here has none.
_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
_TIMEOUT: Final = aiohttp.ClientTimeout(total=60)
_TRUE: Final = frozenset({"1", "true", "yes", "on"})


def _quote(text: str) -> str:
    """Percent-encode all but the characters RFC 3986 leaves unreserved, as SigV4 wants."""
    return quote(text, safe="-_.~")


@attrs.frozen
class Upload:
    """An unfinished multipart upload: the object it is for, and its id."""

    key: str
    upload_id: str


@attrs.frozen
class S3Settings:
    """Where a bucket is and how to sign requests to it."""

    endpoint: str
    region: str
    access_key_id: str = attrs.field(repr=False)
    secret_access_key: str = attrs.field(repr=False)
    session_token: str | None = attrs.field(default=None, repr=False)
    virtual_hosted: bool = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Read the settings as obstore reads them.

        Raises:
            InvalidRequestError: No static credentials, or a plain-http endpoint
                without ``AWS_ALLOW_HTTP``.
        """
        env = os.environ if environ is None else environ
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise InvalidRequestError(
                "listing unfinished uploads needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(credentials of an instance role or a web identity are not looked up)"
            )
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT") or ""
        if endpoint.startswith("http://") and env.get("AWS_ALLOW_HTTP", "").lower() not in _TRUE:
            raise InvalidRequestError(
                f"the endpoint {endpoint!r} is plain http: set AWS_ALLOW_HTTP=true to use it"
            )
        return cls(
            endpoint=endpoint.rstrip("/"),
            region=region,
            access_key_id=key,
            secret_access_key=secret,
            session_token=env.get("AWS_SESSION_TOKEN") or env.get("AWS_TOKEN") or None,
            virtual_hosted=env.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() in _TRUE,
        )

    def bucket_url(self, bucket: str) -> str:
        """The URL of *bucket*'s root, path-style unless virtual-hosted requests are asked for."""
        if self.virtual_hosted:
            # A custom endpoint is then the bucket's own, as obstore takes it.
            return self.endpoint or f"https://{bucket}.s3.{self.region}.amazonaws.com"
        root = self.endpoint or f"https://s3.{self.region}.amazonaws.com"
        return f"{root}/{_quote(bucket)}"

    def signed_headers(
        self, method: str, url: str, query: Mapping[str, str], now: datetime
    ) -> dict[str, str]:
        """The headers that authenticate *method* on *url* (its path already encoded)."""
        parts = urlsplit(url)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        headers = {
            "host": parts.netloc,
            "x-amz-content-sha256": _EMPTY_SHA256,
            "x-amz-date": stamp,
        }
        if self.session_token:
            headers["x-amz-security-token"] = self.session_token
        names = sorted(headers)
        canonical = "\n".join(
            [
                method,
                parts.path or "/",
                "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items())),
                "".join(f"{name}:{headers[name]}\n" for name in names),
                ";".join(names),
                _EMPTY_SHA256,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}"
        key = f"AWS4{self.secret_access_key}".encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return headers


class S3RequestError(Exception):
    """A listing or an abort was refused; the message says by whom and why."""


async def _send(
    session: aiohttp.ClientSession,
    settings: S3Settings,
    method: str,
    url: str,
    query: Mapping[str, str],
) -> bytes:
    headers = settings.signed_headers(method, url, query, datetime.now(UTC))
    target = url + "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
    proxy = EnvProxies.from_environment().for_url(url)
    async with session.request(
        method, yarl.URL(target, encoded=True), headers=headers, timeout=_TIMEOUT, proxy=proxy
    ) as response:
        body = await response.read()
        if response.status >= 300:
            raise S3RequestError(f"{method} answered HTTP {response.status}{_reason(body)}")
        return body


def _reason(body: bytes) -> str:
    """``" (Code): Message"`` from an S3 error body, or an excerpt of whatever it is."""
    try:
        error = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        text = body.decode("utf-8", "replace").strip()
        return f": {excerpt(text, 200)}" if text else ""
    code, message = error.findtext("{*}Code"), error.findtext("{*}Message")
    return f" ({code}): {excerpt(message or '', 200)}" if code else ""


async def list_uploads(
    session: aiohttp.ClientSession, settings: S3Settings, bucket: str, prefix: str
) -> list[Upload]:
    """The unfinished multipart uploads of objects whose keys start with *prefix*.

    Raises:
        S3RequestError: The store refused.
        aiohttp.ClientError: The store could not be reached.
    """
    found: list[Upload] = []
    query = {"uploads": "", "prefix": prefix}
    while True:
        body = await _send(session, settings, "GET", settings.bucket_url(bucket), query)
        root = ElementTree.fromstring(body)
        for upload in root.iterfind("{*}Upload"):
            key, upload_id = upload.findtext("{*}Key"), upload.findtext("{*}UploadId")
            if key is not None and upload_id:
                found.append(Upload(key, upload_id))
        if (root.findtext("{*}IsTruncated") or "").lower() != "true":
            return found
        query = {
            "uploads": "",
            "prefix": prefix,
            "key-marker": root.findtext("{*}NextKeyMarker") or "",
            "upload-id-marker": root.findtext("{*}NextUploadIdMarker") or "",
        }


async def abort_upload(
    session: aiohttp.ClientSession, settings: S3Settings, bucket: str, upload: Upload
) -> None:
    """Abort *upload*: its parts are deleted.

    Raises:
        S3RequestError: The store refused.
        aiohttp.ClientError: The store could not be reached.
    """
    path = "/".join(_quote(segment) for segment in upload.key.split("/"))
    url = f"{settings.bucket_url(bucket)}/{path}"
    await _send(session, settings, "DELETE", url, {"uploadId": upload.upload_id})
