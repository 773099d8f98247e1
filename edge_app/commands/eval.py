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
"""

def register(app: typer.Typer) -> None:
    """Add `rlivs eval` to the CLI."""

    @app.command("eval", help=HELP, context_settings={"allow_extra_args": True})
    def eval_cmd(
        ctx: typer.Context,
        annotations: list[Path] = typer.Option(
            ..., "--annotations", "-a", help="Annotation file(s): streaming list, VStream-QA clip + question files."),
        videos: Optional[Path] = typer.Option(None, "--videos", help="Folder where videos are looked up (video_path "
                                              "that does not exist as given, or <video_id>.mp4 / folder / .npy)."),
        out_dir: Path = typer.Option(..., "--out", "-o", help="Results folder (created)."),
        model: str = o.Model, backend: str = o.Backend, device: str = o.Device, dtype: str = o.Dtype,
        threads: Optional[int] = o.Threads, kv_cache: str = o.KvCache, max_context: Optional[int] = o.MaxContext,
        # --- ablations: every one is recorded in run.json / summary.json / results.md
        strategy: str = typer.Option("attention",
                                     help="Token selection: attention | uniform | meanpool | kmeans | random"),
        fifo_clips: int = typer.Option(16, help="FIFO capacity in clips (0 = no recurrence)."),
        fifo_tokens: Optional[int] = typer.Option(None, help="FIFO capacity in tokens (optional)."),
        keep: Optional[int] = typer.Option(None, help="Visual tokens kept per clip (overrides --keep-ratio)."),
        keep_ratio: float = typer.Option(0.0625, help="Fraction of a clip's tokens kept (196/3136)."),
        probe_layers: Optional[str] = typer.Option(None,
                                                   help="Comma-separated decoder layers to probe, e.g. 4,8,13,19."),
        num_probe_layers: int = typer.Option(4, help="Probe layers spread evenly when --probe-layers is unset."),
        top_k: int = typer.Option(8, help="At most this many captions per answer."),
        token_budget: int = typer.Option(2048, help="At most this many caption tokens per answer."),
        mmr_lambda: float = typer.Option(0.5, help="MMR relevance weight (1 = relevance only)."),
        frames_per_clip: int = typer.Option(16, help="Frames per clip."),
        fps: float = typer.Option(1.0, help="Frames sampled per second."),
        max_caption_tokens: int = typer.Option(128, help="Greedy caption length bound."),
        max_new_tokens: int = typer.Option(256, help="Answer length bound."),
        seed: int = typer.Option(0, help="Seed of the random strategy."),
        # --- how the data is read
        frames_fps: float = typer.Option(1.0, help="Rate of frame folders and .npy arrays (frame i at i/rate s)."),
        vstream_times: str = typer.Option("clip", help="VStream-QA question times: clip (from the cut clip's start) "
                                                       "| original (on the source video's axis)."),
        shot_seconds: float = typer.Option(1.0, help="Seconds per shot for shot-indexed VStream-QA clips."),
        clip_window: str = typer.Option("auto",
                                        help="Streaming list clip_start_time/clip_end_time: auto | apply | ignore."),
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
        from rlivs.edge_app.eval.runner import EvalConfig, run_eval

        extra = list(ctx.args)
        bad = [a for a in extra if a.startswith("-")]
        if bad:
            _fail(f"unknown option(s) {' '.join(bad)}; see rlivs eval --help")
        files = list(annotations) + [Path(a) for a in extra]
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
                token_budget=token_budget, mmr_lambda=mmr_lambda, max_answer_tokens=max_new_tokens, seed=seed)
            from rlivs.runtime.selection import get_strategy

            get_strategy(strategy)  # an unknown strategy fails here, before any video is read
            if max_questions is not None and max_questions < 1:
                raise UserError(f"--max-questions must be >= 1, got {max_questions}")
            judge = JudgeConfig(kind="openai" if judge_url else "local" if judge_local else "none",
                                model=judge_model if judge_url else judge_local, url=judge_url,
                                api_key_env=judge_api_key_env, max_new_tokens=judge_max_tokens,
                                timeout_s=judge_timeout)
            cfg = EvalConfig(
                annotations=files, out=out_dir, pipeline=pipeline,
                engine=o.check_engine(o.engine_config(model, None, backend, device, dtype, threads, kv_cache,
                                                      max_context)),  # bad paths and names: before any video
                data=AnnotationConfig(videos_dir=videos, frames_fps=frames_fps, vstream_times=vstream_times,
                                      shot_seconds=shot_seconds, clip_window=clip_window, max_videos=max_videos),
                judge=judge, resume=resume, rescore=rescore, max_questions=max_questions)
            with _Bar() as bar:
                summary = run_eval(cfg, progress=bar.update)
        except UserError as e:
            _fail(str(e))
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
