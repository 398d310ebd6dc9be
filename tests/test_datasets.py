"""Tests for bench.data.specs and bench.data.loaders: the spec table, splits, conventions, subsets,
grids and the file loaders (offline)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.transforms.functional import to_tensor

from bench.data import loaders as D
from bench.data import specs
from bench.data.specs import DATASETS, DatasetInfo, DatasetSpec, register_dataset
from bench.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test may touch the network, the real data dir or the system fashion-mnist copy."""

    def refuse(self):
        raise RuntimeError("download disabled in tests")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", refuse)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", refuse)
    monkeypatch.setattr(D, "_SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "no-system-copy",)})
    monkeypatch.delenv("CERTBENCH_DATA", raising=False)


# ----------------------------------------------------------------------------------------------
# names, info, data dir


def test_dataset_names():
    assert D.DATASET_NAMES == (
        "digits",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "imagenet",
        "imagefolder",
    )


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        D.load_split("svhn")
    assert "unknown dataset 'svhn'" in str(err.value)
    assert "digits, mnist, fashion-mnist, cifar10, imagenet, imagefolder" in str(err.value)
    for call in (D.dataset_info, D.subset_names, D.radius_grid):
        with pytest.raises(ConfigError):
            call("svhn")


def test_unknown_dataset_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'fashion-mnist'"):
        D.dataset_info("fashion_mnist")
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        D.dataset_info("cifar")


def test_unknown_split_lists_valid_splits():
    with pytest.raises(ConfigError, match="valid: train, test"):
        D.load_split("digits", "val")
    with pytest.raises(ConfigError, match=r"no split 'train'; valid: test$"):
        D.load_split("imagenet", "train")


def test_fixed_infos():
    assert D.dataset_info("mnist") == DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,))
    fashion = D.dataset_info("fashion-mnist")
    assert (fashion.mean, fashion.std) == ((0.2860,), (0.3530,))
    cifar = D.dataset_info("cifar10")
    assert cifar.shape == (3, 32, 32) and cifar.std == (0.2023, 0.1994, 0.2010)
    imagenet = D.dataset_info("imagenet")
    assert imagenet.shape == (3, 224, 224) and imagenet.num_classes == 1000
    assert D.dataset_info("cifar10", image_size=32) == cifar
    with pytest.raises(ConfigError, match="imagefolder"):
        D.dataset_info("cifar10", image_size=64)


def test_default_data_dir(monkeypatch, tmp_path):
    assert D.default_data_dir() == Path("data")
    monkeypatch.setenv("CERTBENCH_DATA", str(tmp_path))
    assert D.default_data_dir() == tmp_path


# ----------------------------------------------------------------------------------------------
# digits


def test_digits_splits_shape_range():
    train, test = D.load_split("digits", "train"), D.load_split("digits")
    assert (len(train), len(test)) == (1437, 360)
    assert isinstance(test, D.CertDataset) and test.split == "test"
    x, label = test[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and type(label) is int
    images, labels = test.tensors()
    assert images.shape == (360, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (360,) and labels.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1 and images.max() == 1
    assert torch.equal(images[0], x) and int(labels[0]) == label
    assert test.info == D.dataset_info("digits")


def test_digits_split_is_deterministic_and_a_partition():
    a, b = D.load_split("digits").tensors(), D.load_split("digits").tensors()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert D.load_split("digits").fingerprint == D.load_split("digits").fingerprint
    assert D.load_split("digits").fingerprint != D.load_split("digits", "train").fingerprint
    assert len(D.load_split("digits").fingerprint) == 16
    # Together the splits are exactly load_digits' images, each once.
    train_x, _ = D.load_split("digits", "train").tensors()
    rows = {tuple(r) for r in torch.cat([train_x, a[0]]).mul(16).round().flatten(1).tolist()}
    bunch = load_digits()
    assert rows == {tuple(r) for r in bunch.data.tolist()}


def test_digits_split_is_stratified():
    target = load_digits().target
    _, test_y = D.load_split("digits").tensors()
    expected = np.bincount(target) * 360 / len(target)
    assert np.all(np.abs(np.bincount(test_y.numpy(), minlength=10) - expected) <= 1)


def test_digits_mean_std_constants_match_train_split():
    images, _ = D.load_split("digits", "train").tensors()
    info = D.dataset_info("digits")
    assert info.mean == (round(images.mean().item(), 4),)
    assert info.std == (round(images.std(unbiased=False).item(), 4),)


# ----------------------------------------------------------------------------------------------
# subsets, hashes, radius grids


def test_subset_names():
    assert D.subset_names("digits") == ("full", "dev")
    assert D.subset_names("cifar10") == ("full", "dev", "cohen500", "macer500", "first512")
    assert D.subset_names("imagenet") == ("full", "dev", "cohen500")
    assert D.subset_names("fashion-mnist") == ("full", "dev", "cohen500")


def test_subset_rules():
    assert D.resolve_subset("digits", "full", 360) == list(range(360))
    assert D.resolve_subset("digits", "dev", 360) == list(range(50))
    cohen = D.resolve_subset("cifar10", "cohen500", 10_000)
    assert len(cohen) == 500 and cohen[:3] == [0, 20, 40] and cohen[-1] == 9980
    assert D.resolve_subset("cifar10", "macer500", 10_000) == list(range(500, 1000))
    assert D.resolve_subset("cifar10", "first512", 10_000) == list(range(512))
    imagenet = D.resolve_subset("imagenet", "cohen500", 50_000)
    assert len(imagenet) == 500 and imagenet[1] == 100 and imagenet[-1] == 49_900


def test_unknown_subset_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid: full, dev, cohen500, macer500, first512"):
        D.resolve_subset("cifar10", "cohen1000", 10_000)
    with pytest.raises(ConfigError, match=r"valid: full, dev$"):
        D.resolve_subset("digits", "cohen500", 360)


def test_subset_beyond_split_is_an_error():
    with pytest.raises(DataError, match=r"'dev'.*only 10"):
        D.resolve_subset("imagefolder", "dev", 10)
    with pytest.raises(DataError, match=r"'cohen500'.*only 5000"):
        D.resolve_subset("cifar10", "cohen500", 5000)


def test_subset_hash():
    expected = hashlib.sha256(b"0,20,40").hexdigest()[:16]
    assert D.subset_hash([0, 20, 40]) == expected == D.subset_hash(range(0, 60, 20))
    assert D.subset_hash([20, 0, 40]) != expected


def test_radius_grids():
    assert D.radius_grid("cifar10") == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25)
    assert D.radius_grid("imagenet") == (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
    assert D.radius_grid("imagefolder") == D.radius_grid("imagenet")
    assert D.radius_grid("digits") == tuple(i / 4 for i in range(9))
    assert (
        D.radius_grid("mnist") == D.radius_grid("fashion-mnist") == tuple(i / 4 for i in range(11))
    )


def test_subset_hashes_of_stored_runs_are_unchanged():
    # Part of every stored run id: these values must never change.
    assert D.subset_hash(D.resolve_subset("cifar10", "cohen500", 10_000)) == "7a4fbdbe840eae6b"
    assert D.subset_hash(D.resolve_subset("digits", "dev", 360)) == "b47c4f3c11a491ec"
    assert D.subset_hash(D.resolve_subset("imagenet", "cohen500", 50_000)) == "66f63a17b8f3098c"


def test_grid_for_is_lenient():
    assert specs.grid_for("cifar10") == D.radius_grid("cifar10")
    assert specs.grid_for("svhn") == tuple(i / 4 for i in range(9))  # default grid


# ----------------------------------------------------------------------------------------------
# the spec table: one source for every dataset fact


def test_builtin_specs():
    facts = {
        name: (s.shape, s.num_classes, s.grid, s.splits, s.default_arch, s.loader)
        for name, s in DATASETS.items()
    }
    both, test = ("train", "test"), ("test",)
    assert facts == {
        "digits": ((1, 8, 8), 10, (0.25, 2.0), both, "digits_cnn",
                   "bench.data.loaders:load_digits"),
        "mnist": ((1, 28, 28), 10, (0.25, 2.5), both, "mnist_cnn", "bench.data.loaders:load_idx"),
        "fashion-mnist": ((1, 28, 28), 10, (0.25, 2.5), both, "mnist_cnn",
                          "bench.data.loaders:load_idx"),
        "cifar10": ((3, 32, 32), 10, (0.25, 2.25), both, "cifar_resnet110",
                    "bench.data.loaders:load_cifar10"),
        "imagenet": ((3, 224, 224), 1000, (0.5, 3.0), test, None,
                     "bench.data.loaders:load_imagenet"),
        "imagefolder": (None, None, (0.5, 3.0), test, None, "bench.data.loaders:load_imagefolder"),
    }
    assert all(s.description for s in DATASETS.values())
    assert DATASETS["imagenet"].mean == DATASETS["imagefolder"].mean == (0.485, 0.456, 0.406)
    for name, s in DATASETS.items():
        if s.shape is not None:
            assert s.info == D.dataset_info(name) == DatasetInfo(
                name, s.shape, s.num_classes, s.mean, s.std)


def test_dataspecs_imports_without_torch_or_numpy():
    code = ("import sys, bench.data.specs; "
            "assert not {'torch', 'numpy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def spec_table():
    """Datasets registered by a test are forgotten after it."""
    saved = dict(DATASETS)
    yield DATASETS
    DATASETS.clear()
    DATASETS.update(saved)


def _toy(name="digits-copy", **changes) -> DatasetSpec:
    fields = {"shape": (1, 8, 8), "num_classes": 10, "mean": (0.5,), "std": (0.25,),
              "grid": (0.5, 1.0), "loader": "bench.data.loaders:load_digits",
              "subsets": {"first7": range(7)}, "splits": ("test",),
              "description": "the digits test split under another spec"}
    return DatasetSpec(name, **{**fields, **changes})


def test_everything_reads_the_spec(spec_table, cli):
    """A registered spec is all it takes: names, list, grids, subsets, info and loading."""
    register_dataset(_toy())
    assert D.DATASET_NAMES[-1] == specs.DATASET_NAMES[-1] == "digits-copy"
    assert D.radius_grid("digits-copy") == specs.grid_for("digits-copy") == (0.0, 0.5, 1.0)
    assert D.subset_names("digits-copy") == ("full", "dev", "first7")
    assert D.resolve_subset("digits-copy", "first7", 360) == list(range(7))
    ds = D.load_split("digits-copy")  # through the spec's loader, with the spec's info
    assert len(ds) == 360 and ds.info == DatasetInfo("digits-copy", (1, 8, 8), 10, (0.5,), (0.25,))
    with pytest.raises(ConfigError, match=r"no split 'train'; valid: test$"):
        D.load_split("digits-copy", "train")
    code, out, _ = cli("list")
    assert code == 0
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()
            if line.split() and line.split()[0] in DATASETS}
    for name, s in DATASETS.items():
        grid = s.radii
        assert rows[name] == (f"{', '.join(s.subsets)} {grid[0]:g}..{grid[-1]:g} "
                              f"step {s.grid[0]:g}")


def test_a_spec_travels_by_pickle_and_is_what_the_loaders_read(spec_table):
    """The run passes the spec object (a Ray worker gets the driver's by pickle): a spec that
    no name resolves to loads, certifies subsets and tells its grid as the registered one."""
    toy = _toy("digits-unregistered")
    copy = pickle.loads(pickle.dumps(toy))
    assert copy == toy and copy.subsets == toy.subsets and "digits-unregistered" not in DATASETS
    with pytest.raises(TypeError):
        copy.subsets["full"] = range(3)  # still read-only after the trip
    ds = D.load_split(copy)  # the object, not a name: nothing to look up
    assert len(ds) == 360 and ds.info.name == "digits-unregistered"
    assert copy.subset_indices("first7", len(ds)) == list(range(7))
    assert D.reads_tree(copy) is False and D.dataset_info(copy) == ds.info
    with pytest.raises(ConfigError, match=r"no subset 'cohen500'; valid: full, dev, first7$"):
        copy.check_subset("cohen500")


def test_register_rejects_duplicates_and_bad_specs(spec_table):
    with pytest.raises(ConfigError, match="'digits' is already registered"):
        register_dataset(_toy("digits"))
    with pytest.raises(ConfigError, match="cannot be redefined"):
        _toy(subsets={"dev": range(10)})
    with pytest.raises(ConfigError, match="module:function"):
        _toy(loader="load_digits")
    with pytest.raises(ConfigError, match="test split"):
        _toy(splits=("train",))
    assert _toy(subsets={"dev": range(50)}).subsets == {"full": None, "dev": range(50)}
    register_dataset(_toy("broken", loader="bench.data.loaders:no_such_loader"))
    with pytest.raises(ConfigError, match="'broken': cannot import its loader"):
        D.load_split("broken")


# ----------------------------------------------------------------------------------------------
# mnist / fashion-mnist idx files


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _write_idx_split(directory: Path, split: str, gz: bool, n: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    directory.mkdir(parents=True, exist_ok=True)
    _write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gz)
    _write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("mnist", "MNIST/raw"),
        ("fashion-mnist", "FashionMNIST/raw"),
        ("mnist", "mnist"),
        ("fashion-mnist", "fashion-mnist"),
        ("mnist", "."),
    ],
)
def test_idx_layouts(tmp_path, name, layout, gz):
    images, labels = _write_idx_split(tmp_path / layout, "test", gz)
    ds = D.load_split(name, data_dir=tmp_path)
    assert ds.info == D.dataset_info(name) and len(ds) == 5
    x, y = ds.tensors()
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images).unsqueeze(1).float() / 255)
    assert y.tolist() == labels.tolist()
    assert type(ds[2][1]) is int


def test_idx_train_split_and_fingerprint(tmp_path):
    _write_idx_split(tmp_path, "train", gz=True, n=7, seed=1)
    _write_idx_split(tmp_path, "test", gz=False, n=3, seed=2)
    train, test = (
        D.load_split("mnist", "train", data_dir=tmp_path),
        D.load_split("mnist", data_dir=tmp_path),
    )
    assert (len(train), len(test)) == (7, 3)
    assert train.fingerprint != test.fingerprint
    assert test.fingerprint == D.load_split("mnist", data_dir=tmp_path).fingerprint


def test_fashion_mnist_found_in_system_dir(monkeypatch, tmp_path):
    system = tmp_path / "usr/share/datasets/fashion-mnist"
    _, labels = _write_idx_split(system, "test", gz=True)
    monkeypatch.setattr(D, "_SYSTEM_DIRS", {"fashion-mnist": (system,)})
    ds = D.load_split("fashion-mnist", data_dir=tmp_path / "empty")
    assert ds.tensors()[1].tolist() == labels.tolist()


def test_corrupt_idx_file(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05")
    with pytest.raises(DataError, match="not an unsigned-byte idx file"):
        D.load_split("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_idx_names_directories_and_fix(tmp_path, name):
    with pytest.raises(DataError) as err:
        D.load_split(name, data_dir=tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message and name in message
    assert str(tmp_path / "nowhere") in message and "--data-dir" in message
    assert ("dataset-fashion-mnist" in message) == (name == "fashion-mnist")


def test_missing_cifar10_names_directory(tmp_path):
    with pytest.raises(DataError) as err:
        D.load_split("cifar10", data_dir=tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert "--data-dir" in message


def test_missing_imagenet_names_directory(tmp_path):
    with pytest.raises(DataError) as err:
        D.load_split("imagenet", data_dir=tmp_path)
    assert str(tmp_path / "val") in str(err.value) and "--data-dir" in str(err.value)
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    with pytest.raises(DataError, match="1000 class folders"):
        D.load_split("imagenet", data_dir=tmp_path)


# ----------------------------------------------------------------------------------------------
# imagefolder


def _make_tree(root: Path) -> None:
    """Three classes with images of assorted sizes and modes."""
    specs = {
        "cat": [((32, 32), "RGB"), ((64, 32), "RGB")],
        "dog": [((32, 32), "L")],
        "emu": [((20, 40), "RGBA"), ((32, 32), "RGB")],
    }
    rng = np.random.default_rng(0)
    for cls, images in specs.items():
        (root / cls).mkdir(parents=True)
        for k, ((w, h), mode) in enumerate(images):
            channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
            pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
            image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
            assert image.mode == mode
            image.save(root / cls / f"img{k}.png")


def test_imagefolder(tmp_path):
    _make_tree(tmp_path / "tree")
    (tmp_path / "tree" / "classes.txt").write_text("cat\ndog\nemu\n")
    info = D.dataset_info("imagefolder", data_dir=tmp_path / "tree", image_size=48)
    assert info.shape == (3, 48, 48) and info.num_classes == 3
    ds = D.load_split("imagefolder", data_dir=tmp_path / "tree", image_size=32)
    assert ds.info.shape == (3, 32, 32) and ds.info.num_classes == 3 and len(ds) == 5
    images, labels = ds.tensors()
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert labels.tolist() == [0, 0, 1, 2, 2]  # classes.txt's order
    # An image already at the target size passes through unchanged.
    with Image.open(tmp_path / "tree/cat/img0.png") as img:
        assert torch.equal(images[0], to_tensor(img))
    small = D.load_split("imagefolder", data_dir=tmp_path / "tree", image_size=16)
    assert small[1][0].shape == (3, 16, 16) and small[3][0].shape == (3, 16, 16)


def test_imagefolder_fingerprint(tmp_path):
    _make_tree(tmp_path / "a")
    _make_tree(tmp_path / "b")
    for tree in ("a", "b"):
        (tmp_path / tree / "classes.txt").write_text("cat\ndog\nemu\n")
    def fingerprint(tree, size=32):
        return D.load_split("imagefolder", data_dir=tmp_path / tree, image_size=size).fingerprint

    first = fingerprint("a")
    assert first == fingerprint("a") == fingerprint("b")
    # Bytes, not names: a renamed file keeps the identity, the image size does not.
    (tmp_path / "b" / "dog" / "img0.png").rename(tmp_path / "b" / "dog" / "renamed.png")
    assert fingerprint("b") == first
    assert fingerprint("b", size=24) != first
    Image.new("RGB", (32, 32)).save(tmp_path / "b" / "dog" / "renamed.png")  # new content
    assert fingerprint("b") != first


def test_imagefolder_needs_a_directory(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        D.dataset_info("imagefolder")
    with pytest.raises(DataError) as err:
        D.load_split("imagefolder", data_dir=tmp_path / "missing")
    assert str(tmp_path / "missing") in str(err.value)
    with pytest.raises(ConfigError, match="valid: test"):
        D.load_split("imagefolder", "train", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="positive"):
        D.dataset_info("imagefolder", data_dir=tmp_path, image_size=0)
