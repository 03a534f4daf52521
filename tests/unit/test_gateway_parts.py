"""The stream gateway's pure parts: its closing event, settings, caches, the shared feed."""

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentrun_common.settings import SettingsError
from agentrun_common.sse import SseEvent, SseParser
from agentrun_gateway.auth import SingleFlight, TtlCache
from agentrun_gateway.relay import RunFeed, final_event
from agentrun_gateway.settings import GatewaySettings, keep_alive_behind

pytestmark = pytest.mark.unit


def test_final_event_has_no_id_so_the_reader_keeps_its_position() -> None:
    encoded = final_event({"phase": "Failed"}).encode()
    assert b"id:" not in encoded
    assert SseParser().feed(encoded) == [SseEvent("finished", '{"phase":"Failed"}')]


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
    assert GatewaySettings.from_env({"AGENTRUN_GATEWAY_AUTH_CACHE_SECONDS": "1m"}).auth_cache_seconds == 60.0
    # Where it listens: AGENTRUN_GATEWAY_HOST, else the pod's IP (the chart's POD_IP), else every interface.
    assert settings.host == "0.0.0.0"
    assert GatewaySettings.from_env({"POD_IP": "10.1.2.3"}).host == "10.1.2.3"
    assert GatewaySettings.from_env({"POD_IP": "10.1.2.3", "AGENTRUN_GATEWAY_HOST": "127.0.0.1"}).host == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AGENTRUN_GATEWAY_PORT": "eighty"}, "AGENTRUN_GATEWAY_PORT='eighty' is not a whole number: set it to one"),
        (
            {"AGENTRUN_GATEWAY_AUTH_CACHE_SECONDS": "soon"},
            "AGENTRUN_GATEWAY_AUTH_CACHE_SECONDS='soon' is not a number of seconds",
        ),
        ({"AGENTRUN_GATEWAY_CONTROLLER": "nginx"}, "AGENTRUN_GATEWAY_CONTROLLER='nginx' is not one of ingress-nginx, "),
        ({"AGENTRUN_GATEWAY_UPSTREAM_URL": "http://runner/events"}, "must contain {namespace} and {name}"),
        ({"AGENTRUN_GATEWAY_UPSTREAM_MAX_EVENT_BYTES": "0"}, "must be a positive number of bytes"),
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


class _CollectingSink:
    prepared = True

    def __init__(self, yields_per_event: int) -> None:
        self.events: list[SseEvent] = []
        self._yields = yields_per_event

    async def open(self) -> None:
        return None

    async def deliver(self, event: SseEvent) -> None:
        self.events.append(event)
        for _ in range(self._yields):  # a slow reader: the feed moves on meanwhile
            await asyncio.sleep(0)


@given(
    start=st.integers(min_value=0, max_value=5),
    readers=st.lists(
        st.tuples(st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=4)), min_size=1, max_size=5
    ),
    memory=st.integers(min_value=1, max_value=50),
)
def test_feed_readers_get_every_event_after_their_position_once_or_are_told_to_continue_alone(
    start: int, readers: list[tuple[int, int]], memory: int
) -> None:
    positions = [position for position, _ in readers]

    async def scenario() -> None:
        feed = RunFeed(start, memory)
        total = 40
        sinks = [_CollectingSink(yields) for _, yields in readers]
        tasks = [asyncio.create_task(feed.read(max(p, start), s)) for p, s in zip(positions, sinks, strict=True)]
        for event_id in range(start + 1, total + 1):
            await feed.deliver(SseEvent("finished" if event_id == total else "token", str(event_id), str(event_id)))
            await asyncio.sleep(0)
        await feed.close()
        results = await asyncio.gather(*tasks)
        for position, sink, (reached, complete) in zip(positions, sinks, results, strict=True):
            ids = [e.sequence for e in sink.events]
            first = max(position, start) + 1
            assert ids == list(range(first, first + len(ids)))  # in order, no gap, no repeat
            if complete:
                assert reached == total
                assert ids[-1:] == [total] or first > total
            else:
                assert reached == (ids[-1] if ids else max(position, start))  # continues alone from here

    asyncio.run(scenario())
