"""The diffusion fine-tuning of multi-scale denoised smoothing (bench/training/calibration.py):
its losses on hand-computed cases, the differentiable denoiser equals the harness's one-shot
Denoiser, gradients reach the UNet and never the frozen classifier, and a tiny fine-tuning
reruns and resumes after a crash bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.contract import TrainContext
from bench.data import loaders
from bench.diffusion import Denoiser, load_diffusers
from bench.errors import ConfigError
from bench.nets import sha256_file
from bench.registry.entries import load_registry
from bench.running.train import _registered_model
from bench.training.calibration import (
    brier_loss,
    calibration_losses,
    denoise,
    diversity_loss,
    finetune_denoiser,
)

TINY = {"epochs": 2, "batch": 8, "lr": 1e-3, "draws": 2, "eval_draws": 2}

DIGITS = {"base": "digits-ddpm", "classifier": "digits-cnn-clean"}


def test_brier_loss_by_hand():
    # one image, two draws, two classes, label 0
    probs = torch.tensor([[[0.8, 0.2], [0.6, 0.4]]])
    y = torch.tensor([0])
    # ||p - e_0||^2: draw 1: 0.2^2 + 0.2^2 = 0.08; draw 2: 0.4^2 + 0.4^2 = 0.32
    both = brier_loss(probs, y, torch.tensor([[True, True]]))
    assert both.item() == pytest.approx((0.08 + 0.32) / 2)
    first = brier_loss(probs, y, torch.tensor([[True, False]]))
    assert first.item() == pytest.approx(0.08 / 2)  # a wrong draw counts as zero in the mean
    assert brier_loss(probs, y, torch.tensor([[False, False]])).item() == 0


def test_diversity_loss_by_hand():  # the anti-consistency term
    probs = torch.tensor([[[0.8, 0.2], [0.6, 0.4]]])
    # only draw 2 wrong: ||(0.6, 0.4)||^2 / M^2 = 0.52 / 4
    assert diversity_loss(probs, torch.tensor([[False, True]])).item() == pytest.approx(0.13)
    # both wrong: ||(1.4, 0.6)||^2 / 4 = (1.96 + 0.36) / 4
    assert diversity_loss(probs, torch.tensor([[True, True]])).item() == pytest.approx(0.58)
    assert diversity_loss(probs, torch.tensor([[False, False]])).item() == 0
    # agreeing one-hot wrong draws cost 1, draws spread over two classes cost 1/2
    agree = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    spread = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    wrong = torch.tensor([[True, True]])
    assert diversity_loss(agree, wrong).item() == pytest.approx(1.0)
    assert diversity_loss(spread, wrong).item() == pytest.approx(0.5)


def test_the_split_follows_the_argmax_per_draw_and_averages_over_the_batch():
    # image 1 (label 0): draw 1 right, draw 2 wrong; image 2 (label 1): both right
    probs = torch.tensor([[[0.7, 0.3], [0.1, 0.9]], [[0.5, 0.5 + 1e-6], [0.0, 1.0]]])
    brier, ac = calibration_losses(probs, torch.tensor([0, 1]))
    # Brier: (0.09 + 0.09) + (~0.5 + 0) over 4 draws; AC: (0.01 + 0.81) / 4 over 2 images
    assert brier.item() == pytest.approx((0.18 + 0.5) / 4, abs=1e-5)
    assert ac.item() == pytest.approx(0.82 / 4 / 2)


@pytest.fixture(scope="module")
def zoo():
    registry = load_registry(None, datasets=loaders.DATASET_NAMES)
    train = loaders.load_split("digits", "train")
    test = loaders.load_split("digits", "test")
    info = train.info

    def registered(name):
        return _registered_model(registry, name, info, torch.device("cpu"))

    (xtr, ytr), (xte, yte) = train.tensors(), test.tensors()
    registered("digits-ddpm")  # the diffusers import, once, outside the timed tests
    return {"info": info, "registered": registered, "train": (xtr[:24], ytr[:24]),
            "test": (xte[:16], yte[:16])}


def _ctx(zoo, out_dir, registered=None, **options) -> TrainContext:
    return TrainContext(dataset=zoo["info"], sigma=0.25, device=torch.device("cpu"), seed=3,
                        train=zoo["train"], test=zoo["test"], out_dir=out_dir, name=None,
                        options={**TINY, **options}, progress=False,
                        registered_model=registered or zoo["registered"])


def test_the_differentiable_denoiser_is_the_harness_denoiser(zoo):
    model = zoo["registered"]("digits-ddpm")
    x = torch.rand(32, 1, 8, 8) + 0.5 * torch.randn(32, 1, 8, 8)
    for sigma in (0.25, 0.5, 1.0):
        den = Denoiser(model, sigma=sigma).eval()
        with torch.no_grad():
            ours, theirs = denoise(den, x), den(x)
        assert torch.equal(ours, theirs)


def test_gradients_reach_the_unet_and_not_the_classifier(zoo, tmp_path):
    model = zoo["registered"]("digits-ddpm")
    clf = zoo["registered"]("digits-cnn-clean").requires_grad_(False)
    x, y = zoo["train"]
    den = Denoiser(model, sigma=0.5)
    noisy = x.repeat(2, 1, 1, 1) + 0.5 * torch.randn(48, 1, 8, 8)
    probs = clf(denoise(den, noisy)).softmax(-1).view(2, 24, -1).transpose(0, 1)
    brier, ac = calibration_losses(probs, y)
    (brier + ac).backward()
    grads = [p.grad for p in model.net.parameters()]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    assert all(p.grad is None for p in clf.parameters())

    # finetune_denoiser freezes the classifier it is handed and leaves its weights alone
    handed = {}

    def spy(name):
        handed[name] = zoo["registered"](name)
        if name == "digits-cnn-clean":
            handed["before"] = {k: v.clone() for k, v in handed[name].state_dict().items()}
        return handed[name]

    finetune_denoiser(_ctx(zoo, tmp_path, spy, epochs=1), **DIGITS)
    frozen = handed["digits-cnn-clean"]
    assert not any(p.requires_grad or p.grad is not None for p in frozen.parameters())
    assert all(torch.equal(v, handed["before"][k]) for k, v in frozen.state_dict().items())


@pytest.fixture(scope="module")
def straight(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return finetune_denoiser(_ctx(zoo, out), **DIGITS)


def test_a_tiny_fine_tuning_writes_a_denoiser_and_reruns_bit_for_bit(zoo, straight, tmp_path):
    weights = straight["weights"]
    assert weights.endswith("digits-ddpm-multiscale")
    card = json.loads((Path(weights) / "card.json").read_text())
    assert card["scales"] == [0.25, 0.5, 1.0] and card["base"] == "digits-ddpm"
    assert card["base_sha256"] == load_registry(None, datasets=loaders.DATASET_NAMES) \
        .model("digits-ddpm").fields["sha256"]
    for when in ("before", "after"):
        assert set(card[when]["scales"]) == {"0.25", "0.5", "1"}
        assert card[when]["eps_mse"] > 0
    assert len(card["history"]) == 2 and card["resumed_from_epoch"] is None
    unet_config = json.loads((Path(weights) / "unet" / "config.json").read_text())
    assert "_name_or_path" not in unet_config  # no local path of the base model
    # the folder is a usable denoiser
    model = load_diffusers("ft", weights)
    with torch.no_grad():
        out = Denoiser(model, sigma=0.5)(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 1, 8, 8) and 0 <= float(out.min()) <= float(out.max()) <= 1

    again = finetune_denoiser(_ctx(zoo, tmp_path), **DIGITS)
    assert again["sha256"] == straight["sha256"]


def test_a_crashed_fine_tuning_resumes_bit_for_bit(zoo, straight, tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 steps per epoch: the 2nd step of epoch 2
            raise RuntimeError("simulated crash")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune_denoiser(_ctx(zoo, tmp_path), **DIGITS)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    ckpt = tmp_path / "digits-ddpm-multiscale.partial" / "checkpoint.pt"
    assert ckpt.is_file() and not (tmp_path / "digits-ddpm-multiscale").exists()

    with pytest.raises(ConfigError, match="different configuration"):
        finetune_denoiser(_ctx(zoo, tmp_path, alpha=2.0), **DIGITS)

    card = finetune_denoiser(_ctx(zoo, tmp_path), **DIGITS)
    assert card["resumed_from_epoch"] == 1 and not ckpt.exists()
    assert card["sha256"] == straight["sha256"]
    assert sha256_file(tmp_path / "digits-ddpm-multiscale" / "unet"
                       / "diffusion_pytorch_model.safetensors") == straight["sha256"]
