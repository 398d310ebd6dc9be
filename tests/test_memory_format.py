"""--memory-format: channels-last for the networks known to accept it, recorded when used.

The layout may change a logit's last bit, so channels-last is part of the run id when (and
only when) it is used: the default run, and every committed one, keeps its id. A user's network
is never converted (one that flattens with ``view`` would break). That certificates come out
the same in both layouts is checked empirically on seeded images: a fact about these networks
and this CPU, not a guarantee (an exact near-tie of two logits could flip).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_core_seams import README_RUN_ID

from bench.errors import ConfigError
from bench.nets import SmallCNN
from bench.nets.memory_format import accepts_channels_last
from bench.running.plan import RunOptions, prepare
from bench.running.runner import run
from bench.store.database import Store

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _opts(tmp_path, **kw) -> RunOptions:
    return RunOptions(results=tmp_path, progress=False, device="cpu", **kw)


class FlattensWithView(SmallCNN):
    """A user's variant of a built-in network: its own forward flattens with ``view``."""

    def forward(self, x):
        x = self.pool(self.relu(self.conv2(self.relu(self.conv1(x)))))
        return self.fc2(self.relu(self.fc1(x.view(x.size(0), -1))))


def test_default_and_contiguous_keep_the_run_id(tmp_path):
    assert prepare(_opts(tmp_path)).card.run_id == README_RUN_ID
    prep = prepare(_opts(tmp_path, memory_format="contiguous"))
    assert prep.card.run_id == README_RUN_ID and "memory_format" not in prep.card.identity


def test_channels_last_is_in_the_identity_and_the_networks_run_in_it(tmp_path):
    default = prepare(_opts(tmp_path)).card
    for asked in ("channels_last", "auto"):  # auto: the zoo's digits_cnn accepts it
        prep = prepare(_opts(tmp_path, memory_format=asked))
        ident = prep.card.identity
        assert ident["memory_format"] == "channels_last" and prep.opts.memory_format == ident[
            "memory_format"]
        assert {k: v for k, v in ident.items() if k != "memory_format"} == default.identity
        assert prep.card.run_id != README_RUN_ID
        net = prep.procedure.base.net
        conv = net[1].conv1
        weight = net[1].conv2.weight  # (32, 32, 3, 3): conv1's one input channel fits both
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert not weight.is_contiguous()
        seen = []
        conv.register_forward_hook(lambda m, i, out, seen=seen: seen.append(out))
        net(torch.rand(4, 1, 8, 8))  # a plain NCHW batch, as Smooth builds it
        assert seen[0].is_contiguous(memory_format=torch.channels_last)
        assert not seen[0].is_contiguous()


def test_only_networks_known_to_accept_it_qualify():
    assert accepts_channels_last(torch.nn.Sequential(torch.nn.Identity(), SmallCNN()))
    # a subclass with its own forward does not inherit the promise
    assert not accepts_channels_last(FlattensWithView())
    assert not accepts_channels_last(torch.nn.Sequential(FlattensWithView()))


def test_a_user_network_is_refused_in_one_line_and_auto_leaves_it_alone(tmp_path):
    user = {"classifier": FlattensWithView(1, 8, 10)}
    with pytest.raises(ConfigError) as exc:
        prepare(_opts(tmp_path, memory_format="channels_last", python_models=user))
    message = str(exc.value)
    assert "\n" not in message and "python:FlattensWithView" in message
    assert "--memory-format auto" in message
    auto = prepare(_opts(tmp_path, memory_format="auto", python_models=user))
    plain = prepare(_opts(tmp_path, python_models=user))
    assert auto.opts.memory_format == "contiguous" and auto.card.run_id == plain.card.run_id
    assert "memory_format" not in auto.card.identity
    weight = auto.procedure.base.net.inner.conv2.weight
    assert weight.is_contiguous()


USER_ARCH = """
from bench.nets import SmallCNN


class Mine(SmallCNN):
    def forward(self, x):
        return super().forward(x)


def mine(*, num_classes, in_channels, image_size):
    return Mine(in_channels, image_size, num_classes)
"""


def test_a_user_architecture_is_refused_on_the_command_line(cli, tmp_path, monkeypatch):
    """Even a user's architecture built on a built-in network's class: its forward is its own."""
    (tmp_path / "user_arch_cl.py").write_text(USER_ARCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "mine.pt"
    torch.save(SmallCNN(1, 8, 10).state_dict(), weights)
    code, _, err = cli("run", "--model", weights, "--arch", "user_arch_cl:mine",
                       "--memory-format", "channels_last", "--results", tmp_path / "r", "--quiet")
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "not one of certbench's own networks" in lines[0]
    code, _, err = cli("run", "--memory-format", "sideways", "--quiet")
    assert code != 0 and "--memory-format" in err


def test_estimate_prints_the_predicted_time_and_writes_nothing(cli, tmp_path):
    results = tmp_path / "store"
    code, out, err = cli("run", "--estimate", "--memory-format", "channels_last", "--max-images",
                         3, "--results", results, "--quiet")
    assert code == 0, err
    assert out.startswith("estimate: run ") and "3 images left" in out and "seconds=" in out
    assert not results.exists()


def _certificates(results: Path, run_id: str) -> list[tuple]:
    store = Store(results, readonly=True)
    try:
        return [(c.idx, c.prediction, c.radius, c.top_class, c.count, c.p_lower)
                for c in store.certs(run_id)]
    finally:
        store.close()


def _same_certificates_in_both_layouts(tmp_path, **kw) -> None:
    runs = {fmt: run(_opts(tmp_path, memory_format=fmt, **kw)).run_id
            for fmt in ("contiguous", "channels_last")}
    assert runs["contiguous"] != runs["channels_last"]
    plain, fast = (_certificates(tmp_path, runs[f]) for f in ("contiguous", "channels_last"))
    assert len(plain) == kw["max_images"] and plain == fast


def test_certificates_agree_between_layouts_on_digits(tmp_path):
    """Empirical (seeded): 20 digits images, N = 500, the zoo's digits_cnn."""
    _same_certificates_in_both_layouts(tmp_path, max_images=20, n=500)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_file(), reason="apt-get install dataset-fashion-mnist")
def test_certificates_agree_between_layouts_on_fashion_mnist(tmp_path):
    """Empirical (seeded): 20 cohen500 images, N = 2,000, the zoo's mnist_cnn at sigma 0.25."""
    _same_certificates_in_both_layouts(tmp_path, dataset="fashion-mnist", subset="cohen500",
                                       sigma=0.25, max_images=20, n=2000, batch=256)
