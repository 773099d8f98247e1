"""Calibration from the user's own footage (docs/calibration.md).

  dataset   calibration sets: clips sampled stratified over time, deduplicated, with the FIFO prefixes and
            prompts the pipeline builds (`collect`, `CalibrationSet`)
  layers    the probe layers whose attention best reproduces the all-layer token selection (`calibrate_layers`)
  quantize  INT8 / INT4 bundles from a float32 bundle and a set, probe attention kept float32 (`quantize_bundle`)
  report    fidelity and speed of each precision against float32 on held-out clips (`fidelity_report`)

A library: no argv parsing (the `rlivs calibrate` commands live in rlivs.edge_app.commands.calibrate). Importing config,
dataset, layers or report imports no torch (torch comes in through the reference backend the caller loads);
quantize imports onnxruntime.
"""
