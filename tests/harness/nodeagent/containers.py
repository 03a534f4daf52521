"""What kubelet prepares before a container starts: its command, environment and volumes.

Everything a container references (Secrets, ConfigMaps, claims) is read from the API server at
start, as kubelet does; a missing non-optional reference is a ``ContainerConfigError`` (env) or a
``VolumeSetupError`` (volumes), and the pod waits in Pending until the reference appears.
"""

import base64
import os
import re
import shutil
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.nodeagent.kube import ApiError, JsonObject, KubeClient, namespaced_path

PYTHON_COMMANDS = re.compile(r"^python(3(\.\d+)?)?$")
# $(VAR) references in env values, command and args; $$ escapes a literal $ (kubelet's expansion).
VARIABLE_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
FIELD_SELECTOR = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ContainerConfigError(Exception):
    """A container's env references a missing Secret, ConfigMap or key: kubelet's CreateContainerConfigError."""


class ContainerCommandError(Exception):
    """The container has no command and its image has none we know: kubelet's CreateContainerError here."""


class VolumeSetupError(Exception):
    """A volume's source is missing: the pod stays ContainerCreating, as with kubelet's FailedMount."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


@dataclass(frozen=True)
class ContainerLaunch:
    """One container, ready to start as a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    working_dir: str | None
    mounts: list[Mount] = field(default_factory=list)
    local_image: str = ""
    """The runc runtime's local image this container runs from (empty: a local process)."""
    container: JsonObject = field(default_factory=dict)
    """The pod's container spec (its securityContext and resources, for the runc runtime)."""


def _decode(values: Mapping[str, str], *, base64_encoded: bool) -> dict[str, bytes]:
    return {key: base64.b64decode(value) if base64_encoded else value.encode() for key, value in values.items()}


class PodEnvironment:
    """Reads and caches the Secrets and ConfigMaps one pod start needs, and asks the TokenRequest API for the
    pod's ServiceAccount tokens as a kubelet does (bound to the pod)."""

    def __init__(self, kube: KubeClient, pod: JsonObject) -> None:
        self._kube = kube
        self._pod = pod
        self._namespace: str = pod["metadata"]["namespace"]
        self._cache: dict[tuple[str, str], dict[str, bytes] | None] = {}

    async def service_account_token(self, projection: Mapping[str, Any]) -> bytes:
        """A token for the pod's ServiceAccount, bound to the pod: what the kubelet writes into a projected
        ``serviceAccountToken`` volume. The Node authorizer lets a node ask only for pods bound to it."""
        metadata = self._pod["metadata"]
        account = self._pod.get("spec", {}).get("serviceAccountName") or "default"
        spec: JsonObject = {
            "expirationSeconds": int(projection.get("expirationSeconds") or 3600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"], "uid": metadata["uid"]},
        }
        if projection.get("audience"):
            spec["audiences"] = [projection["audience"]]
        path = namespaced_path("v1", "serviceaccounts", self._namespace, account) + "/token"
        try:
            answer = await self._kube.create(
                path, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
            )
        except ApiError as error:
            raise VolumeSetupError(
                f"MountVolume.SetUp failed: token for serviceaccount {account!r}: {error}"
            ) from error
        return str(answer["status"]["token"]).encode()

    async def _source(self, kind: str, name: str) -> dict[str, bytes] | None:
        if (kind, name) not in self._cache:
            plural = "secrets" if kind == "Secret" else "configmaps"
            obj = await self._kube.get(namespaced_path("v1", plural, self._namespace, name))
            if obj is None:
                self._cache[kind, name] = None
            elif kind == "Secret":
                self._cache[kind, name] = _decode(obj.get("data") or {}, base64_encoded=True)
            else:
                data = _decode(obj.get("data") or {}, base64_encoded=False)
                data.update(_decode(obj.get("binaryData") or {}, base64_encoded=True))
                self._cache[kind, name] = data
        return self._cache[kind, name]

    async def key(self, kind: str, ref: Mapping[str, Any]) -> str | None:
        """The value of a secretKeyRef/configMapKeyRef; None when optional and missing."""
        name, key, optional = ref.get("name", ""), ref["key"], bool(ref.get("optional"))
        values = await self._source(kind, name)
        if values is None:
            if optional:
                return None
            raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
        if key not in values:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in {kind} {self._namespace}/{name}")
        return values[key].decode()

    async def all_keys(self, kind: str, ref: Mapping[str, Any]) -> dict[str, str]:
        values = await self._source(kind, ref.get("name", ""))
        if values is None:
            if ref.get("optional"):
                return {}
            raise ContainerConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found')
        return {key: value.decode() for key, value in values.items()}

    async def volume_files(
        self, kind: str, name: str, items: list[JsonObject] | None, optional: bool
    ) -> dict[str, bytes]:
        values = await self._source(kind, name)
        if values is None:
            if optional:
                return {}
            raise VolumeSetupError(f'MountVolume.SetUp failed: {kind.lower()} "{name}" not found')
        if not items:
            return dict(values)
        files: dict[str, bytes] = {}
        for item in items:
            if item["key"] not in values:
                if optional:
                    continue
                raise VolumeSetupError(f"MountVolume.SetUp failed: key {item['key']} not found in {kind} {name}")
            files[item["path"]] = values[item["key"]]
        return files

    def field(self, field_path: str) -> str:
        """A downward-API field (fieldRef), as far as a local process has one."""
        metadata, spec, status = self._pod["metadata"], self._pod.get("spec", {}), self._pod.get("status", {})
        simple = {
            "metadata.name": metadata.get("name", ""),
            "metadata.namespace": metadata.get("namespace", ""),
            "metadata.uid": metadata.get("uid", ""),
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": status.get("podIP", "127.0.0.1"),
            "status.hostIP": status.get("hostIP", "127.0.0.1"),
        }
        if field_path in simple:
            return str(simple[field_path])
        selected = FIELD_SELECTOR.match(field_path)
        if selected:
            return str((metadata.get(selected.group(1)) or {}).get(selected.group(2), ""))
        raise ContainerConfigError(f"unsupported fieldRef fieldPath {field_path!r} (node agent)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand $(VAR) from env as kubelet does: unknown references stay as written, $$ becomes $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return VARIABLE_REFERENCE.sub(replace, text)


async def container_env(container: JsonObject, source: PodEnvironment) -> dict[str, str]:
    """The container's own env: envFrom first, then env entries (later entries win), with $(VAR) expansion."""
    env: dict[str, str] = {}
    for env_from in container.get("envFrom") or []:
        prefix = env_from.get("prefix", "")
        if "configMapRef" in env_from:
            values = await source.all_keys("ConfigMap", env_from["configMapRef"])
        else:
            values = await source.all_keys("Secret", env_from["secretRef"])
        env.update({prefix + key: value for key, value in values.items()})
    for entry in container.get("env") or []:
        value_from = entry.get("valueFrom")
        value: str | None
        if value_from is None:
            value = expand(entry.get("value", ""), env)
        elif "secretKeyRef" in value_from:
            value = await source.key("Secret", value_from["secretKeyRef"])
        elif "configMapKeyRef" in value_from:
            value = await source.key("ConfigMap", value_from["configMapKeyRef"])
        elif "fieldRef" in value_from:
            value = source.field(value_from["fieldRef"]["fieldPath"])
        else:
            raise ContainerConfigError(f"env {entry['name']}: valueFrom {sorted(value_from)} is not emulated")
        if value is not None:
            env[entry["name"]] = value
    return env


class ImagePullError(Exception):
    """The node cannot have this image: kubelet's ErrImagePull, then ImagePullBackOff."""


def image_repository(image: str) -> str:
    """``registry/name:tag@digest`` without its tag and digest."""
    without_digest = image.split("@")[0]
    return without_digest.rsplit(":", 1)[0] if ":" in without_digest.split("/")[-1] else without_digest


def check_image(container: JsonObject, image_commands: Mapping[str, list[str]]) -> None:
    """Only the project's own images exist on this node (nothing can be pulled from a registry here)."""
    repository = image_repository(str(container.get("image", "")))
    if repository not in image_commands:
        raise ImagePullError(
            f'Failed to pull image "{container.get("image", "")}": the node agent has only the images '
            f"{sorted(image_commands)} (no registry is reachable)"
        )


def container_argv(container: JsonObject, env: Mapping[str, str], image_commands: Mapping[str, list[str]]) -> list[str]:
    """command + args, with `python` meaning this interpreter so `python -m agentrun_runner` runs the working tree."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        repository = image_repository(str(container.get("image", "")))
        if repository not in image_commands:
            raise ContainerCommandError(
                f"container {container['name']!r} has no command and the node has no ENTRYPOINT for its image; "
                f"set command, or map image {repository!r} in image_commands"
            )
        command = list(image_commands[repository])
    argv = [expand(part, env) for part in command + args]
    if PYTHON_COMMANDS.match(argv[0]):
        argv[0] = sys.executable
    return argv


def _write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    for relative, content in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


async def prepare_volumes(
    pod: JsonObject, source: PodEnvironment, kube: KubeClient, pod_dir: Path
) -> dict[str, tuple[Path, bool]]:
    """Materialise each pod volume as a local directory: name -> (directory, read-only by nature)."""
    namespace = pod["metadata"]["namespace"]
    fs_group = (pod.get("spec", {}).get("securityContext") or {}).get("fsGroup")
    volumes: dict[str, tuple[Path, bool]] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume["name"]
        directory = pod_dir / "volumes" / name
        if "emptyDir" in volume:
            shutil.rmtree(directory, ignore_errors=True)  # fresh for every pod start
            directory.mkdir(parents=True)
            directory.chmod(0o777)  # kubelet's mode for an emptyDir, whoever the containers run as
            apply_fs_group(directory, fs_group)
            volumes[name] = (directory, False)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            path = namespaced_path("v1", "persistentvolumeclaims", namespace, claim)
            found = await kube.get(path)
            if found is None:
                raise VolumeSetupError(f'persistentvolumeclaim "{claim}" not found')
            directory = await _bound_volume_path(kube, claim, found)
            apply_fs_group(directory, fs_group)
            volumes[name] = (directory, bool(volume["persistentVolumeClaim"].get("readOnly")))
        elif "configMap" in volume or "secret" in volume:
            kind, spec = ("ConfigMap", volume["configMap"]) if "configMap" in volume else ("Secret", volume["secret"])
            object_name = spec.get("name") if kind == "ConfigMap" else spec.get("secretName")
            files = await source.volume_files(kind, object_name or "", spec.get("items"), bool(spec.get("optional")))
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            _write_files(directory, files)
            volumes[name] = (directory, True)
        elif "projected" in volume or "downwardAPI" in volume:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            _write_files(directory, await _projected_files(volume, source))
            volumes[name] = (directory, True)
        elif "hostPath" in volume:
            volumes[name] = (Path(volume["hostPath"]["path"]), False)
        else:
            kinds = sorted(set(volume) - {"name"})
            raise VolumeSetupError(f"volume {name!r}: type {kinds} is not supported by the node agent")
    return volumes


def apply_fs_group(directory: Path, fs_group: int | None) -> None:
    """What kubelet does to a writable volume of a pod with an fsGroup: every file and directory in it owned by that
    group and group-writable, directories set-group-ID so new files inherit the group."""
    if fs_group is None:
        return
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            continue
        os.chown(path, -1, int(fs_group))
        mode = path.stat().st_mode
        extra = stat.S_IRGRP | stat.S_IWGRP | (stat.S_IXGRP | stat.S_ISGID if path.is_dir() else 0)
        path.chmod(stat.S_IMODE(mode) | extra | (stat.S_IXGRP if mode & stat.S_IXUSR else 0))


async def _bound_volume_path(kube: KubeClient, claim: str, found: JsonObject) -> Path:
    """The local folder behind a claim the PV binder bound (a hostPath or local PersistentVolume)."""
    volume_name = (found.get("spec") or {}).get("volumeName")
    if (found.get("status") or {}).get("phase") != "Bound" or not volume_name:
        raise VolumeSetupError(f'persistentvolumeclaim "{claim}" is not bound yet')
    volume = await kube.get(f"/api/v1/persistentvolumes/{volume_name}")
    spec = (volume or {}).get("spec") or {}
    local = spec.get("hostPath") or spec.get("local")
    if not local:
        raise VolumeSetupError(
            f"persistentvolume {volume_name!r} is neither hostPath nor local: this node cannot mount it"
        )
    directory = Path(local["path"])
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def _projected_files(volume: JsonObject, source: PodEnvironment) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    sources = (
        volume["projected"].get("sources") or [] if "projected" in volume else [{"downwardAPI": volume["downwardAPI"]}]
    )
    for projection in sources:
        if "configMap" in projection or "secret" in projection:
            kind = "ConfigMap" if "configMap" in projection else "Secret"
            spec = projection["configMap" if kind == "ConfigMap" else "secret"]
            files.update(
                await source.volume_files(kind, spec.get("name", ""), spec.get("items"), bool(spec.get("optional")))
            )
        elif "downwardAPI" in projection:
            for item in projection["downwardAPI"].get("items") or []:
                if "fieldRef" not in item:
                    raise VolumeSetupError(f"downwardAPI item {item['path']!r}: only fieldRef is emulated")
                files[item["path"]] = source.field(item["fieldRef"]["fieldPath"]).encode()
        elif "serviceAccountToken" in projection:
            token = projection["serviceAccountToken"]
            files[token["path"]] = await source.service_account_token(token)
    return files


def container_mounts(
    container: JsonObject, volumes: Mapping[str, tuple[Path, bool]], *, host_mount_points: bool = True
) -> list[Mount]:
    """The container's volumeMounts as bind mounts, with subPath; with ``host_mount_points`` (a local process, which
    sees the host's root) mount points are made on the host, empty; a container's own root gets them from runc."""
    mounts: list[Mount] = []
    for volume_mount in container.get("volumeMounts") or []:
        name = volume_mount["name"]
        if name not in volumes:
            raise ContainerConfigError(f"volumeMount {name!r} names no volume of the pod")
        directory, read_only = volumes[name]
        source = directory / volume_mount["subPath"] if volume_mount.get("subPath") else directory
        target = Path(volume_mount["mountPath"])
        if not source.exists():
            source.mkdir(parents=True)  # kubelet creates a missing subPath as a directory
        mounts.append(Mount(source, str(target), read_only or bool(volume_mount.get("readOnly"))))
        if not host_mount_points:
            continue
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
    for mount in mounts if host_mount_points else []:
        _make_nested_mount_point(mount, mounts)
    return mounts


def _make_nested_mount_point(mount: Mount, mounts: list[Mount]) -> None:
    """A mount inside another mount needs its mount point inside the outer volume, not on the host."""
    target = Path(mount.target)
    outer = [other for other in mounts if other is not mount and Path(other.target) in target.parents]
    if not outer:
        return
    closest = max(outer, key=lambda other: len(other.target))
    inside = closest.source / target.relative_to(closest.target)
    if mount.source.is_dir():
        inside.mkdir(parents=True, exist_ok=True)
    else:
        inside.parent.mkdir(parents=True, exist_ok=True)
        inside.touch(exist_ok=True)
