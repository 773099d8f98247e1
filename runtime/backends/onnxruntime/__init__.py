"""The ONNX Runtime backend: runs an exported bundle (`rlivs export`) with neither torch nor transformers."""

from .backend import OrtBackend
from ..bundle import is_bundle, load_manifest

__all__ = ["OrtBackend", "is_bundle", "load_manifest"]
