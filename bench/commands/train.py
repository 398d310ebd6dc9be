"""``python -m bench train``: train a base classifier for a method and print its registry entry."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.commands.common import common_registry, folder, param, params_dict

HELP = "train a base classifier for a method"


def add_arguments(p) -> None:
    p.add_argument("--method", default="gaussian",
                   help="registered method whose training loss to use (see 'list')")
    p.add_argument("--dataset", default="digits", help="dataset to train on (see 'list')")
    p.add_argument("--sigma", type=float, default=0.25,
                   help="training noise std in [0,1] pixel units")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the recipe's)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None,
                   help="initial learning rate (default: the recipe's)")
    p.add_argument("--arch", default=None,
                   help="network architecture (default: the dataset's default architecture)")
    p.add_argument("--recipe", choices=("auto", "project", "reference"), default="auto",
                   help="project: cosine lr 0.05, batch 64, 60 epochs; reference: the method's "
                        "published recipe (StepLR, crop+flip on cifar10); auto: reference on "
                        "cifar10, project elsewhere")
    p.add_argument("--param", type=param, action="append", default=[], metavar="KEY=VALUE",
                   help="a method parameter (e.g. epsilon=0.5, steps=4, m=2), repeatable; "
                        "see the method's registry entry and adapter for the names")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of initialization, shuffling, noise and augmentation")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the dataset's files are (default $CERTBENCH_DATA or ./data; "
                        "digits needs none)")
    p.add_argument("--out", type=folder, default=None,
                   help="output folder (default: the package zoo, bench/zoo)")
    p.add_argument("--name", default=None, help="model name (default derived)")
    p.add_argument("--train-images", type=int, default=None, metavar="N",
                   help="train on the first N training images only (smoke tests, quick "
                        "looks; recorded in the card as train_images)")
    p.add_argument("--test-images", type=int, default=None, metavar="N",
                   help="measure the card's clean/noisy accuracy on the first N test images "
                        "only (recorded as test_images)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this registered classifier's weights (fine-tuning, as "
                        "SmoothAdv does from a Gaussian model); recorded with its sha256")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (bar or lines) and only errors on stderr")
    common_registry(p)


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.running.train import TrainOptions, train

    opts = TrainOptions(
        params=params_dict(args.param), recipe=args.recipe,
        method=args.method, dataset=args.dataset, sigma=args.sigma, epochs=args.epochs,
        batch=args.batch, lr=args.lr, arch=args.arch, seed=args.seed, device=args.device,
        data_dir=args.data_dir, out=args.out, name=args.name, init=args.init,
        train_images=args.train_images, test_images=args.test_images,
        progress=not args.quiet,
        registry=args.registry, extra_registries=tuple(args.extra_registry),
        command=args.command_line,
    )
    card = train(opts)
    print(f"trained {card['name']}: {_accuracies(card)}({card['train_seconds']:.0f} s)")
    print(f"weights: {card['weights']}")
    print("registry entry:")
    print(yaml.safe_dump({"models": {card["name"]: card["registry_entry"]}}, sort_keys=False))
    return 0


def _accuracies(card) -> str:
    """The card's clean/noisy accuracy, when it measured them (a conditional DDPM does not;
    a DDPM with no reference classifier records NaN)."""
    clean, noisy = card.get("clean_accuracy"), card.get("noisy_accuracy")
    if clean is None or noisy is None or clean != clean or noisy != noisy:
        return ""
    return (f"clean accuracy {100 * clean:.1f}%, noisy accuracy at sigma {card['sigma']:g} "
            f"{100 * noisy:.1f}% ")
