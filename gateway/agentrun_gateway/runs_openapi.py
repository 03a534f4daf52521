"""The runs API's OpenAPI document, served at /v1/openapi.json and checked against the live server by
schemathesis (tests/integration/test_runs_api_schema.py)."""

from typing import Any, Final

from agentrun_api.status import Phase
from agentrun_gateway import responses_openapi

OPENAPI_PATH: Final = "/v1/openapi.json"

_NAME = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {
                "status": {"type": "integer"},
                "code": {"type": "string", "description": "Stable CamelCase code, for programs."},
                "message": {"type": "string", "description": "What is wrong."},
                "field": {"type": "string", "description": "The request field at fault, as a dotted path."},
                "fix": {"type": "string", "description": "What to do about it."},
            },
        }
    },
}
_RUN = {
    "type": "object",
    "required": ["id", "namespace", "phase", "progress", "usage", "result", "links"],
    "properties": {
        "id": {"type": "string", "description": "The run's id: the AgentRun's name."},
        "namespace": {"type": "string"},
        "phase": {"type": "string", "enum": [phase.value for phase in Phase]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "progress": {
            "type": "object",
            "properties": {"iteration": {"type": "integer"}, "maxIterations": {"type": "integer"}},
        },
        "usage": {
            "type": "object",
            "properties": {
                "promptTokens": {"type": "integer"},
                "completionTokens": {"type": "integer"},
                "totalTokens": {"type": "integer"},
            },
        },
        "result": {
            "type": "object",
            "nullable": True,
            "description": "Set once the run has ended with an answer.",
            "properties": {"summary": {"type": "string"}, "ref": {"type": "string"}, "bytes": {"type": "integer"}},
        },
        "template": {"type": "string", "description": "The template the run was made from; empty for a whole spec."},
        "cancelRequested": {"type": "boolean"},
        "approvals": {
            "type": "array",
            "description": "Tool calls that wait, or waited, for a person's decision (phase WaitingForApproval "
            "while one waits).",
            "items": {"$ref": "#/components/schemas/ApprovalRequest"},
        },
        "createdAt": {"type": "string"},
        "completedAt": {"type": "string"},
        "links": {
            "type": "object",
            "properties": {"self": {"type": "string"}, "events": {"type": "string"}, "cancel": {"type": "string"}},
        },
    },
}
_APPROVAL_REQUEST = {
    "type": "object",
    "required": ["call", "tool", "arguments", "requestedAt", "decision", "links"],
    "properties": {
        "call": {"type": "string", "description": "The call's key, {run uid}:{iteration}:{index}."},
        "tool": {"type": "string"},
        "arguments": {"type": "string", "description": "Cut short; values of secret-like keys are [redacted]."},
        "requestedAt": {"type": "string"},
        "decision": {"type": "string", "enum": ["", "Approved", "Denied"], "description": "Empty while it waits."},
        "decidedBy": {"type": "string", "description": "Empty when spec.approvals.onTimeout decided."},
        "decidedAt": {"type": "string"},
        "reason": {"type": "string"},
        "links": {"type": "object", "properties": {"approve": {"type": "string"}, "deny": {"type": "string"}}},
    },
}
_DECISION = {
    "type": "object",
    "required": ["run", "call", "tool", "decision", "decidedBy", "reason", "approval"],
    "properties": {
        "run": {"type": "string"},
        "call": {"type": "string"},
        "tool": {"type": "string"},
        "decision": {"type": "string", "enum": ["Approved", "Denied"]},
        "decidedBy": {"type": "string", "description": "The user who decided, as the gateway authenticated them."},
        "reason": {"type": "string"},
        "approval": {"type": "string", "description": "The AgentRunApproval that records the decision."},
    },
}
_DECISION_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "reason": {"type": "string", "maxLength": 1024, "description": "Why; the model reads it with a denial."}
    },
}
_SUBMISSION = {
    "description": "Either spec (a whole AgentRun spec; Kubernetes tokens only), or template with input and "
    "the overrides the template allows.",
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["spec"],
            "properties": {
                "spec": {"type": "object", "description": "An AgentRun spec (`kubectl explain agentrun.spec`)."}
            },
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["template", "input"],
            "properties": {
                "template": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 253,
                    "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                    "description": "The name of an AgentRunTemplate of the namespace.",
                },
                "input": {"type": "string", "minLength": 1, "description": "The task the agent is given."},
                "overrides": {
                    "type": "object",
                    "description": "Fields the template lists in allowedOverrides, by name or nested "
                    '({"model.temperature": 0} or {"model": {"temperature": 0}}).',
                },
            },
        },
    ],
}


def _error(description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        answer["headers"] = {
            name: {"schema": {"type": "string"}, "description": text} for name, text in headers.items()
        }
    return answer


def _run_answer(description: str, **headers: str) -> dict[str, Any]:
    answer = _error(description, **headers)
    answer["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Run"}}}
    return answer


_COMMON = {
    "401": _error("No valid credentials.", **{"WWW-Authenticate": "Bearer"}),
    "404": _error("No such run or namespace, or not one this caller may see (the two are not told apart)."),
    "503": _error("The Kubernetes API is unavailable; retry.", **{"Retry-After": "Seconds to wait."}),
}
_CALL_PATTERN = r"^([-0-9a-zA-Z]+:)?[0-9]+:[0-9]+$"
_RUN_PATH_PARAMETERS = [
    {"name": "namespace", "in": "path", "required": True, "schema": _NAME},
    {"name": "id", "in": "path", "required": True, "schema": {**_NAME, "maxLength": 56}},
]


def _decision_path(action: str) -> dict[str, Any]:
    effect = (
        "the call runs once and the run resumes"
        if action == "approve"
        else "the call is not run; the model reads the denial and the reason"
    )
    decision = {"approve": "Approved", "deny": "Denied"}[action]
    return {
        "parameters": [
            *_RUN_PATH_PARAMETERS,
            {
                "name": "call",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 3, "maxLength": 128, "pattern": _CALL_PATTERN},
                "description": "The waiting call's key, or its ITERATION:INDEX tail.",
            },
        ],
        "post": {
            "operationId": f"{action}Call",
            "summary": f"{action.capitalize()} a tool call the run waits on: {effect}. Needs a Kubernetes token "
            "whose RBAC allows create on agentrunapprovals.agentrun.dev; recorded in that user's name.",
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DecisionBody"}}},
            },
            "responses": {
                "200": {
                    "description": f"{decision}; the same decision again answers the existing record "
                    "(Idempotent-Replayed: true).",
                    "headers": {
                        "Idempotent-Replayed": {
                            "schema": {"type": "string"},
                            "description": "Set when the decision was already recorded.",
                        }
                    },
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Decision"}}},
                },
                "400": _error("Malformed JSON."),
                "403": _error("An API key (they never decide), or a user without create on agentrunapprovals."),
                "404": _error("No such run or call, or not a run this caller may see (not told apart)."),
                "409": _error(
                    "The call was already decided otherwise (the answer names how and by whom), or the run has ended."
                ),
                "413": _error("The body is larger than the limit."),
                "422": _error("An invalid or unknown field."),
                **{code: answer for code, answer in _COMMON.items() if code != "404"},
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "agentrun runs API",
            "version": "v1",
            "description": "Submit AgentRuns over HTTP and follow them. Authenticate with a Kubernetes token or an "
            "API key (Authorization: Bearer ...).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Run": _RUN,
                "Submission": _SUBMISSION,
                "ApprovalRequest": _APPROVAL_REQUEST,
                "Decision": _DECISION,
                "DecisionBody": _DECISION_BODY,
                **responses_openapi.SCHEMAS,
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/namespaces/{namespace}/runs": {
                "parameters": [{"name": "namespace", "in": "path", "required": True, "schema": _NAME}],
                "post": {
                    "operationId": "submitRun",
                    "summary": "Submit a run; answers at once with its handle.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                            "description": "Retries with the same key and body return the same run.",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Submission"}}},
                    },
                    "responses": {
                        "202": _run_answer(
                            "Accepted: the run exists. Replays of an Idempotency-Key answer the same.",
                            Location="The run's URL.",
                            **{"Retry-After": "Seconds until polling is worthwhile."},
                        ),
                        "400": _error("Malformed JSON or Idempotency-Key."),
                        "403": _error("An API key sent a whole spec: API keys submit from templates only."),
                        "413": _error("The body is larger than the limit."),
                        "422": _error("A field is invalid or not allowed, or the key was used for another body."),
                        "429": _error("Too many runs from this caller.", **{"Retry-After": "Seconds to wait."}),
                        **_COMMON,
                    },
                },
                "get": {
                    "operationId": "listRuns",
                    "summary": "List runs, a page at a time.",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {"name": "continue", "in": "query", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of runs; continue is empty on the last page.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["items", "continue"],
                                        "properties": {
                                            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
                                            "continue": {"type": "string"},
                                        },
                                    }
                                }
                            },
                        },
                        "400": _error("An invalid limit or continue token."),
                        "410": _error("The continue token expired: list again from the start."),
                        **_COMMON,
                    },
                },
            },
            "/v1/namespaces/{namespace}/runs/{id}": {
                "parameters": _RUN_PATH_PARAMETERS,
                "get": {
                    "operationId": "getRun",
                    "summary": "A run's phase, progress, usage and result.",
                    "responses": {
                        "200": _run_answer("The run.", **{"Retry-After": "Set while the run has not ended."}),
                        **_COMMON,
                    },
                },
            },
            "/v1/namespaces/{namespace}/runs/{id}/cancel": {
                "parameters": _RUN_PATH_PARAMETERS,
                "post": {
                    "operationId": "cancelRun",
                    "summary": "Stop a run for good.",
                    "responses": {
                        "202": _run_answer("Cancellation requested."),
                        "200": _run_answer("The run had already ended."),
                        **_COMMON,
                    },
                },
            },
            **{
                f"/v1/namespaces/{{namespace}}/runs/{{id}}/approvals/{{call}}/{action}": _decision_path(action)
                for action in ("approve", "deny")
            },
            "/v1/namespaces/{namespace}/runs/{id}/events": {
                "parameters": _RUN_PATH_PARAMETERS,
                "get": {
                    "operationId": "runEvents",
                    "summary": "The run's Server-Sent Events; resume with Last-Event-ID.",
                    "parameters": [
                        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {"description": "The stream.", "content": {"text/event-stream": {"schema": {}}}},
                        "204": {"description": "The run ended and everything after Last-Event-ID was sent."},
                        "400": _error("Last-Event-ID is not an event id."),
                        **_COMMON,
                    },
                },
            },
            **responses_openapi.PATHS,
        },
    }
