"""Names shared by every part: the API group, labels, annotations, object naming."""

from typing import Final

GROUP: Final = "agentrun.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "AgentRun"
PLURAL: Final = "agentruns"
SINGULAR: Final = "agentrun"
SHORT_NAMES: Final = ("ar",)
# kubectl expands a category before it looks up a resource name, so no category may equal a kind's name:
# a category "agentrun" made `kubectl get agentrun <name>` mean AgentRuns and ThrottlePools ("you must
# specify only one resource").
CATEGORIES: Final = ("all-agents",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Recommended labels: https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"

PART_OF: Final = "agentrun-operator"
MANAGED_BY: Final = "agentrun-operator"

# Our own labels, under the API group so they never collide with a user's.
LABEL_RUN: Final = f"{GROUP}/run"
LABEL_ROLE: Final = f"{GROUP}/role"
