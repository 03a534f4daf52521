"""The runs API against its own OpenAPI document, fuzzed by schemathesis (property-based, on hypothesis) against
the live gateway on the real control plane: every answer's status, headers and body must be what the document
says, no input may cause a server error, and input the document forbids must be refused."""

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from agentrun_gateway.runs_openapi import OPENAPI_PATH
from tests.harness.runs_api import RunsApi, create_template, runs_api
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

RUN = {
    "instructions": "You are a careful research assistant.",
    "model": {"name": "gpt-4.1-mini", "baseURL": "http://127.0.0.1:9/v1"},
    "maxExecutionTime": "5m",
    "maxIterations": 5,
}


class LiveApi:
    """The gateway served from a thread of its own: schemathesis calls it with blocking requests."""

    def __init__(self, api: RunsApi, namespace: str, key: str) -> None:
        self.api = api
        self.namespace = namespace
        self.key = key


@pytest.fixture(scope="module")
def live_api(testbed: KubeTestbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    namespace = testbed.create_namespace("runs-api-schema")
    create_template(testbed, namespace, "research", RUN, ["maxIterations"])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="runs-api", daemon=True)
    thread.start()
    serving = runs_api(testbed, [namespace], tmp_path_factory.mktemp("runs-api-schema"), burst_runs_per_caller=10_000)
    try:
        api = asyncio.run_coroutine_threadsafe(serving.__aenter__(), loop).result(60)
        yield LiveApi(api, namespace, api.new_api_key(namespace))
        asyncio.run_coroutine_threadsafe(serving.__aexit__(None, None, None), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        testbed.delete_namespace(namespace)


def test_the_runs_api_keeps_its_openapi_document(live_api: LiveApi) -> None:
    """Each operation of the served document, fuzzed with schemathesis's strategies and all its checks (driven
    from hypothesis directly: schemathesis's own pytest plugin predates this pytest)."""
    document = httpx.get(live_api.api.base_url + OPENAPI_PATH, timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {live_api.key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def keeps_the_document(case: Any) -> None:
            # Inside the caller's own namespace, where answers depend on the request; elsewhere every one is 404.
            if "namespace" in (case.path_parameters or {}):
                case.path_parameters["namespace"] = live_api.namespace
            # Not positive_data_acceptance: whether a schema-valid submission is accepted depends on state no
            # document can state (which templates exist, what each allows, a spec's cross-field rules); 422 then.
            case.call_and_validate(
                base_url=live_api.api.base_url, headers=headers, excluded_checks=[positive_data_acceptance]
            )

        keeps_the_document()


def test_the_document_is_served_without_credentials(live_api: LiveApi) -> None:
    answer = httpx.get(live_api.api.base_url + OPENAPI_PATH, timeout=10)
    assert answer.status_code == 200
    assert set(answer.json()["paths"]) == {
        "/v1/namespaces/{namespace}/runs",
        "/v1/namespaces/{namespace}/runs/{id}",
        "/v1/namespaces/{namespace}/runs/{id}/cancel",
        "/v1/namespaces/{namespace}/runs/{id}/events",
        "/v1/namespaces/{namespace}/runs/{id}/approvals/{call}/approve",
        "/v1/namespaces/{namespace}/runs/{id}/approvals/{call}/deny",
        "/v1/responses",
        "/v1/responses/{id}",
        "/v1/responses/{id}/cancel",
    }
