"""The watch page's sign-in: a cookie that lets a browser read one run's stream for a while.

An EventSource cannot send an Authorization header, and a token in the stream's URL would be kept by every
access log on the way; so the page's reader is signed in with a cookie instead. Its value is
``<expiry>.<mac>``: the expiry in Unix seconds and an HMAC-SHA256, keyed by the run's stream token, of
the namespace, the run and the expiry. Every gateway replica can check it (each reads the run's token), the
gateway stores nothing, the token itself never leaves it, and replacing the run's stream token Secret revokes
every session at once.
"""

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

COOKIE_NAME = "agentrun-watch"


@dataclass(frozen=True)
class WatchSession:
    value: str
    """The cookie's value."""
    expires_at: int
    """Unix seconds."""


def _mac(stream_token: str, namespace: str, run: str, expires_at: int) -> str:
    message = f"agentrun-watch\n{namespace}\n{run}\n{expires_at}".encode()
    digest = hmac.new(stream_token.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue(
    stream_token: str, namespace: str, run: str, lifetime_seconds: float, now: float | None = None
) -> WatchSession:
    expires_at = int((time.time() if now is None else now) + lifetime_seconds)
    return WatchSession(f"{expires_at}.{_mac(stream_token, namespace, run, expires_at)}", expires_at)


def expiry_of(value: str) -> int | None:
    """The expiry a cookie value claims (unchecked), or None when it is not shaped like one."""
    raw, _, _ = value.partition(".")
    return int(raw) if raw.isdigit() and len(raw) <= 12 else None


def valid(stream_token: str, namespace: str, run: str, value: str, now: float | None = None) -> bool:
    """Whether ``value`` was issued for this run with this token and has not expired."""
    expires_at = expiry_of(value)
    if expires_at is None or expires_at <= (time.time() if now is None else now):
        return False
    expected = f"{expires_at}.{_mac(stream_token, namespace, run, expires_at)}"
    return hmac.compare_digest(value.encode(), expected.encode())
