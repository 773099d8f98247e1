"""ONNX and TensorRT export (vision encoder + projector + pooling; decoder with probe outputs).

Not built yet: the reference pipeline (rlivs.runtime with the torch backend) comes first.
"""
