"""``python -m bench run``: certify a dataset subset with one method and print its table."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from tabulate import tabulate

from bench.certify import budget
from bench.commands.common import (
    certification_fields,
    certification_options,
    flops_amount,
    shard,
)
from bench.reports.fixed_vs_sequential import looks_text

# as bench.running.executors.EXECUTORS (not imported: --help needs no torch)
EXECUTORS = ("serial", "ray")

if TYPE_CHECKING:
    from bench.certify.records import RunSummary

HELP = "certify a dataset subset with one method"


def add_arguments(p) -> None:
    p.add_argument("--method", default="gaussian", help="registered method (see 'list')")
    p.add_argument("--dataset", default="digits", help="dataset to certify (see 'list')")
    p.add_argument("--n", type=int, default=None,
                   help="estimation samples (default 5,000 on digits, else 100,000)")
    p.add_argument("--budget", type=int, default=None,
                   help="predictions per image N x m: sets N = budget // m (the method's m); "
                        "N0 comes on top")
    p.add_argument("--budget-flops", type=flops_amount, default=None, metavar="F",
                   help="forward FLOPs per image, e.g. 4.5e11: sets the largest N with (N0 + N) "
                        "x FLOPs per prediction <= F (measured on the run's models; at every "
                        "stage of a cascade); excludes --n and --budget")
    p.add_argument("--shard", type=shard, default=(0, 1),
                   help="I/K: certify every K-th image of the subset from position I (e.g. "
                        "0/4 .. 3/4 on four machines, then 'merge'), or auto for a SLURM job "
                        "array; default 0/1: all")
    p.add_argument("--model", action="append", default=None, metavar="[ROLE=]NAME",
                   help="a registered model name or local checkpoint for the classifier, or "
                        "ROLE=NAME for another role, e.g. denoiser=FOLDER (repeatable)")
    p.add_argument("--arch", default=None, help="architecture of a --model state dict")
    p.add_argument("--image-size", type=int, default=None,
                   help="imagefolder: the side images are resized to (default: the model "
                        "entry's image_size, else the images' own size)")
    p.add_argument("--allow-resize", action="store_true",
                   help="imagefolder: allow resizing images by more than 2x")
    p.add_argument("--executor", choices=EXECUTORS, default="serial",
                   help="who certifies: serial (this process, the default) or ray (Ray actors, "
                        "one per device; needs pip install 'certbench[ray]'); never changes a "
                        "certificate")
    p.add_argument("--address", default=None,
                   help="with --executor ray: an existing Ray cluster (e.g. auto or "
                        "HOST:6379); default: a local cluster started for the run")
    p.add_argument("--workers", type=positive, default=None, metavar="K",
                   help="with --executor ray: K worker actors (default: one per GPU when the "
                        "run's device is CUDA, else 2)")
    p.add_argument("--estimate", action="store_true",
                   help="certify nothing: time one --batch of noisy samples through the base "
                        "classifier and print the run's predicted time for the images it has "
                        "left (a sequential run: its worst case, every image to the last look)")
    certification_options(p)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.running.plan import RunOptions
    from bench.running.runner import EmptyShard, check_executor_options, estimate_run, run

    # Before anything is loaded: Ray missing, or --workers without it, is one line at once.
    check_executor_options(args.executor, args.address, args.workers)

    opts = RunOptions(
        **certification_fields(args), method=args.method, n=args.n, budget=args.budget,
        budget_flops=args.budget_flops,
        shard=args.shard, model=args.model, arch=args.arch, image_size=args.image_size,
        executor=args.executor, address=args.address, workers=args.workers,
        allow_resize=args.allow_resize,
    )
    try:
        if args.estimate:
            print(format_estimate(estimate_run(opts)))
            return 0
        result = run(opts)
    except EmptyShard as empty:  # a job array larger than the subset: not a failure
        print(f"certbench: {empty}")
        return 0
    print(format_summary(result.summary, result.new_images, args.budget, args.budget_flops))
    print(f"results: {result.folder / 'certs.tsv'}  {result.folder / 'summary.json'}")
    return 0


def format_estimate(feas) -> str:
    """``bench run --estimate``: one line a script can log and parse (``seconds=``)."""
    est = feas.estimate
    worst = " (worst case: every image to the last look)" if feas.worst_case else ""
    return (f"estimate: run {feas.run_id}: {est.line()}{worst}; "
            f"{est.seconds_per_sample * 1e6:.0f} us per sample ("
            f"{1 / max(est.seconds_per_sample, 1e-12):,.0f} samples/s), "
            f"{est.samples_per_image:,} samples per image, {feas.images_left} images left; "
            f"seconds={est.seconds_total:.0f}")


def format_summary(summary: RunSummary, new_images: int, requested: int | None = None,
                   requested_flops: int | None = None) -> str:
    """The certified-accuracy table on the radius grid, ACR, abstain rate and cost."""
    ident = summary.card.identity
    head = (f"{ident['method']} on {ident['dataset']} ({ident['subset']}: {summary.images}/"
            f"{summary.subset_size} images, {new_images} new)  sigma={ident['sigma']:g}  "
            f"N0={ident['n0']:,}  N={ident['n']:,}  m={ident['m']}  alpha={ident['alpha']:g}  "
            f"seed={ident['seed']}  run {summary.card.run_id}")
    proc = summary.card.extra.get("procedure") or {}
    stages = (summary.card.extra.get("budget") or {}).get("stages", 1)
    if requested:  # this invocation's budget (the stored card keeps the first one's)
        per = f"({stages} stages x m)" if stages > 1 else "m"
        head += (f"\nbudget {requested:,} predictions/image: N = {requested:,} // {per} = "
                 f"{ident['n']:,} (+ N0 = {ident['n0']:,} selection samples)")
    compute = summary.card.extra.get("compute") or {}
    if requested_flops and compute:  # this invocation's FLOPs budget
        per = budget.flops_per_sample(compute, stages)
        head += (f"\nbudget {requested_flops:.4g} FLOPs/image: N = floor({requested_flops:.4g} / "
                 f"{per:.4g} FLOPs per noisy sample{' over the stages' if stages > 1 else ''})"
                 f" - N0 = {ident['n']:,}")
    if proc.get("name") == "cascade":
        split = ", ".join(f"{s['sigma']:g}: {s['lower']:.2g}" + (
            f" + {s['upper_each_class']:.2g}/class" if s["upper_each_class"] else "")
            for s in proc["alpha_split"])
        head += (f"\ncascade over sigma {', '.join(f'{v:g}' for v in proc['scales'])} "
                 f"(largest first), p0 = {proc['p0']:g}, N0 and N per stage; alpha per "
                 f"stage: {split}")
        tally = summary.stages or {}
        if tally:
            accepted = ", ".join(f"{n} at sigma {k}" for k, n in
                                 tally["accepted_at_sigma"].items()) or "none"
            abstained = ", ".join(f"{n} {k.removeprefix('abstain: ')}" for k, n in
                                  tally["abstained"].items()) or "none"
            head += (f"\naccepted: {accepted}; abstained: {abstained}; "
                     f"{tally['mean_stages_visited']:.2f} stages per image")
    if proc.get("name") == "sequential":
        cps = proc["checkpoints"]
        looks = looks_text(cps)
        rule = proc.get("rule", "gs-cp")
        futility = (f"futility: conditional power < {proc['futility_power']:g} at the "
                    f"{proc['alpha_f']:g} upper bound" if rule == "fine-cp"
                    else f"futility {proc['alpha_f']:g}")
        head += (f"\nsequential ({rule.upper()}): looks at {looks} estimation samples "
                 f"({len(cps)} looks), alpha {proc['alpha_spent']:.3g} split over them, "
                 f"{futility}"
                 + (", label-aware" if proc.get("label_aware") else ""))
        tally = summary.stages or {}
        if tally:
            head += (f"\nmean samples per image {tally['mean_samples']:,.0f} (N0 + estimation) "
                     f"in {tally['mean_looks']:.2f} looks; stopped: " + ", ".join(
                         f"{n} {k}" for k, n in tally["stopped"].items()))
    ca = {f"{r:g}": v for r, v in summary.accuracy.items()}
    table = tabulate([["certified accuracy (%)", *(100 * v for v in ca.values())]],
                     headers=["radius", *ca.keys()], floatfmt=".1f")
    tail = (f"ACR {summary.acr:.3f}   abstain {100 * summary.abstain:.1f}%   max certifiable "
            f"radius {summary.max_certifiable_radius:.3f}\nper image: "
            f"{summary.classifier_passes:,.0f} classifier + {summary.diffusion_passes:,.0f} "
            f"diffusion passes, {_flops_text(summary)}{summary.seconds:.3f} s "
            f"({summary.samples_per_second:,.0f} samples/s on {', '.join(summary.devices)})")
    den = (summary.card.extra.get("base_classifier") or {}).get("denoiser")
    if den:  # the timestep matched to sigma (the factor 2 of the [-1, 1] range included)
        tail += (f"\ndenoiser: t* = {den['t_star']} of {den['timesteps']}, s_t/2 = "
                 f"{den['s_t_over_2']:.4f} (sigma {den['sigma']:g}), sqrt(abar) = "
                 f"{den['sqrt_alpha_bar']:.4f}")
    return "\n".join([head, table, tail])


def _flops_text(summary: RunSummary) -> str:
    """``X FLOPs (Y per prediction), `` when the card has a compute block, else nothing."""
    compute = summary.card.extra.get("compute")
    if not compute or summary.flops_per_image is None:
        return ""
    return (f"{summary.flops_per_image:.4g} FLOPs ({compute['flops_per_prediction']:.4g} per "
            "prediction), ")
