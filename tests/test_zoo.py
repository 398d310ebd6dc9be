"""The shipped digits zoo: files match the registry, and models reach their documented accuracy."""

from __future__ import annotations

import json
import math

import pytest

from bench.data.loaders import load_split
from bench.nets import load_network, sha256_file
from bench.registry.entries import load_registry
from bench.training.loop import noisy_accuracy
from tests.conftest import ROOT

REGISTRY = load_registry(ROOT / "registry.yaml")
ZOO = {name: m for name, m in REGISTRY.models.items() if m.get("source") == "zoo"}


def test_every_zoo_entry_has_its_file_and_hash():
    assert len(ZOO) >= 3
    for name, entry in ZOO.items():
        path = ROOT / "bench" / "zoo" / entry["path"]
        assert path.is_file(), name
        assert sha256_file(path) == entry["sha256"], name
        card = json.loads(path.with_suffix(".json").read_text())
        assert card["sha256"] == entry["sha256"] and card["sigma"] == entry["sigma"]


@pytest.mark.parametrize("name", sorted(n for n in ZOO if ZOO[n].get("dataset") == "digits"))
def test_zoo_model_reaches_documented_accuracy(name):
    """Re-measure clean and noisy accuracy; tolerance: 3 binomial standard errors."""
    entry = ZOO[name]
    card = json.loads((ROOT / "bench" / "zoo" / entry["path"]).with_suffix(".json").read_text())
    test = load_split("digits", "test")
    x, y = test.tensors()
    net = load_network(name, entry.fields, dataset=test.info, base_dir=ROOT)
    draws = card["noisy_accuracy_draws"]
    clean = noisy_accuracy(net, x, y, 0.0)
    noisy = noisy_accuracy(net, x, y, entry["sigma"], draws=draws, seed=card["seed"])
    for measured, documented, n in ((clean, card["clean_accuracy"], len(x)),
                                    (noisy, card["noisy_accuracy"], draws * len(x))):
        se = math.sqrt(documented * (1 - documented) / n)
        assert abs(measured - documented) <= 3 * se + 1e-4, (name, measured, documented)
