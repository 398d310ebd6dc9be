"""bench.evaluate (an in-memory model through the CLI's harness) and batched Smooth calls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bench
from bench import Smooth
from bench.data.loaders import load_split
from bench.errors import ConfigError
from bench.running.roles import python_model_sha256
from bench.store.database import Store

N0, N, ALPHA, BATCH = 20, 300, 0.001, 128


class TinyNet(torch.nn.Module):
    """A linear digits classifier; normalization is its own (it gets noisy [0, 1] images)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(64, 10)
        self.register_buffer("mean", torch.tensor(0.3))

    def forward(self, x):
        return self.fc((x - self.mean).flatten(1) * 4)


def run(model, tmp_path, **kw):
    return bench.evaluate(model, dataset="digits", sigma=0.25, n=N, n0=N0, max_images=6,
                          batch=BATCH, results=tmp_path, progress=False, device="cpu", **kw)


def test_evaluate_is_the_harness_run(tmp_path):
    model = TinyNet()
    df = run(model, tmp_path)
    assert len(df) == 1
    run_id = df.attrs["run_id"]
    assert df.loc[0, "run_id"] == run_id and df.attrs["new_images"] == 6

    # The numbers are the stored run's summary (and its export).
    store = Store(tmp_path)
    try:
        summary = store.summary(run_id)
        certs = store.certs(run_id)
    finally:
        store.close()
    assert df.loc[0, "images"] == summary.images == 6
    grid = summary.card.radius_grid
    assert [c for c in df.columns if c.startswith("acc@")] == [f"acc@{r:g}" for r in grid]
    for r in grid:
        assert df.loc[0, f"acc@{r:g}"] == summary.accuracy[r]
    assert df.loc[0, "acr"] == summary.acr and df.loc[0, "abstain"] == summary.abstain
    exported = json.loads((df.attrs["folder"] / "summary.json").read_text())
    assert exported["run_id"] == run_id
    assert exported["metrics"]["acr"] == pytest.approx(summary.acr)
    assert df.attrs["summary"].acr == summary.acr

    # The card says where the model came from; its hash is part of the identity.
    sha, what = python_model_sha256(model)
    assert what == "state_dict"
    role = summary.card.extra["model_roles"]["classifier"]
    assert role == {"name": "python:TinyNet", "sha256": sha, "hash_of": "state_dict"}
    assert summary.card.identity["models"] == {"python:TinyNet": sha}
    assert summary.card.identity["method"] == "gaussian"
    # One run-to-DataFrame path: the row load_results gives for the run, column for column.
    loaded = bench.load_results(tmp_path)
    assert list(df.columns) == list(loaded.columns)
    assert df.iloc[0].equals(loaded[loaded.run_id == run_id].iloc[0])

    # Same certificates as Smooth on the digits test images, with index = the image's index.
    ds = load_split("digits")
    smooth = Smooth(model, 10, 0.25)
    assert [c.idx for c in certs] == list(range(6))
    for c in certs:
        x, label = ds[c.idx]
        ref = smooth.certify_record(x, N0, N, ALPHA, BATCH, seed=0, index=c.idx)
        assert (c.prediction, c.radius, c.counts_select, c.counts_estimate, c.label) == \
            (ref.prediction, ref.radius, ref.counts_select, ref.counts_estimate, int(label))

    # The same weights resume (nothing new); other weights are another run.
    model.train()
    again = run(model, tmp_path)
    assert model.training  # its mode is given back
    assert again.attrs["run_id"] == run_id and again.attrs["new_images"] == 0
    with torch.no_grad():
        model.fc.weight[0, 0] += 0.5
    changed = run(model, tmp_path)
    new_sha = python_model_sha256(model)[0]
    assert new_sha != sha
    assert changed.attrs["run_id"] != run_id and changed.attrs["new_images"] == 6
    assert changed.attrs["summary"].card.identity["models"] == {"python:TinyNet": new_sha}


def test_evaluate_a_label_callable(tmp_path):
    net = TinyNet(seed=1).eval()

    def predict_labels(x):  # returns labels, as numpy (an ART-style callable)
        with torch.no_grad():
            return net(x).argmax(1).numpy()

    df = bench.evaluate(predict_labels, dataset="digits", sigma=0.25, n=N, n0=N0, max_images=3,
                        batch=BATCH, results=tmp_path, progress=False, device="cpu")
    card = df.attrs["summary"].card
    role = card.extra["model_roles"]["classifier"]
    assert role["name"] == f"python:{predict_labels.__qualname__}"
    assert role["hash_of"] == "qualified_name"
    assert role["sha256"] == python_model_sha256(predict_labels)[0]
    store = Store(tmp_path)
    try:
        certs = store.certs(df.attrs["run_id"])
    finally:
        store.close()
    ds = load_split("digits")
    # Smooth takes labels as a tensor: the harness also takes numpy (and lists)
    smooth = Smooth(lambda z: torch.as_tensor(predict_labels(z)), 10, 0.25)
    for c in certs:
        ref = smooth.certify_record(ds[c.idx][0], N0, N, ALPHA, BATCH, seed=0, index=c.idx)
        assert (c.prediction, c.radius, c.counts_estimate) == \
            (ref.prediction, ref.radius, ref.counts_estimate)


def test_evaluate_refuses_bad_requests(tmp_path):
    with pytest.raises(ConfigError, match="12 classes but digits has 10"):
        run(TinyNet(), tmp_path, num_classes=12)
    with pytest.raises(ConfigError, match="callable"):
        run(object(), tmp_path)
    with pytest.raises(ConfigError, match="evaluate's own"):
        run(TinyNet(), tmp_path, method="clean")
    with pytest.raises(ConfigError, match="unknown option"):
        run(TinyNet(), tmp_path, epochs=3)
    for name in ("certification", "protocol"):  # protocol=: certification's first name
        with pytest.raises(ConfigError, match="unknown --certification 'bogus'"):
            run(TinyNet(), tmp_path, **{name: "bogus"})
    assert not (tmp_path / "runs").exists()


def test_evaluate_prepares_its_run_once(tmp_path, monkeypatch):
    from bench.running import evaluate as evaluate_mod
    from bench.running import runner

    calls = []

    def counting(opts, data=None):
        calls.append(opts.method)
        return prepare(opts, data)

    prepare = evaluate_mod.prepare
    monkeypatch.setattr(evaluate_mod, "prepare", counting)
    monkeypatch.setattr(runner, "prepare", counting)
    with pytest.raises(ConfigError, match="would not be certified"):
        run(TinyNet(), tmp_path, method_name="dummy")
    assert calls == ["dummy"]
    df = bench.evaluate(TinyNet(), dataset="digits", sigma=0.25, n=N, n0=N0, max_images=1,
                        batch=BATCH, results=tmp_path, progress=False, device="cpu")
    assert calls == ["dummy", "gaussian"] and df.attrs["new_images"] == 1


def one_row(x):  # one row of logits per batch: would count 1 sample a batch (all abstain)
    return torch.zeros(1, 10)


def two_rows_per_image(x):
    return torch.zeros(2 * x.shape[0], 10)


def nothing(x):
    return None


@pytest.mark.parametrize("model, shape", [(one_row, "shape (1, 10)"),
                                          (two_rows_per_image, "shape (4, 10)"),
                                          (nothing, "NoneType")])
def test_a_model_answering_another_batch_is_one_line_before_any_run(tmp_path, model, shape):
    """Found by the probe (a batch of two copies of the first image): the model and what it
    returned are named; nothing is certified, no run is stored."""
    from bench.errors import ModelError

    with pytest.raises(ModelError) as err:
        run(model, tmp_path)
    assert f"model python:{model.__qualname__} returned {shape} for a batch of 2 " \
        "images" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_a_model_answering_another_batch_later_is_caught_at_that_call():
    """The same check at every call of the harness, not only the probe."""
    from bench.errors import ModelError
    from bench.running.roles import PythonNet

    calls = []

    def flaky(x):  # right at first, one row per batch from the third call on
        calls.append(1)
        return torch.zeros(x.shape[0] if len(calls) < 3 else 1, 10)

    smooth = Smooth(PythonNet(flaky, 10), 10, 0.25)
    with pytest.raises(ModelError, match=r"python:.*flaky returned shape \(1, 10\) for a "
                                         r"batch of 50 images"):
        smooth.certify(torch.rand(1, 8, 8), 10, 200, ALPHA, 50)
    bare = Smooth(lambda x: torch.zeros(1, dtype=torch.long), 10, 0.25)
    with pytest.raises(ModelError, match=r"returned shape \(1,\) for a batch of 10 noisy"):
        bare.certify(torch.rand(1, 8, 8), 10, 200, ALPHA, 50)


def test_parameter_hash_is_canonical():
    a, b = TinyNet(seed=3), TinyNet(seed=3)
    assert python_model_sha256(a) == python_model_sha256(b)
    b.mean.fill_(0.31)  # buffers count
    assert python_model_sha256(a)[0] != python_model_sha256(b)[0]
    c = TinyNet(seed=3).double()  # so does the dtype
    assert python_model_sha256(a)[0] != python_model_sha256(c)[0]


# ----- batches of images through Smooth --------------------------------------------------------
def images(b: int) -> torch.Tensor:
    return torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(7))


def test_batch_certify_equals_single_calls_with_consecutive_indices():
    smooth = Smooth(TinyNet(), 10, 0.5)
    x = images(4)
    labels, radii = smooth.certify(x, N0, N, ALPHA, 100, seed=2, index=10)
    assert labels.shape == radii.shape == (4,) and labels.dtype == np.int64
    single = [smooth.certify(x[b], N0, N, ALPHA, 100, seed=2, index=10 + b) for b in range(4)]
    assert list(zip(labels.tolist(), radii.tolist(), strict=True)) == single
    # numpy in, float32 or float64: the same certificates
    for arr in (x.numpy(), x.numpy().astype(np.float64)):
        got = smooth.certify(arr, N0, N, ALPHA, 100, seed=2, index=10)
        assert got[0].tolist() == labels.tolist() and got[1].tolist() == radii.tolist()
    preds = smooth.predict(x, N, ALPHA, 100, seed=2, index=10)
    assert preds.tolist() == [smooth.predict(x[b], N, ALPHA, 100, seed=2, index=10 + b)
                              for b in range(4)]
    records = smooth.certify_records(x, N0, N, ALPHA, 100, seed=2, index=10)
    assert [r.idx for r in records] == [10, 11, 12, 13]


def test_batch_of_one_is_one_image_unless_asked_for_a_batch():
    smooth = Smooth(TinyNet(), 10, 0.5)
    x = images(1)
    one = smooth.certify(x[0], N0, N, ALPHA, 100, seed=2, index=3)
    assert smooth.certify(x, N0, N, ALPHA, 100, seed=2, index=3) == one  # (label, radius)
    assert smooth.certify(x[0].numpy(), N0, N, ALPHA, 100, seed=2, index=3) == one
    labels, radii = smooth.certify_batch(x, N0, N, ALPHA, 100, seed=2, index=3)
    assert (labels.tolist(), radii.tolist()) == ([one[0]], [one[1]])
    empty = smooth.certify(torch.zeros(0, 1, 8, 8), N0, N, ALPHA, 100)
    assert empty[0].shape == (0,)


def test_batch_without_index_draws_a_fresh_stream_per_image():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, z):
            seen.append(z.clone())
            return torch.zeros(z.shape[0], 10)

    smooth = Smooth(Spy(), 10, 0.25)
    x = torch.full((3, 1, 8, 8), 0.5)  # identical images: only the noise tells them apart

    def draws(call):
        seen.clear()
        call()
        return torch.cat(seen).reshape(3, N0 + N, -1)

    torch.manual_seed(0)
    batch = draws(lambda: smooth.certify(x, N0, N, ALPHA, 400))
    assert not torch.equal(batch[0], batch[1]) and not torch.equal(batch[1], batch[2])
    torch.manual_seed(0)
    assert torch.equal(draws(lambda: smooth.certify(x, N0, N, ALPHA, 400)), batch)
    torch.manual_seed(0)  # the same as three single calls in a row
    singles = draws(lambda: [smooth.certify(x[b], N0, N, ALPHA, 400) for b in range(3)])
    assert torch.equal(singles, batch)


def test_batch_rejects_bad_pixels_before_any_sample():
    calls = []

    def f(z):
        calls.append(1)
        return torch.zeros(z.shape[0], dtype=torch.long)

    x = images(3)
    x[2, 0, 0, 0] = 1.5
    with pytest.raises(ValueError, match="normalization"):
        Smooth(f, 10, 0.25).certify(x, N0, N, ALPHA, 100)
    assert not calls
