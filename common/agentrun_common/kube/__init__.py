"""The Kubernetes API client the operator, the runner and the stream gateway share."""

from agentrun_common.kube.client import ApiError, KubeClient
from agentrun_common.kube.credentials import Credentials, CredentialsError

__all__ = ["ApiError", "Credentials", "CredentialsError", "KubeClient"]
