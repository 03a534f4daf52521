"""Deciding a waiting tool call through the runs API: ``POST .../runs/{id}/approvals/{call}/approve|deny``.

The decision is recorded as `kubectl agentrun approve|deny` records it, an AgentRunApproval named
``<run>-<iteration>-<index>`` owned by the run, with one difference: the gateway creates it, so ``spec.decidedBy``
is the caller the gateway authenticated (TokenReview) and checked (SubjectAccessReview for create on
agentrunapprovals), and ``spec.recordedBy`` is the gateway's own user, which the approval admission policy
accepts only from a creator holding the RBAC verb ``record`` (``agentrun_api.approval``). The operator then
resumes the run exactly as after a decision made with kubectl.

A repeated decision is answered from what is recorded: the same decision again is 200 with the existing record,
a different one is 409 naming the decision already made and who made it.
"""

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Final

from agentrun_api import approval, constants
from agentrun_api.status import TERMINAL_PHASES
from agentrun_common.kube import ApiError
from agentrun_gateway.refusals import RefusalError
from agentrun_gateway.runs_kube import JsonObject, RunsKube

# The path's last segment, the decision it records (as in AgentRunApproval.spec.decision).
DECISIONS: Final = {"approve": "Approve", "deny": "Deny"}
_RECORDED = {"Approve": approval.APPROVED, "Deny": approval.DENIED}
_CALL_TAIL = re.compile(r"^[0-9]+:[0-9]+$")
_FULL_CALL = re.compile(approval.CALL_KEY_PATTERN)
REASON_MAX_LENGTH: Final = 1024


def api_key_refused() -> RefusalError:
    return RefusalError(
        403,
        "ApproverMustBeAUser",
        "an API key cannot approve or deny: a decision is recorded in the name of the person who made it, and a key "
        "stands for an application (the same key submits runs, so its holder would approve their own)",
        fix="decide with a Kubernetes token whose RBAC allows create on agentrunapprovals.agentrun.dev, or with "
        "`kubectl agentrun approve|deny`",
        field="header Authorization",
    )


def not_an_approver(username: str, namespace: str) -> RefusalError:
    return RefusalError(
        403,
        "NotAnApprover",
        f"{username} may not decide approvals in namespace {namespace}",
        fix=f"deciding needs the RBAC verb create on {approval.PLURAL}.{constants.GROUP} in the namespace "
        "(granted apart from the right to create runs, so authors need not approve their own)",
        field="header Authorization",
    )


def checked_reason(body: Any) -> str:
    """The decision's reason from the request body: none, or a JSON object with an optional reason."""
    if body is None:
        return ""
    if not isinstance(body, dict):
        raise RefusalError(
            422, "InvalidField", "the request body must be a JSON object", fix='send {"reason": "..."}', field="body"
        )
    for key in body:
        if key != "reason":
            raise RefusalError(
                422,
                "UnknownField",
                f"unknown field {key!r}",
                fix="send only reason; the decision is the path's last segment (approve or deny)",
                field=str(key),
            )
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > REASON_MAX_LENGTH:
        raise RefusalError(
            422,
            "InvalidField",
            f"reason must be a string of at most {REASON_MAX_LENGTH} characters",
            fix="send a shorter reason",
            field="reason",
        )
    return reason


def approvals_view(run: JsonObject, base: str) -> list[JsonObject]:
    """The run's approval requests as a caller sees them: waiting ones (decision empty) with where to decide."""
    entries = (run.get("status") or {}).get("approvals") or []
    return [
        {
            "call": str(entry.get("call", "")),
            "tool": str(entry.get("tool", "")),
            "arguments": str(entry.get("arguments", "")),
            "requestedAt": str(entry.get("requestedAt") or ""),
            "decision": str(entry.get("decision", "")),
            "decidedBy": str(entry.get("decidedBy", "")),
            "decidedAt": str(entry.get("decidedAt") or ""),
            "reason": str(entry.get("reason", "")),
            "links": {
                "approve": f"{base}/approvals/{entry.get('call', '')}/approve",
                "deny": f"{base}/approvals/{entry.get('call', '')}/deny",
            },
        }
        for entry in entries
        if isinstance(entry, dict)
    ]


def _call_not_found(run: str, call: str, entries: list[JsonObject]) -> RefusalError:
    waiting = [str(e.get("call")) for e in entries if not e.get("decision")]
    listing = ", ".join(waiting) if waiting else "none"
    return RefusalError(
        404,
        "CallNotFound",
        f"run {run} has no approval request for call {call} (calls waiting: {listing})",
        fix="send a call of the run's approvals (its key, or the ITERATION:INDEX tail of it)",
        field="call",
    )


def requested_call(run: JsonObject, call: str) -> JsonObject:
    """The run's approval request the path names, by its key or its ITERATION:INDEX tail."""
    name = str(run["metadata"]["name"])
    phase = (run.get("status") or {}).get("phase")
    entries = [e for e in (run.get("status") or {}).get("approvals") or [] if isinstance(e, dict)]
    if _FULL_CALL.match(call):
        found = [e for e in entries if e.get("call") == call]
    elif _CALL_TAIL.match(call):
        found = [e for e in entries if str(e.get("call", "")).endswith(f":{call}")]
    else:
        found = []
    if len(found) != 1:
        raise _call_not_found(name, call, entries)
    entry = found[0]
    if phase in TERMINAL_PHASES and not entry.get("decision"):
        raise RefusalError(
            409, "RunEnded", f"run {name} already ended as {phase}; nothing to decide", fix="nothing to do", field="id"
        )
    return entry


def _record(run: str, call: str, tool: str, decision: str, decided_by: str, reason: str, name: str) -> JsonObject:
    return {
        "run": run,
        "call": call,
        "tool": tool,
        "decision": decision,
        "decidedBy": decided_by,
        "reason": reason,
        "approval": name,
    }


def _conflict(run: str, call: str, decision: str, decided_by: str) -> RefusalError:
    who = decided_by or "spec.approvals.onTimeout (no decision came in time)"
    return RefusalError(
        409,
        "AlreadyDecided",
        f"call {call} of run {run} was already {decision.lower()} by {who}",
        fix="a decision is final; nothing to do",
        field="call",
    )


@dataclass(frozen=True)
class Decided:
    record: JsonObject
    replayed: bool  # the same decision was already recorded: nothing new was written


class Approvals:
    """Records callers' decisions as AgentRunApprovals in their name, with the gateway as the recorder."""

    def __init__(self, kube: RunsKube) -> None:
        self._kube = kube
        self._recorder: str | None = None
        self._lock = asyncio.Lock()

    async def recorder(self) -> str:
        """The gateway's own user, as the API server authenticates it (asked once)."""
        async with self._lock:
            if self._recorder is None:
                self._recorder = await self._kube.whoami()
            return self._recorder

    async def decide(self, run: JsonObject, call: str, decision: str, reason: str, decider: str) -> Decided:
        """Record ``decision`` (Approve or Deny) by ``decider`` on the run's call the path names."""
        entry = requested_call(run, call)
        metadata = run["metadata"]
        namespace, name = str(metadata["namespace"]), str(metadata["name"])
        key, tool = str(entry["call"]), str(entry.get("tool", ""))
        wanted = _RECORDED[decision]
        if entry.get("decision"):
            recorded = str(entry["decision"])
            if recorded != wanted or not entry.get("approval"):
                raise _conflict(name, key, recorded, str(entry.get("decidedBy", "")))
            record = _record(
                name, key, tool, recorded, str(entry.get("decidedBy", "")), str(entry.get("reason", "")), ""
            )
            return Decided({**record, "approval": str(entry["approval"])}, replayed=True)
        object_name = approval.approval_name(name, key)
        body = {
            "apiVersion": constants.API_VERSION,
            "kind": approval.KIND,
            "metadata": {
                "name": object_name,
                "labels": {constants.LABEL_RUN: name},
                # Deleted with the run, as the plugin's; the decision stays in the run's status.approvals.
                "ownerReferences": [
                    {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": name, "uid": metadata["uid"]}
                ],
            },
            "spec": {
                "run": name,
                "call": key,
                "decision": decision,
                "reason": reason,
                "decidedBy": decider,
                "recordedBy": await self.recorder(),
            },
        }
        try:
            await self._kube.create_approval(namespace, body)
        except ApiError as error:
            if error.status == 403:  # admission or RBAC: this installation's policy or rules are not current
                raise RefusalError(
                    500,
                    "DecisionNotRecorded",
                    f"the cluster refused to record the decision: {error.message}",
                    fix="an administrator installs this version's approval policy and the gateway's RBAC (the "
                    f"verb {approval.RECORD_VERB} on {approval.PLURAL}); meanwhile decide with kubectl agentrun",
                ) from None
            if error.status != 409:
                raise
            existing = await self._kube.get_approval(namespace, object_name)
            spec = (existing or {}).get("spec") or {}
            if existing is None or spec.get("decision") != decision:
                raise _conflict(
                    name, key, _RECORDED.get(str(spec.get("decision")), "decided"), str(spec.get("decidedBy", ""))
                ) from None
            record = _record(
                name, key, tool, wanted, str(spec.get("decidedBy", "")), str(spec.get("reason", "")), object_name
            )
            return Decided(record, replayed=True)
        return Decided(_record(name, key, tool, wanted, decider, reason, object_name), replayed=False)
