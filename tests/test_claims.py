"""`bench claims`: claims checked by paired tests on the same images (bench.reports.claims)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.certify.records import Certificate
from bench.errors import ConfigError
from bench.reports.claims import Claim, compare_runs, holm, load_claims

ROOT = Path(__file__).resolve().parents[1]


def _cert(idx: int, radius: float, correct: bool) -> Certificate:
    label = 3
    return Certificate(prediction=label if correct else (-1 if radius == 0 else 4),
                       radius=radius, p_lower=0.9, top_class=label, count=90, n0=10, n=100,
                       idx=idx, label=label)


def _claim(metric: str = "acr") -> Claim:
    return Claim(id="c", paper="p", claim="A beats B", better={"method": "a"},
                 than={"method": "b"}, metric=metric)


def test_holm_by_hand():
    # p sorted 0.01, 0.02, 0.04 -> 3*0.01 = 0.03, max(0.03, 2*0.02) = 0.04, max(0.04, 0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_a_claim_is_reproduced_only_in_its_own_direction():
    strong = [_cert(i, 1.0, True) for i in range(30)]
    weak = [_cert(i, 0.2, True) for i in range(30)]
    forward = compare_runs(_claim(), "A", strong, "B", weak)
    assert forward.verdict == "reproduced" and forward.test.p_value < 1e-4
    backward = compare_runs(_claim(), "A", weak, "B", strong)
    assert backward.verdict == "contradicted"
    assert backward.value_better == pytest.approx(0.2) and backward.value_than == pytest.approx(1)


def test_wrong_classes_count_as_radius_zero():
    # Same radii, but A is wrong on every image: A's ACR is 0 and the claim is contradicted.
    a = [_cert(i, 1.0, False) for i in range(20)]
    b = [_cert(i, 1.0, True) for i in range(20)]
    checked = compare_runs(_claim(), "A", a, "B", b)
    assert checked.value_better == 0.0 and checked.verdict == "contradicted"


def test_accuracy_at_a_radius_uses_mcnemar_on_the_shared_images():
    # Images 0..9 certified by both; A alone certifies 10..17 at r >= 0.5 (8 discordant, all A):
    # exact McNemar p = 2 * 0.5**8 = 0.0078. Images B alone has (100..) are not shared: ignored.
    a = [_cert(i, 0.6, True) for i in range(18)] + [_cert(i, 0.1, True) for i in range(18, 30)]
    b = ([_cert(i, 0.6, True) for i in range(10)] + [_cert(i, 0.3, True) for i in range(10, 30)]
         + [_cert(i, 2.0, True) for i in range(100, 140)])
    checked = compare_runs(_claim("accuracy@0.5"), "A", a, "B", b)
    assert checked.images == 30
    assert (checked.test.wins_a, checked.test.wins_b) == (8, 0)
    assert checked.test.p_value == pytest.approx(2 * 0.5**8)
    assert checked.verdict == "reproduced"


def test_no_difference_is_not_significant():
    same = [_cert(i, 0.5, True) for i in range(10)]
    assert compare_runs(_claim(), "A", same, "B", same).verdict == "not significant"


def test_runs_without_shared_images_are_one_line():
    with pytest.raises(ConfigError, match="share no image"):
        compare_runs(_claim(), "A", [_cert(0, 1, True)], "B", [_cert(1, 1, True)])


@pytest.mark.parametrize("body, message", [
    ("claims: [{id: x, better: {method: a}, than: {method: b}, metric: acc}]",
     "neither 'acr' nor 'accuracy@R'"),
    ("claims: [{id: x, better: {method: a}, than: {methd: b}, metric: acr}]",
     "unknown selector 'methd'"),
    ("claims: [{id: x, better: {method: a}, metric: acr}]", "missing field 'than'"),
    ("dataset: digits", "top-level 'claims:' list"),
])
def test_bad_claims_files_are_one_line(tmp_path, body, message):
    path = tmp_path / "c.yaml"
    path.write_text(body + "\n")
    with pytest.raises(ConfigError, match=message):
        load_claims(path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bench", "claims", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_claims_on_the_committed_digits_runs(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text(
        "dataset: digits\n"
        "claims:\n"
        "  - {id: smoothadv-acr, paper: Salman et al. 2019, metric: acr,\n"
        "     better: {method: smoothadv, sigma: 0.25}, than: {run: 5047f68b620f}}\n"
        "  - {id: ambiguous, metric: acr, better: {method: macer, sigma: 0.5},\n"
        "     than: {method: gaussian, sigma: 0.5}}\n")
    out = _cli(str(path), "--results", "leaderboards")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "selects 2 runs" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    path.write_text(path.read_text().replace("sigma: 0.5}}", "sigma: 0.5, n: 5000}}"))
    out = _cli(str(path), "--results", "leaderboards", "--markdown")
    assert out.returncode == 0, out.stderr
    lines = {line.split("|")[1].strip(): line for line in out.stdout.splitlines()[2:]}
    # The committed runs: SmoothAdv's ACR 0.588 against Gaussian's 0.540 on all 360 images.
    assert "56a7eb405cf2" in lines["smoothadv-acr"] and "reproduced" in lines["smoothadv-acr"]
    assert [cell.strip() for cell in lines["ambiguous"].split("|")][6] == "360"
