"""runtime/timeq under any input (issue 23, item 5): every string gives a result or a UserError, never OverflowError
or anything else, within a time bound (hypothesis' deadline per example); times outside 1970-2999, absurd durations
and offsets are refused with the reason (--from/--to) or not applied and said so (a phrase in a question)."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlivs.runtime.errors import UserError
from rlivs.runtime.timeq import (
    EARLIEST, LATEST, MAX_QUESTION_CHARS, MAX_WHEN_CHARS, MAX_YEAR, MIN_YEAR, TimeQuery, TimeWindow, parse_question,
    parse_when, window_from_args,
)

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 12, 2, 16, 30, tzinfo=BERLIN)
ZONES = [BERLIN, ZoneInfo("Pacific/Kiritimati"), ZoneInfo("Pacific/Pago_Pago"), timezone.utc]  # +14h, -11h
# per example: the first reads of dateparser load its tables (~0.5 s); everything after takes milliseconds
BOUNDED = settings(deadline=timedelta(seconds=2), max_examples=250,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

ABSURD_WHEN = ["-99999999999w", "-99999999d", "+99999999999w", "0001-01-01T00:00+14:00", "9999-12-31",
               "9999-12-31T23:59:59-23:59", "0001-01-01", "1969-12-31", "3000-01-01", "-" + "9" * 20 + "s",
               "+1e400d", "-" + "9" * 60 + "s", "99999999999 days ago", "in 99999999999 years", "1" * 65]
ABSURD_QUESTIONS = ["what happened on 9999-12-31?", "what happened 99999999999 days ago?",
                    "anything in the last 9999999999999999999999 seconds?", "who came on 30th of Nov 9999",
                    "what happened 999999999999 weeks ago", "on 0001-01-01 at 3 pm", "since 1969-12-31",
                    "in the last " + "9" * 400 + " hours", "between January 1st 9999 and January 2nd 9999"]


def _ok_instant(t: datetime) -> None:
    assert t.tzinfo is not None and EARLIEST <= t <= LATEST


def _ok_window(w: TimeWindow | None) -> None:
    if w is not None:
        for end in (w.start, w.end):
            if end is not None:
                _ok_instant(end)


def _when(value: str, tz) -> None:
    """parse_when and window_from_args (both ends) return in range or raise UserError; nothing else."""
    try:
        _ok_instant(parse_when(value, NOW, tz))
    except UserError:
        pass
    for args in ((value, None), (None, value), (value, value)):
        try:
            _ok_window(window_from_args(*args, NOW, tz))
        except UserError:
            pass


def _question(text: str, tz) -> None:
    try:
        q = parse_question(text, NOW, tz)
    except UserError:
        assert len(text) > MAX_QUESTION_CHARS
        return
    assert isinstance(q, TimeQuery)
    _ok_window(q.window)
    if q.ignored:
        assert q.window is None and "not applied" in q.ignored


@pytest.mark.parametrize("value", ABSURD_WHEN)
def test_absurd_when_values_are_refused_with_the_reason(value):
    with pytest.raises(UserError) as e:
        parse_when(value, NOW, BERLIN)
    for names in (("--from", "--to"), ("from", "to")):
        with pytest.raises(UserError, match=f"^{names[0]}: "):
            window_from_args(value, None, NOW, BERLIN, names=names)
        with pytest.raises(UserError, match=f"^{names[1]}: "):
            window_from_args(None, value, NOW, BERLIN, names=names)
    msg = str(e.value)
    assert "out of range" in msg or "cannot read" in msg or "characters long" in msg, msg
    if "out of range" in msg:
        assert f"from {MIN_YEAR} to {MAX_YEAR}" in msg


def test_the_edges_of_the_range_are_read():
    assert parse_when("1970-01-01", NOW, BERLIN) == datetime(1970, 1, 1, tzinfo=BERLIN)
    assert parse_when("1970-01-01T00:00+14:00", NOW, BERLIN) == datetime(1969, 12, 31, 10, tzinfo=timezone.utc)
    w = window_from_args("2999-12-31", "2999-12-31", NOW, ZoneInfo("Pacific/Kiritimati"))
    assert w.end == datetime(3000, 1, 1, tzinfo=ZoneInfo("Pacific/Kiritimati"))
    assert parse_when("-2900w", NOW, BERLIN) == NOW - timedelta(weeks=2900)  # 1971
    assert parse_question("what happened on 2999-12-31?", NOW, BERLIN).window is not None


@pytest.mark.parametrize("question", ABSURD_QUESTIONS)
def test_absurd_time_phrases_in_a_question_are_not_applied_and_say_why(question):
    q = parse_question(question, NOW, BERLIN)
    assert q.window is None and q.phrase is None
    assert q.ignored and "was not applied" in q.ignored and "whole memory" in q.ignored
    assert q.text  # the question without the phrase (or the question itself) is still asked


def test_overlong_inputs_are_refused():
    with pytest.raises(UserError, match=f"at most {MAX_WHEN_CHARS}"):
        parse_when("yesterday" + " " * MAX_WHEN_CHARS, NOW, BERLIN)
    with pytest.raises(UserError, match=f"at most {MAX_QUESTION_CHARS}"):
        parse_question("what happened yesterday? " * 100, NOW, BERLIN)
    with pytest.raises(UserError, match="must be text"):
        parse_question(None, NOW, BERLIN)  # type: ignore[arg-type]


@BOUNDED
@given(st.text(max_size=MAX_WHEN_CHARS + 8), st.sampled_from(ZONES))
def test_any_text_is_a_time_or_a_user_error(value, tz):
    _when(value, tz)


@BOUNDED
@given(st.text(st.characters(blacklist_categories=()), max_size=40), st.sampled_from(ZONES))
def test_any_code_points_even_lone_surrogates(value, tz):
    _when(value, tz)
    _question(value, tz)


_DIGITS = st.one_of(st.integers(0, 10**30).map(str), st.text("0123456789", min_size=1, max_size=60),
                    st.floats(0, 1e30, allow_nan=False).map(lambda f: f"{f:.3f}"))
_UNITS = st.sampled_from(["s", "sec", "seconds", "m", "min", "minutes", "h", "hr", "hours", "d", "day", "days", "w",
                          "week", "weeks", "month", "years", ""])
_YEAR = st.one_of(st.integers(0, 9999), st.integers(MIN_YEAR - 2, MIN_YEAR + 2),
                  st.integers(MAX_YEAR - 2, MAX_YEAR + 2))
_DATE = st.builds(lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}", _YEAR, st.integers(0, 13), st.integers(0, 32))
_OFFSET = st.one_of(st.just(""), st.just("Z"), st.builds(lambda s, h, m: f"{s}{h:02d}:{m:02d}", st.sampled_from("+-"),
                                                         st.integers(0, 25), st.integers(0, 60)))
_DATETIME = st.builds(lambda d, sep, h, mi, off: f"{d}{sep}{h:02d}:{mi:02d}{off}", _DATE, st.sampled_from("T "),
                      st.integers(0, 24), st.integers(0, 60), _OFFSET)
_RELATIVE = st.builds(lambda s, n, sp, u: f"{s}{n}{sp}{u}", st.sampled_from(["-", "+", ""]), _DIGITS,
                      st.sampled_from(["", " "]), _UNITS)
_PHRASE = st.one_of(
    st.builds(lambda n, u: f"{n} {u} ago", _DIGITS, _UNITS),
    st.builds(lambda n, u: f"in the last {n} {u}", _DIGITS, _UNITS),
    st.builds(lambda d: f"on {d}", _DATE),
    st.builds(lambda d, m, y: f"{d} of {m} {y}", st.integers(0, 40), st.sampled_from(["Nov", "January", "may"]), _YEAR),
    st.builds(lambda r, d: f"{r} {d}", st.sampled_from(["since", "before", "after", "until"]), _DATE),
    st.builds(lambda a, b: f"between {a} and {b}", _DATE, _DATE),
    st.sampled_from(["yesterday", "today", "tomorrow", "last week", "this month", "last year", "at 3 pm", "now"]),
)
_WHEN = st.one_of(_DATE, _DATETIME, _RELATIVE, _PHRASE)


@BOUNDED
@given(_WHEN, st.sampled_from(ZONES))
def test_numbers_units_and_dates_are_a_time_or_a_user_error(value, tz):
    _when(value, tz)


@BOUNDED
@given(st.lists(st.one_of(_WHEN, st.sampled_from(["what", "happened", "and", "the", "door", "?", ","])),
                min_size=1, max_size=8), st.sampled_from(ZONES))
def test_questions_with_any_numbers_and_dates_are_answered_or_refused(words, tz):
    _question(" ".join(words), tz)


@BOUNDED
@given(st.text(max_size=300), st.sampled_from(ZONES))
def test_any_question_text(text, tz):
    _question(text, tz)


@settings(deadline=timedelta(seconds=2), max_examples=20)
@given(st.sampled_from(["on Monday and ", "since Monday and ", "yesterday at 3 pm, ", "in the last 9 hours and ",
                        "between 1 and ", "9" * 50 + " days ago ", "May 1st to "]))
def test_the_longest_questions_are_bounded(piece):
    _question((piece * (MAX_QUESTION_CHARS // len(piece)))[:MAX_QUESTION_CHARS], BERLIN)
