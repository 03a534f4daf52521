"""A local volume provisioner: hostPath PersistentVolumes for claims of the default StorageClass.

It does what an external provisioner (local-path-provisioner, a CSI driver's external-provisioner) does for
the PV binder: for each pending claim of its class it creates a PersistentVolume pre-bound to that claim
(``claimRef`` with the claim's uid), and the real binder in kube-controller-manager completes the binding.
A volume whose claim is gone (phase Released, reclaim policy Delete) is deleted with its folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.harness.nodeagent.kube import ApiError, JsonObject, KubeClient

logger = logging.getLogger(__name__)

STORAGE_CLASS = "agentrun-local"
PROVISIONER = "agentrun.dev/local-test-volumes"
RESYNC_SECONDS = 1.0


class LocalVolumeProvisioner:
    def __init__(self, kubeconfig: Path, volumes_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.volumes_dir = volumes_dir
        self._kube: KubeClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.errors: list[BaseException] = []

    async def __aenter__(self) -> Self:
        self.volumes_dir.mkdir(parents=True, exist_ok=True)
        self._kube = await KubeClient(str(self.kubeconfig)).__aenter__()
        storage_class = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                # The class a claim without storageClassName gets (DefaultStorageClass admission plugin).
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        with contextlib.suppress(ApiError):
            await self._kube.create("/apis/storage.k8s.io/v1/storageclasses", storage_class)
        self._task = asyncio.create_task(self._run(), name="local volume provisioner")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._kube is not None:
            await self._kube.__aexit__(None, None, None)

    async def _run(self) -> None:
        assert self._kube is not None
        while True:
            try:
                await self._sync(self._kube)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("local volume provisioner: %s", error)
                self.errors.append(error)
            await asyncio.sleep(RESYNC_SECONDS)

    async def _sync(self, kube: KubeClient) -> None:
        volumes = await kube.list("/api/v1/persistentvolumes")
        provisioned = {
            (volume["spec"]["claimRef"].get("uid")): volume
            for volume in volumes
            if volume["spec"].get("storageClassName") == STORAGE_CLASS and volume["spec"].get("claimRef")
        }
        for claim in await kube.list("/api/v1/persistentvolumeclaims"):
            spec, metadata = claim.get("spec") or {}, claim["metadata"]
            if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName"):
                continue
            if metadata["uid"] not in provisioned and not metadata.get("deletionTimestamp"):
                await kube.create("/api/v1/persistentvolumes", self._volume_for(claim))
        for volume in volumes:
            if (volume.get("status") or {}).get("phase") == "Released" and volume["spec"].get(
                "storageClassName"
            ) == STORAGE_CLASS:
                shutil.rmtree(volume["spec"]["hostPath"]["path"], ignore_errors=True)
                await kube.delete(f"/api/v1/persistentvolumes/{volume['metadata']['name']}")

    def _volume_for(self, claim: JsonObject) -> JsonObject:
        metadata, spec = claim["metadata"], claim["spec"]
        name = f"pvc-{metadata['uid']}"
        path = self.volumes_dir / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # as local-path provisioners make it: writable by a pod's non-root user without fsGroup
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": metadata["namespace"],
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                },
            },
        }
