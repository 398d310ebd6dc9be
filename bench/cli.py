"""The command line: parse, call library functions, print. No certification logic lives here.

User mistakes (``CertbenchError``) print one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from tabulate import tabulate

from bench.errors import CertbenchError, ConfigError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line instead of usage + error."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"certbench: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _shard(text: str) -> tuple[int, int]:
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 0/4, got {text!r}") from None
    return i, k


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def _common_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", type=Path, help="registry file (default: ./registry.yaml)")
    p.add_argument("--extra-registry", type=Path, action="append", default=[],
                   help="additional registry file with more models/methods (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser("run", help="certify a dataset subset with one method")
    run.add_argument("--method", default="gaussian")
    run.add_argument("--dataset", default="digits")
    run.add_argument("--sigma", type=float, default=0.25, help="noise std in [0,1] pixel units")
    run.add_argument("--n0", type=int, default=100, help="selection samples (default 100)")
    run.add_argument("--n", type=int, default=None,
                     help="estimation samples (default 5,000 on digits, else 100,000)")
    run.add_argument("--alpha", type=float, default=0.001, help="failure probability per image")
    run.add_argument("--batch", type=int, default=1000, help="noisy copies per forward pass")
    run.add_argument("--subset", default="full", help="named image subset (see 'list')")
    run.add_argument("--max-images", type=int, default=None)
    run.add_argument("--shard", type=_shard, default=(0, 1), help="I/K: every K-th image from I")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    run.add_argument("--results", type=Path, default=Path("results"))
    run.add_argument("--data-dir", type=Path, default=None)
    run.add_argument("--models-dir", type=Path, default=None,
                     help="where non-zoo checkpoints live (default $CERTBENCH_MODELS or ./models)")
    run.add_argument("--model", default=None, help="registered model name or local checkpoint")
    run.add_argument("--arch", default=None, help="architecture of a --model state dict")
    run.add_argument("--image-size", type=int, default=None, help="imagefolder resolution")
    run.add_argument("--param", type=_param, action="append", default=[],
                     help="override a method param: KEY=VALUE (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    _common_registry(run)

    train = sub.add_parser("train", help="train a base classifier for a method")
    train.add_argument("--method", default="gaussian")
    train.add_argument("--dataset", default="digits")
    train.add_argument("--sigma", type=float, default=0.25)
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--batch", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--arch", default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument("--data-dir", type=Path, default=None)
    train.add_argument("--out", type=Path, default=None,
                       help="output folder (default: the package zoo, bench/zoo)")
    train.add_argument("--name", default=None, help="model name (default derived)")
    train.add_argument("--quiet", action="store_true")
    _common_registry(train)

    lst = sub.add_parser("list", help="show methods, datasets and models")
    _common_registry(lst)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line usage error already printed
        return int(exc.code or 0)
    command = args.command
    if command is None:
        parser.print_help()
        return 0
    try:
        if command == "run":
            return cmd_run(args)
        if command == "train":
            return cmd_train(args)
        if command == "list":
            return cmd_list(args)
    except CertbenchError as exc:
        sys.stderr.write(f"certbench: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("certbench: interrupted; finished images are saved, rerun to resume\n")
        return 130
    parser.error(f"unknown command {command!r}")
    return 2


def cmd_run(args) -> int:
    from bench.runner import RunOptions, run

    opts = RunOptions(
        method=args.method, dataset=args.dataset, sigma=args.sigma, n0=args.n0, n=args.n,
        alpha=args.alpha, batch=args.batch, subset=args.subset, max_images=args.max_images,
        shard=args.shard, seed=args.seed, device=args.device, results=args.results,
        data_dir=args.data_dir, models_dir=args.models_dir, model=args.model, arch=args.arch,
        image_size=args.image_size, registry=args.registry,
        extra_registries=tuple(args.extra_registry), params=dict(args.param),
        progress=not args.quiet,
    )
    result = run(opts)
    print(format_summary(result.summary, result.new_images))
    print(f"results: {result.folder / 'certs.tsv'}  {result.folder / 'summary.json'}")
    return 0


def format_summary(summary: dict[str, Any], new_images: int) -> str:
    """The certified-accuracy table on the radius grid, ACR, abstain rate and cost."""
    ident = summary["identity"]
    imgs = summary["images"]
    met = summary["metrics"]
    cost = summary["cost_per_image"]
    head = (f"{ident['method']} on {ident['dataset']} ({ident['subset']}: {imgs['certified']}/"
            f"{imgs['subset_size']} images, {new_images} new)  sigma={ident['sigma']:g}  "
            f"N0={ident['n0']:,}  N={ident['n']:,}  m={ident['m']}  alpha={ident['alpha']:g}  "
            f"seed={ident['seed']}  run {summary['run_id']}")
    ca = met["certified_accuracy"]
    table = tabulate([["certified accuracy (%)", *(100 * v for v in ca.values())]],
                     headers=["radius", *ca.keys()], floatfmt=".1f")
    tail = (f"ACR {met['acr']:.3f}   abstain {100 * met['abstain_rate']:.1f}%   max certifiable "
            f"radius {met['max_certifiable_radius']:.3f}\nper image: "
            f"{cost['classifier_passes']:,.0f} classifier + {cost['diffusion_passes']:,.0f} "
            f"diffusion passes, {cost['seconds']:.3f} s ({cost['samples_per_second']:,.0f} "
            f"samples/s on {', '.join(cost['devices'])})")
    return "\n".join([head, table, tail])


def cmd_train(args) -> int:
    from bench.trainer import TrainOptions, train

    if not 0 < args.sigma <= 10:
        raise ConfigError(f"--sigma must be in (0, 10], got {args.sigma:g}")
    opts = TrainOptions(
        method=args.method, dataset=args.dataset, sigma=args.sigma, epochs=args.epochs,
        batch=args.batch, lr=args.lr, arch=args.arch, seed=args.seed, device=args.device,
        data_dir=args.data_dir, out=args.out, name=args.name, progress=not args.quiet,
        registry=args.registry, extra_registries=tuple(args.extra_registry),
        command="python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    card = train(opts)
    print(f"trained {card['name']}: clean accuracy {100 * card['clean_accuracy']:.1f}%, "
          f"noisy accuracy at sigma {card['sigma']:g} {100 * card['noisy_accuracy']:.1f}% "
          f"({card['train_seconds']:.0f} s)")
    print(f"weights: {card['weights']}")
    print("registry entry:")
    print(yaml.safe_dump({"models": {card["name"]: card["registry_entry"]}}, sort_keys=False))
    return 0


def cmd_list(args) -> int:
    from bench import datasets
    from bench.registry import load_registry

    reg = load_registry(args.registry, extra=args.extra_registry,
                        datasets=datasets.DATASET_NAMES)
    rows = [[m.name, ", ".join(m.datasets) or "-", m.description] for m in reg.methods.values()]
    print(tabulate(rows, headers=["method", "datasets", "description"]))
    print()
    rows = []
    for name in datasets.DATASET_NAMES:
        grid = datasets.radius_grid(name)
        rows.append([name, ", ".join(datasets.subset_names(name)),
                     f"{grid[0]:g}..{grid[-1]:g} step {grid[1] - grid[0]:g}"])
    print(tabulate(rows, headers=["dataset", "subsets", "radius grid"]))
    print()
    rows = [[m.name, m.get("arch", "-"), m.get("source"), m.get("dataset", "-"),
             m.get("sigma", "-"), m.get("trained_by", "-")] for m in reg.models.values()]
    print(tabulate(rows, headers=["model", "arch", "source", "dataset", "sigma", "trained by"]))
    return 0
