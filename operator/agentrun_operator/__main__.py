"""`python -m agentrun_operator`: run the operator with the settings from the environment."""

import asyncio
import logging
import sys

import kopf

from agentrun_operator.logs import configure_logging
from agentrun_operator.settings import OperatorSettings, SettingsError


def main() -> int:
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as error:
        sys.stderr.write(f"agentrun-operator: {error}\n")
        return 2
    configure_logging(settings.log_format)
    import agentrun_operator.handlers  # noqa: F401 - registers the handlers with kopf

    memo = kopf.Memo(operator_settings=settings)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
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
