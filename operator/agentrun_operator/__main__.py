"""`python -m agentrun_operator`: run the operator with the settings from the environment."""

import asyncio
import logging
import sys

# kopf adapts the object models of the official Kubernetes clients when they are importable, and
# imports the whole library to find out (12 MiB resident, 0.3 s of start). The operator never hands
# kopf such objects (it has its own API client; the library is installed for the kubectl plugin), so
# this process hides them: kopf's optional import then fails as if they were not installed.
for _optional_client in ("kubernetes", "kubernetes_asyncio", "pykube"):
    sys.modules.setdefault(_optional_client, None)  # type: ignore[arg-type]

import kopf  # noqa: E402 - after hiding the optional clients from it

from agentrun_common.settings import SettingsError  # noqa: E402
from agentrun_operator.logs import configure_logging  # noqa: E402
from agentrun_operator.settings import OperatorSettings  # noqa: E402


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main() -> int:
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as error:
        sys.stderr.write(f"agentrun-operator: {error}\n")
        return 2
    configure_logging(settings.log_format)
    import agentrun_operator.handlers  # noqa: F401 - registers the handlers with kopf

    memo = kopf.Memo(operator_settings=settings)
    liveness = (
        f"http://{_url_host(settings.listen_host)}:{settings.health_port}/healthz" if settings.health_port else None
    )
    asyncio.run(
        kopf.operator(
            clusterwide=not settings.watch_namespace,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness,
            memo=memo,
        )
    )
    logging.getLogger(__name__).info("operator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
