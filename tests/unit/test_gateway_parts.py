"""The stream gateway's pure parts: SSE parsing and encoding, settings, caches."""

import asyncio

import pytest

from agentrun_gateway.auth import SingleFlight, TtlCache
from agentrun_gateway.settings import GatewaySettings, SettingsError, keep_alive_behind
from agentrun_gateway.sse import SseEvent, SseParser, final_event

pytestmark = pytest.mark.unit


def test_parser_reassembles_events_split_anywhere_and_skips_comments() -> None:
    wire = (
        b': heartbeat\n\nid: 7\nevent: token\ndata: {"a":1}\n\nid: 8\r\nevent: finished\r\ndata: x\r\ndata: y\r\n\r\n'
    )
    for split in range(1, len(wire)):
        parser = SseParser()
        events = parser.feed(wire[:split]) + parser.feed(wire[split:])
        assert events == [SseEvent(7, "token", '{"a":1}'), SseEvent(8, "finished", "x\ny")]


def test_encoded_event_parses_back_to_itself() -> None:
    event = SseEvent(12, "tool_result", "line one\nline two")
    assert SseParser().feed(event.encode()) == [event]


def test_final_event_has_no_id_so_the_reader_keeps_its_position() -> None:
    encoded = final_event({"phase": "Failed"}).encode()
    assert b"id:" not in encoded
    assert SseParser().feed(encoded) == [SseEvent(None, "finished", '{"phase":"Failed"}')]


def test_non_numeric_ids_are_not_taken_as_positions() -> None:
    assert SseParser().feed(b"id: abc\nevent: token\ndata: 1\n\n") == [SseEvent(None, "token", "1")]


def test_settings_read_the_environment_and_derive_the_keep_alive_from_the_controller() -> None:
    settings = GatewaySettings.from_env(
        {
            "AGENTRUN_GATEWAY_PORT": "9000",
            "AGENTRUN_GATEWAY_CONTROLLER": "gke-ingress",
            "AGENTRUN_GATEWAY_KUBE_API_URL": "https://10.0.0.1:443",
        }
    )
    assert settings.port == 9000
    assert settings.keep_alive_seconds == 620  # Google keeps backend connections 600 s
    assert keep_alive_behind("ingress-nginx") == 80
    assert settings.upstream_idle_for(15) == 45
    assert settings.upstream_url == "http://{name}-stream.{namespace}.svc:8080/events"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AGENTRUN_GATEWAY_PORT": "eighty"}, "AGENTRUN_GATEWAY_PORT='eighty' is not a valid int"),
        ({"AGENTRUN_GATEWAY_CONTROLLER": "nginx"}, "is not a known controller"),
        ({"AGENTRUN_GATEWAY_UPSTREAM_URL": "http://runner/events"}, "must contain {namespace} and {name}"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("{", r"\{").replace("}", r"\}")):
        GatewaySettings.from_env({"AGENTRUN_GATEWAY_KUBE_API_URL": "https://x", **env})


def test_ttl_cache_evicts_the_least_recently_used_beyond_its_bound() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=60, max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


async def test_single_flight_shares_one_call_between_concurrent_callers() -> None:
    calls = 0
    release = asyncio.Event()

    async def lookup() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "value"

    flights: SingleFlight[str, str] = SingleFlight()
    waiters = [asyncio.create_task(flights.run("key", lookup)) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == ["value"] * 50
    assert calls == 1
