"""Fashion-MNIST end to end, fast: train each kind of model on a small slice, certify a few images.

Needs the idx files of Debian's ``dataset-fashion-mnist`` (``.ci/run`` installs the package); it
skips elsewhere and says how to get them. The committed zoo and its runs are checked by the slow
tests that rebuild them from their cards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST idx files not installed: apt-get install dataset-fashion-mnist "
           "(.ci/run does)")

SLICE = ("--dataset", "fashion-mnist", "--epochs", 1, "--train-images", 256, "--test-images", 32,
         "--quiet")


def _train(cli, out: Path, method: str, name: str, *extra) -> dict:
    code, stdout, err = cli("train", "--method", method, *SLICE, "--out", out, "--name", name,
                            *extra)
    assert code == 0, err
    return yaml.safe_load(stdout.split("registry entry:\n", 1)[1])["models"]


def test_each_kind_of_model_trains_and_certifies_on_fashion_mnist(cli, tmp_path):
    models = {}
    models.update(_train(cli, tmp_path, "gaussian", "fm-gauss", "--sigma", 0.25))
    models.update(_train(cli, tmp_path, "ddpm", "fm-ddpm"))
    models.update(_train(cli, tmp_path, "ndc", "fm-ddpm-cond"))
    card = json.loads((tmp_path / "fm-gauss.json").read_text())
    assert card["train_images"] == 256 and card["test_images"] == 32
    assert card["dataset"] == "fashion-mnist" and card["arch"] == "mnist_cnn"
    methods = {
        "fm-gaussian": {"adapter": "methods.gaussian:Gaussian",
                        "datasets": {"fashion-mnist": {"classifier": "fm-gauss"}}},
        "fm-dds": {"adapter": "methods.dds:DDS",
                   "datasets": {"fashion-mnist": {"denoiser": "fm-ddpm",
                                                  "classifier": "fm-gauss"}}},
        "fm-ndc": {"adapter": "methods.ndc:NDC", "params": {"grid": 2},
                   "datasets": {"fashion-mnist": {"conditional": "fm-ddpm-cond",
                                                  "denoiser": "fm-ddpm"}}},
    }
    extra = tmp_path / "fm.yaml"
    extra.write_text(yaml.safe_dump({"models": models, "methods": methods}))
    for method, n in (("fm-gaussian", 200), ("fm-dds", 20), ("fm-ndc", 4)):
        code, out, err = cli("run", "--method", method, "--dataset", "fashion-mnist",
                             "--sigma", 0.25, "--n0", 4, "--n", n, "--max-images", 2,
                             "--extra-registry", extra, "--results", tmp_path / "res",
                             "--quiet")
        assert code == 0, f"{method}: {err}"
    code, out, err = cli("table", "--results", tmp_path / "res", "--dataset", "fashion-mnist")
    assert code == 0, err
    for method in methods:
        assert method in out
