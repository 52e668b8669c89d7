"""Words for codes (host/codes.py): every fault and notice code the firmware can
report has a meaning and what to do, the README's "Fault codes" tables list
exactly those codes, and `status`, `monitor` and `log` show the words."""

import json
import pathlib
import re
import time

import pytest
from click.testing import CliRunner
from rich.console import Console

from invtable.host import cli_common
from invtable.host.cli import main as CLI
from invtable.host.cli_status import MonitorView
from invtable.host.codes import CODES, LOG_TEXT, SETTINGS_TEXT, explain

pytestmark = pytest.mark.timeout(60)

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRMWARE = sorted((ROOT / "firmware").glob("*.py"))


def firmware_codes():
    """The codes the firmware can put in status `fault` / `warning` / `boot_errors`,
    found in its sources: every F_* constant, every go_refused_* and setup_*
    string, every code given to the controller's _warn(), and the boot errors
    a HAL appends."""
    patterns = (
        r'\bF_[A-Z_]+\s*=\s*"([a-z_]+)"',
        r'"(go_refused_[a-z_]+)"',
        r'"(setup_[a-z_]+)"',
        r'_warn\(\s*"([a-z_]+)"',
        r'boot_errors\.append\(\(\s*"([a-z_]+)"',
        r'"(firmware_(?:corrupt|incomplete|missing))"',  # the boot loader's (main.py)
    )
    found = set()
    for path in FIRMWARE:
        text = path.read_text()
        for pattern in patterns:
            found.update(re.findall(pattern, text))
    return found


def readme_codes():
    """The first column's codes of every table in the README's "### Fault codes"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Fault codes", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\|\s*`([a-z_]+)`", section, flags=re.MULTILINE))


def test_the_firmware_sources_are_searched():
    """The search finds the codes we know are there (so an empty result cannot pass)."""
    found = firmware_codes()
    for code in ("stall", "imu_lost", "overload", "setup_left_away", "home_not_reached",
                 "go_refused_stop_pressed", "recovering_after_reset", "calibration_changed",
                 "imu_not_found"):
        assert code in found


def test_every_firmware_code_has_words():
    missing = firmware_codes() - set(CODES)
    assert not missing, f"codes without words in host/codes.py: {sorted(missing)}"


def test_the_readme_lists_exactly_the_codes_with_words():
    readme = readme_codes()
    assert readme - set(CODES) == set(), "in the README's fault codes, not in host/codes.py"
    assert set(CODES) - readme == set(), "in host/codes.py, not in the README's fault codes"


@pytest.mark.parametrize("code", sorted(CODES))
def test_words_are_a_meaning_and_what_to_do(code):
    meaning, todo = CODES[code]
    assert meaning and todo
    # Shown as "meaning: what to do".
    assert ":" not in meaning and ":" not in todo, code
    assert explain(code) == f"{meaning}: {todo}"


def flat(output):
    """The words of an output, without the tables' lines and the wrapping."""
    return " ".join(re.sub("[\u2500-\u257f]", " ", output).split())


@pytest.fixture
def run(fake_board, monkeypatch):
    monkeypatch.setattr(cli_common.out, "width", 200)

    def invoke(*args):
        result = CliRunner().invoke(CLI, [*args, "--port", fake_board.path],
                                    catch_exceptions=False)
        return result, flat(result.output)

    return invoke


def test_status_explains_a_latched_fault_and_the_faults_after_it(run, fake_board):
    fake_board.state, fake_board.fault = "FAULT", "stall"
    fake_board.fault_chain = ["imu_lost"]
    result, output = run("status")
    assert result.exit_code == 0
    assert "FAULT fault latched: stall" in output
    assert "fault stall " + explain("stall") in output
    assert "manual release" in output  # what to do
    assert "later faults imu_lost" in output
    assert "later fault imu_lost " + explain("imu_lost") in output


def test_status_explains_a_notice(run, fake_board):
    fake_board.warning = "go_refused_stop_pressed"
    result, output = run("status")
    assert result.exit_code == 0
    assert "go_refused_stop_pressed" in output
    assert "STOP is held or its wire is open" in output
    assert "check the STOP button's wiring" in output


def test_status_of_a_code_without_words_says_so(run, fake_board):
    fake_board.warning = "go_refused_something_new"
    result, output = run("status")
    assert result.exit_code == 0
    assert "notice go_refused_something_new a code this invtable has no words for" in output


def test_monitor_lines_carry_the_words():
    view = MonitorView("/dev/x", {"state": "RAMP", "user": "ana"})
    line = view.event_line({"event": "warning", "code": "go_refused_resting"})
    assert line == "notice: go_refused_resting (" + explain("go_refused_resting") + ")"
    line = view.event_line({"event": "state", "from": "RAMP", "state": "FAULT",
                            "fault": "overload"})
    assert line.startswith("state RAMP -> FAULT: fault overload (")
    assert explain("overload") in line
    view.update({"event": "telemetry", "state": "FAULT", "fault": "overload"})
    console = Console(width=200, record=True)
    console.print(view.render(live=False))
    assert "check for an obstruction" in " ".join(console.export_text().split())


def test_log_explains_the_faults_and_ends_it_shows(run, fake_board):
    fake_board.log.append({"user": "guest", "start_s": 1700100000, "uptime_ms": 1,
                           "max_angle_mdeg": 20000, "inverted_ms": 4000, "end": "fault",
                           "fault": "cannot_follow", "daily_ms": None})
    fake_board.log.append({"user": "guest", "start_s": 1700200000, "uptime_ms": 2,
                           "max_angle_mdeg": 20000, "inverted_ms": 4000, "end": "no_response",
                           "fault": None, "daily_ms": None})
    result, output = run("log")
    assert result.exit_code == 0
    assert "cannot_follow: " + explain("cannot_follow") in output
    assert "no_response: no GO tap within 10 s" in output
    assert output.count(explain("cannot_follow")) == 1


def test_settings_defaults_show_only_while_the_default_user_is_alone(run, fake_board):
    fake_board.settings_status = "defaults_missing"
    result, output = run("status")
    assert "defaults_missing" in output and SETTINGS_TEXT["defaults_missing"] in output
    fake_board.users["ana"] = dict(fake_board.users["guest"], name="ana")
    result, output = run("status")
    assert result.exit_code == 0
    assert "defaults_missing" not in output and "settings" not in output
    # Without a status to explain, no users are asked for.
    fake_board.settings_status = "ok"
    fake_board.requests.clear()
    run("status")
    assert [r["cmd"] for r in fake_board.requests] == ["status"]


def test_a_damaged_settings_file_is_explained(run, fake_board):
    fake_board.settings_status = "defaults_corrupt"
    result, output = run("status")
    assert "defaults_corrupt" in output and "Create the users and their limits again" in output


def test_log_missing_is_not_news_but_a_damaged_log_is(run, fake_board):
    fake_board.log_status = "missing"
    result, output = run("status")
    assert "missing" not in output and " log " not in output
    assert "log status" not in run("log")[1]
    fake_board.log_status = "corrupt"
    result, output = run("status")
    assert "log corrupt" in output and LOG_TEXT["corrupt"] in output
    assert LOG_TEXT["corrupt"] in run("log")[1]


def test_info_names_the_simulated_board(run, fake_board):
    fake_board.micropython = None
    result, output = run("info")
    assert result.exit_code == 0
    assert "MicroPython none: the simulated board (the firmware under CPython)" in output
    assert "None" not in result.output
    fake_board.micropython = "1.27.0"
    assert "MicroPython 1.27.0" in run("info")[1]


# -- end to end: the real firmware behind `invtable sim serve` ----------------
def test_e2e_a_new_board_then_a_user(sim_serve, tmp_path, monkeypatch):
    """A fresh flash reports defaults_missing and no log until it restarts: shown
    while they apply, and the simulated board says what it is."""
    monkeypatch.setattr(cli_common.out, "width", 200)
    server = sim_serve(tmp_path / "flash", 20)

    def real(*args):
        result = CliRunner().invoke(CLI, [*args, "--port", server.path], catch_exceptions=False)
        return result, flat(result.output)

    deadline = time.monotonic() + 15
    while True:
        result, _ = real("status", "--json")
        if result.exit_code == 0 and json.loads(result.stdout)["state"] == "HOME":
            break
        assert time.monotonic() < deadline, result.output
        time.sleep(0.2)
    data = json.loads(result.stdout)
    assert (data["settings_status"], data["log_status"]) == ("defaults_missing", "missing")
    result, output = real("status")
    assert SETTINGS_TEXT["defaults_missing"] in output
    assert "missing" not in output.replace("defaults_missing", "")
    result, output = real("user", "create", "ana", "--pin", "0000", "--yes")
    assert result.exit_code == 0, result.output
    data = json.loads(real("status", "--json")[0].stdout)
    assert data["settings_status"] == "defaults_missing"  # the board says so until a reboot
    result, output = real("status")
    assert "defaults_missing" not in output and SETTINGS_TEXT["defaults_missing"] not in output
    result, output = real("info")
    assert "MicroPython none: the simulated board" in output
    server.press("stop_down")
    server.press("go")
    deadline = time.monotonic() + 10
    while json.loads(real("status", "--json")[0].stdout)["warning"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    result, output = real("status")
    assert "go_refused_stop_pressed" in output and explain("go_refused_stop_pressed") in output
    server.press("stop_up")
