# ruff: noqa: F821, UP031 - CONFIG is prepended by the launcher; % is MicroPython's cheap format
# The board side of the soak (bench/soak.py): runs in the firmware's own
# MicroPython interpreter (the WebAssembly build, 32-bit), started by
# bench/soak_runner.mjs; the launcher prepends CONFIG = {...}.
#
# This interpreter holds only what the board would hold, plus the simulated
# `machine` module: hal_sim.machine_sim with an MPU-6050 register model on its
# I2C bus (as hal_sim/vboard_main.py wires them), the flash as deploy lays it
# out (main.py, the boot loader, and boot.py; the slot fw/a with board.py,
# validate.py, chips.py, firmware/*.mpy and its manifest; fw/active),
# and this glue. The table, the rider and the host live in another
# interpreter (bench/soak_world.py, in a worker thread); each control tick
# the runner hands their outputs over (IMU sample, switch levels, a host
# request) and takes the drive back.
#
# Boot is the board's: boot.py, then main.py (unchanged: it checks the slot
# and runs firmware.start) build the ESP32 HAL
# (firmware.esp32_hal on machine_sim) and the App. firmware.app.run is
# wrapped: it swaps the HAL's serial link for this glue's (the host end is
# here: requests in, replies and telemetry counted and dropped) and returns
# the App instead of looping; then each `_js_step` runs the board's own loop
# for one tick, run(..., ticks=1), on a virtual clock (time_module), with the
# 20 ms sleep advancing that clock.
#
# Heap: gc.threshold(-1) as on the ESP32 (no collection by allocated
# amount). A collection runs only when this glue asks for one between ticks
# (this build collects only when it returns to JavaScript): whenever the
# firmware's heap is within CONFIG["margin_bytes"] of the limit. No code of
# the glue allocates per tick, so each tick's gc.mem_alloc() delta is the
# firmware's (and the simulated machine module's, which allocates nothing).
import gc
import json
import sys

gc.threshold(-1)
sys.path.insert(0, CONFIG["stage"])
from hal_sim import machine_sim  # noqa: E402
from hal_sim.mpu6050_model import MPU6050Model  # noqa: E402

sys.path.pop(0)
sys.modules["machine"] = machine_sim

BOARD = CONFIG["board"]
ACT = BOARD["actuator"]
IMU_ADDR = BOARD["imu"].get("addr", 0x68)
TICK_MS = 1000 // BOARD["control_hz"]
_TICKS_MAX = (1 << 30) - 1
_SENSE_OVERLOAD_UV = 3000000  # as hal_sim/vboard_main.py
_SENSE_IDLE_UV = 150000
_ENODEV = 19
SAMPLE_EVERY = 10

# Input bits of _js_step (bench/soak_world.py sets them).
IN_HOME = 1  # home switch closed
IN_GO = 2  # GO held
IN_STOP = 4  # STOP pressed (or its wire cut): the NC contact open
IN_GRIP = 8  # dead-man grip held
IN_OVERLOAD = 16  # the bridge's current sense high
IN_IMU_GONE = 32  # no ACK from the MPU-6050 (every I2C read raises)
# Actions of _js_step.
ACT_NONE = 0
ACT_POWER_OFF = 1  # the board loses power (dark until ACT_POWER_ON)
ACT_POWER_ON = 2  # power back: a power-on boot

STATES = ("BOOT", "HOME", "WARN", "RAMP", "HOLD", "RETURN", "PAUSE", "REST", "FAULT", "SETUP")



def _request_bytes(r):
    """A request line: a dict as JSON, a str as it is, a list of byte values."""
    if isinstance(r, dict):
        return (json.dumps(r) + "\n").encode()
    if isinstance(r, str):
        return (r + "\n").encode()
    return bytes(r) + b"\n"


# The host's requests (bench/soak_world.py sends them by number).
REQUESTS = [None] + [_request_bytes(r) for r in CONFIG["requests"]]
# clock.set carries the time: its digits are written in place when it is sent.
CLOCK_INDEX = CONFIG["clock_index"]
REQUESTS[CLOCK_INDEX] = bytearray(REQUESTS[CLOCK_INDEX])
_CLOCK_DIGITS = REQUESTS[CLOCK_INDEX].find(b"1234567890")
EPOCH_S = CONFIG["epoch_s"]


class _Clock:
    ms = (1 << 30) - 10000  # just before the ESP32's ticks_ms wrap


def _ticks_ms():
    return _Clock.ms


def _ticks_add(ticks, delta):
    return (ticks + delta) & _TICKS_MAX


def _ticks_diff(end, start):
    diff = (end - start) & _TICKS_MAX
    if diff >= (1 << 29):
        diff -= 1 << 29
        diff -= 1 << 29
    return diff


def _sleep_ms(ms):
    """The loop's sleep: the virtual clock moves on; the hardware timers
    (the drive deadline) and the watchdog see the new time."""
    if ms > 0:
        _Clock.ms = (_Clock.ms + ms) & _TICKS_MAX
    machine_sim.sim_run_due_timers()
    machine_sim.sim_check_wdt()  # SimReset(WDT_RESET) if the loop starved it


class VirtualTime:
    """The ``time`` module handed to firmware.app.run."""

    ticks_ms = staticmethod(_ticks_ms)
    ticks_add = staticmethod(_ticks_add)
    ticks_diff = staticmethod(_ticks_diff)
    sleep_ms = staticmethod(_sleep_ms)


class _Sample:
    """The MPU-6050 model's source: the world's sample for this tick."""

    def __init__(self):
        self.raw = [0, 0, 0, 0, 0, 0]

    def read(self, out):
        raw = self.raw
        for i in range(6):
            out[i] = raw[i]


class HostLink:
    """The serial line as the HAL contract wants it (read_byte, write), with
    the host's end here: the request being sent, and counters of what the
    firmware wrote. Nothing the firmware writes is kept."""

    def __init__(self):
        self.req = None
        self.pos = 0
        self.sent = 0
        self.replies_ok = 0
        self.replies_error = 0
        self.telemetry = 0
        self.events = 0
        self.boot_events = 0
        self.bytes_out = 0
        self.longest_line = 0
        self.error_lines = []  # the first few error replies

    def send(self, index):
        if self.req is not None:
            return False  # still sending the last one: the host waits
        req = REQUESTS[index]
        if index == CLOCK_INDEX:  # the host's clock now, in place
            value = EPOCH_S + Ticks.seconds
            for i in range(9, -1, -1):
                req[_CLOCK_DIGITS + i] = 48 + value % 10
                value //= 10
        self.req = req
        self.pos = 0
        self.sent += 1
        return True

    def read_byte(self):
        req = self.req
        if req is None:
            return -1
        b = req[self.pos]
        self.pos += 1
        if self.pos >= len(req):
            self.req = None
        return b

    def write(self, data):
        n = len(data)
        self.bytes_out += n
        if n > self.longest_line:
            self.longest_line = n
        if data.find(b'{"id"') == 0 or data.find(b'"ok": ') >= 0:
            if data.find(b'"ok": true') >= 0:
                self.replies_ok += 1
            else:
                self.replies_error += 1
                if len(self.error_lines) < 8:
                    self.error_lines.append(bytes(data[:160]).decode())
        elif data.find(b'"telemetry"') >= 0:
            self.telemetry += 1
        else:
            self.events += 1
            if data.find(b'"event": "boot"') >= 0:
                self.boot_events += 1
        return n


LINK = HostLink()
SAMPLE = _Sample()
MPU = MPU6050Model(SAMPLE)


class Board:
    app = None
    hal = None
    board = None
    dark = False
    boots = 0
    boot_lines = 0  # lines main.py printed (boot_error reports)
    boot_errors = []
    watchdog_resets = 0
    crashes = 0  # App crashes counted over all boots
    last_errors = []  # distinct App.last_error texts seen
    _last_error = None


def _wire(reset_cause):
    """A fresh chip: every pin forgotten, the MPU-6050 on the bus (as
    hal_sim/vboard_main.py's VirtualTable.wire)."""
    machine_sim.sim_clear(BOARD.get("chip", "esp32"), reset_cause)
    MPU.power_on()
    machine_sim.sim_i2c_bus(BOARD["imu"].get("i2c_id", 0)).attach(IMU_ADDR, MPU)
    machine_sim.sim_set_ticks(_ticks_ms)


def _run_file(name):
    try:
        with open(name) as f:
            source = f.read()
    except OSError:
        return
    exec(compile(source, name, "exec"), {"__name__": "__main__"})


class _Run:
    module = None  # firmware.app, once imported
    real = None  # its run()


_PATH = list(sys.path)  # what a reset gives back (the loader puts the slot first)


def _install_run():
    """Import firmware.app (firmware.start imports it too) and wrap its run()."""
    sys.path.insert(0, CONFIG.get("slot_path", "/fw/a"))  # as the loader (main.py) does
    import firmware.app as module

    sys.path[:] = _PATH

    _Run.module = module
    _Run.real = module.run
    module.run = _boot_run


def _real_run(hal, board, app, time_module, ticks):
    return _Run.real(hal, board, app=app, time_module=time_module, ticks=ticks)


def _boot_run(hal, board, app=None, reset_fault=None, time_module=None, ticks=None):
    """firmware.app.run as firmware.start calls it: the App is built as run() builds
    it, on this glue's link, and kept; run() then lets go of what only boot
    needed (ticks=0) and returns, instead of looping."""
    hal.link = LINK
    app = _Run.module.App(hal, board, reset_fault=reset_fault)
    Board.app = app
    Board.hal = hal
    Board.board = board
    return _real_run(hal, board, app, VirtualTime, 0)


def _boot(reset_cause):
    Board.app = None
    Board.hal = None
    _wire(reset_cause)
    LINK.req = None
    Board.boots += 1
    sys.path[:] = _PATH
    _run_file("boot.py")
    _run_file("main.py")
    if Board.app is None:
        raise RuntimeError("main.py did not start the App (see its boot_error lines)")


class Heap:
    cap = CONFIG["cap_bytes"]
    margin = CONFIG["margin_bytes"]
    allowance = 0  # what this interpreter holds that the board would not
    total = 0  # the GC heap's size (mem_alloc + mem_free) at the start
    total_max = 0  # the largest it was, sampled once a minute
    last = 0  # gc.mem_alloc() at the end of the last tick
    collections = 0
    requested = 0  # collections this glue asked for
    peak = 0  # highest firmware heap (live + garbage) at a tick's end
    peak_t_s = 0
    live_peak = 0  # highest firmware heap right after a collection
    live_peak_t_s = 0
    live_min = 1 << 29
    live_boot = 0  # right after the first collection following the first boot
    tick_max = 0  # most bytes one tick allocated (boots aside)
    tick_max_t_s = 0
    boot_max = 0  # most bytes a boot allocated (it runs in one call here)
    booting = False  # this call boots the board
    collect_asked = False  # a collection was asked for at the last tick's end
    last_state = -1
    skipped = 0  # ticks not sampled (see _js_step)
    allocated = 0  # bytes allocated in all (sum of the ticks' deltas)
    over_cap = 0  # ticks that ended above the limit
    first_over = None
    grew = 0  # ticks after which the GC heap was larger than at the start


class Ticks:
    n = 0
    stepped = 0  # firmware ticks run
    seconds = 0


def _used(alloc):
    return alloc - Heap.allowance


def _js_step(a0, a1, a2, g0, g1, g2, inputs, request, action):
    """One control period: inputs in, the firmware's tick, outputs out.

    Returns ((state index * 2 + beeper) * 4096 + drive permille + 2048)."""
    if Heap.collect_asked:  # it ran when the last call returned
        Heap.collect_asked = False
        alloc = gc.mem_alloc()
    else:
        alloc = Heap.last  # nothing ran since the last tick's end
    if alloc < Heap.last:  # the collection freed something
        Heap.collections += 1
        used = _used(alloc)
        if used > Heap.cap:  # live data alone above the limit (after a boot)
            Heap.over_cap += 1
            if Heap.first_over is None:
                Heap.first_over = (Ticks.seconds, used, 0)
        if used > Heap.live_peak:
            Heap.live_peak = used
            Heap.live_peak_t_s = Ticks.seconds
        if used < Heap.live_min:
            Heap.live_min = used
        if Heap.live_boot == 0:
            Heap.live_boot = used
    start = alloc
    Ticks.n += 1
    if Ticks.n % 50 == 0:
        Ticks.seconds += 1
    if action == ACT_POWER_OFF:
        Board.dark = True
        Board.app = None  # RAM is lost; the pins drop with the power
        Board.hal = None
        _wire(machine_sim.PWRON_RESET)
    elif action == ACT_POWER_ON:
        Board.dark = False
        _boot(machine_sim.PWRON_RESET)
        Heap.booting = True
    if request:
        LINK.send(request)
    ret = 2048
    wrote = LINK.bytes_out
    if Board.dark:
        _Clock.ms = (_Clock.ms + TICK_MS) & _TICKS_MAX
    else:
        ret = _tick(a0, a1, a2, g0, g1, g2, inputs)
    # gc.mem_alloc() walks the whole heap (about 0.1 ms here): sampled after
    # every tick that may have allocated (a line written, a request, a boot,
    # a new state) and every SAMPLE_EVERY ticks. Between two collections the
    # heap only grows, so the next sample sees all that came before it: the
    # peaks are exact, a tick's bytes are those since the last sample.
    if (LINK.bytes_out == wrote and not request and not action and not Heap.booting
            and ret >> 13 == Heap.last_state and Ticks.n % SAMPLE_EVERY != 0):
        Heap.skipped += 1
        return ret
    Heap.last_state = ret >> 13
    alloc = gc.mem_alloc()
    delta = alloc - start
    if delta > 0:
        Heap.allocated += delta
    if Heap.booting:
        # A boot runs in this one call: this build cannot collect during it,
        # an ESP32 would. Its live result is checked after the collection.
        Heap.booting = False
        if delta > Heap.boot_max:
            Heap.boot_max = delta
        gc.collect()
        Heap.requested += 1
        Heap.collect_asked = True
        Heap.last = alloc
        return ret
    if delta > Heap.tick_max:
        Heap.tick_max = delta
        Heap.tick_max_t_s = Ticks.seconds
    used = _used(alloc)
    if used > Heap.peak:
        Heap.peak = used
        Heap.peak_t_s = Ticks.seconds
    if used > Heap.cap:
        Heap.over_cap += 1
        if Heap.first_over is None:
            Heap.first_over = (Ticks.seconds, used, delta)
    if Ticks.n % 3000 < SAMPLE_EVERY:  # about once a minute: mem_free walks it too
        total = alloc + gc.mem_free()
        if total > Heap.total:
            Heap.grew += 1
        if total > Heap.total_max:
            Heap.total_max = total
    if used > Heap.cap - Heap.margin:
        gc.collect()  # runs when this call returns to JavaScript
        Heap.requested += 1
        Heap.collect_asked = True
    Heap.last = alloc
    return ret


def _tick(a0, a1, a2, g0, g1, g2, inputs):
    raw = SAMPLE.raw
    raw[0] = a0
    raw[1] = a1
    raw[2] = a2
    raw[3] = g0
    raw[4] = g1
    raw[5] = g2
    bus = machine_sim.sim_i2c_bus(0)
    bus.set_fault(IMU_ADDR, _ENODEV if inputs & IN_IMU_GONE else 0)
    # Contacts to GND with pull-ups: closed = driven low, open = not driven.
    machine_sim.sim_set_input(BOARD["home_pin"], 0 if inputs & IN_HOME else None)
    machine_sim.sim_set_input(BOARD["go_pin"], 0 if inputs & IN_GO else None)
    grip = BOARD.get("grip_pin")
    if grip is not None:
        machine_sim.sim_set_input(grip, 0 if inputs & IN_GRIP else None)
    machine_sim.sim_set_input(BOARD["stop_pin"], None if inputs & IN_STOP else 0)
    sense = ACT.get("sense_adc")
    if sense is not None:
        uv = _SENSE_OVERLOAD_UV if inputs & IN_OVERLOAD else _SENSE_IDLE_UV
        machine_sim.sim_set_adc_uv(sense, uv)
    app = Board.app
    try:
        _real_run(Board.hal, Board.board, app, VirtualTime, 1)
    except machine_sim.SimReset as reset:  # the watchdog (or machine.reset)
        Board.watchdog_resets += 1
        _boot(reset.cause)
        Heap.booting = True
        return 2048
    Ticks.stepped += 1
    if app.crashes:
        Board.crashes += app.crashes
        app.crashes = 0  # counted; the App's own recovery goes on
    error = app.last_error
    if error is not None and error is not Board._last_error:
        Board._last_error = error
        if error not in Board.last_errors and len(Board.last_errors) < 20:
            Board.last_errors.append(error)
    drive = _drive_permille()
    beep = 1 if machine_sim.sim_level(BOARD["beeper_pin"]) else 0
    return ((STATES.index(app.state_name()) * 2 + beep) << 12) + drive + 2048


def _drive_permille():
    """What the bridge outputs, from the pins (as hal_sim/vboard_main.py)."""
    fwd = machine_sim.sim_pwm_duty_u16(ACT["pwm_fwd"]) or 0
    rev = machine_sim.sim_pwm_duty_u16(ACT["pwm_rev"]) or 0
    enable = ACT.get("enable")
    if enable is not None and not machine_sim.sim_level(enable):
        return 0
    return (fwd - rev) * 1000 // 65535


def _js_stop():
    """True once a tick went over the limit and CONFIG["stop_over_cap"]."""
    return CONFIG["stop_over_cap"] and Heap.over_cap > 0


def _js_end():
    app = Board.app
    ctl = app.ctl if app is not None else None
    out = {
        "interpreter": "%s %s, %d-bit" % (
            sys.implementation.name,
            ".".join(str(v) for v in sys.implementation.version[:3]),
            32 if sys.maxsize < 2**32 else 64,
        ),
        "ticks": Ticks.n,
        "firmware_ticks": Ticks.stepped,
        "simulated_s": Ticks.seconds,
        "boots": Board.boots,
        "watchdog_resets": Board.watchdog_resets,
        "crashes": Board.crashes + (app.crashes if app is not None else 0),
        "last_errors": Board.last_errors,
        "final_state": app.state_name() if app is not None else "OFF",
        "final_fault": ctl.fault if ctl is not None else None,
        "log_entries": len(app.log) if app is not None else None,
        "heap": {
            "cap_bytes": Heap.cap,
            "margin_bytes": Heap.margin,
            "allowance_bytes": Heap.allowance,
            "gc_heap_bytes": Heap.total,
            "gc_heap_max_bytes": Heap.total_max,
            "collections": Heap.collections,
            "collections_requested": Heap.requested,
            "ticks_not_sampled": Heap.skipped,
            "peak_bytes": Heap.peak,
            "peak_t_s": Heap.peak_t_s,
            "live_peak_bytes": Heap.live_peak,
            "live_peak_t_s": Heap.live_peak_t_s,
            "live_min_bytes": Heap.live_min,
            "live_after_boot_bytes": Heap.live_boot,
            "tick_max_bytes": Heap.tick_max,
            "tick_max_t_s": Heap.tick_max_t_s,
            "boot_alloc_max_bytes": Heap.boot_max,
            "allocated_bytes": Heap.allocated,
            "ticks_over_cap": Heap.over_cap,
            "first_over_cap": Heap.first_over,
            "minutes_heap_larger": Heap.grew,
        },
        "link": {
            "requests_sent": LINK.sent,
            "replies_ok": LINK.replies_ok,
            "replies_error": LINK.replies_error,
            "telemetry_lines": LINK.telemetry,
            "events": LINK.events,
            "boot_events": LINK.boot_events,
            "bytes_out": LINK.bytes_out,
            "longest_line": LINK.longest_line,
            "error_lines": LINK.error_lines,
        },
    }
    print("SOAK_BOARD_JSON " + json.dumps(out))


async def _settle():
    import asyncio

    for _ in range(2):
        gc.collect()
        await asyncio.sleep(0)
    return gc.mem_alloc()


# What this interpreter holds before the board boots, beyond a bare
# interpreter (CONFIG["bare_bytes"], measured apart, counts as the board's):
# the simulated machine module, the MPU-6050 model and this glue.
Heap.allowance = await _settle() - CONFIG["bare_bytes"]  # noqa: F704
Heap.total = gc.mem_alloc() + gc.mem_free()
_install_run()
_before_boot = gc.mem_alloc()
_boot(machine_sim.PWRON_RESET)
Heap.boot_max = gc.mem_alloc() - _before_boot  # all of it: nothing collects in between
Heap.last = await _settle()  # noqa: F704
Heap.live_boot = _used(Heap.last)
if Heap.live_boot > Heap.cap:
    Heap.over_cap += 1
    Heap.first_over = (0, Heap.live_boot, 0)
print("SOAK_READY %d %d %d" % (Heap.allowance, Heap.total, Heap.live_boot))
