"""A session on the virtual board: `invtable sim board`, `invtable deploy`, GO and
STOP on the board's stdin, `invtable status` on its serial port.

Real processes throughout: the firmware runs under the WebAssembly MicroPython
on the simulated table, the buttons are pressed through `sim board`'s stdin.
Both boards (commissioned, and a --world one that is not) are deployed at the
same time: a deploy through the plain raw REPL takes most of the wall time.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")

DEPLOY_TIMEOUT_S = 180


def invtable_cmd():
    exe = shutil.which("invtable", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "invtable.host.cli"]


class SimBoardProcess:
    """`invtable sim board` in a process: its port, its stdin, its stdout notes."""

    def __init__(self, tmp_path, *args, expect_boot_error=None):
        self.expect_boot_error = expect_boot_error
        self.stderr_path = tmp_path / "stderr.txt"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [*invtable_cmd(), "sim", "board", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.port = self.proc.stdout.readline().strip()
        assert self.port.startswith("/dev/"), self.port + self.stderr()
        self.notes: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_notes, daemon=True).start()

    def _read_notes(self):
        for line in self.proc.stdout:
            self.notes.put(line.rstrip("\n"))

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_note(self, prefix: str, timeout_s: float = 10.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                note = self.notes.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(f"no note starting {prefix!r} within {timeout_s} s") from None
            if note.startswith(prefix):
                return note

    def deploy(self) -> float:
        """`invtable deploy`; a board with a boot error to report (the
        --no-imu one) must fail with exit 6 naming it, the firmware running."""
        started = time.monotonic()
        proc = subprocess.run(
            [*invtable_cmd(), "deploy", "--port", self.port, "--force-unverified"],
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT_S,
        )
        if self.expect_boot_error is None:
            assert proc.returncode == 0, proc.stdout + proc.stderr + self.stderr()
        else:
            assert proc.returncode == 6, proc.stdout + proc.stderr + self.stderr()
            assert self.expect_boot_error in proc.stderr, proc.stderr
        return time.monotonic() - started

    def close(self) -> int | None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.terminate()
                self.proc.wait(10)
        self._stderr.close()
        return self.proc.returncode


def status(port: str) -> dict:
    proc = subprocess.run(
        [*invtable_cmd(), "status", "--json", "--port", port],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def wait_status(port: str, wanted, timeout_s: float = 20.0) -> tuple[dict, list[str]]:
    """Poll `invtable status` until wanted(status); (that status, states seen)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        data = status(port)
        if not seen or seen[-1] != data["state"]:
            seen.append(data["state"])
        if wanted(data):
            return data, seen
        assert time.monotonic() < deadline, f"not reached within {timeout_s} s: {data}"
        time.sleep(0.1)


def at_home(board, banner: str, commissioned: bool, calibration_status: str) -> dict:
    """The freshly deployed board, as `sim board` announced it: at HOME, and
    commissioned or not."""
    assert banner in board.stderr()
    data = status(board.port)
    assert data["state"] == "HOME" and data["commissioned"] is commissioned, data
    assert data["calibration_status"] == calibration_status
    return data


@pytest.fixture(scope="module")
def boards(micropython_setup, tmp_path_factory):
    """{"commissioned": ..., "world": ..., "no_imu": ...}: three deployed
    virtual boards (the last with no MPU-6050 on its bus, powered on at
    +20 deg: a brown-out in the middle of a session)."""
    world_file = tmp_path_factory.mktemp("world") / "world.json"
    world_file.write_text(json.dumps({"rider_kg": 95}))
    made = {}
    try:
        made["commissioned"] = SimBoardProcess(tmp_path_factory.mktemp("plain"))
        made["world"] = SimBoardProcess(
            tmp_path_factory.mktemp("world_board"), "--world", str(world_file)
        )
        made["no_imu"] = SimBoardProcess(
            tmp_path_factory.mktemp("no_imu"), "--no-imu", "--start-angle", "20",
            expect_boot_error="imu_not_found",
        )
        started = time.monotonic()
        with ThreadPoolExecutor(len(made)) as pool:
            seconds = list(pool.map(SimBoardProcess.deploy, made.values()))
        print(
            f"{len(made)} deploys at once: {time.monotonic() - started:.1f} s "
            f"({', '.join(f'{s:.1f}' for s in seconds)} s each)"
        )
        yield made
    finally:
        for board in made.values():
            board.close()


def test_without_a_world_a_session_runs_from_stdin(boards):
    board = boards["commissioned"]
    before = at_home(board, "commissioned;", True, "ok")

    started = time.monotonic()
    board.send("go")
    board.wait_note("input: go")
    moving, seen = wait_status(board.port, lambda s: s["state"] != "HOME")
    assert moving["state"] in ("WARN", "RAMP"), seen
    assert moving["session"] is True and moving["warning"] is None
    go_s = time.monotonic() - started
    # Once the table is really on its way (the beeper's warning is over),
    # STOP has a ramped return to do.
    home_mdeg = before["angle_mdeg"]
    wait_status(
        board.port, lambda s: s["state"] == "RAMP" and s["angle_mdeg"] > home_mdeg + 2000
    )

    started = time.monotonic()
    board.send("stop")
    board.wait_note("input: stop")
    home, seen = wait_status(board.port, lambda s: s["state"] == "HOME", timeout_s=30)
    assert seen[0] in ("RAMP", "RETURN") and "RETURN" in seen, seen
    assert home["session"] is False and home["fault"] is None, home
    assert home["last_end"] == "stopped", home
    print(f"GO -> {moving['state']} seen after {go_s:.1f} s; STOP -> HOME after "
          f"{time.monotonic() - started:.1f} s via {seen}")


def test_with_a_world_go_is_refused_until_setup(boards):
    board = boards["world"]
    at_home(board, "not commissioned", False, "missing")

    board.send("go")
    refused, seen = wait_status(
        board.port, lambda s: s["warning"] == "go_refused_not_commissioned"
    )
    assert seen == ["HOME"] and refused["session"] is False


def test_status_help_and_unknown_inputs_answer_on_stdout(boards):
    board = boards["commissioned"]
    board.send("status")
    note = board.wait_note("status: ")
    assert "GO released" in note and "STOP released" in note and "faults: none" in note
    board.send("help")
    board.wait_note("Physical inputs")
    board.send("no_such_input")
    assert "valid: " in board.wait_note("unknown input 'no_such_input'")


def test_setup_on_the_world_board_then_go_starts_a_session(boards):
    """`invtable setup` commissions the --world board under real MicroPython
    (the builder played from setup's own words on sim board's stdin); GO then
    starts a session. Commissioning runs in real time here: about 100 s."""
    board = boards["world"]
    assert status(board.port)["commissioned"] is False
    setup = subprocess.Popen(
        [*invtable_cmd(), "setup", "--port", board.port, "--pin", "0000",
         "--home-angle", "-60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    said = []
    for line in setup.stdout:
        said.append(line)
        text = line.strip()
        if text.startswith("Press and release GO"):
            board.send("go")
        elif text.startswith("Hold GO"):
            board.send("go_up")  # each motion step wants GO pressed anew
            time.sleep(0.3)
            board.send("go_down")
        elif text.endswith("release GO."):
            board.send("go_up")
    assert setup.wait(300) == 0, "".join(said) + setup.stderr.read()
    out = "".join(said)
    assert "Saved" in out and "along +x, normal +z" in out, out
    data, _ = wait_status(board.port, lambda s: s["state"] == "HOME" and s["commissioned"])
    assert data["calibration_status"] == "ok"
    time.sleep(2)  # the controller has booted again on the new calibration
    board.send("go")
    moving, seen = wait_status(board.port, lambda s: s["state"] != "HOME")
    assert moving["state"] in ("WARN", "RAMP") and moving["session"] is True, seen
    board.send("stop")
    wait_status(board.port, lambda s: s["state"] == "HOME", timeout_s=60)


def table_note(board) -> dict:
    """The `status` input's note about the table itself: angle, drive, switch."""
    board.send("status")
    note = board.wait_note("status: table ")
    angle = float(note.split()[2])
    drive = int(note.split("drive ")[1].split()[0])
    return {"angle_deg": angle, "drive": drive, "home_closed": "home switch closed" in note,
            "beeper": "beeper on" in note, "note": note}


def test_without_an_imu_at_boot_the_board_sounds_the_alarm_and_returns_blind(boards):
    """Under real MicroPython: the firmware finds no MPU-6050 on the bus,
    reports it, and, as the home switch is open (the board powered on at
    +20 deg), drives blind to it (README: imu_lost), alarm on. The return
    starts at the deploy's reset, so it may be over by the time this runs:
    the proof is a table that started at +20 deg resting on its home switch."""
    board = boards["no_imu"]
    data, _seen = wait_status(board.port, lambda s: s["state"] == "FAULT", timeout_s=30)
    assert data["fault"] == "imu_lost" and data["boot_errors"] == ["imu_not_found"], data
    deadline = time.monotonic() + 150
    notes = []
    while True:
        now = table_note(board)
        notes.append(now)
        assert now["drive"] <= 0, now["note"]  # towards home only
        if now["home_closed"] and now["drive"] == 0 and len(notes) >= 5:
            break
        assert time.monotonic() < deadline, notes[-3:]
        time.sleep(0.5)
    assert now["angle_deg"] < -55, now["note"]
    assert any(n["beeper"] for n in notes), "no alarm"
    data = status(board.port)
    assert data["state"] == "FAULT" and data["fault"] == "imu_lost", data
    print(f"no IMU: from +20 deg to the home switch; last: {now['note']}")
