"""Add a zoo model's registry entry (from its card) to registry.yaml, before ``methods:``.

Run by scripts/train_fashion_mnist_zoo.sh after each model lands, so the next stage can name it
(``--init``) and the harness can load it hash-checked. Idempotent: a registered name is left as
it is. Text insertion keeps the registry's comments and order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "bench" / "zoo"
REGISTRY = ROOT / "registry.yaml"
HEADER = "  # --- Fashion-MNIST: trained by this project (scripts/train_fashion_mnist_zoo.sh) ---\n"


def entry_for(name: str) -> dict:
    folder = ZOO / name
    if (folder / "card.json").is_file():  # a diffusers denoiser: serves every sigma
        card = json.loads((folder / "card.json").read_text())
        from bench.nets import sha256_file

        sha = sha256_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
        entry = {"source": "diffusers", "path": name, "sha256": sha}
    else:
        card = json.loads((ZOO / f"{name}.json").read_text())
        entry = {"arch": card["arch"], "source": "zoo", "path": f"{name}.safetensors",
                 "sha256": card["sha256"], "sigma": card["sigma"]}
    entry.update({"dataset": card["dataset"], "trained_by": card["method"],
                  "trained_with": card["command"].replace(" --quiet", "")})
    return entry


def register(name: str) -> bool:
    text = REGISTRY.read_text()
    if name in (yaml.safe_load(text).get("models") or {}):
        return False
    block = yaml.safe_dump({name: entry_for(name)}, sort_keys=False, width=100)
    block = "".join(f"  {line}\n" for line in block.splitlines())
    if HEADER not in text:
        block = HEADER + block
        at = text.index("\nmethods:")
    else:  # after the last Fashion-MNIST entry
        start = text.index(HEADER)
        at = text.index("\nmethods:", start)
    text = text[: at + 1] + block + text[at + 1 :]
    tmp = REGISTRY.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(REGISTRY)
    return True


if __name__ == "__main__":
    for model in sys.argv[1:]:
        print(f"{model}: {'registered' if register(model) else 'already registered'}")
