"""rlivs: streaming video question answering on edge GPUs.

Subpackages (each a top-level folder of the repository):
  rlivs.runtime      the on-device runtime (numpy; no torch, no transformers)
  rlivs.export       ONNX / TensorRT export of the vision encoder and decoder
  rlivs.edge_app     what runs on the robot: the CLI and the services
  rlivs.calibration  probe-layer choice and quantization from calibration data
"""

__version__ = "0.1.0"
