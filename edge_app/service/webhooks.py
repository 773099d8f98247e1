"""Webhook deliveries of `rlivs serve`: where a webhook may point, how one POST is made, and the senders.

Where (`WebhookPolicy`): a webhook URL is checked when the watch is created (`check_url`: http(s), a host, a port in
1..65535, no credentials, an IPv4 address only in dotted form) and its host is resolved again at every connection
(`resolve`): an address that is not global unicast (loopback, private, link-local such as 169.254.169.254,
unspecified, shared, multicast, reserved) is refused unless a network in `allow` (`--webhook-allow`) holds it. An IPv6
address that embeds an IPv4 address (IPv4-mapped, SIIT, IPv4-compatible, NAT64 64:ff9b::/96, 6to4, Teredo: see
`embedded_ipv4`) is judged by that IPv4; local-use NAT64 (64:ff9b:1::/48) is non-public as a whole. The connection
goes to the address that was checked (no second lookup a rebinding DNS server could answer differently).

How (`post_json`): one POST within one total deadline, from the name lookup to the last byte of the answer, whatever
the number of addresses the name has (a receiver that trickles its answer is cut off at the deadline, not after each
read); redirects are not followed (a 3xx is a failed delivery).

Senders (`WebhookSender`): deliveries are rows of the service database (`EdgeStore.deliveries`), written in the
same transaction as the match, so a delivery that was due is still sent after a crash or restart. A dispatcher
thread hands each destination (host:port) with a due row to a sender thread of its own, one delivery at a time per
destination: a receiver that never answers holds its own sender only, never another destination's deliveries (the
number of destinations is bounded by the watch cap; `max_in_flight` bounds it again). A destination that failed
`breaker_failures` times in a row is skipped for `breaker_s` seconds (circuit breaker). A failed delivery is retried
with exponential backoff up to `max_attempts`.
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


_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated (RFC 6145, SIIT)
_COMPAT = ipaddress.IPv6Network("::/96")  # IPv4-compatible (RFC 4291, deprecated); :: and ::1 are not
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # NAT64 well-known prefix (RFC 6052): the IPv4 is the last 32 bits
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215): the IPv4's place is a local choice


def embedded_ipv4(ip: Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 address(es) an IPv6 address embeds, or None: IPv4-mapped ::ffff:a.b.c.d, SIIT ::ffff:0:a.b.c.d,
    IPv4-compatible ::a.b.c.d (not :: or ::1), NAT64 64:ff9b::a.b.c.d, 6to4 2002:AABB:CCDD:: (bits 16..48), Teredo
    2001:0:SSSS:SSSS:...:CCCC:CCCC (the server's IPv4, and the client's: the last 32 bits inverted)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip in _SIIT or ip in _NAT64:
        return (low32,)
    if ip in _COMPAT and int(ip) > 1:
        return (low32,)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo  # (server, client)
    return None


def _form(ip: Address) -> str:
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped"
    for net, name in ((_SIIT, "SIIT"), (_NAT64, "NAT64"), (_COMPAT, "IPv4-compatible")):
        if ip in net:
            return name
    return "6to4" if ip.sixtofour is not None else "Teredo"


@dataclass(frozen=True)
class WebhookPolicy:
    allow: tuple[Network, ...] = ()  # non-global networks webhooks may reach anyway (--webhook-allow)

    def _allowed(self, ip: Address) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow)

    def address_ok(self, ip: Address) -> bool:
        """Allowed when `allow` holds the address as written (or, for IPv4-mapped, the IPv4: the same socket
        destination); otherwise it must be public, judged by the IPv4 it embeds when it embeds one (each of them for
        Teredo). An allow entry for an IPv4 network does not cover NAT64/6to4/Teredo/SIIT/compat forms: those reach
        a translator or relay, i.e. another host's a.b.c.d; allow the IPv6 form itself to reach it."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(int(ip))  # the zone (fe80::1%eth0) changes nothing here
        if self._allowed(ip) or (ip.version == 6 and ip.ipv4_mapped is not None and self._allowed(ip.ipv4_mapped)):
            return True
        if ip.version == 6 and ip in _NAT64_LOCAL:
            return False
        inner = embedded_ipv4(ip)
        if inner is None:
            return ip.is_global and not ip.is_multicast
        return all(v.is_global and not v.is_multicast for v in inner)

    def refusal(self, host: str, ip: Address) -> str:
        inner = embedded_ipv4(ip)
        what = f"{ip} ({_form(ip)} form of {' and '.join(map(str, inner))})" if inner else str(ip)
        return (f"webhook host {host} is {what}, a non-public address (loopback, private, link-local or unspecified): "
                f"refused so that watches cannot reach the device's own or its LAN's services; to allow it start "
                f"rlivs serve with --webhook-allow {ip}")

    def check_url(self, url: str) -> str:
        """Creation-time validation (`check_syntax`, then an IP-literal host against the policy); returns the URL."""
        ip = check_syntax(url)
        if ip is not None and not self.address_ok(ip):
            raise UserError(self.refusal(urlsplit(url).hostname, ip))
        return url

    def resolve(self, host: str, port: int, deadline: float | None = None) -> list[tuple]:
        """Connect-time: getaddrinfo results whose address the policy allows; UserError when none is. The lookup ends
        by `deadline` (time.monotonic()) or raises TimeoutError."""
        infos = lookup_within(host, port, deadline)
        ok, refused = [], None
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%")[0])
            if self.address_ok(ip):
                ok.append(info)
            else:
                refused = ip
        if not ok:
            if refused is None:
                raise OSError(f"cannot resolve {host}: no address")
            raise UserError(self.refusal(host, refused))
        return ok


def lookup(host: str, port: int) -> list[tuple]:
    """The name lookup of a delivery (tests replace it)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host}: {e}") from None


_MAX_LOOKUPS = 64
_LOOKUPS = threading.BoundedSemaphore(_MAX_LOOKUPS)  # lookups running at once (one cut off by its deadline still runs)


def lookup_within(host: str, port: int, deadline: float | None) -> list[tuple]:
    """`lookup`, ended by `deadline` (monotonic): getaddrinfo cannot be interrupted, so a lookup runs in a thread of its
    own and is abandoned (left to finish) when the deadline passes; at most `_MAX_LOOKUPS` run at once (more wait for
    a turn within their deadline), so a hung resolver cannot pile up threads."""
    if deadline is None:
        return lookup(host, port)
    try:  # an address literal: nothing to wait for
        ipaddress.ip_address(host.split("%")[0])
        return lookup(host, port)
    except ValueError:
        pass
    if not _LOOKUPS.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"resolving {host}: {_MAX_LOOKUPS} name lookups were running until the delivery deadline")
    done, box = threading.Event(), {}

    def run():
        try:
            box["infos"] = lookup(host, port)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e
        finally:
            _LOOKUPS.release()
            done.set()

    threading.Thread(target=run, name=f"rlivs-webhook-lookup {host}", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError(f"resolving {host} took longer than the delivery deadline")
    if "error" in box:
        raise box["error"]
    return box["infos"]


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
    """Connects only to addresses `policy` allows, to exactly the address it checked, by `deadline` (monotonic)."""

    def __init__(self, host, port, policy: WebhookPolicy, deadline: float):
        super().__init__(host, port, timeout=max(0.001, deadline - time.monotonic()))
        self.policy, self.deadline = policy, deadline
        self.fired = threading.Event()  # the deadline passed (set by `_cut`)
        self.live: socket.socket | None = None  # the socket `_cut` shuts down (set before it connects)
        self.tried, self.addresses = 0, 0  # for the error message

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0 or self.fired.is_set():
            raise TimeoutError("deadline")
        return left

    def _open(self) -> socket.socket:
        last: Exception | None = None
        infos = self.policy.resolve(self.host, self.port, self.deadline)
        self.addresses = len(infos)
        for i, (family, kind, proto, _, addr) in enumerate(infos):
            share = self._left() / (len(infos) - i)  # what is left, split over the addresses left
            sock = socket.socket(family, kind, proto)
            sock.settimeout(share)
            self.live, self.tried = sock, i + 1
            try:
                sock.connect(addr)
            except OSError as e:
                sock.close()
                last = e
                continue
            try:
                sock.settimeout(self._left())  # the timer cuts the rest at the deadline (`_cut`)
            except TimeoutError:
                sock.close()
                raise
            return sock
        if isinstance(last, (TimeoutError, socket.timeout)):
            raise TimeoutError("deadline")
        raise last or OSError(f"cannot connect to {self.host}")

    def connect(self):
        self.sock = self._open()


class _PinnedTLSConnection(_PinnedConnection):
    def __init__(self, host, port, policy: WebhookPolicy, deadline: float):
        super().__init__(host, port, policy, deadline)
        self.context = ssl.create_default_context()

    def connect(self):
        tls = self.context.wrap_socket(self._open(), server_hostname=self.host, do_handshake_on_connect=False)
        self.sock = self.live = tls  # the deadline timer shuts the handshake down too
        self._left()
        tls.do_handshake()


def post_json(url: str, payload: dict, policy: WebhookPolicy, deadline_s: float) -> int:
    """POST `payload` as JSON within `deadline_s` seconds in all (the name lookup, every address tried, the request and
    the answer); returns the status. Raises TimeoutError at the deadline, OSError/UserError/ValueError on refusal,
    failure, a redirect or a non-2xx answer."""
    deadline = time.monotonic() + deadline_s
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    cls = _PinnedTLSConnection if tls else _PinnedConnection
    conn = cls(parts.hostname, port, policy, deadline)
    timer = threading.Timer(deadline_s, _cut, args=(conn,))  # a receiver that trickles bytes is cut off here
    timer.daemon = True
    timer.start()

    def late(e: BaseException | None = None) -> TimeoutError:
        where = (f" ({conn.tried} of {conn.addresses} addresses of {parts.hostname} tried)" if conn.addresses
                 else f" ({e})" if e is not None and str(e) != "deadline" else "")
        return TimeoutError(f"no complete answer within the {deadline_s:g} s delivery deadline{where}")

    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("POST", path, body=json.dumps(payload).encode(),
                     headers={"Content-Type": "application/json", "User-Agent": "rlivs"})
        resp = conn.getresponse()
        resp.read(1024)
        status = resp.status
    except TimeoutError as e:
        raise late(e) from None
    except (OSError, http.client.HTTPException) as e:
        if conn.fired.is_set():
            raise late() from None
        raise OSError(f"{type(e).__name__}: {e}") from None
    finally:
        timer.cancel()
        conn.close()
    if conn.fired.is_set():  # cut off mid-answer: what was read is not a complete answer
        raise late()
    if 300 <= status < 400:
        raise ValueError(f"answered {status} (a redirect): redirects are not followed; give the final URL")
    if not 200 <= status < 300:
        raise ValueError(f"answered {status}")
    return status


def _cut(conn: _PinnedConnection) -> None:
    conn.fired.set()
    sock = conn.live
    if sock is not None:
        try:  # the plain socket's shutdown, also for TLS (SSLSocket.shutdown would drop its state under the reader)
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass
class SenderConfig:
    deadline_s: float = 5.0  # one delivery attempt, name lookup to last byte
    max_in_flight: int = 256  # destinations sent to at once, one delivery each (watches bound destinations first)
    max_attempts: int = 5  # then the delivery is dropped (counted, logged)
    backoff_s: float = 2.0  # retry n waits backoff_s * 2**(n-1)
    breaker_failures: int = 3  # consecutive failures that open a destination's breaker
    breaker_s: float = 60.0  # how long an open breaker skips its destination
    poll_s: float = 1.0  # how often the dispatcher looks for due retries when nothing wakes it
    policy: WebhookPolicy = field(default_factory=WebhookPolicy)


def destination(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class WebhookSender:
    """Sends the store's due deliveries, each destination from a thread of its own (see the module docstring).

    One dispatcher thread reads the due rows (longest-due first) and, for every destination that has one, is not
    sending, and whose breaker is closed, starts a sender thread for that row. The row leaves the store only when
    delivered (or given up): a crash mid-delivery sends it again (at least once); the match itself was stored once."""

    def __init__(self, store: EdgeStore, metrics: Metrics, config: SenderConfig,
                 payload: Callable[[Delivery], dict | None]):
        self.store, self.metrics, self.config, self.payload = store, metrics, config, payload
        self._cond = threading.Condition()
        self._busy: set[str] = set()  # destinations with a delivery in flight
        self._taken: set[int] = set()  # delivery ids in flight
        self._failures: dict[str, int] = {}  # destination -> consecutive failures
        self._open_until: dict[str, float] = {}  # destination -> breaker open until (monotonic)
        self._workers: set[threading.Thread] = set()
        self._stopped = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="rlivs-webhooks", daemon=True)

    def start(self) -> WebhookSender:
        self._dispatcher.start()
        return self

    def wake(self) -> None:
        """New deliveries were stored."""
        with self._cond:
            self._cond.notify_all()

    def deliver(self, url: str, payload: dict) -> None:
        """One POST under the policy and deadline (the only place a webhook connection is made)."""
        post_json(url, payload, self.config.policy, self.config.deadline_s)

    def in_flight(self) -> int:
        with self._cond:
            return len(self._busy)

    def _due(self) -> list[Delivery]:
        """The longest-due row of each destination that is idle and not broken (caller holds _cond)."""
        room = max(1, self.config.max_in_flight) - len(self._busy)
        if room <= 0:
            return []
        now, wall = time.monotonic(), time.time()
        skip = self._busy | {d for d, until in self._open_until.items() if until > now}
        out: list[Delivery] = []
        offset, page = 0, 256
        while True:  # page past the rows of busy or broken destinations (the queue holds at most webhook_queue)
            rows = self.store.due_deliveries(wall, limit=page, offset=offset)
            for d in rows:
                dest = destination(d.url)
                if d.id not in self._taken and dest not in skip:
                    out.append(d)
                    skip.add(dest)
                    if len(out) >= room:
                        return out
            if len(rows) < page:
                return out
            offset += page

    def _dispatch(self) -> None:
        with self._cond:
            while not self._stopped:
                try:
                    due = self._due()
                except Exception:  # noqa: BLE001 - the store is unwell (e.g. disk full): try again later
                    log.exception("webhook sender: reading the delivery queue failed")
                    due = []
                for d in due:
                    dest = destination(d.url)
                    self._busy.add(dest)
                    self._taken.add(d.id)
                    t = threading.Thread(target=self._work, args=(d, dest), name=f"rlivs-webhook {dest}",
                                         daemon=True)
                    self._workers.add(t)
                    t.start()
                self._cond.wait(self.config.poll_s)

    def _work(self, d: Delivery, dest: str) -> None:
        try:
            self._send(d, dest)
        except Exception:  # noqa: BLE001 - e.g. the store closed under a delivery at shutdown: the row stays due
            if not self._stopped:
                log.exception("webhook sender: delivery %d to %s", d.id, dest)
        finally:
            with self._cond:
                self._busy.discard(dest)
                self._taken.discard(d.id)
                self._workers.discard(threading.current_thread())
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
            threads = [self._dispatcher, *self._workers]
        deadline = time.monotonic() + timeout
        for t in threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
