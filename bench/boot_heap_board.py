# ruff: noqa: F821, UP031 - CONFIG is prepended by the launcher; % is MicroPython's cheap format
# The MicroPython side of bench/boot_heap.py (runs under the WebAssembly
# build, started by bench/mpy_bench_runner.mjs; the launcher prepends
# CONFIG = {...}). Prints one line: BOOT_HEAP_JSON {...}.
#
# CONFIG["mode"]:
#   "boot"     the virtual board's boot: hal_sim.vboard_main.install() as
#              host/vboard_node.mjs runs it (ESP32 HAL on hal_sim.machine_sim,
#              simulated table), then boot.py and main.py (the boot loader:
#              it checks the slot and runs firmware.start) from the flash as the
#              board runs them. Both are unchanged; firmware.app.run is
#              wrapped so that it returns after CONFIG["ticks"] control ticks
#              and the App stays referenced. Then the App's parts are let go
#              one by one (what each holds alone).
#   "modules"  a fresh interpreter importing the firmware modules one by one,
#              in CONFIG["order"] (each after the modules it imports).
#
# Heap figures are gc.mem_alloc() after a collection that really ran: in this
# build gc.collect() only requests one, which runs when the interpreter
# returns to JavaScript, i.e. at an await.
import asyncio
import gc
import json
import sys
import time


async def settled():
    for _ in range(2):
        gc.collect()
        await asyncio.sleep(0)
    return gc.mem_alloc()


def qstr_point(name):
    """micropython.qstr_info() at a named point (the launcher parses it)."""
    import micropython

    print("QSTR_POINT " + name)
    micropython.qstr_info()


class _Host:
    """Stands in for the JavaScript module vboard_host of host/vboard_node.mjs."""

    resets = 0

    @staticmethod
    def sleep_ms(ms):
        # Real time passes, as on the virtual board (the table steps with the
        # interpreter's clock): the loop's ticks settle the angle, BOOT -> HOME.
        start = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), start) < ms:
            pass

    @staticmethod
    def take_interrupt():
        return False

    @staticmethod
    def set_kbd_intr(char):
        pass

    @staticmethod
    def take_inputs():
        return ""

    @staticmethod
    def note(text):
        pass

    @staticmethod
    def request_reset(cause):
        if cause:
            _Host.resets += 1


async def boot():
    out = {}
    out["bare"] = await settled()
    sys.modules["vboard_host"] = _Host
    sys.path.insert(0, CONFIG["stage"])
    from hal_sim import vboard_main

    board = vboard_main.install(json.dumps(CONFIG["vboard"]))
    sys.path.pop(0)
    # The simulated table allocates state on its first steps (about 20 KB):
    # step it first, so that none of that is counted as the firmware's.
    table = board.table
    sample = [0] * 6
    for _ in range(3):
        table.sim.step(20)
        table.imu.read(sample)
        table.mpu.read_mem_into(0x3B, bytearray(14))
    table.sync()
    table = sample = None
    main_globals = {"__name__": "__main__"}
    board.snapshot(main_globals)
    vboard_main = None
    out["simulator"] = await settled()
    qstr_point("simulator")
    kept = []
    seen = {}

    # Wrap firmware.app.run: build the App as run() does, keep it, run the
    # board's own loop for a few ticks, return. Importing firmware.app here
    # instead of in main.py changes nothing but the order.
    sys.path.insert(0, CONFIG["slot_path"])  # as the loader (main.py) does
    import firmware.app as app_module

    sys.path.pop(0)

    real_run = app_module.run
    ticks = CONFIG["ticks"]

    def run(hal, board_dict, app=None, reset_fault=None, time_module=None, ticks_=None):
        app = app_module.App(hal, board_dict, reset_fault=reset_fault)
        kept.append(app)
        seen["imported"] = sorted(k for k in sys.modules if k.startswith("firmware"))
        return real_run(hal, board_dict, app=app, reset_fault=reset_fault, ticks=ticks)

    app_module.run = run
    board.boot(True)  # boot.py, then main.py, as on the virtual board
    out["resets"] = _Host.resets
    out["booted"] = await settled()
    qstr_point("booted")
    app = kept[0]
    out["state"] = app.ctl.state
    out["modules_loaded"] = sorted(k for k in sys.modules if k.startswith("firmware"))
    out["modules_at_app"] = seen.get("imported")
    out["main_globals"] = sorted(k for k in main_globals if not k.startswith("__"))
    # What each part of the App holds that nothing else does: let it go.
    parts = []
    for name in CONFIG["app_parts"]:
        before = await settled()
        if getattr(app, name, None) is None:
            continue
        setattr(app, name, None)
        parts.append([name, before - await settled()])
    out["app_parts"] = parts
    kept.clear()
    hal_before = await settled()
    app = None
    out["app_rest"] = hal_before - await settled()
    out["after_app"] = await settled()
    # The HAL's pins, PWM channels and timers (their callbacks keep the
    # actuator alive) live on in machine_sim's world: a fresh one lets go.
    from hal_sim import machine_sim

    machine_sim.sim_clear(CONFIG["vboard"]["board"].get("chip", "esp32"))
    out["hal_machine"] = out["after_app"] - await settled()
    return out


def _load(name, kept):
    # A plain function: a coroutine's frame (on the heap) could keep the
    # source text alive in a stale stack slot.
    if name.endswith(".py"):  # main.py: compiled from source at boot, kept
        with open(name) as f:
            kept.append(compile(f.read(), name, "exec"))
    else:
        __import__(name)


async def modules():
    sys.path.insert(0, CONFIG["stage"])
    from hal_sim import machine_sim  # the ESP32 HAL imports machine

    sys.path.pop(0)
    sys.modules["machine"] = machine_sim
    sys.path.insert(0, CONFIG["slot_path"])  # the firmware slot, as the loader puts it
    out = {"bare": await settled()}
    qstr_point("bare")
    steps = []
    kept = []
    for name in CONFIG["order"] + CONFIG["roots"]:
        before = await settled()
        _load(name, kept)
        steps.append([name, await settled() - before])
        qstr_point(name)
    out["modules"] = steps
    out["total"] = await settled()
    return out


if CONFIG["mode"] == "boot":
    result = await boot()  # noqa: F704 - top-level await (runPythonAsync)
elif CONFIG["mode"] == "modules":
    result = await modules()  # noqa: F704
else:  # "bare": what the interpreter holds with (almost) nothing loaded
    result = {"bare": await settled()}  # noqa: F704
result["mem_free"] = gc.mem_free()
result["interpreter"] = "%s %s, %d-bit" % (
    sys.implementation.name,
    ".".join(str(v) for v in sys.implementation.version[:3]),
    32 if sys.maxsize < 2**32 else 64,
)
print("BOOT_HEAP_JSON " + json.dumps(result))
