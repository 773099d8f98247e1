"""`rlivs eval`: the streaming QA benchmarks (RVS-Ego / RVS-Movie protocol) with a pinned judge and ablation flags.

The command only parses flags and draws the progress bar; the work is in the `eval` package (imported inside the
command, so importing this module stays light and torch-free).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from rlivs.edge_app import options as o
from rlivs.edge_app.options import console, fail as _fail
from rlivs.runtime.errors import UserError

out = Console()

HELP = """Evaluate streaming video QA on RVS-Ego / RVS-Movie style benchmarks, causally.

Each video is ingested once, in time order; a question is answered when the stream reaches its end_time, from the clips that ended by then. Writes OUT/predictions.jsonl (one row per question), OUT/summary.json and OUT/results.md.

Annotation files: the streaming list (video_id, video_path, duration, conversations) and/or a VStream-QA clip file plus question file. Give several after one --annotations, or repeat --annotations. See docs/evaluation.md.

rlivs eval --check FILE... validates annotation files (every record) without a model or videos and prints, per file, its videos, questions, the time axis decided for its question times, and the questions outside their video.
"""

def register(app: typer.Typer) -> None:
    """Add `rlivs eval` to the CLI."""

    @app.command("eval", help=HELP, context_settings={"allow_extra_args": True})
    def eval_cmd(
        ctx: typer.Context,
        annotations: Optional[list[Path]] = typer.Option(
            None, "--annotations", "-a", help="Annotation file(s): streaming list, VStream-QA clip + question files."),
        check: bool = typer.Option(False, "--check", help="Only validate the annotation files (given after --check "
                                   "or --annotations): counts per file, the time axis, questions outside their "
                                   "video. No model, no videos."),
        videos: Optional[Path] = typer.Option(None, "--videos", help="Folder where videos are looked up (video_path "
                                              "that does not exist as given, or <video_id>.mp4 / folder / .npy)."),
        out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (created)."),
        model: str = o.Model, backend: str = o.Backend, device: str = o.Device, dtype: str = o.Dtype,
        threads: Optional[int] = o.Threads, kv_cache: str = o.KvCache, max_context: Optional[int] = o.MaxContext,
        # --- ablations: every one is recorded in run.json / summary.json / results.md
        strategy: str = o.Strategy, fifo_clips: int = o.FifoClips, fifo_tokens: Optional[int] = o.FifoTokens,
        keep: Optional[int] = o.Keep, keep_ratio: float = o.KeepRatio, probe_layers: Optional[str] = o.ProbeLayers,
        num_probe_layers: int = o.NumProbeLayers, top_k: int = o.TopK, token_budget: int = o.TokenBudget,
        mmr_lambda: float = o.MmrLambda, frames_per_clip: int = o.FramesPerClip, fps: float = o.Fps,
        fifo_positions: str = o.FifoPositions,
        max_caption_tokens: int = o.MaxCaptionTokens, max_answer_tokens: int = o.MaxAnswerTokens, seed: int = o.Seed,
        # --- how the data is read
        frames_fps: float = typer.Option(1.0, help="Rate of frame folders and .npy arrays (frame i at i/rate s)."),
        vstream_times: str = typer.Option("auto", help="VStream-QA question times: auto (decided from the data: "
                                                       "times inside their clip's span in the source video => "
                                                       "original) | clip (from the cut clip's start) | original "
                                                       "(on the source video's axis)."),
        shot_seconds: float = typer.Option(1.0, help="Seconds per shot for shot-indexed VStream-QA clips."),
        clip_window: str = typer.Option("auto", help="Streaming list clip_start_time/clip_end_time: auto (the axis "
                                        "of the question times decided from the data; source-axis times are "
                                        "streamed from the file's start, as ReKV does) | apply (stream only the "
                                        "window) | ignore (keys not read)."),
        max_videos: Optional[int] = typer.Option(None, help="Only the first N videos of each benchmark."),
        # --- judge
        judge_url: Optional[str] = typer.Option(None,
                                                help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."),
        judge_model: Optional[str] = typer.Option(None, help="Model name sent to the endpoint."),
        judge_local: Optional[str] = typer.Option(None,
                                                  help="Judge with a model run by rlivs' backends (dir / id / tiny)."),
        judge_max_tokens: int = typer.Option(64, help="Judge output length bound."),
        judge_api_key_env: str = typer.Option("OPENAI_API_KEY",
                                              help="Env var with the endpoint's key (sent if set)."),
        judge_timeout: float = typer.Option(60.0, help="Seconds per judge request."),
        # --- run control
        resume: bool = typer.Option(False, "--resume",
                                    help="Continue the run in --out without redoing answered questions."),
        rescore: bool = typer.Option(False, "--rescore",
                                     help="Only re-judge the answers in --out with the given judge."),
        max_questions: Optional[int] = typer.Option(None,
                                                    help="Stop after this many questions (continue with --resume)."),
    ):
        from rlivs.edge_app.eval.annotations import AnnotationConfig
        from rlivs.edge_app.eval.judges import JudgeConfig
        from rlivs.edge_app.eval.runner import CausalityViolation, EvalConfig, run_eval

        extra = list(ctx.args)
        bad = [a for a in extra if a.startswith("-")]
        if bad:
            _fail(f"unknown option(s) {' '.join(bad)}; see rlivs eval --help")
        files = list(annotations or []) + [Path(a) for a in extra]
        if not files:
            _fail("no annotation files: pass --annotations FILE... (or rlivs eval --check FILE... to validate them)")
        if check:
            try:
                _print_check(files, AnnotationConfig(frames_fps=frames_fps, vstream_times=vstream_times,
                                                     shot_seconds=shot_seconds, clip_window=clip_window))
            except UserError as e:
                _fail(str(e))
            return
        if out_dir is None:
            _fail("--out is required: the results folder to write, e.g. --out results/run1")
        if judge_url and judge_local:
            _fail("pass either --judge-url (endpoint) or --judge-local (a model run by rlivs), not both")
        if judge_model and not judge_url:
            _fail("--judge-model names the endpoint's model: pass --judge-url with it (or --judge-local DIR)")
        if resume and rescore:
            _fail("--resume continues answering; --rescore only re-judges: pass one of them")
        try:
            pipeline = o.pipeline_config(
                fps=fps, frames_per_clip=frames_per_clip, keep=keep, keep_ratio=keep_ratio, strategy=strategy,
                fifo_clips=fifo_clips, fifo_tokens=fifo_tokens, probe_layers=probe_layers,
                num_probe_layers=num_probe_layers, max_caption_tokens=max_caption_tokens, top_k=top_k,
                token_budget=token_budget, mmr_lambda=mmr_lambda, max_answer_tokens=max_answer_tokens, seed=seed,
                fifo_positions=fifo_positions)
            from rlivs.runtime.selection import get_strategy

            get_strategy(strategy)  # an unknown strategy fails here, before any video is read
            if max_questions is not None and max_questions < 1:
                raise UserError(f"--max-questions must be >= 1, got {max_questions}")
            judge = JudgeConfig(kind="openai" if judge_url else "local" if judge_local else "none",
                                model=judge_model if judge_url else judge_local, url=judge_url,
                                api_key_env=judge_api_key_env, max_new_tokens=judge_max_tokens,
                                timeout_s=judge_timeout)
            engine = o.check_engine(o.engine_config(model, None, backend, device, dtype, threads, kv_cache,
                                                    max_context))  # bad paths and names: before any video
            o.check_backbone(engine, pipeline)  # frames per clip the model family cannot group: before any video
            cfg = EvalConfig(
                annotations=files, out=out_dir, pipeline=pipeline, engine=engine,
                data=AnnotationConfig(videos_dir=videos, frames_fps=frames_fps, vstream_times=vstream_times,
                                      shot_seconds=shot_seconds, clip_window=clip_window, max_videos=max_videos),
                judge=judge, resume=resume, rescore=rescore, max_questions=max_questions)
            with _Bar() as bar:
                summary = run_eval(cfg, progress=bar.update)
        except UserError as e:
            _fail(str(e))
        except CausalityViolation as e:
            from rich.markup import escape

            console.print(f"[bold red]causality violation:[/] {escape(str(e))}")
            raise typer.Exit(1)
        _print_summary(summary, out_dir)


class _Bar:
    """rich progress: video seconds streamed (the ETA follows them: ingest dominates) and questions answered."""

    def __init__(self):
        self.p = Progress(TextColumn("[bold]eval"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                          TextColumn("{task.fields[q]}"), TimeElapsedColumn(), TextColumn("ETA"),
                          TimeRemainingColumn(), TextColumn("[dim]{task.fields[where]}"), console=console)
        self.task = None
        self.total_q = self.done_q = 0

    def __enter__(self):
        self.p.__enter__()
        return self

    def __exit__(self, *exc):
        self.p.__exit__(*exc)

    def update(self, ev: dict) -> None:
        kind = ev["kind"]
        if kind == "start":
            self.total_q, self.done_q = ev["questions"], ev["done"]
            # units: video seconds to stream, plus one per question (so a rescore, which streams nothing, moves too)
            total = ev["stream_seconds"] + (ev["questions"] - ev["done"])
            self.task = self.p.add_task("eval", total=max(total, 1e-9), completed=ev.get("stream_seconds_done", 0.0),
                                        q=self._q(), where="")
        elif self.task is None:
            return
        elif kind == "clip":
            self.p.advance(self.task, ev["seconds"])
        elif kind == "answer":
            self.done_q += 1
            self.p.advance(self.task, 1)
            self.p.update(self.task, q=self._q())
        elif kind == "video":
            self.p.update(self.task, where=f"{ev['benchmark']}/{ev['video_id']}")
        elif kind == "end":
            self.p.update(self.task, completed=self.p.tasks[0].total, where="done" if ev["complete"] else "stopped")

    def _q(self) -> str:
        return f"{self.done_q}/{self.total_q} questions"


def _print_check(files: list[Path], cfg) -> None:
    from rich.markup import escape

    from rlivs.edge_app.eval.annotations import check_annotations

    rows = check_annotations(files, cfg)
    t = Table("file", "format", "videos", "questions", "time axis", "outside their video", title="rlivs eval --check")
    for r in rows:
        outside = str(r["outside"]) + (f" ({r['unknown_extent']} unknown)" if r["unknown_extent"] else "")
        t.add_row(r["file"], r["format"], str(r["videos"]), str(r["questions"]), r["time_axis"] or "–", outside)
    out.print(t)
    for r in rows:
        if r["time_axis"]:
            console.print(escape(f"{Path(r['file']).name}: time axis {r['time_axis']}: {r['reason']}"))
        if r.get("outside_qids"):
            console.print(escape(f"{Path(r['file']).name}: outside their video: {', '.join(r['outside_qids'])}"))
    console.print(f"ok: {len(rows)} file(s), {sum(r['questions'] for r in rows)} questions valid")


def _print_summary(summary: dict, out_dir: Path) -> None:
    from rlivs.edge_app.eval.outputs import fmt_num as _num, fmt_pct as _pct, judge_line

    t = Table("benchmark", "questions", "no context", "EM %", "F1 %", "judge acc %", "judge score", "judge errors",
              "latency s", title=f"rlivs eval -> {out_dir}" + ("" if summary["complete"] else " (incomplete)"))
    for name, m in {**summary["benchmarks"], "all": summary["all"]}.items():
        t.add_row(name, str(m["questions"]), str(m["no_context"]), _pct(m["exact_match"]), _pct(m["token_f1"]),
                  _pct(m["judge_accuracy"]), _num(m["judge_score"]), str(m["judge_errors"]) if m["judged"] else "–",
                  _num(m["latency_s_mean"], 3))
    out.print(t)
    console.print(f"judge: {judge_line(summary['judge'])}; prompt sha256 {summary['judge_prompt_sha256'][:16]}")
    if not summary["complete"]:
        console.print("[yellow]incomplete:[/] continue with the same command plus --resume")
