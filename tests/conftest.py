"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from invtable.host import micropython as mpy

# In CI (CI=true) property tests replay a fixed sequence of examples, so a
# submission's result does not depend on luck; on a developer's machine they
# explore new examples on every run (and keep failures in .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def micropython_setup() -> None:
    """Skip when Node.js is absent; fail (not skip) when node_modules is missing.

    CI installs the interpreter with `npm ci`; skipping there would hide a
    broken setup, so only a machine without `node` at all skips.
    """
    if not mpy.node_available():
        pytest.skip("`node` is not installed: MicroPython (WebAssembly) tests need Node.js >= 18")
    if mpy.micropython_package_dir() is None:
        pytest.fail(
            f"npm package {mpy.NPM_PACKAGE} is not installed: {mpy.FIX_HINT}", pytrace=False
        )


@pytest.fixture
def micropython(micropython_setup):
    """Run code under real MicroPython 1.27 and assert it succeeded.

    ``micropython(code, mounts=None, timeout_s=120, stdin="", ...)`` returns the
    CompletedProcess; the invtable packages are importable as on CPython.
    """

    def run(code: str, *args, **kwargs):
        proc = mpy.run_micropython(code, *args, **kwargs)
        assert proc.returncode == 0, (
            f"MicroPython exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
        return proc

    return run


@pytest.fixture
def fake_board():
    """A minimal board speaking the serial protocol on a pty (tests/fake_board.py)."""
    from fake_board import FakeBoard

    board = FakeBoard(pin="1234")
    yield board
    board.close()
