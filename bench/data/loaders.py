"""Datasets on the torch side: the :class:`CertDataset` objects and the loaders that
:mod:`bench.data.specs` names (the dataset facts, subsets and grids live there and are
re-exported here for existing callers).

Every dataset yields ``(x, label)`` pairs: ``x`` a float32 tensor of shape (C, H, W) with pixel
values in [0, 1], ``label`` a python int. Nothing here adds noise or normalizes: the harness owns
the noise and models normalize inside themselves (with :class:`DatasetInfo` mean/std), so radii
are always in [0, 1] pixel units.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import math
import os
import shutil
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bench.data import class_folders as F
from bench.data import specs
from bench.data.class_folders import ModelFacts, Tree
from bench.data.layout import standard_layout
from bench.data.specs import (  # noqa: F401  re-exported: callers use bench.data.loaders.<name>
    DATASETS,
    DatasetInfo,
    DatasetSpec,
    check_subset,
    dataset_names,
    radius_grid,
    register_dataset,
    resolve_subset,
    subset_hash,
    subset_names,
)
from bench.errors import ConfigError, DataError

if TYPE_CHECKING:  # torchvision and scikit-learn are imported where used: they cost ~2 s each
    from torchvision.datasets import ImageFolder

PathLike = str | os.PathLike[str]


def __getattr__(name: str):
    # Computed on access, so that datasets registered after import are included.
    if name == "DATASET_NAMES":
        return dataset_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# idx file stems per split (each may also be gzipped), and where torchvision keeps them.
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR10 = DATASETS["cifar10"]  # its class names name the folders of a class-folder copy
_TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# Where Debian's dataset-fashion-mnist package installs the gzipped idx files.
_SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


def default_data_dir() -> Path:
    """``$CERTBENCH_DATA`` if set, else ``./data``: one place to keep every dataset."""
    env = os.environ.get("CERTBENCH_DATA")
    return Path(env).expanduser() if env else Path("data")


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


class MemoryDataset(CertDataset):
    """Images kept as their stored integer values (uint8) and scaled to [0, 1] on access; the
    simplest dataset for a user loader to return (CONTRIBUTING.md, "Adding a dataset").

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
        from PIL import Image  # lazy: Pillow only where image files are read

        try:
            x, label = self.folder[index]
        except (OSError, ValueError, SyntaxError,  # PIL's errors for a broken file
                Image.DecompressionBombError) as err:
            path = self.folder.samples[index][0]
            raise DataError(f"{self.info.name} image {index} ({path}) cannot be read "
                            f"({_first_line(err)}); replace or remove the file") from err
        return x, int(label)

    def _content(self) -> Iterator[bytes | memoryview]:
        # Class and file names, not pixels: hashing 50,000 JPEGs would take minutes.
        root = Path(self.folder.root)
        paths = sorted(Path(path).relative_to(root).as_posix() for path, _ in self.folder.samples)
        yield "\n".join(self.folder.classes).encode()
        yield b"\0"
        yield "\n".join(paths).encode()


class TreeDataset(CertDataset):
    """A class-folder tree (:class:`bench.data.class_folders.Tree`) read lazily: each image
    converted to the model's channels (:func:`bench.data.class_folders.read_pixels`: 16-bit images
    at their depth), resized (shorter side) and center-cropped to its size, with row-major
    strides."""

    def __init__(self, info: DatasetInfo, split: str, tree: Tree):
        super().__init__(info, split)
        from torchvision import transforms  # lazy: torchvision takes seconds to import

        self.tree = tree
        size = info.shape[-1]
        self.transform = transforms.Compose(
            [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.tree.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image  # lazy: Pillow only where image files are read

        sample = self.tree.samples[index]
        try:
            with Image.open(sample.path) as img:
                x = self.transform(F.read_pixels(img, self.info.shape[0]))
        except Image.DecompressionBombError as err:
            raise DataError(F.too_large(self.info.name, sample.path, err)) from None
        except (OSError, ValueError, SyntaxError) as err:
            raise DataError(f"{self.info.name} image {index} ({sample.path}) cannot be read "
                            f"({_first_line(err)}); replace or remove the file") from err
        if x.shape[0] != self.info.shape[0]:  # a deep grayscale image for an RGB model
            x = x.expand(self.info.shape[0], -1, -1)
        return standard_layout(x), sample.label

    def path_of(self, index: int) -> str:
        """The image's file, relative to the tree (the certs.tsv ``path`` column)."""
        return self.tree.samples[index].relpath

    def describe(self) -> dict:
        """The run card's ``data`` block: the folder, how labels were read, the size fed."""
        c, h, _ = self.info.shape
        return {**self.tree.card(), "image_size": h, "channels": c,
                "num_classes": self.info.num_classes}

    @cached_property
    def fingerprint(self) -> str:
        return self.tree.fingerprint(self.info.shape)

    def _content(self) -> Iterator[bytes | memoryview]:  # pragma: no cover - fingerprint above
        yield self.fingerprint.encode()


# ----------------------------------------------------------------------------------------------
# Public entry points


# Each takes the dataset's spec (resolved once by the run) or, for callers with a name, the name.


def dataset_info(
    dataset: str | DatasetSpec, *, data_dir: PathLike | None = None,
    image_size: int | None = None, model: ModelFacts | None = None,
) -> DatasetInfo:
    """Shape, classes and normalization statistics (a class-folder tree is scanned: its
    classes and sizes are in the files)."""
    entry = specs.as_spec(dataset)
    if reads_tree(entry):
        return load_split(entry, data_dir=data_dir, image_size=image_size, model=model,
                          allow_resize=True).info
    shape = entry.image_shape(image_size)
    return DatasetInfo(entry.name, shape, entry.num_classes, entry.mean, entry.std)


def placeholder_info(dataset: str | DatasetSpec) -> DatasetInfo:
    """The info of a fixed dataset, or a stand-in for a class-folder tree whose shape and
    classes are known only once the model has said what it takes (names resolve meanwhile)."""
    entry = specs.as_spec(dataset)
    if reads_tree(entry) or entry.shape is None or entry.num_classes is None:
        return DatasetInfo(entry.name, (len(entry.mean), 1, 1), 1, entry.mean, entry.std)
    return entry.info


def reads_tree(dataset: str | DatasetSpec) -> bool:
    """Whether the dataset is a class-folder tree read to fit the model (imagefolder)."""
    return specs.as_spec(dataset).loader == "bench.data.loaders:load_imagefolder"


def load_split(
    dataset: str | DatasetSpec,
    split: str = "test",
    *,
    data_dir: PathLike | None = None,
    image_size: int | None = None,
    model: ModelFacts | None = None,
    allow_resize: bool = False,
) -> CertDataset:
    """Load one split of a dataset; raises :class:`DataError` with the fix when data is missing.

    The spec's loader gets ``(info, split, root)``: root is ``--data-dir`` or the default data
    dir. A class-folder tree (imagefolder) is read to fit ``model`` (its classes, channels
    and image size; :func:`load_tree`).
    """
    entry = specs.as_spec(dataset)
    if split not in entry.splits:
        raise ConfigError(
            f"dataset {entry.name!r} has no split {split!r}; valid: {', '.join(entry.splits)}"
        )
    if reads_tree(entry):
        return load_tree(entry, _folder_root(entry.name, data_dir), model=model,
                         image_size=image_size, allow_resize=allow_resize)
    info = dataset_info(entry, data_dir=data_dir, image_size=image_size)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return _loader(entry)(info, split, root)


def _loader(entry: DatasetSpec):
    module, _, function = entry.loader.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"dataset {entry.name!r}: cannot import its loader {entry.loader!r} ({err})"
        ) from err


# ----------------------------------------------------------------------------------------------
# Loaders: (info, split, root) -> CertDataset


def load_digits(info: DatasetInfo, split: str, root: Path) -> CertDataset:
    """scikit-learn's embedded digits; root is unused (nothing to download)."""
    # lazy: scikit-learn takes seconds to import
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if root != default_data_dir():
        raise ConfigError(f"digits is embedded in scikit-learn and reads nothing from --data-dir "
                          f"{root}; drop --data-dir")
    bunch = sklearn_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.images,
        bunch.target,
        test_size=specs.DIGITS_TEST_SIZE,
        random_state=0,
        stratify=bunch.target,
    )
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    raw = torch.from_numpy(images.astype(np.uint8)).unsqueeze(1)  # values 0..16
    return MemoryDataset(info, split, raw, torch.from_numpy(labels), scale=16.0)


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


def load_idx(info: DatasetInfo, split: str, root: Path) -> CertDataset:
    """mnist-style idx files, from the data dir, a system copy or a torchvision download."""
    name = info.name
    dirs = _idx_dirs(name, root)
    pair = next((p for p in (_find_idx_pair(d, split) for d in dirs) if p is not None), None)
    if pair is not None:
        images, labels = _read_idx(pair[0]), _read_idx(pair[1])
        raw, targets = torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
        if raw.ndim != 3 or targets.ndim != 1:
            raise DataError(f"{pair[0]} / {pair[1]} do not hold images (N, H, W) and labels (N,)")
    else:
        from torchvision import datasets  # lazy: torchvision takes seconds to import

        target = root / _TORCHVISION_NAMES[name]
        existed = {path for path in (root, target) if path.exists()}
        try:
            downloaded = getattr(datasets, _TORCHVISION_NAMES[name])(
                str(root), train=split == "train", download=True
            )
        except (OSError, RuntimeError) as err:
            # Leave no folders behind from the failed attempt (a mistyped --data-dir).
            for path in (target, root):
                if path not in existed:
                    shutil.rmtree(path, ignore_errors=True)
            fix = "pass --data-dir PATH to a directory holding the idx files"
            if name == "fashion-mnist":
                fix += " or install the Debian package dataset-fashion-mnist"
            raise DataError(
                f"{name} {split} idx files ({_IDX_STEMS[split][0]}[.gz], ...) not found in "
                f"{', '.join(map(str, dirs))} and the download failed ({_first_line(err)}); {fix}"
            ) from err
        raw, targets = downloaded.data, downloaded.targets
    return MemoryDataset(info, split, raw.unsqueeze(1), targets, scale=255.0)


def load_cifar10(info: DatasetInfo, split: str, root: Path) -> CertDataset:
    from torchvision import datasets  # lazy: torchvision takes seconds to import

    tree = _cifar10_tree(root, split)
    if tree is not None:
        return load_cifar10_tree(info, split, tree)
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
    return MemoryDataset(info, split, raw, labels, scale=255.0)


def _cifar10_tree(root: Path, split: str) -> Path | None:
    """A class-folder copy of CIFAR-10 (``<root>/<split>/<class>/*.png``, or the test split
    directly under ``root``), when there are no cifar-10-batches-py files to read."""
    if (root / "cifar-10-batches-py").is_dir():
        return None
    names = set(_CIFAR10.class_names or ()) | {str(i) for i in range(10)}
    for candidate in (root / split, root if split == "test" else None):
        if candidate is not None and candidate.is_dir() and any(
                e.is_dir() and e.name in names for e in os.scandir(candidate)):
            return candidate
    return None


def load_cifar10_tree(info: DatasetInfo, split: str, root: Path) -> MemoryDataset:
    """CIFAR-10 as class folders of PNG/JPEG files (class names or indices as folder names).

    Files named by their index in the split (``0.png`` ... ``9999.png``, in any class folder)
    are put in that order, so every named subset (cohen500, ...) picks the same images as the
    original batches, and lossless files give the same fingerprint, hence the same run ids.
    Otherwise the order is class, then file name, and the card's fingerprint says it differs.
    """
    from PIL import Image  # lazy: Pillow only where image files are read

    folders = F.class_folders(root, "cifar10")
    mapping, _, _, _ = F.label_map(folders, root, num_classes=10, name="cifar10",
                                   class_lists=[("cifar10 class names", _CIFAR10.class_names)])
    samples = F.scan(root, mapping, name="cifar10")
    stems = [s.path.stem for s in samples]
    if all(stem.isdigit() for stem in stems) and len({int(v) for v in stems}) == len(stems):
        samples = sorted(samples, key=lambda s: int(s.path.stem))
    wrong = next((s for s in samples if s.size != (32, 32)), None)
    if wrong is not None:
        raise DataError(f"cifar10: {root / wrong.relpath} is {wrong.size[0]}x{wrong.size[1]}, "
                        "not 32x32; use --dataset imagefolder for other images")
    deep = next((s for s in samples if s.mode in F.DEEP_MODES), None)
    if deep is not None:  # convert("RGB") would clip it to white
        raise DataError(f"cifar10: {root / deep.relpath} has {deep.mode} pixels, not 8-bit; "
                        "use --dataset imagefolder for 16-bit or float images")
    raw = np.empty((len(samples), 32, 32, 3), dtype=np.uint8)
    for i, sample in enumerate(samples):
        with Image.open(sample.path) as img:
            raw[i] = np.asarray(img.convert("RGB"))
    labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
    return MemoryDataset(info, split, torch.from_numpy(raw).permute(0, 3, 1, 2), labels,
                         scale=255.0)


def load_imagenet(info: DatasetInfo, split: str, root: Path) -> CertDataset:
    return _load_folder(info, _imagenet_root(root), resize=256, crop=224)


def load_imagefolder(info: DatasetInfo, split: str, root: Path) -> CertDataset:
    """The spec's loader (kept for callers with an info): the tree read at ``info``'s shape."""
    return load_tree(specs.spec(info.name), root, image_size=info.shape[-1],
                     model=ModelFacts(channels=info.shape[0]), allow_resize=True)


def load_tree(entry: DatasetSpec, root: Path, *, model: ModelFacts | None = None,
              image_size: int | None = None, allow_resize: bool = False) -> TreeDataset:
    """A class-folder tree read to fit ``model``: labels from folder names
    (:func:`bench.data.class_folders.label_map`), the model's class count, channels (else grayscale
    when every image is) and image size (else ``--image-size``, else the size of the dataset
    the model was trained on, else the images' own size when all share it)."""
    name = entry.name
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    model = model or ModelFacts()
    trained = specs.DATASETS.get(model.dataset or "")
    if trained is not None and (trained.shape is None or trained.name == name):
        trained = None
    folders = F.class_folders(root, name)
    lists = [(f"model {model.name}'s classes", model.classes),
             (str(root / F.CLASSES_FILE), F.read_class_list(root)),
             (f"{trained.name} class names" if trained else "",
              trained.class_names if trained else None)]
    num_classes = model.num_classes or (trained.num_classes if trained else None)
    mapping, source, names, count = F.label_map(folders, root, class_lists=lists,
                                                num_classes=num_classes, name=name)
    samples = F.scan(root, mapping, name=name)
    tree = F.Tree(root=root, samples=samples, classes_from=source, class_names=names,
                  num_classes=count, folders=tuple(folders))
    size = (image_size or model.image_size or (trained.shape[-1] if trained else None)
            or tree.uniform_size)
    if size is None:
        raise ConfigError(
            f"{name}: the images in {root} differ in size and nothing says which size the "
            "model takes; set image_size in the model entry or pass --image-size")
    F.check_resize(samples, size, allow=allow_resize, name=name)
    channels = model.channels or (trained.shape[0] if trained else None) \
        or (1 if tree.grayscale else 3)
    mean, std = entry.mean, entry.std
    if channels != len(mean):  # one channel: the channels' average statistics
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    info = DatasetInfo(name, (channels, size, size), count, tuple(mean), tuple(std))
    return TreeDataset(info, "test", tree)


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
    # lazy: torchvision takes seconds to import
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
    from torchvision import datasets, transforms  # lazy: torchvision takes seconds to import

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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
