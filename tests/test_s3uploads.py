"""Signed requests for unfinished multipart uploads: settings and signatures, offline.

The requests themselves are tested against moto's server, with signatures checked,
in test_cli_storage.py (``--resume``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monica_async import InvalidRequestError
from monica_async._s3uploads import S3Settings

#: The credentials, bucket and time of the examples in AWS's Signature Version 4 guide
#: for S3 ("Authenticating Requests: Using the Authorization Header").
EXAMPLE = S3Settings(
    endpoint="https://examplebucket.s3.amazonaws.com",
    region="us-east-1",
    access_key_id="AKIAIOSFODNN7EXAMPLE",
    secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    virtual_hosted=True,
)
EXAMPLE_TIME = datetime(2013, 5, 24, tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "signature"),
    [
        ({"lifecycle": ""}, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        (
            {"prefix": "J", "max-keys": "2"},
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ],
    ids=["get-bucket-lifecycle", "list-objects"],
)
def test_signatures_match_aws_examples(query: dict[str, str], signature: str) -> None:
    """The signer gives the signatures of AWS's own examples (query parameters sorted)."""
    headers = EXAMPLE.signed_headers(
        "GET", EXAMPLE.bucket_url("examplebucket"), query, EXAMPLE_TIME
    )
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}"
    )


def test_session_token_is_sent_and_signed() -> None:
    """Temporary credentials add x-amz-security-token, among the signed headers."""
    settings = S3Settings(
        endpoint="", region="eu-west-1", access_key_id="a", secret_access_key="s", session_token="t"
    )
    headers = settings.signed_headers("GET", settings.bucket_url("b"), {}, EXAMPLE_TIME)
    assert ("t", True) == (
        headers["x-amz-security-token"],
        "x-amz-security-token" in headers["authorization"],
    )


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "https://s3.us-east-1.amazonaws.com/photos"),
        ({"AWS_DEFAULT_REGION": "eu-west-3"}, "https://s3.eu-west-3.amazonaws.com/photos"),
        (
            {"AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "x"},
            "https://s3.ap-south-1.amazonaws.com/photos",
        ),
        (
            {"AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true"},
            "https://photos.s3.us-east-1.amazonaws.com",
        ),
        ({"AWS_ENDPOINT_URL": "https://minio.test:9000/"}, "https://minio.test:9000/photos"),
        (
            {"AWS_ENDPOINT": "http://127.0.0.1:9", "AWS_ALLOW_HTTP": "true"},
            "http://127.0.0.1:9/photos",
        ),
    ],
)
def test_bucket_url_follows_the_environment(env: dict[str, str], url: str) -> None:
    """Region, endpoint and addressing style are read from the variables obstore reads."""
    keys = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    assert url == S3Settings.from_environment({**keys, **env}).bucket_url("photos")


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"AWS_ACCESS_KEY_ID": "a"}, "needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        (
            {
                "AWS_ACCESS_KEY_ID": "a",
                "AWS_SECRET_ACCESS_KEY": "s",
                "AWS_ENDPOINT_URL": "http://x",
            },
            "set AWS_ALLOW_HTTP=true",
        ),
    ],
)
def test_settings_that_cannot_sign_are_refused(env: dict[str, str], says: str) -> None:
    """Without static credentials, or with plain http not allowed, nothing is sent."""
    with pytest.raises(InvalidRequestError, match=says):
        S3Settings.from_environment(env)


def test_secrets_stay_out_of_the_repr() -> None:
    """The settings' repr shows neither key nor token."""
    shown = repr(
        S3Settings(
            endpoint="",
            region="r",
            access_key_id="AKID",
            secret_access_key="SECRET",
            session_token="TOK",
        )
    )
    assert ("AKID" in shown, "SECRET" in shown, "TOK" in shown) == (False, False, False)
