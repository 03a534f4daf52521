"""Bad AgentRuns through the API: each is rejected at admission with a message naming the field, or the
operator gives it a phase and a reason naming the field. Never an operator crash, never another run
disturbed. Ends with property-based fuzzing of the spec (hypothesis) against admission plus operator."""

import asyncio
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import kubernetes
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.runs import assert_result, condition, kubectl, needs_scripted_model
from tests.harness.agentruns import agent_run, agentruns_path, wait_for_end, wait_for_status
from tests.harness.local_cluster import LocalCluster
from tests.harness.nodeagent.kube import namespaced_path

pytestmark = pytest.mark.e2e

KNOWN_PHASES = {"Pending", "Running", "Suspended", "Succeeded", "Failed", "TimedOut", "Cancelled"}


def with_field(run: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``run`` with the dotted ``path`` under spec set to ``value`` (intermediate maps created)."""
    changed = copy.deepcopy(run)
    node = changed["spec"]
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return changed


# (what is wrong, field path under spec, bad value, text the rejection must contain, kubectl verb)
REJECTED_AT_ADMISSION: list[tuple[str, str, Any, str, str]] = [
    ("a string where an integer belongs", "maxIterations", "ten", "spec.maxIterations", "apply"),
    ("a negative limit", "maxIterations", -1, "spec.maxIterations", "apply"),
    ("a negative restart count", "retries.maxRestarts", -3, "spec.retries.maxRestarts", "apply"),
    ("a number where a duration belongs", "maxExecutionTime", 90, "spec.maxExecutionTime", "apply"),
    ("a duration past its maximum", "maxExecutionTime", "400h", "spec.maxExecutionTime", "apply"),
    ("an instruction of 70,000 characters", "instructions", "x" * 70_000, "spec.instructions", "apply"),
    # `apply` would first trip over its own last-applied annotation (256 KiB), as on a real cluster.
    ("an input of 300,000 characters", "input", "y" * 300_000, "spec.input", "create"),
    ("an unknown field", "maxIteration", 5, "maxIteration", "apply"),
    ("an unknown nested field", "model.apiKey", "sk-inline", "apiKey", "apply"),
    ("an object where a string belongs", "model.name", {"nested": True}, "spec.model.name", "apply"),
    ("a storage class with the ConfigMap store", "checkpoint.storageClassName", "fast", "storageClassName", "apply"),
]


async def test_malformed_runs_are_rejected_by_kubectl_apply_naming_the_field(cluster):
    base = agent_run("malformed", cluster)
    for problem, path, value, named, verb in REJECTED_AT_ADMISSION:
        code, out, err = await kubectl(cluster, verb, "-f", "-", stdin=json.dumps(with_field(base, path, value)))
        assert code != 0, (problem, out)
        assert named in err, (problem, err[:2000])
        assert "Traceback" not in err
    code, out, err = await kubectl(cluster, "get", "agentruns", "-o", "name")
    assert code == 0, err
    assert out.strip() == ""  # nothing half-created
    await assert_operator_healthy(cluster)


async def assert_operator_healthy(cluster: LocalCluster) -> None:
    assert cluster.operator.running(), cluster.operator.log()[-3000:]
    async with aiohttp.ClientSession() as session:
        url = cluster.operator.health_url
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            assert response.status == 200
    assert "Traceback" not in cluster.operator.log(), cluster.operator.log()[-5000:]


async def test_runs_naming_a_missing_secret_or_storage_class_wait_with_a_reason_while_others_succeed(cluster, kube):
    needs_scripted_model(cluster)
    await kube.create(agentruns_path(cluster.namespace), agent_run("good", cluster, streaming={"enabled": False}))
    no_secret = agent_run("no-secret", cluster)
    no_secret["spec"]["model"]["apiKeySecretRef"] = {"name": "nowhere", "key": "api-key"}
    await kube.create(agentruns_path(cluster.namespace), no_secret)
    await kube.create(
        agentruns_path(cluster.namespace),
        agent_run("no-class", cluster, checkpoint={"store": "PersistentVolumeClaim", "storageClassName": "gold"}),
    )

    def not_accepted(reason: str) -> Callable[[dict[str, Any]], bool]:
        def accept(status: dict[str, Any]) -> bool:
            accepted = condition(status, "Accepted")
            return accepted is not None and accepted["status"] == "False" and accepted["reason"] == reason

        return accept

    missing_secret = await wait_for_status(kube, "no-secret", not_accepted("SecretNotFound"), "SecretNotFound")
    message = condition(missing_secret, "Accepted")["message"]
    assert "spec.model.apiKeySecretRef" in message
    assert "nowhere" in message
    missing_class = await wait_for_status(kube, "no-class", not_accepted("StorageClassNotFound"), "no StorageClass")
    assert "spec.checkpoint.storageClassName" in condition(missing_class, "Accepted")["message"]

    good = await wait_for_end(kube, "good")
    assert good["phase"] == "Succeeded", good
    assert_result(good)
    for name in ("no-secret", "no-class"):
        assert await kube.get(namespaced_path("batch/v1", "jobs", cluster.namespace, f"{name}-runner")) is None
    await assert_operator_healthy(cluster)


async def test_a_run_waiting_for_its_secret_starts_once_the_secret_exists(cluster, kube):
    needs_scripted_model(cluster)
    run = agent_run("late-secret", cluster, streaming={"enabled": False})
    run["spec"]["model"]["apiKeySecretRef"] = {"name": "late-key", "key": "api-key"}
    await kube.create(agentruns_path(cluster.namespace), run)
    await wait_for_status(
        kube, "late-secret", lambda s: (condition(s, "Accepted") or {}).get("reason") == "SecretNotFound", "waiting"
    )
    await cluster.create_model_secret("late-key", "api-key")
    status = await wait_for_end(kube, "late-secret")
    assert status["phase"] == "Succeeded", status


# Spec fuzzing: a valid, suspended spec (no runner process, so each example costs one reconcile) with one
# to three fields replaced by values drawn from the field's domain and its neighbourhood.
ANY_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
DURATIONS = st.one_of(
    st.sampled_from(["90s", "30m", "2h", "1h30m"]),
    st.sampled_from(["0s", "1s", "168h", "169h", "-5m", "5", "1d", ""]),
    ANY_SCALAR,
)
NAMES = st.one_of(st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z"), st.text(max_size=30), ANY_SCALAR)
# Each field's strategy lists valid values first, so most drawn specs are valid in most fields.
MUTATIONS: dict[str, st.SearchStrategy[Any]] = {
    "maxIterations": st.one_of(st.integers(1, 100), st.integers(-10, 200_000), ANY_SCALAR),
    "maxExecutionTime": DURATIONS,
    "progressDeadline": DURATIONS,
    "tokenBudget": st.one_of(st.integers(-5, 2_000_000_000), ANY_SCALAR),
    "instructions": st.one_of(st.text(max_size=50), st.integers(60_000, 70_000).map(lambda n: "i" * n)),
    "model.name": st.one_of(st.text(max_size=300), ANY_SCALAR),
    "model.baseURL": st.one_of(st.sampled_from(["http://127.0.0.1:9/v1", "ftp://x", "https://"]), st.text(max_size=40)),
    "model.requestTimeout": DURATIONS,
    "model.maxRetries": st.one_of(st.integers(0, 10), st.integers(-3, 20), ANY_SCALAR),
    "model.maxOutputTokens": st.one_of(st.integers(-1, 2_000_000), ANY_SCALAR),
    "model.temperature": st.one_of(st.floats(-1, 3, allow_nan=False), ANY_SCALAR),
    "model.apiKeySecretRef": st.one_of(
        st.fixed_dictionaries({"name": st.sampled_from(["model-key", "absent-key"]), "key": st.just("api-key")}),
        st.fixed_dictionaries({"name": NAMES, "key": NAMES}),
        ANY_SCALAR,
    ),
    "throttle.requestsPerMinute": st.one_of(st.integers(-2, 2_000_000), ANY_SCALAR),
    "throttle.pool": NAMES,
    "checkpoint": st.one_of(
        st.fixed_dictionaries(
            {"store": st.just("PersistentVolumeClaim")},
            optional={"storageClassName": st.sampled_from(["standard", "gold"]), "size": st.sampled_from(["1Gi", "x"])},
        ),
        st.fixed_dictionaries({"store": st.sampled_from(["ConfigMap", "S3", ""])}),
        ANY_SCALAR,
    ),
    "retries.maxRestarts": st.one_of(st.integers(0, 100), st.integers(-5, 200), ANY_SCALAR),
    "tools.httpFetch": st.one_of(
        st.fixed_dictionaries({"allowedHosts": st.lists(st.one_of(NAMES, st.just("*.example.com")), max_size=3)}),
        ANY_SCALAR,
    ),
    "streaming.heartbeatInterval": DURATIONS,
    "ttlSecondsAfterFinished": st.one_of(st.integers(-1, 40_000_000), ANY_SCALAR),
    "unknownField": ANY_SCALAR,
}
SPEC_MUTATIONS = st.dictionaries(st.sampled_from(sorted(MUTATIONS)), st.just(None), min_size=1, max_size=3).flatmap(
    lambda chosen: st.fixed_dictionaries({path: MUTATIONS[path] for path in chosen})
)


def leaf_names(paths: list[str]) -> list[str]:
    return [path.rsplit(".", 1)[-1] for path in paths]


class SpecFuzzer:
    """Submits mutated specs through the kubernetes client (strict field validation, as kubectl does) and
    checks each outcome: a rejection naming a mutated field, or a phase with a reason from the operator."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.base = agent_run("fuzz", cluster, suspend=True)
        self.namespace = cluster.namespace
        self.api = kubernetes.client.CustomObjectsApi(
            kubernetes.config.new_client_from_config(str(cluster.kubeconfig_path))
        )
        self.submitted = 0
        self.rejected = 0
        self.outcomes: dict[str, int] = {}

    def check(self, mutations: dict[str, Any]) -> None:
        self.submitted += 1
        run = self.base
        for path, value in mutations.items():
            run = with_field(run, path, value)
        name = f"fuzz-{self.submitted}"
        run["metadata"]["name"] = name
        rejection: kubernetes.client.ApiException | None = None
        try:
            self.api.create_namespaced_custom_object(
                "agentrun.dev", "v1alpha1", self.namespace, "agentruns", run, field_validation="Strict"
            )
        except kubernetes.client.ApiException as error:
            rejection = error
        if rejection is not None:
            assert rejection.status in (400, 422), (mutations, rejection.status, rejection.body)
            message = json.loads(rejection.body)["message"]
            assert any(leaf in message for leaf in leaf_names(list(mutations))), (mutations, message)
            self.rejected += 1
            return
        status = self._wait_for_reason(name)
        assert status["phase"] in KNOWN_PHASES, (mutations, status)
        if status["phase"] == "Failed":
            assert any(leaf in status["message"] for leaf in leaf_names(list(mutations))), (mutations, status)
        outcome = f"{status['phase']}/{status['reason']}"
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _wait_for_reason(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.api.get_namespaced_custom_object("agentrun.dev", "v1alpha1", self.namespace, "agentruns", name)
            status = run.get("status") or {}
            waiting = (condition(status, "Accepted") or {}).get("status") == "False"  # e.g. for its Secret
            if status.get("phase") and status.get("reason") and (status["phase"] != "Pending" or waiting):
                return status
            time.sleep(0.1)
        raise AssertionError(f"the operator gave {name} no settled phase with a reason in {timeout}s: {status}")

    def close(self) -> None:
        self.api.api_client.close()


async def test_fuzzed_specs_are_rejected_naming_a_field_or_get_a_phase_and_reason(cluster, kube):
    fuzzer = SpecFuzzer(cluster)
    await kube.create(agentruns_path(cluster.namespace), agent_run("bystander", cluster, streaming={"enabled": False}))

    @settings(max_examples=25, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(SPEC_MUTATIONS)
    def submit(mutations: dict[str, Any]) -> None:
        fuzzer.check(mutations)

    try:
        await asyncio.to_thread(submit)
    finally:
        fuzzer.close()
    assert fuzzer.rejected < fuzzer.submitted  # some mutated specs were admitted and reached the operator
    assert fuzzer.rejected > 0
    bystander = await wait_for_end(kube, "bystander")
    assert bystander["phase"] == "Succeeded", bystander
    await assert_operator_healthy(cluster)
    print(f"fuzzed {fuzzer.submitted} specs: {fuzzer.rejected} rejected at admission, outcomes {fuzzer.outcomes}")
