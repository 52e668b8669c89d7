"""The virtual board: real MicroPython behind a pty, driven by real mpremote."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from invtable.host.vboard import VirtualBoard

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")


def mpremote(port, *args, timeout=60):
    proc = subprocess.run(
        [sys.executable, "-m", "mpremote", "connect", port, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def ok(proc):
    assert proc.returncode == 0, f"mpremote failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def vboard(micropython_setup):
    with VirtualBoard("esp32_devkitc") as vb:
        yield vb


def test_exec_round_trip(vboard):
    started = time.monotonic()
    assert ok(mpremote(vboard.port, "exec", "print(1+1)")).strip() == "2"
    first_s = time.monotonic() - started
    started = time.monotonic()
    assert ok(mpremote(vboard.port, "resume", "exec", "print(6*7)")).strip() == "42"
    resume_s = time.monotonic() - started
    print(f"mpremote exec round trip: {first_s:.2f} s (soft reset), {resume_s:.2f} s (resume)")


def test_copy_read_back_and_ls(vboard, tmp_path):
    data = bytes(range(256)) * 8  # binary, 2 KB
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    ok(mpremote(vboard.port, "fs", "cp", str(src), ":blob.bin"))
    back = tmp_path / "back.bin"
    ok(mpremote(vboard.port, "fs", "cp", ":blob.bin", str(back)))
    assert back.read_bytes() == data
    listing = ok(mpremote(vboard.port, "fs", "ls", ":"))
    assert "blob.bin" in listing
    # mpremote's checks rely on MicroPython's errno numbers
    proc = mpremote(vboard.port, "fs", "rm", ":no_such_file")
    assert proc.returncode != 0 and "No such file" in proc.stderr
    ok(mpremote(vboard.port, "fs", "mkdir", ":somedir"))
    proc = mpremote(vboard.port, "fs", "mkdir", ":somedir")
    assert proc.returncode != 0 and "File exists" in proc.stderr


def test_soft_reset_forgets_globals(vboard):
    ok(mpremote(vboard.port, "resume", "exec", "vb_marker = 1"))
    out = ok(mpremote(vboard.port, "resume", "exec", "print('vb_marker' in globals())"))
    assert out.strip() == "True"
    out = ok(mpremote(vboard.port, "exec", "print('vb_marker' in globals())"))  # soft reset
    assert out.strip() == "False"


def test_simulated_machine_is_installed(vboard):
    out = ok(mpremote(vboard.port, "exec", (
        "import machine, _vboard\n"
        "print(machine.reset_cause(), _vboard.table_angle_mdeg())\n"
        "print(machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21)).scan())\n"
    )))
    first, second = out.strip().splitlines()
    assert first.split()[1] == "-60000"  # at the board's home angle
    assert second.strip() == "[104]"  # the MPU-6050 at 0x68


def test_esp32_hal_reads_the_simulated_mpu6050(vboard):
    """The ESP32 HAL's I2C reads inside the interpreter agree with the model."""
    script = """
import math, json, _vboard
from firmware import esp32_hal
BOARD = json.loads(%r)
hal = esp32_hal.build(BOARD)
raw = [0] * 6
sums = [0, 0, 0]
for _ in range(20):
    hal.imu.read(raw)
    for i in range(3):
        sums[i] += raw[i]
along, normal = sums[0] / 20, sums[2] / 20
angle = math.degrees(math.atan2(-along, normal))
print("ANGLE", angle, _vboard.table_angle_mdeg() / 1000, hal.home.closed(), hal.stop.pressed(),
      hal.go.pressed(), hal.actuator.overloaded())
"""
    import json

    from invtable.boards import esp32_devkitc

    ok(_put_firmware_sources(vboard.port))
    out = ok(mpremote(vboard.port, "exec", script % json.dumps(esp32_devkitc.BOARD)))
    line = [ln for ln in out.splitlines() if ln.startswith("ANGLE")][0].split()
    hal_angle, table_angle = float(line[1]), float(line[2])
    assert table_angle == pytest.approx(-60.0, abs=0.01)
    assert hal_angle == pytest.approx(table_angle, abs=1.0)
    assert line[3:] == ["True", "False", "False", "False"]  # home, STOP/GO released


def _put_firmware_sources(port):
    from invtable.host.deploy import FIRMWARE_DIR

    args = ["exec", "import os\ntry:\n    os.mkdir('firmware')\nexcept OSError:\n    pass"]
    for name in ("__init__", "compat", "hal", "mpu6050", "esp32_hal"):
        args += ["+", "fs", "cp", str(FIRMWARE_DIR / f"{name}.py"), f":firmware/{name}.py"]
    return mpremote(port, *args)
