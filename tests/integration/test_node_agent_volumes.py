"""Volumes as a container sees them: files at their real mount paths, in a mount namespace of its own."""

import json
from pathlib import Path

import pytest

from tests.harness.nodeagent.settings import NodeSettings
from tests.integration.node_env import node_env

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(testbed, namespace, tmp_path: Path):
    async with node_env(testbed, namespace, tmp_path) as running:
        yield running


RESTARTING_SCRIPT = """
    import json, os, pathlib
    config = json.loads(pathlib.Path("/etc/agentrun/run.json").read_text())
    counter = pathlib.Path("/var/lib/agentrun/checkpoint/attempts")
    attempts = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempts))
    workspace = pathlib.Path("/var/lib/agentrun/workspace")
    seen = {
        "attempt": attempts,
        "config": config,
        "config_files": sorted(os.listdir("/etc/agentrun")),
        "token": pathlib.Path("/var/lib/agentrun/stream-token/token").read_text(),
        "workspace_was_empty": not any(workspace.iterdir()),
        "host_tmp_visible": os.path.exists(os.environ["HOST_FILE"]),
        "tmp_entries": os.listdir("/tmp"),
        "cwd": os.getcwd(),
    }
    (workspace / "scratch").write_text("left behind")
    try:
        pathlib.Path("/etc/agentrun/run.json").write_text("overwritten")
        seen["config_writable"] = True
    except OSError:
        seen["config_writable"] = False
    print(json.dumps(seen))
    raise SystemExit(0 if attempts == 3 else 1)
"""


async def test_volumes_appear_at_mount_paths_and_only_the_claim_survives_pod_restarts(env, tmp_path):
    host_file = tmp_path / "host-only"
    host_file.write_text("the host's /tmp is not the pod's")
    await env.config_map("run-config", {"run.json": json.dumps({"task": "t1"}), "unlisted": "hidden"})
    await env.secret("stream", {"token": "tok"})
    await env.claim("ckpt")
    pod = {
        "volumes": [
            {"name": "config", "configMap": {"name": "run-config", "items": [{"key": "run.json", "path": "run.json"}]}},
            {"name": "token", "secret": {"secretName": "stream"}},
            {"name": "checkpoint", "persistentVolumeClaim": {"claimName": "ckpt"}},
            {"name": "workspace", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ]
    }
    container = {
        "workingDir": "/var/lib/agentrun/workspace",
        "env": [{"name": "HOST_FILE", "value": str(host_file)}],
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/agentrun", "readOnly": True},
            {"name": "token", "mountPath": "/var/lib/agentrun/stream-token"},
            {"name": "checkpoint", "mountPath": "/var/lib/agentrun/checkpoint"},
            {"name": "workspace", "mountPath": "/var/lib/agentrun/workspace"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    await env.job("vols", RESTARTING_SCRIPT, pod=pod, container=container, backoffLimit=2)

    await env.job_condition("vols", "Complete")
    shared_entries_under_tmp = {
        Path(path).relative_to("/tmp").parts[0]
        for path in NodeSettings().shared_host_paths
        if Path(path).is_relative_to("/tmp")
    }
    pods = await env.pods("vols")
    logs = sorted(
        (json.loads(env.node.read_log(env.namespace, p["metadata"]["name"])) for p in pods), key=lambda s: s["attempt"]
    )
    assert [seen["attempt"] for seen in logs] == [1, 2, 3]  # the claim kept the counter across pods
    for seen in logs:
        assert seen["config"] == {"task": "t1"}
        assert seen["config_files"] == ["run.json"]  # items: only the listed key
        assert seen["token"] == "tok"
        assert seen["workspace_was_empty"] is True  # emptyDir is fresh for every pod
        assert seen["host_tmp_visible"] is False
        # A fresh emptyDir: nothing but the mount points of host paths that stay visible under it (the
        # Python installation, when the checkout itself lives under /tmp).
        assert set(seen["tmp_entries"]) == shared_entries_under_tmp
        assert seen["config_writable"] is False
        assert seen["cwd"] == "/var/lib/agentrun/workspace"
    job = await env.get_job("vols")
    assert (job["status"].get("failed", 0), job["status"]["succeeded"]) == (2, 1)
    assert host_file.read_text() == "the host's /tmp is not the pod's"
    claim = await env.kube.get(env.path("v1", "persistentvolumeclaims", "ckpt"))
    assert claim["status"]["phase"] == "Bound"


async def test_sub_path_mounts_a_single_file_and_nested_mounts_stack(env):
    await env.config_map("cfg", {"run.json": '{"a": 1}', "other": "x"})
    await env.claim("data")
    pod = {
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "scratch", "emptyDir": {}},
        ]
    }
    container = {
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/agentrun-single/run.json", "subPath": "run.json"},
            {"name": "data", "mountPath": "/var/lib/agentrun-nested"},
            {"name": "scratch", "mountPath": "/var/lib/agentrun-nested/scratch"},
        ]
    }
    script = """
        import json, os
        print(json.dumps({
            "single": open("/etc/agentrun-single/run.json").read(),
            "siblings": sorted(os.listdir("/etc/agentrun-single")),
            "nested": sorted(os.listdir("/var/lib/agentrun-nested")),
        }))
        open("/var/lib/agentrun-nested/scratch/tmp", "w").write("scratch")
        open("/var/lib/agentrun-nested/kept", "w").write("claim")
    """
    await env.job("subpaths", script, pod=pod, container=container)

    await env.job_condition("subpaths", "Complete")
    [created] = await env.pods("subpaths")
    seen = json.loads(env.node.read_log(env.namespace, created["metadata"]["name"]))
    assert seen == {"single": '{"a": 1}', "siblings": ["run.json"], "nested": ["scratch"]}
    claim = await env.kube.get(env.path("v1", "persistentvolumeclaims", "data"))
    volume = await env.kube.get(f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
    claim_dir = Path(volume["spec"]["hostPath"]["path"])  # the volume the provisioner made and the binder bound
    assert (claim_dir / "kept").read_text() == "claim"
    assert not (claim_dir / "scratch" / "tmp").exists()  # that file went to the emptyDir on top
