"""How the operator's replicas share the work: kopf peering, or standalone for a single replica."""

import secrets

import kopf

from agentrun_operator.settings import OperatorSettings

# kopf freezes every replica when two share a priority, so each process draws its own from a range
# wide enough that a tie between a handful of replicas does not happen in practice.
PRIORITY_RANGE = 2**31 - 1


def configure_peering(settings: kopf.OperatorSettings, config: OperatorSettings) -> None:
    """With a peering object named, the highest-priority replica serves and the others stand by until
    its peering record goes stale; without one, the operator runs standalone (one replica only)."""
    if not config.peering_name:
        settings.peering.standalone = True
        return
    settings.peering.standalone = False
    settings.peering.mandatory = True  # never serve unpeered: a second replica would do the same work
    settings.peering.name = config.peering_name
    settings.peering.priority = 1 + secrets.randbelow(PRIORITY_RANGE)
