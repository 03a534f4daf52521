"""Every manifest in examples/ applied with kubectl to one local cluster, side by side, and followed to its end:
phase and PROGRESS in `kubectl get agentruns`, the Complete condition through `kubectl wait`, and the Events."""

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.demo import point_at_model
from tests.harness.local_cluster import REPO_ROOT, LocalCluster
from tests.harness.model_server import stepwise_script
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.e2e

EXAMPLES = REPO_ROOT / "examples"
STEPS = 10  # every example's maxIterations: the scripted agent answers at its 10th call, so PROGRESS ends 10/10
SKIPPED = ("bad", "argocd")  # manifests the API server refuses; Argo CD Applications need Argo CD
KUBECTL = str(Path(sys.executable).with_name("kubectl"))
LIFECYCLE_EVENTS = ("ChildrenCreated", "RunnerStarted", "Checkpointed", "Succeeded")


@dataclass(frozen=True)
class Kubectl:
    kubeconfig: Path

    async def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        process = await asyncio.create_subprocess_exec(
            KUBECTL,
            *args,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate(None if stdin is None else stdin.encode())
        if check:
            assert process.returncode == 0, f"kubectl {' '.join(args)} exited {process.returncode}: {err.decode()}"
        return out.decode()

    async def get_json(self, *args: str) -> Any:
        return json.loads(await self("get", *args, "-o", "json"))


def example_manifests() -> dict[str, list[dict[str, Any]]]:
    """Each example file (relative path) and its objects, bad/ and argocd/ left out."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        relative = path.relative_to(EXAMPLES)
        if relative.parts[0] in SKIPPED:
            continue
        found[str(relative)] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


@pytest.fixture
async def cluster(testbed: KubeTestbed, tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(testbed, tmp_path, model_script=stepwise_script(STEPS), from_chart=True) as running:
        if running.model.real:
            pytest.skip("needs the scripted model (10 answers per run); a real endpoint (OPENAI_BASE_URL) is set")
        yield running


async def apply_examples(cluster: LocalCluster, kubectl: Kubectl) -> dict[str, dict[str, Any]]:
    """Apply every example with kubectl: the others first, AgentRuns last, each pointed at the scripted model.
    Returns the AgentRuns by name, as applied."""
    runs: dict[str, dict[str, Any]] = {}
    others: list[dict[str, Any]] = []
    for documents in example_manifests().values():
        for document in documents:
            if document["kind"] == "AgentRun":
                runs[document["metadata"]["name"]] = point_at_model(document, cluster.model)
            else:
                others.append(document)
    # Claims that name no class get the cluster's default StorageClass (the testbed's local provisioner), as
    # on any cluster with one; a class an example named would have to exist already.
    named_classes = {run["spec"].get("checkpoint", {}).get("storageClassName") for run in runs.values()} - {None}
    existing = {item["metadata"]["name"] for item in (await kubectl.get_json("storageclasses"))["items"]}
    assert named_classes <= existing, f"examples name StorageClasses this cluster lacks: {named_classes - existing}"
    await kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(others))
    await kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(list(runs.values())))
    return runs


async def events_of(kubectl: Kubectl, name: str) -> list[str]:
    listing = await kubectl.get_json("events", f"--field-selector=involvedObject.name={name}")
    return [item["reason"] for item in listing["items"]]


async def follow_suspended(kubectl: Kubectl, name: str) -> None:
    """A run created suspended stays Suspended with no runner until suspend is cleared; then it runs to the end."""
    await kubectl("wait", "--for=jsonpath={.status.phase}=Suspended", f"agentrun/{name}", "--timeout=30s")
    await asyncio.sleep(1)  # long enough for a runner to show up if suspend were ignored
    pods = await kubectl.get_json("pods", f"--selector=batch.kubernetes.io/job-name={name}-runner")
    assert pods["items"] == [], f"{name}: a runner pod ran while the run was suspended"
    assert (await kubectl.get_json("agentrun", name))["status"]["phase"] == "Suspended"
    await kubectl("patch", "agentrun", name, "--type", "merge", "-p", '{"spec":{"suspend":false}}')


async def test_every_example_reaches_its_expected_end_with_columns_conditions_and_events(
    cluster: LocalCluster,
) -> None:
    kubectl = Kubectl(cluster.kubeconfig_path)
    runs = await apply_examples(cluster, kubectl)
    assert set(runs) >= {"minimal", "suspended", "throttled", "pvc-checkpoints", "streaming-ingress"}

    async def to_the_end(name: str) -> None:
        if runs[name]["spec"].get("suspend"):
            await follow_suspended(kubectl, name)
        await kubectl("wait", "--for=condition=Complete", f"agentrun/{name}", "--timeout=60s")

    outcomes = await asyncio.gather(*(to_the_end(name) for name in runs), return_exceptions=True)
    failed = {name: outcome for name, outcome in zip(runs, outcomes, strict=True) if outcome is not None}
    if failed:
        statuses = {name: (await kubectl.get_json("agentrun", name)).get("status") for name in failed}
        pytest.fail(f"examples that did not end as expected: {failed}\nstatuses: {json.dumps(statuses, indent=1)}")

    table = (await kubectl("get", "agentruns")).splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "AGE"]
    columns = {cells[0]: cells[1:3] for cells in (line.split() for line in table[1:])}
    assert columns == {name: ["Succeeded", f"{STEPS}/{STEPS}"] for name in runs}

    for name, run in runs.items():
        # The result is in the same status write as Complete: every runner report with an outcome carries it.
        status: dict[str, Any] = (await kubectl.get_json("agentrun", name))["status"]
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["Complete"] == "True", (name, conditions)
        assert conditions.get("Failed", "False") == "False", (name, conditions)
        assert (status.get("result") or {}).get("summary", "").startswith("Three uses of Kubernetes Jobs"), (
            name,
            status,
        )
        reasons = await events_of(kubectl, name)
        for expected in LIFECYCLE_EVENTS:
            assert expected in reasons, (name, reasons)
        if run["spec"].get("suspend"):
            assert {"SuspendRequested", "Resumed"} <= set(reasons), (name, reasons)

    pvc_run = next(
        name for name, run in runs.items() if run["spec"].get("checkpoint", {}).get("store") == "PersistentVolumeClaim"
    )
    claim = await kubectl.get_json("pvc", f"{pvc_run}-ckpt")
    assert [owner["name"] for owner in claim["metadata"]["ownerReferences"]] == [pvc_run]
    assert claim["spec"]["resources"]["requests"]["storage"] == runs[pvc_run]["spec"]["checkpoint"]["size"]
    assert (await kubectl.get_json("agentrun", pvc_run))["status"]["result"]["ref"].startswith("pvc/")

    for name, run in runs.items():
        stream_url = (await kubectl.get_json("agentrun", name))["status"].get("streamURL", "")
        if run["spec"].get("streaming", {}).get("enabled", True):
            assert stream_url.endswith("/events"), (name, stream_url)

    throttled = [run for run in runs.values() if run["spec"].get("throttle", {}).get("enabled")]
    assert throttled
    for run in throttled:
        status = (await kubectl.get_json("agentrun", run["metadata"]["name"]))["status"]
        assert status["usage"]["totalTokens"] <= run["spec"]["tokenBudget"]
        pool = run["spec"]["throttle"].get("pool")
        if pool:
            await kubectl("get", "throttlepool", pool)
