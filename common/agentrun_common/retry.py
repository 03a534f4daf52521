"""The one retry policy for calls to the API server and the permit server: which answers are worth
another attempt, and how long to wait before it (the server's Retry-After when it gives one)."""

import dataclasses
from typing import Final

# The server is busy, restarting or behind a proxy that lost it: worth another attempt.
RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header in its delay-seconds form; None when absent or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; between them, exponential backoff from ``first_backoff_seconds`` up to
    ``max_backoff_seconds``, or the server's Retry-After when it says (capped by ``max_retry_after_seconds``)."""

    attempts: int = 4
    first_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0
    max_retry_after_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}")

    @staticmethod
    def retryable(status: int) -> bool:
        return status in RETRYABLE_STATUSES

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait after failed attempt number ``attempt`` (0 for the first)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_seconds)
        return float(min(self.first_backoff_seconds * 2 ** min(attempt, 32), self.max_backoff_seconds))

    def more_after(self, attempt: int) -> bool:
        """Whether another attempt follows failed attempt number ``attempt``."""
        return attempt + 1 < self.attempts


NO_RETRY: Final = RetryPolicy(attempts=1)
