"""Soak: the firmware for simulated hours on the 32-bit MicroPython with an ESP32's heap.

Run from the repo root (a bench, not a test; tests/test_memory_micropython.py
runs a few simulated minutes of it)::

    .venv/bin/python -m bench.soak [--hours 2] [--seed 1] [--heap-kb 100]
        [--flash used|fresh] [--json FILE]

24 simulated hours take about 40 minutes (0.5 ms a tick: the firmware's
tick about half of it, the world and the hand-over the rest), so the
default is 2 h; the 24 h figures in docs/performance.md come from a run
recorded in bench/soak_24h.json.

What runs (bench/soak_runner.mjs, two WebAssembly MicroPython 1.27
interpreters, one per thread):

* the board (bench/soak_board.py): the flash as deploy lays it out (main.py,
  boot.py, board.py = boards/esp32_devkitc.py, validate.py, chips.py and
  firmware/*.mpy compiled by mpy-cross as deploy compiles them for the
  virtual board), by default a board used for a while: the session log full
  (50 entries), 8 users, the calibration commissioning measured. boot.py and
  main.py boot it on the ESP32 HAL over hal_sim.machine_sim; then the
  board's own loop (firmware.app.run) runs one tick per call on a virtual
  clock, 50 Hz. Power cuts and power cycles boot it again the same way.
* the world (bench/soak_world.py): the simulated table and rider and the
  host: a ``status`` request every second, a session every hour (telemetry
  at 10 Hz while it runs), in most sessions one random fault (seeded: STOP,
  IMU faults, stall, overload, a cut STOP wire, a failed home switch, a
  power cut, a fainting rider, bad lines on the serial port), and now and
  then a bad line or a power cut at home. A latched fault is left alone
  until the table rests, then its cause is cleared and the board
  power-cycled.

The heap limit (``--heap-kb``) is on the bytes the board's interpreter has
in use (gc.mem_alloc()), less what the simulated ``machine`` module, the
MPU-6050 model and the glue hold (``allowance``, measured at start; the
bare interpreter counts as the board's). This build cannot stand in for an
ESP32 heap directly: it never raises MemoryError (it adds heap areas
instead) and it collects only when it returns to JavaScript, i.e. between
two ticks, never inside one (nor inside a boot, which an ESP32 would
collect through as it goes). So:

* ``gc.threshold(-1)``, as on the ESP32; the glue asks for a collection
  between two ticks whenever less than ``MARGIN_BYTES`` of the limit is free
  (more than any tick allocates; an ESP32 collects only when an allocation
  fails, so it collects less often than counted here);
* the limit holds if no tick ends above it: a tick only allocates (nothing
  is freed inside it here), so its end is its peak, garbage included; that
  is stricter than an ESP32, which could collect inside the tick;
* a boot's allocations are not held to the limit (here they all pile up in
  one call); what it leaves live is, after the collection that follows;
* fragmentation is not modelled: the interpreter's heap has room for a
  boot's garbage, more than the limit.

``gc.mem_alloc()`` (it walks the heap, 0.1 ms) is sampled after every tick
that may have allocated (a line written, a request, a new state, a boot)
and every 10th tick; between two collections the heap only grows, so the
next sample sees what came before it. A collection is counted when the
first sample after one asked for is lower than the last before it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import boot_heap as bh

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "bench" / "soak_runner.mjs"
BOARD_SCRIPT = REPO / "bench" / "soak_board.py"
WORLD_SCRIPT = REPO / "bench" / "soak_world.py"
BOARD_NAME = bh.BOARD_NAME
TICKS_PER_S = 50
CAP_KB = 100
MARGIN_BYTES = 24 * 1024
BOOT_ROOM_BYTES = 32 * 1024
DEFAULT_HOURS = 2.0
EPOCH_S = 1767225600  # 2026-01-01 00:00 UTC: the host's clock at the first boot
# The program the host sets at the first boot: short sessions, so that 24 a
# day stay inside the default daily limit (10 minutes inverted).
PROGRAM = {"angle_mdeg": 15000, "hold_ms": 10000, "speed_mdeg_s": 3000, "exit_pause_ms": 5000}

# name -> the request line (a dict as JSON, a str as it is, a list of bytes).
REQUESTS = {
    "status": {"id": 1, "cmd": "status"},
    "telemetry_on": {"id": 2, "cmd": "telemetry", "rate_hz": 10},
    "telemetry_off": {"id": 3, "cmd": "telemetry", "rate_hz": 0},
    "program.set": dict({"id": 4, "cmd": "program.set", "name": "guest"}, **PROGRAM),
    "clock.set": {"id": 5, "cmd": "clock.set", "epoch_s": 1234567890, "utc_offset_s": 0},
    "garbage": [0xFF, 0xFE, 0x41, 0x00, 0x7B],
    "bad_json": '{"id": 7, "cmd": "status"',
    "unknown_cmd": {"id": 8, "cmd": "reboot_now"},
    "too_long": {"id": 9, "cmd": "status", "pad": "x" * 600},
    "bad_field": {"id": 10, "cmd": "telemetry", "rate_hz": "fast"},
}


def request_bytes(value) -> int:
    if isinstance(value, dict):
        return len(json.dumps(value)) + 1
    if isinstance(value, str):
        return len(value.encode()) + 1
    return len(value) + 1


def used_flash(flash_dir: Path) -> None:
    """A board in use for a while: the calibration, 8 users, a full session log."""
    from invtable.firmware.sessionlog import MAX_ENTRIES, SessionLog
    from invtable.firmware.settings import MAX_USERS, Settings
    from invtable.hal_sim.flash import SimFlash
    from invtable.hal_sim.scenario import commission_flash
    from invtable.host.boards import load_board

    board = load_board(BOARD_NAME)
    flash = commission_flash(SimFlash(), board, 0, None)
    settings = Settings(flash, board)
    settings.load()
    for i in range(MAX_USERS - 1):
        settings.create_user(f"rider {i + 1}")
    log = SessionLog(flash)
    for i in range(MAX_ENTRIES):
        log.append({"user": f"rider {i % 7 + 1}", "start_s": EPOCH_S - 86400 * 30 + i * 3600,
                    "uptime_ms": 60000 + i * 1000, "max_angle_mdeg": 20000 + i * 100,
                    "inverted_ms": 60000 + i * 500, "end": "completed", "fault": None,
                    "daily_ms": 60000})
    for name in flash.names():
        (flash_dir / name).write_bytes(flash.read_bytes(name))


def fresh_flash(flash_dir: Path) -> None:
    """A board just commissioned: only the calibration."""
    from invtable.firmware.calibration import CALIB_FILE

    name, text = bh.calibration_text()
    assert name == CALIB_FILE
    (flash_dir / name).write_text(text, encoding="ascii")


def prepare(tmp: Path, flash_kind: str = "used") -> dict:
    from invtable.host.boards import load_board

    flash = tmp / "flash"
    bh.lay_out_flash(flash, "mpy")
    if flash_kind == "used":
        used_flash(flash)
    else:
        fresh_flash(flash)
    stage = tmp / "stage" / "hal_sim"
    bh.stage_hal_sim(stage)
    names = list(REQUESTS)
    return {
        "board": load_board(BOARD_NAME),
        "flash": flash,
        "stage_dir": stage,
        "request_names": names,
    }


def _script(path: Path, config: dict, dest: Path) -> Path:
    dest.write_text(
        "import json as _json\nCONFIG = _json.loads(" + repr(json.dumps(config)) + ")\n"
        + path.read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    return dest


def run(hours=DEFAULT_HOURS, seed=1, heap_kb=CAP_KB, progress=False, timeout_s=None,
        fault_chance=0.7, flash="used", stop_over_cap=True) -> dict:
    """Run the soak; the combined figures (see the module notes)."""
    node, mjs = bh.node_and_mjs()
    ticks = max(1, int(hours * 3600 * TICKS_PER_S))
    cap = heap_kb * 1024
    with tempfile.TemporaryDirectory(prefix="invtable-soak-") as tmpdir:
        tmp = Path(tmpdir)
        prep = prepare(tmp, flash)
        names = prep["request_names"]
        bare = bh.run_board(None, [])["bare"]
        board_cfg = {
            "stage": bh.STAGE,
            "board": prep["board"],
            "cap_bytes": cap,
            "margin_bytes": MARGIN_BYTES,
            "bare_bytes": bare,
            "requests": [REQUESTS[n] for n in names],
            "clock_index": names.index("clock.set") + 1,
            "epoch_s": EPOCH_S,
            "stop_over_cap": stop_over_cap,
        }
        world_cfg = {
            "stage": bh.STAGE,
            "board": prep["board"],
            "seed": seed,
            "table_seed": 0,  # the world commissioning measured (the calibration on flash)
            "session_every_s": 3600,
            "first_session_s": 60,
            "fault_chance": fault_chance,
            "bad_line_chance_per_s": 1 / 1800,
            "idle_power_cut_chance": 0.02,
            "request_index": {n: i + 1 for i, n in enumerate(names)},
            "request_bytes": {n: request_bytes(REQUESTS[n]) for n in names},
        }
        board_script = _script(BOARD_SCRIPT, board_cfg, tmp / "board.py")
        world_script = _script(WORLD_SCRIPT, world_cfg, tmp / "world.py")

        def command(heap_bytes, n_ticks):
            cmd = [node, str(RUNNER), "--micropython", mjs, "--heap", str(heap_bytes),
                   "--ticks", str(n_ticks), "--board-script", str(board_script),
                   "--world-script", str(world_script),
                   "--board-copy", f"{prep['flash']}:/",
                   "--board-copy", f"{prep['stage_dir']}:{bh.STAGE}/hal_sim",
                   "--world-copy", f"{prep['stage_dir']}:{bh.STAGE}/hal_sim"]
            if progress:
                cmd += ["--progress-ticks", str(3600 * TICKS_PER_S)]
            return cmd

        # 1. What the simulated machine module and the glue hold (a big heap).
        probe = _parse(subprocess.run(command(1024 * 1024, 1), capture_output=True, text=True,
                                      timeout=120, check=False))
        allowance = probe["ready"]["allowance"]
        # 2. The soak. The limit is held on the bytes in use (see the module
        # notes): a boot allocates everything in one call here, which an ESP32
        # would collect as it goes, so the heap itself has room for that.
        heap_bytes = cap + allowance + BOOT_ROOM_BYTES
        if timeout_s is None:  # about 4 times what it takes on an idle machine
            timeout_s = 300 + 150 * hours
        started = time.monotonic()
        proc = subprocess.run(command(heap_bytes, ticks), stdout=subprocess.PIPE,
                              stderr=None if progress else subprocess.PIPE, text=True,
                              timeout=timeout_s, check=False)
        wall = time.monotonic() - started
        result = _parse(proc)
    result["wall_s"] = round(wall, 1)
    result["hours"] = hours
    result["seed"] = seed
    result["flash"] = flash
    result["heap_arg_bytes"] = heap_bytes
    result["bare_interpreter_bytes"] = bare
    result["ok"] = verdict(result)
    return result


def _parse(proc: subprocess.CompletedProcess) -> dict:
    out = {"returncode": proc.returncode, "boot_error_lines": 0, "board_lines": 0}
    tail = []
    for line in proc.stdout.splitlines():
        if line.startswith("SOAK_BOARD_JSON "):
            out["board"] = json.loads(line[len("SOAK_BOARD_JSON "):])
        elif line.startswith("SOAK_WORLD_JSON "):
            out["world"] = json.loads(line[len("SOAK_WORLD_JSON "):])
        elif line.startswith("SOAK_READY "):
            allowance, total, live = (int(v) for v in line.split()[1:4])
            out["ready"] = {"allowance": allowance, "gc_heap_bytes": total, "live_boot": live}
        else:
            out["board_lines"] += 1
            if "boot_error" in line:
                out["boot_error_lines"] += 1
            tail.append(line)
    out["board_output_tail"] = tail[-10:]
    out["stderr_tail"] = (proc.stderr or "").strip().splitlines()[-10:]
    if "ready" not in out:
        raise RuntimeError(
            f"the soak did not start (exit {proc.returncode}): "
            + " | ".join(out["stderr_tail"] + out["board_output_tail"])
        )
    return out


def verdict(result: dict) -> bool:
    """No MemoryError (no tick above the limit, the heap never grew), no crash,
    no script failure, no boot error; every session home or a fault handled."""
    board = result.get("board")
    if result["returncode"] != 0 or board is None or "world" not in result:
        return False
    heap = board["heap"]
    return (heap["ticks_over_cap"] == 0
            and board["crashes"] == 0 and board["watchdog_resets"] == 0
            and result["boot_error_lines"] == 0
            and not any("MemoryError" in e for e in board["last_errors"]))


def summary(result: dict) -> str:
    board = result.get("board") or {}
    heap = board.get("heap") or {}
    world = result.get("world") or {}
    link = board.get("link") or {}
    lines = [
        f"soak {result['hours']} h (seed {result['seed']}) on {board.get('interpreter')}: "
        f"{'OK' if result['ok'] else 'FAILED'} in {result['wall_s']} s wall",
        f"  heap limit {heap.get('cap_bytes')} bytes (+ {heap.get('allowance_bytes')} for the "
        f"simulated machine module and glue): peak {heap.get('peak_bytes')} "
        f"(at {heap.get('peak_t_s')} s), live peak {heap.get('live_peak_bytes')} "
        f"(at {heap.get('live_peak_t_s')} s), live after boot {heap.get('live_after_boot_bytes')}, "
        f"most in one tick {heap.get('tick_max_bytes')} (at {heap.get('tick_max_t_s')} s)",
        f"  collections {heap.get('collections')} (asked for {heap.get('collections_requested')}), "
        f"{heap.get('allocated_bytes')} bytes allocated; ticks over the limit "
        f"{heap.get('ticks_over_cap')} (first {heap.get('first_over_cap')}); GC heap "
        f"{heap.get('gc_heap_bytes')}, at most {heap.get('gc_heap_max_bytes')} (minus 128 MiB of "
        "'max new split')",
        f"  boots {board.get('boots')}, crashes {board.get('crashes')}, watchdog resets "
        f"{board.get('watchdog_resets')}, boot_error lines {result.get('boot_error_lines')}, "
        f"last errors {board.get('last_errors')}",
        f"  sessions {world.get('sessions_started')} started, {world.get('sessions_home')} back "
        f"home, {world.get('sessions_refused')} refused; fault states {world.get('fault_states')}, "
        f"power cycles {world.get('power_cycles')}, power cuts {world.get('power_cuts')}; "
        f"faults {world.get('faults_injected')}",
        f"  requests {world.get('requests')} ({world.get('status_requests')} status, "
        f"{world.get('bad_requests')} bad), replies ok {link.get('replies_ok')}, errors "
        f"{link.get('replies_error')}, telemetry lines {link.get('telemetry_lines')}, events "
        f"{link.get('events')}",
    ]
    if not result["ok"]:
        lines.append("  stderr: " + " | ".join(result.get("stderr_tail") or []))
        lines.append("  board output: " + " | ".join(result.get("board_output_tail") or []))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=DEFAULT_HOURS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--heap-kb", type=int, default=CAP_KB)
    parser.add_argument("--flash", choices=("used", "fresh"), default="used",
                        help="used: a full session log and 8 users (default); fresh: "
                        "only the calibration")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args.hours, args.seed, args.heap_kb, progress=True, flash=args.flash)
    print(summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
