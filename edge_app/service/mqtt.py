"""MQTT out for `rlivs serve --mqtt mqtt://host:1883`: every committed caption, its thumbnail and every watch match,
per camera (stream), plus Home Assistant discovery.

    MqttConfig.from_url("mqtt://broker:1883", topic_prefix="robot1")   the settings (TLS with mqtts://)
    MqttPublisher(config, metrics, streams, thumbnails).on_event(e)    an EventHub listener: publishes the event

Topics (prefix "rlivs" unless set; STREAM is the stream's name, whose characters [A-Za-z0-9_.-] are all valid in a
topic level, see runtime/validate.py):

    {prefix}/status                 "online" (retained) once connected; "offline" (retained) when the service stops,
                                    and the broker's last will when the service drops off without a word
    {prefix}/{stream}/caption       every committed caption (JSON), QoS 1, retained: a new subscriber gets the latest
    {prefix}/{stream}/thumbnail     the caption's thumbnail (JPEG bytes), QoS 1, retained
    {prefix}/{stream}/watch/{id}    every match of watch `id` on the stream (JSON), QoS 1, not retained (an event)

With `discovery` (`--mqtt-discovery`), one Home Assistant device per stream is announced on
{discovery_prefix}/{component}/{unique_id}/config (retained, sent on every connect): a caption sensor, a "last seen"
timestamp sensor, a watch-match event entity and a thumbnail image entity, all unavailable while {prefix}/status says
"offline" (the last will included). `discovery_configs()` builds them.

Payloads (docs/mqtt-payloads.schema.json is their JSON Schema; `payload()` builds them from the service's events):
captions {"event": "caption", stream, clip, t_start, t_end (seconds of stream time), wall_start, wall_end (ISO 8601
with the device's UTC offset, as in the HTTP API; null when the source has no clock), time (the span as people read
it: local wall-clock time when the stream has a clock, else stream time; the same rule for matches), caption,
committed_at (UTC unix seconds), committed_at_iso (the same instant, ISO 8601), thumbnail (an absolute URL under
`public_url`, else the API path /v1/thumbnails/...; null without a thumbnail)}; matches add id, watch_id, score,
query, threshold and matched_at (UTC unix seconds) instead of committed_at/committed_at_iso.

Delivery: paho-mqtt's network thread connects in the background and reconnects with exponential backoff
(reconnect_min_s doubling up to reconnect_max_s). While disconnected, messages wait in a bounded buffer (`buffer`
messages; when full the oldest is dropped and counted) and go out in order on reconnect; a message handed to the
client before a drop is resent by paho until the broker acknowledges it (QoS 1). A clean `stop()` logs no
"lost the broker". Counts are in /metrics: rlivs_mqtt_messages_total{outcome=published|acknowledged|buffered|dropped},
rlivs_mqtt_buffered, rlivs_mqtt_connected, rlivs_mqtt_connects_total.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, unquote, urlsplit

from rlivs.runtime.answer import span_label
from rlivs.runtime.errors import UserError

from .events import Event
from .payloads import caption_json
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

# Home Assistant's MQTT discovery: the components rlivs announces per stream (HA 2023.8 or later: the event entity)
HA_STATE_MAX = 255  # HA refuses a state longer than this; the whole caption is in the sensor's attributes
_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def check_topic_prefix(p: str, what: str = "MQTT topic prefix", example: str = "--mqtt-prefix rlivs/robot1") -> str:
    if not p or p.startswith("/") or p.endswith("/") or any(c in p for c in "+#\0"):
        raise UserError(f"{what} {p!r} is not valid: no leading or trailing '/', no '+' or '#'; e.g. {example}")
    return p


def topic_level(name: str) -> str:
    """A stream name as one topic level: stream names (runtime/validate.py: [A-Za-z0-9_.-]) pass unchanged; anything
    else (a name from an older memory) is percent-encoded, so '/', '+' and '#' never reach a topic."""
    return quote(str(name), safe="")


def ha_id(*parts: str) -> str:
    """An id Home Assistant accepts in a discovery topic and as a device/entity id: [A-Za-z0-9_-]. A part that had
    other characters gets a short hash of the original, so 'cam.a' and 'cam_a' stay apart."""
    out = []
    for p in parts:
        clean = _ID_CHARS.sub("_", p)
        out.append(clean if clean == p else f"{clean}_{hashlib.sha1(p.encode()).hexdigest()[:6]}")
    return "_".join(out)


def _rlivs_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("rlivs")
    except metadata.PackageNotFoundError:
        return "unknown"


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
    discovery: bool = False  # announce one Home Assistant device per stream
    discovery_prefix: str = "homeassistant"  # Home Assistant's discovery prefix (its MQTT integration's setting)

    def __post_init__(self):
        if not self.host:
            raise UserError("the MQTT broker has no host: use e.g. --mqtt mqtt://localhost:1883")
        if not 0 < self.port < 65536:
            raise UserError(f"MQTT port {self.port} is not a TCP port: use e.g. mqtt://host:1883")
        check_topic_prefix(self.topic_prefix)
        check_topic_prefix(self.discovery_prefix, "MQTT discovery prefix", "--mqtt-discovery-prefix homeassistant")
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

    # -- topics -------------------------------------------------------------------------------------------------------

    @property
    def status_topic(self) -> str:
        return f"{self.topic_prefix}/status"

    def caption_topic(self, stream: str) -> str:
        return f"{self.topic_prefix}/{topic_level(stream)}/caption"

    def thumbnail_topic(self, stream: str) -> str:
        return f"{self.topic_prefix}/{topic_level(stream)}/thumbnail"

    def watch_topic(self, stream: str, watch_id: int | str) -> str:
        return f"{self.topic_prefix}/{topic_level(stream)}/watch/{watch_id}"


def payload(config: MqttConfig, event: Event) -> dict | None:
    """The MQTT payload of a service event (docs/mqtt-payloads.schema.json); None for events not published."""
    d = event.data
    if event.kind not in ("caption", "watch"):
        return None
    thumb = d.get("thumbnail")
    if thumb and config.public_url:
        thumb = config.public_url.rstrip("/") + thumb
    ws, we = d.get("wall_start"), d.get("wall_end")
    out = {"event": event.kind, "stream": d["stream"], "clip": d["clip"], "t_start": d["t_start"],
           "t_end": d["t_end"], "wall_start": ws, "wall_end": we,
           "time": span_label(d["t_start"], d["t_end"], ws, we), "caption": d["caption"]}
    if event.kind == "caption":
        at = d.get("committed_at")
        out["committed_at"] = at
        out["committed_at_iso"] = (None if at is None else
                                   datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds"))
    else:
        out.update({"id": d["id"], "watch_id": d["watch_id"], "score": d["score"], "query": d.get("query"),
                    "threshold": d.get("threshold"), "matched_at": d.get("matched_at")})
    out["thumbnail"] = thumb
    return out


def discovery_configs(config: MqttConfig, stream: str) -> list[tuple[str, dict]]:
    """(topic, config) of the Home Assistant entities of one stream: one device with a caption sensor, a last-seen
    timestamp sensor, a watch-match event and the thumbnail image; availability from {prefix}/status."""
    dev_id = ha_id("rlivs", config.topic_prefix, stream)
    version = _rlivs_version()
    common = {
        "availability_topic": config.status_topic, "payload_available": "online", "payload_not_available": "offline",
        "device": {"identifiers": [dev_id],
                   "name": stream if config.topic_prefix == "rlivs" else f"{stream} ({config.topic_prefix})",
                   "manufacturer": "rlivs", "model": "rlivs serve stream", "sw_version": version},
        "origin": {"name": "rlivs", "sw_version": version},
        "qos": config.qos,
    }
    caption_topic = config.caption_topic(stream)
    entities = [
        ("sensor", "caption", {"name": "Caption", "icon": "mdi:text-box-outline", "state_topic": caption_topic,
                               "value_template": "{{ value_json.caption[:%d] }}" % HA_STATE_MAX,
                               "json_attributes_topic": caption_topic}),
        ("sensor", "last_seen", {"name": "Last seen", "device_class": "timestamp", "state_topic": caption_topic,
                                 "value_template": "{{ value_json.committed_at_iso }}"}),
        ("event", "watch_match", {"name": "Watch match", "icon": "mdi:eye-check-outline",
                                  "state_topic": f"{config.topic_prefix}/{topic_level(stream)}/watch/+",
                                  "event_types": ["match"],
                                  # HA wants {"event_type": ..., more attributes}: the match's fields, renamed
                                  "value_template": "{{ {'event_type': 'match', 'watch_id': value_json.watch_id, "
                                                    "'query': value_json.query, 'score': value_json.score, "
                                                    "'caption': value_json.caption, 'clip': value_json.clip, "
                                                    "'time': value_json.time, "
                                                    "'thumbnail': value_json.thumbnail} | tojson }}"}),
        ("image", "thumbnail", {"name": "Thumbnail", "image_topic": config.thumbnail_topic(stream),
                                "content_type": "image/jpeg"}),
    ]
    out = []
    for component, what, entity in entities:
        uid = f"{dev_id}_{what}"
        out.append((f"{config.discovery_prefix}/{component}/{uid}/config", {**entity, "unique_id": uid, **common}))
    return out


class MqttPublisher:
    """Publishes the service's events to one broker; `start()` connects in the background, `stop()` says offline.
    `streams`: the stream names announced to Home Assistant on connect (others are added when their first event
    comes); `thumbnails(stream, clip)`: the JPEG of a clip (None: no thumbnail topic)."""

    def __init__(self, config: MqttConfig, metrics: Metrics, streams: Iterable[str] = (),
                 thumbnails: Callable[[str, int], bytes | None] | None = None):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise UserError("--mqtt needs paho-mqtt: install the robotics extra, pip install 'rlivs[robotics]'") from None
        self.config, self.metrics, self.thumbnails = config, metrics, thumbnails
        for name, (kind, help_) in METRICS.items():
            metrics.declare(name, kind, help_)
        metrics.set("rlivs_mqtt_connected", 0)
        metrics.set("rlivs_mqtt_buffered", 0)
        self.status_topic = config.status_topic
        self._lock = threading.Lock()  # guards connected, the buffer and the streams (callbacks run in paho's thread)
        self._buffer: deque[tuple[str, bytes, bool]] = deque()
        self._streams: list[str] = list(dict.fromkeys(streams))
        self.connected = False
        self._stopping = False  # set by stop(): the disconnect that follows is ours, not a lost broker
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
            self._stopping = True
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
            for stream in self._streams:  # retained: Home Assistant finds them whenever it (re)starts
                self._announce(stream)
            pending, self._buffer = list(self._buffer), deque()
            for topic, body, retain in pending:  # in order, before anything newer (publish() waits on the lock)
                self._send(topic, body, retain)
        self.metrics.inc("rlivs_mqtt_connects_total")
        self.metrics.set("rlivs_mqtt_connected", 1)
        self.metrics.set("rlivs_mqtt_buffered", 0)
        log.info("MQTT: connected to %s:%d%s", self.config.host, self.config.port,
                 f", sent {len(pending)} buffered messages" if pending else "")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._lock:
            was, self.connected = self.connected, False
            stopping = self._stopping
        self.metrics.set("rlivs_mqtt_connected", 0)
        if stopping:
            log.info("MQTT: disconnected from %s:%d", self.config.host, self.config.port)
        elif was:
            log.warning("MQTT: lost the broker %s:%d (%s); reconnecting with backoff, buffering up to %d messages",
                        self.config.host, self.config.port, reason_code, self.config.buffer)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        self.metrics.inc("rlivs_mqtt_messages_total", outcome="acknowledged")

    # -- publishing ---------------------------------------------------------------------------------------------------

    def _send(self, topic: str, body: bytes, retain: bool = False) -> None:
        """Hand one message to paho (the lock is held): it sends it now, or resends it after a reconnect."""
        self.client.publish(topic, body, qos=self.config.qos, retain=retain)
        self.metrics.inc("rlivs_mqtt_messages_total", outcome="published")

    def _announce(self, stream: str) -> None:
        """Home Assistant discovery of one stream (the lock is held, connected)."""
        if self.config.discovery:
            for topic, cfg in discovery_configs(self.config, stream):
                self._send(topic, json.dumps(cfg, separators=(",", ":")).encode(), retain=True)

    def publish(self, topic: str, payload: dict | bytes, retain: bool = False) -> None:
        """Publish now when connected, else buffer (the oldest is dropped when the buffer is full). A dict goes out as
        JSON, bytes as they are."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        with self._lock:
            if self.connected:
                self._send(topic, body, retain)
                return
            self._buffer.append((topic, body, retain))
            self.metrics.inc("rlivs_mqtt_messages_total", outcome="buffered")
            if len(self._buffer) > self.config.buffer:
                self._buffer.popleft()
                self.metrics.inc("rlivs_mqtt_messages_total", outcome="dropped")
            self.metrics.set("rlivs_mqtt_buffered", len(self._buffer))

    def messages(self, event: Event) -> list[tuple[str, dict | bytes, bool]]:
        """(topic, payload, retain) of a service event: a caption (retained) and its thumbnail (retained), or a
        match; [] for events that are not published."""
        body = payload(self.config, event)
        if body is None:
            return []
        stream = body["stream"]
        if event.kind == "watch":
            return [(self.config.watch_topic(stream, body["watch_id"]), body, False)]
        out: list[tuple[str, dict | bytes, bool]] = [(self.config.caption_topic(stream), body, True)]
        if self.thumbnails is not None and event.data.get("thumbnail"):
            jpeg = self.thumbnails(stream, body["clip"])
            if jpeg:
                out.append((self.config.thumbnail_topic(stream), jpeg, True))
        return out

    def _know(self, stream: str) -> None:
        """A stream seen for the first time (not among `streams`): announce it to Home Assistant."""
        with self._lock:
            if stream in self._streams:
                return
            self._streams.append(stream)
            if self.connected:
                self._announce(stream)

    # -- a bus listener (bus.py): captions and watch matches -----------------------------------------------------

    name = "mqtt"

    def on_clip(self, clip) -> None:
        if clip.outcome == "captioned":
            self.on_event(Event(0, "caption", caption_json(clip.record, clip.thumbnail)))

    def on_match(self, match) -> None:
        self.on_event(Event(0, "watch", match.payload))

    def on_event(self, event: Event) -> None:
        """An EventHub listener (called in the thread that published the event)."""
        msgs = self.messages(event)
        if msgs:
            self._know(str(event.data["stream"]))
        for topic, body, retain in msgs:
            self.publish(topic, body, retain)
