"""What the Kubernetes API server does to a custom resource at create and update, without a server.

Given a CRD's structural ``openAPIV3Schema`` and its CEL ``x-kubernetes-validations``, `CrdAdmission`
decodes (rejects or prunes unknown fields), defaults, validates and runs the CEL rules in the order and
with the wording of kube-apiserver, so that an emulated API server, the ``agentrun`` CLI and the tests
give the errors a user would get from a real cluster.

Semantics followed (and why they matter):

- Unknown fields fail decoding with ``fieldValidation=Strict`` (a 400, before any validation runs, as
  kubectl's default does since 1.27); otherwise they are pruned silently.
- ``null`` for a non-nullable field is pruned before defaulting, so the field's default applies.
- Defaults apply before validation; an object's ``default: {}`` creates it, then its children default.
- A value of the wrong type, a missing required field, an unsupported enum value or a too long/too many
  error blocks the CEL rules: the API server then reports that the rules were not checked.
- CEL ``self`` is the node's value after defaulting, typed by the schema (an integral value of a
  ``number`` field is a double); ``oldSelf`` exists only on update, and a transition rule (one that
  mentions ``oldSelf``) is skipped where the old object has no value at that path.
- With the status subresource, the main resource ignores status (dropped at create, kept from the old
  object at update); `CrdAdmission.admit_status` is the /status path, which changes only status.

Not emulated: validation ratcheting of unchanged invalid values, CEL cost budgets and compile-time type
checking, ``listType`` map/set correlation of list items for transition rules, ``messageExpression``,
``x-kubernetes-int-or-string`` and ``x-kubernetes-embedded-resource``, ``nullable`` beyond keeping a
null, string formats other than ``date-time``, and CEL's typing of formatted strings (a ``date-time``
string is a string to the rules here, a timestamp on a real server); the AgentRun CRD relies on none.
"""

import copy
import functools
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, overload

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError, Result
from lark import Token

REQUIRED: Final = "Required value"
INVALID: Final = "Invalid value"
UNSUPPORTED: Final = "Unsupported value"
TOO_LONG: Final = "Too long"
TOO_MANY: Final = "Too many"
FORBIDDEN: Final = "Forbidden"
UNKNOWN_FIELD: Final = "unknown field"

# Error types whose message carries no value, as in k8s.io/apimachinery's field.Error.
_VALUELESS_TYPES: Final = frozenset({REQUIRED, FORBIDDEN, TOO_LONG})

# The status cause reason of each error type (metav1.CauseType), for a Status object's details.
_CAUSE_REASONS: Final = {
    REQUIRED: "FieldValueRequired",
    INVALID: "FieldValueInvalid",
    UNSUPPORTED: "FieldValueNotSupported",
    TOO_LONG: "FieldValueTooLong",
    TOO_MANY: "FieldValueTooMany",
    FORBIDDEN: "FieldValueForbidden",
    UNKNOWN_FIELD: "FieldValueInvalid",
}

_CEL_RULES_SKIPPED: Final = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)

# metav1.ObjectMeta's fields: metadata is not pruned by the CRD schema but by the Go type.
_OBJECT_META_FIELDS: Final = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_DNS_SUBDOMAIN_MAX: Final = 253
_DNS_SUBDOMAIN_REGEX: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_DNS_SUBDOMAIN: Final = re.compile(_DNS_SUBDOMAIN_REGEX)
_DNS_SUBDOMAIN_MESSAGE: Final = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    f"start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{_DNS_SUBDOMAIN_REGEX}')"
)


def _go_float(number: float) -> str:
    """A float as Go's %v prints it: shortest digits, exponent form below 1e-4 and from 1e+06 up."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if number == 0:
        return "0"
    exact = Decimal(repr(float(number))).normalize()
    sign, digit_tuple, exponent = exact.as_tuple()
    digits = "".join(map(str, digit_tuple))
    assert isinstance(exponent, int)
    magnitude = len(digits) + exponent - 1
    if -4 <= magnitude < 6:
        return format(exact, "f")
    mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'+' if magnitude >= 0 else '-'}{abs(magnitude):02d}"


def go_value(value: object) -> str:
    """A bad value as kube-apiserver prints it in a field error (Go's %v, %q or "null")."""
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class FieldError:
    """One field error, worded as kube-apiserver words it."""

    path: str
    """Field path such as "spec.maxIterations" or "spec.runner.tolerations[0].key"; "" for none."""
    type: str
    """One of REQUIRED, INVALID, UNSUPPORTED, TOO_LONG, TOO_MANY, FORBIDDEN, UNKNOWN_FIELD."""
    detail: str = ""
    """The rest of the message."""
    value: object | None = None
    """The bad value (for a CEL rule, the schema type name, as the API server reports it)."""

    @property
    def body(self) -> str:
        """The message without the path: a Status cause's ``message``."""
        if self.type == UNKNOWN_FIELD:
            return f"{UNKNOWN_FIELD} {json.dumps(self.path)}"
        text = self.type if self.type in _VALUELESS_TYPES else f"{self.type}: {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        if self.type == UNKNOWN_FIELD:
            return self.body
        return f"{self.path or '<nil>'}: {self.body}"


class AdmissionError(ValueError):
    """The API server refused the object: 422 Invalid with every field error, or 400 BadRequest when
    strict decoding found unknown fields (then validation has not run, as on a real server)."""

    def __init__(self, errors: list[FieldError], *, kind: str, group: str, version: str, name: str) -> None:
        self.errors = list(errors)
        self.kind = kind
        self.group = group
        self.version = version
        self.name = name
        self.strict_decoding = all(e.type == UNKNOWN_FIELD for e in errors)
        super().__init__(self.message)

    @property
    def code(self) -> int:
        return 400 if self.strict_decoding else 422

    @property
    def reason(self) -> str:
        return "BadRequest" if self.strict_decoding else "Invalid"

    @property
    def message(self) -> str:
        if self.strict_decoding:
            unknown = ", ".join(str(e) for e in self.errors)
            return (
                f'{self.kind} in version "{self.version}" cannot be handled as a {self.kind}: '
                f"strict decoding error: {unknown}"
            )
        listed = str(self.errors[0]) if len(self.errors) == 1 else f"[{', '.join(str(e) for e in self.errors)}]"
        return f'{self.kind}.{self.group} "{self.name}" is invalid: {listed}'

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> dict[str, Any]:
        """The metav1.Status the API server answers with."""
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if not self.strict_decoding:
            status["details"] = {
                "name": self.name,
                "group": self.group,
                "kind": self.kind,
                "causes": [
                    {
                        "reason": _CAUSE_REASONS.get(e.type, "FieldValueInvalid"),
                        "message": e.body,
                        "field": e.path or "<nil>",
                    }
                    for e in self.errors
                ],
            }
        return status


# --- CEL ---------------------------------------------------------------------------------------------

_GO_DURATION_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_GO_DURATION: Final = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_CONVERSION_ERROR: Final = "type conversion error from 'string' to 'google.protobuf.Duration'"


def parse_go_duration_nanos(text: str) -> int:
    """Go's time.ParseDuration, which Kubernetes CEL's duration() uses: signed, units ns to h, no days."""
    rest = text
    sign = 1
    if rest[:1] in "+-" and rest:
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"time: invalid duration {json.dumps(text)}")
    total = 0
    position = 0
    while position < len(rest):
        match = _GO_DURATION.match(rest, position)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f"time: invalid duration {json.dumps(text)}")
        total += round(float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)])
        position = match.end()
    return sign * total


def _cel_duration(value: object) -> Result:
    if isinstance(value, celtypes.DurationType):
        return value
    if not isinstance(value, str):
        return CELEvalError("found no matching overload for 'duration'", TypeError, (value,))
    try:
        nanos = parse_go_duration_nanos(str(value))
    except ValueError:
        return CELEvalError(_DURATION_CONVERSION_ERROR, ValueError, (value,))
    seconds, rest = divmod(nanos, 1_000_000_000)
    return celtypes.DurationType(seconds=seconds, nanos=rest)


@dataclass(frozen=True)
class _Rule:
    """One compiled x-kubernetes-validations rule."""

    source: str
    message: str
    reason: str
    field_path: str
    is_transition: bool
    program: Any


_CEL_ENV: Final = celpy.Environment()


@functools.lru_cache(maxsize=1024)
def _compile_rule(source: str) -> tuple[Any, bool]:
    ast = _CEL_ENV.compile(source)
    mentions_old = any(
        name == "oldSelf" for name in ast.scan_values(lambda t: isinstance(t, Token) and t.type == "IDENT")
    )
    return _CEL_ENV.program(ast, functions={"duration": _cel_duration}), mentions_old


def _rule_of(spec: Mapping[str, Any]) -> _Rule:
    source = str(spec["rule"])
    program, is_transition = _compile_rule(source)
    message = str(spec.get("message") or f"failed rule: {source.strip()}")
    return _Rule(
        source=source,
        message=message,
        reason=str(spec.get("reason", "FieldValueInvalid")),
        field_path=str(spec.get("fieldPath", "")),
        is_transition=is_transition,
        program=program,
    )


def _to_cel(value: object, schema: Mapping[str, Any]) -> Any:
    """The value as CEL sees it, typed by its schema rather than by its JSON spelling."""
    kind = schema.get("type")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        converted = {}
        for key, item in value.items():
            sub = properties.get(key, additional if isinstance(additional, dict) else {})
            converted[celtypes.StringType(key)] = _to_cel(item, sub)
        return celtypes.MapType(converted)
    if isinstance(value, list):
        items = schema.get("items", {})
        return celtypes.ListType([_to_cel(item, items) for item in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if kind == "number" and isinstance(value, int | float):
        return celtypes.DoubleType(float(value))
    if isinstance(value, int) or (kind == "integer" and isinstance(value, float) and value.is_integer()):
        return celtypes.IntType(int(value))
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    return json_to_cel(value)  # type: ignore[arg-type]


def _cel_error_text(error: CELEvalError) -> str:
    """A CEL evaluation error in cel-go's words where the cause is recognisable."""
    text = str(error.args[0]) if error.args else str(error)
    missing = re.match(r"no such member in mapping: '(.*)'", text)
    if missing:
        return f"no such key: {missing.group(1)}"
    if text == "modulus or divide by zero":
        return "division by zero"
    return text


# --- the schema walk ---------------------------------------------------------------------------------


def _child(base: str, name: str) -> str:
    """A Kubernetes field path one property down: "spec" + "model" is "spec.model"."""
    return f"{base}.{name}" if base else name


def _index(base: str, position: int) -> str:
    return f"{base}[{position}]"


_JSON_TYPE_NAMES: Final = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return "integer"
    for python_type, name in _JSON_TYPE_NAMES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _has_type(value: object, expected: str) -> bool:
    actual = _json_type(value)
    return actual == expected or (expected == "number" and actual == "integer")


def _same_json(left: object, right: object) -> bool:
    """JSON equality: true is not 1, 1.0 is 1."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    return left == right


@dataclass
class _Findings:
    errors: list[FieldError] = field(default_factory=list)
    blocking: bool = False

    def add(self, error: FieldError, *, blocking: bool = False) -> None:
        self.errors.append(error)
        self.blocking = self.blocking or blocking


def _unknown_fields(value: object, schema: Mapping[str, Any], path: str, prune: bool) -> Iterator[str]:
    """Paths of fields the schema does not know; with prune, also remove them. A structural schema knows
    its properties, or any key with ``additionalProperties``; ``x-kubernetes-preserve-unknown-fields``
    keeps the rest. A null of a non-nullable field is dropped too: the API server prunes it before
    defaulting, so the field's default applies."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        keeps_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        for key in list(value):
            sub = properties.get(key, additional if isinstance(additional, dict) else None)
            if sub is None:
                if not keeps_unknown:
                    yield _child(path, key)
                    if prune:
                        del value[key]
            elif value[key] is None and not sub.get("nullable"):
                del value[key]
            else:
                yield from _unknown_fields(value[key], sub, _child(path, key), prune)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for position, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], _index(path, position), prune)


def _apply_defaults(value: object, schema: Mapping[str, Any]) -> None:
    """Fill absent properties with their defaults, then default inside them (so ``default: {}`` on an
    object lets its children default)."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key, sub in properties.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            sub = properties.get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                _apply_defaults(item, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _apply_defaults(item, schema["items"])


def _validate_schema(value: object, schema: Mapping[str, Any], path: str, found: _Findings) -> None:
    """OpenAPI v3 validation of one node and its children, worded as kube-openapi words it."""
    expected = schema.get("type")
    if "enum" in schema and not any(_same_json(value, allowed) for allowed in schema["enum"]):
        supported = ", ".join(json.dumps(a if isinstance(a, str) else go_value(a)) for a in schema["enum"])
        enum_error = FieldError(path, UNSUPPORTED, f"supported values: {supported}", value)
    else:
        enum_error = None
    if expected and not _has_type(value, expected):
        actual = _json_type(value)
        found.add(
            FieldError(path, INVALID, f'{path} in body must be of type {expected}: "{actual}"', actual), blocking=True
        )
        if enum_error:
            found.add(enum_error, blocking=True)
        return
    if enum_error:
        found.add(enum_error, blocking=True)
    if isinstance(value, str):
        _validate_string(value, schema, path, found)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _validate_number(value, schema, path, found)
    elif isinstance(value, list):
        _validate_array(value, schema, path, found)
    elif isinstance(value, dict):
        _validate_object(value, schema, path, found)


def _validate_string(value: str, schema: Mapping[str, Any], path: str, found: _Findings) -> None:
    # go-openapi counts characters (runes), although the message says bytes.
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        limit = schema["maxLength"]
        found.add(
            FieldError(path, TOO_LONG, f"may not be more than {limit} byte{'s' if limit != 1 else ''}"), blocking=True
        )
    if "minLength" in schema and len(value) < schema["minLength"]:
        found.add(
            FieldError(path, INVALID, f"{path} in body should be at least {schema['minLength']} chars long", value)
        )
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        found.add(FieldError(path, INVALID, f"{path} in body should match '{schema['pattern']}'", value))
    if schema.get("format") == "date-time" and not _is_date_time(value):
        found.add(
            FieldError(path, INVALID, f'{path} in body must be of type date-time: "{value}"', value), blocking=True
        )


def _is_date_time(text: str) -> bool:
    """RFC 3339, as the API server's date-time format check reads it."""
    if not _RFC3339.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text.upper().replace(" ", "T"))
    except ValueError:
        return False
    return True


def _validate_number(value: float, schema: Mapping[str, Any], path: str, found: _Findings) -> None:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None:
        exclusive = bool(schema.get("exclusiveMinimum"))
        if value < low or (exclusive and value == low):
            words = "greater than" if exclusive else "greater than or equal to"
            found.add(FieldError(path, INVALID, f"{path} in body should be {words} {go_value(float(low))}", value))
    if high is not None:
        exclusive = bool(schema.get("exclusiveMaximum"))
        if value > high or (exclusive and value == high):
            words = "less than" if exclusive else "less than or equal to"
            found.add(FieldError(path, INVALID, f"{path} in body should be {words} {go_value(float(high))}", value))
    if "multipleOf" in schema and (value / schema["multipleOf"]) % 1 != 0:
        bound = go_value(float(schema["multipleOf"]))
        found.add(FieldError(path, INVALID, f"{path} in body should be a multiple of {bound}", value))


def _validate_array(value: list[Any], schema: Mapping[str, Any], path: str, found: _Findings) -> None:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        found.add(
            FieldError(path, TOO_MANY, f"must have at most {schema['maxItems']} items", len(value)), blocking=True
        )
    if "minItems" in schema and len(value) < schema["minItems"]:
        found.add(
            FieldError(path, INVALID, f"{path} in body should have at least {schema['minItems']} items", len(value))
        )
    if isinstance(schema.get("items"), dict):
        for position, item in enumerate(value):
            _validate_schema(item, schema["items"], _index(path, position), found)


def _validate_object(value: dict[str, Any], schema: Mapping[str, Any], path: str, found: _Findings) -> None:
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        found.add(
            FieldError(path, TOO_MANY, f"must have at most {schema['maxProperties']} items", len(value)), blocking=True
        )
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        detail = f"{path} in body should have at least {schema['minProperties']} properties"
        found.add(FieldError(path, INVALID, detail, len(value)))
    for name in schema.get("required", []):
        if name not in value:
            found.add(FieldError(_child(path, name), REQUIRED), blocking=True)
    properties = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        if key in properties:
            _validate_schema(item, properties[key], _child(path, key), found)
        elif isinstance(additional, dict):
            _validate_schema(item, additional, _child(path, key), found)


_ABSENT: Final = object()
# Rule outcomes remembered per CRD; past this many the memory starts again (bounded, and cheap to refill).
_OUTCOMES_KEPT: Final = 20_000


class _CelValidator:
    """Runs the x-kubernetes-validations of a schema tree; rules are compiled once, at construction."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._rules: dict[int, list[_Rule]] = {}
        # Outcomes of rules by (rule, path, self, oldSelf): None for a pass, else the error to report.
        self._outcomes: dict[tuple[int, str, str, str | None], FieldError | None] = {}
        self._compile(schema)

    @property
    def has_rules(self) -> bool:
        return bool(self._rules)

    def _compile(self, schema: Mapping[str, Any]) -> None:
        if schema.get("x-kubernetes-validations"):
            self._rules[id(schema)] = [_rule_of(r) for r in schema["x-kubernetes-validations"]]
        for sub in schema.get("properties", {}).values():
            self._compile(sub)
        for key in ("additionalProperties", "items"):
            if isinstance(schema.get(key), dict):
                self._compile(schema[key])

    def validate(self, value: object, old: object, schema: Mapping[str, Any], path: str, found: _Findings) -> None:
        for rule in self._rules.get(id(schema), []):
            self._run(rule, value, old, schema, path, found)
        if isinstance(value, dict):
            properties = schema.get("properties", {})
            additional = schema.get("additionalProperties")
            for key, item in value.items():
                old_item = old.get(key, _ABSENT) if isinstance(old, dict) else _ABSENT
                if key in properties:
                    self.validate(item, old_item, properties[key], _child(path, key), found)
                elif isinstance(additional, dict):
                    self.validate(item, old_item, additional, f"{path}[{key}]", found)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            # Items of an atomic list do not correlate with old items: no oldSelf below here.
            for position, item in enumerate(value):
                self.validate(item, _ABSENT, schema["items"], _index(path, position), found)

    def _run(
        self, rule: _Rule, value: object, old: object, schema: Mapping[str, Any], path: str, found: _Findings
    ) -> None:
        if rule.is_transition and old is _ABSENT:
            return
        # A rule is a pure function of self (and oldSelf): an outcome seen before is reused. Every write of
        # a run after its create (status, finalizers, annotations) sees the same spec, so its rules cost a
        # dictionary lookup instead of an interpreted evaluation (tens of ms per object in Python).
        key = (id(rule), path, _fingerprint(value), None if old is _ABSENT else _fingerprint(old))
        outcome = self._outcomes.get(key, _ABSENT)
        if outcome is _ABSENT:
            outcome = self._evaluate(rule, value, old, schema, path)
            if len(self._outcomes) >= _OUTCOMES_KEPT:
                self._outcomes.clear()
            self._outcomes[key] = outcome
        if isinstance(outcome, FieldError):
            found.add(outcome)

    @staticmethod
    def _evaluate(rule: _Rule, value: object, old: object, schema: Mapping[str, Any], path: str) -> FieldError | None:
        activation = {"self": _to_cel(value, schema)}
        if old is not _ABSENT:
            activation["oldSelf"] = _to_cel(old, schema)
        type_name = str(schema.get("type", "object"))
        try:
            result = rule.program.evaluate(activation)
        except CELEvalError as error:
            detail = f"{_cel_error_text(error)} evaluating rule: {rule.source.strip()}"
            return FieldError(path, INVALID, detail, type_name)
        if isinstance(result, celtypes.BoolType) and bool(result):
            return None
        target = path + rule.field_path if rule.field_path.startswith((".", "[")) else path
        if rule.reason == "FieldValueRequired":
            return FieldError(target, REQUIRED, rule.message)
        if rule.reason == "FieldValueForbidden":
            return FieldError(target, FORBIDDEN, rule.message)
        return FieldError(target, INVALID, rule.message, type_name)


def _fingerprint(value: object) -> str:
    """The value's content as one string (JSON with sorted keys): equal values, equal fingerprints."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _validate_metadata(metadata: object, old_metadata: object, found: _Findings) -> None:
    """The light ObjectMeta checks: a name (or generateName), a DNS subdomain, unchanged on update."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        actual = _json_type(metadata)
        detail = f'metadata in body must be of type object: "{actual}"'
        found.add(FieldError("metadata", INVALID, detail, actual), blocking=True)
        return
    name = metadata.get("name")
    if not name:
        if not metadata.get("generateName"):
            found.add(FieldError("metadata.name", REQUIRED, "name or generateName is required"), blocking=True)
        return
    if not isinstance(name, str):
        found.add(FieldError("metadata.name", INVALID, "metadata.name in body must be of type string", name))
        return
    if len(name) > _DNS_SUBDOMAIN_MAX:
        found.add(FieldError("metadata.name", INVALID, f"must be no more than {_DNS_SUBDOMAIN_MAX} characters", name))
    if not _DNS_SUBDOMAIN.fullmatch(name):
        found.add(FieldError("metadata.name", INVALID, _DNS_SUBDOMAIN_MESSAGE, name))
    if isinstance(old_metadata, dict) and old_metadata.get("name") not in (None, name):
        found.add(FieldError("metadata.name", INVALID, "field is immutable", name))


def _version_of(crd: Mapping[str, Any], version: str | None) -> Mapping[str, Any]:
    versions = crd["spec"]["versions"]
    if version is None:
        chosen = [v for v in versions if v.get("storage")] or versions
        return dict(chosen[0])
    for candidate in versions:
        if candidate["name"] == version:
            return dict(candidate)
    raise KeyError(f"the CRD {crd['metadata']['name']} has no version {version!r}")


class CrdAdmission:
    """The API server's handling of one version of one custom resource: decode, default, validate."""

    def __init__(
        self, schema: Mapping[str, Any], *, kind: str, group: str, version: str, status_subresource: bool
    ) -> None:
        self.schema = schema
        self.kind = kind
        self.group = group
        self.version = version
        self.status_subresource = status_subresource
        self._cel = _CelValidator(schema)
        # apiVersion and kind are always kept; metadata is decoded by its Go type (ObjectMeta), not the schema.
        self._decoding_schema = {
            **schema,
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                **schema.get("properties", {}),
                "metadata": {"x-kubernetes-preserve-unknown-fields": True},
            },
        }

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any], version: str | None = None) -> "CrdAdmission":
        served = _version_of(crd, version)
        return cls(
            served["schema"]["openAPIV3Schema"],
            kind=crd["spec"]["names"]["kind"],
            group=crd["spec"]["group"],
            version=served["name"],
            status_subresource="status" in served.get("subresources", {}),
        )

    def admit(
        self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None, *, strict: bool = True
    ) -> dict[str, Any]:
        """The object as a create (``old`` None) or an update of ``old`` would store it.

        Unknown fields fail strict decoding (``fieldValidation=Strict``) or, with ``strict=False``, are
        pruned. Then defaults, OpenAPI validation and CEL rules. Raises `AdmissionError` with every
        field error. With the status subresource, status changes are ignored here (see `admit_status`).
        """
        new = copy.deepcopy(dict(obj))
        old = self._as_read(old)
        if self.status_subresource:
            new.pop("status", None)
            if old is not None and "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        self._decode(new, strict, scope=None)
        _apply_defaults(new, self.schema)
        found = _Findings()
        _validate_metadata(new.get("metadata"), old.get("metadata") if old else None, found)
        _validate_schema(new, self.schema, "", found)
        self._run_cel(new, _ABSENT if old is None else old, self.schema, "", found)
        self._raise_if_any(found, new)
        return new

    def admit_status(self, obj: Mapping[str, Any], old: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
        """A write to the /status subresource: everything but status stays as in ``old``; only the
        status is decoded, defaulted and validated."""
        old = self._as_read(old)
        new = copy.deepcopy(old)
        new.pop("status", None)
        if obj.get("status") is not None:
            new["status"] = copy.deepcopy(obj["status"])
        status_schema = self.schema.get("properties", {}).get("status", {})
        self._decode(new, strict, scope="status")
        if "status" in new:
            _apply_defaults(new["status"], status_schema)
        found = _Findings()
        if "status" in new:
            _validate_schema(new["status"], status_schema, "status", found)
            self._run_cel(new["status"], old.get("status", _ABSENT), status_schema, "status", found)
        self._raise_if_any(found, new)
        return new

    @overload
    def _as_read(self, stored: Mapping[str, Any]) -> dict[str, Any]: ...
    @overload
    def _as_read(self, stored: None) -> None: ...
    def _as_read(self, stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The old object as the API server reads it from storage: defaulted by the current schema."""
        if stored is None:
            return None
        read = copy.deepcopy(dict(stored))
        _apply_defaults(read, self.schema)
        return read

    def _decode(self, obj: dict[str, Any], strict: bool, *, scope: str | None) -> None:
        """Strict decoding (unknown fields are an error) or pruning, of the whole object or of one part."""
        if scope is None:
            unknown = list(_unknown_fields(obj, self._decoding_schema, "", prune=not strict))
            metadata = obj.get("metadata")
            if isinstance(metadata, dict):
                extra = [key for key in metadata if key not in _OBJECT_META_FIELDS]
                unknown += [f"metadata.{key}" for key in extra]
                for key in extra if not strict else ():
                    del metadata[key]
        else:
            part_schema = self.schema.get("properties", {}).get(scope, {})
            unknown = list(_unknown_fields(obj.get(scope), part_schema, scope, prune=not strict))
        if strict and unknown:
            raise self._error([FieldError(path, UNKNOWN_FIELD) for path in sorted(unknown)], obj)

    def _run_cel(self, value: object, old: object, schema: Mapping[str, Any], path: str, found: _Findings) -> None:
        """The CEL rules, unless a blocking error means the object is not what the rules expect."""
        if found.blocking:
            # As the API server: the note comes only from a CRD that has rules to skip.
            if self._cel.has_rules:
                found.add(FieldError("", INVALID, _CEL_RULES_SKIPPED, None))
            return
        self._cel.validate(value, old, schema, path, found)

    def _raise_if_any(self, found: _Findings, obj: Mapping[str, Any]) -> None:
        if found.errors:
            raise self._error(found.errors, obj)

    def _error(self, errors: list[FieldError], obj: Mapping[str, Any]) -> AdmissionError:
        metadata = obj.get("metadata")
        name = str(metadata.get("name", "")) if isinstance(metadata, dict) else ""
        return AdmissionError(errors, kind=self.kind, group=self.group, version=self.version, name=name)


@functools.cache
def load_agentrun_admission() -> CrdAdmission:
    """Admission for the AgentRun CRD, built from the models (the CRD's one source), so it works from an
    installed package as well as from the repository."""
    from agentrun_api.crd import build_crd  # crd imports the models; this module stays light

    crd = build_crd()
    return CrdAdmission.from_crd(crd)
