"""`invtable sim run`: the scenario runner's command-line contract."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from invtable.host.cli import main

REQUIRED_COLUMNS = ("t_ms", "angle_true_deg", "angle_est_deg", "target_deg", "state", "drive")


def run(*args):
    return CliRunner().invoke(main, ["sim", "run", *args])


def test_demo_shows_a_session_from_go_to_home():
    result = run()
    assert result.exit_code == 0, result.output
    out = result.output
    for state in ("HOME", "WARN", "RAMP", "HOLD", "RETURN", "PAUSE", "REST"):
        assert state in out
    assert "event: go" in out
    assert "completed" in out and "final state" in out


def test_json_summary_and_trace(tmp_path):
    trace = tmp_path / "t.csv"
    result = run("--angle", "45", "--hold", "20", "--sets", "1", "--speed", "5",
                 "--event", "30:stop", "--trace", str(trace), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["final_state"] == "HOME"
    assert summary["session_ends"] == ["stopped"]
    assert summary["faults_seen"] == []
    assert summary["max_angle_deg"] <= 45 + 1
    assert summary["inverted_s"] > 0
    with open(trace, newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(REQUIRED_COLUMNS) <= set(rows[0])
    times = [int(r["t_ms"]) for r in rows]
    assert all(b - a == 20 for a, b in zip(times, times[1:], strict=False))  # one row a tick
    assert rows[-1]["state"] == "HOME"
    assert any(r["event"] == "stop" for r in rows)


def test_a_fault_shows_in_the_summary_and_the_trace(tmp_path):
    trace = tmp_path / "t.csv"
    result = run("--event", "20:imu_disconnect", "--trace", str(trace), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["faults_seen"] == ["imu_lost"]
    assert summary["final_state"] == "FAULT" and summary["drive_off"]
    with open(trace, newline="") as f:
        rows = list(csv.DictReader(f))
    latched = [r for r in rows if r["fault"]]
    assert latched and all(r["state"] == "FAULT" for r in latched)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--angle", "95"], "--angle"),
        (["--speed", "12"], "--speed"),
        (["--sets", "0"], "--sets"),
        (["--angle", "40", "--max-angle", "30"], "above the user's --max-angle"),
        (["--event", "5:bogus"], "unknown action 'bogus'"),
        (["--event", "soon:stop"], "not a number of seconds"),
        (["--event", "stop"], "T:ACTION"),
        (["--board", "nope"], "known boards: esp32_devkitc"),
        (["--hold", "-1"], "--hold"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_the_installed_console_script_runs():
    exe = shutil.which("invtable", path=os.path.dirname(sys.executable))
    assert exe, "the invtable console script is not installed next to this Python"
    proc = subprocess.run([exe, "sim", "run", "--hold", "5", "--sets", "1", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["session_ends"] == ["completed"]


# ---------------------------------------------------------- commissioning
SESSION = ("--angle", "60", "--hold", "60", "--sets", "1", "--max-inverted", "90", "--json")


def _world_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_a_world_that_differs_starts_uncommissioned_and_refuses_go(tmp_path):
    world = _world_file(tmp_path, "slow.json", {"actuator_speed_deg_s": 6})
    result = run("--world", world, *SESSION)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["session_ends"] == [] and summary["sets_done"] == 0
    assert "go_refused_not_commissioned" in summary["warnings_seen"]
    assert summary["max_angle_deg"] < -55
    assert "commissioning" not in summary


def test_commission_then_the_session_keeps_the_budget_on_a_slow_table(tmp_path):
    # The table: 6 deg/s where the board file says 12 (was 93.3 s
    # inverted for a 90 s limit).
    world = _world_file(tmp_path, "slow.json", {"actuator_speed_deg_s": 6})
    result = run("--world", world, "--commission", *SESSION)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["session_ends"] == ["limit"]
    assert summary["inverted_s"] <= 90.0
    measured = summary["commissioning"]["calibration"]
    assert abs(measured["speed_up_mdeg_s"] - 6000) <= 180
    # The trace and the events start when commissioning has finished: the
    # session's own duration, not commissioning's minute and more on top.
    assert summary["duration_s"] < 140


def test_commission_on_other_hardware_then_run_on_this_one(tmp_path):
    before = _world_file(tmp_path, "before.json", {"imu": {"offset_deg": 0}})
    knocked = _world_file(tmp_path, "after.json", {"imu": {"offset_deg": 4}})
    result = run("--world", knocked, "--commission-on", before, *SESSION)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["commissioning"]["calibration"]["imu_offset_mdeg"] < 1000
    # The knocked IMU is caught at home or where the home switch opens.
    caught = "go_refused_calibration_changed" in summary["warnings_seen"] or (
        summary["session_ends"][:1] == ["calibration_changed"]
    )
    assert caught, summary
    assert summary["max_angle_deg"] < -50


def test_commission_on_a_bad_file_is_one_line_and_exit_2(tmp_path):
    bad = _world_file(tmp_path, "bad.json", {"actuator_speed_deg_s": 99})
    result = run("--commission-on", bad, *SESSION)
    assert result.exit_code == 2
    assert "--commission-on" in result.output and "actuator_speed_deg_s" in result.output
    assert "Traceback" not in result.output


def test_text_view_says_when_the_table_is_not_commissioned(tmp_path):
    world = _world_file(tmp_path, "w.json", {"home_angle_deg": -55})
    result = run("--world", world, "--sets", "1")
    assert result.exit_code == 0, result.output
    assert "not commissioned" in result.output and "--commission" in result.output
    result = run("--world", world, "--sets", "1", "--commission")
    assert result.exit_code == 0, result.output
    assert "commissioning measured" in result.output and "completed" in result.output
