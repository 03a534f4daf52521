"""The operator's verdict on a run's stream chain: condition StreamChainFits and the Warning Event's table."""

from typing import Any

import pytest

from agentrun_api import conditions as c
from agentrun_api.spec import AgentRunSpec
from agentrun_common.stream_timeouts import (
    CONTROLLERS,
    HopStatus,
    StreamBudget,
    check_stream_chain,
    format_chain_table,
    stream_chain,
)
from agentrun_common.stream_timeouts.run_check import EVENT_MESSAGE_LIMIT
from tests.operator_samples import manifest

pytestmark = pytest.mark.unit

# Controllers whose whole-response timer is capped by the platform at a day (86400 s).
CAPPED_AT_A_DAY = ("gke-ingress", "gke-gateway", "azure-agic")


def spec_of(**overrides: Any) -> AgentRunSpec:
    return AgentRunSpec.model_validate(manifest(**overrides)["spec"])


@pytest.mark.parametrize("controller", CAPPED_AT_A_DAY)
def test_a_run_longer_than_a_capped_whole_response_timer_does_not_fit(controller: Any) -> None:
    check = check_stream_chain("q3", spec_of(maxExecutionTime="30h"), controller)

    assert check is not None
    assert not check.fits
    assert check.reason == c.REASON_STREAM_HOP_CUTS
    assert [h.kind.value for h in check.cutting_hops] == ["whole-response"]
    assert "86400" in check.event_message()
    assert "capped at 86400s" in check.condition_message()
    assert controller in check.condition_message()


@pytest.mark.parametrize("controller", CAPPED_AT_A_DAY)
def test_a_run_inside_the_cap_fits(controller: Any) -> None:
    check = check_stream_chain("q3", spec_of(maxExecutionTime="2h"), controller)

    assert check is not None
    assert check.fits
    assert check.reason == c.REASON_STREAM_CHAIN_FITS
    assert check.cutting_hops == ()


def test_the_cap_is_crossed_once_the_run_and_its_margin_pass_a_day() -> None:
    # whole_response_needed = maxExecutionTime + 300 s margin; the cap is 86400 s.
    assert check_stream_chain("q3", spec_of(maxExecutionTime="23h55m"), "gke-ingress").fits  # type: ignore[union-attr]
    assert not check_stream_chain("q3", spec_of(maxExecutionTime="23h56m"), "gke-ingress").fits  # type: ignore[union-attr]


def test_uncapped_controllers_fit_the_longest_run_the_api_admits() -> None:
    for controller in set(CONTROLLERS) - set(CAPPED_AT_A_DAY):
        check = check_stream_chain("q3", spec_of(maxExecutionTime="168h"), controller)
        assert check is not None
        assert check.fits, controller


def test_the_runs_own_exposure_names_the_controller_it_is_checked_behind() -> None:
    spec = spec_of(
        maxExecutionTime="30h",
        streaming={"ingress": {"controller": "gke-ingress", "host": "agents.example.com"}},
    )
    check = check_stream_chain("q3", spec, "ingress-nginx")  # the cluster's controller would fit

    assert check is not None
    assert check.controller == "gke-ingress"
    assert not check.fits


def test_the_cluster_controller_applies_to_runs_without_their_own_exposure() -> None:
    check = check_stream_chain("q3", spec_of(maxExecutionTime="30h"), "azure-agic")
    assert check is not None
    assert check.controller == "azure-agic"


def test_a_run_without_a_stream_gets_no_verdict() -> None:
    assert check_stream_chain("q3", spec_of(streaming={"enabled": False}), "gke-ingress") is None


def test_the_event_shows_the_chain_table_of_kubectl_agentrun_budget() -> None:
    spec = spec_of(maxExecutionTime="30h")
    check = check_stream_chain("q3", spec, "gke-ingress")
    assert check is not None
    hops = stream_chain("gke-ingress", StreamBudget.from_spec(spec))

    message = check.event_message()

    assert list(check.hops) == hops
    assert format_chain_table(hops, compact=True).rstrip("\n") in message
    assert message.splitlines()[1].split() == ["HOP", "TIMER", "SET", "NEEDED", "STATUS"]


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("max_execution_time", ["30m", "30h", "168h"])
def test_the_event_message_stays_inside_the_events_api_limit(controller: Any, max_execution_time: str) -> None:
    long_name = "r" * 63
    check = check_stream_chain(long_name, spec_of(maxExecutionTime=max_execution_time), controller)
    assert check is not None

    message = check.event_message()

    assert len(message.encode()) <= EVENT_MESSAGE_LIMIT
    for hop in check.cutting_hops:  # whatever is left out, the hops that cut the stream are shown
        assert hop.hop in message
        assert hop.value_set in message


def test_a_chain_too_long_for_the_limit_keeps_the_cutting_hops_and_says_where_the_rest_is() -> None:
    check = check_stream_chain("q3", spec_of(maxExecutionTime="30h"), "azure-agic")
    assert check is not None
    full = check.event_message()

    short = check.event_message(limit=len(full.encode()) - 1)

    assert len(short.encode()) < len(full.encode())
    assert "Azure Application Gateway" in short
    assert "WARN" in short
    assert "kubectl agentrun budget q3" in short
    assert "stream gateway → runner" not in short  # an OK hop, left out


def test_a_tiny_limit_cuts_the_message_and_marks_the_cut() -> None:
    check = check_stream_chain("q3", spec_of(maxExecutionTime="30h"), "gke-ingress")
    assert check is not None
    message = check.event_message(limit=120)
    assert len(message.encode()) <= 120
    assert message.endswith("...")


def test_cutting_hops_are_exactly_the_warn_rows() -> None:
    check = check_stream_chain("q3", spec_of(maxExecutionTime="30h"), "gke-gateway")
    assert check is not None
    assert check.cutting_hops == tuple(h for h in check.hops if h.status is HopStatus.WARN)
