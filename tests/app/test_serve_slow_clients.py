"""Slow and greedy clients against the service's real Server on loopback (issue 23, items 1 and 2): deadlines for the
whole request (head, body, idle keep-alive whatever trickles in), refusals that close their connection, and fair
share per client address (connections, event streams, capacity kept for /healthz and /metrics).

"Another client" is a second loopback address (127.0.0.2): the client socket is bound to it. Every wait is bounded;
the checks are on what the server did (answered, closed), never on elapsed time. Small limits keep each test short.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from rlivs.edge_app.service.app import Limits, Server
from rlivs.edge_app.service.core import EdgeService, ServiceConfig
from rlivs.runtime.memory import ClipRecord, Memory
from tests.helpers.serve_helpers import tiny_engine, wait_for

TOKEN = "slow-clients-test-token-0123456789"
OTHER = "127.0.0.2"  # a second client address on loopback


@pytest.fixture
def serve(tmp_path, tiny_dir):
    """Start a Server (with a stored stream) with the given limits; torn down after the test."""
    engine = tiny_engine()
    db = tmp_path / "memory.db"
    with Memory(db, model_fingerprint=engine.model_fingerprint) as mem:
        mem.open_stream("door", "test", engine.backend.info.model_id, "planted")
        ids = engine.text.encode("a person opens the door")
        mem.commit_clip(ClipRecord("door", 0, 0.0, 2.0, "a person opens the door", len(ids), engine.vector(ids)), None)
    made = []

    def start(limits: Limits, token: str | None = TOKEN, config: ServiceConfig | None = None):
        service = EdgeService(engine, db, config=config or ServiceConfig())
        server = Server(service, port=0, token=token, limits=limits).start()
        service.start()
        made.append((server, service))
        return service, server

    yield start
    for server, service in made:
        server.stop()
        service.stop()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def _until_closed(s: socket.socket, within_s: float = 20.0) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after `within_s`."""
    data, deadline = b"", time.monotonic() + within_s
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server left the connection open ({data[:200]!r} so far)")


def _head(data: bytes) -> tuple[int, dict]:
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    return status, {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}


def _trickle_until_closed(s: socket.socket, byte: bytes, every_s: float, most: int) -> bytes:
    """Send `byte` every `every_s` seconds (at most `most` times) until the server answers or closes; then read to
    the close. Returns what the server sent (b"" when it closed without a word)."""
    for _ in range(most):
        try:
            s.sendall(byte)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        s.settimeout(every_s)
        try:
            first = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return b""
        return first + (_until_closed(s, 5.0) if first else b"")
    raise AssertionError(f"still open after {most} trickled bytes")


# ---------------------------------------------------------------------------------------------------------------------
# Deadlines
# ---------------------------------------------------------------------------------------------------------------------


def test_a_body_trickled_a_byte_at_a_time_gets_408_and_is_closed(serve):
    service, server = serve(Limits(header_timeout_s=5.0, body_timeout_s=1.0, min_body_rate=1000.0))
    s = _connect(server.port)
    s.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
    data = _trickle_until_closed(s, b" ", every_s=0.3, most=60)  # 500 bytes at ~3 B/s would take minutes
    status, headers = _head(data)
    assert status == 408 and headers["connection"] == "close", data
    assert b"did not arrive in time" in data
    assert 'rlivs_http_rejected_total{reason="body_timeout"}' in service.render_metrics()
    s.close()


def test_a_request_whose_body_never_comes_is_closed(serve):
    service, server = serve(Limits(header_timeout_s=5.0, body_timeout_s=1.0, min_body_rate=1000.0))
    s = _connect(server.port)
    s.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n")
    status, headers = _head(_until_closed(s))
    assert status == 408 and headers["connection"] == "close"
    s.close()
    # a body that does arrive in time is answered as usual
    r = httpx.post(server.url + "/v1/watches", json={"query": "door"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201, r.text


def test_an_idle_keep_alive_connection_is_closed_whatever_trickles_in(serve):
    service, server = serve(Limits(header_timeout_s=60.0, keepalive_s=1))  # the head deadline is far off
    s = _connect(server.port)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    s.settimeout(10)
    first = s.recv(65536)
    while b"\r\n\r\n" not in first or len(first.split(b"\r\n\r\n", 1)[1]) < int(_head(first)[1]["content-length"]):
        first += s.recv(65536)  # the whole answer (its body may come in a second segment)
    status, headers = _head(first)
    assert status == 200 and "connection" not in headers  # kept alive
    # bytes that never complete a request head do not count as activity
    assert _trickle_until_closed(s, b"X", every_s=0.3, most=40) == b""
    s.close()


@pytest.mark.parametrize("case", ["421", "401", "404", "413", "405"])
def test_refusals_close_the_connection(serve, case):
    service, server = serve(Limits(header_timeout_s=60.0, body_timeout_s=60.0))  # no deadline closes it meanwhile
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    head = {  # each declares a body it never sends: the refusal must not wait for it
        "421": b"POST /v1/ask HTTP/1.1\r\nHost: evil.example\r\n" + auth + b"Content-Length: 100\r\n\r\n",
        "401": b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n",
        "404": b"GET /v1/nothing-here HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"\r\n",
        "413": b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Content-Length: 10000000\r\n\r\n",
        "405": b"PUT /v1/streams HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Content-Length: 2\r\n\r\n{}",
    }[case]
    s = _connect(server.port)
    s.sendall(head)
    status, headers = _head(_until_closed(s, 10.0))  # closed right after the answer
    assert status == int(case) and headers["connection"] == "close"
    s.close()


def test_a_refused_client_still_sending_its_body_reads_the_answer(serve):
    """The refusal closes the connection without a TCP reset: what the client still sends is read and dropped, so the
    401 reaches it (closing a socket with unread bytes resets it, and the client may lose the answer)."""
    service, server = serve(Limits())
    for _ in range(3):
        s = _connect(server.port)
        s.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 60000\r\n\r\n")
        for _ in range(15):  # the body keeps coming after the answer
            s.sendall(b" " * 4000)
            time.sleep(0.02)
        status, headers = _head(_until_closed(s, 10.0))
        assert status == 401 and headers["connection"] == "close"
        s.close()


# ---------------------------------------------------------------------------------------------------------------------
# Fair share per client address
# ---------------------------------------------------------------------------------------------------------------------


def _get(port: int, path: str, source: str = "127.0.0.1", token: bool = True) -> tuple[int, dict, bytes]:
    s = _connect(port, source)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode() +
                  (b"Authorization: Bearer " + TOKEN.encode() + b"\r\n" if token else b"") + b"\r\n")
        data = _until_closed(s, 15.0)
    finally:
        s.close()
    status, headers = _head(data)
    return status, headers, data.split(b"\r\n\r\n", 1)[1]


def test_one_address_holds_at_most_its_share_and_another_is_still_served(serve):
    service, server = serve(Limits(max_connections=64, max_per_client=4, reserved=4, header_timeout_s=30.0))
    held = [_connect(server.port) for _ in range(4)]  # silent: each holds a regular slot
    try:
        table = server.protocol.table
        wait_for(lambda: table.by_client.get("127.0.0.1") == 4, 5, "four connections from 127.0.0.1")
        # a fifth from the same address only gets the reserve: health yes, anything else 503 (and closed)
        status, headers, body = _get(server.port, "/v1/streams")
        assert status == 503 and headers["connection"] == "close" and b"only serves /healthz" in body
        assert _get(server.port, "/healthz")[0] == 200
        assert _get(server.port, "/metrics")[0] == 200
        # another address is served as usual
        status, _, body = _get(server.port, "/v1/streams", source=OTHER)
        assert status == 200 and b"door" in body
        wait_for(lambda: table.by_client.get(OTHER) is None, 5, "the other address's connection to be released")
        assert 'rlivs_http_rejected_total{reason="reserve"}' in service.render_metrics()
    finally:
        for s in held:
            s.close()
    wait_for(lambda: table.regular == 0 and not table.reserve, 5, "every slot to be released")


def test_healthz_answers_through_a_flood_of_idle_sockets_from_one_address(serve):
    service, server = serve(Limits(max_connections=48, max_per_client=8, reserved=8, header_timeout_s=30.0))
    flood: list[socket.socket] = []
    stop = threading.Event()

    def reopen():  # what the issue did: keep reopening idle sockets (bounded: at most 400)
        while not stop.is_set() and len(flood) < 400:
            try:
                flood.append(_connect(server.port))
            except OSError:
                pass
            time.sleep(0.005)

    flooder = threading.Thread(target=reopen, daemon=True)
    flooder.start()
    try:
        wait_for(lambda: len(flood) >= 60, 20, "the flood to open 60 sockets")
        statuses = [_get(server.port, "/healthz", token=False)[0] for _ in range(10)]
        statuses += [_get(server.port, "/healthz", source=OTHER, token=False)[0] for _ in range(5)]
        table = server.protocol.table
        assert table.by_client["127.0.0.1"] <= 8 and len(table.reserve) <= 8  # what one address holds
    finally:
        stop.set()
        flooder.join(10)
        for s in flood:
            s.close()
    assert statuses == [200] * 15, statuses
    assert 'rlivs_http_rejected_total{reason="evicted"}' in service.render_metrics()


def test_event_streams_are_capped_per_address(serve):
    service, server = serve(Limits(max_streams_per_client=2), token=None, config=ServiceConfig(max_subscribers=10))
    with httpx.Client(base_url=server.url, timeout=10) as c, \
            httpx.Client(base_url=server.url, timeout=10,
                         transport=httpx.HTTPTransport(local_address=OTHER)) as other:
        with c.stream("GET", "/v1/events") as a, c.stream("GET", "/v1/events") as b:
            assert a.status_code == 200 and b.status_code == 200
            r = c.get("/v1/events")
            assert r.status_code == 503 and "from your address" in r.json()["detail"]
            assert r.headers["retry-after"] == "5" and r.headers["connection"] == "close"
            with other.stream("GET", "/v1/events") as d:  # another address has its own share
                assert d.status_code == 200
                wait_for(lambda: service.events.subscribers == 3, 5, "three subscribers")
        wait_for(lambda: service.events.subscribers == 0, 5, "the streams to close")
        with c.stream("GET", "/v1/events") as again:  # the share is given back
            assert again.status_code == 200
    assert 'rlivs_http_rejected_total{reason="client_streams"}' in service.render_metrics()
