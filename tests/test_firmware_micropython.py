"""The firmware and the simulator under real MicroPython (testing layer 3).

Everything here runs under both real interpreters through the ``micropython``
fixture (the npm WebAssembly build 1.27, 32-bit, and the PyPI unix port 1.29,
64-bit), with the invtable packages mounted as on CPython: whole simulated
sessions (``hal_sim.scenario``), storage on ``SimFlash``, and the heap bytes a
control tick allocates. Results come back as one JSON line; the assertions
are made here, in CPython.

Each WebAssembly run is a separate Node process (about 0.3 s to start), each
unix-port run a CPython process (about 0.05 s); a one-minute simulated session
takes about 1 s in either interpreter.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from invtable.boards.esp32_devkitc import BOARD

BENCH = Path(__file__).resolve().parents[1] / "bench" / "heap_tick.py"
MARK = "RESULT_JSON "

PROGRAM = dict(
    angle_mdeg=30000, hold_ms=20000, sets=1, rest_ms=10000, speed_mdeg_s=5000, exit_pause_ms=3000
)
LIMITS = dict(max_angle_mdeg=30000, max_inverted_ms=120000, max_speed_mdeg_s=5000)
HOME_DEG = BOARD["home_angle_mdeg"] / 1000

# Runs a scenario under MicroPython (or CPython: the same text works on both)
# and keeps the state transitions and a compact copy of every trace row.
SCENARIO_CODE = """
import json
from invtable.boards.esp32_devkitc import BOARD
from invtable.hal_sim import scenario

def run_scenario(events, seed=0, rows=False):
    kept = []
    transitions = []
    last = [None]

    def sink(row):
        state = row[5]
        if state != last[0]:
            transitions.append([row[0], state])
            last[0] = state
        if rows:
            kept.append([row[0], row[1], row[2], row[5], row[6], row[7]])

    summary = scenario.run(BOARD, PROGRAM, LIMITS, events=events, seed=seed, sink=sink)
    return {"summary": summary, "transitions": transitions, "rows": kept}
"""


def _prelude() -> str:
    return f"PROGRAM = {PROGRAM!r}\nLIMITS = {LIMITS!r}\n" + SCENARIO_CODE


def _result(proc) -> dict:
    """The JSON printed after MARK by the MicroPython side."""
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise AssertionError(f"no {MARK} line in output:\n{proc.stdout}\n{proc.stderr}")


def _run_scenarios(micropython, cases: dict) -> dict:
    """{name: run_scenario(**kwargs)} for each case, computed under MicroPython."""
    calls = ", ".join(f"{name!r}: run_scenario(**{kw!r})" for name, kw in cases.items())
    code = _prelude() + f"\nprint({MARK!r} + json.dumps({{{calls}}}))\n"
    return _result(micropython(code, timeout_s=120))


def _first_after(transitions, t_ms):
    return next((t, s) for t, s in transitions if t >= t_ms)


# ----------------------------------------------------------------- sessions
def test_sessions_under_micropython(micropython):
    out = _run_scenarios(
        micropython,
        {
            "full": {"events": [], "seed": 1},
            "stop_ramp": {"events": [(1000, "go"), (15000, "stop")], "seed": 2},
            "stop_hold": {"events": [(1000, "go"), (30000, "stop")], "seed": 3},
            "power_loss": {"events": [(1000, "go"), (25000, "power_loss")], "seed": 4},
            "crash": {"events": [(1000, "go"), (25000, "crash")], "seed": 5},
        },
    )

    # (a) the whole program: ramp to 30 deg, hold, pause, home.
    full = out["full"]["summary"]
    assert full["final_state"] == "HOME"
    assert full["session_ends"] == ["completed"]
    assert full["faults_seen"] == []
    assert full["max_angle_deg"] <= 31
    assert full["max_angle_deg"] >= 29  # it did reach the program's angle
    assert full["drive_off"]
    assert full["final_angle_deg"] < HOME_DEG + 2
    states = [s for _t, s in out["full"]["transitions"]]
    assert states[:6] == ["BOOT", "HOME", "WARN", "RAMP", "HOLD", "RETURN"]
    assert states[-1] == "HOME"

    # (b) STOP during the ramp (before horizontal) and during the hold.
    for name, stop_ms in (("stop_ramp", 15000), ("stop_hold", 30000)):
        run = out[name]
        s = run["summary"]
        assert s["final_state"] == "HOME", name
        assert s["session_ends"] == ["stopped"], name
        assert s["faults_seen"] == [], name
        assert s["max_angle_deg"] <= 31, name
        assert s["drive_off"], name
        # STOP acts on the first sample: RETURN within two ticks.
        t, state = _first_after(run["transitions"], stop_ms)
        assert state == "RETURN" and t <= stop_ms + 2 * 20, (name, t, state)
    # The STOP at 15 s came 12 s into a 5 deg/s ramp from -60 deg.
    assert out["stop_ramp"]["summary"]["max_angle_deg"] < 1.0

    # (c) power lost while inverted: reboots, recovers home, drive off.
    s = out["power_loss"]["summary"]
    assert s["boots"] == 2
    assert s["final_state"] == "HOME"
    assert s["drive_off"]
    assert s["final_angle_deg"] < HOME_DEG + 2
    assert s["max_angle_deg"] <= 31
    states = [st for t, st in out["power_loss"]["transitions"] if t > 25000]
    assert states == ["OFF", "BOOT", "RETURN", "HOME"]

    # (c) an exception inside the control loop: crash fault latched, home, drive off.
    s = out["crash"]["summary"]
    assert s["final_state"] == "FAULT"
    assert s["fault"] == "crash"
    assert s["faults_seen"] == ["crash"]
    assert s["drive_off"]
    assert s["final_angle_deg"] < HOME_DEG + 2
    assert s["max_angle_deg"] <= 31


# ------------------------------------------------- CPython == MicroPython
def test_same_seed_gives_the_same_trace_on_cpython_and_micropython(micropython):
    """Same scenario, same seed: identical state sequence on both interpreters.

    The firmware works in integers and the simulator's noise comes from the
    xorshift PRNG (``hal_sim.rng``), identical on both. The simulator's
    physics and IMU model use floats: the WebAssembly build has double
    floats like CPython, but its libm (musl) may differ from glibc in the
    last bit of sin/cos/exp/log. The IMU rounds to integer mg and mdeg/s
    before the firmware sees anything, so such a difference would almost
    never reach it. Measured: the traces are identical, floats included; the
    float columns are compared to 1e-9 deg so a last-bit libm difference
    does not fail the test, while states, drive and fault must match exactly.
    """
    events = [(1000, "go"), (24000, "stop"), (50000, "go")]
    seed = 11
    mpy = _run_scenarios(micropython, {"run": {"events": events, "seed": seed, "rows": True}})
    mpy = mpy["run"]

    namespace: dict = {}
    exec(_prelude(), namespace)  # the very same code, under CPython
    cpy = namespace["run_scenario"](events=events, seed=seed, rows=True)

    assert [tuple(t) for t in mpy["transitions"]] == [tuple(t) for t in cpy["transitions"]]
    assert len(mpy["rows"]) == len(cpy["rows"])
    worst = 0.0
    for m, c in zip(mpy["rows"], cpy["rows"], strict=True):
        t, true_m, est_m, state_m, drive_m, fault_m = m
        assert (t, state_m, drive_m, fault_m) == (c[0], c[3], c[4], c[5])
        assert (est_m is None) == (c[2] is None)
        if est_m is not None:
            assert est_m == c[2]  # the firmware's integer estimate, /1000
        worst = max(worst, abs(true_m - c[1]))
    assert worst <= 1e-9
    summary_m = dict(mpy["summary"])
    summary_c = json.loads(json.dumps(cpy["summary"]))  # tuples -> lists, as from JSON
    for key in ("max_angle_deg", "final_angle_deg"):
        assert abs(summary_m.pop(key) - summary_c.pop(key)) <= 1e-9
    assert summary_m == summary_c
    # And the scenario really did something: a session, a STOP, a second GO.
    states = [s for _t, s in cpy["transitions"]]
    assert "HOLD" in states and states.count("WARN") == 2


# ----------------------------------------------------------------- storage
STORAGE_CODE = """
import json
from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import settings as settings_mod
from invtable.firmware.auth import Auth, AuthError, DEFAULT_PIN
from invtable.firmware.compat import ticks_add
from invtable.hal_sim.flash import PowerLoss, SimFlash

out = {}

def reboot(fs):
    board = SimFlash()
    board.restore(fs.snapshot())
    return board

# settings: create, change, save, load after a reboot
fs = SimFlash()
s = settings_mod.Settings(fs, BOARD)
out["fresh_status"] = s.load()
s.create_user("Ann")
s.set_limits("Ann", max_angle_mdeg=25000, max_speed_mdeg_s=4000)
s.set_program("Ann", angle_mdeg=22000, hold_ms=30000)
s.select_user("Ann")
before = s.get_user("Ann")
fs = reboot(fs)
s2 = settings_mod.Settings(fs, BOARD)
out["reload_status"] = s2.load()
out["roundtrip_equal"] = s2.get_user("Ann") == before
out["active"] = s2.active_name()
out["users"] = s2.list_users()
out["ann"] = s2.get_user("Ann")

# torn writes: a power cut at several byte positions of the next save
full = len(fs.read_bytes(settings_mod.SETTINGS_FILE))
torn = []
for at in (0, 1, 63, 64, 65, full // 2, full - 1, full, full + 10):
    flash = reboot(fs)
    s3 = settings_mod.Settings(flash, BOARD)
    s3.load()
    flash.tear_next_write(at)
    try:
        s3.set_limits("Ann", max_angle_mdeg=20000)
        raised = False
    except PowerLoss:
        raised = True
    after = reboot(flash)
    s4 = settings_mod.Settings(after, BOARD)
    status = s4.load()
    torn.append([at, raised, status, s4.get_user("Ann") == before, after.names()])
out["torn"] = torn

# auth: the lockout survives a reboot and counts only while powered
class Clock:
    def __init__(self, t):
        self.t = t
    def __call__(self):
        return self.t
    def advance(self, ms):
        self.t = ticks_add(self.t, ms)

counter = [0]
def rand_bytes(n):
    counter[0] += 1
    return bytes((counter[0] * 31 + i * 17) & 0xFF for i in range(n))

def attempt(a, pin):
    try:
        return ["ok", a.check(pin)]
    except AuthError as e:
        return [e.code, e.retry_after_ms, e.attempts_left]

fs = SimFlash()
clock = Clock(1000)
a = Auth(fs, clock, rand_bytes, iterations=50)
log = [attempt(a, "1111"), attempt(a, "2222"), attempt(a, "3333")]
clock.advance(10000)
log.append(attempt(a, DEFAULT_PIN))  # still locked: not even the right PIN
flash = reboot(fs)
clock2 = Clock(50)  # the clock restarts after a reboot
b = Auth(flash, clock2, rand_bytes, iterations=50)
log.append(b.load_status)
log.append(attempt(b, DEFAULT_PIN))  # the stored lockout restarts in full
clock2.advance(30000)
log.append(attempt(b, "4444"))  # the 4th failure doubles the lockout
flash2 = reboot(flash)
c = Auth(flash2, Clock(123456), rand_bytes, iterations=50)
log.append([c.fails, c.retry_after_ms()])
out["auth"] = log
print(MARK + json.dumps(out))
"""


def test_storage_settings_and_auth_under_micropython(micropython):
    code = f"MARK = {MARK!r}\n" + textwrap.dedent(STORAGE_CODE)
    out = _result(micropython(code, timeout_s=120))

    assert out["fresh_status"] == "defaults_missing"
    assert out["reload_status"] == "ok"
    assert out["roundtrip_equal"] is True
    assert out["active"] == "Ann"
    assert out["users"] == ["guest", "Ann"]
    ann = out["ann"]
    assert ann["limits"]["max_angle_mdeg"] == 25000
    assert ann["program"]["angle_mdeg"] == 22000
    assert ann["program"]["hold_ms"] == 30000

    for at, raised, status, old_kept, names in out["torn"]:
        assert raised, at  # every armed tear cut the power
        assert status == "ok", at
        assert old_kept, at  # the rename never happened: the old settings stand
        assert names == ["settings.json"], (at, names)  # the torn .new was removed

    log = out["auth"]
    assert log[0] == ["bad_pin", 0, 2]
    assert log[1] == ["bad_pin", 0, 1]
    assert log[2] == ["bad_pin", 30000, 0]
    assert log[3][0] == "locked" and log[3][1] == 20000
    assert log[4] == "ok"  # the auth record loaded after the reboot
    assert log[5] == ["locked", 30000, None]  # a reboot never shortens a lockout
    assert log[6] == ["bad_pin", 60000, 0]
    assert log[7] == [4, 60000]


# --------------------------------------------------------------------- heap
def _bench(micropython, *args: str) -> dict:
    """bench/heap_tick.py run under MicroPython (synchronous ``main``)."""
    proc = micropython(
        BENCH.read_text(encoding="utf-8"), timeout_s=180, heap_bytes=1 << 20, args=list(args)
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1])


def test_controller_step_allocates_nothing_in_steady_state(micropython):
    """Controller.step, fed a recorded session's inputs through one prefilled
    Inputs, allocates 0 heap bytes per tick in RAMP, HOLD and RETURN (and in
    every other steady state), for the test program and at the board's caps.

    A functional property (no garbage = no gc pauses in the control loop), not
    a timing. Only a transition tick may allocate (GO: the Session object).
    """
    figures = _bench(micropython, "--quick")
    major, minor = micropython.version[:2]
    assert figures["interpreter"].startswith(f"micropython {major}.{minor}.")
    assert figures["hold_bytes_per_tick"] == 0
    assert figures["ramp_bytes_per_tick"] == 0
    assert figures["return_bytes_per_tick"] == 0
    for name, case in figures["cases"].items():
        assert case["replay_mismatch"] is None, name  # step is a function of its inputs
        per_state = case["step_bytes_per_state"]
        for state in ("RAMP", "HOLD", "RETURN"):
            assert per_state[state]["ticks"] >= 300, (name, state)
            assert per_state[state]["bytes"] == 0, (name, state)
        for key, stats in per_state.items():
            if ">" not in key:
                assert stats["bytes"] == 0, (name, key, stats)
        # A transition tick may allocate, but only a little (the Session on GO).
        assert max(stats["bytes"] for stats in per_state.values()) <= 256, name


# ----------------------------------------------------------- the session log
LOG_CODE = """
import gc, json, sys
from invtable.hal_sim import machine_sim as ms
sys.modules["machine"] = ms
from invtable.firmware import esp32_hal, sessionlog, storage

try:
    import os
    os.mkdir(ROOT)
except OSError:
    pass
fs = esp32_hal.Fs(ROOT)
fs.remove(sessionlog.LOG_FILE)

def entry(i):
    return {"user": ("Ann", "Bob", "Chloe")[i % 3], "start_s": 1800000000 + i,
            "uptime_ms": 1000 * i, "max_angle_mdeg": -5000 + i, "inverted_ms": 60000 + i,
            "end": sessionlog.ENDS[i % len(sessionlog.ENDS)],
            "fault": None if i % 4 else "stall", "daily_ms": 120000}

log = sessionlog.SessionLog(fs)
for i in range(sessionlog.MAX_ENTRIES + 3):
    log.append(entry(i))
out = {"n": len(log), "first": log.entries(0, 1)[0]}

# What the full log holds in RAM, and the most one more append allocates.
gc.collect()
before = gc.mem_alloc()
again = sessionlog.SessionLog(fs)
gc.collect()
out["held_bytes"] = gc.mem_alloc() - before
out["reloaded_equal"] = again.entries() == log.entries()

class PeakFs(esp32_hal.Fs):
    # The live heap at each chunk the save writes (after a collection).
    peak = 0

    def write_bytes(self, name, data):
        def sampled():
            for chunk in data:
                gc.collect()
                PeakFs.peak = max(PeakFs.peak, gc.mem_alloc())
                yield chunk
        super().write_bytes(name, sampled())

again._fs = PeakFs(ROOT)
gc.collect()
before = gc.mem_alloc()
again.append(entry(1000))
out["save_peak_bytes"] = PeakFs.peak - before
# For comparison: the same entries held as dicts (how the log held them
# before), and the file encoded whole (how it was saved before).
gc.collect()
before = gc.mem_alloc()
dicts = again.entries()
gc.collect()
out["dicts_bytes"] = gc.mem_alloc() - before
out["whole_file_bytes"] = len(storage.encode({"schema": 2, "entries": dicts}))
data, status = storage.load(fs, sessionlog.LOG_FILE)
out["file_status"] = status
out["file_last"] = data["entries"][-1]
out["file_len"] = len(data["entries"])
print(MARK + json.dumps(out))
"""


def test_the_full_session_log_on_the_esp32_fs_holds_little_and_saves_in_chunks(
        micropython, tmp_path):
    """A full log (50 entries) reloads from the ESP32 HAL's Fs as it was saved,
    is held as tuples in at most three quarters of the heap the same entries
    take as dicts, and an append writes it one entry at a time: its live peak is
    less than half of the file it writes (which the log built whole before)."""
    root = "/tmp/invtable-log" if micropython.name == "wasm" else str(tmp_path)
    code = f"MARK = {MARK!r}\nROOT = {root!r}\n" + textwrap.dedent(LOG_CODE)
    out = _result(micropython(code, timeout_s=120))
    assert out["n"] == 50
    assert out["first"]["uptime_ms"] == 3000  # the oldest three were dropped
    assert out["reloaded_equal"] is True
    assert out["file_status"] == "ok" and out["file_len"] == 50
    assert out["file_last"]["uptime_ms"] == 1_000_000
    if micropython.name == "wasm":
        return  # gc.collect() there only asks for a collection: no live figures
    # Measured on the unix port (64-bit): held 5.5 KB against 8.5 KB as
    # dicts; the save's live peak 3.5 KB against an 8.3 KB file built whole.
    assert out["held_bytes"] < out["dicts_bytes"] * 3 / 4, out
    assert out["save_peak_bytes"] < out["whole_file_bytes"] / 2, out
