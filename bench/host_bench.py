"""Measurements for bench/run.py's host figures: the serial round trip and deploy time.

Raw timings only; bench/run.py turns them into figures. Two boards, one at a time
(each runs a 20 ms control loop in real time, so they would disturb each other):

* the simulated board: ``invtable sim serve --speed 1`` as a subprocess (the
  firmware under CPython behind a pty);
* the virtual board: ``VirtualBoard`` (real MicroPython 1.27, WebAssembly, behind
  a pty). In order: ``mpremote exec "pass"`` runs on the fresh board (plain
  REPL, no firmware yet, so nothing has to be interrupted), then a full
  ``deploy`` (``force_unverified``: a fresh board cannot answer the home check),
  then a second deploy with nothing changed (the real ``invtable deploy`` path:
  the home check passes on the firmware the first deploy started), then
  ``status`` round trips to the firmware that deploy left running.

Round trips go through ``invtable.host.client.Client`` (pyserial), as the host
commands do. The firmware handles at most one request per control tick, so a
request waits for the next tick: requests sent back to back lock onto the tick
and wait almost a whole period each. The measured series therefore spaces the
requests by a random pause, so they arrive at random phases of the tick, as a
person's commands do; a short back-to-back series is kept for comparison.

Everything is bounded by a deadline: a watchdog closes the board (which makes
any pending mpremote or request fail at once) when it passes, and subprocesses
are always ended.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

BOARD_NAME = "esp32_devkitc"
SPACED_REQUESTS = 100
BACK_TO_BACK_REQUESTS = 20
SPACING_MAX_S = 0.025  # random pause before each spaced request: 0..25 ms
WARMUP_REQUESTS = 3
REQUEST_TIMEOUT_S = 3.0
MPREMOTE_RUNS = 10
MPREMOTE_STARTUP_RUNS = 5
MPREMOTE_TIMEOUT_S = 30.0
SERVE_START_S = 30.0
# Rough time each part needs on a loaded 2-core machine; a part is skipped
# (recorded as not measured) when less than this is left before the deadline.
SIM_NEEDS_S = 15.0
VBOARD_NEEDS_S = 60.0


class OutOfTime(Exception):
    pass


def percentile(values, p):
    """Nearest-rank percentile (as bench/heap_tick.py): p99 of 100 values is the 99th."""
    s = sorted(values)
    if not s:
        return None
    i = (len(s) * p + 99) // 100 - 1
    return s[max(0, min(len(s) - 1, i))]


def _round_trips(client, n, deadline, states, spacing_s=0.0, rng=None):
    """ms of ``n`` status requests on ``client``; adds the reported states to ``states``."""
    times = []
    for _ in range(n):
        if time.monotonic() > deadline:
            raise OutOfTime(f"out of time after {len(times)} of {n} requests")
        if spacing_s:
            time.sleep(rng.uniform(0.0, spacing_s))
        start = time.perf_counter()
        reply = client.request("status", timeout=REQUEST_TIMEOUT_S)
        times.append((time.perf_counter() - start) * 1000.0)
        if reply.get("state") not in states:
            states.append(reply.get("state"))
    return times


def status_round_trips(port, deadline):
    """{"spaced": [ms], "back_to_back": [ms], "states": [state, ...]}: status round trips
    on ``port``; "states" are the firmware states the replies reported, in order seen."""
    from invtable.host.client import Client

    rng = random.Random(0)
    with Client(port, timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(WARMUP_REQUESTS):  # also swallows a pending boot event
            client.request("status", timeout=REQUEST_TIMEOUT_S)
        states = []
        spaced = _round_trips(client, SPACED_REQUESTS, deadline, states, SPACING_MAX_S, rng)
        back_to_back = _round_trips(client, BACK_TO_BACK_REQUESTS, deadline, states)
        return {"spaced": spaced, "back_to_back": back_to_back, "states": states}


# ------------------------------------------------------- simulated board
def _serve_command():
    exe = shutil.which("invtable", path=os.path.dirname(sys.executable))
    if exe:
        return [exe, "sim", "serve", "--speed", "1"]
    return [sys.executable, "-m", "invtable.host.cli_serve", "--speed", "1"]


def measure_sim(deadline):
    """Status round trips to ``invtable sim serve --speed 1``; {"error": ...} on failure."""
    if deadline - time.monotonic() < SIM_NEEDS_S:
        return {"error": "not measured: the bench's time budget was used up"}
    with tempfile.TemporaryFile() as stderr:
        return _serve_and_measure(_serve_command(), stderr, deadline)


def _serve_and_measure(cmd, stderr, deadline):
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    lines = queue.Queue()

    def drain():  # keep reading: a full pipe would stall the simulation
        with contextlib.suppress(OSError, ValueError):
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))

    threading.Thread(target=drain, daemon=True).start()
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), proc.kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            path = lines.get(timeout=SERVE_START_S)
        except queue.Empty:
            path = ""
        if not path.startswith("/dev/"):
            stderr.seek(0)
            tail = stderr.read().decode("utf-8", "replace").strip()[-300:]
            return {"error": f"`{' '.join(cmd[-4:])}` gave no pty path ({path!r}): {tail}"}
        result = status_round_trips(path, deadline)
        result["command"] = "invtable sim serve --speed 1"
        return result
    except Exception as error:  # noqa: BLE001 - a failure is a recorded result
        return {"error": f"{type(error).__name__}: {error}"}
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()


# --------------------------------------------------------- virtual board
def _timed_run(cmd, timeout_s):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    wall_ms = (time.perf_counter() - start) * 1000.0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-200:]
        raise RuntimeError(f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {tail}")
    return wall_ms


def mpremote_exec_ms(port, runs, deadline):
    """ms of ``mpremote connect PORT exec pass``, after one discarded warm-up run."""
    cmd = [sys.executable, "-m", "mpremote", "connect", port, "exec", "pass"]
    times = []
    for i in range(runs + 1):
        if time.monotonic() > deadline:
            raise OutOfTime(f"out of time after {len(times)} mpremote runs")
        wall = _timed_run(cmd, MPREMOTE_TIMEOUT_S)
        if i:
            times.append(wall)
    return times


def mpremote_startup_ms(runs):
    """ms of ``mpremote version``: starting Python and mpremote, no board involved."""
    cmd = [sys.executable, "-m", "mpremote", "version"]
    return [_timed_run(cmd, MPREMOTE_TIMEOUT_S) for _ in range(runs)]


def measure_vboard(deadline):
    """mpremote, deploys and status round trips on one fresh virtual board.

    Returns what was measured before any failure, with "error" set if one occurred."""
    out = {"error": None}
    if deadline - time.monotonic() < VBOARD_NEEDS_S:
        out["error"] = "not measured: the bench's time budget was used up"
        return out
    try:
        from invtable.host import deploy as dep
        from invtable.host.vboard import VirtualBoard

        vb = VirtualBoard(BOARD_NAME)
        vb.start()
    except Exception as error:  # noqa: BLE001 - no node / npm package: recorded
        out["error"] = f"virtual board not started: {type(error).__name__}: {error}"
        return out
    # Past the deadline the board is closed: whatever talks to it fails at once.
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), vb.close)
    watchdog.daemon = True
    watchdog.start()
    try:
        out["mpremote_startup"] = mpremote_startup_ms(MPREMOTE_STARTUP_RUNS)
        out["mpremote"] = mpremote_exec_ms(vb.port, MPREMOTE_RUNS, deadline)
        out["deploy_full"] = dep.deploy(vb.port, BOARD_NAME, force_unverified=True)
        out["deploy_nochange"] = dep.deploy(vb.port, BOARD_NAME)
        out.update(status_round_trips(vb.port, deadline))
    except Exception as error:  # noqa: BLE001 - a failure is a recorded result
        late = " (the bench's time budget ran out)" if time.monotonic() > deadline else ""
        out["error"] = f"{type(error).__name__}: {error}{late}"
    finally:
        watchdog.cancel()
        vb.close()
    return out
