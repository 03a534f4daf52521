"""The Makefile is the one source of commands: `make help` lists them as a reader should see them."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")


def make_help(*overrides: str) -> str:
    assert MAKE is not None
    done = subprocess.run(
        [MAKE, "--no-print-directory", "-C", str(REPO_ROOT), "help", *overrides],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # the target names are coloured


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_help_shows_the_values_of_the_variables_its_descriptions_name() -> None:
    listing = make_help()
    assert "$(" not in listing, listing
    assert re.search(r"kind-up\s+Create the kind cluster kind-agentrun\n", listing), listing
    assert re.search(r"e2e-cluster\s+Run the cluster tests against kind-agentrun\n", listing), listing
    assert "Create the kind cluster kind-dev\n" in make_help("KIND_CLUSTER=dev")
