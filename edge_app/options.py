"""What the `rlivs` commands share: typer options for the model and the method's knobs, the error exit,
and the one place flags become a PipelineConfig."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console

from rlivs.runtime.config import (
    AnswerConfig, EngineConfig, CaptionConfig, ClipConfig, FifoConfig, PipelineConfig, ProbeConfig, RetrievalConfig,
    SelectionConfig,
)

# Messages and log lines: on a terminal rich wraps them at its width; into a pipe or a file each stays one whole line
# (rich would wrap them at 80 columns there).
console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())


def fail(msg: str) -> NoReturn:
    """Print the error (which says what to do) and exit 2."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(msg)}")  # escaped: a message may hold [brackets] of its own
    raise typer.Exit(2)


def debug_enabled() -> bool:
    """`rlivs --debug ...` or RLIVS_DEBUG=1: internal errors show their traceback."""
    return os.environ.get("RLIVS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def failed_component(exc: BaseException) -> str:
    """What failed, from where the exception was raised: 'the torch backend', 'the memory', ... or 'rlivs'."""
    import traceback

    names = {"runtime/backends/torch": "the torch backend", "runtime/backends/onnxruntime": "the ONNX Runtime backend",
             "runtime/backends/tensorrt": "the TensorRT backend", "export/": "the exporter",
             "calibration/": "calibration", "runtime/memory": "the memory", "runtime/frames": "the video reader",
             "runtime/sources": "the video source"}
    frames = [f.filename.replace(os.sep, "/") for f in traceback.extract_tb(exc.__traceback__)]
    for filename in reversed(frames):  # the innermost rlivs frame names the component
        for key, name in names.items():
            if key in filename:
                return name
    return "rlivs"


def internal_error_line(exc: BaseException) -> str:
    """One line for an unexpected exception: what failed, that it is a bug, and what to do."""
    from rich.markup import escape

    msg = " ".join(str(exc).split())[:300]
    return (f"[bold red]internal error:[/] {escape(failed_component(exc))} failed: {type(exc).__name__}: "
            f"{escape(msg)}. This is a bug in rlivs, not your input: rerun with `rlivs --debug ...` (or RLIVS_DEBUG=1) "
            f"for the traceback and report it with `pip list` output; nothing committed to the memory is lost")


Opset = typer.Option(None, "--opset", help="ONNX opset of the exported bundle: default 20 (loads on onnxruntime 1.20 "
                                           "and later, every Jetson build, and on TensorRT 10); 23 uses ONNX "
                                           "Runtime's fused Attention ops and needs onnxruntime >= 1.23 (the manifest "
                                           "says which; rlivs check/doctor refuse an older one).")


EmbedDtype = typer.Option(
    None, "--embed-dtype",
    help="Embedding table dtype of the exported bundle: float32 (default for --target onnxruntime: identical captions "
         "and selections to the torch reference) | float16 (default for --target tensorrt, whose engines run in half "
         "precision; halves the table, but its rounding moves the logits: greedy captions can diverge where the "
         "winning margin is small, see docs/export.md).")


def parse_layers(spec: Optional[str]) -> Optional[tuple[int, ...]]:
    if not spec:
        return None
    try:
        return tuple(int(x) for x in spec.split(","))
    except ValueError:
        fail(f"--probe-layers {spec!r} is not a comma-separated list of layer indices, e.g. 4,8,13,19")


def engine_config(model: str = "tiny", bundle: Optional[Path] = None, backend: str = "auto", device: str = "cpu",
                  dtype: str = "float32", threads: Optional[int] = None, kv_cache: str = "auto",
                  max_context: Optional[int] = None) -> EngineConfig:
    """The engine-loading flags -> the one EngineConfig every command passes to load_engine. --bundle wins over
    --model; under `auto` a bundle runs on TensorRT (engines built, tensorrt importable) or ONNX Runtime."""
    return EngineConfig(model=str(model), bundle=str(bundle) if bundle else None, backend=backend, device=device,
                        dtype=dtype, threads=threads, kv_cache=kv_cache, max_context=max_context)


def check_engine(ec: EngineConfig) -> EngineConfig:
    """Everything about the engine flags that can be checked before a model loads: --bundle / --model paths (a
    typo'd path says it does not exist and what is beside it), backend and KV-cache names, --threads. Raises
    UserError; the commands call it first, so a bad flag costs no model load."""
    from rlivs.runtime.backends import check_engine_config
    from rlivs.runtime.models import check_model_path

    check_model_path(ec.bundle, "--bundle") if ec.bundle else check_model_path(ec.model)
    return check_engine_config(ec)


def check_backbone(ec: EngineConfig, config: Optional[PipelineConfig] = None, db: Optional[Path] = None):
    """What the model's family (runtime/backbones, read from its config.json; nothing loads) refuses, checked
    before the model loads: a --frames-per-clip it cannot group (Qwen-VL: temporal patches of 2 frames), and a
    memory `db` written by another family. Returns the backbone (None: not known before loading). Raises
    UserError; the model's own load repeats both checks."""
    from rlivs.runtime.models import source_backbone

    backbone = source_backbone(ec.source, bundle=ec.bundle is not None)
    if backbone is None:
        return None
    if config is not None:
        backbone.check_frames(config.clip.frames_per_clip)
    if db is not None and Path(db).is_file():
        from rlivs.runtime.errors import UserError
        from rlivs.runtime.memory import Memory
        from rlivs.runtime.memory.records import model_mismatch

        with Memory(db, readonly=True) as memory:
            stored = memory.model_fingerprint() or {}
        if stored.get("backbone") not in (None, backbone.name):
            raise UserError(model_mismatch(db, stored, {"backbone": backbone.name, "model": ec.source}))
    return backbone


# The exit statuses of every command (shown by `rlivs --help` and in the README).
EXIT_CODES = (
    (0, "done"),
    (1, "internal error: a bug in rlivs, one line names the component (rlivs --debug shows the traceback); "
        "also `rlivs doctor` when the given bundle or model cannot run here, and Ctrl-C (\"Aborted!\"; what was "
        "committed stays committed; `rlivs serve` stops cleanly with 0)"),
    (2, "bad input, refused (a flag, file, path, stream, question or port), checked before any model loads where "
        "possible; or ingest stopped by an error: what was committed stays committed"),
    (3, "done, but the input was partly damaged: undecodable video packets were skipped"),
)


def exit_code_help() -> str:
    """The exit-code table as help text (one line per status)."""
    return "Exit status:\n\n" + "\n\n".join(f"{code}  {what}" for code, what in EXIT_CODES)


# the model and where it runs
Model = typer.Option("tiny", "--model", "-m",
                     help="HF hub id (local cache only), HF-format directory, 'tiny', 'tiny-gqa' or 'random-0.5b' (random weights).")
Bundle = typer.Option(None, "--bundle", help="Exported bundle (rlivs export): runs on ONNX Runtime, or on TensorRT "
                                             "when engines are built (rlivs build-engines); no torch.")
Backend = typer.Option("auto", "--backend", help="auto | torch | onnxruntime | tensorrt")
Device = typer.Option("cpu", "--device", help="cpu | cuda")
Dtype = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16 (torch backend)")
Threads = typer.Option(None, "--threads", help="CPU threads for the backend (default: the physical cores this "
                                                "process may use; fewer helps when other jobs share the CPU).")
KvCache = typer.Option("auto", "--kv-cache", help="torch backend KV cache: auto (static + CUDA graph on cuda, dynamic "
                                                  "on cpu) | dynamic (the reference) | static")
MaxContext = typer.Option(None, "--max-context", help="Positions per sequence of the torch static KV cache "
                                                      "(default 8192); a bundle's is set at export.")

# the method's knobs (docs/method.md): every command that takes one uses these, so a setting has one name everywhere
Fps = typer.Option(1.0, "--fps", help="Frames sampled per second.")
FramesPerClip = typer.Option(16, "--frames-per-clip", help="Frames per clip.")
Keep = typer.Option(None, "--keep", help="Visual tokens kept per clip (overrides --keep-ratio).")
KeepRatio = typer.Option(0.0625, "--keep-ratio", help="Fraction of a clip's tokens kept (196/3136).")
Strategy = typer.Option("attention", "--strategy", help="Token selection: attention | uniform | meanpool | kmeans | "
                                                        "random")
FifoClips = typer.Option(16, "--fifo-clips", help="FIFO capacity in clips (0 = no recurrence).")
FifoTokens = typer.Option(None, "--fifo-tokens", help="FIFO capacity in tokens (optional).")
FifoPositions = typer.Option("original", "--fifo-positions",
                             help="Qwen2.5-VL (M-RoPE): FIFO tokens keep their original (t, h, w) positions, or are "
                                  "re-indexed as a sequential run before the clip: original | sequential "
                                  "(docs/method.md, Backbones). 1-D models ignore it.")
ProbeLayers = typer.Option(None, "--probe-layers", help="Comma-separated decoder layers to probe, e.g. 4,8,13,19.")
NumProbeLayers = typer.Option(4, "--num-probe-layers", help="Probe layers spread evenly when --probe-layers is unset.")
MaxCaptionTokens = typer.Option(128, "--max-caption-tokens", help="Greedy caption length bound.")
TopK = typer.Option(8, "--top-k", help="Answers use at most this many captions.")
TokenBudget = typer.Option(2048, "--token-budget", help="... and at most this many caption tokens.")
MmrLambda = typer.Option(0.5, "--mmr-lambda", help="MMR relevance weight (1 = relevance only).")
MaxAnswerTokens = typer.Option(256, "--max-answer-tokens", help="Greedy answer length bound.")
Seed = typer.Option(0, "--seed", help="Seed of the random strategy.")
Retrieval = typer.Option("hybrid", "--retrieval",
                         help="hybrid: keywords + vectors fused; paper: the paper's vector ranking; lexical: keywords.")
StartTime = typer.Option(None, "--start-time",
                         help="Wall-clock time of the video's first frame (ISO 8601, e.g. 2026-12-01T15:00; local time "
                              "unless it has an offset). Default: the file's creation-time tag, else no clock.")
ExportTime = typer.Option(None, "--time", help="Timeline of an MCAP export: log (default; Foxglove's default "
                                               "timeline: captions line up with a recording's images) | header "
                                               "(the recording's header stamps).")
FromTime = typer.Option(None, "--from", help="Only captions from this time: ISO 8601, -2h, yesterday, ... "
                                               "(captions: also seconds of stream time).")
ToTime = typer.Option(None, "--to", help="Only captions up to this time (same forms as --from).")


# batching several cameras' clips in one model call (issue 26): the serving side, and what a bundle must be built for
Batch = typer.Option(1, "--batch", help="When the model frees and several cameras have a clip waiting, caption up to "
                                        "this many of them in one batched model call (active first, oldest first); "
                                        "each camera still commits its own clip. 1 = one clip at a time. A --bundle "
                                        "must be batch-capable (rlivs export --batch; on TensorRT, engines built "
                                        "with rlivs build-engines --max-batch >= N); --model batches any number.")
ExportBatch = typer.Option(False, "--batch/--no-batch",
                           help="Export the decoder with a dynamic batch axis, so `rlivs serve --batch N` captions "
                                "several cameras' clips in one call (recorded in the manifest: kv_cache.batch).")
MaxBatch = typer.Option(None, "--max-batch", show_default=False,
                        help="Most sequences one batched decoder step takes: the batch range of both optimization "
                             "profiles (default 8; needs a bundle exported with --batch). rlivs serve --batch N "
                             "needs N <= it.")


def check_batch(batch: int, ec: Optional[EngineConfig] = None) -> Optional[EngineConfig]:
    """--batch N (serve) against the engine it will run on, before any model loads: N in 1..256; a bundle must have a
    batch axis (rlivs export --batch), and on TensorRT engines whose batch range reaches N (build-engines
    --max-batch). The torch backend batches any number on its dynamic KV cache: --kv-cache auto becomes dynamic
    (auto would take the static cache + CUDA graph on cuda, which steps one clip at a time), an explicit static
    cache is refused. -> `ec`, possibly with that cache; raises UserError naming the fix."""
    from dataclasses import replace

    from rlivs.runtime.backends.bundle import MAX_BATCH
    from rlivs.runtime.errors import UserError

    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise UserError(f"--batch must be an integer in 1..{MAX_BATCH}, got {batch!r}: e.g. --batch 4 (1 = one clip "
                        f"at a time)")
    if batch == 1 or ec is None:
        return ec
    from rlivs.runtime.backends import choose_backend
    from rlivs.runtime.backends.bundle import is_bundle, load_manifest

    path = Path(ec.bundle or ec.model).expanduser()
    if not is_bundle(path) or ec.backend == "torch":  # the torch backend
        if ec.kv_cache == "static":
            raise UserError(f"--batch {batch}: the torch backend's static KV cache steps one clip at a time: use "
                            f"--kv-cache dynamic (or auto, which batches), or serve with --batch 1")
        if ec.kv_cache == "auto" and ec.device.startswith("cuda"):
            console.print(f"--batch {batch}: the torch backend's dynamic KV cache (it batches; --kv-cache auto would "
                          f"take the static cache + CUDA graph on cuda, one clip at a time)")
            return replace(ec, kv_cache="dynamic")
        return ec
    manifest = load_manifest(path)
    backend = ec.backend
    if backend == "auto":
        try:
            backend = choose_backend("auto", path, bundle_given=ec.bundle is not None)[0]
        except UserError:
            return ec  # the bundle cannot run here at all: loading it says why
    cap = manifest.max_batch(backend)
    if cap == 1:
        raise UserError(f"--batch {batch}: the bundle {path} was exported without a batch axis, so it captions one "
                        f"clip per call: re-export it with rlivs export --batch"
                        f"{' --target tensorrt' if manifest.target == 'tensorrt' else ''} (then rlivs build-engines "
                        f"--max-batch {batch} for TensorRT), or serve with --batch 1")
    if cap is not None and cap < batch:
        fix = f"rlivs build-engines --bundle {path} --max-batch {batch}"
        what = f"batch range reaches {cap} sequences" if cap else "engines are not built"
        raise UserError(f"--batch {batch}: the bundle's TensorRT {what}: rebuild them with {fix}, or serve with "
                        f"--batch {max(cap, 1)}")
    return ec


# the activity gate (runtime/activity.py): each a global value and/or STREAM=VALUE, repeatable
Gate = typer.Option([], "--gate", metavar="[STREAM=]auto|on|off",
                    help="Activity gate: caption a clip only when its scene changed (idle clips are recorded as "
                         "watched, not captioned). auto: on for cameras and network streams, off for files and "
                         "recordings. STREAM=MODE sets one stream; repeatable. `rlivs eval` never gates.")
GateThreshold = typer.Option([], "--gate-threshold", metavar="[STREAM=]FRACTION",
                             help="Fraction of the image that must change for a clip to be captioned (default "
                                  "0.005). STREAM=FRACTION sets one stream; repeatable.")
GateMaxIdle = typer.Option([], "--gate-max-idle", metavar="[STREAM=]SECONDS",
                           help="Caption a clip at least this often even when nothing changed, seconds (default "
                                "600). STREAM=SECONDS sets one stream; repeatable.")


def _per_stream(option: str, values: list[str], streams: list[str], read) -> tuple[object, dict[str, object]]:
    """`[STREAM=]VALUE` values -> (the global value or None, {stream: value}); UserError naming the option, the
    value and the fix (an unknown stream lists the known ones)."""
    from rlivs.runtime.errors import UserError

    default, per = None, {}
    for raw in values:
        name, sep, value = str(raw).rpartition("=")
        try:
            parsed = read(value.strip())
        except (ValueError, UserError) as e:
            raise UserError(f"{option} {raw!r}: {e}") from None
        if not sep:
            default = parsed
        elif name not in streams:
            raise UserError(f"{option} {raw!r} names stream {name!r}, which is not one of this command's streams "
                            f"({', '.join(streams) or 'none'}): use one of them, or leave STREAM= out for all")
        else:
            per[name] = parsed
    return default, per


def gate_configs(gate: list[str], threshold: list[str], max_idle: list[str],
                 streams: list[tuple[str, bool]]) -> dict:
    """--gate/--gate-threshold/--gate-max-idle and the command's streams [(name, live)] -> {name: GateConfig}:
    the gate is on for a stream when its mode (its own, else the global one, else auto) is `on`, or `auto` and the
    stream is live. Raises UserError naming the flag."""
    from rlivs.runtime.activity import MODES, GateConfig
    from rlivs.runtime.errors import UserError

    def mode(v: str) -> str:
        if v not in MODES:
            raise UserError(f"the mode must be one of {', '.join(MODES)}, e.g. --gate on")
        return v

    def number(v: str) -> float:
        return float(v)

    names = [n for n, _ in streams]
    m0, ms = _per_stream("--gate", gate, names, mode)
    t0, ts = _per_stream("--gate-threshold", threshold, names, number)
    i0, is_ = _per_stream("--gate-max-idle", max_idle, names, number)
    out = {}
    for name, live in streams:
        m = ms.get(name, m0 or "auto")
        kw = {k: v for k, v in (("threshold", ts.get(name, t0)), ("max_idle_s", is_.get(name, i0))) if v is not None}
        try:
            out[name] = GateConfig(enabled=m == "on" or (m == "auto" and live), **kw)
        except UserError as e:
            raise UserError(f"stream {name!r}: {e}") from None
    return out


def check_db(db: Optional[Path]) -> Optional[Path]:
    """--db: refused (exit 2) when its folder does not exist (a typo must not create directories) or when it names a
    folder; run by typer as the option is parsed, before anything loads."""
    if db is None:
        return db
    parent = db.parent if str(db.parent) else Path(".")
    if db.is_dir():
        fail(f"--db {db} is a directory: give the memory's file name, e.g. --db {db / 'memory.db'}")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        fail(f"--db {db}: the folder {parent} {what}; create it first (mkdir -p {parent}) or fix the path")
    return db


def db_option(help: str = "SQLite memory.") -> typer.models.OptionInfo:
    """The --db option (default memory.db) with its check; `help` says what the command does with the memory."""
    return typer.Option(Path("memory.db"), "--db", help=help, callback=check_db)


def wall_window(from_: Optional[str], to: Optional[str]):
    """--from/--to -> (TimeWindow or None): refused (UserError naming the forms) before anything loads."""
    from datetime import datetime, timezone

    from rlivs.runtime.timeq import window_from_args

    return window_from_args(from_, to, datetime.now(timezone.utc), None)


def start_clock(start_time: Optional[str], name: str = "--start-time") -> Optional[float]:
    """--start-time (or the option `name`, e.g. --before) -> UTC unix seconds (None when not given); UserError
    naming the option and the reason (unreadable, out of range: runtime.timeq's bounds)."""
    if start_time is None:
        return None
    from datetime import datetime, timezone

    from rlivs.runtime.errors import UserError
    from rlivs.runtime.timeq import parse_when

    try:
        return parse_when(start_time, datetime.now(timezone.utc), None).timestamp()
    except UserError as e:
        raise UserError(f"{name}: {e}") from None


def pipeline_config(*, fps: float = 1.0, frames_per_clip: int = 16, keep: Optional[int] = None,
                    keep_ratio: float = 0.0625, strategy: str = "attention", fifo_clips: Optional[int] = 16,
                    fifo_tokens: Optional[int] = None, probe_layers: Optional[str] = None, num_probe_layers: int = 4,
                    max_caption_tokens: int = 128, top_k: int = 8, token_budget: int = 2048,
                    mmr_lambda: float = 0.5, max_answer_tokens: int = 256, seed: int = 0,
                    retrieval: str = "hybrid", fifo_positions: str = "original") -> PipelineConfig:
    """Flags -> PipelineConfig. Raises ValueError (naming the flag's problem) for impossible values."""
    return PipelineConfig(
        clip=ClipConfig(fps=fps, frames_per_clip=frames_per_clip),
        selection=SelectionConfig(strategy=strategy, keep=keep, keep_ratio=keep_ratio, seed=seed),
        fifo=FifoConfig(capacity_clips=fifo_clips, capacity_tokens=fifo_tokens, positions=fifo_positions),
        caption=CaptionConfig(max_new_tokens=max_caption_tokens),
        probe=ProbeConfig(num_layers=num_probe_layers, layers=parse_layers(probe_layers)),
        retrieval=RetrievalConfig(top_k=top_k, token_budget=token_budget, mmr_lambda=mmr_lambda, mode=retrieval),
        answer=AnswerConfig(max_new_tokens=max_answer_tokens),
    )


# where other machines reach `rlivs serve` (links in what it publishes, e.g. MQTT payloads' thumbnails)
PublicUrl = typer.Option(None, "--public-url", show_default=False,
                         help="The URL other machines reach this service at, e.g. http://robot1.lan:8000 (a proxy's "
                              "base path may follow): links in MQTT payloads start with it. Without it a link is "
                              "the path only, e.g. /v1/thumbnails/cam/3.jpg.")


def check_public_url(url: Optional[str]) -> Optional[str]:
    """--public-url -> the URL without a trailing '/' (None stays None); UserError unless it is an http(s) URL with a
    host and no query, fragment or credentials."""
    if url is None:
        return None
    from urllib.parse import urlsplit

    from rlivs.runtime.errors import UserError

    bad = f"--public-url {url!r} is not an http(s) URL of this service: use e.g. --public-url http://robot1.lan:8000"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number or out of range)
    except ValueError:
        raise UserError(bad) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UserError(bad)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UserError(f"{bad} (no ?query, #fragment or user:password@)")
    return url.strip().rstrip("/")
