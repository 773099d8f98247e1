"""runtime/timeq: every supported time expression gives the documented window (docs/edge_app.md, "Time in
questions"), in a non-UTC zone and across DST changes; words that look like times are not times; the intent of the
question; --from/--to values and their refusals."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlivs.runtime.errors import UserError
from rlivs.runtime.timeq import (
    CLOCK_HALF_WIDTH,
    PARTS_OF_DAY,
    TimeQuery,
    TimeWindow,
    parse_question,
    parse_when,
    resolve_tz,
    window_from_args,
)

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc
NOW = datetime(2026, 12, 2, 16, 30, tzinfo=BERLIN)  # Wednesday 16:30 CET (UTC+1)


def b(y, mo, d, h=0, mi=0, s=0):
    """A Berlin wall-clock time."""
    return datetime(y, mo, d, h, mi, s, tzinfo=BERLIN)


def w(start, end):
    return TimeWindow(start, end)


# (question, expected window (None: no time), phrase, text without the phrase)
WINDOWS = [
    ("what happened yesterday?", w(b(2026, 12, 1), b(2026, 12, 2)), "yesterday", "what happened?"),
    ("what did the cat do yesterday afternoon?", w(b(2026, 12, 1, 12), b(2026, 12, 1, 18)), "yesterday afternoon",
     "what did the cat do?"),
    ("where was the van yesterday morning", w(b(2026, 12, 1, 6), b(2026, 12, 1, 12)), "yesterday morning",
     "where was the van"),
    ("who came yesterday evening?", w(b(2026, 12, 1, 18), b(2026, 12, 2)), "yesterday evening", "who came?"),
    ("what did the dog do last night?", w(b(2026, 12, 1, 18), b(2026, 12, 2, 6)), "last night",
     "what did the dog do?"),
    ("what happened today", w(b(2026, 12, 2), b(2026, 12, 3)), "today", "what happened"),
    ("where were my keys this morning?", w(b(2026, 12, 2, 6), b(2026, 12, 2, 12)), "this morning",
     "where were my keys?"),
    ("did anyone ring this afternoon", w(b(2026, 12, 2, 12), b(2026, 12, 2, 18)), "this afternoon",
     "did anyone ring"),
    ("is the light on this evening", w(b(2026, 12, 2, 18), b(2026, 12, 3)), "this evening", "is the light on"),
    ("who is here tonight", w(b(2026, 12, 2, 18), b(2026, 12, 3, 6)), "tonight", "who is here"),
    # clock times: +-30 min around the most recent occurrence
    ("what happened at 3 pm?", w(b(2026, 12, 2, 14, 30), b(2026, 12, 2, 15, 30)), "at 3 pm", "what happened?"),
    ("what happened around 3pm?", w(b(2026, 12, 2, 14, 30), b(2026, 12, 2, 15, 30)), "around 3pm",
     "what happened?"),
    ("who was at the door at 15:00", w(b(2026, 12, 2, 14, 30), b(2026, 12, 2, 15, 30)), "at 15:00",
     "who was at the door"),
    ("what was on the table at about 9:15 a.m.", w(b(2026, 12, 2, 8, 45), b(2026, 12, 2, 9, 45)),
     "at about 9:15 a.m.", "what was on the table"),
    ("what happened between 2 and 4 pm?", w(b(2026, 12, 2, 14), b(2026, 12, 2, 16)), "between 2 and 4 pm",
     "what happened?"),
    ("what happened between 11 and 1 pm", w(b(2026, 12, 2, 11), b(2026, 12, 2, 13)), "between 11 and 1 pm",
     "what happened"),
    ("who was there from 9 am until noon", w(b(2026, 12, 2, 9), b(2026, 12, 2, 12)), "from 9 am until noon",
     "who was there"),
    ("what happened between 10 pm and 2 am", w(b(2026, 12, 1, 22), b(2026, 12, 2, 2)), "between 10 pm and 2 am",
     "what happened"),
    ("who came after 3 pm", w(b(2026, 12, 2, 15), None), "after 3 pm", "who came"),
    ("who left before noon", w(b(2026, 12, 2), b(2026, 12, 2, 12)), "before noon", "who left"),
    ("what moved since 9am", w(b(2026, 12, 2, 9), None), "since 9am", "what moved"),
    ("who left until 1 pm", w(b(2026, 12, 2), b(2026, 12, 2, 13)), "until 1 pm", "who left"),
    ("what happened at night", w(b(2026, 12, 1, 18), b(2026, 12, 2, 6)), "at night", "what happened"),
    ("who rang at noon", w(b(2026, 12, 2, 11, 30), b(2026, 12, 2, 12, 30)), "at noon", "who rang"),
    ("who rang 3 pm", w(b(2026, 12, 2, 14, 30), b(2026, 12, 2, 15, 30)), "3 pm", "who rang"),
    ("who came from 3 pm", w(b(2026, 12, 2, 15), None), "from 3 pm", "who came"),
    # rolling windows: elapsed time before now, open up to now
    ("what happened the past hour", w(NOW - timedelta(hours=1), None), "the past hour", "what happened"),
    ("who came in the last week", w(NOW - timedelta(weeks=1), None), "in the last week", "who came"),
    ("what happened in the last 10 minutes", w(NOW - timedelta(minutes=10), None), "in the last 10 minutes",
     "what happened"),
    ("anything in the past 2 hours?", w(NOW - timedelta(hours=2), None), "in the past 2 hours", "anything?"),
    ("what did the arm do the last hour", w(NOW - timedelta(hours=1), None), "the last hour",
     "what did the arm do"),
    ("summarise last hour", w(NOW - timedelta(hours=1), None), "last hour", "summarise"),
    ("what happened in the last half hour", w(NOW - timedelta(minutes=30), None), "in the last half hour",
     "what happened"),
    ("any cars within the last three days", w(NOW - timedelta(days=3), None), "within the last three days",
     "any cars"),
    ("who came in the past week", w(NOW - timedelta(weeks=1), None), "in the past week", "who came"),
    ("what happened in the last 90 seconds", w(NOW - timedelta(seconds=90), None), "in the last 90 seconds",
     "what happened"),
    # days, weeks, months
    ("what happened on Monday?", w(b(2026, 11, 30), b(2026, 12, 1)), "on Monday", "what happened?"),
    ("what happened last Thursday", w(b(2026, 11, 26), b(2026, 11, 27)), "last Thursday", "what happened"),
    ("who visited on Wednesday", w(b(2026, 11, 25), b(2026, 11, 26)), "on Wednesday", "who visited"),  # not today
    ("what happened monday morning", w(b(2026, 11, 30, 6), b(2026, 11, 30, 12)), "monday morning",
     "what happened"),
    ("what did the robot do last week", w(b(2026, 11, 23), b(2026, 11, 30)), "last week", "what did the robot do"),
    ("what did the robot do this week", w(b(2026, 11, 30), b(2026, 12, 7)), "this week", "what did the robot do"),
    ("how was this month", w(b(2026, 12, 1), b(2027, 1, 1)), "this month", "how was"),
    ("how was last month", w(b(2026, 11, 1), b(2026, 12, 1)), "last month", "how was"),
    ("how was this year", w(b(2026, 1, 1), b(2027, 1, 1)), "this year", "how was"),
    ("how was last year", w(b(2025, 1, 1), b(2026, 1, 1)), "last year", "how was"),
    ("what happened until yesterday", w(None, b(2026, 12, 2)), "until yesterday", "what happened"),
    ("what happened on 2026-11-30", w(b(2026, 11, 30), b(2026, 12, 1)), "on 2026-11-30", "what happened"),
    ("what happened on November 30?", w(b(2026, 11, 30), b(2026, 12, 1)), "on November 30", "what happened?"),
    ("what happened on 30 November?", w(b(2026, 11, 30), b(2026, 12, 1)), "on 30 November", "what happened?"),
    ("what happened on the 3rd of Dec", w(b(2025, 12, 3), b(2025, 12, 4)), "on the 3rd of Dec", "what happened"),
    ("what happened on Nov. 30th, 2025", w(b(2025, 11, 30), b(2025, 12, 1)), "on Nov. 30th, 2025",
     "what happened"),
    ("what happened on may 3", w(b(2026, 5, 3), b(2026, 5, 4)), "on may 3", "what happened"),
    ("what happened the day before yesterday", w(b(2026, 11, 30), b(2026, 12, 1)), "the day before yesterday",
     "what happened"),
    ("who came since Monday", w(b(2026, 11, 30), None), "since Monday", "who came"),
    ("what happened before yesterday", w(None, b(2026, 12, 1)), "before yesterday", "what happened"),
    ("what happened after yesterday", w(b(2026, 12, 2), None), "after yesterday", "what happened"),
    # two days joined: from the earlier start to the later end
    ("what happened between Monday and yesterday?", w(b(2026, 11, 30), b(2026, 12, 2)),
     "between Monday and yesterday", "what happened?"),
    ("from Nov 3 to Nov 5, who came", w(b(2026, 11, 3), b(2026, 11, 6)), "from Nov 3 to Nov 5", "who came"),
    ("who came on Monday and Tuesday", w(b(2026, 11, 30), b(2026, 12, 2)), "on Monday and Tuesday", "who came"),
    ("from monday morning to tuesday evening?", w(b(2026, 11, 30, 6), b(2026, 12, 2)),
     "from monday morning to tuesday evening", "?"),
    ("what happened on Monday and how was Tuesday", w(b(2026, 11, 30), b(2026, 12, 1)), "on Monday",
     "what happened and how was Tuesday"),  # not joined: the first one counts
    # "ago"
    ("what happened 2 hours ago", w(b(2026, 12, 2, 14), b(2026, 12, 2, 15)), "2 hours ago", "what happened"),
    ("what did I say an hour ago", w(b(2026, 12, 2, 15), b(2026, 12, 2, 16)), "an hour ago", "what did I say"),
    ("what fell 10 minutes ago", w(b(2026, 12, 2, 16, 15), b(2026, 12, 2, 16, 25)), "10 minutes ago", "what fell"),
    ("what happened 2 days ago", w(b(2026, 11, 30), b(2026, 12, 1)), "2 days ago", "what happened"),
    ("what happened 2 weeks ago", w(b(2026, 11, 16), b(2026, 11, 23)), "2 weeks ago", "what happened"),
    # a day and a time of day combine
    ("what happened between 2 and 4 pm yesterday", w(b(2026, 12, 1, 14), b(2026, 12, 1, 16)),
     "between 2 and 4 pm yesterday", "what happened"),
    ("what happened yesterday at 3 pm", w(b(2026, 12, 1, 14, 30), b(2026, 12, 1, 15, 30)), "yesterday at 3 pm",
     "what happened"),
    ("who rang at 3 pm on Monday", w(b(2026, 11, 30, 14, 30), b(2026, 11, 30, 15, 30)), "at 3 pm on Monday",
     "who rang"),
    ("who came yesterday after 3 pm", w(b(2026, 12, 1, 15), b(2026, 12, 2)), "yesterday after 3 pm", "who came"),
    ("what happened last night at 2 am", w(b(2026, 12, 2, 1, 30), b(2026, 12, 2, 2, 30)), "last night at 2 am",
     "what happened"),
    ("what happened yesterday in the afternoon", w(b(2026, 12, 1, 12), b(2026, 12, 1, 18)),
     "yesterday in the afternoon", "what happened"),
    ("on Monday, who took the box at noon", w(b(2026, 11, 30, 11, 30), b(2026, 11, 30, 12, 30)),
     "on Monday at noon", "who took the box"),
    # no time at all, including words that look like one
    ("where did I leave the keys?", None, None, "where did I leave the keys?"),
    ("who was the last person to leave?", None, None, "who was the last person to leave?"),
    ("where is the first aid kit", None, None, "where is the first aid kit"),
    ("may I ask where the keys are", None, None, "may I ask where the keys are"),
    ("May 3 people enter the room?", None, None, "May 3 people enter the room?"),
    ("did they march 3 times around the yard", None, None, "did they march 3 times around the yard"),
    ("which is the second door on the left", None, None, "which is the second door on the left"),
    ("were there 3 people at the table", None, None, "were there 3 people at the table"),
    ("were there between 2 and 4 people", None, None, "were there between 2 and 4 people"),
    ("I am at 3 stations", None, None, "I am at 3 stations"),
    ("what was the score, 3:2?", None, None, "what was the score, 3:2?"),
    ("he changed his mind at the last minute", None, None, "he changed his mind at the last minute"),
    ("what did the last 3 visitors carry", None, None, "what did the last 3 visitors carry"),
    ("who was on the last day of the trip", None, None, "who was on the last day of the trip"),
    ("is the first hour free", None, None, "is the first hour free"),
    ("what happens next Monday", None, None, "what happens next Monday"),
    ("who comes tomorrow", None, None, "who comes tomorrow"),
    ("what is planned for the coming Friday", None, None, "what is planned for the coming Friday"),
]


@pytest.mark.parametrize("question,window,phrase,text", WINDOWS, ids=[c[0] for c in WINDOWS])
def test_question_window(question, window, phrase, text):
    q = parse_question(question, NOW, BERLIN)
    assert (q.window, q.phrase, q.text) == (window, phrase, text)


def test_clock_time_is_the_most_recent_occurrence():
    """At 14:00, 3 pm today has not begun (its window starts 14:30): "at 3 pm" is yesterday's; so is "after 3 pm"
    (open up to now) and "between 3 and 5 pm". "before noon" is always today's."""
    now = b(2026, 12, 2, 14)
    assert parse_question("at 3 pm", now, BERLIN).window == w(b(2026, 12, 1, 14, 30), b(2026, 12, 1, 15, 30))
    assert parse_question("at 3 pm", now + timedelta(minutes=30), BERLIN).window == w(b(2026, 12, 2, 14, 30),
                                                                                     b(2026, 12, 2, 15, 30))
    assert parse_question("after 3 pm", now, BERLIN).window == w(b(2026, 12, 1, 15), None)
    assert parse_question("between 3 and 5 pm", now, BERLIN).window == w(b(2026, 12, 1, 15), b(2026, 12, 1, 17))
    assert parse_question("before noon", b(2026, 12, 2, 8), BERLIN).window == w(b(2026, 12, 2), b(2026, 12, 2, 12))
    assert parse_question("in the morning", b(2026, 12, 2, 5), BERLIN).window == w(b(2026, 12, 1, 6),
                                                                                  b(2026, 12, 1, 12))
    assert CLOCK_HALF_WIDTH == timedelta(minutes=30) and PARTS_OF_DAY["afternoon"] == (12, 18)


def test_weekday_named_on_that_weekday_is_the_one_before():
    monday = b(2026, 11, 30, 10)
    assert parse_question("on Monday", monday, BERLIN).window == w(b(2026, 11, 23), b(2026, 11, 24))
    assert parse_question("on Sunday", monday, BERLIN).window == w(b(2026, 11, 29), b(2026, 11, 30))


def test_month_date_without_a_year_is_the_most_recent_one():
    assert parse_question("on December 5", NOW, BERLIN).window == w(b(2025, 12, 5), b(2025, 12, 6))
    assert parse_question("on 2 December", NOW, BERLIN).window == w(b(2026, 12, 2), b(2026, 12, 3))


INTENTS = [
    ("when did the door open?", "when"),
    ("When did the delivery happen", "when"),
    ("at what time did the bus come", "when"),
    ("when did the door last open?", "last"),
    ("when was the last time the door opened", "last"),
    ("when did I see my keys most recently", "last"),
    ("where was the cat most recently", "last"),
    ("the last time the light was on?", "last"),
    ("when did the door first open", "first"),
    ("when was the first time the dog barked", "first"),
    ("what was the earliest delivery", "first"),
    ("how many times did the door open today?", "count"),
    ("how often did the cat eat last week", "count"),
    ("what happened between 2 and 4 pm?", "summary"),
    ("what happened in the last hour", "summary"),
    ("summarise the last hour", "summary"),
    ("Summarize yesterday", "summary"),
    ("give me a recap of this morning", "summary"),
    # no intent, or only the plain one, for lookalikes
    ("when did the last person leave", "when"),
    ("when did the first car arrive", "when"),
    ("when did he get first aid", "when"),
    ("what did the dog do last night", None),  # "last" belongs to the time phrase
    ("who was the last person to leave", None),
    ("where is the first aid kit", None),
    ("what happened to the keys", None),  # "what happened" summarises only a window
    ("how many people came yesterday", None),
]


@pytest.mark.parametrize("question,intent", INTENTS, ids=[c[0] for c in INTENTS])
def test_intent(question, intent):
    assert parse_question(question, NOW, BERLIN).intent == intent


def test_time_query_fields():
    q = parse_question("When did the door last open yesterday afternoon?", NOW, "Europe/Berlin")
    assert q == TimeQuery(w(b(2026, 12, 1, 12), b(2026, 12, 1, 18)), "yesterday afternoon", "last",
                          "When did the door last open?")


def test_the_zone_decides_the_window():
    """The same question at the same instant: local days differ between Berlin and UTC (and Tokyo)."""
    now = datetime(2026, 12, 2, 23, 30, tzinfo=UTC)  # already Dec 3 in Berlin (00:30) and in Tokyo (08:30)
    assert parse_question("today", now, BERLIN).window == w(b(2026, 12, 3), b(2026, 12, 4))
    assert parse_question("today", now, "UTC").window == w(datetime(2026, 12, 2, tzinfo=UTC),
                                                          datetime(2026, 12, 3, tzinfo=UTC))
    tokyo = ZoneInfo("Asia/Tokyo")
    assert parse_question("yesterday", now, tokyo).window.start == datetime(2026, 12, 2, tzinfo=tokyo)
    # the window is stored in UTC whatever the zone
    assert parse_question("today", now, BERLIN).window.start == datetime(2026, 12, 2, 23, tzinfo=UTC)
    # a naive now is read in the given zone
    assert parse_question("today", datetime(2026, 12, 2, 0, 30), BERLIN).window == w(b(2026, 12, 2), b(2026, 12, 3))


def test_dst_spring_forward_day():
    """2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; the day has 23 hours."""
    now = b(2026, 3, 29, 3, 30)  # CEST, 01:30 UTC
    today = parse_question("what happened today", now, BERLIN).window
    assert today == w(datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 3, 29, 22, tzinfo=UTC))
    assert today.end - today.start == timedelta(hours=23)
    # elapsed time is subtracted in UTC: 2 hours before 01:30 UTC is 23:30 UTC (00:30 CET), not 01:30 CET
    assert parse_question("in the last 2 hours", now, BERLIN).window == w(datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
                                                                         None)
    assert parse_when("-2h", now, BERLIN) == datetime(2026, 3, 28, 23, 30, tzinfo=UTC)
    # a part of the day across the change: morning 06:00-12:00 CEST
    assert parse_question("this morning", b(2026, 3, 29, 13), BERLIN).window == w(
        datetime(2026, 3, 29, 4, tzinfo=UTC), datetime(2026, 3, 29, 10, tzinfo=UTC))
    # last night: Saturday 18:00 CET to Sunday 06:00 CEST, 11 hours
    night = parse_question("last night", b(2026, 3, 29, 9), BERLIN).window
    assert night == w(datetime(2026, 3, 28, 17, tzinfo=UTC), datetime(2026, 3, 29, 4, tzinfo=UTC))
    # 02:30 does not exist that day: read with the offset before the change (CET), 01:30 UTC
    assert parse_question("at 2:30 am", b(2026, 3, 29, 12), BERLIN).window == w(
        datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 3, 29, 2, tzinfo=UTC))


def test_dst_fall_back_day():
    """2026-10-25 in Berlin: 03:00 CEST falls back to 02:00 CET; the day has 25 hours."""
    y = parse_question("yesterday", b(2026, 10, 26, 9), BERLIN).window
    assert y == w(datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 23, tzinfo=UTC))
    assert y.end - y.start == timedelta(hours=25)
    assert parse_question("yesterday afternoon", b(2026, 10, 26, 9), BERLIN).window == w(
        datetime(2026, 10, 25, 11, tzinfo=UTC), datetime(2026, 10, 25, 17, tzinfo=UTC))
    now = b(2026, 10, 25, 3, 30)  # CET after the change, 02:30 UTC
    assert parse_question("in the past 3 hours", now, BERLIN).window.start == datetime(2026, 10, 24, 23, 30,
                                                                                       tzinfo=UTC)
    assert parse_question("this week", now, BERLIN).window == w(b(2026, 10, 19), b(2026, 10, 26))
    assert window_from_args("2026-10-25", "2026-10-25", now, BERLIN) == y


@settings(max_examples=60, deadline=None)
@given(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31)),
       st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kolkata"]))
def test_days_tile_and_contain_now(naive_now, zone):
    """Whatever the instant and the zone (DST of 1 h, 30 min, none): "today" contains now, "yesterday" ends where
    "today" starts, a day lasts 23-25 h, and a rolling window ends open at now's start minus its length."""
    tz = ZoneInfo(zone)
    now = naive_now.replace(tzinfo=tz)
    today = parse_question("today", now, tz).window
    yesterday = parse_question("yesterday", now, tz).window
    assert today.start <= now.astimezone(UTC) < today.end
    assert yesterday.end == today.start
    assert timedelta(hours=23) <= today.end - today.start <= timedelta(hours=25)
    assert parse_question("in the last 10 minutes", now, tz).window == w(now.astimezone(UTC) - timedelta(minutes=10),
                                                                         None)
    week = parse_question("this week", now, tz).window
    assert week.start <= now.astimezone(UTC) < week.end and week.start.astimezone(tz).weekday() == 0


# --from / --to and the API's from/to
WHEN = [
    ("now", NOW),
    ("today", b(2026, 12, 2)),
    ("yesterday", b(2026, 12, 1)),
    ("-2h", NOW - timedelta(hours=2)),
    ("-30m", NOW - timedelta(minutes=30)),
    ("-1d", NOW - timedelta(days=1)),
    ("-90s", NOW - timedelta(seconds=90)),
    ("-1.5h", NOW - timedelta(minutes=90)),
    ("- 2 hours", NOW - timedelta(hours=2)),
    ("-1w", NOW - timedelta(weeks=1)),
    ("2026-12-01", b(2026, 12, 1)),
    ("2026-12-01T15:00", b(2026, 12, 1, 15)),  # naive: device local time
    ("2026-12-01 15:00:30", b(2026, 12, 1, 15, 0, 30)),
    ("2026-12-01T14:00Z", datetime(2026, 12, 1, 14, tzinfo=UTC)),
    ("2026-12-01T15:00+01:00", datetime(2026, 12, 1, 14, tzinfo=UTC)),
    ("2026-12-01T09:00-05:00", datetime(2026, 12, 1, 14, tzinfo=UTC)),
    ("3 days ago", NOW - timedelta(days=3)),  # dateparser
    ("last friday 5pm", b(2026, 11, 27, 17)),
    ("1 December 2026 15:00", b(2026, 12, 1, 15)),
]


@pytest.mark.parametrize("value,expected", WHEN, ids=[c[0] for c in WHEN])
def test_parse_when(value, expected):
    got = parse_when(value, NOW, BERLIN)
    assert got == expected and got.tzinfo == UTC


@pytest.mark.parametrize("value", ["banana", "", "   ", "2026-02-30", "2026-13-01T10:00", "-2x", "-h"])
def test_parse_when_refuses_with_the_accepted_forms(value):
    with pytest.raises(UserError) as e:
        parse_when(value, NOW, BERLIN)
    msg = str(e.value)
    assert repr(value) in msg and "ISO 8601" in msg and "-2h" in msg and "yesterday" in msg


def test_window_from_args():
    assert window_from_args(None, None, NOW, BERLIN) is None
    assert window_from_args("", None, NOW, BERLIN) is None
    assert window_from_args("-2h", None, NOW, BERLIN) == w(NOW - timedelta(hours=2), None)
    assert window_from_args(None, "2026-12-01T12:00", NOW, BERLIN) == w(None, b(2026, 12, 1, 12))
    # a `to` naming a whole day includes it
    assert window_from_args("2026-11-30", "2026-12-01", NOW, BERLIN) == w(b(2026, 11, 30), b(2026, 12, 2))
    assert window_from_args("yesterday", "yesterday", NOW, BERLIN) == w(b(2026, 12, 1), b(2026, 12, 2))
    assert window_from_args("-1d", "now", NOW, "UTC") == w(NOW - timedelta(days=1), NOW)
    assert window_from_args("2026-12-01T10:00", "2026-12-01T10:00", NOW, BERLIN) == w(b(2026, 12, 1, 10),
                                                                                     b(2026, 12, 1, 10))


def test_window_from_args_refuses_from_after_to():
    with pytest.raises(UserError) as e:
        window_from_args("today", "-1d", NOW, BERLIN)
    assert "--from 'today'" in str(e.value) and "--to '-1d'" in str(e.value) and "swap" in str(e.value)
    with pytest.raises(UserError) as e:
        window_from_args("-1h", "-2h", NOW, BERLIN, names=("from", "to"))
    assert str(e.value).startswith("from '-1h'")
    with pytest.raises(UserError, match="'soon'"):
        window_from_args("soon", None, NOW, BERLIN)


def test_time_window():
    win = w(b(2026, 12, 1, 12), b(2026, 12, 1, 18))
    assert win.start.tzinfo == UTC and win.start == datetime(2026, 12, 1, 11, tzinfo=UTC)
    assert win.as_unix() == (1796122800.0, 1796122800.0 + 6 * 3600)
    assert w(None, None).as_unix() == (None, None)
    with pytest.raises(ValueError, match="aware"):
        TimeWindow(datetime(2026, 12, 1), None)
    with pytest.raises(AttributeError):
        win.start = None  # frozen


DESCRIBE = [
    (w(b(2026, 12, 1, 12), b(2026, 12, 1, 18)), True, "yesterday, Tue 2026-12-01 12:00-18:00 (Europe/Berlin)"),
    (w(b(2026, 12, 1, 12), b(2026, 12, 1, 18)), False, "Tue 2026-12-01 12:00-18:00 (Europe/Berlin)"),
    (w(b(2026, 12, 2), b(2026, 12, 3)), True, "today, Wed 2026-12-02 00:00-24:00 (Europe/Berlin)"),
    (w(b(2026, 12, 1, 18), b(2026, 12, 2, 6)), True,
     "yesterday, Tue 2026-12-01 18:00 to today, Wed 2026-12-02 06:00 (Europe/Berlin)"),
    (w(b(2026, 11, 23), b(2026, 11, 30)), True, "Mon 2026-11-23 00:00 to Mon 2026-11-30 00:00 (Europe/Berlin)"),
    (w(NOW - timedelta(minutes=10), None), True, "since today, Wed 2026-12-02 16:20 (Europe/Berlin)"),
    (w(None, b(2026, 12, 1)), False, "until Tue 2026-12-01 00:00 (Europe/Berlin)"),
    (w(None, None), True, "any time"),
]


@pytest.mark.parametrize("win,with_now,text", DESCRIBE, ids=[c[2] for c in DESCRIBE])
def test_describe(win, with_now, text):
    assert win.describe(BERLIN, NOW if with_now else None) == text


def test_describe_in_another_zone():
    win = w(b(2026, 12, 1, 12), b(2026, 12, 1, 18))
    assert win.describe("UTC") == "Tue 2026-12-01 11:00-17:00 (UTC)"
    assert win.describe(ZoneInfo("America/New_York")) == "Tue 2026-12-01 06:00-12:00 (America/New_York)"


def test_zones():
    assert resolve_tz("Europe/Berlin") == BERLIN
    with pytest.raises(UserError, match="Mars/Olympus"):
        resolve_tz("Mars/Olympus")
    assert resolve_tz(None).utcoffset(datetime(2026, 1, 1)) is not None  # the device's zone
    assert parse_question("today", NOW, None).window is not None


def test_phrase_is_taken_from_the_question_and_removed_from_the_text():
    for question, window, phrase, text in WINDOWS:
        if phrase is None:
            continue
        for piece in phrase.split(" "):
            assert piece in question
        assert phrase not in text


_TOKENS = ["when", "did", "the", "door", "last", "first", "time", "open", "at", "on", "between", "and", "from", "to",
           "since", "after", "before", "until", "in", "past", "3", "13", "0", "12", "2:30", "25:00", "3:2", "pm",
           "a.m.", "noon", "midnight", "yesterday", "today", "tonight", "night", "morning", "Monday", "May", "march",
           "30", "31st", "of", "February", "Nov.", "2026-02-30", "2026-11-30", "hours", "minutes", "ago", "an",
           "half", "week", "month", "this", "how", "many", "times", "what", "happened", "summarise", ",", "?"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=9))
def test_any_question_parses_to_a_consistent_result(tokens):
    """Arbitrary word salad never raises; a window is ordered, its phrase's words come from the question, and the
    text is the question without them."""
    question = " ".join(tokens)
    q = parse_question(question, NOW, BERLIN)
    assert q.intent in (None, "when", "first", "last", "count", "summary")
    if q.window is None:
        assert q.phrase is None
    else:
        assert q.window.start is None or q.window.end is None or q.window.start <= q.window.end
        assert all(piece in question for piece in q.phrase.split(" "))
        assert len(q.text) < len(question)


@pytest.mark.parametrize("text, want", [
    ("2026-12-01T14:00Z", datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)),
    ("2026-12-01T14:00:00z", datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)),
    ("2026-12-01T10:00:00.5Z", datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=timezone.utc)),
    ("2026-12-01 10:00:00,25+01:00", datetime(2026, 12, 1, 10, 0, 0, 250000, tzinfo=timezone(timedelta(hours=1)))),
    ("2026-12-01T10:00", datetime(2026, 12, 1, 10, 0)),
])
def test_parse_iso_reads_what_python_3_11_reads_on_3_10_too(text, want):
    """JetPack 6's Python is 3.10, whose fromisoformat reads no Z and only 3- or 6-digit fractions."""
    from rlivs.runtime.timeq import parse_iso

    assert parse_iso(text) == want
    with pytest.raises(ValueError):
        parse_iso("2026-12-01T25:00Z")
