"""The board commands of `invtable` (host/cli_status.py, cli_users.py, cli_log.py).

Two layers: fast tests against a fake board on a pty (tests/fake_board.py),
then end to end through `invtable sim serve` (the real firmware on the
simulated table behind a real pty)."""

import csv
import datetime
import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from invtable.host import cli_common
from invtable.host.cli import main as CLI
from invtable.host.cli_status import RECORD_COLUMNS

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def board(fake_board):
    return fake_board


@pytest.fixture
def run(board):
    runner = CliRunner()

    def invoke(*args, input=None, env=None, port=board.path):
        args = list(args)
        if port:
            args += ["--port", port]
        return runner.invoke(CLI, args, input=input, env=env, catch_exceptions=False)

    return invoke


# -- fake board ------------------------------------------------------------
def test_status_and_info_are_human_and_json(run):
    result = run("status")
    assert result.exit_code == 0
    assert "HOME" in result.output and "-60.0 deg" in result.output
    data = json.loads(run("status", "--json").output)
    assert data["angle_mdeg"] == -60000
    result = run("info")
    assert "60 deg" in result.output and "8 deg/s" in result.output


def test_user_lifecycle(run, board, monkeypatch):
    monkeypatch.setattr(cli_common, "_stdin_is_tty", lambda: True)  # asked to confirm
    result = run("user", "create", "ana", "--pin", "1234", input="y\n")
    assert result.exit_code == 0, result.output
    assert "consult a doctor" in result.output
    assert "glaucoma" in result.output and "pregnancy" in result.output
    assert "ana" in board.users
    assert "ana" in run("user", "list").output
    assert "1 min" in run("user", "show", "ana").output
    assert run("user", "select", "ana").exit_code == 0
    assert board.active == "ana"
    result = run("user", "delete", "ana", "--pin", "1234", "--yes")
    assert result.exit_code == 0 and "ana" not in board.users


def test_user_create_needs_confirmation(run, board, monkeypatch):
    monkeypatch.setattr(cli_common, "_stdin_is_tty", lambda: True)
    result = run("user", "create", "bob", "--pin", "1234", input="n\n")
    assert result.exit_code == 1
    assert "bob" not in board.users
    assert not [r for r in board.requests if r["cmd"] == "user.create"]


def test_user_create_json_keeps_stdout_clean(run):
    result = run("user", "create", "cy", "--pin", "1234", "--yes", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["name"] == "cy"
    assert "consult a doctor" in result.stderr


def test_units_are_converted(run, board):
    result = run("limits", "set", "guest", "--max-angle", "45", "--max-inverted", "150",
                 "--max-speed", "4.5", "--pin", "1234")
    assert result.exit_code == 0, result.output
    req = board.requests[-1]
    assert req["cmd"] == "limits.set"
    assert (req["max_angle_mdeg"], req["max_inverted_ms"], req["max_speed_mdeg_s"]) == (
        45000, 150000, 4500)
    assert "(was 30 deg)" in result.output
    result = run("program", "set", "guest", "--angle", "25.5", "--hold", "90", "--sets", "1")
    assert result.exit_code == 0, result.output
    req = board.requests[-1]
    assert (req["angle_mdeg"], req["hold_ms"], req["sets"]) == (25500, 90000, 1)
    result = run("progression", "set", "guest", "--angle-step", "2", "--hold-step", "10",
                 "--pin", "1234")
    assert result.exit_code == 0
    assert board.requests[-1]["angle_step_mdeg"] == 2000


def test_out_of_range_shows_the_allowed_range_in_degrees(run):
    result = run("program", "set", "guest", "--angle", "45")
    assert result.exit_code == cli_common.EXIT_REFUSED
    assert "--angle" in result.stderr and "1..30 deg" in result.stderr
    assert "got 45 deg" in result.stderr
    result = run("program", "set", "guest", "--angle", "45", "--json")
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "out_of_range" and error["allowed"] == [1000, 30000]
    assert error["exit_code"] == cli_common.EXIT_REFUSED


def test_check_in_and_daily_limit_are_sent_in_ms_and_shown(run, board):
    result = run("limits", "set", "guest", "--check-in", "30", "--max-daily", "900",
                 "--pin", "1234")
    assert result.exit_code == 0, result.output
    req = board.requests[-1]
    assert req["cmd"] == "limits.set"
    assert (req["check_in_ms"], req["max_daily_inverted_ms"]) == (30000, 900000)
    assert "every 30 s  (was every 60 s)" in result.output
    assert "15 min  (was 10 min)" in result.output
    result = run("limits", "set", "guest", "--check-in", "0", "--pin", "1234")
    assert result.exit_code == 0, result.output
    assert board.requests[-1]["check_in_ms"] == 0
    assert board.users["guest"]["limits"]["check_in_ms"] == 0
    assert "off  (was every 30 s)" in result.output


@pytest.mark.parametrize("option, value", [("--check-in", "5"), ("--check-in", "0.5"),
                                           ("--check-in", "601"), ("--max-daily", "5"),
                                           ("--max-inverted", "9"), ("--max-inverted", "nan"),
                                           ("--max-daily", "inf")])
def test_limits_outside_the_firmware_bounds_are_refused_before_sending(run, board, option, value):
    result = run("limits", "set", "guest", option, value, "--pin", "1234")
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert not [r for r in board.requests if r["cmd"] == "limits.set"]


def test_a_check_in_in_the_gap_names_the_rule(run):
    result = run("limits", "set", "guest", "--check-in", "5", "--pin", "1234")
    assert result.exit_code == 2
    assert "0 (off) or 10..600 s" in result.output


def test_limits_above_the_board_caps_are_refused_by_the_board(run, board):
    result = run("limits", "set", "guest", "--max-daily", "1500", "--pin", "1234")
    assert result.exit_code == cli_common.EXIT_REFUSED
    assert "--max-daily" in result.stderr and "10..1200 s" in result.stderr
    assert "got 1500 s" in result.stderr
    result = run("limits", "set", "guest", "--max-inverted", "3600", "--pin", "1234")
    assert result.exit_code == cli_common.EXIT_REFUSED
    assert "--max-inverted" in result.stderr and "10..600 s" in result.stderr
    assert board.users["guest"]["limits"]["max_inverted_ms"] == 120000
    assert board.fails == 0


def test_status_shows_today_and_the_check_in_prompt(run, board):
    board.users["guest"]["limits"]["max_daily_inverted_ms"] = 1200000
    board.daily_used["guest"] = 750200
    result = run("status")
    assert result.exit_code == 0
    assert "12 min 30 s of 20 min inverted" in result.output
    assert "tap GO now" not in result.output
    board.check_in_waiting = True
    result = run("status")
    assert "tap GO now" in result.output
    data = json.loads(run("status", "--json").stdout)
    assert (data["daily_used_ms"], data["daily_limit_ms"]) == (750200, 1200000)
    assert data["check_in_waiting"] is True


@pytest.mark.parametrize("warning, words", [
    ("go_refused_daily_limit", ["used up", "tomorrow", "clock set", "24 h"]),
    ("go_refused_grip_released", ["hold the grip", "1 s"]),
])
def test_status_explains_the_new_refusals(run, board, warning, words):
    board.warning = warning
    output = " ".join(run("status").output.split())
    for word in words:
        assert word in output


@pytest.mark.parametrize("end, words", [
    ("no_response", ["no GO tap within 10 s", "check-in"]),
    ("grip_released", ["grip was let go", "1 s"]),
])
def test_status_explains_the_new_session_ends(run, board, end, words):
    board.last_end = end
    output = " ".join(run("status").output.split())
    assert end in output
    for word in words:
        assert word in output


def test_user_show_has_check_ins_and_the_daily_limit(run, board):
    board.daily_used["guest"] = 45000
    result = run("user", "show", "guest")
    assert result.exit_code == 0
    assert "every 60 s" in result.output
    assert "max time inverted per day" in result.output
    assert "today: 45 s of 10 min inverted" in result.output
    board.users["guest"]["limits"]["check_in_ms"] = 0
    assert "off" in run("user", "show", "guest").output
    data = json.loads(run("user", "show", "guest", "--json").stdout)
    assert data["daily_used_ms"] == 45000 and data["limits"]["check_in_ms"] == 0


def test_log_shows_the_daily_total_and_the_new_ends(run, board, monkeypatch):
    monkeypatch.setattr(cli_common.out, "width", 160)
    result = run("log")
    assert "that day" not in result.output  # older entries have no daily_ms
    board.log += [
        {"user": "guest", "start_s": 1700100000, "uptime_ms": 1, "max_angle_mdeg": 20000,
         "inverted_ms": 40000, "end": "no_response", "fault": None, "daily_ms": 750400},
        {"user": "guest", "start_s": 1700200000, "uptime_ms": 2, "max_angle_mdeg": 20000,
         "inverted_ms": 1000, "end": "grip_released", "fault": None, "daily_ms": 1000}]
    result = run("log")
    assert result.exit_code == 0
    assert "that day" in result.output and "12 min 30 s" in result.output
    assert "no_response" in result.output and "grip_released" in result.output
    entries = json.loads(run("log", "--json").stdout)["entries"]
    assert [e["daily_ms"] for e in entries[-3:]] == [None, 750400, 1000]


@pytest.fixture(params=[("IST-5:30", 19800, "UTC+05:30"), ("NST+3:30", -12600, "UTC-03:30")])
def local_zone(request):
    """The host's time zone set to a fixed offset (POSIX TZ: the sign is reversed)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = request.param[0]
    time.tzset()
    yield request.param[1:]
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def test_clock_set_sends_the_local_utc_offset(run, board, local_zone):
    offset_s, text = local_zone
    result = run("clock", "set", "2025-03-01T09:30:00+00:00")
    assert result.exit_code == 0, result.output
    assert (board.epoch_s, board.utc_offset_s) == (1740821400, offset_s)
    assert text in result.output
    assert json.loads(run("clock", "set", "--json").stdout)["utc_offset_s"] == offset_s


def test_wrong_pin_shows_attempts_left_then_locked(run):
    result = run("log", "clear", "--yes", "--pin", "9999")
    assert result.exit_code == cli_common.EXIT_PIN
    assert "2 attempts left" in result.stderr
    run("log", "clear", "--yes", "--pin", "9999")
    result = run("log", "clear", "--yes", "--pin", "9999")
    assert "locked for 30 s" in result.stderr
    run("log", "clear", "--yes", "--pin", "9999")
    run("log", "clear", "--yes", "--pin", "9999")
    result = run("log", "clear", "--yes", "--pin", "1234")
    assert result.exit_code == cli_common.EXIT_PIN
    assert "try again in 1 min 30 s" in result.stderr


def test_pin_from_env_prompt_or_usage_error(run, board, monkeypatch):
    result = run("log", "clear", "--yes", env={"INVTABLE_PIN": "1234"})
    assert result.exit_code == 0 and board.log == []
    result = run("log", "clear", "--yes")  # no terminal, no PIN
    assert result.exit_code == 2 and "INVTABLE_PIN" in result.output
    monkeypatch.setattr(cli_common, "_stdin_is_tty", lambda: True)
    result = run("log", "clear", "--yes", input="1234\n")
    assert result.exit_code == 0
    assert "1234" not in result.output  # hidden input
    result = run("log", "clear", "--yes", "--pin", "12ab")
    assert result.exit_code == 2  # checked before it could cost an attempt
    assert board.fails == 0


@pytest.mark.parametrize("pin", ["\u0661\u0662\u0663\u0664", "12\u00b334", "1234567890"])
def test_a_pin_the_board_would_refuse_is_refused_before_sending(run, board, pin):
    """The board's rule (ASCII digits, 4 to 8): CPython's str.isdigit accepts
    Arabic-Indic digits and superscripts, the board does not."""
    result = run("log", "clear", "--yes", "--pin", pin)
    assert result.exit_code == 2 and "digits 0-9" in result.output
    result = run("pin", "change", "--pin", "1234", "--new-pin", pin)
    assert result.exit_code == 2 and "digits 0-9" in result.output
    assert board.fails == 0 and board.pin == "1234"


def test_pin_change(run, board):
    result = run("pin", "change", "--pin", "1234", "--new-pin", "5678")
    assert result.exit_code == 0 and board.pin == "5678"
    result = run("pin", "change", "--pin", "5678", "--new-pin", "0000")
    # The board's rule, checked before sending (the board would refuse it too).
    assert result.exit_code == cli_common.EXIT_USAGE and "factory default" in result.stderr
    assert board.pin == "5678"


def test_busy_names_the_state(run, board):
    board.state = "HOLD"
    result = run("user", "select", "guest")
    assert result.exit_code == cli_common.EXIT_REFUSED
    assert "HOLD" in result.stderr and "stop" in result.stderr
    assert run("stop").exit_code == 0 and board.state == "RETURN"


def test_not_found_and_nothing_to_change(run):
    result = run("user", "show", "nobody")
    assert result.exit_code == cli_common.EXIT_REFUSED and "user list" in result.stderr
    assert run("program", "set", "guest").exit_code == 2


def test_no_board_and_busy_port_exit_3(run, board, tmp_path, monkeypatch):
    result = run("status", port=str(tmp_path / "ttyUSB7"))
    assert result.exit_code == cli_common.EXIT_CONNECTION and "no such port" in result.stderr
    monkeypatch.setattr("serial.tools.list_ports.comports", lambda: [])
    monkeypatch.delenv("INVTABLE_PORT", raising=False)
    result = run("status", "--json", port=None)
    assert result.exit_code == cli_common.EXIT_CONNECTION
    assert json.loads(result.stdout)["error"]["code"] == "no_board"
    from invtable.host.client import Client

    with Client(board.path):
        result = run("status")
    assert result.exit_code == cli_common.EXIT_CONNECTION and "busy" in result.stderr
    board.silent = True
    result = run("status", "--timeout", "0.3")
    assert result.exit_code == cli_common.EXIT_CONNECTION and "no reply" in result.stderr


def test_log_pages_through_the_board(run, board):
    result = run("log")
    assert result.exit_code == 0 and "12 sessions" in result.output
    data = json.loads(run("log", "--json").output)
    assert len(data["entries"]) == 12
    starts = [r["start"] for r in board.requests if r["cmd"] == "log.read"]
    assert starts[-2:] == [0, 10]


def test_clock_set_defaults_to_now_or_parses(run, board):
    before = int(time.time())
    assert run("clock", "set").exit_code == 0
    assert before <= board.epoch_s <= int(time.time()) + 1
    assert run("clock", "set", "2025-03-01T09:30:00+00:00").exit_code == 0
    assert board.epoch_s == 1740821400
    assert run("clock", "set", "yesterday").exit_code == 2


def test_telemetry_and_monitor_record(run, board, tmp_path):
    assert run("telemetry", "0").exit_code == 0
    record = tmp_path / "rec.csv"
    result = run("monitor", "--duration", "0.8", "--rate", "10", "--record", str(record))
    assert result.exit_code == 0, result.output
    assert "angle" in result.output and "-60.0 deg" in result.output
    rows = list(csv.DictReader(record.open()))
    assert len(rows) >= 3 and rows[0]["angle_deg"] == "-60.0"
    assert board.rate_hz == 0  # turned off again
    result = run("monitor", "--once")
    assert result.exit_code == 0 and "HOME" in result.output
    lines = run("monitor", "--duration", "0.5", "--json").output.splitlines()
    assert json.loads(lines[0])["event"] == "telemetry"


def test_plot_progress_and_trace(run, board, tmp_path):
    png = tmp_path / "progress.png"
    result = run("plot", "--out", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trace = tmp_path / "rec.csv"
    with trace.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RECORD_COLUMNS)
        for i in range(20):
            writer.writerow([i * 0.2, i * 200, "RAMP", -60 + i, 0, 0, "", 0, ""])
    result = run("plot", "--trace", str(trace), "--json", port=None)
    assert result.exit_code == 0
    assert json.loads(result.output)["png"] == str(tmp_path / "rec.png")
    assert (tmp_path / "rec.png").exists()
    board.log = []
    assert run("plot", "--out", str(png)).exit_code == 1


def test_plot_reads_a_sim_run_trace(tmp_path):
    from invtable.host.cli import main

    trace = tmp_path / "sim.csv"
    result = CliRunner().invoke(main, ["sim", "run", "--hold", "10", "--json",
                                       "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(CLI, ["plot", "--trace", str(trace), "--out",
                                      str(tmp_path / "sim.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sim.png").stat().st_size > 1000


# -- end to end through `invtable sim serve` ---------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory, sim_serve):
    server = sim_serve(tmp_path_factory.mktemp("flash"), speed=20)
    yield server
    server.close()


@pytest.fixture
def real(sim):
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(CLI, [*args, "--port", sim.path], input=input,
                             catch_exceptions=False)

    # Wait for the firmware to boot and reach HOME.
    deadline = time.monotonic() + 15
    while True:
        result = invoke("status", "--json")
        if result.exit_code == 0 and json.loads(result.stdout)["state"] == "HOME":
            break
        assert time.monotonic() < deadline, result.output
        time.sleep(0.2)
    return invoke


def test_e2e_every_command(real, tmp_path):
    info = json.loads(real("info", "--json").stdout)
    assert info["protocol"] == 1
    assert real("info").exit_code == 0
    assert real("status").exit_code == 0
    assert real("clock", "set").exit_code == 0
    result = real("user", "create", "ana", "--pin", "0000", "--yes")
    assert result.exit_code == 0, result.output
    assert "consult a doctor" in result.output
    assert "ana" in real("user", "list").output
    result = real("limits", "set", "ana", "--max-angle", "40", "--max-inverted", "150",
                  "--pin", "0000")
    assert result.exit_code == 0, result.output
    assert "40 deg" in result.output
    result = real("program", "set", "ana", "--angle", "35", "--hold", "60")
    assert result.exit_code == 0, result.output
    result = real("progression", "set", "ana", "--angle-step", "2", "--pin", "0000")
    assert result.exit_code == 0, result.output
    shown = json.loads(real("user", "show", "ana", "--json").stdout)
    assert shown["limits"]["max_angle_mdeg"] == 40000
    assert shown["program"]["angle_mdeg"] == 35000
    assert shown["progression"]["angle_step_mdeg"] == 2000
    assert real("user", "select", "ana").exit_code == 0
    assert json.loads(real("status", "--json").stdout)["user"] == "ana"
    assert real("telemetry", "2").exit_code == 0
    assert real("telemetry", "0").exit_code == 0
    assert real("monitor", "--once").exit_code == 0
    assert real("log").exit_code == 0
    assert real("stop").exit_code == 0  # always accepted, even at home
    result = real("user", "create", "tmp", "--pin", "0000", "--yes")
    assert result.exit_code == 0
    assert real("user", "delete", "tmp", "--pin", "0000", "--yes").exit_code == 0
    assert real("user", "select", "guest").exit_code == 0


def test_e2e_wrong_pin_and_out_of_range(real):
    result = real("limits", "set", "guest", "--max-angle", "40", "--pin", "1111")
    assert result.exit_code == cli_common.EXIT_PIN
    assert "attempts left" in result.stderr
    # A right PIN resets the count (so the next tests are not locked out).
    result = real("limits", "set", "guest", "--max-angle", "30", "--pin", "0000")
    assert result.exit_code == 0, result.output
    result = real("program", "set", "guest", "--angle", "45")
    assert result.exit_code == cli_common.EXIT_REFUSED
    assert "--angle" in result.stderr and "1..30 deg" in result.stderr
    result = real("limits", "set", "guest", "--max-speed", "12", "--pin", "0000")
    assert result.exit_code == cli_common.EXIT_REFUSED
    assert "--max-speed" in result.stderr and "deg/s" in result.stderr


def test_e2e_board_caps_and_check_ins(real):
    """The board's caps are not known to the CLI: the board refuses, naming them."""
    result = real("limits", "set", "guest", "--max-inverted", "3600", "--pin", "0000")
    assert result.exit_code == cli_common.EXIT_REFUSED, result.output
    assert "--max-inverted" in result.stderr and "10..600 s" in result.stderr
    result = real("limits", "set", "guest", "--max-daily", "1300", "--pin", "0000")
    assert result.exit_code == cli_common.EXIT_REFUSED, result.output
    assert "--max-daily" in result.stderr and "10..1200 s" in result.stderr
    result = real("limits", "set", "guest", "--check-in", "5", "--pin", "0000")
    assert result.exit_code in (2, cli_common.EXIT_REFUSED), result.output
    assert "0 (off) or 10..600" in result.output
    before = json.loads(real("user", "show", "guest", "--json").stdout)["limits"]
    result = real("limits", "set", "guest", "--check-in", "30", "--max-daily", "900",
                  "--pin", "0000")
    assert result.exit_code == 0, result.output
    shown = json.loads(real("user", "show", "guest", "--json").stdout)
    assert shown["limits"]["check_in_ms"] == 30000
    assert shown["limits"]["max_daily_inverted_ms"] == shown["daily_limit_ms"] == 900000
    output = real("user", "show", "guest").output
    assert "every 30 s" in output and "of 15 min inverted" in output
    assert "of 15 min inverted" in real("status").output  # guest is the active user
    offset = datetime.datetime.now().astimezone().utcoffset().total_seconds()
    assert json.loads(real("clock", "set", "--json").stdout)["utc_offset_s"] == offset
    result = real("limits", "set", "guest", "--check-in", str(before["check_in_ms"] / 1000),
                  "--max-daily", str(before["max_daily_inverted_ms"] / 1000), "--pin", "0000")
    assert result.exit_code == 0, result.output


def test_e2e_session_go_then_stop_seen_in_telemetry(real, sim, tmp_path):
    record = tmp_path / "session.csv"
    sim.press("go")
    result = real("monitor", "--duration", "1.5", "--rate", "10", "--record", str(record))
    assert result.exit_code == 0, result.output
    states = {row["state"] for row in csv.DictReader(record.open())}
    assert states & {"WARN", "RAMP", "HOLD"}, states
    busy = real("user", "select", "guest")
    assert busy.exit_code == cli_common.EXIT_REFUSED and "busy" in busy.stderr
    stopped = real("stop", "--json")
    assert stopped.exit_code == 0
    # The ramped return, seen by the monitor, ends at home with a "stopped" entry.
    lines = real("monitor", "--duration", "4", "--rate", "5", "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    kinds = {e["event"] for e in events}
    assert "telemetry" in kinds
    ends = [e for e in events if e["event"] == "session_end"]
    deadline = time.monotonic() + 20
    while not ends and time.monotonic() < deadline:
        lines = real("monitor", "--duration", "2", "--json").stdout.splitlines()
        ends = [e for e in map(json.loads, lines) if e["event"] == "session_end"]
    assert ends and ends[0]["end"] == "stopped", events[-5:]
    log = json.loads(real("log", "--json").stdout)
    assert log["entries"][-1]["end"] == "stopped"
    # The day's total includes this session.
    assert log["entries"][-1]["daily_ms"] >= log["entries"][-1]["inverted_ms"]
    png = tmp_path / "trace.png"
    assert real("plot", "--trace", str(record), "--out", str(png)).exit_code == 0
    assert real("plot", "--out", str(tmp_path / "progress.png")).exit_code == 0


def test_e2e_real_process_exit_codes(sim):
    """The installed `invtable` command in a subprocess."""
    exe = os.path.join(os.path.dirname(sys.executable), "invtable")
    command = [exe] if os.path.exists(exe) else [sys.executable, "-m", "invtable.host.cli"]
    done = subprocess.run([*command, "status", "--json", "--port", sim.path],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"]
    done = subprocess.run([*command, "status", "--port", sim.path + "-missing"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == cli_common.EXIT_CONNECTION and "Error:" in done.stderr
    done = subprocess.run([*command, "user", "delete", "guest", "--yes", "--pin", "4444",
                           "--port", sim.path], capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == cli_common.EXIT_PIN and "attempts left" in done.stderr
    done = subprocess.run([*command, "status", "--bogus"], capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 2
