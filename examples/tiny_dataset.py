"""A dataset added from a user module: ``bars``, 12 x 12 grey images of one horizontal (class 0)
or vertical (class 1) bar on a noisy background, generated offline from fixed seeds.

Importing this module registers the dataset; see CONTRIBUTING.md, "Adding a dataset".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.loaders import MemoryDataset
from bench.data.specs import DatasetInfo, DatasetSpec, register_dataset

SIZES = {"train": 400, "test": 100}
SEEDS = {"train": 0, "test": 1}  # fixed: every run certifies exactly the same images


def load_bars(info: DatasetInfo, split: str, root: Path) -> MemoryDataset:
    """The images of one split; ``root`` (--data-dir) is unused, nothing is read from disk."""
    rng = np.random.default_rng(SEEDS[split])
    n, size = SIZES[split], info.shape[-1]
    labels = rng.integers(0, 2, size=n)
    images = rng.integers(0, 64, size=(n, size, size), dtype=np.uint8)  # dark noise
    where = rng.integers(1, size - 1, size=n)
    for image, label, k in zip(images, labels, where, strict=True):
        if label:
            image[:, k] = 255
        else:
            image[k, :] = 255
    raw = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W) uint8, scaled to [0, 1] on access
    return MemoryDataset(info, split, raw, torch.from_numpy(labels), scale=255.0)


register_dataset(DatasetSpec(
    name="bars",
    shape=(1, 12, 12),
    num_classes=2,
    mean=(0.1964,),  # of the train split in [0, 1], for models' normalization layers
    std=(0.2521,),
    grid=(0.25, 1.5),  # report certified accuracy at radii 0, 0.25, ..., 1.5
    loader="examples.tiny_dataset:load_bars",
    subsets={"first20": range(20)},  # besides the standard full and dev (images 0..49)
    description="synthetic horizontal vs vertical bars (examples/tiny_dataset.py)",
))
