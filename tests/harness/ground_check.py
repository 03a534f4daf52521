"""What a test needs from this machine before it starts a control plane: the built binaries (their absence
fails the test, with the command that builds them), mount namespaces for the node agent and addresses on `lo` for
the pod network (their absence skips it, saying why)."""

import pytest

from tests.harness.controlplane import BinariesMissingError, find_binaries
from tests.harness.nodeagent import MountNamespaceUnavailableError, check_mount_namespaces
from tests.harness.podnet.addresses import AddressError, check_pod_network


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
    try:
        check_pod_network()
    except AddressError as error:
        pytest.skip(f"the pod network cannot give pods addresses here, so {what} cannot start: {error}")
