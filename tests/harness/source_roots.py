"""The project's source roots: what a process the tests start puts on PYTHONPATH to import the working tree."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("api", "common", "operator", "runner_image", "gateway")
# What the gateway image holds (gateway/Dockerfile).
GATEWAY_IMAGE_FOLDERS = ("api", "common", "gateway")
# Every package folder, then the repository root for tests.harness.
SOURCE_ROOTS = [REPO_ROOT / folder for folder in PACKAGE_FOLDERS] + [REPO_ROOT]


def pythonpath(folders: tuple[str, ...] = PACKAGE_FOLDERS) -> str:
    """PYTHONPATH for a child process that must import the working tree's packages: those package folders,
    then the repository root for tests.harness."""
    return os.pathsep.join(str(root) for root in [*(REPO_ROOT / folder for folder in folders), REPO_ROOT])
