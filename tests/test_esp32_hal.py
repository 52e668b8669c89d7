"""The ESP32 HAL, the MPU-6050 driver and main.py, run against hal_sim.machine_sim.

``firmware/esp32_hal.py`` does ``import machine`` at module level; each test
gets a fresh simulated board installed as ``sys.modules["machine"]`` and a
fresh import of the HAL, and both are removed again afterwards.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import os
import runpy
import sys
import textwrap
import types
from pathlib import Path

import pytest
from fault_helpers import recovery_permille
from pin_table import PinTable, SimTime

from invtable.boards import esp32_devkitc, esp32_s3_devkitc
from invtable.firmware import app as app_module
from invtable.firmware import last_resort as last_resort_module
from invtable.hal_sim import machine_sim as ms
from invtable.hal_sim.mpu6050_model import MPU6050Model
from invtable.hal_sim.scenario import commission_flash

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
_HAL = "invtable.firmware.esp32_hal"
_DRIVER = "invtable.firmware.mpu6050"


class FakeSource:
    """The IMU source contract: read(out) fills ax, ay, az (mg), gx, gy, gz (mdeg/s)."""

    def __init__(self, values=(0, 0, 1000, 0, 0, 0)):
        self.values = list(values)
        self.reads = 0

    def read(self, out):
        self.reads += 1
        for i in range(6):
            out[i] = self.values[i]


def _forget_hal():
    for name in (_HAL, _DRIVER):
        sys.modules.pop(name, None)
    pkg = sys.modules.get("invtable.firmware")
    for attr in ("esp32_hal", "mpu6050"):
        if pkg is not None and hasattr(pkg, attr):
            delattr(pkg, attr)


@pytest.fixture
def sim():
    """A fresh simulated ESP32 installed as `machine`; yields the machine_sim module."""
    saved = sys.modules.get("machine")
    ms.sim_clear("esp32")
    sys.modules["machine"] = ms
    _forget_hal()
    yield ms
    _forget_hal()
    if saved is None:
        sys.modules.pop("machine", None)
    else:
        sys.modules["machine"] = saved
    ms.sim_clear("esp32")


@pytest.fixture
def hal_mod(sim):
    return importlib.import_module(_HAL)


@pytest.fixture
def driver_mod(sim):
    return importlib.import_module(_DRIVER)


def _no_sleep(ms_):
    return None


def _attach_imu(bus_id=0, addr=0x68, values=(0, 0, 1000, 0, 0, 0)):
    source = FakeSource(values)
    model = MPU6050Model(source)
    ms.sim_i2c_bus(bus_id).attach(addr, model)
    return source, model


def _build(hal_mod, board_module, chip="esp32", **kw):
    ms.sim_clear(chip)
    imu = board_module.BOARD["imu"]
    source, model = _attach_imu(imu["i2c_id"], imu["addr"])
    hal = hal_mod.build(board_module, imu_sleep_ms=_no_sleep, **kw)
    return hal, source, model


# --- the MPU-6050 register model ------------------------------------------------


def test_model_who_am_i_and_power_on_sleep(sim):
    source, model = _attach_imu()
    i2c = sim.I2C(0, scl=22, sda=21)
    assert i2c.scan() == [0x68]
    assert i2c.readfrom_mem(0x68, 0x75, 1) == b"\x68"
    assert i2c.readfrom_mem(0x68, 0x6B, 1) == b"\x40"  # asleep after power-on
    # Asleep: the data registers hold their (zero) values, the source is not sampled.
    assert i2c.readfrom_mem(0x68, 0x3B, 14) == bytes(14)
    assert source.reads == 0
    i2c.writeto_mem(0x68, 0x6B, b"\x00")
    assert i2c.readfrom_mem(0x68, 0x3B, 14) != bytes(14)
    assert source.reads == 1


def test_model_device_reset_restores_defaults(sim):
    _source, model = _attach_imu()
    i2c = sim.I2C(0)
    i2c.writeto_mem(0x68, 0x1C, b"\x18")
    i2c.writeto_mem(0x68, 0x6B, b"\x01")
    i2c.writeto_mem(0x68, 0x6B, b"\x80")
    assert i2c.readfrom_mem(0x68, 0x6B, 1) == b"\x40"  # reset bit self-clears, asleep
    assert i2c.readfrom_mem(0x68, 0x1C, 1) == b"\x00"
    i2c.writeto_mem(0x68, 0x75, b"\x00")  # read-only
    assert i2c.readfrom_mem(0x68, 0x75, 1) == b"\x68"


def test_model_burst_is_big_endian_twos_complement(sim):
    source, model = _attach_imu(values=(-1000, 500, 2000, -10000, 250000, -1))
    model.temp_cdeg = 2500
    i2c = sim.I2C(0)
    i2c.writeto_mem(0x68, 0x6B, b"\x01")
    data = i2c.readfrom_mem(0x68, 0x3B, 14)  # +-2 g, +-250 dps after reset

    def s16(i):
        return int.from_bytes(data[i : i + 2], "big", signed=True)

    assert data[0:2] == b"\xc0\x00"  # -16384 = -1 g
    assert s16(0) == -16384
    assert s16(2) == 8192
    assert s16(4) == 32767  # 2 g saturates
    assert s16(6) == round((25.00 - 36.53) * 340)  # TEMP_OUT
    assert s16(8) == -1310  # -10 deg/s at 131 LSB/(deg/s)
    assert data[8:10] == b"\xfa\xe2"
    assert s16(10) == 32750  # 250 deg/s
    assert s16(12) == 0  # -1 mdeg/s rounds to 0 counts
    # One burst samples the source once (a consistent set of axes).
    assert source.reads == 1


def test_model_full_scale_selection(sim):
    source, model = _attach_imu(values=(1000, 0, 0, 100000, 0, 0))
    i2c = sim.I2C(0)
    i2c.writeto_mem(0x68, 0x6B, b"\x00")
    expected = {0: (16384, 13100), 1: (8192, 6550), 2: (4096, 3280), 3: (2048, 1640)}
    for sel, (accel_counts, gyro_counts) in expected.items():
        i2c.writeto_mem(0x68, 0x1C, bytes([sel << 3]))
        i2c.writeto_mem(0x68, 0x1B, bytes([sel << 3]))
        assert model.accel_fs_g() == 2 << sel
        assert model.gyro_fs_dps() == 250 << sel
        data = i2c.readfrom_mem(0x68, 0x3B, 14)
        assert int.from_bytes(data[0:2], "big", signed=True) == accel_counts
        assert int.from_bytes(data[8:10], "big", signed=True) == gyro_counts


def test_model_negative_saturation(sim):
    _attach_imu(values=(-5000, 0, 0, -900000, 0, 0))
    i2c = sim.I2C(0)
    i2c.writeto_mem(0x68, 0x6B, b"\x00")
    data = i2c.readfrom_mem(0x68, 0x3B, 14)
    assert int.from_bytes(data[0:2], "big", signed=True) == -32768
    assert int.from_bytes(data[8:10], "big", signed=True) == -32768


# --- the MPU-6050 driver ----------------------------------------------------------

SOURCE_VALUES = [
    (0, 0, 1000, 0, 0, 0),
    (-866, 3, 500, 5000, -10000, 1),
    (707, -707, -1, -250000, 499000, -499000),
    (1999, -1999, 0, 12345, -12345, 66),
    (-2000, 2000, -3, -1, 1, -7),
]


@pytest.mark.parametrize("values", SOURCE_VALUES)
def test_driver_reads_match_the_register_model(sim, driver_mod, values):
    source, model = _attach_imu(values=values)
    imu = driver_mod.MPU6050(sim.I2C(0), 0x68, 2, 500, sleep_ms=_no_sleep)
    assert model.regs[0x6B] == 0x01  # awake, PLL clock
    assert model.regs[0x1C] == 0x00  # +-2 g
    assert model.regs[0x1B] == 0x08  # +-500 dps
    out = [None] * 6
    imu.read(out)
    assert all(isinstance(v, int) for v in out)
    # Exactly the counts in the model's registers, converted the documented way.
    regs = model.regs
    counts = [int.from_bytes(regs[r : r + 2], "big", signed=True) for r in (59, 61, 63, 67, 69, 71)]
    for i in range(3):
        assert out[i] == round(counts[i] * 1000 / 16384)
        assert out[3 + i] == round(counts[3 + i] * 1000 / 65.5)
    # And within one count of what the source said (1 count = 0.06 mg, 15.3 mdeg/s).
    for i in range(3):
        assert abs(out[i] - values[i]) <= 1
        assert abs(out[3 + i] - values[3 + i]) <= 16


@pytest.mark.parametrize(("accel_fs", "gyro_fs"), [(4, 250), (8, 1000), (16, 2000)])
def test_driver_other_full_scales(sim, driver_mod, accel_fs, gyro_fs):
    values = (-1500, 900, 1000, -200000, 123456, -30000)
    _attach_imu(values=values)
    imu = driver_mod.MPU6050(sim.I2C(0), 0x68, accel_fs, gyro_fs, sleep_ms=_no_sleep)
    out = [0] * 6
    imu.read(out)
    for i in range(3):
        assert abs(out[i] - values[i]) <= 1000 * accel_fs // 32768 + 1
        assert abs(out[3 + i] - values[3 + i]) <= 1000 * gyro_fs // 32768 + 1


def test_driver_temperature(sim, driver_mod):
    _source, model = _attach_imu()
    model.temp_cdeg = 3120
    imu = driver_mod.MPU6050(sim.I2C(0), sleep_ms=_no_sleep)
    imu.read([0] * 6)
    assert abs(imu.temp_cdeg() - 3120) <= 1


def test_who_am_i_mismatch_names_address_and_value(sim, driver_mod):
    _source, model = _attach_imu(addr=0x69)
    model.regs[0x75] = 0x70  # an MPU-6500 sold as a 6050
    with pytest.raises(OSError) as info:
        driver_mod.MPU6050(sim.I2C(0), 0x69, sleep_ms=_no_sleep)
    assert isinstance(info.value, driver_mod.MPU6050Error)
    message = str(info.value)
    assert "0x69" in message
    assert "0x70" in message
    assert "expected 0x68" in message


def test_missing_sensor_names_address(sim, driver_mod):
    with pytest.raises(driver_mod.MPU6050Error, match="not found at I2C address 0x68"):
        driver_mod.MPU6050(sim.I2C(0), 0x68, sleep_ms=_no_sleep)


def test_bus_error_raises_oserror(sim, driver_mod):
    _attach_imu()
    imu = driver_mod.MPU6050(sim.I2C(0), sleep_ms=_no_sleep)
    out = [0] * 6
    imu.read(out)
    sim.sim_i2c_bus(0).set_fault(0x68, 116)
    with pytest.raises(OSError):
        imu.read(out)
    sim.sim_i2c_bus(0).set_fault(0x68, 0)
    imu.read(out)
    sim.sim_i2c_bus(0).detach(0x68)
    with pytest.raises(OSError):
        imu.read(out)


def test_sensor_that_reset_itself_is_an_error(sim, driver_mod):
    _source, model = _attach_imu()
    imu = driver_mod.MPU6050(sim.I2C(0), sleep_ms=_no_sleep)
    assert imu.read([0] * 6) is True
    model.power_on()  # a brown-out of the sensor alone: asleep, data zero
    out = [7] * 6
    assert imu.read(out) is False  # no sample (a return value: nothing to allocate)
    assert out == [7] * 6


def test_driver_waits_after_device_reset(sim, driver_mod):
    _attach_imu()
    waits = []
    driver_mod.MPU6050(sim.I2C(0), sleep_ms=waits.append)
    assert waits == [100]


# --- the HAL: actuators -----------------------------------------------------------


def test_build_devkitc(hal_mod):
    hal, _source, _model = _build(hal_mod, esp32_devkitc)
    from invtable.firmware.hal import Hal

    assert isinstance(hal, Hal)
    i2c = hal.imu.i2c
    assert (i2c.id, i2c.sda, i2c.scl, i2c.freq) == (0, 21, 22, 400000)
    # Everything starts with the drive off.
    assert ms.sim_pin(27).out == 0
    assert ms.sim_pwm_duty_u16(25) == 0
    assert ms.sim_pwm_duty_u16(26) == 0
    assert ms.sim_pin(25).pwm_freq == 20000
    out = [0] * 6
    hal.imu.read(out)
    assert out[:3] == [0, 0, 1000]
    assert hal.board is esp32_devkitc.BOARD


def test_bts7960_duty_direction_and_enable(hal_mod):
    hal, _s, _m = _build(hal_mod, esp32_devkitc)
    act = hal.actuator
    act.drive(500)
    assert (ms.sim_pwm_duty_u16(25), ms.sim_pwm_duty_u16(26), ms.sim_pin(27).out) == (32767, 0, 1)
    act.drive(-1000)
    assert (ms.sim_pwm_duty_u16(25), ms.sim_pwm_duty_u16(26), ms.sim_pin(27).out) == (0, 65535, 1)
    act.drive(2500)  # clamped
    assert (ms.sim_pwm_duty_u16(25), ms.sim_pwm_duty_u16(26)) == (65535, 0)
    act.drive(0)  # brake: enabled, both low-side switches on
    assert (ms.sim_pwm_duty_u16(25), ms.sim_pwm_duty_u16(26), ms.sim_pin(27).out) == (0, 0, 1)
    act.drive(300)
    act.off()  # bridge disabled
    assert (ms.sim_pwm_duty_u16(25), ms.sim_pwm_duty_u16(26), ms.sim_pin(27).out) == (0, 0, 0)


@pytest.mark.parametrize(("board", "chip", "pins"), [
    (esp32_devkitc, "esp32", (25, 26)), (esp32_s3_devkitc, "esp32s3", (4, 5))])
def test_a_drive_command_not_renewed_is_cut_by_the_deadline_timer(hal_mod, board, chip, pins):
    """The HAL's drive deadline on the board: a one-shot hardware timer that
    each drive() re-arms; when the loop stops renewing the command (a hang),
    the bridge goes off after DRIVE_DEADLINE_MS, with no help from the loop."""
    from invtable.firmware.hal import DRIVE_DEADLINE_MS

    hal, _s, _m = _build(hal_mod, board, chip=chip)
    now = [0]
    ms.sim_set_ticks(lambda: now[0])
    act = hal.actuator

    def duties():
        return tuple(ms.sim_pwm_duty_u16(p) for p in pins)

    for _ in range(20):  # a healthy loop: renewed every 20 ms, never cut
        now[0] += 20
        assert ms.sim_run_due_timers() == 0
        act.drive(-600)
    assert act.command == -600 and duties() != (0, 0)
    now[0] += DRIVE_DEADLINE_MS - 1  # the loop hangs after its last drive()
    assert ms.sim_run_due_timers() == 0
    now[0] += 1
    assert ms.sim_run_due_timers() == 1
    assert act.command == 0 and duties() == (0, 0)
    assert act.deadline.expired_count == 1
    if board is esp32_devkitc:
        assert ms.sim_pin(27).out == 0  # BTS7960 enable low: bridge off
    now[0] += 1000
    assert ms.sim_run_due_timers() == 0  # one-shot: spent
    act.drive(300)  # the next command runs again
    assert duties() != (0, 0)
    act.off()  # off() disarms: nothing fires later
    now[0] += 1000
    assert ms.sim_run_due_timers() == 0


def test_bts7960_overload_from_current_sense(hal_mod):
    hal, _s, _m = _build(hal_mod, esp32_devkitc)
    ms.sim_set_adc_uv(36, 1000000)
    assert hal.actuator.overloaded() is False
    ms.sim_set_adc_uv(36, 2600000)  # above overload_mv = 2500
    assert hal.actuator.overloaded() is True


def test_drv8871_slow_decay_drive_brake_and_coast(hal_mod):
    hal, _s, _m = _build(hal_mod, esp32_s3_devkitc, chip="esp32s3")
    act = hal.actuator
    in1, in2 = 4, 5
    assert (ms.sim_pwm_duty_u16(in1), ms.sim_pwm_duty_u16(in2)) == (0, 0)  # off = coast
    act.drive(0)  # brake: both high
    assert (ms.sim_pwm_duty_u16(in1), ms.sim_pwm_duty_u16(in2)) == (65535, 65535)
    act.drive(250)  # IN1 held high, IN2 low for 25 % of the period
    assert ms.sim_pwm_duty_u16(in1) == 65535
    assert ms.sim_pwm_duty_u16(in2) == 65535 - 16383
    act.drive(-250)  # mirror image
    assert ms.sim_pwm_duty_u16(in2) == 65535
    assert ms.sim_pwm_duty_u16(in1) == 65535 - 16383
    act.drive(-1000)
    assert (ms.sim_pwm_duty_u16(in1), ms.sim_pwm_duty_u16(in2)) == (0, 65535)
    act.drive(1000)
    assert (ms.sim_pwm_duty_u16(in1), ms.sim_pwm_duty_u16(in2)) == (65535, 0)
    act.off()
    assert (ms.sim_pwm_duty_u16(in1), ms.sim_pwm_duty_u16(in2)) == (0, 0)
    assert act.overloaded() is False  # no sense output on this driver


# --- the HAL: inputs, outputs, services --------------------------------------------


def test_buttons_and_home_switch_wiring(hal_mod):
    hal, _s, _m = _build(hal_mod, esp32_devkitc)
    go, stop, home = 32, 33, 13
    for pin in (go, stop, home):
        assert ms.sim_pin(pin).pull == ms.Pin.PULL_UP
    # GO: normally-open to GND.
    ms.sim_set_input(go, None)
    assert hal.go.pressed() is False
    ms.sim_set_input(go, 0)
    assert hal.go.pressed() is True
    # STOP: normally-closed to GND; contact closed = not pressed ...
    ms.sim_set_input(stop, 0)
    assert hal.stop.pressed() is False
    # ... and open, a cut wire or an unplugged button floats high = pressed.
    ms.sim_set_input(stop, None)
    assert hal.stop.pressed() is True
    # HOME: contact closed (pin low) = at home; a cut wire = not at home.
    ms.sim_set_input(home, 0)
    assert hal.home.closed() is True
    ms.sim_set_input(home, None)
    assert hal.home.closed() is False
    assert hal.grip is None  # no grip_pin in the shipped board file


def test_a_dead_man_grip_is_a_pulled_up_contact_and_an_open_wire_is_released(hal_mod):
    import types

    grip = 14
    board = types.SimpleNamespace(BOARD=dict(esp32_devkitc.BOARD, grip_pin=grip))
    hal, _s, _m = _build(hal_mod, board)
    assert ms.sim_pin(grip).pull == ms.Pin.PULL_UP
    ms.sim_set_input(grip, 0)  # held: the contact pulls the pin to GND
    assert hal.grip.pressed() is True
    ms.sim_set_input(grip, None)  # let go, or the wire cut
    assert hal.grip.pressed() is False


def test_indicator(hal_mod):
    hal, _s, _m = _build(hal_mod, esp32_devkitc)
    hal.indicator.set(True, False)
    assert (ms.sim_level(18), ms.sim_level(19)) == (1, 0)
    hal.indicator.set(False, True)
    assert (ms.sim_level(18), ms.sim_level(19)) == (0, 1)


def test_clock_uses_the_simulated_ticks(hal_mod):
    hal, _s, _m = _build(hal_mod, esp32_devkitc)
    ms.sim_set_ticks(lambda: (1 << 30) - 5)
    assert hal.clock.ticks_ms() == (1 << 30) - 5


def test_watchdog_only_starts_when_asked(hal_mod):
    hal, _s, _m = _build(hal_mod, esp32_devkitc)
    now = [0]
    ms.sim_set_ticks(lambda: now[0])
    hal.wdt.feed()  # harmless before the start
    assert ms.sim_wdt() is None
    assert hal.wdt.started is False
    hal.wdt.start_watchdog()
    wdt = ms.sim_wdt()
    assert wdt is not None and wdt.timeout == esp32_devkitc.BOARD["wdt_timeout_ms"] == 500
    hal.wdt.start_watchdog()  # idempotent
    assert ms.sim_wdt() is wdt
    now[0] = 450
    hal.wdt.feed()
    assert wdt.feeds == 1
    now[0] = 900
    ms.sim_check_wdt()  # fed 450 ms ago: fine
    now[0] = 1000
    with pytest.raises(SystemExit) as info:
        ms.sim_check_wdt()
    assert info.value.cause == ms.WDT_RESET
    assert ms.reset_cause() == ms.WDT_RESET


def test_watchdog_timeout_from_board(hal_mod):
    ms.sim_clear("esp32s3")
    board = copy.deepcopy(esp32_s3_devkitc.BOARD)
    board["wdt_timeout_ms"] = 2500
    _attach_imu()
    hal = hal_mod.build(board, imu_sleep_ms=_no_sleep)
    hal.wdt.start_watchdog()
    assert ms.sim_wdt().timeout == 2500


def test_fs_contract(hal_mod, tmp_path):
    fs = hal_mod.Fs(str(tmp_path))
    assert fs.read_bytes("settings.json") is None
    fs.write_bytes("settings.new", b"one")
    fs.write_bytes("settings.json", b"old")
    fs.rename("settings.new", "settings.json")  # replaces
    assert fs.read_bytes("settings.json") == b"one"
    fs.write_bytes("big", (b"ab", b"cd", b"ef"))  # chunks, one after the other
    fs.patch_bytes("big", 1, b"XY")
    assert fs.read_bytes("big") == b"aXYdef"
    assert fs.read_bytes("settings.new") is None
    fs.remove("settings.json")
    fs.remove("settings.json")  # missing: no error
    assert fs.read_bytes("settings.json") is None
    os.mkdir(tmp_path / "adir")
    with pytest.raises(OSError):  # exists but unreadable: not "missing"
        fs.read_bytes("adir")


def test_link_reads_bytes_without_blocking(hal_mod):
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as stdin:
            out = types.SimpleNamespace(buffer=io.BytesIO())
            link = hal_mod.UsbSerialLink(stdin=stdin, stdout=out)
            assert link.read_byte() == -1
            os.write(write_fd, b"{\x03\xff")
            assert [link.read_byte() for _ in range(4)] == [0x7B, 3, 0xFF, -1]
            link.write(b'{"ok": true}\n')
            link.write("text\n")
            assert out.buffer.getvalue() == b'{"ok": true}\ntext\n'
    finally:
        os.close(write_fd)


def test_link_without_a_pollable_stdin_reads_nothing(hal_mod):
    link = hal_mod.UsbSerialLink(stdin=object())
    assert link.read_byte() == -1
    assert link.read_byte() == -1


def test_console_ctrl_c_policy(hal_mod, monkeypatch):
    calls = []
    fake = types.ModuleType("micropython")
    fake.kbd_intr = calls.append
    fake.const = lambda v: v
    monkeypatch.setitem(sys.modules, "micropython", fake)
    console = hal_mod.Console()
    console.allow_interrupt(False)
    assert console.interrupt_allowed is False
    console.allow_interrupt(True)
    assert calls == [-1, 3]


def test_build_without_imu_leaves_drive_off(hal_mod):
    ms.sim_clear("esp32")
    with pytest.raises(hal_mod.BootError) as info:
        hal_mod.build(esp32_devkitc, imu_sleep_ms=_no_sleep)
    assert info.value.code == "imu_not_found"
    assert "0x68" in info.value.message
    assert ms.sim_pin(27).out == 0
    assert (ms.sim_pwm_duty_u16(25), ms.sim_pwm_duty_u16(26)) == (0, 0)


@pytest.mark.parametrize("fault", ["absent", "who_am_i"])
def test_build_allowing_a_missing_imu_builds_the_rest(hal_mod, fault):
    ms.sim_clear("esp32")
    if fault == "who_am_i":
        _source, model = _attach_imu()
        model.regs[0x75] = 0x70  # an MPU-6500 sold as a 6050
    hal = hal_mod.build(esp32_devkitc, imu_sleep_ms=_no_sleep, allow_missing_imu=True)
    ((code, message),) = hal.boot_errors
    assert code == "imu_not_found"
    assert "0x68" in message
    assert isinstance(hal.imu, hal_mod.MissingImu)
    assert ms.sim_pin(27).out == 0  # drive off
    out = [7] * 6
    for _ in range(40):
        assert hal.imu.read(out) is False  # no sample: the loop sees the angle lost
    assert out == [7] * 6  # nothing written
    # The rest is the normal HAL.
    hal.actuator.drive(-200)
    assert ms.sim_pin(27).out == 1 and ms.sim_pwm_duty_u16(26) > 0
    ms.sim_set_input(13, 0)
    assert hal.home.closed() is True


def test_build_with_the_imu_found_reports_no_boot_errors(hal_mod):
    hal, _source, _model = _build(hal_mod, esp32_devkitc, allow_missing_imu=True)
    assert hal.boot_errors == []
    assert not isinstance(hal.imu, hal_mod.MissingImu)


def test_build_with_missing_key(hal_mod):
    ms.sim_clear("esp32")
    board = copy.deepcopy(esp32_devkitc.BOARD)
    del board["stop_pin"]
    _attach_imu()
    with pytest.raises(hal_mod.BootError) as info:
        hal_mod.build(board, imu_sleep_ms=_no_sleep)
    assert info.value.code == "board_invalid"
    assert "stop_pin" in info.value.message
    assert ms.sim_pin(27).out == 0


# --- main.py ----------------------------------------------------------------------


@pytest.fixture
def boot(hal_mod, monkeypatch, capsys):
    """Run firmware/start.py as the boot loader does; returns (run-calls, boot_error events)."""
    import invtable.boards
    import invtable.boards.validate
    import invtable.firmware

    def start(board_module, *, imu=True, app=True, run=None, table=None):
        """``table``: a pin_table.PinTable wired to the fresh simulated board
        (its IMU on the bus if ``imu``)."""
        ms.sim_clear(board_module.BOARD["chip"] if board_module else "esp32")
        if table is not None:
            table.wire(imu)
            imu = False
        calls = []
        monkeypatch.setitem(sys.modules, "board", board_module)  # None: ImportError
        monkeypatch.setitem(sys.modules, "firmware", invtable.firmware)
        monkeypatch.setitem(sys.modules, "firmware.esp32_hal", hal_mod)
        monkeypatch.setitem(sys.modules, "boards", invtable.boards)
        monkeypatch.setitem(sys.modules, "boards.validate", invtable.boards.validate)
        app_mod = None
        if app:
            app_mod = types.ModuleType("firmware.app")
            app_mod.run = run or (lambda hal, board, reset_fault=None: calls.append((hal, board)))
        monkeypatch.setitem(sys.modules, "firmware.app", app_mod)
        monkeypatch.setattr(hal_mod, "make_imu", _patched_make_imu(hal_mod))
        if imu and board_module is not None:
            cfg = board_module.BOARD["imu"]
            _attach_imu(cfg["i2c_id"], cfg["addr"])
        # The start-up the boot loader (main.py) runs once the slot checked out.
        supervisor = runpy.run_path(str(FIRMWARE / "start.py"), run_name="firmware.start")["main"]()
        if supervisor is not None:
            supervisor.run()
        lines = capsys.readouterr().out.splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        return calls, events

    return start


def _patched_make_imu(hal_mod):
    original = hal_mod.make_imu

    def make_imu(cfg, sleep_ms=None):
        return original(cfg, _no_sleep)

    return make_imu


def _board_module(board):
    module = types.ModuleType("board")
    module.BOARD = board
    return module


def test_main_hands_hal_and_board_to_the_app(boot):
    calls, events = boot(esp32_devkitc)
    assert events == []
    ((hal, board),) = calls
    assert board == esp32_devkitc.BOARD
    assert hal.actuator.command == 0
    assert ms.sim_pin(27).out == 0  # the app returned: drive off


def test_main_reports_a_missing_board_file(boot):
    calls, events = boot(None)
    assert calls == []
    assert events[0]["event"] == "boot_error"
    assert events[0]["code"] == "board_missing"


def test_main_reports_a_missing_imu_and_still_runs_the_app(boot):
    calls, events = boot(esp32_devkitc, imu=False)
    (event,) = events
    assert event["code"] == "imu_not_found"
    assert "0x68" in event["message"]
    # The rest of the HAL is built and handed to the app, with an IMU whose
    # every read fails as a lost sensor's would.
    ((hal, board),) = calls
    assert board == esp32_devkitc.BOARD
    assert hal.imu.read([0] * 6) is False
    assert ms.sim_pin(27).out == 0  # the app returned: drive off
    assert ms.sim_level(25) == 0 and ms.sim_level(26) == 0


# main.py with the real app loop (or the last-resort loop) on a simulated
# table behind the pins: firmware.app.run and firmware.last_resort.run are
# given the simulated time (sleeping runs the physics) and a tick count.

RECOVERY_DRIVE = esp32_devkitc.BOARD["recovery_speed_mdeg_s"] * 1000 // esp32_devkitc.BOARD[
    "actuator_speed_mdeg_s"
]  # permille
# The app's blind return scales the recovery speed by the actuator speed
# commissioning measured (the fixtures store that calibration), not the board
# file's nominal one; the last-resort loop, without an App, uses the board file.
BLIND_DRIVE = recovery_permille(esp32_devkitc.BOARD)


@pytest.fixture
def table_boot(boot, monkeypatch, tmp_path):
    """main.py on a PinTable with the real app; returns (table, boot_errors, loop)
    where loop holds the hal the last-resort loop ran on (if it ran)."""
    monkeypatch.chdir(tmp_path)  # the HAL's Fs("") is the working directory

    def start(start_angle_deg=None, *, imu=True, app_fails=False, ticks=2600):
        import invtable.firmware.esp32_hal as hal_mod

        commission_flash(hal_mod.Fs(str(tmp_path)), esp32_devkitc.BOARD)
        table = PinTable(esp32_devkitc.BOARD, start_angle_deg=start_angle_deg)
        sim_time = SimTime(table)
        if app_fails:
            # The App cannot be built: the heap is full (an ESP32 holds most
            # of its heap after a full boot) while the log loads.
            def no_memory(fs):
                raise MemoryError("memory allocation failed, allocating 4096 bytes")

            monkeypatch.setattr(app_module, "SessionLog", no_memory)

        def run(hal, board, reset_fault=None):
            return app_module.run(
                hal, board, reset_fault=reset_fault, time_module=sim_time, ticks=ticks
            )

        loop = {}
        original = last_resort_module.run

        def last_resort_run(hal, board):
            loop["hal"] = hal
            return original(hal, board, time_module=sim_time, ticks=ticks)

        monkeypatch.setattr(last_resort_module, "run", last_resort_run)
        _calls, events = boot(esp32_devkitc, imu=imu, run=run, table=table)
        errors = [e for e in events if e.get("event") == "boot_error"]
        return table, errors, loop

    return start


def _until_home(trace):
    """Index of the first trace sample with the home switch closed (or None)."""
    for i, sample in enumerate(trace):
        if sample[4]:
            return i
    return None


def test_main_without_imu_inverted_drives_blind_to_the_home_switch(table_boot):
    # The blind return is slow (the recovery speed, lifting a rider): 90 s.
    table, errors, loop = table_boot(5.0, imu=False, ticks=4500)
    assert [e["code"] for e in errors] == ["imu_not_found"]
    assert "0x68" in errors[0]["message"]
    assert loop == {}  # the app ran, not the last resort
    wdt = ms.sim_wdt()
    assert wdt is not None and wdt.feeds > 0  # started (and never went hungry)
    trace = table.trace
    drives = [d for _t, _a, d, _b, _h in trace]
    assert max(drives) <= 0  # never towards inversion
    assert min(drives) >= -BLIND_DRIVE  # blind: at the recovery speed at most
    home = _until_home(trace)
    assert home is not None, "the home switch never closed"
    assert all(d < 0 for _t, _a, d, _b, _h in trace[50:home])  # moving home all the way
    after = trace[home + 25 :]  # half a second after the switch closed
    assert after and all(d == 0 for _t, _a, d, _b, _h in after)  # then drive off
    assert all(h for *_rest, h in after)  # and it stays at home
    assert table.sim.physics.angle_deg < -57.0
    # The alarm sounds on the way and goes on at home (1 Hz).
    assert any(b for _t, _a, _d, b, _h in trace[:home])
    assert any(b for _t, _a, _d, b, _h in after) and not all(b for _t, _a, _d, b, _h in after)
    assert ms.sim_pin(27).out == 0  # bridge disabled at the end


def test_main_without_imu_at_home_does_not_move_and_sounds_the_alarm(table_boot):
    table, errors, _loop = table_boot(None, imu=False, ticks=300)
    assert [e["code"] for e in errors] == ["imu_not_found"]
    assert ms.sim_wdt() is not None
    trace = table.trace
    assert all(d == 0 for _t, _a, d, _b, _h in trace)
    assert all(h for *_rest, h in trace)
    start = trace[0][1]
    assert all(abs(a - start) < 0.05 for _t, a, _d, _b, _h in trace)
    assert any(b for _t, _a, _d, b, _h in trace)
    assert ms.sim_pin(27).out == 0


def test_main_app_that_cannot_be_built_runs_the_last_resort_home(table_boot):
    table, errors, loop = table_boot(10.0, app_fails=True)
    assert [e["code"] for e in errors] == ["app_crashed"]
    assert "MemoryError" in errors[0]["message"]
    hal = loop["hal"]
    wdt = ms.sim_wdt()
    assert wdt is not None and wdt.feeds > 0
    trace = table.trace
    home = _until_home(trace)
    assert home is not None, "the home switch never closed"
    drives = [d for _t, _a, d, _b, _h in trace]
    assert all(d == -RECOVERY_DRIVE for d in drives[:home])  # slowly, open loop
    assert all(d == 0 for d in drives[home + 2 :])  # off at the switch
    assert all(b for _t, _a, _d, b, _h in trace)  # the alarm never stops
    assert hal.console.interrupt_allowed is True  # the REPL: only now, at home
    assert ms.sim_pin(27).out == 0


def test_main_app_that_cannot_be_built_at_home_does_not_move(table_boot):
    table, errors, loop = table_boot(None, app_fails=True, ticks=100)
    assert [e["code"] for e in errors] == ["app_crashed"]
    assert all(d == 0 for _t, _a, d, _b, _h in table.trace)
    assert all(b for _t, _a, _d, b, _h in table.trace)
    assert ms.sim_wdt() is not None
    assert loop["hal"].console.interrupt_allowed is True


def test_main_last_resort_that_fails_too_leaves_the_drive_off(boot, monkeypatch):
    def run(hal, board, reset_fault=None):
        hal.actuator.drive(300)
        raise RuntimeError("app broke")

    def last_resort_run(hal, board):
        hal.actuator.drive(-200)
        raise RuntimeError("so did this")

    monkeypatch.setattr(last_resort_module, "run", last_resort_run)
    _calls, events = boot(esp32_devkitc, run=run)
    assert [e["code"] for e in events] == ["app_crashed", "last_resort_crashed"]
    assert "so did this" in events[1]["message"]
    assert ms.sim_pin(27).out == 0
    assert ms.sim_level(25) == 0 and ms.sim_level(26) == 0


def test_main_rejects_an_invalid_board_before_touching_pins(boot):
    board = copy.deepcopy(esp32_devkitc.BOARD)
    board["actuator"]["pwm_fwd"] = 12
    calls, events = boot(_board_module(board))
    assert calls == []
    (event,) = events
    assert event["code"] == "board_invalid"
    assert "strapping" in event["message"]
    assert ms.sim_pin(27).out == 0  # motor pins forced low with plain GPIO
    assert ms.sim_pin(12).mode == ms.Pin.OUT and ms.sim_pin(12).out == 0


def test_main_reports_a_missing_app(boot):
    calls, events = boot(esp32_s3_devkitc, app=False)
    (event,) = events
    assert event["code"] == "app_missing"
    assert (ms.sim_pwm_duty_u16(4), ms.sim_pwm_duty_u16(5)) in ((0, 0), (None, None))
    assert ms.sim_level(4) == 0 and ms.sim_level(5) == 0


def test_boot_py_touches_no_pins(sim):
    runpy.run_path(str(FIRMWARE / "boot.py"), run_name="__main__")
    assert all(state.mode == -1 for state in ms._world.pins.values())


# --- the same code under real MicroPython --------------------------------------------


def test_hal_runs_allocation_free_under_micropython(micropython):
    code = textwrap.dedent(
        """
        import gc, sys
        from invtable.hal_sim import machine_sim as ms
        sys.modules["machine"] = ms
        from invtable.hal_sim.mpu6050_model import MPU6050Model
        from invtable.firmware import esp32_hal
        from invtable.boards import esp32_devkitc, esp32_s3_devkitc
        from invtable.boards.validate import validate_board

        class Source:
            def __init__(self):
                self.v = [-500, 20, 866, 1500, -3000, 7]
            def read(self, out):
                v = self.v
                for i in range(6):
                    out[i] = v[i]

        def nosleep(ms_):
            pass

        def probe(fn, n=200):
            for _ in range(3):
                fn()
            gc.collect()
            gc.disable()
            before = gc.mem_alloc()
            for _ in range(n):
                fn()
            after = gc.mem_alloc()
            gc.enable()
            return after - before

        for mod, chip in ((esp32_devkitc, "esp32"), (esp32_s3_devkitc, "esp32s3")):
            ms.sim_clear(chip)
            ms.sim_i2c_bus(0).attach(0x68, MPU6050Model(Source()))
            hal = esp32_hal.build(mod, imu_sleep_ms=nosleep)
            out = [0] * 6
            hal.imu.read(out)
            print("valid_%s=%r" % (chip, validate_board(mod)))
            print("read_%s=%r" % (chip, out))
            hal.wdt.start_watchdog()
            act = hal.actuator

            def tick():
                hal.imu.read(out)
                hal.go.pressed()
                hal.stop.pressed()
                hal.home.closed()
                act.overloaded()
                act.drive(-400)
                act.drive(0)
                act.drive(700)
                hal.indicator.set(True, False)
                hal.clock.ticks_ms()
                hal.wdt.feed()

            print("heap_%s=%d" % (chip, probe(tick)))
            act.off()
        """
    )
    out = micropython(code).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert values["valid_esp32"] == "[]"
    assert values["valid_esp32s3"] == "[]"
    read = [int(v) for v in values["read_esp32"].strip("[]").split(",")]
    source = [-500, 20, 866, 1500, -3000, 7]
    assert all(abs(r - s) <= 1 for r, s in zip(read[:3], source[:3], strict=True))
    assert all(abs(r - s) <= 16 for r, s in zip(read[3:], source[3:], strict=True))
    assert values["heap_esp32"] == "0", out
    assert values["heap_esp32s3"] == "0", out


def test_ctrl_c_at_home_keeps_the_started_watchdog_fed_for_maintenance(boot):
    # The app loop started the watchdog, then Ctrl-C (only allowed at HOME)
    # dropped to the REPL: a timer must keep feeding it, or the board would
    # reset under mpremote; and the drive must be off.
    def run(hal, board, reset_fault=None):
        hal.wdt.start_watchdog()
        hal.actuator.drive(300)
        raise KeyboardInterrupt

    calls, events = boot(esp32_devkitc, run=run)
    assert events == []
    wdt = ms.sim_wdt()
    assert wdt is not None
    (timer,) = [t for t in ms.sim_timers() if t.id == 0]  # esp32_hal.MAINTENANCE_TIMER_ID
    assert timer.mode == ms.Timer.PERIODIC and timer.period < wdt.timeout
    feeds = wdt.feeds
    ms.sim_fire_timers()
    assert wdt.feeds == feeds + 1
    assert ms.sim_pin(27).out == 0  # bridge disabled
    assert ms.sim_level(25) == 0 and ms.sim_level(26) == 0


def test_ctrl_c_without_a_started_watchdog_starts_no_timer(boot):
    def run(hal, board, reset_fault=None):
        raise KeyboardInterrupt

    boot(esp32_devkitc, run=run)
    assert ms.sim_wdt() is None
    assert [t for t in ms.sim_timers() if t.callback is not None] == []


def test_missing_imu_allocates_nothing_under_micropython(micropython):
    # A raising read cannot allocate nothing under MicroPython (a new OSError,
    # or traceback entries appended to a kept one), so MissingImu returns False.
    code = textwrap.dedent(
        """
        import gc, sys
        from invtable.hal_sim import machine_sim as ms
        sys.modules["machine"] = ms
        from invtable.firmware import esp32_hal

        imu = esp32_hal.MissingImu("MPU-6050 not found at I2C address 0x68")
        out = [0] * 6
        for _ in range(50):
            imu.read(out)

        def reads(n, fn):
            gc.collect()
            gc.disable()
            before = gc.mem_alloc()
            for _ in range(n):
                fn(out)
            used = gc.mem_alloc() - before
            gc.enable()
            return used

        def nothing(out):
            pass

        print("bytes=%d" % (reads(320, imu.read) - reads(320, nothing)))
        print("read=%r" % (imu.read(out),))
        """
    )
    out = micropython(code).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert values["bytes"] == "0", out
    assert values["read"] == "False", out


_MPY_MAIN = """
import sys
sys.path.append("lib/testlib")  # relative to the root of the mounts
from invtable.hal_sim import machine_sim as ms
sys.modules["machine"] = ms
import invtable.firmware
from invtable.firmware import esp32_hal, last_resort
from invtable.firmware import app as real_app
from invtable.boards import esp32_devkitc
import invtable.boards
from invtable.boards import validate
from pin_table import PinTable, SimTime

BOARD = esp32_devkitc.BOARD
with open("calib.json", "wb") as f:
    f.write(CALIB)
ms.sim_clear("esp32")
table = PinTable(BOARD, start_angle_deg=START_DEG)
table.wire(imu=False)
sim_time = SimTime(table)


class AppModule:
    # firmware.app as main.py sees it: the real loop, on the simulated time.
    def run(self, hal, board, reset_fault=None):
        return real_app.run(hal, board, reset_fault=reset_fault, time_module=sim_time,
                            ticks=TICKS)


sys.modules["board"] = esp32_devkitc
sys.modules["firmware"] = invtable.firmware
sys.modules["firmware.esp32_hal"] = esp32_hal
sys.modules["firmware.app"] = AppModule()
sys.modules["boards"] = invtable.boards
sys.modules["boards.validate"] = validate
with open("lib/invtable/firmware/start.py") as f:
    source = f.read()
exec(source + "\\nmain().run()\\n", {"__name__": "firmware.start"})
trace = table.trace
home = None
for i in range(len(trace)):
    if trace[i][4]:
        home = i
        break
print("samples=%d" % len(trace))
print("home_at=%r" % home)
print("max_drive=%d" % max(s[2] for s in trace))
print("min_drive=%d" % min(s[2] for s in trace))
print("drive_after_home=%r" % sorted(set(s[2] for s in trace[home + 25:])) if home else "")
print("beeps=%d" % sum(s[3] for s in trace))
print("final_deg=%d" % int(table.sim.physics.angle_deg))
print("wdt_started=%r" % (ms.sim_wdt() is not None))
print("enable=%d" % ms.sim_pin(27).out)
"""


def test_main_without_imu_drives_blind_home_under_micropython(micropython, tmp_path):
    """main.py, the ESP32 HAL and the app loop under real MicroPython, with no
    MPU-6050 on the simulated bus and the table off its home switch."""
    import shutil

    from invtable.firmware.calibration import CALIB_FILE
    from invtable.hal_sim.flash import SimFlash
    from invtable.host import micropython as mpy

    assert CALIB_FILE == "calib.json"
    calib = commission_flash(SimFlash(), esp32_devkitc.BOARD).read_bytes(CALIB_FILE)
    lib = tmp_path / "testlib"
    lib.mkdir()
    shutil.copy(Path(__file__).parent / "pin_table.py", lib / "pin_table.py")
    code = f"CALIB = {calib!r}\nSTART_DEG = 5.0\nTICKS = 4500\n" + _MPY_MAIN
    proc = micropython(code, mounts=[*mpy.package_mounts(), (lib, "/lib/testlib")], timeout_s=300)
    out = proc.stdout
    lines = out.splitlines()
    errors = [json.loads(ln) for ln in lines if ln.startswith('{"event": "boot_error"')]
    assert [e["code"] for e in errors] == ["imu_not_found"], out
    values = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("{"))
    assert values["home_at"] != "None", out
    assert int(values["max_drive"]) <= 0 < -int(values["min_drive"]) <= BLIND_DRIVE, out
    assert values["drive_after_home"] == "[0]", out
    assert int(values["beeps"]) > 0, out
    assert int(values["final_deg"]) <= -57, out
    assert values["wdt_started"] == "True", out
    assert values["enable"] == "0", out
