"""Probe-row helpers shared by the torch backend's tests (reference, static cache, CUDA)."""

import numpy as np


def spy_probe_rows(monkeypatch) -> list[int]:
    """Record the layer index of every probe_rows() call the torch backend makes: the list fills as steps run."""
    from rlivs.runtime.backends.torch import backend as torch_backend

    calls, real = [], torch_backend.probe_rows

    def spy(module, *a, **kw):
        calls.append(module.layer_idx)
        return real(module, *a, **kw)

    monkeypatch.setattr(torch_backend, "probe_rows", spy)
    return calls


def all_layer_rows(backend, steps):
    """Per step, every layer's head-mean last row over the step's K keys, with calibration's recorders on every
    layer (rlivs.calibration.layers.record_all_layers): [(N, K)]."""
    from rlivs.calibration.layers import record_all_layers

    with record_all_layers(backend) as recs:
        state, out = backend.new_state(), []
        for x in steps:
            backend.step(x, state, probe_rows=1)
            out.append(np.stack([r.row[0, : state.length].float().cpu().numpy() for r in recs]))
    return out
