"""Schemathesis drives the real server from its own OpenAPI document: no 5xx, ever."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.openapi import openapi_document
from tests.service.conftest import Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = 60
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def operations(url: str):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_no_server_error_anywhere(server: Server):
    checked = []
    for operation in operations(server.url):

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case):
            case.call_and_validate(checks=CHECKS)

        call()
        checked.append(operation.label)
    documented = [f"{m.upper()} {p}" for p, ops in openapi_document()["paths"].items() for m in ops]
    # Schemathesis leaves out the operation that serves the schema it was loaded from.
    assert set(documented) - set(checked) == {"GET /openapi.json"}
