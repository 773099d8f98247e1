"""Several synthetic cameras on one model, with the activity gate: clips captioned vs gated, events missed, throughput.

Each camera (rlivs.edge_app.sample_scenes) watches a still room with sensor noise and a slow brightness drift, and
scripted events (a person walking through, a door opening and closing, an object put down and taken away) in about
`1 - --idle-fraction` of its clips. The cameras take turns on one engine, clip after clip (round robin, one
`StreamIngestor` each with the gate on, one memory), as fast as the model allows. Measured per run:

- clips captioned and gated (and why captioned: first clip, activity, forced after --gate-max-idle);
- events missed by the gate: events none of whose clips (the clips in which the picture changes because of it)
  was captioned (target 0); false triggers: captioned clips that show no event (first and forced clips aside);
- throughput: clips per wall second, and stream seconds per wall second (how many such cameras one device keeps
  in real time), the gate's own cost per clip, the model's per captioned clip;
- the same first camera ingested with the gate off (every clip captioned): the speed-up the gate gives here;
- per-camera lag, p50 and p95 over all clips of the run: lag = the wall time the clip's record was committed
  (captioned or idle) - (the run's start + the clip's end in stream time / --speed), i.e. the cameras are taken as
  live from the run's start, playing at --speed stream seconds per wall second. With --pace the bench waits until a
  round's clips exist on that clock (sleeping, no CPU), so lag >= 0 is the real clip-end -> commit latency; without
  it the bench reads ahead as fast as the model goes, and a negative lag means that far ahead of live;
- --batch 1,4: each camera count at each batch size, same run: per round (one clip per camera), the clips the gate
  lets through are captioned in groups of up to B with one `Engine.caption_clips` call (each camera's
  `StreamIngestor.caption_input`, then its own `commit`); B = 1 is the one-at-a-time `StreamIngestor.step`.

- --service: the cameras go through `rlivs serve`'s own ingest path instead of the round robin (`run_service`): each
  camera is written to a video file and replayed as a live camera at --speed (runtime.sources.live.LiveSource keeps
  only the newest frame; what a busy worker cannot read is dropped and counted), one `service.workers.StreamWorker`
  thread per camera with the gate on, all sharing one `service.scheduler.ModelTurns(--max-lag, --batch)` and one
  memory. Reported per run: clips captioned / gated / skipped (by reason), per-camera lag p50/p95/max (the service's
  lag: clip ready -> committed) and its p95 in the run's first and second half, events seen / missed by the gate /
  never on a handed-out frame (dropped while the worker waited; scored on the frames each clip really had), model calls by batch size, the longest waiting line
  (at most one clip per camera), forced clips granted while an active one waited (0: active cameras go first),
  frames sampled and dropped per camera, the most resident memory per quarter of the run. With a model too slow for the
  cameras (a high --speed, or --real-shape) this is overload, measured on the wall clock.
- --real-shape: the real 0.5B shapes with random weights (`random-0.5b`, as bench/batch.py --real-shape), at
  short-run sizes (2 frames per clip at 1/8 fps, 16 caption tokens).

    python bench/cameras.py                                     # 1, 4 and 8 cameras, tiny model, 8 min each
    python bench/cameras.py --cameras 1,4 --seconds 320         # shorter
    python bench/cameras.py --cameras 1,4 --batch 1,4 --speed 8 --pace   # lag and batching, cameras live at 8x
    python bench/cameras.py --model random-0.5b --device cuda --dtype float16   # the GPU kit's stage (bench/gpu)
    python bench/cameras.py --service --cameras 4,8 --batch 1,4,8 --speed 32 --max-lag 1   # overload, the service's path
    python bench/cameras.py --service --real-shape --cameras 2 --speed 1       # the 0.5B shape, live

Frames are drawn with numpy (no video codec in the loop). Prints one JSON line per run, then one JSON object with
all of them as the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path


def camera_clips(cam, fps: float, frames_per_clip: int):
    from rlivs.edge_app.sample_scenes import frames
    from rlivs.runtime.frames import Frame, iter_clips

    return iter_clips((Frame(img, t) for t, img in frames(cam, fps)), frames_per_clip, fps)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))], 3)  # nearest rank


def run(engine, n_cams: int, args, gate_on: bool = True, batch: int = 1, pace: bool = False) -> dict:
    from rlivs.edge_app.sample_scenes import scripted_camera
    from rlivs.runtime.activity import GateConfig
    from rlivs.runtime.ingest import StreamIngestor
    from rlivs.runtime.memory import Memory

    c = engine.config.clip
    clip_s = c.frames_per_clip / c.fps
    cams = [scripted_camera(args.seconds, clip_s, args.idle_fraction, size=args.size, seed=args.seed + k)
            for k in range(n_cams)]
    gate = GateConfig(enabled=gate_on, threshold=args.gate_threshold, max_idle_s=args.gate_max_idle)
    db = Path(tempfile.mkdtemp(prefix="rlivs-cameras-")) / "memory.db"
    decided: list[list] = [[] for _ in cams]  # per camera: (clip index, t_start, t_end, caption?, reason)
    gate_s, model_s = [], []
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        ings = [StreamIngestor(engine, mem, f"cam{k}", "synthetic", gate=gate) for k in range(n_cams)]
        streams = [camera_clips(cam, c.fps, c.frames_per_clip) for cam in cams]
        lags: list[list[float]] = [[] for _ in cams]
        calls = 0
        t0 = time.perf_counter()
        live = list(range(n_cams))

        def done(k, r):
            lags[k].append(time.perf_counter() - (t0 + r.t_end / args.speed))
            decided[k].append((r.index, r.t_start, r.t_end, not r.gated, r.gate.reason if r.gate else "off"))
            if "gate" in r.timings:
                gate_s.append(r.timings["gate"])
            if not r.gated and batch == 1:
                model_s.append(sum(v for key, v in r.timings.items() if key not in ("gate", "store")))

        while live:
            ready = []  # this round's clips: one per camera (round robin)
            for k in list(live):
                clip = next(streams[k], None)
                if clip is None:
                    live.remove(k)
                else:
                    ready.append((k, clip))
            if pace and ready:  # the round's clips exist on the live clock
                time.sleep(max(0.0, t0 + max(c.t_end for _, c in ready) / args.speed - time.perf_counter()))
            if batch == 1:  # one at a time
                for k, clip in ready:
                    r = ings[k].step(clip)
                    calls += not r.gated
                    done(k, r)
                continue
            todo = []
            for k, clip in ready:
                d = ings[k].decide(clip)
                if d is not None and not d.caption:
                    done(k, ings[k].step(clip, d))  # an idle record
                else:
                    todo.append((k, clip, d))
            for i in range(0, len(todo), batch):
                group = todo[i:i + batch]
                tm = time.perf_counter()
                outs = engine.caption_clips([ings[k].caption_input(clip) for k, clip, _ in group])
                # a batch's decode is shared by its clips: the call's wall time, split evenly
                model_s.extend([(time.perf_counter() - tm) / len(group)] * len(group))
                calls += 1
                for (k, clip, d), out in zip(group, outs):
                    done(k, ings[k].commit(clip, out, d))
        wall = time.perf_counter() - t0
    events = missed = false_triggers = truth_active = 0
    for cam, rows in zip(cams, decided):
        shows = {i: cam.shows(t0_, t1_, c.fps) for i, t0_, t1_, _, _ in rows}
        truth_active += sum(1 for v in shows.values() if v)
        for e in range(len(cam.events)):
            events += 1
            missed += not any(cap for i, _, _, cap, _ in rows if e in shows[i])
        false_triggers += sum(1 for i, _, _, cap, why in rows if cap and why == "active" and not shows[i])
    n = sum(len(rows) for rows in decided)
    captioned = sum(cap for rows in decided for _, _, _, cap, _ in rows)
    reasons = [why for rows in decided for _, _, _, cap, why in rows if cap]
    return dict(
        cameras=n_cams, gate=gate_on, batch=batch, paced=pace, speed=args.speed, model_calls=calls, clips=n,
        captioned=captioned, gated=n - captioned,
        captioned_first=reasons.count("first"), captioned_active=reasons.count("active"),
        captioned_forced=reasons.count("max_idle"), events=events, events_missed=missed,
        false_triggers=false_triggers, idle_fraction_stated=args.idle_fraction,
        idle_fraction_scripted=round(1 - truth_active / max(n, 1), 3), wall_s=round(wall, 3),
        clips_per_s=round(n / wall, 3), stream_s_per_wall_s=round(n * clip_s / wall, 2),
        gate_ms_per_clip=round(1000 * statistics.mean(gate_s), 2) if gate_s else None,
        model_s_per_caption=round(statistics.mean(model_s), 3) if model_s else None,
        lag_p50_s=[_pct(x, 0.5) for x in lags], lag_p95_s=[_pct(x, 0.95) for x in lags],
        lag_p95_worst_s=max((_pct(x, 0.95) for x in lags if x), default=None),
    )


def _rss_mib() -> float | None:
    try:  # the resident set now (not the peak): what the process holds while it runs
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def run_service(engine, n_cams: int, args, batch: int = 1) -> dict:
    """`rlivs serve`'s own ingest path, without HTTP: each camera is written to a video file and replayed at --speed
    as a live camera (runtime.sources.live.LiveSource keeps only the newest frame; what a busy worker could not read
    is dropped), one `service.workers.StreamWorker` thread per camera with the gate on, all sharing one
    `service.scheduler.ModelTurns(--max-lag, batch)` and one memory; every finished clip comes back through the
    workers' `publish` (the clip bus's ClipEvent: outcome, reason, lag = clip ready -> committed)."""
    import threading
    from argparse import Namespace

    from rlivs.edge_app.sample_scenes import scripted_camera, write_video
    from rlivs.edge_app.service.scheduler import FORCED, ModelTurns
    from rlivs.edge_app.service.workers import IngestSetup, StreamWorker
    from rlivs.runtime.activity import GateConfig
    from rlivs.runtime.sources.live import SourceConfig
    from rlivs.runtime.sources.spec import parse_source

    c = engine.config.clip
    clip_s = c.frames_per_clip / c.fps
    cams = [scripted_camera(args.seconds, clip_s, args.idle_fraction, size=args.size, seed=args.seed + k)
            for k in range(n_cams)]
    work = Path(tempfile.mkdtemp(prefix="rlivs-cameras-"))
    video_fps = max(1, math.ceil(c.fps))  # a whole number (the encoder's); the source samples it at --fps
    videos = []
    for k, cam in enumerate(cams):  # camera k is the same in every run: written once
        key = (k, args.seconds, args.size, video_fps, args.idle_fraction, args.seed)
        if key not in _VIDEOS:
            _VIDEOS[key] = write_video(Path(tempfile.mkdtemp(prefix="rlivs-camera-")) / f"cam{k}.mp4", cam, video_fps)
        videos.append(_VIDEOS[key])
    gate = GateConfig(enabled=True, threshold=args.gate_threshold, max_idle_s=args.gate_max_idle)
    names = [f"cam{k}" for k in range(n_cams)]
    setup = IngestSetup(db=work / "memory.db", engine=engine, fingerprint=engine.model_fingerprint,
                        source=SourceConfig(fps=c.fps, replay_speed=args.speed), replay_files=True,
                        gate={n: gate for n in names})
    turns = ModelTurns(args.max_lag, batch=batch)
    events: list = []
    lock = threading.Lock()

    def publish(ev) -> None:  # what the scoring needs, not the event (its frame and model output)
        light = Namespace(stream=ev.stream, index=ev.index, t_start=ev.t_start, t_end=ev.t_end, outcome=ev.outcome,
                          reason=ev.reason, lag_s=ev.lag_s)
        with lock:
            events.append((time.perf_counter(), light))

    class Worker(StreamWorker):
        """The service's worker, noting each finished clip's frame times (what the camera handed out) for scoring."""

        def _published(self, clip, result, ready_at, skipped):
            self.frame_times.append((clip.index, [float(t) for t in clip.times]))
            super()._published(clip, result, ready_at, skipped)

    workers = [Worker(setup, parse_source(f"{n}={v}"), publish, turns) for n, v in zip(names, videos)]
    for w in workers:
        w.frame_times = []
    rss0 = _rss_mib()
    rss: list[tuple[float, float]] = []  # (time, resident MiB), sampled every 0.5 s while the workers run
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            rss.append((time.perf_counter(), _rss_mib() or 0.0))

    t0 = time.perf_counter()
    threading.Thread(target=sample, daemon=True).start()
    for w in workers:
        w.start()
    deadline = t0 + args.seconds / args.speed * 4 + 600
    while any(w.state not in ("finished", "failed") for w in workers) and time.perf_counter() < deadline:
        time.sleep(0.2)  # a failed worker would retry for ever: the run ends at the first failure
    for w in workers:
        w.stop()
        w.join(30)
    wall = time.perf_counter() - t0
    done.set()
    by_cam = {n: [ev for _, ev in events if ev.stream == n] for n in names}
    outcome = {o: sum(ev.outcome == o for _, ev in events) for o in ("captioned", "gated", "skipped")}
    skipped_why: dict[str, int] = {}
    for _, ev in events:
        if ev.outcome == "skipped":
            skipped_why[ev.reason] = skipped_why.get(ev.reason, 0) + 1
    seen = missed = unseen = 0
    for cam, n, w in zip(cams, names, workers):
        captioned = {ev.index for ev in by_cam[n] if ev.outcome == "captioned"}
        frames = [(t, i) for i, ts in w.frame_times for t in ts]  # every frame handed out, in order
        for e in cam.events:
            # the clips in which the picture changes because of the event, frame to frame as handed out (the
            # camera dropped what a busy worker could not read): a walk changes every frame it is in, a door or an
            # object when it appears or goes
            def on(t, e=e):
                return e.t0 <= t < e.t1

            shown = {i for (ta, _), (tb, i) in zip(frames, frames[1:])
                     if ((on(ta) or on(tb)) if e.kind == "walk" else on(ta) != on(tb))}
            if not shown:
                unseen += 1  # the event fell in frames the camera dropped while its worker waited
                continue
            seen += 1
            missed += not (shown & captioned)
    half = t0 + wall / 2  # lag in the first and second half of the run: bounded, not growing
    lags = {n: [ev.lag_s for ev in by_cam[n]] for n in names}
    lag_cap = {n: [ev.lag_s for ev in by_cam[n] if ev.outcome == "captioned"] for n in names}
    first = [ev.lag_s for t, ev in events if t < half]
    second = [ev.lag_s for t, ev in events if t >= half]
    stats = [w.status()["source_stats"] or {} for w in workers]
    log = list(turns.log)
    return dict(
        mode="service", cameras=n_cams, batch=batch, speed=args.speed, max_lag_s=args.max_lag,
        gate_max_idle_s=args.gate_max_idle, workers=[w.state for w in workers],
        errors=[w.error for w in workers if w.error], clips=len(events), **outcome, skipped_why=skipped_why,
        clips_per_camera=[len(by_cam[n]) for n in names],
        model_calls=sum(turns.batch_sizes.values()), batch_sizes=turns.batch_sizes,
        forced_granted_while_active_waited=sum(1 for _, cls, active, _, _ in log if cls == FORCED and active > 0),
        most_waiting=turns.most_waiting, events=sum(len(cam.events) for cam in cams), events_seen=seen,
        events_missed_by_gate=missed, events_between_clips=unseen,
        frames_sampled=[s.get("frames_sampled") for s in stats], frames_dropped=[s.get("frames_dropped") for s in stats],
        lag_p50_s=[_pct(lags[n], 0.5) for n in names], lag_p95_s=[_pct(lags[n], 0.95) for n in names],
        lag_max_s=[round(max(lags[n]), 3) if lags[n] else None for n in names],
        captioned_lag_p95_s=[_pct(lag_cap[n], 0.95) for n in names],
        lag_p95_first_half_s=_pct(first, 0.95), lag_p95_second_half_s=_pct(second, 0.95),
        wall_s=round(wall, 2), clips_per_s=round(len(events) / wall, 3),
        stream_s_per_wall_s=round(sum(ev.t_end - ev.t_start for _, ev in events) / wall, 2),
        rss_mib_start=rss0, rss_mib_end=_rss_mib(),
        rss_mib_max_per_quarter=[max((m for t, m in rss if t0 + q * wall / 4 <= t < t0 + (q + 1) * wall / 4),
                                     default=None) for q in range(4)],
        waiting_at_end=sum(turns.waiting.values()),
    )


_VIDEOS: dict = {}  # (camera, seconds, size, fps, idle fraction, seed) -> its video file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", default="1,4,8", help="Camera counts, comma-separated.")
    p.add_argument("--seconds", type=float, default=480.0, help="Stream seconds per camera.")
    p.add_argument("--idle-fraction", type=float, default=0.8, help="Share of clips without an event (about).")
    p.add_argument("--model", default=None, help="tiny (default) | random-0.5b (see --real-shape) | a model directory")
    p.add_argument("--fps", type=float, default=None, help="Frames sampled per second (default 1; --real-shape 1/8).")
    p.add_argument("--frames-per-clip", type=int, default=None, help="Default 16 (--real-shape 2).")
    p.add_argument("--max-caption-tokens", type=int, default=None, help="Default 16.")
    p.add_argument("--size", default="320x240", help="Camera frame size WxH.")
    p.add_argument("--gate-threshold", type=float, default=0.005)
    p.add_argument("--gate-max-idle", type=float, default=600.0)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16 (torch backend)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", default="1", help="Batch sizes, comma-separated: each camera count runs at each.")
    p.add_argument("--speed", type=float, default=1.0,
                   help="Stream seconds per wall second the cameras play at, for lag (see the docstring).")
    p.add_argument("--pace", action="store_true", help="Wait until each round's clips exist on the live clock.")
    p.add_argument("--service", action="store_true",
                   help="Run the cameras through the service's ingest path (StreamWorker threads replaying each "
                        "camera as a live source at --speed, one ModelTurns scheduler): overload, lag, skipped.")
    p.add_argument("--max-lag", type=float, default=60.0,
                   help="--service: seconds a forced caption may wait for the model (serve's --max-lag).")
    p.add_argument("--real-shape", action="store_true",
                   help="The real 0.5B shapes with random weights (--model random-0.5b, as bench/batch.py), short-run "
                        "defaults: 2 frames per clip at 1/8 fps (a 16 s clip), 16 caption tokens.")
    p.add_argument("--no-baseline", action="store_true", help="Skip the one-camera gate-off run.")
    args = p.parse_args()
    short = dict(model="random-0.5b", fps=0.125, frames_per_clip=2, max_caption_tokens=16) if args.real_shape else \
        dict(model="tiny", fps=1.0, frames_per_clip=16, max_caption_tokens=16)
    for k, v in short.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    batches = [int(v) for v in args.batch.split(",")]
    if args.speed <= 0 or any(b < 1 for b in batches):
        p.error("--speed must be > 0 and every --batch size >= 1")

    from rlivs.runtime.config import CaptionConfig, ClipConfig, EngineConfig, PipelineConfig
    from rlivs.runtime.engine import load_engine

    config = PipelineConfig(clip=ClipConfig(fps=args.fps, frames_per_clip=args.frames_per_clip),
                            caption=CaptionConfig(max_new_tokens=args.max_caption_tokens))
    # batches need the torch backend's dynamic cache (its CUDA default, the static cache, captions one at a time)
    engine = load_engine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype, threads=args.threads,
                                      kv_cache="dynamic" if max(batches) > 1 else "auto"), config)
    runs = []
    baseline = None
    if not (args.service or args.no_baseline):
        baseline = run(engine, 1, args, gate_on=False)  # every clip of camera 0 captioned
        print(json.dumps(baseline), flush=True)
    for n in (int(v) for v in args.cameras.split(",")):
        for b in batches:
            if args.service:
                r = run_service(engine, n, args, batch=b)
                print(json.dumps(r), flush=True)
                runs.append(r)
                continue
            r = run(engine, n, args, batch=b, pace=args.pace)
            # paced: throughput is the cameras' offered load, not the device's: no speed-up figure
            r["speedup_vs_gate_off"] = None if args.pace or baseline is None else \
                round(r["clips_per_s"] / baseline["clips_per_s"], 2)
            print(json.dumps(r), flush=True)
            runs.append(r)
    print(json.dumps(dict(model=args.model, backend=engine.backend.name, device=args.device, dtype=args.dtype,
                          fps=args.fps, batches=batches, speed=args.speed, paced=args.pace,
                          frames_per_clip=args.frames_per_clip, seconds_per_camera=args.seconds, size=args.size,
                          service=args.service, max_lag_s=args.max_lag if args.service else None,
                          gate_off_1_camera=baseline, runs=runs,
                          events_missed=sum(r.get("events_missed", r.get("events_missed_by_gate", 0)) for r in runs))))


if __name__ == "__main__":
    main()
