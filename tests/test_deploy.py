"""`invtable deploy` against the virtual board (real MicroPython, real mpremote)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from invtable.host import deploy as dep
from invtable.host.cli_board import deploy as deploy_cmd
from invtable.host.vboard import VirtualBoard

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")


@pytest.fixture(scope="module")
def vboard(micropython_setup):
    with VirtualBoard("esp32_devkitc") as vb:
        yield vb


def test_refuses_without_home_verification(vboard):
    with pytest.raises(dep.TableNotVerifiedHome, match="cannot verify the table is at home"):
        dep.deploy(vboard.port, "esp32_devkitc")


def test_full_then_no_change_deploy_and_the_firmware_runs(vboard):
    first = dep.deploy(vboard.port, "esp32_devkitc", force_unverified=True)
    assert first.micropython.startswith("1.27")
    assert first.arch is None  # WebAssembly: plain bytecode .mpy
    assert "/firmware/app.mpy" in first.copied and "/board.py" in first.copied
    assert "/main.py" in first.copied and "/firmware/__init__.mpy" in first.copied
    # The first deploy ended with the new firmware running and answering
    # `status`; it reports HOME, so the second deploy needs no override.
    second = dep.deploy(vboard.port, "esp32_devkitc")
    assert second.copied == [] and second.removed == []
    assert sorted(second.unchanged) == sorted(first.copied)
    print(f"deploy: full {first.seconds:.1f} s ({first.bytes_copied} bytes), "
          f"no change {second.seconds:.1f} s")

    # The deployed firmware's control loop on the simulated hardware: a few
    # ticks at HOME with no session drive nothing.
    script = """
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


def test_changed_file_is_the_only_one_copied(vboard, monkeypatch, tmp_path):
    dep.deploy(vboard.port, "esp32_devkitc", force_unverified=True, reset=False)
    # Same firmware, another board file: only board.py changes.
    result = dep.deploy(vboard.port, "esp32_s3_devkitc", force_unverified=True, reset=False)
    assert result.copied == ["/board.py"]
    dep.deploy(vboard.port, "esp32_devkitc", force_unverified=True, reset=False)


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
    dep._check_table_at_home(fake_board.path)  # HOME, no session: no exception
    fake_board.silent = True
    with pytest.raises(dep.TableNotVerifiedHome, match="did not answer `status`"):
        dep._check_table_at_home(fake_board.path)
