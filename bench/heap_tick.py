"""Heap bytes and time per firmware control tick, under real MicroPython.

Run with CPython, which runs this file under MicroPython 1.27 (WebAssembly,
through ``invtable.host.micropython``; ``run_under_micropython()`` from
Python) and prints one JSON object::

    .venv/bin/python bench/heap_tick.py [--quick]

or directly under the runner (then the boot heap figures are upper bounds,
see below)::

    node host/mpy_node_runner.mjs --heap 1m --mount pkg:/lib/invtable \\
        --mount firmware:/lib/invtable/firmware --mount hal_sim:/lib/invtable/hal_sim \\
        --mount boards:/lib/invtable/boards -- bench/heap_tick.py [--quick]

``--quick``: heap figures only (what the test suite checks), no timings.

Method, for each program in ``CASES``:

1. Record: a simulated session (``Scenario``: the unmodified ``App.tick`` on
   the simulated table, GO at 1 s). Each tick's inputs, ``now`` and the
   controller's state before and after are recorded.
2. Heap replay: a fresh ``Controller`` is fed the recorded inputs through one
   prefilled ``Inputs`` with the recorded, advancing ``now``. The controller
   is a pure function of its inputs, so it goes through the same states
   (checked tick by tick: ``replay_mismatch`` is null). The ticks are cut into
   segments of constant (state before, state after): a steady stretch such as
   "HOLD", or a single transition tick such as "HOME>WARN". Each segment runs
   with gc disabled and one ``gc.mem_alloc()`` delta around it (as
   ``HEAP_PROBE`` does), so its bytes are exact. ``gc.mem_alloc()`` walks the
   whole heap (milliseconds per call here), so it is not called every tick.
3. Time replay: the same again, timing each ``Controller.step`` with
   ``js.performance.now()`` (``time.ticks_us`` only has 1 ms resolution in
   this build); ``empty_loop_us`` is the same harness around a function that
   does nothing, i.e. the clock's own cost. On a loaded host the p99 shows
   the scheduler's 4 ms time slices, not the firmware.
4. ``app_sim_bytes_per_tick``: ``App.tick`` plus the simulated HAL and
   physics (float maths) per tick, by state. Not firmware: for comparison.

Requests (``request_bytes``): each request kind of ``REQUESTS`` sent to the
App at HOME (the simulated table, its serial line in preallocated buffers:
``hal_sim.devices.FixedLink``, the IMU sampled outside the ticks), three
times; the most heap bytes the ticks that read it and answer it allocated
(``gc.mem_alloc()`` deltas around ``App.tick`` with gc disabled; a steady
tick allocates 0). ``REQUEST_BYTES_BOUND`` is the bound the tests hold
(tests/test_request_heap.py): these figures plus a margin, per word size.
A plain STOP request (the host's form) and an over-long line allocate 0.

Boot heap: ``heap_after_boot_bytes`` is ``gc.mem_alloc()`` after importing
the firmware control path (``app``, ``controller`` and what they import) and
building a ``Controller`` and ``Inputs``; ``firmware_boot_bytes`` is the part
that this added. In the npm WebAssembly build ``gc.collect()`` frees nothing
allocated since the script last yielded to the JS event loop, so only
``amain`` (which awaits before collecting; used by the CPython launcher) gives
exact figures; ``boot_heap_exact`` says which. This covers the control path
only; the full board boot (main.py, the ESP32 HAL, protocol, settings, ...)
that bench/results.json reports is bench/boot_heap.py's.

Timings are for the WebAssembly interpreter under Node on the host, not for an
ESP32; use them only to compare firmware versions on one machine. Heap bytes
are what the board allocates (same interpreter version, 32-bit words,
16-byte blocks).
"""

import gc
import json
import sys
import time

SEED = 1
GO_AT_MS = 1000
MAX_TICKS = 6000  # 120 s of simulated time at 50 Hz: more than a session
HEAP_BYTES = 1024 * 1024  # initial heap for the runner: keeps mem_alloc() quick

CASES = {
    # The program of the MicroPython tests: 30 deg, 20 s hold, 5 deg/s.
    "standard": (
        {
            "angle_mdeg": 30000,
            "hold_ms": 20000,
            "sets": 1,
            "rest_ms": 10000,
            "speed_mdeg_s": 5000,
            "exit_pause_ms": 3000,
        },
        {"max_angle_mdeg": 30000, "max_inverted_ms": 120000, "max_speed_mdeg_s": 5000},
    ),
    # The board's hard caps: the largest numbers the integer maths sees.
    "full_range": (
        {
            "angle_mdeg": 90000,
            "hold_ms": 20000,
            "sets": 1,
            "rest_ms": 10000,
            "speed_mdeg_s": 10000,
            "exit_pause_ms": 3000,
        },
        {"max_angle_mdeg": 90000, "max_inverted_ms": 300000, "max_speed_mdeg_s": 10000},
    ),
}

# Request kinds measured by request_bytes(): (kind, line, the reply's code or
# "ok"). The id is one the host could send (below 2**30: a small int).
_RID = '"id":123456,'
REQUESTS = (
    ("stop", "{" + _RID + '"cmd":"stop"}', "ok"),
    ("status", "{" + _RID + '"cmd":"status"}', "ok"),
    ("info", "{" + _RID + '"cmd":"info"}', "ok"),
    ("telemetry_on", "{" + _RID + '"cmd":"telemetry","rate_hz":10}', "ok"),
    ("telemetry_off", "{" + _RID + '"cmd":"telemetry","rate_hz":0}', "ok"),
    ("user_get", "{" + _RID + '"cmd":"user.get","name":"guest"}', "ok"),
    ("limits_set", "{" + _RID + '"cmd":"limits.set","name":"guest","pin":"0000",'
     '"max_speed_mdeg_s":4000}', "ok"),
    ("unknown_cmd", "{" + _RID + '"cmd":"nope"}', "unknown_cmd"),
    ("bad_json", "{" + _RID + '"cmd":"status"', "bad_json"),
    ("line_too_long", "x" * 600, "line_too_long"),
)
# The bounds the tests hold: the figures measured (bench/results.json,
# docs/performance.md) plus about a quarter, by the interpreter's word size.
REQUEST_BYTES_BOUND = {
    # measured (MicroPython 1.27 wasm): status 2080, info 2256, telemetry 800,
    # user.get 1840, limits.set 142368 (Auth: 500 sha256 rounds of the PIN),
    # unknown_cmd 944, bad_json 688
    32: {"stop": 0, "line_too_long": 0, "status": 2600, "info": 2800, "telemetry_on": 1000,
         "telemetry_off": 1000, "user_get": 2300, "limits_set": 180000, "unknown_cmd": 1200,
         "bad_json": 900},
    # measured (1.29 unix port): 2944, 2976, 1408, 2720, 168992, 1600, 1120
    64: {"stop": 0, "line_too_long": 0, "status": 3700, "info": 3700, "telemetry_on": 1800,
         "telemetry_off": 1800, "user_get": 3400, "limits_set": 212000, "unknown_cmd": 2000,
         "bad_json": 1400},
}
REQUEST_REPEAT = 3

def _no_collections(app):
    """The App's memory guard collects every 5 s at home (firmware/memory_guard.py):
    here it is told the heap has room instead, so that no collection frees memory
    inside a measured delta. The guard itself (a collection, a small int) allocates
    nothing: tests/test_heap_lock_unix.py runs HOME ticks with it, heap locked."""
    from invtable.firmware.memory_guard import MemoryGuard

    app.memory = MemoryGuard(mem_free=_room)


def _room():
    return 1 << 20


# Fields of a recorded tick.
_NOW, _RAW, _IMU_OK, _GO, _STOP, _HOME, _OVERLOAD, _BEFORE, _AFTER, _ELAPSED = range(10)


def _percentile(values, p):
    s = sorted(values)
    if not s:
        return None
    i = (len(s) * p + 99) // 100 - 1
    return s[max(0, min(len(s) - 1, i))]


def _key(tick):
    if tick[_BEFORE] == tick[_AFTER]:
        return tick[_BEFORE]
    return tick[_BEFORE] + ">" + tick[_AFTER]


def _session(board, program, limits, seed, on_tick=None, before_tick=None):
    """Run a simulated session: GO at 1 s, until 20 ticks after it is over.

    ``before_tick(state)`` is called before each tick, ``on_tick(sim, now,
    elapsed, state_before)`` after it.
    """
    from invtable.hal_sim.scenario import Scenario

    sim = Scenario(board, program, limits, seed)
    app = sim.app
    _no_collections(app)
    go_done = False
    settled = 0
    n = 0
    while n < MAX_TICKS and settled < 20:
        if not go_done and sim.now_ms >= GO_AT_MS:
            sim.inject("go")
            go_done = True
        ctl = app.ctl
        state_before = ctl.state
        now = sim.table.clock.ticks_ms()
        elapsed = sim.now_ms
        if before_tick is not None:
            before_tick(state_before)
        sim.tick()  # App.tick (HAL reads, Controller.step, outputs), then physics
        n += 1
        if sim.app is not app or app.ctl is not ctl:
            raise RuntimeError("the controller was replaced (crash or reboot) in the bench")
        if on_tick is not None:
            on_tick(sim, now, elapsed, state_before)
        if go_done and ctl.state == "HOME" and ctl.session is None and ctl.sets_done:
            settled += 1


def record(board, program, limits, seed=SEED):
    """Each tick of a session: (now, raw, imu_ok, go, stop, home, overload,
    state before, state after, elapsed ms)."""
    ticks = []

    def keep(sim, now, elapsed, state_before):
        inp = sim.app.inputs
        ticks.append(
            (
                now,
                list(inp.raw),
                inp.imu_ok,
                inp.go,
                inp.stop,
                inp.home,
                inp.overload,
                state_before,
                sim.app.ctl.state,
                elapsed,
            )
        )

    _session(board, program, limits, seed, keep)
    return ticks


def app_tick_bytes(board, program, limits, seed=SEED):
    """Heap bytes per App.tick + physics with the simulated HAL, by state (not firmware).

    ``gc.mem_alloc()`` only where the state changes: it walks the whole heap.
    """
    totals = {}  # state -> [ticks, bytes]
    run = [None, 0, 0]  # state of the current stretch, its ticks, mem_alloc() at its start

    def before_tick(state):
        if state != run[0]:
            alloc = gc.mem_alloc()
            if run[0] is not None:
                e = totals.get(run[0])
                if e is None:
                    e = totals[run[0]] = [0, 0]
                e[0] += run[1]
                e[1] += alloc - run[2]
            run[0] = state
            run[1] = 0
            run[2] = gc.mem_alloc()
        run[1] += 1

    gc.disable()
    try:
        _session(board, program, limits, seed, before_tick=before_tick)
    finally:
        gc.enable()
    before_tick(None)  # close the last stretch
    out = {}
    for state in totals:
        n, total = totals[state]
        out[state] = total // n
    return out


def _segments(ticks):
    """[(key, start, end)]: runs of ticks with the same (state before, state after)."""
    out = []
    start = 0
    for i in range(1, len(ticks) + 1):
        if i == len(ticks) or _key(ticks[i]) != _key(ticks[start]):
            out.append((_key(ticks[start]), start, i))
            start = i
    return out


def _replayer(board, program, limits, ticks):
    """A fresh controller and ``feed(i)``, which steps it with recorded tick i."""
    from invtable.firmware.controller import Controller, Inputs
    from invtable.hal_sim.scenario import commissioned_calibration

    # The calibration the recorded session's board held (scenario.AUTO).
    ctl = Controller(board, commissioned_calibration(board, SEED))
    ctl.set_program(program, limits)
    inp = Inputs()

    def fill(i):
        r = ticks[i]
        inp.raw = r[_RAW]
        inp.imu_ok = r[_IMU_OK]
        inp.go = r[_GO]
        inp.stop = r[_STOP]
        inp.home = r[_HOME]
        inp.overload = r[_OVERLOAD]
        return r[_NOW]

    return ctl, inp, fill


def replay_heap(board, program, limits, ticks):
    """Exact heap bytes of Controller.step per segment; first state mismatch or None."""
    ctl, inp, fill = _replayer(board, program, limits, ticks)
    states = [None] * len(ticks)
    segments = []
    gc.collect()
    gc.disable()  # a collection inside a segment could hide its allocations
    try:
        for key, start, end in _segments(ticks):
            before = gc.mem_alloc()
            for i in range(start, end):
                ctl.step(fill(i), inp)
                states[i] = ctl.state
            after = gc.mem_alloc()
            segments.append((key, start, end, after - before))
    finally:
        gc.enable()
    mismatch = None
    for i in range(len(ticks)):
        if states[i] != ticks[i][_AFTER]:
            mismatch = [ticks[i][_ELAPSED], ticks[i][_AFTER], states[i]]
            break
    return segments, mismatch


def _clock_us():
    """(function returning a float in microseconds, its name)."""
    try:
        import js

        now = js.performance.now
        return (lambda: now() * 1000.0), "js.performance.now"
    except Exception:  # no js module: this build's ticks_us (1 ms steps)
        ticks_us = time.ticks_us
        return ticks_us, "time.ticks_us"


def replay_time(board, program, limits, ticks, states=("RAMP", "HOLD", "RETURN")):
    """Per-tick microseconds of Controller.step and of the empty harness, in `states`."""
    ctl, inp, fill = _replayer(board, program, limits, ticks)
    clock, clock_name = _clock_us()

    def noop(now_ms, inp):
        return 0

    step_us = []
    empty_us = []
    gc.collect()
    gc.disable()  # the clock's floats must not trigger a collection mid-tick
    try:
        for i in range(len(ticks)):
            now_ms = fill(i)
            timed = _key(ticks[i]) in states
            if timed:
                t0 = clock()
                noop(now_ms, inp)
                t1 = clock()
                empty_us.append(t1 - t0)
                t0 = clock()
            ctl.step(now_ms, inp)
            if timed:
                t1 = clock()
                step_us.append(t1 - t0)
    finally:
        gc.enable()
    return step_us, empty_us, clock_name


def run_case(board, program, limits, quick=False):
    """Figures of one program; ``quick``: heap replay only (no timing, no App.tick)."""
    ticks = record(board, program, limits)
    segments, mismatch = replay_heap(board, program, limits, ticks)
    per_state = {}
    segment_list = []
    for key, start, end, nbytes in segments:
        e = per_state.get(key)
        if e is None:
            e = per_state[key] = {"ticks": 0, "bytes": 0}
        e["ticks"] += end - start
        e["bytes"] += nbytes
        segment_list.append([key, ticks[start][_ELAPSED], end - start, nbytes])
    out = {
        "ticks": len(ticks),
        "replay_mismatch": mismatch,
    }
    for state in ("RAMP", "HOLD", "RETURN"):
        e = per_state.get(state)
        if e is not None:
            bpt = e["bytes"] / e["ticks"]
            out[state.lower() + "_bytes_per_tick"] = int(bpt) if bpt == int(bpt) else bpt
    if not quick:
        step_us, empty_us, clock_name = replay_time(board, program, limits, ticks)
        out["tick_us_median"] = round(_percentile(step_us, 50), 1)
        out["tick_us_p90"] = round(_percentile(step_us, 90), 1)
        out["tick_us_p99"] = round(_percentile(step_us, 99), 1)
        out["tick_us_max"] = round(max(step_us), 1)
        out["empty_loop_us"] = round(_percentile(empty_us, 50), 1)
        out["timed_ticks"] = len(step_us)
        out["clock"] = clock_name
        out["app_sim_bytes_per_tick"] = app_tick_bytes(board, program, limits)
    out["step_bytes_per_state"] = per_state
    out["segments"] = segment_list  # [key, start elapsed ms, ticks, bytes]
    return out


def request_bytes(board, repeat=REQUEST_REPEAT):
    """{kind: most bytes one request of that kind allocated, "replies": {kind:
    code}, "idle_bytes": what the ticks between requests allocated}."""
    from invtable.firmware.protocol import Protocol
    from invtable.hal_sim.devices import FixedLink
    from invtable.hal_sim.imu import SampledImu
    from invtable.hal_sim.scenario import Scenario

    program, limits = CASES["standard"]
    sim = Scenario(board, program, limits, SEED)
    app = sim.app
    _no_collections(app)
    imu = SampledImu(sim.table.imu)
    sim.imu.imu = imu
    link = sim.table.link = app.hal.link = FixedLink()
    app.protocol = Protocol(app)

    def tick():
        imu.take()
        before = gc.mem_alloc()
        app.tick()
        used = gc.mem_alloc() - before
        sim.table.step(sim.dt_ms)
        return used

    out = {}
    replies = {}
    idle = 0
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):  # past BOOT, at HOME
            tick()
        link.host_read()
        for _ in range(20):
            idle += tick()
        for kind, line, _code in REQUESTS:
            worst = 0
            for _ in range(repeat):
                link.host_write(line + "\n")
                total = 0
                for _ in range(len(line) // 64 + 3):  # BYTES_PER_TICK a tick
                    total += tick()
                text = link.host_read().decode()
                if total > worst:
                    worst = total
                for reply in text.split("\n"):
                    if reply.startswith("{") and '"event"' not in reply:
                        msg = json.loads(reply)
                        replies[kind] = "ok" if msg["ok"] else msg["error"]["code"]
                for _ in range(5):
                    idle += tick()
                link.host_read()
            out[kind] = worst
    finally:
        gc.enable()
    out["replies"] = replies
    out["idle_bytes"] = idle
    return out


def _boot_begin():
    gc.collect()
    return gc.mem_alloc()


def _boot_build(board):
    from invtable.firmware.app import App  # noqa: F401
    from invtable.firmware.controller import Controller, Inputs

    return Controller(board), Inputs()


def _boot_end(base):
    gc.collect()
    used = gc.mem_alloc()
    return used, used - base


def _make_garbage():
    gc.collect()
    before = gc.mem_alloc()
    junk = None
    for i in range(100):
        junk = [i, i, i, i]
    del junk
    return before


def _garbage_freed(before):
    """True if gc.collect() frees the garbage of _make_garbage().

    In the npm WebAssembly build gc.collect() frees nothing that was allocated
    since the script last yielded to the JS event loop (an ``await``); so
    ``main`` (no await) reports upper bounds and ``amain`` exact figures."""
    gc.collect()
    return gc.mem_alloc() - before < 100 * 16


def figures(board, heap_after_boot, fw_boot, collect_frees, quick=False):
    cases = {}
    for name in CASES:
        program, limits = CASES[name]
        cases[name] = run_case(board, program, limits, quick)
    std = cases["standard"]
    version = ".".join(str(v) for v in sys.implementation.version[:3])
    requests = request_bytes(board)
    return {
        "request_bytes": requests,
        "request_word_bits": 64 if sys.maxsize > 2**31 else 32,
        "interpreter": sys.implementation.name + " " + version,
        "hold_bytes_per_tick": std.get("hold_bytes_per_tick"),
        "ramp_bytes_per_tick": std.get("ramp_bytes_per_tick"),
        "return_bytes_per_tick": std.get("return_bytes_per_tick"),
        "tick_us_median": std.get("tick_us_median"),
        "tick_us_p99": std.get("tick_us_p99"),
        "empty_loop_us": std.get("empty_loop_us"),
        "heap_after_boot_bytes": heap_after_boot,
        "firmware_boot_bytes": fw_boot,
        "boot_heap_exact": collect_frees,
        "cases": cases,
    }


def main(quick=False):
    """Synchronous: under the npm build the boot figures are then upper bounds."""
    from invtable.boards.esp32_devkitc import BOARD

    base = _boot_begin()
    keep = _boot_build(BOARD)
    heap_after_boot, fw_boot = _boot_end(base)
    del keep
    collect_frees = _garbage_freed(_make_garbage())
    print(json.dumps(figures(BOARD, heap_after_boot, fw_boot, collect_frees, quick)))


async def amain(quick=False):
    """As main, yielding to the event loop before each collection, so that
    gc.collect() really frees garbage in the npm WebAssembly build."""
    import asyncio

    from invtable.boards.esp32_devkitc import BOARD

    await asyncio.sleep(0)
    base = _boot_begin()
    keep = _boot_build(BOARD)
    await asyncio.sleep(0)
    heap_after_boot, fw_boot = _boot_end(base)
    del keep
    before = _make_garbage()
    await asyncio.sleep(0)
    collect_frees = _garbage_freed(before)
    print(json.dumps(figures(BOARD, heap_after_boot, fw_boot, collect_frees, quick)))


def runner_code(quick=False):
    """This file as code for ``run_micropython(code, args=RUNNER_ARGS)``: it
    ends with ``await amain()``, so the boot heap figures are exact."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    return source + "\n\nawait amain(quick=" + str(bool(quick)) + ")\n"


RUNNER_ARGS = ("--no-main",)  # keeps the file's own ``main()`` from running too


def requests_code():
    """This file as code that prints ``REQUEST_BYTES {json}`` (request_bytes)."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    return (source + "\n\nfrom invtable.boards.esp32_devkitc import BOARD\n"
            "print('REQUEST_BYTES ' + json.dumps(request_bytes(BOARD)))\n")


def requests_unix(timeout_s=300):
    """CPython: request_bytes() on the native unix port (64-bit); the dict."""
    from invtable.host import micropython_unix

    proc = micropython_unix.run_micropython(requests_code(), timeout_s=timeout_s,
                                            args=RUNNER_ARGS)
    for line in proc.stdout.splitlines():
        if line.startswith("REQUEST_BYTES "):
            return json.loads(line[len("REQUEST_BYTES "):])
    raise RuntimeError("request_bytes on the unix port: " + (proc.stderr or proc.stdout)[-400:])


def run_under_micropython(quick=False, timeout_s=300):
    """CPython: run the bench under MicroPython; returns the CompletedProcess
    (the JSON is the last line of its stdout)."""
    from invtable.host.micropython import run_micropython

    return run_micropython(
        runner_code(quick), timeout_s=timeout_s, heap_bytes=HEAP_BYTES, args=RUNNER_ARGS
    )


if __name__ == "__main__":
    if sys.implementation.name != "micropython":
        proc = run_under_micropython(quick="--quick" in sys.argv)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        sys.exit(proc.returncode)
    elif "--no-main" not in sys.argv:
        main(quick="--quick" in sys.argv)
