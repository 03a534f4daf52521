"""Real clients against the emulated apiserver: the official kubernetes client, a kopf operator and kubectl."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
import yaml

from tests.conftest import AGENTRUN_CRD, REPO_ROOT
from tests.harness.apiserver import EmulatedApiServer, ThreadedApiServer
from tests.harness.kubectl import kubectl
from tests.integration.conftest import agentrun

pytestmark = pytest.mark.integration
GROUP, VERSION, PLURAL = "agentrun.dev", "v1alpha1", "agentruns"
EXAMPLES = REPO_ROOT / "examples"


def kube_client(server: EmulatedApiServer) -> kubernetes.client.ApiClient:
    client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(server.kubeconfig_path)
    )
    return client


def config_map(
    name: str, labels: dict[str, str] | None = None, data: dict[str, str] | None = None
) -> kubernetes.client.V1ConfigMap:
    return kubernetes.client.V1ConfigMap(metadata=kubernetes.client.V1ObjectMeta(name=name, labels=labels), data=data)


async def test_kubernetes_client_creates_reads_lists_patches_and_deletes(apiserver: EmulatedApiServer) -> None:
    def scenario() -> dict[str, Any]:
        with kube_client(apiserver) as api_client:
            core = kubernetes.client.CoreV1Api(api_client)
            custom = kubernetes.client.CustomObjectsApi(api_client)
            core.create_namespaced_config_map("default", config_map("cm", {"app": "x"}, {"a": "1"}))
            core.create_namespaced_config_map("default", config_map("other", {"app": "y"}))
            selected = core.list_namespaced_config_map("default", label_selector="app=x")
            # kubernetes 37 sends json-patch by default for core kinds; a dict body needs an explicit merge patch.
            patched = core.patch_namespaced_config_map(
                "cm", "default", {"data": {"b": "2"}}, _content_type="application/merge-patch+json"
            )
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, agentrun("run"))
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, "default", PLURAL, "run", {"status": {"phase": "Running"}}
            )
            run: Any = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "run")
            runs: Any = custom.list_namespaced_custom_object(
                GROUP, VERSION, "default", PLURAL, field_selector="metadata.name=run"
            )
            with pytest.raises(kubernetes.client.ApiException) as conflict:
                custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, agentrun("run"))
            custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "run")
            core.delete_namespaced_config_map("cm", "default")
            with pytest.raises(kubernetes.client.ApiException) as missing:
                core.read_namespaced_config_map("cm", "default")
            return {
                "selected": [item.metadata.name for item in selected.items if item.metadata],
                "patched": patched.data,
                "phase": run["status"]["phase"],
                "runs": [item["metadata"]["name"] for item in runs["items"]],
                "conflict": (conflict.value.status, conflict.value.reason),
                "missing": missing.value.status,
            }

    result = await asyncio.to_thread(scenario)
    assert result["selected"] == ["cm"]
    assert result["patched"] == {"a": "1", "b": "2"}
    assert result["phase"] == "Running"
    assert result["runs"] == ["run"]
    assert result["conflict"][0] == 409
    assert result["missing"] == 404


async def test_kubernetes_client_watch_streams_events(apiserver: EmulatedApiServer) -> None:
    def scenario() -> list[tuple[str, str]]:
        with kube_client(apiserver) as api_client:
            core = kubernetes.client.CoreV1Api(api_client)
            core.create_namespaced_config_map("default", config_map("watched"))
            listing = core.list_namespaced_config_map("default")
            assert listing.metadata is not None
            version = listing.metadata.resource_version
            core.delete_namespaced_config_map("watched", "default")
            stream = kubernetes.watch.Watch().stream(  # type: ignore[no-untyped-call]
                core.list_namespaced_config_map, "default", resource_version=version, timeout_seconds=1
            )
            return [(event["type"], event["object"].metadata.name) for event in stream]

    assert await asyncio.to_thread(scenario) == [("DELETED", "watched")]


@pytest.fixture
def operator_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="kopf")
    return caplog


async def test_kopf_operator_receives_create_update_and_delete(
    apiserver: EmulatedApiServer, operator_log: pytest.LogCaptureFixture
) -> None:
    registry = kopf.OperatorRegistry()
    seen: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=apiserver.url, token="emulated", default_namespace="default")

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    async def created(name: str, **_: Any) -> dict[str, str]:
        await seen.put(("create", name))
        return {"message": "seen"}

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def updated(name: str, **_: Any) -> None:
        await seen.put(("update", name))

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def deleted(name: str, **_: Any) -> None:
        await seen.put(("delete", name))

    stop = asyncio.Event()
    operator = asyncio.create_task(kopf.operator(registry=registry, clusterwide=True, stop_flag=stop))
    try:
        store, rt = apiserver.store, apiserver.store.resource("agentruns")
        store.create(rt, "default", agentrun("run"))
        assert await asyncio.wait_for(seen.get(), 10) == ("create", "run")
        for _ in range(100):  # kopf records its progress on the object before it reacts to the next change
            if "kopf.zalando.org/last-handled-configuration" in (
                store.get(rt, "default", "run")["metadata"].get("annotations") or {}
            ):
                break
            await asyncio.sleep(0.05)
        store.patch(rt, "default", "run", "application/merge-patch+json", {"spec": {"suspend": True}})
        assert await asyncio.wait_for(seen.get(), 10) == ("update", "run")
        store.delete(rt, "default", "run")
        assert await asyncio.wait_for(seen.get(), 10) == ("delete", "run")
        for _ in range(100):
            if store.try_get("ar", "default", "run") is None:
                break
            await asyncio.sleep(0.05)
        assert store.try_get("ar", "default", "run") is None  # kopf removed its finalizer, the deletion completed
        status = apiserver.requests.count(kind="AgentRun", verb="patch", subresource="status")
        assert status >= 1  # kopf wrote the handler result through the status subresource
    finally:
        stop.set()
        await asyncio.wait_for(operator, 10)
    errors = [r for r in operator_log.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert [r.path for r in apiserver.requests if r.code >= 500] == []


async def test_kopf_operator_reconnects_after_its_watch_streams_are_dropped(
    apiserver: EmulatedApiServer, operator_log: pytest.LogCaptureFixture
) -> None:
    registry = kopf.OperatorRegistry()
    seen: asyncio.Queue[str] = asyncio.Queue()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=apiserver.url, token="emulated", default_namespace="default")

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    async def created(name: str, **_: Any) -> None:
        await seen.put(name)

    stop = asyncio.Event()
    operator = asyncio.create_task(kopf.operator(registry=registry, clusterwide=True, stop_flag=stop, standalone=True))
    try:
        store, rt = apiserver.store, apiserver.store.resource("agentruns")
        store.create(rt, "default", agentrun("before"))
        assert await asyncio.wait_for(seen.get(), 10) == "before"
        watches = apiserver.requests.count(kind="AgentRun", verb="watch")
        assert apiserver.faults.drop_watches(match=lambda r: r.kind == "AgentRun") == 1
        store.create(rt, "default", agentrun("after"))
        assert await asyncio.wait_for(seen.get(), 10) == "after"
        assert apiserver.requests.count(kind="AgentRun", verb="watch") == watches + 1
    finally:
        stop.set()
        await asyncio.wait_for(operator, 10)
    assert [r for r in operator_log.records if r.levelno >= logging.ERROR] == []


def bad_examples() -> list[Path]:
    return sorted((EXAMPLES / "bad").glob("*.yaml"))


def expectation(manifest: Path, key: str) -> str:
    """The `# key: value` header line of a bad example."""
    prefix = f"# {key}: "
    return next(line[len(prefix) :] for line in manifest.read_text().splitlines() if line.startswith(prefix))


async def test_kubectl_applies_the_examples_and_prints_status_columns(
    apiserver: EmulatedApiServer, tmp_path: Path
) -> None:
    code, out, err = await kubectl(apiserver, tmp_path, "apply", "-f", str(EXAMPLES))
    assert code == 0, err
    runs = apiserver.store.all_of("AgentRun")
    assert len(runs) == len([p for p in EXAMPLES.glob("*.yaml") if "kind: AgentRun" in p.read_text()])
    name = runs[0]["metadata"]["name"]
    assert f"agentrun.agentrun.dev/{name} created" in out
    rt = apiserver.store.resource("ar")
    apiserver.store.patch(
        rt,
        "default",
        name,
        "application/merge-patch+json",
        {"status": {"phase": "Running", "progress": "3/5"}},
        subresource="status",
    )

    code, out, err = await kubectl(apiserver, tmp_path, "get", "agentruns")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "AGE"]
    row = next(row.split() for row in rows if row.split()[0] == name)
    assert row[:3] == [name, "Running", "3/5"]
    assert row[3].endswith("s")

    code, out, err = await kubectl(apiserver, tmp_path, "get", "ar", name, "-o", "yaml")
    assert code == 0, err
    fetched = yaml.safe_load(out)
    assert fetched["metadata"]["name"] == name
    assert fetched["status"]["phase"] == "Running"
    assert fetched["spec"]["model"]["baseURL"]  # defaulted by the CRD admission

    code, out, err = await kubectl(apiserver, tmp_path, "apply", "-f", str(EXAMPLES))
    assert code == 0, err
    assert f"agentrun.agentrun.dev/{name} unchanged" in out


@pytest.mark.parametrize("manifest", bad_examples(), ids=lambda path: path.stem)
async def test_kubectl_apply_of_a_bad_manifest_is_rejected_naming_the_field(
    apiserver: EmulatedApiServer, tmp_path: Path, manifest: Path
) -> None:
    code, _, err = await kubectl(apiserver, tmp_path, "apply", "-f", str(manifest))
    assert code != 0
    assert expectation(manifest, "expect") in err
    assert expectation(manifest, "field") in err
    assert apiserver.store.all_of("AgentRun") == []


def test_threaded_server_serves_synchronous_clients() -> None:
    with ThreadedApiServer([AGENTRUN_CRD]) as server:
        with kube_client(server.server) as api_client:
            custom = kubernetes.client.CustomObjectsApi(api_client)
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, agentrun("sync"))
            listed: Any = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
        names = server.call(lambda s: [obj["metadata"]["name"] for obj in s.store.all_of("AgentRun")])
    assert [item["metadata"]["name"] for item in listed["items"]] == ["sync"]
    assert names == ["sync"]


async def test_kubectl_imperative_creates_are_decoded_from_protobuf(
    apiserver: EmulatedApiServer, tmp_path: Path
) -> None:
    for args in (
        ("create", "namespace", "demo"),
        ("create", "secret", "generic", "openai-api-key", "--from-literal=api-key=sk-test", "-n", "demo"),
        ("create", "configmap", "settings", "--from-literal=mode=fast", "-n", "demo"),
        ("create", "serviceaccount", "robot", "-n", "demo"),
    ):
        code, _, err = await kubectl(apiserver, tmp_path, *args)
        assert code == 0, err
    store = apiserver.store
    secret = store.try_get("Secret", "demo", "openai-api-key")
    assert secret is not None
    assert secret["data"] == {"api-key": "c2stdGVzdA=="}
    assert secret["type"] == "Opaque"
    config_map = store.try_get("ConfigMap", "demo", "settings")
    assert config_map is not None
    assert config_map["data"] == {"mode": "fast"}
    assert store.try_get("ServiceAccount", "demo", "robot") is not None
