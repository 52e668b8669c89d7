"""`invtable sim serve`: the firmware behind a real pseudo-terminal, end to end."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

serial = pytest.importorskip("serial")

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pty (POSIX)")

ADMIN_PIN = "4821"


def _serve_command():
    """`invtable sim serve` once registered; the module itself until then."""
    from invtable.host.cli import sim

    exe = shutil.which("invtable", path=os.path.dirname(sys.executable))
    if "serve" in sim.commands and exe:
        return [exe, "sim", "serve"]
    return [sys.executable, "-m", "invtable.host.cli_serve"]


class Served:
    def __init__(self, state_dir, speed=10):
        cmd = _serve_command() + ["--state-dir", str(state_dir), "--speed", str(speed)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.path = self.proc.stdout.readline().strip()
        assert self.path.startswith("/dev/"), (self.path, self.proc.stderr.read())
        self.notes = []
        # Keep draining stdout: a full pipe would stall the simulation.
        threading.Thread(target=self._drain, daemon=True).start()
        self.port = serial.Serial(self.path, 115200, timeout=0.2)
        self.events = []
        self._cursor = 0  # events before it were looked at by wait_event
        self._partial = b""
        self._next_id = 1

    def _drain(self):
        for line in self.proc.stdout:
            self.notes.append(line.rstrip("\n"))

    def input(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _lines(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._partial += self.port.readline()  # may time out mid-line
            if self._partial.endswith(b"\n"):
                line, self._partial = self._partial, b""
                yield json.loads(line)

    def request(self, cmd, timeout_s=10, **args):
        req_id = self._next_id
        self._next_id += 1
        self.port.write((json.dumps(dict(args, id=req_id, cmd=cmd)) + "\n").encode())
        for msg in self._lines(timeout_s):
            if "event" in msg:
                self.events.append(msg)
            elif msg.get("id") == req_id:
                return msg
        raise AssertionError(f"no reply to {cmd}")

    def ok(self, cmd, **args):
        reply = self.request(cmd, **args)
        assert reply["ok"], reply
        return reply["data"]

    def skip_events(self):
        """wait_event looks only at events from now on."""
        self._cursor = len(self.events)

    def wait_event(self, pred, timeout_s=30):
        """The next event (after the last one matched) for which pred holds,
        including those read while waiting for replies."""
        while self._cursor < len(self.events):
            msg = self.events[self._cursor]
            self._cursor += 1
            if pred(msg):
                return msg
        for msg in self._lines(timeout_s):
            if "event" in msg:
                self.events.append(msg)
                self._cursor = len(self.events)
                if pred(msg):
                    return msg
        raise AssertionError(f"event not seen; last: {self.events[-5:]!r}")

    def close(self):
        self.port.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return rc


@pytest.fixture
def served(tmp_path):
    boards = []

    def start(**kw):
        board = Served(tmp_path / "flash", **kw)
        boards.append(board)
        return board

    yield start
    for board in boards:
        if board.proc.poll() is None:
            board.close()


def _at_home(board, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if board.ok("status")["state"] == "HOME":
            return
        time.sleep(0.05)
    raise AssertionError("not at HOME")


def test_info_status_go_stop_and_clean_shutdown(served):
    board = served()
    info = board.ok("info")
    assert info["protocol"] == 1 and info["board"] == "esp32_devkitc"
    _at_home(board)
    status = board.ok("status")
    assert status["state"] == "HOME" and status["pin_is_default"] is True
    assert status["settings_status"] == "defaults_missing"

    assert board.ok("telemetry", rate_hz=10) == {"rate_hz": 10}
    board.input("go")
    board.wait_event(
        lambda e: e["event"] == "telemetry" and e["state"] == "RAMP" and e["angle_mdeg"] > -50000
    )  # clear of the home switch
    assert board.ok("stop")["state"] in ("RAMP", "HOLD")
    board.wait_event(lambda e: e["event"] == "telemetry" and e["state"] == "RETURN")
    end = board.wait_event(lambda e: e["event"] == "session_end", timeout_s=60)
    assert end["end"] == "stopped"
    assert board.ok("status")["state"] == "HOME"
    board.ok("telemetry", rate_hz=0)
    assert board.close() == 0
    assert any("RAMP -> RETURN" in note for note in board.notes)


def test_state_dir_keeps_users_across_restarts(served, tmp_path):
    board = served()
    _at_home(board)
    board.ok("pin.change", pin="0000", new_pin=ADMIN_PIN)
    created = board.ok("user.create", name="ana", pin=ADMIN_PIN)
    assert created["name"] == "ana"
    board.ok("user.select", name="ana")
    assert board.close() == 0
    assert (tmp_path / "flash" / "settings.json").exists()

    board = served()
    _at_home(board)
    assert board.ok("status")["settings_status"] == "ok"
    users = board.ok("user.list")["users"]
    assert {"name": "ana", "active": True} in users
    assert board.ok("status")["pin_is_default"] is False
    assert board.request("user.delete", name="ana", pin="0000")["error"]["code"] == "bad_pin"
    assert board.close() == 0


def test_power_loss_input_reboots_with_flash_kept(served):
    board = served(speed=20)
    _at_home(board)
    board.ok("pin.change", pin="0000", new_pin=ADMIN_PIN)
    board.skip_events()  # the first boot event is not the one to wait for
    board.input("power_loss")
    boot = board.wait_event(lambda e: e["event"] == "boot")
    assert boot["interrupted"] is False
    _at_home(board)
    assert board.ok("status")["pin_is_default"] is False
    board.input("quit")
    assert board.proc.wait(10) == 0


def test_dirflash_honours_the_fs_contract(tmp_path):
    from invtable.firmware import storage
    from invtable.hal_sim.dirflash import DirFlash

    fs = DirFlash(tmp_path / "flash")
    assert fs.read_bytes("settings.json") is None
    fs.write_bytes("a.new", b"one")
    fs.rename("a.new", "a")
    fs.write_bytes("a.new", b"two")
    fs.rename("a.new", "a")  # replaces atomically
    assert fs.read_bytes("a") == b"two" and fs.names() == ["a"]
    fs.remove("a")
    fs.remove("a")  # no error when missing
    assert fs.read_bytes("a") is None
    with pytest.raises(OSError):
        fs.rename("missing", "b")
    with pytest.raises(OSError):
        fs.write_bytes("../escape", b"x")
    storage.save(fs, "s.json", {"k": 1})
    assert storage.load(DirFlash(tmp_path / "flash"), "s.json") == ({"k": 1}, storage.OK)


# ---------------------------------------------------- through the real device
def _settings_snapshot(board):
    users = board.ok("user.list")["users"]
    return users, [board.ok("user.get", name=u["name"]) for u in users]


def test_fuzz_through_the_device_never_crashes_or_changes_settings(served):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    board = served(speed=20)
    _at_home(board)
    long_pin = "73519864"  # 8 digits: beyond what the fuzzer will guess
    board.ok("pin.change", pin="0000", new_pin=long_pin)
    before = _settings_snapshot(board)
    # Real command names that need the PIN or change nothing, so a random
    # request that happens to be well formed still cannot change settings.
    commands = st.sampled_from(["info", "status", "user.list", "user.get", "user.create",
                                "user.delete", "limits.set", "progression.set", "pin.change",
                                "log.read", "log.clear", "bogus"])
    values = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                       st.text(max_size=20), st.lists(st.integers(), max_size=3))
    requests = st.fixed_dictionaries(
        {"cmd": commands},
        optional={"id": values, "name": st.sampled_from(["guest", "x", ""]) | st.text(),
                  "pin": st.text(alphabet="0123456789", max_size=6),
                  "max_angle_mdeg": values, "angle_mdeg": values, "junk": values},
    ).map(lambda d: json.dumps(d).encode())
    payloads = st.one_of(st.binary(max_size=700), requests)

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(payload=payloads)
    def send(payload):
        board.port.write(payload + b"\n")
        list(board._lines(0.05))  # let it answer; whatever it says is fine

    send()
    board.port.reset_input_buffer()
    # Still alive, still answering, nothing changed, not moved, not locked out.
    status = board.ok("status")
    assert status["state"] == "HOME" and status["fault"] is None
    assert _settings_snapshot(board) == before
    board.ok("user.create", name="after", pin=long_pin)  # the PIN still works
    assert board.proc.poll() is None


def test_pin_lockout_survives_a_restart_of_the_board(served):
    board = served(speed=20)
    _at_home(board)
    board.ok("pin.change", pin="0000", new_pin=ADMIN_PIN)
    codes = [board.request("log.clear", pin="1111")["error"]["code"] for _ in range(3)]
    assert codes[:2] == ["bad_pin", "bad_pin"] and codes[2] in ("bad_pin", "locked")
    error = board.request("log.clear", pin=ADMIN_PIN)["error"]
    assert error["code"] == "locked" and error["retry_after_ms"] > 0
    assert board.close() == 0

    board = served(speed=20)  # same state directory: a power cycle
    _at_home(board)
    error = board.request("log.clear", pin=ADMIN_PIN)["error"]
    assert error["code"] == "locked", "a reboot must not lift the lockout"
    assert error["retry_after_ms"] > 0


def test_torn_settings_write_keeps_the_old_settings_and_is_reported(served):
    board = served(speed=20)
    _at_home(board)
    board.ok("pin.change", pin="0000", new_pin=ADMIN_PIN)
    board.ok("user.create", name="ana", pin=ADMIN_PIN)
    before = _settings_snapshot(board)
    board.skip_events()
    board.input("torn_write")
    time.sleep(0.2)  # let the server take the input before the request
    board.port.write(b'{"id": 99, "cmd": "program.set", "name": "ana", "angle_mdeg": 25000}\n')
    boot = board.wait_event(lambda e: e["event"] == "boot")  # the cut rebooted it
    assert boot["interrupted_writes"] == ["settings.json"]
    assert boot["settings_status"] == "ok"
    _at_home(board)
    assert _settings_snapshot(board) == before  # old settings, nothing half-written
    assert board.ok("status")["interrupted_writes"] == ["settings.json"]
    board.ok("program.set", name="ana", angle_mdeg=25000)  # and it works again


def test_a_rider_who_faints_on_sim_serve_is_brought_home_and_the_day_is_counted(served):
    """`faint` on stdin: the simulated rider stops answering the check-in chirp
    (on for the default user, every 60 s); the firmware returns the table and
    logs no_response; status and user.get show today's inverted time."""
    board = served(speed=50)
    _at_home(board)
    board.input("go")
    board.wait_event(lambda e: e["event"] == "state" and e.get("state") == "RAMP", timeout_s=10)
    board.input("faint")
    end = board.wait_event(lambda e: e["event"] == "session_end", timeout_s=30)
    assert end["end"] == "no_response", end
    _at_home(board)
    status = board.ok("status")
    assert status["last_end"] == "no_response"
    assert 0 < status["daily_used_ms"] <= status["daily_limit_ms"] == 600000
    assert board.ok("user.get", name="guest")["daily_used_ms"] == status["daily_used_ms"]


def test_the_status_input_prints_one_line_for_people(served):
    board = served(speed=10)
    _at_home(board)
    board.input("status")
    deadline = time.monotonic() + 10
    while not any("] status: " in n for n in board.notes):
        assert time.monotonic() < deadline, board.notes
        time.sleep(0.05)
    note = next(n for n in board.notes if "] status: " in n).split("] ", 1)[1]
    assert note.startswith("status: HOME at -") and "user guest" in note, note
    assert "{" not in note and "today 0 of 600 s inverted" in note, note
