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
        help="\\[name=]SOURCE, repeatable: a video file, /dev/videoN, rtsp://..., http(s)://..., a robot "
             "recording (ROS bag, MCAP; see --topic). Each is its own stream."),
    topic: List[str] = typer.Option([], "--topic", help="Image topic of the robot recordings among the sources "
                                                        "(ROS bag, MCAP), repeatable: each is a stream."),
    db: Path = o.db_option("SQLite memory (created or resumed)."),
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
    fifo_positions: str = o.FifoPositions,
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
    allow_host: List[str] = typer.Option(
        [], "--allow-host", help="A host name this device is reached by (repeatable). Requests whose Host header "
                                 "names anything but the bound address, 127.0.0.1, localhost, [::1] or these get 421."),
    webhook_allow: List[str] = typer.Option(
        [], "--webhook-allow", help="A non-public address or network webhooks may reach (repeatable), e.g. "
                                    "10.0.0.5 or 192.168.1.0/24. Loopback, private, link-local and unspecified "
                                    "addresses are refused otherwise."),
    max_connections: int = typer.Option(256, help="Open HTTP connections at most; more get 503."),
    header_timeout: float = typer.Option(10.0, help="Seconds a connection may take to send a request head."),
    max_subscribers: int = typer.Option(32, help="Open /v1/events streams at most; more get 503."),
    question_queue: int = typer.Option(8, help="Questions waiting for the model at most; more get 429."),
    ingest_share: float = typer.Option(0.5, help="Least share of the model ingest keeps while questions flood it, "
                                                 "in [0, 1)."),
    max_watches: int = typer.Option(100, help="Watches at most; more get 409."),
    max_lag: float = typer.Option(60.0, "--max-lag", help="Seconds a forced caption (the gate saw no change, but its "
                                                         "longest idle time passed) may wait for the model while "
                                                         "other cameras' active clips go first; past it the clip is "
                                                         "recorded idle (counted as skipped, reason lag)."),
    batch: int = o.Batch,
    start_time: Optional[str] = o.StartTime,
    gate: List[str] = o.Gate, gate_threshold: List[str] = o.GateThreshold, gate_max_idle: List[str] = o.GateMaxIdle,
    retrieval: str = o.Retrieval,
    retain_days: Optional[float] = typer.Option(None, help="Forget captions of clips that ended more than this many "
                                                           "days ago (checked every 10 minutes while ingesting)."),
    mqtt: Optional[str] = typer.Option(None, "--mqtt", help="Publish every caption and watch match to this MQTT "
                                                            "broker: mqtt://host:1883 (mqtts:// for TLS)."),
    mqtt_prefix: str = typer.Option("rlivs", "--mqtt-prefix", help="MQTT topic prefix: PREFIX/status, "
                                                                   "PREFIX/STREAM/caption, PREFIX/STREAM/thumbnail, "
                                                                   "PREFIX/STREAM/watch/ID."),
    mqtt_client_id: Optional[str] = typer.Option(None, "--mqtt-client-id", show_default=False,
                                                 help="MQTT client id; default rlivs-HOST-PID."),
    mqtt_username: Optional[str] = typer.Option(None, "--mqtt-username", help="MQTT username."),
    mqtt_password: Optional[str] = typer.Option(None, "--mqtt-password", envvar="RLIVS_MQTT_PASSWORD",
                                                show_default=False, help="MQTT password (env RLIVS_MQTT_PASSWORD)."),
    mqtt_ca: Optional[Path] = typer.Option(None, "--mqtt-ca", show_default=False,
                                           help="PEM CA file for an mqtts:// broker; default the system's CAs."),
    mqtt_buffer: int = typer.Option(1000, "--mqtt-buffer", help="Messages kept while the broker is away (the "
                                                                "oldest dropped first)."),
    mqtt_discovery: bool = typer.Option(False, "--mqtt-discovery",
                                        help="Announce one Home Assistant device per stream (MQTT discovery): "
                                             "caption, last seen, watch match, thumbnail."),
    mqtt_discovery_prefix: str = typer.Option("homeassistant", "--mqtt-discovery-prefix",
                                              help="Home Assistant's MQTT discovery prefix."),
    public_url: Optional[str] = o.PublicUrl,
):
    """Ingest live sources in the background and serve the API and the web page (http://HOST:PORT/)."""
    from rlivs.edge_app.service.app import Limits, Server, is_loopback

    if not is_loopback(host) and not token:
        _fail(f"refusing to bind {host} without a token: any address but loopback exposes the API to the network. "
              f"Pass --token T (or set RLIVS_TOKEN), or bind --host 127.0.0.1")
    if token is not None and not token.strip():
        _fail("--token is empty: pass a long random string, e.g. --token $(openssl rand -hex 16)")
    if token and not token.isascii():
        _fail("--token holds non-ASCII characters, which HTTP headers cannot carry reliably: use e.g. "
              "--token $(openssl rand -hex 16)")
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

        specs = parse_sources(source, topic)  # a recording: one stream per image topic
        for s in specs:
            path = s.url.removeprefix("file://")
            if s.kind == "file" and Path(path).is_dir() and s.topic is None:
                _fail(f"{path} is a directory: give a video file in it, e.g. --source {Path(path) / 'cam.mp4'}")
            if s.kind == "file" and not Path(path).is_file() and s.topic is None:  # cameras and URLs are retried
                _fail(f"{path} does not exist: check the path of --source {s.name}={s.url} (a file source must "
                      f"exist at start; cameras and network streams are retried until they answer)")
        config = o.pipeline_config(fps=fps, frames_per_clip=frames_per_clip, keep=keep, keep_ratio=keep_ratio,
                                   strategy=strategy, fifo_clips=fifo_clips, fifo_tokens=fifo_tokens,
                                   probe_layers=probe_layers, num_probe_layers=num_probe_layers,
                                   max_caption_tokens=max_caption_tokens, fifo_positions=fifo_positions,
                                   top_k=top_k, token_budget=token_budget,
                                   mmr_lambda=mmr_lambda, max_answer_tokens=max_answer_tokens, retrieval=retrieval)
        public_url = o.check_public_url(public_url)
        mqtt_cfg = None
        if mqtt is not None:
            from rlivs.edge_app.service.mqtt import MqttConfig

            mqtt_cfg = MqttConfig.from_url(mqtt, topic_prefix=mqtt_prefix, client_id=mqtt_client_id,
                                           username=mqtt_username, password=mqtt_password,
                                           ca_file=str(mqtt_ca) if mqtt_ca else None, buffer=mqtt_buffer,
                                           public_url=public_url, discovery=mqtt_discovery,
                                           discovery_prefix=mqtt_discovery_prefix)
        ec = o.check_engine(o.engine_config(model, bundle, backend, device, dtype, threads, kv_cache, max_context))
        ec = o.check_batch(batch, ec)  # a bundle without a batch axis (or engines too narrow) is refused here
        o.check_backbone(ec, config, db)  # frames per clip the model family cannot group, a memory of another family
        src_cfg = SourceConfig(fps=fps, replay_speed=replay_speed, loop=loop, read_timeout_s=read_timeout,
                               reconnect=ReconnectConfig(max_s=max(reconnect_max, 0.5)))
        svc_cfg = ServiceConfig(replay_files=replay, source=src_cfg, webhook_allow=tuple(webhook_allow),
                                max_subscribers=max_subscribers, question_queue=question_queue,
                                ingest_share=ingest_share, max_watches=max_watches, max_lag_s=max_lag, batch=batch,
                                start_time=o.start_clock(start_time), retain_days=retain_days, mqtt=mqtt_cfg,
                                gate=o.gate_configs(gate, gate_threshold, gate_max_idle,
                                                    [(s.name, s.live) for s in specs]))
        limits = Limits(max_connections=max_connections, header_timeout_s=header_timeout)
        with console.status(f"loading model {ec.source} ..."):
            engine = load_engine(ec, config)
        service = EdgeService(engine, db, specs, svc_cfg)
        server = Server(service, host=host, port=port, token=token, log_level="info" if access_log else "warning",
                        access_log=access_log, allow_hosts=allow_host, limits=limits)
    except UserError as e:
        _fail(str(e))
    names = ", ".join(f"{s.name} ({s.url})" for s in specs) or "none (answering from the memory only)"
    console.print(f"rlivs serve: sources {names}; memory {db}")
    gated = [n for n, g in svc_cfg.gate.items() if g.enabled]
    if specs:
        console.print(f"activity gate: on for {', '.join(gated)}; idle clips are recorded, not captioned" if gated else
                      "activity gate: off (every clip captioned; --gate on gates files too)")
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
