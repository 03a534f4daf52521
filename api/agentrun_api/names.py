"""The rule an AgentRun's name follows, so that every object made for the run can carry a name derived from it.

The run's name becomes a label value (at most 63 characters), the prefix of its Job's name (the Job controller
puts the Job's name in a label of its pods: at most 63 characters, so the run name plus "-runner") and of its
stream Service's name (a DNS-1035 label: lowercase letters, digits and '-', starting with a letter, at most 63).
The CRD checks the rule at admission (``crd.build_crd``, a CEL rule on metadata.name); the operator checks it
again for runs admitted before the rule existed.
"""

import re
from typing import Final

# The longest suffix a child whose name must be a 63-character label adds to the run's name: "-runner" (the Job,
# the ServiceAccount, the Role) and "-stream" (the Service).
_LONGEST_LABEL_SUFFIX: Final = len("-runner")
RUN_NAME_MAX_LENGTH: Final = 63 - _LONGEST_LABEL_SUFFIX
RUN_NAME_PATTERN: Final = "^[a-z]([-a-z0-9]*[a-z0-9])?$"  # DNS-1035 label
DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
RUN_NAME_PATTERN_MESSAGE: Final = (
    "metadata.name must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and "
    "ending with a letter or digit (no dots), because the run's stream Service is named after it"
)
RUN_NAME_LENGTH_MESSAGE: Final = (
    f"metadata.name must be at most {RUN_NAME_MAX_LENGTH} characters, so that the run's Job "
    f"(<name>-runner) and Service (<name>-stream) names fit in 63"
)


def is_dns_label(text: str) -> bool:
    """A Kubernetes namespace's (or any DNS-1123 label's) form."""
    return len(text) <= 63 and re.fullmatch(DNS_LABEL_PATTERN, text) is not None


def is_dns_subdomain(text: str) -> bool:
    """A Kubernetes object name's form (DNS-1123 subdomain)."""
    return len(text) <= 253 and re.fullmatch(DNS_SUBDOMAIN_PATTERN, text) is not None


def run_name_problem(name: str) -> str | None:
    """Why this name cannot be an AgentRun's, or None when it can."""
    if not re.fullmatch(RUN_NAME_PATTERN, name):
        return f"{RUN_NAME_PATTERN_MESSAGE}; {name!r} is not"
    if len(name) > RUN_NAME_MAX_LENGTH:
        return f"{RUN_NAME_LENGTH_MESSAGE}; {name!r} has {len(name)}"
    return None


def cel_rules() -> list[dict[str, str]]:
    """The same rule as CEL validations of the whole object (metadata.name is visible to CEL at the root)."""
    return [
        {
            "rule": f"self.metadata.name.matches('{RUN_NAME_PATTERN}')",
            "message": RUN_NAME_PATTERN_MESSAGE,
        },
        {
            "rule": f"size(self.metadata.name) <= {RUN_NAME_MAX_LENGTH}",
            "message": RUN_NAME_LENGTH_MESSAGE,
        },
    ]
