"""One spec per dataset: shape, classes, normalization, radius grid, subsets, splits, default
arch and loader, in one torch-free place (the reporting side reads grids without importing torch).

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

Frozen subsets are indices into the *test* split, defined by a rule so that every run on a
subset certifies exactly the same images (:func:`subset_hash` identifies them in results):

==========  ===============  ==================================  ==================================
subset      datasets         rule                                used by
==========  ===============  ==================================  ==================================
full        all              every test image                    -
dev         all              images 0..49                        quick checks
cohen500    cifar10          0, 20, ..., 9980 (every 20th)       Cohen et al. 2019, SmoothAdv
macer500    cifar10          images 500..999                     MACER
first512    cifar10          images 0..511                       noised-diffusion-classifier papers
cohen500    imagenet         0, 100, ..., 49900 (every 100th)    Cohen et al. 2019, SmoothAdv
cohen500    fashion-mnist    0, 20, ..., 9980 (every 20th)       certbench's Fashion-MNIST tables
==========  ===============  ==================================  ==================================

A user module adds a dataset with :func:`register_dataset` (CONTRIBUTING.md, "Adding a dataset").
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from bench.errors import ConfigError, DataError


@dataclass(frozen=True)
class DatasetInfo:
    """What a method needs to know about a dataset without loading it."""

    name: str
    shape: tuple[int, int, int]  # (C, H, W) of the images the harness feeds
    num_classes: int
    mean: tuple[float, ...]  # per-channel statistics for an input normalization layer
    std: tuple[float, ...]

    @property
    def dim(self) -> int:
        c, h, w = self.shape
        return c * h * w


# Every dataset has these; a spec's own subsets come after them.
STANDARD_SUBSETS: Mapping[str, range | None] = MappingProxyType({"full": None, "dev": range(50)})
DEFAULT_GRID = (0.25, 2.0)  # for reporting on names no spec defines (imported results)
DEFAULT_IMAGE_SIZE = 224  # variable-size datasets without --image-size
DIGITS_TEST_SIZE = 360  # the digits loader's stratified test split


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the harness knows about one dataset. The loader is named, not imported, so
    that this table stays torch-free; it is called as ``loader(info, split, root)`` and returns
    a :class:`bench.data.loaders.CertDataset` of float [0, 1] images."""

    name: str
    shape: tuple[int, int, int] | None  # (C, H, W); None: square images of --image-size
    num_classes: int | None  # None: counted from the class folders under --data-dir
    mean: tuple[float, ...]  # per-channel statistics models normalize with
    std: tuple[float, ...]
    grid: tuple[float, float]  # (step, largest radius) of the reporting grid, [0, 1] pixels
    loader: str  # "module:function"
    description: str = ""  # one line: what the images are and where they come from
    subsets: Mapping[str, range | None] = field(default_factory=dict)  # None: every image
    splits: tuple[str, ...] = ("train", "test")
    default_arch: str | None = None  # network `train` builds when no --arch is given
    default_n: int = 100_000  # estimation samples N when neither --n nor --budget is given
    # Augmentation of the field's reference training recipes ("crop-flip" on CIFAR-10); a
    # dataset with one trains with --recipe reference by default.
    reference_augment: str = "none"
    # Class names in label order, when the dataset has them: a class-folder copy of it (and
    # an imagefolder certified with a model trained on it) reads labels from folder names.
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if ":" not in self.loader:
            raise ConfigError(f"dataset {self.name!r}: loader must be 'module:function', "
                              f"got {self.loader!r}")
        if "test" not in self.splits:
            raise ConfigError(f"dataset {self.name!r}: subsets index the test split; "
                              f"splits {self.splits} has none")
        clash = [k for k, v in STANDARD_SUBSETS.items() if self.subsets.get(k, v) != v]
        if clash:
            raise ConfigError(f"dataset {self.name!r}: subsets {', '.join(clash)} are standard "
                              "and cannot be redefined")
        # Read-only, so the frozen spec cannot change behind a stored subset hash.
        subsets = MappingProxyType({**STANDARD_SUBSETS, **self.subsets})
        object.__setattr__(self, "subsets", subsets)

    def image_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        """(C, H, W) fed to methods; ``image_size`` applies to variable-size datasets only."""
        if self.shape is None:
            size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
            if not isinstance(size, int) or size <= 0:
                raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
            return (len(self.mean), size, size)
        if image_size is not None and image_size != self.shape[-1]:
            raise ConfigError(
                f"dataset {self.name!r} has a fixed image size of {self.shape[-1]}; image_size "
                "only applies to imagefolder"
            )
        return self.shape

    @property
    def info(self) -> DatasetInfo:
        """The :class:`DatasetInfo` of a fixed-shape dataset with a known class count."""
        if self.shape is None or self.num_classes is None:
            raise ValueError(f"{self.name} needs its data for an info: use "
                             "bench.data.loaders.dataset_info")
        return DatasetInfo(self.name, self.shape, self.num_classes, self.mean, self.std)

    @property
    def radii(self) -> tuple[float, ...]:
        """L2 radii (pixel units in [0, 1]) at which certified accuracy is reported."""
        return _radii(self.grid)

    def check_subset(self, subset: str) -> None:
        """Fail with the valid names if this dataset has no such subset (no data needed)."""
        if subset not in self.subsets:
            raise ConfigError(f"dataset {self.name!r} has no subset {subset!r}; valid: "
                              f"{', '.join(self.subsets)}")

    def subset_indices(self, subset: str, length: int) -> list[int]:
        """Indices into the test split (of ``length`` images) that ``subset`` selects.

        A rule that reaches past the split is an error rather than a silent truncation: a
        truncated subset would no longer be the images its name promises.
        """
        self.check_subset(subset)
        rule = self.subsets[subset]
        if rule is None:
            return list(range(length))
        if rule[-1] >= length:
            raise DataError(
                f"subset {subset!r} of {self.name} needs test images up to index {rule[-1]}, "
                f"but the test split has only {length}; use --subset full or the complete "
                "dataset"
            )
        return list(rule)

    def __reduce__(self):
        # Plain pickle cannot copy the read-only subsets view: rebuild from a dict (what Ray and
        # multiprocessing ship to workers, so a dataset registered only here still resolves).
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["subsets"] = dict(self.subsets)
        return (_rebuild, (values,))


def _rebuild(values: dict) -> DatasetSpec:
    return DatasetSpec(**values)


_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

# The digits statistics are those of its train split in [0, 1] (tests recompute them); the
# others are the values the field's published models use.
DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "digits", (1, 8, 8), 10, (0.3054,), (0.3761,), (0.25, 2.0),
            "bench.data.loaders:load_digits", default_arch="digits_cnn",
            default_n=5_000,  # sized to certify all 360 test images in about a minute on 2 cores
            description="scikit-learn load_digits (embedded, offline), stratified 1,437 / 360",
        ),
        DatasetSpec(
            "mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), (0.25, 2.5),
            "bench.data.loaders:load_idx", default_arch="mnist_cnn",
            description="idx files in the data dir, or torchvision download",
        ),
        DatasetSpec(
            "fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), (0.25, 2.5),
            "bench.data.loaders:load_idx", default_arch="mnist_cnn",
            # CIFAR-10's rule on a 10,000-image test split: the leaderboard's frozen 500 images.
            subsets={"cohen500": range(0, 10_000, 20)},
            description="idx files in the data dir, Debian's dataset-fashion-mnist, or download",
        ),
        DatasetSpec(
            "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
            (0.25, 2.25), "bench.data.loaders:load_cifar10", default_arch="cifar_resnet110",
            reference_augment="crop-flip",
            class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                         "horse", "ship", "truck"),
            subsets={"cohen500": range(0, 10_000, 20), "macer500": range(500, 1000),
                     "first512": range(512)},
            description="torchvision CIFAR10 (cifar-10-batches-py), a class-folder tree of "
                        "PNG/JPEG files, or download",
        ),
        DatasetSpec(
            "imagenet", (3, 224, 224), 1000, **_IMAGENET, grid=(0.5, 3.0),
            loader="bench.data.loaders:load_imagenet", splits=("test",),
            subsets={"cohen500": range(0, 50_000, 100)},
            description="ILSVRC2012 val in class folders; Resize 256, center crop 224",
        ),
        DatasetSpec(
            "imagefolder", None, None, **_IMAGENET, grid=(0.5, 3.0),
            loader="bench.data.loaders:load_imagefolder", splits=("test",),
            description="any class-folder tree (--data-dir), labels from folder names, size "
                        "and channels from the model",
        ),
    )
}


def register_dataset(entry: DatasetSpec) -> DatasetSpec:
    """Add a dataset at runtime (from a user module); every command then knows it."""
    if entry.name in DATASETS:
        raise ConfigError(f"dataset {entry.name!r} is already registered")
    DATASETS[entry.name] = entry
    return entry


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


def __getattr__(name: str):
    # DATASET_NAMES is computed on access so that it includes datasets registered later.
    if name == "DATASET_NAMES":
        return dataset_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def spec(name: str) -> DatasetSpec:
    """The spec of a dataset; an unknown name fails with the closest match and the valid ones.

    An entry point (a command, ``prepare``, ``train``, ``evaluate``) calls this once and passes
    the spec down; nothing below it looks the name up again."""
    if name in DATASETS:
        return DATASETS[name]
    names = dataset_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown dataset {name!r}{hint}; valid: {', '.join(names)}")


def as_spec(dataset: str | DatasetSpec) -> DatasetSpec:
    """A spec given, or the spec of a name (the public loaders take either)."""
    return dataset if isinstance(dataset, DatasetSpec) else spec(dataset)


def subset_names(name: str) -> tuple[str, ...]:
    """The frozen subsets a dataset defines (see the module docstring for the rules)."""
    return tuple(spec(name).subsets)


def check_subset(name: str, subset: str) -> None:
    """:meth:`DatasetSpec.check_subset` by dataset name."""
    spec(name).check_subset(subset)


def resolve_subset(name: str, subset: str, length: int) -> list[int]:
    """:meth:`DatasetSpec.subset_indices` by dataset name."""
    return spec(name).subset_indices(subset, length)


def subset_hash(indices: Sequence[int]) -> str:
    """Identifies a list of test indices in result records (order matters; part of run ids)."""
    joined = ",".join(str(int(i)) for i in indices)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def radius_grid(name: str) -> tuple[float, ...]:
    """L2 radii (pixel units in [0, 1]) at which certified accuracy is reported."""
    return spec(name).radii


def grid_for(name: str) -> tuple[float, ...]:
    """:func:`radius_grid`, but the default grid for unknown names (imported results)."""
    return DATASETS[name].radii if name in DATASETS else _radii(DEFAULT_GRID)


def _radii(grid: tuple[float, float]) -> tuple[float, ...]:
    step, top = grid
    return tuple(round(i * step, 4) for i in range(round(top / step) + 1))


# ----- a run's own radius grid (--radii) ---------------------------------------------------------
MAX_RADII = 50  # points of a --radii grid
AUTO_RADII = "auto"  # --radii auto: 0 up to the run's maximum certifiable radius
AUTO_POINTS = 10  # at most this many points (0 included) on an auto grid
_NICE = (1.0, 1.25, 2.0, 2.5, 5.0)  # step mantissas of an auto grid: ..., 0.1, 0.125, 0.2, ...


def parse_radii(text: str) -> tuple[float, ...] | str:
    """``--radii``: ``auto``, or comma-separated non-negative radii (returned sorted)."""
    text = text.strip()
    if text.lower() == AUTO_RADII:
        return AUTO_RADII
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError(f"--radii: {part.strip()!r} is not a number; expected radii such "
                              "as 0,0.25,0.5 or 'auto'") from None
    return check_radii(values)


def check_radii(radii) -> tuple[float, ...] | str:
    """A grid given as radii (or ``auto``): finite, non-negative, distinct, at most
    :data:`MAX_RADII`; returned sorted ascending."""
    if isinstance(radii, str):
        if radii != AUTO_RADII:
            return parse_radii(radii)
        return radii
    values = [float(r) for r in radii]
    if not values:
        raise ConfigError("--radii needs at least one radius (or 'auto')")
    bad = [r for r in values if not math.isfinite(r) or r < 0]
    if bad:
        raise ConfigError(f"--radii must be finite and non-negative, got {bad[0]:g}")
    if len(values) > MAX_RADII:
        raise ConfigError(f"--radii takes at most {MAX_RADII} radii, got {len(values)}")
    dupes = sorted({f"{r:g}" for r in values if values.count(r) > 1})
    if dupes:
        raise ConfigError(f"--radii lists {', '.join(dupes)} more than once")
    return tuple(sorted(values))


def auto_grid(max_radius: float, points: int = AUTO_POINTS) -> tuple[float, ...]:
    """0 up to ``max_radius`` (never past it) in the smallest "nice" step (1, 1.25, 2, 2.5 or
    5 times a power of ten) that needs at most ``points`` points."""
    if not math.isfinite(max_radius) or max_radius <= 0:
        return (0.0,)
    exp = math.floor(math.log10(max_radius / (points - 1)))
    for k in range(exp - 1, exp + 3):
        for mantissa in _NICE:
            step = mantissa * 10.0 ** k
            count = math.floor(max_radius / step + 1e-9)
            if count + 1 <= points:
                grid = [round(i * step, 6) for i in range(count + 1)]
                return tuple(r for r in grid if r <= max_radius)
    return (0.0, round(max_radius, 6))  # unreachable: some step always fits
