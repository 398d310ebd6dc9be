"""Developer sessions: tests, lint, bench.

Sessions reuse the active environment (``python=False``): torch is several GB, so a fresh
virtualenv per session would reinstall it every time. Install first with
``pip install -e '.[test]'`` (README).
"""

import os

import nox

nox.options.sessions = ["lint", "imports", "tests"]


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The fast test suite (add ``-- -m slow`` for the slow ones)."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "bench", "methods", "tests", "examples", "benchmarks", "scripts",
                "noxfile.py")


@nox.session(python=False)
def imports(session: nox.Session) -> None:
    """The import contracts of pyproject.toml: layers, no circle, methods/ import only the
    adapter API, the reporting side never imports torch (tests/test_layers.py runs them too)."""
    session.run("lint-imports", "--no-cache")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Throughput benchmarks: certification vs raw forward passes on the same batches."""
    session.run("python", "-m", "pytest", "benchmarks", "-o", "addopts=", "--benchmark-enable",
                "--benchmark-columns=min,mean,stddev,rounds", "-s", *session.posargs)


@nox.session(name="bench-gpu", python=False)
def bench_gpu(session: nox.Session) -> None:
    """GPU throughput at CIFAR-10 size (ResNet-110, DDS): raw forward vs certification.

    ``-- --bf16`` adds bf16 autocast rows; CERTBENCH_GPU_BENCH_OUT=PATH writes the table as JSON;
    CERTBENCH_GPU_BENCH_DEVICE=cpu is a dry run with a tiny n. Skips without CUDA. Other
    settings: benchmarks/test_gpu_throughput.py.
    """
    env = {"CERTBENCH_GPU_BENCH_DEVICE": os.environ.get("CERTBENCH_GPU_BENCH_DEVICE") or "cuda"}
    args = [a for a in session.posargs if a != "--bf16"]
    if "--bf16" in session.posargs:
        env["CERTBENCH_GPU_BENCH_MODES"] = "fp32,bf16"
    session.run("python", "-m", "pytest", "benchmarks/test_gpu_throughput.py", "-o", "addopts=",
                "-o", "markers=gpu: needs a CUDA device (or CERTBENCH_GPU_BENCH_DEVICE=cpu)",
                "-s", "-rs", *args, env=env)
