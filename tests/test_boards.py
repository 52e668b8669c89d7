"""Board files and their validator (boards/validate.py, boards/chips.py)."""

from __future__ import annotations

import copy

import pytest

from invtable.boards import chips, esp32_devkitc, esp32_s3_devkitc
from invtable.boards.validate import validate_board

BOARDS = [esp32_devkitc, esp32_s3_devkitc]


def _bad(board_module, edit):
    board = copy.deepcopy(board_module.BOARD)
    edit(board)
    return validate_board(board)


def _has(problems, *words):
    return any(all(w in p for w in words) for p in problems)


@pytest.mark.parametrize("module", BOARDS, ids=lambda m: m.BOARD["name"])
def test_shipped_boards_are_valid(module):
    assert validate_board(module.BOARD) == []
    assert validate_board(module) == []  # the module itself is accepted too


def test_board_name_matches_file():
    for module in BOARDS:
        assert module.BOARD["name"] == module.__name__.rsplit(".", 1)[1]


def test_chip_tables_are_consistent():
    for name, chip in chips.CHIPS.items():
        gpio = set(chip["gpio"])
        for key in ("reserved", "octal_psram", "strapping", "uart0", "input_only", "adc1"):
            assert set(chip[key]) <= gpio, (name, key)
    esp32 = chips.CHIPS["esp32"]
    assert set(esp32["input_only"]) == set(range(34, 40))
    assert set(range(6, 12)) <= set(esp32["reserved"])
    assert set(esp32["strapping"]) == {0, 2, 5, 12, 15}
    s3 = chips.CHIPS["esp32s3"]
    assert set(s3["strapping"]) == {0, 3, 45, 46}
    assert {19, 20} <= set(s3["reserved"])
    assert set(range(26, 33)) <= set(s3["reserved"])
    assert set(s3["octal_psram"]) == set(range(33, 38))


def test_duplicate_pin():
    problems = _bad(esp32_devkitc, lambda b: b.update(go_pin=b["stop_pin"]))
    assert _has(problems, "GPIO33", "used twice")


def test_motor_on_strapping_pin_12():
    problems = _bad(esp32_devkitc, lambda b: b["actuator"].update(pwm_fwd=12))
    assert problems == [
        "actuator.pwm_fwd: GPIO12 is a strapping pin; it glitches at boot and must never "
        "drive the motor"
    ]


def test_motor_on_uart_pin_1():
    problems = _bad(esp32_devkitc, lambda b: b["actuator"].update(enable=1))
    assert _has(problems, "actuator.enable", "GPIO1", "UART0")


def test_motor_on_input_only_pin():
    problems = _bad(esp32_devkitc, lambda b: b["actuator"].update(pwm_rev=35))
    assert _has(problems, "actuator.pwm_rev", "GPIO35", "input-only")


def test_pull_up_input_on_input_only_pin_34():
    problems = _bad(esp32_devkitc, lambda b: b.update(go_pin=34))
    assert _has(problems, "go_pin", "GPIO34", "no internal pull-up")


def test_nc_stop_on_strapping_pin_blocks_boot():
    problems = _bad(esp32_devkitc, lambda b: b.update(stop_pin=0))
    assert _has(problems, "stop_pin", "GPIO0", "strapping")


def test_flash_and_psram_pins_are_refused():
    assert _has(_bad(esp32_devkitc, lambda b: b.update(led_pin=7)), "led_pin", "flash")
    assert _has(_bad(esp32_s3_devkitc, lambda b: b.update(led_pin=35)), "led_pin", "PSRAM")
    # A quad-PSRAM S3 module may use 33..37.
    assert _bad(esp32_s3_devkitc, lambda b: b.update(led_pin=35, octal_psram=False)) == []
    assert _has(_bad(esp32_s3_devkitc, lambda b: b.update(go_pin=19)), "go_pin", "USB")


def test_nonexistent_gpio():
    assert _has(_bad(esp32_devkitc, lambda b: b.update(led_pin=24)), "GPIO24", "does not exist")


def test_sense_must_be_adc1():
    problems = _bad(esp32_devkitc, lambda b: b["actuator"].update(sense_adc=4))
    assert _has(problems, "sense_adc", "ADC1")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("max_speed_mdeg_s", 10001, ("max_speed_mdeg_s", "10001")),
        ("max_speed_mdeg_s", 0, ("max_speed_mdeg_s",)),
        ("max_speed_mdeg_s", 5000.0, ("max_speed_mdeg_s", "integer")),
        ("max_accel_mdeg_s2", 0, ("max_accel_mdeg_s2",)),
        ("home_angle_mdeg", 0, ("home_angle_mdeg",)),
        ("home_angle_mdeg", -90000, ("home_angle_mdeg",)),
        ("max_angle_mdeg", 90001, ("max_angle_mdeg", "90001")),
        ("max_angle_mdeg", 0, ("max_angle_mdeg",)),
        ("actuator_speed_mdeg_s", 9000, ("actuator_speed_mdeg_s", "cannot reach")),
        ("control_hz", 10, ("control_hz",)),
        ("control_hz", 250, ("control_hz",)),
        ("recovery_speed_mdeg_s", 20000, ("recovery_speed_mdeg_s",)),
        ("wdt_timeout_ms", 100, ("wdt_timeout_ms",)),
        ("max_inverted_ms", 3600001, ("max_inverted_ms", "3600000")),
        ("max_inverted_ms", 5000, ("max_inverted_ms",)),
        ("max_daily_inverted_ms", 300000, ("max_daily_inverted_ms", "max_inverted_ms")),
        ("max_daily_inverted_ms", 10 ** 9, ("max_daily_inverted_ms",)),
    ],
)
def test_caps(key, value, words):
    problems = _bad(esp32_devkitc, lambda b: b.update({key: value}))
    assert _has(problems, *words), problems


@pytest.mark.parametrize(("pin", "words"), [
    (34, ("grip_pin", "input-only")),  # no pull-up: an open grip wire would float
    (32, ("GPIO32", "used twice")),  # the GO button's
    (6, ("grip_pin", "flash")),
    (40, ("grip_pin", "does not exist")),
])
def test_a_grip_pin_is_validated_like_the_other_inputs(pin, words):
    problems = _bad(esp32_devkitc, lambda b: b.update({"grip_pin": pin}))
    assert _has(problems, *words), problems


def test_a_grip_on_a_free_pin_with_a_pull_up_is_accepted():
    assert _bad(esp32_devkitc, lambda b: b.update({"grip_pin": 14})) == []
    assert _bad(esp32_devkitc, lambda b: b.update({"grip_pin": None})) == []


def test_missing_cap_is_reported():
    problems = _bad(esp32_devkitc, lambda b: b.pop("max_speed_mdeg_s"))
    assert _has(problems, "max_speed_mdeg_s", "missing")


@pytest.mark.parametrize(
    ("imu", "words"),
    [
        ({"along": "+x", "normal": "+x"}, ("three different axes",)),
        ({"gyro": "y"}, ("imu.gyro", "signed axis")),
        ({"along": "+q"}, ("imu.along", "signed axis")),
        ({"gyro": "-y"}, ("imu.gyro", "'+y'")),  # wrong sign for a right-handed sensor
        ({"normal": "-z", "gyro": "+y"}, ("imu.gyro", "'-y'")),
        ({"addr": 0x50}, ("imu.addr",)),
        ({"i2c_id": 2}, ("imu.i2c_id",)),
        ({"type": "bno055"}, ("imu.type",)),
        ({"freq_hz": 1000000}, ("imu.freq_hz",)),
    ],
)
def test_imu_settings(imu, words):
    problems = _bad(esp32_devkitc, lambda b: b["imu"].update(imu))
    assert _has(problems, *words), problems


def test_every_right_handed_mounting_is_accepted_and_agrees_with_the_sim_imu():
    from invtable.hal_sim.imu import right_handed_gyro

    axes = [s + a for a in "xyz" for s in "+-"]
    checked = 0
    for along in axes:
        for normal in axes:
            if along[1] == normal[1]:
                continue
            gyro = right_handed_gyro(along, normal)
            problems = _bad(
                esp32_devkitc,
                lambda b, a=along, n=normal, g=gyro: b["imu"].update(along=a, normal=n, gyro=g),
            )
            assert problems == [], (along, normal, gyro, problems)
            flipped = ("-" if gyro[0] == "+" else "+") + gyro[1]
            problems = _bad(
                esp32_devkitc,
                lambda b, a=along, n=normal, g=flipped: b["imu"].update(along=a, normal=n, gyro=g),
            )
            assert _has(problems, "imu.gyro"), (along, normal, flipped)
            checked += 1
    assert checked == 24


def test_unknown_driver_and_chip():
    assert _has(_bad(esp32_devkitc, lambda b: b["actuator"].update(driver="l298")), "l298")
    assert _has(_bad(esp32_devkitc, lambda b: b.update(chip="esp8266")), "esp8266", "unknown")


def test_bts7960_pwm_frequency_limit():
    problems = _bad(esp32_devkitc, lambda b: b["actuator"].update(pwm_hz=40000))
    assert _has(problems, "pwm_hz")
    assert _bad(esp32_s3_devkitc, lambda b: b["actuator"].update(pwm_hz=40000)) == []


def test_not_a_dict():
    assert validate_board(None) == ["board: BOARD is not a dict"]
