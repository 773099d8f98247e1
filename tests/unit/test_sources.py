"""Live sources (runtime/sources/live.py, spec.py): naming, replayed files as live input, the one-slot buffer and fps sampler,
reconnects (a file that disappears and comes back, an HTTP camera that goes down and up), decode-error counting."""

import random
import threading
import time

import av
import numpy as np
import pytest

from rlivs.edge_app.sample_video import make_sample_video
from rlivs.edge_app.source_specs import parse_sources
from rlivs.runtime.sources.live import LatestFrameSlot, LiveSource, ReconnectConfig, SourceConfig
from rlivs.runtime.sources.spec import SourceSpec, parse_source
from tests.helpers.serve_helpers import LiveStreamServer, wait_for


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    return make_sample_video(tmp_path_factory.mktemp("src") / "short.mp4", seconds=4.0)  # 8 fps, 32 frames


@pytest.fixture(scope="module")
def ts_video(tmp_path_factory):
    return make_sample_video(tmp_path_factory.mktemp("src") / "cam.ts", seconds=12.0)  # MPEG-TS, for HTTP streaming


def test_source_names_kinds_and_errors(tmp_path):
    assert parse_source("cam0=rtsp://10.0.0.2:554/stream1") == SourceSpec("cam0", "rtsp://10.0.0.2:554/stream1",
                                                                          "network")
    assert parse_source("rtsp://10.0.0.2:554/live/main?user=a") .name == "10.0.0.2-main"
    assert parse_source("/dev/video0") == SourceSpec("video0", "/dev/video0", "device")
    assert parse_source("http://cam.local/mjpeg").kind == "network"
    assert parse_source("videos/door cam.mp4") == SourceSpec("door-cam", "videos/door cam.mp4", "file")
    weird = tmp_path / "a=b.mp4"
    weird.write_bytes(b"")
    assert parse_source(str(weird)).url == str(weird)  # an existing path with '=' is a path, not name=url
    with pytest.raises(ValueError, match="would both be stream 'cam'"):
        parse_sources(["a/cam.mp4", "b/cam.mp4"])
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        parse_source("ftp://x/y.mp4")
    with pytest.raises(ValueError, match="source name 'bad name!'"):
        parse_source("bad name!=x.mp4")
    for dots in (".", ".."):  # path steps: the stream's thumbnail URLs would be normalised away
        with pytest.raises(ValueError, match=f"source name '{dots}' is not valid"):
            parse_source(f"{dots}=x.mp4")
    assert parse_source("...=x.mp4").name == "..."  # not a path step
    with pytest.raises(ValueError, match="fps must be"):
        SourceConfig(fps=0)


def test_backoff_grows_is_bounded_and_jittered():
    rc = ReconnectConfig(initial_s=0.5, max_s=8.0, factor=2.0, jitter=0.25)
    rng = random.Random(0)
    delays = [rc.delay(a, rng) for a in range(1, 12)]
    assert 0.375 <= delays[0] <= 0.625
    assert all(d <= 8.0 * 1.25 for d in delays) and max(delays) >= 6.0  # bounded, and it does reach the bound
    assert len({round(rc.delay(5, rng), 6) for _ in range(20)}) > 10  # jittered: reconnecting clients spread out
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        ReconnectConfig(initial_s=5, max_s=1)


def test_slot_keeps_only_the_newest_frame():
    from rlivs.runtime.sources.live import _Decoded

    slot = LatestFrameSlot()
    for i in range(100):
        slot.put(_Decoded(frame=None, t=i / 10, wall=0.0, segment=1))
    got = slot.take(lambda item: True)
    assert got.t == pytest.approx(9.9) and slot.overwritten == 99  # one slot: 99 replaced, nothing queued
    slot.close()
    assert slot.take(lambda item: True) is None  # already taken; closed -> end


def test_replayed_file_is_a_live_source(short_video):
    """Paced at real speed (x2 here), PTS times from 0, one frame per 1/fps of stream time, nothing dropped when the
    consumer keeps up; a late consumer gets the newest frame and the skipped sample times count as dropped."""
    cfg = SourceConfig(fps=2.0, replay_speed=2.0)
    t0 = time.monotonic()
    with LiveSource(str(short_video), cfg) as src:
        frames = list(src)
    wall = time.monotonic() - t0
    times = [f.t for f in frames]
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    assert wall > 1.5, wall  # 4 s of video at x2: not sooner than about 2 s (it is paced; a busy machine is slower)
    st = src.stats()
    assert st.state == "ended" and st.frames_decoded == 32 and st.frames_sampled == 8 and st.frames_dropped == 0
    assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8

    with LiveSource(str(short_video), cfg) as src:  # a consumer busy for 1 s of wall time (2 s of video)
        late = []
        for f in src:
            late.append(f.t)
            if len(late) == 2:
                time.sleep(1.0)
    st = src.stats()
    assert st.frames_dropped >= 2, (late, st)
    # the newest frame, never a backlog: after 2 s of video slept through, the next frame is >= 1.5 s later, not 0.5
    assert late[2] >= late[1] + 1.5 and all(b > a for a, b in zip(late, late[1:]))
    assert st.frames_sampled + st.frames_dropped == pytest.approx(8, abs=1)


def test_sampler_blocks_without_spinning(short_video):
    """Waiting for the next sample time costs the consumer thread no CPU (Condition.wait, not a poll loop)."""
    with LiveSource(str(short_video), SourceConfig(fps=1.0, replay_speed=1.0)) as src:
        it = iter(src)
        next(it)  # t = 0
        cpu0, wall0 = time.thread_time(), time.monotonic()
        f = next(it)  # the next sample is one second of real time away
        cpu, wall = time.thread_time() - cpu0, time.monotonic() - wall0
    assert f.t == pytest.approx(1.0)
    assert wall > 0.7 and cpu < 0.1, (wall, cpu)


def test_file_that_disappears_and_comes_back_is_reconnected(short_video, tmp_path):
    """A looping replayed file: missing at start (retried with backoff), then present, then deleted (the next loop
    fails to open, retried), then back: frames flow again and the timeline never goes backwards."""
    path = tmp_path / "cam.mp4"
    cfg = SourceConfig(fps=2.0, replay_speed=4.0, loop=True,
                       reconnect=ReconnectConfig(initial_s=0.05, max_s=0.2))
    src = LiveSource(SourceSpec("cam", str(path), "file"), cfg).start()
    try:
        wait_for(lambda: src.stats().open_failures >= 2, 5, "failed opens of the missing file")
        assert src.stats().state == "connecting" and "not found" in src.stats().last_error
        path.write_bytes(short_video.read_bytes())
        frames, seen = [], threading.Event()

        def consume():
            for f in src:
                frames.append(f)
                seen.set()

        threading.Thread(target=consume, daemon=True).start()
        wait_for(seen.is_set, 5, "the first frame after the file appeared")
        path.unlink()  # gone: the open file plays to its end, then the loop cannot reopen it
        failures = src.stats().open_failures
        wait_for(lambda: src.stats().open_failures > failures, 5, "failed reopen of the deleted file")
        n = len(frames)
        path.write_bytes(short_video.read_bytes())
        wait_for(lambda: len(frames) > n + 2 and src.stats().reconnects >= 1, 8, "frames after the file came back")
    finally:
        src.stop()
    st = src.stats()
    assert st.reconnects >= 1 and st.open_failures >= 3 and st.state == "stopped"
    times = [f.t for f in frames]
    assert all(b > a for a, b in zip(times, times[1:])), times  # monotonic across loops and outages


def test_http_camera_that_goes_down_and_comes_back(ts_video):
    """A loopback HTTP server streams MPEG-TS at real speed (x2). Stop it mid-stream: the source notices, retries
    with backoff (connection refused), and resumes when the server is back on the same port."""
    server = LiveStreamServer(ts_video, seconds=12.0, speed=2.0).start()
    cfg = SourceConfig(fps=2.0, read_timeout_s=2.0, open_timeout_s=2.0,
                       reconnect=ReconnectConfig(initial_s=0.1, max_s=0.4))
    src = LiveSource(f"cam={server.url}", cfg)
    frames, lock = [], threading.Lock()

    def consume():
        for f in src:
            with lock:
                frames.append(f)

    threading.Thread(target=consume, daemon=True).start()
    try:
        wait_for(lambda: len(frames) >= 3, 15, "frames from the HTTP stream")
        assert src.stats().state == "live" and src.spec.kind == "network"
        server.stop()
        wait_for(lambda: src.stats().open_failures >= 1, 10, "the source to notice the camera is gone")
        assert src.stats().state == "reconnecting"
        n = len(frames)
        server.start()
        wait_for(lambda: len(frames) >= n + 3, 15, "frames after the camera came back")
    finally:
        src.stop()
        server.stop()
    st = src.stats()
    assert st.reconnects >= 1 and st.disconnects >= 1 and st.connections >= 2
    times = [f.t for f in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    gap = max(b - a for a, b in zip(times, times[1:]))
    assert gap >= 0.5  # the outage shows as a gap in stream time, not as a jump back


def test_decode_errors_are_counted_and_decoding_goes_on(short_video, monkeypatch):
    """Every undecodable packet is counted (and logged at most every 5 s); the frames of the others still come."""
    calls = {"n": 0}
    real = LiveSource._decode_packet

    def flaky(self, packet):
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
        return real(self, packet)

    monkeypatch.setattr(LiveSource, "_decode_packet", flaky)
    with LiveSource(str(short_video), SourceConfig(fps=2.0, replay_speed=8.0)) as src:
        frames = list(src)
    st = src.stats()
    assert st.decode_errors >= 5 and "decode error" in st.last_error
    assert len(frames) >= 4 and st.state == "ended"


def test_missing_camera_device_is_retried_with_a_clear_error():
    """/dev/video99 does not exist here: PyAV's v4l2 open fails, the source counts it and keeps retrying."""
    spec = parse_source("/dev/video99?video_size=640x480&framerate=15")
    assert spec == SourceSpec("video99", "/dev/video99?video_size=640x480&framerate=15", "device")
    cfg = SourceConfig(reconnect=ReconnectConfig(initial_s=0.05, max_s=0.1, max_attempts=3))
    with LiveSource(spec, cfg) as src:
        assert list(src) == []  # gives up after max_attempts: iteration ends instead of blocking forever
    st = src.stats()
    assert st.state == "failed" and st.open_failures == 3 and st.connections == 0
    assert "open failed" in st.last_error


def test_live_modules_import_without_torch(tmp_path):
    from tests.helpers.no_torch import run_without_torch

    out = run_without_torch("""
        import rlivs.runtime.sources, rlivs.runtime.sources.live, rlivs.runtime.backends.shared
        import rlivs.edge_app.service.core, rlivs.edge_app.service.app
        import rlivs.edge_app.commands.serve, rlivs.edge_app.cli
        assert TORCH_FREE()
        print('OK')
    """, tmp_path)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


def test_a_sources_clock_is_decided_when_it_is_opened(short_video, tmp_path):
    """open_spec gives the caller's clock (--start-time) to the source it opens, recorded or live; without one the
    source keeps its own (the file's tag: none here; a camera's arrival time). One sampling rule for the recorded
    sources: the same frames from a video file and from a frame folder of it."""
    import numpy as np

    from rlivs.runtime.sources import open_source, open_spec
    from rlivs.runtime.sources.live import LiveSource, SourceConfig
    from rlivs.runtime.sources.spec import SourceSpec

    T0 = 1_790_000_000.0
    spec = SourceSpec("short", str(short_video), "file")
    own = open_spec(spec, 2.0, live=False)
    given = open_spec(spec, 2.0, clock_origin=T0, live=False)
    assert own.clock_origin is None and own.clock_kind is None
    assert (given.clock_origin, given.clock_kind) == (T0, "--start-time")
    frames = list(given.starting_at(1.0))
    assert [f.t for f in frames] == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    assert [f.wall for f in frames] == pytest.approx([T0 + f.t for f in frames])
    assert all(f.wall is None for f in own)
    live = open_spec(spec, 2.0, clock_origin=T0, live=True, live_config=SourceConfig(), start_time=8.0)  # replayed
    assert isinstance(live, LiveSource) and (live.clock_origin, live.clock_kind) == (T0, "--start-time")
    assert live.config.start_time == 8.0 and live.config.fps == 2.0  # a resumed stream continues its timeline
    assert open_spec(SourceSpec("cam", "rtsp://10.0.0.2/s", "network"), 2.0).clock_kind == "arrival time"
    # the folder of the same frames (1 frame per 1/8 s) is sampled by the same rule: the same frame times
    folder = tmp_path / "frames"
    folder.mkdir()
    from PIL import Image

    decoded = list(open_source(short_video, fps=8.0))
    for i, f in enumerate(decoded):
        Image.fromarray(f.image).save(folder / f"{i:04d}.png")
    by_file = list(open_source(short_video, fps=3.0, start_time=0.5, clock_origin=T0))
    by_folder = list(open_source(folder, fps=3.0, start_time=0.5, frames_fps=8.0, clock_origin=T0))
    assert [f.t for f in by_folder] == pytest.approx([f.t for f in by_file])
    assert [f.wall for f in by_folder] == pytest.approx([f.wall for f in by_file])
    assert all(np.array_equal(a.image, b.image) for a, b in zip(by_file, by_folder))
