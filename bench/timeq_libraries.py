"""Which time-expression library reads the questions rlivs must understand: dateparser (search_dates),
parsedatetime (Calendar.nlp), ctparse, and rlivs.runtime.timeq (dateparser + its own grammar), on the expressions
tests/unit/test_timeq.py covers, asked on Wed 2026-12-02 16:30 Europe/Berlin.

Per library and expression:
  found   the library found a time where it should (or, for the false-positive cases, found none);
  anchor  the instant or date it returned lies in the expected window (local time; date-only results: a date the
          window covers), and for clock times and durations ("at 3 pm", "in the last 10 minutes") it is the exact
          instant (to the minute);
  window  it returned the expected window itself: a range equal to it (ends within a minute). Only ctparse and
          timeq return ranges at all.
And: import time (fresh process, median of 3), the first read (loads tables), the median read over all questions.
Libraries that are not installed are skipped. rlivs depends on dateparser only; ctparse 0.3.6 requires
python-dateutil<3 (rlivs pins 4.0), so compare all four in a scratch environment:

    python -m venv /tmp/tq && /tmp/tq/bin/python -m pip install dateparser==1.5.0 parsedatetime==2.6 ctparse==0.3.6 \
        tzlocal==5.4.5 && PYTHONPATH=. /tmp/tq/bin/python bench/timeq_libraries.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from datetime import date, datetime, timedelta

TZ = "Europe/Berlin"
NOW = datetime(2026, 12, 2, 16, 30)  # local, naive: a Wednesday
D = date(2026, 12, 2)


def at(d: date, h: float) -> datetime:
    return datetime.combine(d, datetime.min.time()) + timedelta(hours=h)


Y, MON = D - timedelta(days=1), date(2026, 11, 30)
# (expression, expected window [start, end) local (None: open), exact anchor or None); window None: no time at all
CASES = [
    ("what happened yesterday", (at(Y, 0), at(Y, 24)), None),
    ("what happened yesterday afternoon", (at(Y, 12), at(Y, 18)), None),
    ("yesterday morning", (at(Y, 6), at(Y, 12)), None),
    ("yesterday evening", (at(Y, 18), at(Y, 24)), None),
    ("what did the dog do last night", (at(Y, 18), at(D, 6)), None),
    ("what happened today", (at(D, 0), at(D, 24)), None),
    ("this morning", (at(D, 6), at(D, 12)), None),
    ("this afternoon", (at(D, 12), at(D, 18)), None),
    ("this evening", (at(D, 18), at(D, 24)), None),
    ("tonight", (at(D, 18), at(D, 30)), None),
    ("what happened at 3 pm", (at(D, 14.5), at(D, 15.5)), at(D, 15)),
    ("what happened around 3pm", (at(D, 14.5), at(D, 15.5)), at(D, 15)),
    ("at 15:00", (at(D, 14.5), at(D, 15.5)), at(D, 15)),
    ("what happened between 2 and 4 pm", (at(D, 14), at(D, 16)), None),
    ("what happened after 3 pm", (at(D, 15), None), at(D, 15)),
    ("before noon", (at(D, 0), at(D, 12)), at(D, 12)),
    ("since 9am", (at(D, 9), None), at(D, 9)),
    ("what happened in the last 10 minutes", (NOW - timedelta(minutes=10), None), NOW - timedelta(minutes=10)),
    ("in the past 2 hours", (NOW - timedelta(hours=2), None), NOW - timedelta(hours=2)),
    ("summarise the last hour", (NOW - timedelta(hours=1), None), NOW - timedelta(hours=1)),
    ("last hour", (NOW - timedelta(hours=1), None), NOW - timedelta(hours=1)),
    ("what happened on Monday", (at(MON, 0), at(MON, 24)), None),
    ("last week", (at(date(2026, 11, 23), 0), at(MON, 0)), None),
    ("this week", (at(MON, 0), at(date(2026, 12, 7), 0)), None),
    ("on 2026-11-30", (at(MON, 0), at(MON, 24)), None),
    ("on November 30", (at(MON, 0), at(MON, 24)), None),
    ("on 30 November", (at(MON, 0), at(MON, 24)), None),
    ("what happened 2 hours ago", (at(D, 14), at(D, 15)), at(D, 14.5)),
    ("who was the last person to leave", None, None),
    ("where is the first aid kit", None, None),
    ("may I ask where the keys are", None, None),
    ("which is the second door", None, None),
    ("were there 3 people", None, None),
]


# Each reader: question -> (found, instant or date or None, (start, end) range or None), all local and naive
def read_dateparser():
    from dateparser.search import search_dates

    settings = {"RELATIVE_BASE": NOW, "PREFER_DATES_FROM": "past", "RETURN_AS_TIMEZONE_AWARE": False}

    def read(q):
        r = search_dates(q, languages=["en"], settings=settings)
        return (True, r[0][1], None) if r else (False, None, None)
    return read


def read_parsedatetime():
    import parsedatetime

    cal = parsedatetime.Calendar()

    def read(q):
        r = cal.nlp(q, sourceTime=NOW)
        if not r:
            return False, None, None
        dt, flags = r[0][0], r[0][1]
        return True, (dt.date() if flags == 1 else dt), None
    return read


def read_ctparse():
    from ctparse import ctparse
    from ctparse.types import Interval, Time

    def dt_of(t):
        if t is None or not t.hasDate:
            return None
        return t.dt if t.hasTime else date(t.year, t.month, t.day)

    def read(q):
        r = ctparse(q, ts=NOW, timeout=1.0)
        if r is None:
            return False, None, None
        res = r.resolution
        if isinstance(res, Interval):
            a, b = dt_of(res.t_from), dt_of(res.t_to)
            return True, a or b, (a, b)
        if isinstance(res, Time):
            start, end = (res.start, res.end) if res.hasDate else (None, None)
            rng = (start.dt, end.dt) if start is not None and start.hasTime and end.hasTime else None
            return True, dt_of(res), rng
        return True, None, None  # a Duration ("2 hours"): no instant
    return read


def read_timeq():
    from zoneinfo import ZoneInfo

    from rlivs.runtime.timeq import parse_question

    tz = ZoneInfo(TZ)
    now = NOW.replace(tzinfo=tz)

    def local(x):
        return None if x is None else x.astimezone(tz).replace(tzinfo=None)

    def read(q):
        w = parse_question(q, now, tz).window
        if w is None:
            return False, None, None
        return True, local(w.start) or local(w.end), (local(w.start), local(w.end))
    return read


READERS = {"dateparser": ("dateparser", read_dateparser), "parsedatetime": ("parsedatetime", read_parsedatetime),
           "ctparse": ("ctparse", read_ctparse), "rlivs.timeq": ("rlivs.runtime.timeq", read_timeq)}


def _close(a, b):
    return (a is None and b is None) or (a is not None and b is not None and abs((a - b).total_seconds()) <= 60)


def score(case, got):
    q, window, anchor = case
    found, point, rng = got
    if window is None:
        return {"found": not found, "anchor": not found, "window": not found}
    s, e = window
    ok_anchor = False
    if isinstance(point, datetime):
        ok_anchor = _close(point, anchor) if anchor is not None else (s <= point and (e is None or point < e))
    elif isinstance(point, date) and anchor is None:
        last_day = None if e is None else (e.date() if e.time() != e.min.time() else e.date() - timedelta(days=1))
        ok_anchor = s.date() <= point and (last_day is None or point <= last_day)
    ok_window = rng is not None and _close(rng[0], s) and _close(rng[1], e)
    return {"found": found, "anchor": ok_anchor, "window": ok_window}


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(3)]
    return statistics.median(runs)


def one(name: str) -> dict:
    """One library in this (fresh) process: its first read is the one that loads its tables."""
    read = READERS[name][1]()
    first_q = "what happened on Monday"  # a weekday name: every library, timeq included, reads it with its tables
    t = time.perf_counter()
    read(first_q)
    first = time.perf_counter() - t
    times, scores = [], []
    for case in CASES:
        t = time.perf_counter()
        got = read(case[0])
        times.append(time.perf_counter() - t)
        scores.append(score(case, got))
    return {"scores": scores, "first_read_s": first, "times": times}


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2])))
        return
    timed = [c for c in CASES if c[1] is not None]
    out = {"now": f"{NOW:%Y-%m-%d %H:%M} {TZ}", "time_cases": len(timed), "no_time_cases": len(CASES) - len(timed),
           "libraries": {}}
    rows = {}
    for name, (module, _) in READERS.items():
        try:
            __import__(module)
        except ImportError:
            print(f"{name}: not installed, skipped", file=sys.stderr)
            continue
        r = json.loads(subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1])
        rows[name] = scores = r["scores"]
        is_timed = [c[1] is not None for c in CASES]
        out["libraries"][name] = {
            "anchor_right": sum(s["anchor"] for s, t in zip(scores, is_timed) if t),
            "window_right": sum(s["window"] for s, t in zip(scores, is_timed) if t),
            "false_times": sum(not s["found"] for s, t in zip(scores, is_timed) if not t),
            "import_s": round(import_seconds(module), 3), "first_read_s": round(r["first_read_s"], 3),
            "read_ms_p50": round(1e3 * statistics.median(r["times"]), 2),
            "read_ms_max": round(1e3 * max(r["times"]), 2)}
    names = list(rows)
    print("| expression | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for i, case in enumerate(CASES):
        cells = []
        for n in names:
            s = rows[n][i]
            if case[1] is None:
                cells.append("none (right)" if s["found"] else "**false time**")
            else:
                cells.append("window" if s["window"] else "anchor" if s["anchor"] else
                             "wrong" if s["found"] else "missed")
        print(f"| {case[0]} | " + " | ".join(cells) + " |")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
