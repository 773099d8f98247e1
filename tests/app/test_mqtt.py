"""MQTT out (edge_app/service/mqtt.py) against a real broker: Debian's mosquitto, started by each test on a free
loopback port (tests/helpers/mqtt_broker.py). What a subscriber receives is checked: captions and watch matches as
JSON at QoS 1, the retained status and the last will, buffering across a broker restart (bounded, counted in
/metrics), and `rlivs serve`'s service publishing every committed caption of a replayed robot recording."""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("paho.mqtt")

from rlivs.edge_app.service.events import EventHub  # noqa: E402
from rlivs.edge_app.service.metrics import Metrics  # noqa: E402
from rlivs.edge_app.service.mqtt import MqttConfig, MqttPublisher  # noqa: E402
from rlivs.runtime.errors import UserError  # noqa: E402
from tests.helpers.mqtt_broker import MosquittoBroker, Subscriber, retained, self_signed_tls  # noqa: E402
from tests.helpers.serve_helpers import wait_for  # noqa: E402


def _caption(i: int, stream: str = "cam") -> dict:
    return {"stream": stream, "clip": i, "t_start": 2.0 * i, "t_end": 2.0 * i + 2, "caption": f"caption {i}",
            "thumbnail": f"/v1/thumbnails/{stream}/{i}.jpg", "wall_start": 1.7e9 + 2 * i, "wall_end": 1.7e9 + 2 * i + 2}


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


def test_captions_and_matches_arrive_as_json_with_a_retained_status(tmp_path):
    with MosquittoBroker(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, "rlivs/#")
        metrics, hub = Metrics(), EventHub()
        pub = MqttPublisher(MqttConfig("127.0.0.1", broker.port, client_id="rlivs-t1",
                                       public_url="http://robot:8000"), metrics)
        hub.add_listener(pub.on_event)
        pub.start()
        wait_for(lambda: pub.connected, 10, "the publisher to connect")
        assert retained(broker.port, "rlivs/status") == b"online"
        for i in range(3):
            hub.publish("caption", _caption(i))
        hub.publish("watch", {"id": 7, "watch_id": 2, "stream": "cam", "clip": 1, "t_start": 2.0, "t_end": 4.0,
                              "caption": "caption 1", "score": 0.83, "query": "a person", "threshold": 0.5,
                              "thumbnail": None, "wall_start": 1.7e9 + 2, "wall_end": 1.7e9 + 4})
        caps = [json.loads(p) for _, p, _ in sub.wait("rlivs/captions/cam", 3)]
        assert [c["clip"] for c in caps] == [0, 1, 2]
        assert caps[1] == {"event": "caption", **_caption(1), "thumbnail": "http://robot:8000/v1/thumbnails/cam/1.jpg"}
        [(topic, body, _)] = sub.wait("rlivs/watches/", 1)
        match = json.loads(body)
        assert topic == "rlivs/watches/2" and match["event"] == "watch" and match["score"] == 0.83
        assert match["query"] == "a person" and match["wall_start"] == 1.7e9 + 2
        wait_for(lambda: _metric(metrics, 'rlivs_mqtt_messages_total{outcome="acknowledged"}') == 5, 10,
                 "4 PUBACKs and the status's")  # QoS 1: the broker acknowledged each
        assert _metric(metrics, "rlivs_mqtt_connected") == 1
        pub.stop()
        assert retained(broker.port, "rlivs/status") == b"offline"  # said on a clean stop
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
            good.publish("rlivs/captions/cam", _caption(0))
            [(_, body, _)] = sub.wait("rlivs/captions/cam", 1)
            assert json.loads(body)["caption"] == "caption 0"
            assert retained(broker.port, "rlivs/status", **how) == b"online"
            assert not bad.connected and _metric(bad_metrics, "rlivs_mqtt_connects_total") is None  # refused
            bad.publish("rlivs/captions/cam", _caption(1))  # buffered, never delivered
            assert _metric(bad_metrics, "rlivs_mqtt_buffered") == 1 and len(sub.on("rlivs/captions/cam")) == 1
        finally:
            good.stop()
            bad.stop()
            sub.close()


def test_buffered_across_a_broker_restart_bounded_and_counted(tmp_path):
    with MosquittoBroker(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, "rlivs/captions/#")  # persistent session: it keeps its queue across the restart
        metrics, hub = Metrics(), EventHub()
        pub = MqttPublisher(MqttConfig("127.0.0.1", broker.port, client_id="rlivs-t2", buffer=4,
                                       reconnect_min_s=0.1, reconnect_max_s=0.5), metrics)
        hub.add_listener(pub.on_event)
        pub.start()
        wait_for(lambda: pub.connected, 10, "the publisher to connect")
        for i in range(3):
            hub.publish("caption", _caption(i))
        sub.wait("rlivs/captions/cam", 3)
        broker.stop()
        wait_for(lambda: not pub.connected, 10, "the publisher to notice the broker is gone")
        for i in range(3, 9):  # 6 while the broker is down; the buffer keeps the newest 4
            hub.publish("caption", _caption(i))
        assert _metric(metrics, "rlivs_mqtt_buffered") == 4
        assert _metric(metrics, 'rlivs_mqtt_messages_total{outcome="dropped"}') == 2
        assert _metric(metrics, 'rlivs_mqtt_messages_total{outcome="buffered"}') == 6
        broker.start()  # same port, same persistence folder
        got = [json.loads(p)["clip"] for _, p, _ in sub.wait("rlivs/captions/cam", 7, timeout=30)]
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


@pytest.mark.parametrize("replay", [True, False], ids=["replayed", "full-speed"])
def test_serve_publishes_every_caption_and_match_of_a_recording(replay, tmp_path, tiny_dir):
    pytest.importorskip("rosbags")
    from rlivs.edge_app.service.core import EdgeService, ServiceConfig
    from rlivs.edge_app.source_specs import parse_sources
    from rlivs.runtime.sources.live import SourceConfig
    from tests.helpers.recordings import write_ros_bag
    from tests.helpers.serve_helpers import FPS, tiny_engine

    # two cameras, 4 s each: sampled at 2 fps, 8 frames = 2 clips of 4 per stream
    bag = write_ros_bag(tmp_path / "run", "mcap", {"/front/image_raw": {"n": 16, "rate": 4.0},
                                                   "/rear/compressed": {"n": 8, "rate": 2.0, "compressed": True}})
    with MosquittoBroker(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, "robot1/#")
        cfg = ServiceConfig(replay_files=replay, source=SourceConfig(fps=FPS, replay_speed=4.0),  # 4x recorded speed
                            mqtt=MqttConfig("127.0.0.1", broker.port, client_id="rlivs-serve", topic_prefix="robot1"))
        specs = parse_sources([f"run={bag}"], ["/front/image_raw", "/rear/compressed"])
        service = EdgeService(tiny_engine(), tmp_path / "m.db", specs, cfg)
        watch = service.add_watch("anything at all", threshold=-1.0)  # every caption matches
        service.start()
        try:
            wait_for(lambda: all(w.state == "finished" for w in service.workers), 120, "both streams to finish")
            stored = service.captions(limit=100)["captions"]
            assert sorted({c["stream"] for c in stored}) == ["run.front.image_raw", "run.rear.compressed"]
            assert len(stored) == 4
            got = {(c["stream"], c["clip"]): c for c in
                   [json.loads(p) for _, p, _ in sub.wait("robot1/captions/", 4)]}
            for c in stored:  # what arrived is what the memory committed
                m = got[(c["stream"], c["clip"])]
                assert (m["caption"], m["t_start"], m["t_end"]) == (c["caption"], c["t_start"], c["t_end"])
            matches = [json.loads(p) for _, p, _ in sub.wait(f"robot1/watches/{watch['id']}", 4)]
            assert sorted((m["stream"], m["clip"]) for m in matches) == sorted(got)
            assert all(m["event"] == "watch" and m["query"] == "anything at all" for m in matches)
            text = service.render_metrics()
            assert 'rlivs_mqtt_messages_total{outcome="published"} 8' in text and "rlivs_mqtt_connected 1" in text
        finally:
            service.stop()
        assert retained(broker.port, "robot1/status") == b"offline"
        sub.close()


def test_serve_refuses_a_bad_mqtt_url_before_loading_the_model(tmp_path):
    from tests.helpers.cli import run_cli

    r = run_cli("serve", "--mqtt", "http://broker:1883", "--model", "no-such-model", "--db", tmp_path / "m.db")
    assert r.exit_code == 2 and "must start with one of mqtt://" in " ".join(r.output.split())
    r = run_cli("serve", "--mqtt", "mqtt://broker", "--mqtt-prefix", "/bad", "--model", "no-such-model")
    assert r.exit_code == 2 and "topic prefix '/bad' is not valid" in " ".join(r.output.split())


def test_rlivs_serve_with_a_recording_and_mqtt_as_a_user_runs_it(tmp_path, tiny_dir):
    """`rlivs serve --source run=run.mcap --topic ... --mqtt ...` as a subprocess, stopped with Ctrl-C."""
    pytest.importorskip("rosbags")
    import os
    import signal

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
               "--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--mqtt-prefix", "robot1"]
        env = {k: v for k, v in os.environ.items() if k != "RLIVS_TOKEN"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            caps = [json.loads(p) for _, p, _ in sub.wait("robot1/captions/run", 2, timeout=120)]
            assert [c["clip"] for c in caps] == [0, 1] and [c["t_start"] for c in caps] == [0.0, 2.0]
            assert caps[0]["thumbnail"] == f"http://127.0.0.1:{port}/v1/thumbnails/run/0.jpg"
            jpg = httpx.get(caps[0]["thumbnail"], timeout=10)
            assert jpg.status_code == 200 and jpg.content[:2] == b"\xff\xd8"  # the URL serves the clip's thumbnail
            assert retained(broker.port, "robot1/status") == b"online"
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert retained(broker.port, "robot1/status") == b"offline"
        sub.close()
