"""`invtable deploy` against the virtual board (real MicroPython, real mpremote)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from firmware_variants import firmware_copy

from invtable.host import deploy as dep
from invtable.host.cli_board import deploy as deploy_cmd
from invtable.host.deploy_slots import LOADER
from invtable.host.vboard import VirtualBoard

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")


@pytest.fixture(scope="module")
def vboard(micropython_setup):
    with VirtualBoard("esp32_devkitc") as vb:
        yield vb


def test_refuses_without_home_verification(vboard):
    # A fresh board sits at its REPL: told apart from one whose firmware is silent.
    with pytest.raises(dep.TableNotVerifiedHome) as err:
        dep.deploy(vboard.port, "esp32_devkitc")
    assert str(err.value).startswith(
        f"cannot verify the table is at home on {vboard.port}: the board is at its MicroPython "
        "REPL, the invtable firmware is not running (a deploy was stopped, or ran with "
        f"--no-reset). Reset the board to start the firmware (`mpremote connect {vboard.port} "
        "reset`, or its reset button, or power it off and on), then deploy again.")
    assert "run again with --force-unverified" in str(err.value)


def test_full_then_no_change_deploy_and_the_firmware_runs(vboard):
    first = dep.deploy(vboard.port, "esp32_devkitc", force_unverified=True)
    assert first.micropython.startswith("1.27")
    assert first.arch is None  # WebAssembly: plain bytecode .mpy
    assert "firmware/app.mpy" in first.copied and "board.py" in first.copied
    assert "/main.py" in first.copied and "firmware/__init__.mpy" in first.copied
    assert "firmware/start.mpy" in first.copied and first.slot == "a"
    # The first deploy ended with the new firmware running and answering
    # `status`; it reports HOME, so the second deploy needs no override.
    second = dep.deploy(vboard.port, "esp32_devkitc")
    assert second.copied == [] and second.removed == []
    assert sorted(second.unchanged) == sorted(first.copied)
    assert second.slot == "a" and second.manifest_sha256 == first.manifest_sha256
    print(f"deploy: full {first.seconds:.1f} s ({first.bytes_copied} bytes), "
          f"no change {second.seconds:.1f} s")

    # The deployed firmware's control loop on the simulated hardware: a few
    # ticks at HOME with no session drive nothing.
    script = """
import sys
sys.path.insert(0, "/fw/a")
import board, _vboard
from firmware import esp32_hal
from firmware.app import App
hal = esp32_hal.build(board.BOARD)
app = App(hal, board.BOARD)
import time
for _ in range(10):
    app.tick()
    time.sleep_ms(20)
print("TICKS", app.ctl.state, hal.actuator.command, _vboard.drive_permille(), app.crashes)
"""
    proc = subprocess.run(
        [sys.executable, "-m", "mpremote", "connect", vboard.port, "exec", script],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("TICKS")][0].split()
    assert line[2:] == ["0", "0", "0"]


def test_changed_file_is_the_only_one_copied(vboard, tmp_path):
    dep.deploy(vboard.port, "esp32_devkitc", force_unverified=True, reset=False)
    # board.py changed on the board (the firmware is stopped: --no-reset): the
    # slot no longer matches its manifest, and there is no other complete one:
    # it is repaired in place, with only board.py sent.
    dep.mpremote(vboard.port, "resume", "exec",
                 "open('/fw/a/board.py', 'a').write('# by hand\\n')")
    result = dep.deploy(vboard.port, "esp32_devkitc", force_unverified=True, reset=False)
    assert result.copied == ["board.py"] and result.slot == "a"
    assert result.copied_on_board == []
    # A new version: built in the other slot, only protocol.mpy (the version)
    # sent, the other files copied there on the board.
    new = firmware_copy(tmp_path / "fw", "0.1.0-test")
    result = dep.deploy(vboard.port, "esp32_devkitc", force_unverified=True, reset=False,
                        firmware_dir=new)
    assert result.copied == ["firmware/protocol.mpy"] and result.slot == "b"
    assert len(result.copied_on_board) == len(dep.deploy_plan("esp32_devkitc")) - len(
        LOADER) - 1
    assert result.firmware == "0.1.0-test"
    listing = dep.mpremote(vboard.port, "resume", "exec",
                           "import os; print(os.listdir('/'), os.listdir('/fw'), "
                           "open('/fw/active').read())")
    assert "active.new" not in listing.stdout and "main.py.new" not in listing.stdout
    assert listing.stdout.rstrip().endswith("b")
    # And back: slot a still holds the firmware of before, complete: only switched.
    result = dep.deploy(vboard.port, "esp32_devkitc", force_unverified=True, reset=False)
    assert result.copied == [] and result.copied_on_board == [] and result.slot == "a"


def test_the_chip_the_board_reports():
    for machine, chip in [
        ("Generic ESP32 module with ESP32", "esp32"),
        ("Generic ESP32S3 module with ESP32S3", "esp32s3"),
        ("ESP32 module (spiram) with ESP32", "esp32"),
        ("Espressif ESP32-S3-DevKitC-1 with ESP32-S3", "esp32s3"),
        ("ESP32C3 module with ESP32C3", "esp32c3"),
        ("virtual esp32_devkitc with ESP32", "esp32"),
    ]:
        assert dep.reported_chip({"machine": machine}) == (chip, machine)
    assert dep.reported_chip({"machine": "", "uname": "x with ESP32S3"}) == ("esp32s3",
                                                                             "x with ESP32S3")
    assert dep.reported_chip({"machine": "Raspberry Pi Pico with RP2040"})[0] is None
    info = {"machine": "Generic ESP32 module with ESP32"}
    assert dep.check_chip(info, "esp32_devkitc", "/dev/ttyUSB0") == "esp32"
    with pytest.raises(dep.DeployError) as err:
        dep.check_chip(info, "esp32_s3_devkitc", "/dev/ttyUSB0")
    assert err.value.exit_code == dep.EXIT_VERSION
    assert str(err.value) == (
        "board file esp32_s3_devkitc is for an ESP32-S3 (esp32s3), but the board on "
        "/dev/ttyUSB0 is an ESP32 (esp32): it reports 'Generic ESP32 module with ESP32'; for "
        "this board use --board esp32_devkitc"
    )
    with pytest.raises(dep.DeployError, match="is not an ESP32: it reports 'JS with"):
        dep.check_chip({"machine": "JS with Emscripten"}, "esp32_devkitc", None)


def test_no_raw_repl_says_why():
    no_answer = dep._no_raw_repl("/dev/pts/7", None)
    assert no_answer.exit_code == dep.EXIT_NO_BOARD
    assert str(no_answer).startswith(
        f"no MicroPython raw REPL on /dev/pts/7 within {dep.REPL_TIMEOUT_S:g} s")
    serve = dep._no_raw_repl("/dev/pts/7", {"state": "HOME", "session": None})
    assert serve.exit_code == dep.EXIT_NO_BOARD and "`invtable sim serve`" in str(serve)
    fault = dep._no_raw_repl("/dev/pts/7", {"state": "FAULT", "session": None})
    assert fault.exit_code == dep.EXIT_NOT_HOME
    assert "(state FAULT) did not give way to mpremote's Ctrl-C" in str(fault)
    assert "reset button" in str(fault)


def test_a_first_contact_that_runs_out_of_time_is_tried_again_at_a_repl(vboard, monkeypatch):
    dep.mpremote(vboard.port, "exec", "pass")  # the board now sits at its REPL
    real, calls = dep.mpremote, []

    def first_runs_out(port, *args, **kwargs):
        calls.append(kwargs["timeout_s"])
        if len(calls) == 1:  # e.g. the board took mpremote's Ctrl-A as data
            raise dep.StepTimeout("asking the board for its version did not finish")
        return real(port, *args, **kwargs)

    monkeypatch.setattr(dep, "mpremote", first_runs_out)
    info = dep.query_board(vboard.port)  # the look for a REPL finds it: once more
    assert calls == [dep.REPL_TIMEOUT_S] * 2 and info["version"][:2] == [1, 27]
    monkeypatch.setattr(dep, "_at_repl", lambda port: False)
    calls.clear()
    with pytest.raises(dep.DeployError, match="no MicroPython raw REPL") as err:
        dep.query_board(vboard.port)  # no REPL there: no second try
    assert calls == [dep.REPL_TIMEOUT_S] and err.value.exit_code == dep.EXIT_NO_BOARD


def test_cli_errors_have_exit_codes(tmp_path):
    runner = CliRunner()
    res = runner.invoke(deploy_cmd, ["--board", "nope", "--port", "/dev/null"])
    assert res.exit_code == dep.EXIT_USAGE
    res = runner.invoke(deploy_cmd, ["--port", str(tmp_path / "ttyUSB9"), "--force-unverified"])
    assert res.exit_code == dep.EXIT_NO_BOARD


def test_version_mismatch_is_refused():
    with pytest.raises(dep.DeployError, match="MicroPython 1.26.0") as err:
        dep.check_version({"version": [1, 26, 0], "mpy": 6 | (3 << 8)}, (1, 27, 0), 6)
    assert err.value.exit_code == dep.EXIT_VERSION
    assert dep.check_version({"version": [1, 27, 0], "mpy": 6 | (3 << 8) | (10 << 10)},
                             (1, 27, 0), 6) == "xtensawin"


@pytest.mark.parametrize("state", ["RAMP", "HOLD", "RETURN", "PAUSE", "FAULT"])
def test_home_check_refuses_a_table_that_is_not_at_home(fake_board, state):
    fake_board.state = state
    with pytest.raises(dep.TableNotVerifiedHome, match=f"not at rest at home \\(state {state}"):
        dep._check_table_at_home(fake_board.path)


def test_home_check_passes_at_home_and_refuses_silent_firmware(fake_board):
    assert dep._check_table_at_home(fake_board.path)["state"] == "HOME"
    fake_board.silent = True
    with pytest.raises(dep.TableNotVerifiedHome, match="did not answer `status`"):
        dep._check_table_at_home(fake_board.path)
