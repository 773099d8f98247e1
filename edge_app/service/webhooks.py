"""Webhook deliveries of `rlivs serve`: where a webhook may point, how one POST is made, and the senders.

Where (`WebhookPolicy`): a webhook URL is checked when the watch is created (`check_url`: http(s), a host, a port in
1..65535, no credentials, an IPv4 address only in dotted form) and its host is resolved again at every connection
(`resolve`): an address that is not global unicast (loopback, private, link-local such as 169.254.169.254,
unspecified, shared, multicast, reserved) is refused unless a network in `allow` (`--webhook-allow`) holds it. The
connection goes to the address that was checked (no second lookup a rebinding DNS server could answer differently).

How (`post_json`): one POST with a total deadline (a receiver that trickles its answer is cut off at the deadline,
not after each read); redirects are not followed (a 3xx is a failed delivery).

Senders (`WebhookSender`): deliveries are rows of the service database (`EdgeStore.deliveries`), written in the
same transaction as the match, so a delivery that was due is still sent after a crash or restart. `senders` threads
take due rows, at most one at a time per destination (host:port), so one slow receiver holds one sender only; a
destination that failed `breaker_failures` times in a row is skipped for `breaker_s` seconds (circuit breaker). A
failed delivery is retried with exponential backoff up to `max_attempts`.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence
from urllib.parse import urlsplit

from rlivs.runtime.errors import UserError

if TYPE_CHECKING:
    from .metrics import Metrics
    from .store import Delivery, EdgeStore

log = logging.getLogger("rlivs.serve")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(items: Sequence[str]) -> tuple[Network, ...]:
    """'127.0.0.1', '10.0.0.0/8', '::1' -> networks; anything else is a UserError naming the entry."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip().strip("[]"), strict=False))
        except ValueError:
            raise UserError(f"--webhook-allow {item!r} is not an IP address or network: give one like 10.0.0.5 or "
                            f"10.0.0.0/24 or ::1") from None
    return tuple(out)


def _canonical(ip: Address) -> Address:
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


@dataclass(frozen=True)
class WebhookPolicy:
    allow: tuple[Network, ...] = ()  # non-global networks webhooks may reach anyway (--webhook-allow)

    def address_ok(self, ip: Address) -> bool:
        ip = _canonical(ip)
        if any(ip in net for net in self.allow):
            return True
        return ip.is_global and not ip.is_multicast

    def refusal(self, host: str, ip: Address) -> str:
        return (f"webhook host {host} is {ip}, a non-public address (loopback, private, link-local or unspecified): "
                f"refused so that watches cannot reach the device's own or its LAN's services; to allow it start "
                f"rlivs serve with --webhook-allow {ip}")

    def check_url(self, url: str) -> str:
        """Creation-time validation (`check_syntax`, then an IP-literal host against the policy); returns the URL."""
        ip = check_syntax(url)
        if ip is not None and not self.address_ok(ip):
            raise UserError(self.refusal(urlsplit(url).hostname, ip))
        return url

    def resolve(self, host: str, port: int) -> list[tuple]:
        """Connect-time: getaddrinfo results whose address the policy allows; UserError when none is."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise OSError(f"cannot resolve {host}: {e}") from None
        ok, refused = [], None
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%")[0])
            if self.address_ok(ip):
                ok.append(info)
            else:
                refused = ip
        if not ok:
            raise UserError(self.refusal(host, refused))
        return ok


def check_syntax(url: str) -> Address | None:
    """http(s), a valid host, a port in 1..65535, no credentials, no IPv4 in integer/hex form; returns the host's IP
    when it is an address literal. Raises UserError with the reason and the fix."""
    example = "e.g. https://hooks.example.com/rlivs"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UserError(f"webhook {url!r} is not a valid URL ({e}): {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"webhook must be an http:// or https:// URL with a host, {example}")
    if parts.username is not None or parts.password is not None:
        raise UserError("webhook URL holds credentials (user:password@): put a secret in the path or query instead")
    if port == 0:
        raise UserError(f"webhook port 0 is not a TCP port: use 1-65535, {example}")
    host = parts.hostname
    if any(c.isspace() or ord(c) < 32 or c in "\\<>\"{}|^`" for c in url):
        raise UserError(f"webhook {url!r} holds spaces or characters a URL cannot carry: {example}")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _legacy_ipv4(host):
        raise UserError(f"webhook host {host!r} is an IPv4 address in integer, octal or hex form: write it as four "
                        f"decimal numbers (a.b.c.d)")
    try:
        host.encode("idna")
    except UnicodeError:
        raise UserError(f"webhook host {host!r} is not a valid host name: {example}") from None
    return None


def _legacy_ipv4(host: str) -> bool:
    """True when the C resolver would read `host` as an IPv4 address (2130706433, 0x7f.1, 0177.0.0.1 ...)."""
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        return False


class _PinnedConnection(http.client.HTTPConnection):
    """Connects only to addresses `policy` allows, to exactly the address it checked."""

    def __init__(self, host, port, policy: WebhookPolicy, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.policy = policy

    def _open(self) -> socket.socket:
        last: Exception | None = None
        for family, kind, proto, _, addr in self.policy.resolve(self.host, self.port):
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self.timeout)
            try:
                sock.connect(addr)
                return sock
            except OSError as e:
                sock.close()
                last = e
        raise last or OSError(f"cannot connect to {self.host}")

    def connect(self):
        self.sock = self._open()


class _PinnedTLSConnection(_PinnedConnection):
    def __init__(self, host, port, policy: WebhookPolicy, timeout: float):
        super().__init__(host, port, policy, timeout)
        self.context = ssl.create_default_context()

    def connect(self):
        self.sock = self.context.wrap_socket(self._open(), server_hostname=self.host)


def post_json(url: str, payload: dict, policy: WebhookPolicy, deadline_s: float) -> int:
    """POST `payload` as JSON within `deadline_s` seconds in all; returns the status. Raises OSError/UserError/ValueError
    on refusal, failure, a redirect or a non-2xx answer."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    cls = _PinnedTLSConnection if tls else _PinnedConnection
    conn = cls(parts.hostname, port, policy, timeout=deadline_s)
    fired = threading.Event()
    timer = threading.Timer(deadline_s, _cut, args=(conn, fired))  # a receiver that trickles bytes is cut off here
    timer.daemon = True
    timer.start()
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("POST", path, body=json.dumps(payload).encode(),
                     headers={"Content-Type": "application/json", "User-Agent": "rlivs"})
        resp = conn.getresponse()
        resp.read(1024)
        status = resp.status
    except (OSError, http.client.HTTPException) as e:
        if fired.is_set():
            raise TimeoutError(f"no complete answer within the {deadline_s:g} s delivery deadline") from None
        raise OSError(f"{type(e).__name__}: {e}") from None
    finally:
        timer.cancel()
        conn.close()
    if fired.is_set():  # cut off mid-answer: what was read is not a complete answer
        raise TimeoutError(f"no complete answer within the {deadline_s:g} s delivery deadline")
    if 300 <= status < 400:
        raise ValueError(f"answered {status} (a redirect): redirects are not followed; give the final URL")
    if not 200 <= status < 300:
        raise ValueError(f"answered {status}")
    return status


def _cut(conn: http.client.HTTPConnection, fired: threading.Event) -> None:
    fired.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass
class SenderConfig:
    deadline_s: float = 5.0  # one POST, connect to last byte
    senders: int = 4  # concurrent deliveries (one per destination at a time)
    max_attempts: int = 5  # then the delivery is dropped (counted, logged)
    backoff_s: float = 2.0  # retry n waits backoff_s * 2**(n-1)
    breaker_failures: int = 3  # consecutive failures that open a destination's breaker
    breaker_s: float = 60.0  # how long an open breaker skips its destination
    poll_s: float = 1.0  # how often idle senders look for due retries
    policy: WebhookPolicy = field(default_factory=WebhookPolicy)


def destination(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class WebhookSender:
    """Sends the store's due deliveries from `config.senders` threads (see the module docstring)."""

    def __init__(self, store: EdgeStore, metrics: Metrics, config: SenderConfig,
                 payload: Callable[[Delivery], dict | None]):
        self.store, self.metrics, self.config, self.payload = store, metrics, config, payload
        self._cond = threading.Condition()
        self._busy: set[str] = set()  # destinations with a delivery in flight
        self._taken: set[int] = set()  # delivery ids in flight
        self._failures: dict[str, int] = {}  # destination -> consecutive failures
        self._open_until: dict[str, float] = {}  # destination -> breaker open until (monotonic)
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"rlivs-webhooks-{i}", daemon=True)
                         for i in range(max(1, config.senders))]

    def start(self) -> WebhookSender:
        for t in self._threads:
            t.start()
        return self

    def wake(self) -> None:
        """New deliveries were stored."""
        with self._cond:
            self._cond.notify_all()

    def deliver(self, url: str, payload: dict) -> None:
        """One POST under the policy and deadline (the only place a webhook connection is made)."""
        post_json(url, payload, self.config.policy, self.config.deadline_s)

    def _take(self) -> Delivery | None:
        now = time.monotonic()
        skip_dest = self._busy | {d for d, until in self._open_until.items() if until > now}
        for d in self.store.due_deliveries(time.time(), limit=64):
            if d.id not in self._taken and destination(d.url) not in skip_dest:
                return d
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    try:
                        d = self._take()
                    except Exception:  # noqa: BLE001 - the store is unwell (e.g. disk full): try again later
                        log.exception("webhook sender: reading the delivery queue failed")
                        d = None
                    if d is not None:
                        break
                    self._cond.wait(self.config.poll_s)
                dest = destination(d.url)
                self._busy.add(dest)
                self._taken.add(d.id)
            try:
                self._send(d, dest)
            finally:
                with self._cond:
                    self._busy.discard(dest)
                    self._taken.discard(d.id)
                    self._cond.notify_all()

    def _send(self, d: Delivery, dest: str) -> None:
        cfg, m = self.config, self.metrics
        payload = self.payload(d)
        if payload is None:  # its match or watch is gone
            self.store.finish_delivery(d.id)
            return
        try:
            self.deliver(d.url, payload)
        except (OSError, ValueError, UserError) as e:
            with self._cond:
                n = self._failures[dest] = self._failures.get(dest, 0) + 1
                if n >= cfg.breaker_failures:
                    self._open_until[dest] = time.monotonic() + cfg.breaker_s
            final = isinstance(e, UserError) or d.attempts + 1 >= cfg.max_attempts
            if final:
                self.store.finish_delivery(d.id)
                m.inc("rlivs_webhook_deliveries_total", outcome="refused" if isinstance(e, UserError) else "failed")
                log.warning("webhook POST to %s failed for good after %d attempts: %s", d.url, d.attempts + 1, e)
            else:
                self.store.retry_delivery(d.id, time.time() + cfg.backoff_s * 2 ** d.attempts)
                m.inc("rlivs_webhook_deliveries_total", outcome="retried")
                log.info("webhook POST to %s failed (attempt %d, retried): %s", d.url, d.attempts + 1, e)
            return
        with self._cond:
            self._failures.pop(dest, None)
            self._open_until.pop(dest, None)
        self.store.finish_delivery(d.id)
        m.inc("rlivs_webhook_deliveries_total", outcome="ok")

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
