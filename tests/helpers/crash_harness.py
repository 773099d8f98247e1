"""Crash harness: `rlivs ingest` killed with SIGKILL at random moments, restarted, checked after every kill.

What one run does (all on loopback-free local files; every wait is bounded):

1. Reference: the same settings, uninterrupted, in this process (the tiny model's ONNX bundle, 1 ONNX Runtime thread,
   as every child process uses): every clip row and the FIFO after every clip.
2. Cross-check: one uninterrupted `rlivs ingest` child process must store exactly the reference (every clip row and
   the final FIFO, bit for bit), so the reference stands for what a process computes.
3. Trials (seeded RNG): start `rlivs ingest` on the same memory (it resumes), wait for a random number of committed
   clips (0-3), snapshot what is committed, wait a random delay, SIGKILL. A third of the trials run the CLI
   unchanged; the others run it through a wrapper that pauses inside each clip's transaction (the private
   `_after_clip_insert` hook, which also writes the clip's index to a marker file): in one third the delay is random,
   in the last third the kill is aimed at the transaction (it comes a random part of the pause after the marker
   appears). Where each kill landed is measured, not assumed: a clip named by the marker but absent afterwards was
   killed inside its transaction. Some kills land during start-up (before any clip).
   After each kill:
   - `PRAGMA integrity_check` is ok;
   - every clip committed before the kill (the snapshot, the clips the child printed, every clip seen by earlier
     checks) is still there, unchanged (caption, vector bytes, times, token count, commit time);
   - the stored clips are exactly clips 0..n-1 of the reference, bit for bit (no duplicate, no gap);
   - the stored FIFO equals the reference FIFO after clip n-1, and so does the FIFO a resumed `StreamIngestor`
     restores (bit for bit);
   - the next child's first clip is n (checked when it starts).
4. A last child runs to the end; the memory then equals the reference exactly.

    python -m tests.helpers.crash_harness --trials 40 --seed 7        # prints one JSON object as its last line

`run_harness` is what tests/app/test_crash_safety.py runs in CI (24 trials).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

STREAM = "cam"
VIDEO = dict(seconds=600.0, fps=2, size=(128, 96))  # small frames: decoding costs little next to captioning
SETTINGS = dict(fps=2.0, frames_per_clip=8, fifo_clips=4, max_caption_tokens=16)  # 4 s clips; evictions from clip 4
SLOW_COMMIT_S = 0.05  # the wrapper's pause inside each clip's transaction

# Runs `rlivs ingest` with a pause inside every clip's transaction (after the clip row is inserted, before the FIFO
# rows change and COMMIT), writing the index of the uncommitted clip to a marker file first.
WRAPPER = """
import sys, time
from rlivs.runtime import memory
marker, pause = sys.argv[1], float(sys.argv[2])
real_init = memory.Memory.__init__
def init(self, *a, **k):
    real_init(self, *a, **k)
    def hook():
        idx = self._conn.execute("SELECT MAX(idx) FROM clips WHERE stream = ?", (%r,)).fetchone()[0]
        with open(marker, "a") as f:
            f.write(f"{idx}\\n")
        time.sleep(pause)
    if not self.readonly:
        self._after_clip_insert = hook
memory.Memory.__init__ = init
from rlivs.edge_app.cli import app
app(sys.argv[3:], prog_name="rlivs")
""" % STREAM


def cli_args(video: Path, db: Path, bundle: Path) -> list[str]:
    return ["ingest", str(video), "--db", str(db), "--stream", STREAM, "--bundle", str(bundle), "--threads", "1",
            "--fps", str(SETTINGS["fps"]), "--frames-per-clip", str(SETTINGS["frames_per_clip"]),
            "--fifo-clips", str(SETTINGS["fifo_clips"]), "--max-caption-tokens", str(SETTINGS["max_caption_tokens"]),
            "--json"]


def config():
    from rlivs.edge_app.options import pipeline_config

    return pipeline_config(**SETTINGS)  # the same function turns the CLI's flags into its config


@dataclass
class Row:
    """One stored clip, as bytes and numbers (bit-exact comparison)."""

    idx: int
    t_start: float
    t_end: float
    caption: str
    n_tokens: int
    vector: bytes
    dim: int
    dtype: str
    committed_at: float

    def content(self) -> tuple:  # everything but the commit time (which differs between runs)
        return (self.idx, self.t_start, self.t_end, self.caption, self.n_tokens, self.vector, self.dim, self.dtype)


def read_state(db: Path) -> tuple[str, list[Row], list[tuple[int, bytes, int, int, str]]]:
    """(integrity_check result, clip rows, FIFO rows) through a plain read-only SQLite connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)
    try:
        conn.execute("BEGIN")  # one snapshot for all three reads
        check = "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
        rows = [Row(*r) for r in conn.execute(
            "SELECT c.idx, c.t_start, c.t_end, c.caption, c.n_tokens, a.vector, a.dim, a.dtype, c.committed_at "
            "FROM clips c JOIN clip_arrays a ON a.id = c.id WHERE c.stream = ? ORDER BY c.idx", (STREAM,))]
        fifo = [tuple(r) for r in conn.execute(
            "SELECT clip_idx, tokens, n, dim, dtype FROM fifo WHERE stream = ? ORDER BY clip_idx", (STREAM,))]
        conn.execute("ROLLBACK")
        return check, rows, fifo
    finally:
        conn.close()


def read_rows(db: Path) -> list[Row]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)
    try:
        return [Row(*r) for r in conn.execute(
            "SELECT c.idx, c.t_start, c.t_end, c.caption, c.n_tokens, a.vector, a.dim, a.dtype, c.committed_at "
            "FROM clips c JOIN clip_arrays a ON a.id = c.id WHERE c.stream = ? ORDER BY c.idx", (STREAM,))]
    finally:
        conn.close()


@dataclass
class Reference:
    rows: list[Row]  # every clip of an uninterrupted run
    fifo_after: list[list[tuple[int, bytes]]]  # fifo_after[i] = the FIFO (clip index, tokens bytes) after clip i
    seconds_per_clip: float  # mean wall time of one clip step here


def reference_run(engine, video: Path, db: Path) -> Reference:
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.ingest import StreamIngestor

    snapshots, t0 = [], time.perf_counter()
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        ing = StreamIngestor(engine, mem, stream=STREAM, source=str(video))
        results = ing.run(ing.clips_from_file(video),
                          on_clip=lambda r: snapshots.append([(i, t.tobytes()) for i, t in ing.fifo.entries()]))
    wall = time.perf_counter() - t0
    _, rows, fifo = read_state(db)
    assert len(rows) == len(results) == len(snapshots) > 0
    assert [(i, b) for i, b, *_ in fifo] == snapshots[-1], "the stored FIFO is not the in-memory FIFO"
    return Reference(rows, snapshots, wall / len(results))


class Child:
    """One `rlivs ingest` process; its JSON lines are collected by a thread (with the time each arrived)."""

    def __init__(self, args: list[str], env: dict, log: Path, wrapper: tuple[Path, float] | None = None):
        if wrapper is None:
            cmd = [sys.executable, "-m", "rlivs.edge_app.cli", *args]
        else:
            cmd = [sys.executable, "-c", WRAPPER, str(wrapper[0]), str(wrapper[1]), *args]
        self.started = time.monotonic()
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=env)
        self.clips: list[int] = []
        self.lines = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(b"{"):
                with self.lines:
                    self.clips.append(json.loads(line)["clip"])
                    self.lines.notify_all()
        with self.lines:
            self.lines.notify_all()

    def wait_clips(self, n: int, timeout: float) -> bool:
        """Until the child has printed n committed clips (or exited, or timed out)."""
        deadline = time.monotonic() + timeout
        with self.lines:
            while len(self.clips) < n and self.proc.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lines.wait(min(left, 0.05))
            return len(self.clips) >= n

    def kill(self) -> int | None:
        """SIGKILL; returns the exit code if it had already exited by itself."""
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        self._log.close()
        return rc

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(f"rlivs ingest did not finish within {timeout} s")
        self._reader.join(timeout=10)
        self._log.close()
        return rc


@dataclass
class Trial:
    n: int
    mode: str  # "plain" (the CLI as is), "slow-commit" (the wrapper, random delay), "aimed" (the wrapper, kill aimed
    # inside the transaction)
    waited_clips: int  # committed clips waited for before the random delay
    delay_s: float  # random delay before the kill, after those clips (or after the start for a start-up kill)
    clips_before: int  # clips stored when the child started
    clips_after: int  # clips stored after the kill
    printed: int  # clips the child printed (each printed after its commit)
    landed: str  # where the kill landed: start-up (no clip yet) | mid-clip | inside a transaction | after the end
    first_clip: int | None  # the child's first clip (must be clips_before)
    seconds: float  # the trial, start to checked


@dataclass
class HarnessResult:
    trials: list[Trial] = field(default_factory=list)
    clips_total: int = 0
    reference_s_per_clip: float = 0.0

    def summary(self) -> dict:
        landed = Counter(t.landed for t in self.trials)
        return {
            "trials": len(self.trials), "clips_in_video": self.clips_total,
            "kills_landed": dict(sorted(landed.items())),
            "kills_inside_a_transaction": landed.get("inside a transaction", 0),
            "clips_committed_by_killed_children": sum(t.clips_after - t.clips_before for t in self.trials),
            "checks_passed": len(self.trials),
            "reference_seconds_per_clip": round(self.reference_s_per_clip, 4),
            "trial_seconds_mean": round(sum(t.seconds for t in self.trials) / max(1, len(self.trials)), 3),
        }


def check_after_kill(ref: Reference, db: Path, known: dict[int, Row], snapshot: list[Row], printed: int,
                     clips_before: int, engine, source: str) -> int:
    """Every check of one kill. Returns the number of clips stored."""
    from rlivs.runtime.memory import Memory
    from rlivs.runtime.ingest import StreamIngestor

    check, rows, fifo = read_state(db)
    assert check == "ok", f"integrity_check: {check}"
    n = len(rows)
    assert [r.idx for r in rows] == list(range(n)), f"clip indices {[r.idx for r in rows]}: a duplicate or a gap"
    assert n >= clips_before + printed, f"{n} clips stored but {clips_before} + {printed} printed as committed"
    for r in snapshot:  # committed before the kill, read while the child ran
        assert r.idx < n and rows[r.idx] == r, f"clip {r.idx} changed or vanished after the kill"
    for i, r in known.items():  # seen by earlier checks
        assert rows[i] == r, f"clip {i} changed after a later kill"
    for r in rows:
        assert r.content() == ref.rows[r.idx].content(), f"clip {r.idx} differs from the uninterrupted run"
        known[r.idx] = r
    want = ref.fifo_after[n - 1] if n else []
    assert [(i, b) for i, b, *_ in fifo] == want, f"stored FIFO after clip {n - 1} differs from the reference"
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:  # what a resumed run starts from
        ing = StreamIngestor(engine, mem, stream=STREAM, source=source)
        assert ing.next_index == n
        assert [(i, t.tobytes()) for i, t in ing.fifo.entries()] == want, "restored FIFO differs from the reference"
    return n


def _wait_for_marker(marker: Path, lines: int, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.proc.poll() is None:
        if marker.exists() and len(marker.read_text().split()) >= lines:
            return
        time.sleep(0.001)


def run_harness(bundle: Path, work: Path, trials: int = 24, seed: int = 7, log=print) -> HarnessResult:
    from rlivs.edge_app.sample_video import make_sample_video
    from rlivs.runtime.engine import load_engine
    from rlivs.runtime.config import EngineConfig

    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    video = make_sample_video(work / "stream.mp4", **VIDEO)
    engine = load_engine(EngineConfig(model=str(bundle), threads=1), config())
    ref = reference_run(engine, video, work / "reference.db")
    result = HarnessResult(clips_total=len(ref.rows), reference_s_per_clip=ref.seconds_per_clip)
    log(f"reference: {len(ref.rows)} clips, {ref.seconds_per_clip * 1000:.1f} ms per clip")

    # 2. one uninterrupted child stores exactly the reference
    cross = work / "uninterrupted.db"
    child = Child(cli_args(video, cross, bundle), env, work / "uninterrupted.log")
    assert child.finish(timeout=300) == 0, (work / "uninterrupted.log").read_text()[-2000:]
    _, rows, fifo = read_state(cross)
    assert [r.content() for r in rows] == [r.content() for r in ref.rows], "a child process computed other clips"
    assert [(i, b) for i, b, *_ in fifo] == ref.fifo_after[-1], "a child process computed another FIFO"

    # 3. the trials, all on one memory
    db = work / "memory.db"
    known: dict[int, Row] = {}
    stored = 0
    step = max(ref.seconds_per_clip, 0.005)
    for n in range(trials):
        mode = ("plain", "slow-commit", "aimed")[n % 3]
        slow = mode != "plain"
        marker = work / f"marker-{n}.txt"
        t0 = time.monotonic()
        child = Child(cli_args(video, db, bundle), env, work / f"trial-{n}.log",
                      wrapper=(marker, SLOW_COMMIT_S) if slow else None)
        per_clip = step + (SLOW_COMMIT_S if slow else 0.0)
        waited = rng.choice([0, 1, 1, 2, 2, 3])
        if waited == 0 and mode != "aimed":  # a start-up kill: during imports, model load or the first clips
            delay = rng.uniform(0.0, 0.8)
        else:
            waited = max(waited, 1)
            assert child.wait_clips(waited, timeout=120) or child.proc.poll() is not None, \
                f"trial {n}: no clip within 120 s"
            delay = rng.uniform(0.0, 0.8 * SLOW_COMMIT_S if mode == "aimed" else 1.5 * per_clip)
        snapshot = read_rows(db) if db.exists() else []  # committed before the kill (read while the child runs)
        if mode == "aimed":  # the next clip's transaction is open once its index is in the marker file
            _wait_for_marker(marker, waited + 1, child, timeout=60)
        time.sleep(delay)
        rc = child.kill()
        with child.lines:
            printed = list(child.clips)
        if rc not in (None, 0):
            raise AssertionError(f"trial {n}: rlivs ingest failed (exit {rc}): "
                                 + (work / f"trial-{n}.log").read_text()[-2000:])
        if printed:
            assert printed[0] == stored, f"trial {n}: the child started at clip {printed[0]}, not at {stored}"
            assert printed == list(range(stored, stored + len(printed))), f"trial {n}: clips {printed}"
        before = stored
        stored = check_after_kill(ref, db, known, snapshot, len(printed), before, engine, str(video))
        in_tx = marker.exists() and marker.read_text().split() and int(marker.read_text().split()[-1]) >= stored
        landed = ("after the end" if rc == 0 else "inside a transaction" if in_tx
                  else "mid-clip" if stored > before or printed else "start-up")
        trial = Trial(n, mode, waited, round(delay, 4), before, stored, len(printed),
                      landed, printed[0] if printed else None, round(time.monotonic() - t0, 3))
        result.trials.append(trial)
        log(f"trial {n:2d} {trial.mode:11s} wait {waited} clips + {delay * 1000:6.1f} ms: clips {before:3d} -> "
            f"{stored:3d} ({landed})")

    # 4. the last child runs to the end
    child = Child(cli_args(video, db, bundle), env, work / "final.log")
    assert child.finish(timeout=300) == 0, (work / "final.log").read_text()[-2000:]
    if child.clips:
        assert child.clips[0] == stored, f"the final run started at clip {child.clips[0]}, not at {stored}"
    check, rows, fifo = read_state(db)
    assert check == "ok"
    assert [r.content() for r in rows] == [r.content() for r in ref.rows]
    assert [(i, b) for i, b, *_ in fifo] == ref.fifo_after[-1]
    for i, r in known.items():
        assert rows[i] == r
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bundle", type=Path, help="an exported tiny bundle (default: export one to a temp dir)")
    ap.add_argument("--workdir", type=Path, help="where the video, memories and logs go (default: a temp dir)")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="rlivs-crash-"))
    bundle = a.bundle
    if bundle is None:
        from rlivs.export.bundle import ExportConfig, export_bundle

        bundle = work / "bundle"
        export_bundle("tiny", bundle, ExportConfig(embed_dtype="float32"))
    t0 = time.monotonic()
    result = run_harness(bundle, work, a.trials, a.seed, log=lambda s: print(s, file=sys.stderr))
    out = {"command": " ".join(["python -m tests.helpers.crash_harness", *sys.argv[1:]]), "seed": a.seed,
           **result.summary(), "wall_s": round(time.monotonic() - t0, 1),
           "trials_detail": [t.__dict__ for t in result.trials]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
