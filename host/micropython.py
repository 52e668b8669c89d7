"""Run code under a real MicroPython 1.27 interpreter (the npm WebAssembly build).

The interpreter is ``@micropython/micropython-webassembly-pyscript`` run by Node
through ``mpy_node_runner.mjs`` (next to this file). It is installed with
``npm ci`` in the repo root, which puts it in ``node_modules/``.

By default the invtable package folders are copied into MicroPython's in-memory
filesystem as ``/lib/invtable/{__init__.py,firmware,hal_sim,boards}`` (``/lib``
is on MicroPython's ``sys.path``), so ``import invtable.firmware.compat`` works
the same way it does on CPython.

Heap measurements: ``gc.mem_alloc()`` deltas are exact there (16-byte blocks);
use :data:`HEAP_PROBE` (a MicroPython snippet defining ``heap_probe``) or
:func:`measure_heap_bytes`. Do not use ``micropython.heap_lock()``: it hangs in
this build.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

NPM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
MICROPYTHON_VERSION = (1, 27, 0)
RUNNER = Path(__file__).with_name("mpy_node_runner.mjs")
DEFAULT_HEAP_BYTES = 8 * 1024 * 1024
FIX_HINT = "run `npm ci` in the repo root"

# Where each package folder goes inside MicroPython's filesystem.
PACKAGE_DESTS = {
    "invtable": "/lib/invtable",
    "invtable.firmware": "/lib/invtable/firmware",
    "invtable.hal_sim": "/lib/invtable/hal_sim",
    "invtable.boards": "/lib/invtable/boards",
}

Mount = tuple[str | os.PathLike[str], str]


class MicroPythonUnavailable(RuntimeError):
    """Node or the npm MicroPython package is missing."""


class MicroPythonError(RuntimeError):
    """A helper's MicroPython run failed."""


HEAP_PROBE = '''
import gc

def heap_probe(fn, n=1000, warmup=3):
    """Heap bytes allocated by n calls of fn(), after `warmup` calls.

    gc is disabled while measuring so a collection cannot hide allocations.
    `for _ in range(n)` compiles to a counter loop and allocates nothing, and
    calling fn() costs nothing on the heap (frames live on the pystack), so an
    allocation-free fn gives exactly 0.
    """
    for _ in range(warmup):
        fn()
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(n):
            fn()
        after = gc.mem_alloc()
    finally:
        gc.enable()
    return after - before
'''
"""MicroPython source defining ``heap_probe(fn, n=1000, warmup=3) -> int``.

Prepend it to code run with :func:`run_micropython`; ``heap_probe`` returns the
total heap bytes allocated by ``n`` calls (divide by ``n`` for per-call).
"""


def node_executable() -> str | None:
    return shutil.which("node")


def node_available() -> bool:
    return node_executable() is not None


def _search_roots() -> list[Path]:
    roots = []
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        roots.extend([start, *start.parents])
    return roots


def micropython_package_dir() -> Path | None:
    """The installed npm package's folder, or None if `npm ci` has not been run.

    ``$INVTABLE_MICROPYTHON_MJS`` (path to micropython.mjs) overrides the search
    of ``node_modules`` beside this file, its parents and the working directory.
    """
    override = os.environ.get("INVTABLE_MICROPYTHON_MJS")
    if override:
        path = Path(override)
        return path.parent if path.is_file() else None
    for root in _search_roots():
        pkg = root / "node_modules" / NPM_PACKAGE
        if (pkg / "micropython.mjs").is_file():
            return pkg
    return None


def package_mounts() -> list[tuple[Path, str]]:
    """(host folder, MicroPython folder) for invtable and its portable subpackages."""
    mounts = []
    for name, dest in PACKAGE_DESTS.items():
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise MicroPythonUnavailable(f"cannot locate package {name}; is invtable installed?")
        mounts.append((Path(next(iter(spec.submodule_search_locations))), dest))
    return mounts


def runner_command(
    script: str | os.PathLike[str],
    mounts: Sequence[Mount] | None = None,
    *,
    heap_bytes: int = DEFAULT_HEAP_BYTES,
    args: Sequence[str] = (),
) -> list[str]:
    """The argv that runs `script` (a host path, or "-" for stdin) under MicroPython."""
    node = node_executable()
    if node is None:
        raise MicroPythonUnavailable("`node` not found on PATH; install Node.js >= 18")
    pkg = micropython_package_dir()
    if pkg is None:
        raise MicroPythonUnavailable(f"npm package {NPM_PACKAGE} is not installed: {FIX_HINT}")
    if mounts is None:
        mounts = package_mounts()
    cmd = [node, str(RUNNER), "--micropython", str(pkg / "micropython.mjs")]
    cmd += ["--heap", str(heap_bytes)]
    for src, dest in mounts:
        cmd += ["--mount", f"{os.fspath(src)}:{dest}"]
    return [*cmd, "--", os.fspath(script), *args]


def run_micropython(
    code: str,
    mounts: Sequence[Mount] | None = None,
    timeout_s: float = 120,
    *,
    stdin: str = "",
    heap_bytes: int = DEFAULT_HEAP_BYTES,
    args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run `code` under MicroPython and return the finished process (text mode).

    `mounts` defaults to the invtable packages (see :func:`package_mounts`); pass
    ``[]`` for none. `stdin` is what the script reads from ``sys.stdin``.
    returncode is 0 on success, 1 if the code raised (traceback on stderr), the
    SystemExit code if it called sys.exit, 2 for runner setup errors.
    Raises subprocess.TimeoutExpired after `timeout_s`.
    """
    with tempfile.TemporaryDirectory(prefix="invtable-mpy-") as tmp:
        script = Path(tmp) / "main.py"
        script.write_text(code, encoding="utf-8")
        cmd = runner_command(script, mounts, heap_bytes=heap_bytes, args=args)
        return subprocess.run(
            cmd,
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout_s,
            check=False,
        )


def measure_heap_bytes(
    setup: str,
    call: str,
    n: int = 1000,
    *,
    warmup: int = 3,
    mounts: Sequence[Mount] | None = None,
    timeout_s: float = 120,
) -> int:
    """Total heap bytes that `n` evaluations of the expression `call` allocate.

    `setup` is MicroPython code run first (imports, objects); `call` is an
    expression using its globals, e.g. ``"ctrl.step(inputs, now)"``.
    """
    code = (
        HEAP_PROBE
        + "\n"
        + setup
        + "\n\ndef _heap_probe_fn():\n    return "
        + call
        + f"\n\nprint('HEAP_PROBE_BYTES', heap_probe(_heap_probe_fn, {int(n)}, {int(warmup)}))\n"
    )
    proc = run_micropython(code, mounts, timeout_s)
    if proc.returncode != 0:
        raise MicroPythonError(
            f"heap probe failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    for line in proc.stdout.splitlines():
        if line.startswith("HEAP_PROBE_BYTES "):
            return int(line.split()[1])
    raise MicroPythonError(f"heap probe printed no result:\n{proc.stdout}")
