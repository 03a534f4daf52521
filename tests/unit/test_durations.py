"""The one duration parser (agentrun_common.durations): what admission accepts, it reads; what it writes, it reads back."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrun_common.durations import DURATION_PATTERN, format_duration, parse_duration, parse_seconds

pytestmark = pytest.mark.unit

UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25)],
)
def test_parse_duration_reads_kubernetes_style_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-5m", "5d", "ten", "", "1h 30m", "5", "h", "1.h"])
def test_parse_duration_refuses_other_forms_naming_the_accepted_ones(text: str) -> None:
    with pytest.raises(
        ValueError, match=r'is not a duration such as "90s", "30m", "2h" or "1h30m" \(units: ms, s, m, h\)'
    ):
        parse_duration(text)


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.sampled_from(list(UNIT_SECONDS))), min_size=1))
def test_parse_duration_sums_its_parts_and_agrees_with_the_admission_pattern(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{number}{unit}" for number, unit in parts)
    assert re.fullmatch(DURATION_PATTERN, text)  # what the CRD admits
    assert parse_duration(text) == pytest.approx(sum(number * UNIT_SECONDS[unit] for number, unit in parts))


@given(st.text())
def test_parse_duration_accepts_exactly_what_the_admission_pattern_accepts(text: str) -> None:
    admitted = re.fullmatch(DURATION_PATTERN, text) is not None  # RE2 and ECMA `$`: the end, not a final newline
    try:
        parse_duration(text)
    except ValueError:
        assert not admitted
    else:
        assert admitted


@settings(max_examples=100)
@given(st.integers(min_value=1, max_value=10 * 24 * 3600))
def test_format_duration_round_trips_through_parse_duration(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59, "59s"), (60, "1m"), (5400, "1h30m"), (90061, "25h1m1s")])
def test_format_duration_writes_the_shortest_spelling(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("text", "seconds"), [("30", 30), ("2.5", 2.5), (" 0 ", 0), ("90s", 90), ("1m30s", 90)])
def test_parse_seconds_reads_a_bare_number_or_a_duration(text: str, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "ten", "5d", ""])
def test_parse_seconds_refuses_negatives_and_non_numbers_naming_both_forms(text: str) -> None:
    with pytest.raises(ValueError, match='a duration such as "90s"'):
        parse_seconds(text)
