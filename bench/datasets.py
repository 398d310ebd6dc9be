"""Datasets, frozen named subsets and radius grids.

Every dataset yields ``(x, label)`` pairs: ``x`` a float32 tensor of shape (C, H, W) with pixel
values in [0, 1], ``label`` a python int. Nothing here adds noise or normalizes: the harness owns
the noise and models normalize inside themselves (with :class:`DatasetInfo` mean/std), so radii
are always in [0, 1] pixel units.

=============  ===========  =======  =====  =================================================
name           shape        classes  split  source
=============  ===========  =======  =====  =================================================
digits         1 x 8 x 8    10       both   scikit-learn ``load_digits`` (embedded, offline),
                                            stratified split 1,437 / 360 (random_state=0)
mnist          1 x 28 x 28  10       both   idx files in the data dir, or torchvision download
fashion-mnist  1 x 28 x 28  10       both   idx files; also Debian's dataset-fashion-mnist
cifar10        3 x 32 x 32  10       both   torchvision ``CIFAR10`` (cifar-10-batches-py)
imagenet       3 x 224x224  1000     test   ILSVRC2012 val in class folders; Resize 256, crop 224
imagefolder    3 x S x S    folders  test   any class-folder tree; Resize S, crop S (S = 224)
=============  ===========  =======  =====  =================================================

Frozen subsets are indices into the *test* split, defined by a rule so that every run of a
protocol certifies exactly the same images (:func:`subset_hash` identifies them in results):

==========  ===============  ==================================  ==================================
subset      datasets         rule                                used by
==========  ===============  ==================================  ==================================
full        all              every test image                    -
dev         all              images 0..49                        quick checks
cohen500    cifar10          0, 20, ..., 9980 (every 20th)       Cohen et al. 2019, SmoothAdv
macer500    cifar10          images 500..999                     MACER
first512    cifar10          images 0..511                       noised-diffusion-classifier papers
cohen500    imagenet         0, 100, ..., 49900 (every 100th)    Cohen et al. 2019, SmoothAdv
==========  ===============  ==================================  ==================================

Radius grids (the radii at which certified accuracy is reported) are per dataset, see
:func:`radius_grid`.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bench.errors import ConfigError, DataError
from bench.grids import DATASET_NAMES, grid_for
from bench.protocol import DatasetInfo

if TYPE_CHECKING:  # torchvision and scikit-learn are imported where used: they cost ~2 s each
    from torchvision.datasets import ImageFolder

PathLike = str | os.PathLike[str]


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_DEFAULT_IMAGE_SIZE = 224

# Fixed-shape datasets. The digits statistics are those of its train split in [0, 1]
# (tests recompute them); the others are the values the field's published models use.
_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, (0.3054,), (0.3761,)),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    ),
    "imagenet": DatasetInfo("imagenet", (3, 224, 224), 1000, _IMAGENET_MEAN, _IMAGENET_STD),
}

_DIGITS_TEST_SIZE = 360
_TEST_ONLY = ("imagenet", "imagefolder")

_SUBSETS: dict[str, dict[str, range | None]] = {
    name: {"full": None, "dev": range(50)} for name in DATASET_NAMES
}
_SUBSETS["cifar10"].update(
    cohen500=range(0, 10_000, 20), macer500=range(500, 1000), first512=range(512)
)
_SUBSETS["imagenet"].update(cohen500=range(0, 50_000, 100))


# idx file stems per split (each may also be gzipped), and where torchvision keeps them.
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# Where Debian's dataset-fashion-mnist package installs the gzipped idx files.
_SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


# ----------------------------------------------------------------------------------------------
# Names, splits, subsets, grids


def default_data_dir() -> Path:
    """``$CERTBENCH_DATA`` if set, else ``./data``: one place to keep every dataset."""
    env = os.environ.get("CERTBENCH_DATA")
    return Path(env).expanduser() if env else Path("data")


def _check_name(name: str) -> None:
    if name in DATASET_NAMES:
        return
    close = difflib.get_close_matches(name, DATASET_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown dataset {name!r}{hint}; valid: {', '.join(DATASET_NAMES)}")


def _splits(name: str) -> tuple[str, ...]:
    return ("test",) if name in _TEST_ONLY else ("train", "test")


def _check_split(name: str, split: str) -> None:
    valid = _splits(name)
    if split not in valid:
        raise ConfigError(f"dataset {name!r} has no split {split!r}; valid: {', '.join(valid)}")


def subset_names(name: str) -> tuple[str, ...]:
    """The frozen subsets a dataset defines (see the module docstring for the rules)."""
    _check_name(name)
    return tuple(_SUBSETS[name])


def check_subset(name: str, subset: str) -> None:
    """Fail with the valid names if the dataset or its subset is unknown (no data needed)."""
    _check_name(name)
    rules = _SUBSETS[name]
    if subset not in rules:
        raise ConfigError(f"dataset {name!r} has no subset {subset!r}; valid: {', '.join(rules)}")


def resolve_subset(name: str, subset: str, length: int) -> list[int]:
    """Indices into the test split (of ``length`` images) that ``subset`` selects.

    A rule that reaches past the split is an error rather than a silent truncation: a
    truncated subset would no longer be the protocol its name promises.
    """
    check_subset(name, subset)
    rule = _SUBSETS[name][subset]
    if rule is None:
        return list(range(length))
    if rule[-1] >= length:
        raise DataError(
            f"subset {subset!r} of {name} needs test images up to index {rule[-1]}, but the "
            f"test split has only {length}; use --subset full or the complete dataset"
        )
    return list(rule)


def subset_hash(indices: Sequence[int]) -> str:
    """Identifies a list of test indices in result records (order matters)."""
    joined = ",".join(str(int(i)) for i in indices)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def radius_grid(name: str) -> tuple[float, ...]:
    """L2 radii (pixel units in [0, 1]) at which certified accuracy is reported."""
    _check_name(name)
    return grid_for(name)


# ----------------------------------------------------------------------------------------------
# Dataset objects


class CertDataset(Dataset):
    """One split of a dataset in the harness's conventions, with its :class:`DatasetInfo`.

    ``fingerprint`` identifies the data content so results can say exactly what they were
    computed on; it is computed on first use and cached.
    """

    def __init__(self, info: DatasetInfo, split: str):
        self.info = info
        self.split = split

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        raise NotImplementedError

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images (N, C, H, W) float32 and labels (N,) int64, in memory."""
        items = [self[i] for i in range(len(self))]
        images = torch.stack([x for x, _ in items])
        return images, torch.tensor([label for _, label in items], dtype=torch.int64)

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for chunk in self._content():
            digest.update(chunk)
        return digest.hexdigest()[:16]

    def _content(self) -> Iterator[bytes | memoryview]:
        """The byte chunks that identify this split's data."""
        raise NotImplementedError


class _MemoryDataset(CertDataset):
    """Images kept as their stored integer values (uint8) and scaled to [0, 1] on access.

    Keeping the integers costs a quarter of the float memory (CIFAR-10 train: 150 MB, not
    600 MB) and is the exact source content the fingerprint hashes.
    """

    def __init__(self, info: DatasetInfo, split: str, raw: Tensor, labels: Tensor, scale: float):
        super().__init__(info, split)
        if raw.dtype != torch.uint8 or raw.shape[1:] != info.shape or len(raw) != len(labels):
            raise DataError(
                f"{info.name} {split} data has images {tuple(raw.shape)} {raw.dtype} and "
                f"{len(labels)} labels; expected uint8 (N, {', '.join(map(str, info.shape))})"
            )
        self.raw = raw.contiguous()
        self.labels = labels.to(torch.int64).contiguous()
        self.scale = scale

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.raw[index].float().div_(self.scale), int(self.labels[index])

    def tensors(self) -> tuple[Tensor, Tensor]:
        return self.raw.float().div_(self.scale), self.labels.clone()

    def _content(self) -> Iterator[bytes | memoryview]:
        yield repr(tuple(self.raw.shape)).encode()
        yield self.raw.numpy().data
        yield self.labels.numpy().astype("<i8").tobytes()  # same bytes on any platform


class _FolderDataset(CertDataset):
    """A torchvision ``ImageFolder`` read lazily from disk (ImageNet does not fit in memory)."""

    def __init__(self, info: DatasetInfo, split: str, folder: ImageFolder):
        super().__init__(info, split)
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, label = self.folder[index]
        return x, int(label)

    def _content(self) -> Iterator[bytes | memoryview]:
        # Class and file names, not pixels: hashing 50,000 JPEGs would take minutes.
        root = Path(self.folder.root)
        paths = sorted(Path(path).relative_to(root).as_posix() for path, _ in self.folder.samples)
        yield "\n".join(self.folder.classes).encode()
        yield b"\0"
        yield "\n".join(paths).encode()


# ----------------------------------------------------------------------------------------------
# Public entry points


def dataset_info(
    name: str, *, data_dir: PathLike | None = None, image_size: int | None = None
) -> DatasetInfo:
    """Shape, classes and normalization statistics, without loading any images."""
    _check_name(name)
    if name == "imagefolder":
        size = _check_image_size(image_size)
        classes = _folder_classes(name, _folder_root(name, data_dir))
        return DatasetInfo(name, (3, size, size), len(classes), _IMAGENET_MEAN, _IMAGENET_STD)
    info = _INFO[name]
    if image_size is not None and image_size != info.shape[-1]:
        raise ConfigError(
            f"dataset {name!r} has a fixed image size of {info.shape[-1]}; image_size only "
            "applies to imagefolder"
        )
    return info


def load_split(
    name: str,
    split: str = "test",
    *,
    data_dir: PathLike | None = None,
    image_size: int | None = None,
) -> CertDataset:
    """Load one split of a dataset; raises :class:`DataError` with the fix when data is missing."""
    _check_name(name)
    _check_split(name, split)
    info = dataset_info(name, data_dir=data_dir, image_size=image_size)
    if name == "imagefolder":
        size = info.shape[-1]
        return _load_folder(info, _folder_root(name, data_dir), resize=size, crop=size)
    if name == "digits":
        return _load_digits(split)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if name in _TORCHVISION_NAMES:
        return _load_idx(name, split, root)
    if name == "cifar10":
        return _load_cifar10(split, root)
    return _load_folder(info, _imagenet_root(root), resize=256, crop=224)


# ----------------------------------------------------------------------------------------------
# Loaders


def _load_digits(split: str) -> CertDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.images,
        bunch.target,
        test_size=_DIGITS_TEST_SIZE,
        random_state=0,
        stratify=bunch.target,
    )
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    raw = torch.from_numpy(images.astype(np.uint8)).unsqueeze(1)  # values 0..16
    return _MemoryDataset(_INFO["digits"], split, raw, torch.from_numpy(labels), scale=16.0)


def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte idx array from a plain or gzipped file.

    torchvision's reader opens only uncompressed files, while the usual distributions
    (including Debian's package) ship them gzipped; the format is a 4-byte magic
    (0, 0, 0x08 for uint8, ndim), ndim big-endian uint32 sizes, then the bytes.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise DataError(f"cannot read idx file {path}: {err}") from err
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != math.prod(shape):
        raise DataError(f"{path} holds {values.size} values, its header says {shape}")
    return values.reshape(shape)


def _idx_dirs(name: str, root: Path) -> list[Path]:
    # Dataset-specific folders first: mnist and fashion-mnist use the same file names, so a
    # flat data dir is the most ambiguous place and comes after them.
    dirs = [root / name, root / _TORCHVISION_NAMES[name] / "raw", root]
    return dirs + list(_SYSTEM_DIRS.get(name, ()))


def _find_idx_pair(directory: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for stem in _IDX_STEMS[split]:
        candidates = [directory / stem, directory / f"{stem}.gz"]
        match = next((path for path in candidates if path.is_file()), None)
        if match is None:
            return None
        found.append(match)
    return found[0], found[1]


def _load_idx(name: str, split: str, root: Path) -> CertDataset:
    info = _INFO[name]
    dirs = _idx_dirs(name, root)
    pair = next((p for p in (_find_idx_pair(d, split) for d in dirs) if p is not None), None)
    if pair is not None:
        images, labels = _read_idx(pair[0]), _read_idx(pair[1])
        raw, targets = torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
        if raw.ndim != 3 or targets.ndim != 1:
            raise DataError(f"{pair[0]} / {pair[1]} do not hold images (N, H, W) and labels (N,)")
    else:
        from torchvision import datasets

        try:
            downloaded = getattr(datasets, _TORCHVISION_NAMES[name])(
                str(root), train=split == "train", download=True
            )
        except (OSError, RuntimeError) as err:
            fix = "pass --data-dir PATH to a directory holding the idx files"
            if name == "fashion-mnist":
                fix += " or install the Debian package dataset-fashion-mnist"
            raise DataError(
                f"{name} {split} idx files ({_IDX_STEMS[split][0]}[.gz], ...) not found in "
                f"{', '.join(map(str, dirs))} and the download failed ({_first_line(err)}); {fix}"
            ) from err
        raw, targets = downloaded.data, downloaded.targets
    return _MemoryDataset(info, split, raw.unsqueeze(1), targets, scale=255.0)


def _load_cifar10(split: str, root: Path) -> CertDataset:
    from torchvision import datasets

    train = split == "train"
    try:
        cifar = datasets.CIFAR10(str(root), train=train, download=False)
    except RuntimeError:  # not there (or corrupt): try to fetch it
        try:
            cifar = datasets.CIFAR10(str(root), train=train, download=True)
        except (OSError, RuntimeError) as err:
            raise DataError(
                f"cifar10 not found in {root} (expected {root / 'cifar-10-batches-py'}) and the "
                f"download failed ({_first_line(err)}); pass --data-dir PATH to the directory "
                "holding cifar-10-batches-py"
            ) from err
    raw = torch.from_numpy(cifar.data).permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    labels = torch.as_tensor(cifar.targets, dtype=torch.int64)
    return _MemoryDataset(_INFO["cifar10"], split, raw, labels, scale=255.0)


def _imagenet_root(root: Path) -> Path:
    """``root/val`` if present, else ``root`` itself when it directly holds the 1000 classes."""
    val = root / "val"
    if val.is_dir():
        return val
    if root.is_dir() and sum(entry.is_dir() for entry in os.scandir(root)) == 1000:
        return root
    raise DataError(
        f"imagenet val set not found: no {val} and no 1000 class folders in {root}; pass "
        "--data-dir PATH to the ILSVRC2012 val images arranged in class folders "
        "(n01440764/ILSVRC2012_val_00000293.JPEG, ...)"
    )


def _folder_root(name: str, data_dir: PathLike | None) -> Path:
    if data_dir is None:
        raise DataError(f"{name} needs --data-dir PATH pointing at a tree of class folders")
    return Path(data_dir).expanduser()


def _folder_classes(name: str, root: Path) -> list[str]:
    from torchvision.datasets.folder import find_classes

    try:
        classes, _ = find_classes(str(root))
    except OSError as err:  # missing directory, or one without class folders
        raise DataError(
            f"{name}: no class folders in {root} ({_first_line(err)}); pass --data-dir PATH "
            "to a directory of class folders"
        ) from err
    return classes


def _load_folder(info: DatasetInfo, root: Path, *, resize: int, crop: int) -> CertDataset:
    from torchvision import datasets, transforms

    classes = _folder_classes(info.name, root)
    if len(classes) != info.num_classes:
        raise DataError(
            f"{info.name} expects {info.num_classes} class folders, {root} has {len(classes)}; "
            "use --dataset imagefolder for other trees"
        )
    transform = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor()]
    )
    try:
        folder = datasets.ImageFolder(str(root), transform=transform)
    except OSError as err:  # e.g. a class folder without images
        raise DataError(f"{info.name}: cannot use {root}: {_first_line(err)}") from err
    return _FolderDataset(info, "test", folder)


def _check_image_size(image_size: int | None) -> int:
    size = _DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if not isinstance(size, int) or size <= 0:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    return size


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
