"""``merge`` of shard stores, ``--shard auto``, the store's journal mode on network
filesystems, and a damaged store.

Merging never chooses between two different certificates of one image, never merges runs
whose identity cards differ, writes nothing when it refuses, and is idempotent.
(tests/test_faults.py merges three shards of a real run and compares with the unsharded run.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from bench.commands.common import shard, slurm_shard
from bench.errors import StoreError
from bench.running.plan import RunOptions
from bench.running.runner import run
from bench.store.database import (
    DB_NAME,
    JOURNAL_ENV,
    Store,
    journal_mode,
    mount_of,
    network_filesystem,
)
from bench.store.merge import format_indices, identity_difference, subset_indices
from tests.conftest import ROOT

RUN = {"method": "gaussian", "dataset": "digits", "subset": "dev", "n": 100, "n0": 10,
       "progress": False}


def _run(results, **kw):
    return run(RunOptions(**{**RUN, **kw}, results=results))


def _tsv(results):
    return next((results / "runs").iterdir()) / "certs.tsv"


def _rows(results, query="SELECT run_id, idx FROM certs ORDER BY run_id, idx"):
    with sqlite3.connect(results / DB_NAME) as con:
        return con.execute(query).fetchall()


def _strip_time(path):
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    col = lines[0].index("time")
    return ["\t".join(v for i, v in enumerate(line) if i != col) for line in lines]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shard stores (--shard 0/2 and 1/2, 4 images each) and the unsharded store of the
    same 8 images."""
    root = tmp_path_factory.mktemp("shards")
    for i in range(2):
        _run(root / f"shard-{i}", shard=(i, 2), max_images=4)
    _run(root / "whole", max_images=8)
    return root


def _copy(shards, name, tmp_path):
    shutil.copytree(shards / name, tmp_path / name)
    return tmp_path / name


# ----- merge --------------------------------------------------------------------------------
def test_merge_two_shards_reports_and_equals_the_unsharded_run(shards, tmp_path, cli):
    out = tmp_path / "merged"
    code, text, err = cli("merge", shards / "shard-0", shards / "shard-1", "--results", out)
    assert code == 0, err
    assert f"{shards / 'shard-0'}: 4 merged" in text and f"{shards / 'shard-1'}: 4 merged" in text
    assert "duplicate" not in text
    # dev is images 0..49; the 8 certified are 0..7, so 8..49 are gaps.
    assert "8/50 images" in text and "gaps: 42 of the subset's 50 images" in text
    assert "8-49" in text
    assert _strip_time(_tsv(out)) == _strip_time(_tsv(shards / "whole"))
    assert [idx for _, idx in _rows(out)] == list(range(8))


def test_merge_again_is_idempotent(shards, tmp_path, cli):
    out = tmp_path / "merged"
    srcs = (shards / "shard-0", shards / "shard-1")
    assert cli("merge", *srcs, "--results", out)[0] == 0
    first = _tsv(out).read_bytes()
    rows = _rows(out, "SELECT * FROM certs ORDER BY idx")
    code, text, _ = cli("merge", *srcs, "--results", out)
    assert code == 0
    assert f"{out} (target): 8 already there" in text
    assert "0 merged, 4 duplicates (identical, kept once)" in text
    assert _rows(out, "SELECT * FROM certs ORDER BY idx") == rows  # not even rewritten
    assert _tsv(out).read_bytes() == first


def test_duplicate_certificates_are_kept_once(shards, tmp_path, cli):
    """Two sources holding the same image (a shard run twice, or overlapping shards)."""
    out = tmp_path / "merged"
    code, text, _ = cli("merge", shards / "shard-0", shards / "whole", "--results", out)
    assert code == 0
    assert f"{shards / 'whole'}: 4 merged, 4 duplicates (identical, kept once)" in text
    idx = [i for _, i in _rows(out)]
    assert idx == list(range(8))  # each once
    tsv = _tsv(out).read_text().splitlines()[1:]
    assert [int(line.split("\t")[0]) for line in tsv] == list(range(8))


def _set_radius(results, idx, radius):
    with sqlite3.connect(results / DB_NAME) as con:
        con.execute("UPDATE certs SET radius = ? WHERE idx = ?", (radius, idx))


def test_conflicting_certificates_are_refused_and_nothing_is_written(shards, tmp_path, cli):
    other = _copy(shards, "whole", tmp_path)
    _set_radius(other, 2, 0.123)
    out = tmp_path / "merged"
    code, text, err = cli("merge", shards / "shard-0", other, "--results", out)
    assert code == 2 and text == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    run_id = _rows(other)[0][0]
    assert f"run {run_id} image 2:" in err
    assert str(shards / "shard-0") in err and str(other) in err
    assert "radius" in err and "0.123" in err and "nothing written" in err
    assert not out.exists()  # a refused merge creates nothing
    # Against the target: the conflicting copy merged into a store holding the original.
    assert cli("merge", shards / "shard-0", "--results", out)[0] == 0
    before = _rows(out, "SELECT * FROM certs ORDER BY idx")
    code, _, err = cli("merge", other, "--results", out)
    assert code == 2 and f"{out} and {other} hold different certificates" in err
    assert _rows(out, "SELECT * FROM certs ORDER BY idx") == before


def test_only_wall_clock_time_and_device_text_may_differ(shards, tmp_path, cli):
    other = _copy(shards, "shard-0", tmp_path)
    with sqlite3.connect(other / DB_NAME) as con:
        con.execute("UPDATE certs SET time = time + 5, device = 'cuda:1 (another host)'")
    code, text, err = cli("merge", shards / "shard-0", other, "--results", tmp_path / "m")
    assert code == 0, err
    assert "4 duplicates" in text
    with sqlite3.connect(other / DB_NAME) as con:
        con.execute("UPDATE certs SET count = count - 1 WHERE idx = 0")
    code, _, err = cli("merge", shards / "shard-0", other, "--results", tmp_path / "m2")
    assert code == 2 and "image 0:" in err and "count" in err


def _edit_identity(results, key, value):
    with sqlite3.connect(results / DB_NAME) as con:
        (card,) = con.execute("SELECT card FROM runs").fetchone()
        card = json.loads(card)
        card["identity"][key] = value  # the run id stays the stored one
        con.execute("UPDATE runs SET card = ?", (json.dumps(card),))


def test_a_run_id_with_another_identity_is_refused(shards, tmp_path, cli):
    other = _copy(shards, "shard-1", tmp_path)
    _edit_identity(other, "alpha", 0.01)
    out = tmp_path / "merged"
    code, _, err = cli("merge", shards / "shard-0", other, "--results", out)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(shards / "shard-0") in err and str(other) in err and "'alpha'" in err
    assert "0.001 vs 0.01" in err and not out.exists()
    # ... and against the target's card.
    assert cli("merge", shards / "shard-0", "--results", out)[0] == 0
    code, _, err = cli("merge", other, "--results", out)
    assert code == 2 and f"the cards of {out} and {other} differ" in err and "'alpha'" in err


def test_identity_difference_names_nested_keys():
    a = {"n": 1, "noise": {"chunk": 1024, "scheme": "x"}}
    assert identity_difference(a, {**a, "noise": {"chunk": 1024, "scheme": "y"}}) == (
        "noise.scheme", "x", "y")
    assert identity_difference(a, {**a, "procedure": "cascade"}) == (
        "procedure", "<absent>", "cascade")
    assert identity_difference(a, dict(a)) is None


def test_missing_source_and_target_as_source_are_refused(shards, tmp_path, cli):
    code, _, err = cli("merge", tmp_path / "nope", "--results", tmp_path / "m")
    assert code == 2 and "holds no results store" in err and str(tmp_path / "nope") in err
    out = _copy(shards, "shard-0", tmp_path)
    code, _, err = cli("merge", out, "--results", out)
    assert code == 2 and "is the target store itself" in err


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_old_schema(results):
    """The store as an older certbench wrote it: no certs.detail column, no claims table."""
    con = sqlite3.connect(results / DB_NAME)
    cols = ", ".join(r[1] for r in con.execute("PRAGMA table_info(certs)") if r[1] != "detail")
    con.executescript(f"CREATE TABLE old AS SELECT {cols} FROM certs; DROP TABLE certs; "
                      "ALTER TABLE old RENAME TO certs; DROP TABLE claims; "
                      "PRAGMA user_version = 0;")
    con.close()  # the last connection: the WAL is checkpointed into the file


def test_sources_are_read_only_an_old_schema_is_read_not_migrated(shards, tmp_path, cli):
    old = _copy(shards, "shard-0", tmp_path)
    _make_old_schema(old)
    before = _sha256(old / DB_NAME)
    code, _, err = cli("merge", old, shards / "shard-1", "--results", tmp_path / "merged")
    assert code == 0, err
    assert _sha256(old / DB_NAME) == before
    assert _strip_time(_tsv(tmp_path / "merged")) == _strip_time(_tsv(shards / "whole"))


def test_an_empty_store_file_is_refused_as_a_source(shards, tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / DB_NAME).write_bytes(b"")
    code, out, err = cli("merge", shards / "shard-0", empty, "--results", tmp_path / "merged")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert f"{empty / DB_NAME} is an empty file, not a results store" in err
    assert (empty / DB_NAME).read_bytes() == b"" and not (tmp_path / "merged").exists()


def test_a_refused_merge_leaves_the_target_as_it_was(shards, tmp_path, cli):
    target = _copy(shards, "shard-0", tmp_path)
    shutil.rmtree(target / "runs")
    (target / "runs").write_text("not the exports folder\n")
    before = _rows(target, "SELECT * FROM certs ORDER BY idx")
    code, out, err = cli("merge", shards / "shard-1", "--results", target)
    assert _rows(target, "SELECT * FROM certs ORDER BY idx") == before
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert f"{target / 'runs'} is a file" in err and "nothing written" in err


def test_another_radius_grid_is_kept_out_with_a_note(shards, tmp_path, cli):
    other = _copy(shards, "shard-1", tmp_path)
    with sqlite3.connect(other / DB_NAME) as con:
        card = json.loads(con.execute("SELECT card FROM runs").fetchone()[0])
        con.execute("UPDATE runs SET card = ?", (json.dumps({**card, "radius_grid": [0, 0.3]}),))
    code, out, err = cli("merge", shards / "shard-0", other, "--results", tmp_path / "merged")
    assert code == 0, err
    assert (f"note: {other} reports on another radius grid (0,0.3); kept the one of "
            f"{shards / 'shard-0'} (0,0.25,0.5") in out


def _obeying_permissions() -> list[str]:
    """The argv prefix of a process that obeys file permissions: root drops the capabilities
    that let it write a read-only file (setpriv), others need nothing."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: file permissions do not apply")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


READER = """import sys
from bench.cli import main
for argv in {argvs!r}:
    print("exit", main(argv), flush=True)
    print("--", file=sys.stderr, flush=True)
"""


def test_a_read_only_store_is_read_by_table_plot_protocols_and_merge(shards, tmp_path):
    folder = _copy(shards, "shard-0", tmp_path)
    paths = [folder, *folder.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = _sha256(folder / DB_NAME)
    argvs = [["table", "--results", str(folder)],
             ["plot", "--dataset", "digits", "--out", str(tmp_path / "p.svg"), "--results",
              str(folder)],
             ["protocols", "--results", str(folder)],
             ["merge", str(folder), "--results", str(tmp_path / "merged")]]
    try:
        proc = subprocess.run([*_obeying_permissions(), sys.executable, "-c",
                               READER.format(argvs=argvs)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # this checkout
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)
    errors = proc.stderr.split("--\n")
    assert "Traceback" not in proc.stderr and "cannot open" not in proc.stderr, proc.stderr
    assert proc.stdout.count("exit 0") == 3, (proc.stdout, proc.stderr)
    assert "no pair of a fixed-N and a sequential run" in errors[2]  # protocols: read, no pair
    assert (tmp_path / "p.svg").is_file() and _rows(tmp_path / "merged") == _rows(folder)
    assert _sha256(folder / DB_NAME) == before


def test_subset_indices_from_the_card_without_loading_images(shards):
    store = Store(shards / "whole")
    try:
        (stored,) = store.runs_of()
    finally:
        store.close()
    assert subset_indices(stored.card.identity) == list(range(50))
    full = {"dataset": "digits", "subset": "full", "subset_size": 3}
    from bench.data.specs import subset_hash

    assert subset_indices({**full, "subset_hash": subset_hash([0, 1, 2])}) == [0, 1, 2]
    assert subset_indices({**full, "subset_hash": "wrong"}) is None
    assert subset_indices({"dataset": "unknown", "subset": "x", "subset_size": 3}) is None


def test_format_indices():
    assert format_indices([2, 5, 8, 11]) == "2-11/3"
    assert format_indices([1, 2, 3, 7, 9]) == "1-3, 7, 9"
    assert format_indices(list(range(0, 200, 2)) + [201]) == "0-198/2, 201"
    assert format_indices([]) == ""


# ----- --shard auto -------------------------------------------------------------------------
SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
         "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")


@pytest.fixture
def slurm(monkeypatch):
    for name in SLURM:
        monkeypatch.delenv(name, raising=False)

    def set_(**values):
        for key, value in values.items():
            monkeypatch.setenv(f"SLURM_ARRAY_TASK_{key.upper()}", str(value))

    return set_


@pytest.mark.parametrize(("env", "expected"), [
    ({"id": 0, "count": 4, "min": 0, "max": 3}, (0, 4)),
    ({"id": 3, "count": 4, "min": 0, "max": 3}, (3, 4)),
    ({"id": 1, "count": 4, "min": 1, "max": 4}, (0, 4)),  # --array=1-4
    ({"id": 4, "min": 1, "max": 4}, (3, 4)),  # no COUNT: from MIN/MAX
    ({"id": 2, "count": 3}, (2, 3)),  # no MIN: ids from 0
    ({"id": 14, "count": 8, "min": 0, "max": 14, "step": 2}, (7, 8)),  # --array=0-15:2
])
def test_shard_auto_reads_the_slurm_array(slurm, env, expected):
    slurm(**env)
    assert shard("auto") == expected


@pytest.mark.parametrize(("env", "needle"), [
    ({}, "SLURM_ARRAY_TASK_ID is not set"),
    ({"id": 3}, "SLURM_ARRAY_TASK_COUNT (or SLURM_ARRAY_TASK_MIN"),
    ({"id": "x", "count": 2}, "is not a number"),
    ({"id": 7, "count": 3, "min": 1, "max": 7}, "not evenly spaced"),  # --array=1,3,7
    ({"id": 5, "count": 4, "min": 1, "max": 4}, "not a shard of 4: it lies outside the array's "
                                                "ids 1..4"),
    ({"id": 9, "count": 4}, "outside the array's ids 0..3"),
])
def test_shard_auto_without_a_usable_array_is_refused(slurm, env, needle):
    slurm(**env)
    with pytest.raises(argparse.ArgumentTypeError) as info:
        shard("auto")
    assert needle in str(info.value) and "--shard I/K" in str(info.value)
    if "outside" in needle:  # evenly spaced, just out of range: not blamed on the spacing
        assert "not evenly spaced" not in str(info.value)


def test_shard_auto_on_the_command_line(slurm, tmp_path, cli):
    code, out, err = cli("run", "--shard", "auto", "--results", tmp_path, "--quiet")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "argument --shard: --shard auto needs a SLURM job array" in err
    slurm(id=2, min=1, max=2)  # the second of tasks 1-2: shard 1/2
    code, out, err = cli("run", "--shard", "auto", "--n", 100, "--n0", 10, "--max-images", 3,
                         "--subset", "dev", "--results", tmp_path, "--quiet")
    assert code == 0, err
    assert [idx for _, idx in _rows(tmp_path)] == [1, 3, 5]


def test_slurm_shard_takes_an_environment_mapping():
    assert slurm_shard({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "6"}) == (5, 6)


# ----- network filesystems: rollback journal instead of WAL ---------------------------------
MOUNTS = r"""/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
filer:/export/home /home nfs4 rw,vers=4.2 0 0
/dev/sdb1 /home/alice/scratch ext4 rw 0 0
10.0.0.1@o2ib:/lfs /lustre lustre rw,flock 0 0
gpfs0 /gpfs gpfs rw 0 0
//nas/share /mnt/my\040share cifs rw 0 0
alice@host:/data /mnt/sshfs fuse.sshfs rw 0 0
beegfs_nodev /mnt/beegfs beegfs rw 0 0
filer:/old /mnt/old nfs rw 0 0
"""


@pytest.mark.parametrize(("path", "fstype"), [
    ("/home/alice/results", "nfs4"),
    ("/home", "nfs4"),
    ("/home/alice/scratch/results", None),  # a local disk mounted inside the NFS home
    ("/homework/results", None),  # a prefix of the string, not of the path
    ("/lustre/project/results", "lustre"),
    ("/gpfs/x", "gpfs"),
    ("/mnt/my share/results", "cifs"),  # \040 is a space
    ("/mnt/sshfs/r", "fuse.sshfs"),
    ("/mnt/beegfs/r", "beegfs"),
    ("/mnt/old/r", "nfs"),
    ("/tmp/results", None),
    ("/var/results", None),
])
def test_network_filesystem_detection(path, fstype):
    assert network_filesystem(path, MOUNTS) == fstype
    mode, why = journal_mode(path, env={}, mounts=MOUNTS)
    assert mode == ("delete" if fstype else "wal")
    if fstype:
        assert fstype in why


def test_mount_of_takes_the_later_of_two_mounts_on_one_point():
    mounts = "/dev/a / ext4 rw 0 0\nsrv:/x /data nfs rw 0 0\n/dev/b /data xfs rw 0 0\n"
    assert mount_of("/data/r", mounts) == ("/data", "xfs")
    assert mount_of("/data/r", "") is None


def test_journal_mode_can_be_forced(monkeypatch):
    nfs = "/dev/a / ext4 rw 0 0\nsrv:/x /data nfs rw 0 0\n"
    assert journal_mode("/data/r", env={JOURNAL_ENV: "wal"}, mounts=nfs)[0] == "wal"
    assert journal_mode("/tmp/r", env={JOURNAL_ENV: "DELETE"}, mounts=nfs)[0] == "delete"
    assert journal_mode("/data/r", env={JOURNAL_ENV: "auto"}, mounts=nfs)[0] == "delete"
    with pytest.raises(StoreError, match="must be auto, wal or delete"):
        journal_mode("/data/r", env={JOURNAL_ENV: "truncate"}, mounts=nfs)


def test_a_run_and_a_merge_in_delete_journal_mode(shards, tmp_path, monkeypatch, cli):
    """A store opened with the rollback journal (as on NFS) certifies, resumes and merges."""
    monkeypatch.setenv(JOURNAL_ENV, "delete")
    out = tmp_path / "nfs"
    first = _run(out, max_images=3)
    again = _run(out, max_images=8)
    assert (first.new_images, again.new_images) == (3, 5)
    store = Store(out)
    try:
        assert store.journal == "delete"
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        store.close()
    assert not (out / f"{DB_NAME}-wal").exists()
    assert _strip_time(_tsv(out)) == _strip_time(_tsv(shards / "whole"))
    merged = tmp_path / "merged"
    code, text, err = cli("merge", shards / "shard-0", shards / "shard-1", "--results", merged)
    assert code == 0, err
    assert _strip_time(_tsv(merged)) == _strip_time(_tsv(shards / "whole"))
    with sqlite3.connect(merged / DB_NAME) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_bad_journal_variable_is_one_line(tmp_path, monkeypatch, cli):
    monkeypatch.setenv(JOURNAL_ENV, "memory")
    code, _, err = cli("run", "--max-images", 1, "--n", 100, "--results", tmp_path, "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and JOURNAL_ENV in err


# ----- a damaged store ----------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_is_one_line_and_left_untouched(shards, tmp_path, cli, damage):
    results = _copy(shards, "shard-0", tmp_path)
    db = results / DB_NAME
    data = db.read_bytes()
    db.write_bytes(b"not a database at all " * 200 if damage == "garbage" else data[:4096])
    before = db.read_bytes()
    for argv in (("run", "--n", 100, "--max-images", 2, "--results", results, "--quiet"),
                 ("merge", results, "--results", tmp_path / "merged")):
        code, out, err = cli(*argv)
        assert code == 2 and out == "", argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"the results store {db} is damaged" in err
        assert f"mv {db} {db}.damaged" in err and "python -m bench import" in err
        assert db.read_bytes() == before  # never rewritten, never replaced by a new store
    assert not (tmp_path / "merged").exists()
