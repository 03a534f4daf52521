"""A fault-injecting, request-recording reverse proxy between a client under test and a real kube-apiserver."""

from tests.harness.apiproxy.accounting import RequestLog, RequestRecord
from tests.harness.apiproxy.discovery import DiscoveryError, KindResolver
from tests.harness.apiproxy.faults import Fault, Faults, InjectedError, RequestPredicate
from tests.harness.apiproxy.kubeconfig import kubeconfig, write_kubeconfig
from tests.harness.apiproxy.proxy import ApiProxy
from tests.harness.apiproxy.requestinfo import RequestInfo, parse_request_info
from tests.harness.apiproxy.threaded import ThreadedApiProxy

__all__ = [
    "ApiProxy",
    "DiscoveryError",
    "Fault",
    "Faults",
    "InjectedError",
    "KindResolver",
    "RequestInfo",
    "RequestLog",
    "RequestPredicate",
    "RequestRecord",
    "ThreadedApiProxy",
    "kubeconfig",
    "parse_request_info",
    "write_kubeconfig",
]
