"""A realistic multi-day caption log and a retrieval-quality question set over it, from templates and a seeded RNG.

Four cameras (kitchen, hallway, front_door, workshop) watched for three days (Monday 2026-11-23 00:00 UTC until the
fixed `now`, Wednesday 2026-11-25 20:30 UTC). Each caption is what a Video-LLM might write for one 16-s clip: 20-60
words, a main event (people by name, objects with colours, counts, a robot arm, deliveries, the front door) worded
with varied verbs and synonyms, plus scene details. Questions ask for those events in other words (paraphrases,
synonyms, names, colours, counts) and some carry a time expression ("yesterday afternoon") whose window, resolved
against `now`, is given with the question. A question's answer clips are every clip whose event matches what the
question asks (computed from the events, not by hand), so an answer set is complete by construction.

    python bench/data/make_caption_log.py            # rewrites caption_log.jsonl and questions.jsonl beside it
    python bench/data/make_caption_log.py --check    # regenerates in memory, fails if the files differ

caption_log.jsonl, one clip per line:
    {"id": "kitchen:12", "stream": "kitchen", "index": 12, "t_start": 25824.0, "t_end": 25840.0,
     "wall_start": 1763881824.0, "wall_end": 1763881840.0, "time": "2026-11-23T07:10:24+00:00", "caption": "..."}
    (index: 0-based clip number in the stream; t_*: stream seconds since the camera started at Monday 00:00 UTC;
     wall_*: UTC unix seconds; the log holds the clips worth captioning, so consecutive indices can be hours apart)
questions.jsonl, one question per line:
    {"id": "q0001", "question": "...", "answers": ["kitchen:12", ...], "kind": "synonym", "now": ISO,
     "from": ISO or null, "to": ISO or null, "time_expression": "yesterday afternoon" or null}
    (time windows: morning 06-12, afternoon 12-18, evening 18-24, "at 3 pm" = 14:30-15:30, all UTC)

The same caption builders make the large synthetic memories of bench/memory_scale.py (`scale_captions`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIP_S = 16.0  # seconds per clip (16 frames at 1 fps)
START = datetime(2026, 11, 23, tzinfo=timezone.utc)  # Monday 00:00 UTC: the cameras start
NOW = datetime(2026, 11, 25, 20, 30, tzinfo=timezone.utc)  # Wednesday 20:30 UTC: when the questions are asked
SEED = 14
STREAMS = ("kitchen", "hallway", "front_door", "workshop")
MIN_WORDS, MAX_WORDS = 20, 60

PEOPLE = ("Priya", "Marco", "Lena", "Tom", "Aiko", "Sam", "Noah", "Grace")
PRONOUN = {"Priya": "her", "Marco": "his", "Lena": "her", "Tom": "his", "Aiko": "her", "Sam": "their",
           "Noah": "his", "Grace": "her"}
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "grey", "purple", "brown")
# object -> nouns a caption or a question may use for it (synonyms); the first is the plain name
OBJECTS = {
    "keys": ("keys", "set of keys", "key ring", "bunch of keys"),
    "backpack": ("backpack", "rucksack", "daypack"),
    "umbrella": ("umbrella", "folding umbrella", "brolly"),
    "mug": ("mug", "coffee cup", "cup"),
    "toolbox": ("toolbox", "tool case", "tool chest"),
    "laptop": ("laptop", "notebook computer", "computer"),
    "helmet": ("bike helmet", "cycling helmet", "helmet"),
    "drill": ("cordless drill", "power drill", "drill"),
    "wrench": ("wrench", "spanner", "adjustable wrench"),
    "jacket": ("jacket", "coat", "anorak"),
    "bottle": ("water bottle", "flask", "drinking bottle"),
    "phone": ("phone", "mobile phone", "smartphone"),
    "scarf": ("scarf", "woollen scarf", "wrap"),
    "book": ("book", "paperback", "novel"),
}
# stream -> place -> wording variants; and which objects are plausible there
PLACES = {
    "kitchen": {"counter": ("counter", "worktop", "kitchen counter"), "table": ("table", "dining table"),
                "windowsill": ("windowsill", "window ledge"), "fridge": ("top of the fridge", "fridge top"),
                "shelf": ("open shelf", "wall shelf")},
    "hallway": {"coat rack": ("coat rack", "row of coat hooks"), "shoe cabinet": ("shoe cabinet", "shoe rack"),
                "side table": ("side table", "console table", "little hall table"),
                "stairs": ("bottom stair", "first step of the staircase")},
    "front_door": {"doorstep": ("doorstep", "front step"), "porch bench": ("porch bench", "bench by the door"),
                   "mailbox": ("mailbox", "letterbox"), "doormat": ("doormat", "mat outside the door")},
    "workshop": {"workbench": ("workbench", "work table"), "pegboard": ("pegboard", "tool wall"),
                 "rack": ("metal shelf", "storage rack", "steel shelving"), "cart": ("rolling cart", "trolley")},
}
OBJECTS_AT = {
    "kitchen": ("keys", "mug", "laptop", "phone", "bottle", "book", "backpack"),
    "hallway": ("keys", "backpack", "umbrella", "helmet", "jacket", "scarf", "phone"),
    "front_door": ("umbrella", "backpack", "helmet", "jacket", "keys"),
    "workshop": ("toolbox", "drill", "wrench", "laptop", "bottle", "mug", "phone"),
}
PUT = ("puts", "sets", "places", "leaves", "drops", "lays")
PUT_PAST = ("put", "set", "placed", "left", "dropped", "laid")
TAKE = ("picks up", "grabs", "takes", "lifts", "collects", "snatches up")
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PACKAGE = ("package", "parcel", "cardboard box", "box")
PACKAGES = ("packages", "parcels", "cardboard boxes", "boxes")
COURIERS = ("a courier in a {c} uniform", "a delivery driver wearing a {c} vest", "a postal worker in a {c} jacket")
ARM = ("the robot arm", "the robotic arm", "the manipulator", "the six-axis arm", "the industrial arm")
BLOCKS = ("blocks", "cubes", "bricks", "wooden blocks")
BACKGROUND = {
    "kitchen": ("A kettle stands next to the stove.", "The radio on the shelf is switched on.",
                "Dishes are stacked beside the sink.", "A fruit bowl sits in the middle of the table.",
                "Two chairs are pushed under the table.", "The tap drips slowly into the sink.",
                "A calendar hangs on the wall near the fridge.", "Plants line the windowsill.",
                "The oven clock glows green.", "A tea towel hangs from the oven door."),
    "hallway": ("Shoes are lined up along the wall.", "A framed picture hangs above the radiator.",
                "The hallway light is on.", "A runner rug covers the wooden floor.",
                "The staircase leads up on the left.", "A mirror on the wall reflects the coats.",
                "The door to the living room is half open.", "A robot vacuum rests in its dock by the wall."),
    "front_door": ("A potted plant stands beside the door.", "Rain has left the path wet.",
                   "The porch light is switched on.", "A bicycle leans against the fence.",
                   "Leaves are scattered across the path.", "The street behind the gate is quiet.",
                   "A car drives past on the road.", "The house number is visible on the wall."),
    "workshop": ("Tools hang in rows on the pegboard.", "A 3D printer hums in the corner.",
                 "Sawdust covers part of the floor.", "Cables run along the ceiling.",
                 "The safety fence around the robot cell is closed.", "A vice is clamped to the bench.",
                 "Fluorescent lights flicker overhead.", "Plastic bins of screws line the back wall."),
}
LIGHT = {"night": ("It is dark outside.", "Only a small night light is on."),
         "morning": ("Morning sunlight comes through the window.", "Pale morning light fills the room."),
         "afternoon": ("Bright afternoon light falls across the floor.", "The afternoon sun is high."),
         "evening": ("The lamps are on and it is getting dark outside.", "Evening light fades outside.")}
IDLE = {
    "kitchen": ("The kitchen is empty and nothing moves.", "No one is in the kitchen.",
                "The kitchen is quiet; a few items sit on the {pl}.", "Nobody is around; the kitchen is tidy."),
    "hallway": ("The hallway is empty.", "No one passes through the hall.", "Nothing moves in the hallway.",
                "The corridor is quiet and still."),
    "front_door": ("The front door is closed and nobody is outside.", "The porch is empty.",
                   "Nothing happens at the entrance.", "The doorstep is empty and the door stays shut."),
    "workshop": ("The workshop is empty; the robot arm is parked.", "No one is at the workbench.",
                 "The arm rests in its home position and the cell is quiet.", "The workshop is still."),
}


@dataclass
class Event:
    """One thing that happened: its attributes (what questions ask about) and the captions of its clips."""

    kind: str  # place | take | door | delivery | arm_stack | arm_hand | arm_fault | kitchen | cat | idle
    stream: str
    wall: float  # UTC unix seconds of its first clip
    attrs: dict = field(default_factory=dict)  # person, obj, colour, place, count, ...
    captions: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # filled when the clips are laid out


def _period(hour: int) -> str:
    return "night" if hour < 6 else "morning" if hour < 12 else "afternoon" if hour < 18 else "evening"


def _art(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _finish(rng: random.Random, main: str, stream: str, hour: int) -> str:
    """Main sentences + scene details, 20-60 words."""
    extra = list(BACKGROUND[stream])
    rng.shuffle(extra)
    parts = [main]
    if rng.random() < 0.6:
        parts.append(rng.choice(LIGHT[_period(hour)]))
    for s in extra:
        if len(" ".join(parts).split()) >= MIN_WORDS and rng.random() < 0.5:
            break
        if len(" ".join(parts + [s]).split()) > MAX_WORDS:
            break
        parts.append(s)
    words = " ".join(parts).split()
    return " ".join(words[:MAX_WORDS])


def _place_words(rng, stream, place):
    return rng.choice(PLACES[stream][place])


def _make_event(rng: random.Random, stream: str, wall: float, kind: str | None = None) -> Event:
    """A random event of the stream at `wall`, with its 1-3 captions."""
    hour = datetime.fromtimestamp(wall, timezone.utc).hour
    kinds = {"kitchen": ("place", "take", "kitchen", "kitchen", "cat", "idle", "idle"),
             "hallway": ("place", "take", "place", "cat", "vacuum", "idle", "idle"),
             "front_door": ("door", "door", "delivery", "place", "idle", "idle"),
             "workshop": ("place", "take", "arm_stack", "arm_stack", "arm_hand", "arm_fault", "idle")}[stream]
    kind = kind or rng.choice(kinds)
    p = rng.choice(PEOPLE)
    his = PRONOUN[p]
    c = rng.choice(COLOURS)
    ev = Event(kind, stream, wall)
    caps: list[str] = []
    if kind in ("place", "take"):
        obj = rng.choice(OBJECTS_AT[stream])
        place = rng.choice(list(PLACES[stream]))
        n, pl = rng.choice(OBJECTS[obj]), _place_words(rng, stream, place)
        ev.attrs = dict(person=p, obj=obj, colour=c, place=place)
        if kind == "place":
            v = rng.choice(PUT)
            caps.append(rng.choice((
                f"{p} {v} {his} {c} {n} on the {pl}.",
                f"{p} walks over to the {pl} and {v} {_art(c)} {c} {n} there before turning away.",
                f"{_art(c).capitalize()} {c} {n} is {rng.choice(PUT_PAST)} on the {pl} by {p}, who then walks off.",
                f"{p} comes in holding {_art(c)} {c} {n}, {v} it on the {pl} and leaves the {stream.replace('_', ' ')}.",
                f"Someone, {p}, {v} {his} {c} {n} down on the {pl} and looks at {his} phone.",
            )))
            if rng.random() < 0.3:
                caps.append(f"The {c} {n} stays on the {pl}; {p} is no longer in view.")
        else:
            v = rng.choice(TAKE)
            caps.append(rng.choice((
                f"{p} {v} the {c} {n} from the {pl}.",
                f"{p} reaches for the {c} {n} on the {pl}, {v} it and carries it away.",
                f"The {c} {n} that lay on the {pl} is taken by {p}.",
                f"{p} stops at the {pl}, {v} {his} {c} {n} and heads out of view.",
            )))
    elif kind == "door":
        act = rng.choice(("leave", "arrive", "knock", "lock"))
        jacket = rng.choice(OBJECTS["jacket"][:2])
        ev.attrs = dict(person=p, action=act, colour=c)
        caps.append({
            "leave": rng.choice((f"{p} opens the front door and steps outside wearing {_art(c)} {c} {jacket}.",
                                 f"The front door swings open and {p}, in {_art(c)} {c} {jacket}, walks out and down the path.",
                                 f"{p} leaves the house through the front door in {his} {c} {jacket}.")),
            "arrive": rng.choice((f"{p} comes up the path in {_art(c)} {c} {jacket}, unlocks the front door and goes in.",
                                  f"The front door opens and {p} arrives home wearing {_art(c)} {c} {jacket}.",
                                  f"{p}, dressed in {_art(c)} {c} {jacket}, enters the house through the front door.")),
            "knock": rng.choice((f"A visitor in {_art(c)} {c} {jacket} knocks on the front door and waits; {p} opens it.",
                                 f"Someone in {_art(c)} {c} {jacket} rings the doorbell and {p} answers the door.")),
            "lock": rng.choice((f"{p} closes the front door and turns the key in the lock.",
                                f"{p} shuts the front door behind {his} and locks it.")),
        }[act])
        if rng.random() < 0.35:
            caps.append(rng.choice(("The front door is now closed and the porch is empty again.",
                                    "The door clicks shut and the entrance is quiet.")))
    elif kind == "delivery":
        k = rng.randint(1, 5)
        courier = rng.choice(COURIERS).format(c=c)
        place = rng.choice(("doorstep", "porch bench", "doormat"))
        box = PACKAGE if k == 1 else PACKAGES
        what = f"{NUMBERS[k] if rng.random() < 0.7 else k} {rng.choice(box)}"
        bc = rng.choice(("brown", "white", "grey"))
        ev.attrs = dict(count=k, colour=c, place=place, box_colour=bc)
        pl = _place_words(rng, stream, place)
        caps.append(rng.choice((
            f"{courier.capitalize()} walks up to the door and leaves {what} on the {pl}.",
            f"{courier.capitalize()} drops off {what}, {bc} and taped shut, on the {pl}, then rings the bell.",
            f"A delivery arrives: {courier} stacks {what} on the {pl} and takes a photo of them.",
        )))
        if rng.random() < 0.4:
            caps.append(f"{p} opens the door and carries the {rng.choice(PACKAGES if k > 1 else PACKAGE)} inside.")
            ev.attrs["picked_by"] = p
    elif kind == "arm_stack":
        k = rng.randint(2, 6)
        arm, blk = rng.choice(ARM), rng.choice(BLOCKS)
        target = rng.choice(("tray", "conveyor", "pallet"))
        ev.attrs = dict(count=k, colour=c, target=target)
        caps.append(rng.choice((
            f"{arm.capitalize()} picks {NUMBERS[k]} {c} {blk} out of the bin one by one and stacks them on the {target}.",
            f"{arm.capitalize()} moves {NUMBERS[k]} {c} {blk} from the parts bin to the {target}, "
            f"placing them in a neat row.",
            f"In the robot cell, {arm} builds a tower of {NUMBERS[k]} {c} {blk} on the {target}.",
        )))
        if rng.random() < 0.3:
            caps.append(f"{arm.capitalize()} returns to its home position next to the {target} of {c} {blk}.")
    elif kind == "arm_hand":
        arm = rng.choice(ARM)
        obj = rng.choice(("wrench", "drill", "toolbox"))
        n = rng.choice(OBJECTS[obj])
        ev.attrs = dict(person=p, obj=obj, colour=c)
        caps.append(rng.choice((
            f"{arm.capitalize()} hands {_art(c)} {c} {n} to {p}, who takes it to the workbench.",
            f"{p} stands by the robot cell while {arm} passes {his} the {c} {n}.",
        )))
    elif kind == "arm_fault":
        arm = rng.choice(ARM)
        light = rng.choice(("red", "orange", "yellow"))
        ev.attrs = dict(colour=light, person=p)
        caps.append(rng.choice((
            f"{arm.capitalize()} stops mid-motion and its status light turns {light}; {p} walks over to check it.",
            f"The warning lamp on {arm} flashes {light} and the arm freezes until {p} presses the reset button.",
        )))
    elif kind == "kitchen":
        what = rng.choice(("coffee", "dishes", "apples", "fridge"))
        k = rng.randint(2, 7)
        ev.attrs = dict(person=p, action=what, colour=c, count=k)
        caps.append({
            "coffee": rng.choice((f"{p} makes coffee with the {c} kettle and pours it into a mug.",
                                  f"{p} boils water in the {c} kettle and brews a cup of coffee.")),
            "dishes": rng.choice((f"{p} washes {NUMBERS[k]} plates at the sink and stacks them on the rack.",
                                  f"At the sink, {p} rinses {NUMBERS[k]} dishes and puts them in the drying rack.")),
            "apples": rng.choice((f"{p} puts {NUMBERS[k]} {c} apples into the fruit bowl on the table.",
                                  f"{p} fills the fruit bowl with {NUMBERS[k]} {c} apples.")),
            "fridge": rng.choice((f"{p} opens the fridge, takes out a carton of milk and closes the door.",
                                  f"{p} looks into the open fridge for a while and pulls out some cheese.")),
        }[what])
    elif kind == "cat":
        place = rng.choice(list(PLACES[stream]))
        cc = rng.choice(("ginger", "black", "grey", "tabby"))
        ev.attrs = dict(colour=cc, place=place)
        pl = _place_words(rng, stream, place)
        caps.append(rng.choice((f"A {cc} cat jumps onto the {pl} and sniffs around.",
                                f"The {cc} cat walks slowly past the {pl} and lies down.",
                                f"A small {cc} cat curls up next to the {pl}.")))
    elif kind == "vacuum":
        ev.attrs = dict()
        caps.append(rng.choice(("The robot vacuum leaves its dock and cleans along the hallway floor.",
                                "A round robot vacuum cleaner moves across the rug and returns to its dock.")))
    else:  # idle
        pl = _place_words(rng, stream, rng.choice(list(PLACES[stream])))
        caps.append(rng.choice(IDLE[stream]).format(pl=pl))
    for i, main in enumerate(caps):
        ev.captions.append(_finish(rng, main, stream, hour))
    return ev


def make_events(seed: int = SEED, start: datetime = START, now: datetime = NOW) -> list[Event]:
    """The log's events, in time order per stream: ~35 events a day a stream, busier mornings and evenings."""
    rng = random.Random(seed)
    events: list[Event] = []
    day = start
    while day < now:
        for stream in STREAMS:
            n = rng.randint(110, 140)
            for _ in range(n):
                hour = rng.choices(range(24), weights=[1, 1, 1, 1, 1, 2, 5, 8, 8, 6, 5, 5, 6, 5, 5, 5, 6, 7,
                                                       8, 8, 7, 5, 3, 2])[0]
                wall = day + timedelta(hours=hour, seconds=rng.randrange(0, 3600 // 16) * 16)
                if wall >= now:
                    continue
                events.append(_make_event(rng, stream, wall.timestamp()))
        day += timedelta(days=1)
    # lay out clips: events of a stream in time order, consecutive 16-s clips, never overlapping the previous event
    events.sort(key=lambda e: (e.stream, e.wall))
    last_end = {}
    for e in events:
        e.wall = max(e.wall, last_end.get(e.stream, 0.0))
        last_end[e.stream] = e.wall + CLIP_S * len(e.captions)
    events = [e for e in events if e.wall + CLIP_S * len(e.captions) <= now.timestamp()]
    return events


def caption_rows(events: list[Event], start: datetime = START) -> list[dict]:
    """Clip rows of the log (sets each event's ids), sorted by wall time then stream."""
    rows = []
    counters = {s: 0 for s in STREAMS}
    for e in sorted(events, key=lambda e: (e.stream, e.wall)):
        for i, cap in enumerate(e.captions):
            idx = counters[e.stream]
            counters[e.stream] += 1
            w0 = e.wall + i * CLIP_S
            t0 = w0 - start.timestamp()
            cid = f"{e.stream}:{idx}"
            e.ids.append(cid)
            rows.append({"id": cid, "stream": e.stream, "index": idx, "t_start": t0, "t_end": t0 + CLIP_S,
                         "wall_start": w0, "wall_end": w0 + CLIP_S,
                         "time": datetime.fromtimestamp(w0, timezone.utc).isoformat(), "caption": cap})
    rows.sort(key=lambda r: (r["wall_start"], r["stream"]))
    return rows


# ---------------------------------------------------------------------------------------------- questions

def _windows(now: datetime) -> list[tuple[str, datetime, datetime]]:
    """Time expressions and their windows, resolved against `now` (see the module doc)."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    yday, dby = today - timedelta(days=1), today - timedelta(days=2)
    h = lambda d, a, b: (d + timedelta(hours=a), min(d + timedelta(hours=b), now))  # noqa: E731
    out = [("this morning", *h(today, 6, 12)), ("this afternoon", *h(today, 12, 18)),
           ("this evening", *h(today, 18, 24)), ("yesterday", *h(yday, 0, 24)),
           ("yesterday morning", *h(yday, 6, 12)), ("yesterday afternoon", *h(yday, 12, 18)),
           ("yesterday evening", *h(yday, 18, 24)), ("on Monday", *h(dby, 0, 24)),
           ("on Monday morning", *h(dby, 6, 12)), ("on Monday afternoon", *h(dby, 12, 18)),
           ("on Monday evening", *h(dby, 18, 24)), ("in the last two hours", now - timedelta(hours=2), now),
           ("in the last hour", now - timedelta(hours=1), now), ("since noon today", *h(today, 12, 24)),
           ("today", *h(today, 0, 24))]
    for hr, word in ((9, "9 am"), (11, "11 am"), (15, "3 pm"), (17, "5 pm"), (19, "7 pm")):
        out.append((f"around {word} yesterday", yday + timedelta(hours=hr - 0.5), yday + timedelta(hours=hr + 0.5)))
    return out


def _q_templates(e: Event, rng: random.Random) -> list[tuple[str, str, tuple[str, ...]]]:
    """(kind, question, attributes it names) candidates for an event; the answer set is every event of the same
    kind and stream-agnostic attributes equal on the named ones."""
    a = e.attrs
    out = []
    if e.kind in ("place", "take"):
        p, c, obj, place = a["person"], a["colour"], a["obj"], a["place"]
        syn = rng.choice(OBJECTS[obj][1:])
        psyn = rng.choice(PLACES[e.stream][place])
        if e.kind == "place":
            out += [("paraphrase", f"Where did {p} leave the {c} {OBJECTS[obj][0]}?", ("person", "colour", "obj")),
                    ("synonym", f"Who set a {c} {syn} down on the {psyn}?", ("colour", "obj", "place")),
                    ("name", f"What did {p} put on the {psyn}?", ("person", "place")),
                    ("colour", f"When was the {c} {OBJECTS[obj][0]} put down?", ("colour", "obj")),
                    ("paraphrase", f"Did anybody drop off {_art(c)} {c} {syn} somewhere in the "
                                   f"{e.stream.replace('_', ' ')}?", ("colour", "obj", "stream"))]
        else:
            out += [("paraphrase", f"When did {p} take the {c} {OBJECTS[obj][0]} away?", ("person", "colour", "obj")),
                    ("synonym", f"Who picked up the {c} {syn} from the {psyn}?", ("colour", "obj", "place")),
                    ("name", f"What did {p} grab from the {psyn}?", ("person", "place"))]
    elif e.kind == "door":
        p, act, c = a["person"], a["action"], a["colour"]
        q = {"leave": (f"When did {p} head out of the house?", f"Who went out wearing {_art(c)} {c} coat?"),
             "arrive": (f"When did {p} get home?", f"Who came in through the entrance in {_art(c)} {c} coat?"),
             "knock": (f"Who answered the door to the visitor in the {c} coat?", f"When did {p} let a caller in?"),
             "lock": (f"When did {p} lock up the front door?", "Who bolted the entrance?")}[act]
        out += [("name", q[0], ("person", "action")), ("colour", q[1], ("colour", "action"))
                if act != "lock" else ("paraphrase", q[1], ("action",))]
    elif e.kind == "delivery":
        k, c = a["count"], a["colour"]
        out += [("count", f"When {'were' if k > 1 else 'was'} {NUMBERS[k]} {rng.choice(PACKAGES if k > 1 else PACKAGE)} delivered?",
                 ("count",)),
                ("colour", f"What did the courier in {c} bring, and how many items?", ("colour",)),
                ("count", f"How many parcels did the delivery person in {c} drop at the door?", ("colour", "count"))]
        if "picked_by" in a:
            out.append(("name", f"When did {a['picked_by']} carry a delivery into the house?", ("picked_by",)))
    elif e.kind == "arm_stack":
        k, c, t = a["count"], a["colour"], a["target"]
        out += [("count", f"When did the robot stack {NUMBERS[k]} {c} cubes?", ("count", "colour")),
                ("synonym", f"When did the manipulator move {c} bricks onto the {t}?", ("colour", "target")),
                ("paraphrase", f"How many {c} blocks did the robotic arm place on the {t}?", ("colour", "target"))]
    elif e.kind == "arm_hand":
        p, c, obj = a["person"], a["colour"], a["obj"]
        out += [("name", f"What did the robot give {p}?", ("person",)),
                ("synonym", f"When did the arm pass over the {c} {rng.choice(OBJECTS[obj][1:])}?", ("colour", "obj"))]
    elif e.kind == "arm_fault":
        out += [("colour", f"When did the robot arm's light go {a['colour']}?", ("colour",)),
                ("paraphrase", f"When did the arm halt with a fault that {a['person']} had to clear?", ("person",))]
    elif e.kind == "kitchen":
        p, act, c, k = a["person"], a["action"], a["colour"], a["count"]
        q = {"coffee": ("paraphrase", f"When did {p} brew a coffee using the {c} kettle?", ("person", "action", "colour")),
             "dishes": ("count", f"When did {p} do the washing up of {NUMBERS[k]} plates?", ("person", "action", "count")),
             "apples": ("count", f"When did {p} add {NUMBERS[k]} {c} apples to the bowl?", ("person", "action", "count", "colour")),
             "fridge": ("name", f"When did {p} get something out of the refrigerator?", ("person", "action"))}[act]
        out.append(q)
    return out


def _matches(e: Event, kind: str, attrs: dict, names: tuple[str, ...]) -> bool:
    return e.kind == kind and all((e.stream == attrs["stream"]) if k == "stream" else e.attrs.get(k) == attrs.get(k)
                                  for k in names)


def make_questions(events: list[Event], seed: int = SEED, now: datetime = NOW, n_plain: int = 170,
                   n_timed: int = 90) -> list[dict]:
    """Questions with complete answer sets: plain ones (answer set <= 4 events over the whole log) and timed ones
    (a time expression; answer set = matching events inside its window, 1-4 of them, and at least one matching
    event outside it, so the window matters)."""
    rng = random.Random(seed + 1)
    wins = _windows(now)
    pool = [e for e in events if e.kind not in ("idle", "cat", "vacuum")]
    rng.shuffle(pool)
    out, seen = [], set()
    plain = timed = 0
    for e in pool:
        templates = _q_templates(e, rng)
        rng.shuffle(templates)
        for kind, q, names in templates:
            if q in seen:
                continue
            hits = [x for x in events if _matches(x, e.kind, {**e.attrs, "stream": e.stream}, names)]
            if plain < n_plain and len(hits) <= 4 and rng.random() < 0.5:
                seen.add(q)
                plain += 1
                out.append({"question": q, "answers": [i for x in hits for i in x.ids], "kind": kind,
                            "time_expression": None, "from": None, "to": None})
                break
            if timed < n_timed and len(hits) >= 2:
                fitting = [w for w in wins if w[1].timestamp() <= e.wall < w[2].timestamp()]
                rng.shuffle(fitting)
                for expr, w0, w1 in fitting:
                    inside = [x for x in hits if w0.timestamp() <= x.wall < w1.timestamp()]
                    if 1 <= len(inside) <= 4 and len(inside) < len(hits):
                        tq = q.rstrip("?") + f" {expr}?"
                        if tq in seen:
                            continue
                        seen.add(tq)
                        timed += 1
                        out.append({"question": tq, "answers": [i for x in inside for i in x.ids], "kind": "time",
                                    "time_expression": expr, "from": w0.isoformat(), "to": w1.isoformat()})
                        break
                else:
                    continue
                break
        if plain >= n_plain and timed >= n_timed:
            break
    for i, row in enumerate(out):
        row["id"] = f"q{i + 1:04d}"
        row["now"] = now.isoformat()
    return [{k: r[k] for k in ("id", "question", "answers", "kind", "now", "from", "to", "time_expression")}
            for r in out]


# ---------------------------------------------------------------------------------------------- scale

def scale_captions(n: int, streams: int = 1, seed: int = SEED, start: datetime = START,
                   busy: float = 0.35) -> Iterator[dict]:
    """`n` consecutive 16-s clips spread round-robin over `streams` cameras (every clip captioned, as rlivs does):
    each is an event caption with probability `busy`, else an idle scene caption. Rows as in caption_log.jsonl."""
    rng = random.Random(seed)
    names = [STREAMS[i % len(STREAMS)] + ("" if i < len(STREAMS) else f"{i // len(STREAMS)}") for i in range(streams)]
    t0 = start.timestamp()
    for j in range(n):
        s, idx = names[j % streams], j // streams
        base = s.rstrip("0123456789")
        wall = t0 + idx * CLIP_S
        kind = None if rng.random() < busy else "idle"
        ev = _make_event(rng, base, wall, kind)
        yield {"id": f"{s}:{idx}", "stream": s, "index": idx, "t_start": idx * CLIP_S, "t_end": (idx + 1) * CLIP_S,
               "wall_start": wall, "wall_end": wall + CLIP_S, "caption": ev.captions[0]}


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    events = make_events(seed)
    rows = caption_rows(events)
    return rows, make_questions(events, seed)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE, help="folder for caption_log.jsonl and questions.jsonl")
    ap.add_argument("--check", action="store_true", help="regenerate in memory; exit 1 if the files differ")
    args = ap.parse_args(argv)
    rows, questions = build()
    files = {"caption_log.jsonl": _jsonl(rows), "questions.jsonl": _jsonl(questions)}
    if args.check:
        stale = [n for n, text in files.items() if not (args.out / n).exists() or (args.out / n).read_text() != text]
        print("stale: " + ", ".join(stale) if stale else "up to date")
        return 1 if stale else 0
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(json.dumps({"captions": len(rows), "questions": len(questions),
                      "timed": sum(q["from"] is not None for q in questions)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
