"""MQTT out for `rlivs serve --mqtt mqtt://host:1883`: every committed caption and every watch match, as JSON.

    MqttConfig.from_url("mqtt://broker:1883", topic_prefix="robot1")   the settings (TLS with mqtts://)
    MqttPublisher(config, metrics).on_event(event)                     an EventHub listener: publishes the event

Topics (prefix "rlivs" unless set):

    {prefix}/status               "online" (retained) once connected; "offline" (retained) when the service stops, and
                                  the broker's last will when the service drops off without a word
    {prefix}/captions/{stream}    one message per committed caption, QoS 1
    {prefix}/watches/{watch_id}   one message per watch match, QoS 1

Payload: the service's own event JSON (what GET /v1/events sends: stream, clip, t_start, t_end, wall_start, wall_end
(UTC unix seconds, null when the source has no clock), caption, and for a match score, query, threshold, watch_id)
plus "event" ("caption" or "watch") and the thumbnail as an absolute URL under `public_url`.

Delivery: paho-mqtt's network thread connects in the background and reconnects with exponential backoff
(reconnect_min_s doubling up to reconnect_max_s). While disconnected, messages wait in a bounded buffer (`buffer`
messages; when full the oldest is dropped and counted) and go out in order on reconnect; a message handed to the
client before a drop is resent by paho until the broker acknowledges it (QoS 1). Counts are in /metrics:
rlivs_mqtt_messages_total{outcome=published|acknowledged|buffered|dropped}, rlivs_mqtt_buffered,
rlivs_mqtt_connected, rlivs_mqtt_connects_total.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections import deque
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from rlivs.runtime.errors import UserError

from .events import Event
from .metrics import Metrics

log = logging.getLogger("rlivs.serve.mqtt")

SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}

METRICS = {
    "rlivs_mqtt_messages_total": ("counter", "MQTT messages by outcome: published (handed to the client), acknowledged "
                                             "(PUBACK), buffered (while disconnected), dropped (buffer full)."),
    "rlivs_mqtt_buffered": ("gauge", "MQTT messages waiting in the buffer for the broker to come back."),
    "rlivs_mqtt_connected": ("gauge", "1 while connected to the MQTT broker, else 0."),
    "rlivs_mqtt_connects_total": ("counter", "Successful connections to the MQTT broker (the first and reconnects)."),
}


@dataclass
class MqttConfig:
    host: str
    port: int = 1883
    tls: bool = False  # TLS (mqtts://); the broker's certificate is checked against ca_file or the system CAs
    ca_file: str | None = None  # PEM CA bundle for TLS
    username: str | None = None
    password: str | None = None
    client_id: str | None = None  # None: rlivs-<hostname>-<pid>
    topic_prefix: str = "rlivs"
    qos: int = 1
    keepalive_s: int = 30
    buffer: int = 1000  # messages kept while disconnected (oldest dropped first)
    reconnect_min_s: float = 0.5  # first reconnect delay; doubles per failed attempt ...
    reconnect_max_s: float = 30.0  # ... up to this
    public_url: str | None = None  # thumbnails are published as public_url + /v1/thumbnails/...; None: the path only

    def __post_init__(self):
        if not self.host:
            raise UserError("the MQTT broker has no host: use e.g. --mqtt mqtt://localhost:1883")
        if not 0 < self.port < 65536:
            raise UserError(f"MQTT port {self.port} is not a TCP port: use e.g. mqtt://host:1883")
        p = self.topic_prefix
        if not p or p.startswith("/") or p.endswith("/") or any(c in p for c in "+#\0"):
            raise UserError(f"MQTT topic prefix {p!r} is not valid: no leading or trailing '/', no '+' or '#'; "
                            f"e.g. --mqtt-prefix rlivs/robot1")
        if self.qos not in (0, 1, 2):
            raise UserError(f"MQTT QoS must be 0, 1 or 2, got {self.qos}")
        if self.buffer < 1:
            raise UserError(f"the MQTT buffer must hold >= 1 message, got {self.buffer}; e.g. 1000")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise UserError(f"MQTT reconnect delays must satisfy 0 < min <= max, got {self.reconnect_min_s}, "
                            f"{self.reconnect_max_s}")
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            raise UserError(f"MQTT CA file {self.ca_file} does not exist: give a PEM file, or leave it out to use "
                            f"the system's CAs")
        if self.password is not None and self.username is None:
            raise UserError("an MQTT password without a username: pass --mqtt-username too")

    @classmethod
    def from_url(cls, url: str, **settings) -> MqttConfig:
        """mqtt://[user[:password]@]host[:port] (mqtts:// for TLS); settings given here win over the URL's."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise UserError(f"--mqtt {url!r}: the URL must start with one of {', '.join(s + '://' for s in SCHEMES)}, "
                            f"e.g. mqtt://localhost:1883")
        try:
            port = parts.port
        except ValueError:
            raise UserError(f"--mqtt {url!r} has a port that is not a number: e.g. mqtt://localhost:1883") from None
        default_port, tls = SCHEMES[scheme]
        from_url = {"host": parts.hostname or "", "port": port or default_port, "tls": tls,
                    "username": unquote(parts.username) if parts.username else None,
                    "password": unquote(parts.password) if parts.password else None}
        given = {k: v for k, v in settings.items() if v is not None}
        return cls(**{**from_url, **given})

    def client_name(self) -> str:
        return self.client_id or f"rlivs-{socket.gethostname()}-{os.getpid()}"[:64]


class MqttPublisher:
    """Publishes the service's events to one broker; `start()` connects in the background, `stop()` says offline."""

    def __init__(self, config: MqttConfig, metrics: Metrics):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise UserError("--mqtt needs paho-mqtt: install the robotics extra, pip install 'rlivs[robotics]'") from None
        self.config, self.metrics = config, metrics
        for name, (kind, help_) in METRICS.items():
            metrics.declare(name, kind, help_)
        metrics.set("rlivs_mqtt_connected", 0)
        metrics.set("rlivs_mqtt_buffered", 0)
        self.status_topic = f"{config.topic_prefix}/status"
        self._lock = threading.Lock()  # guards connected and the buffer (callbacks run in paho's thread)
        self._buffer: deque[tuple[str, bytes]] = deque()
        self.connected = False
        self._mqtt = mqtt
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_name(), protocol=mqtt.MQTTv311)
        if config.username is not None:
            c.username_pw_set(config.username, config.password)
        if config.tls:
            c.tls_set(ca_certs=config.ca_file)
        c.will_set(self.status_topic, "offline", qos=1, retain=True)
        c.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)
        c.on_connect, c.on_disconnect, c.on_publish = self._on_connect, self._on_disconnect, self._on_publish
        self.client = c

    # -- lifetime -----------------------------------------------------------------------------------------------------

    def start(self) -> MqttPublisher:
        """Connect in the background (paho's thread retries until the broker answers)."""
        c = self.config
        self.client.connect_async(c.host, c.port, keepalive=c.keepalive_s)
        self.client.loop_start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Say "offline" (retained), wait up to `timeout` s for it to be sent, disconnect."""
        with self._lock:
            connected = self.connected
        if connected:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (its network thread) --------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.config.host, self.config.port,
                        reason_code)
            return
        client.publish(self.status_topic, "online", qos=1, retain=True)
        with self._lock:
            self.connected = True
            pending, self._buffer = list(self._buffer), deque()
            for topic, payload in pending:  # in order, before anything newer (publish() waits on the lock)
                self._send(topic, payload)
        self.metrics.inc("rlivs_mqtt_connects_total")
        self.metrics.set("rlivs_mqtt_connected", 1)
        self.metrics.set("rlivs_mqtt_buffered", 0)
        log.info("MQTT: connected to %s:%d%s", self.config.host, self.config.port,
                 f", sent {len(pending)} buffered messages" if pending else "")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._lock:
            was, self.connected = self.connected, False
        self.metrics.set("rlivs_mqtt_connected", 0)
        if was:
            log.warning("MQTT: lost the broker %s:%d (%s); reconnecting with backoff, buffering up to %d messages",
                        self.config.host, self.config.port, reason_code, self.config.buffer)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        self.metrics.inc("rlivs_mqtt_messages_total", outcome="acknowledged")

    # -- publishing ---------------------------------------------------------------------------------------------------

    def _send(self, topic: str, payload: bytes) -> None:
        """Hand one message to paho (the lock is held): it sends it now, or resends it after a reconnect."""
        self.client.publish(topic, payload, qos=self.config.qos)
        self.metrics.inc("rlivs_mqtt_messages_total", outcome="published")

    def publish(self, topic: str, payload: dict) -> None:
        """Publish now when connected, else buffer (the oldest is dropped when the buffer is full)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        with self._lock:
            if self.connected:
                self._send(topic, body)
                return
            self._buffer.append((topic, body))
            self.metrics.inc("rlivs_mqtt_messages_total", outcome="buffered")
            if len(self._buffer) > self.config.buffer:
                self._buffer.popleft()
                self.metrics.inc("rlivs_mqtt_messages_total", outcome="dropped")
            self.metrics.set("rlivs_mqtt_buffered", len(self._buffer))

    def message(self, event: Event) -> tuple[str, dict] | None:
        """(topic, payload) of a service event; None for events that are not published."""
        d = dict(event.data)
        if event.kind == "caption":
            topic = f"{self.config.topic_prefix}/captions/{quote(str(d.get('stream')), safe='')}"
        elif event.kind == "watch":
            topic = f"{self.config.topic_prefix}/watches/{d.get('watch_id')}"
        else:
            return None
        if d.get("thumbnail") and self.config.public_url:
            d["thumbnail"] = self.config.public_url.rstrip("/") + d["thumbnail"]
        d.setdefault("wall_start", None)
        d.setdefault("wall_end", None)
        return topic, {"event": event.kind, **d}

    def on_event(self, event: Event) -> None:
        """An EventHub listener (called in the thread that published the event)."""
        msg = self.message(event)
        if msg is not None:
            self.publish(*msg)
