"""No allocation in a steady control tick, proved with ``micropython.heap_lock()``.

Only the native unix port has a working ``heap_lock`` (it hangs in the npm
WebAssembly build, where ``gc.mem_alloc()`` deltas are the weaker check).
While the heap is locked any allocation raises MemoryError, so a tick that
runs locked and does what it does unlocked allocated nothing: no garbage, no
gc pause, no MemoryError on a fragmented board heap in that state.

Method: each case is run twice on the simulated table, same seed. The first
run records every tick's outputs (state before and after, drive, beeper,
serial bytes, flash writes, crashes). The second runs ``App.tick`` under
``heap_lock()`` on the ticks the case selects and must give the same record,
tick by tick: the firmware catches exceptions in places (``App.tick`` turns
one into a crash fault, ``Protocol.poll`` drops it), so a MemoryError that
was caught shows up as a different record rather than as an exception.

Steady ticks are those that change no state and write nothing (no serial
line, no flash file). The cases also lock the ticks that write a line (the
boot event, telemetry, ``state`` and ``warning`` events, a plain STOP
request and its reply: formatted into preallocated buffers) and the state
changes that write no flash (a fault in HOLD included). What still
allocates, by design: the ticks that write flash (GO: the session marker;
the end of a session: the log), the ``session_end`` event that follows the
log write, and requests other than a plain STOP (json; a measured bound per
kind, tests/test_request_heap.py). ``request_replies`` (status) is kept as a
strict xfail to show it.

The serial line is ``hal_sim.devices.FixedLink`` (preallocated buffers; the
simulator's SimLink queues grow). A failed IMU read returns False, as the
MPU-6050 driver does for a sensor without data and MissingImu for one not
found at boot; a failed I2C transfer raises a new OSError inside
machine.I2C, which no Python code can avoid (measured in
``test_esp32_hal_tick_allocates_nothing_under_heap_lock``).

The simulator is not the firmware: the simulated IMU computes floats, so it
is read before the locked tick and the tick's ``imu.read`` copies that
sample (as the ESP32 HAL's preallocated-buffer read does; that read is
locked on its own in ``test_esp32_hal_tick_allocates_nothing_under_heap_lock``).
The physics runs after the tick, unlocked.
"""

from __future__ import annotations

import json
import textwrap

import pytest

MARK = "HEAP_LOCK_JSON "

HARNESS = """
import json, sys
import micropython
from invtable.boards.esp32_devkitc import BOARD
from invtable.hal_sim.scenario import Scenario
from invtable.hal_sim.devices import FixedLink
from invtable.hal_sim.imu import SampledImu
from invtable.firmware.protocol import Protocol

PROGRAM = {"angle_mdeg": 30000, "hold_ms": 20000, "sets": 1, "rest_ms": 10000,
           "speed_mdeg_s": 5000, "exit_pause_ms": 3000}
LIMITS = {"max_angle_mdeg": 30000, "max_inverted_ms": 120000, "max_speed_mdeg_s": 5000}


def run(events, ticks, lock=None):
    # One session; `lock(i, record)` says whether tick i (as recorded) runs
    # with the heap locked. Returns (records, None) or, at the first tick
    # that differs from `lock`'s record, (records so far, failure).
    sim = Scenario(BOARD, PROGRAM, LIMITS, seed=1)
    imu = SampledImu(sim.table.imu)
    sim.imu.imu = imu  # behind the scenario's crash injector, in the HAL
    # The serial line in preallocated buffers (the simulator's queues grow).
    link = sim.table.link = sim.app.hal.link = FixedLink()
    sim.app.protocol = Protocol(sim.app)
    pending = [e for e in events if not isinstance(e[1], dict)]
    for e in events:
        if isinstance(e[1], dict):  # a program of the case's own
            program = dict(PROGRAM)
            program.update(e[1])
            sim.program = program
            sim.app.set_program(program, LIMITS)
    pending.sort()
    records = []
    locked = {}
    for i in range(ticks):
        t = sim.now_ms
        injected = False  # a physical input or a fault (a request only reaches the link)
        while pending and pending[0][0] <= t:
            action = pending.pop(0)[1]
            if action.startswith("{"):
                link.host_write(action + "\\n")
            else:
                sim.inject(action)
                injected = True
        app = sim.app
        before = app.ctl.state
        writes = sim.flash.writes
        crashes = app.crashes
        imu.take()
        hold = lock is not None and lock(i)
        error = None
        if hold:
            micropython.heap_lock()
        try:
            app.tick()
        except MemoryError as e:
            error = e
        finally:
            if hold:
                micropython.heap_unlock()
        record = [before, app.ctl.state, sim.table.actuator.output_permille(),
                  1 if sim.table.indicator.beep else 0, link.host_read().decode(),
                  sim.flash.writes - writes, app.crashes - crashes, injected]
        if hold:
            _count(locked, record)
            expected = lock.records[i]
            if error is not None or record != expected:
                return records, {"t_ms": t, "state": before, "error": repr(error),
                                 "record": record, "expected": expected, "locked": locked}
        records.append(record)
        sim.table.step(sim.dt_ms)
    return records, {"locked": locked} if lock is not None else None


def _count(counts, record):
    # Ticks by state, and by state while driving (e.g. the blind way home).
    for key in (record[0], record[0] + " driving" if record[2] else None):
        if key is not None:
            counts[key] = counts.get(key, 0) + 1


class Lock:
    # Lock the ticks whose unlocked record `select(record)` accepts.
    def __init__(self, records, select):
        self.records = records
        self.select = select

    def __call__(self, i):
        return i < len(self.records) and self.select(self.records[i])


def steady(states):
    def select(r):
        before, after, _drive, _beep, out, writes, crashes, injected = r
        return (before == after and before in states and not out and not writes
                and not crashes and not injected)
    return select


def writing(states, marker):
    # Ticks in `states` that write a line containing `marker` and nothing else changes.
    def select(r):
        before, after, _drive, _beep, out, writes, crashes, injected = r
        return (before == after and before in states and marker in out and not writes
                and not crashes and not injected)
    return select


def changing(states, marker):
    # Ticks in `states` whose state changes (or that write `marker`), without
    # a flash write: the transitions of the state machine.
    def select(r):
        before, after, _drive, _beep, out, writes, crashes, injected = r
        return ((before != after or marker in out) and before in states and not writes
                and not crashes and not injected)
    return select


def case(events, ticks, select):
    records, _ = run(events, ticks)
    selected = {}
    for record in records:
        if select(record):
            _count(selected, record)
    _, result = run(events, ticks, Lock(records, select))
    result["selected"] = selected
    return result


print("WORD_BITS %d" % (64 if sys.maxsize > 2**31 else 32))
"""

GO = [1000, "go"]
TELEMETRY_ON = [600, '{"id": 1, "cmd": "telemetry", "rate_hz": 10}']
STATUS = '{"id": %d, "cmd": "status"}'
STOP = '{"id": %d, "cmd": "stop"}'  # as host/client.py sends it, spaced as json.dumps does
STOP_STRING_ID = '{ "cmd":"stop" , "id":"stop-%d" }'
SESSION_STATES = ["WARN", "RAMP", "HOLD", "PAUSE", "RETURN", "HOME"]
ALL_STATES = ["BOOT"] + SESSION_STATES + ["REST", "FAULT"]

# name: (events, ticks at 50 Hz, selector (MicroPython source), {state: fewest
# selected ticks}); "FAULT driving": FAULT ticks with the drive on. An event
# [0, {...}] gives the case a program of its own (PROGRAM updated).
CASES = {
    "boot": ([], 60, 'steady(["BOOT"])', {"BOOT": 25}),
    "home_idle": ([], 500, 'steady(["HOME"])', {"HOME": 450}),
    "session": ([GO], 4600, f"steady({SESSION_STATES!r})",
                {"WARN": 90, "RAMP": 900, "HOLD": 990, "PAUSE": 140, "RETURN": 900,
                 "HOME": 1400}),
    # Two sets: the rest at home between them, then waiting for the next GO.
    "rest": ([[0, {"sets": 2, "rest_ms": 20000}], GO], 5000, 'steady(["REST"])',
             {"REST": 1500}),
    # A stuck IMU: no trusted angle, the slow blind drive to the home switch,
    # then the fault's alarm at rest.
    "fault_blind_return": ([GO, [25000, "imu_stuck"]], 6000, 'steady(["FAULT"])',
                           {"FAULT": 4500, "FAULT driving": 2500}),
    # The IMU gone: every read fails (returns False: what the MPU-6050 driver
    # does for a sensor without data and MissingImu for one not found at
    # boot), the whole blind return and the alarm after it.
    "fault_imu_lost": ([GO, [25000, "imu_disconnect"]], 6000, 'steady(["FAULT"])',
                       {"FAULT": 4500, "FAULT driving": 2500}),
    # The actuator stalls in RAMP: drive off, the pause, the slow retry (which
    # stalls too), then drive off with the alarm.
    "fault_stall_retry": ([GO, [8000, "stall"]], 3000, 'steady(["FAULT"])',
                          {"FAULT": 2500, "FAULT driving": 50}),
    # Telemetry on at 10 Hz: the four ticks in five that send no line.
    "telemetry_between_lines": ([TELEMETRY_ON, GO], 4600, f"steady({SESSION_STATES!r})",
                                {"RAMP": 700, "HOLD": 790, "RETURN": 700, "HOME": 1100}),
    # --- ticks that write a line
    "telemetry_lines": ([TELEMETRY_ON, GO], 4600,
                        f"writing({SESSION_STATES!r}, '\"telemetry\"')",
                        {"WARN": 20, "RAMP": 170, "HOLD": 190, "PAUSE": 30, "RETURN": 170,
                         "HOME": 270}),
    # Every state change of a session (the state event's tick) but the ones
    # that write flash (GO: the session marker; the end: the log).
    "state_events": ([TELEMETRY_ON, GO], 4600, f"changing({ALL_STATES!r}, '\"event\": \"state\"')",
                     {"BOOT": 2, "WARN": 1, "RAMP": 1, "HOLD": 1, "RETURN": 1, "PAUSE": 1}),
    "fault_events": ([GO, [25000, "imu_disconnect"]], 6000,
                     f"changing({ALL_STATES!r}, '\"event\": \"state\"')", {"HOLD": 1}),
    # GO refused while STOP is held: the warning event, each time.
    "warning_events": ([[600, "stop_down"]] + [[t, "go"] for t in range(2000, 10000, 1000)],
                       500, 'writing(["HOME"], \'"warning"\')', {"HOME": 8}),
    # STOP over the serial line in the host's form (and a spaced one with a
    # string id): parsed, obeyed and answered with the heap locked.
    "stop_requests": ([GO, [25000, STOP % 25000]]
                      + [[t, STOP % t] for t in range(26000, 60000, 2000)]
                      + [[t, STOP_STRING_ID % t] for t in range(27000, 60000, 2000)], 3000,
                      f"writing({SESSION_STATES!r}, '\"ok\": true')",
                      {"HOLD": 1, "RETURN": 16, "PAUSE": 1, "HOME": 12}),
    # A status request: json.loads and a reply dict (xfail below).
    "request_replies": ([GO] + [[t, STATUS % t] for t in range(2000, 60000, 2000)], 3000,
                        f"writing({SESSION_STATES!r}, '\"ok\": ')", {"HOLD": 9}),
}

ALLOCATING = {
    "request_replies": (
        "by design: a request other than a plain STOP is parsed by json.loads into a dict and "
        "answered with a dict through json.dumps (status() builds ~25 entries); its "
        "allocation is bounded and measured per request kind (bench/heap_tick.py, "
        "tests/test_request_heap.py). Under heap_lock the MemoryError is caught by "
        "Protocol.poll and no reply is sent"
    ),
}


@pytest.fixture(scope="module")
def heap_lock_results(micropython_unix_setup):
    """{case: {"selected": {state: ticks}, "locked": {...}[, failure]}}, all cases
    in one unix-port process (about 2 s)."""
    from invtable.host import micropython_unix as mpy_unix

    calls = ", ".join(
        f"{name!r}: case({events!r}, {ticks}, {select})"
        for name, (events, ticks, select, _) in CASES.items()
    )
    code = textwrap.dedent(HARNESS) + f"print({MARK!r} + json.dumps({{{calls}}}))\n"
    proc = mpy_unix.run_micropython(code, timeout_s=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    word_bits = next(int(ln.split()[1]) for ln in lines if ln.startswith("WORD_BITS "))
    assert word_bits == 64  # the unix port: 8-byte words, small ints up to 2**62
    return next(json.loads(ln[len(MARK) :]) for ln in lines if ln.startswith(MARK))


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_selects_enough_ticks(heap_lock_results, name):
    """The harness check: each case has the ticks it is about (none skipped by accident)."""
    selected = heap_lock_results[name]["selected"]
    for state, n in CASES[name][3].items():
        assert selected.get(state, 0) >= n, (name, state, selected)


def _lock_params():
    for name in CASES:
        marks = ()
        if name in ALLOCATING:
            marks = pytest.mark.xfail(reason=ALLOCATING[name], strict=True)
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_lock_params()))
def test_tick_allocates_nothing_under_heap_lock(heap_lock_results, name):
    """Every selected tick ran heap-locked and did exactly what it did unlocked."""
    result = heap_lock_results[name]
    assert "error" not in result, (
        f"{name}: the locked tick at {result['t_ms']} ms ({result['state']}) "
        f"raised {result['error']} or differs from the unlocked run:\n"
        f"  got      {result['record']}\n  expected {result['expected']}"
    )
    assert result["locked"] == result["selected"]


ESP32_HAL_TICK = """
import sys, micropython
from invtable.hal_sim import machine_sim as ms
sys.modules["machine"] = ms
from invtable.hal_sim.mpu6050_model import MPU6050Model
from invtable.firmware import esp32_hal
from invtable.boards import esp32_devkitc, esp32_s3_devkitc

class Source:
    def read(self, out):
        out[0] = -500; out[1] = 20; out[2] = 866; out[3] = 1500; out[4] = -3000; out[5] = 7

def nosleep(ms_):
    pass

for mod, chip in ((esp32_devkitc, "esp32"), (esp32_s3_devkitc, "esp32s3")):
    ms.sim_clear(chip)
    ms.sim_i2c_bus(0).attach(0x68, MPU6050Model(Source()))
    hal = esp32_hal.build(mod, imu_sleep_ms=nosleep)
    hal.wdt.start_watchdog()
    out = [0] * 6
    act = hal.actuator
    imu, go, stop, home, ind, clock, wdt = (hal.imu, hal.go, hal.stop, hal.home,
                                             hal.indicator, hal.clock, hal.wdt)
    error = None
    micropython.heap_lock()
    try:
        for _ in range(200):
            imu.read(out)
            go.pressed()
            stop.pressed()
            home.closed()
            act.overloaded()
            act.drive(-400)
            act.drive(700)
            act.drive(0)
            ind.set(True, False)
            clock.ticks_ms()
            wdt.feed()
    except MemoryError as e:
        error = e
    finally:
        micropython.heap_unlock()
    act.off()
    print("%s=%r" % (chip, error))

# The sensor reset on its own (asleep, data zero): read() returns False; and
# the stand-in for an IMU not found at boot. The serial line's write_buf.
model = MPU6050Model(Source())
ms.sim_clear("esp32")
ms.sim_i2c_bus(0).attach(0x68, model)
hal = esp32_hal.build(esp32_devkitc, imu_sleep_ms=nosleep)
model.power_on()
missing = esp32_hal.MissingImu("not found")
link = esp32_hal.UsbSerialLink()
line = bytearray(b"<written without allocating>\\n......")
link.write_buf(line, 0)  # the first write finds the stream
got = [None, None]
micropython.heap_lock()
try:
    for _ in range(200):
        got[0] = hal.imu.read(out)
        got[1] = missing.read(out)
    link.write_buf(line, 29)
    error = None
except MemoryError as e:
    error = e
finally:
    micropython.heap_unlock()
print("no_data=%r,%r" % (error, got))
"""


def test_esp32_hal_tick_allocates_nothing_under_heap_lock(micropython_unix):
    """The board's HAL calls of one control tick (the MPU-6050 burst read into a
    preallocated buffer, pins, PWM, watchdog) on machine_sim, heap locked; a
    sensor without data and a missing one (read() returns False), and a
    preallocated line written to the serial port (write_buf)."""
    out = micropython_unix(textwrap.dedent(ESP32_HAL_TICK)).stdout
    assert "esp32=None" in out.splitlines(), out
    assert "esp32s3=None" in out.splitlines(), out
    assert "no_data=None,[False, False]" in out.splitlines(), out
    assert "<written without allocating>" in out.splitlines(), out
