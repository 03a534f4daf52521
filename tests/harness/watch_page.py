"""The watch page as tests see it: signing in through its form, and reading back what it rendered to compare with a
run's event log."""

import json
from typing import Any

from tests.harness.chromium import Tab
from tests.harness.gateway import Gateway

# Reads back what the page rendered: each event it shows (data-id), in document order, with its fields.
RENDERED = """[...document.querySelectorAll("#events [data-id]")].map((element) => ({
  id: Number(element.dataset.id),
  type: element.dataset.type,
  fields: element.dataset.type === "token"
    ? {text: element.textContent}
    : Object.fromEntries([...element.querySelectorAll(":scope > dl > dd")].map((dd) => [dd.dataset.field, dd.textContent])),
}))"""
# The fields the page shows for each event type (watch.js FIELDS), as text: a string as itself, else its JSON.
SHOWN = {
    "iteration": ("iteration", "maxIterations", "retry"),
    "token": ("text",),
    "tool_call": ("name", "arguments"),
    "tool_result": ("name", "ok", "output"),
    "checkpoint": ("iteration", "record", "bytes", "fallback", "problem"),
    "finished": ("outcome", "message", "iteration", "phase", "reason", "replay"),
}


def as_shown(log: list[tuple[int, str, Any]]) -> list[dict[str, Any]]:
    """The run's log as the page should show it."""

    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    return [
        {"id": id_, "type": type_, "fields": {k: text(data[k]) for k in SHOWN[type_] if data.get(k) is not None}}
        for id_, type_, data in log
    ]


def watch_url(gateway: Gateway) -> str:
    return gateway.url.removesuffix("/events") + "/watch"


async def sign_in(tab: Tab, url: str, token: str) -> None:
    """Open the page at ``url`` and sign in through its form, which posts the token in the body; the page comes
    back at ``url`` itself, with no token in it."""
    await tab.navigate(url)
    await tab.wait_for("document.querySelector('form input[name=token]') !== null", "the sign-in form")
    await tab.evaluate(
        f"document.querySelector('input[name=token]').value = {json.dumps(token)};"
        "document.querySelector('form').submit()"
    )
    await tab.wait_for("document.getElementById('events') !== null", "the watch page")
    assert await tab.evaluate("location.href") == url
