"""An emulated Kubernetes API server for integration and e2e tests, over real HTTP on 127.0.0.1 (built on kmock)."""

from tests.harness.apiserver.accounting import RequestLog, RequestRecord
from tests.harness.apiserver.errors import ApiError
from tests.harness.apiserver.faults import Fault, Faults
from tests.harness.apiserver.server import (
    ApiServerSettings,
    EmulatedApiServer,
    ThreadedApiServer,
    kubeconfig,
    load_crds,
)
from tests.harness.apiserver.store import Store

__all__ = [
    "ApiError",
    "ApiServerSettings",
    "EmulatedApiServer",
    "Fault",
    "Faults",
    "RequestLog",
    "RequestRecord",
    "Store",
    "ThreadedApiServer",
    "kubeconfig",
    "load_crds",
]
