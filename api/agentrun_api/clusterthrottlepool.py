"""The ClusterThrottlePool resource: one provider budget shared by runs of many namespaces.

A provider's limits belong to an API key, and one key's limits are often per organisation: teams in
different namespaces, each with a Secret holding the same key, share them. A ClusterThrottlePool is a
cluster-scoped ThrottlePool (same spec and status) that runs of any namespace allowed to use it join
with ``spec.throttle.clusterPool``.

Who may use one is plain Kubernetes RBAC: the verb ``use`` on ``clusterthrottlepools`` (optionally by
resource name) in group ``agentrun.dev``, granted with a ClusterRoleBinding to a namespace's
ServiceAccounts group (``system:serviceaccounts:<namespace>``) or to one run's ServiceAccount
(``<run>-runner``). The operator's permit server asks the API server (SubjectAccessReview) for the
run's ServiceAccount before it grants a permit. RBAC rather than an allowed-namespaces selector in the
pool: tenants cannot grant it to themselves (a RoleBinding cannot grant a cluster-scoped resource, and
namespace labels are not needed), admins review it with the tools they already use
(``kubectl auth can-i use clusterthrottlepools/<pool> --as=system:serviceaccount:<ns>:<run>-runner``),
and it can be as narrow as one ServiceAccount.
"""

from typing import Final

from agentrun_api import constants
from agentrun_api.throttlepool import ThrottlePoolSpec, ThrottlePoolStatus

KIND: Final = "ClusterThrottlePool"
PLURAL: Final = "clusterthrottlepools"
SINGULAR: Final = "clusterthrottlepool"
SHORT_NAMES: Final = ("ctp",)
CRD_NAME: Final = f"{PLURAL}.{constants.GROUP}"
# The RBAC verb that lets a run's ServiceAccount draw permits from a ClusterThrottlePool.
USE_VERB: Final = "use"

ClusterThrottlePoolSpec = ThrottlePoolSpec
ClusterThrottlePoolStatus = ThrottlePoolStatus
