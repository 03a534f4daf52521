"""The node agent's runc runtime on its own: real containers from an image `make images` built, under runc.

Needs root, runc and buildah, and the Debian python base `make images` makes (``localhost/agentrun-base/python``,
a distroless-style image with python3.11 and nothing else); the module skips, saying which is missing, otherwise.
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.harness.nodeagent.containers import ContainerLaunch, ImagePullError, Mount, apply_fs_group
from tests.harness.nodeagent.runc import (
    STORAGE_DRIVER,
    RuncContainer,
    RuncRuntime,
    cgroup_limits_usable,
    local_image_names,
)

pytestmark = pytest.mark.integration

BASE_REPOSITORY = "localhost/agentrun-base/python"
PYTHON = "/usr/bin/python3.11"


def _base_image() -> str:
    """The newest python base `make images` made, or why this module cannot run."""
    missing = [tool for tool in ("runc", "buildah") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(
            f"the runc runtime needs root, runc and buildah (missing: {missing or 'root'})", allow_module_level=True
        )
    names = [name for name in local_image_names() if name.startswith(f"{BASE_REPOSITORY}:")]
    if not names:
        pytest.skip(f"no {BASE_REPOSITORY} image: `make images` makes it", allow_module_level=True)
    return names[-1]


IMAGE = _base_image()
RESTRICTED = {
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.fixture
async def runtime(tmp_path: Path) -> RuncRuntime:
    return RuncRuntime(tmp_path / "node", {})


async def start(
    runtime: RuncRuntime,
    tmp_path: Path,
    script: str,
    *,
    security: dict[str, object] | None = None,
    resources: dict[str, object] | None = None,
    mounts: list[Mount] | None = None,
    fs_group: int | None = None,
) -> tuple[RuncContainer, Path]:
    local, image = await runtime.resolve_image(IMAGE)
    container = {"name": "main", "securityContext": security or {}, "resources": resources or {}}
    pod = {
        "metadata": {"name": "runc-test", "namespace": "default", "uid": "u"},
        "spec": {"securityContext": {} if fs_group is None else {"fsGroup": fs_group}},
    }
    launch = ContainerLaunch(
        name="main",
        argv=[PYTHON, "-c", textwrap.dedent(script)],
        env={**image.env_map(), "FROM_POD": "yes"},
        working_dir=None,
        mounts=mounts or [],
        local_image=local,
        container=container,
    )
    log_path = tmp_path / "main.log"
    with log_path.open("ab") as log:
        started = await runtime.start(launch, pod, log)
    return started, log_path


async def finish(container: RuncContainer, timeout: float = 60.0) -> int:
    try:
        return await asyncio.wait_for(container.process.wait(), timeout)
    finally:
        container.kill()  # a test that failed early leaves nothing running
        await container.close()


async def test_a_restricted_container_runs_as_its_user_on_a_read_only_root_with_no_capabilities(runtime, tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    apply_fs_group(volume, 4000)
    container, log = await start(
        runtime,
        tmp_path,
        """
        import json, os
        status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
        try:
            open("/etc/written", "w")
            root = "writable"
        except OSError as error:
            root = error.strerror
        open("/data/written", "w").write("ok")
        print(json.dumps({
            "ids": [os.getuid(), os.getgid(), sorted(os.getgroups())], "cwd": os.getcwd(), "pid": os.getpid(),
            "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
            "no_new_privs": status["NoNewPrivs"].strip(), "root": root,
            "env": [os.environ.get("FROM_POD"), os.environ.get("LANG")],
        }))
        """,
        security=RESTRICTED,
        mounts=[Mount(volume, "/data", read_only=False)],
        fs_group=4000,
    )
    assert await finish(container) == 0, log.read_text()
    seen = json.loads(log.read_text().splitlines()[-1])
    assert seen["ids"] == [65532, 65532, [4000]]  # fsGroup as a supplementary group
    assert seen["pid"] == 1  # a pid namespace of its own
    assert seen["cwd"] == "/"
    assert seen["cap_eff"] == seen["cap_bnd"] == "0000000000000000"
    assert seen["no_new_privs"] == "1"
    assert seen["root"] == "Read-only file system"
    assert seen["env"] == ["yes", "C.UTF-8"]  # the pod's env over the image's
    written = volume / "written"
    assert written.read_text() == "ok"
    assert (written.stat().st_uid, written.stat().st_gid) == (65532, 4000)  # the volume's set-group-ID directory


async def test_a_read_only_volume_refuses_a_write(runtime, tmp_path):
    volume = tmp_path / "config"
    volume.mkdir()
    (volume / "run.json").write_text("{}")
    container, log = await start(
        runtime,
        tmp_path,
        """
        print(open("/etc/agentrun/run.json").read())
        open("/etc/agentrun/run.json", "w")
        """,
        security=RESTRICTED,
        mounts=[Mount(volume, "/etc/agentrun", read_only=True)],
    )
    assert await finish(container) == 1
    assert "Read-only file system: '/etc/agentrun/run.json'" in log.read_text()
    assert (volume / "run.json").read_text() == "{}"


async def test_pid_1_ignores_a_sigterm_it_has_no_handler_for_and_sigkill_ends_it_with_137(runtime, tmp_path):
    container, log = await start(runtime, tmp_path, "import time; print('up', flush=True); time.sleep(60)")
    assert container.pid > 0
    while "up" not in log.read_text():
        await asyncio.sleep(0.05)
    container.signal(signal.SIGTERM)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(container.process.wait()), 1.5)
    container.signal(signal.SIGKILL)
    assert await finish(container) == 137


async def test_a_sigterm_handler_gets_the_signal(runtime, tmp_path):
    container, log = await start(
        runtime,
        tmp_path,
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        print("up", flush=True)
        time.sleep(60)
        """,
    )
    while "up" not in log.read_text():
        await asyncio.sleep(0.05)
    container.signal(signal.SIGTERM)
    assert await finish(container) == 143


async def test_a_memory_limit_is_enforced_by_the_oom_killer(runtime, tmp_path):
    refused = cgroup_limits_usable()
    if refused:
        pytest.skip(f"cgroups refuse limits here: {refused}")
    container, log = await start(
        runtime,
        tmp_path,
        """
        print("allocating", flush=True)
        hog = bytearray(256 * 1024 * 1024)
        print("survived", flush=True)
        """,
        resources={"limits": {"memory": "48Mi"}},
    )
    assert await finish(container) == 137, log.read_text()
    assert "survived" not in log.read_text()


async def test_the_root_file_system_is_removed_when_the_container_ends(runtime, tmp_path):
    container, _ = await start(runtime, tmp_path, "pass")
    assert await finish(container) == 0
    listed = subprocess.run(
        ["buildah", "--storage-driver", STORAGE_DRIVER, "containers", "--format", "{{.ContainerName}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert container.buildah_container not in listed
    assert container.container_id not in listed
    assert not container.bundle.exists()


async def test_an_image_is_found_by_its_name_or_its_repositorys_alias_and_a_missing_one_cannot_be_pulled(tmp_path):
    aliased = RuncRuntime(tmp_path / "node", {"registry.example/team/python": IMAGE})
    assert (await aliased.resolve_image(IMAGE))[0] == IMAGE
    local, image = await aliased.resolve_image("registry.example/team/python:3.11@sha256:" + "0" * 64)
    assert local == IMAGE
    assert image.cmd == [PYTHON]
    with pytest.raises(ImagePullError, match=r'Failed to pull image "registry.example/team/other:1"'):
        await aliased.resolve_image("registry.example/team/other:1")
