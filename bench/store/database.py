"""The results store: SQLite (WAL) with one durable transaction per certificate, plus exports.

A run is keyed by the hash of its run card, so re-running the same command finds the
same run and skips images already certified. Exports (``certs.tsv``, ``summary.json``) are
derived from the store and can be rebuilt at any time (no torch needed).

Concurrency: any number of processes may use one store at once. Creating a run is one
``INSERT OR IGNORE`` transaction (the identity read back and compared); exports write a
temporary file of their own and replace the target atomically; and processes certifying the
same run share its images through the ``claims`` table: each claims a few images (one
``BEGIN IMMEDIATE`` transaction: images neither certified nor held by a live owner) before
certifying them, refreshes its claims while it works (:class:`ClaimSession`) and releases them
when it ends. A claim whose owner is dead (same host, no such process) or that was not
refreshed for ``CLAIM_STALE_S`` seconds is free again, so a killed run resumes.

Network filesystems: WAL keeps its index in shared memory (the ``-shm`` file), which processes
on different hosts do not share, so a store on NFS, Lustre, GPFS, CIFS, ... (Linux: the
filesystem type of the longest mount point holding the folder, :func:`network_filesystem`)
uses SQLite's rollback journal (``journal_mode=DELETE``: file locks, a 30 s busy timeout, FULL
syncs) instead. ``CERTBENCH_STORE_JOURNAL=wal|delete`` forces either mode. On a cluster, one
store per shard (merged with ``python -m bench merge``) avoids shared locks altogether.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.certify.records import Certificate, RunCard, RunSummary
from bench.errors import StoreError
from bench.store.jsonsafe import json_safe

SCHEMA_VERSION = 1
DB_NAME = "certbench.sqlite"
TSV_COLUMNS = (
    "idx", "label", "predict", "radius", "correct", "time",
    "top_class", "count", "n0", "n", "p_lower", "classifier_passes", "diffusion_passes", "device",
)
STAGE_COLUMNS = ("stage", "outcome", "stages")
TSV_TEXT = ("device", "outcome", "path")  # free-text columns, escaped (tsv_escape)
_TSV_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TSV_SPECIAL = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TSV_ESCAPED = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)")
CLAIM_STALE_S = 300.0  # a claim not refreshed for this long is free (its owner hung or is gone)
HEARTBEAT_S = 30.0  # how often a live owner refreshes its claims
_IN_LIMIT = 500  # ids per "IN (...)" query (SQLite's variable limit is 999 on old builds)
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
CREATE TABLE IF NOT EXISTS claims (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    owner TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE INDEX IF NOT EXISTS claims_owner ON claims (owner)
"""


JOURNAL_ENV = "CERTBENCH_STORE_JOURNAL"  # auto (default), wal or delete
MOUNTS = Path("/proc/self/mounts")
# Filesystems on which SQLite's WAL is unsafe: its index lives in a memory-mapped ``-shm`` file
# that only processes on one host share; over these, processes on other hosts do not see it.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "coda", "lustre",
    "gpfs", "beegfs", "fhgfs", "ceph", "fuse.ceph", "glusterfs", "fuse.glusterfs", "ocfs2",
    "gfs2", "pvfs2", "orangefs", "panfs", "wekafs", "quobyte", "fuse.quobyte", "fuse.sshfs",
    "sshfs", "9p", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "juicefs",
    "fuse.mfs", "fuse.moosefs", "fuse.lizardfs", "cvmfs", "fuse.cvmfs", "davfs", "fuse.davfs",
})


def _unescape_mount(field: str) -> str:
    """A mount point as /proc/mounts writes it (space, tab, newline, backslash as ``\\ooo``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: str | Path, mounts: str | None = None) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the mount holding ``path`` (Linux), or None when
    unknown. ``mounts`` is the text of a mounts table (default: ``/proc/self/mounts``); the
    longest mount point that contains the resolved path wins, the later of two equal ones (a
    mount over another)."""
    if mounts is None:
        try:
            mounts = MOUNTS.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    target = os.path.realpath(path)
    best: tuple[str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = _unescape_mount(fields[1]), fields[2]
        inside = (point == "/" or target == point
                  or target.startswith(point.rstrip("/") + "/"))
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best


def network_filesystem(path: str | Path, mounts: str | None = None) -> str | None:
    """The filesystem type when ``path`` is on a network or cluster filesystem, else None."""
    found = mount_of(path, mounts)
    if found is None:
        return None
    fstype = found[1].lower()
    return found[1] if fstype in NETWORK_FILESYSTEMS or fstype.startswith("nfs") else None


def journal_mode(path: str | Path, env: Mapping[str, str] | None = None,
                 mounts: str | None = None) -> tuple[str, str]:
    """("wal" or "delete", why) for a store in folder ``path``.

    ``$CERTBENCH_STORE_JOURNAL`` (wal or delete) forces a mode; otherwise (auto) a folder on a
    network filesystem (:func:`network_filesystem`) gets SQLite's rollback journal
    (``journal_mode=DELETE``, file locks and a busy timeout), any other folder WAL.
    """
    env = os.environ if env is None else env
    forced = env.get(JOURNAL_ENV, "").strip().lower()
    if forced in ("wal", "delete"):
        return forced, f"{JOURNAL_ENV}={forced}"
    if forced not in ("", "auto"):
        raise StoreError(f"{JOURNAL_ENV} must be auto, wal or delete, got {forced!r}")
    fstype = network_filesystem(path, mounts)
    if fstype is not None:
        return "delete", f"{path} is on a {fstype} filesystem"
    return "wal", "local filesystem"


def _set_journal(db: sqlite3.Connection, mode: str, wait_s: float = 30.0) -> None:
    """Switch to ``mode`` (wal or delete). Two processes creating one store at the same
    instant can make SQLite report "database is locked" here at once, without its busy timeout
    (a switch needs an exclusive lock): retry until ``wait_s`` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute(f"PRAGMA journal_mode={mode.upper()}")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05 + 0.05 * secrets.randbelow(4))


def _damaged(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    """The one-line error for a store file SQLite cannot read as a database."""
    return StoreError(
        f"the results store {path} is damaged ({' '.join(str(exc).split())}); nothing was "
        f"changed. Move it aside with its -wal and -shm files (mv {path} {path}.damaged) and "
        "rerun your commands: they re-certify the same images identically into a new store. "
        "The certs.tsv files exported under runs/ are separate files, left as they are; "
        "'python -m bench import' can load one as a claimed run"
    )


def _open_readonly(path: Path) -> sqlite3.Connection:
    """``path`` opened read-only (SQLite's ``mode=ro``): reading never creates, migrates or
    locks a store for writing, so a store in a folder this user may not write, or one of an
    older schema, reads as it is. A WAL store whose ``-shm`` file cannot be created (a folder
    nobody here may write) is read as immutable. Tables an older or empty store lacks are
    made empty in memory (TEMP tables), never in the file."""
    if not path.is_file():
        raise StoreError(f"no results store {path}; certify with 'python -m bench run "
                         "--results FOLDER' first, or pass the --results folder of a run")
    uri = path.resolve().as_uri()
    try:
        try:
            db = _connect_readonly(uri + "?mode=ro")
        except sqlite3.OperationalError:
            db = _connect_readonly(uri + "?immutable=1")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            db.close()
            raise StoreError(f"{path} has schema version {version}, this certbench reads "
                             f"{SCHEMA_VERSION}; read it with the certbench that wrote it")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for statement in filter(str.strip, _SCHEMA.split(";")):
            name = statement.split("EXISTS")[1].split()[0]
            if statement.lstrip().startswith("CREATE TABLE") and name not in tables:
                db.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
    except sqlite3.DatabaseError as exc:
        if not isinstance(exc, sqlite3.OperationalError):  # not a database, malformed
            raise _damaged(path, exc) from None
        raise StoreError(f"cannot read the results store {path} ({exc}); check that this user "
                         "may read it") from None
    return db


def _connect_readonly(uri: str) -> sqlite3.Connection:
    db = sqlite3.connect(uri, uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opening is lazy
    except sqlite3.Error:
        db.close()
        raise
    return db


class Store:
    """A results folder: ``<root>/certbench.sqlite`` plus ``<root>/runs/<run>/`` exports."""

    def __init__(self, root: str | Path, *, readonly: bool = False):
        self.root = Path(root)
        self.readonly = readonly
        if readonly:  # a source to read (table, plot, merge ...): never created nor migrated
            self.db = _open_readonly(self.root / DB_NAME)
            self.journal, self.journal_reason = "read-only", "opened read-only"
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.journal, self.journal_reason = journal_mode(self.root)
            self.db = sqlite3.connect(self.root / DB_NAME, timeout=30)
            self.db.row_factory = sqlite3.Row
            _set_journal(self.db, self.journal)
            # A rollback journal is durable across a power loss only with FULL syncs.
            self.db.execute("PRAGMA synchronous=" +
                            ("NORMAL" if self.journal == "wal" else "FULL"))
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(
                    f"{self.root / DB_NAME} has schema version {version}, this certbench writes "
                    f"{SCHEMA_VERSION}; use another --results folder"
                )
            if not _schema_is_current(self.db):
                # One write transaction: processes opening a new store at once each see either
                # no tables or all of them.
                with self._write():
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self.db.execute(statement)
                    _add_detail_column(self.db)
                    self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            if not isinstance(exc, sqlite3.OperationalError):  # not a database, malformed
                raise _damaged(self.root / DB_NAME, exc) from None
            raise StoreError(
                f"cannot open the results store {self.root / DB_NAME} ({exc}); "
                "pass another --results folder"
            ) from None

    @property
    def path(self) -> Path:
        return self.root / DB_NAME

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, its lock taken at the start (``BEGIN IMMEDIATE``): what it
        reads cannot change before it commits, whatever other processes do."""
        if self.db.in_transaction:
            self.db.commit()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()

    # ----- runs -----------------------------------------------------------------------------
    def open_run(self, card: RunCard) -> str:
        """Create the run, or find the stored run with this identity; return its id.

        A run stored under another id with the same identity (an id scheme of an older
        certbench) is found by identity, so its certificates are resumed, not duplicated.
        Atomic: processes opening the same card at once all get the one run.
        """
        with self._write():
            found = self._find_run(card)
            if found is not None:
                return found
            self._insert_run(card)
        return card.run_id

    def find_run(self, card: RunCard) -> str | None:
        """The id of the stored run with this card's identity (by id, then by identity, as
        :meth:`open_run`), or None when there is none yet; creates nothing."""
        return self._find_run(card)

    def _find_run(self, card: RunCard) -> str | None:
        run_id = card.run_id
        row = self.db.execute("SELECT card FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None:
            _check_identity(run_id, row["card"], card)
            return run_id
        dataset = card.identity.get("dataset")
        rows = (self.db.execute("SELECT run_id, card FROM runs WHERE dataset = ? ORDER BY "
                                "created", (dataset,)) if dataset is not None else
                self.db.execute("SELECT run_id, card FROM runs ORDER BY created"))
        for r in rows.fetchall():
            if json.loads(r["card"]).get("identity") == card.identity:
                return r["run_id"]
        return None

    def _insert_run(self, card: RunCard) -> None:
        """Insert the run row unless it exists (inside the caller's transaction), then read it
        back: a row under this id with another identity is refused."""
        now = time.time()
        self.db.execute(
            "INSERT OR IGNORE INTO runs (run_id, method, dataset, card, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (card.run_id, card.identity["method"], card.identity["dataset"],
             json.dumps(card.to_json(), sort_keys=True), now, now),
        )
        row = self.db.execute("SELECT card FROM runs WHERE run_id = ?",
                              (card.run_id,)).fetchone()
        _check_identity(card.run_id, row["card"], card)

    def update_card(self, run_id: str, card: RunCard) -> None:
        """Replace a stored run's card by one with the same identity (its descriptive fields,
        e.g. the radius grid a resumed run asked for, change; the run id never does)."""
        if self.run_card(run_id).identity != card.identity:
            raise StoreError(f"run {run_id} exists with a different run card")
        with self._write() as db:
            db.execute("UPDATE runs SET card = ? WHERE run_id = ?",
                       (json.dumps(card.to_json(), sort_keys=True), run_id))

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

    def add_cert(self, run_id: str, cert: Certificate, *, card: RunCard | None = None) -> None:
        """Commit one certificate durably (its own transaction): a kill loses at most this one.
        With ``card``, the run row is created in the same transaction if it does not exist yet
        (a run is stored once its first certificate is)."""
        self.add_certs(run_id, [cert], card=card)

    def add_certs(self, run_id: str, certs: Iterable[Certificate], *,
                  card: RunCard | None = None) -> int:
        """Commit certificates in one transaction (imports: all of a file or none); ``card``
        as in :meth:`add_cert`. Claims on these images are dropped: they are done."""
        certs = list(certs)
        if not certs:
            return 0
        if card is not None and card.run_id != run_id:
            raise ValueError(f"card of run {card.run_id} given for run {run_id}")
        with self._write():
            if card is not None:
                self._insert_run(card)
            return self._insert_certs(run_id, certs)

    def add_to_runs(self, items: Sequence[tuple[str, Certificate, RunCard | None]], *,
                    claim: tuple[str, int] | None = None) -> int:
        """One image's certificates in several runs (a budget sweep: one per budget), in one
        transaction: all of them or none. Each item is (run id, certificate, card to create
        the run with or None); ``claim`` (claim key, image) is dropped in the same
        transaction."""
        with self._write():
            for run_id, cert, card in items:
                if card is not None:
                    if card.run_id != run_id:
                        raise ValueError(f"card of run {card.run_id} given for run {run_id}")
                    self._insert_run(card)
                self._insert_certs(run_id, [cert])
            if claim is not None:
                self.db.execute("DELETE FROM claims WHERE run_id = ? AND idx = ?", claim)
        return len(items)

    def runs_with(self, run_ids: Sequence[str], idx: int) -> set[str]:
        """Which of ``run_ids`` have a certificate of image ``idx``."""
        marks = ", ".join("?" * len(run_ids))
        rows = self.db.execute(f"SELECT run_id FROM certs WHERE idx = ? AND run_id IN ({marks})",
                               (idx, *run_ids))
        return {r[0] for r in rows}

    def add_runs(self, runs: Iterable[tuple[RunCard, Sequence[Certificate]]]) -> int:
        """Store runs (each created if missing) and their certificates in one transaction:
        all of them or, on any error, none (a merge)."""
        with self._write():
            total = 0
            for card, certs in runs:
                self._insert_run(card)
                total += self._insert_certs(card.run_id, certs) if certs else 0
        return total

    def _insert_certs(self, run_id: str, certs: Sequence[Certificate]) -> int:
        """Insert certificates inside the caller's transaction; drop their claims."""
        now = time.time()
        rows = []
        for cert in certs:
            values = cert.to_row()
            values["counts_select"] = json.dumps(values["counts_select"])
            values["counts_estimate"] = json.dumps(values["counts_estimate"])
            # A multi-stage procedure's record (the cascade's stages) as one JSON column.
            del values["stage"]
            detail = {k: values.pop(k) for k in ("outcome", "stages", "path")}
            values["detail"] = json.dumps({k: v for k, v in detail.items() if v}) \
                if any(detail.values()) else ""
            rows.append({**values, "run_id": run_id, "created": now})
        cols = ", ".join(rows[0])
        marks = ", ".join(f":{c}" for c in rows[0])
        self.db.executemany(f"INSERT OR REPLACE INTO certs ({cols}) VALUES ({marks})", rows)
        self.db.execute("UPDATE runs SET updated = ? WHERE run_id = ?", (now, run_id))
        self.db.executemany("DELETE FROM claims WHERE run_id = ? AND idx = ?",
                            [(run_id, r["idx"]) for r in rows])
        return len(rows)

    # ----- claims: processes on one run share its images -------------------------------------
    def claim(self, run_id: str, candidates: Sequence[int], owner: str, limit: int) -> Claim:
        """Claim, for ``owner``, up to ``limit`` of ``candidates`` (taken in their order) that
        are neither certified nor held by another live owner, in one transaction.

        Stale claims (:func:`claim_is_stale`) are taken over. The answer also says which of
        the candidates looked at are certified already and which other owners hold; when it
        claims nothing, it has looked at all of them.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        out = Claim()
        with self._write():
            now = time.time()
            for start in range(0, len(candidates), _IN_LIMIT):
                part = list(candidates[start : start + _IN_LIMIT])
                marks = ", ".join("?" * len(part))
                certified = {r[0] for r in self.db.execute(
                    f"SELECT idx FROM certs WHERE run_id = ? AND idx IN ({marks})",
                    (run_id, *part))}
                holders = {r[0]: (r[1], r[2]) for r in self.db.execute(
                    f"SELECT idx, owner, time FROM claims WHERE run_id = ? AND idx IN ({marks})",
                    (run_id, *part))}
                for idx in part:
                    if idx in certified:
                        out.done.add(idx)
                        continue
                    holder = holders.get(idx)
                    if (holder is None or holder[0] == owner
                            or claim_is_stale(holder[0], holder[1], now)):
                        out.claimed.append(idx)
                        if len(out.claimed) == limit:
                            break
                    else:
                        out.held.append(idx)
                if len(out.claimed) == limit:
                    break
            self.db.executemany(
                "INSERT OR REPLACE INTO claims (run_id, idx, owner, time) VALUES (?, ?, ?, ?)",
                [(run_id, idx, owner, now) for idx in out.claimed])
        return out

    def release(self, owner: str) -> None:
        """Drop every claim of ``owner`` (at the end of its work, finished or not)."""
        with self._write():
            self.db.execute("DELETE FROM claims WHERE owner = ?", (owner,))

    def claims(self, run_id: str | None = None) -> list[tuple[str, int, str, float]]:
        """Open claims as (run_id, idx, owner, time), optionally of one run."""
        query = "SELECT run_id, idx, owner, time FROM claims"
        rows = (self.db.execute(query + " WHERE run_id = ? ORDER BY idx", (run_id,))
                if run_id is not None else self.db.execute(query + " ORDER BY run_id, idx"))
        return [tuple(r) for r in rows]

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
        return write_export(Path(root or self.root), self.run_card(run_id),
                            self.certs(run_id, indices), summary_name, extra)


@dataclass
class Claim:
    """What :meth:`Store.claim` found: images now claimed, certified ones, others' ones."""

    claimed: list[int] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    held: list[int] = field(default_factory=list)  # by other live owners


def new_owner() -> str:
    """A claim owner: ``host:pid:token`` (the token tells apart owners in one process and a
    process that reuses a dead owner's pid)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


def claim_is_stale(owner: str, stamp: float, now: float | None = None) -> bool:
    """A claim is free again when it was not refreshed for ``CLAIM_STALE_S`` seconds (an
    owner on another host, or one that hangs) or its owner runs on this host and is dead."""
    now = time.time() if now is None else now
    if now - stamp > CLAIM_STALE_S:
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not _pid_alive(int(pid))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


class ClaimSession:
    """One process's claims on one run: claims images (:meth:`take`), keeps its claims fresh
    from a background thread (its own connection) while the images are certified, and
    releases them on exit, finished or not.

    Use as a context manager: ``with ClaimSession(store, run_id) as claims: ...``.
    """

    def __init__(self, store: Store, run_id: str, owner: str | None = None,
                 heartbeat_s: float = HEARTBEAT_S):
        self.store, self.run_id = store, run_id
        self.owner = owner or new_owner()
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, candidates: Sequence[int], limit: int) -> Claim:
        return self.store.claim(self.run_id, candidates, self.owner, limit)

    def __enter__(self) -> ClaimSession:
        self._thread = threading.Thread(target=self._beat, name="certbench-claims",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.store.release(self.owner)

    def _beat(self) -> None:
        db = None
        try:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    if db is None:
                        db = sqlite3.connect(self.store.path, timeout=5)
                    with db:
                        db.execute("UPDATE claims SET time = ? WHERE owner = ?",
                                   (time.time(), self.owner))
                except sqlite3.Error:  # busy or gone: try again at the next beat
                    continue
        finally:
            if db is not None:
                db.close()


@dataclass
class StoredRun:
    card: RunCard
    images: int  # certificates stored so far

    @property
    def run_id(self) -> str:
        return self.card.run_id


def write_export(root: Path, card: RunCard, certs: Sequence[Certificate],
                 summary_name: str = "summary.json", extra: Mapping[str, Any] | None = None
                 ) -> tuple[Path, RunSummary]:
    """``<root>/runs/<folder>/``: ``certs.tsv`` and the summary (plus ``extra`` fields)."""
    summary = RunSummary.from_certs(card, certs)
    folder = root / "runs" / card.folder_name
    write_tsv(folder / "certs.tsv", certs)
    write_json(folder / summary_name, {**summary.to_json(), **(extra or {})})
    return folder, summary


def write_tsv(path: Path, certs: Iterable[Certificate]) -> None:
    """Cohen's columns first (radius at full precision, time in seconds), extra columns after;
    a multi-stage run adds the accepting stage, the outcome and each stage's record (JSON)."""
    certs = list(certs)
    columns = TSV_COLUMNS + (STAGE_COLUMNS if any(c.stages for c in certs) else ()) \
        + (("path",) if any(c.path for c in certs) else ())
    lines = ["\t".join(columns)]
    for cert in certs:
        row = cert.to_row()
        row["stages"] = json.dumps(row["stages"], separators=(",", ":"))
        lines.append("\t".join(tsv_escape(row[col]) if col in TSV_TEXT else _fmt(row[col])
                               for col in columns))
    atomic_write(path, "\n".join(lines) + "\n")


def tsv_escape(text: str) -> str:
    r"""Free text as one TSV cell: a backslash, tab, line break or other control character
    (an image file named ``a\tb.png``) is written backslash-escaped (``\\``, ``\t``, ``\n``,
    ``\r``, else ``\xHH`` or ``\uHHHH``), so the file keeps one row per line and its columns."""
    return _TSV_SPECIAL.sub(_escape_char, str(text))


def _escape_char(match: re.Match) -> str:
    char = match.group()
    if char in _TSV_NAMED:
        return _TSV_NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def tsv_unescape(cell: str) -> str:
    """The text :func:`tsv_escape` wrote."""
    return _TSV_ESCAPED.sub(_unescape_char, cell)


def _unescape_char(match: re.Match) -> str:
    code = match.group(1)
    if len(code) > 1:  # xHH, uHHHH
        return chr(int(code[1:], 16))
    return {"t": "\t", "n": "\n", "r": "\r"}.get(code, code)


def _check_identity(run_id: str, stored_card: str, card: RunCard) -> None:
    if json.loads(stored_card).get("identity") != card.identity:
        raise StoreError(f"run {run_id} exists with a different run card")


def _schema_is_current(db: sqlite3.Connection) -> bool:
    """True when the store has every table and column this certbench writes (no write then)."""
    if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
        return False
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"runs", "certs", "claims"} <= tables:
        return False
    return "detail" in {r[1] for r in db.execute("PRAGMA table_info(certs)")}


def _add_detail_column(db: sqlite3.Connection) -> None:
    """Stores written before multi-stage procedures lack ``certs.detail``: add it (empty)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(certs)")}
    if "detail" not in columns:
        db.execute("ALTER TABLE certs ADD COLUMN detail TEXT NOT NULL DEFAULT ''")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Strict JSON: a NaN or infinity (e.g. samples/s of a claim without times) is null."""
    atomic_write(path, json.dumps(json_safe(data), indent=2, sort_keys=False,
                                   allow_nan=False) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file of this writer alone (name, pid and a random
    token), then replace ``path`` with it: concurrent writers never share a temporary file,
    and a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
