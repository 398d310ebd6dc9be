"""Fetch registered models to where the loaders look for them (torch-free).

A registry entry is downloadable when its ``url`` links a file (HTTP or HTTPS: streamed to a
temporary file beside the target, its sha256 checked against the entry's ``sha256`` when it
pins one, then renamed into place) or when it names a Hub repository: a ``diffusers`` entry
whose ``path`` is a repo id such as ``google/ddpm-cifar10-32`` (snapshot into the models
folder at that path, where :func:`bench.nets.loaders._diffusers_folder` finds it), or a timm
``hf-hub:`` architecture (snapshot into the Hub cache, where timm reads it). A ``url`` that is
a project or model page (a GitHub repository, a Hub model card, a paper) is no file: the
checkpoint must then be fetched by hand, and :func:`plan` says where to put it.

Files land where :func:`bench.nets.loaders._resolve_path` looks: an absolute ``path`` as is,
a ``zoo`` path under the package's zoo folder, any other under the models folder
(``--models-dir``, ``$CERTBENCH_MODELS`` or ``./models``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import ModelError
from bench.progress import progress as progress_bar

log = logging.getLogger("certbench.download")

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"  # as bench.nets.loaders.ZOO_DIR
CHUNK = 1 << 20
TIMEOUT_S = 60
QUIET_BELOW = 10_000_000  # bytes: smaller downloads show no progress


def models_dir(given: Path | None = None) -> Path:
    """Where non-zoo checkpoints live: --models-dir, else $CERTBENCH_MODELS, else ./models."""
    return Path(given or os.environ.get("CERTBENCH_MODELS", "models"))


# Kinds of plan: what `download` can do for an entry.
URL, HUB, PRESENT_IN_ZOO, LIBRARY, PAGE, NONE = "url", "hub", "zoo", "library", "page", "none"
DOWNLOADABLE = (URL, HUB)


def download_command(name: str) -> str:
    return f"python -m bench download {name}"


def is_page_url(url: str) -> bool:
    """Whether ``url`` is a web page about a model rather than the file itself: a GitHub
    repository page (not a release asset or raw file), a Hub model page (not a /resolve/
    link), a paper; anything that is not HTTP(S)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.lower().split(":")[0].removeprefix("www.")
    path = parts.path
    if parts.scheme not in ("http", "https"):
        return True
    if host == "github.com":
        return "/releases/download/" not in path and "/raw/" not in path
    if host in ("huggingface.co", "hf.co"):
        return "/resolve/" not in path
    return host in ("arxiv.org", "openreview.net", "paperswithcode.com")


def hub_repo_of_url(url: str) -> str | None:
    """``ORG/REPO`` of a Hub model page URL such as https://huggingface.co/google/ddpm-cifar10-32."""
    parts = urllib.parse.urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if parts.netloc.lower().removeprefix("www.") in ("huggingface.co", "hf.co") \
            and len(segments) == 2:
        return "/".join(segments)
    return None


@dataclass(frozen=True)
class Plan:
    """What downloading one model means: its kind (one of URL, HUB, PRESENT_IN_ZOO, LIBRARY,
    PAGE, NONE), the file or folder the loader reads, and where it comes from."""

    name: str
    kind: str
    target: Path | None = None
    url: str | None = None
    repo_id: str | None = None
    sha256: str | None = None
    present: Path | None = None  # an existing copy the loader would read (checked by fetch)

    @property
    def downloadable(self) -> bool:
        return self.kind in DOWNLOADABLE

    def why_not(self) -> str:
        """One line: why this model is not downloaded (for the kinds that are not)."""
        where = f"; place it at {self.target} by hand" if self.target else ""
        if self.kind == PRESENT_IN_ZOO:
            return f"{self.name}: ships with certbench ({self.target}); nothing to download"
        if self.kind == LIBRARY:
            return (f"{self.name}: its weights come with the timm/torchvision library on first "
                    "use (cached there); nothing to download")
        if self.kind == PAGE:
            return (f"{self.name}: its url {self.url} is a web page, not a file: download the "
                    f"checkpoint from there by hand" + (f" and place it at {self.target}"
                                                        if self.target else ""))
        return (f"{self.name}: no download source (its registry entry has no url of a file "
                f"nor a Hub id){where}")


def plan(name: str, fields: Mapping[str, Any], models_dir: Path,
         registry_dir: Path | None = None) -> Plan:
    """How to fetch the registry model ``name`` (its entry's ``fields``) into ``models_dir``."""
    source = str(fields.get("source", "auto"))
    raw_path = fields.get("path")
    url = fields.get("url")
    sha = str(fields["sha256"]).lower().removeprefix("sha256:") if fields.get("sha256") else None
    arch = str(fields.get("arch") or "")
    if source == "diffusers":
        if raw_path and _is_repo_id(str(raw_path)):
            local = _local_folder(str(raw_path), models_dir)
            return Plan(name, HUB, target=local or models_dir / str(raw_path),
                        repo_id=str(raw_path), present=local)
        folder = _local_folder(str(raw_path or ""), models_dir) if raw_path else None
        if folder is not None and folder.is_relative_to(ZOO_DIR):
            return Plan(name, PRESENT_IN_ZOO, target=folder)
        repo = hub_repo_of_url(url) if url else None
        target = folder or (Path(str(raw_path)).expanduser() if raw_path else None)
        if target is not None and not target.is_absolute():
            target = models_dir / target
        if repo:
            return Plan(name, HUB, target=target, repo_id=repo, url=url, present=folder)
        return Plan(name, PAGE if url else NONE, target=target, url=url)
    if source == "python":
        return Plan(name, LIBRARY)
    if source in ("timm", "torchvision") and not raw_path:
        if source == "timm" and arch.startswith("hf-hub:"):
            return Plan(name, HUB, repo_id=arch.removeprefix("hf-hub:").split("@")[0])
        return Plan(name, LIBRARY)
    if not raw_path:
        return Plan(name, NONE)
    target = expected_path(str(raw_path), source, models_dir, registry_dir)
    if source == "zoo" and target.is_file() and not url:
        return Plan(name, PRESENT_IN_ZOO, target=target)
    present = target if target.is_file() else None
    if not url:
        return Plan(name, NONE, target=target, present=present)
    if is_page_url(url):
        return Plan(name, PAGE, target=target, url=url, present=present)
    return Plan(name, URL, target=target, url=url, sha256=sha, present=present)


def expected_path(raw: str, source: str, models_dir: Path,
                  registry_dir: Path | None = None) -> Path:
    """Where the loader reads a checkpoint ``path`` (as ``_resolve_path``): absolute as is,
    beside the registry file when a file is there, else under the zoo or the models folder."""
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    if source != "zoo" and registry_dir is not None and (Path(registry_dir) / path).is_file():
        return Path(registry_dir) / path
    return (ZOO_DIR if source == "zoo" else Path(models_dir)) / path


def _is_repo_id(raw: str) -> bool:
    return raw.count("/") == 1 and not raw.startswith((".", "/", "~")) and "\\" not in raw


def _local_folder(raw: str, models_dir: Path) -> Path | None:
    """The local diffusers folder the loader would use (as ``_diffusers_folder``), or None."""
    path = Path(raw).expanduser()
    for candidate in ([path] if path.is_absolute() else
                      [ZOO_DIR / path, Path(models_dir) / path, path]):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(p: Plan, *, progress: bool = True) -> str:
    """Download one planned model (skipped when a good copy is there); returns the line to
    print. A failure raises :class:`ModelError` and leaves no partial file behind."""
    if p.kind == URL:
        return _fetch_url(p, progress)
    if p.kind == HUB:
        return _fetch_hub(p)
    return p.why_not()


def _fetch_url(p: Plan, progress: bool) -> str:
    assert p.url is not None and p.target is not None
    if p.present is not None:
        if not p.sha256:
            return (f"{p.name}: already at {p.present} (the registry pins no sha256 to check "
                    "it against), skipped")
        have = sha256_file(p.present)
        if have == p.sha256:
            return f"{p.name}: already at {p.present} with the registry's sha256, skipped"
        log.warning("%s: %s has sha256 %s…, the registry expects %s…: downloading it again",
                    p.name, p.present, have[:12], p.sha256[:12])
    sha, size = download_file(p.url, p.target, sha256=p.sha256, name=p.name, progress=progress)
    pinned = ("matches the registry" if p.sha256 else
              f"{sha}; the registry pins none: add 'sha256: {sha}' to the entry")
    return f"{p.name}: downloaded {p.url} -> {p.target} ({_size(size)}, sha256 {pinned})"


def download_file(url: str, target: Path, *, sha256: str | None = None, name: str = "",
                  progress: bool = True,
                  opener: Callable[..., Any] = urllib.request.urlopen) -> tuple[str, int]:
    """Stream ``url`` into a temporary file beside ``target``, check its sha256, rename it
    into place; returns (sha256, bytes). Nothing is left behind on any failure."""
    who = f"model {name}: " if name else ""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "certbench"})  # noqa: S310
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".part")
    tmp = Path(tmp_name)
    digest, size = hashlib.sha256(), 0
    try:
        try:
            response = opener(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            raise ModelError(f"{who}downloading {url} failed: HTTP {exc.code} {exc.reason}; "
                             f"check the entry's url, or place the file at {target} by hand"
                             ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelError(f"{who}cannot download {url} ({reason}); check the network, or "
                             f"place the file at {target} by hand") from None
        with response, os.fdopen(fd, "wb") as out:
            fd = -1
            kind = (response.headers.get("Content-Type") or "").lower()
            if kind.startswith("text/html") and not target.name.endswith((".html", ".htm")):
                raise ModelError(f"{who}{url} is a web page, not a checkpoint file; download "
                                 f"the checkpoint from there and place it at {target}")
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            small = total is not None and total < QUIET_BELOW  # done before a line is due
            bar = progress_bar(total=total, unit="B", unit_scale=True, desc=name or target.name,
                               disable=not progress or small, dynamic_ncols=True)
            try:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
        if total is not None and size != total:
            raise ModelError(f"{who}the download of {url} stopped after {size:,} of {total:,} "
                             "bytes; run the command again")
        actual = digest.hexdigest()
        if sha256 and actual != sha256.lower():
            raise ModelError(f"{who}{url} has sha256 {actual[:12]}…, the registry expects "
                             f"{sha256.lower()[:12]}…; nothing was saved: check the entry's url "
                             "and sha256")
        os.replace(tmp, target)
        return actual, size
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


def _fetch_hub(p: Plan) -> str:
    assert p.repo_id is not None
    if p.present is not None and _is_diffusers_folder(p.present):
        return f"{p.name}: already at {p.present}, skipped"
    try:
        # lazy: huggingface_hub is needed only for Hub downloads
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(f"model {p.name}: downloading Hub repo {p.repo_id} needs "
                         "huggingface_hub: pip install huggingface_hub") from None
    where = {"local_dir": str(p.target)} if p.target is not None else {}
    try:
        folder = snapshot_download(repo_id=p.repo_id, **where)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"model {p.name}: cannot download Hub repo {p.repo_id} ({first}); "
                         "check the network and the repo id") from None
    return f"{p.name}: downloaded Hub repo {p.repo_id} -> {p.target or folder}"


def _is_diffusers_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "unet" / "config.json").is_file()


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"
