"""The node agent as kubelet: a pod the real Job controller made gets its command, env, volumes, identity and logs
as a real container would."""

import asyncio
import ipaddress
import json
import sys
from pathlib import Path

import pytest

from tests.integration.node_env import IMAGE, node_env

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(testbed, namespace, tmp_path: Path):
    async with node_env(testbed, namespace, tmp_path) as running:
        yield running


async def test_successful_pod_completes_the_job_with_kubernetes_status(env):
    await env.job("ok", "print('hello from the pod')")

    complete = await env.job_condition("ok", "Complete")
    job = await env.get_job("ok")
    assert complete["reason"] == "CompletionsReached"
    assert [c["type"] for c in job["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert job["status"]["succeeded"] == 1
    assert job["status"].get("failed", 0) == 0
    assert job["status"].get("active", 0) == 0
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
    assert env.node.read_log(env.namespace, pod["metadata"]["name"]) == "hello from the pod\n"


async def test_env_resolves_values_secrets_config_maps_and_pod_fields(env):
    await env.secret("creds", {"api-key": "s3cret", "user": "ann"})
    await env.config_map("settings", {"MODE": "fast", "LEVEL": "3"})
    script = """
        import json, os
        import ssl, urllib.request
        names = ["PLAIN", "EXPANDED", "API_KEY", "MODE_FROM_REF", "CFG_MODE", "CFG_LEVEL", "POD", "NS", "KUBECONFIG", "OPTIONAL"]
        seen = {name: os.environ.get(name) for name in names}
        # Who the pod is to the API server: its projected token, verified with the projected CA.
        account = "/var/run/secrets/kubernetes.io/serviceaccount"
        review = urllib.request.Request(
            f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            data=b'{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}',
            headers={"Authorization": "Bearer " + open(account + "/token").read(), "Content-Type": "application/json"},
        )
        answer = urllib.request.urlopen(review, context=ssl.create_default_context(cafile=account + "/ca.crt"))
        seen["user"] = json.load(answer)["status"]["userInfo"]["username"]
        seen["namespace_file"] = open(account + "/namespace").read()
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
    seen = json.loads(env.node.read_log(env.namespace, pod["metadata"]["name"]))
    assert seen == {
        "PLAIN": "v1",
        "EXPANDED": "v1-and-fast-$(PLAIN)",
        "API_KEY": "s3cret",
        "MODE_FROM_REF": "fast",
        "CFG_MODE": "fast",
        "CFG_LEVEL": "3",
        "POD": pod["metadata"]["name"],
        "NS": env.namespace,
        "KUBECONFIG": None,
        "OPTIONAL": None,
        "user": f"system:serviceaccount:{env.namespace}:default",
        "namespace_file": env.namespace,
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
    assert env.node.read_log(env.namespace, pod["metadata"]["name"]) == "arrived\n"


async def test_init_containers_run_first_and_share_the_pods_volumes(env):
    pod = {
        "volumes": [{"name": "shared", "emptyDir": {}}],
        "initContainers": [
            {
                "name": "prepare",
                "image": IMAGE,
                "command": ["python", "-c", "open('/var/lib/agentrun/workspace/ready', 'w').write('prepared')"],
                "volumeMounts": [{"name": "shared", "mountPath": "/var/lib/agentrun/workspace"}],
            }
        ],
    }
    container = {"volumeMounts": [{"name": "shared", "mountPath": "/var/lib/agentrun/workspace"}]}
    await env.job("inits", "print(open('/var/lib/agentrun/workspace/ready').read())", pod=pod, container=container)

    await env.job_condition("inits", "Complete")
    [created] = await env.pods("inits")
    assert env.node.read_log(env.namespace, created["metadata"]["name"]) == "prepared\n"
    [init_status] = created["status"]["initContainerStatuses"]
    assert init_status["state"]["terminated"]["exitCode"] == 0


async def test_failed_init_container_fails_the_pod_without_starting_the_main_container(env):
    pod = {"initContainers": [{"name": "prepare", "image": IMAGE, "command": ["python", "-c", "raise SystemExit(4)"]}]}
    await env.job("badinit", "print('main ran')", pod=pod)

    await env.job_condition("badinit", "Failed")
    [created] = await env.pods("badinit")
    assert created["status"]["phase"] == "Failed"
    assert created["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 4
    assert env.node.read_log(env.namespace, created["metadata"]["name"]) == ""


async def test_running_pod_counts_as_active_and_ready_in_the_job_status(env, testbed):
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
    # A pod address of its own on the pod network, so pods serving the same port do not collide.
    assert ipaddress.ip_address(created["status"]["podIP"]) in ipaddress.ip_network(testbed.network_plan.pod_cidr)
    assert created["status"]["podIP"] != created["status"]["hostIP"]
    # PodScheduled from the real scheduler, the rest from the node
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


async def test_an_image_the_node_does_not_have_waits_in_err_image_pull_then_image_pull_back_off(env):
    await env.job("unpullable", "print('never')", container={"image": "example.org/other:3"})

    async def reasons():
        seen = []
        for pod in await env.pods("unpullable"):
            statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
            waiting = (statuses[0].get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "ImagePullBackOff":
                return pod, waiting
            seen.append(waiting.get("reason"))
        return None

    pod, waiting = await env.eventually(reasons, "ImagePullBackOff for an image no registry serves here")
    assert pod["status"]["phase"] == "Pending"
    assert 'Failed to pull image "example.org/other:3"' in waiting["message"]
    job = await env.get_job("unpullable")
    assert job["status"].get("failed", 0) == 0  # waiting for an image is not a failure


async def test_a_project_image_without_a_command_runs_its_entrypoint(env):
    # The runner image's ENTRYPOINT is the runner, which without its config says so and exits 3 (invalid config).
    await env.job("entrypoint", "", container={"command": None, "image": "agentrun-runner:dev"})

    await env.job_condition("entrypoint", "Failed")
    [created] = await env.pods("entrypoint")
    assert created["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert "agentrun_runner" in env.node.read_log(env.namespace, created["metadata"]["name"])


async def test_kubectl_logs_shows_the_container_output_through_the_api_server(env):
    kubectl = Path(sys.executable).parent / "kubectl"
    await env.job("talks", "print('line one'); print('line two')")
    await env.job_condition("talks", "Complete")
    [pod] = await env.pods("talks")

    async def kubectl_logs(*flags: str) -> str:
        process = await asyncio.create_subprocess_exec(
            str(kubectl),
            "--kubeconfig",
            str(env.kubeconfig),
            "logs",
            pod["metadata"]["name"],
            *flags,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, err.decode()
        return out.decode()

    # The API server fetches it from the node's kubelet endpoint with its kubelet client certificate.
    assert await kubectl_logs() == "line one\nline two\n"
    assert await kubectl_logs("--tail=1") == "line two\n"
    assert await kubectl_logs("--limit-bytes=4") == "line"
