"""The runner reads the run's absolute deadline the operator sets on the Job, or refuses it naming the variable."""

from datetime import UTC, datetime

import pytest

from agentrun_api.contract import DEADLINE_ENV
from agentrun_runner.__main__ import ConfigProblemError, read_deadline

pytestmark = pytest.mark.unit


def test_the_operators_deadline_is_read_and_none_means_counting_from_the_checkpoint() -> None:
    assert read_deadline("2026-01-01T12:30:00+00:00") == datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    assert read_deadline(None) is None
    assert read_deadline("") is None


@pytest.mark.parametrize(("raw", "says"), [("soon", "not an ISO 8601 time"), ("2026-01-01T12:30:00", "no time zone")])
def test_a_bad_deadline_is_refused_naming_the_variable(raw: str, says: str) -> None:
    with pytest.raises(ConfigProblemError, match=DEADLINE_ENV) as error:
        read_deadline(raw)
    assert says in str(error.value)
