"""Exported runs as a read-only results source: ``runs/<folder>/`` with a card and certs.tsv.

``run`` exports each run as ``summary.json`` plus ``certs.tsv`` under ``--results/runs/``, and
the leaderboard copies them as ``card.json`` plus ``certs.tsv`` under ``--out/runs/`` (the
committed ``leaderboards/runs/``). Such a folder holds every certificate, so ``table``,
``plot``, ``protocols``, ``leaderboard``, :func:`bench.load_results` and ``merge`` read it as
they read a store (:func:`open_results`), without re-certifying anything.

Every card is checked against its run id: a card whose identity does not hash to the run id
it records (:func:`bench.certify.records.run_id_of`) was changed after the run, and the folder is
refused. The metrics in a card are never read back: they are recomputed from ``certs.tsv``,
as from a store. The TSV has no per-class counts (a store's ``counts_select`` and
``counts_estimate``): those read back empty. No torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.certify.records import Certificate, RunCard, RunSummary, run_id_of
from bench.errors import StoreError
from bench.store.database import DB_NAME, TSV_COLUMNS, Store, StoredRun, tsv_unescape, write_export

CARD_NAMES = ("card.json", "summary.json")  # the leaderboard's copy, then run's export
# Keys a summary or the leaderboard's card adds to the run's card (derived, never read back).
SUMMARY_KEYS = ("images", "metrics", "cost_per_image", "stages", "kind")


def open_results(path: str | Path) -> Store | ExportedRuns | None:
    """The results at ``path`` (a ``--results`` folder, its ``certbench.sqlite``, or a folder of
    exported runs such as ``leaderboards``) opened for reading: its store read-only, else its
    exported runs; None when it holds neither. Creates and changes nothing."""
    root = Path(path)
    if root.name == DB_NAME and root.is_file():
        root = root.parent
    if (root / DB_NAME).is_file():
        return Store(root, readonly=True)
    folder = exports_folder(root)
    return ExportedRuns(root, folder) if folder is not None else None


def exports_folder(root: Path) -> Path | None:
    """``root/runs`` when it holds exported runs, or ``root`` itself when it is such a
    ``runs`` folder; else None."""
    for folder in (root / "runs", root):
        if folder.is_dir() and any(card_file(d) for d in _subfolders(folder)):
            return folder
    return None


def card_file(folder: Path) -> Path | None:
    """The card of an exported run's folder (it needs ``certs.tsv`` too), or None."""
    if not (folder / "certs.tsv").is_file():
        return None
    return next((folder / n for n in CARD_NAMES if (folder / n).is_file()), None)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


class ExportedRuns:
    """Exported runs read as a store is read (``runs_of``, ``run_card``, ``certs``,
    ``summary``, ``export`` elsewhere); never written. Cards are checked on opening,
    certificates read when first asked for."""

    readonly = True

    def __init__(self, root: str | Path, folder: Path | None = None):
        self.root = Path(root)
        self.folder = folder or exports_folder(self.root) or self.root / "runs"
        self._runs: dict[str, tuple[RunCard, Path]] = {}
        self._certs: dict[str, list[Certificate]] = {}
        for sub in _subfolders(self.folder) if self.folder.is_dir() else []:
            found = card_file(sub)
            if found is None:
                continue
            card = read_card(found)
            if card.run_id in self._runs:
                raise StoreError(f"run {card.run_id} is exported twice, in "
                                 f"{self._runs[card.run_id][1].parent} and {sub}; keep one")
            self._runs[card.run_id] = (card, sub / "certs.tsv")

    def close(self) -> None:
        """Nothing to close (the same calls as a :class:`bench.store.database.Store`)."""

    def runs_of(self, dataset: str | None = None) -> list[StoredRun]:
        """Runs (optionally of one dataset) in folder-name order, with certificate counts."""
        return [StoredRun(card=card, images=len(self.certs(run_id)))
                for run_id, (card, _) in self._runs.items()
                if dataset is None or card.identity.get("dataset") == dataset]

    def run_card(self, run_id: str) -> RunCard:
        if run_id not in self._runs:
            raise StoreError(f"no run {run_id!r} in {self.folder}")
        return self._runs[run_id][0]

    def done_indices(self, run_id: str) -> set[int]:
        return {c.idx for c in self.certs(run_id)}

    def certs(self, run_id: str, indices: Iterable[int] | None = None) -> list[Certificate]:
        """Certificates of a run ordered by image index (optionally only the given ones)."""
        self.run_card(run_id)
        if run_id not in self._certs:
            self._certs[run_id] = read_certs(self._runs[run_id][1])
        keep = set(indices) if indices is not None else None
        return [c for c in self._certs[run_id] if keep is None or c.idx in keep]

    def summary(self, run_id: str, indices: Iterable[int] | None = None) -> RunSummary:
        return RunSummary.from_certs(self.run_card(run_id), self.certs(run_id, indices))

    def export(self, run_id: str, indices: Iterable[int] | None = None,
               root: Path | None = None, summary_name: str = "summary.json",
               extra: Mapping[str, Any] | None = None) -> tuple[Path, RunSummary]:
        """Write a run's files under ``<root>/runs/`` (another folder: these are read-only)."""
        if root is None:
            raise StoreError(f"{self.folder} holds exported runs, read-only; export elsewhere")
        return write_export(Path(root), self.run_card(run_id), self.certs(run_id, indices),
                            summary_name, extra)


def read_card(path: Path) -> RunCard:
    """The run card of an export (its summary's metrics left out), checked against its id."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: not a readable run card ({' '.join(str(exc).split())}); "
                         "restore it from the run's export") from None
    if not (isinstance(data, dict) and isinstance(data.get("identity"), dict)
            and isinstance(data.get("run_id"), str)):
        raise StoreError(f"{path}: not a run card (it needs run_id and identity)")
    actual = run_id_of(data["identity"])
    if actual != data["run_id"]:
        raise StoreError(
            f"{path}: the card's identity hashes to run id {actual}, not to its run id "
            f"{data['run_id']}: it was changed after the run; refused (restore the card from "
            "the run's own export or store)")
    return RunCard.from_json({k: v for k, v in data.items() if k not in SUMMARY_KEYS})


def read_certs(path: Path) -> list[Certificate]:
    """The certificates of an exported ``certs.tsv`` (as :func:`bench.store.database.write_tsv`
    writes it), by image index; a damaged file is one line naming it and the line."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # only \n ends a row
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot read it ({' '.join(str(exc).split())})") from None
    lines = [line.removesuffix("\r") for line in lines if line.strip()]
    header = lines[0].split("\t") if lines else []
    missing = [c for c in TSV_COLUMNS if c not in header]
    if missing:
        raise StoreError(f"{path}: not a certbench export (no {', '.join(missing)} column)")
    certs: dict[int, Certificate] = {}
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(header):
            raise StoreError(f"{path} line {number}: {len(cells)} cells where the header has "
                             f"{len(header)}; the file is damaged")
        try:
            cert = _certificate(dict(zip(header, cells, strict=True)))
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path} line {number}: {exc}; the file is damaged") from None
        if cert.idx in certs:
            raise StoreError(f"{path} line {number}: image {cert.idx} appears twice")
        certs[cert.idx] = cert
    return [certs[i] for i in sorted(certs)]


def _certificate(row: Mapping[str, str]) -> Certificate:
    stages = json.loads(row["stages"]) if row.get("stages") else []
    if not isinstance(stages, list):
        raise ValueError(f"stages {row['stages'][:40]!r} is not a list")
    return Certificate(
        prediction=int(row["predict"]), radius=float(row["radius"]),
        p_lower=float(row["p_lower"]), top_class=int(row["top_class"]),
        count=int(row["count"]), n0=int(row["n0"]), n=int(row["n"]),
        classifier_passes=int(row["classifier_passes"]),
        diffusion_passes=int(row["diffusion_passes"]), seconds=float(row["time"]),
        idx=int(row["idx"]), label=int(row["label"]), device=tsv_unescape(row["device"]),
        outcome=tsv_unescape(row.get("outcome", "")), stages=stages,
        path=tsv_unescape(row.get("path", "")),
    )
