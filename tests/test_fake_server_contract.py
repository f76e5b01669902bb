"""The fake server against the published contract, with requests generated from it.

schemathesis reads ``monica_async/openapi.yaml`` and generates request bodies; the
fake runs on its own event loop in a background thread, so these tests are plain
synchronous hypothesis tests. Every request goes to 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from conftest import ServerThread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from monica_async.testing import API_PATH, FakeMonicaServer

SPEC = Path(__file__).resolve().parent.parent / "monica_async" / "openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(SPEC)
OPERATION = SCHEMA[API_PATH]["POST"]
# The same contract with the security scheme left alone: every case is about the body.
BODY_SCHEMA = schemathesis.openapi.from_path(SPEC)
BODY_SCHEMA.config.generation.update(with_security_parameters=False)
BODY_OPERATION = BODY_SCHEMA[API_PATH]["POST"]
AUTH = {"Authorization": "Bearer test-key"}
SUCCESS_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,  # nothing written into the working tree
    derandomize=True,  # the same cases on every run
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def images_server() -> Iterator[FakeMonicaServer]:
    with ServerThread(api_key="test-key") as server:
        yield server


@pytest.fixture(scope="module")
def plain_server() -> Iterator[FakeMonicaServer]:
    with ServerThread(api_key="test-key", process_images=False) as server:
        yield server


@pytest.fixture(scope="module")
def any_key_server() -> Iterator[FakeMonicaServer]:
    with ServerThread(api_key=None, process_images=False) as server:
        yield server


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment, ever
        yield session


def assert_error_body(response: schemathesis.Response) -> None:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"]
    assert body["error"]["message"]


@FUZZ
@given(case=OPERATION.as_strategy(), pick=st.integers(0, 2))
def test_generated_valid_requests_get_a_schema_valid_200(
    images_server: FakeMonicaServer,
    http: requests.Session,
    case: schemathesis.Case,
    pick: int,
) -> None:
    """Valid generated bodies (pointing at served pictures) get 200s matching the schema."""
    pictures = [
        images_server.sample_image(16, 12, "PNG"),
        images_server.sample_image(9, 20, "JPEG"),
        images_server.sample_image(5, 5, "WEBP"),
    ]
    case.body["image"] = pictures[pick]
    response = case.call(base_url=images_server.base_url, headers=AUTH, session=http)
    assert response.status_code == 200, response.text
    case.validate_response(response, checks=SUCCESS_CHECKS)
    OPERATION.validate_response(response)


@FUZZ
@given(case=OPERATION.as_strategy())
def test_generated_valid_bodies_never_get_a_500(
    plain_server: FakeMonicaServer, http: requests.Session, case: schemathesis.Case
) -> None:
    """Schema-valid bodies with arbitrary image strings get a schema-valid 200 or a 400."""
    response = case.call(base_url=plain_server.base_url, headers=AUTH, session=http)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        case.validate_response(response, checks=SUCCESS_CHECKS)
    else:
        assert_error_body(response)
        assert response.json()["error"]["code"] == "invalid_image_url"


@FUZZ
@given(case=BODY_OPERATION.as_strategy(generation_mode=GenerationMode.NEGATIVE))
def test_generated_invalid_bodies_get_400(
    plain_server: FakeMonicaServer, http: requests.Session, case: schemathesis.Case
) -> None:
    """Bodies that break the schema get a 400 with an error body, never a 500 or a 200."""
    response = case.call(base_url=plain_server.base_url, headers=AUTH, session=http)
    assert response.status_code == 400, (case.body, response.text)
    assert_error_body(response)
    case.validate_response(response, checks=[not_a_server_error, negative_data_rejection])


@FUZZ
@given(case=OPERATION.as_strategy(generation_mode=GenerationMode.NEGATIVE))
def test_generated_invalid_requests_get_4xx(
    any_key_server: FakeMonicaServer, http: requests.Session, case: schemathesis.Case
) -> None:
    """Requests that break the contract get a 4xx error body, never a 500 or a 200.

    A broken body is a 400. schemathesis also negates the security scheme (no or
    a malformed ``Authorization`` header): a 401. The server takes any bearer key
    here, so the keys schemathesis makes up for valid cases get through.
    """
    response = case.call(base_url=any_key_server.base_url, session=http)
    scheme, _, token = response.request.headers.get("Authorization", "").partition(" ")
    expected = 400 if scheme.lower() == "bearer" and token.strip() else 401
    assert response.status_code == expected, (case.body, response.text)
    assert_error_body(response)
    case.validate_response(response, checks=[not_a_server_error, negative_data_rejection])


EXAMPLES = st.one_of(OPERATION.get_strategies_from_examples())
ONCE = settings(max_examples=1, deadline=None, database=None)


@ONCE
@given(case=EXAMPLES)
def test_the_spec_example_gets_a_schema_valid_200(
    plain_server: FakeMonicaServer, http: requests.Session, case: schemathesis.Case
) -> None:
    """The request example printed in the spec is accepted (benchmark mode) with a valid body."""
    assert case.body["image"].startswith("https://monica-public-dev.s3")
    response = case.call(base_url=plain_server.base_url, headers=AUTH, session=http)
    assert response.status_code == 200
    case.validate_response(response, checks=SUCCESS_CHECKS)


@ONCE
@given(case=EXAMPLES)
def test_the_spec_example_is_refused_when_images_are_fetched(
    images_server: FakeMonicaServer, http: requests.Session, case: schemathesis.Case
) -> None:
    """With real image work the spec's S3 example URL is refused, not fetched: 400."""
    response = case.call(base_url=images_server.base_url, headers=AUTH, session=http)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "image_host_not_allowed"
