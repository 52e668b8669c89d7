"""The virtual board: real MicroPython behind a pty, driven by real mpremote."""

from __future__ import annotations

import os
import select
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


# --- commissioned at power-on; physical inputs -------------------------------------


def test_a_board_without_a_world_starts_commissioned(vboard, tmp_path):
    from invtable.boards import esp32_devkitc
    from invtable.firmware import storage
    from invtable.hal_sim.scenario import commissioned_calibration

    ok(mpremote(vboard.port, "fs", "cp", ":calib.json", str(tmp_path / "calib.json")))
    doc, state = storage.decode((tmp_path / "calib.json").read_bytes())
    assert state == storage.OK
    assert doc == {"schema": 1, "calib": commissioned_calibration(esp32_devkitc.BOARD, 0, None)}


def test_a_world_board_starts_uncommissioned_unless_asked():
    from invtable.boards import esp32_devkitc
    from invtable.firmware import storage
    from invtable.hal_sim.scenario import commissioned_calibration
    from invtable.hal_sim.world import World

    world = {"home_angle_deg": -55}
    assert VirtualBoard("esp32_devkitc", world=world).flash_files() == {}
    files = VirtualBoard("esp32_devkitc", world=world, commissioned=True, seed=3).flash_files()
    measured = commissioned_calibration(
        esp32_devkitc.BOARD, 3, World.from_dict(world, esp32_devkitc.BOARD)
    )
    assert storage.decode(files["calib.json"].encode())[0]["calib"] == measured
    assert VirtualBoard("esp32_devkitc", commissioned=False).flash_files() == {}


class _SerialLines:
    """Lines the board prints on its serial port (a second reader of the pty)."""

    def __init__(self, port):
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        self.buf = b""

    def write(self, data):
        os.write(self.fd, data)

    def wait_for(self, text, timeout_s=10.0):
        deadline = time.monotonic() + timeout_s
        while text.encode() not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not printed; got {self.buf[-500:]!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.buf += os.read(self.fd, 4096)
        end = self.buf.index(text.encode()) + len(text)
        self.buf = self.buf[end:]

    def drain(self):
        """Everything printed since the last wait_for."""
        while select.select([self.fd], [], [], 0.1)[0]:
            self.buf += os.read(self.fd, 4096)
        return self.buf

    def close(self):
        os.close(self.fd)


PIN_WATCHER = """
import machine, time, _vboard
print("BOOT cause", machine.reset_cause())
go = machine.Pin(%d, machine.Pin.IN, machine.Pin.PULL_UP)
last = None
while True:
    _vboard.table_angle_mdeg()  # the firmware's first act in a tick: the IMU read
    level = go.value()
    if level != last:
        print("GO level", level)
        last = level
    time.sleep_ms(20)
"""


def test_physical_inputs_reach_running_code_and_power_loss_reboots(micropython_setup, tmp_path):
    from invtable.boards import esp32_devkitc

    notes = []
    main_py = tmp_path / "main.py"
    main_py.write_text(PIN_WATCHER % esp32_devkitc.BOARD["go_pin"])
    with VirtualBoard("esp32_devkitc", on_note=notes.append) as vb:
        vb.send_input("stop_down")  # at the idle REPL: applied by the runner at once
        vb.send_input("status")
        ok(mpremote(vb.port, "fs", "cp", str(main_py), ":main.py"))
        vb.send_input("stop_up")
        serial = _SerialLines(vb.port)
        try:
            serial.write(b"\x03\x02\x04")  # friendly REPL, soft reset: main.py runs
            serial.wait_for("BOOT cause 5")
            serial.wait_for("GO level 1")  # released: the pull-up
            vb.send_input("go_down")
            serial.wait_for("GO level 0")
            time.sleep(0.5)  # held stays held
            assert b"GO level" not in serial.drain()
            vb.send_input("go_up")
            serial.wait_for("GO level 1")
            vb.send_input("go")  # a tap lets go by itself
            serial.wait_for("GO level 0")
            serial.wait_for("GO level 1")
            vb.send_input("status")
            vb.send_input("power_loss")
            serial.wait_for("BOOT cause 1")  # PWRON_RESET: main.py runs again
            serial.wait_for("GO level 1")
        finally:
            serial.close()
    assert notes[0] == "input: stop_down"
    assert notes[1].startswith("status: table -60.0 deg, drive 0 permille, GO released, "
                               "STOP held, home switch closed, beeper off, faults: none")
    assert notes[2:6] == ["input: stop_up", "input: go_down", "input: go_up", "input: go"]
    assert "GO released, STOP released" in notes[6]
    assert notes[7] == "input: power_loss (the board restarts)"
    with pytest.raises(ValueError, match="unknown input 'jump'"):
        VirtualBoard("esp32_devkitc").send_input("jump")


def _flash_files(state_dir):
    """{relative path: bytes} of what a state dir holds (the board's flash)."""
    return {
        str(path.relative_to(state_dir)): path.read_bytes()
        for path in sorted(state_dir.rglob("*"))
        if path.is_file()
    }


def test_a_state_dir_keeps_every_completed_write_across_restarts(micropython_setup, tmp_path):
    state = tmp_path / "flash"
    blob = bytes(range(256)) * 8
    (tmp_path / "blob.bin").write_bytes(blob)
    with VirtualBoard("esp32_devkitc", state_dir=state) as vb:
        calib = (state / "calib.json").read_bytes()  # written before the first boot
        ok(mpremote(vb.port, "fs", "mkdir", ":data"))
        ok(mpremote(vb.port, "fs", "cp", str(tmp_path / "blob.bin"), ":data/blob.bin"))
        # In the folder as soon as mpremote is done, not only at exit.
        assert (state / "data" / "blob.bin").read_bytes() == blob
        ok(mpremote(vb.port, "exec", (
            "import os\n"
            "for name, text in (('a.txt', 'one'), ('b.txt', 'two'), ('gone.txt', 'x')):\n"
            "    with open(name, 'w') as f:\n"
            "        f.write(text)\n"
            "os.rename('a.txt', 'b.txt')\n"  # replaces b.txt, as the firmware's storage does
            "os.remove('gone.txt')\n"
            "f = open('b.txt', 'w')\n"  # still open (not closed) when the board dies
            "f.write('torn')\n"
        )))
        assert _flash_files(state) == {"calib.json": calib, "data/blob.bin": blob, "b.txt": b"one"}
        vb.proc.kill()  # node dies at once: nothing is saved at exit
        vb.wait()
    with VirtualBoard("esp32_devkitc", state_dir=state) as vb:
        out = ok(mpremote(vb.port, "exec", (
            "import os\n"
            "print(sorted(n for n in os.listdir('/') if n not in ('tmp', 'home', 'dev', 'proc')))\n"
            "print(open('b.txt').read(), len(open('data/blob.bin', 'rb').read()))\n"
            "os.remove('b.txt')\n"
        )))
        assert out.split("\n")[:2] == ["['b.txt', 'calib.json', 'data']", f"one {len(blob)}"]
    # A clean stop (end of node's stdin) leaves the folder equal to the flash.
    assert _flash_files(state) == {"calib.json": calib, "data/blob.bin": blob}


def test_without_a_state_dir_the_flash_is_not_kept(vboard):
    ok(mpremote(vboard.port, "exec", "open('kept.txt', 'w').write('1')"))
    assert "kept.txt" in ok(mpremote(vboard.port, "fs", "ls", ":"))
    with VirtualBoard("esp32_devkitc") as fresh:
        assert "kept.txt" not in ok(mpremote(fresh.port, "fs", "ls", ":"))
    assert fresh.state_dir is None


def test_the_board_names_its_chip_as_the_esp32_port_does(vboard):
    script = "import sys, os\nprint(sys.implementation._machine)\nprint(os.uname().machine)\n"
    assert ok(mpremote(vboard.port, "exec", script)).split() == [
        "virtual", "esp32_devkitc", "with", "ESP32"] * 2
