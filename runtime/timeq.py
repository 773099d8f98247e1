"""Time in questions and in --from/--to: local wall-clock expressions -> UTC windows, and the question's intent.

Pure and torch-free: the CLI (`rlivs ask --from/--to`), the REST API (`/v1/ask` `from`/`to`) and `answer()` call it;
nothing here knows about memory or models.

    parse_when("-2h" | "2026-12-01T15:00" | "yesterday" | "3 days ago", now, tz) -> datetime (UTC)
    window_from_args(from_, to, now, tz) -> TimeWindow | None
    parse_question("what happened yesterday afternoon?", now, tz)
        -> TimeQuery(window=TimeWindow(2026-12-01 11:00Z, 17:00Z), phrase="yesterday afternoon", intent="summary",
                     text="what happened?")

Every window is computed in the device's local wall-clock time `tz` (a day is local midnight to local midnight,
23 or 25 hours on a DST change day), then stored in UTC. Durations ("in the last 2 hours", "-2h", "2 hours ago")
are elapsed time, subtracted in UTC, so they stay exact across a DST change. An end of None means "up to now"
(nothing later is stored); a start of None means "from the beginning". docs/edge_app.md ("Time in questions")
lists every expression and the window it gives.

Which library reads what (measured by `python bench/timeq_libraries.py`, figures in docs/edge_app.md): no library
returns windows ("yesterday afternoon" is one instant in all three), and all of them turn "may I ..." into a date,
so finding the phrase, parts of the day, ranges, rolling windows and intent are this module's small grammar below.
dateparser (maintained, monthly releases) reads what its calendar knowledge is for: month-name dates with or
without a year ("on November 30", "30th of Nov 2025": the most recent past date when the year is missing), weekday
names ("on Monday": the most recent Monday before today), and, in parse_when, anything else it understands
("3 days ago", "last friday 5pm", "1 December 2026 15:00"). Clock times are read here (h[:mm] am/pm, 24-hour hh:mm,
noon, midnight) because ranges need the meridiem of one end inferred from the other ("between 2 and 4 pm").
parsedatetime (last release 2020) puts weekdays and month dates in the future and reads "may" as a date; ctparse
(last release 2022) reads "the last person", "first aid" and "3 people" as times.

Every input is bounded: any string gives a result or a UserError (never OverflowError or another exception), in
milliseconds. Times are read from MIN_YEAR to MAX_YEAR (1970-2999: the year as written, a local date in the device's
zone); a relative time or a duration that leaves that range ("-99999999d", "in the last 9999999999 hours"), a date
outside it ("9999-12-31", "0001-01-01T00:00+14:00") and a --from/--to value longer than MAX_WHEN_CHARS are refused
with the reason; in a question such a phrase is not applied and TimeQuery.ignored says why (answer() passes it on as
a note). A question is at most MAX_QUESTION_CHARS long.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rlivs.runtime.errors import UserError

UTC = timezone.utc
INTENTS = ("when", "first", "last", "count", "summary")
# Parts of the day, as [start hour, end hour) from the day's local midnight; the night runs into the next morning.
PARTS_OF_DAY = {"morning": (6, 12), "afternoon": (12, 18), "evening": (18, 24), "night": (18, 30)}
CLOCK_HALF_WIDTH = timedelta(minutes=30)  # "at 3 pm" / "around 15:00": 14:30-15:30
# "N <unit>s ago": the window around the instant; days and weeks give that calendar day / ISO week (Monday first).
AGO_HALF_WIDTH = {"second": timedelta(minutes=5), "minute": timedelta(minutes=5), "hour": timedelta(minutes=30)}
# The range times are read in (the year as written; a local date in the device's zone). Every instant rlivs computes
# lies between EARLIEST and LATEST, which hold every local time of those years at any UTC offset.
MIN_YEAR, MAX_YEAR = 1970, 2999
EARLIEST = datetime(MIN_YEAR, 1, 1, tzinfo=UTC) - timedelta(days=1)
LATEST = datetime(MAX_YEAR + 1, 1, 1, tzinfo=UTC) + timedelta(days=1)
MAX_WHEN_CHARS = 64  # a --from/--to/--before value (the HTTP API's from/to have the same bound)
MAX_QUESTION_CHARS = 2000  # a question (the CLI and the HTTP API refuse longer ones)
RANGE = f"rlivs reads times from {MIN_YEAR} to {MAX_YEAR}"
WHEN_FORMS = ("ISO 8601 (2026-12-01, 2026-12-01T15:00, 2026-12-01T14:00Z, 2026-12-01T15:00+01:00; without an "
              "offset: device local time), a relative time (-90s, -30m, -2h, -1d, -1w), now, today, yesterday, "
              "or a phrase like '3 days ago' or 'last friday 5pm'")


def resolve_tz(tz: tzinfo | str | None) -> tzinfo:
    """A tzinfo from an IANA name ("Europe/Berlin"), a tzinfo, or None (the device's zone)."""
    if tz is None:
        return device_tz()
    if isinstance(tz, str):
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise UserError(f"unknown time zone {tz!r}: give an IANA name like 'Europe/Berlin' or 'UTC'") from None
    return tz


def device_tz() -> tzinfo:
    """The device's time zone (TZ, /etc/timezone, /etc/localtime), as a zone with its DST rules."""
    import tzlocal

    return tzlocal.get_localzone()


def _aware(now: datetime, tz: tzinfo) -> datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=tz)


def _at(d: date, hours: float, tz: tzinfo) -> datetime:
    """Local wall-clock time `hours` after the local midnight that starts day `d` (hours may pass 24), in UTC."""
    days, minutes = divmod(round(hours * 60), 24 * 60)
    local = datetime.combine(d + timedelta(days=days), time(minutes // 60, minutes % 60), tzinfo=tz)
    return local.astimezone(UTC)  # a wall time skipped by DST is read with the offset before the change (fold=0)


def _tz_label(tz: tzinfo, at: datetime) -> str:
    return getattr(tz, "key", None) or at.astimezone(tz).tzname() or "local"


@dataclass(frozen=True)
class TimeWindow:
    """[start, end) in UTC; None is open on that side (end None: up to now)."""

    start: datetime | None
    end: datetime | None

    def __post_init__(self):
        for name in ("start", "end"):
            v = getattr(self, name)
            if v is not None:
                if v.tzinfo is None:
                    raise ValueError(f"TimeWindow.{name} must be time-zone aware, got {v!r}")
                object.__setattr__(self, name, v.astimezone(UTC))

    def as_unix(self) -> tuple[float | None, float | None]:
        """(start, end) as UTC unix seconds, None where open: what Memory.search's wall_from/wall_to take."""
        return (None if self.start is None else self.start.timestamp(),
                None if self.end is None else self.end.timestamp())

    def describe(self, tz: tzinfo | str | None = None, now: datetime | None = None) -> str:
        """The window in local time, e.g. "yesterday, Tue 2026-12-01 12:00-18:00 (Europe/Berlin)".

        With `now`, days are also named "today"/"yesterday". An end at the next local midnight reads "24:00".
        """
        tz = resolve_tz(tz)
        today = _aware(now, tz).astimezone(tz).date() if now is not None else None

        def day(dt: datetime) -> str:
            d = dt.date()
            rel = {today: "today, ", today - timedelta(days=1): "yesterday, "}.get(d, "") if today else ""
            return f"{rel}{d:%a %Y-%m-%d}"

        s = self.start.astimezone(tz) if self.start is not None else None
        e = self.end.astimezone(tz) if self.end is not None else None
        label = f" ({_tz_label(tz, self.start or self.end or datetime.now(UTC))})"
        if s is None and e is None:
            return "any time"
        if e is None:
            return f"since {day(s)} {s:%H:%M}{label}"
        if s is None:
            return f"until {day(e)} {e:%H:%M}{label}"
        if e.date() == s.date():
            return f"{day(s)} {s:%H:%M}-{e:%H:%M}{label}"
        if e.date() == s.date() + timedelta(days=1) and e.time() == time(0, 0):
            return f"{day(s)} {s:%H:%M}-24:00{label}"
        return f"{day(s)} {s:%H:%M} to {day(e)} {e:%H:%M}{label}"


@dataclass(frozen=True)
class TimeQuery:
    """What parse_question found: the window (None: no time in the question), the phrase it came from, the intent,
    and the question without the phrase (for retrieval). `ignored` says why a time phrase was not applied (a date
    outside MIN_YEAR..MAX_YEAR, an absurd duration); the window is then None and the text the whole question."""

    window: TimeWindow | None
    phrase: str | None
    intent: str | None  # one of INTENTS, or None
    text: str
    ignored: str | None = None


class _OutOfRange(UserError):
    """A time outside MIN_YEAR..MAX_YEAR, or a duration that leads there (the message says which)."""


def _check_year(year: int) -> None:
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise _OutOfRange(f"the year {year}")


def _check_instant(t: datetime) -> datetime:
    """`t` (aware) if it lies between EARLIEST and LATEST, else _OutOfRange."""
    if not EARLIEST <= t <= LATEST:
        raise _OutOfRange(f"it falls in the year {t.year}")
    return t


def _local(dt: datetime, tz: tzinfo) -> datetime:
    """A parsed date-time (naive: local time in `tz`; aware: its own offset) in UTC; _OutOfRange for a year outside
    MIN_YEAR..MAX_YEAR (checked as written, before any arithmetic that could overflow)."""
    _check_year(dt.year)
    return _check_instant(_aware(dt, tz).astimezone(UTC))


def _shift(now: datetime, amount: float, unit: timedelta) -> datetime:
    """now + amount * unit (elapsed time, in UTC); _OutOfRange when that leaves the range (or amount is absurd)."""
    seconds = amount * unit.total_seconds()
    if not math.isfinite(seconds) or abs(seconds) > (LATEST - EARLIEST).total_seconds():
        raise _OutOfRange(f"more than {MAX_YEAR - MIN_YEAR + 1} years from now")
    return _check_instant(now.astimezone(UTC) + timedelta(seconds=seconds))


# ---------------------------------------------------------------------------------------------------------------
# parse_when: --from/--to and the API's from/to

_UNIT_SECONDS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60,
                 "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
                 "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}
_RELATIVE = re.compile(r"([+-])\s*(\d+(?:\.\d+)?)\s*([a-z]+)", re.I)



def parse_iso(text: str) -> datetime:
    """datetime.fromisoformat as Python 3.11 reads ISO 8601, on 3.10 too (JetPack 6's Python): a trailing Z for UTC,
    and fractions of 1-6 digits (3.10 reads only "+00:00" and 3 or 6 digits). ValueError for anything else."""
    v = re.sub(r"[zZ]$", "+00:00", text.strip())
    v = re.sub(r"(?<=:\d\d)[.,](\d{1,6})(?=$|[+-])", lambda m: "." + m[1].ljust(6, "0"), v)
    return datetime.fromisoformat(v)


def _read_when(value: str, now: datetime, tz: tzinfo) -> tuple[datetime, bool]:
    """(instant in UTC, whether the value names a whole day), or UserError."""
    if not isinstance(value, str):
        raise UserError(f"a time must be text, got {type(value).__name__}: use {WHEN_FORMS}")
    if len(value) > MAX_WHEN_CHARS:
        raise UserError(f"the time {value[:20]!r}... is {len(value)} characters long; at most {MAX_WHEN_CHARS} are "
                        f"accepted: use {WHEN_FORMS}")
    try:
        return _read_when_bounded(value, now, tz)
    except _OutOfRange as e:
        raise UserError(f"the time {value!r} is out of range ({e}): {RANGE}") from None


def _read_when_bounded(value: str, now: datetime, tz: tzinfo) -> tuple[datetime, bool]:
    v = value.strip()
    low = v.lower()
    if low == "now":
        return now.astimezone(UTC), False
    if low in ("today", "yesterday"):
        d = now.astimezone(tz).date() - timedelta(days=low == "yesterday")
        return _at(d, 0, tz), True
    m = _RELATIVE.fullmatch(low)
    if m and m[3] in _UNIT_SECONDS:  # elapsed time, in UTC: exact across a DST change
        return _shift(now, float(m[2]) * (-1 if m[1] == "-" else 1), timedelta(seconds=_UNIT_SECONDS[m[3]])), False
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v, re.ASCII):
        try:
            d = date.fromisoformat(v)
        except ValueError:
            d = None  # e.g. 2026-02-30: refused below with the accepted forms
        if d is not None:
            _check_year(d.year)
            return _at(d, 0, tz), True
    elif re.match(r"\d{4}-\d{2}-\d{2}[T ]", v, re.ASCII):
        try:
            dt = parse_iso(v)
        except ValueError:
            dt = None
        if dt is not None:
            return _local(dt, tz), False
    elif v:
        dt = _read_dateparser(v, now, tz)
        if dt is not None:
            return _local(dt, tz), False
    raise UserError(f"cannot read the time {value!r}: use {WHEN_FORMS}")


def parse_when(value: str, now: datetime, tz: tzinfo | str | None) -> datetime:
    """One instant from --from/--to or the API's from/to, in UTC (see WHEN_FORMS; a bare date is its local
    midnight). UserError naming the value and the accepted forms when it cannot be read."""
    tz = resolve_tz(tz)
    return _read_when(value, _aware(now, tz), tz)[0]


def window_from_args(from_: str | None, to: str | None, now: datetime, tz: tzinfo | str | None,
                     names: tuple[str, str] = ("--from", "--to")) -> TimeWindow | None:
    """The window of --from/--to (None when neither is given). A `to` that names a whole day (2026-12-01, today,
    yesterday) includes that day. UserError when from is after to; `names` are the option names for the message."""
    if not from_ and not to:
        return None
    tz = resolve_tz(tz)
    now = _aware(now, tz)
    def read(name: str, value: str) -> tuple[datetime, bool]:
        try:
            return _read_when(value, now, tz)
        except UserError as e:
            raise UserError(f"{name}: {e}") from None

    start = read(names[0], from_)[0] if from_ else None
    end = None
    if to:
        end, whole_day = read(names[1], to)
        if whole_day:
            end = _at(end.astimezone(tz).date(), 24, tz)
    if start is not None and end is not None and start > end:
        w = TimeWindow(start, end)
        raise UserError(f"{names[0]} {from_!r} ({w.start.astimezone(tz):%Y-%m-%d %H:%M}) is after {names[1]} {to!r} "
                        f"({w.end.astimezone(tz):%Y-%m-%d %H:%M} {_tz_label(tz, end)}): swap them")
    return TimeWindow(start, end)


def _read_dateparser(text: str, now: datetime, tz: tzinfo) -> datetime | None:
    """What dateparser reads in `text` (naive local or aware), or None. dateparser is a third-party reader of free
    text: whatever it raises on odd input (an overflow, a value error) means it cannot read it."""
    try:
        return _dateparser(now, tz).get_date_data(text).date_obj
    except Exception:  # noqa: BLE001 - see above; the text is refused (or the phrase ignored) with the reason
        return None


def _dateparser(now: datetime, tz: tzinfo):
    """A dateparser reader relative to `now` (local, naive), preferring past dates (dateparser imported lazily:
    ~0.1-0.4 s, and its first read loads the English tables, ~0.2 s)."""
    import dateparser

    base = now.astimezone(tz).replace(tzinfo=None)
    return dateparser.DateDataParser(languages=["en"], settings={
        "RELATIVE_BASE": base, "PREFER_DATES_FROM": "past", "RETURN_AS_TIMEZONE_AWARE": False})


# ---------------------------------------------------------------------------------------------------------------
# parse_question: the grammar

_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20,
                 "thirty": 30, "forty": 40, "forty-five": 45, "fifty": 50, "sixty": 60, "ninety": 90}
_NUM = r"(?:\d+(?:\.\d+)?|half\s+an?|an?\s+half|half|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + ")"
_UNITS = {"sec": "second", "secs": "second", "second": "second", "seconds": "second", "min": "minute",
          "mins": "minute", "minute": "minute", "minutes": "minute", "hr": "hour", "hrs": "hour", "hour": "hour",
          "hours": "hour", "day": "day", "days": "day", "week": "week", "weeks": "week"}
_UNIT = r"(?:seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?)"
_UNIT_DELTA = {"second": timedelta(seconds=1), "minute": timedelta(minutes=1), "hour": timedelta(hours=1),
               "day": timedelta(days=1), "week": timedelta(weeks=1)}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY = "(?:" + "|".join(_WEEKDAYS) + ")"
_PART = r"(?:morning|afternoon|evening|night)"
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
          r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_DOM = r"(?:[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?:,?\s+\d{4})?"
# A clock time: 3 pm, 3:30pm, 3 p.m., 15:00, noon, midnight (bare hours are counts, never times)
_AMPM = r"[ap]\.?m\b\.?"
_CLOCK = rf"(?:\d{{1,2}}(?::\d{{2}})?\s*{_AMPM}|\d{{1,2}}:\d{{2}}(?!\d)|noon|midday|midnight)"
_CLOCK_OR_HOUR = rf"(?:{_CLOCK}|\d{{1,2}}(?::\d{{2}})?)"  # the first end of a range may leave out am/pm
_AMBIGUOUS_MONTHS = ("may", "mar", "march")  # verbs too: a date only with a preposition, an ordinal or a year
_DATE_PREPOSITIONS = ("on", "since", "after", "before", "from", "until", "till", "between", "and", "to", "of")


def _rx(p: str) -> re.Pattern:
    return re.compile(p, re.I)


# Each rule: (kind, regex). Matches are collected from all, then the longest leftmost ones win.
_RULES = [
    ("rolling", _rx(rf"\b(?:(?:in|within|during|over|for)\s+)?(?:the\s+)?(?:last|past|previous)\s+"
                    rf"(?P<n>{_NUM})\s+(?P<unit>{_UNIT})\b")),
    ("rolling", _rx(r"\b(?:(?:in|within|during|over|for)\s+)?(?:the\s+)?(?:last|past|previous)\s+(?P<unit>hour)\b")),
    ("rolling", _rx(r"\b(?:in|within|during|over|for)\s+the\s+(?:last|past|previous)\s+(?P<unit>minute)\b")),
    ("rolling", _rx(r"\b(?:(?:in|within|during|over|for)\s+the\s+(?:last|past|previous)|the\s+past)\s+"
                    r"(?P<unit>day|week)\b")),
    ("ago", _rx(rf"\b(?P<n>{_NUM})\s+(?P<unit>seconds?|secs?|minutes?|mins?|hours?|hrs?)\s+ago\b")),
    ("calendar", _rx(r"\b(?:(?:in|during|over)\s+)?(?P<which>last|this|previous)\s+(?P<unit>week|month|year)\b")),
    ("range", _rx(rf"\b(?:between|from)\s+(?P<a>{_CLOCK_OR_HOUR})\s*(?:and|to|until|till|-|–)\s*(?P<b>{_CLOCK})")),
    ("relation", _rx(rf"\b(?P<rel>since|after|from|before|until|till)\s+(?P<a>{_CLOCK})")),
    ("clock", _rx(rf"(?:\b(?:at|around|about|approximately|circa|near|round)\s+(?:(?:around|about)\s+)?)?"
                  rf"(?<![\d:.])(?P<a>{_CLOCK})")),
    ("part", _rx(rf"\b(?:(?:in|during)\s+the\s+(?P<p1>morning|afternoon|evening)|at\s+night)\b")),
    ("day", _rx(rf"\b(?:(?P<rel>since|after|before|until|till)\s+)?"
                rf"(?P<day>the\s+day\s+before\s+yesterday|today|yesterday|tonight|last\s+night|this\s+{_PART}|"
                rf"(?P<n>{_NUM})\s+(?P<unit>days?|weeks?)\s+ago|"
                rf"(?:on\s+)?(?:(?:(?:last|this\s+past|past)\s+)?{_WEEKDAY}|\d{{4}}-\d{{2}}-\d{{2}}|"
                rf"(?:the\s+)?{_DOM}(?:\s+of)?\s+{_MONTH}{_YEAR}|{_MONTH}\s+(?:the\s+)?{_DOM}{_YEAR}))"
                rf"(?:\s+(?:in\s+the\s+)?(?P<part>{_PART}))?\b")),
]


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    kind: str
    m: re.Match


def _number(s: str) -> float:
    s = re.sub(r"\s+", " ", s.lower())
    if s in ("half", "half a", "half an", "a half", "an half"):
        return 0.5
    return float(s) if s[0].isdigit() else float(_NUMBER_WORDS[s])


def _clock(s: str, meridiem: str | None = None) -> tuple[int, int] | None:
    """(hour, minute) of a clock text; a bare hour takes `meridiem`. None when out of range."""
    s = s.lower().strip()
    if s in ("noon", "midday"):
        return 12, 0
    if s == "midnight":
        return 0, 0
    m = re.fullmatch(rf"(\d{{1,2}})(?::(\d{{2}}))?\s*({_AMPM})?", s)
    if not m:
        return None
    h, mi = int(m[1]), int(m[2] or 0)
    ap = (m[3] or meridiem or "").replace(".", "")[:1]
    if mi > 59 or (ap and not 1 <= h <= 12) or h > 23:
        return None
    if ap:
        h = h % 12 + (12 if ap == "p" else 0)
    return h, mi


def _meridiem(s: str) -> str | None:
    m = re.search(_AMPM, s, re.I)
    return m[0].replace(".", "").lower()[:1] if m else None


def _accept(kind: str, m: re.Match, question: str) -> bool:
    """Guards against false positives that the regexes cannot express."""
    if kind == "day" and re.search(r"\b(?:next|coming|upcoming|tomorrow)\W+$", question[: m.start()], re.I):
        return False  # the future: "next Monday" is not last Monday
    if kind == "day" and m["day"]:
        words = re.findall(r"[a-z]+", m["day"].lower())
        if any(w in _AMBIGUOUS_MONTHS for w in words) and not re.search(r"\d(st|nd|rd|th)|\d{4}", m["day"], re.I):
            earlier = re.findall(r"[a-z]+", question[: m.start()].lower()) or [""]
            before = words[0] if words[0] == "on" else earlier[-1]
            return before in _DATE_PREPOSITIONS
    if kind in ("clock", "relation", "range"):
        a = m["a"]
        b = m.groupdict().get("b")
        mer = _meridiem(b) if b else None
        return _clock(a, mer) is not None and (b is None or _clock(b) is not None)
    return True


def _scan(question: str) -> list[_Match]:
    found = [_Match(m.start(), m.end(), kind, m) for kind, rx in _RULES for m in rx.finditer(question)
             if _accept(kind, m, question)]
    found.sort(key=lambda x: (x.start, -(x.end - x.start)))
    chosen: list[_Match] = []
    for f in found:
        if all(f.start >= c.end or f.end <= c.start for c in chosen):
            chosen.append(f)
    return sorted(chosen, key=lambda x: x.start)


# A resolved piece: a day (or days) or a standalone window, and a time-of-day spec to place on a day.
@dataclass(frozen=True)
class _Day:
    first: date
    days: int = 1  # how many days it covers
    part: str | None = None
    rel: str | None = None  # since/after/before/until


@dataclass(frozen=True)
class _TimeOfDay:
    kind: str  # "clock" | "range" | "after" | "before" | "part"
    a: float  # hours from local midnight
    b: float | None = None


def _read_day(m: re.Match, now: datetime, tz: tzinfo) -> _Day | None:
    today = now.astimezone(tz).date()
    text = re.sub(r"^on ", "", re.sub(r"\s+", " ", m["day"].lower()))
    part = m["part"].lower() if m["part"] else None
    rel = m["rel"].lower() if m["rel"] else None
    if text == "today":
        d = today
    elif text == "yesterday":
        d = today - timedelta(days=1)
    elif text == "the day before yesterday":
        d = today - timedelta(days=2)
    elif text == "tonight":
        d, part = today, "night"
    elif text == "last night":
        d, part = today - timedelta(days=1), "night"
    elif text.startswith("this ") and text[5:] in PARTS_OF_DAY:
        d, part = today, text[5:]
    elif m["unit"]:
        n = _number(m["n"])
        week = m["unit"].startswith("week")
        _shift(now, -n, timedelta(weeks=1) if week else timedelta(days=1))  # _OutOfRange for an absurd count
        if week:
            monday = today - timedelta(days=today.weekday())
            return _Day(monday - timedelta(weeks=int(n)), 7, None, rel)
        d = today - timedelta(days=int(n))
    elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", text, re.ASCII):
        try:
            d = date.fromisoformat(text)
        except ValueError:
            return None
    else:  # weekday names and month-name dates: dateparser
        name = re.sub(r"^(?:last|this past|past) ", "", text)
        dt = _read_dateparser(name, now, tz)
        if dt is None:
            return None
        d = dt.date()
        if name in _WEEKDAYS and d >= today:  # "on Monday" is the most recent Monday before today
            d -= timedelta(weeks=1 + (d - today).days // 7)
    _check_year(d.year)
    return _Day(d, 1, part, rel)


def _read_time_of_day(x: _Match) -> _TimeOfDay:
    m = x.m
    if x.kind == "part":
        p = (m["p1"] or "night").lower()
        return _TimeOfDay("part", *PARTS_OF_DAY[p])
    if x.kind == "range":
        b = _clock(m["b"])
        a = _clock(m["a"], _meridiem(m["b"]))
        if _meridiem(m["a"]) is None and _meridiem(m["b"]) and a[0] * 60 + a[1] > b[0] * 60 + b[1]:
            a = (a[0] - 12, a[1])  # "between 11 and 1 pm": 11 am
        return _TimeOfDay("range", a[0] + a[1] / 60, b[0] + b[1] / 60 + (24 if b <= a else 0))
    h, mi = _clock(m["a"])
    hours = h + mi / 60
    if x.kind == "relation":
        return _TimeOfDay("before" if m["rel"].lower() in ("before", "until", "till") else "after", hours)
    return _TimeOfDay("clock", hours)


def _place(t: _TimeOfDay, d: date, tz: tzinfo, day_given: bool) -> TimeWindow:
    """A time-of-day spec on day d. Without a day, "after 3 pm" stays open up to now."""
    if t.kind == "part" or t.kind == "range":
        return TimeWindow(_at(d, t.a, tz), _at(d, t.b, tz))
    if t.kind == "clock":
        c = _at(d, t.a, tz)
        return TimeWindow(c - CLOCK_HALF_WIDTH, c + CLOCK_HALF_WIDTH)
    if t.kind == "after":
        return TimeWindow(_at(d, t.a, tz), _at(d, 24, tz) if day_given else None)
    return TimeWindow(_at(d, 0, tz), _at(d, t.a, tz))  # before


def _day_window(day: _Day, tz: tzinfo) -> TimeWindow:
    if day.part:
        a, b = PARTS_OF_DAY[day.part]
        w = TimeWindow(_at(day.first, a, tz), _at(day.first, b, tz))
    else:
        w = TimeWindow(_at(day.first, 0, tz), _at(day.first, 24 * day.days, tz))
    if day.rel == "since":
        return TimeWindow(w.start, None)
    if day.rel == "after":
        return TimeWindow(w.end, None)
    if day.rel in ("before", "until", "till"):
        return TimeWindow(None, w.start if day.rel == "before" else w.end)
    return w


def _standalone(x: _Match, now: datetime, tz: tzinfo) -> TimeWindow:
    m = x.m
    now = now.astimezone(UTC)  # durations are elapsed time: subtracted in UTC, exact across a DST change
    if x.kind == "rolling":
        n = _number(m["n"]) if m.groupdict().get("n") else 1.0
        return TimeWindow(_shift(now, -n, _UNIT_DELTA[_UNITS[m["unit"].lower()]]), None)
    if x.kind == "ago":  # seconds, minutes, hours (days and weeks are read as days)
        unit = _UNITS[m["unit"].lower()]
        t = _shift(now, -_number(m["n"]), _UNIT_DELTA[unit])
        return TimeWindow(t - AGO_HALF_WIDTH[unit], t + AGO_HALF_WIDTH[unit])
    # calendar: this/last week, month, year
    today = now.astimezone(tz).date()
    back = m["which"].lower() != "this"
    unit = m["unit"].lower()
    if unit == "week":
        first = today - timedelta(days=today.weekday()) - timedelta(weeks=back)
        return TimeWindow(_at(first, 0, tz), _at(first + timedelta(weeks=1), 0, tz))
    if unit == "month":
        y, mo = (today.year, today.month - back) if today.month - back >= 1 else (today.year - 1, 12)
        ny, nmo = (y, mo + 1) if mo < 12 else (y + 1, 1)
        return TimeWindow(_at(date(y, mo, 1), 0, tz), _at(date(ny, nmo, 1), 0, tz))
    y = today.year - back
    return TimeWindow(_at(date(y, 1, 1), 0, tz), _at(date(y + 1, 1, 1), 0, tz))


def _most_recent_day(t: _TimeOfDay, now: datetime, tz: tzinfo) -> date:
    """Today if the spec has begun by now, else yesterday ("before noon" is always today)."""
    today = now.astimezone(tz).date()
    if t.kind == "before":
        return today
    start = _at(today, t.a, tz) - (CLOCK_HALF_WIDTH if t.kind == "clock" else timedelta(0))
    return today if start <= now else today - timedelta(days=1)


# Intent, read from the question without its time phrase (so "last night" is not "last")
_ARTICLES = {"the", "a", "an", "his", "her", "its", "their", "my", "our", "your", "this", "that", "these", "those"}
_INTENT_RULES = [
    ("count", _rx(r"\bhow\s+(?:many\s+times|often|frequently)\b|\bnumber\s+of\s+times\b")),
    ("first", _rx(r"\bearliest\b")),
    ("last", _rx(r"\bmost\s+recent(?:ly)?\b|\blatest\b")),
    ("summary", _rx(r"\bsummar(?:y|i[sz]e)\b|\bsum\s+up\b|\brecap\b")),
    ("when", _rx(r"^\W*(?:and\s+|so\s+)?when\b|\bat\s+what\s+time\b|\bwhat\s+time\s+(?:did|was|were|is|does)\b")),
]
_HAPPENED = _rx(r"\bwhat\s+(?:has\s+|had\s+)?(?:happened|happens|went\s+on|was\s+going\s+on|did\s+i\s+miss)\b")


def _time_word(text: str, word: str) -> bool:
    """`word` ("first"/"last") used about time: "the last time", "when did the door last open"; not an ordinal
    adjective ("the last person", "his first visit") nor "first aid"."""
    words = re.findall(r"[a-z']+", text.lower())
    for i, w in enumerate(words):
        if w != word:
            continue
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if nxt == "time":
            return True
        if (i and words[i - 1] in _ARTICLES) or nxt == "aid":
            continue
        if "when" in words[:i]:
            return True
    return False


def _intent(text: str, has_window: bool) -> str | None:
    """count > first > last > summary > when (the first rule that matches)."""
    for name, rx in _INTENT_RULES:
        if name in ("first", "last") and _time_word(text, name):
            return name
        if rx.search(text):
            return name
    return "summary" if has_window and _HAPPENED.search(text) else None


def _remove(question: str, spans: list[tuple[int, int]]) -> str:
    out, pos = [], 0
    for a, b in sorted(spans):
        out.append(question[pos:a])
        pos = b
    out.append(question[pos:])
    text = re.sub(r"\s+", " ", "".join(out)).strip()
    text = re.sub(r"\s+([?.!,;:])", r"\1", text)
    text = re.sub(r"[,;:]+(?=[?.!]|$)", "", text)
    return re.sub(r"^[,;:]\s*", "", text).strip()


_DAY_RANGE_FROM = _rx(r"\b(?:between|from)\s+$")
_DAY_RANGE_TO = _rx(r"\s*(?:and|to|until|till|through|-|–)\s*")


def _day_range(question: str, matches: list[_Match], now: datetime, tz: tzinfo):
    """(window, [one match over the whole phrase]) for two day expressions joined as a range or a list
    ("between Monday and Wednesday", "from Nov 3 to Nov 5", "on Monday and Tuesday"): from the earlier one's start
    to the later one's end, both days included."""
    for x, y in zip(matches, matches[1:]):
        if x.kind == y.kind == "day" and _DAY_RANGE_TO.fullmatch(question[x.end:y.start]):
            a, b = _read_day(x.m, now, tz), _read_day(y.m, now, tz)
            if a and b and not (a.rel or b.rel):
                wa, wb = _day_window(a, tz), _day_window(b, tz)
                lead = _DAY_RANGE_FROM.search(question[: x.start])
                start = lead.start() if lead else x.start
                return (TimeWindow(min(wa.start, wb.start), max(wa.end, wb.end)),
                        [_Match(start, y.end, "day", y.m)])
    return None


def _resolve(question: str, matches: list[_Match], now: datetime, tz: tzinfo
             ) -> tuple[TimeWindow | None, list[_Match]]:
    """The window of the question's time expressions and the matches it came from (see parse_question)."""
    day_m = next((x for x in matches if x.kind == "day"), None)
    tod_m = next((x for x in matches if x.kind in ("range", "relation", "clock", "part")), None)
    alone_m = next((x for x in matches if x.kind in ("rolling", "ago", "calendar")), None)

    used: list[_Match] = []
    window = None
    day = _read_day(day_m.m, now, tz) if day_m else None
    if day is None:
        day_m = None
    span = _day_range(question, matches, now, tz)
    if span is not None:  # "between Monday and Wednesday", "from Nov 3 to Nov 5": both days included
        window, used = span
    elif alone_m and (not (day_m or tod_m) or alone_m.start < min(x.start for x in (day_m, tod_m) if x)):
        window, used = _standalone(alone_m, now, tz), [alone_m]
    elif day_m and tod_m and day.days == 1 and not day.rel and not (day.part and tod_m.kind == "part"):
        t = _read_time_of_day(tod_m)
        d = day.first + timedelta(days=day.part == "night" and t.a < 12)  # "last night at 2 am": after midnight
        window, used = _place(t, d, tz, day_given=True), [day_m, tod_m]
    elif day_m:
        window, used = _day_window(day, tz), [day_m]
    elif tod_m:
        t = _read_time_of_day(tod_m)
        window, used = _place(t, _most_recent_day(t, now, tz), tz, day_given=False), [tod_m]

    return window, used


def parse_question(question: str, now: datetime, tz: tzinfo | str | None) -> TimeQuery:
    """The time window, the phrase it came from, the intent and the question without the phrase.

    One day expression and one time-of-day expression combine ("yesterday between 2 and 4 pm", "at 3 pm on
    Monday"); a rolling or calendar window ("in the last 10 minutes", "last week") stands alone; the leftmost
    wins when a question holds several.
    """
    if not isinstance(question, str):
        raise UserError(f"the question must be text, got {type(question).__name__}")
    if len(question) > MAX_QUESTION_CHARS:
        raise UserError(f"the question is {len(question)} characters long; at most {MAX_QUESTION_CHARS} are "
                        f"accepted: shorten it")
    tz = resolve_tz(tz)
    now = _aware(now, tz)
    matches = _scan(question)
    try:
        window, used = _resolve(question, matches, now, tz)
        for end in (window.start, window.end) if window is not None else ():
            if end is not None:
                _check_instant(end)
    except (_OutOfRange, OverflowError, ValueError) as e:
        # a date outside MIN_YEAR..MAX_YEAR, an absurd duration, or date arithmetic that fails on such values (every
        # ValueError here comes from date arithmetic): the question is answered without a window, and says why
        why = f"it is out of range ({e}): {RANGE}" if isinstance(e, _OutOfRange) else "it cannot be computed"
        phrase = question[matches[0].start:matches[0].end].strip()
        text = _remove(question, [(x.start, x.end) for x in matches]) or question
        return TimeQuery(None, None, _intent(text, False), text,
                         f"the time {phrase!r} in the question was not applied ({why}); the answer is from the "
                         f"whole memory")

    spans = [(x.start, x.end) for x in used]
    phrase = None
    if used:
        a, b = min(s for s, _ in spans), max(e for _, e in spans)
        gap = question[a:b]
        for s, e in spans:
            gap = gap.replace(question[s:e], "", 1)
        # adjacent pieces ("yesterday at 3 pm") are one phrase; apart ones are joined
        phrase = (question[a:b] if re.fullmatch(r"[\s,]*", gap) else " ".join(question[s:e] for s, e in sorted(spans)))
        if re.fullmatch(r"[\s,]*", gap):
            spans = [(a, b)]
        phrase = phrase.strip()
    text = _remove(question, spans)
    return TimeQuery(window, phrase, _intent(text, window is not None), text)
