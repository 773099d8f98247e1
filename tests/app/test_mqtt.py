"""MQTT out (edge_app/service/mqtt.py) against a real broker: Debian's mosquitto, started by each test on a free
loopback port (tests/helpers/mqtt_broker.py). What a subscriber receives is checked: the per-camera topics
(PREFIX/STREAM/caption and /thumbnail retained, PREFIX/STREAM/watch/ID), every JSON payload against the documented
JSON Schema (docs/mqtt-payloads.schema.json), Home Assistant discovery against HA's documented discovery keys
(tests/helpers/ha_discovery.py) with its templates rendered on the payloads received, the retained status and the last
will, buffering across a broker restart (bounded, counted in /metrics), `rlivs serve`'s service publishing every
committed caption of a replayed robot recording, and `rlivs serve` stopped with SIGTERM logging no lost broker."""

import json
import logging
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

pytest.importorskip("paho.mqtt")

from rlivs.edge_app.service.events import Event, EventHub  # noqa: E402
from rlivs.edge_app.service.metrics import Metrics  # noqa: E402
from rlivs.edge_app.service.mqtt import (  # noqa: E402
    MqttConfig, MqttPublisher, discovery_configs, ha_id, payload, topic_level,
)
from rlivs.runtime.errors import UserError  # noqa: E402
from tests.helpers.ha_discovery import HA_STATE_MAX, check_discovery, render  # noqa: E402
from tests.helpers.mqtt_broker import MosquittoBroker, Subscriber, retained, self_signed_tls  # noqa: E402
from tests.helpers.serve_helpers import wait_for  # noqa: E402

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "mqtt-payloads.schema.json"


def _validator():
    """The documented payload schema, compiled (fastjsonschema: draft-07; a declared dev dependency, so its absence
    fails rather than skips the tests that use it)."""
    try:
        import fastjsonschema
    except ImportError:
        pytest.fail("fastjsonschema is not installed: pip install -c constraints.txt -e '.[dev]' (or "
                    "pip install -c constraints.txt fastjsonschema)")
    return fastjsonschema.compile(json.loads(SCHEMA.read_text()))


def _invalid(validate, body: dict) -> bool:
    import fastjsonschema

    try:
        validate(body)
    except fastjsonschema.JsonSchemaValueException:
        return True
    return False


def _caption(i: int, stream: str = "cam", clock: bool = False) -> dict:
    """A caption event as the service publishes it (core.caption_json): ISO wall times, or null without a clock."""
    wall = (lambda s: datetime.fromtimestamp(1.7e9 + s).astimezone().isoformat(timespec="seconds")) if clock else None
    return {"stream": stream, "clip": i, "t_start": 2.0 * i, "t_end": 2.0 * i + 2, "caption": f"caption {i}",
            "thumbnail": f"/v1/thumbnails/{stream}/{i}.jpg", "wall_start": wall and wall(2 * i),
            "wall_end": wall and wall(2 * i + 2), "time": "whatever the API says", "committed_at": 1.7e9 + 100 + i}


def _metric(metrics: Metrics, line_start: str) -> float | None:
    for line in metrics.render().splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return None


def test_settings_from_the_url_and_refusals():
    c = MqttConfig.from_url("mqtts://bot:s%40cret@broker.local", topic_prefix="site/robot1")
    assert (c.host, c.port, c.tls, c.username, c.password) == ("broker.local", 8883, True, "bot", "s@cret")
    assert MqttConfig.from_url("mqtt://10.0.0.9").port == 1883
    for url, message in [("http://x", "must start with one of"), ("mqtt://:1883", "has no host"),
                         ("mqtt://h:notaport", "not a number")]:
        with pytest.raises(UserError, match=message):
            MqttConfig.from_url(url)
    with pytest.raises(UserError, match="prefix 'a/#' is not valid"):
        MqttConfig.from_url("mqtt://h", topic_prefix="a/#")
    with pytest.raises(UserError, match="discovery prefix 'ha/' is not valid"):
        MqttConfig.from_url("mqtt://h", discovery_prefix="ha/")


def test_topics_per_stream_and_ids_home_assistant_accepts():
    c = MqttConfig("h", topic_prefix="site/robot1")
    assert c.caption_topic("run.front.image_raw") == "site/robot1/run.front.image_raw/caption"
    assert c.thumbnail_topic("cam") == "site/robot1/cam/thumbnail"
    assert c.watch_topic("cam", 3) == "site/robot1/cam/watch/3"
    assert topic_level("a/b+#") == "a%2Fb%2B%23"  # a name from outside the rule never adds a level or a wildcard
    assert ha_id("rlivs", "cam_a") == "rlivs_cam_a" and ha_id("cam.a") != ha_id("cam_a")  # dots replaced, kept apart
    assert set(ha_id("site/robot1", "run.front")) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")


def test_time_means_the_same_in_captions_and_matches():
    c = MqttConfig("h", public_url="http://robot:8000")
    cap = _caption(3, clock=True)
    match = {"id": 1, "watch_id": 2, "stream": "cam", "clip": 3, "t_start": 6.0, "t_end": 8.0, "caption": "c",
             "score": 0.9, "query": "q", "threshold": 0.5, "matched_at": 1.7e9, "time": "00:00:06-00:00:08",
             "thumbnail": None, "wall_start": cap["wall_start"], "wall_end": cap["wall_end"]}
    a, b = payload(c, Event(1, "caption", cap)), payload(c, Event(2, "watch", match))
    local = datetime.fromisoformat(cap["wall_start"])
    assert a["time"] == b["time"] == f"{local:%Y-%m-%d %H:%M:%S}-{datetime.fromisoformat(cap['wall_end']):%H:%M:%S}"
    assert a["wall_start"] == cap["wall_start"] and isinstance(a["committed_at"], float)
    assert datetime.fromisoformat(a["committed_at_iso"]).timestamp() == int(cap["committed_at"])
    assert a["thumbnail"] == "http://robot:8000/v1/thumbnails/cam/3.jpg" and b["thumbnail"] is None
    no_clock = payload(MqttConfig("h"), Event(3, "caption", _caption(3)))
    assert no_clock["time"] == "00:00:06-00:00:08" and no_clock["wall_start"] is None
    assert no_clock["thumbnail"] == "/v1/thumbnails/cam/3.jpg"  # without --public-url: the path only
    validate = _validator()
    for body in (a, b, no_clock):
        validate(body)
    # the schema is not a rubber stamp: the old shapes and a wrong type are refused
    assert _invalid(validate, {**a, "wall_start": 1.7e9})
    assert _invalid(validate, {k: v for k, v in a.items() if k != "committed_at_iso"})
    assert _invalid(validate, {**b, "event": "caption"})
    assert _invalid(validate, {**a, "thumbnail": "ftp://x/v1/thumbnails/cam/3.jpg"})


def test_captions_thumbnails_and_matches_per_camera_retained_and_as_documented(tmp_path, caplog):
    jpeg = b"\xff\xd8\xff\xe0 a jpeg \xff\xd9"
    validate = _validator()
    with MosquittoBroker(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, "rlivs/#")
        metrics, hub = Metrics(), EventHub()
        pub = MqttPublisher(MqttConfig("127.0.0.1", broker.port, client_id="rlivs-t1",
                                       public_url="http://robot:8000"), metrics,
                            thumbnails=lambda stream, clip: jpeg + bytes([clip]) if stream == "cam" else None)
        hub.add_listener(pub.on_event)
        pub.start()
        wait_for(lambda: pub.connected, 10, "the publisher to connect")
        assert retained(broker.port, "rlivs/status") == b"online"
        for i in range(3):
            hub.publish("caption", _caption(i, clock=i == 1))
        hub.publish("caption", {**_caption(0, stream="door"), "thumbnail": None})
        hub.publish("watch", {"id": 7, "watch_id": 2, "stream": "cam", "clip": 1, "t_start": 2.0, "t_end": 4.0,
                              "caption": "caption 1", "score": 0.83, "query": "a person", "threshold": 0.5,
                              "thumbnail": None, "wall_start": None, "wall_end": None, "matched_at": 1.7e9,
                              "time": "00:00:02-00:00:04"})
        caps = [json.loads(p) for _, p, _ in sub.wait("rlivs/cam/caption", 3)]
        assert [c["clip"] for c in caps] == [0, 1, 2]
        assert caps[0]["thumbnail"] == "http://robot:8000/v1/thumbnails/cam/0.jpg"
        assert caps[0]["time"] == "00:00:00-00:00:02"
        assert caps[1]["wall_start"] == _caption(1, clock=True)["wall_start"]  # ISO 8601, as the HTTP API says it
        thumbs = [p for _, p, _ in sub.wait("rlivs/cam/thumbnail", 3)]
        assert thumbs == [jpeg + bytes([i]) for i in range(3)]
        [(topic, body, _)] = sub.wait("rlivs/cam/watch/", 1)
        match = json.loads(body)
        assert topic == "rlivs/cam/watch/2" and match["event"] == "watch" and match["score"] == 0.83
        assert match["query"] == "a person" and match["time"] == "00:00:02-00:00:04"
        [door] = [json.loads(p) for _, p, _ in sub.wait("rlivs/door/caption", 1)]
        assert door["stream"] == "door" and sub.on("rlivs/door/thumbnail") == []  # no thumbnail, none published
        for _, body, _ in sub.on("rlivs/cam/caption") + sub.on("rlivs/door/caption") + sub.on("rlivs/cam/watch/"):
            validate(json.loads(body))  # every JSON payload received is the documented shape
        # retained: a subscriber arriving now gets the latest caption and thumbnail of each camera, no match
        assert json.loads(retained(broker.port, "rlivs/cam/caption"))["clip"] == 2
        assert retained(broker.port, "rlivs/cam/thumbnail") == jpeg + bytes([2])
        assert json.loads(retained(broker.port, "rlivs/door/caption"))["stream"] == "door"
        assert retained(broker.port, "rlivs/cam/watch/2", timeout=1) is None
        assert not any(t.startswith("homeassistant/") for t, _, _ in sub.messages)  # discovery is off by default
        wait_for(lambda: _metric(metrics, 'rlivs_mqtt_messages_total{outcome="acknowledged"}') == 9, 10,
                 "8 PUBACKs and the status's")  # QoS 1: the broker acknowledged each
        assert _metric(metrics, "rlivs_mqtt_connected") == 1
        with caplog.at_level(logging.INFO, logger="rlivs.serve.mqtt"):
            pub.stop()
        assert retained(broker.port, "rlivs/status") == b"offline"  # said on a clean stop
        assert "lost the broker" not in caplog.text and "disconnected from" in caplog.text  # a clean stop is no loss
        sub.close()


def test_tls_with_a_password_and_a_wrong_password(tmp_path):
    ca, cert, key = self_signed_tls(tmp_path / "pki")
    with MosquittoBroker(tmp_path / "broker", users={"robot1": "s3cret", "reader": "r3ad"},
                         tls=(ca, cert, key)) as broker:
        how = {"ca": ca, "auth": ("reader", "r3ad")}
        sub = Subscriber(broker.port, "rlivs/#", **how)
        metrics, bad_metrics = Metrics(), Metrics()
        good = MqttPublisher(MqttConfig.from_url(f"mqtts://robot1:s3cret@127.0.0.1:{broker.port}", ca_file=str(ca),
                                                 client_id="rlivs-good"), metrics).start()
        bad = MqttPublisher(MqttConfig.from_url(f"mqtts://127.0.0.1:{broker.port}", username="robot1",
                                                password="wrong", ca_file=str(ca), client_id="rlivs-bad"),
                            bad_metrics).start()
        try:
            wait_for(lambda: good.connected, 10, "the publisher to connect over TLS with its password")
            good.publish("rlivs/cam/caption", _caption(0))
            [(_, body, _)] = sub.wait("rlivs/cam/caption", 1)
            assert json.loads(body)["caption"] == "caption 0"
            assert retained(broker.port, "rlivs/status", **how) == b"online"
            assert not bad.connected and _metric(bad_metrics, "rlivs_mqtt_connects_total") is None  # refused
            bad.publish("rlivs/cam/caption", _caption(1))  # buffered, never delivered
            assert _metric(bad_metrics, "rlivs_mqtt_buffered") == 1 and len(sub.on("rlivs/cam/caption")) == 1
        finally:
            good.stop()
            bad.stop()
            sub.close()


def test_buffered_across_a_broker_restart_bounded_and_counted(tmp_path, caplog):
    with MosquittoBroker(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, "rlivs/+/caption")  # persistent session: it keeps its queue across the restart
        metrics, hub = Metrics(), EventHub()
        pub = MqttPublisher(MqttConfig("127.0.0.1", broker.port, client_id="rlivs-t2", buffer=4,
                                       reconnect_min_s=0.1, reconnect_max_s=0.5), metrics)
        hub.add_listener(pub.on_event)
        pub.start()
        wait_for(lambda: pub.connected, 10, "the publisher to connect")
        for i in range(3):
            hub.publish("caption", _caption(i))
        sub.wait("rlivs/cam/caption", 3)
        with caplog.at_level(logging.WARNING, logger="rlivs.serve.mqtt"):
            broker.stop()
            wait_for(lambda: not pub.connected, 10, "the publisher to notice the broker is gone")
        assert "lost the broker" in caplog.text  # a real loss is said (a clean stop is not: the test above)
        for i in range(3, 9):  # 6 while the broker is down; the buffer keeps the newest 4
            hub.publish("caption", _caption(i))
        assert _metric(metrics, "rlivs_mqtt_buffered") == 4
        assert _metric(metrics, 'rlivs_mqtt_messages_total{outcome="dropped"}') == 2
        assert _metric(metrics, 'rlivs_mqtt_messages_total{outcome="buffered"}') == 6
        broker.start()  # same port, same persistence folder
        wait_for(lambda: 8 in [m["clip"] for m in sub.json_on("rlivs/cam/caption")], 30, "the last caption")
        # QoS 1 is at least once: a message whose PUBACK the stopped broker never sent or got comes again
        got = list(dict.fromkeys(m["clip"] for m in sub.json_on("rlivs/cam/caption")))
        assert got == [0, 1, 2, 5, 6, 7, 8]  # in order; the two oldest of the outage were dropped
        assert _metric(metrics, "rlivs_mqtt_buffered") == 0 and _metric(metrics, "rlivs_mqtt_connects_total") == 2
        pub.stop()
        sub.close()


def test_the_last_will_says_offline_when_the_service_dies(tmp_path):
    with MosquittoBroker(tmp_path / "broker") as broker:
        script = textwrap.dedent(f"""
            import time
            from rlivs.edge_app.service.metrics import Metrics
            from rlivs.edge_app.service.mqtt import MqttConfig, MqttPublisher
            pub = MqttPublisher(MqttConfig("127.0.0.1", {broker.port}, client_id="rlivs-doomed"), Metrics()).start()
            while not pub.connected:
                time.sleep(0.05)
            print("connected", flush=True)
            time.sleep(60)
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "connected"
            assert retained(broker.port, "rlivs/status") == b"online"
            proc.kill()  # no DISCONNECT: the broker sends the will
            proc.wait(10)
            wait_for(lambda: retained(broker.port, "rlivs/status", timeout=1) == b"offline", 15, "the last will")
        finally:
            proc.kill()


def test_discovery_for_known_and_new_streams_under_its_own_prefix(tmp_path):
    """Streams given at start are announced on connect, a stream first seen in an event when it comes; the configs
    pass the documented-schema check, which itself refuses abbreviations, a missing unique_id and dead topics."""
    with MosquittoBroker(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, "#")
        pub = MqttPublisher(MqttConfig("127.0.0.1", broker.port, client_id="rlivs-t3", topic_prefix="site/robot1",
                                       discovery=True, discovery_prefix="ha-test"), Metrics(), streams=["cam"],
                            thumbnails=lambda stream, clip: b"\xff\xd8 a jpeg \xff\xd9")
        pub.start()
        try:
            wait_for(lambda: pub.connected, 10, "the publisher to connect")
            sub.wait("ha-test/", 4)
            pub.on_event(Event(1, "caption", _caption(0, stream="door.left")))
            pub.on_event(Event(2, "caption", _caption(1, stream="cam")))
            sub.wait("ha-test/", 8)
            for i, stream in enumerate(["cam", "door.left"]):
                pub.on_event(Event(3 + i, "watch", {"id": 1 + i, "watch_id": 1, "stream": stream, "clip": 0,
                                                    "t_start": 0.0, "t_end": 2.0, "caption": "c", "score": 0.7,
                                                    "query": "q", "threshold": 0.5, "matched_at": 1.7e9,
                                                    "thumbnail": None, "wall_start": None, "wall_end": None}))
            sub.wait("site/robot1/door.left/watch/1", 1)
            sub.wait("site/robot1/cam/thumbnail", 1)
            sub.wait("site/robot1/door.left/thumbnail", 1)
            published = {t for t, _, _ in sub.messages if not t.startswith("ha-test/")}
            configs = {t: json.loads(p) for t, p, _ in sub.on("ha-test/")}
            assert len(configs) == 8 and {c["device"]["name"] for c in configs.values()} == {
                "cam (site/robot1)", "door.left (site/robot1)"}
            for topic, config in configs.items():
                problems = check_discovery(topic, config, published, prefix="ha-test")
                assert problems == [], problems
            assert {t for t in configs if "door" in t} == {t for t, _ in discovery_configs(pub.config, "door.left")}
            # the checker is not a rubber stamp
            topic, config = next((t, c) for t, c in configs.items() if t.startswith("ha-test/sensor/"))
            abbreviated = {("stat_t" if k == "state_topic" else k): v for k, v in config.items()}
            assert any("unknown key 'stat_t'" in p for p in check_discovery(topic, abbreviated, published, "ha-test"))
            assert any("unique_id" in p for p in check_discovery(
                topic, {k: v for k, v in config.items() if k != "unique_id"}, published, "ha-test"))
            assert any("matches no topic" in p for p in check_discovery(
                topic, {**config, "state_topic": "site/robot1/nobody/caption"}, published, "ha-test"))
            assert check_discovery(topic.replace("ha-test/", "homeassistant/"), config, published, "ha-test") != []
        finally:
            pub.stop()
            sub.close()


def _check_home_assistant(sub: Subscriber, streams: list[str], prefix: str, port: int) -> None:
    """Discovery as Home Assistant reads it: 4 retained configs per stream, each with documented keys only, on a
    valid topic, one device per stream, availability on PREFIX/status, every subscribed topic one rlivs published,
    and the templates giving HA valid states on the payloads received."""
    published = {t for t, _, _ in sub.messages if not t.startswith("homeassistant/")}
    configs = {t: (json.loads(p), r) for t, p, r in sub.on("homeassistant/")}
    for stream in streams:
        mine = {t: c for t, (c, _) in configs.items() if c["device"]["name"] == f"{stream} ({prefix})"}
        assert sorted(t.split("/")[1] for t in mine) == ["event", "image", "sensor", "sensor"], sorted(mine)
        assert len({json.dumps(c["device"], sort_keys=True) for c in mine.values()}) == 1  # one device per stream
        for topic, config in mine.items():
            assert check_discovery(topic, config, published) == []
            assert config["availability_topic"] == f"{prefix}/status" and config["unique_id"] in topic
        by_name = {c["name"]: c for c in mine.values()}
        [(_, last_caption, _)] = sub.on(f"{prefix}/{stream}/caption")[-1:]
        caption = render(by_name["Caption"]["value_template"], last_caption)
        assert caption == json.loads(last_caption)["caption"][:HA_STATE_MAX] and caption
        seen = datetime.fromisoformat(render(by_name["Last seen"]["value_template"], last_caption))
        assert seen.tzinfo is not None  # device_class timestamp needs an offset
        assert abs(seen.timestamp() - json.loads(last_caption)["committed_at"]) < 1
        event = by_name["Watch match"]
        for _, body, _ in sub.on(f"{prefix}/{stream}/watch/"):
            fired = json.loads(render(event["value_template"], body))
            assert fired["event_type"] in event["event_types"] and fired["watch_id"] == json.loads(body)["watch_id"]
        assert by_name["Thumbnail"]["content_type"] == "image/jpeg"
    assert len(configs) == 4 * len(streams) and len({c["unique_id"] for c, _ in configs.values()}) == len(configs)
    for topic in configs:  # retained: a Home Assistant starting later still finds them
        assert retained(port, topic, timeout=2) is not None


@pytest.mark.parametrize("replay", [True, False], ids=["replayed", "full-speed"])
def test_serve_publishes_every_caption_and_match_of_a_recording(replay, tmp_path, tiny_dir):
    pytest.importorskip("rosbags")
    from rlivs.edge_app.service.core import EdgeService, ServiceConfig
    from rlivs.edge_app.source_specs import parse_sources
    from rlivs.runtime.sources.live import SourceConfig
    from tests.helpers.recordings import write_ros_bag
    from tests.helpers.serve_helpers import FPS, tiny_engine

    validate = _validator()
    # two cameras, 4 s each: sampled at 2 fps, 8 frames = 2 clips of 4 per stream
    bag = write_ros_bag(tmp_path / "run", "mcap", {"/front/image_raw": {"n": 16, "rate": 4.0},
                                                   "/rear/compressed": {"n": 8, "rate": 2.0, "compressed": True}})
    streams = ["run.front.image_raw", "run.rear.compressed"]
    with MosquittoBroker(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, "#")
        cfg = ServiceConfig(replay_files=replay, source=SourceConfig(fps=FPS, replay_speed=4.0),  # 4x recorded speed
                            mqtt=MqttConfig("127.0.0.1", broker.port, client_id="rlivs-serve", topic_prefix="robot1",
                                            discovery=True))
        specs = parse_sources([f"run={bag}"], ["/front/image_raw", "/rear/compressed"])
        service = EdgeService(tiny_engine(), tmp_path / "m.db", specs, cfg)
        watch = service.add_watch("anything at all", threshold=-1.0)  # every caption matches
        service.start()
        try:
            wait_for(lambda: all(w.state == "finished" for w in service.workers), 120, "both streams to finish")
            stored = service.captions(limit=100)["captions"]
            assert sorted({c["stream"] for c in stored}) == streams
            assert len(stored) == 4
            got = {}
            for stream in streams:
                for m in [json.loads(p) for _, p, _ in sub.wait(f"robot1/{stream}/caption", 2)]:
                    got[(m["stream"], m["clip"])] = m
                    assert m["stream"] == stream
            for c in stored:  # what arrived is what the memory committed, the same clock times as the API's
                m = got[(c["stream"], c["clip"])]
                assert (m["caption"], m["t_start"], m["t_end"]) == (c["caption"], c["t_start"], c["t_end"])
                assert (m["wall_start"], m["wall_end"], m["time"]) == (c["wall_start"], c["wall_end"], c["time"])
                assert m["thumbnail"] == f"/v1/thumbnails/{c['stream']}/{c['clip']}.jpg"  # no public URL: the path
            matches = [json.loads(p) for stream in streams
                       for _, p, _ in sub.wait(f"robot1/{stream}/watch/{watch['id']}", 2)]
            assert sorted((m["stream"], m["clip"]) for m in matches) == sorted(got)
            assert all(m["event"] == "watch" and m["query"] == "anything at all" for m in matches)
            for m in matches:  # a match's `time` is its caption's
                assert m["time"] == got[(m["stream"], m["clip"])]["time"]
            for body in list(got.values()) + matches:
                validate(body)
            for stream in streams:  # the latest caption and thumbnail of each camera stay on the broker
                last = max(c["clip"] for c in stored if c["stream"] == stream)
                assert json.loads(retained(broker.port, f"robot1/{stream}/caption"))["clip"] == last
                jpeg = retained(broker.port, f"robot1/{stream}/thumbnail")
                assert jpeg[:2] == b"\xff\xd8" and jpeg == service.thumbnail(stream, last)
            _check_home_assistant(sub, streams, "robot1", broker.port)
            text = service.render_metrics()
            # 4 captions + 4 thumbnails + 4 matches + 2 x 4 discovery configs
            assert 'rlivs_mqtt_messages_total{outcome="published"} 20' in text and "rlivs_mqtt_connected 1" in text
        finally:
            service.stop()
        assert retained(broker.port, "robot1/status") == b"offline"  # every entity above is unavailable now
        sub.close()


def test_serve_refuses_bad_mqtt_settings_and_public_urls_before_loading_the_model(tmp_path):
    from tests.helpers.cli import run_cli

    r = run_cli("serve", "--mqtt", "http://broker:1883", "--model", "no-such-model", "--db", tmp_path / "m.db")
    assert r.exit_code == 2 and "must start with one of mqtt://" in " ".join(r.output.split())
    r = run_cli("serve", "--mqtt", "mqtt://broker", "--mqtt-prefix", "/bad", "--model", "no-such-model")
    assert r.exit_code == 2 and "topic prefix '/bad' is not valid" in " ".join(r.output.split())
    r = run_cli("serve", "--mqtt", "mqtt://broker", "--mqtt-discovery-prefix", "ha/#", "--model", "no-such-model")
    assert r.exit_code == 2 and "discovery prefix 'ha/#' is not valid" in " ".join(r.output.split())
    for url in ("robot1.lan:8000", "ftp://robot1.lan", "http://", "http://robot1.lan:99999", "http://h/?a=1",
                "https://user:pw@h"):
        r = run_cli("serve", "--public-url", url, "--model", "no-such-model", "--db", tmp_path / "m.db")
        out = " ".join(r.output.split())
        assert r.exit_code == 2 and f"--public-url {url!r} is not an http(s) URL" in out, (url, out)
        assert "e.g. --public-url http://robot1.lan:8000" in out
    assert not (tmp_path / "m.db").exists()  # refused before anything was created


def test_mqtt_help_texts_read_right():
    from tests.helpers.cli import run_cli

    r = run_cli("serve", "--help", env={"COLUMNS": "300"})
    lines = [" ".join(line.strip("│ ").split()) for line in r.output.splitlines() if "--mqtt" in line
             or "--public-url" in line]
    assert len(lines) >= 10, r.output
    for line in lines:
        assert " ." not in line and "  " not in line, line  # no markup eaten out of the text
    assert any("MQTT client id; default rlivs-HOST-PID." in line for line in lines)
    assert any("PEM CA file for an mqtts:// broker; default the system's CAs." in line for line in lines)


def test_rlivs_serve_with_a_recording_and_mqtt_as_a_user_runs_it(tmp_path, tiny_dir):
    """`rlivs serve --source run=run.mcap --topic ... --mqtt ... --public-url ...` as a subprocess, stopped with
    SIGTERM as a service manager stops it: exit 0, "offline" retained, and no lost broker in its log."""
    pytest.importorskip("rosbags")
    import os
    import signal
    from urllib.parse import urlsplit

    import httpx

    from tests.helpers.recordings import write_ros_bag
    from tests.helpers.serve_helpers import free_port

    bag = write_ros_bag(tmp_path / "run", "mcap", {"/front/image_raw": {"n": 16, "rate": 4.0}})
    with MosquittoBroker(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, "robot1/#")
        port = free_port()
        cmd = [sys.executable, "-m", "rlivs.edge_app.cli", "serve", "--source", f"run={bag}", "--topic",
               "/front/image_raw", "--db", str(tmp_path / "m.db"), "--port", str(port), "--model", "tiny",
               "--fps", "2", "--frames-per-clip", "4", "--max-caption-tokens", "6", "--replay-speed", "4",
               "--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--mqtt-prefix", "robot1",
               "--public-url", "https://robot1.example:8443/rlivs/"]
        env = {k: v for k, v in os.environ.items() if k != "RLIVS_TOKEN"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            caps = [json.loads(p) for _, p, _ in sub.wait("robot1/run/caption", 2, timeout=120)]
            assert [c["clip"] for c in caps] == [0, 1] and [c["t_start"] for c in caps] == [0.0, 2.0]
            assert caps[0]["thumbnail"] == "https://robot1.example:8443/rlivs/v1/thumbnails/run/0.jpg"
            path = urlsplit(caps[0]["thumbnail"]).path.removeprefix("/rlivs")  # what the proxy would forward
            jpg = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
            assert jpg.status_code == 200 and jpg.content[:2] == b"\xff\xd8"  # the link's path serves the thumbnail
            last = httpx.get(f"http://127.0.0.1:{port}/v1/thumbnails/run/1.jpg", timeout=10).content
            assert retained(broker.port, "robot1/run/thumbnail") == last  # the latest clip's, retained
            assert retained(broker.port, "robot1/status") == b"online"
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        said = " ".join(out.split())  # the log's lines as one text (rich may wrap them)
        assert "stopping ingest" in said and "lost the broker" not in said, out
        assert retained(broker.port, "robot1/status") == b"offline"
        sub.close()
