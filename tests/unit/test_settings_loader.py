"""The one settings loader (agentrun_common.settings): typed fields from prefixed environment variables, durations
through the one parser, and errors that name the variable, what it accepts and the default."""

from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest

from agentrun_common.settings import (
    Count,
    Env,
    Port,
    PositiveSeconds,
    Seconds,
    SettingsError,
    load_settings,
)

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Inner:
    lease_seconds: PositiveSeconds = 15.0
    status_interval_seconds: Annotated[Seconds, Env(name="DEMO_POOL_STATUS_INTERVAL_SECONDS")] = 5.0


@dataclass(frozen=True)
class Demo:
    host: str = "0.0.0.0"
    port: Port = 8080
    workers: Count = 4
    ratio: float = 0.5
    timeout_seconds: Seconds = 10.0
    grace_seconds: Annotated[int, Env(seconds=True, minimum=0)] = 60
    log_format: Literal["text", "json"] = "text"
    namespace: Annotated[str, Env(name="DEMO_LEASE_NAMESPACE", fallbacks=("POD_NAMESPACE",))] = ""
    inner: Annotated[Inner, Env(prefix="DEMO_INNER_")] = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.timeout_seconds > 3600:
            raise ValueError("DEMO_TIMEOUT_SECONDS must be at most an hour")


def load(**env: str) -> Demo:
    return load_settings(Demo, env, prefix="DEMO_")


def test_unset_and_blank_variables_keep_the_defaults() -> None:
    assert load() == Demo()
    assert load(DEMO_PORT="", DEMO_HOST="  ", DEMO_LOG_FORMAT="") == Demo()


def test_each_field_is_read_from_the_prefix_and_its_name_with_its_type() -> None:
    settings = load(
        DEMO_HOST=" 127.0.0.1 ",
        DEMO_PORT="9000",
        DEMO_WORKERS="2",
        DEMO_RATIO="0.25",
        DEMO_TIMEOUT_SECONDS="1m30s",
        DEMO_GRACE_SECONDS="2.5",
        DEMO_LOG_FORMAT="JSON",
        OTHER="ignored",
    )
    assert (settings.host, settings.port, settings.workers, settings.ratio) == ("127.0.0.1", 9000, 2, 0.25)
    assert settings.timeout_seconds == 90.0
    assert settings.grace_seconds == 3  # whole seconds, rounded up: a timer a fraction short is still short
    assert settings.log_format == "json"


def test_seconds_are_a_bare_number_or_a_duration() -> None:
    assert load(DEMO_TIMEOUT_SECONDS="30").timeout_seconds == 30.0
    assert load(DEMO_TIMEOUT_SECONDS="250ms").timeout_seconds == 0.25


def test_a_field_may_name_its_variable_and_fall_back_to_others() -> None:
    assert load(POD_NAMESPACE="agents").namespace == "agents"
    assert load(POD_NAMESPACE="agents", DEMO_LEASE_NAMESPACE="leases").namespace == "leases"
    assert load(DEMO_NAMESPACE="not-read").namespace == ""


def test_a_nested_settings_dataclass_is_read_with_its_own_prefix() -> None:
    inner = load(DEMO_INNER_LEASE_SECONDS="5", DEMO_POOL_STATUS_INTERVAL_SECONDS="2s").inner
    assert inner == Inner(lease_seconds=5.0, status_interval_seconds=2.0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DEMO_PORT": "eighty"},
            "DEMO_PORT='eighty' is not a whole number: set it to one such as 8, or unset it for the default 8080",
        ),
        (
            {"DEMO_PORT": "70000"},
            "DEMO_PORT='70000' is out of range: set it to a value at least 0 and at most 65535, or unset it for the default 8080",
        ),
        (
            {"DEMO_WORKERS": "0"},
            "DEMO_WORKERS='0' is out of range: set it to a value at least 1, or unset it for the default 4",
        ),
        (
            {"DEMO_RATIO": "nan"},
            "DEMO_RATIO='nan' is not a number: set it to one such as 2.5, or unset it for the default 0.5",
        ),
        (
            {"DEMO_TIMEOUT_SECONDS": "5d"},
            "DEMO_TIMEOUT_SECONDS='5d' is not a number of seconds: set it to seconds such as 30, or to a duration such as "
            '"90s", "30m", "2h" or "1h30m" (units: ms, s, m, h), or unset it for the default 10.0',
        ),
        ({"DEMO_TIMEOUT_SECONDS": "-1"}, "DEMO_TIMEOUT_SECONDS='-1' is not a number of seconds"),
        (
            {"DEMO_INNER_LEASE_SECONDS": "0"},
            "DEMO_INNER_LEASE_SECONDS='0' is out of range: set it to a value greater than 0",
        ),
        (
            {"DEMO_LOG_FORMAT": "xml"},
            "DEMO_LOG_FORMAT='xml' is not one of text, json: set it to one of them, or unset it for the default 'text'",
        ),
        ({"DEMO_TIMEOUT_SECONDS": "2h"}, "DEMO_TIMEOUT_SECONDS must be at most an hour"),  # the class's own check
    ],
)
def test_bad_values_are_refused_naming_the_variable_the_accepted_form_and_the_default(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load(**env)
    assert str(caught.value).startswith(message)


def test_a_field_of_a_type_the_loader_cannot_read_is_a_programming_error() -> None:
    @dataclass(frozen=True)
    class Unreadable:
        names: list[str] = field(default_factory=list)

    with pytest.raises(TypeError, match="reads str, int, float and Literal fields"):
        load_settings(Unreadable, {"X_NAMES": "a,b"}, prefix="X_")
    with pytest.raises(TypeError, match="is not a dataclass"):
        load_settings(str, {}, prefix="X_")
