"""Developer and CI sessions: ``nox -s tests``, ``lint``, ``typing``, ``bench``, ``fuzz``."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PG15_BIN = Path("/usr/lib/postgresql/15/bin")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite on the embedded PostgreSQL 18, then on PostgreSQL 15 where present."""
    # A wheel install (not editable) so the tests see contracts/ and sql/ as users do.
    session.install(".[test]")
    args = session.posargs or ["tests"]
    session.run("pytest", *args, env={"DISPATCH_AIO_PG_BIN": ""})
    if not session.posargs:
        session.log("the example project's own tests, written only with the pytest plugin")
        with session.chdir("examples/shop"):
            session.run("pytest", env={"DISPATCH_AIO_PG_BIN": ""})
    if not session.posargs and PG15_BIN.is_dir() and not os.environ.get("DISPATCH_AIO_TEST_DSN"):
        session.log("again on PostgreSQL 15: the integration tests")
        # What does not depend on the server's version runs once, on 18 above: the wheel's
        # contents, the embedded server itself, the demo and the docs' examples.
        session.run(
            "pytest",
            "tests/integration",
            "-m",
            "not slow",
            "--ignore=tests/integration/test_packaging.py",
            "--ignore=tests/integration/test_embedded.py",
            "--ignore=tests/integration/test_demo.py",
            "--ignore=tests/integration/test_docs.py",
            env={"DISPATCH_AIO_PG_BIN": str(PG15_BIN)},
        )


@nox.session
def fuzz(session: nox.Session) -> None:
    """Nightly-sized property tests: hostile input to every public entry point, HTTP fuzzing."""
    session.install(".[test]")
    examples = os.environ.get("HOSTILE_EXAMPLES", "2000")
    session.run(
        "pytest",
        "tests/integration/test_hostile_input.py",
        "tests/unit/test_publish_edges.py",
        "tests/integration/test_http.py::test_schemathesis_finds_no_server_error",
        "--timeout=3600",
        *session.posargs,
        env={"DISPATCH_AIO_PG_BIN": "", "HOSTILE_EXAMPLES": examples},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.5")
    paths = ["src", "tests", "benchmarks", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    with session.chdir("examples/shop"):
        session.run("ruff", "check", ".")
        session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark, each printing figures against a baseline measured in the same run."""
    session.install(".[bench]")
    scripts = session.posargs or sorted(
        str(p) for p in Path("benchmarks").glob("*.py") if not p.name.startswith("_")
    )
    for script in scripts:
        session.run("python", script)
