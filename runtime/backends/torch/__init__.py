"""The PyTorch reference backend (needs the `torch` extra). The only place in rlivs.runtime that imports torch."""

from .backend import TorchBackend

__all__ = ["TorchBackend"]
