"""Import someone's per-image certification TSV as *claimed* results (no torch).

Cohen et al.'s ``certify.py`` writes ``idx label predict radius correct time`` (time as
``H:MM:SS.ffffff``); many follow-up repos copy it. The DDS reference code (and its forks)
writes a *running count* of correct predictions in ``correct`` instead of a 0/1 flag, which
makes ``analyze.py`` wrong (algorithms.md 5.7, pitfall 5). The importer detects that (the
column equals the running count of predict == label, or holds values other than 0/1) and
recomputes ``correct = (predict == label)``, saying so; any other disagreement between
``correct`` and ``predict == label`` is also recomputed and reported. Abstentions (predict -1)
are never correct.

The rows go into the store as a run of kind ``claimed``: its card records the file's sha256,
the protocol the submitter states (N0, N, m, alpha, sigma, subset) and the repair, and the run
id is the hash of that card, so importing the same file twice is a no-op.

Radii are printed rounded (certify.py's ``{:.3}``: 0.4996 prints as 0.5), and a rounded-up
radius would count at a grid point the certificate never reached. Each claimed radius is lowered
to the bottom of its printed precision, half a unit in its last printed digit (0.500 -> 0.4995,
0.5 -> 0.45, 5.00e-01 -> 0.4995), clipped at 0 (:func:`radius_lower_bound`); the card records
it. A full-precision repr (0.5000000000000001) loses less than a float's last digit.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from bench import store as store_mod
from bench.budget import Budget
from bench.dataspecs import dataset_names, grid_for
from bench.errors import ConfigError, DataError
from bench.params import check_sigma
from bench.records import Certificate, RunCard

REQUIRED = ("idx", "label", "predict", "radius", "correct")
_TIME_RE = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


@dataclass
class ImportOptions:
    tsv: Path
    method: str
    dataset: str
    sigma: float
    n: int = 100_000
    n0: int = 100
    m: int = 1
    alpha: float = 0.001
    subset: str = "claimed"
    source: str = ""
    results: Path = Path("results")


@dataclass
class ImportResult:
    run_id: str
    folder: Path
    images: int
    repaired: str  # "" if the correct column was already a valid 0/1 flag
    notes: list[str] = field(default_factory=list)


def parse_time(text: str) -> float:
    """Seconds from a float or from str(datetime.timedelta) as certify.py writes it."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _TIME_RE.match(text)
    if not match:
        raise ValueError(f"unreadable time {text!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header line; errors name the file and line."""
    if not path.is_file():
        raise ConfigError(f"--tsv {path}: file not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected Cohen's "
                            f"'idx label predict radius correct time', got {' '.join(header)}")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


RADIUS_GUARD = ("each radius lowered by half a unit in its last printed digit (the bottom of "
                "its printed precision, clipped at 0): a radius rounded up when printed never "
                "counts at a grid point it only reaches by rounding")


def radius_lower_bound(text: str) -> float:
    """The smallest radius that prints as ``text``: its value minus half a unit in the last
    printed digit (``0.500`` -> 0.4995, ``0.5`` -> 0.45, ``5e-01`` -> 0.45, ``2`` -> 1.5),
    clipped at 0. The digits are counted on the printed string, in decimal arithmetic."""
    value = Decimal(text.strip())
    if not value.is_finite():
        raise ValueError(f"radius must be finite, got {text!r}")
    half_unit = Decimal(5).scaleb(value.as_tuple().exponent - 1)
    return max(0.0, float(value - half_unit))


def _cumsum(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


def repair_correct(labels: list[int], preds: list[int],
                   correct: list[int]) -> tuple[list[int], str]:
    """``predict == label`` per row, and a description of what was wrong (or '').

    The DDS bug is recognised when ``correct`` is exactly the running count of the true flags
    (in file order), or otherwise holds values other than 0/1.
    """
    fixed = [int(p == y and p != -1) for y, p in zip(labels, preds, strict=True)]
    if fixed == correct:
        return fixed, ""
    if correct == _cumsum(fixed) or any(c not in (0, 1) for c in correct):
        kind = "a running count" if correct == _cumsum(fixed) else "not a 0/1 flag"
        return fixed, (f"the 'correct' column is {kind} (max {max(correct)}), the DDS reference "
                       "code's known bug; recomputed correct = (predict == label)")
    wrong = sum(a != b for a, b in zip(fixed, correct, strict=True))
    return fixed, (f"the 'correct' column disagrees with predict == label on {wrong} rows; "
                   "recomputed correct = (predict == label)")


def _check(opts: ImportOptions) -> None:
    if opts.dataset not in dataset_names():
        raise ConfigError(f"--dataset {opts.dataset!r} unknown; valid: "
                          f"{', '.join(dataset_names())}")
    check_sigma(opts.sigma)
    for name, value in (("--n", opts.n), ("--n0", opts.n0), ("--m", opts.m)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if not 0 < opts.alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {opts.alpha:g}")
    if not opts.method.strip():
        raise ConfigError("--method must not be empty")


def import_tsv(opts: ImportOptions) -> ImportResult:
    """Parse, repair, store as a claimed run and export ``certs.tsv`` + ``summary.json``."""
    _check(opts)
    raw = read_tsv(Path(opts.tsv))
    if not raw:
        raise DataError(f"{opts.tsv}: no data rows")
    labels, preds, radii, correct, times, idxs = [], [], [], [], [], []
    for line, row in enumerate(raw, start=2):
        try:
            idxs.append(int(row["idx"]))
            labels.append(int(row["label"]))
            preds.append(int(row["predict"]))
            radius = float(row["radius"])
            if math.isfinite(radius) and radius >= 0:
                radius = radius_lower_bound(row["radius"])
            correct.append(int(float(row["correct"])))
            times.append(parse_time(row["time"]) if row.get("time") else -1.0)
        except ValueError as exc:
            raise DataError(f"{opts.tsv}: line {line}: {exc}") from None
        if not math.isfinite(radius) or radius < 0:
            raise DataError(f"{opts.tsv}: line {line}: radius must be finite and >= 0, "
                            f"got {row['radius']!r}")
        radii.append(0.0 if preds[-1] == -1 else radius)
    if len(set(idxs)) != len(idxs):
        dup = sorted({i for i in idxs if idxs.count(i) > 1})[:5]
        raise DataError(f"{opts.tsv}: duplicate idx values {dup}; one row per image")
    fixed, repaired = repair_correct(labels, preds, correct)
    data = Path(opts.tsv).read_bytes()
    identity = {
        "kind": "claimed", "method": opts.method, "dataset": opts.dataset,
        "subset": opts.subset, "subset_size": len(idxs), "sigma": opts.sigma, "n0": opts.n0,
        "n": opts.n, "m": opts.m, "alpha": opts.alpha,
        "tsv_sha256": hashlib.sha256(data).hexdigest(),
    }
    card = RunCard(identity=identity, extra={
        "budget": Budget(n0=opts.n0, n=opts.n, m=opts.m).card(),
        "radius_grid": list(grid_for(opts.dataset)),
        "source": {"file": Path(opts.tsv).name, "sha256": identity["tsv_sha256"],
                   "description": opts.source, "imported": time.time(),
                   "correct_column_repaired": repaired or None,
                   "radius_guard": RADIUS_GUARD},
    })
    certs = [Certificate(prediction=preds[i], radius=radii[i], p_lower=-1.0, top_class=preds[i],
                         count=-1, n0=opts.n0, n=opts.n, classifier_passes=-1,
                         diffusion_passes=-1, seconds=times[i], idx=idx, label=labels[i])
             for i, idx in enumerate(idxs)]
    assert [c.correct for c in certs] == fixed  # the repair is what the record derives
    store = store_mod.Store(opts.results)
    try:
        run_id = store.open_run(card)  # the same file imported twice finds its first import
        store.add_certs(run_id, certs)
        folder, _ = store.export(run_id)
    finally:
        store.close()
    notes = [f"repaired {opts.tsv}: {repaired}"] if repaired else []
    notes.append("claimed radii lowered to the bottom of their printed precision (half a unit "
                 "in the last printed digit), so rounding never certifies a grid point")
    return ImportResult(run_id=run_id, folder=folder, images=len(idxs), repaired=repaired,
                        notes=notes)
