"""The Responses door's part of the gateway's OpenAPI document (runs_openapi serves it with the runs API's), so
schemathesis checks it against the live server too (tests/integration/test_runs_api_schema.py)."""

from typing import Any, Final

from agentrun_gateway.responses_mapping import METADATA_KEY_MAX, METADATA_MAX_PAIRS, METADATA_VALUE_MAX

_STATUSES: Final = ["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]

SCHEMAS: Final[dict[str, Any]] = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True, "description": "The request field at fault."},
                    "code": {"type": "string"},
                },
            }
        },
    },
    "Response": {
        "type": "object",
        "required": ["id", "object", "status", "output", "usage"],
        "properties": {
            "id": {"type": "string", "description": "resp_ + the AgentRun's name."},
            "object": {"type": "string", "enum": ["response"]},
            "status": {"type": "string", "enum": _STATUSES},
            "model": {"type": "string", "description": "The AgentRunTemplate the run was made from."},
            "output": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object"},
            "incomplete_details": {"type": "object", "nullable": True},
            "error": {"type": "object", "nullable": True},
            "metadata": {"type": "object"},
        },
    },
    "ResponseCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "input", "background"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "An AgentRunTemplate of the namespace."},
            "input": {
                "description": "The task: a string, or user messages whose content is text.",
                "oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {}}],
            },
            "background": {"type": "boolean", "enum": [True]},
            "stream": {"type": "boolean"},
            "store": {"type": "boolean", "enum": [True]},
            "instructions": {"type": "string", "description": "Needs `instructions` in allowedOverrides."},
            "temperature": {"type": "number", "description": "Needs `model.temperature` in allowedOverrides."},
            "max_output_tokens": {"type": "integer", "description": "Needs `model.maxOutputTokens` there."},
            "metadata": {
                "type": "object",
                "maxProperties": METADATA_MAX_PAIRS,
                "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_MAX},
                "propertyNames": {"maxLength": METADATA_KEY_MAX},
            },
        },
    },
}


def _error(description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}},
    }
    if headers:
        answer["headers"] = {
            name: {"schema": {"type": "string"}, "description": text} for name, text in headers.items()
        }
    return answer


def _response(description: str, stream: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": "#/components/schemas/Response"}}}
    if stream:
        content["text/event-stream"] = {"schema": {}}
    return {"description": description, "content": content}


_PROJECT = {
    "name": "OpenAI-Project",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The namespace (required with a Kubernetes token; an API key's own otherwise).",
}
_COMMON = {
    "400": _error("A field cannot be honoured (named in param), or the OpenAI-Project header is missing."),
    "401": _error("No valid credentials.", **{"WWW-Authenticate": "Bearer"}),
    "404": _error("No such response or project, or not one this caller may see (the two are not told apart)."),
    "503": _error("The Kubernetes API is unavailable; retry.", **{"Retry-After": "Seconds to wait."}),
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}

PATHS: Final[dict[str, Any]] = {
    "/v1/responses": {
        "post": {
            "operationId": "createResponse",
            "summary": "Start an AgentRun from a template, OpenAI Responses style (background only).",
            "parameters": [
                _PROJECT,
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResponseCreate"}}},
            },
            "responses": {
                "200": _response("The response (queued), or with stream: true its events.", stream=True),
                "413": _error("The body is larger than the limit."),
                "429": _error("Too many runs from this caller.", **{"Retry-After": "Seconds to wait."}),
                **_COMMON,
            },
        }
    },
    "/v1/responses/{id}": {
        "get": {
            "operationId": "getResponse",
            "summary": "The response; with stream=true its events, from after starting_after.",
            "parameters": [
                _ID,
                _PROJECT,
                {
                    "name": "stream",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["true", "false"]},
                },
                {
                    "name": "starting_after",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                },
            ],
            "responses": {"200": _response("The response, or its events.", stream=True), **_COMMON},
        }
    },
    "/v1/responses/{id}/cancel": {
        "post": {
            "operationId": "cancelResponse",
            "summary": "Cancel the response's run.",
            "parameters": [_ID, _PROJECT],
            "responses": {"200": _response("The response.", stream=False), **_COMMON},
        }
    },
}
