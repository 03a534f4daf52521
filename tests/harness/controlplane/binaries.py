"""Where the control plane's binaries are: built by tests/kube/build.sh, or a KUBEBUILDER_ASSETS folder."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "tests" / "kube" / "build.sh"


class BinariesMissingError(RuntimeError):
    """A control-plane binary is not built yet; the message says which and how to build it."""


@dataclass(frozen=True)
class KubeBinaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path


def build_dirs() -> tuple[Path, Path]:
    """The folders tests/kube/build.sh writes for the selected minor (KUBE_MINOR), without building."""
    printed = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    return Path(printed[0]), Path(printed[1])


def find_binaries() -> KubeBinaries:
    """The binaries of the selected Kubernetes minor. KUBEBUILDER_ASSETS, the convention of controller-runtime's
    envtest for a folder holding etcd and kube-apiserver, wins for those two when it is set."""
    kube_dir, etcd_dir = build_dirs()
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    assets_dir = Path(assets) if assets else None
    binaries = KubeBinaries(
        etcd=(assets_dir or etcd_dir) / "etcd",
        kube_apiserver=(assets_dir or kube_dir) / "kube-apiserver",
        kube_controller_manager=kube_dir / "kube-controller-manager",
        kube_scheduler=kube_dir / "kube-scheduler",
    )
    missing = [str(path) for path in vars(binaries).values() if not os.access(path, os.X_OK)]
    if missing:
        raise BinariesMissingError(
            f"the control plane's binaries are not built: {', '.join(missing)}; "
            "build them once with `make kube-binaries` (KUBE_MINOR selects the Kubernetes minor)"
        )
    return binaries
