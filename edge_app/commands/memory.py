"""`rlivs memory info|export|import|check`, `rlivs forget` and `rlivs reindex`: what a memory holds, captions in and out as
JSON lines (or an MCAP file for Foxglove), retention and index rebuilds. Only `memory import` loads a model (to
recompute the retrieval vectors of imported captions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rlivs.edge_app import options as o
from rlivs.edge_app.options import console, fail as _fail
from rlivs.runtime.errors import UserError
from rlivs.runtime.validate import terminal_safe

out = Console()
memory_app = typer.Typer(help="What a memory holds; its captions out and in.", no_args_is_help=True)
DbOption = o.db_option()


def _open(db: Path, readonly: bool = True, engine=None):
    from rlivs.runtime.memory import Memory

    if not db.exists():
        _fail(f"{db} does not exist: check --db (rlivs ingest VIDEO --db {db} creates it)")
    return Memory(db, model_fingerprint=engine.model_fingerprint if engine else None, readonly=readonly)


def _backbone_label(fingerprint: Optional[dict]) -> Optional[str]:
    """The model family that wrote a memory, as people read it ('Qwen2.5-VL'); None when it was not recorded."""
    from rlivs.runtime.backbones import REGISTRY

    name = (fingerprint or {}).get("backbone")
    return None if name is None else REGISTRY[name].label if name in REGISTRY else str(name)


def _span(a: Optional[float], b: Optional[float]) -> str:
    from rlivs.runtime.answer import format_wall

    return "-" if a is None else f"{format_wall(a)} to {format_wall(b)}"


@memory_app.command("info")
def info(db: Path = DbOption, json_out: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Streams, models, clip counts, stream-time and wall-clock spans, and the file's size."""
    from rlivs.runtime.answer import format_time, wall_iso

    try:
        with _open(db) as memory:
            data = memory.info()
    except UserError as e:
        _fail(str(e))
    data["backbone"] = _backbone_label(data["model"])
    if json_out:
        for s in data["streams"]:
            s["wall_start"], s["wall_end"] = wall_iso(s["wall_start"]), wall_iso(s["wall_end"])
        typer.echo(json.dumps(data))
        return
    family = data["backbone"] or "not recorded (written before rlivs recorded the model family)"
    table = Table("stream", "model", "clips", "stream time", "wall-clock (local)", "next clip", "source",
                  title=f"{db}: {data['clips']} clips, {data['bytes'] / 1e6:.1f} MB, schema v{data['schema_version']}, "
                        f"backbone {family}")
    for s in data["streams"]:
        t = "-" if s["t_start"] is None else f"{format_time(s['t_start'])}-{format_time(s['t_end'])}"
        clock = _span(s["wall_start"], s["wall_end"]) + (f" ({s['no_clock']} without)" if s["no_clock"] and
                                                         s["wall_start"] is not None else "")
        clips = str(s["n_clips"]) + (f" (+{s['n_idle']} idle)" if s["n_idle"] else "")  # idle: gated, not captioned
        table.add_row(*(Text(terminal_safe(str(v))) for v in (s["name"], s["model_id"])), clips, t, clock,
                      str(s["next_idx"]), Text(terminal_safe(str(s["source"]))))
    out.print(table)


@memory_app.command("export")
def export(
    out_path: Path = typer.Argument(..., metavar="OUT", help="Where to write (- for stdout with JSON lines)."),
    db: Path = DbOption,
    stream: Optional[str] = typer.Option(None, "--stream", help="Only this stream."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl: captions and times; mcap: for Foxglove's timeline."),
    time: Optional[str] = o.ExportTime,
):
    """Write the captions out: JSON lines (stream, clip, times, caption; `memory import` reads them back) or MCAP."""
    writers = {"jsonl": _export_jsonl, "mcap": _export_mcap}
    if fmt not in writers:
        _fail(f"--format {fmt!r} is unknown: use one of {', '.join(writers)}")
    if time is not None and fmt != "mcap":
        _fail(f"--time applies to --format mcap (Foxglove's timeline); leave it out for --format {fmt}")
    try:
        n = writers[fmt](db, out_path, stream) if fmt != "mcap" else _export_mcap(db, out_path, stream, time or "log")
    except UserError as e:
        _fail(str(e))
    console.print(f"{n} clips written to {out_path}")


def _export_jsonl(db: Path, out_path: Path, stream: Optional[str]) -> int:
    with _open(db) as memory:
        if str(out_path) == "-":
            return memory.export_jsonl(sys.stdout, stream)
        tmp = out_path.with_name(out_path.name + ".partial")
        with open(tmp, "w", encoding="utf-8") as fp:
            n = memory.export_jsonl(fp, stream)
        tmp.replace(out_path)  # a complete file or none
        return n


def _export_mcap(db: Path, out_path: Path, stream: Optional[str], time: str = "log") -> int:
    try:
        from rlivs.edge_app.foxglove import write_mcap
    except ImportError as e:
        raise UserError(f"MCAP export needs the robotics extra ({e}): pip install 'rlivs[robotics]'") from None
    if str(out_path) == "-":
        raise UserError("MCAP is binary: pass a file name, e.g. captions.mcap")
    report = write_mcap(db, out_path, streams=None if stream is None else [stream], thumbnails=True, time=time)
    for name, note in report.time_notes.items():
        console.print(f"[dim]{escape(name)}: {escape(note)}[/]")
    if report.guessed_times:
        console.print(f"[dim]{report.guessed_times} clips had no clock time: placed at their stream's creation time "
                      f"plus stream time[/]")
    return report.clips


@memory_app.command("import")
def import_(
    in_path: Path = typer.Argument(..., metavar="JSONL", help="Captions as `rlivs memory export` writes them."),
    db: Path = DbOption,
    model: str = o.Model, bundle: Optional[Path] = o.Bundle, backend: str = o.Backend, device: str = o.Device,
    dtype: str = o.Dtype, threads: Optional[int] = o.Threads,
):
    """Add captions from JSON lines, all or nothing; their retrieval vectors are recomputed with the current model.

    Every line is checked first (before the model loads): one JSON object per line with stream, index, t_start,
    t_end, caption (wall_start/wall_end optional), by the rules ingest and the API use; each stream's clips must
    continue it in increasing index order (gaps are fine: idle and forgotten clips leave them). The first bad line is refused with its number and the reason, and nothing is written. The clips
    are then stored in one transaction: a failure leaves the memory as it was.
    """
    if not in_path.is_file():
        _fail(f"{in_path} does not exist or is not a file: pass a .jsonl written by rlivs memory export")
    try:
        rows = _read_jsonl(in_path)
        if not rows:
            console.print(f"{in_path} holds no clips: nothing imported")
            return
        _check_continues(rows, in_path, db)
        ec = o.check_engine(o.engine_config(model, bundle, backend, device, dtype, threads, "auto", None))
        from rlivs.runtime.engine import load_engine
        from rlivs.runtime.memory import ClipRecord, Memory

        with console.status(f"loading model {ec.source} ..."):
            engine = load_engine(ec, o.pipeline_config())
        records = []  # vectors first, then one short write transaction (ingest into the same --db is not held up)
        with console.status(f"computing {len(rows)} retrieval vectors ..."):
            for _, r in rows:
                ids = engine.text.encode(r.caption)
                records.append(ClipRecord(r.stream, r.index, r.t_start, r.t_end, r.caption, len(ids),
                                          engine.vector(ids), 0.0, r.wall_start, r.wall_end))
        with Memory(db, model_fingerprint=engine.model_fingerprint) as memory:
            n = memory.import_clips(records, source=f"import:{in_path.name}", model_id=engine.backend.info.model_id)
    except UserError as e:
        _fail(str(e))
    console.print(f"{n} clips imported into {db}")


def _read_jsonl(path: Path) -> list:
    """[(line number, CheckedRow)] of a JSON-lines file, or UserError naming the first bad line and why. Lines are read
    with a size bound (validate.MAX_ROW_BYTES), so a huge line is refused without being read whole."""
    from rlivs.runtime.validate import MAX_CAPTION_CHARS, MAX_ROW_BYTES, check_clip_row

    def refuse_constant(name: str):
        raise ValueError(f"{name} is not a number JSON allows")

    rows = []
    with open(path, "rb") as fp:
        line_no = 0
        while True:
            raw = fp.readline(MAX_ROW_BYTES + 2)
            if not raw:
                return rows
            line_no += 1
            where = f"{path}:{line_no}"
            line = raw.rstrip(b"\r\n")
            if len(line) > MAX_ROW_BYTES:
                raise UserError(f"{where} is longer than {MAX_ROW_BYTES} bytes, the bound of a clip line (a caption "
                                f"holds at most {MAX_CAPTION_CHARS} characters); nothing was imported")
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                line = line[3:]
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{where} is not UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}): write "
                                f"the file as UTF-8; nothing was imported") from None
            try:
                row = json.loads(text, parse_constant=refuse_constant)
            except RecursionError:
                raise UserError(f"{where} nests too deeply to be a clip: each line must be one clip object; nothing "
                                f"was imported") from None
            except ValueError as e:
                raise UserError(f"{where} is not JSON ({e}): each line must be one clip object; nothing was "
                                f"imported") from None
            try:
                rows.append((line_no, check_clip_row(row)))
            except UserError as e:
                raise UserError(f"{where}: {e}; nothing was imported") from None


def _check_continues(rows: list, path: Path, db: Path) -> None:
    """Each stream's rows continue it: past the memory's next clip (0 for a new stream), indices strictly increasing.
    Gaps are accepted (the activity gate's idle clips and retention's deleted clips leave them in an export); a clip
    already in the memory, given twice or going backwards is refused with its line before the model loads."""
    next_idx: dict[str, int] = {}
    if db.exists() and db.stat().st_size:
        with _open(db) as memory:
            next_idx = {s["name"]: s["next_idx"] for s in memory.info()["streams"]}
    stored = dict(next_idx)  # the memory's own next clip of each stream
    lines: dict[tuple[str, int], int] = {}  # (stream, index) -> line number of that clip in this file
    for line_no, r in rows:
        expected = next_idx.get(r.stream, 0)
        if r.index < expected:
            where = f"{path}:{line_no}: clip {r.index} of stream {r.stream!r}"
            first = stored.get(r.stream, 0)
            if r.index < first:
                why = f"is already in {db} (its next clip is {first})"
            elif (r.stream, r.index) in lines:
                why = f"repeats line {lines[r.stream, r.index]}"
            else:
                why = f"goes backwards: the stream's clips before it in the file reach clip {expected - 1}"
            raise UserError(f"{where} {why}; nothing was imported: each stream's clips must continue it in "
                            f"increasing order (import into a new --db or under a new stream name)")
        next_idx[r.stream] = r.index + 1
        lines[r.stream, r.index] = line_no


def forget(
    db: Path = DbOption,
    stream: Optional[str] = typer.Option(None, "--stream", help="This stream (all of it, unless --before)."),
    before: Optional[str] = typer.Option(None, "--before", help="Clips that ended before this time: ISO 8601, -30d, "
                                                                 "yesterday, ..."),
    allow_future: bool = typer.Option(False, "--allow-future", help="Accept a --before time in the future: every clip "
                                                                     "with a clock time is deleted."),
    yes: bool = typer.Option(False, "--yes", help="Do it without asking (needed where no terminal can answer, e.g. in "
                                                  "a script)."),
):
    """Delete captions for good: a whole stream, everything older than a time, or both. Space goes back to the disk.

    A --before time in the future deletes every clip that has a clock time: it is refused unless --allow-future is
    given too (--yes only skips the question)."""
    import time

    from rlivs.runtime.answer import format_wall

    try:
        cut = None if before is None else o.start_clock(before, "--before")
        if stream is None and cut is None:
            raise UserError("rlivs forget needs --stream, --before or both (e.g. --before -30d)")
        if cut is not None and cut > time.time() and not allow_future:
            raise UserError(f"--before {before!r} is {format_wall(cut)}, in the future: it would delete every clip "
                            f"with a clock time{' of stream ' + repr(stream) if stream else ''}, not only old ones. "
                            f"Give a past time (e.g. --before -30d), or add --allow-future if that is what you want "
                            f"(--yes alone does not)")
        what = (f"stream {stream!r}" if stream else "every stream") + \
            (f": clips that ended before {format_wall(cut)}" if cut is not None else " (all of it, FIFO included)")
        if not yes and not sys.stdin.isatty():  # nobody to answer the question: refused, not "Aborted"
            raise UserError(f"rlivs forget asks before deleting, and there is no terminal to answer: pass --yes to "
                            f"forget {what} in {db}")
        if not yes and not typer.confirm(f"forget {what} in {db}?"):
            console.print("nothing forgotten: you answered no")
            return
        with _open(db, readonly=False) as memory:
            n = memory.forget(stream=stream, before=cut)
    except UserError as e:
        _fail(str(e))
    console.print(f"forgot {n} clips of {what}")


@memory_app.command("check")
def check(db: Path = DbOption):
    """Check that the packed search columns (ids, signatures, streams, times; schema 4) agree with the clips."""
    try:
        with _open(db) as memory:
            problems = memory.check_packs()
            n = memory.count_clips()
    except UserError as e:
        _fail(str(e))
    if problems:
        _fail(f"{db}: the packed search columns disagree with the clips ({'; '.join(problems[:5])}): run "
              f"`rlivs reindex --db {db}` to rebuild them from the clips")
    console.print(f"{db}: the packed search columns agree with its {n} clips")


def reindex(db: Path = DbOption):
    """Rebuild the keyword index, the vector signatures and their packed copy from the stored clips (after a damaged
    index)."""
    try:
        with _open(db, readonly=False) as memory:
            memory.reindex()
            n = memory.count_clips()
    except UserError as e:
        _fail(str(e))
    console.print(f"reindexed {n} clips in {db}")


def register(app: typer.Typer) -> None:
    """Add `rlivs memory ...`, `forget` and `reindex` to the CLI."""
    app.add_typer(memory_app, name="memory")
    app.command("forget")(forget)
    app.command("reindex")(reindex)
