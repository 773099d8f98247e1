"""`rlivs ingest`, `ask`, `captions` and `demo`: a video into an on-device memory, questions and the caption timeline
from it, and the whole job on the embedded default. torch and the model load inside the commands."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from rlivs.edge_app import options as o
from rlivs.edge_app.options import console, fail as _fail
from rlivs.runtime.config import EngineConfig
from rlivs.runtime.errors import UserError
from rlivs.runtime.validate import check_stream_name, terminal_safe

out = Console()


_SHARED: dict | None = None  # set by `rlivs demo` only: its ingest and its question share one model load


def _engine(engine: EngineConfig, config):
    from rlivs.runtime.engine import Engine, load_engine

    loaded = _SHARED.get(engine) if _SHARED is not None else None
    if loaded is not None and loaded.config.probe == config.probe:  # the same model and probe layers: no reload
        return Engine(loaded.backend, loaded.text, loaded.preprocess, config)
    with console.status(f"loading model {engine.source} ..."):
        loaded = load_engine(engine, config)
    if _SHARED is not None:
        _SHARED[engine] = loaded
    return loaded


def _open_memory(db: Path, engine=None, readonly: bool = False):
    from rlivs.runtime.memory import Memory

    if readonly and not db.exists():
        _fail(f"{db} does not exist: ingest a video first with rlivs ingest VIDEO --db {db}")
    return Memory(db, model_fingerprint=engine.model_fingerprint if engine else None, readonly=readonly)


def _refuse_unknown_stream(db: Path, stream: Optional[str]) -> list[dict]:
    """The memory's streams; an unknown --stream is refused with the names it holds. Reads the memory only."""
    with _open_memory(db, readonly=True) as memory:
        streams = memory.streams()
    if stream is not None and stream not in {s["name"] for s in streams}:
        names = ", ".join(f"{s['name']} ({s['n_clips']} clips)" for s in streams) or "none yet"
        _fail(f"{db} has no stream {stream!r}; its streams: {names}. Pass one of them with --stream, or leave "
              f"--stream out for all")
    return streams


def _already_ingested(db: Path, stream: str, video: Path, total: int | None, config) -> int | None:
    """The clip count of `stream` when it already holds every clip of this video with these settings (so nothing
    needs the model), else None."""
    if total is None or not db.exists():
        return None
    with _open_memory(db, readonly=True) as memory:
        row = next((s for s in memory.streams() if s["name"] == stream), None)
    if row is None or row["source"] != str(video) or row["config_hash"] != config.ingest_fingerprint():
        return None
    return row["next_idx"] if row["next_idx"] >= total else None  # captioned and gated (idle) clips alike


def _say_clock(source, video: Path) -> None:
    from rlivs.runtime.answer import format_wall

    if getattr(source, "clock_origin", None) is None:
        console.print(f"[dim]no clock time for {video.name} (no creation-time tag): captions carry stream time "
                      f"only; pass --start-time 2026-12-01T15:00 to give them wall-clock times[/]")
    else:
        console.print(f"[dim]clock: {format_wall(source.clock_origin)} local at 0 s ({getattr(source, 'clock_kind', None) or 'recording'})[/]")


def _say_complete(db: Path, stream: str, video: Path, n: int) -> None:
    console.print(f"already ingested up to clip {n - 1}: stream {stream!r} in {db} holds all {n} clips of {video}; "
                  f"nothing to do (rlivs ask \"...\" --db {db} asks about it; another --stream name ingests it again)")


def ingest(
    video: Path = typer.Argument(..., help="Video file to ingest (anything PyAV/FFmpeg decodes), or a robot recording: "
                                           "a ROS 1 .bag, a ROS 2 .db3/.mcap or rosbag2 folder, a plain .mcap."),
    db: Path = o.db_option("SQLite memory (created or resumed)."),
    stream: Optional[str] = typer.Option(None, "--stream", help="Stream name inside the memory (default: 'default'; "
                                                                 "for a recording, the file's name)."),
    topic: List[str] = typer.Option([], "--topic", help="Image topic of a recording, repeatable: each is a stream "
                                                        "(STREAM.TOPIC). Left out: the only image topic, or a list "
                                                        "of them to pick from."),
    model: str = o.Model, bundle: Optional[Path] = o.Bundle, backend: str = o.Backend, device: str = o.Device,
    dtype: str = o.Dtype, threads: Optional[int] = o.Threads, kv_cache: str = o.KvCache,
    max_context: Optional[int] = o.MaxContext,
    fps: float = o.Fps, frames_per_clip: int = o.FramesPerClip, keep: Optional[int] = o.Keep,
    keep_ratio: float = o.KeepRatio, strategy: str = o.Strategy, fifo_clips: Optional[int] = o.FifoClips,
    fifo_tokens: Optional[int] = o.FifoTokens, probe_layers: Optional[str] = o.ProbeLayers,
    num_probe_layers: int = o.NumProbeLayers, max_caption_tokens: int = o.MaxCaptionTokens,
    fifo_positions: str = o.FifoPositions,
    max_clips: Optional[int] = typer.Option(None, help="Stop after this many clips (this run)."),
    start_time: Optional[str] = o.StartTime,
    gate: List[str] = o.Gate, gate_threshold: List[str] = o.GateThreshold, gate_max_idle: List[str] = o.GateMaxIdle,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON line per clip."),
    debug_scores: Optional[Path] = typer.Option(
        None, "--debug-scores", help="Also write each clip's per-token selection scores and kept tokens to this "
                                     "JSON-lines file (one line per clip; docs/method.md says how to read them)."),
):
    """Caption a video clip by clip into the memory; resumes where a previous run stopped.

    Exit status: 0 done; 2 refused or stopped by an error (what was committed before it stays committed); 3 done,
    but some packets of the video could not be decoded and their frames were skipped, or a recording could not be
    read to its end (truncated or damaged: the frames before were captioned and committed).
    """
    if not video.exists():
        _fail(f"{video} does not exist: check the path")
    from rlivs.runtime.sources.bag import is_recording

    if video.is_dir() and not is_recording(video):
        _fail(f"{video} is a directory: pass a video file (anything FFmpeg decodes: .mp4, .mkv, .ts, ...) or a robot recording")
    if max_clips is not None and max_clips < 1:
        _fail(f"--max-clips must be >= 1, got {max_clips}; leave it out to ingest the whole video")
    if debug_scores is not None and not debug_scores.parent.is_dir():
        _fail(f"--debug-scores {debug_scores}: the folder {debug_scores.parent} does not exist; create it first "
              f"(mkdir -p {debug_scores.parent}) or fix the path")
    ing, done = None, []
    try:
        # everything that can be refused without the model is checked first: flags, the video, the memory's stream
        config = o.pipeline_config(fps=fps, frames_per_clip=frames_per_clip, keep=keep, keep_ratio=keep_ratio,
                                   strategy=strategy, fifo_clips=fifo_clips, fifo_tokens=fifo_tokens,
                                   probe_layers=probe_layers, num_probe_layers=num_probe_layers,
                                   max_caption_tokens=max_caption_tokens, fifo_positions=fifo_positions)
        ec = o.check_engine(o.engine_config(model, bundle, backend, device, dtype, threads, kv_cache, max_context))
        o.check_backbone(ec, config)  # frames per clip the model family cannot group: refused before anything is read
        origin = o.start_clock(start_time)
        if stream is not None:  # a name refused before the model loads and before the memory file is made
            check_stream_name(stream, "--stream")
        from rlivs.edge_app.source_specs import with_topics
        from rlivs.runtime.ingest import StreamIngestor, open_clips
        from rlivs.runtime.sources import open_spec
        from rlivs.runtime.sources.spec import SourceSpec

        # a recording (by its first bytes, not its name): one stream per image topic, checked before the model loads
        from rlivs.runtime.sources.bag import is_recording, name_note
        from rlivs.runtime.sources.spec import derive_name

        note = name_note(video)  # the name says one format, the first bytes another
        if note:
            console.print(f"[yellow]note:[/] {escape(note)}")
        stream = stream or (derive_name(str(video)) if is_recording(video) else "default")
        specs = with_topics([SourceSpec(stream, str(video), "file")], topic)
        gates = o.gate_configs(gate, gate_threshold, gate_max_idle, [(s.name, False) for s in specs])  # files: off
        # not a video, unreadable: refused before the model loads and before the memory is touched; the clock
        # (--start-time, else the file's own) is decided as it is opened
        sources = [(s, open_spec(s, config.clip.fps, clock_origin=origin, live=False)) for s in specs]
        todo = []
        for spec, source in sources:
            _say_clock(source, video)
            total = math.ceil(source.duration / config.clip.clip_seconds) if source.duration else None
            complete = _already_ingested(db, spec.name, video, total, config)
            if complete is not None:
                _say_complete(db, spec.name, video, complete)
            else:
                todo.append((spec, source))
        if not todo:
            return
        o.check_backbone(ec, None, db)  # a memory written by another model family: refused before the model loads
        engine = _engine(ec, config)
        scores_out = None if debug_scores is None else _ScoresFile(debug_scores, engine)
        with _open_memory(db, engine) as memory:
            for spec, source in todo:
                stream = spec.name
                if spec.topic:
                    console.print(f"stream {stream}: topic {spec.topic} of {video}")
                ing = StreamIngestor(engine, memory, stream=stream, source=str(video), gate=gates[stream])
                clips = open_clips(ing, spec, source)  # the same opened file, read from where the stream left off
                results = _run_ingest(ing, clips, source.duration, config, max_clips, json_out, scores_out)
                _say_gate(ing, gates[stream])
                done.append(ing)
                _say_truncated(ing, db, video, config)
                if not results and ing.next_index:
                    _say_complete(db, stream, video, ing.next_index)
    except UserError as e:
        where = ""
        if ing is not None:  # stopped mid-stream: say what is safe (every clip before next_index is committed)
            where = (f" (stream {stream!r} in {db} holds clips 0..{ing.next_index - 1}, all committed; a new run "
                     f"resumes at clip {ing.next_index})" if ing.next_index else f" (stream {stream!r} holds no clips yet)")
        _fail(str(e) + where)
    truncated = [i for i in done if i.source is not None and getattr(i.source, "truncated", None)]
    damaged = [i for i in done if i.source is not None and i.source.decode_errors]
    for ing in damaged:
        topic = getattr(ing.source, "topic", None)  # a recording's messages, or a video's packets
        what, check = (f"messages of {topic}", "its encoding") if topic else ("packets", "the file with ffprobe")
        console.print(f"[bold yellow]damaged input:[/] {video}: {ing.source.decode_errors} {what} could not be decoded "
                      f"and their frames were skipped (first after {ing.source.decode_error_times[0]:.1f} s); every "
                      f"clip was stored from the frames that could be decoded. Check {check}; exit status 3")
    if damaged or truncated:
        raise typer.Exit(3)


def _say_truncated(ing, db: Path, video: Path, config) -> None:
    """A recording that could not be read to its end: what was read is committed; say where it stopped and what
    the stream holds (the run then ends with exit status 3)."""
    why = getattr(ing.source, "truncated", None) if ing.source is not None else None
    if not why:
        return
    n = ing.next_index
    held = (f"stream {ing.stream!r} in {db} holds clips 0..{n - 1}, all committed, the last from the frames read "
            f"before the cut" if n else f"stream {ing.stream!r} holds no clips (no frame was read)")
    console.print(f"[bold yellow]truncated input:[/] {video} ({ing.source.topic}) {why}. Every frame before it was "
                  f"captioned: {held}. A complete copy of the recording resumes at clip {n}; ingest it under "
                  f"another --stream to caption it whole; exit status 3")


class _ScoresFile:
    """--debug-scores: one JSON line per clip with the selection scores of its visual tokens (flat index = group *
    tokens_per_frame + raster position in the group's grid; a group is a frame for LLaVA-OV, a temporal patch of
    `temporal_patch` frames for Qwen2.5-VL) and the indices the FIFO kept."""

    def __init__(self, path: Path, engine):
        self.path, self.per_frame = path, engine.backend.info.tokens_per_frame
        self.temporal_patch = engine.backbone.temporal_patch
        side = math.isqrt(self.per_frame)
        grid = engine.backend.info.grid or (side, side)
        self.grid = [int(g) for g in grid]  # rows, cols of one group's tokens

    def write(self, stream: str, r) -> None:
        line = {"stream": stream, "clip": r.index, "t_start": r.t_start, "t_end": r.t_end,
                "tokens_per_frame": self.per_frame, "temporal_patch": self.temporal_patch, "grid": self.grid,
                "scores": None if r.scores is None else [float(x) for x in r.scores],
                "kept": None if r.kept is None else [int(i) for i in r.kept]}
        with open(self.path, "a", encoding="utf-8") as f:  # appended clip by clip: what was committed is there
            f.write(json.dumps(line) + "\n")


def _run_ingest(ing, clips, dur: float | None, config, max_clips, json_out: bool, scores_out=None) -> list:
    total = math.ceil(dur / config.clip.clip_seconds) if dur else None
    if total is not None and max_clips is not None:
        total = min(total, ing.next_index + max_clips)
    start, t0 = ing.next_index, time.perf_counter()
    columns = [TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=json_out) as bar:
        task = bar.add_task("clips", total=total, completed=start, rate="")

        seen = [0.0]  # video seconds ingested this run

        def on_clip(r):
            seen[0] += r.t_end - r.t_start
            if scores_out is not None and not r.gated:  # an idle clip was never scored
                scores_out.write(ing.stream, r)
            rate = seen[0] / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=r.index + 1, rate=f"{rate:.2f} video s / wall s")
            if json_out:
                line = {"clip": r.index, "t_start": r.t_start, "t_end": r.t_end,
                        "caption": None if r.gated else r.caption, "fifo_tokens": r.fifo_tokens,
                        "decode_errors": ing.source.decode_errors if ing.source else 0, "timings": r.timings}
                if r.gate is not None:
                    line["gate"] = {"caption": r.gate.caption, "reason": r.gate.reason, "score": r.gate.score}
                typer.echo(json.dumps(line))
            elif r.gated:
                bar.console.print(f"[dim][{r.index}] {r.t_start:7.1f}-{r.t_end:7.1f}s idle (score {r.gate.score:.4f}):"
                                  f" not captioned[/]")
            else:
                caption = escape(terminal_safe(r.caption))
                bar.console.print(f"[dim][{r.index}] {r.t_start:7.1f}-{r.t_end:7.1f}s[/] {caption}")

        results = ing.run(clips, on_clip=on_clip, max_clips=max_clips)
    if results:
        wall = time.perf_counter() - t0
        video_s = sum(r.t_end - r.t_start for r in results)
        console.print(f"{len(results)} clips ({video_s:.0f} s of video) in {wall:.1f} s: "
                      f"{video_s / max(wall, 1e-9):.2f} video s per wall s; stream at clip {ing.next_index}")
    return results


def _say_gate(ing, gate) -> None:
    """Whether the activity gate was on for this run, and what it decided (stated either way)."""
    if not gate.enabled:
        console.print("activity gate: off (every clip captioned; --gate on captions only the clips that changed)")
        return
    console.print(f"activity gate: on (threshold {gate.threshold:g}, a caption at least every {gate.max_idle_s:g} s): "
                  f"{ing.captioned} clips captioned, {ing.gated} gated (idle, recorded as watched)")


def _model_for_db(db: Path, streams: list[dict], stream: Optional[str]) -> str:
    """The model a memory was written with (ask/captions default to it)."""
    models = {s["model_id"] for s in streams if stream is None or s["name"] == stream}
    if not models:
        _fail(f"{db} holds no streams yet: ingest a video first with rlivs ingest VIDEO --db {db}")
    if len(models) != 1:
        _fail(f"{db} holds streams from {len(models)} models ({', '.join(sorted(models))}): pass --model (or "
              f"--stream to ask about one stream)")
    return models.pop()


def ask(
    question: str = typer.Argument(..., help="The question."),
    db: Path = o.db_option("SQLite memory to answer from."),
    stream: Optional[str] = typer.Option(None, "--stream", help="Only this stream (default: all)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: the model the memory was written with."),
    bundle: Optional[Path] = o.Bundle, backend: str = o.Backend, device: str = o.Device, dtype: str = o.Dtype,
    threads: Optional[int] = o.Threads, kv_cache: str = o.KvCache, max_context: Optional[int] = o.MaxContext,
    top_k: int = o.TopK, token_budget: int = o.TokenBudget, mmr_lambda: float = o.MmrLambda,
    max_answer_tokens: int = o.MaxAnswerTokens, retrieval: str = o.Retrieval,
    from_: Optional[str] = o.FromTime, to: Optional[str] = o.ToTime,
    json_out: bool = typer.Option(False, "--json", help="Print the answer as JSON (at the end; no streaming)."),
):
    """Answer a question from the captions in memory (text only), streamed as it is generated.

    The captions the answer used are listed after it; --json prints everything at the end instead.
    """
    try:
        from rlivs.runtime.answer import check_question

        check_question(question)  # empty, huge or not UTF-8: refused before anything is loaded
        config = o.pipeline_config(top_k=top_k, token_budget=token_budget, mmr_lambda=mmr_lambda,
                                   max_answer_tokens=max_answer_tokens, retrieval=retrieval)
        window = o.wall_window(from_, to)
        if not db.exists():
            _fail(f"{db} does not exist: ingest a video first with rlivs ingest VIDEO --db {db}")
        streams = _refuse_unknown_stream(db, stream)
        model = model or ("tiny" if bundle else _model_for_db(db, streams, stream))  # --bundle wins over --model
        ec = o.check_engine(o.engine_config(model, bundle, backend, device, dtype, threads, kv_cache, max_context))
        o.check_backbone(ec, None, db)  # a --model of another family than the memory's: refused before it loads
        from rlivs.runtime.answer import answer, answer_json, clip_label

        engine = _engine(ec, config)
        span = dict(window=None, window_text=None)
        if window is not None:  # the window as it was given, with its clock times
            given = " ".join(f"{flag} {v}" for flag, v in (("--from", from_), ("--to", to)) if v is not None)
            span = dict(window=window.as_unix(),
                        window_text=f"{given}: {window.describe(None, datetime.now(timezone.utc))}")
        with _open_memory(db, engine, readonly=True) as memory:
            if json_out:
                a = answer(engine, memory, question, stream=stream, **span)
            else:
                with _Streamed(question) as shown:
                    a = answer(engine, memory, question, stream=stream, on_token=shown.piece, **span)
    except UserError as e:
        _fail(str(e))
    if json_out:
        typer.echo(json.dumps(answer_json(a)))
        return
    for line in ([f"time window: {a.window}"] if a.window else []) + \
            ([f"matching clips: {a.matches}"] if a.matches is not None else []) + [f"note: {n}" for n in a.notes]:
        out.print(f"[dim]{escape(line)}[/]", soft_wrap=not out.is_terminal)
    table = Table("stream", "clip", "time", "relevance", "caption", title=f"captions used ({a.latency_s:.2f} s)")
    for r, s in a.used:
        table.add_row(_cell(r.stream), str(r.index), clip_label(r), f"{s:.3f}", _cell(r.caption))
    out.print(table)


class _Streamed:
    """`rlivs ask` in the terminal: a spinner while the captions are read, then the answer as it is generated."""

    def __init__(self, question: str):
        self.question, self.started = question, False
        self.status = console.status("reading the captions ...")

    def __enter__(self):
        self.status.start()
        return self

    def piece(self, text: str) -> None:
        if not self.started:
            self.status.stop()
            out.print(f"[bold]Q:[/] {escape(self.question)}\n[bold]A:[/] ", end="")
            self.started = True
        out.print(terminal_safe(text), end="", markup=False, highlight=False)  # the model's text: no escapes
        out.file.flush()

    def __exit__(self, *exc) -> None:
        self.status.stop()
        if not self.started and exc[0] is None:  # nothing generated (EOS first): say so
            out.print(f"[bold]Q:[/] {escape(self.question)}\n[bold]A:[/] [dim](empty answer)[/]", end="")
        if self.started or exc[0] is None:
            out.print()


def captions(
    db: Path = o.db_option("SQLite memory."),
    stream: Optional[str] = typer.Option(None, "--stream", help="Only this stream."),
    t_from: Optional[str] = o.FromTime,
    t_to: Optional[str] = o.ToTime,
    limit: Optional[int] = typer.Option(None, help="At most this many."),
    json_out: bool = typer.Option(False, "--json", help="JSON lines."),
):
    """List the caption timeline (times in local wall-clock time where the stream has a clock)."""
    from rlivs.runtime.answer import clip_json, clip_label

    try:
        numbers = [_seconds(v) for v in (t_from, t_to)]
        if all(v is None or n is not None for v, n in zip((t_from, t_to), numbers)):  # stream seconds (or none)
            where = dict(t_from=numbers[0], t_to=numbers[1])
        else:
            w = o.wall_window(t_from, t_to)
            where = dict(zip(("wall_from", "wall_to"), w.as_unix()), by_time=True)
        _refuse_unknown_stream(db, stream)
        with _open_memory(db, readonly=True) as memory:
            rows = memory.clips(stream, limit=limit, **where)
    except UserError as e:
        _fail(str(e))
    if json_out:
        for r in rows:
            typer.echo(json.dumps(clip_json(r)))
        return
    table = Table("stream", "clip", "time", "caption", title=f"{len(rows)} captions in {db}")
    for r in rows:
        table.add_row(_cell(r.stream), str(r.index), clip_label(r), _cell(r.caption))
    out.print(table)


def _cell(text: str) -> Text:
    """Text from the memory (a caption, a stream name) for the terminal: no control or escape characters
    (runtime.validate.terminal_safe), and no rich markup read into it."""
    return Text(terminal_safe(text))


def _seconds(value: Optional[str]) -> Optional[float]:
    """A --from/--to value that is a plain number: seconds of stream time; else None."""
    try:
        seconds = None if value is None else float(value)
    except ValueError:
        return None
    return seconds if seconds is None or math.isfinite(seconds) else None  # nan/inf: refused as a time instead


def demo(
    workdir: Path = typer.Option(Path("rlivs-demo"), help="Where the sample video and memory go."),
    model: str = o.Model,
    question: str = typer.Option("What moved across the scene?", help="The question asked at the end."),
    seconds: float = typer.Option(48.0, help="Length of the generated sample video."),
    start_time: Optional[str] = o.StartTime,
):
    """The main job on the embedded default: build the tiny model, make a sample video, ingest it, ask."""
    global _SHARED
    from rlivs.edge_app.sample_video import make_sample_video

    try:
        o.start_clock(start_time)  # refused before anything is made
    except UserError as e:
        _fail(str(e))
    workdir.mkdir(parents=True, exist_ok=True)
    video = workdir / "sample.mp4"
    if not video.exists():
        make_sample_video(video, seconds=seconds)
        console.print(f"sample video: {video} ({seconds:.0f} s, moving shapes)")
    db = workdir / "memory.db"
    _SHARED = {}
    try:
        _demo_steps(video, db, model, question, start_time)
    finally:
        _SHARED = None
    if model == "tiny":
        console.print("[dim]tiny has random weights: its captions are noise; the pipeline around it is real. "
                      "Pass --model with LLaVA-OneVision or Qwen2.5-VL weights for real captions.[/]")


def _with_defaults(command, **given):
    """Call a typer command function with `given` and every other parameter at its declared default (the option's
    own default: nothing restated here, so a new option cannot be forgotten)."""
    import inspect

    kw = {}
    for name, p in inspect.signature(command).parameters.items():
        d = p.default
        kw[name] = given.pop(name) if name in given else (
            d.default if isinstance(d, (typer.models.OptionInfo, typer.models.ArgumentInfo)) else d)
    if given:
        raise TypeError(f"{command.__name__} takes no {', '.join(given)}")
    return command(**kw)


def _demo_steps(video: Path, db: Path, model: str, question: str, start_time: Optional[str]) -> None:
    _with_defaults(ingest, video=video, db=db, stream="default", model=model, start_time=start_time)
    _with_defaults(ask, question=question, db=db, model=model)


def register(app: typer.Typer) -> None:
    """Add `rlivs ingest`, `ask`, `captions` and `demo` to the CLI."""
    app.command("ingest")(ingest)
    app.command("ask")(ask)
    app.command("captions")(captions)
    app.command("demo")(demo)
