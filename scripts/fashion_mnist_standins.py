"""Random-weight stand-ins for the Fashion-MNIST zoo models not trained yet: for cost estimates.

``scripts/certify_fashion_mnist.sh`` skips a run whose model is not in registry.yaml. To price
the whole plan before the zoo is complete, this writes, for each missing model, a network of the
same architecture with random weights (a classifier: ``mnist_cnn``; a DDPM: the zoo's
``UNet2DModel`` configuration, conditional for NDC) and an extra registry naming them::

    python scripts/fashion_mnist_standins.py /tmp/standins
    ESTIMATE_ONLY=1 EXTRA_REGISTRY=/tmp/standins/registry.yaml scripts/certify_fashion_mnist.sh

A stand-in costs what the real model costs per forward pass; its certificates mean nothing, so
the script refuses to certify with an extra registry outside ESTIMATE_ONLY=1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

from bench.data.loaders import dataset_info
from bench.nets import build_arch
from bench.registry.entries import load_registry

DATASET = "fashion-mnist"
CLASSIFIERS = [f"fashion-mnist-cnn-{m}-{s}" for m in ("gaussian", "smoothadv", "macer",
                                                       "consistency") for s in ("0.25", "0.5", "1")]
CLASSIFIERS.append("fashion-mnist-cnn-clean")
DDPMS = {"fashion-mnist-ddpm": False, "fashion-mnist-ddpm-multiscale": False,
         "fashion-mnist-ddpm-cond": True}  # name -> class-conditional


def main(out: Path) -> None:
    from diffusers import DDPMScheduler  # lazy: diffusers takes seconds to import
    from safetensors.torch import save_file

    from bench.training.conditional_ddpm import build_conditional_unet
    from bench.training.ddpm import SCHEDULE, build_unet

    torch.manual_seed(0)
    have = set(load_registry(None).models)
    info = dataset_info(DATASET)
    entries: dict[str, dict] = {}
    out.mkdir(parents=True, exist_ok=True)
    for name in CLASSIFIERS:
        if name in have:
            continue
        net = build_arch("mnist_cnn", num_classes=info.num_classes, in_channels=info.shape[0],
                         image_size=info.shape[1])
        path = out / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
        entries[name] = {"arch": "mnist_cnn", "source": "state_dict", "path": str(path),
                         "dataset": DATASET, "description": "random-weight stand-in (cost only)"}
    for name, conditional in DDPMS.items():
        if name in have:
            continue
        unet = (build_conditional_unet(info.shape, info.num_classes) if conditional
                else build_unet(info.shape))
        folder = out / name
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        DDPMScheduler(**SCHEDULE).save_config(folder / "scheduler")
        entries[name] = {"source": "diffusers", "path": str(folder), "dataset": DATASET,
                         "description": "random-weight stand-in (cost only)"}
    (out / "registry.yaml").write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    print(f"{len(entries)} stand-ins in {out}: {', '.join(entries) or 'none needed'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/fashion-mnist-standins"))
