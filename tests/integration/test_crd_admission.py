"""The CRDs as the real kube-apiserver admits them: OpenAPI validation with its wording, defaults, pruning, the CEL
rules (cross-field checks, duration bounds, immutability on update) and the status subresource, for AgentRuns
and ThrottlePools created and dry-run in a namespace of the test control plane."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentrun_api import constants
from agentrun_api.crd import build_crd
from agentrun_api.spec import AgentRunSpec
from agentrun_api.status import AgentRunStatus, Phase
from tests.harness.release_neutral import release_neutral
from tests.harness.testbed import KubeTestbed
from tests.unit.example_manifests import EXAMPLES_DIR, BadExample, agentrun_examples, bad_examples, load
from tests.unit.test_example_budgets import shown_agentruns

pytestmark = pytest.mark.integration

GROUP_VERSION = f"/apis/{constants.GROUP}/{constants.VERSION}"
MERGE = {"Content-Type": "application/merge-patch+json"}
STRICT = {"fieldValidation": "Strict"}
DRY_RUN = {**STRICT, "dryRun": "All"}
CEL_SKIPPED = (
    "<nil>",
    "Invalid value: null: some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation",
)


class Api:
    """The admin client on one namespace's AgentRuns and ThrottlePools."""

    def __init__(self, testbed: KubeTestbed, namespace: str) -> None:
        self.http: httpx.Client = testbed.admin
        self.namespace = namespace
        self.agentruns = f"{GROUP_VERSION}/namespaces/{namespace}/agentruns"
        self.throttlepools = f"{GROUP_VERSION}/namespaces/{namespace}/throttlepools"

    def create(
        self, obj: dict[str, Any], *, dry_run: bool = False, params: dict[str, str] | None = None
    ) -> httpx.Response:
        collection = self.throttlepools if obj["kind"] == "ThrottlePool" else self.agentruns
        body = copy.deepcopy(obj)
        if isinstance(body.get("metadata"), dict):
            body["metadata"].pop("namespace", None)
        chosen = params if params is not None else (DRY_RUN if dry_run else STRICT)
        return self.http.post(collection, json=body, params=chosen)

    def created(self, obj: dict[str, Any]) -> dict[str, Any]:
        answer = self.create(obj)
        assert answer.status_code == 201, answer.text
        stored: dict[str, Any] = answer.json()
        return stored

    def refused(self, obj: dict[str, Any], *, code: int = 422) -> dict[str, Any]:
        """The Status of a refused dry-run create; nothing is stored either way."""
        return status_of(self.create(obj, dry_run=True), code)

    def replace(self, obj: dict[str, Any], *, dry_run: bool = False, subresource: str = "") -> httpx.Response:
        collection = self.throttlepools if obj["kind"] == "ThrottlePool" else self.agentruns
        path = f"{collection}/{obj['metadata']['name']}{subresource}"
        return self.http.put(path, json=obj, params=DRY_RUN if dry_run else STRICT)

    def replaced(self, obj: dict[str, Any], *, subresource: str = "") -> dict[str, Any]:
        answer = self.replace(obj, subresource=subresource)
        assert answer.status_code == 200, answer.text
        stored: dict[str, Any] = answer.json()
        return stored

    def update_refused(self, obj: dict[str, Any], *, code: int = 422, subresource: str = "") -> dict[str, Any]:
        return status_of(self.replace(obj, dry_run=True, subresource=subresource), code)


def status_of(answer: httpx.Response, code: int) -> dict[str, Any]:
    assert answer.status_code == code, answer.text
    status: dict[str, Any] = answer.json()
    assert (status["kind"], status["status"], status["code"]) == ("Status", "Failure", code)
    return status


def causes(status: dict[str, Any]) -> list[tuple[str, str]]:
    return [(cause["field"], cause["message"]) for cause in status.get("details", {}).get("causes", [])]


@pytest.fixture
def api(testbed: KubeTestbed, namespace: str) -> Api:
    return Api(testbed, namespace)


def minimal() -> dict[str, Any]:
    return load(EXAMPLES_DIR / "minimal.yaml")


def with_spec(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    changed = copy.deepcopy(obj)
    changed["spec"].update(changes)
    return changed


# --- the examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", agentrun_examples(), ids=lambda p: p.stem)
def test_every_example_is_created_and_its_stored_spec_is_the_models(api: Api, path: Path) -> None:
    stored = api.created(load(path))

    spec = AgentRunSpec.model_validate(stored["spec"])
    # The CRD's defaults are the model's: the stored spec is exactly what the operator's model holds.
    assert spec.model_dump(by_alias=True, mode="json", exclude_none=True) == stored["spec"]
    assert spec.model.name == "gpt-4.1-mini"
    assert spec.max_iterations <= 10
    assert spec.model.api_key_secret_ref is not None
    assert spec.model.api_key_secret_ref.name == "openai-api-key"


def test_feature_examples_set_what_they_are_named_for(api: Api) -> None:
    assert api.created(load(EXAMPLES_DIR / "throttled.yaml"))["spec"]["throttle"]["enabled"] is True
    pvc = api.created(load(EXAMPLES_DIR / "pvc-checkpoints.yaml"))
    assert pvc["spec"]["checkpoint"]["store"] == "PersistentVolumeClaim"
    ingress = api.created(load(EXAMPLES_DIR / "streaming-ingress.yaml"))["spec"]["streaming"]["ingress"]
    assert ingress["controller"] == "gateway-api"  # a controller the operator builds a per-run route for
    assert api.created(load(EXAMPLES_DIR / "suspended.yaml"))["spec"]["suspend"] is True


@pytest.mark.parametrize("bad", bad_examples(), ids=lambda b: b.id)
def test_every_bad_example_is_refused_with_an_error_naming_its_field(api: Api, bad: BadExample) -> None:
    answer = api.create(bad.manifest, dry_run=True)

    status = answer.json()
    assert release_neutral(bad.expect) in release_neutral(status["message"])
    if answer.status_code == 400:
        # Strict decoding refuses unknown fields before validation, naming them in the message only.
        assert status["reason"] == "BadRequest"
        assert f'unknown field "{bad.field}"' in status["message"]
    else:
        assert (answer.status_code, status["reason"]) == (422, "Invalid")
        assert bad.field in {field for field, _ in causes(status)}, status


def test_a_run_still_carrying_max_concurrent_requests_is_refused_saying_it_was_removed(api: Api) -> None:
    status = api.refused(with_spec(minimal(), throttle={"enabled": True, "maxConcurrentRequests": 4}))

    assert "spec.throttle" in {field for field, _ in causes(status)}, status
    assert "throttle.maxConcurrentRequests was removed" in status["message"]
    assert "maxRequestsInFlight" in status["message"]


def test_a_run_naming_both_a_pool_and_a_cluster_pool_is_refused(api: Api) -> None:
    status = api.refused(with_spec(minimal(), throttle={"enabled": True, "pool": "team", "clusterPool": "org"}))

    assert "set either pool" in status["message"], status
    stored = api.created(with_spec(minimal(), throttle={"enabled": True, "clusterPool": "org"}))
    assert stored["spec"]["throttle"]["clusterPool"] == "org"


# --- wording -------------------------------------------------------------------------------------------


def test_an_unsupported_enum_value_lists_the_supported_values(api: Api) -> None:
    status = api.refused(with_spec(minimal(), checkpoint={"store": "Disk"}))

    assert release_neutral(status["message"]) == (
        release_neutral(
            'AgentRun.agentrun.dev "minimal" is invalid: [spec.checkpoint.store: Unsupported value: "Disk": '
            'supported values: "ConfigMap", "PersistentVolumeClaim", ' + ": ".join(CEL_SKIPPED) + "]"
        )
    )
    assert release_neutral(status["details"]["causes"][0]) == release_neutral(
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: "Disk": supported values: "ConfigMap", "PersistentVolumeClaim"',
            "field": "spec.checkpoint.store",
        }
    )


def test_one_error_is_reported_without_brackets_with_its_cause(api: Api) -> None:
    status = api.refused(with_spec(minimal(), maxIterations=100_001))

    assert status["message"] == (
        'AgentRun.agentrun.dev "minimal" is invalid: spec.maxIterations: Invalid value: 100001: '
        "spec.maxIterations in body should be less than or equal to 100000"
    )
    assert status["reason"] == "Invalid"
    assert status["details"]["kind"] == "AgentRun"
    assert status["details"]["group"] == constants.GROUP
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.maxIterations",
            "message": "Invalid value: 100001: spec.maxIterations in body should be less than or equal to 100000",
        }
    ]


def test_bounds_of_a_million_or_more_print_in_full(api: Api) -> None:
    status = api.refused(with_spec(minimal(), throttle={"requestsPerMinute": 2_000_000}))
    assert causes(status) == [
        (
            "spec.throttle.requestsPerMinute",
            "Invalid value: 2000000: spec.throttle.requestsPerMinute in body should be less than or equal to 1000000",
        )
    ]


def test_all_field_errors_are_reported_at_once(api: Api) -> None:
    obj = with_spec(minimal(), maxIterations=0, input="", throttle={"pool": "Not A Label"})
    del obj["spec"]["model"]

    status = api.refused(obj)

    found = causes(status)
    assert release_neutral(found[-1]) == release_neutral(CEL_SKIPPED)
    assert sorted(release_neutral(found)) == sorted(
        release_neutral(
            [
                ("spec.model", "Required value"),
                ("spec.input", 'Invalid value: "": spec.input in body should be at least 1 chars long'),
                (
                    "spec.maxIterations",
                    "Invalid value: 0: spec.maxIterations in body should be greater than or equal to 1",
                ),
                (
                    "spec.throttle.pool",
                    'Invalid value: "Not A Label": spec.throttle.pool in body should match '
                    "'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
                ),
                CEL_SKIPPED,
            ]
        )
    )


# --- decoding: unknown fields and nulls --------------------------------------------------------------


def test_unknown_fields_fail_strict_decoding_before_any_validation(api: Api) -> None:
    obj = with_spec(minimal(), foo=1, maxIterations=0)
    obj["spec"]["model"]["temprature"] = 0.2
    obj["metadata"]["labelz"] = {}

    status = api.refused(obj, code=400)

    assert status["reason"] == "BadRequest"
    assert release_neutral(status["message"]) == (
        release_neutral(
            'AgentRun in version "v1alpha1" cannot be handled as a AgentRun: strict decoding error: '
            'unknown field "metadata.labelz", unknown field "spec.foo", unknown field "spec.model.temprature"'
        )
    )


def test_without_strict_validation_unknown_fields_are_pruned_with_a_warning(api: Api) -> None:
    obj = with_spec(minimal(), foo=1, tools={"workspace": False, "shell": True})

    answer = api.create(obj, params={})

    assert answer.status_code == 201, answer.text
    stored = answer.json()
    assert "foo" not in stored["spec"]
    assert stored["spec"]["tools"] == {"workspace": False, "callTimeout": "60s", "mcp": [], "http": []}
    warnings = answer.headers.get_list("warning")
    assert any('unknown field \\"spec.foo\\"' in w or 'unknown field "spec.foo"' in w for w in warnings), warnings


def test_a_null_field_is_pruned_so_its_default_applies(api: Api) -> None:
    stored = api.created(with_spec(minimal(), progressDeadline=None, tokenBudget=None))

    assert stored["spec"]["progressDeadline"] == "10m"
    assert "tokenBudget" not in stored["spec"]


# --- defaulting ----------------------------------------------------------------------------------------


def test_defaults_are_stored_and_applied_before_the_rules_run(api: Api) -> None:
    stored = api.created(minimal())

    model = stored["spec"]["model"]
    assert (model["baseURL"], model["requestTimeout"], model["maxRetries"], model["stream"]) == (
        "https://api.openai.com/v1",
        "120s",
        2,
        False,
    )
    assert (stored["spec"]["suspend"], stored["spec"]["cancel"]) == (False, False)
    # default: {} creates the absent object, then its own fields default.
    assert stored["spec"]["throttle"] == {
        "enabled": False,
        "pool": "default",
        "requestsPerMinute": 60,
        "maxSecondsToWaitInQueue": 60,
    }
    assert stored["spec"]["runner"] == {
        "resources": {"requests": {}, "limits": {}},
        "nodeSelector": {},
        "tolerations": [],
        "imagePullSecrets": [],
    }
    # The checkpoint rule sees the defaulted store: a PVC size with no store named is refused.
    status = api.refused(with_spec(minimal(), checkpoint={"size": "1Gi"}))
    assert release_neutral(causes(status)) == release_neutral(
        [("spec.checkpoint", "Invalid value: storageClassName and size apply only when store is PersistentVolumeClaim")]
    )


# --- durations: the pattern and the CEL bounds -----------------------------------------------------------


@pytest.mark.parametrize("duration", ["1s", "90s", "1h30m", "1.5h", "168h"])
def test_durations_within_the_bounds_are_accepted(api: Api, duration: str) -> None:
    answer = api.create(with_spec(minimal(), maxExecutionTime=duration), dry_run=True)
    assert answer.status_code == 201, answer.text
    assert answer.json()["spec"]["maxExecutionTime"] == duration


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        ("169h", 'Invalid value: "169h": must be at most 168h'),
        ("168.5h", 'Invalid value: "168.5h": must be at most 168h'),
        ("500ms", 'Invalid value: "500ms": must be at least 1s'),
    ],
)
def test_durations_out_of_bounds_are_refused_by_the_cel_rules(api: Api, duration: str, message: str) -> None:
    status = api.refused(with_spec(minimal(), maxExecutionTime=duration))
    assert release_neutral(causes(status)) == release_neutral([("spec.maxExecutionTime", message)])


@pytest.mark.parametrize("duration", ["ten minutes", "5d", "-5m", "1h 30m"])
def test_a_value_that_is_not_a_duration_gets_only_the_pattern_error(api: Api, duration: str) -> None:
    # The bounds rules are guarded by the pattern: without the guard, duration() fails to convert the value
    # (or converts a negative one) and each bound adds an error of its own that says nothing new.
    status = api.refused(with_spec(minimal(), maxExecutionTime=duration))

    assert release_neutral(causes(status)) == release_neutral(
        [
            (
                "spec.maxExecutionTime",
                f'Invalid value: "{duration}": spec.maxExecutionTime in body should match '
                "'^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$'",
            )
        ]
    )


def test_every_duration_field_guards_its_bounds_rules_with_its_pattern(api: Api) -> None:
    bad = with_spec(
        minimal(),
        model={"name": "gpt-4.1-mini", "requestTimeout": "two minutes"},
        streaming={"heartbeatInterval": "often"},
        tools={"callTimeout": "1 minute"},
        progressDeadline="10 min",
    )

    found = causes(api.refused(bad))

    assert release_neutral(sorted(field for field, _ in found)) == release_neutral(
        [
            "spec.model.requestTimeout",
            "spec.progressDeadline",
            "spec.streaming.heartbeatInterval",
            "spec.tools.callTimeout",
        ]
    )
    assert all("should match" in message for _, message in found), found


# --- types ---------------------------------------------------------------------------------------------


def test_integer_and_number_are_told_apart(api: Api) -> None:
    assert api.create(with_spec(minimal(), model={"name": "m", "temperature": 1}), dry_run=True).status_code == 201
    whole = api.create(with_spec(minimal(), maxIterations=3.0), dry_run=True)
    assert whole.status_code == 201, whole.text
    assert whole.json()["spec"]["maxIterations"] == 3

    status = api.refused(with_spec(minimal(), maxIterations=2.5, suspend="yes"))

    found = causes(status)
    assert release_neutral(
        (
            "spec.maxIterations",
            'Invalid value: "number": spec.maxIterations in body must be of type integer: "number"',
        )
    ) in release_neutral(found)
    assert release_neutral(
        ("spec.suspend", 'Invalid value: "string": spec.suspend in body must be of type boolean: "string"')
    ) in release_neutral(found)
    assert release_neutral(found[-1]) == release_neutral(CEL_SKIPPED)


# --- updates: the run-defining spec is immutable -------------------------------------------------------


def test_changing_max_iterations_after_create_is_refused_as_immutable(api: Api) -> None:
    old = api.created(minimal())

    status = api.update_refused(with_spec(old, maxIterations=20))

    assert release_neutral(status["message"]) == (
        release_neutral(
            'AgentRun.agentrun.dev "minimal" is invalid: spec.maxIterations: Invalid value: 20: '
            "maxIterations is immutable; create a new AgentRun to change it"
        )
    )
    # A merge patch is refused alike.
    patched = api.http.patch(f"{api.agentruns}/minimal", json={"spec": {"maxIterations": 6}}, headers=MERGE)
    assert release_neutral(causes(status_of(patched, 422))) == release_neutral(
        [("spec.maxIterations", "Invalid value: 6: maxIterations is immutable; create a new AgentRun to change it")]
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input": "Something else."}, "input"),
        ({"model": {"name": "gpt-4.1"}}, "model"),
        ({"maxExecutionTime": "6m"}, "maxExecutionTime"),
        ({"progressDeadline": "20m"}, "progressDeadline"),
        ({"throttle": {"enabled": True}}, "throttle"),
    ],
)
def test_each_run_defining_field_is_immutable(api: Api, change: dict[str, Any], field: str) -> None:
    old = api.created(minimal())

    found = causes(api.update_refused(with_spec(old, **change)))

    assert release_neutral([f for f, _ in found]) == release_neutral([f"spec.{field}"])
    assert found[0][1].endswith(f"{field} is immutable; create a new AgentRun to change it")


def test_adding_an_optional_field_after_create_is_refused(api: Api) -> None:
    old = api.created(minimal())
    assert release_neutral(causes(api.update_refused(with_spec(old, tokenBudget=5000)))) == release_neutral(
        [
            (
                "spec",
                "Invalid value: tokenBudget, approvals, completionWebhook, ttlSecondsAfterFinished "
                "cannot be added or removed after creation",
            )
        ]
    )


def test_suspend_may_be_set_and_cleared_after_create(api: Api) -> None:
    old = api.created(minimal())
    suspended = api.replaced(with_spec(old, suspend=True))
    resumed = api.replaced(with_spec(suspended, suspend=False))
    assert (suspended["spec"]["suspend"], resumed["spec"]["suspend"]) == (True, False)


def test_cancel_may_be_set_but_never_undone(api: Api) -> None:
    # cancel's rule reads oldSelf: at create there is none, so cancel: false is accepted as is.
    old = api.created(minimal())
    assert old["spec"]["cancel"] is False
    cancelled = api.replaced(with_spec(old, cancel=True))

    status = api.update_refused(with_spec(cancelled, cancel=False))

    assert release_neutral(causes(status)) == release_neutral(
        [("spec.cancel", "Invalid value: false: cancel cannot be undone once set")]
    )


# --- status: only through the status subresource ----------------------------------------------------------


def full_status() -> dict[str, Any]:
    status = AgentRunStatus.model_validate(
        {
            "phase": "Running",
            "iteration": 3,
            "progress": "3/10",
            "startTime": "2026-01-01T00:00:00Z",
            "lastCheckpoint": {"iteration": 3, "time": "2026-01-01T00:01:00Z", "bytes": 120},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Running", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ],
            "budget": {"worstCaseSeconds": 100, "maxExecutionSeconds": 300, "fits": True, "activeDeadlineSeconds": 360},
        }
    )
    dumped = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert isinstance(dumped, dict)
    return dumped


def test_the_main_resource_ignores_status_on_create_and_update(api: Api) -> None:
    obj = minimal()
    obj["status"] = {"phase": "Succeeded"}
    stored = api.created(obj)
    assert "status" not in stored

    with_status = api.replaced({**stored, "status": full_status()}, subresource="/status")
    update = with_spec(with_status, suspend=True)
    update["status"] = {"phase": "Bogus"}

    assert api.replaced(update)["status"] == with_status["status"]


def test_a_status_the_model_writes_is_admitted_on_the_status_subresource(api: Api) -> None:
    old = api.created(minimal())

    stored = api.replaced({**old, "status": full_status()}, subresource="/status")

    assert stored["status"]["phase"] == "Running"
    assert stored["spec"] == old["spec"]
    assert AgentRunStatus.model_validate(stored["status"]).phase is Phase.RUNNING


def test_the_status_subresource_ignores_spec_changes(api: Api) -> None:
    old = api.created(minimal())
    obj = with_spec(old, maxIterations=99)
    obj["status"] = {"phase": "Pending"}

    stored = api.replaced(obj, subresource="/status")

    assert stored["spec"]["maxIterations"] == old["spec"]["maxIterations"]
    assert stored["status"]["phase"] == "Pending"


def test_status_is_validated_against_the_status_schema(api: Api) -> None:
    old = api.created(minimal())
    bad = {**old, "status": {"phase": "Bogus", "iteration": -1, "usage": {"totalTokens": "many"}}}

    found = causes(api.update_refused(bad, subresource="/status"))

    # The schema's errors come in no fixed order (the API server walks maps); the CEL note comes last.
    (phase,) = [message for field, message in found if field == "status.phase"]
    assert phase.startswith('Unsupported value: "Bogus": supported values: "Pending", "Running"')
    assert release_neutral(
        ("status.iteration", "Invalid value: -1: iteration in body should be greater than or equal to 0")
    ) in release_neutral(found)
    assert release_neutral(
        (
            "status.usage.totalTokens",
            'Invalid value: "string": usage.totalTokens in body must be of type integer: "string"',
        )
    ) in release_neutral(found)


def test_status_times_must_be_rfc3339(api: Api) -> None:
    created = api.created(minimal())
    old = api.replaced({**created, "status": {"startTime": "2026-01-01T00:00:00.123456+02:00"}}, subresource="/status")
    assert old["status"]["startTime"] == "2026-01-01T00:00:00.123456+02:00"

    bad = {**old, "status": {"startTime": "yesterday", "completionTime": "2026-13-01T00:00:00Z"}}
    found = causes(api.update_refused(bad, subresource="/status"))

    assert release_neutral(found[-1]) == release_neutral(CEL_SKIPPED)
    assert sorted(release_neutral(found)) == release_neutral(
        [
            CEL_SKIPPED,
            (
                "status.completionTime",
                'Invalid value: "2026-13-01T00:00:00Z": completionTime in body must be of type date-time: '
                '"2026-13-01T00:00:00Z"',
            ),
            (
                "status.startTime",
                'Invalid value: "yesterday": startTime in body must be of type date-time: "yesterday"',
            ),
        ]
    )


def test_unknown_status_fields_fail_strict_decoding(api: Api) -> None:
    old = api.created(minimal())

    status = api.update_refused({**old, "status": {"secretKey": "x"}}, code=400, subresource="/status")

    assert status["reason"] == "BadRequest"
    assert release_neutral('strict decoding error: unknown field "status.secretKey"') in release_neutral(
        status["message"]
    )


def test_status_fields_outside_the_schema_are_pruned_without_strict_validation(api: Api) -> None:
    api.created(minimal())
    patch = {"status": {"phase": "Running", "kopf": {"progress": {}}}}

    answer = api.http.patch(f"{api.agentruns}/minimal/status", json=patch, headers=MERGE)

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"]["phase"] == "Running"
    assert "kopf" not in answer.json()["status"]


# --- a property over the model's bounds ----------------------------------------------------------------------


def bounded_integers(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], int, int]]:
    """Every integer field of the spec schema with both bounds (outside lists and maps)."""
    for name, sub in schema.get("properties", {}).items():
        if sub.get("type") == "integer" and "minimum" in sub and "maximum" in sub:
            yield (*path, name), int(sub["minimum"]), int(sub["maximum"])
        elif sub.get("type") == "object":
            yield from bounded_integers(sub, (*path, name))


SPEC_SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
BOUNDED = list(bounded_integers(SPEC_SCHEMA))
# Every part of the spec that holds a bounded integer, with the required fields of the optional parts.
FULL_SPEC: dict[str, Any] = {
    "instructions": "Be brief.",
    "input": "Say hi.",
    "model": {"name": "m"},
    "maxExecutionTime": "5m",
    "maxIterations": 1,
    "throttle": {},
    "retries": {},
    "tools": {"httpFetch": {"allowedHosts": ["example.com"]}},
    "completionWebhook": {"url": "https://hooks.example.com/x", "signingKeySecretRef": {"name": "s", "key": "k"}},
}


def set_at(spec: dict[str, Any], path: tuple[str, ...], value: int) -> None:
    node = spec
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec = copy.deepcopy(FULL_SPEC)
    for path, low, high in BOUNDED:
        if draw(st.booleans()):
            set_at(spec, path, draw(st.integers(low, high)))
    output = spec["model"].get("maxOutputTokens")
    if output is not None and "tokenBudget" in spec:
        spec["tokenBudget"] = max(spec["tokenBudget"], output)
    return spec


def test_the_property_covers_the_bounded_integers_of_the_spec() -> None:
    assert {".".join(p) for p, _, _ in BOUNDED} >= {
        "maxIterations",
        "tokenBudget",
        "model.maxOutputTokens",
        "throttle.requestsPerMinute",
        "retries.maxRestarts",
        "completionWebhook.maxAttempts",
    }


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=valid_specs(), which=st.sampled_from(BOUNDED), above=st.booleans())
def test_specs_within_the_bounds_are_admitted_and_one_field_out_of_bounds_is_refused_by_name(
    api: Api, spec: dict[str, Any], which: tuple[tuple[str, ...], int, int], above: bool
) -> None:
    obj = {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "metadata": {"name": "p"}, "spec": spec}
    answer = api.create(obj, dry_run=True)
    assert answer.status_code == 201, answer.text
    admitted = answer.json()["spec"]
    model = AgentRunSpec.model_validate(admitted)
    assert model.model_dump(by_alias=True, mode="json", exclude_none=True) == admitted

    path, low, high = which
    broken = copy.deepcopy(obj)
    set_at(broken["spec"], path, high + 1 if above else low - 1)
    field = "spec." + ".".join(path)

    bound_errors = [message for at, message in causes(api.refused(broken)) if at == field]
    assert bound_errors, field
    expected_words = "less than or equal to" if above else "greater than or equal to"
    assert expected_words in bound_errors[0]
    with pytest.raises(ValidationError, match=path[-1]):
        AgentRunSpec.model_validate(broken["spec"])


# --- ThrottlePools ---------------------------------------------------------------------------------------------

THROTTLEPOOL_EXAMPLE = EXAMPLES_DIR / "throttlepool.yaml"


def pool(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "ThrottlePool",
        "metadata": {"name": "openai-org"},
        "spec": spec,
    }


def test_a_pool_with_limits_is_accepted(api: Api) -> None:
    stored = api.created(pool({"maxRequestsInFlight": 8, "requestsPerMinute": 500, "tokensPerMinute": 200_000}))
    assert stored["spec"] == {
        "maxRequestsInFlight": 8,
        "requestsPerMinute": 500,
        "burstRequests": 1,
        "tokensPerMinute": 200_000,
    }


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        ({"requestsPerMinute": 60}, ("spec.maxRequestsInFlight", "Required value")),
        ({"maxRequestsInFlight": 2}, ("spec.requestsPerMinute", "Required value")),
        (
            {"maxRequestsInFlight": 0, "requestsPerMinute": 60},
            (
                "spec.maxRequestsInFlight",
                "Invalid value: 0: spec.maxRequestsInFlight in body should be greater than or equal to 1",
            ),
        ),
        (
            {"maxRequestsInFlight": 2, "requestsPerMinute": 60, "burstRequests": 0},
            ("spec.burstRequests", "Invalid value: 0: spec.burstRequests in body should be greater than or equal to 1"),
        ),
        (
            {"maxRequestsInFlight": 2, "requestsPerMinute": 60, "tokensPerMinute": 0},
            (
                "spec.tokensPerMinute",
                "Invalid value: 0: spec.tokensPerMinute in body should be greater than or equal to 1",
            ),
        ),
    ],
)
def test_a_bad_pool_is_refused_naming_the_field(api: Api, spec: dict[str, Any], cause: tuple[str, str]) -> None:
    assert release_neutral(causes(api.refused(pool(spec)))) == release_neutral([cause])


def test_the_example_pool_is_created_with_its_defaults(api: Api) -> None:
    from agentrun_operator.permits.handlers import limits_from_spec

    stored = api.created(load(THROTTLEPOOL_EXAMPLE))

    assert stored["spec"]["burstRequests"] == 1  # the default, filled in by the API server
    assert limits_from_spec(stored["spec"]).max_in_flight == 4


def test_the_operators_status_write_of_a_pool_is_admitted(api: Api) -> None:
    from datetime import UTC, datetime

    from agentrun_operator.permits.pool import PoolSnapshot
    from agentrun_operator.permits.status_writer import status_from_snapshot

    stored = api.created(load(THROTTLEPOOL_EXAMPLE))
    snapshot = PoolSnapshot(
        in_flight=2,
        queue_depth=7,
        waiting_runs=4,
        granted_last_minute=58,
        paused_for_seconds=3.0,
        opens_in_seconds=0.0,
        leases_expired_total=0,
        requests_per_minute=420.0,
        rate_decreases_total=1,
    )
    status = status_from_snapshot(snapshot, generation=1, now=datetime.now(UTC))

    written = api.replaced({**stored, "status": status}, subresource="/status")

    assert written["status"]["queueDepth"] == 7
    assert written["status"]["grantedLastMinute"] == 58
    assert written["status"]["throttledUntil"] == status["throttledUntil"]


# --- the chart's first run -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "manifest"), shown_agentruns(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_agentrun_shown_in_the_docs_and_notes_is_accepted(api: Api, where: str, manifest: dict[str, Any]) -> None:
    answer = api.create(manifest, dry_run=True)
    assert answer.status_code == 201, f"{where}: {answer.text}"


def test_the_first_run_in_the_charts_notes_is_accepted(api: Api) -> None:
    # The chart's CRDs are copies of crds/, which the testbed installs (tests/unit/test_chart.py keeps them equal).
    from tests.harness.chart import notes

    manifest = re.search(r"<<'YAML'\n(.*?)\nYAML\n", notes(), re.DOTALL)
    assert manifest is not None
    run = yaml.safe_load(manifest.group(1))

    answer = api.create(run, dry_run=True)

    assert answer.status_code == 201, answer.text
