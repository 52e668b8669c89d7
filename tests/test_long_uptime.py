"""Counters on a board that runs for weeks (issue 14): the controller's time
counters stop at TIME_COUNT_MAX_MS (a small int on the ESP32, where 2**30
would allocate on every tick), and everything timed by them still works
there: GO after weeks idle at home, the fault alarm after weeks latched.
The uptime is kept as seconds plus a ms remainder (small ints for 34 years);
the lines of the tick path write it as digits, so the host sees the exact
uptime in ms however long the board runs. The last test runs 40 days."""

import json
import textwrap

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware.controller import TIME_COUNT_MAX_MS
from invtable.hal_sim import scenario

PROGRAM = dict(angle_mdeg=20000, hold_ms=10000, sets=1, rest_ms=0, speed_mdeg_s=4000,
               exit_pause_ms=0)
LIMITS = dict(max_angle_mdeg=20000, max_inverted_ms=60000, max_speed_mdeg_s=4000,
              check_in_ms=0)
SMALL_INT_MAX = (1 << 30) - 1  # the ESP32's (32-bit) MicroPython small ints


def run_until(sim, cond, limit_ms):
    rows = []
    while not cond():
        sim.tick()
        rows.append(sim.row())
        assert sim.now_ms < limit_ms, f"not reached by {limit_ms} ms"
    return rows


def weeks_later(ctl):
    """As if the controller had sat in its state for weeks: its counters at the
    top (what TIME_COUNT_MAX_MS ms of ticks would have left)."""
    ctl._state_ms = TIME_COUNT_MAX_MS
    ctl._warning_ms = TIME_COUNT_MAX_MS
    ctl._fault_ms = TIME_COUNT_MAX_MS


def test_idle_at_home_for_weeks_the_counters_stay_small_and_go_still_works():
    sim = scenario.Scenario(BOARD, PROGRAM, LIMITS, seed=1)
    run_until(sim, lambda: sim.ctl.state == "HOME", 5000)
    ctl = sim.ctl
    weeks_later(ctl)
    for _ in range(500):
        sim.tick()
        assert ctl._state_ms <= TIME_COUNT_MAX_MS <= SMALL_INT_MAX
        assert ctl._warning_ms <= TIME_COUNT_MAX_MS
    sim.inject("go")
    rows = run_until(sim, lambda: sim.ctl.state == "RAMP", 20000)
    warn = [r for r in rows if r[5] == "WARN"]
    assert 1900 <= len(warn) * 20 <= 2100  # the 2 s warning, timed from 0 again
    run_until(sim, lambda: sim.ctl.state == "HOME", 120000)
    assert sim.ends == ["completed"]


def test_a_fault_latched_for_weeks_still_sounds_the_alarm_at_1_hz():
    sim = scenario.Scenario(BOARD, PROGRAM, LIMITS, seed=2)
    run_until(sim, lambda: sim.ctl.state == "HOME", 5000)
    sim.inject("imu_disconnect")
    run_until(sim, lambda: sim.ctl.state == "FAULT" and not sim.ctl.power, 120000)
    ctl = sim.ctl
    weeks_later(ctl)
    beeps = []
    for _ in range(250):  # 5 s
        sim.tick()
        beeps.append(sim.table.indicator.beep)
        assert ctl._fault_ms <= TIME_COUNT_MAX_MS
    rises = sum(1 for a, b in zip(beeps, beeps[1:], strict=False) if b and not a)
    assert 4 <= rises <= 6, beeps
    assert 0.4 <= sum(beeps) / len(beeps) <= 0.6


# ------------------------------------------------ 40 days under MicroPython
FORTY_DAYS = """
import gc, json, sys
from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware.controller import TIME_COUNT_MAX_MS
from invtable.firmware.protocol import Protocol
from invtable.hal_sim.devices import FixedLink
from invtable.hal_sim.imu import SampledImu
from invtable.hal_sim.scenario import Scenario

# "lock": heap_lock (the unix port), a second run locking the ticks the first
# found steady; "measure": gc.mem_alloc() around each tick of the day (the
# wasm build, whose heap_lock hangs); None: no heap check (CPython).
HEAP = %(heap)r
if HEAP == "lock":
    import micropython
PROGRAM = %(program)r
LIMITS = %(limits)r
DAY_MS = 86400000
COARSE_MS = %(coarse_ms)r
FINE_AFTER_JUMP = 4
MEASURE_EVERY = 6  # gc.mem_alloc() walks the heap (about 12 ms a call in wasm)
SESSION_DAYS = %(session_days)r
CHECK_DAY = SESSION_DAYS[-1]
DAYS = %(days)r


def run(lock=None):
    sim = Scenario(BOARD, PROGRAM, LIMITS, seed=4)
    app = sim.app
    imu = SampledImu(sim.table.imu)
    sim.imu.imu = imu
    link = sim.table.link = app.hal.link = FixedLink(16384)
    app.protocol = Protocol(app)
    clock = sim.table.clock
    out = {"sessions": [], "records": [], "locked": {}, "measured": {}, "bad": None, "t_ms": [],
           "status_uptime_ms": None, "ticks": 0}

    def tick(locked=False, measure=False):
        imu.take()
        before = app.ctl.state
        writes = sim.flash.writes
        crashes = app.crashes
        error = None
        used = 0
        if locked:
            micropython.heap_lock()
        elif measure:
            gc.disable()
            m0 = gc.mem_alloc()
        try:
            app.tick()
        except MemoryError as e:
            error = repr(e)
        finally:
            if locked:
                micropython.heap_unlock()
            elif measure:
                used = gc.mem_alloc() - m0
                gc.enable()
        sim.table.step(sim.dt_ms)
        out["ticks"] += 1
        text = link.host_read().decode()
        return [before, app.ctl.state, sim.table.actuator.output_permille(), text,
                sim.flash.writes - writes, app.crashes - crashes, used, error]

    def idle_until(t_ms):
        # A coarse clock: a jump, then a few ticks at 50 Hz. The controller
        # integrates a late tick as at most 5 periods, and its estimator
        # drifts if every tick is late, so most ticks stay on time.
        ctl = app.ctl
        ctl._state_ms = TIME_COUNT_MAX_MS  # weeks of ticks leave them at the top
        ctl._warning_ms = TIME_COUNT_MAX_MS
        ctl._fault_ms = TIME_COUNT_MAX_MS
        while clock.elapsed_ms + COARSE_MS < t_ms:
            clock.advance(COARSE_MS - FINE_AFTER_JUMP * sim.dt_ms)  # at rest: nothing moves
            for _ in range(FINE_AFTER_JUMP + 1):
                tick()

    for _ in range(250):  # boot, at home
        tick()
    n = 0
    for day in SESSION_DAYS:
        idle_until(day * DAY_MS)
        check = day == CHECK_DAY
        if check:
            link.host_write('{"id": 1, "cmd": "telemetry", "rate_hz": 10}\\n')
        for i in range(100):
            if check and i == 50:
                link.host_write('{"id": 2, "cmd": "status"}\\n')
            record = tick()
            for line in record[3].split("\\n"):
                if line and json.loads(line).get("id") == 2:  # (any key order)
                    out["status_uptime_ms"] = [json.loads(line)["data"]["uptime_ms"],
                                               app.uptime_s * 1000 + app.uptime_rem_ms]
        sim.inject("go")
        peak_deg = -90.0
        k = home = 0
        while k < 20000:
            selected = check and lock is not None and lock[n][8]
            measured = check and HEAP == "measure" and n %% MEASURE_EVERY == 0
            record = tick(selected, measured)
            peak_deg = max(peak_deg, sim.table.physics.angle_deg)
            if check:
                n += 1
                record.append(record[0] == record[1] and not record[4] and not record[5]
                              and '"id"' not in record[3])
                out["records"].append(record)
                for line in record[3].split("\\n"):
                    if '"telemetry"' in line:
                        out["t_ms"].append([json.loads(line)["t_ms"],
                                            app.uptime_s * 1000 + app.uptime_rem_ms])
                bad = record[7] is not None or (record[8] and record[6])
                if measured and record[8]:
                    out["measured"][record[0]] = out["measured"].get(record[0], 0) + 1
                if selected:
                    out["locked"][record[0]] = out["locked"].get(record[0], 0) + 1
                    bad = bad or record[:6] != lock[n - 1][:6]
                if bad:
                    out["bad"] = [day, n, record, lock[n - 1] if selected else None]
                    return out
            k += 1
            if app.ctl.state == "HOME" and app.ctl.session is None and k > 200:
                home += 1
                if home > (100 if check else 0):  # the day checked: at home a while
                    break
        ctl = app.ctl
        out["sessions"].append([day, ctl.end_reason, ctl.max_angle_mdeg, ctl.inverted_ms,
                                round(peak_deg, 2), ctl.state, app.crashes, ctl.fault])
        if check:
            link.host_write('{"id": 3, "cmd": "telemetry", "rate_hz": 0}\\n')
            for _ in range(5):
                tick()
    idle_until(DAYS * DAY_MS)
    ctl = app.ctl
    p = app.protocol
    out["end"] = {"uptime_s": app.uptime_s, "state_ms": ctl._state_ms,
                  "warning_ms": ctl._warning_ms, "fault_ms": ctl._fault_ms,
                  "warnings": ctl.warnings, "requests": p.requests, "state": ctl.state,
                  "crashes": app.crashes, "log": len(app.log.entries())}
    return out


result = {"first": run()}
records = result["first"]["records"]
selected = {}
for r in records:
    if r[8]:
        selected[r[0]] = selected.get(r[0], 0) + 1
result["selected"] = selected
if HEAP == "lock":
    result["second"] = run(records)
    del result["second"]["records"]
del result["first"]["records"]
print("FORTY_DAYS " + json.dumps(result))
"""

FORTY_PROGRAM = dict(angle_mdeg=10000, hold_ms=60000, sets=1, rest_ms=0, speed_mdeg_s=5000,
                     exit_pause_ms=2000)
# The inverted-time limit ends each session before the hold would.
FORTY_LIMITS = dict(max_angle_mdeg=10000, max_inverted_ms=12000, max_speed_mdeg_s=5000,
                    check_in_ms=0)
SESSION_DAYS = [1, 6, 11, 16, 21, 26, 31, 36, 39]


def forty_days_code(heap, coarse_ms=1800000, days=40):
    return textwrap.dedent(FORTY_DAYS) % {
        "heap": heap, "program": FORTY_PROGRAM, "limits": FORTY_LIMITS,
        "session_days": SESSION_DAYS, "days": days, "coarse_ms": coarse_ms}


def test_forty_days_idle_and_with_sessions_under_micropython(micropython):
    """A board on for 40 days (its tick counter wraps three times, the uptime
    passes 2**31 ms): idle at home on a coarse clock (a jump of half an hour,
    then a few ticks at 50 Hz), a session every five days at 50 Hz. Every
    session starts on GO and is ended by the inverted-time limit, inside the
    angle limit. On day 39 every steady tick of the session (telemetry on at
    10 Hz) runs with the heap locked and does what it did unlocked (unix
    port), or, one tick in six, allocates 0 bytes by gc.mem_alloc() (wasm:
    32-bit, small ints end at 2**30 as on the ESP32); t_ms and
    status.uptime_ms stay exact."""
    heap = "lock" if micropython.name == "unix" else "measure"
    out = micropython(forty_days_code(heap), timeout_s=600, heap_bytes=1 << 20).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("FORTY_DAYS ")), None)
    assert line is not None, out[-2000:]
    result = json.loads(line[len("FORTY_DAYS "):])
    runs = [result["first"]] + ([result["second"]] if "second" in result else [])
    for run in runs:
        assert run["bad"] is None, run["bad"]
        assert [s[0] for s in run["sessions"]] == SESSION_DAYS
        for day, end, max_angle, inverted, peak_deg, state, crashes, fault in run["sessions"]:
            assert (end, state, crashes, fault) == ("limit", "HOME", 0, None), day
            assert max_angle <= FORTY_LIMITS["max_angle_mdeg"] + 500, day
            assert peak_deg <= FORTY_LIMITS["max_angle_mdeg"] / 1000 + 0.5, day
            assert 8000 <= inverted <= FORTY_LIMITS["max_inverted_ms"], day
        end = run["end"]
        assert end["uptime_s"] >= 40 * 86400 - 1800 and end["state"] == "HOME"
        assert end["crashes"] == 0 and end["log"] == len(SESSION_DAYS)
        for key in ("state_ms", "warning_ms", "fault_ms"):
            assert end[key] <= TIME_COUNT_MAX_MS <= SMALL_INT_MAX, key
        assert end["warnings"] <= SMALL_INT_MAX and end["requests"] <= SMALL_INT_MAX
    selected = result["selected"]
    for state in ("WARN", "RAMP", "HOLD", "RETURN", "PAUSE", "HOME"):
        assert selected.get(state, 0) >= 40, selected
    if "second" in result:
        assert result["second"]["locked"] == selected
    else:  # one tick in six measured (telemetry lines among them)
        for state in ("WARN", "RAMP", "HOLD", "RETURN", "PAUSE", "HOME"):
            assert result["first"]["measured"].get(state, 0) >= 6, result["first"]["measured"]
    # The host sees the exact uptime, beyond what a 32-bit small int holds.
    uptime, exact = result["first"]["status_uptime_ms"]
    assert uptime == exact > 38 * 86400000 > 2**31
    t_ms = result["first"]["t_ms"]
    assert len(t_ms) >= 200 and all(t == u for t, u in t_ms)
