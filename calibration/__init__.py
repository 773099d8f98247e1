"""Calibration: choose probe layers from data and quantize with calibration sets.

Not built yet: it builds on the ONNX export.
"""
