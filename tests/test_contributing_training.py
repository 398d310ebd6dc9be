"""CONTRIBUTING.md's training-method example, run verbatim: a one-file method trained with
``python -m bench train`` from an extra registry, then certified from its .safetensors file."""

from __future__ import annotations

import json
import re
import shlex
import shutil

from bench.cli import main
from tests.conftest import ROOT

MARKER = "<!-- ci: the block below is run verbatim by tests/test_contributing_training.py -->"


def training_commands() -> list[str]:
    """The bash block that follows this test's 'ci:' marker in CONTRIBUTING.md."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    match = re.search(re.escape(MARKER) + r"\s*```bash\n(.*?)```", text, re.S)
    assert match, "CONTRIBUTING.md lost the training method's CI-checked command block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_contributing_training_method_trains_and_certifies(capsys, tmp_path, monkeypatch):
    commands = training_commands()
    assert [shlex.split(c)[3] for c in commands] == ["train", "run"]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.setenv("CERTBENCH_REGISTRY", str(ROOT / "registry.yaml"))
    monkeypatch.chdir(tmp_path)  # a user's working folder: models and results land here
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "bench"]
        code = main(argv[3:])  # in-process: the same commands without 2 torch imports
        out, err = capsys.readouterr()
        assert code == 0, f"{command}\n{out}\n{err}"
        outputs.append(out)
    run_argv = shlex.split(commands[1])
    weights = tmp_path / run_argv[run_argv.index("--model") + 1]
    assert weights.suffix == ".safetensors" and weights.is_file()
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["method"] == "stability-example" and card["params"] == {"lbd": 2.0}
    assert card["sha256"] in outputs[0] and "registry entry" in outputs[0]
    # The run certified 4 images with the trained file and recorded its sha256.
    runs = list((tmp_path / "my-results" / "runs").glob("stability-example-digits-*"))
    assert len(runs) == 1
    assert (runs[0] / "certs.tsv").read_text().count("\n") == 1 + 4
    assert card["sha256"] in (runs[0] / "summary.json").read_text()
    assert "stability-example on digits" in outputs[1]
