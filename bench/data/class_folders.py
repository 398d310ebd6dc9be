"""Class-folder trees read right: labels from folder names, channels and size from the model,
identity from the bytes.

torchvision's ``ImageFolder`` numbers classes by their position among the folders present, so
a tree missing a class shifts every later label. Here a folder's label is its name: an integer
name is the label; any other name is looked up in an explicit class list (the model entry's
``classes``, a ``classes.txt`` beside the class folders, or the dataset's own class names).
A folder present or missing never moves another class.

:func:`scan` reads every file once: its bytes (hashed, so renaming a file keeps a run's
identity and editing one changes it) and its header (mode and size: whether the tree is
grayscale, how far it must be resized). Nothing here touches torch.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import ConfigError, DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CLASSES_FILE = "classes.txt"  # one class name per line, in the model's label order
MAX_RESIZE = 2.0  # resizing further than this, either way, needs --allow-resize
# Single-channel modes deeper than 8 bits: read at their depth (convert("L") clips them white),
# divided by this; "I" (32-bit integers) has no known scale and is refused, except in a PNG
# (16 bits at most: :func:`depth_scale`)
DEEP_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
              "I": None, "F": 1.0}
GRAYSCALE_MODES = {"1", "L", "LA", *DEEP_MODES}
DEEP_READ = "deep modes v1: I;16 / 65535, F as is"  # in the fingerprint of such trees


@dataclass(frozen=True)
class Sample:
    path: Path
    relpath: str  # relative to the tree's root: the certs.tsv ``path`` column
    label: int
    sha256: str
    mode: str
    size: tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Tree:
    """What :func:`scan` found: samples in (label, file name) order, and how labels were read."""

    root: Path
    samples: list[Sample]
    classes_from: str  # "folder names are class indices", "classes.txt", ...
    class_names: tuple[str, ...] | None  # the class list used, when not integer names
    num_classes: int  # the classes the labels index into (the list's length, or the model's)
    folders: tuple[str, ...] = field(default=())

    @property
    def grayscale(self) -> bool:
        """Every image is single-channel: a 1-channel model reads them as they are."""
        return bool(self.samples) and all(s.mode in GRAYSCALE_MODES for s in self.samples)

    @property
    def uniform_size(self) -> int | None:
        """The side of every image when all are the same square size, else None."""
        sizes = {s.size for s in self.samples}
        if len(sizes) == 1:
            w, h = next(iter(sizes))
            return w if w == h else None
        return None

    def fingerprint(self, shape: Sequence[int]) -> str:
        """Content, labels, order and the shape fed to the model: not file names."""
        digest = hashlib.sha256(repr(tuple(shape)).encode())
        if any(s.mode in DEEP_MODES for s in self.samples):  # once read as 8 bits (all white)
            digest.update(DEEP_READ.encode())
        for s in self.samples:
            digest.update(f"{s.label}:{s.sha256}\n".encode())
        return digest.hexdigest()[:16]

    def card(self) -> dict[str, Any]:
        """What a run card records about the tree (descriptive)."""
        out: dict[str, Any] = {"folder": str(self.root), "images": len(self.samples),
                               "classes_from": self.classes_from,
                               "class_folders": len(self.folders)}
        if self.class_names is not None:
            out["classes"] = list(self.class_names)
        return out


def class_folders(root: Path, name: str = "imagefolder") -> list[str]:
    """The class folders under ``root`` (sorted; hidden ones skipped). A class folder may be
    a symbolic link to a folder outside the tree, never to one inside it."""
    try:
        entries = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
        for entry in entries:
            _refuse_inner_link(root, entry, name)
        folders = sorted(e.name for e in entries)
    except OSError as err:
        raise DataError(f"{name}: cannot read {root} ({err.strerror or err}); pass --data-dir "
                        "PATH to a directory of class folders") from err
    if not folders:
        raise DataError(f"{name}: no class folders in {root}; pass --data-dir PATH to a "
                        "directory of class folders (one folder per class)")
    return folders


def _refuse_inner_link(root: Path, entry: os.DirEntry, name: str) -> None:
    """A linked class folder that points into the tree (``5 -> .``, ``cat -> 3``) would read
    other classes' images under its own label."""
    if not entry.is_symlink():
        return
    target, top = Path(entry.path).resolve(), Path(root).resolve()
    if target == top or top in target.parents:
        raise DataError(
            f"{name}: class folder {entry.name!r} is a symbolic link to {target}, inside the "
            "tree, so other classes' images would be read under its label; remove the link "
            "(a class folder may only link to a folder outside the tree)")


def read_class_list(root: Path) -> tuple[str, ...] | None:
    """``classes.txt`` beside the class folders, if there is one."""
    path = root / CLASSES_FILE
    if not path.is_file():
        return None
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(set(names)) != len(names):
        raise DataError(f"{path} names a class twice; list each class once, in label order")
    return names


def label_map(folders: Sequence[str], root: Path, *,
              class_lists: Sequence[tuple[str, Sequence[str] | None]] = (),
              num_classes: int | None = None, name: str = "imagefolder"
              ) -> tuple[dict[str, int], str, tuple[str, ...] | None, int]:
    """folder -> label, where the labels came from, the class list, the class count.

    The first of ``class_lists`` ((source, names) in priority order: the model entry's
    ``classes``, ``classes.txt``, the dataset's class names) that has names decides; without
    one, folder names must be integers and are the labels. ``num_classes`` (the model's, when
    known) bounds the labels and must equal a class list's length.
    """
    source, listed = next(((src, tuple(names)) for src, names in class_lists if names),
                          ("", None))
    if listed is None:
        if not all(_is_index(f) for f in folders):
            names = [f for f in folders if not _is_index(f)][:3]
            raise DataError(
                f"{name}: class folders {', '.join(map(repr, names))} are not class indices and "
                f"no class list says which label each is; name the folders 0, 1, ... or add "
                f"{root / CLASSES_FILE} (one class name per line, in the model's label order) or "
                "'classes:' to the model entry")
        mapping = {f: int(f) for f in folders}
        _check_distinct(mapping, name)
        count = num_classes if num_classes is not None else max(mapping.values()) + 1
        too_big = sorted(f for f, label in mapping.items() if label >= count)
        if too_big:
            raise DataError(
                f"{name}: class folder {too_big[0]!r} is not a class of a model with {count} "
                f"classes (labels 0..{count - 1}); remove it or check the model's num_classes")
        return mapping, "folder names are class indices", None, count
    if num_classes is not None and len(listed) != num_classes:
        raise DataError(
            f"{name}: the class list ({source}) has {len(listed)} classes but the model has "
            f"{num_classes}; list exactly the model's classes, in its label order")
    position = {c: i for i, c in enumerate(listed)}
    mapping = {}
    for folder in folders:
        if folder in position:
            mapping[folder] = position[folder]
        elif _is_index(folder) and int(folder) < len(listed):
            mapping[folder] = int(folder)
        else:
            raise DataError(
                f"{name}: class folder {folder!r} is not in the class list ({source}: "
                f"{', '.join(listed[:5])}{', ...' if len(listed) > 5 else ''}); rename the "
                "folder or fix the list")
    _check_distinct(mapping, name)
    return mapping, source, listed, len(listed)


def scan(root: Path, mapping: Mapping[str, int], *, name: str = "imagefolder") -> list[Sample]:
    """Every image file under the class folders: bytes hashed, header read, in label order."""
    # lazy: Pillow only where a class-folder tree is read
    from PIL import Image, UnidentifiedImageError

    out: list[Sample] = []
    for folder in sorted(mapping, key=lambda f: (mapping[f], f)):
        for path in sorted(p for p in (root / folder).rglob("*")
                           if p.suffix.lower() in EXTENSIONS and p.is_file()):
            data = path.read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as img:
                    mode, size, scale = img.mode, img.size, depth_scale(img)
            except Image.DecompressionBombError as err:
                raise DataError(too_large(name, path, err)) from None
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise DataError(f"{name}: {path} cannot be read as an image ({err}); replace or "
                                "remove the file") from err
            if mode in DEEP_MODES and scale is None:
                raise DataError(f"{name}: {path} has 32-bit integer pixels (mode {mode}), which "
                                "have no known scale; save it with 8 or 16 bits per channel")
            out.append(Sample(path=path, relpath=path.relative_to(root).as_posix(),
                              label=mapping[folder], sha256=hashlib.sha256(data).hexdigest(),
                              mode=mode, size=size))
    if not out:
        raise DataError(f"{name}: no images ({', '.join(EXTENSIONS[:3])}, ...) in the class "
                        f"folders of {root}")
    return out


def too_large(name: str, path: Path, err: Exception) -> str:
    """Pillow's decompression-bomb limit, as one line with the fix."""
    return (f"{name}: {path} is too large for Pillow to open safely "
            f"({str(err).split(',')[0]}); downscale it to about the model's image size")


def read_pixels(img, channels: int):
    """A PIL image in the model's channels (``L`` or ``RGB``, values in [0, 1] after
    ``ToTensor``). 16-bit single-channel images (PNG, TIFF) are read at their depth as a float
    image (``F``) divided by 65535, and float images as they are, where ``convert("L")`` would
    clip them to white; an RGB model gets that channel three times (the caller expands it).
    32-bit integer images (refused by :func:`scan`) are a ``ValueError``."""
    from PIL import Image  # lazy: Pillow only where a class-folder tree is read

    if img.mode not in DEEP_MODES:
        return img.convert("L" if channels == 1 else "RGB")
    scale = depth_scale(img)
    if scale is None:  # scan refuses these; a file changed since is refused here
        raise ValueError(f"mode {img.mode} has no known scale")
    return Image.fromarray(np.asarray(img, dtype=np.float32) / np.float32(scale))


def depth_scale(img) -> float | None:
    """What a deep single-channel image's values are divided by (None: no known scale). A PNG
    holds at most 16 bits, so one that Pillow opens as "I" (as Pillow 10.0 does) is 16-bit."""
    if img.mode == "I" and img.format == "PNG":
        return 65535.0
    return DEEP_MODES.get(img.mode)


def check_resize(samples: Sequence[Sample], size: int, *, allow: bool,
                 name: str = "imagefolder") -> None:
    """Refuse a resize by more than ``MAX_RESIZE`` either way unless explicitly allowed: 32 px
    images blown up to 224 certify nothing and take 50 times longer."""
    if allow:
        return
    for s in samples:
        short = min(s.size)
        if short > MAX_RESIZE * size or size > MAX_RESIZE * short:
            raise ConfigError(
                f"{name}: {s.relpath} is {s.size[0]}x{s.size[1]} and would be resized to "
                f"{size} px (more than {MAX_RESIZE:g}x); set the model's image_size or "
                "--image-size to the images' size, or pass --allow-resize if this is intended")


def _is_index(text: str) -> bool:
    """Plain ASCII digits: ``isdigit`` alone also accepts '²', which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _check_distinct(mapping: Mapping[str, int], name: str) -> None:
    seen: dict[int, str] = {}
    for folder, label in sorted(mapping.items()):
        if label in seen:
            raise DataError(f"{name}: class folders {seen[label]!r} and {folder!r} are both "
                            f"class {label}; merge them into one folder")
        seen[label] = folder


@dataclass(frozen=True)
class ModelFacts:
    """What the model says about its input, from its registry entry (every field optional):
    the images are read to fit the model, not the other way round."""

    num_classes: int | None = None
    image_size: int | None = None
    channels: int | None = None
    classes: tuple[str, ...] | None = None
    dataset: str | None = None  # the dataset it was trained on (its classes, size, channels)
    name: str = ""  # the model, for messages

    @classmethod
    def from_entry(cls, name: str, entry: Mapping[str, Any]) -> ModelFacts:
        def positive(key: str) -> int | None:
            value = entry.get(key)
            if value is None:
                return None
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model {name}: {key} must be a positive integer, got "
                                  f"{value!r}")
            return value

        classes = entry.get("classes")
        if classes is not None and (not isinstance(classes, list)
                                    or not all(isinstance(c, str | int) for c in classes)):
            raise ConfigError(f"model {name}: classes must be a list of class names in label "
                              "order")
        channels = positive("channels")
        if channels not in (None, 1, 3):
            raise ConfigError(f"model {name}: channels must be 1 or 3, got {channels}")
        return cls(num_classes=positive("num_classes"), image_size=positive("image_size"),
                   channels=channels,
                   classes=tuple(str(c) for c in classes) if classes else None,
                   dataset=entry.get("dataset"), name=name)
