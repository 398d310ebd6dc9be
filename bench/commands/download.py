"""``python -m bench download``: fetch registered checkpoints to where runs look for them.

A model whose registry entry has a ``url`` of a file is streamed to a temporary file, checked
against the entry's ``sha256`` (when it pins one) and renamed into place: the entry's ``path``
under --models-dir (``$CERTBENCH_MODELS`` or ./models by default). A diffusers entry whose
``path`` is a Hub repo id (e.g. google/ddpm-cifar10-32) is fetched with huggingface_hub into
the models folder at that path. A file already there with the right sha256 is skipped, so
running the command again is cheap. A model without a url of a file or a Hub id is named with
where its file has to go.

Example::

    python -m bench download cohen-cifar10-resnet110-0.25 --models-dir ~/models
    python -m bench download --all --registry my-registry.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.commands.common import common_registry
from bench.errors import ConfigError, ModelError
from bench.registry.entries import load_registry

HELP = "fetch registered model checkpoints (by url or Hub id) into the models folder"


def add_arguments(p) -> None:
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="registered model names (see 'list'); or pass --all")
    p.add_argument("--all", action="store_true",
                   help="every model of the registry files that has a download source")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="where to put the checkpoints (default $CERTBENCH_MODELS or ./models)")
    common_registry(p)


def run(args) -> int:
    # lazy: cli imports every command to build its parser; only the command run loads its code
    from bench.registry import download
    from bench.registry.download import models_dir

    if bool(args.models) == bool(args.all):
        raise ConfigError("pass MODEL names or --all (not both); 'python -m bench list' "
                          "shows the registered models")
    registry = load_registry(args.registry, extra=args.extra_registry)
    names = list(registry.models) if args.all else list(dict.fromkeys(args.models))
    entries = [registry.model(name) for name in names]  # unknown names: did-you-mean, exit 2
    root = models_dir(args.models_dir)
    plans = [download.plan(e.name, e.fields, root,
                           Path(e.origin).expanduser().resolve().parent) for e in entries]
    if not args.all:  # every named model must be fetchable before anything is fetched
        for plan in plans:
            if plan.kind in (download.PAGE, download.NONE):
                raise ModelError(plan.why_not())
    zoo = [p.name for p in plans if p.kind == download.PRESENT_IN_ZOO]
    progress = not getattr(args, "quiet", False)
    fetched = failed = 0
    for plan in plans:
        if plan.kind == download.PRESENT_IN_ZOO and args.all:
            continue  # summarized below
        try:
            print(download.fetch(plan, progress=progress), flush=True)
        except ModelError as exc:
            if not args.all:
                raise
            failed += 1  # --all goes on with the others; each failure is one line
            print(f"certbench: error: {' '.join(str(exc).split())}", file=sys.stderr)
        fetched += plan.downloadable
    if args.all:
        if zoo:
            print(f"{len(zoo)} model(s) ship with certbench (the package zoo): nothing to "
                  "download")
        if not fetched:
            print("no model of these registry files has a download source (a url of a file "
                  "or a Hub id)")
    return 2 if failed else 0
