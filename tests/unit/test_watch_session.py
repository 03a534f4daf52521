"""The watch page's sign-in cookie: valid for one run, with one stream token, until its expiry, and only as issued."""

from agentrun_gateway import watch_session

TOKEN = "the-runs-stream-token"
NOW = 1_800_000_000.0


def test_a_session_is_valid_for_its_run_until_it_expires() -> None:
    session = watch_session.issue(TOKEN, "team", "q3", 60, now=NOW)
    assert session.expires_at == NOW + 60
    assert watch_session.valid(TOKEN, "team", "q3", session.value, now=NOW + 59)
    assert not watch_session.valid(TOKEN, "team", "q3", session.value, now=NOW + 60)


def test_a_session_holds_no_token_and_opens_no_other_run() -> None:
    session = watch_session.issue(TOKEN, "team", "q3", 60, now=NOW)
    assert TOKEN not in session.value
    assert not watch_session.valid(TOKEN, "team", "q4", session.value, now=NOW)
    assert not watch_session.valid(TOKEN, "other", "q3", session.value, now=NOW)


def test_replacing_the_stream_token_ends_every_session() -> None:
    session = watch_session.issue(TOKEN, "team", "q3", 60, now=NOW)
    assert not watch_session.valid("a-new-token", "team", "q3", session.value, now=NOW)


def test_an_altered_or_malformed_cookie_is_refused() -> None:
    session = watch_session.issue(TOKEN, "team", "q3", 60, now=NOW)
    _, _, mac = session.value.partition(".")
    for value in (f"{int(NOW) + 3600}.{mac}", session.value + "x", mac, "", ".", "-1.x", "9" * 40 + ".x"):
        assert not watch_session.valid(TOKEN, "team", "q3", value, now=NOW), value
