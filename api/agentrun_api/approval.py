"""The AgentRunApproval resource: one person's decision on one tool call that waits for approval.

Who may decide is Kubernetes RBAC on this resource (verb ``create`` on ``agentrunapprovals``), apart from the
right to create or edit AgentRuns, so a run's author need not be its approver. Who decided cannot be forged:
``spec.decidedBy`` must equal the user the API server authenticated for the create request, which a
ValidatingAdmissionPolicy (``admission_policy``) checks, and the spec is immutable afterwards (a CEL rule of the
CRD). The one exception is a recorder: a service that authenticates people itself (the runs API of the stream
gateway) records a decision in the name of the user it authenticated, with ``spec.recordedBy`` its own name, which
admission requires to be the creator, who must hold the RBAC verb ``record`` on agentrunapprovals (``RECORD_VERB``).
The operator copies decision, reason and decider into the run's ``status.approvals``.

The CRD's schema is generated from these models (``agentrun_api.crd``), as for AgentRun.
"""

import sys
from typing import Any, Final, Literal

import yaml
from pydantic import Field

from agentrun_api import constants
from agentrun_api.names import RUN_NAME_MAX_LENGTH, RUN_NAME_PATTERN
from agentrun_api.spec import SpecModel

KIND: Final = "AgentRunApproval"
PLURAL: Final = "agentrunapprovals"
SINGULAR: Final = "agentrunapproval"
SHORT_NAMES: Final = ("arapproval",)
CRD_NAME: Final = f"{PLURAL}.{constants.GROUP}"
POLICY_NAME: Final = f"{PLURAL}-decided-by.{constants.GROUP}"
CALL_KEY_PATTERN: Final = r"^[-0-9a-zA-Z]+:[0-9]+:[0-9]+$"

# The RBAC verb on agentrunapprovals that lets its holder record decisions in the name of users it authenticated
# (chart: the stream gateway's ServiceAccount alone). A verb of its own, so no other right implies it.
RECORD_VERB: Final = "record"

APPROVED: Final = "Approved"
DENIED: Final = "Denied"


def approval_name(run: str, key: str) -> str:
    """One object per call (so a second decision on it is refused as AlreadyExists): <run>-<iteration>-<index>."""
    _uid, iteration, index = key.split(":")
    return f"{run}-{iteration}-{index}"


class AgentRunApprovalSpec(SpecModel):
    """A decision on one tool call of one AgentRun; immutable once created."""

    run: str = Field(
        min_length=1,
        max_length=RUN_NAME_MAX_LENGTH,
        pattern=RUN_NAME_PATTERN,
        description="Name of the AgentRun, in this namespace.",
    )
    call: str = Field(
        min_length=5,
        max_length=128,
        pattern=CALL_KEY_PATTERN,
        description="The call's idempotency key, {run uid}:{iteration}:{index}, as in the run's "
        "status.approvals[].call. The run's uid in it keeps a decision from applying to a later run of the same name.",
    )
    decision: Literal["Approve", "Deny"] = Field(description="Approve runs the call once; Deny tells the model no.")
    reason: str = Field(default="", max_length=1024, description="Why; the model reads it with a denial.")
    decided_by: str = Field(
        min_length=1,
        max_length=512,
        description="The user deciding, exactly as the API server authenticates them (`kubectl auth whoami`); "
        "admission refuses any other value, unless recordedBy is set.",
    )
    recorded_by: str = Field(
        default="",
        max_length=512,
        description="Empty when the decider created this object. Otherwise the service that recorded the decision "
        "for the user it authenticated (the runs API: the stream gateway's ServiceAccount): admission requires it "
        "to be the creator, holding the RBAC verb record on agentrunapprovals.",
    )


_RECORDED: Final = "(has(object.spec.recordedBy) && object.spec.recordedBy != '')"


def admission_policy() -> list[dict[str, Any]]:
    """The ValidatingAdmissionPolicy (and its binding) that makes spec.decidedBy the authenticated creator, or
    spec.recordedBy a creator holding the record verb."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME, "labels": {constants.LABEL_PART_OF: constants.PART_OF}},
        "spec": {
            "failurePolicy": "Fail",
            # Written as the API server stores it (its defaults spelled out), so that Helm's server-side apply of
            # the chart finds nothing to change where the policy already exists.
            "matchConstraints": {
                "matchPolicy": "Equivalent",
                "namespaceSelector": {},
                "objectSelector": {},
                "resourceRules": [
                    {
                        "apiGroups": [constants.GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE"],
                        "resources": [PLURAL],
                        "scope": "*",
                    }
                ],
            },
            "validations": [
                {
                    "expression": f"{_RECORDED} || object.spec.decidedBy == request.userInfo.username",
                    "messageExpression": "'spec.decidedBy must be the user creating the approval, ' + "
                    "request.userInfo.username + ': an approval records who decided and cannot be made in "
                    "another name'",
                    "reason": "Forbidden",
                },
                {
                    "expression": f"!{_RECORDED} || (object.spec.recordedBy == request.userInfo.username && "
                    f"authorizer.group('{constants.GROUP}').resource('{PLURAL}')"
                    f".namespace(object.metadata.namespace).check('{RECORD_VERB}').allowed())",
                    "messageExpression": "'spec.recordedBy must be the user creating the approval, ' + "
                    f"request.userInfo.username + ', holding the RBAC verb {RECORD_VERB} on {PLURAL}.{constants.GROUP} "
                    "in the namespace: only a service trusted to authenticate deciders (the runs API) records a "
                    "decision in the name of another user'",
                    "reason": "Forbidden",
                },
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY_NAME, "labels": {constants.LABEL_PART_OF: constants.PART_OF}},
        "spec": {"policyName": POLICY_NAME, "validationActions": ["Deny"]},
    }
    return [policy, binding]


def render_admission_policy() -> str:
    header = "# Generated from api/agentrun_api/approval.py by `make crds`. Do not edit by hand.\n"
    return header + "".join("---\n" + yaml.safe_dump(obj, sort_keys=False, width=120) for obj in admission_policy())


if __name__ == "__main__":
    sys.stdout.write(render_admission_policy())
