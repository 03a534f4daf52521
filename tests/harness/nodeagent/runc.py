"""The runc container runtime of the node agent: each container from its image, held by buildah, run by runc.

For each container start: a fresh root file system (``buildah from --pull-never`` and ``buildah mount``, removed when
the container ends), a bundle whose config.json ``oci.py`` builds from the image and the pod's spec, and ``runc run``
in the foreground, its output into the container's log. Signals go through ``runc kill``; exec probes enter the
container's init process (``runc state``).
"""

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.harness.nodeagent.containers import ContainerLaunch, ImagePullError, image_repository
from tests.harness.nodeagent.kube import JsonObject
from tests.harness.nodeagent.oci import ContainerSpec, ImageConfig, oci_config, process_user

logger = logging.getLogger(__name__)

STORAGE_DRIVER = os.environ.get("STORAGE_DRIVER", "vfs")  # the driver `make images` builds with
STATE_WAIT_SECONDS = 30.0
CGROUP_ROOT = Path("/sys/fs/cgroup")


class RuncUnavailableError(RuntimeError):
    """runc or buildah is missing, or this machine does not let them run containers."""


async def _run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode or 1, argv, out, err)
    return out.decode().strip()


def buildah_argv(*args: str) -> tuple[str, ...]:
    """A buildah command on the storage `make images` fills."""
    return ("buildah", "--storage-driver", STORAGE_DRIVER, *args)


def check_runc() -> None:
    """runc and buildah are installed and this process may run containers (root)."""
    missing = [tool for tool in ("runc", "buildah") if shutil.which(tool) is None]
    if missing:
        raise RuncUnavailableError(f"the runc runtime needs {' and '.join(missing)} (make image-tools installs them)")
    if os.geteuid() != 0:
        raise RuncUnavailableError("the runc runtime needs root")


def local_image_names() -> list[str]:
    """Every name of every image in buildah's store (empty when buildah is missing or fails)."""
    try:
        listed = subprocess.run(
            buildah_argv("images", "--json"), capture_output=True, text=True, check=False, timeout=60
        )
    except OSError:
        return []
    images = json.loads(listed.stdout or "[]") if listed.returncode == 0 else []
    return sorted(name for image in images or [] for name in image.get("names") or [])


def cgroup_limits_usable() -> str:
    """Empty when memory and CPU limits can be set in cgroups here (runc sets them); else why not."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        controllers = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
        missing = {"memory", "cpu"} - set(controllers)
        return f"cgroup v2 without the {sorted(missing)} controllers" if missing else ""
    probe_name = f"agentrun-limit-check-{os.getpid()}"
    for controller, knob, value in (
        ("memory", "memory.limit_in_bytes", "67108864"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
    ):
        probe = CGROUP_ROOT / controller / probe_name
        try:
            probe.mkdir()
            (probe / knob).write_text(value)
        except OSError as error:
            return f"cgroup v1 {controller} controller refused a limit: {error}"
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()
    return ""


@dataclass
class RuncContainer:
    """One started container: ``process`` is ``runc run``, which exits with the container's exit code (128+N when
    signal N killed it)."""

    runtime: "RuncRuntime"
    container_id: str
    process: asyncio.subprocess.Process
    bundle: Path
    buildah_container: str
    pid: int = 0
    user: tuple[int, int] | None = None
    """The uid and gid its process runs as (exec probes run as them)."""

    @property
    def uri(self) -> str:
        """The containerID of the container's status, as kubelet writes ``containerd://<id>``."""
        return f"runc://{self.container_id}"

    def signal(self, sig: signal.Signals) -> None:
        """``runc kill``: the signal reaches the container's init process (PID 1 in its namespace, which ignores a
        signal it installed no handler for, as in any container); SIGKILL ends every process of the container."""
        self.runtime.runc_sync("kill", self.container_id, sig.name.removeprefix("SIG"))

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            await _run(*self.runtime.runc_argv("delete", "--force", self.container_id))
        await self.runtime.remove_rootfs(self.buildah_container)
        shutil.rmtree(self.bundle, ignore_errors=True)


class RuncRuntime:
    """Containers from local images (buildah's store) under runc, state under ``state_dir``."""

    def __init__(self, state_dir: Path, image_aliases: Mapping[str, str]) -> None:
        self._root = state_dir / "runc"
        self._bundles = state_dir / "bundles"
        self._aliases = dict(image_aliases)
        self._configs: dict[str, ImageConfig] = {}
        self._limits_refused: str | None = None

    def runc_argv(self, *args: str) -> tuple[str, ...]:
        return ("runc", "--root", str(self._root), *args)

    def runc_sync(self, *args: str) -> None:
        """A runc command from any thread (tests signal containers from theirs); a gone container is no error."""
        result = subprocess.run(self.runc_argv(*args), capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0 and "not exist" not in result.stderr and "not running" not in result.stderr:
            raise ProcessLookupError(f"runc {' '.join(args)}: {result.stderr.strip()}")

    def limits_refused(self) -> str:
        """Why resources.limits are left out of containers here (checked once, logged once); empty: applied."""
        if self._limits_refused is None:
            self._limits_refused = cgroup_limits_usable()
            if self._limits_refused:
                logger.warning("runc runtime: resources.limits are NOT applied: %s", self._limits_refused)
        return self._limits_refused

    async def resolve_image(self, image: str) -> tuple[str, ImageConfig]:
        """The local image a pod's image names (itself, or the alias of its repository) and its config; none:
        ErrImagePull, as a node without registry access has it."""
        candidates = [image]
        alias = self._aliases.get(image_repository(image))
        if alias:
            candidates.append(alias)
        for name in candidates:
            if name in self._configs:
                return name, self._configs[name]
            try:
                inspected = json.loads(await _run(*buildah_argv("inspect", "--type", "image", name)))
            except subprocess.CalledProcessError:
                continue
            config = ImageConfig.from_oci(inspected.get("OCIv1", {}).get("config") or {})
            self._configs[name] = config
            return name, config
        raise ImagePullError(
            f'Failed to pull image "{image}": no local image {" or ".join(repr(c) for c in candidates)} '
            "(the runc runtime runs images `make images` built; no registry is reachable)"
        )

    async def remove_rootfs(self, buildah_container: str) -> None:
        for args in (("umount", buildah_container), ("rm", buildah_container)):
            with contextlib.suppress(subprocess.CalledProcessError):
                await _run(*buildah_argv(*args))

    async def start(self, launch: ContainerLaunch, pod: JsonObject, log: IO[bytes]) -> RuncContainer:
        """Create the container's root file system and bundle, and start it; raises OSError or CalledProcessError
        when it cannot (the caller reports a start error)."""
        assert launch.local_image, "a runc launch names its local image"
        container = launch.container
        image = self._configs[launch.local_image]
        container_id = f"{pod['metadata']['name'][:40]}-{launch.name[:20]}-{secrets.token_hex(4)}"
        buildah_container = await _run(
            *buildah_argv("from", "--quiet", "--pull-never", "--name", container_id, launch.local_image)
        )
        bundle = self._bundles / container_id
        try:
            rootfs = await _run(*buildah_argv("mount", buildah_container))
            user = process_user(
                pod,
                container,
                image,
                passwd=_read_text(Path(rootfs) / "etc/passwd"),
                group=_read_text(Path(rootfs) / "etc/group"),
            )
            spec = ContainerSpec(
                argv=launch.argv,
                env=launch.env,
                cwd=launch.working_dir or image.working_dir or "/",
                user=user,
                mounts=launch.mounts,
                hostname=pod["metadata"]["name"][:63],
            )
            config = oci_config(container, spec, rootfs, cgroup_limits=not self.limits_refused())
            bundle.mkdir(parents=True)
            (bundle / "config.json").write_text(json.dumps(config, indent=1))
            self._root.mkdir(parents=True, exist_ok=True)
            process = await asyncio.create_subprocess_exec(
                *self.runc_argv("run", "--bundle", str(bundle), container_id),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            await self.remove_rootfs(buildah_container)
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        started = RuncContainer(self, container_id, process, bundle, buildah_container, user=(user.uid, user.gid))
        started.pid = await self._init_pid(started)
        return started

    async def _init_pid(self, container: RuncContainer) -> int:
        """The container's init process as the host sees it, once runc reports it (0 if it ended first)."""
        deadline = time.monotonic() + STATE_WAIT_SECONDS
        while time.monotonic() < deadline and container.process.returncode is None:
            with contextlib.suppress(subprocess.CalledProcessError, json.JSONDecodeError):
                state = json.loads(await _run(*self.runc_argv("state", container.container_id)))
                if state.get("status") in ("running", "stopped") and state.get("pid"):
                    return int(state["pid"])
            await asyncio.sleep(0.05)
        return 0


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
