"""Certifying a Cohen-format checkpoint through the CLI on a folder of images."""

from __future__ import annotations

import csv

import numpy as np
import torch
from PIL import Image

from bench import Smooth
from bench.nets import NormalizeLayer, build_arch, sha256_file

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def make_tree(root, classes=10, per_class=2, size=32):
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / str(c)  # folder names are the labels
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


def test_cohen_checkpoint_on_imagefolder_matches_direct_smoothing(cli, tmp_path):
    make_tree(tmp_path / "images")
    torch.manual_seed(0)
    net = build_arch("cifar_resnet20", num_classes=10, in_channels=3, image_size=32)
    wrapped = torch.nn.Sequential(NormalizeLayer(CIFAR_MEAN, CIFAR_STD), net).eval()
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "cifar_resnet20", "state_dict": wrapped.state_dict()}, ckpt)
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        f"models:\n  my-cohen:\n    arch: cifar_resnet20\n    source: cohen\n"
        f"    path: {ckpt}\n    sha256: {sha256_file(ckpt)}\n    dataset: cifar10\n"
        "methods:\n  g3:\n    adapter: methods.gaussian:Gaussian\n"
        "    datasets:\n      imagefolder:\n        classifier: my-cohen\n")
    code, out, err = cli("run", "--method", "g3", "--dataset", "imagefolder", "--data-dir",
                         tmp_path / "images", "--image-size", 32, "--n", 300, "--n0", 20,
                         "--subset", "full", "--extra-registry", extra,
                         "--results", tmp_path / "res", "--quiet")
    assert code == 0, err
    run_dir = next((tmp_path / "res" / "runs").iterdir())
    with open(run_dir / "certs.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 20
    # The CLI loaded the checkpoint with CIFAR-10's normalization first, exactly like this:
    from bench.data.loaders import load_split

    ds = load_split("imagefolder", data_dir=tmp_path / "images", image_size=32)
    smooth = Smooth(wrapped, 10, 0.25)
    for row in rows[:4]:
        x, _ = ds[int(row["idx"])]
        cert = smooth.certify_record(x, 20, 300, 0.001, 1000, seed=0, index=int(row["idx"]))
        assert int(row["count"]) == cert.count and float(row["radius"]) == cert.radius


def test_corrupt_store_is_a_one_line_error(cli, tmp_path):
    (tmp_path / "certbench.sqlite").write_bytes(b"this is not a database" * 100)
    code, _, err = cli("run", "--n", 100, "--max-images", 1, "--results", tmp_path, "--quiet")
    assert code == 2 and "results store" in err and "damaged" in err and len(err.splitlines()) == 1
