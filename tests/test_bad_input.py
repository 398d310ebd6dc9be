"""The bad-input battery: every user mistake, on every subcommand, is one stderr line naming the
problem and the fix, exit status 2, no traceback, and leaves the results store as it was.

A new subcommand or a newly found mistake adds a row to ``CASES``. ``{store}`` is a results
folder that already holds one run; ``{file}`` is a regular file; ``{bad_ckpt}`` and
``{bad_weights}`` are truncated weights; ``{tsv}`` is a valid Cohen TSV.
"""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest
import torch

from bench.store.database import DB_NAME
from tests.conftest import ROOT

RUN = ("run", "--dataset", "digits", "--subset", "dev", "--n", "10", "--n0", "5",
       "--max-images", "1", "--quiet", "--results", "{store}")
DUMMY = (*RUN, "--method", "dummy")
ODD = (*RUN, "--extra-registry", "{odd_models}", "--model")  # models that answer wrongly
TREE = (*RUN, "--dataset", "imagefolder", "--subset", "full", "--model",
        "digits-cnn-gaussian-0.25", "--data-dir")  # + a class-folder tree of {trees}

CASES = {
    # run: names, values, ranges
    "unknown method": ((*RUN, "--method", "nosuch"), "unknown method 'nosuch'"),
    "unknown dataset": ((*RUN, "--dataset", "nosuch"), "nosuch"),
    "unknown subset": ((*RUN, "--subset", "nosuch"), "nosuch"),
    "unknown procedure": ((*RUN, "--procedure", "nosuch"), "unknown procedure 'nosuch'"),
    "yaml that does not parse": ((*DUMMY, "--param", "label=[1"), "--param label"),
    "int param given text": ((*DUMMY, "--param", "label=abc"), "--param label: expected int"),
    "int param given a float": ((*DUMMY, "--param", "label=3.7"), "got 3.7"),
    "list param given a number": ((*DUMMY, "--param", "classes=5"), "--param classes"),
    "float param given text": ((*DUMMY, "--param", "threshold=abc"), "--param threshold"),
    "int param in e-notation": ((*DUMMY, "--param", "pixel=1e3"), "--param pixel"),
    "NaN float param in a range": ((*RUN, "--method", "multiscale", "--param", "p0=.nan"),
                                   "--param p0: expected a finite float in [0.5, 0.999]"),
    "infinite float param with a bound": ((*RUN, "--method", "ndc", "--param",
                                           "max_noise=.inf"), "--param max_noise: expected a "
                                          "finite float >= 0"),
    "NaN float param without a range": ((*DUMMY, "--param", "threshold=.nan"),
                                        "--param threshold: expected a finite float"),
    "unknown param": ((*DUMMY, "--param", "nosuch=1"), "unknown param"),
    "negative sigma": ((*RUN, "--sigma", "-1"), "--sigma"),
    "zero N": ((*RUN, "--n", "0"), "--n must be"),
    "alpha above 1": ((*RUN, "--alpha", "2"), "--alpha must be in (0, 1)"),
    "zero batch": ((*RUN, "--batch", "0"), "--batch must be at least 1"),
    "bad shard": ((*RUN, "--shard", "3/2"), "--shard"),
    "budget and N": ((*RUN, "--budget", "100"), "drop --n or --budget"),
    "results is a file": ((*RUN[:-1], "{file}"), "is a file, not a folder"),
    "results under a file": ((*RUN[:-1], "{file}/sub"), "is a file, not a folder"),
    "truncated weights": ((*RUN, "--model", "{bad_weights}"), "truncated or damaged"),
    "mistyped model role": ((*RUN, "--model", "clasifier=digits-cnn-macer-1"),
                            "method 'gaussian' uses no 'clasifier' model (did you mean "
                            "classifier=...?); its roles: classifier"),
    "model role the method lacks": ((*RUN, "--model", "denoiser=digits-cnn-macer-1"),
                                    "uses no 'denoiser' model; its roles: classifier"),
    "bare model on a method without a classifier": (
        (*RUN, "--method", "ndc", "--model", "digits-cnn-macer-1"),
        "--model digits-cnn-macer-1: method 'ndc' uses no 'classifier' model; its roles: "),
    "data dir on digits": ((*RUN, "--data-dir", "{file}.d"), "drop --data-dir"),
    "sigma on a cascade": ((*RUN, "--method", "multiscale", "--sigma", "0.5"),
                           "does not apply to the cascade"),
    "cohen on a cascade": ((*RUN, "--method", "multiscale", "--procedure", "cohen"),
                           "certified with the cascade procedure"),
    "cascade on dds": ((*RUN, "--method", "dds", "--procedure", "cascade"),
                       "cannot run under the cascade"),
    # run: models that fail or answer wrongly (the one-forward probe), devices this machine lacks
    "model raising in forward": ((*ODD, "raises-net"),
                                 "model raises-net does not accept the images as read (input "
                                 "(2, 1, 8, 8): 1 channels, 8x8): ValueError: this net wants"),
    "model answering one row per batch": ((*ODD, "one-row-net"),
                                          "model one-row-net: the network returned shape (1, 10) "
                                          "for a batch of 2 images"),
    **({"mps without MPS": ((*RUN, "--device", "mps"), "MPS (Apple GPU) is not available")}
       if not torch.backends.mps.is_available() else {}),
    "unknown device type": ((*RUN, "--device", "xla"), "unknown device 'xla'"),
    # run: class-folder trees
    "class folder linked to its parent": ((*TREE, "{trees}/loop"),
                                          "class folder '5' is a symbolic link to"),
    "class folder named by a superscript": ((*TREE, "{trees}/superscript"),
                                            "class folders '²' are not class indices"),
    "image beyond pillow's size limit": ((*TREE, "{trees}/huge"),
                                         "huge.png is too large for Pillow to open safely"),
    "image with NaN pixels": ((*TREE, "{trees}/nan"), "(0/0-nan.tiff) has NaN values"),
    "32-bit integer image": ((*TREE, "{trees}/int32"), "has 32-bit integer pixels"),
    # train
    "train out is a file": (("train", "--method", "clean", "--out", "{file}"),
                            "is a file, not a folder"),
    "nothing to train": (("train", "--method", "dds", "--out", "{tmp}"), "nothing to train"),
    "zero epochs": (("train", "--method", "clean", "--epochs", "0", "--out", "{tmp}"),
                    "--epochs must be at least 1"),
    "damaged training checkpoint": (("train", "--method", "clean", "--out", "{bad_ckpt}"),
                                    "truncated or damaged"),
    # compare, table, leaderboard, validate
    "zero budget": (("compare", "--budget", "0", "--results", "{store}", "--quiet"),
                    "--budget must be a positive number"),
    "unknown table format": (("table", "--format", "docx", "--results", "{store}"),
                             "invalid choice"),
    "leaderboard out is a file": (("leaderboard", "--out", "{file}", "--results", "{store}"),
                                  "is a file, not a folder"),
    "protocols of a missing folder": (("protocols", "--results", "{tmp}/typo"),
                                      "no results store or exported runs in"),
    "plot wider than matplotlib draws": (("plot", "--dataset", "digits", "--width", "1e6",
                                          "--out", "{tmp}/wide.png", "--results", "{store}"),
                                         "--width must be between 0 and 100 inches"),
    "ray address nobody answers": ((*RUN, "--executor", "ray", "--address", "127.0.0.1:1"),
                                   "cannot reach a Ray cluster at --address 127.0.0.1:1"),
    "empty ray address": ((*RUN, "--executor", "ray", "--address", ""),
                          "--address is empty"),
    "unknown method to validate": (("validate", "--method", "nosuch", "--no-smoke"),
                                   "nosuch"),
    # import
    "missing tsv": (("import", "--tsv", "{tmp}/nope.tsv", "--method", "x", "--dataset",
                     "digits", "--sigma", "0.25", "--results", "{store}"), "nope.tsv"),
    "import into a file": (("import", "--tsv", "{tsv}", "--method", "x", "--dataset", "digits",
                            "--sigma", "0.25", "--results", "{file}"), "not a folder"),
}


def store_content(folder: Path) -> list:
    db = folder / DB_NAME
    if not db.is_file():
        return []
    con = sqlite3.connect(db)
    try:
        return [con.execute("SELECT run_id, card FROM runs ORDER BY run_id").fetchall(),
                con.execute("SELECT run_id, idx, predict, radius FROM certs ORDER BY run_id, idx")
                .fetchall()]
    finally:
        con.close()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    from bench.cli import main

    base = tmp_path_factory.mktemp("bad-input")
    store = base / "store"
    assert main(["run", "--dataset", "digits", "--subset", "dev", "--n", "10", "--n0", "5",
                 "--max-images", "1", "--quiet", "--results", str(store)]) == 0
    (base / "file").write_text("a file, not a folder\n")
    weights = (ROOT / "bench" / "zoo" / "digits-cnn-clean.safetensors").read_bytes()
    (base / "bad.safetensors").write_bytes(weights[:100])
    ckpt = base / "ckpt"
    ckpt.mkdir()
    (ckpt / "digits-cnn-clean.ckpt").write_bytes(weights[:300])
    (base / "claim.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                                    "0\t7\t7\t0.5\t1\t0.1\n")
    return {"store": store, "file": base / "file", "bad_weights": base / "bad.safetensors",
            "bad_ckpt": ckpt, "tsv": base / "claim.tsv", "tmp": base,
            "odd_models": odd_models(base / "odd"), "trees": odd_trees(base / "trees")}


ODD_NETS = """import torch
from torch import nn


class Odd(nn.Module):
    def __init__(self, kind, num_classes):
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.kind, self.num_classes = kind, num_classes

    def forward(self, x):
        if self.kind == "raises":
            raise ValueError("this net wants 28x28 images")
        return torch.zeros(1, self.num_classes)


def raises(*, num_classes, in_channels, image_size):
    return Odd("raises", num_classes)


def one_row(*, num_classes, in_channels, image_size):
    return Odd("one row", num_classes)
"""


def odd_models(folder: Path) -> Path:
    """A registry of user architectures that raise, or answer one row per batch."""
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "odd_nets.py").write_text(ODD_NETS)
    save_file({"fc.weight": torch.zeros(1, 1), "fc.bias": torch.zeros(1)},
              str(folder / "odd.safetensors"))
    entry = f"source: state_dict, path: {folder / 'odd.safetensors'}"
    (folder / "odd.yaml").write_text(
        "models:\n"
        f"  raises-net: {{arch: 'odd_nets:raises', {entry}}}\n"
        f"  one-row-net: {{arch: 'odd_nets:one_row', {entry}}}\n")
    return folder / "odd.yaml"


def odd_trees(root: Path) -> Path:
    """Class-folder trees of 8x8 grayscale images, each with one thing wrong: a class folder
    linked to its parent, one named '²', an image whose header claims 14000x14000 pixels, a
    float image with NaN pixels, an image of 32-bit integers."""
    import numpy as np
    from PIL import Image

    def tree(name: str, extra: str | None = None) -> Path:
        for c in ("0", "1") + ((extra,) if extra else ()):
            (root / name / c).mkdir(parents=True)
            Image.new("L", (8, 8), color=40 * int(c.isdigit())).save(root / name / c / "a.png")
        return root / name

    (tree("loop") / "5").symlink_to(".")
    tree("superscript", "²")
    huge = tree("huge") / "1" / "huge.png"
    Image.new("L", (1, 1)).save(huge)
    data = bytearray(huge.read_bytes())  # IHDR: width and height at 16..24, its crc at 29
    data[16:24] = (14000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    huge.write_bytes(bytes(data))
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    pixels[2, 3] = np.nan
    Image.fromarray(pixels).save(tree("nan") / "0" / "0-nan.tiff")  # first, for --max-images 1
    Image.fromarray(np.zeros((8, 8), dtype=np.int32)).save(tree("int32") / "1" / "wide.tiff")
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_mistake_is_one_line_exit_2_and_the_store_is_untouched(cli, places, case):
    args, message = CASES[case]
    argv = [a.format(**places) for a in args]
    before = store_content(places["store"])
    code, out, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    # (validate reports a failing entry as its "FAIL <entry>: ..." line)
    assert len(lines) == 1 and lines[0].startswith(("certbench: error:", "FAIL ")), err
    assert "Traceback" not in err and message in lines[0], lines[0]
    assert store_content(places["store"]) == before


def test_a_damaged_store_is_one_line(cli, tmp_path):
    store = tmp_path / "store"
    assert cli("run", "--subset", "dev", "--n", "10", "--n0", "5", "--max-images", "2",
               "--quiet", "--results", store)[0] == 0
    db = store / DB_NAME
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[page:3 * page] = b"\xff" * (2 * page)  # wipe the pages after the header
    db.write_bytes(bytes(data))
    code, out, err = cli("run", "--subset", "dev", "--n", "10", "--n0", "5", "--max-images", "3",
                         "--quiet", "--results", store)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "another --results" in err


def test_a_corrupt_image_names_the_file(tmp_path):
    """An image folder with a broken PNG: a DataError naming the file, not a PIL traceback."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    from bench.data.loaders import _FolderDataset
    from bench.data.specs import spec
    from bench.errors import DataError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    folder = ImageFolder(str(tmp_path), transform=ToTensor())
    ds = _FolderDataset(spec("digits").info, "test", folder)
    with pytest.raises(DataError, match="broken.png.*replace or remove the file"):
        ds[0]
