"""The TensorRT backend: runs a bundle's engines (rlivs build-engines) on NVIDIA GPUs; imports tensorrt lazily.

Importing this package needs neither tensorrt nor cuda-python; constructing TrtBackend does.
"""

from .backend import TrtBackend, import_tensorrt

__all__ = ["TrtBackend", "import_tensorrt"]
