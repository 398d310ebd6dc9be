"""CONTRIBUTING.md's worked example, run verbatim: validate, certify, table, leaderboard."""

from __future__ import annotations

import re
import shlex
import shutil

from bench.cli import main
from tests.conftest import ROOT


def contributing_commands() -> list[str]:
    """The bash block that follows the 'ci:' marker in CONTRIBUTING.md."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    match = re.search(r"<!-- ci:.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert match, "CONTRIBUTING.md lost its CI-checked command block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_contributing_example_validates_and_reaches_the_leaderboard(capsys, tmp_path,
                                                                     monkeypatch):
    commands = contributing_commands()
    assert [shlex.split(c)[3] for c in commands] == [
        "validate", "run", "run", "table", "leaderboard"]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.setenv("CERTBENCH_REGISTRY", str(ROOT / "registry.yaml"))
    monkeypatch.chdir(tmp_path)  # a user's working folder: results land here, not in the repo
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "bench"]
        code = main(argv[3:])  # in-process: the same commands without 5 torch imports
        out, err = capsys.readouterr()
        assert code == 0, f"{command}\n{out}\n{err}"
        outputs.append(out)
    validate_out = outputs[0]
    assert validate_out.startswith("OK   ensemble-example:"), validate_out
    assert "hash-checked" in validate_out and "smoke 2 images" in validate_out
    assert "| ensemble-example | reproduced" in outputs[3]
    board = tmp_path / "my-leaderboard"
    html = (board / "digits.html").read_text()
    assert "ensemble-example" in html and "softmax ensemble" in html
    md = (board / "digits.md").read_text()
    assert "ensemble-example" in md
    # Its row links to a copied card and TSV that record the two passes per noisy sample.
    cards = list((board / "runs").glob("ensemble-example-digits-sigma0.25-*/card.json"))
    assert len(cards) == 1
    assert '"classifier_passes": 2' in cards[0].read_text()
    assert (cards[0].parent / "certs.tsv").read_text().count("\n") == 1 + 8

