"""Tests for bench.nets: reference layouts, input layers, checkpoint formats and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import bench.nets
from bench.contract import DatasetInfo
from bench.errors import ConfigError, ModelError
from bench.nets import (
    ARCHITECTURES,
    InputCenterLayer,
    NormalizeLayer,
    SmallCNN,
    build_arch,
    load_network,
    save_zoo_model,
    sha256_file,
)
from bench.nets.loaders import ZOO_DIR

CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
DIGITS = DatasetInfo("digits", (1, 8, 8), 10, (0.3,), (0.4,))


class NotWeights:
    """A custom class: pickling an instance makes a file that weights_only refuses."""

    def __init__(self) -> None:
        self.payload = 42


def reference_cifar_resnet_keys(depth: int) -> list[str]:
    """State-dict keys of locuslab/smoothing's cifar_resnet, written out from its layout."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    for stage in (1, 2, 3):
        for block in range((depth - 2) // 6):
            p = f"layer{stage}.{block}"
            keys += [f"{p}.conv1.weight"] + [f"{p}.bn1.{s}" for s in bn]
            keys += [f"{p}.conv2.weight"] + [f"{p}.bn2.{s}" for s in bn]
            if stage > 1 and block == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{s}" for s in bn]
    return [*keys, "fc.weight", "fc.bias"]


def cifar_net(arch: str = "cifar_resnet20", num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A network with random weights *and* random BN statistics, so eval outputs are telling."""
    torch.manual_seed(seed)
    net = build_arch(arch, num_classes=num_classes, in_channels=3, image_size=32)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def save_cohen(path: Path, net: nn.Module, arch: str, *, data_parallel: bool = False) -> nn.Module:
    """Save like Cohen's train.py: Sequential(normalize, net) plus epoch, arch and optimizer."""
    inner = nn.DataParallel(net) if data_parallel else net
    wrapped = nn.Sequential(NormalizeLayer(CIFAR.mean, CIFAR.std), inner)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    wrapped(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()  # fills momentum buffers, so the optimizer entry holds real tensors
    opt.zero_grad()
    checkpoint = {"epoch": 1, "arch": arch, "state_dict": wrapped.state_dict()}
    torch.save({**checkpoint, "optimizer": opt.state_dict()}, path)
    return nn.Sequential(NormalizeLayer(CIFAR.mean, CIFAR.std), net).eval()


def load(entry: dict, tmp_path: Path, dataset: DatasetInfo = CIFAR, name: str = "m") -> nn.Module:
    return load_network(name, entry, dataset=dataset, base_dir=tmp_path)


def assert_same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...] = (2, 3, 32, 32)):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def cohen20(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    path = tmp_path_factory.mktemp("cohen") / "checkpoint.pth.tar"
    return path, save_cohen(path, cifar_net(), "cifar_resnet20")


# --- architectures -------------------------------------------------------------------------


@pytest.mark.parametrize(("depth", "params"), [(20, 272_474), (110, 1_730_714)])
def test_cifar_resnet_matches_reference_layout(depth: int, params: int) -> None:
    net = build_arch(f"cifar_resnet{depth}", num_classes=10, in_channels=3, image_size=32)
    sd = net.state_dict()
    assert list(sd) == reference_cifar_resnet_keys(depth)
    assert sum(p.numel() for p in net.parameters()) == params
    assert sd["fc.weight"].shape == (10, 64)
    assert sd["conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    assert sd["layer3.0.downsample.0.weight"].shape == (64, 32, 1, 1)
    assert "layer1.0.downsample.0.weight" not in sd
    assert isinstance(net.avgpool, nn.AvgPool2d)
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    if depth == 110:
        assert sd["layer3.17.bn2.running_var"].shape == (64,)
        assert "layer3.18.conv1.weight" not in sd


def test_cifar_resnet_needs_32x32() -> None:
    with pytest.raises(ModelError, match="32x32"):
        build_arch("cifar_resnet20", num_classes=10, in_channels=3, image_size=64)


@pytest.mark.parametrize(("arch", "size"), [("digits_cnn", 8), ("mnist_cnn", 28)])
def test_small_cnn_output_shape(arch: str, size: int) -> None:
    net = build_arch(arch, num_classes=10, in_channels=1, image_size=size)
    assert isinstance(net, SmallCNN)
    assert net(torch.rand(3, 1, size, size)).shape == (3, 10)
    assert sum(p.numel() for p in net.parameters()) < 250_000


def test_resnet50_builder_uses_torchvision_layout() -> None:
    with torch.device("meta"):  # shapes only: skips initialising 25M parameters
        net = build_arch("resnet50", num_classes=7, in_channels=3, image_size=224)
    sd = net.state_dict()
    assert sd["fc.weight"].shape == (7, 2048)
    assert "layer4.2.bn3.running_var" in sd


def test_unknown_architecture() -> None:
    with pytest.raises(ModelError, match=r"unknown architecture 'vgg'; known: digits_cnn"):
        build_arch("vgg", num_classes=10, in_channels=3, image_size=32)
    assert set(ARCHITECTURES) == {
        "digits_cnn",
        "mnist_cnn",
        "cifar_resnet20",
        "cifar_resnet110",
        "resnet50",
    }


# --- input layers --------------------------------------------------------------------------


def test_input_layers_values_and_no_state() -> None:
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    norm = NormalizeLayer(mean, std)
    center = InputCenterLayer(mean)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), (x - m) / s)
    torch.testing.assert_close(center(x), x - m)
    assert norm.state_dict() == {} and center.state_dict() == {}
    assert {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    wrapped = nn.Sequential(norm, nn.Conv2d(3, 2, 1))
    assert sorted(wrapped.state_dict()) == ["1.bias", "1.weight"]
    with pytest.raises(ValueError):
        NormalizeLayer((0.1, 0.2), (0.5,))


# --- loading: formats ----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["cohen", "auto"])
def test_cohen_round_trip(cohen20: tuple[Path, nn.Module], tmp_path: Path, source: str) -> None:
    path, original = cohen20
    entry = {"source": source, "path": str(path), "sha256": sha256_file(path)}
    model = load(entry, tmp_path)
    assert isinstance(model, nn.Sequential) and isinstance(model[0], NormalizeLayer)
    assert not model.training
    assert_same_outputs(model, original)


def test_cohen_relative_path_and_center_layer(cohen20: tuple[Path, nn.Module]) -> None:
    path, original = cohen20
    entry = {"source": "cohen", "path": path.name, "arch": "cifar_resnet20"}
    entry["input_layer"] = "center"
    model = load_network("m", entry, dataset=CIFAR, base_dir=path.parent)
    assert isinstance(model[0], InputCenterLayer)
    assert_same_outputs(model[1], original[1])


def test_cohen_data_parallel_prefix(tmp_path: Path) -> None:
    path = tmp_path / "imagenet_style.pth.tar"
    original = save_cohen(path, cifar_net(seed=3), "cifar_resnet20", data_parallel=True)
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert all(k.startswith("1.module.") for k in keys)
    assert_same_outputs(load({"source": "cohen", "path": str(path)}, tmp_path), original)


def test_macer_net_format(tmp_path: Path) -> None:
    net = cifar_net(seed=4)
    path = tmp_path / "macer.pth"
    torch.save({"net": net.state_dict(), "epoch": 440}, path)
    for source in ("cohen", "auto"):
        entry = {"source": source, "path": str(path), "arch": "cifar_resnet20"}
        model = load({**entry, "input_layer": "none"}, tmp_path)
        assert not isinstance(model, nn.Sequential)
        assert_same_outputs(model, net)


@pytest.mark.parametrize("layout", ["bare.safetensors", "bare.pt", "module.pth", "model.pth"])
def test_state_dict_formats(tmp_path: Path, layout: str) -> None:
    net = cifar_net(seed=5)
    sd = net.state_dict()
    path = tmp_path / layout
    if layout.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif layout == "bare.pt":
        torch.save(sd, path)
    elif layout == "module.pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        torch.save({"model": {f"1.{k}": v for k, v in sd.items()}, "step": 3}, path)
    for source in ("state_dict", "auto"):
        entry = {"source": source, "path": str(path), "arch": "cifar_resnet20"}
        assert_same_outputs(load({**entry, "input_layer": "none"}, tmp_path), net)


def test_missing_batchnorm_counters_are_tolerated(tmp_path: Path) -> None:
    net = cifar_net(seed=6)
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pt")
    entry = {"path": "old.pt", "arch": "cifar_resnet20", "input_layer": "none"}
    assert_same_outputs(load(entry, tmp_path), net)


def test_zoo_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(7)
    net = build_arch("digits_cnn", num_classes=10, in_channels=1, image_size=8)
    wrapped = nn.Sequential(NormalizeLayer(DIGITS.mean, DIGITS.std), net).eval()
    path = tmp_path / "zoo" / "digits_cnn_s025.safetensors"
    digest = save_zoo_model(wrapped, path, {"arch": "digits_cnn", "sigma": 0.25})
    assert digest == sha256_file(path)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card == {
        "arch": "digits_cnn",
        "sigma": 0.25,
        "input_layer": "normalize",
        "sha256": digest,
    }
    entry = {"source": "zoo", "path": str(path), "arch": "digits_cnn", "sha256": digest}
    model = load(entry, tmp_path, DIGITS)
    assert_same_outputs(model, wrapped, (5, 1, 8, 8))
    # The card's arch stands in for a missing entry arch, and must agree with a given one.
    from_card = load({"source": "zoo", "path": str(path)}, tmp_path, DIGITS)
    assert_same_outputs(from_card, wrapped, (5, 1, 8, 8))
    with pytest.raises(ModelError, match=r"model card .*declares architecture 'digits_cnn'"):
        load({"source": "zoo", "path": str(path), "arch": "mnist_cnn"}, tmp_path, DIGITS)


def test_zoo_dir_and_relative_zoo_paths(tmp_path: Path) -> None:
    package_dir = Path(bench.nets.__file__).resolve().parent.parent
    assert package_dir / "zoo" == ZOO_DIR
    with pytest.raises(ModelError, match=str(ZOO_DIR)):
        load({"source": "zoo", "path": "no_such_model.safetensors", "arch": "digits_cnn"}, tmp_path)


# --- loading: errors -----------------------------------------------------------------------


def test_wrong_sha256(cohen20: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, _ = cohen20
    actual = sha256_file(path)
    expected = "ab" * 32
    with pytest.raises(ModelError) as err:
        load({"source": "cohen", "path": str(path), "sha256": expected}, tmp_path, name="cohen-r20")
    msg = str(err.value)
    assert "model cohen-r20" in msg and "sha256" in msg
    assert actual[:12] in msg and expected[:12] in msg and "\n" not in msg


def test_missing_keys_message(tmp_path: Path) -> None:
    path = tmp_path / "r20.pth"
    torch.save({"net": cifar_net().state_dict(), "epoch": 1}, path)
    with pytest.raises(ModelError) as err:
        load({"path": str(path), "arch": "cifar_resnet110", "input_layer": "none"}, tmp_path)
    msg = str(err.value)
    assert "does not fit architecture cifar_resnet110" in msg
    # 540 keys are missing, less the 90 BatchNorm counters that are filled in.
    assert "450 missing keys (first: layer1.3.conv1.weight)" in msg
    assert "unexpected" not in msg and "shape" not in msg and "\n" not in msg


def test_shape_mismatch_message(tmp_path: Path) -> None:
    path = tmp_path / "r20_c100.pt"
    torch.save(cifar_net(num_classes=100).state_dict(), path)
    with pytest.raises(ModelError) as err:
        load({"path": str(path), "arch": "cifar_resnet20"}, tmp_path)
    msg = str(err.value)
    assert "2 shape mismatches (first: fc.weight ckpt (100, 64) vs model (10, 64))" in msg
    assert "missing" not in msg and "unexpected" not in msg


def test_unexpected_keys_message(tmp_path: Path) -> None:
    sd = cifar_net().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(ModelError, match=r"1 unexpected key \(first: extra.weight\)"):
        load({"path": "x.pt", "arch": "cifar_resnet20"}, tmp_path)


def test_arch_mismatch(cohen20: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, _ = cohen20
    expected = "declares architecture 'cifar_resnet20'.*says 'cifar_resnet110'"
    with pytest.raises(ModelError, match=expected):
        load({"source": "cohen", "path": str(path), "arch": "cifar_resnet110"}, tmp_path)


def test_no_arch_anywhere(tmp_path: Path) -> None:
    torch.save(cifar_net().state_dict(), tmp_path / "anon.pt")
    with pytest.raises(ModelError, match=r"model anon: cannot tell the architecture.*set 'arch'"):
        load({"source": "auto", "path": "anon.pt"}, tmp_path, name="anon")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        load({"source": "cohen", "path": "gone.pth.tar"}, tmp_path, name="cohen-gone")
    msg = str(err.value)
    assert "model cohen-gone" in msg and str(tmp_path / "gone.pth.tar") in msg
    assert "--models-dir" in msg


def test_unknown_arch_in_entry(tmp_path: Path) -> None:
    torch.save(cifar_net().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelError, match="model w: unknown architecture 'resnet9'; known:"):
        load({"path": "w.pt", "arch": "resnet9"}, tmp_path, name="w")


def test_not_weights_only_pickle(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": NotWeights()}, path)
    with pytest.raises(ModelError, match=r"evil.pt is not a weights-only checkpoint.*NotWeights"):
        load({"source": "auto", "path": str(path), "arch": "cifar_resnet20"}, tmp_path)


def test_garbage_and_wrong_format_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04" + b"x" * 64)
    with pytest.raises(ModelError, match=r"junk.pt cannot be read"):
        load({"path": "junk.pt", "arch": "cifar_resnet20"}, tmp_path)
    torch.save(cifar_net().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ModelError, match="not a Cohen-format checkpoint"):
        load({"source": "cohen", "path": "bare.pt", "arch": "cifar_resnet20"}, tmp_path)
    with pytest.raises(ModelError, match="not a safetensors file"):
        load({"source": "zoo", "path": str(tmp_path / "bare.pt"), "arch": "digits_cnn"}, tmp_path)


def test_bad_entry_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown source 'hub'"):
        load({"source": "hub", "path": "x"}, tmp_path)
    with pytest.raises(ConfigError, match="unknown input_layer 'scale'"):
        load({"path": "x", "input_layer": "scale"}, tmp_path)
    with pytest.raises(ConfigError, match="no 'path'"):
        load({"source": "auto"}, tmp_path)
