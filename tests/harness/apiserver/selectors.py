"""Label and field selectors as the apiserver parses them from `labelSelector=` and `fieldSelector=`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.harness.apiserver.errors import bad_request

_SET_TERM = re.compile(r"^\s*(!?)([A-Za-z0-9_.\-/]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_TERM = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(==|=|!=)\s*([A-Za-z0-9_.\-]*)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_.\-/]+)\s*$")


@dataclass(frozen=True)
class LabelSelector:
    """A parsed label selector; `matches(labels)` is true when every requirement holds (logical AND)."""

    requirements: tuple[Callable[[Mapping[str, str]], bool], ...] = ()
    text: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement(labels) for requirement in self.requirements)


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses (`a in (x,y),b` has two terms)."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term for term in terms if term.strip()]


Requirement = Callable[[Mapping[str, str]], bool]


def _in_set(key: str, values: frozenset[str], *, negate: bool) -> Requirement:
    # `notin` also matches objects without the label, as in labels.Requirement.
    return lambda labels: (labels.get(key) in values) != negate


def _equals(key: str, value: str, *, negate: bool) -> Requirement:
    return lambda labels: (labels.get(key) == value) != negate


def _exists(key: str, *, negate: bool) -> Requirement:
    return lambda labels: (key in labels) != negate


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse the selector syntax of `labels.Parse`: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`."""
    if not text:
        return LabelSelector()
    requirements: list[Requirement] = []
    for term in _split_terms(text):
        if match := _SET_TERM.match(term):
            negated_key, key, operator, raw_values = match.groups()
            if negated_key:
                raise bad_request(f"unable to parse requirement: invalid label selector term {term.strip()!r}")
            values = frozenset(value.strip() for value in raw_values.split(",") if value.strip())
            requirements.append(_in_set(key, values, negate=operator == "notin"))
        elif match := _EQ_TERM.match(term):
            key, operator, value = match.groups()
            requirements.append(_equals(key, value, negate=operator == "!="))
        elif match := _EXISTS_TERM.match(term):
            negated, key = match.groups()
            requirements.append(_exists(key, negate=bool(negated)))
        else:
            raise bad_request(f"unable to parse requirement: invalid label selector term {term.strip()!r}")
    return LabelSelector(tuple(requirements), text)


def match_labels_selector(selector: Mapping[str, Any] | None) -> LabelSelector:
    """Turn a `metav1.LabelSelector` object (matchLabels + matchExpressions) into a selector."""
    if not selector:
        return LabelSelector()
    terms = [f"{key}={value}" for key, value in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif operator == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif operator == "Exists":
            terms.append(key)
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
    return parse_label_selector(",".join(terms))


@dataclass(frozen=True)
class FieldSelector:
    """A parsed field selector: `path=value` / `path!=value` terms over dotted object paths."""

    terms: tuple[tuple[str, bool, str], ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for path, equal, value in self.terms:
            actual = field_value(obj, path)
            if (actual == value) != equal:
                return False
        return True


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted field (missing fields are the empty string, as in fields.Set)."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def parse_field_selector(text: str | None) -> FieldSelector:
    """Parse `metadata.name=x,metadata.namespace!=y` (the `fields.ParseSelector` syntax, `=`, `==`, `!=`)."""
    if not text:
        return FieldSelector()
    terms: list[tuple[str, bool, str]] = []
    for term in text.split(","):
        if not term.strip():
            continue
        for operator, equal in (("!=", False), ("==", True), ("=", True)):
            if operator in term:
                path, value = term.split(operator, 1)
                terms.append((path.strip(), equal, value.strip()))
                break
        else:
            raise bad_request(f"invalid selector: {text!r}; can't understand {term!r}")
    return FieldSelector(tuple(terms))
