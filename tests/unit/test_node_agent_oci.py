"""The runc runtime's container configuration: what a kubelet and containerd make of an image and a pod's spec."""

import os
import stat
from pathlib import Path

import pytest

from tests.harness.nodeagent.containers import ContainerConfigError, Mount, apply_fs_group
from tests.harness.nodeagent.oci import (
    DEFAULT_CAPABILITIES,
    ContainerSpec,
    ImageConfig,
    ProcessUser,
    capabilities,
    container_args,
    linux_resources,
    oci_config,
    process_user,
    refuse_root,
)

IMAGE = ImageConfig(
    entrypoint=["python", "-m", "agentrun_runner"],
    cmd=["--serve"],
    env=["PATH=/usr/bin", "LANG=C.UTF-8"],
    working_dir="/var/lib/agentrun/workspace",
    user="65532:65532",
)
ROOT_IMAGE = ImageConfig(cmd=["/usr/bin/python3.11"])
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nrunner:x:65532:65533::/home/runner:/sbin/nologin\n"
GROUP = "root:x:0:\nrunner:x:65533:\nstaff:x:50:\n"


def pod(security: dict[str, object] | None = None) -> dict[str, object]:
    return {
        "metadata": {"name": "run-1", "namespace": "team", "uid": "abc"},
        "spec": {"securityContext": security or {}},
    }


def test_image_config_from_the_oci_config_and_its_env() -> None:
    image = ImageConfig.from_oci({"Entrypoint": ["a"], "Cmd": None, "Env": ["A=1=2", "B="], "User": "7"})
    assert image == ImageConfig(entrypoint=["a"], env=["A=1=2", "B="], user="7")
    assert image.env_map() == {"A": "1=2", "B": ""}


@pytest.mark.parametrize(
    ("container", "argv"),
    [
        ({}, ["python", "-m", "agentrun_runner", "--serve"]),
        ({"args": ["--once"]}, ["python", "-m", "agentrun_runner", "--once"]),
        ({"command": ["sh"]}, ["sh"]),  # command drops the image's Cmd too
        ({"command": ["sh"], "args": ["-c", "echo $(WHO) $$(WHO)"]}, ["sh", "-c", "echo team $(WHO)"]),
    ],
)
def test_command_replaces_the_entrypoint_and_args_the_cmd(container: dict[str, object], argv: list[str]) -> None:
    assert container_args({"name": "main", **container}, IMAGE, {"WHO": "team"}) == argv


def test_a_container_with_no_command_anywhere_is_a_config_error() -> None:
    with pytest.raises(ContainerConfigError, match="neither the pod nor the image"):
        container_args({"name": "main"}, ImageConfig(), {})


def test_run_as_non_root_refuses_an_explicit_root_user_with_kubelets_message() -> None:
    container = {"name": "main", "securityContext": {"runAsUser": 0}}
    with pytest.raises(ContainerConfigError) as refused:
        refuse_root(pod({"runAsNonRoot": True}), container, IMAGE)
    assert str(refused.value) == (
        "container's runAsUser breaks non-root policy (pod: 'run-1_team(abc)', container: main)"
    )


def test_run_as_non_root_refuses_an_image_that_runs_as_root() -> None:
    with pytest.raises(ContainerConfigError, match="container has runAsNonRoot and image will run as root"):
        refuse_root(pod(), {"name": "main", "securityContext": {"runAsNonRoot": True}}, ROOT_IMAGE)
    with pytest.raises(ContainerConfigError, match="image will run as root"):
        refuse_root(pod({"runAsNonRoot": True}), {"name": "main"}, ImageConfig(user="0:0"))


def test_run_as_non_root_cannot_verify_a_user_name() -> None:
    with pytest.raises(ContainerConfigError, match=r"image has non-numeric user \(runner\), cannot verify"):
        refuse_root(pod({"runAsNonRoot": True}), {"name": "main"}, ImageConfig(user="runner"))


def test_run_as_non_root_accepts_a_numeric_non_root_user_and_the_container_overrides_the_pod() -> None:
    refuse_root(pod({"runAsNonRoot": True}), {"name": "main"}, IMAGE)
    refuse_root(
        pod({"runAsNonRoot": True, "runAsUser": 0}), {"name": "main", "securityContext": {"runAsUser": 5}}, IMAGE
    )
    refuse_root(pod({"runAsNonRoot": True}), {"name": "main", "securityContext": {"runAsNonRoot": False}}, ROOT_IMAGE)
    refuse_root(pod(), {"name": "main"}, ROOT_IMAGE)  # root is allowed unless runAsNonRoot says otherwise


def test_the_process_user_comes_from_the_security_context_over_the_image() -> None:
    assert process_user(pod(), {"name": "main"}, IMAGE) == ProcessUser(65532, 65532)
    assert process_user(pod(), {"name": "main"}, ROOT_IMAGE) == ProcessUser(0, 0)
    restricted = pod({"runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000, "supplementalGroups": [4000]})
    assert process_user(restricted, {"name": "main"}, IMAGE) == ProcessUser(1000, 2000, (3000, 4000))
    container = {"name": "main", "securityContext": {"runAsUser": 7, "runAsGroup": 8}}
    assert process_user(restricted, container, IMAGE) == ProcessUser(7, 8, (3000, 4000))


def test_a_run_as_user_without_a_group_takes_the_images_passwd_group() -> None:
    container = {"name": "main", "securityContext": {"runAsUser": 65532}}
    assert process_user(pod(), container, ROOT_IMAGE, passwd=PASSWD).gid == 65533
    container = {"name": "main", "securityContext": {"runAsUser": 4242}}
    assert process_user(pod(), container, ROOT_IMAGE, passwd=PASSWD).gid == 0


def test_a_user_name_is_looked_up_in_the_images_passwd_and_group() -> None:
    image = ImageConfig(user="runner:staff")
    assert process_user(pod(), {"name": "main"}, image, passwd=PASSWD, group=GROUP) == ProcessUser(65532, 50)
    with pytest.raises(ContainerConfigError, match="unable to find user nobody"):
        process_user(pod(), {"name": "main"}, ImageConfig(user="nobody"), passwd=PASSWD)


def test_process_user_refuses_root_under_run_as_non_root() -> None:
    with pytest.raises(ContainerConfigError, match="image will run as root"):
        process_user(pod({"runAsNonRoot": True}), {"name": "main"}, ROOT_IMAGE)


def test_capabilities_are_the_runtime_default_minus_drop_plus_add() -> None:
    assert capabilities({}) == list(DEFAULT_CAPABILITIES)
    assert capabilities({"securityContext": {"capabilities": {"drop": ["ALL"]}}}) == []
    changed = capabilities(
        {"securityContext": {"capabilities": {"drop": ["NET_RAW", "CAP_CHOWN"], "add": ["SYS_TIME"]}}}
    )
    assert "CAP_NET_RAW" not in changed
    assert "CAP_CHOWN" not in changed
    assert changed[-1] == "CAP_SYS_TIME"
    assert len(changed) == len(DEFAULT_CAPABILITIES) - 1
    assert capabilities({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}) == [
        "CAP_NET_BIND_SERVICE"
    ]
    assert "CAP_SYS_ADMIN" in capabilities({"securityContext": {"privileged": True}})


def test_limits_become_a_memory_limit_and_a_cfs_quota() -> None:
    container = {"resources": {"limits": {"memory": "512Mi", "cpu": "250m"}, "requests": {"cpu": "4"}}}
    assert linux_resources(container) == {
        "memory": {"limit": 512 * 2**20},
        "cpu": {"quota": 25_000, "period": 100_000},
    }
    assert linux_resources({"resources": {"limits": {"memory": "1G", "cpu": 2}}}) == {
        "memory": {"limit": 10**9},
        "cpu": {"quota": 200_000, "period": 100_000},
    }
    assert linux_resources({}) == {}
    with pytest.raises(ContainerConfigError, match="quantity"):
        linux_resources({"resources": {"limits": {"memory": "lots"}}})


RESTRICTED = {
    "name": "runner",
    "securityContext": {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    },
    "resources": {"limits": {"memory": "256Mi"}},
}


def spec(mounts: list[Mount]) -> ContainerSpec:
    return ContainerSpec(
        argv=["python", "-m", "agentrun_runner"],
        env={"PATH": "/usr/bin", "A": "b=c"},
        cwd="",
        user=ProcessUser(65532, 65532, (65532, 5)),
        mounts=mounts,
        hostname="run-1",
    )


def test_the_oci_config_of_a_restricted_container() -> None:
    mounts = [
        Mount(Path("/node/tmp-inner"), "/tmp/inner", read_only=True),
        Mount(Path("/node/tmp"), "/tmp", read_only=False),
    ]
    config = oci_config(RESTRICTED, spec(mounts), "/rootfs", cgroup_limits=True)
    process = config["process"]
    assert process["args"] == ["python", "-m", "agentrun_runner"]
    assert process["env"] == ["PATH=/usr/bin", "A=b=c"]
    assert process["cwd"] == "/"
    assert process["user"] == {"uid": 65532, "gid": 65532, "additionalGids": [65532, 5]}
    assert process["noNewPrivileges"] is True
    assert all(process["capabilities"][kind] == [] for kind in ("bounding", "effective", "permitted", "ambient"))
    assert config["root"] == {"path": "/rootfs", "readonly": True}
    assert config["hostname"] == "run-1"
    assert {"type": "network"} not in config["linux"]["namespaces"]  # the node's network: pod IPs on its lo
    assert {"type": "pid"} in config["linux"]["namespaces"]
    assert config["linux"]["resources"] == {"memory": {"limit": 256 * 2**20}}
    binds = [mount for mount in config["mounts"] if mount["type"] == "bind"]
    assert [(bind["destination"], bind["source"], bind["options"][-1]) for bind in binds] == [
        ("/tmp", "/node/tmp", "rw"),  # the outer volume first, so the inner one lands inside it
        ("/tmp/inner", "/node/tmp-inner", "ro"),
    ]


def test_a_container_without_a_security_context_keeps_the_defaults() -> None:
    config = oci_config({"name": "main"}, spec([]), "/rootfs", cgroup_limits=True)
    assert config["root"]["readonly"] is False
    assert config["process"]["noNewPrivileges"] is False
    assert config["process"]["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)
    assert "resources" not in config["linux"]


def test_limits_are_left_out_where_cgroups_refuse_them() -> None:
    assert "resources" not in oci_config(RESTRICTED, spec([]), "/rootfs", cgroup_limits=False)["linux"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group to any group needs root")
def test_fs_group_makes_a_volume_group_owned_group_writable_and_setgid(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    (volume / "sub" / "file").write_text("x")
    (volume / "tool").write_text("#!")
    (volume / "tool").chmod(0o700)
    apply_fs_group(volume, 4321)
    for path in (volume, volume / "sub"):
        assert path.stat().st_gid == 4321
        assert stat.S_IMODE(path.stat().st_mode) & (stat.S_ISGID | stat.S_IRWXG) == stat.S_ISGID | stat.S_IRWXG
    assert (volume / "sub" / "file").stat().st_gid == 4321
    assert stat.S_IMODE((volume / "sub" / "file").stat().st_mode) & stat.S_IRWXG == stat.S_IRGRP | stat.S_IWGRP
    assert stat.S_IMODE((volume / "tool").stat().st_mode) == 0o770
    untouched = tmp_path / "untouched"
    untouched.mkdir()
    before = untouched.stat()
    apply_fs_group(untouched, None)
    assert untouched.stat().st_gid == before.st_gid
    assert untouched.stat().st_mode == before.st_mode
