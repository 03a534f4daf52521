"""A request's Kubernetes attributes read from its method and URL, by the rules of kube-apiserver's
RequestInfoFactory (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go), so the proxy's records name the same
verb, resource and object as the API server's audit log and authorizer would."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

API_PREFIXES = frozenset({"api", "apis"})
# Only the core group's prefix has no group segment: /api/v1/pods, but /apis/batch/v1/jobs.
GROUPLESS_API_PREFIXES = frozenset({"api"})
# Path verbs of old clients: /api/v1/watch/namespaces/x/pods and /api/v1/proxy/namespaces/x/pods/y.
SPECIAL_VERBS = frozenset({"proxy", "watch"})
# After proxy/<resource>/<name>, the rest of the path is the proxied URL, not a subresource.
SPECIAL_VERBS_WITHOUT_SUBRESOURCES = frozenset({"proxy"})
# /api/v1/namespaces/<name>/status and /finalize are the namespace's own subresources, not a namespaced resource.
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})

_VERB_OF_METHOD = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class RequestInfo:
    """What the API server understands a request to be about.

    A non-resource request (`/readyz`, `/version`, discovery documents) has `is_resource_request` False and the
    lower-cased method as its verb, as kube-apiserver's authorizer sees it; every other field is empty.
    """

    is_resource_request: bool
    verb: str
    api_prefix: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def parse_request_info(method: str, path: str, query: str = "") -> RequestInfo:
    """The RequestInfo of `method` on the decoded `path` with the raw `query` string (no leading `?`)."""
    non_resource = RequestInfo(is_resource_request=False, verb=method.lower())
    parts = _split_path(path)
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return non_resource
    api_prefix, parts = parts[0], parts[1:]
    group = ""
    if api_prefix not in GROUPLESS_API_PREFIXES:
        # /apis/<group>/<version> alone is a discovery document.
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]

    if parts[0] in SPECIAL_VERBS:
        if len(parts) < 2:
            # The API server rejects /api/v1/watch alone; nothing more can be said about it.
            return RequestInfo(is_resource_request=True, verb="", api_prefix=api_prefix, group=group, version=version)
        verb, parts = parts[0], parts[1:]
    else:
        verb = _VERB_OF_METHOD.get(method.upper(), "")

    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        # /namespaces/<ns>/<resource>/... is a namespaced resource; /namespaces/<ns>/status is the namespace's own.
        if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
            parts = parts[2:]

    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb not in SPECIAL_VERBS_WITHOUT_SUBRESOURCES else ""

    if not name and verb == "get":
        # A GET of a collection is a list, or a watch when the query says so; a field selector pinning
        # metadata.name names the one object the list or watch is about (client-go's single-object informers).
        values = _query_values(query)
        verb = "watch" if _query_bool(values.get("watch")) else "list"
        name = _name_from_field_selector(values.get("fieldSelector"))
    if not name and verb == "delete":
        verb = "deletecollection"

    return RequestInfo(
        is_resource_request=True,
        verb=verb,
        api_prefix=api_prefix,
        group=group,
        version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
    )


def _split_path(path: str) -> list[str]:
    trimmed = path.strip("/")
    return trimmed.split("/") if trimmed else []


def _query_values(query: str) -> dict[str, list[str]]:
    return parse_qs(query, keep_blank_values=True)


def _query_bool(values: list[str] | None) -> bool:
    """A boolean query parameter as the API server converts it: present and not "0" or "false" is true."""
    if not values:
        return False
    return values[0] != "0" and values[0].lower() != "false"


def _name_from_field_selector(values: list[str] | None) -> str:
    """The name a field selector requires exactly (`metadata.name=x` or `==x`), "" when it requires none or
    does not parse (the API server then ignores the selector for its request info)."""
    if not values:
        return ""
    try:
        terms = [_split_term(term) for term in _split_terms(values[0]) if term]
    except ValueError:
        return ""
    for field_name, operator, value in terms:
        if field_name == "metadata.name" and operator in ("=", "=="):
            # A name that cannot be a path segment cannot name an object.
            return "" if value in (".", "..") or "/" in value or "%" in value else value
    return ""


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not escaped with a backslash (fields.splitTerms)."""
    terms: list[str] = []
    start = 0
    escaped = False
    for index, char in enumerate(selector):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            terms.append(selector[start:index])
            start = index + 1
    terms.append(selector[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str]:
    """`field<op>value` at the first operator, trying `!=`, `==`, `=` at each position (fields.splitTerm)."""
    for index in range(len(term)):
        for operator in ("!=", "==", "="):
            if term.startswith(operator, index):
                return term[:index], operator, _unescape(term[index + len(operator) :])
    raise ValueError(f"invalid field selector term: {term!r}")


def _unescape(value: str) -> str:
    r"""Undo a field selector value's escapes; only `\\`, `\,` and `\=` are valid (fields.UnescapeValue)."""
    out: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise ValueError(f"invalid escape in field selector value: {value!r}")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise ValueError(f"unescaped {char!r} in field selector value: {value!r}")
        else:
            out.append(char)
    if escaped:
        raise ValueError(f"trailing backslash in field selector value: {value!r}")
    return "".join(out)
