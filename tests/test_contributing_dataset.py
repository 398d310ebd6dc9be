"""CONTRIBUTING.md's "Adding a dataset" example, run verbatim: register, list, certify, table."""

from __future__ import annotations

import re
import sys

import pytest

import bench.cli
from bench.data import specs
from tests.conftest import ROOT, contributing_block

MODULE = "examples.tiny_dataset"


def dataset_section() -> str:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    assert "\n## Adding a dataset\n" in text, "CONTRIBUTING.md lost its 'Adding a dataset' section"
    return text.split("\n## Adding a dataset\n", 1)[1]


def dataset_example() -> str:
    """The python block that follows the 'ci:' marker in the 'Adding a dataset' section."""
    return contributing_block("test_contributing_dataset.py", "python")


@pytest.fixture
def isolated_datasets():
    """The example registers "bars" for this test only: a fresh import, then the table restored."""
    saved = dict(specs.DATASETS)
    sys.modules.pop(MODULE, None)
    yield
    sys.modules.pop(MODULE, None)
    specs.DATASETS.clear()
    specs.DATASETS.update(saved)


def test_dataset_example_lists_and_certifies(isolated_datasets, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a user's working folder: results land here, not in the repo
    calls: list[tuple[list[str], int]] = []
    real_main = bench.cli.main

    def recording_main(argv):
        calls.append((list(argv), real_main(argv)))
        return calls[-1][1]

    monkeypatch.setattr(bench.cli, "main", recording_main)  # the block imports it from there
    exec(compile(dataset_example(), "CONTRIBUTING.md", "exec"), {"__name__": "__example__"})
    out, err = capsys.readouterr()
    assert [(argv[0], code) for argv, code in calls] == [("list", 0), ("run", 0), ("table", 0)], err

    listed = [line.split() for line in out.splitlines() if line.startswith("bars ")]
    assert listed == [["bars", "full,", "dev,", "first20", "0..1.5", "step", "0.25"]]
    runs = list(tmp_path.glob("my-results/runs/dummy-bars-sigma0.25-*/certs.tsv"))
    assert len(runs) == 1
    assert len(runs[0].read_text().splitlines()) == 1 + 20  # header + the first20 subset


def test_documented_spec_is_the_example_module():
    snippet = re.search(r"```python\n(register_dataset\(.*?\n\)\))\n```", dataset_section(), re.S)
    assert snippet, "the section lost its DatasetSpec snippet"
    assert snippet.group(1) in (ROOT / "examples" / "tiny_dataset.py").read_text()


def test_bars_statistics_match_train_split(isolated_datasets):
    from bench.data import loaders

    __import__(MODULE)
    images, labels = loaders.load_split("bars", "train").tensors()
    info = loaders.dataset_info("bars")
    assert images.shape == (400, 1, 12, 12) and 0 <= images.min() and images.max() == 1
    assert info.mean == (round(images.mean().item(), 4),)
    assert info.std == (round(images.std(unbiased=False).item(), 4),)
    assert set(labels.tolist()) == {0, 1}
    assert len(loaders.load_split("bars")) == 100
