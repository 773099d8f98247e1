"""A real MQTT broker for the tests: Debian's mosquitto, started by the test on a free loopback port, with its own
config and persistence folder (so that a subscriber's session survives a broker restart), and a collecting subscriber.

    with MosquittoBroker(tmp_path) as broker:          # skips the test when the mosquitto binary is absent
        sub = Subscriber(broker.port, "rlivs/#")       # persistent session, QoS 1
        ...; broker.restart(); ...
"""

from __future__ import annotations

import getpass
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.serve_helpers import free_port, wait_for


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")
                                              if Path(p).is_file()), None)


class MosquittoBroker:
    """mosquitto on 127.0.0.1:<free port>, persistent sessions in `folder`; stop/start/restart at will. Anonymous
    unless `users` ({name: password}, hashed with mosquitto_passwd) is given; TLS with `tls` = (CA, cert, key) PEMs."""

    def __init__(self, folder: Path, port: int | None = None, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None):
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip("the mosquitto binary is absent: apt-get install mosquitto (.ci/run installs it)")
        self.binary, self.folder = binary, Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.folder / "mosquitto.conf"
        # started as root, mosquitto would switch to the user "mosquitto", who cannot write the test's folder
        lines = [f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1", "persistence true",
                 f"persistence_location {self.folder}/",
                 f"log_dest file {self.folder}/mosquitto.log"]
        if users:
            pw = self.folder / "passwords"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
            passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"  # Debian's mosquitto has it
            subprocess.run([passwd, "-U", str(pw)], check=True)  # hash the plain-text file in place
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> MosquittoBroker:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, 10, f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its sessions and queued messages), then wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Subscriber:
    """A paho client that collects what arrives on `topic` (persistent session, QoS 1: it misses nothing across a
    broker restart). `messages` holds (topic, payload bytes, retained) in arrival order."""

    def __init__(self, port: int, topic: str, client_id: str = "rlivs-test-sub", clean: bool = False,
                 ca: Path | None = None, auth: tuple[str, str] | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                                  protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.1, 0.5)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.subscribed = threading.Event()

        def on_connect(client, userdata, flags, reason_code, properties=None):
            if self.subscribed.is_set() and flags.session_present:
                return  # the broker kept the subscription (and queued what came meanwhile): resubscribing would
                # send the retained messages again
            client.subscribe(topic, qos=1)

        def on_subscribe(client, userdata, mid, reason_codes, properties=None):
            self.subscribed.set()

        def on_message(client, userdata, msg):
            with self._lock:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

        self.client.on_connect, self.client.on_subscribe, self.client.on_message = on_connect, on_subscribe, on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test subscriber could not subscribe"

    def on(self, prefix: str) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return [m for m in self.messages if m[0].startswith(prefix)]

    def json_on(self, prefix: str) -> list[dict]:
        return [json.loads(p) for _, p, _ in self.on(prefix)]

    def wait(self, prefix: str, n: int, timeout: float = 15.0) -> list[tuple[str, bytes, bool]]:
        wait_for(lambda: len(self.on(prefix)) >= n, timeout, f"{n} MQTT messages on {prefix}")
        return self.on(prefix)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, timeout: float = 5.0, **how) -> bytes | None:
    """The retained message on `topic` as a brand-new subscriber sees it (None when nothing is retained); `how`:
    Subscriber's ca and auth."""
    sub = Subscriber(port, topic, client_id=f"rlivs-test-probe-{time.monotonic_ns()}", clean=True, **how)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [p for _, p, r in sub.on(topic) if r]
            if got:
                return got[-1]
            time.sleep(0.05)
        return None
    finally:
        sub.close()


def self_signed_tls(folder: Path) -> tuple[Path, Path, Path]:
    """(CA, server cert, server key) PEMs for 127.0.0.1, made with the openssl command (skips without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is absent: apt-get install openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cert, key, csr = (folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr"))
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rlivs test CA", "-keyout", ca_key,
        "-out", ca)
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr)
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-out", cert,
        "-extfile", ext)
    return ca, cert, key
