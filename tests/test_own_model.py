"""Your own architecture and checkpoint: a registry model whose ``arch`` is ``module:callable``,
imported from beside the registry file that names it, with its own normalization."""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import save_file

from bench.errors import ModelError
from tests.conftest import run_process

NETS = '''import torch
from torch import nn


def lenet(*, num_classes, in_channels, image_size):
    """A LeNet-style net with 3x3 convolutions (not one of certbench's architectures)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * image_size * image_size, num_classes))
'''


def make_submission(folder):
    """my_nets.py, its weights (with DataParallel's 'module.' prefix) and a registry file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_nets.py").write_text(NETS)
    import importlib.util

    spec = importlib.util.spec_from_file_location("my_nets_for_weights", folder / "my_nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.lenet(num_classes=10, in_channels=1, image_size=8)
    save_file({f"module.{k}": v.contiguous() for k, v in net.state_dict().items()},
              str(folder / "lenet.safetensors"))
    sha = hashlib.sha256((folder / "lenet.safetensors").read_bytes()).hexdigest()
    (folder / "mine.yaml").write_text(
        "models:\n  my-lenet:\n    arch: my_nets:lenet\n    source: state_dict\n"
        f"    path: {folder / 'lenet.safetensors'}\n    sha256: {sha}\n    dataset: digits\n"
        "    sigma: 0.25\n    mean: [0.25]\n    std: [0.5]\n")
    return folder / "mine.yaml"


def test_own_architecture_certifies_from_outside_the_repo(tmp_path):
    registry = make_submission(tmp_path / "submission")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_process("run", "--method", "gaussian", "--model", "my-lenet", "--extra-registry",
                       registry, "--subset", "dev", "--n", "20", "--n0", "5", "--max-images", "2",
                       "--quiet", "--results", elsewhere / "results", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(next((elsewhere / "results").rglob("summary.json")).read_text())
    assert summary["model_roles"]["classifier"]["name"] == "my-lenet"
    assert summary["images"]["certified"] == 2


def test_the_entrys_mean_and_std_are_the_input_layer(tmp_path):
    from bench.data.specs import spec
    from bench.registry.entries import load_registry
    from bench.running.roles import RoleResolver

    registry = load_registry(None, extra=[make_submission(tmp_path / "s")])
    models = RoleResolver(registry, "gaussian", {"classifier": "my-lenet"},
                          info=spec("digits").info, sigma=0.25, device=torch.device("cpu"),
                          base_dir=tmp_path, overrides={}, arch=None)
    net = models.load("classifier")
    layer = net[0]
    assert torch.allclose(layer.mean.flatten(), torch.tensor([0.25]))
    assert torch.allclose(layer.std.flatten(), torch.tensor([0.5]))


def test_a_missing_architecture_module_is_one_line(tmp_path):
    from bench.nets.archs import build_arch

    try:
        build_arch("no_such_module:net", num_classes=10, in_channels=1, image_size=8,
                   search_dir=tmp_path)
    except ModelError as exc:
        assert "cannot import 'no_such_module'" in str(exc) and str(tmp_path) in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected a ModelError")
