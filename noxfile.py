"""Developer sessions: tests, lint, bench.

Sessions reuse the active environment (``python=False``): torch is several GB, so a fresh
virtualenv per session would reinstall it every time. Install first with
``pip install -e '.[test]'`` (README).
"""

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The fast test suite (add ``-- -m slow`` for the slow ones)."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "bench", "methods", "tests", "benchmarks", "noxfile.py")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Throughput benchmarks: certification vs raw forward passes on the same batches."""
    session.run("python", "-m", "pytest", "benchmarks", "-o", "addopts=", "--benchmark-enable",
                "--benchmark-columns=min,mean,stddev,rounds", "-s", *session.posargs)
