"""The results store: SQLite (WAL) with one durable transaction per certificate, plus exports.

A run is keyed by the hash of its protocol card, so re-running the same command finds the
same run and skips images already certified. Exports (``certs.tsv``, ``summary.json``) are
derived from the store and can be rebuilt at any time (no torch needed).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import StoreError
from bench.records import Certificate, RunCard, RunSummary

SCHEMA_VERSION = 1
DB_NAME = "certbench.sqlite"
TSV_COLUMNS = (
    "idx", "label", "predict", "radius", "correct", "time",
    "top_class", "count", "n0", "n", "p_lower", "classifier_passes", "diffusion_passes", "device",
)
STAGE_COLUMNS = ("stage", "outcome", "stages")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    dataset TEXT NOT NULL,
    card TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS certs (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    idx INTEGER NOT NULL,
    label INTEGER NOT NULL,
    predict INTEGER NOT NULL,
    radius REAL NOT NULL,
    correct INTEGER NOT NULL,
    time REAL NOT NULL,
    top_class INTEGER NOT NULL,
    count INTEGER NOT NULL,
    n0 INTEGER NOT NULL,
    n INTEGER NOT NULL,
    p_lower REAL NOT NULL,
    classifier_passes INTEGER NOT NULL,
    diffusion_passes INTEGER NOT NULL,
    device TEXT NOT NULL,
    counts_select TEXT NOT NULL,
    counts_estimate TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    PRIMARY KEY (run_id, idx)
);
"""


class Store:
    """A results folder: ``<root>/certbench.sqlite`` plus ``<root>/runs/<run>/`` exports."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.root / DB_NAME, timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(
                    f"{self.root / DB_NAME} has schema version {version}, this certbench writes "
                    f"{SCHEMA_VERSION}; use another --results folder"
                )
            with self.db:
                self.db.executescript(_SCHEMA)
                _add_detail_column(self.db)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the results store {self.root / DB_NAME} ({exc}); "
                "pass another --results folder"
            ) from None

    def close(self) -> None:
        self.db.close()

    # ----- runs -----------------------------------------------------------------------------
    def open_run(self, card: RunCard) -> str:
        """Create the run, or find the stored run with this identity; return its id.

        A run stored under another id with the same identity (an id scheme of an older
        certbench) is found by identity, so its certificates are resumed, not duplicated.
        """
        run_id = card.run_id
        row = self.db.execute("SELECT card FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None:
            if json.loads(row["card"]).get("identity") != card.identity:
                raise StoreError(f"run {run_id} exists with a different protocol card")
            return run_id
        for other in self.runs_of(card.identity.get("dataset")):
            if other.card.identity == card.identity:
                return other.card.run_id
        now = time.time()
        with self.db:
            self.db.execute(
                "INSERT INTO runs (run_id, method, dataset, card, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, card.identity["method"], card.identity["dataset"],
                 json.dumps(card.to_json(), sort_keys=True), now, now),
            )
        return run_id

    def run_card(self, run_id: str) -> RunCard:
        row = self.db.execute("SELECT card FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.root / DB_NAME}")
        return RunCard.from_json(json.loads(row["card"]))

    def runs_of(self, dataset: str | None = None) -> list[StoredRun]:
        """Runs (optionally of one dataset), oldest first, with their certificate counts."""
        rows = self.db.execute(
            "SELECT r.run_id, r.card, COUNT(c.idx) AS images FROM runs r "
            "LEFT JOIN certs c ON c.run_id = r.run_id GROUP BY r.run_id ORDER BY r.created"
        ).fetchall()
        out = []
        for r in rows:
            card = RunCard.from_json(json.loads(r["card"]))
            if dataset is None or card.identity.get("dataset") == dataset:
                out.append(StoredRun(card=card, images=r["images"]))
        return out

    # ----- certificates ---------------------------------------------------------------------
    def done_indices(self, run_id: str) -> set[int]:
        rows = self.db.execute("SELECT idx FROM certs WHERE run_id = ?", (run_id,))
        return {r[0] for r in rows}

    def add_cert(self, run_id: str, cert: Certificate) -> None:
        """Commit one certificate durably (its own transaction): a kill loses at most this one."""
        self.add_certs(run_id, [cert])

    def add_certs(self, run_id: str, certs: Iterable[Certificate]) -> int:
        """Commit certificates in one transaction (imports: all of a file or none)."""
        now = time.time()
        rows = []
        for cert in certs:
            values = cert.to_row()
            values["counts_select"] = json.dumps(values["counts_select"])
            values["counts_estimate"] = json.dumps(values["counts_estimate"])
            # A multi-stage procedure's record (the cascade's stages) as one JSON column.
            del values["stage"]
            outcome, stages = values.pop("outcome"), values.pop("stages")
            values["detail"] = (json.dumps({"outcome": outcome, "stages": stages})
                                if stages or outcome else "")
            rows.append({**values, "run_id": run_id, "created": now})
        if not rows:
            return 0
        cols = ", ".join(rows[0])
        marks = ", ".join(f":{c}" for c in rows[0])
        with self.db:
            self.db.executemany(f"INSERT OR REPLACE INTO certs ({cols}) VALUES ({marks})", rows)
            self.db.execute("UPDATE runs SET updated = ? WHERE run_id = ?", (now, run_id))
        return len(rows)

    def certs(self, run_id: str, indices: Iterable[int] | None = None) -> list[Certificate]:
        """Certificates of a run ordered by image index (optionally only the given indices)."""
        rows = self.db.execute(
            "SELECT * FROM certs WHERE run_id = ? ORDER BY idx", (run_id,)
        ).fetchall()
        keep = set(indices) if indices is not None else None
        out = []
        for r in rows:
            if keep is not None and r["idx"] not in keep:
                continue
            d = dict(r)
            d["counts_select"] = json.loads(d["counts_select"])
            d["counts_estimate"] = json.loads(d["counts_estimate"])
            out.append(Certificate.from_row(d))
        return out

    def summary(self, run_id: str, indices: Iterable[int] | None = None) -> RunSummary:
        """The run's metrics over its stored certificates (optionally of given indices)."""
        return RunSummary.from_certs(self.run_card(run_id), self.certs(run_id, indices))

    def export(self, run_id: str, indices: Iterable[int] | None = None,
               root: Path | None = None, summary_name: str = "summary.json",
               extra: Mapping[str, Any] | None = None) -> tuple[Path, RunSummary]:
        """Write ``certs.tsv`` and the summary (plus ``extra`` fields) of a run under
        ``<root>/runs/<folder>/``; the leaderboard names its copy ``card.json``."""
        certs = self.certs(run_id, indices)
        summary = RunSummary.from_certs(self.run_card(run_id), certs)
        folder = Path(root or self.root) / "runs" / summary.card.folder_name
        write_tsv(folder / "certs.tsv", certs)
        write_json(folder / summary_name, {**summary.to_json(), **(extra or {})})
        return folder, summary


@dataclass
class StoredRun:
    card: RunCard
    images: int  # certificates stored so far

    @property
    def run_id(self) -> str:
        return self.card.run_id


def write_tsv(path: Path, certs: Iterable[Certificate]) -> None:
    """Cohen's columns first (radius at full precision, time in seconds), extra columns after;
    a multi-stage run adds the accepting stage, the outcome and each stage's record (JSON)."""
    certs = list(certs)
    columns = TSV_COLUMNS + (STAGE_COLUMNS if any(c.stages for c in certs) else ())
    lines = ["\t".join(columns)]
    for cert in certs:
        row = cert.to_row()
        row["stages"] = json.dumps(row["stages"], separators=(",", ":"))
        lines.append("\t".join(_fmt(row[col]) for col in columns))
    _atomic_write(path, "\n".join(lines) + "\n")


def _add_detail_column(db: sqlite3.Connection) -> None:
    """Stores written before multi-stage procedures lack ``certs.detail``: add it (empty)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(certs)")}
    if "detail" not in columns:
        db.execute("ALTER TABLE certs ADD COLUMN detail TEXT NOT NULL DEFAULT ''")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    _atomic_write(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
