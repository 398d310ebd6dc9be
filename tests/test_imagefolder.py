"""Class-folder trees certified right, through the CLI: labels from folder names (never
positions), channels, size and classes from the model, bytes and size in the run identity, a
``path`` column, one-line errors before any compute; and CIFAR-10 as a folder of PNGs."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.certify.smoothing import Smooth
from bench.data import loaders as D
from bench.data.specs import spec
from bench.nets.normalize import NormalizeLayer

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MISSING = (3, 7)  # classes with no images: every later label must stay where it is


def digits_tree(root: Path, per_class: int = 3, *, empty_folders: bool = True) -> list[tuple]:
    """The first test digits of each class as grayscale PNGs in folders named by label;
    classes 3 and 7 have no images (empty folders, or none). Returns (relpath, label, idx)."""
    test = D.load_split("digits", "test")
    images, labels = test.tensors()
    out = []
    for c in range(10):
        folder = root / str(c)
        if c in MISSING:
            if empty_folders:
                folder.mkdir(parents=True)
            continue
        folder.mkdir(parents=True)
        for idx in (labels == c).nonzero().flatten()[:per_class].tolist():
            pixels = (images[idx, 0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"digit{idx:03d}.png")
            out.append((f"{c}/digit{idx:03d}.png", c, idx))
    return sorted(out)


def read_certs(results: Path) -> list[dict]:
    path = next(results.rglob("certs.tsv"))
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def card_of(results: Path) -> dict:
    return json.loads(next(results.rglob("summary.json")).read_text())


def run_tree(cli, tree: Path, results: Path, *extra):
    return cli("run", "--method", "gaussian", "--dataset", "imagefolder", "--data-dir", tree,
               "--model", "digits-cnn-gaussian-0.25", "--n", 200, "--n0", 20, "--quiet",
               "--results", results, *extra)


def test_two_empty_classes_shift_no_label(cli, tmp_path):
    files = digits_tree(tmp_path / "tree", empty_folders=False)
    code, _, err = run_tree(cli, tmp_path / "tree", tmp_path / "res")
    assert code == 0, err
    rows = read_certs(tmp_path / "res")
    # Labels are the folder names (8 stays 8 although 3 and 7 are empty), each file once,
    # in the path column, with the model's 10 classes.
    assert [(r["path"], int(r["label"])) for r in rows] == [(p, c) for p, c, _ in files]
    card = card_of(tmp_path / "res")
    assert card["data"]["classes_from"] == "folder names are class indices"
    assert card["data"]["folder"] == str(tmp_path / "tree")
    assert (card["data"]["channels"], card["data"]["image_size"]) == (1, 8)
    assert card["data"]["num_classes"] == 10
    # The digits model sees its own test images: it is right about as often as on digits.
    correct = sum(int(r["predict"]) == int(r["label"]) for r in rows)
    assert correct >= len(rows) - 3


def test_no_folder_for_the_empty_classes_gives_the_same_certificates(cli, tmp_path):
    digits_tree(tmp_path / "with", empty_folders=True)
    digits_tree(tmp_path / "without", empty_folders=False)
    assert run_tree(cli, tmp_path / "with", tmp_path / "r1")[0] == 0
    assert run_tree(cli, tmp_path / "without", tmp_path / "r2")[0] == 0
    strip = [{k: v for k, v in r.items() if k != "time"} for r in read_certs(tmp_path / "r1")]
    assert strip == [{k: v for k, v in r.items() if k != "time"}
                     for r in read_certs(tmp_path / "r2")]


def test_named_folders_need_a_class_list(cli, tmp_path):
    digits_tree(tmp_path / "tree", empty_folders=False)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for c, name in enumerate(names):
        if (tmp_path / "tree" / str(c)).exists():
            (tmp_path / "tree" / str(c)).rename(tmp_path / "tree" / name)
    code, _, err = run_tree(cli, tmp_path / "tree", tmp_path / "res")
    assert code == 2 and "classes.txt" in err and len(err.splitlines()) == 1
    (tmp_path / "tree" / "classes.txt").write_text("\n".join(names[:9]) + "\n")
    code, _, err = run_tree(cli, tmp_path / "tree", tmp_path / "res")
    assert code == 2 and "9 classes but the model has 10" in err, err
    (tmp_path / "tree" / "classes.txt").write_text("\n".join(names) + "\n")
    code, _, err = run_tree(cli, tmp_path / "tree", tmp_path / "res")
    assert code == 0, err
    labels = {r["path"].split("/")[0]: int(r["label"]) for r in read_certs(tmp_path / "res")}
    assert labels == {name: c for c, name in enumerate(names) if c not in MISSING}


@pytest.mark.parametrize("folder, message", [("12", "not a class of a model with 10 classes"),
                                             ("cats", "not class indices")])
def test_a_folder_the_model_does_not_have_is_one_line(cli, tmp_path, folder, message):
    digits_tree(tmp_path / "tree", per_class=1)
    (tmp_path / "tree" / folder).mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "tree" / folder / "x.png")
    code, _, err = run_tree(cli, tmp_path / "tree", tmp_path / "res")
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").rglob("certs.tsv"))


def test_resizing_more_than_twice_is_refused_unless_asked(cli, tmp_path):
    digits_tree(tmp_path / "tree", per_class=1)
    code, _, err = run_tree(cli, tmp_path / "tree", tmp_path / "res", "--image-size", 32)
    assert code == 2 and "--allow-resize" in err and len(err.splitlines()) == 1
    # Allowed, the images reach a digits model at 32 px: it cannot take them (one line).
    code, _, err = run_tree(cli, tmp_path / "tree", tmp_path / "res", "--image-size", 32,
                            "--allow-resize")
    assert code == 2 and "does not accept the images" in err and len(err.splitlines()) == 1


def test_image_size_and_content_are_the_run_identity(cli, tmp_path):
    first_file = tmp_path / "tree" / digits_tree(tmp_path / "tree", per_class=1)[0][0]
    renamed = first_file.with_name("renamed.png")

    def run_ids(*extra) -> set[str]:
        code, _, err = run_tree(cli, tmp_path / "tree", tmp_path / "res", "--max-images", 2,
                                *extra)
        assert code == 0, err
        runs = tmp_path / "res" / "runs"  # the results root also holds flops-cache.json
        return {p.parent.name.rsplit("-", 1)[-1] for p in runs.rglob("*.json")}

    first = run_ids()
    assert len(first) == 1
    # Renaming a file keeps the run (it resumes); another image size or other bytes do not.
    first_file.rename(renamed)
    assert run_ids() == first
    Image.new("L", (8, 8), color=9).save(renamed)
    assert len(run_ids()) == 2
    # The image size fed to the model is in the fingerprint, hence in the run id.
    sizes = {D.load_split("imagefolder", data_dir=tmp_path / "tree", image_size=size).fingerprint
             for size in (6, 8)}
    assert len(sizes) == 2


def test_grayscale_images_are_read_as_the_model_wants(tmp_path):
    """One channel for a 1-channel model (the tree is grayscale), three (replicated) for a
    model trained on RGB data."""
    digits_tree(tmp_path / "tree", per_class=1)
    gray = D.load_split("imagefolder", data_dir=tmp_path / "tree")
    assert gray.info.shape == (1, 8, 8)
    rgb = D.load_split("imagefolder", data_dir=tmp_path / "tree", image_size=8,
                       model=D.ModelFacts(channels=3, num_classes=10))
    assert rgb.info.shape == (3, 8, 8)
    assert torch.equal(rgb[0][0], gray[0][0].expand(3, 8, 8))


def _rgb_tree(root: Path, count: int = 6, size: int = 32) -> None:
    rng = np.random.default_rng(1)
    for i in range(count):
        folder = root / str(i % 2)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")


LINEAR = """from torch import nn


def linear(*, num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))
"""


def test_a_model_trained_with_imagenet_statistics_gets_them(cli, tmp_path):
    """A plain state dict (DataParallel's ``module.`` prefix) of the user's own architecture
    whose entry says ImageNet mean/std, image size and class count: certificates equal
    smoothing the net behind exactly that normalization."""
    from safetensors.torch import save_file

    _rgb_tree(tmp_path / "tree")
    (tmp_path / "my_nets.py").write_text(LINEAR)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2)).eval()
    weights = tmp_path / "net.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    registry = tmp_path / "mine.yaml"
    registry.write_text(
        "models:\n  my-net:\n    arch: my_nets:linear\n    source: state_dict\n"
        f"    path: {weights}\n    sha256: {sha}\n    num_classes: 2\n    image_size: 32\n"
        f"    mean: {list(IMAGENET_MEAN)}\n    std: {list(IMAGENET_STD)}\n")
    code, _, err = cli("run", "--method", "gaussian", "--dataset", "imagefolder", "--data-dir",
                       tmp_path / "tree", "--model", "my-net", "--extra-registry", registry,
                       "--n", 300, "--n0", 20, "--quiet", "--results", tmp_path / "res")
    assert code == 0, err
    rows = read_certs(tmp_path / "res")
    ds = D.load_split("imagefolder", data_dir=tmp_path / "tree", image_size=32)
    right = Smooth(torch.nn.Sequential(NormalizeLayer(IMAGENET_MEAN, IMAGENET_STD), net), 2, 0.25)
    wrong = Smooth(torch.nn.Sequential(NormalizeLayer(spec("imagefolder").mean, (0.5,) * 3),
                                       net), 2, 0.25)
    differs = 0
    for row in rows:
        x, label = ds[int(row["idx"])]
        assert int(row["label"]) == label
        cert = right.certify_record(x, 20, 300, 0.001, 1000, seed=0, index=int(row["idx"]))
        assert (int(row["count"]), float(row["radius"])) == (cert.count, cert.radius)
        other = wrong.certify_record(x, 20, 300, 0.001, 1000, seed=0, index=int(row["idx"]))
        differs += other.counts_estimate != cert.counts_estimate
    assert differs > 0  # the statistics matter to this net: the test can tell them apart


def test_a_cifar10_model_on_a_tree_reports_on_the_cifar10_grid(cli, tmp_path):
    """Without --radii the grid follows the model's dataset (32 px CIFAR-10), not ImageNet's
    0.5-3.0 that a class-folder tree would otherwise get; the card says where it came from."""
    from safetensors.torch import save_file

    _rgb_tree(tmp_path / "tree", count=2)
    (tmp_path / "my_nets.py").write_text(LINEAR)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    weights = tmp_path / "net.safetensors"
    save_file(net.state_dict(), str(weights))
    registry = tmp_path / "mine.yaml"
    registry.write_text("models:\n  my-cifar-net:\n    arch: my_nets:linear\n"
                        f"    source: state_dict\n    path: {weights}\n    dataset: cifar10\n")
    code, out, err = cli("run", "--method", "gaussian", "--dataset", "imagefolder", "--data-dir",
                         tmp_path / "tree", "--model", "my-cifar-net", "--extra-registry",
                         registry, "--n", 100, "--n0", 10, "--quiet", "--results",
                         tmp_path / "res")
    assert code == 0, err
    card = card_of(tmp_path / "res")
    assert card["radius_grid"] == list(spec("cifar10").radii)
    assert card["radius_grid_source"] == "cifar10 (the model's dataset)"
    assert "2.25" in out and "3" not in out.splitlines()[1].split()


def test_a_model_with_another_class_count_is_refused_before_compute(cli, tmp_path):
    """A timm-style count mismatch: the tree's labels index 10 classes, the net outputs 2."""
    from safetensors.torch import save_file

    from bench.nets.archs import build_arch

    _rgb_tree(tmp_path / "tree")
    torch.manual_seed(0)
    net = build_arch("cifar_resnet20", num_classes=2, in_channels=3, image_size=32)
    weights = tmp_path / "net.safetensors"
    save_file(net.state_dict(), str(weights))
    registry = tmp_path / "mine.yaml"
    registry.write_text(
        "models:\n  my-net:\n    arch: cifar_resnet20\n    source: state_dict\n"
        f"    path: {weights}\n    num_classes: 10\n")
    code, _, err = cli("run", "--method", "gaussian", "--dataset", "imagefolder", "--data-dir",
                       tmp_path / "tree", "--model", "my-net", "--extra-registry", registry,
                       "--n", 100, "--quiet", "--results", tmp_path / "res")
    assert code == 2 and len(err.splitlines()) == 1 and "num_classes" in err, err


VIEW_NET = """import torch
from torch import nn


class ViewNet(nn.Module):
    def __init__(self, in_channels, image_size, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * image_size ** 2, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))  # Cohen-era flattening: needs a contiguous x


def view_net(*, num_classes, in_channels, image_size):
    torch.manual_seed(0)
    return ViewNet(in_channels, image_size, num_classes)
"""


@pytest.mark.parametrize("channels", [1, 3])
def test_a_model_that_flattens_with_view_certifies_grayscale_and_rgb_trees(cli, tmp_path,
                                                                           channels):
    """A one-channel image from ToTensor has strides (1, W, 1): a batch built from it looked
    channels-last to the convolution, and ``view`` died (a traceback from the feasibility
    estimate). Every batch is plain NCHW now, whatever the tree."""
    from safetensors.torch import save_file

    size = 8 if channels == 1 else 32
    if channels == 1:
        digits_tree(tmp_path / "tree", per_class=1)
    else:
        _rgb_tree(tmp_path / "tree", count=4)
    (tmp_path / "view_nets.py").write_text(VIEW_NET)
    namespace: dict = {}
    exec(VIEW_NET, namespace)
    net = namespace["view_net"](num_classes=10, in_channels=channels, image_size=size)
    save_file(net.state_dict(), str(tmp_path / "view.safetensors"))
    registry = tmp_path / "mine.yaml"
    registry.write_text("models:\n  my-view-net:\n    arch: view_nets:view_net\n"
                        f"    source: state_dict\n    path: {tmp_path / 'view.safetensors'}\n"
                        "    num_classes: 10\n")
    code, _, err = cli("run", "--method", "gaussian", "--dataset", "imagefolder", "--data-dir",
                       tmp_path / "tree", "--model", "my-view-net", "--extra-registry", registry,
                       "--n", 100, "--n0", 10, "--max-images", 2, "--quiet", "--results",
                       tmp_path / "res")
    assert code == 0, err
    assert card_of(tmp_path / "res")["data"]["channels"] == channels
    assert len(read_certs(tmp_path / "res")) == 2


def test_16_bit_images_certify_as_their_8_bit_originals(cli, tmp_path):
    """A 16-bit PNG (mode I;16) is read at its depth, v / 65535: the digits saved as 16-bit
    (v * 257) give the 8-bit tree's images and certificates. ``convert("L")`` made them white."""
    files = digits_tree(tmp_path / "eight", per_class=1)
    for relpath, _, _ in files:
        with Image.open(tmp_path / "eight" / relpath) as img:
            deep = (np.asarray(img).astype(np.uint16) * 257)
        (tmp_path / "sixteen" / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(deep).save(tmp_path / "sixteen" / relpath)
        with Image.open(tmp_path / "sixteen" / relpath) as img:
            assert img.mode == "I;16"
    eight = D.load_split("imagefolder", data_dir=tmp_path / "eight")
    sixteen = D.load_split("imagefolder", data_dir=tmp_path / "sixteen")
    assert sixteen.info.shape == (1, 8, 8)
    assert torch.equal(sixteen[0][0], eight[0][0])
    rgb = D.load_split("imagefolder", data_dir=tmp_path / "sixteen",
                       model=D.ModelFacts(channels=3, num_classes=10))
    assert torch.equal(rgb[0][0], eight[0][0].expand(3, 8, 8))
    assert sixteen.fingerprint != eight.fingerprint  # other bytes: another run
    assert run_tree(cli, tmp_path / "eight", tmp_path / "r8", "--max-images", 3)[0] == 0
    code, _, err = run_tree(cli, tmp_path / "sixteen", tmp_path / "r16", "--max-images", 3)
    assert code == 0, err
    keep = ("path", "label", "predict", "radius", "count")
    assert [{k: r[k] for k in keep} for r in read_certs(tmp_path / "r16")] == \
        [{k: r[k] for k in keep} for r in read_certs(tmp_path / "r8")]


def test_a_class_folder_may_link_outside_the_tree(tmp_path):
    """Trees assembled from links to class folders kept elsewhere are read (only a link into
    the tree itself is refused: the bad-input battery)."""
    digits_tree(tmp_path / "store", per_class=1, empty_folders=False)
    (tmp_path / "tree").mkdir()
    for c in (0, 5):
        (tmp_path / "tree" / str(c)).symlink_to(tmp_path / "store" / str(c))
    ds = D.load_split("imagefolder", data_dir=tmp_path / "tree")
    assert [(ds.path_of(i), ds[i][1]) for i in range(len(ds))] == \
        [(p.relative_to(tmp_path / "store").as_posix(), int(p.parent.name))
         for p in sorted((tmp_path / "store").glob("[05]/*.png"))]


# ----- CIFAR-10 as a class-folder tree of PNG files --------------------------------------------


def test_cifar10_reads_a_folder_of_pngs_in_index_order(tmp_path):
    """Files named by their test index, in class-name folders: the same images, labels and
    order as the batches, so the same fingerprint (the same run ids) and the same subsets."""
    rng = np.random.default_rng(0)
    count = 60
    raw = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, count)
    names = spec("cifar10").class_names
    for i in range(count):
        folder = tmp_path / "cifar" / "test" / names[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw[i]).save(folder / f"{i}.png")
    ds = D.load_split("cifar10", "test", data_dir=tmp_path / "cifar")
    images, got = ds.tensors()
    assert got.tolist() == labels.tolist()
    assert torch.equal(images, torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255)
    batches = D.MemoryDataset(spec("cifar10").info, "test",
                              torch.from_numpy(raw).permute(0, 3, 1, 2), torch.tensor(labels),
                              scale=255.0)
    assert ds.fingerprint == batches.fingerprint
    assert D.resolve_subset("cifar10", "dev", len(ds)) == list(range(50))
