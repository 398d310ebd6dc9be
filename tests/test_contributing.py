"""CONTRIBUTING.md's worked example, run verbatim: validate, certify, table, leaderboard."""

from __future__ import annotations

import shlex

from tests.conftest import contributing_block, run_documented_commands


def test_contributing_example_validates_and_reaches_the_leaderboard(capsys, tmp_path,
                                                                     monkeypatch):
    block = contributing_block("test_contributing.py")
    assert [shlex.split(c)[3] for c in block.splitlines() if c.strip()] == [
        "validate", "run", "run", "table", "leaderboard"]
    outputs = run_documented_commands(block, tmp_path, monkeypatch, capsys)
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

