"""Where the test control plane's binaries come from: tests/kube/build.sh's folders, or KUBEBUILDER_ASSETS."""

import os
import stat
from pathlib import Path

import pytest

from tests.harness.controlplane import BinariesMissingError, binaries

pytestmark = pytest.mark.unit


def _executables(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def build_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    kube_dir, etcd_dir = tmp_path / "kube", tmp_path / "etcd"
    monkeypatch.setattr(binaries, "build_dirs", lambda: (kube_dir, etcd_dir))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    return kube_dir, etcd_dir


def test_built_binaries_are_found_in_the_folders_of_the_selected_minor(build_dirs: tuple[Path, Path]) -> None:
    kube_dir, etcd_dir = build_dirs
    _executables(kube_dir, "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    _executables(etcd_dir, "etcd")

    found = binaries.find_binaries()

    assert found.kube_apiserver == kube_dir / "kube-apiserver"
    assert found.etcd == etcd_dir / "etcd"


def test_kubebuilder_assets_supplies_etcd_and_kube_apiserver(
    build_dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube_dir, _ = build_dirs
    assets = tmp_path / "assets"
    _executables(assets, "etcd", "kube-apiserver")
    _executables(kube_dir, "kube-controller-manager", "kube-scheduler")  # envtest's folder has only the first two
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))

    found = binaries.find_binaries()

    assert (found.etcd, found.kube_apiserver) == (assets / "etcd", assets / "kube-apiserver")
    assert found.kube_scheduler == kube_dir / "kube-scheduler"


def test_missing_binaries_name_themselves_and_the_command_that_builds_them(build_dirs: tuple[Path, Path]) -> None:
    kube_dir, etcd_dir = build_dirs
    _executables(etcd_dir, "etcd")

    with pytest.raises(BinariesMissingError) as raised:
        binaries.find_binaries()

    assert str(kube_dir / "kube-apiserver") in str(raised.value)
    assert "make kube-binaries" in str(raised.value)


def test_the_build_script_prints_folders_keyed_by_the_pinned_versions() -> None:
    kube_dir, etcd_dir = binaries.build_dirs()
    pinned_minor = (binaries.REPO_ROOT / "tests" / "kube" / "default-minor").read_text().strip()
    selected = os.environ.get("KUBE_MINOR", pinned_minor)
    assert kube_dir.parent == binaries.REPO_ROOT / ".tools" / "kube"
    assert kube_dir.name.startswith(f"v{selected}.")
    assert etcd_dir.name.startswith("v3.6.")
