"""Load on a real `rlivs serve` (a subprocess with the tiny model, a generated video replayed as a live camera), on
loopback only, bounded in count and time. Prints one JSON object as the last line:

- `questions`: a flood of `--clients` clients asking back to back for `--seconds`: answered per second, p50/p95
  latency of the answered ones, how many got 429 (and the Retry-After they were given)
- `ingest`: clips committed per second before the flood and during it (what share of live video was captioned)
- `healthz`: the slowest /healthz and /metrics answer sampled every 0.25 s during the flood
- `events`: of `--subscribers` /v1/events streams opened at once, how many were held and how many refused (503)
- `connections`: of `--idle` idle TCP connections, how many were refused at once (503), how many the header deadline
  closed, and whether /healthz answered afterwards
- `rss_mb`: the server process's resident memory at start, after each phase, and its peak

    python bench/serve_load.py                      # defaults: 32 clients for 20 s, 40 streams, 300 idle sockets
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

FLAGS = ["--model", "tiny", "--fps", "2", "--frames-per-clip", "4", "--max-caption-tokens", "8",
         "--max-answer-tokens", "8"]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def clips(url: str) -> int:
    return next(s["clips"] for s in httpx.get(url + "/v1/streams", timeout=10).json()["streams"] if s["name"] == "cam")


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def flood(url: str, n_clients: int, seconds: float, pid: int, peak: list[float]) -> dict:
    stop = threading.Event()
    ok_s, statuses, retry = [], [], []

    def client():
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.post("/v1/ask", json={"question": "what moved across the scene?"})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    ok_s.append(time.monotonic() - t0)
                elif r.status_code == 429:
                    retry.append(int(r.headers.get("retry-after", 0)))
                    stop.wait(0.2)

    c0 = clips(url)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(n_clients)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    health = []
    while time.monotonic() - t_start < seconds:
        t0 = time.monotonic()
        httpx.get(url + "/healthz", timeout=30).raise_for_status()
        httpx.get(url + "/metrics", timeout=30).raise_for_status()
        health.append(time.monotonic() - t0)
        peak[0] = max(peak[0], rss_mb(pid))
        time.sleep(0.25)
    stop.set()
    wall = time.monotonic() - t_start
    committed = clips(url) - c0
    for t in threads:
        t.join(120)
    return {"clients": n_clients, "seconds": round(wall, 1), "answered": statuses.count(200),
            "answered_per_s": round(statuses.count(200) / wall, 2), "p50_s": pct(ok_s, 0.5), "p95_s": pct(ok_s, 0.95),
            "rejected_429": statuses.count(429), "retry_after_s": [min(retry), max(retry)] if retry else None,
            "other": sorted(set(statuses) - {200, 429}), "clips_during": committed,
            "clips_per_s_during": round(committed / wall, 3), "healthz_max_s": round(max(health), 3),
            "healthz_median_s": round(statistics.median(health), 4)}


def subscribers(url: str, n: int) -> dict:
    held, refused, socks = 0, 0, []
    port = int(url.rsplit(":", 1)[1])
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = s.recv(4096)
        if head.startswith(b"HTTP/1.1 200"):
            held += 1
            socks.append(s)
        else:
            refused += 1 if head.startswith(b"HTTP/1.1 503") else 0
            s.close()
    for s in socks:
        s.close()
    return {"opened": n, "held": held, "refused_503": refused}


def idle_connections(url: str, n: int, header_timeout: float) -> dict:
    port = int(url.rsplit(":", 1)[1])
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    time.sleep(0.5)
    refused, closed = 0, 0
    for s in socks:
        s.settimeout(0.05)
        try:
            data = s.recv(4096)
            refused += data.startswith(b"HTTP/1.1 503")
        except socket.timeout:
            pass
    time.sleep(header_timeout + 1.0)
    for s in socks:
        s.settimeout(0.05)
        try:
            data = s.recv(4096)
            closed += data == b""
        except (socket.timeout, OSError):
            pass
        s.close()
    t0 = time.monotonic()
    ok = httpx.get(url + "/healthz", timeout=10).status_code == 200
    return {"opened": n, "refused_503_at_once": refused, "closed_by_server": closed, "healthz_after": ok,
            "healthz_after_s": round(time.monotonic() - t0, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0, help="of the question flood (and of the baseline / 2)")
    p.add_argument("--subscribers", type=int, default=40)
    p.add_argument("--idle", type=int, default=300)
    p.add_argument("--header-timeout", type=float, default=3.0)
    p.add_argument("--ingest-share", type=float, default=0.5)
    p.add_argument("--replay-speed", type=float, default=2.0)
    args = p.parse_args()
    assert args.clients <= 256 and args.idle <= 1000 and args.seconds <= 300, "bounded: see --help"

    from rlivs.edge_app.sample_video import make_sample_video

    work = Path(tempfile.mkdtemp(prefix="rlivs-load-"))
    video = make_sample_video(work / "cam.mp4", seconds=max(120.0, 3 * args.seconds * args.replay_speed))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "rlivs.edge_app.cli", "serve", "--source", f"cam={video}", "--db",
           str(work / "memory.db"), "--port", str(port), "--replay-speed", str(args.replay_speed),
           "--header-timeout", str(args.header_timeout), "--ingest-share", str(args.ingest_share), *FLAGS]
    env = {k: v for k, v in os.environ.items() if k != "RLIVS_TOKEN"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    out: dict = {"replay_speed": args.replay_speed, "ingest_share": args.ingest_share}
    try:
        wait_for(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, 120, "rlivs serve")
        wait_for(lambda: clips(url) >= 1, 60, "the first caption")
        rss = {"start": round(rss_mb(proc.pid), 1)}
        peak = [rss["start"]]
        c0, t0 = clips(url), time.monotonic()
        time.sleep(args.seconds / 2)
        base = (clips(url) - c0) / (time.monotonic() - t0)
        video_clips_per_s = args.replay_speed * 2.0 / 4  # fps 2, 4 frames per clip, replayed at replay_speed
        out["ingest"] = {"video_clips_per_s": video_clips_per_s, "clips_per_s_before": round(base, 3)}
        out["questions"] = flood(url, args.clients, args.seconds, proc.pid, peak)
        out["ingest"]["clips_per_s_during"] = out["questions"]["clips_per_s_during"]
        out["healthz"] = {"max_s": out["questions"].pop("healthz_max_s"),
                          "median_s": out["questions"].pop("healthz_median_s")}
        rss["after_questions"] = round(rss_mb(proc.pid), 1)
        out["events"] = subscribers(url, args.subscribers)
        rss["after_events"] = round(rss_mb(proc.pid), 1)
        out["connections"] = idle_connections(url, args.idle, args.header_timeout)
        rss["after_connections"] = round(rss_mb(proc.pid), 1)
        rss["peak"] = round(max(peak + list(rss.values())), 1)
        out["rss_mb"] = rss
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
