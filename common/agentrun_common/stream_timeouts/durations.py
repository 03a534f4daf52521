"""Spell a number of seconds the way each proxy parses it.

Every proxy on the stream path reads durations in its own dialect, and a value in the wrong one is
either rejected or, worse, silently replaced by a default (ingress-nginx reads "3600s" as invalid and
falls back to 60 s). Each formatter here produces the one spelling its proxy documents.
"""

import math
import re
from typing import Final

# Gateway API's Duration (GEP-2257): one to four parts, each 1-5 digits and a unit.
GATEWAY_API_DURATION_PATTERN: Final = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
_GATEWAY_API_DURATION = re.compile(GATEWAY_API_DURATION_PATTERN)
_GATEWAY_API_PART_MAX: Final = 99_999


def whole_seconds(seconds: float) -> int:
    """Round up to whole seconds: a timer a fraction too short is still too short."""
    if seconds < 0:
        raise ValueError(f"a timeout cannot be negative, got {seconds}")
    return math.ceil(seconds)


def integer_seconds(seconds: float) -> str:
    """Bare integer seconds ("3600"): ingress-nginx, Azure AGIC. A unit suffix is rejected by them."""
    return str(whole_seconds(seconds))


def seconds_with_unit(seconds: float) -> str:
    """Integer seconds with the unit ("3600s"): nginx time, HAProxy time, Go and protobuf durations all accept it."""
    return f"{whole_seconds(seconds)}s"


def milliseconds(seconds: float) -> str:
    """Explicit milliseconds ("3600000ms")."""
    return f"{math.ceil(seconds * 1000)}ms"


def gateway_api_duration(seconds: float) -> str:
    """A Gateway API Duration that matches ``^([0-9]{1,5}(h|m|s|ms)){1,4}$`` for any budget up to 99999 h.

    Plain seconds are not always valid: "604800s" (7 days) has six digits and is rejected by the
    CRD's pattern, so the value is split into hours, minutes, seconds and milliseconds.
    """
    total_ms = math.ceil(seconds * 1000)
    if total_ms < 0:
        raise ValueError(f"a timeout cannot be negative, got {seconds}")
    if total_ms == 0:
        return "0s"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    if hours > _GATEWAY_API_PART_MAX:
        raise ValueError(f"{seconds} s is longer than the longest Gateway API duration ({_GATEWAY_API_PART_MAX}h)")
    parts = [(hours, "h"), (minutes, "m"), (secs, "s"), (millis, "ms")]
    text = "".join(f"{number}{unit}" for number, unit in parts if number)
    if not _GATEWAY_API_DURATION.match(text):  # cannot happen by construction; guards future edits
        raise AssertionError(f"formatted {text!r} does not match {GATEWAY_API_DURATION_PATTERN}")
    return text


def is_valid_gateway_api_duration(text: str) -> bool:
    return bool(_GATEWAY_API_DURATION.match(text))
