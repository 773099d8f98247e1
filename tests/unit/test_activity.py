"""The activity gate (runtime/activity.py) on synthetic frames with known answers, and its settings."""

import numpy as np
import pytest

from rlivs.runtime.activity import ActivityGate, GateConfig, changed_fraction, colour_cells
from rlivs.runtime.errors import UserError

H, W, T = 120, 160, 8


def scene(seed: int = 0) -> np.ndarray:
    """(H, W, 3) float32: a textured room with a few rectangles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = 60 + 80 * (xx / W)[..., None] + rng.normal(0, 12, (H, W, 1))
    img = np.repeat(img, 3, axis=2)
    img[20:60, 30:70] = (180, 40, 40)
    img[70:110, 100:150] = (40, 160, 60)
    return img


def clip(base: np.ndarray, rng, noise: float = 4.0, gain=1.0, offset=0.0, box=None) -> np.ndarray:
    """(T, H, W, 3) uint8: `base` with sensor noise, brightness gain/offset (scalars or per-frame arrays) and an
    optional box (y, x, h, w, from frame) painted white."""
    gain, offset = np.broadcast_to(gain, (T,)), np.broadcast_to(offset, (T,))
    out = []
    for i in range(T):
        img = base * gain[i] + offset[i] + rng.normal(0, noise, base.shape)
        if box is not None and i >= box[4]:
            y, x, h, w, _ = box
            img[y:y + h, x:x + w] = 250
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def gate(**kw) -> ActivityGate:
    return ActivityGate(GateConfig(enabled=True, **kw))


def caption(g: ActivityGate, frames: np.ndarray, index: int, t_end: float):
    d = g.decide(frames, t_end)
    if d.caption:
        g.ref = g.reference(index, t_end)
    return d


def test_static_scene_with_sensor_noise_is_idle_after_the_first_clip():
    rng, base = np.random.default_rng(1), scene()
    g = gate()
    first = caption(g, clip(base, rng, noise=8.0), 0, 8.0)
    assert (first.caption, first.reason) == (True, "first")
    for i in range(1, 6):
        d = caption(g, clip(base, rng, noise=8.0), i, 8.0 * (i + 1))
        assert (d.caption, d.reason) == (False, "idle") and d.score < g.config.threshold


def test_an_object_entering_is_active_and_the_scene_it_leaves_is_idle_again():
    rng, base = np.random.default_rng(2), scene()
    g = gate()
    caption(g, clip(base, rng), 0, 8.0)
    # a 16x12 box (1 % of the image) appears on frame 3 of clip 1 and stays
    entered = caption(g, clip(base, rng, box=(50, 80, 16, 12, 3)), 1, 16.0)
    assert (entered.caption, entered.reason) == (True, "active")
    assert entered.motion > 0 and entered.scene > 0
    stays = caption(g, clip(base, rng, box=(50, 80, 16, 12, 0)), 2, 24.0)  # the new scene is the reference now
    assert (stays.caption, stays.reason) == (False, "idle")
    gone = caption(g, clip(base, rng), 3, 32.0)  # taken away between clips: no motion inside, the scene differs
    assert (gone.caption, gone.reason) == (True, "active") and gone.motion == 0.0 and gone.scene > 0


def test_an_object_as_bright_as_what_it_covers_is_active():
    """Brightness alone would miss it: a cyan box on a grey wall of the same luma changes the hue only."""
    rng = np.random.default_rng(7)
    base = np.full((H, W, 3), 155.0, np.float32)
    base += rng.normal(0, 6, (H, W, 1))  # texture
    g = gate()
    caption(g, clip(base, rng), 0, 8.0)
    frames = clip(base, rng)
    frames[2:, 40:64, 60:84] = (40, 200, 230)  # BT.601 luma 155, like the wall: 3 % of the image
    d = caption(g, frames, 1, 16.0)
    assert d.caption and d.reason == "active", d


def test_something_that_comes_and_goes_inside_one_clip_is_active():
    rng, base = np.random.default_rng(3), scene()
    g = gate()
    caption(g, clip(base, rng), 0, 8.0)
    frames = clip(base, rng)
    frames[3:5, 40:70, 10:25] = 250  # two frames only: the scene at the end is as before
    d = caption(g, frames, 1, 16.0)
    assert d.caption and d.reason == "active"


def test_slow_brightness_drift_and_an_exposure_step_are_idle():
    rng, base = np.random.default_rng(4), scene()
    g = gate()
    caption(g, clip(base, rng), 0, 8.0)
    # dusk: 30 % darker over 6 clips, as a gain ramp, then an auto-exposure step of +25 grey levels
    for i in range(1, 7):
        gains = 1.0 - 0.3 * (np.arange(T) + (i - 1) * T) / (6 * T)
        d = caption(g, clip(base, rng, gain=gains), i, 8.0 * (i + 1))
        assert not d.caption, (i, d)
    d = caption(g, clip(base, rng, gain=0.7, offset=25.0), 7, 64.0)
    assert not d.caption, d


def test_forced_caption_after_max_idle_moves_the_reference():
    rng, base = np.random.default_rng(5), scene()
    g = gate(max_idle_s=40.0)
    caption(g, clip(base, rng), 0, 8.0)
    reasons = [caption(g, clip(base, rng), i, 8.0 * (i + 1)).reason for i in range(1, 12)]
    # clips end at 16, 24, ...: the first ending >= 8 + 40 s after the last caption's end is captioned
    assert reasons == ["idle"] * 4 + ["max_idle"] + ["idle"] * 4 + ["max_idle"] + ["idle"]
    assert g.ref.index == 10 and g.ref.t_end == 88.0


def test_gate_off_captions_everything_without_measuring():
    g = ActivityGate(GateConfig(enabled=False))
    d = g.decide(np.zeros((2, 8, 8, 3), np.uint8), 1.0)
    assert (d.caption, d.reason) == (True, "off") and g.reference(0, 1.0) is None


def test_reference_round_trip_decides_as_before():
    """A gate built from a stored reference (a resumed stream) decides exactly as the one that made it."""
    rng, base = np.random.default_rng(6), scene()
    a = gate()
    caption(a, clip(base, rng), 0, 8.0)
    b = ActivityGate(a.config, a.ref)
    for i, box in enumerate([None, (10, 10, 20, 20, 2), None]):
        frames = clip(base, rng, box=box)
        assert caption(a, frames, i + 1, 8.0 * (i + 2)) == caption(b, frames, i + 1, 8.0 * (i + 2))
    assert a.ref.index == b.ref.index and np.array_equal(a.ref.cells, b.ref.cells)


def test_colour_cells_are_block_means_and_changed_fraction_matches_brightness():
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    frames[0, :16, :16] = (200, 100, 50)  # the top-left quarter
    cells = colour_cells(frames, 2)
    assert cells.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(cells[0, 0, 0], [200, 100, 50])
    np.testing.assert_allclose(cells[0, 1], 0)
    assert colour_cells(frames, 64).shape == (1, 4, 4, 3)  # a cell averages at least 8 x 8 pixels
    a = np.arange(64, dtype=np.float32).reshape(8, 8) * 3
    assert changed_fraction(a, a * 0.8 + 20, noise=2.0) == 0.0  # brightness and contrast matched away
    b = a.copy()
    b[:2, :2] += 100  # 4 of 64 cells
    assert changed_fraction(a, b, noise=10.0) == pytest.approx(4 / 64, abs=1 / 64)


@pytest.mark.parametrize("kw, word", [({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"),
                                      ({"max_idle_s": 0}, "idle"), ({"max_idle_s": float("inf")}, "idle"),
                                      ({"noise": -1}, "noise"), ({"grid": 2}, "grid")])
def test_impossible_settings_are_refused(kw, word):
    with pytest.raises(UserError, match=word):
        GateConfig(enabled=True, **kw)


def test_options_resolve_per_stream_and_refuse_unknown_streams():
    from rlivs.edge_app.options import gate_configs

    streams = [("cam0", True), ("cam1", True), ("file", False)]
    got = gate_configs([], [], [], streams)
    assert {n: g.enabled for n, g in got.items()} == {"cam0": True, "cam1": True, "file": False}  # auto
    got = gate_configs(["cam1=off", "file=on"], ["0.02", "cam0=0.1"], ["cam1=30"], streams)
    assert {n: g.enabled for n, g in got.items()} == {"cam0": True, "cam1": False, "file": True}
    assert (got["cam0"].threshold, got["cam1"].threshold, got["file"].threshold) == (0.1, 0.02, 0.02)
    assert (got["cam0"].max_idle_s, got["cam1"].max_idle_s) == (600.0, 30.0)
    assert not any(g.enabled for g in gate_configs(["off"], [], [], streams).values())
    with pytest.raises(UserError, match="--gate 'cam9=on' names stream 'cam9'.*cam0, cam1, file"):
        gate_configs(["cam9=on"], [], [], streams)
    with pytest.raises(UserError, match="--gate 'sometimes'.*auto, on, off"):
        gate_configs(["sometimes"], [], [], streams)
    with pytest.raises(UserError, match="--gate-threshold 'x'"):
        gate_configs([], ["x"], [], streams)
    with pytest.raises(UserError, match="stream 'cam0'.*threshold"):
        gate_configs([], ["cam0=2"], [], streams)
