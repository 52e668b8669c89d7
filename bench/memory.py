"""The memory figures of bench/run.py (issue 14): heap after a full board boot,
the soak, and the heap_lock results per state.

* ``boot()``: bench/boot_heap.py for the .mpy firmware (what deploy puts on
  the board) and the .py sources, on the WebAssembly build (32-bit).
* ``soak_short()``: bench/soak.py for a few simulated minutes at the ESP32's
  100 KB and at SOAK_BUDGET_KB (the heap an ESP32 without PSRAM can give at
  most); ``soak_recorded()``: the 24 h run recorded in bench/soak_24h.json
  (``.venv/bin/python -m bench.soak --hours 24 --heap-kb 150 --json
  bench/soak_24h.json``, about 40 minutes).
* ``heap_lock()``: the cases of tests/test_heap_lock_unix.py on the unix port
  (64-bit; the only one with a working ``micropython.heap_lock()``).
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOAK_RECORD = REPO / "bench" / "soak_24h.json"
HEAP_LOCK_TESTS = REPO / "tests" / "test_heap_lock_unix.py"
SOAK_SHORT_MINUTES = 5
SOAK_BUDGET_KB = 150
SOAK_GOAL_KB = 100


def boot() -> dict:
    """{"mpy": measure, "py": measure} (bench/boot_heap.measure)."""
    from bench import boot_heap as bh

    return {fmt: bh.measure(fmt) for fmt in ("mpy", "py")}


def soak_short() -> dict:
    """{"goal": a run at 100 KB, "budget": a run at SOAK_BUDGET_KB}."""
    from bench import soak

    hours = SOAK_SHORT_MINUTES / 60
    return {
        "goal": soak.run(hours, seed=3, heap_kb=SOAK_GOAL_KB, timeout_s=300, fault_chance=1.0),
        "budget": soak.run(hours, seed=3, heap_kb=SOAK_BUDGET_KB, timeout_s=300,
                           fault_chance=1.0),
    }


def soak_recorded() -> dict | None:
    if not SOAK_RECORD.is_file():
        return None
    return json.loads(SOAK_RECORD.read_text(encoding="utf-8"))


def _heap_lock_module():
    spec = importlib.util.spec_from_file_location("_heap_lock_cases", HEAP_LOCK_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def heap_lock() -> dict:
    """{case: {"selected": {state: ticks}, "locked": {...}[, failure]}, "_allocating":
    {case: why}, "_interpreter": text}: every case in one unix-port run."""
    from invtable.host import micropython_unix as mpy_unix

    m = _heap_lock_module()
    calls = ", ".join(
        f"{name!r}: case({events!r}, {ticks}, {select})"
        for name, (events, ticks, select, _) in m.CASES.items()
    )
    code = (
        textwrap.dedent(m.HARNESS)
        + "print('IMPL ' + sys.implementation.name + ' '"
        " + '.'.join(str(v) for v in sys.implementation.version[:3]))\n"
        + f"print({m.MARK!r} + json.dumps({{{calls}}}))\n"
    )
    proc = mpy_unix.run_micropython(code, timeout_s=300)
    if proc.returncode != 0:
        raise RuntimeError(f"heap_lock harness failed: {proc.stderr.strip()[-400:]}")
    lines = proc.stdout.splitlines()
    result = next(json.loads(ln[len(m.MARK):]) for ln in lines if ln.startswith(m.MARK))
    impl = next(ln[5:] for ln in lines if ln.startswith("IMPL "))
    bits = next(int(ln.split()[1]) for ln in lines if ln.startswith("WORD_BITS "))
    result["_interpreter"] = f"{impl} (unix port, {bits}-bit)"
    result["_allocating"] = dict(m.ALLOCATING)
    return result


ROMFS_SCRIPT = """
import gc, sys, vfs
from hal_sim import machine_sim
sys.modules["machine"] = machine_sim
MODS = %r
mode, where = sys.argv[1], sys.argv[2]
gc.collect()
m0 = gc.mem_alloc()
if mode == "rom":
    img = open(where, "rb").read()  # in the heap here; on a board it is flash
    vfs.mount(vfs.VfsRom(img), "/rom")
    sys.path.insert(0, "/rom")
else:
    sys.path.insert(0, where)
gc.collect()
m1 = gc.mem_alloc()
for m in MODS:
    __import__("firmware." + m)
gc.collect()
m2 = gc.mem_alloc()
print("ROMFS_JSON {\\"setup\\": %%d, \\"modules\\": %%d}" %% (m1 - m0, m2 - m1))
"""


def romfs_unix() -> dict:
    """What-if on the unix port (64-bit, the one with VfsRom): the heap that
    importing the firmware modules main.py loads takes with them as .mpy files
    (what deploy does) and from a ROMFS image (MicroPython 1.25+: bytecode
    run in place from flash, as `mpremote romfs deploy` puts it on an ESP32
    with a romfs partition)."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from bench import boot_heap as bh
    from invtable.host import micropython_unix as mpy_unix

    with tempfile.TemporaryDirectory(prefix="invtable-romfs-") as tmp:
        root = Path(tmp)
        src = root / "romsrc" / "firmware"
        src.mkdir(parents=True)
        mods = []
        for path in bh.firmware_sources():
            if path.stem != "commission":
                bh.compile_mpy(path, src / (path.stem + ".mpy"))
                mods.append(path.stem)
        image = root / "firmware.romfs"
        proc = subprocess.run(
            [sys.executable, "-m", "mpremote", "romfs", "--no-mpy", "-o", str(image), "build",
             str(root / "romsrc")], capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0 or not image.is_file():
            raise RuntimeError(f"mpremote romfs build failed: {proc.stderr.strip()[-300:]}")
        bh.stage_hal_sim(root / "lib" / "hal_sim")
        order = bh.import_order(sorted(m for m in mods if m not in ("__init__",)))
        script = root / "script" / "main.py"
        script.parent.mkdir()
        script.write_text(ROMFS_SCRIPT % (order,), encoding="utf-8")
        env = dict(os.environ, MICROPYPATH=os.pathsep.join(["", "", str(root / "lib")]))
        out = {"image_bytes": image.stat().st_size}
        for mode, where in (("files", str(root / "romsrc")), ("rom", str(image))):
            cmd = mpy_unix.command(script, heap_bytes=4 * 1024 * 1024, args=(mode, where))
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                                  cwd=root, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROMFS_JSON ")),
                        None)
            if line is None:
                raise RuntimeError(f"romfs what-if failed: {proc.stdout[-300:]}")
            out[mode] = json.loads(line[len("ROMFS_JSON "):])["modules"]
        shutil.rmtree(root / "romsrc", ignore_errors=True)
    return out
