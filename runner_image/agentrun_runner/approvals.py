"""The approval gate: the one check between a tool call and its execution (spec.approvals).

A call to a listed tool runs only with a decision for its idempotency key. Without one the gate raises
``ApprovalRequiredError``; the agent journals the request, checkpoints and the runner exits, so a run that
waits for a person holds no pod. The operator starts a new pod once a decision exists and hands it the
decisions (``contract.APPROVALS_FILE``): an approved call then runs exactly once under its usual key, a
denied one is answered to the model with the denial and its reason.
"""

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agentrun_api.contract import ApprovalDecision, ApprovalRequest
from agentrun_api.spec import ApprovalsSpec

ARGUMENTS_CHARS = 2048
REDACTED = "[redacted]"
# Argument names whose values are kept out of the request (status, Events, webhooks): a model may well be
# told a credential and pass it on to a tool.
SECRET_NAME = re.compile(r"pass(word|phrase)?|secret|token|api[-_]?key|auth|credential|private[-_]?key|cookie", re.I)
_DECISIONS = TypeAdapter(list[ApprovalDecision])


class ApprovalRequiredError(Exception):
    """The call needs a decision the run does not have yet."""

    def __init__(self, request: ApprovalRequest) -> None:
        super().__init__(f"{request.tool} (call {request.key}) waits for approval")
        self.request = request


class CallDeniedError(Exception):
    """The call was denied; the message is what the model is told."""


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_NAME.search(str(k)) else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(item) for item in value]
    return value


def describe_arguments(arguments: str) -> str:
    """The arguments as a person deciding sees them: secret-like values redacted, cut to a bound."""
    try:
        shown = json.dumps(_redact(json.loads(arguments or "{}")), ensure_ascii=False)
    except ValueError:
        shown = arguments  # not JSON: the call fails as such once run; shown as given
    if len(shown) > ARGUMENTS_CHARS:
        cut = f" [cut: {len(shown)} characters]"
        shown = shown[: ARGUMENTS_CHARS - len(cut)] + cut
    return shown


def load_decisions(path: Path) -> list[ApprovalDecision]:
    """The decisions the operator handed this pod; none when the file is absent (no run waited yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        return _DECISIONS.validate_json(text)
    except ValidationError as error:
        raise ValueError(f"approval decisions {path} are invalid: {error}") from None


class ApprovalGate:
    """Which calls need a decision, and the decisions known to this pod."""

    def __init__(self, spec: ApprovalsSpec | None, decisions: Iterable[ApprovalDecision] = ()) -> None:
        self._gated = frozenset(spec.tools) if spec is not None else frozenset()
        self._decisions = {decision.key: decision for decision in decisions}

    def check(self, name: str, arguments: str, key: str) -> None:
        """Return to run the call; raise CallDeniedError or ApprovalRequiredError not to."""
        if name not in self._gated:
            return
        decision = self._decisions.get(key)
        if decision is None:
            raise ApprovalRequiredError(
                ApprovalRequest(
                    key=key, tool=name, arguments=describe_arguments(arguments), requested_at=datetime.now(UTC)
                )
            )
        if decision.approved:
            return
        who = f"by {decision.decided_by}" if decision.decided_by else "because no decision came in time"
        reason = f": {decision.reason}" if decision.reason else " (no reason given)"
        raise CallDeniedError(f"the call to {name} was denied {who}{reason}. It was not executed.")
