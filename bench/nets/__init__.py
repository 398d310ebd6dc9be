"""Shared networks: architectures, input layers and sha256-checked checkpoint loaders.

Models take [0, 1] pixels; any normalization is their first layer, after the harness's noise.
"""

from bench.nets.archs import ARCHITECTURES, build_arch
from bench.nets.loaders import load_network, save_zoo_model, sha256_file
from bench.nets.normalize import InputCenterLayer, NormalizeLayer
from bench.nets.small_cnn import SmallCNN

__all__ = [
    "ARCHITECTURES",
    "InputCenterLayer",
    "NormalizeLayer",
    "SmallCNN",
    "build_arch",
    "load_network",
    "save_zoo_model",
    "sha256_file",
]
