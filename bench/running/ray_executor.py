"""``--executor ray``: certify on Ray actors, one per device, images handed out as they free up.

Imported only when a run asks for Ray (the core never imports ray); without it installed, the
run stops with one line: ``pip install 'certbench[ray]'``.

* **Cluster**: ``--address`` connects to an existing cluster (and only disconnects at the
  end); without it a local cluster is started for the run and shut down when it ends,
  however it ends (finished, an error, Ctrl-C). A process already connected to Ray (a
  notebook, a test) keeps its connection and its cluster.
* **Workers**: ``--workers K`` actors, by default one per GPU of the cluster when the run's
  device is CUDA (each actor gets one GPU: Ray sets its ``CUDA_VISIBLE_DEVICES``), else
  :data:`CPU_WORKERS` on the CPU (one CPU each). Each actor builds its own procedure and
  dataset once with :func:`bench.running.plan.prepare` from the driver's resolved options and
  dataset spec (so a dataset registered only in the driver's process works too), on the
  driver's device type, and refuses to work when its card's identity differs from the
  driver's (other models, data, certbench or noise generator on that node): a certificate
  never depends on which worker made it, since the noise depends only on (seed, image index,
  phase) and the generator's device type, which is part of the identity.
* **Dispatch**: the driver pulls image indices from the runner's lazy claims
  (:func:`bench.running.executors.polled_indices`) only when an actor has room, keeps
  :data:`IN_FLIGHT` images queued at each actor, and yields certificates in the order they
  complete; the runner commits each as it arrives. Only the driver writes to the store.
* **Faults**: a worker that dies is restarted by Ray (up to :data:`MAX_RESTARTS` times) and
  the images it held are handed to the next free worker (none is lost; none is committed
  twice: only a returned certificate is yielded). A worker that cannot be restarted is
  dropped; the run stops (one line; rerun to resume) when none is left or when one image's
  worker died :data:`MAX_ATTEMPTS` times. A driver killed outright leaves its claims to the
  next run (the store takes over a dead process's claims), and its local cluster dies with it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm import tqdm

from bench.certify.records import Certificate
from bench.errors import CertbenchError, ConfigError
from bench.running.executors import SerialExecutor
from bench.running.plan import Prepared, prepare

RAY_HINT = "pip install 'certbench[ray]'"
NAMESPACE = "certbench"  # worker actors are named worker-<token>-<i> in this namespace
CPU_WORKERS = 2  # workers of a CPU run when --workers is not given
IN_FLIGHT = 2  # images queued at each worker (one running, one waiting)
MAX_RESTARTS = 3  # restarts of a worker that died
MAX_ATTEMPTS = 3  # an image whose worker died this often stops the run
POLL_S = 0.5  # how often a driver with nothing claimable looks again
OBJECT_STORE_BYTES = 100 * 2**20  # a local cluster's object store: only indices and certs move
ENV_KEYS = ("CERTBENCH_DATA", "CERTBENCH_MODELS", "CERTBENCH_REGISTRY")
CONNECT_TIMEOUT_S = 5.0  # an --address that does not answer within this is refused


class WorkerError(CertbenchError):
    """The Ray workers could not certify (they died, or none could be started)."""


def import_ray():
    """The ray module, or one line saying how to install it."""
    try:
        import ray  # lazy: Ray is the optional [ray] extra; the core never imports it
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {RAY_HINT}"
                          ) from None
    return ray


def probe_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, within ``timeout_s``, an ``--address`` where nothing answers: ``ray.init``
    would retry it for minutes. An empty one is refused (it would start a local cluster
    unasked); ``auto`` (a cluster Ray finds on this machine) and ``local`` are Ray's."""
    text = address.strip()
    if not text:
        raise ConfigError("--address is empty: give the host:port of a running Ray cluster "
                          "(ray start --head prints it) or auto, or leave --address out to "
                          "start a local cluster for the run")
    if text in ("auto", "local"):
        return
    host, port = _host_port(text)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(f"cannot reach a Ray cluster at --address {text} ({reason}); start "
                          "one there with 'ray start --head', fix the address, or leave "
                          "--address out to start a local cluster") from None


def _host_port(text: str) -> tuple[str, int]:
    """(host, port) of ``host:port``, ``[v6]:port`` or ``ray://host:port``."""
    host, _, port = text.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address {text!r} is not host:port (e.g. 10.0.0.5:6379), "
                          "ray://host:port, auto or local")
    return host, int(port)


class CertWorker:
    """A Ray actor's state: the run prepared once (lazily, again after a restart)."""

    def __init__(self, opts: Any, data: Any, identity: Mapping[str, Any], cwd: str,
                 env: Mapping[str, str]):
        os.environ.update(env)
        if os.path.isdir(cwd):  # relative paths (data, models, registry) as the driver's
            os.chdir(cwd)
        self.opts, self.data, self.identity = opts, data, dict(identity)
        self._executor = None

    def _ready(self):
        if self._executor is None:
            prep = prepare(self.opts, self.data)
            ident = prep.card.identity
            if ident != self.identity:
                keys = sorted(k for k in set(ident) | set(self.identity)
                              if ident.get(k) != self.identity.get(k))
                raise ConfigError(
                    f"a Ray worker on {socket.gethostname()} builds another run than the "
                    f"driver (its {', '.join(keys)} differ(s)); every node needs the same "
                    "certbench, models and data, and the driver's device type")
            self._executor = SerialExecutor(prep.procedure, prep.dataset, prep.device)
        return self._executor

    def ready(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "device": self._ready().device_name}

    def certify(self, idx: int) -> Certificate:
        return self._ready().certify_one(idx)


@dataclass
class _Slot:
    actor: Any
    name: str
    load: int = 0  # images queued or running
    healthy: bool = True  # False from a failure until its probe answers
    probe: Any = None  # the ObjectRef of the ready() call probing a failed worker


class RayExecutor:
    """Certify on Ray actors (see the module docstring); ``certify`` owns the cluster."""

    polls = True  # takes bench.running.executors.polled_indices (None: nothing claimable now)

    def __init__(self, prep: Prepared, *, address: str | None = None, workers: int | None = None,
                 in_flight: int = IN_FLIGHT, max_restarts: int = MAX_RESTARTS,
                 poll_s: float = POLL_S):
        self.ray = import_ray()
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.kind = prep.device.type
        # The workers' options: the driver's resolved ones (procedure, sigma, batch) on the
        # driver's device type; each worker's GPU is the one Ray gives it.
        self.opts = replace(prep.opts, device=self.kind, progress=False, executor="serial",
                            address=None, workers=None)
        self.identity = dict(prep.card.identity)
        # The driver's dataset spec, shipped with the options: a dataset registered only in the
        # driver's process (register_dataset) resolves on every worker.
        self.data = prep.data
        self.say = bool(prep.opts.progress)  # one line on stderr once the workers are ready
        self.address, self.workers = address, workers
        self.in_flight, self.max_restarts, self.poll_s = in_flight, max_restarts, poll_s
        self.token = secrets.token_hex(4)
        self.slots: list[_Slot] = []
        self.devices: list[dict[str, Any]] = []  # what each worker said when it was ready

    # ----- the seam ---------------------------------------------------------------------------
    def certify(self, indices: Iterable[int | None]) -> Iterator[Certificate]:
        owned = self._connect()
        try:
            self._start_workers()
            yield from self._dispatch(iter(indices))
        finally:
            self._stop(owned)

    # ----- cluster and workers ----------------------------------------------------------------
    def _connect(self) -> bool:
        """Connect (or start a local cluster); True when this executor must shut it down."""
        ray = self.ray
        if ray.is_initialized():
            return False
        common = {"namespace": NAMESPACE, "log_to_driver": False,
                  "logging_level": logging.ERROR}
        if self.address is not None:
            probe_address(self.address)
            try:
                ray.init(address=self.address, **common)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise WorkerError(f"cannot connect to the Ray cluster at {self.address}: "
                                  f"{_first_line(exc)}") from None
            return True
        want = self.workers or (self._local_gpus() if self.kind == "cuda" else CPU_WORKERS)
        cpus = want if self.kind != "cuda" else max(os.cpu_count() or 1, want)
        ray.init(address="local", num_cpus=max(1, want, cpus), include_dashboard=False,
                 object_store_memory=OBJECT_STORE_BYTES, **common)
        return True

    @staticmethod
    def _local_gpus() -> int:
        return max(1, torch.cuda.device_count())

    def _count(self) -> tuple[int, dict[str, float]]:
        """How many workers, and what each needs; refused when the cluster lacks them."""
        total = self.ray.cluster_resources()
        if self.kind == "cuda":
            have, unit = int(total.get("GPU", 0)), "GPU"
            need = {"num_cpus": 1, "num_gpus": 1}
        else:
            have, unit = int(total.get("CPU", 0)), "CPU"
            need = {"num_cpus": 1, "num_gpus": 0}
        workers = self.workers or (have if self.kind == "cuda" else CPU_WORKERS)
        if workers < 1 or workers > have:
            raise ConfigError(
                f"--executor ray needs {max(workers, 1)} {unit}(s) for its workers (one each, "
                f"on the run's device type {self.kind}); the Ray cluster has {have}; pass "
                "--workers or another --address")
        return workers, need

    def _start_workers(self) -> None:
        ray = self.ray
        count, need = self._count()
        cls = ray.remote(CertWorker)
        env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
        for i in range(count):
            name = f"worker-{self.token}-{i}"
            actor = cls.options(name=name, namespace=NAMESPACE, max_restarts=self.max_restarts,
                                max_task_retries=0, **need).remote(
                self.opts, self.data, self.identity, os.getcwd(), env)
            self.slots.append(_Slot(actor=actor, name=name))
        refs = [slot.actor.ready.remote() for slot in self.slots]
        try:
            self.devices = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None
        except ray.exceptions.RayError as exc:
            raise WorkerError(f"the Ray workers could not start: {_first_line(exc)}") from None
        if self.say:
            where = "the Ray cluster at " + self.address if self.address else "Ray"
            kinds = sorted({d["device"] for d in self.devices})
            tqdm.write(f"certbench: {len(self.slots)} worker(s) on {where}: {', '.join(kinds)}",
                       file=sys.stderr)

    def _stop(self, owned: bool) -> None:
        ray = self.ray
        try:
            for slot in self.slots:
                try:
                    ray.kill(slot.actor, no_restart=True)
                except Exception:  # noqa: S110 - already gone, or the cluster is
                    pass
            self.slots = []
        finally:
            if owned:
                ray.shutdown()

    # ----- dispatch ---------------------------------------------------------------------------
    def _dispatch(self, indices: Iterator[int | None]) -> Iterator[Certificate]:
        ray = self.ray
        pending: dict[Any, tuple[_Slot, int, int]] = {}  # ref -> (worker, image, attempts)
        probes: dict[Any, _Slot] = {}
        retry: deque[tuple[int, int]] = deque()  # images whose worker died, with attempts
        exhausted = False
        while True:
            if not self.slots and (retry or not exhausted):
                raise WorkerError("every Ray worker died; rerun the command to resume "
                                  "(finished images are kept)")
            starved = False  # nothing claimable right now (others hold the images left)
            for slot in self.slots:
                while slot.healthy and slot.load < self.in_flight:
                    if retry:
                        idx, attempts = retry.popleft()
                    elif exhausted or starved:
                        break
                    else:
                        try:
                            got = next(indices)
                        except StopIteration:
                            exhausted = True
                            break
                        if got is None:
                            starved = True
                            break
                        idx, attempts = got, 0
                    pending[slot.actor.certify.remote(idx)] = (slot, idx, attempts)
                    slot.load += 1
            if not pending and not probes:
                if exhausted and not retry:
                    return
                time.sleep(self.poll_s)  # starved: others hold the images left
                continue
            ready, _ = ray.wait([*pending, *probes], num_returns=1,
                                timeout=self.poll_s if starved else None)
            for ref in ready:
                if ref in probes:
                    self._probed(probes.pop(ref), ref)
                    continue
                slot, idx, attempts = pending.pop(ref)
                slot.load -= 1
                try:
                    cert = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    raise _cause(exc) from None
                except ray.exceptions.RayActorError as exc:
                    if attempts + 1 >= MAX_ATTEMPTS:
                        raise WorkerError(
                            f"image {idx}: its Ray worker died {attempts + 1} times (last: "
                            f"{_first_line(exc)}); rerun the command to resume") from None
                    retry.append((idx, attempts + 1))
                    if slot.healthy:  # wait for Ray's restart before giving it more
                        slot.healthy = False
                        slot.probe = slot.actor.ready.options(max_task_retries=-1).remote()
                        probes[slot.probe] = slot
                    continue
                except ray.exceptions.RayError as exc:  # e.g. Ray itself failing
                    raise WorkerError(f"image {idx}: {_first_line(exc)}") from None
                yield cert

    def _probed(self, slot: _Slot, ref: Any) -> None:
        """A failed worker answered its probe: back to work, or dropped for good."""
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None
        except self.ray.exceptions.RayError:
            self.slots.remove(slot)  # cannot be restarted (its restarts are used up)
            return
        slot.healthy, slot.probe = True, None


def _cause(exc: Any) -> BaseException:
    """The worker's own exception (a ConfigError, a model error, running out of memory) so
    the driver reports it as a serial run would; else Ray's error."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
