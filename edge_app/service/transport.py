"""The transport of `rlivs serve`: uvicorn (HTTP/1.1 over h11) around an ASGI app, bound to one address, behind the
connection layer of connections.py (caps, deadlines, refusals that close, a fair share per client). It knows the
app it serves, not the service. The asyncio "out of system resource" log line is rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time

import uvicorn

from .connections import ConnectionPolicy, Limits, fit_descriptors, protocol_for

log = logging.getLogger("rlivs.serve")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; anything else (0.0.0.0, a LAN address, a name) is not."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False



class _Uvicorn(uvicorn.Server):
    """Ends the service's event streams as soon as shutdown starts (else open SSE connections hold it up), and treats
    Ctrl-C / SIGTERM as a requested stop: `run()` returns (so the caller stops ingest cleanly) instead of re-raising
    the signal afterwards, which would kill the process before ingest is stopped. A second Ctrl-C forces the exit.
    Rate-limits the event loop's error lines (asyncio logs "socket.accept() out of system resource" with a traceback
    every time accept fails for want of descriptors)."""

    def __init__(self, config: uvicorn.Config, on_exit, log_every_s: float = 10.0):
        super().__init__(config)
        self._on_exit = on_exit
        self._log_every_s = log_every_s
        self._last_logged: dict[str, tuple[float, int]] = {}  # message -> (last logged, suppressed since)

    def handle_exit(self, sig, frame):
        self._on_exit()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def startup(self, sockets=None):
        asyncio.get_running_loop().set_exception_handler(self._loop_error)
        await super().startup(sockets=sockets)

    def _loop_error(self, loop, context):
        msg = str(context.get("message", "event loop error"))
        now = time.monotonic()
        last, suppressed = self._last_logged.get(msg, (-1e9, 0))
        if now - last < self._log_every_s:
            self._last_logged[msg] = (last, suppressed + 1)
            return
        self._last_logged[msg] = (now, 0)
        exc = context.get("exception")
        more = f" ({suppressed} more like it in the last {now - last:.0f} s)" if suppressed else ""
        log.error("%s%s%s", msg, f": {type(exc).__name__}: {exc}" if exc else "", more)



class Transport:
    """Serves `app` on host:port with `limits`: `run()` in the foreground (signals stop it, after `on_exit()`) or
    `start()`/`stop()` in a thread. `protocol.table`: who holds which connection."""

    def __init__(self, app, host: str, port: int, limits: Limits, metrics, on_exit, log_level: str = "warning",
                 access_log: bool = False):
        self.host, self.port, self.limits = host, port, limits
        cap = fit_descriptors(limits.max_connections, reserve=128 + 2 * limits.backlog)
        if cap < limits.max_connections:
            log.warning("max connections lowered from %d to %d to fit the open-file limit (ulimit -n)",
                        limits.max_connections, cap)
        from dataclasses import replace

        fitted = replace(limits, max_connections=cap)
        self.protocol = protocol_for(fitted, metrics)  # .table: who holds which connection
        # proxy_headers off: the client address (per-client caps) is the TCP peer's, never an X-Forwarded-For
        config = uvicorn.Config(ConnectionPolicy(app, fitted, metrics), host=host, port=port,
                                log_level=log_level, access_log=access_log, log_config=None,
                                timeout_graceful_shutdown=3, lifespan="off", http=self.protocol,
                                timeout_keep_alive=limits.keepalive_s, backlog=limits.backlog,
                                proxy_headers=False)
        self._on_exit = on_exit
        self._server = _Uvicorn(config, on_exit, limits.log_every_s)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        self._server.run()

    def start(self, timeout: float = 20.0) -> Transport:
        """Bind now (port 0 = any free port, read back into .port) and serve from a thread."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="rlivs-http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self._on_exit()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
