"""`rlivs serve`: ingest live sources in the background and serve the API and the web page.

Registered on the `rlivs` app by `register(app)` (edge_app/cli.py). Imports nothing heavy at module level: the
service (edge_app/service/), FastAPI and the model are imported when the command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from rlivs.edge_app import options as o
from rlivs.edge_app.options import console, fail as _fail
from rlivs.runtime.errors import UserError

log = logging.getLogger("rlivs.serve")


def serve(
    source: List[str] = typer.Option(
        [], "--source", "-s",
        help="\\[name=]SOURCE, repeatable: a video file, /dev/videoN, rtsp://..., http(s)://... "
             "Each is its own stream."),
    db: Path = typer.Option(Path("memory.db"), "--db", help="SQLite memory (created or resumed)."),
    model: str = o.Model, bundle: Optional[Path] = o.Bundle, backend: str = o.Backend, device: str = o.Device,
    dtype: str = o.Dtype, threads: Optional[int] = o.Threads, kv_cache: str = o.KvCache,
    max_context: Optional[int] = o.MaxContext,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    token: Optional[str] = typer.Option(None, "--token", envvar="RLIVS_TOKEN", show_default=False,
                                        help="Bearer token every endpoint but /healthz requires (env RLIVS_TOKEN)."),
    fps: float = o.Fps, frames_per_clip: int = o.FramesPerClip, keep: Optional[int] = o.Keep,
    keep_ratio: float = o.KeepRatio, strategy: str = o.Strategy, fifo_clips: Optional[int] = o.FifoClips,
    fifo_tokens: Optional[int] = o.FifoTokens, probe_layers: Optional[str] = o.ProbeLayers,
    num_probe_layers: int = o.NumProbeLayers, max_caption_tokens: int = o.MaxCaptionTokens,
    top_k: int = o.TopK, token_budget: int = o.TokenBudget, mmr_lambda: float = o.MmrLambda,
    max_answer_tokens: int = o.MaxAnswerTokens,
    replay: bool = typer.Option(True, "--replay/--no-replay",
                                help="Replay file sources at real speed as live cameras (--no-replay: ingest them as "
                                     "fast as possible, resumable)."),
    replay_speed: float = typer.Option(1.0, help="Replay files at this multiple of real speed."),
    loop: bool = typer.Option(False, "--loop", help="Restart a replayed file at its end (the timeline continues)."),
    reconnect_max: float = typer.Option(30.0, help="Longest wait between reconnect attempts, seconds."),
    read_timeout: float = typer.Option(10.0, help="A source silent this long is reconnected, seconds."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every HTTP request."),
):
    """Ingest live sources in the background and serve the API and the web page (http://HOST:PORT/)."""
    from rlivs.edge_app.service.app import Server, is_loopback

    if not is_loopback(host) and not token:
        _fail(f"refusing to bind {host} without a token: any address but loopback exposes the API to the network. "
              f"Pass --token T (or set RLIVS_TOKEN), or bind --host 127.0.0.1")
    if token is not None and not token.strip():
        _fail("--token is empty: pass a long random string, e.g. --token $(openssl rand -hex 16)")
    if token and len(token) < 16:
        console.print("[yellow]warning:[/] the token is shorter than 16 characters; use e.g. $(openssl rand -hex 16)")
    if not 0 < port < 65536:
        _fail(f"--port {port} is not a TCP port: use 1-65535, e.g. --port 8000")
    _refuse_busy_port(host, port)  # before the model loads and before the memory is created
    try:
        from rlivs.edge_app.service.core import EdgeService, ServiceConfig
        from rlivs.runtime.engine import load_engine
        from rlivs.edge_app.source_specs import parse_sources
        from rlivs.runtime.sources.live import ReconnectConfig, SourceConfig

        specs = parse_sources(source)
        for s in specs:
            path = s.url.removeprefix("file://")
            if s.kind == "file" and not Path(path).is_file():
                if not replay:
                    _fail(f"{path} does not exist: check the path (with --replay a missing file is retried)")
                console.print(f"[yellow]warning:[/] {path} does not exist (yet); stream {s.name} retries until it does")
        config = o.pipeline_config(fps=fps, frames_per_clip=frames_per_clip, keep=keep, keep_ratio=keep_ratio,
                                   strategy=strategy, fifo_clips=fifo_clips, fifo_tokens=fifo_tokens,
                                   probe_layers=probe_layers, num_probe_layers=num_probe_layers,
                                   max_caption_tokens=max_caption_tokens, top_k=top_k, token_budget=token_budget,
                                   mmr_lambda=mmr_lambda, max_answer_tokens=max_answer_tokens)
        src_cfg = SourceConfig(fps=fps, replay_speed=replay_speed, loop=loop, read_timeout_s=read_timeout,
                               reconnect=ReconnectConfig(max_s=max(reconnect_max, 0.5)))
        ec = o.check_engine(o.engine_config(model, bundle, backend, device, dtype, threads, kv_cache, max_context))
        with console.status(f"loading model {ec.source} ..."):
            engine = load_engine(ec, config)
        service = EdgeService(engine, db, specs, ServiceConfig(replay_files=replay, source=src_cfg))
        server = Server(service, host=host, port=port, token=token, log_level="info" if access_log else "warning",
                        access_log=access_log)
    except UserError as e:
        _fail(str(e))
    names = ", ".join(f"{s.name} ({s.url})" for s in specs) or "none (answering from the memory only)"
    console.print(f"rlivs serve: sources {names}; memory {db}")
    console.print(f"[bold]open http://{'[' + host + ']' if ':' in host else host}:{port}/[/]"
                  + ("  (token required)" if token else ""))
    service.start()
    try:
        server.run()  # until Ctrl-C / SIGTERM
    finally:
        console.print("stopping ingest ...")
        service.stop()


def _refuse_busy_port(host: str, port: int) -> None:
    """Exit 2 when HOST:PORT cannot be bound (another server on it, or an address this machine does not have). Bound
    the way uvicorn binds it (SO_REUSEADDR), then released at once."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        _fail(f"--host {host} cannot be resolved ({e.strerror}): pass an address of this machine, e.g. 127.0.0.1")
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                _fail(f"port {port} on {host} is already in use (another rlivs serve?): stop that server or pass a "
                      f"free port, e.g. --port {port + 1}")
            _fail(f"cannot listen on {host}:{port} ({e.strerror}): pass an address of this machine with --host and "
                  f"a free --port")


def register(app: typer.Typer) -> None:
    """Add `rlivs serve` to the CLI."""
    app.command("serve")(serve)
