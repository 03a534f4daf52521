"""The platform's policy over what an AgentRun may ask of the cluster, set in the operator's configuration.

A run's author may choose the image that runs with the run's ServiceAccount, the base URL its API key
Secret is sent to, and the URL the operator (the most privileged pod) posts the completion webhook to.
The platform team bounds each of those here; a run outside the bounds ends Failed with reason
PolicyViolation before any of its children exist. Messages name the field, the offending image or host
(never a whole URL, which may carry credentials in its user part or query) and what the policy allows.

Variables (comma-separated lists; unset allows anything, which keeps installs that predate the policy
working; the chart sets all of them, see docs/security.md):
- AGENTRUN_POLICY_ALLOWED_IMAGES: image repositories runs may name in spec.runner.image, exact
  (``ghcr.io/acme/agentrun-runner``, any tag or digest) or by prefix (``ghcr.io/acme/*``); ``*`` is any.
- AGENTRUN_POLICY_REQUIRE_IMAGE_DIGEST (true/false, default false): spec.runner.image must be pinned
  by digest (``...@sha256:<64 hex>``), so a pushed tag cannot change what runs.
- AGENTRUN_POLICY_ALLOWED_MODEL_HOSTS: hosts of spec.model.baseURL, exact (``api.openai.com``) or
  ``*.example.com`` for its subdomains; ``*`` is any.
- AGENTRUN_POLICY_ALLOWED_WEBHOOK_HOSTS: hosts of spec.completionWebhook.url, as above.
- AGENTRUN_POLICY_ALLOWED_TOOL_HOSTS: hosts of the MCPServers' URLs and of spec.tools.http[].urlTemplate
  that runs may call, as above.
- AGENTRUN_POLICY_ALLOW_TOOL_LOOPBACK (true/false, default false): whether MCP and HTTP tools may reach
  loopback addresses. The runner resolves each tool host and refuses loopback addresses unless this is
  true, and link-local ones (cloud metadata endpoints) always.
Set to the empty string, a list allows nothing.
- AGENTRUN_POLICY_DEFAULT_RUNNER_RESOURCES: JSON ``{"requests": {...}, "limits": {...}}``, the runner
  container's resources for runs that set no spec.runner.resources at all (only then: mixed with a run's
  own values, a default request could exceed the run's limit).
"""

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

import pydantic

from agentrun_api.spec import AgentRunSpec, ResourceRequirements

REASON_POLICY_VIOLATION: Final = "PolicyViolation"
ANY: Final = "*"
ALLOW_ANY: Final = (ANY,)

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_REPOSITORY_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?(/\*)?$")
_HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$|^\[?[0-9a-f:.]+\]?$")


class PolicyError(ValueError):
    """A policy variable holds a value the operator cannot use; the message names it."""


class PolicyViolationError(ValueError):
    """A run asks for what the policy does not allow; the message names the field and the fix."""

    reason = REASON_POLICY_VIOLATION


@dataclasses.dataclass(frozen=True)
class Policy:
    """What runs may choose. Every list holds patterns; ``("*",)`` allows anything, ``()`` nothing."""

    allowed_images: tuple[str, ...] = ALLOW_ANY
    require_image_digest: bool = False
    allowed_model_hosts: tuple[str, ...] = ALLOW_ANY
    allowed_webhook_hosts: tuple[str, ...] = ALLOW_ANY
    allowed_tool_hosts: tuple[str, ...] = ALLOW_ANY
    allow_tool_loopback: bool = False
    # Runner container resources for runs that set none; empty: none (the namespace's LimitRange, if any).
    default_runner_resources: ResourceRequirements = dataclasses.field(default_factory=ResourceRequirements)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Policy":
        return cls(
            allowed_images=_patterns(env, "AGENTRUN_POLICY_ALLOWED_IMAGES", _REPOSITORY_PATTERN, "ghcr.io/acme/*"),
            require_image_digest=_flag(env, "AGENTRUN_POLICY_REQUIRE_IMAGE_DIGEST"),
            allowed_model_hosts=_patterns(
                env, "AGENTRUN_POLICY_ALLOWED_MODEL_HOSTS", _HOST_PATTERN, "api.openai.com,*.example.com"
            ),
            allowed_webhook_hosts=_patterns(
                env, "AGENTRUN_POLICY_ALLOWED_WEBHOOK_HOSTS", _HOST_PATTERN, "hooks.example.com"
            ),
            allowed_tool_hosts=_patterns(
                env, "AGENTRUN_POLICY_ALLOWED_TOOL_HOSTS", _HOST_PATTERN, "tools.internal.example,*.svc"
            ),
            allow_tool_loopback=_flag(env, "AGENTRUN_POLICY_ALLOW_TOOL_LOOPBACK"),
            default_runner_resources=_resources(env, "AGENTRUN_POLICY_DEFAULT_RUNNER_RESOURCES"),
        )

    def image_allowed(self, image: str) -> bool:
        return any(_image_matches(pattern, repository_of(image)) for pattern in self.allowed_images)

    def model_host_allowed(self, url: str) -> bool:
        return _host_allowed(self.allowed_model_hosts, host_of(url))

    def webhook_host_allowed(self, url: str) -> bool:
        return _host_allowed(self.allowed_webhook_hosts, host_of(url))

    def tool_host_allowed(self, url: str) -> bool:
        return _host_allowed(self.allowed_tool_hosts, host_of(url))

    def check_tool_url(self, url: str, field: str) -> None:
        """Raise PolicyViolationError naming ``field`` when the URL's host is not an allowed tool host."""
        if not self.tool_host_allowed(url):
            raise PolicyViolationError(
                f"{field}: host {host_of(url)!r} is not an allowed tool host; the operator's policy allows: "
                f"{_listed(self.allowed_tool_hosts)}"
            )


def enforce(spec: AgentRunSpec, policy: Policy) -> None:
    """Raise PolicyViolationError naming the first field of the run that the policy does not allow."""
    image = spec.runner.image
    if image is not None:
        if not policy.image_allowed(image):
            raise PolicyViolationError(
                f"spec.runner.image: {image!r} is not allowed by the operator's policy; allowed images: "
                f"{_listed(policy.allowed_images)}. Use one of them, or omit spec.runner.image for the default runner"
            )
        if policy.require_image_digest and not _DIGEST.search(image):
            raise PolicyViolationError(
                f"spec.runner.image: {image!r} is not pinned by digest and the operator's policy requires "
                "one; write it as <repository>@sha256:<64 hex digits>"
            )
    model_host = host_of(spec.model.base_url)
    if not policy.model_host_allowed(spec.model.base_url):
        raise PolicyViolationError(
            f"spec.model.baseURL: host {model_host!r} is not an allowed model host (the run's API key would be "
            f"sent there); the operator's policy allows: {_listed(policy.allowed_model_hosts)}"
        )
    hook = spec.completion_webhook
    if hook is not None and not policy.webhook_host_allowed(hook.url):
        raise PolicyViolationError(
            f"spec.completionWebhook.url: host {host_of(hook.url)!r} is not an allowed webhook host; the operator's "
            f"policy allows: {_listed(policy.allowed_webhook_hosts)}"
        )
    for index, tool in enumerate(spec.tools.http):
        policy.check_tool_url(tool.url_template, f"spec.tools.http[{index}].urlTemplate")


def repository_of(image: str) -> str:
    """The image reference without its digest or tag: ``reg:5000/a/b:1@sha256:..`` -> ``reg:5000/a/b``."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last_slash else name


def host_of(url: str) -> str:
    """The URL's host, lower case, without user part or port ("" when the URL has none, or is ambiguous)."""
    if "\\" in url:
        # Parsers disagree on a backslash (WHATWG reads it as "/", urllib as part of the user info), so the
        # host checked here could differ from the one a client connects to.
        return ""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _image_matches(pattern: str, repository: str) -> bool:
    if pattern == ANY:
        return True
    if pattern.endswith("/*"):
        return repository.startswith(pattern[:-1])
    return repository == pattern


def _host_allowed(patterns: tuple[str, ...], host: str) -> bool:
    if ANY in patterns:
        return True
    if not host:
        return False
    for pattern in patterns:
        if host == pattern.strip("[]"):
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def _listed(patterns: tuple[str, ...]) -> str:
    return ", ".join(patterns) if patterns else "none (ask the platform team to add one)"


def _patterns(env: Mapping[str, str], name: str, shape: re.Pattern[str], example: str) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return ALLOW_ANY
    patterns = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    for pattern in patterns:
        # An image pattern with a tag or digest could never match: images are compared by repository.
        tagged = shape is _REPOSITORY_PATTERN and repository_of(pattern.removesuffix("/*")) != pattern.removesuffix(
            "/*"
        )
        if pattern != ANY and (tagged or not shape.match(pattern)):
            raise PolicyError(f"{name}: {pattern!r} is not a valid pattern; write, for example, {example!r} or '*'")
    return patterns


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value not in ("", "true", "false"):
        raise PolicyError(f"{name} must be true or false, not {value!r}")
    return value == "true"


def _resources(env: Mapping[str, str], name: str) -> ResourceRequirements:
    raw = env.get(name, "").strip()
    if not raw:
        return ResourceRequirements()
    try:
        return ResourceRequirements.model_validate(json.loads(raw))
    except (ValueError, pydantic.ValidationError) as error:
        detail = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in (error.errors(include_url=False) if isinstance(error, pydantic.ValidationError) else [])
        ) or str(error)
        raise PolicyError(
            f'{name}: {detail}; write JSON such as {{"requests": {{"cpu": "250m", "memory": "512Mi"}}, '
            f'"limits": {{"memory": "1Gi"}}}}'
        ) from None
