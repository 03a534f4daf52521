"""The ThrottlePool API: models, the generated CRD, and the operator's translation of spec and status."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from agentrun_api import crd, throttlepool
from agentrun_operator.permits.handlers import limits_from_spec
from agentrun_operator.permits.pool import PoolLimits, PoolSnapshot
from agentrun_operator.permits.settings import PermitSettings
from agentrun_operator.permits.status_writer import status_from_snapshot

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "crds" / "throttlepools.agentrun.dev.yaml"
COMMITTED_CLUSTER = REPO / "crds" / "clusterthrottlepools.agentrun.dev.yaml"
EXAMPLE = REPO / "examples" / "throttlepool.yaml"


def openapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd.build_throttlepool_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def snapshot(**overrides: Any) -> PoolSnapshot:
    values: dict[str, Any] = {
        "in_flight": 2,
        "queue_depth": 7,
        "waiting_runs": 4,
        "granted_last_minute": 58,
        "paused_for_seconds": 0.0,
        "opens_in_seconds": 0.0,
        "leases_expired_total": 0,
        "requests_per_minute": 420.0,
        "rate_decreases_total": 1,
    }
    return PoolSnapshot(**{**values, **overrides})


def test_the_committed_crd_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == crd.render_throttlepool_crd(), "run `make crds` and commit the result"


def test_writing_all_crds_writes_every_definition(tmp_path: Path) -> None:
    written = crd.write_all(tmp_path)
    assert sorted(path.name for path in written) == [
        "agentrunapprovals.agentrun.dev.yaml",
        "agentruns.agentrun.dev.yaml",
        "agentruntemplates.agentrun.dev.yaml",
        "clusterthrottlepools.agentrun.dev.yaml",
        "mcpservers.agentrun.dev.yaml",
        "throttlepools.agentrun.dev.yaml",
    ]
    assert (tmp_path / "agentruns.agentrun.dev.yaml").read_text() == crd.render_crd()
    assert (tmp_path / "throttlepools.agentrun.dev.yaml").read_text() == COMMITTED.read_text()
    assert (tmp_path / "clusterthrottlepools.agentrun.dev.yaml").read_text() == COMMITTED_CLUSTER.read_text()


def test_the_cluster_pool_crd_is_a_valid_cluster_scoped_definition_with_the_pools_schema() -> None:
    document = yaml.safe_load(COMMITTED_CLUSTER.read_text())
    kubernetes_validate.validate(document, "1.37", strict=True)
    assert document["spec"]["scope"] == "Cluster"
    assert document["spec"]["names"]["kind"] == "ClusterThrottlePool"
    namespaced = yaml.safe_load(COMMITTED.read_text())
    schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    assert schema["spec"] == namespaced["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_the_crd_is_a_valid_namespaced_custom_resource_definition() -> None:
    document = yaml.safe_load(COMMITTED.read_text())
    kubernetes_validate.validate(document, "1.37", strict=True)
    assert document["spec"]["scope"] == "Namespaced"
    assert document["spec"]["names"]["plural"] == "throttlepools"
    assert document["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_printer_columns_show_live_status_fields() -> None:
    columns = {c["name"].upper(): c for c in crd.THROTTLEPOOL_PRINTER_COLUMNS if "priority" not in c}
    assert list(columns) == ["IN-FLIGHT", "QUEUED", "RATE", "CURRENT-RPM", "AGE"]
    status_fields = set(openapi_schema()["properties"]["status"]["properties"])
    for column in columns.values():
        if column["jsonPath"].startswith(".status."):
            assert column["jsonPath"].removeprefix(".status.") in status_fields


# What the real API server makes of pools (schema, defaults, status writes): tests/integration/test_crd_admission.py.


def test_a_pool_with_limits_is_accepted_by_the_model() -> None:
    spec = {"maxRequestsInFlight": 8, "requestsPerMinute": 500, "tokensPerMinute": 200_000}
    parsed = throttlepool.ThrottlePoolSpec.model_validate(spec)
    assert (parsed.max_requests_in_flight, parsed.burst_requests, parsed.tokens_per_minute) == (8, 1, 200_000)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"requestsPerMinute": 60}, "maxRequestsInFlight"),
        ({"maxRequestsInFlight": 0, "requestsPerMinute": 60}, "maxRequestsInFlight"),
        ({"maxRequestsInFlight": 2, "requestsPerMinute": 60, "burstRequests": 0}, "burstRequests"),
        ({"maxRequestsInFlight": 2, "requestsPerMinute": 60, "tokensPerMinute": 0}, "tokensPerMinute"),
    ],
)
def test_a_bad_pool_is_refused_by_model_and_operator_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        throttlepool.ThrottlePoolSpec.model_validate(spec)
    with pytest.raises(ValueError, match=rf"spec\.{field}"):
        limits_from_spec(spec)


def test_the_example_pool_parses_with_the_models_defaults() -> None:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    assert throttlepool.ThrottlePoolSpec.model_validate(spec).burst_requests == 1
    assert limits_from_spec(spec).max_in_flight == 4


def test_the_model_refuses_a_pool_without_limits_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="requestsPerMinute"):
        throttlepool.ThrottlePoolSpec.model_validate({"maxRequestsInFlight": 2})


def test_a_status_write_of_the_operator_parses_as_the_status_model() -> None:
    written = status_from_snapshot(snapshot(paused_for_seconds=3), generation=1, now=datetime.now(UTC))
    assert throttlepool.ThrottlePoolStatus.model_validate(written).queue_depth == 7


def test_the_spec_model_is_frozen_and_rejects_unknown_fields() -> None:
    parsed = throttlepool.ThrottlePoolSpec.model_validate({"maxRequestsInFlight": 1, "requestsPerMinute": 1})
    with pytest.raises(ValidationError):
        parsed.requests_per_minute = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        throttlepool.ThrottlePoolSpec.model_validate({"maxRequestsInFlight": 1, "requestsPerMinute": 1, "rpm": 5})


def test_limits_come_from_the_spec() -> None:
    spec = {"maxRequestsInFlight": 3, "requestsPerMinute": 90, "burstRequests": 2, "tokensPerMinute": 1000}
    assert limits_from_spec(spec) == PoolLimits(
        max_in_flight=3, requests_per_minute=90, burst=2, tokens_per_minute=1000
    )


def test_status_reports_the_live_figures_in_camel_case() -> None:
    status = status_from_snapshot(snapshot(), generation=3, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert status == {
        "inFlight": 2,
        "queueDepth": 7,
        "waitingRuns": 4,
        "grantedLastMinute": 58,
        "currentRequestsPerMinute": 420,
        "throttledUntil": None,
        "accepting": True,
        "observedGeneration": 3,
    }
    assert throttlepool.ThrottlePoolStatus.model_validate(status).granted_last_minute == 58


def test_status_says_when_a_provider_penalty_ends_and_whether_the_pool_grants_yet() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, 400_000, tzinfo=UTC)
    status = status_from_snapshot(snapshot(paused_for_seconds=29.3, opens_in_seconds=4.0), generation=1, now=now)
    assert status["throttledUntil"] == "2026-01-01T12:00:30Z"
    assert status["accepting"] is False


def test_status_of_an_unchanged_pool_is_identical_between_writes() -> None:
    # Writes are skipped when nothing changed; sub-second jitter must not count as a change.
    first = status_from_snapshot(
        snapshot(paused_for_seconds=10.2), generation=1, now=datetime(2026, 1, 1, 0, 0, 0, 100_000, tzinfo=UTC)
    )
    second = status_from_snapshot(
        snapshot(paused_for_seconds=9.9), generation=1, now=datetime(2026, 1, 1, 0, 0, 0, 400_000, tzinfo=UTC)
    )
    assert first == second


def test_settings_come_from_the_environment() -> None:
    settings = PermitSettings.from_env({"AGENTRUN_PERMIT_PORT": "9000", "AGENTRUN_PERMIT_LEASE_SECONDS": "20"})
    assert (settings.port, settings.lease_seconds, settings.status_interval_seconds) == (9000, 20.0, 5.0)
    assert PermitSettings.from_env({}) == PermitSettings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTRUN_PERMIT_PORT", "http"),
        ("AGENTRUN_PERMIT_PORT", "70000"),
        ("AGENTRUN_PERMIT_LEASE_SECONDS", "soon"),
        ("AGENTRUN_PERMIT_LEASE_SECONDS", "0"),
        ("AGENTRUN_POOL_STATUS_INTERVAL_SECONDS", "-1"),
    ],
)
def test_bad_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        PermitSettings.from_env({variable: value})


def test_the_cluster_pool_example_declares_a_pool_and_grants_use_on_it() -> None:
    items = yaml.safe_load((REPO / "examples" / "clusterthrottlepool.yaml").read_text())["items"]
    pool, role, binding = items
    assert pool["kind"] == "ClusterThrottlePool"
    assert limits_from_spec(pool["spec"]).requests_per_minute == 500
    (rule,) = role["rules"]
    assert rule == {
        "apiGroups": ["agentrun.dev"],
        "resources": ["clusterthrottlepools"],
        "resourceNames": [pool["metadata"]["name"]],
        "verbs": ["use"],
    }
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
