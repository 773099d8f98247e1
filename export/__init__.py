"""ONNX and TensorRT export: `bundle` (rlivs export: vision encoder + projector + pooling, decoder with the probe
output), `tensorrt_ops` (TensorRT parser table and fusable-attention checks), `tensorrt_build` (rlivs build-engines)."""
