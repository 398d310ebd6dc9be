"""CONTRIBUTING.md's training-method example, run verbatim: a one-file method trained with
``python -m bench train`` from an extra registry, then certified from its .safetensors file."""

from __future__ import annotations

import json
import shlex

from tests.conftest import contributing_block, run_documented_commands


def test_contributing_training_method_trains_and_certifies(capsys, tmp_path, monkeypatch):
    block = contributing_block("test_contributing_training.py")
    commands = [line for line in block.splitlines() if line.strip()]
    assert [shlex.split(c)[3] for c in commands] == ["train", "run"]
    outputs = run_documented_commands(block, tmp_path, monkeypatch, capsys)
    run_argv = shlex.split(commands[1])
    weights = tmp_path / run_argv[run_argv.index("--model") + 1]
    assert weights.suffix == ".safetensors" and weights.is_file()
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["method"] == "stability-example" and card["params"] == {"lbd": 2.0}
    assert card["command"] == commands[0]  # the card records the command as typed
    assert card["sha256"] in outputs[0] and "registry entry" in outputs[0]
    # The run certified 4 images with the trained file and recorded its sha256.
    runs = list((tmp_path / "my-results" / "runs").glob("stability-example-digits-*"))
    assert len(runs) == 1
    assert (runs[0] / "certs.tsv").read_text().count("\n") == 1 + 4
    assert card["sha256"] in (runs[0] / "summary.json").read_text()
    assert "stability-example on digits" in outputs[1]
