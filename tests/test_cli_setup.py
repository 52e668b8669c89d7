"""`invtable setup` (host/cli_setup.py) end to end.

`invtable sim serve --world` runs the real firmware on a simulated table that
differs from its board file, behind a real pseudo-terminal, and starts NOT
commissioned. `invtable setup` runs as a second process on that pty, and the
test plays the builder from setup's own output only: it taps GO when told to
press it, holds GO when told to hold it and releases it when a motion step
says it is done. So the text is proven to tell a builder what to do.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from sigint import restore_sigint

from invtable.host import cli_common
from invtable.host import client as client_mod

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pty (POSIX)"),
    pytest.mark.timeout(120),
]

SPEED = 20  # simulated seconds per real second: commissioning takes about 80
# The table that is really there: a slower actuator, the home switch
# elsewhere, the IMU turned round and tilted on the bed. Empty (no rider), as
# setup asks.
WORLD = {
    "actuator_speed_deg_s": 7,
    "home_angle_deg": -55,
    "rider_kg": 0,
    "imu": {"along": "-x", "normal": "+z", "offset_deg": 3},
}
# Differs from the board file but keeps its IMU mounting (see the xfail below).
SLOW_WORLD = {"actuator_speed_deg_s": 7, "home_angle_deg": -57, "rider_kg": 0}
_EXE = shutil.which("invtable", path=os.path.dirname(sys.executable))
INVTABLE = [_EXE] if _EXE else [sys.executable, "-m", "invtable.host.cli"]


@pytest.fixture
def table(sim_serve, tmp_path):
    """start(world, flash=None) -> `sim serve --world` (a SimServe: path, press,
    notes); ``flash``: the state directory of an earlier start (a new one by default)."""
    started = []

    def start(world=WORLD, flash=None):
        path = tmp_path / f"world{len(started)}.json"
        path.write_text(json.dumps(world))
        flash = flash or tmp_path / f"flash{len(started)}"
        server = sim_serve(flash, SPEED, "--world", str(path))
        server.flash = flash
        started.append(server)
        _wait_booted(server.path)
        return server

    yield start
    for server in started:
        server.close()


def invtable(*args, timeout=30):
    return subprocess.run([*INVTABLE, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def board_status(port):
    done = invtable("status", "--json", "--port", port)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait_booted(port, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while True:
        done = invtable("status", "--json", "--port", port)
        if done.returncode == 0 and json.loads(done.stdout)["state"] != "BOOT":
            return
        assert time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(0.2)


def wait_status(port, predicate, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while True:
        status = board_status(port)
        if predicate(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def wait_note(server, text, after, timeout_s=10):
    """sim serve acknowledged an input: a note with ``text`` after note ``after``."""
    deadline = time.monotonic() + timeout_s
    while not any(text in note for note in server.notes[after:]):
        assert time.monotonic() < deadline, server.notes[-10:]
        time.sleep(0.01)


class Setup:
    """`invtable setup --port PTY ...` in a subprocess (``stdin``: its stdin)."""

    def __init__(self, port, *args, stdin=subprocess.DEVNULL):
        self.proc = subprocess.Popen(
            [*INVTABLE, "setup", "--port", port, *args], stdin=stdin,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            preexec_fn=restore_sigint)
        # With --json the text for people goes to stderr.
        self.text = self.proc.stderr if "--json" in args else self.proc.stdout
        self.read = []  # the text's lines read so far

    def play_builder(self, server, stop_at=None):
        """Do on the table what the text says, line by line, until it ends or
        (done what it says) a line with ``stop_at``."""
        for line in self.text:
            self.read.append(line)
            text = line.strip()
            if text.startswith("Press and release GO"):
                server.press("go")
            elif text.startswith("Hold GO"):
                # Each motion step wants GO pressed anew: a release it sees first.
                mark = len(server.notes)
                server.press("go_up")
                wait_note(server, "input: go_up", mark)
                time.sleep(0.1)
                server.press("go_down")
            elif text.endswith("release GO."):
                server.press("go_up")
            if stop_at is not None and stop_at in line:
                return line
        return None

    def finish(self, timeout_s=60):
        """(exit code, all stdout, all stderr). Read through the same text
        streams (communicate() would skip what they buffered already); the
        process writes far less than a pipe holds."""
        self.proc.wait(timeout_s)
        out = {"stdout": self.proc.stdout.read(), "stderr": self.proc.stderr.read()}
        name = "stderr" if self.text is self.proc.stderr else "stdout"
        out[name] = "".join(self.read) + out[name]
        return self.proc.returncode, out["stdout"], out["stderr"]


def jog(server, simulated_s):
    """Wait until sim serve holds GO (acknowledged), then ``simulated_s`` more."""
    wait_note(server, "input: go_down", 0)
    time.sleep(simulated_s / SPEED)


def _deg_s(label, text):
    match = re.search(re.escape(label) + r"\D*?(-?\d+(?:\.\d+)?) deg/s", text)
    assert match, text
    return float(match.group(1))


def test_setup_measures_the_table_and_then_go_starts_a_session(table):
    server = table()
    setup = Setup(server.path, "--pin", "0000", "--home-angle", "-55")
    setup.play_builder(server)
    code, output, stderr = setup.finish()
    assert code == 0, output + stderr
    assert "EMPTY" in output and "at home" in output
    for number, name in enumerate(("wiring check", "GO button", "IMU axes", "level reference",
                                   "travel head-down", "travel back home"), start=1):
        assert f"Step {number}/6: {name}" in output
    assert "level reference given: inclinometer reading at home -55 deg" in output
    # What was measured agrees with the world, in people's units.
    assert "along -x, normal +z" in output
    assert _deg_s("speed head-down (full drive)", output) == pytest.approx(7, rel=0.05)
    assert _deg_s("speed towards home (full drive)", output) == pytest.approx(7, rel=0.05)
    assert re.search(r"lag\W+\d+ ms", output)
    assert re.search(r"accelerometer bias\W+x -?\d+, y -?\d+, z -?\d+ mg", output)
    assert "Saved" in output
    assert "Traceback" not in stderr

    info = invtable("info", "--port", server.path)
    assert info.returncode == 0, info.stderr
    assert re.search(r"commissioned\W+yes \(ok\)", info.stdout), info.stdout
    assert "along -x, normal +z" in info.stdout
    calib = json.loads(invtable("info", "--json", "--port", server.path).stdout)["calibration"]
    assert (calib["imu_along"], calib["imu_normal"]) == ("-x", "+z")

    # Commissioned: GO now starts a session.
    status = wait_status(server.path, lambda s: s["state"] == "HOME")
    assert status["commissioned"] is True and status["calibration_status"] == "ok"
    server.press("go")
    status = wait_status(server.path, lambda s: s["state"] != "HOME")
    assert status["state"] in ("WARN", "RAMP"), status
    assert status["session"] is True
    server.press("stop")
    wait_status(server.path, lambda s: s["state"] == "HOME", timeout_s=30)
    server.close()

    # The IMU's bracket knocked 5 degrees: the angle at home no longer matches.
    knocked = dict(WORLD, imu=dict(WORLD["imu"], offset_deg=8))
    server = table(knocked, flash=server.flash)
    server.press("go")
    status = wait_status(server.path, lambda s: s["warning"] is not None)
    assert status["warning"] == "go_refused_calibration_changed", status
    assert status["state"] == "HOME"
    shown = invtable("status", "--port", server.path).stdout
    assert "the angle at home no longer matches commissioning: run `invtable setup` again" in shown


@pytest.mark.parametrize("world", [
    SLOW_WORLD,
    WORLD,
], ids=["imu-as-board-file", "imu-mounted-otherwise"])
def test_an_uncommissioned_table_refuses_go_and_says_to_run_setup(table, world):
    server = table(world)
    status = board_status(server.path)
    assert status["commissioned"] is False and status["calibration_status"] == "missing"
    assert status["state"] == "HOME", status
    server.press("go")
    status = wait_status(server.path, lambda s: s["warning"] is not None)
    assert status["warning"] == "go_refused_not_commissioned"
    time.sleep(0.5)
    assert board_status(server.path)["state"] == "HOME"
    shown = invtable("status", "--port", server.path).stdout
    assert "not commissioned: run `invtable setup`" in shown
    info = invtable("info", "--port", server.path).stdout
    assert re.search(r"commissioned\W+no \(missing\)", info), info
    assert "`invtable setup`" in info


def test_a_wrong_pin_is_refused_with_its_exit_code(table):
    server = table()
    setup = Setup(server.path, "--pin", "1111", "--home-angle", "-55")
    code, output, stderr = setup.finish()
    assert code == cli_common.EXIT_PIN, output + stderr
    assert "wrong PIN" in stderr and "Traceback" not in stderr
    assert board_status(server.path)["state"] != "SETUP"


def test_stop_during_a_jog_ends_setup_with_the_firmwares_message(table):
    server = table()  # uncommissioned with its IMU mounted otherwise: it ends in FAULT
    setup = Setup(server.path, "--pin", "0000", "--home-angle", "-55")
    setup.play_builder(server, stop_at="Hold GO")
    jog(server, 2)  # of about 8 s
    server.press("stop")
    # Away from home it asks to bring the table back with GO: the builder does.
    setup.play_builder(server)
    code, output, stderr = setup.finish()
    server.press("go_up")
    assert code == cli_common.EXIT_REFUSED, output + stderr
    assert "STOP pressed" in stderr and "the drive is off" in stderr
    assert "IMU axes" in stderr  # the step it failed in
    assert "Traceback" not in stderr
    assert "Saved" not in output
    assert "back home (setup stopped)" in output  # it was jogged home
    status = board_status(server.path)
    assert status["commissioned"] is False and status["fault"] is None


def test_ctrl_c_during_a_jog_cancels_setup_with_the_drive_off(table):
    server = table(SLOW_WORLD)
    setup = Setup(server.path, "--pin", "0000", "--home-angle", "-57")
    setup.play_builder(server, stop_at="Hold GO")
    jog(server, 2)  # of about 8 s
    setup.proc.send_signal(signal.SIGINT)
    code, output, stderr = setup.finish()
    assert code == 130, output + stderr
    assert "setup cancelled: the drive is off" in stderr
    assert "Traceback" not in stderr
    with client_mod.Client(server.path) as board:
        status = board.request("setup.status")
        assert status["active"] is False and status["driving"] is False
        assert status["error"]["code"] == "cancelled"
        # Left away from home, the empty table stays there with the drive off
        # (it never moves by itself); setup says so.
        assert "stays there, drive off" in stderr
        status = board.request("status")
        assert status["state"] == "FAULT" and status["fault"] == "setup_left_away"
    time.sleep(0.5)  # 10 simulated seconds with GO still held: it stays put
    assert abs(board_status(server.path)["angle_mdeg"] - status["angle_mdeg"]) < 500
    server.press("go_up")


def test_the_level_step_asks_in_a_terminal_until_the_answer_is_taken(table):
    server = table(SLOW_WORLD)
    master, slave = os.openpty()
    try:
        setup = Setup(server.path, "--pin", "0000", stdin=slave)
        os.close(slave)
        slave = None
        assert "Step 4/6: level reference" in setup.play_builder(server, stop_at="Step 4/6")
        # Not a number, then an angle the firmware refuses, then the reading.
        os.write(master, b"level\n-5\n-57\n")
        setup.play_builder(server)
        code, output, stderr = setup.finish()
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    assert code == 0, output + stderr
    assert "inclinometer" in output and "type h" in output
    assert "type the inclinometer's angle in degrees" in output
    assert "the angle at home must be -89..-10 degrees" in output
    assert "level reference given: inclinometer reading at home -57 deg" in output
    assert _deg_s("speed head-down (full drive)", output) == pytest.approx(7, rel=0.05)
    assert "Saved" in output


def test_level_here_is_taken_after_the_bed_was_jogged_and_rested(table):
    server = table(SLOW_WORLD)
    setup = Setup(server.path, "--pin", "0000", "--level-here", "--json")
    setup.play_builder(server, stop_at="Step 4/6")
    mark = len(server.notes)
    setup.play_builder(server, stop_at="Hold GO until a spirit level")
    wait_note(server, "input: go_down", mark)
    time.sleep(10 / SPEED)  # a 10 s jog towards level
    server.press("go_up")
    assert "level here" in setup.play_builder(server, stop_at="level reference given")
    setup.proc.send_signal(signal.SIGINT)
    code, stdout, stderr = setup.finish()
    assert code == 130, stdout + stderr
    error = json.loads(stdout)["error"]  # --json: stdout has only the JSON
    assert error["code"] == "interrupted" and error["exit_code"] == 130
    assert "setup cancelled: the drive is off" in stderr
