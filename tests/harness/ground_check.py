"""What a test needs from this machine before it starts a control plane: the built binaries (their absence
fails the test, with the command that builds them) and mount namespaces for the node agent (their absence
skips it, saying why)."""

import pytest

from tests.harness.controlplane import BinariesMissingError, find_binaries
from tests.harness.nodeagent import MountNamespaceUnavailableError, check_mount_namespaces


def require_real_ground(what: str) -> None:
    """Fail or skip the calling test unless ``what`` (named in the skip reason) can run here."""
    try:
        find_binaries()
    except BinariesMissingError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        check_mount_namespaces()
    except MountNamespaceUnavailableError as error:
        pytest.skip(f"the node agent cannot run pods here, so {what} cannot start: {error}")
