"""The project's source roots: what a process the tests start puts on PYTHONPATH to import the working tree."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every package folder (api, common, operator, runner, gateway), then the repository root for tests.harness.
SOURCE_ROOTS = [REPO_ROOT / part for part in ("api", "common", "operator", "runner_image", "gateway")] + [REPO_ROOT]


def pythonpath() -> str:
    """PYTHONPATH for a child process that must import the working tree's packages."""
    return os.pathsep.join(str(root) for root in SOURCE_ROOTS)
