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
the settings the submitter states (N0, N, m, alpha, sigma, subset) and the repair, and the run
id is the hash of that card, so importing the same file twice is a no-op.

Radii are printed rounded (certify.py's ``{:.3}``: 0.4996 prints as 0.5), and a rounded-up
radius would count at a grid point the certificate never reached. Each claimed radius is lowered
to the bottom of its printed precision, half a unit in its last printed digit (0.500 -> 0.4995,
0.5 -> 0.45, 5.00e-01 -> 0.4995), clipped at 0 (:func:`radius_lower_bound`); the card records
it. A full-precision repr (0.5000000000000001) loses less than a float's last digit.

Every row is checked against what a certificate can be before anything is stored (a bad file
leaves the store as it was, and fails with one line naming the line, the problem and the fix):

* the file is UTF-8 tab-separated text (a byte-order mark is allowed; no quoting);
* ``idx`` is a whole number inside the ``--subset`` when it names one of the dataset's frozen
  subsets, else inside the dataset's test split (:data:`TEST_SPLIT_SIZES`; a dataset whose split
  size is unknown without its data, such as imagefolder, only needs idx >= 0), once per file;
* ``label`` is a class of the dataset and ``predict`` one too or -1 (abstain); a dataset whose
  class count is unknown without its data (imagefolder) only needs label >= 0, predict >= -1;
* ``radius`` is a finite decimal number >= 0 and, for a prediction, its lowered value is at
  most the largest certifiable radius ``sigma * PhiInv(alpha^(1/N))``
  (:func:`bench.certify.stats.max_radius`) of the stated sigma, N and alpha. Without ``--n``, N
  is the default :data:`DEFAULT_N` (Cohen's N, which the card records as the run's N): a file
  certified with a larger N must say so with ``--n``;
* ``correct`` is a finite whole number >= 0 (a 0/1 flag or the DDS running count) and ``time``
  finite seconds >= 0, so no stored value is NaN or infinite.

The card's ``source.checks`` records which of these applied (and which could not, for lack of
the data).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from bench.certify import stats
from bench.certify.budget import Budget
from bench.certify.records import Certificate, RunCard
from bench.data import specs
from bench.data.specs import DIGITS_TEST_SIZE, dataset_names, grid_for
from bench.errors import ConfigError, DataError
from bench.params import check_sigma
from bench.store import database as store_mod

REQUIRED = ("idx", "label", "predict", "radius", "correct")
_TIME_RE = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")
_INT_RE = re.compile(r"[+-]?[0-9]{1,30}")
ABSTAIN = -1
DEFAULT_N = 100_000  # Cohen's N: what the card records, and the radius bound uses, without --n
MAX_STORED_INT = 2**63 - 1  # the store's INTEGER columns
# Test-split sizes of the built-in datasets, torch-free (bench.data.loaders imports torch).
TEST_SPLIT_SIZES = {"digits": DIGITS_TEST_SIZE, "mnist": 10_000, "fashion-mnist": 10_000,
                    "cifar10": 10_000, "imagenet": 50_000}


@dataclass
class ImportOptions:
    tsv: Path
    method: str
    dataset: str
    sigma: float
    n: int | None = None  # None: not stated; DEFAULT_N is recorded and bounds the radii
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
    return [row for _, row in _read(Path(path))[1]]


def _show(text: str, limit: int = 40) -> str:
    """A value from the file for a one-line message: quoted, escaped, shortened."""
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _where(path: Path) -> str:
    """A path for a one-line message (a name with a newline or a control character is quoted)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _read(path: Path) -> tuple[bytes, list[tuple[int, dict[str, str]]]]:
    """The file's bytes and its (line number, row) pairs; blank rows are skipped.

    Plain TSV: UTF-8 (a byte-order mark is allowed), no quoting, a header naming the columns.
    """
    name = _where(path)
    if not path.is_file():
        raise ConfigError(f"--tsv {name}: file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"--tsv {name}: cannot read the file ({exc.strerror or exc}); check "
                        "its permissions") from None
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{name}: line {line} is not UTF-8 text (byte 0x{body[exc.start]:02x}); "
                        "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) and import it "
                        "again") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise DataError(f"{name}: line {line} holds a NUL byte, so this is not a text TSV; "
                        "export the results as tab-separated text")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t",
                            quoting=csv.QUOTE_NONE)
    rows = []
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DataError(f"{name}: missing column(s) {', '.join(missing)}; expected Cohen's "
                            f"'idx label predict radius correct time', got "
                            f"{_show(' '.join(header), 80)}")
        reader.fieldnames = header
        for row in reader:
            values = {k: (v or "").strip() for k, v in row.items() if k and isinstance(v, str)}
            if any(values.values()):
                rows.append((reader.line_num, values))
    except csv.Error as exc:
        raise DataError(f"{name}: line {reader.line_num}: not readable as tab-separated text "
                        f"({exc}); export the results as plain TSV") from None
    return data, rows


RADIUS_GUARD = ("each radius lowered by half a unit in its last printed digit (the bottom of "
                "its printed precision, clipped at 0): a radius rounded up when printed never "
                "counts at a grid point it only reaches by rounding")


_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")


def radius_lower_bound(text: str) -> float:
    """The smallest radius that prints as ``text``: its value minus half a unit in the last
    printed digit (``0.500`` -> 0.4995, ``0.5`` -> 0.45, ``5e-01`` -> 0.45, ``2`` -> 1.5),
    clipped at 0. The digits are counted on the printed string, in decimal arithmetic.

    ``text`` must be a plain decimal number (``inf``, ``nan``, ``1_0`` and a value past a
    float's range are a ValueError)."""
    text = text.strip()
    if not _DECIMAL_RE.fullmatch(text):
        raise ValueError(f"radius must be a finite decimal number, got {text!r}")
    value = Decimal(text)
    try:
        half_unit = Decimal(5).scaleb(value.as_tuple().exponent - 1)
        bound = max(0.0, float(value - half_unit))
    except ArithmeticError:
        bound = math.inf
    if not math.isfinite(bound) or not math.isfinite(float(value)):
        raise ValueError(f"radius must be a finite decimal number, got {text!r}")
    return bound


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


def _check(opts: ImportOptions) -> int:
    """Check the options; returns N (the stated --n, or :data:`DEFAULT_N`)."""
    if opts.dataset not in dataset_names():
        raise ConfigError(f"--dataset {opts.dataset!r} unknown; valid: "
                          f"{', '.join(dataset_names())}")
    check_sigma(opts.sigma)
    n = DEFAULT_N if opts.n is None else opts.n
    for name, value in (("--n", n), ("--n0", opts.n0), ("--m", opts.m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        if value > MAX_STORED_INT:
            raise ConfigError(f"{name} {value} is too large to store (at most {MAX_STORED_INT}); "
                              f"pass the {name} the file was certified with")
    if not 0 < opts.alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {opts.alpha:g}")
    if not opts.method.strip():
        raise ConfigError("--method must not be empty")
    root = Path(opts.results)
    for folder in (root, *root.parents):  # the store is created here: it must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"--results {_where(root)}: {_where(folder)} is a file, not a "
                                  "folder; pass a folder (it is created if missing)")
            break
    return n


def _describe(indices: range) -> str:
    last = indices[-1]
    if indices.step == 1:
        return f"{indices.start}..{last}"
    return f"{indices.start}, {indices.start + indices.step}, ..., {last}"


@dataclass
class _Rules:
    """What a certificate of this dataset, subset, sigma, N and alpha can be."""

    dataset: str
    indices: range | None  # allowed idx values (None: any index the store can hold)
    indices_text: str  # "subset 'cohen500' of cifar10 (0, 20, ..., 9980)"
    classes: int | None  # None: unknown without the data (imagefolder, some user datasets)
    max_radius: float  # the largest radius any certificate reaches (< 0: none certifies)
    bound_text: str  # "sigma 0.25, N 5000, alpha 0.001"
    checks: dict[str, object]  # recorded on the card

    @classmethod
    def of(cls, opts: ImportOptions, n: int) -> _Rules:
        entry = specs.spec(opts.dataset)
        size = TEST_SPLIT_SIZES.get(opts.dataset)
        split = range(size) if size else None
        rule = entry.subsets.get(opts.subset) if opts.subset in entry.subsets else None
        if rule is not None and (split is None or rule[-1] < len(split)):
            indices, text = rule, f"subset {opts.subset!r} of {opts.dataset} ({_describe(rule)})"
        elif split is not None:
            indices, text = split, f"the {opts.dataset} test split ({_describe(split)})"
        else:
            indices, text = None, ""
        classes = entry.num_classes
        limit = stats.max_radius(opts.sigma, n, opts.alpha)
        bound = (f"sigma {opts.sigma:g}, N {n}"
                 f"{'' if opts.n is not None else ' (the default: --n not given)'}, "
                 f"alpha {opts.alpha:g}")
        checks = {
            "indices": text or (f"not checked: the size of the {opts.dataset} test split is "
                                "unknown without its data (only idx >= 0)"),
            "classes": (f"0..{classes - 1}, predict -1 = abstain" if classes else
                        f"not checked: the {opts.dataset} classes are unknown without its "
                        "data (only label >= 0, predict >= -1)"),
            "radius_bound": {
                "max_radius": limit, "sigma": opts.sigma, "n": n, "alpha": opts.alpha,
                "n_stated": opts.n is not None,
                "rule": ("every claimed radius, lowered to the bottom of its printed precision, "
                         "is at most sigma * PhiInv(alpha^(1/N)) (all N samples agree)"
                         + ("" if opts.n is not None else
                            f"; --n was not given, so N is the default {DEFAULT_N} the card "
                            "records")),
            },
        }
        return cls(opts.dataset, indices, text, classes, limit, bound, checks)


def _int_field(row: dict[str, str], name: str, where: str, what: str) -> int:
    text = row.get(name, "")
    if not _INT_RE.fullmatch(text):
        raise DataError(f"{where}: {name} must be {what} (a whole number), got {_show(text)}; "
                        f"fix the {name} column")
    return int(text)


@dataclass
class _Row:
    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    seconds: float


def _parse_row(row: dict[str, str], where: str, rules: _Rules) -> _Row:
    """One row, checked against what a certificate of ``rules`` can be."""
    idx = _int_field(row, "idx", where, "a test-image index")
    in_range = idx in rules.indices if rules.indices is not None else 0 <= idx <= MAX_STORED_INT
    if not in_range:
        inside = rules.indices_text or f"0..{MAX_STORED_INT}"
        raise DataError(f"{where}: idx {_show(row['idx'])} is not an index of {inside}; check "
                        "--dataset and --subset, or fix the idx column")
    classes = (f"a class of {rules.dataset} (0..{rules.classes - 1})" if rules.classes
               else "a class index (>= 0)")
    top = rules.classes - 1 if rules.classes else MAX_STORED_INT
    label = _int_field(row, "label", where, classes)
    if not 0 <= label <= top:
        raise DataError(f"{where}: label {_show(row['label'])} is not {classes}; check "
                        "--dataset, or fix the label column")
    predict = _int_field(row, "predict", where, f"{classes} or -1 (abstain)")
    if not -1 <= predict <= top:
        raise DataError(f"{where}: predict {_show(row['predict'])} is not {classes} or -1 "
                        "(abstain); check --dataset, or fix the predict column")
    try:
        radius = radius_lower_bound(row["radius"])
    except ValueError:
        raise DataError(f"{where}: radius must be a finite decimal number >= 0 (such as 0.512), "
                        f"got {_show(row['radius'])}; fix the radius column") from None
    if Decimal(row["radius"]) < 0:
        raise DataError(f"{where}: radius must be >= 0, got {_show(row['radius'])}; fix the "
                        "radius column")
    if predict != ABSTAIN:
        if rules.max_radius < 0:
            raise DataError(f"{where}: predict {predict} claims a certificate, but at "
                            f"{rules.bound_text} none is possible (every image abstains); pass "
                            "the --sigma, --n and --alpha the file was certified with")
        if radius > rules.max_radius * (1 + 1e-9):
            raise DataError(f"{where}: radius {_show(row['radius'])} is above "
                            f"{rules.max_radius:.4f}, the largest radius a certificate reaches at "
                            f"{rules.bound_text}; pass the --sigma, --n and --alpha the file was "
                            "certified with")
    text = row["correct"]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0 and value == int(value)
            and value <= MAX_STORED_INT):
        raise DataError(f"{where}: correct must be a whole number >= 0 (a 0/1 flag, or the DDS "
                        f"running count), got {_show(text)}; fix the correct column")
    seconds = -1.0  # no time recorded
    if row.get("time"):
        try:
            seconds = parse_time(row["time"])
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise DataError(f"{where}: time must be seconds >= 0 or H:MM:SS[.ffffff], got "
                            f"{_show(row['time'])}; fix the time column")
    return _Row(idx, label, predict, 0.0 if predict == ABSTAIN else radius, int(value), seconds)


def import_tsv(opts: ImportOptions) -> ImportResult:
    """Check the whole file, then store it as a claimed run and export ``certs.tsv`` +
    ``summary.json``. Nothing is written to the store unless every row passes."""
    n = _check(opts)
    path = Path(opts.tsv)
    data, raw = _read(path)
    name = _where(path)
    if not raw:
        raise DataError(f"{name}: no data rows; import a file with one row per image")
    rules = _Rules.of(opts, n)
    rows = [_parse_row(row, f"{name}: line {line}", rules) for line, row in raw]
    first_line: dict[int, int] = {}
    for (line, _), row in zip(raw, rows, strict=True):
        if row.idx in first_line:
            counts = Counter(r.idx for r in rows)
            dup = sorted(i for i, c in counts.items() if c > 1)[:5]
            raise DataError(f"{name}: duplicate idx values {dup} (idx {row.idx} on lines "
                            f"{first_line[row.idx]} and {line}); keep one row per image")
        first_line[row.idx] = line
    labels = [r.label for r in rows]
    preds = [r.predict for r in rows]
    fixed, repaired = repair_correct(labels, preds, [r.correct for r in rows])
    identity = {
        "kind": "claimed", "method": opts.method, "dataset": opts.dataset,
        "subset": opts.subset, "subset_size": len(rows), "sigma": opts.sigma, "n0": opts.n0,
        "n": n, "m": opts.m, "alpha": opts.alpha,
        "tsv_sha256": hashlib.sha256(data).hexdigest(),
    }
    card = RunCard(identity=identity, extra={
        "budget": Budget(n0=opts.n0, n=n, m=opts.m).card(),
        "radius_grid": list(grid_for(opts.dataset)),
        "source": {"file": path.name, "sha256": identity["tsv_sha256"],
                   "description": opts.source, "imported": time.time(),
                   "correct_column_repaired": repaired or None,
                   "radius_guard": RADIUS_GUARD, "checks": rules.checks},
    })
    certs = [Certificate(prediction=r.predict, radius=r.radius, p_lower=-1.0,
                         top_class=r.predict, count=-1, n0=opts.n0, n=n, classifier_passes=-1,
                         diffusion_passes=-1, seconds=r.seconds, idx=r.idx, label=r.label)
             for r in rows]
    assert [c.correct for c in certs] == fixed  # the repair is what the record derives
    store = store_mod.Store(opts.results)
    try:
        run_id = store.open_run(card)  # the same file imported twice finds its first import
        store.add_certs(run_id, certs)
        folder, _ = store.export(run_id)
    finally:
        store.close()
    notes = [f"repaired {name}: {repaired}"] if repaired else []
    notes.append("claimed radii lowered to the bottom of their printed precision (half a unit "
                 "in the last printed digit), so rounding never certifies a grid point")
    if opts.n is None:
        notes.append(f"--n not given: radii checked against N = {DEFAULT_N} (recorded on the "
                     "card); pass --n if the file was certified with another N")
    return ImportResult(run_id=run_id, folder=folder, images=len(rows), repaired=repaired,
                        notes=notes)
