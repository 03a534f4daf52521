"""The OCI runtime configuration (runc's config.json) of one container, from its image and its pod's spec.

What a kubelet and containerd decide together before ``runc run``: the process's arguments (the pod's
``command`` replaces the image's Entrypoint, ``args`` its Cmd), environment, working directory and user; the
``runAsNonRoot`` check; capabilities; no new privileges; a read-only root; the pod's volumes as bind mounts; memory
and CPU limits. Pure functions of their inputs (no runc, no buildah), so they are tested on their own.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.harness.nodeagent.containers import ContainerConfigError, Mount, expand
from tests.harness.nodeagent.kube import JsonObject

# containerd's default capability set (what a container without a securityContext gets).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
ALL_CAPABILITIES = (
    *DEFAULT_CAPABILITIES,
    "CAP_DAC_READ_SEARCH",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_LEASE",
    "CAP_AUDIT_CONTROL",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
)
# The file systems every container has (runc's own defaults), and the paths it masks or keeps read-only.
BASE_MOUNTS: tuple[JsonObject, ...] = (
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
)
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
CPU_PERIOD_MICROSECONDS = 100_000
QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
QUANTITY_SUFFIXES = {
    "": 1,
    "m": 0.001,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


@dataclass(frozen=True)
class ImageConfig:
    """What an image's config says about running it (the OCI image config's ``config``)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""

    @classmethod
    def from_oci(cls, config: Mapping[str, Any]) -> "ImageConfig":
        return cls(
            entrypoint=list(config.get("Entrypoint") or []),
            cmd=list(config.get("Cmd") or []),
            env=list(config.get("Env") or []),
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
        )

    def env_map(self) -> dict[str, str]:
        return dict(entry.partition("=")[::2] for entry in self.env)


@dataclass(frozen=True)
class ProcessUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


def effective_security_context(pod: JsonObject, container: JsonObject) -> dict[str, Any]:
    """The pod's securityContext overlaid with the container's, field by field (kubelet's effective context)."""
    pod_context = pod.get("spec", {}).get("securityContext") or {}
    shared = ("runAsUser", "runAsGroup", "runAsNonRoot", "seLinuxOptions", "seccompProfile")
    effective = {key: pod_context[key] for key in shared if key in pod_context}
    effective.update(container.get("securityContext") or {})
    return effective


def container_args(container: JsonObject, image: ImageConfig, env: Mapping[str, str]) -> list[str]:
    """The process's argv as Kubernetes has it: ``command`` replaces the Entrypoint (and drops the Cmd), ``args``
    replace the Cmd; $(VAR) references expanded from the container's env."""
    command = container.get("command")
    args = container.get("args")
    argv = [*command, *(args or [])] if command else [*image.entrypoint, *(args or image.cmd)]
    if not argv:
        raise ContainerConfigError(f"container {container['name']!r}: neither the pod nor the image has a command")
    return [expand(str(part), env) for part in argv]


def _passwd_entry(passwd: str, name_or_uid: str) -> tuple[int, int] | None:
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and name_or_uid in (fields[0], fields[2]):
            return int(fields[2]), int(fields[3])
    return None


def _group_id(group: str, groups: str) -> int:
    if group.isdigit():
        return int(group)
    for line in groups.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == group:
            return int(fields[2])
    raise ContainerConfigError(f"unable to find group {group}: no matching entries in group file")


def _pod_name(pod: JsonObject) -> str:
    metadata = pod["metadata"]
    return f"{metadata['name']}_{metadata['namespace']}({metadata.get('uid', '')})"


def _image_uid(image: ImageConfig) -> int | None:
    """The image USER's uid: 0 when it names none, None when it is a name (only the image's passwd knows it)."""
    user = image.user.partition(":")[0]
    return int(user) if user.isdigit() else (0 if not user else None)


def refuse_root(pod: JsonObject, container: JsonObject, image: ImageConfig) -> None:
    """runAsNonRoot as kubelet checks it before creating the container (its messages; CreateContainerConfigError):
    an explicit runAsUser 0, an image whose user is root, or a user name it cannot verify."""
    context = effective_security_context(pod, container)
    if not context.get("runAsNonRoot"):
        return
    where = f"(pod: {_pod_name(pod)!r}, container: {container['name']})"
    if context.get("runAsUser") is not None:
        if int(context["runAsUser"]) == 0:
            raise ContainerConfigError(f"container's runAsUser breaks non-root policy {where}")
        return
    uid = _image_uid(image)
    if uid == 0:
        raise ContainerConfigError(f"container has runAsNonRoot and image will run as root {where}")
    if uid is None:
        raise ContainerConfigError(
            f"container has runAsNonRoot and image has non-numeric user ({image.user.partition(':')[0]}), "
            f"cannot verify user is non-root {where}"
        )


def process_user(
    pod: JsonObject, container: JsonObject, image: ImageConfig, *, passwd: str = "", group: str = ""
) -> ProcessUser:
    """The uid and gids the container runs with: runAsUser/runAsGroup (container over pod), else the image's USER
    (a name looked up in the image's /etc/passwd); fsGroup and supplementalGroups as additional groups. A root user
    under runAsNonRoot is refused first (``refuse_root``)."""
    refuse_root(pod, container, image)
    context = effective_security_context(pod, container)
    pod_context = pod.get("spec", {}).get("securityContext") or {}
    image_user, _, image_group = image.user.partition(":")
    image_uid = _image_uid(image)
    if context.get("runAsUser") is not None:
        uid = int(context["runAsUser"])
        entry = _passwd_entry(passwd, str(uid))
        gid = entry[1] if entry else 0
    elif image_uid is not None:
        uid = image_uid
        entry = _passwd_entry(passwd, image_user) if image_user else None
        gid = entry[1] if entry else 0
    else:
        entry = _passwd_entry(passwd, image_user)
        if entry is None:
            raise ContainerConfigError(f"unable to find user {image_user}: no matching entries in passwd file")
        uid, gid = entry
    if image_group and context.get("runAsUser") is None:
        gid = _group_id(image_group, group)
    if context.get("runAsGroup") is not None:
        gid = int(context["runAsGroup"])
    extra = [int(g) for g in pod_context.get("supplementalGroups") or []]
    if pod_context.get("fsGroup") is not None:
        extra.insert(0, int(pod_context["fsGroup"]))
    return ProcessUser(uid, gid, tuple(dict.fromkeys(g for g in extra if g != gid)))


def _capability_name(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") else f"CAP_{name}"


def capabilities(container: JsonObject) -> list[str]:
    """The runtime's default set, minus ``drop`` (ALL: every one), plus ``add`` (ALL: every one)."""
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        return list(ALL_CAPABILITIES)
    wanted = context.get("capabilities") or {}
    drop = {_capability_name(name) for name in wanted.get("drop") or []}
    add = [_capability_name(name) for name in wanted.get("add") or []]
    kept = [] if "CAP_ALL" in drop else [cap for cap in DEFAULT_CAPABILITIES if cap not in drop]
    if "CAP_ALL" in add:
        return list(ALL_CAPABILITIES)
    return list(dict.fromkeys([*kept, *add]))


def parse_quantity(quantity: str | int | float) -> float:
    """A Kubernetes quantity (``512Mi``, ``250m``, ``1.5``) as a number."""
    match = QUANTITY.match(str(quantity).strip())
    if not match or match.group(2) not in QUANTITY_SUFFIXES:
        raise ContainerConfigError(f"quantity {quantity!r} is not one the node agent reads")
    return float(match.group(1)) * QUANTITY_SUFFIXES[match.group(2)]


def linux_resources(container: JsonObject) -> JsonObject:
    """resources.limits as runc's linux.resources: memory in bytes, CPU as a CFS quota per 100 ms period."""
    limits = (container.get("resources") or {}).get("limits") or {}
    resources: JsonObject = {}
    if "memory" in limits:
        resources["memory"] = {"limit": int(parse_quantity(limits["memory"]))}
    if "cpu" in limits:
        quota = max(1000, int(parse_quantity(limits["cpu"]) * CPU_PERIOD_MICROSECONDS))
        resources["cpu"] = {"quota": quota, "period": CPU_PERIOD_MICROSECONDS}
    return resources


def bind_mounts(mounts: Sequence[Mount]) -> list[JsonObject]:
    """The pod's volumes as bind mounts, outer before inner (a volume at /tmp before one at /tmp/x)."""
    ordered = sorted(mounts, key=lambda mount: mount.target.rstrip("/").count("/"))
    return [
        {
            "destination": mount.target,
            "type": "bind",
            "source": str(mount.source),
            "options": ["rbind", "rprivate", "ro" if mount.read_only else "rw"],
        }
        for mount in ordered
    ]


@dataclass(frozen=True)
class ContainerSpec:
    """Everything ``oci_config`` needs besides the image: the resolved argv, env, user and mounts."""

    argv: list[str]
    env: Mapping[str, str]
    cwd: str
    user: ProcessUser
    mounts: Sequence[Mount]
    hostname: str


def oci_config(
    container: JsonObject, spec: ContainerSpec, rootfs: str, *, cgroup_limits: bool, cgroups_path: str = ""
) -> JsonObject:
    """runc's config.json: the host's network namespace (pods use their IPs on the node's ``lo``), a pid, ipc, uts
    and mount namespace of the container's own."""
    context = container.get("securityContext") or {}
    caps = capabilities(container)
    linux: JsonObject = {
        "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")],
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if cgroups_path:
        linux["cgroupsPath"] = cgroups_path
    if cgroup_limits:
        resources = linux_resources(container)
        if resources:
            linux["resources"] = resources
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {
                "uid": spec.user.uid,
                "gid": spec.user.gid,
                **({"additionalGids": list(spec.user.additional_gids)} if spec.user.additional_gids else {}),
            },
            "args": list(spec.argv),
            "env": [f"{name}={value}" for name, value in spec.env.items()],
            "cwd": spec.cwd or "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "inheritable": [],
                "ambient": [],
            },
            # allowPrivilegeEscalation defaults to true in Kubernetes unless the capabilities forbid it
            "noNewPrivileges": context.get("allowPrivilegeEscalation") is False,
        },
        "root": {"path": rootfs, "readonly": bool(context.get("readOnlyRootFilesystem"))},
        "hostname": spec.hostname,
        "mounts": [*BASE_MOUNTS, *bind_mounts(spec.mounts)],
        "linux": linux,
    }
