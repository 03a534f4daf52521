"""The runs API's contract on the real control plane, with the gateway's chart RBAC and no operator: what it
creates (AgentRuns, exactly once per Idempotency-Key), who may reach what (TokenReview, SubjectAccessReview,
API keys bound to one namespace), limits and refusals, pagination and cancel. The whole path with the
operator and a runner is tests/e2e/test_runs_api.py."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.identities import GATEWAY_ACCOUNT, SYSTEM_NAMESPACE
from tests.harness.runs_api import agent_runs, create_template, kubernetes_caller, runs_api
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

RUN = {
    "instructions": "You are a careful research assistant.",
    "model": {"name": "gpt-4.1-mini", "baseURL": "http://127.0.0.1:9/v1"},
    "maxExecutionTime": "5m",
    "maxIterations": 5,
}


def submission(text: str = "Compare three vendors.", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"template": "research", "input": text}
    if overrides:
        body["overrides"] = overrides
    return body


@pytest.fixture
def other_namespace(testbed: KubeTestbed) -> Any:
    name = testbed.create_namespace("runs-api-other")
    yield name
    testbed.delete_namespace(name)


async def test_retries_of_one_key_make_one_run_and_a_changed_body_is_refused(
    testbed: KubeTestbed, namespace: str, tmp_path: Path
) -> None:
    create_template(testbed, namespace, "research", RUN, ["maxIterations", "model.temperature"])
    async with runs_api(testbed, [namespace], tmp_path) as api:
        key = api.new_api_key(namespace)
        async with api.client(key) as client:
            headers = {"Idempotency-Key": "order-4711"}
            answers = await asyncio.gather(
                *(
                    client.post(f"/v1/namespaces/{namespace}/runs", json=submission(), headers=headers)
                    for _ in range(20)
                )
            )
            assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
            ids = {a.json()["id"] for a in answers}
            assert len(ids) == 1
            (run_id,) = ids
            assert len(agent_runs(testbed, namespace)) == 1
            assert {a.headers["Location"] for a in answers} == {f"/v1/namespaces/{namespace}/runs/{run_id}"}
            assert all(int(a.headers["Retry-After"]) >= 1 for a in answers)
            assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 19

            # Key order does not make another request; another body under the same key is refused.
            reordered = {"input": "Compare three vendors.", "template": "research"}
            again = await client.post(f"/v1/namespaces/{namespace}/runs", json=reordered, headers=headers)
            assert (again.status_code, again.json()["id"]) == (202, run_id)
            changed = await client.post(
                f"/v1/namespaces/{namespace}/runs", json=submission("Another task."), headers=headers
            )
            assert changed.status_code == 422
            assert changed.json()["error"]["code"] == "IdempotencyKeyReused"
            assert changed.json()["error"]["field"] == "header Idempotency-Key"
            assert len(agent_runs(testbed, namespace)) == 1

            (stored,) = agent_runs(testbed, namespace)
            assert stored["spec"]["input"] == "Compare three vendors."
            assert stored["spec"]["model"] == {
                **RUN["model"],
                "maxRetries": 2,
                "requestTimeout": "120s",
                "stream": False,
            }


async def test_templates_take_only_the_overrides_they_allow(
    testbed: KubeTestbed, namespace: str, tmp_path: Path
) -> None:
    create_template(testbed, namespace, "research", RUN, ["maxIterations", "model.temperature"])
    async with runs_api(testbed, [namespace], tmp_path) as api, api.client(api.new_api_key(namespace)) as client:
        path = f"/v1/namespaces/{namespace}/runs"
        allowed = await client.post(path, json=submission(maxIterations=3, model={"temperature": 0.5}))
        assert allowed.status_code == 202, allowed.text
        (stored,) = agent_runs(testbed, namespace)
        assert stored["spec"]["maxIterations"] == 3
        assert stored["spec"]["model"]["temperature"] == 0.5

        cases = {
            "overrides.model.baseURL": submission(model={"baseURL": "https://elsewhere.example/v1"}),
            "overrides.maxIterations": submission(maxIterations=0),
            "extra": {**submission(), "extra": 1},
            "template": submission() | {"template": "absent"},
            "input": {"template": "research"},
        }
        for field, body in cases.items():
            refused = await client.post(path, json=body)
            assert refused.status_code == 422, (field, refused.text)
            error = refused.json()["error"]
            assert error["field"] == field, error
            assert error["fix"], error
        # An API key may not send a whole spec: it could send a namespace Secret's key to any endpoint.
        whole = await client.post(path, json={"spec": {**RUN, "input": "x"}})
        assert (whole.status_code, whole.json()["error"]["field"]) == (403, "spec")
        assert len(agent_runs(testbed, namespace)) == 1
    # Admission refuses a template that would let a request reach an endpoint.
    with pytest.raises(httpx.HTTPStatusError) as refused_template:
        create_template(testbed, namespace, "open", RUN, ["model.baseURL"])
    assert refused_template.value.response.status_code == 422
    assert "allowedOverrides" in refused_template.value.response.text


async def test_callers_reach_only_their_namespaces_and_learn_nothing_of_others(
    testbed: KubeTestbed, namespace: str, other_namespace: str, tmp_path: Path
) -> None:
    for ns in (namespace, other_namespace):
        create_template(testbed, ns, "research", RUN, [])
    async with runs_api(testbed, [namespace, other_namespace], tmp_path) as api:
        other_key = api.new_api_key(other_namespace)
        async with api.client(other_key) as other:
            existing = (await other.post(f"/v1/namespaces/{other_namespace}/runs", json=submission())).json()["id"]
        async with api.client(api.new_api_key(namespace)) as client:
            mine = await client.post(f"/v1/namespaces/{namespace}/runs", json=submission())
            assert mine.status_code == 202
            hidden = await client.get(f"/v1/namespaces/{other_namespace}/runs/{existing}")
            absent = await client.get(f"/v1/namespaces/{other_namespace}/runs/run-doesnotexist")
            assert hidden.status_code == absent.status_code == 404
            assert hidden.json()["error"]["code"] == absent.json()["error"]["code"] == "NotFound"
            assert hidden.json()["error"]["message"].replace(existing, "X") == absent.json()["error"][
                "message"
            ].replace("run-doesnotexist", "X")
            for call in (
                client.post(f"/v1/namespaces/{other_namespace}/runs/{existing}/cancel"),
                client.get(f"/v1/namespaces/{other_namespace}/runs/{existing}/events"),
                client.get(f"/v1/namespaces/{other_namespace}/runs"),
                client.post(f"/v1/namespaces/{other_namespace}/runs", json=submission()),
            ):
                assert (await call).status_code == 404
        # Kubernetes callers: RBAC decides, by SubjectAccessReview for the verb.
        submitter = kubernetes_caller(testbed, namespace, "submitter", ["create", "get"])
        reader = kubernetes_caller(testbed, namespace, "reader", ["get"])
        stranger = kubernetes_caller(testbed, namespace, "stranger", [])
        async with api.client(submitter) as client:
            made = await client.post(f"/v1/namespaces/{namespace}/runs", json={"spec": {**RUN, "input": "Go."}})
            assert made.status_code == 202, made.text
            assert (await client.get(f"/v1/namespaces/{namespace}/runs/{made.json()['id']}")).status_code == 200
            assert (await client.get(f"/v1/namespaces/{other_namespace}/runs/{existing}")).status_code == 404
            assert (await client.get(f"/v1/namespaces/{namespace}/runs")).status_code == 404  # no list verb
        async with api.client(reader) as client:
            assert (await client.get(f"/v1/namespaces/{namespace}/runs/{made.json()['id']}")).status_code == 200
            refused = await client.post(f"/v1/namespaces/{namespace}/runs", json=submission())
            assert refused.status_code == 404
        async with api.client(stranger) as client:
            assert (await client.get(f"/v1/namespaces/{namespace}/runs/{made.json()['id']}")).status_code == 404
        async with api.client("not-a-token") as client:
            unauthenticated = await client.get(f"/v1/namespaces/{namespace}/runs")
            assert unauthenticated.status_code == 401
            assert unauthenticated.headers["WWW-Authenticate"] == "Bearer"
        assert len(agent_runs(testbed, namespace)) == 2


async def test_limits_pagination_and_cancel(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> None:
    create_template(testbed, namespace, "research", RUN, [])
    async with (
        runs_api(
            testbed,
            [namespace],
            tmp_path,
            runs_per_minute_per_caller=1,
            burst_runs_per_caller=5,
            max_request_bytes=4096,
        ) as api,
        api.client(api.new_api_key(namespace)) as client,
    ):
        path = f"/v1/namespaces/{namespace}/runs"
        made = [await client.post(path, json=submission(f"Task {n}.")) for n in range(5)]
        assert [a.status_code for a in made] == [202] * 5
        limited = await client.post(path, json=submission("One too many."))
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.json()["error"]["code"] == "TooManyRuns"
        large = await client.post(path, json=submission("x" * 5000))
        assert (large.status_code, large.json()["error"]["field"]) == (413, "body")

        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await client.get(path, params={"limit": 2, **({"continue": token} if token else {})})
            assert page.status_code == 200, page.text
            seen += [item["id"] for item in page.json()["items"]]
            pages += 1
            token = page.json()["continue"]
            if not token:
                break
        assert pages == 3
        assert sorted(seen) == sorted(a.json()["id"] for a in made)
        bad = await client.get(path, params={"limit": 2, "continue": "not-a-token"})
        assert (bad.status_code, bad.json()["error"]["field"]) == (400, "continue")

        run_id = made[0].json()["id"]
        cancelled = await client.post(f"{path}/{run_id}/cancel")
        assert cancelled.status_code == 202
        assert cancelled.json()["cancelRequested"] is True
        stored = next(r for r in agent_runs(testbed, namespace) if r["metadata"]["name"] == run_id)
        assert stored["spec"]["cancel"] is True
        status = await client.get(f"{path}/{run_id}")
        assert status.json()["phase"] == "Pending"
        assert status.headers["Retry-After"]


async def test_a_namespace_that_does_not_exist_is_not_found(
    testbed: KubeTestbed, namespace: str, tmp_path: Path
) -> None:
    """A caller allowed everywhere (a ClusterRole) submitting to a namespace that does not exist gets 404, not a
    retry-later 503."""
    token = kubernetes_caller(testbed, namespace, "everywhere", [])
    binding = {
        "metadata": {"name": f"runs-api-everywhere-{namespace}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "everywhere", "namespace": namespace}],
    }
    bindings = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    testbed.admin.post(bindings, json=binding).raise_for_status()
    gateway_everywhere = {
        "metadata": {"name": f"runs-api-gateway-everywhere-{namespace}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": f"{GATEWAY_ACCOUNT}-watched",
        },
        "subjects": [{"kind": "ServiceAccount", "name": GATEWAY_ACCOUNT, "namespace": SYSTEM_NAMESPACE}],
    }
    try:
        async with runs_api(testbed, [namespace], tmp_path) as api, api.client(token) as client:
            # Outside what the gateway serves (its chart grants cover the watched namespaces only) ...
            answer = await client.post("/v1/namespaces/no-such-namespace/runs", json={"spec": {**RUN, "input": "Go."}})
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["field"] == "namespace"
        # ... and, with a gateway granted everywhere, where the API server finds no namespace.
        testbed.admin.post(bindings, json=gateway_everywhere).raise_for_status()
        async with runs_api(testbed, [namespace], tmp_path / "everywhere") as api, api.client(token) as client:
            answer = await client.post("/v1/namespaces/no-such-namespace/runs", json={"spec": {**RUN, "input": "Go."}})
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["field"] == "namespace"
            assert "no-such-namespace" in answer.json()["error"]["message"]
    finally:
        for made in (binding, gateway_everywhere):
            testbed.admin.delete(f"{bindings}/{made['metadata']['name']}")
