"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import threading

import pytest
from hypothesis import settings

from invtable.host import micropython as mpy
from invtable.host import micropython_unix as mpy_unix

# The real interpreters the `micropython` fixture runs each test under.
MICROPYTHON_INTERPRETERS = ("wasm", "unix")

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


@pytest.fixture(scope="session")
def micropython_unix_setup() -> None:
    """Fail (not skip) when the unix port is missing where the test extra installs
    it; skip on a platform that PyPI has no wheel of it for."""
    if not mpy_unix.available():
        if not mpy_unix.platform_has_wheel():
            pytest.skip(f"{mpy_unix.PYPI_PACKAGE} has no wheel for this platform")
        pytest.fail(
            f"PyPI package {mpy_unix.PYPI_PACKAGE} is not installed: {mpy_unix.FIX_HINT}",
            pytrace=False,
        )


class MicroPythonRunner:
    """``runner(code, mounts=None, timeout_s=120, stdin="", heap_bytes=..., args=())``
    runs `code` under one real MicroPython, asserts it exited 0 and returns the
    CompletedProcess; the invtable packages are importable as on CPython.

    ``name``: "wasm" (npm WebAssembly build, Node) or "unix" (PyPI unix port);
    ``version``: its (major, minor, micro); ``word_bits``: 32 or 64. The
    working directory is the root of the mounts on both: open paths relative
    to it (``lib/invtable/...``).
    """

    def __init__(self, name):
        self.name = name
        module = mpy if name == "wasm" else mpy_unix
        self.version = module.MICROPYTHON_VERSION
        self.word_bits = 32 if name == "wasm" else 64
        self._run = module.run_micropython

    def __repr__(self):
        return f"MicroPythonRunner({self.name!r})"

    def __call__(self, code: str, *args, **kwargs):
        proc = self._run(code, *args, **kwargs)
        assert proc.returncode == 0, (
            f"MicroPython ({self.name}) exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
        return proc


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "interpreter(name, reason): run the `micropython` fixture's tests only under "
        'this interpreter ("wasm" or "unix"); the other one skips with `reason`',
    )


@pytest.fixture(params=MICROPYTHON_INTERPRETERS)
def micropython(request):
    """A :class:`MicroPythonRunner`, once for each real interpreter ("wasm", "unix").

    ``@pytest.mark.interpreter("wasm", reason="...")`` keeps a test to one.
    """
    marker = request.node.get_closest_marker("interpreter")
    if marker is not None and request.param != marker.args[0]:
        pytest.skip(f"not under {request.param}: {marker.kwargs['reason']}")
    setup = "micropython_setup" if request.param == "wasm" else "micropython_unix_setup"
    request.getfixturevalue(setup)
    return MicroPythonRunner(request.param)


@pytest.fixture
def micropython_unix(micropython_unix_setup):
    """A :class:`MicroPythonRunner` for the unix port alone (e.g. ``heap_lock``)."""
    return MicroPythonRunner("unix")


@pytest.fixture
def fake_board():
    """A minimal board speaking the serial protocol on a pty (tests/fake_board.py)."""
    from fake_board import FakeBoard

    board = FakeBoard(pin="1234")
    yield board
    board.close()


class SimServe:
    """`invtable sim serve` in a subprocess: its pty path, stdin and stdout notes.

    ``args``: further options of `sim serve` (e.g. ``--world FILE.json``)."""

    def __init__(self, state_dir, speed, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "invtable.host.cli_serve", "--state-dir", str(state_dir),
             "--speed", str(speed), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=15):
            self.close()
            raise RuntimeError("sim serve printed no device path")
        self.path = self.proc.stdout.readline().strip()
        if not self.path.startswith("/dev/"):
            self.close()
            raise RuntimeError(f"sim serve said {self.path!r}: {self.proc.stderr.read()}")
        self.notes = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.notes.append(line.rstrip())

    def press(self, what):
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.press("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()


@pytest.fixture(scope="session")
def sim_serve():
    """Start `invtable sim serve`: ``sim_serve(state_dir, speed, *args)`` returns a
    ``SimServe`` (``path``, ``press(line)``, ``notes``, ``close()``); any left
    running are shut down at the end of the session."""
    try:
        from invtable.hal_sim import serve  # noqa: F401
        from invtable.host import cli_serve  # noqa: F401
    except ImportError:
        pytest.skip("`invtable sim serve` (host/cli_serve.py, hal_sim/serve.py) not available")
    started = []

    def start(state_dir, speed=20, *args):
        server = SimServe(state_dir, speed, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
