"""Registry validation: strict, before any compute, errors naming file, entry and field."""

from __future__ import annotations

import pytest

from bench.contract import Method
from bench.data.loaders import DATASET_NAMES
from bench.errors import ConfigError
from bench.registry.entries import load_registry
from tests.conftest import ROOT


def load_text(tmp_path, text):
    path = tmp_path / "reg.yaml"
    path.write_text(text)
    return path, lambda: load_registry(path, datasets=DATASET_NAMES)


def test_shipped_registry_is_valid_and_every_adapter_imports():
    reg = load_registry(ROOT / "registry.yaml", datasets=DATASET_NAMES)
    assert {"gaussian", "dummy"} <= set(reg.methods)
    for entry in reg.methods.values():
        if entry.reported_only:
            assert entry.reported, f"{entry.name}: a reported-only method needs reported rows"
        else:
            assert issubclass(entry.load_adapter(), Method)
        for row in entry.reported:
            assert row["source"]


@pytest.mark.parametrize("text,needle", [
    ("models: {}\nmodels: {}\n", "duplicate key 'models' at line 2"),
    ("modles: {}\n", "unknown top-level key 'modles'"),
    ("methods:\n  m:\n    adapter: not-a-path\n", "methods.m.adapter: expected 'module:Class'"),
    ("methods:\n  m:\n    description: x\n", "methods.m.adapter: missing"),
    ("methods:\n  m:\n    adapter: a:B\n    datasets:\n      cifar100: {}\n",
     "methods.m.datasets.cifar100: unknown dataset 'cifar100'"),
    ("methods:\n  m:\n    adapter: a:B\n    reported:\n      - {dataset: cifar10, source: x, "
     "accuracy: {0.25: 170}}\n", "methods.m.reported[0].accuracy.0.25: expected a percentage"),
    ("methods:\n  m:\n    adapter: a:B\n    paper: {year: '2019'}\n",
     "methods.m.paper.year: expected int"),
    ("models:\n  x:\n    source: cloud\n    path: p\n", "models.x.source: expected one of"),
    ("models:\n  x:\n    source: zoo\n    path: p\n", "models.x.arch: missing"),
    ("models:\n  x:\n    source: cohen\n    path: p\n    sha256: abc\n",
     "models.x.sha256: expected 64 lowercase hex digits"),
    ("models:\n  x:\n    source: cohen\n    path: p\n    input_layer: std\n",
     "models.x.input_layer: expected one of normalize, center, none"),
    ("methods: [1, 2]\n", "methods: expected a mapping of named entries"),
    ("models:\n  x: [\n", "invalid YAML"),
])
def test_bad_entries_name_file_entry_and_field(tmp_path, text, needle):
    path, load = load_text(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load()
    message = str(info.value)
    assert str(path) in message and needle in message
    assert "\n" not in message


def test_adapter_import_errors_name_the_entry(tmp_path):
    path, load = load_text(tmp_path, "methods:\n  m:\n    adapter: methods.gaussian:Nope\n")
    with pytest.raises(ConfigError, match="methods.m.adapter: module 'methods.gaussian' has no"):
        load().method("m").load_adapter()


def test_unknown_method_lists_valid_ones():
    reg = load_registry(ROOT / "registry.yaml")
    with pytest.raises(ConfigError) as info:
        reg.method("dumy")
    expected = ("unknown method 'dumy' (did you mean 'dummy'?); valid: "
                + ", ".join(sorted(reg.methods)))
    assert str(info.value) == expected
    assert "gaussian" in str(info.value)
