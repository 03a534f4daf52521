"""Condition types and reasons, defined once (after the Job and cert-manager conventions).

`kubectl wait --for=condition=Complete agentrun/X` waits for success; `--for=condition=Failed` for
any unsuccessful end (the reason says which: TimedOut, Cancelled, TokenBudgetExceeded, ...).
"""

from typing import Final

# Condition types.
ACCEPTED: Final = "Accepted"  # the spec parsed and the run's children exist
RUNNING: Final = "Running"  # a runner pod is working on the run
SUSPENDED: Final = "Suspended"  # spec.suspend paused the run
COMPLETE: Final = "Complete"  # the run succeeded (terminal)
FAILED: Final = "Failed"  # the run ended without success (terminal); the reason says how
BUDGET_FITS: Final = "BudgetFits"  # the worst-case timeout arithmetic fits maxExecutionTime
WAITING_FOR_APPROVAL: Final = "WaitingForApproval"  # a tool call waits for a decision; no runner pod meanwhile
NOTIFIED: Final = "Notified"  # the completion webhook was delivered
STREAM_CHAIN_FITS: Final = "StreamChainFits"  # every timer between a reader and the runner lets the stream last the run
STREAM_ROUTE_READY: Final = "StreamRouteReady"  # the run's own route (spec.streaming.ingress) exists

# Reasons (CamelCase, as Kubernetes conventions ask).
REASON_CREATED: Final = "ChildrenCreated"
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_INVALID_NAME: Final = "InvalidName"  # metadata.name breaks agentrun_api.names' rule
REASON_COMPANION_RESTORED: Final = "CompanionRestored"  # a deleted companion of a live run was created again
REASON_CHILD_REJECTED: Final = "ChildRejected"  # the API server refused one of the run's children as invalid
REASON_SECRET_NOT_FOUND: Final = "SecretNotFound"
REASON_MCP_SERVER_NOT_READY: Final = "MCPServerNotReady"  # spec.tools.mcp names a server not (yet) listed
REASON_STORAGE_CLASS_NOT_FOUND: Final = "StorageClassNotFound"
REASON_PENDING: Final = "Pending"
REASON_STARTED: Final = "RunnerStarted"
REASON_RESUMED: Final = "Resumed"
REASON_SUSPENDED: Final = "SuspendRequested"
REASON_SUCCEEDED: Final = "Succeeded"
REASON_MAX_ITERATIONS: Final = "MaxIterationsReached"
REASON_TIMED_OUT: Final = "MaxExecutionTimeExceeded"
REASON_DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
REASON_CANCELLED: Final = "Cancelled"
REASON_TOKEN_BUDGET: Final = "TokenBudgetExceeded"
REASON_THROTTLE_TIMEOUT: Final = "ThrottleQueueTimeout"
REASON_MODEL_ERROR: Final = "ModelRequestFailed"
REASON_MODEL_REJECTED: Final = "ModelRequestRejected"
REASON_BACKOFF_LIMIT: Final = "BackoffLimitExceeded"
REASON_NO_PROGRESS: Final = "ProgressDeadlineExceeded"
REASON_RUNNER_LOST: Final = "RunnerLost"
REASON_CHECKPOINT_ERROR: Final = "CheckpointError"
REASON_BUDGET_FITS: Final = "WorstCaseFits"
REASON_BUDGET_EXCEEDS: Final = "WorstCaseExceedsMaxExecutionTime"
REASON_STREAM_CHAIN_FITS: Final = "EveryHopCoversTheRun"
REASON_STREAM_HOP_CUTS: Final = "HopCutsTheStream"  # readers survive the cut by resuming with Last-Event-ID
REASON_ROUTE_CREATED: Final = "RouteCreated"
REASON_ROUTE_API_MISSING: Final = "RouteAPINotInstalled"  # the controller's route kind is not served by the cluster
REASON_APPROVAL_REQUESTED: Final = "ApprovalRequested"
REASON_APPROVAL_DECIDED: Final = "ApprovalDecided"  # every waiting call has a decision: the run resumes
REASON_APPROVAL_TIMED_OUT: Final = "ApprovalTimedOut"  # no decision within spec.approvals.timeout (onTimeout: Fail)
REASON_DELIVERED: Final = "WebhookDelivered"
REASON_DELIVERY_FAILED: Final = "WebhookDeliveryFailed"
