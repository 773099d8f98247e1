"""Hostile clients against a real `rlivs serve` (a subprocess with the tiny model and a token, a generated video
replayed as a live camera), on loopback only, bounded in count and time (issue 23). Prints one JSON object as the
last line:

- `slow_bodies`: `--slow` sockets from one address (`--flood-from`, default 127.0.0.2), each sending a request head
  with the token and `Content-Length: 1000`, then one body byte every `--every` seconds; every socket the server
  closes is opened again at the next byte time, for `--seconds`. What the server answered them (`408` at the body
  deadline, `503` beyond the per-address cap, closed without a word) and how long the longest one was held.
- `healthz`: `/healthz` probed every 0.25 s with a fresh connection and a 1 s timeout, from another address
  (127.0.0.1) and from the flooding address itself: probes, answered 200 within 1 s, share, slowest.
- `ask_stream` (with `--ask-stream-clients N`): N clients, spread over 127.0.1.x addresses (8 per address, so the
  per-address connection cap does not hide the question gate), posting `/v1/ask/stream` back to back (0.2 s pause
  after a 429): answered, 429s, other statuses.
- `ingest`: clips committed per second before the flood and during it (the video brings 1 clip per second of
  stream time per `--replay-speed`).
- `rejected`: the server's own `rlivs_http_rejected_total` by reason, at the end.

Each load runs in its own process (the flooders at `--nice`, default 10: on a device they would be other machines),
so the probes' timings are the server's, not the bench's own GIL or scheduling.

    python bench/serve_hostile.py                               # 256 slow-body sockets for 60 s
    python bench/serve_hostile.py --ask-stream-clients 120      # plus a 120-client /v1/ask/stream flood
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

FLAGS = ["--model", "tiny", "--fps", "2", "--frames-per-clip", "4", "--max-caption-tokens", "8",
         "--max-answer-tokens", "8"]
TOKEN = "bench-hostile-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


from serve_load import free_port, wait_for  # noqa: E402 - the sibling bench's loopback helpers (bench/ is sys.path[0])


def clips(url: str) -> int:
    r = httpx.get(url + "/v1/streams", headers=AUTH, timeout=10)
    return next(s["clips"] for s in r.json()["streams"] if s["name"] == "cam")


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def slow_bodies(port: int, n: int, source: str, every_s: float, stop: threading.Event, out: dict) -> None:
    """Keep `n` slow-body sockets open from `source` (reopening what the server closes), one byte each per `every_s`."""
    head = (b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    answers: dict[str, int] = {}
    held: list[float] = []

    def done(s: socket.socket, what: str) -> None:
        answers[what] = answers.get(what, 0) + 1
        held.append(time.monotonic() - opened.pop(s))
        sel.unregister(s)
        s.close()

    while not stop.is_set():
        while len(opened) < n and not stop.is_set():
            s = socket.socket()
            try:
                s.bind((source, 0))
                s.settimeout(5)
                s.connect(("127.0.0.1", port))
                s.sendall(head)
            except OSError:
                answers["connect_failed"] = answers.get("connect_failed", 0) + 1
                s.close()
                break
            s.setblocking(False)
            opened[s] = time.monotonic()
            out["connections_opened"] = out.get("connections_opened", 0) + 1
            sel.register(s, selectors.EVENT_READ)
        t_next = time.monotonic() + every_s
        while not stop.is_set() and (left := t_next - time.monotonic()) > 0:
            for key, _ in sel.select(min(left, 0.2)):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    done(s, "reset")
                    continue
                m = re.match(rb"HTTP/1\.1 (\d{3})", data)
                done(s, m.group(1).decode() if m else "closed_silently" if data == b"" else "other")
        for s in list(opened):
            try:
                s.send(b" ")
            except OSError:
                done(s, "reset")
    out["answers"] = dict(sorted(answers.items()))
    out["held_s_max"] = round(max(held), 1) if held else None
    out["held_s_p50"] = pct(held, 0.5)
    out["still_open_at_end"] = len(opened)
    for s in list(opened):
        s.close()


def probe(url: str, source: str, stop: threading.Event, out: dict) -> None:
    times, statuses = [], []
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=1.0,
                      headers={"Connection": "close"}) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                code = c.get(url + "/healthz").status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            dt = time.monotonic() - t0
            statuses.append(code)
            if code == 200:
                times.append(dt)
            stop.wait(max(0.0, 0.25 - dt))
    ok = sum(1 for t in times if t <= 1.0)
    out.update({"from": source, "probes": len(statuses), "ok_within_1s": ok,
                "share": round(ok / len(statuses), 4) if statuses else None, "slowest_ok_s": pct(times, 1.0),
                "p50_s": pct(times, 0.5), "failures": {str(k): statuses.count(k) for k in set(statuses) if k != 200}})


def ask_stream_flood(url: str, n: int, stop: threading.Event, out: dict) -> None:
    statuses: list = []
    ok_s: list[float] = []

    def client(i: int) -> None:
        source = f"127.0.1.{i // 8 + 1}"
        with httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=source), timeout=120,
                          headers=AUTH) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    with c.stream("POST", "/v1/ask/stream", json={"question": "what moved across the scene?"}) as r:
                        r.read()
                        code = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                statuses.append(code)
                if code == 200:
                    ok_s.append(time.monotonic() - t0)
                elif code == 429:
                    stop.wait(0.2)
                else:
                    stop.wait(0.5)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(130)
    out.update({"clients": n, "answered": statuses.count(200), "rejected_429": statuses.count(429),
                "p50_s": pct(ok_s, 0.5), "p95_s": pct(ok_s, 0.95),
                "other": {str(k): statuses.count(k) for k in set(statuses) if k not in (200, 429)}})


def _job(name: str, fn, args: tuple, stop, results, nice: int = 0) -> None:
    """Run `fn(*args, stop, out)` in this process (at `nice`) until `stop`; put (name, out) on `results`."""
    if nice:
        os.nice(nice)
    out: dict = {}
    done = threading.Event()
    watcher = threading.Thread(target=lambda: (stop.wait(), done.set()), daemon=True)
    watcher.start()
    fn(*args, done, out)
    results.put((name, out))


def rejected(url: str) -> dict:
    text = httpx.get(url + "/metrics", headers=AUTH, timeout=10).text
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^rlivs_http_rejected_total\{reason="([^"]+)"\} (\S+)$', text, re.M)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slow", type=int, default=256, help="slow-body sockets kept open from --flood-from")
    p.add_argument("--every", type=float, default=2.0, help="seconds between two body bytes of a slow socket")
    p.add_argument("--flood-from", default="127.0.0.2")
    p.add_argument("--seconds", type=float, default=60.0, help="of the flood")
    p.add_argument("--ask-stream-clients", type=int, default=0,
                   help="also flood POST /v1/ask/stream with this many clients (e.g. 120)")
    p.add_argument("--replay-speed", type=float, default=2.0)
    p.add_argument("--nice", type=int, default=10,
                   help="niceness of the flooding processes (on a device they are other machines; here they share "
                        "its cores with the server and the probes; 0: the same priority)")
    args = p.parse_args()
    assert args.slow <= 600 and args.ask_stream_clients <= 256 and args.seconds <= 600, "bounded: see --help"
    for a in (args.flood_from,):
        assert a.startswith("127."), "loopback only"

    from rlivs.edge_app.sample_video import make_sample_video

    work = Path(tempfile.mkdtemp(prefix="rlivs-hostile-"))
    video = make_sample_video(work / "cam.mp4", seconds=max(120.0, 3 * args.seconds * args.replay_speed))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "rlivs.edge_app.cli", "serve", "--source", f"cam={video}", "--db",
           str(work / "memory.db"), "--port", str(port), "--replay-speed", str(args.replay_speed), "--token", TOKEN,
           *FLAGS]
    env = {k: v for k, v in os.environ.items() if k != "RLIVS_TOKEN"}
    log = (work / "serve.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    out: dict = {"slow": args.slow, "every_s": args.every, "flood_from": args.flood_from, "seconds": args.seconds,
                 "nice": args.nice, "cpus": os.cpu_count()}
    try:
        wait_for(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, 120, "rlivs serve")
        wait_for(lambda: clips(url) >= 3, 90, "three captions (warm-up)")
        c0, t0 = clips(url), time.monotonic()
        time.sleep(10.0)
        video_clips_per_s = args.replay_speed * 2.0 / 4  # fps 2, 4 frames per clip
        out["ingest"] = {"video_clips_per_s": video_clips_per_s,
                         "clips_per_s_before": round((clips(url) - c0) / (time.monotonic() - t0), 3)}
        # each load in its own process, so that the probes' timings are not the bench's own GIL contention
        ctx = multiprocessing.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        jobs = [ctx.Process(target=_job, args=(name, fn, a, stop, results, nice)) for name, fn, a, nice in [
            ("slow", slow_bodies, (port, args.slow, args.flood_from, args.every), args.nice),
            ("other", probe, (url, "127.0.0.1"), 0),
            ("same", probe, (url, args.flood_from), 0),
            *([("asks", ask_stream_flood, (url, args.ask_stream_clients), args.nice)]
              if args.ask_stream_clients else [])]]
        for j in jobs:
            j.start()
        time.sleep(1.0)  # the processes start
        c0, t0 = clips(url), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = clips(url), time.monotonic()
        stop.set()
        got = dict(results.get(timeout=180) for _ in jobs)
        for j in jobs:
            j.join(30)
        slow, other, same, asks = got["slow"], got["other"], got["same"], got.get("asks")
        out["ingest"].update({"clips_during": c1 - c0, "clips_per_s_during": round((c1 - c0) / (t1 - t0), 3)})
        out["slow_bodies"] = slow
        out["healthz"] = {"other_address": other, "flooding_address": same}
        out["ask_stream"] = asks or "not run (--ask-stream-clients 0)"
        out["rejected"] = rejected(url)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    out["server_log_bytes"] = (work / "serve.log").stat().st_size
    print(json.dumps(out))


if __name__ == "__main__":
    main()
