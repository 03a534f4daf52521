"""Kubernetes-style duration strings ("90s", "30m", "2h", "1h30m"): the project's one duration parser.

The accepted form is the subset of Go's ``time.ParseDuration`` that Kubernetes CEL's
``duration()`` also accepts, so the same string is checked at admission (the CRD's pattern is
``DURATION_PATTERN``) and parsed here, by the operator, the runner, the gateway and the settings
loader alike. Spelling a duration for a proxy's own dialect is ``agentrun_common.stream_timeouts.durations``.
"""

import math
import re
from typing import Final

# Units Go accepts that make sense for agent budgets; "d" is not a Go unit and is rejected.
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

DURATION_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
DURATION_FORMS: Final = 'a duration such as "90s", "30m", "2h" or "1h30m" (units: ms, s, m, h)'

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_WHOLE = re.compile(DURATION_PATTERN)


def parse_duration(text: str) -> float:
    """Return the duration in seconds, or raise ValueError naming the accepted forms."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        raise ValueError(f"{text!r} is not {DURATION_FORMS}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))


def parse_seconds(text: str) -> float:
    """Seconds from a bare non-negative number ("30", "2.5") or a duration ("90s", "1h30m").

    A bare number is how every ``*_SECONDS`` setting has always been written; a duration is accepted too.
    """
    stripped = text.strip()
    try:
        seconds = float(stripped)
    except ValueError:
        return parse_duration(stripped)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r} is not a number of seconds at least 0, nor {DURATION_FORMS}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact Kubernetes-style spelling of a whole number of seconds ("1h30m")."""
    whole = round(seconds)
    if whole <= 0:
        return "0s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts)
