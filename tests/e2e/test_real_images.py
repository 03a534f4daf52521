"""The project's real images on the real control plane: the node agent runs each pod from its image under runc,
with the pod's securityContext enforced (`make e2e-images`: builds the images, then runs the whole e2e suite, this
module among it, with AGENTRUN_TEST_CONTAINER_RUNTIME=runc).

The operator runs as a child process; the runner pods it makes run from ``localhost/agentrun-runner:dev`` with the
operator's restricted securityContext (runAsNonRoot, uid 65532, read-only root, every capability dropped, no
privilege escalation). A securityContext the image cannot meet fails as it fails on a cluster.
"""

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.runs import assert_result, local_cluster, runner_logs
from tests.harness.agentruns import agent_run, agentruns_path, runner_pods, wait_for, wait_for_end, wait_for_status
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import research_script
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path
from tests.harness.nodeagent.runc import STORAGE_DRIVER, RuncContainer, local_image_names
from tests.harness.testbed import CONTAINER_RUNTIME_ENV, LOCAL_IMAGES, KubeTestbed, container_runtime

pytestmark = pytest.mark.e2e

RUNNER_IMAGE = LOCAL_IMAGES["ghcr.io/agentrun/agentrun-operator/runner"]


def _why_not() -> str:
    if container_runtime() != "runc":
        return f"runs with the runc runtime only: {CONTAINER_RUNTIME_ENV}=runc (make e2e-images)"
    missing = [tool for tool in ("runc", "buildah") if shutil.which(tool) is None]
    if missing:
        return f"the runc runtime needs {' and '.join(missing)} (make image-tools)"
    found = subprocess.run(
        ["buildah", "--storage-driver", STORAGE_DRIVER, "inspect", "--type", "image", RUNNER_IMAGE],
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        return f"no image {RUNNER_IMAGE}: build it with `make images`"
    return ""


if reason := _why_not():
    print(f"test_real_images skipped: {reason}")
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture
async def cluster(testbed: KubeTestbed, tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with local_cluster(testbed, tmp_path, research_script(delay=0.1)) as running:
        yield running


@pytest.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    async with KubeClient(str(cluster.kubeconfig_path)) as client:
        yield client


def runner_container(cluster: LocalCluster, pod: str) -> JsonObject:
    spec: JsonObject = cluster.node.agent.runtime(cluster.namespace, pod).pod["spec"]
    return dict(spec["containers"][0])


async def test_a_run_succeeds_with_its_runner_from_the_real_image_under_the_restricted_security_context(cluster, kube):
    started = time.monotonic()
    run = agent_run(
        "imaged",
        cluster,
        maxExecutionTime="5m",
        streaming={"enabled": False},
        checkpoint={"store": "PersistentVolumeClaim"},
    )
    await kube.create(agentruns_path(cluster.namespace), run)
    status = await wait_for_end(kube, "imaged", timeout=240)
    assert status["phase"] == "Succeeded", f"{status}\n{runner_logs(cluster)}"
    assert_result(status)
    print(f"run Succeeded {time.monotonic() - started:.1f} s after its create, its runner from {RUNNER_IMAGE}")
    pods = await runner_pods(kube, "imaged")
    assert pods
    pod = pods[0]
    # The operator's restricted pod, as the node ran it: from the image, under runc.
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["fsGroup"] == 65532
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    runtime = await cluster.node.wait_finished(cluster.namespace, pod["metadata"]["name"], timeout=60)
    assert isinstance(runtime.container, RuncContainer)
    assert runtime.exit_code == 0
    terminated = (await _pod_status(kube, pod["metadata"]["name"]))["containerStatuses"][0]["state"]["terminated"]
    assert terminated["containerID"] == runtime.container.uri
    assert terminated["containerID"].startswith("runc://")


async def _plain_pod(
    kube: KubeClient, name: str, container: JsonObject, pod_security: JsonObject, image: str = RUNNER_IMAGE
) -> None:
    await kube.create(
        namespaced_path("v1", "pods", kube.namespace),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": kube.namespace},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": pod_security,
                "containers": [{"name": "main", "image": image, **container}],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
    )


async def _pod_status(kube: KubeClient, name: str) -> JsonObject:
    pod = await kube.get(namespaced_path("v1", "pods", kube.namespace, name))
    assert pod is not None, f"pod {name} is gone"
    return dict(pod.get("status") or {})


async def test_run_as_non_root_with_user_0_is_refused_before_anything_runs(cluster, kube):
    await _plain_pod(
        kube, "as-root", {"command": ["python", "-c", "print('ran')"]}, {"runAsNonRoot": True, "runAsUser": 0}
    )

    waiting = await _refused(kube, "as-root")
    assert waiting["message"].startswith("container's runAsUser breaks non-root policy"), waiting
    await asyncio.sleep(2)  # kubelet keeps retrying; the container never starts
    status = await _pod_status(kube, "as-root")
    assert status["phase"] == "Pending"
    assert "ran" not in cluster.node.read_log(cluster.namespace, "as-root")


async def _refused(kube: KubeClient, name: str) -> JsonObject:
    async def waiting() -> JsonObject | None:
        statuses = (await _pod_status(kube, name)).get("containerStatuses") or []
        state = (statuses[0]["state"].get("waiting") or {}) if statuses else {}
        return state if state.get("reason") == "CreateContainerConfigError" else None

    return await wait_for(waiting, f"pod {name}: CreateContainerConfigError", timeout=60)


async def test_run_as_non_root_refuses_an_image_whose_user_is_root(cluster, kube):
    """The python base `make images` makes sets no USER: it runs as root, which runAsNonRoot refuses."""
    bases = [name for name in local_image_names() if name.startswith("localhost/agentrun-base/python:")]
    if not bases:
        pytest.skip("no localhost/agentrun-base/python image: `make images` makes it")
    command = {"command": ["/usr/bin/python3.11", "-c", "print('ran')"]}
    await _plain_pod(kube, "root-image", command, {"runAsNonRoot": True}, image=bases[-1])
    waiting = await _refused(kube, "root-image")
    assert waiting["message"].startswith("container has runAsNonRoot and image will run as root (pod: "), waiting
    assert "ran" not in cluster.node.read_log(cluster.namespace, "root-image")


async def test_a_write_outside_the_volumes_fails_on_the_read_only_root(cluster, kube):
    script = (
        "import os, pathlib\n"
        "pathlib.Path('/tmp/scratch').write_text('volume ok')\n"
        "print(pathlib.Path('/tmp/scratch').read_text(), os.getuid(), flush=True)\n"
        "pathlib.Path('/opt/app/planted.py').write_text('print(1)')\n"
    )
    await _plain_pod(
        kube,
        "writer",
        {
            "command": ["python", "-c", script],
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": {
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        },
        {"runAsNonRoot": True, "runAsUser": 65532, "fsGroup": 65532},
    )

    async def ended() -> JsonObject | None:
        status = await _pod_status(kube, "writer")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = await wait_for(ended, "the writer pod to end", timeout=90)
    log = cluster.node.read_log(cluster.namespace, "writer")
    assert status["phase"] == "Failed", log
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1
    assert "volume ok 65532" in log  # the emptyDir at /tmp was writable for the pod's user
    assert "OSError: [Errno 30] Read-only file system: '/opt/app/planted.py'" in log


async def test_the_runner_pod_resumes_from_its_checkpoint_after_a_sigkill(cluster, kube):
    """A crash in the middle of a run (SIGKILL to the container through runc: exit 137); the Job's next pod resumes
    from the checkpoint on the claim, from the real image. Prints the resume's figures (docs/images.md)."""
    assert cluster.model_server is not None
    cluster.model_server.script = research_script(delay=1.0)
    run = agent_run(
        "resumed",
        cluster,
        maxExecutionTime="5m",
        streaming={"enabled": False},
        checkpoint={"store": "PersistentVolumeClaim"},
    )
    await kube.create(agentruns_path(cluster.namespace), run)
    await wait_for_status(
        kube, "resumed", lambda s: (s.get("lastCheckpoint") or {}).get("iteration", 0) >= 2, "a checkpoint", 180
    )
    first = (await runner_pods(kube, "resumed"))[0]["metadata"]["name"]
    killed_at = time.monotonic()
    cluster.node.kill_pod_process(cluster.namespace, first)
    finished = await cluster.node.wait_finished(cluster.namespace, first, timeout=30)
    assert finished.exit_code == 137

    async def second_running() -> str | None:
        for pod in await runner_pods(kube, "resumed"):
            name = str(pod["metadata"]["name"])
            if name != first and (pod.get("status") or {}).get("phase") == "Running":
                return name
        return None

    second = await wait_for(second_running, "a second runner pod", timeout=120)
    running_at = time.monotonic()

    async def resuming() -> bool:
        return "resuming from iteration" in cluster.node.read_log(cluster.namespace, second)

    await wait_for(resuming, "the second runner to resume from the checkpoint", timeout=120)
    resumed_at = time.monotonic()
    status = await wait_for_end(kube, "resumed", timeout=240)
    assert status["phase"] == "Succeeded", f"{status}\n{runner_logs(cluster)}"
    assert_result(status)
    print(
        f"resume under runc: SIGKILL to the next pod Running {running_at - killed_at:.1f} s, Running to the runner's "
        f"'resuming from iteration' {resumed_at - running_at:.1f} s, SIGKILL to Succeeded "
        f"{time.monotonic() - killed_at:.1f} s"
    )


@pytest.fixture
async def chart_cluster(testbed: KubeTestbed, tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """The operator as the chart installs it: its pod from the operator image, under runc too."""
    async with local_cluster(testbed, tmp_path, research_script(delay=0.1), from_chart=True) as running:
        yield running


async def test_the_charts_operator_from_its_image_runs_a_run_from_the_runner_image(chart_cluster):
    cluster = chart_cluster
    async with KubeClient(str(cluster.kubeconfig_path)) as kube:
        operator_pods = [
            key for key in cluster.node.agent.pod_keys() if key[0] == cluster.namespace and "operator" in key[1]
        ]
        assert operator_pods, cluster.node.agent.pod_keys()
        operator = cluster.node.agent.runtime(*operator_pods[0])
        assert isinstance(operator.container, RuncContainer)
        run = agent_run("charted", cluster, streaming={"enabled": False})
        await kube.create(agentruns_path(cluster.namespace), run)
        status = await wait_for_end(kube, "charted", timeout=240)
        assert status["phase"] == "Succeeded", f"{status}\n{runner_logs(cluster)}"
        assert_result(status)


async def test_an_exec_probe_runs_inside_the_container_and_pid_1_ignores_sigterm_without_a_handler(cluster, kube):
    """The readiness probe sees the pod's emptyDir and runs as the container's user; at the pod's deletion the
    container's PID 1, which installed no SIGTERM handler, ignores SIGTERM and ends at SIGKILL after the grace period
    (exit 137), as on a cluster."""
    script = "import pathlib, time\ntime.sleep(1)\npathlib.Path('/tmp/ready').touch()\nprint('ready', flush=True)\ntime.sleep(120)\n"
    probe = "import os, sys; sys.exit(0 if os.getuid() == 65532 and os.path.exists('/tmp/ready') else 1)"
    await _plain_pod(
        kube,
        "probed",
        {
            "command": ["python", "-c", script],
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            "readinessProbe": {"exec": {"command": ["python", "-c", probe]}, "periodSeconds": 1},
            "securityContext": {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        },
        {"runAsNonRoot": True, "runAsUser": 65532, "fsGroup": 65532},
    )

    async def ready() -> bool:
        conditions = (await _pod_status(kube, "probed")).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    await wait_for(ready, "the exec readiness probe to pass", timeout=90)
    deleted_at = time.monotonic()
    await kube.delete(namespaced_path("v1", "pods", kube.namespace, "probed"), grace_period_seconds=3)
    runtime = await cluster.node.wait_finished(cluster.namespace, "probed", timeout=60)
    waited = time.monotonic() - deleted_at
    assert runtime.exit_code == 137, cluster.node.read_log(cluster.namespace, "probed")
    assert waited >= 2.5, f"the container ended {waited:.1f} s after SIGTERM: PID 1 did not ignore it"


async def test_an_image_the_node_does_not_hold_is_err_image_pull_then_image_pull_back_off(cluster, kube):
    await kube.create(
        namespaced_path("v1", "pods", kube.namespace),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "unpulled", "namespace": kube.namespace},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "registry.example/absent:1"}]},
        },
    )
    reasons: list[str] = []

    async def backing_off() -> bool:
        statuses = (await _pod_status(kube, "unpulled")).get("containerStatuses") or []
        reason = (statuses[0]["state"].get("waiting") or {}).get("reason", "") if statuses else ""
        if reason and reason not in reasons:
            reasons.append(reason)
        return reason == "ImagePullBackOff"

    await wait_for(backing_off, "ImagePullBackOff", timeout=60)
    assert reasons[-2:] == ["ErrImagePull", "ImagePullBackOff"], reasons
