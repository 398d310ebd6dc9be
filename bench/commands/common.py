"""Argument types and option groups shared by several subcommands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bench.certify.budget import parse_flops
from bench.data.specs import parse_radii
from bench.errors import ConfigError

# as bench.nets.memory_format.MEMORY_FORMATS (not imported: --help needs no torch)
MEMORY_FORMATS = ("contiguous", "channels_last", "auto")


def shard(text: str) -> tuple[int, int]:
    """``I/K``, or ``auto``: this task's shard of a SLURM job array (:func:`slurm_shard`)."""
    if text.strip().lower() == "auto":
        return slurm_shard()
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected I/K such as 0/4, or auto, got {text!r}") from None
    return i, k


def slurm_shard(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(I, K) of this SLURM array task: K tasks, I = (TASK_ID - MIN) / STEP counted from 0
    (array ids may start at 1 or anywhere). K is ``SLURM_ARRAY_TASK_COUNT``, else derived from
    ``SLURM_ARRAY_TASK_MIN``/``MAX``; an array whose ids are not evenly spaced is refused."""
    env = os.environ if env is None else env

    def number(name: str) -> int | None:
        value = env.get(name, "").strip()
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--shard auto: {name}={value!r} is not a number; pass --shard I/K "
                "instead") from None

    task = number("SLURM_ARRAY_TASK_ID")
    if task is None:
        raise argparse.ArgumentTypeError(
            "--shard auto needs a SLURM job array (e.g. sbatch --array=0-3 for 4 shards), but "
            "SLURM_ARRAY_TASK_ID is not set; pass --shard I/K instead")
    low, high = number("SLURM_ARRAY_TASK_MIN"), number("SLURM_ARRAY_TASK_MAX")
    step = number("SLURM_ARRAY_TASK_STEP") or 1
    count = number("SLURM_ARRAY_TASK_COUNT")
    spread = None if low is None or high is None else (high - low) // step + 1
    if count is None:
        count = spread
    if count is None:
        raise argparse.ArgumentTypeError(
            "--shard auto: SLURM_ARRAY_TASK_COUNT (or SLURM_ARRAY_TASK_MIN and "
            "SLURM_ARRAY_TASK_MAX) is not set; pass --shard I/K instead")
    low = 0 if low is None else low
    index, off = divmod(task - low, step)
    last = low + (count - 1) * step if high is None else high
    if off or spread not in (None, count):
        raise argparse.ArgumentTypeError(
            f"--shard auto: array task {task} is not a shard of {count} (ids {low}..{last}, "
            f"step {step}: not evenly spaced); use a range such as --array=0-3 or 1-4, or pass "
            "--shard I/K")
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(
            f"--shard auto: array task {task} is not a shard of {count}: it lies outside the "
            f"array's ids {low}..{last}" + (f" (step {step})" if step != 1 else "")
            + "; check SLURM_ARRAY_TASK_* or pass --shard I/K")
    return index, count


def flops_amount(text: str) -> int:
    """A FLOPs budget (``4.5e11``) as a whole number of FLOPs; a bad one is one line."""
    try:
        return parse_flops(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--budget-flops ")) from None


def param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)  # YAML scalars: 0.5 -> float, true -> bool
    except yaml.YAMLError:
        return key, value


def folder(text: str) -> Path:
    """A folder to write into: refused when it, or a parent, exists as a file."""
    path = Path(text).expanduser()
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise argparse.ArgumentTypeError(
                    f"{part} is a file, not a folder; pass a folder path")
            break
    return path


def params_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """--param pairs as a dict; a key given twice is a mistake, not "the last one wins"."""
    out: dict[str, Any] = {}
    for key, value in items:
        if key in out:
            raise ConfigError(f"--param {key} given twice")
        out[key] = value
    return out


def common_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", type=Path,
                   help="registry file (default: $CERTBENCH_REGISTRY, else ./registry.yaml, else "
                        "the one shipped with certbench)")
    p.add_argument("--extra-registry", type=Path, action="append", default=[],
                   help="additional registry file with more models/methods (repeatable)")


def certification_options(p: argparse.ArgumentParser) -> None:
    """The certification and I/O options of every command that certifies (run, compare)."""
    p.add_argument("--sigma", type=float, default=None,
                   help="noise std in [0,1] pixel units (default 0.25; a cascade's noise levels "
                        "are its param scales)")
    p.add_argument("--n0", type=int, default=100, help="selection samples (default 100)")
    p.add_argument("--alpha", type=float, default=0.001,
                   help="failure probability of each image's certificate")
    p.add_argument("--batch", type=int, default=1024,
                   help="noisy copies per forward pass (a multiple of the 1024-sample noise chunk "
                        "avoids a copy; never changes results)")
    p.add_argument("--subset", default="full", help="named image subset (see 'list')")
    p.add_argument("--max-images", type=int, default=None, metavar="K",
                   help="certify only the first K images of the subset (of this shard); "
                        "default: all of them")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise; part of the run id (another seed is another run)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument("--results", type=folder, default=Path("results"),
                   help="results folder: the store, per-run TSVs and summaries (runs resume "
                        "from it)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the dataset's files are (default $CERTBENCH_DATA or ./data; "
                        "digits needs none)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="where non-zoo checkpoints live (default $CERTBENCH_MODELS or ./models)")
    p.add_argument("--param", type=param, action="append", default=[], metavar="KEY=VALUE",
                   help="override a method param: KEY=VALUE (repeatable)")
    p.add_argument("--procedure", default=None,
                   help="certification procedure (default: the method's own; cohen = CERTIFY "
                        "with fixed N0 and N, cascade = multi-scale)")
    p.add_argument("--certification", choices=("fixed", "sequential"), default="fixed",
                   help="fixed: N estimation samples per image (default; what leaderboards "
                        "rank); sequential: group-sequential bounds over the radius grid, "
                        "stopping once the certified level is determined (same guarantee, "
                        "fewer samples; ranked separately)")
    # --certification's first name, still accepted (not shown in --help)
    p.add_argument("--protocol", choices=("fixed", "sequential"), dest="certification",
                   help=argparse.SUPPRESS)
    p.add_argument("--label-aware", action="store_true",
                   help="with --certification sequential: stop after selection when the selected "
                        "class is wrong (it cannot add to certified accuracy; recorded)")
    p.add_argument("--sequential-rule", choices=("gs-cp", "fine-cp"), default="gs-cp",
                   help="with --certification sequential: gs-cp (default; six looks up to 1.2 N) "
                        "or fine-cp (looks every x1.1 up to N, futility by the last look's "
                        "conditional power; docs/sequential.md)")
    p.add_argument("--radii", default=None, metavar="R1,R2,...|auto",
                   help="radii to report certified accuracy at: comma-separated non-negative "
                        "values (at most 50), or 'auto' for 0 up to the run's maximum "
                        "certifiable radius in nice steps (default: the dataset's grid; the "
                        "grid is recorded in the card, not part of the run id)")
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="contiguous",
                   help="the networks' memory format: contiguous (NCHW, the default), "
                        "channels_last (faster convolutions on a CPU; only certbench's own "
                        "architectures, recorded in the run id as float results may differ in "
                        "the last bit) or auto (channels-last where every network of the run "
                        "accepts it)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (bar or lines) and only errors on stderr")
    common_registry(p)


def certification_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The RunOptions fields set by :func:`certification_options` (plus --dataset)."""
    return {
        "dataset": args.dataset, "sigma": args.sigma, "n0": args.n0, "alpha": args.alpha,
        "batch": args.batch, "subset": args.subset, "max_images": args.max_images,
        "seed": args.seed, "device": args.device, "results": args.results,
        "data_dir": args.data_dir, "models_dir": args.models_dir, "registry": args.registry,
        "extra_registries": tuple(args.extra_registry), "params": params_dict(args.param),
        "progress": not args.quiet, "procedure": args.procedure,
        "certification": args.certification, "label_aware": args.label_aware,
        "sequential_rule": args.sequential_rule,
        "radii": None if args.radii is None else parse_radii(args.radii),
        "memory_format": args.memory_format,
    }
