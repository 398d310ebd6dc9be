"""CONTRIBUTING.md's "certify your own checkpoint" walk-through, run verbatim in bash from an
empty folder outside the repository: own architecture, own state dict, own image folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import contributing_block


def test_the_walkthrough_certifies_a_users_checkpoint(tmp_path):
    block = contributing_block("test_own_checkpoint_walkthrough.py")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CERTBENCH_REGISTRY", None)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    project = tmp_path / "my_project"
    summary = json.loads(next((project / "my-results").rglob("summary.json")).read_text())
    assert summary["model_roles"]["classifier"]["name"] == "my-lenet"
    assert summary["data"]["channels"] == 1 and summary["data"]["image_size"] == 8
    assert summary["data"]["classes_from"] == "folder names are class indices"
    with open(next((project / "my-results").rglob("certs.tsv")), newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 30
    assert all(r["path"].split("/")[0] == r["label"] for r in rows)
    # A trained network, not a constant: most held-out digits are certified correct at r = 0.
    assert sum(int(r["correct"]) for r in rows) >= 24, proc.stdout
