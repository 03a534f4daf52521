"""Admission of AgentRuns as kube-apiserver does it: defaulting, schema validation, CEL rules, wording."""

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentrun_api.admission import (
    INVALID,
    AdmissionError,
    CrdAdmission,
    FieldError,
    load_agentrun_admission,
    parse_go_duration_nanos,
)
from agentrun_api.crd import build_crd
from agentrun_api.spec import AgentRunSpec
from agentrun_api.status import AgentRunStatus, Phase
from tests.unit.example_manifests import EXAMPLES_DIR, BadExample, agentrun_examples, bad_examples, load

pytestmark = pytest.mark.unit

ADMISSION = load_agentrun_admission()
CEL_SKIPPED = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
    "correct the existing errors to complete validation"
)


def rejection(obj: dict[str, Any], old: dict[str, Any] | None = None) -> AdmissionError:
    with pytest.raises(AdmissionError) as caught:
        ADMISSION.admit(obj, old)
    return caught.value


def created(path: Path = EXAMPLES_DIR / "minimal.yaml") -> dict[str, Any]:
    return ADMISSION.admit(load(path))


def with_spec(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    changed = copy.deepcopy(obj)
    changed["spec"].update(changes)
    return changed


# --- the examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", agentrun_examples(), ids=lambda p: p.stem)
def test_every_example_is_admitted_and_its_defaulted_spec_parses_as_the_model(path: Path) -> None:
    admitted = ADMISSION.admit(load(path))

    spec = AgentRunSpec.model_validate(admitted["spec"])
    # The CRD's defaults are the model's: the stored spec is exactly what the operator's model holds.
    assert spec.model_dump(by_alias=True, mode="json", exclude_none=True) == admitted["spec"]
    assert spec.model.name == "gpt-4.1-mini"
    assert spec.max_iterations <= 10
    assert spec.model.api_key_secret_ref is not None
    assert spec.model.api_key_secret_ref.name == "openai-api-key"


def test_examples_cover_each_feature_and_the_secret_holds_only_a_placeholder() -> None:
    names = {p.stem for p in agentrun_examples()}
    assert names == {"minimal", "throttled", "pvc-checkpoints", "streaming-ingress", "suspended"}
    secret = load(EXAMPLES_DIR / "secret.yaml")
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == "openai-api-key"
    assert secret["stringData"] == {"api-key": "sk-replace-me"}


def test_feature_examples_set_what_they_are_named_for() -> None:
    assert created(EXAMPLES_DIR / "throttled.yaml")["spec"]["throttle"]["enabled"] is True
    assert created(EXAMPLES_DIR / "pvc-checkpoints.yaml")["spec"]["checkpoint"]["store"] == "PersistentVolumeClaim"
    ingress = created(EXAMPLES_DIR / "streaming-ingress.yaml")["spec"]["streaming"]["ingress"]
    assert ingress["controller"] == "ingress-nginx"
    assert created(EXAMPLES_DIR / "suspended.yaml")["spec"]["suspend"] is True


@pytest.mark.parametrize("bad", bad_examples(), ids=lambda b: b.id)
def test_every_bad_example_is_rejected_with_an_error_naming_its_field(bad: BadExample) -> None:
    error = rejection(bad.manifest)

    assert bad.expect in str(error)
    assert bad.field in {e.path for e in error.errors}, error.errors


def test_bad_examples_cover_the_mistakes_users_make() -> None:
    assert {b.id for b in bad_examples()} == {
        "wrong-type",
        "negative-time",
        "unknown-field",
        "zero-iterations",
        "long-model-name",
        "size-with-configmap-store",
        "output-over-token-budget",
    }


# --- wording, as kube-apiserver words it -------------------------------------------------------------


def test_field_errors_are_worded_as_kube_apiserver_words_them() -> None:
    assert (
        str(
            FieldError(
                "spec.maxIterations", INVALID, "spec.maxIterations in body should be greater than or equal to 1", 0
            )
        )
        == "spec.maxIterations: Invalid value: 0: spec.maxIterations in body should be greater than or equal to 1"
    )
    assert str(FieldError("spec.model", "Required value")) == "spec.model: Required value"
    assert (
        str(FieldError("spec.model.name", "Too long", "may not be more than 256 bytes", "x" * 300))
        == "spec.model.name: Too long: may not be more than 256 bytes"
    )
    assert str(FieldError("spec.foo", "unknown field")) == 'unknown field "spec.foo"'
    assert str(FieldError("", INVALID, "x", None)) == '<nil>: Invalid value: "null": x'


def test_unsupported_enum_value_lists_the_supported_values() -> None:
    obj = with_spec(created(), checkpoint={"store": "Disk"})
    assert str(rejection(obj)) == (
        'AgentRun.agentrun.dev "minimal" is invalid: [spec.checkpoint.store: Unsupported value: "Disk": '
        'supported values: "ConfigMap", "PersistentVolumeClaim", ' + CEL_SKIPPED + "]"
    )


def test_one_error_is_reported_without_brackets_and_carries_a_status_with_causes() -> None:
    error = rejection(with_spec(created(), maxIterations=100_001))

    assert str(error) == (
        'AgentRun.agentrun.dev "minimal" is invalid: spec.maxIterations: Invalid value: 100001: '
        "spec.maxIterations in body should be less than or equal to 100000"
    )
    status = error.to_status()
    assert (status["code"], status["reason"]) == (422, "Invalid")
    assert status["details"]["kind"] == "AgentRun"
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.maxIterations",
            "message": "Invalid value: 100001: spec.maxIterations in body should be less than or equal to 100000",
        }
    ]


def test_bounds_of_a_million_or_more_print_in_gos_exponent_form() -> None:
    obj = with_spec(created(), throttle={"requestsPerMinute": 2_000_000})
    assert "spec.throttle.requestsPerMinute in body should be less than or equal to 1e+06" in str(rejection(obj))


def test_all_field_errors_are_reported_at_once() -> None:
    obj = with_spec(created(), maxIterations=0, input="", throttle={"pool": "Not A Label"})
    del obj["spec"]["model"]

    error = rejection(obj)

    assert [str(e) for e in error.errors] == [
        "spec.model: Required value",
        'spec.input: Invalid value: "": spec.input in body should be at least 1 chars long',
        "spec.maxIterations: Invalid value: 0: spec.maxIterations in body should be greater than or equal to 1",
        'spec.throttle.pool: Invalid value: "Not A Label": spec.throttle.pool in body should match '
        "'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        CEL_SKIPPED,
    ]


# --- decoding: unknown fields and nulls --------------------------------------------------------------


def test_unknown_fields_fail_strict_decoding_before_any_validation() -> None:
    obj = with_spec(created(), foo=1, maxIterations=0)
    obj["spec"]["model"]["temprature"] = 0.2
    obj["metadata"]["labelz"] = {}

    error = rejection(obj)

    assert error.code == 400
    assert str(error) == (
        'AgentRun in version "v1alpha1" cannot be handled as a AgentRun: strict decoding error: '
        'unknown field "metadata.labelz", unknown field "spec.foo", unknown field "spec.model.temprature"'
    )


def test_without_strict_validation_unknown_fields_are_pruned() -> None:
    obj = with_spec(load(EXAMPLES_DIR / "minimal.yaml"), foo=1, tools={"workspace": False, "shell": True})

    admitted = ADMISSION.admit(obj, strict=False)

    assert "foo" not in admitted["spec"]
    assert admitted["spec"]["tools"] == {"workspace": False, "callTimeout": "60s"}


def test_null_field_is_pruned_so_its_default_applies() -> None:
    obj = with_spec(load(EXAMPLES_DIR / "minimal.yaml"), progressDeadline=None, tokenBudget=None)

    admitted = ADMISSION.admit(obj)

    assert admitted["spec"]["progressDeadline"] == "10m"
    assert "tokenBudget" not in admitted["spec"]


# --- defaulting ----------------------------------------------------------------------------------------


def test_defaults_are_applied_before_validation() -> None:
    admitted = created()

    model = admitted["spec"]["model"]
    assert (model["baseURL"], model["requestTimeout"], model["maxRetries"], model["stream"]) == (
        "https://api.openai.com/v1",
        "120s",
        2,
        False,
    )
    assert (admitted["spec"]["suspend"], admitted["spec"]["cancel"]) == (False, False)
    # default: {} creates the absent object, then its own fields default.
    assert admitted["spec"]["throttle"] == {
        "enabled": False,
        "pool": "default",
        "maxConcurrentRequests": 4,
        "requestsPerMinute": 60,
        "maxSecondsToWaitInQueue": 60,
    }
    assert admitted["spec"]["runner"] == {
        "resources": {"requests": {}, "limits": {}},
        "nodeSelector": {},
        "tolerations": [],
    }
    # The checkpoint rule sees the defaulted store: a PVC size with no store named is refused.
    obj = with_spec(load(EXAMPLES_DIR / "minimal.yaml"), checkpoint={"size": "1Gi"})
    assert rejection(obj).errors == [
        FieldError(
            "spec.checkpoint",
            INVALID,
            "storageClassName and size apply only when store is PersistentVolumeClaim",
            "object",
        )
    ]


def test_admit_leaves_its_input_untouched() -> None:
    obj = load(EXAMPLES_DIR / "minimal.yaml")
    before = copy.deepcopy(obj)
    ADMISSION.admit(obj)
    assert obj == before


SMALL_CRD: dict[str, Any] = {
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {
                                        "type": "object",
                                        "default": {},
                                        "properties": {
                                            "ratio": {"type": "number", "default": 1},
                                            "count": {"type": "integer", "default": 3},
                                        },
                                        "x-kubernetes-validations": [
                                            {"rule": "self.ratio * 2.0 >= 1.0"},
                                            {"rule": "self.count >= oldSelf.count", "message": "count may only grow"},
                                        ],
                                    },
                                    "labels": {
                                        "type": "object",
                                        "additionalProperties": {
                                            "type": "string",
                                            "x-kubernetes-validations": [{"rule": "self == oldSelf"}],
                                        },
                                    },
                                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                    "closed": {"type": "object"},
                                    "divisor": {
                                        "type": "integer",
                                        "x-kubernetes-validations": [{"rule": "10 / self > 1"}],
                                    },
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def test_object_default_lets_children_default_and_number_fields_are_doubles_in_cel() -> None:
    widgets = CrdAdmission.from_crd(SMALL_CRD)

    admitted = widgets.admit({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}})

    assert admitted["spec"] == {"size": {"ratio": 1, "count": 3}}


def test_preserve_unknown_fields_keeps_what_a_structural_schema_would_prune() -> None:
    widgets = CrdAdmission.from_crd(SMALL_CRD)
    obj = {"metadata": {"name": "w"}, "spec": {"free": {"any": {"thing": 1}}, "closed": {"gone": True}}}

    admitted = widgets.admit(obj, strict=False)

    assert admitted["spec"]["free"] == {"any": {"thing": 1}}
    assert admitted["spec"]["closed"] == {}
    with pytest.raises(AdmissionError, match="strict decoding error"):
        widgets.admit(obj)


def test_a_crd_without_rules_reports_no_skipped_rules() -> None:
    crd = copy.deepcopy(SMALL_CRD)
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name in ("size", "labels", "divisor"):
        del spec_schema["properties"][name]
    spec_schema["required"] = ["free"]

    with pytest.raises(AdmissionError) as caught:
        CrdAdmission.from_crd(crd).admit({"metadata": {"name": "w"}, "spec": {}})

    assert str(caught.value) == 'Widget.example.com "w" is invalid: spec.free: Required value'


def test_transition_rules_run_only_where_an_old_value_exists() -> None:
    widgets = CrdAdmission.from_crd(SMALL_CRD)
    old = widgets.admit({"metadata": {"name": "w"}, "spec": {"size": {"count": 5}, "labels": {"a": "1"}}})

    # A new map key has no old value: its transition rule is skipped; a changed key's rule runs.
    widgets.admit({"metadata": {"name": "w"}, "spec": {"size": {"count": 6}, "labels": {"a": "1", "b": "2"}}}, old)
    with pytest.raises(AdmissionError) as caught:
        widgets.admit({"metadata": {"name": "w"}, "spec": {"size": {"count": 4}, "labels": {"a": "9"}}}, old)

    assert [str(e) for e in caught.value.errors] == [
        'spec.size: Invalid value: "object": count may only grow',
        'spec.labels[a]: Invalid value: "string": failed rule: self == oldSelf',
    ]


def test_a_cel_evaluation_error_is_reported_at_the_nodes_path() -> None:
    widgets = CrdAdmission.from_crd(SMALL_CRD)

    with pytest.raises(AdmissionError) as caught:
        widgets.admit({"metadata": {"name": "w"}, "spec": {"divisor": 0}})

    assert [str(e) for e in caught.value.errors] == [
        'spec.divisor: Invalid value: "integer": division by zero evaluating rule: 10 / self > 1'
    ]


# --- durations in CEL, as Kubernetes' duration() parses them ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("1h30m", 5400), ("1.5h", 5400), ("500ms", 0.5), ("-5m", -300), ("0", 0)]
)
def test_go_durations_parse_as_kubernetes_cel_does(text: str, seconds: float) -> None:
    assert parse_go_duration_nanos(text) == round(seconds * 1e9)


@pytest.mark.parametrize("text", ["5d", "ten", "", "h", "1h 30m"])
def test_durations_kubernetes_cel_refuses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="time: invalid duration"):
        parse_go_duration_nanos(text)


def test_duration_bounds_are_checked_by_the_cel_rules() -> None:
    assert created(EXAMPLES_DIR / "minimal.yaml")["spec"]["maxExecutionTime"] == "30m"
    ADMISSION.admit(with_spec(load(EXAMPLES_DIR / "minimal.yaml"), maxExecutionTime="1h30m"))

    too_long = rejection(with_spec(load(EXAMPLES_DIR / "minimal.yaml"), maxExecutionTime="169h"))
    too_short = rejection(with_spec(load(EXAMPLES_DIR / "minimal.yaml"), maxExecutionTime="500ms"))
    fraction_too_long = rejection(with_spec(load(EXAMPLES_DIR / "minimal.yaml"), maxExecutionTime="168.5h"))

    assert [str(e) for e in too_long.errors] == ['spec.maxExecutionTime: Invalid value: "string": must be at most 168h']
    assert [str(e) for e in too_short.errors] == ['spec.maxExecutionTime: Invalid value: "string": must be at least 1s']
    assert [str(e) for e in fraction_too_long.errors] == [
        'spec.maxExecutionTime: Invalid value: "string": must be at most 168h'
    ]


@pytest.mark.parametrize("text", ["ten minutes", "5d", "-5m", "1h 30m"])
def test_a_value_that_is_not_a_duration_gets_only_the_pattern_error(text: str) -> None:
    # The bounds rules are guarded by the pattern: without the guard, duration() fails to convert the
    # value (or converts a negative one) and each bound adds an error of its own that says nothing new.
    error = rejection(with_spec(load(EXAMPLES_DIR / "minimal.yaml"), maxExecutionTime=text))

    assert [e.path for e in error.errors] == ["spec.maxExecutionTime"], error.errors
    assert str(error.errors[0]).startswith(
        f'spec.maxExecutionTime: Invalid value: "{text}": spec.maxExecutionTime in body should match'
    )


def test_every_duration_field_guards_its_bounds_rules_with_its_pattern() -> None:
    bad = with_spec(
        load(EXAMPLES_DIR / "minimal.yaml"),
        model={"name": "gpt-4.1-mini", "requestTimeout": "two minutes"},
        streaming={"heartbeatInterval": "often"},
        tools={"callTimeout": "1 minute"},
        progressDeadline="10 min",
    )
    error = rejection(bad)

    assert sorted(e.path for e in error.errors) == [
        "spec.model.requestTimeout",
        "spec.progressDeadline",
        "spec.streaming.heartbeatInterval",
        "spec.tools.callTimeout",
    ]
    assert all("should match" in e.detail for e in error.errors), error.errors


# --- types ---------------------------------------------------------------------------------------------


def test_integer_and_number_are_told_apart() -> None:
    ADMISSION.admit(with_spec(load(EXAMPLES_DIR / "minimal.yaml"), model={"name": "m", "temperature": 1}))
    ADMISSION.admit(with_spec(load(EXAMPLES_DIR / "minimal.yaml"), maxIterations=3.0))

    error = rejection(with_spec(load(EXAMPLES_DIR / "minimal.yaml"), maxIterations=2.5, suspend="yes"))

    assert [str(e) for e in error.errors] == [
        'spec.maxIterations: Invalid value: "number": spec.maxIterations in body must be of type integer: "number"',
        'spec.suspend: Invalid value: "string": spec.suspend in body must be of type boolean: "string"',
        CEL_SKIPPED,
    ]


def number_crd(schema: dict[str, Any]) -> CrdAdmission:
    crd = copy.deepcopy(SMALL_CRD)
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
        "type": "object",
        "properties": {"n": schema},
    }
    return CrdAdmission.from_crd(crd)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "spec.n: Invalid value: 0: spec.n in body should be greater than 0"),
        (0.3, "spec.n: Invalid value: 0.3: spec.n in body should be a multiple of 0.25"),
        (1.25, "spec.n: Invalid value: 1.25: spec.n in body should be less than or equal to 1"),
    ],
)
def test_exclusive_bounds_and_multiples_are_checked(value: float, message: str) -> None:
    numbers = number_crd({"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "multipleOf": 0.25})
    numbers.admit({"metadata": {"name": "w"}, "spec": {"n": 0.75}})

    with pytest.raises(AdmissionError) as caught:
        numbers.admit({"metadata": {"name": "w"}, "spec": {"n": value}})

    assert [str(e) for e in caught.value.errors] == [message]


# --- metadata ------------------------------------------------------------------------------------------


def test_metadata_name_is_required_and_must_be_a_dns_subdomain() -> None:
    nameless = load(EXAMPLES_DIR / "minimal.yaml")
    nameless["metadata"] = {}
    assert "metadata.name: Required value: name or generateName is required" in str(rejection(nameless))

    ADMISSION.admit({**nameless, "metadata": {"generateName": "run-"}})
    del nameless["metadata"]
    assert [str(e) for e in rejection(nameless).errors] == [
        "metadata.name: Required value: name or generateName is required",
        CEL_SKIPPED,
    ]

    upper = load(EXAMPLES_DIR / "minimal.yaml")
    upper["metadata"]["name"] = "Q3"
    assert str(rejection(upper).errors[0]).startswith(
        'metadata.name: Invalid value: "Q3": a lowercase RFC 1123 subdomain must consist of'
    )
    long_name = load(EXAMPLES_DIR / "minimal.yaml")
    long_name["metadata"]["name"] = "a" * 254
    assert "must be no more than 253 characters" in str(rejection(long_name))


# --- updates: the run-defining spec is immutable -------------------------------------------------------


def test_changing_max_iterations_after_create_is_refused_as_immutable() -> None:
    old = created()

    error = rejection(with_spec(old, maxIterations=20), old)

    assert str(error) == (
        'AgentRun.agentrun.dev "minimal" is invalid: spec.maxIterations: Invalid value: "integer": '
        "maxIterations is immutable; create a new AgentRun to change it"
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input": "Something else."}, "spec.input"),
        ({"model": {"name": "gpt-4.1"}}, "spec.model"),
        ({"maxExecutionTime": "6m"}, "spec.maxExecutionTime"),
        ({"progressDeadline": "20m"}, "spec.progressDeadline"),
    ],
)
def test_each_run_defining_field_is_immutable(change: dict[str, Any], field: str) -> None:
    old = created()
    assert field in {e.path for e in rejection(with_spec(old, **change), old).errors}


def test_adding_an_optional_field_after_create_is_refused() -> None:
    old = created()
    assert [str(e) for e in rejection(with_spec(old, tokenBudget=5000), old).errors] == [
        'spec: Invalid value: "object": tokenBudget, completionWebhook, ttlSecondsAfterFinished '
        "cannot be added or removed after creation"
    ]


def test_suspend_may_be_set_and_cleared_after_create() -> None:
    old = created()
    suspended = ADMISSION.admit(with_spec(old, suspend=True), old)
    resumed = ADMISSION.admit(with_spec(suspended, suspend=False), suspended)
    assert (suspended["spec"]["suspend"], resumed["spec"]["suspend"]) == (True, False)


def test_cancel_may_be_set_but_never_undone() -> None:
    old = created()
    cancelled = ADMISSION.admit(with_spec(old, cancel=True), old)

    error = rejection(with_spec(cancelled, cancel=False), cancelled)

    assert [str(e) for e in error.errors] == ['spec.cancel: Invalid value: "boolean": cancel cannot be undone once set']


def test_transition_rules_do_not_run_at_create() -> None:
    # cancel's rule reads oldSelf: on create there is none, so cancel: false is accepted as is.
    assert created()["spec"]["cancel"] is False


def test_an_old_object_stored_without_defaults_is_compared_as_read_with_them() -> None:
    # Stored before a default existed: the API server defaults on read, so an update that now carries
    # the default is no change to an immutable field.
    stored = created()
    del stored["spec"]["throttle"]
    del stored["spec"]["model"]["requestTimeout"]

    updated = ADMISSION.admit(with_spec(created(), suspend=True), stored)

    assert updated["spec"]["throttle"]["pool"] == "default"


def test_renaming_is_refused() -> None:
    old = created()
    renamed = copy.deepcopy(old)
    renamed["metadata"]["name"] = "other"
    assert 'metadata.name: Invalid value: "other": field is immutable' in str(rejection(renamed, old))


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


def test_the_main_resource_ignores_status_on_create_and_update() -> None:
    obj = load(EXAMPLES_DIR / "minimal.yaml")
    obj["status"] = {"phase": "Succeeded"}
    stored = ADMISSION.admit(obj)
    assert "status" not in stored

    with_status = ADMISSION.admit_status({"status": full_status()}, stored)
    update = with_spec(with_status, suspend=True)
    update["status"] = {"phase": "Bogus"}

    assert ADMISSION.admit(update, with_status)["status"] == with_status["status"]


def test_a_status_the_model_writes_is_admitted_on_the_status_subresource() -> None:
    old = created()

    stored = ADMISSION.admit_status({"status": full_status()}, old)

    assert stored["status"]["phase"] == "Running"
    assert stored["spec"] == old["spec"]
    assert AgentRunStatus.model_validate(stored["status"]).phase is Phase.RUNNING


def test_status_subresource_ignores_spec_changes() -> None:
    old = created()
    obj = with_spec(old, maxIterations=99)
    obj["status"] = {"phase": "Pending"}

    stored = ADMISSION.admit_status(obj, old)

    assert stored["spec"]["maxIterations"] == old["spec"]["maxIterations"]
    assert stored["status"]["phase"] == "Pending"


def test_status_is_validated_against_the_status_schema() -> None:
    old = created()
    with pytest.raises(AdmissionError) as caught:
        ADMISSION.admit_status({"status": {"phase": "Bogus", "iteration": -1, "usage": {"totalTokens": "many"}}}, old)

    messages = [str(e) for e in caught.value.errors]
    assert messages[0].startswith('status.phase: Unsupported value: "Bogus": supported values: "Pending", "Running"')
    assert (
        "status.iteration: Invalid value: -1: status.iteration in body should be greater than or equal to 0" in messages
    )
    assert (
        'status.usage.totalTokens: Invalid value: "string": status.usage.totalTokens in body must be of type integer: "string"'
        in messages
    )


def test_status_times_must_be_rfc3339() -> None:
    old = created()
    ADMISSION.admit_status({"status": {"startTime": "2026-01-01T00:00:00.123456+02:00"}}, old)

    with pytest.raises(AdmissionError) as caught:
        ADMISSION.admit_status({"status": {"startTime": "yesterday", "completionTime": "2026-13-01T00:00:00Z"}}, old)

    assert [str(e) for e in caught.value.errors] == [
        'status.startTime: Invalid value: "yesterday": status.startTime in body must be of type date-time: "yesterday"',
        'status.completionTime: Invalid value: "2026-13-01T00:00:00Z": status.completionTime in body must be of '
        'type date-time: "2026-13-01T00:00:00Z"',
        CEL_SKIPPED,
    ]


def test_unknown_status_fields_fail_strict_decoding() -> None:
    with pytest.raises(AdmissionError) as caught:
        ADMISSION.admit_status({"status": {"secretKey": "x"}}, created())
    assert caught.value.code == 400
    assert caught.value.errors == [FieldError("status.secretKey", "unknown field")]


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
        "throttle.maxConcurrentRequests",
        "retries.maxRestarts",
        "completionWebhook.maxAttempts",
    }


@settings(max_examples=50, deadline=None)
@given(spec=valid_specs(), which=st.sampled_from(BOUNDED), above=st.booleans())
def test_specs_within_the_bounds_are_admitted_and_one_field_out_of_bounds_is_refused_by_name(
    spec: dict[str, Any], which: tuple[tuple[str, ...], int, int], above: bool
) -> None:
    obj = {"apiVersion": "agentrun.dev/v1alpha1", "kind": "AgentRun", "metadata": {"name": "p"}, "spec": spec}
    admitted = ADMISSION.admit(obj)
    model = AgentRunSpec.model_validate(admitted["spec"])
    assert model.model_dump(by_alias=True, mode="json", exclude_none=True) == admitted["spec"]

    path, low, high = which
    broken = copy.deepcopy(obj)
    set_at(broken["spec"], path, high + 1 if above else low - 1)
    field = "spec." + ".".join(path)

    with pytest.raises(AdmissionError) as caught:
        ADMISSION.admit(broken)
    bound_errors = [e for e in caught.value.errors if e.path == field]
    assert bound_errors, caught.value.errors
    expected_words = "less than or equal to" if above else "greater than or equal to"
    assert expected_words in bound_errors[0].detail
    with pytest.raises(ValidationError, match=path[-1]):
        AgentRunSpec.model_validate(broken["spec"])


def test_the_committed_examples_parse_as_yaml_documents() -> None:
    for path in EXAMPLES_DIR.rglob("*.yaml"):
        assert len(list(yaml.safe_load_all(path.read_text()))) == 1, path
