"""Errors a user can cause: one line, the documented exit code, never a
traceback; Ctrl-C exits 130, a closed pipe is silent. And every range the
commands check is the firmware's own (host/ranges.py)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner
from sigint import restore_sigint

from invtable.firmware.auth import DEFAULT_PIN
from invtable.firmware.settings import LIMIT_FIELDS, PROGRAM_FIELDS, PROGRESSION_FIELDS
from invtable.host import cli_common
from invtable.host.cli import main as CLI
from invtable.host.cli import sim_run
from invtable.host.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    EXIT_USAGE,
    FIELDS,
    InvtableGroup,
)
from invtable.host.cli_users import limits_set, program_set, progression_set
from invtable.host.ranges import session_range

pytestmark = pytest.mark.timeout(60)

EXE = shutil.which("invtable", path=os.path.dirname(sys.executable))


def invtable(*args):
    """The installed command (the real entry point), or the module."""
    return [EXE] if EXE else [sys.executable, "-m", "invtable.host.cli"], list(args)


def spawn(*args, **kwargs):
    command, args = invtable(*args)
    return subprocess.Popen([*command, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint,
                            **kwargs)


def finish(proc, timeout=30):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def run(fake_board):
    def invoke(*args, input=None, port=fake_board.path):
        args = [*args, "--port", port] if port else list(args)
        return CliRunner().invoke(CLI, args, input=input, catch_exceptions=False)

    return invoke


def error_lines(output):
    return [line for line in output.splitlines() if line.startswith("Error:")]


# -- sim run --trace to a folder that does not exist -------------------------
def test_sim_run_trace_to_a_missing_folder_is_exit_2_before_anything(tmp_path):
    code, out, err = finish(spawn("sim", "run", "--trace", str(tmp_path / "no" / "x.csv")))
    assert code == EXIT_USAGE
    assert "Traceback" not in out + err
    assert out == ""  # nothing printed before: no header, no session
    assert len(error_lines(err)) == 1 and "--trace" in err and "cannot write" in err


def test_monitor_record_and_plot_out_to_a_missing_folder_are_exit_2(run, fake_board, tmp_path):
    missing = str(tmp_path / "no" / "x.csv")
    result = run("monitor", "--duration", "1", "--record", missing)
    assert result.exit_code == EXIT_USAGE and "cannot write" in result.output
    assert fake_board.requests == []  # checked before connecting
    result = run("plot", "--out", str(tmp_path / "no" / "x.png"))
    assert result.exit_code == EXIT_USAGE and "--out" in result.output
    assert fake_board.requests == []


# -- a closed pipe -----------------------------------------------------------
def test_monitor_json_into_a_closed_pipe_is_silent(fake_board):
    proc = spawn("monitor", "--json", "--rate", "10", "--port", fake_board.path)
    lines = [proc.stdout.readline() for _ in range(3)]  # `| head -3`
    assert all(json.loads(line)["event"] for line in lines)
    proc.stdout.close()
    code = proc.wait(15)
    err = proc.stderr.read()
    proc.stderr.close()
    assert code == cli_common.EXIT_ERROR
    assert err == "", err  # no BrokenPipeError, no "Error:" line
    assert fake_board.rate_hz == 0  # telemetry turned off again on the way out


def test_status_into_a_closed_pipe_is_silent(fake_board):
    """A closed pipe before the first line (`invtable status --json | true`)."""
    command, args = invtable("status", "--json", "--port", fake_board.path)
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as closed:
        proc = subprocess.run([*command, *args], stdout=closed, stderr=subprocess.PIPE,
                              text=True, timeout=30)
    assert proc.returncode == cli_common.EXIT_ERROR
    assert proc.stderr == ""


# -- Ctrl-C ------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("status", "--timeout", "30"),  # waiting for a board that does not answer
    ("sim", "run", "--duration", "86400", "--json"),  # a simulated day: a minute or more
], ids=["waiting-for-the-board", "sim-run"])
def test_ctrl_c_exits_130_quietly(fake_board, args):
    fake_board.silent = True
    proc = spawn(*args, "--port", fake_board.path) if args[0] == "status" else spawn(*args)
    time.sleep(2.5)  # well inside the command, past start-up
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == EXIT_INTERRUPTED
    assert "Traceback" not in out + err and "Aborted" not in err
    assert err.strip() == ""


def test_ctrl_c_at_a_prompt_exits_130(run, fake_board, monkeypatch):
    """Click turns Ctrl-C (or the end of input) at a prompt into Abort: 130 too."""
    monkeypatch.setattr(cli_common, "_stdin_is_tty", lambda: True)
    result = run("log", "clear", "--yes", input="")  # the PIN prompt gets no answer
    assert result.exit_code == EXIT_INTERRUPTED
    assert "Aborted" not in result.output
    assert fake_board.log  # nothing cleared

    @click.group(cls=InvtableGroup)
    def group():
        pass

    @group.command()
    def sleepy():
        raise KeyboardInterrupt

    result = CliRunner().invoke(group, ["sleepy"])
    assert result.exit_code == EXIT_INTERRUPTED and "Aborted" not in result.output


def test_answering_no_is_exit_1_with_one_line(run, fake_board, monkeypatch):
    monkeypatch.setattr(cli_common, "_stdin_is_tty", lambda: True)
    result = run("user", "delete", "guest", "--pin", "1234", input="n\n")
    assert result.exit_code == cli_common.EXIT_ERROR
    assert error_lines(result.output) == ["Error: user guest not deleted"]
    assert "guest" in fake_board.users


# -- user create -----------------------------------------------------------
def test_user_create_without_a_terminal_or_yes_is_one_line_exit_2(run, fake_board):
    result = run("user", "create", "ana", "--pin", "1234")  # CliRunner: no terminal
    assert result.exit_code == EXIT_USAGE
    assert result.output.strip().splitlines() == [
        "Error: creating a user asks for confirmation and there is no terminal to ask in: "
        "pass --yes"]
    assert "consult a doctor" not in result.output  # the screening is not shown for nothing
    assert fake_board.requests == []
    result = run("user", "create", "ana", "--pin", "1234", "--json")
    assert json.loads(result.stdout)["error"]["exit_code"] == EXIT_USAGE


def test_user_create_without_a_pin_or_terminal_says_so_before_the_screening(run, fake_board):
    result = run("user", "create", "ana", "--yes")
    assert result.exit_code == EXIT_USAGE and "INVTABLE_PIN" in result.output
    assert "consult a doctor" not in result.output
    assert fake_board.requests == []


@pytest.mark.parametrize("name", ["bad name!", "ana;rm", "é", " ana", "ana ", "a" * 17, "tab\tx",
                                  "quote'd"])
def test_a_name_outside_the_rule_is_refused_before_anything(run, fake_board, name):
    result = run("user", "create", name, "--pin", "1234", "--yes")
    assert result.exit_code == EXIT_USAGE, result.output
    assert "letters a-z A-Z, digits, space, - _ ." in result.output
    assert "consult a doctor" not in result.output
    assert fake_board.requests == []


@pytest.mark.parametrize("name", ["ana", "Ana-Maria", "j.doe_2", "Mum and Dad", "a" * 16])
def test_names_inside_the_rule_are_created(run, fake_board, name):
    result = run("user", "create", name, "--pin", "1234", "--yes")
    assert result.exit_code == 0, result.output
    assert name in fake_board.users


# -- the new PIN: its rule in the prompt, checked at once ----------------------
def test_the_pin_rule_is_in_the_prompt_and_checked_before_the_repeat(run, fake_board,
                                                                     monkeypatch):
    monkeypatch.setattr(cli_common, "_stdin_is_tty", lambda: True)
    # A bad PIN is refused at once (no repeat asked), the factory one too, then a good one.
    result = run("pin", "change", "--pin", "1234", input=f"12\n{DEFAULT_PIN}\n5678\n5678\n")
    assert result.exit_code == 0, result.output
    assert fake_board.pin == "5678"
    output = result.output
    prompt = f"New admin PIN (4 to 8 digits 0-9, not the factory default {DEFAULT_PIN})"
    assert output.index(prompt) < output.index("try again")
    assert output.count("try again") == 2
    assert output.count("The new PIN again") == 1  # asked only for the good one
    result = run("pin", "change", "--pin", "5678", input="4321\n4322\n4321\n4321\n")
    assert result.exit_code == 0 and "differ" in result.output and fake_board.pin == "4321"


def test_pin_change_without_a_terminal_is_one_line(run, fake_board):
    result = run("pin", "change", "--pin", "1234")
    assert result.exit_code == EXIT_USAGE
    assert len(error_lines(result.output)) == 1 and "--new-pin" in result.output
    assert fake_board.requests == []


# -- ranges from the firmware --------------------------------------------------
def _option(command, name):
    for param in command.params:
        if name in param.opts:
            return param
    raise KeyError(name)


@pytest.mark.parametrize("command, table", [(limits_set, LIMIT_FIELDS),
                                            (program_set, PROGRAM_FIELDS),
                                            (progression_set, PROGRESSION_FIELDS)],
                         ids=["limits", "program", "progression"])
def test_every_settings_option_has_the_firmware_range(command, table):
    for field, low, high, _default in table:
        option, unit, _label = FIELDS[field]
        kind = _option(command, option).type
        scale = 1 if unit is None else 1000
        assert isinstance(kind, click.IntRange if unit is None else click.FloatRange), option
        assert kind.min == low / scale, option
        assert kind.max == (None if high is None else high / scale), option


def test_sim_run_sets_are_what_the_controller_runs():
    low, high = session_range("sets")
    assert (_option(sim_run, "--sets").type.min, _option(sim_run, "--sets").type.max) == (
        low, high)
    help_text = _option(sim_run, "--sets").help
    assert "controller" in help_text and "at most 5" in help_text
    for option, field in (("--hold", "hold_ms"), ("--rest", "rest_ms"),
                          ("--exit-pause", "exit_pause_ms")):
        kind = _option(sim_run, option).type
        assert (kind.min, kind.max) == tuple(v / 1000 for v in session_range(field))


@pytest.mark.parametrize("args", [
    ("program", "set", "guest", "--angle", "0"),
    ("program", "set", "guest", "--sets", "6"),
    ("program", "set", "guest", "--hold", "5"),
    ("program", "set", "guest", "--exit-pause", "61"),
    ("limits", "set", "guest", "--max-angle", "0", "--pin", "1234"),
    ("progression", "set", "guest", "--angle-step", "6", "--pin", "1234"),
    ("progression", "set", "guest", "--hold-step", "61", "--pin", "1234"),
])
def test_values_the_firmware_refuses_everywhere_are_refused_before_sending(run, fake_board,
                                                                           args):
    result = run(*args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert fake_board.requests == []


def test_sim_run_and_program_set_agree_on_sets_with_what_each_firmware_path_takes(run):
    result = CliRunner().invoke(CLI, ["sim", "run", "--sets", "21"])
    assert result.exit_code == EXIT_USAGE and "1<=x<=20" in result.output
    assert run("program", "set", "guest", "--sets", "5", "--hold", "20").exit_code == 0


def test_hold_times_sets_names_the_shared_time_limit(run, fake_board):
    result = run("program", "set", "guest", "--hold", "300", "--sets", "3")
    assert result.exit_code == EXIT_REFUSED
    text = " ".join(result.stderr.split())
    assert "hold 300 s x 3 sets must fit the user's inverted-time limit of 120 s" in text
    assert "with 3 sets a hold is at most 40 s" in text
    assert "limits set guest --max-inverted" in text
    assert fake_board.users["guest"]["program"]["hold_ms"] == 60000  # nothing changed
    # Only --sets given: the stored hold is the one that no longer fits.
    result = run("program", "set", "guest", "--sets", "3")
    assert "hold 60 s x 3 sets must fit the user's inverted-time limit of 120 s" in \
        " ".join(result.stderr.split())
    result = run("program", "set", "guest", "--hold", "300", "--sets", "3", "--json")
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "out_of_range" and error["allowed"] == [10000, 40000]
    # A higher limit, the same words.
    fake_board.users["guest"]["limits"]["max_inverted_ms"] = 600000
    result = run("program", "set", "guest", "--hold", "500", "--sets", "2")
    assert "hold 500 s x 2 sets must fit the user's inverted-time limit of 600 s" in \
        " ".join(result.stderr.split())


def test_when_no_hold_fits_it_says_how_many_sets_do(run, fake_board):
    fake_board.users["guest"]["limits"]["max_inverted_ms"] = 30000
    result = run("program", "set", "guest", "--hold", "10", "--sets", "5")
    assert result.exit_code == EXIT_REFUSED
    text = " ".join(result.stderr.split())
    assert "limit of 30 s: at most 3 sets of the shortest hold (10 s) fit" in text


# -- end to end against the real firmware ------------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory, sim_serve):
    server = sim_serve(tmp_path_factory.mktemp("flash"), 20)
    yield server
    server.close()


def test_e2e_the_firmware_refuses_as_the_cli_says(sim):
    def real(*args):
        return CliRunner().invoke(CLI, [*args, "--port", sim.path], catch_exceptions=False)

    deadline = time.monotonic() + 15
    while True:  # the firmware booted and at home
        result = real("status", "--json")
        if result.exit_code == 0 and json.loads(result.stdout)["state"] == "HOME":
            break
        assert time.monotonic() < deadline, result.output
        time.sleep(0.2)
    before = json.loads(real("user", "show", "guest", "--json").stdout)
    limit_s = before["limits"]["max_inverted_ms"] // 1000
    result = real("program", "set", "guest", "--hold", "300", "--sets", "3")
    assert result.exit_code == EXIT_REFUSED, result.output
    text = " ".join(result.stderr.split())
    assert f"hold 300 s x 3 sets must fit the user's inverted-time limit of {limit_s} s" in text
    assert f"at most {limit_s // 3:g} s" in text
    assert json.loads(real("user", "show", "guest", "--json").stdout) == before
    # Each range the CLI lets through, the firmware takes.
    result = real("program", "set", "guest", "--sets", "5", "--hold", "10", "--rest", "10",
                  "--exit-pause", "60")
    assert result.exit_code == 0, result.output
    result = real("user", "create", "Ana-Maria 2", "--pin", "0000", "--yes")
    assert result.exit_code == 0, result.output
    assert real("user", "delete", "Ana-Maria 2", "--pin", "0000", "--yes").exit_code == 0
    assert real("program", "set", "guest", "--sets", "1", "--hold", "60").exit_code == 0
