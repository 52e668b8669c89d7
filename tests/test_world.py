"""The world: simulated hardware that can differ from the board file.

hal_sim/world.py parses and checks world files; the simulator (physics, IMU,
home switch; the scenario runner, `sim serve`, the virtual board) builds the
table the world describes. Each hardware test measures the simulated table,
so a world key that stopped reaching the hardware fails here.
"""

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from invtable.boards.esp32_devkitc import BOARD
from invtable.hal_sim import scenario
from invtable.hal_sim.imu import right_handed_gyro
from invtable.hal_sim.physics import TablePhysics
from invtable.hal_sim.table import SimTable
from invtable.hal_sim.world import World, WorldError
from invtable.host.cli import main

HOME_DEG = BOARD["home_angle_mdeg"] / 1000
AXIS_INDEX = {"x": 0, "y": 1, "z": 2}
SIGNED_AXES = ("+x", "-x", "+y", "-y", "+z", "-z")
PROGRAM = dict(
    angle_mdeg=30000, hold_ms=10000, sets=1, rest_ms=10000, speed_mdeg_s=4000, exit_pause_ms=2000
)
LIMITS = dict(max_angle_mdeg=30000, max_inverted_ms=150000, max_speed_mdeg_s=4000)


def world(**keys):
    return World.from_dict(keys, BOARD)


def error_of(d, board=BOARD):
    with pytest.raises(WorldError) as info:
        World.from_dict(d, board)
    message = str(info.value)
    assert message.startswith("world file: ") and "\n" not in message
    return message


# ------------------------------------------------------------------ parsing
def test_from_board_is_exactly_the_board_file():
    w = World.from_board(BOARD)
    assert w.actuator_speed_mdeg_s == BOARD["actuator_speed_mdeg_s"] == 12000
    assert w.actuator_lag_ms == BOARD["actuator_lag_ms"] == 100
    assert w.rider_kg == 80.0
    assert w.home_angle_mdeg == BOARD["home_angle_mdeg"]
    imu = BOARD["imu"]
    assert (w.imu_along, w.imu_normal, w.imu_gyro) == (imu["along"], imu["normal"], imu["gyro"])
    assert w.imu_offset_mdeg == imu["offset_mdeg"]
    assert World.from_board(BOARD, rider_kg=55).rider_kg == 55.0
    # The board's gyro is kept as given, even where it is not right-handed.
    odd = dict(BOARD, imu=dict(BOARD["imu"], gyro="-y"))
    assert World.from_board(odd).imu_gyro == "-y"
    assert World.from_dict({}, BOARD) == World.from_board(BOARD)


def test_every_key_is_read():
    w = world(
        actuator_speed_deg_s=7.5,
        actuator_lag_ms=350,
        rider_kg=111.5,
        home_angle_deg=-55.25,
        imu={"along": "-y", "normal": "+x", "offset_deg": -2.5},
    )
    assert w.actuator_speed_mdeg_s == 7500
    assert w.actuator_lag_ms == 350
    assert w.rider_kg == 111.5
    assert w.home_angle_mdeg == -55250
    assert (w.imu_along, w.imu_normal, w.imu_offset_mdeg) == ("-y", "+x", -2500)
    assert w.imu_gyro == right_handed_gyro("-y", "+x") == "-z"
    # One imu key alone: the others from the board; the gyro still follows.
    w = world(imu={"normal": "-z"})
    assert (w.imu_along, w.imu_normal, w.imu_gyro) == ("+x", "-z", "-y")
    assert world(imu={"offset_deg": 3}).imu_gyro == BOARD["imu"]["gyro"]


def test_to_dict_is_the_world_file_form_and_round_trips():
    w = world(
        actuator_speed_deg_s=9,
        rider_kg=0,
        home_angle_deg=-58,
        imu={"along": "-x", "offset_deg": 1.5},
    )
    d = w.to_dict()
    assert d == {
        "actuator_speed_deg_s": 9.0,
        "actuator_lag_ms": 100,
        "rider_kg": 0.0,
        "home_angle_deg": -58.0,
        "imu": {"along": "-x", "normal": "+z", "offset_deg": 1.5},
    }
    assert World.from_dict(json.loads(json.dumps(d)), BOARD) == w
    assert World.from_dict(World.from_board(BOARD).to_dict(), BOARD) == World.from_board(BOARD)
    text = w.describe()
    assert "\n" not in text
    for part in ("9 deg/s", "rider 0 kg", "-58 deg", "along -x", "gyro -y", "offset 1.5 deg"):
        assert part in text


@pytest.mark.parametrize(
    "d, expected",
    [
        ({"actuator_speed_deg_s": 70}, "actuator_speed_deg_s must be 0.5..50 deg/s (got 70)"),
        ({"actuator_speed_deg_s": 0.4}, "actuator_speed_deg_s must be 0.5..50 deg/s (got 0.4)"),
        ({"actuator_lag_ms": -1}, "actuator_lag_ms must be 0..2000 ms (got -1)"),
        ({"actuator_lag_ms": 2001}, "actuator_lag_ms must be 0..2000 ms (got 2001)"),
        ({"rider_kg": 251}, "rider_kg must be 0..250 kg (got 251)"),
        ({"rider_kg": -0.5}, "rider_kg must be 0..250 kg (got -0.5)"),
        ({"rider_kg": float("nan")}, "rider_kg must be 0..250 kg (got NaN)"),
        ({"home_angle_deg": -90}, "home_angle_deg must be -89..-10 deg (got -90)"),
        ({"home_angle_deg": -9.5}, "home_angle_deg must be -89..-10 deg (got -9.5)"),
        ({"imu": {"offset_deg": 46}}, "imu.offset_deg must be -45..45 deg (got 46)"),
        ({"imu": {"offset_deg": -45.5}}, "imu.offset_deg must be -45..45 deg (got -45.5)"),
        ({"rider_kg": True}, "rider_kg must be a number (got true)"),
        ({"rider_kg": "80"}, 'rider_kg must be a number (got "80")'),
        ({"actuator_lag_ms": None}, "actuator_lag_ms must be a number (got null)"),
        ({"home_angle_deg": [-60]}, "home_angle_deg must be a number (got [-60])"),
        ({"imu": {"offset_deg": False}}, "imu.offset_deg must be a number (got false)"),
        ({"imu": {"along": "x"}}, 'imu.along must be a signed axis like "+x" or "-z" (got "x")'),
        ({"imu": {"normal": "+w"}}, 'imu.normal must be a signed axis like "+x" or "-z"'),
        ({"imu": {"along": 1}}, "imu.along must be a signed axis"),
        (
            {"imu": {"along": "+z", "normal": "-z"}},
            "imu.along +z and imu.normal -z must be different axes",
        ),
        ({"imu": {"along": "-z"}}, "must be different axes (one of them from the board file)"),
        ({"imu": "+x"}, 'imu must be a JSON object {...} (got "+x")'),
        (
            {"speed": 5},
            'unknown key "speed"; valid keys: actuator_speed_deg_s, actuator_lag_ms, '
            "rider_kg, home_angle_deg, imu",
        ),
        (
            {"imu": {"gyro": "+y"}},
            'unknown key "gyro" in imu; valid keys: along, normal, '
            "offset_deg (the gyro axis follows from along and normal)",
        ),
        ({"imu": {"offset_mdeg": 0}}, 'unknown key "offset_mdeg" in imu'),
    ],
)
def test_bad_values_name_the_key_and_the_rule(d, expected):
    assert expected in error_of(d)


@pytest.mark.parametrize("d", [[], "world", 3, None, [{"rider_kg": 80}]])
def test_a_world_file_must_be_an_object(d):
    assert "must be a JSON object" in error_of(d)


def test_home_must_be_below_the_boards_max_angle():
    low_board = dict(BOARD, max_angle_mdeg=-20000)
    message = error_of({"home_angle_deg": -15}, low_board)
    assert "below the board's max angle -20 deg (got -15)" in message
    assert World.from_dict({"home_angle_deg": -25}, low_board).home_angle_mdeg == -25000


def test_world_error_is_a_value_error():
    assert issubclass(WorldError, ValueError)


def test_all_24_right_handed_mountings_are_accepted_and_read_as_mounted():
    seen = set()
    for along in SIGNED_AXES:
        for normal in SIGNED_AXES:
            if along[1] == normal[1]:
                continue
            w = world(imu={"along": along, "normal": normal})
            gyro = right_handed_gyro(along, normal)
            assert w.imu_gyro == gyro
            assert {along[1], normal[1], gyro[1]} == {"x", "y", "z"}
            # The simulated sensor really is mounted so: decoded with this
            # mounting, its readings give the true angle and rate.
            table = SimTable(BOARD, seed=3, start_angle_deg=20.0, world=w)
            quiet(table)
            table.physics.velocity_deg_s = 2.5
            out = [0] * 6
            table.imu.read(out)
            assert decoded_angle_deg(out, w.imu_mounting()) == pytest.approx(20.0, abs=0.1)
            assert read_axis(out, gyro, 3) == 2500
            seen.add((along, normal))
    assert len(seen) == 24


# --------------------------------------------------- the simulated hardware
def read_axis(out, spec, base):
    """The signed value of axis spec ('+x', '-z', ...) in out[base:base+3]."""
    return (1 if spec[0] == "+" else -1) * out[base + AXIS_INDEX[spec[1]]]


def decoded_angle_deg(out, mounting):
    """The tilt angle as a reader assuming this mounting works it out."""
    f_along = read_axis(out, mounting["along"], 0)
    f_normal = read_axis(out, mounting["normal"], 0)
    return math.degrees(math.atan2(-f_along, f_normal)) - mounting["offset_mdeg"] / 1000


def quiet(table):
    """No noise and no bias: readings are the model's exact values, rounded."""
    imu = table.imu
    imu.accel_noise_mg = imu.gyro_noise_mdeg_s = 0
    imu.accel_bias_mg = [0.0, 0.0, 0.0]
    imu.gyro_bias_mdeg_s = [0.0, 0.0, 0.0]


def steady_speed_deg_s(physics, drive, seconds=3.0):
    for _ in range(int(seconds * 100)):
        physics.step(10, drive)
    return physics.velocity_deg_s


@pytest.mark.parametrize("speed_deg_s", [3.0, 6.5, 20.0])
def test_actuator_speed_is_the_worlds(speed_deg_s):
    w = world(actuator_speed_deg_s=speed_deg_s, rider_kg=0)
    table = SimTable(BOARD, start_angle_deg=-30.0, world=w)
    assert table.physics.full_speed_deg_s == speed_deg_s
    assert steady_speed_deg_s(table.physics, 1000, 2.0) == pytest.approx(speed_deg_s, rel=1e-6)
    assert steady_speed_deg_s(table.physics, -500, 2.0) == pytest.approx(-speed_deg_s / 2, rel=1e-6)
    # The board file's own table for comparison: 12 deg/s.
    board_table = SimTable(BOARD, rider_mass_kg=0.0, start_angle_deg=-30.0)
    assert steady_speed_deg_s(board_table.physics, 1000, 2.0) == pytest.approx(12.0, rel=1e-6)


def time_to_fraction_s(physics, fraction, full_deg_s, dt_ms=10):
    """Time after a full-drive step until the actuator reaches fraction of full speed."""
    t_ms = 0
    while physics.actuator_velocity_deg_s < fraction * full_deg_s:
        physics.step(dt_ms, 1000)
        t_ms += dt_ms
        assert t_ms < 20000
    return t_ms / 1000


@pytest.mark.parametrize("lag_ms", [100, 500, 1500])
def test_actuator_lag_is_the_worlds_time_constant(lag_ms):
    # Slow enough that the torque limit (60 deg/s^2) never caps the response.
    w = world(actuator_speed_deg_s=2.0, actuator_lag_ms=lag_ms, rider_kg=0)
    physics = TablePhysics(BOARD, start_angle_deg=0.0, world=w)
    # First order: 1 - 1/e of the final speed after one time constant.
    t63 = time_to_fraction_s(physics, 1 - math.exp(-1), 2.0)
    assert abs(t63 - lag_ms / 1000) <= 0.015  # one 10 ms step, and float rounding


def test_zero_lag_is_limited_by_torque_only():
    w = world(actuator_speed_deg_s=3.0, actuator_lag_ms=0, rider_kg=0)
    physics = TablePhysics(BOARD, start_angle_deg=0.0, world=w)
    physics.step(10, 1000)
    assert physics.actuator_velocity_deg_s == pytest.approx(0.6)  # 60 deg/s^2 for 10 ms
    assert time_to_fraction_s(physics, 0.999, 3.0) == pytest.approx(0.04, abs=0.011)


def lifting_speed_at_horizontal(table):
    """|speed| of the table going home as it crosses 0 deg, full drive."""
    physics = table.physics
    physics.angle_deg = physics.actuator_deg = 25.0  # room to reach a steady speed
    while physics.angle_deg > 0.0:
        physics.step(10, -1000)
    return -physics.velocity_deg_s


def test_the_worlds_rider_slows_lifting():
    speeds = {}
    for rider in (0, 80, 160):
        speeds[rider] = lifting_speed_at_horizontal(SimTable(BOARD, world=world(rider_kg=rider)))
    # 0.15 slower per 80 kg at horizontal (cos(0.1 deg) ~ 1).
    assert speeds[0] == pytest.approx(12.0, rel=0.002)
    assert speeds[80] == pytest.approx(12.0 * 0.85, rel=0.002)
    assert speeds[160] == pytest.approx(12.0 * 0.70, rel=0.002)
    # A given world brings its rider: SimTable's rider argument is then unused.
    table = SimTable(BOARD, rider_mass_kg=0.0, world=world(rider_kg=160))
    assert table.physics.rider_mass_kg == 160.0


def test_the_rider_can_be_changed_at_run_time():
    table = SimTable(BOARD, world=world(rider_kg=120))
    loaded = lifting_speed_at_horizontal(table)
    table.physics.rider_mass_kg = 0.0  # commissioning: the rider steps off
    empty = lifting_speed_at_horizontal(table)
    table.physics.rider_mass_kg = 120.0
    assert empty == pytest.approx(12.0, rel=0.002)
    assert loaded == pytest.approx(12.0 * (1 - 0.15 * 1.5), rel=0.002)
    assert lifting_speed_at_horizontal(table) == pytest.approx(loaded, rel=1e-4)


def test_home_switch_and_end_stop_sit_where_the_world_says():
    w = world(home_angle_deg=-55)
    table = SimTable(BOARD, world=w)
    physics, home = table.physics, table.home
    assert physics.angle_deg == -55.0  # it starts at rest on the switch
    assert home.closed()
    physics.angle_deg = -55 + 1.49
    assert home.closed()
    physics.angle_deg = -55 + 1.51
    assert not home.closed()
    # The board's table at the same angle: its switch (-60 + 1.5) is open.
    board_table = SimTable(BOARD)
    board_table.physics.angle_deg = -55 + 1.49
    assert not board_table.home.closed()
    # Driving home ends on the low end stop 1 deg below the world's home.
    physics.angle_deg = physics.actuator_deg = -50.0
    steady_speed_deg_s(physics, -1000, 3.0)
    assert physics.angle_deg == -56.0 and physics.current_high
    # The high end stop still follows the board's max angle.
    assert physics.high_stop_deg == BOARD["max_angle_mdeg"] / 1000 + 5.0


def paired_reads(w, angle_deg, rate_deg_s=0.0, reads=1, seed=7):
    """Reads of the board's IMU and of the world's, same seed, same true motion."""
    tables = [
        SimTable(BOARD, seed=seed, start_angle_deg=angle_deg),
        SimTable(BOARD, seed=seed, start_angle_deg=angle_deg, world=w),
    ]
    result = []
    for table in tables:
        table.physics.velocity_deg_s = rate_deg_s
        samples = []
        for _ in range(reads):
            out = [0] * 6
            table.imu.read(out)
            samples.append(out)
        result.append(samples)
    return result


def test_imu_along_minus_x_mirrors_the_along_reading_and_the_gyro():
    w = world(imu={"along": "-x"})
    assert w.imu_gyro == "-y"
    (board_out,), (world_out,) = paired_reads(w, 30.0, rate_deg_s=2.0)
    # Same noise and bias, the gravity term on x mirrored: -500 mg vs +500 mg.
    assert abs((board_out[0] - world_out[0]) - 2 * (-1000 * math.sin(math.radians(30)))) <= 1
    assert abs((board_out[4] - world_out[4]) - 2 * 2000) <= 1  # gyro y: +2 vs -2 deg/s
    assert board_out[2] == world_out[2] and board_out[1] == world_out[1]  # z, y accel
    # Read as the board file says it is mounted, the angle comes out mirrored.
    board_mounting = World.from_board(BOARD).imu_mounting()
    assert decoded_angle_deg(board_out, board_mounting) == pytest.approx(30.0, abs=3.0)
    assert decoded_angle_deg(world_out, board_mounting) == pytest.approx(-30.0, abs=3.0)


def test_imu_offset_shifts_the_accel_angle():
    w = world(imu={"offset_deg": 4.0})
    board_reads, world_reads = paired_reads(w, 10.0, reads=50)
    board_mounting = World.from_board(BOARD).imu_mounting()
    shifts = [
        decoded_angle_deg(b, board_mounting) - decoded_angle_deg(m, board_mounting)
        for b, m in zip(board_reads, world_reads, strict=True)
    ]
    assert sum(shifts) / len(shifts) == pytest.approx(-4.0, abs=0.05)
    # Decoded with its true offset, the world's IMU gives the true angle back.
    table = SimTable(BOARD, start_angle_deg=10.0, world=w)
    quiet(table)
    out = [0] * 6
    table.imu.read(out)
    assert decoded_angle_deg(out, w.imu_mounting()) == pytest.approx(10.0, abs=0.1)
    assert decoded_angle_deg(out, board_mounting) == pytest.approx(14.0, abs=0.1)


# ---------------------------------------------- the default stays bit-identical
DRIVES = (1000, 600, -300, 0, 1000, -1000, 250, -800, 0, 1000, -1000, 500)
# Recorded from the simulator before the world existed (commit 11aaf33):
# physics, IMU and home switch under a scripted drive, every float exact.
HARDWARE_DIGESTS = {
    (0, 80.0): "7d5c5382135e425d",
    (1, 0.0): "66317a5d4db6728a",
    (2, 140.0): "8a3faf39320c5a16",
    (3, 80.0): "0ceaf66394a3667b",
}


def hardware_trace_digest(seed, rider_kg, **kw):
    table = SimTable(BOARD, seed=seed, rider_mass_kg=rider_kg, **kw)
    out = [0] * 6
    lines = []
    for i in range(3000):
        drive = DRIVES[i // 250]
        if drive:
            table.actuator.drive(drive)
        else:
            table.actuator.off()
        table.step(20 if i % 7 else 33)
        table.imu.read(out)
        p = table.physics
        lines.append(
            repr(
                (
                    p.angle_deg,
                    p.velocity_deg_s,
                    p.actuator_deg,
                    p.actuator_velocity_deg_s,
                    p.current_high,
                    table.home.closed(),
                    tuple(out),
                )
            )
        )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@pytest.mark.parametrize("seed, rider_kg", sorted(HARDWARE_DIGESTS))
def test_the_board_files_world_is_bit_identical_to_before(seed, rider_kg):
    expected = HARDWARE_DIGESTS[(seed, rider_kg)]
    assert hardware_trace_digest(seed, rider_kg) == expected
    same = World.from_dict({"rider_kg": rider_kg}, BOARD)
    assert hardware_trace_digest(seed, 0.0, world=same) == expected
    # ...and any world that differs gives another trace.
    other = World.from_dict({"rider_kg": rider_kg, "actuator_lag_ms": 101}, BOARD)
    assert hardware_trace_digest(seed, rider_kg, world=other) != expected


@pytest.mark.parametrize("seed", range(4))
def test_scenario_traces_with_the_board_files_world_are_identical(seed):
    def trace(**kw):
        rows = []
        summary = scenario.run(BOARD, PROGRAM, LIMITS, seed=seed, sink=rows.append, **kw)
        return rows, summary["final_state"]

    default = trace()
    assert trace(world=World.from_board(BOARD)) == default
    assert trace(world=World.from_dict(World.from_board(BOARD).to_dict(), BOARD)) == default
    rows = trace(world=world(actuator_speed_deg_s=11.0))[0]
    assert [r[1] for r in rows] != [r[1] for r in default[0]]  # angle_true differs


def test_scenario_uses_the_worlds_rider():
    sim = scenario.Scenario(BOARD, PROGRAM, LIMITS, rider_mass_kg=50.0, world=world(rider_kg=130))
    assert sim.table.physics.rider_mass_kg == 130.0
    sim = scenario.Scenario(BOARD, PROGRAM, LIMITS, rider_mass_kg=50.0)
    assert sim.table.physics.rider_mass_kg == 50.0


# ---------------------------------------------------------------- the CLIs
def write(tmp_path, content, name="world.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


BAD_FILES = [
    ('{"actuator_speed_deg_s": 70}', "actuator_speed_deg_s must be 0.5..50 deg/s (got 70)"),
    ('{"colour": "red"}', 'unknown key "colour"'),
    ('{"imu": {"along": "+q"}}', "imu.along must be a signed axis"),
    ('{"rider_kg": false}', "rider_kg must be a number (got false)"),
    ("[1, 2]", "must be a JSON object"),
    ("{not json", "is not JSON"),
    (None, "cannot read"),
]


def bad_world_path(tmp_path, content):
    if content is None:
        return str(tmp_path / "missing.json")
    return write(tmp_path, content)


def assert_one_line_usage_error(result, expected):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "'--world'" in errors[0] and expected in errors[0]


@pytest.mark.parametrize("content, expected", BAD_FILES)
@pytest.mark.parametrize("command", [["sim", "run"], ["sim", "serve"], ["sim", "board"]])
def test_bad_world_files_exit_2_with_one_line(tmp_path, command, content, expected):
    path = bad_world_path(tmp_path, content)
    result = CliRunner().invoke(main, [*command, "--world", path])
    assert_one_line_usage_error(result, expected)


def test_sim_run_bad_world_in_a_real_process(tmp_path):
    exe = shutil.which("invtable", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "invtable.host.cli"]
    path = write(tmp_path, {"home_angle_deg": -5})
    proc = subprocess.run(
        [*cmd, "sim", "run", "--world", path], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "home_angle_deg must be -89..-10 deg (got -5)" in proc.stderr


def test_sim_run_json_summary_carries_the_world(tmp_path):
    d = {"actuator_speed_deg_s": 10.5, "rider_kg": 95, "imu": {"offset_deg": 0.5}}
    result = CliRunner().invoke(
        main, ["sim", "run", "--hold", "5", "--sets", "1", "--json", "--world", write(tmp_path, d)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["world"] == World.from_dict(d, BOARD).to_dict()
    assert summary["world"]["actuator_speed_deg_s"] == 10.5
    assert summary["world"]["rider_kg"] == 95.0
    result = CliRunner().invoke(main, ["sim", "run", "--hold", "5", "--sets", "1", "--json"])
    assert json.loads(result.output)["world"] == World.from_board(BOARD).to_dict()


def test_sim_run_world_changes_what_happens(tmp_path):
    """The true table differs: its real speed shows in the trace."""
    args = ["sim", "run", "--hold", "5", "--sets", "1", "--duration", "12", "--event", "1:go"]
    traces = {}
    for name, d in (("board", None), ("slow", {"actuator_speed_deg_s": 3.0})):
        trace = tmp_path / f"{name}.csv"
        extra = ["--world", write(tmp_path, d, f"{name}.json")] if d else []
        result = CliRunner().invoke(main, [*args, "--trace", str(trace), "--json", *extra])
        assert result.exit_code == 0, result.output
        traces[name] = [float(line.split(",")[1]) for line in trace.read_text().splitlines()[1:]]
    # 3 deg/s at full drive cannot follow a 4 deg/s ramp: less distance covered.
    assert max(traces["slow"]) < max(traces["board"]) - 3.0


def test_help_says_what_a_world_is():
    for command in (["sim", "run"], ["sim", "serve"], ["sim", "board"]):
        text = " ".join(CliRunner().invoke(main, [*command, "--help"]).output.split())
        assert "--world FILE.json" in text
        assert "the table that is really there" in text
        assert "[default: exactly the board file]" in text


# ------------------------------------------------------- sim serve, sim board
def test_sim_serve_builds_the_world(tmp_path):
    from invtable.hal_sim.serve import Server, SimBoard

    w = world(home_angle_deg=-50, rider_kg=60)
    sim = SimBoard(BOARD, str(tmp_path / "a"), seed=1, world=w)
    assert sim.table.world == w
    assert sim.table.physics.angle_deg == -50.0
    assert sim.table.physics.rider_mass_kg == 60.0
    assert sim.table.home.closed()
    assert SimBoard(BOARD, str(tmp_path / "b")).table.world == World.from_board(BOARD)
    out = io.StringIO()
    server = Server(
        BOARD,
        state_dir=str(tmp_path / "c"),
        speed=50,
        world=w,
        out=out,
        stdin=io.StringIO("quit\n"),
    )
    assert server.run() == 0
    assert "world: " + w.describe() in out.getvalue()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pty (POSIX)")
def test_sim_serve_world_option_end_to_end(tmp_path):
    exe = shutil.which("invtable", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "invtable.host.cli"]
    path = write(tmp_path, {"home_angle_deg": -52.5})
    proc = subprocess.Popen(
        [*cmd, "sim", "serve", "--world", path, "--speed", "10"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith("/dev/")
        notes = [proc.stdout.readline() for _ in range(2)]
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any("world: " in n and "home switch at -52.5 deg" in n for n in notes), notes


def test_virtual_board_checks_the_world_before_starting():
    from invtable.host.vboard import VirtualBoard

    with pytest.raises(WorldError, match="rider_kg must be 0..250 kg"):
        VirtualBoard("esp32_devkitc", world={"rider_kg": 300})
    vb = VirtualBoard("esp32_devkitc", world={"rider_kg": 100})
    assert vb.world == {"rider_kg": 100}


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")
def test_the_virtual_board_runs_the_world(micropython_setup):
    from invtable.host.vboard import VirtualBoard

    d = {"home_angle_deg": -54, "actuator_speed_deg_s": 8, "imu": {"along": "-x"}}
    script = (
        "import json, machine, _vboard\n"
        "print('WORLD ' + json.dumps(_vboard.world()))\n"
        "home = machine.Pin(13, machine.Pin.IN, machine.Pin.PULL_UP)\n"
        "print('ANGLE', _vboard.table_angle_mdeg(), home.value())\n"
    )
    with VirtualBoard("esp32_devkitc", world=d) as vb:
        proc = subprocess.run(
            [sys.executable, "-m", "mpremote", "connect", vb.port, "exec", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    got = json.loads(next(ln for ln in lines if ln.startswith("WORLD "))[6:])
    assert got == World.from_dict(d, BOARD).to_dict()
    angle = next(ln for ln in lines if ln.startswith("ANGLE")).split()
    assert angle[1:] == ["-54000", "0"]  # at the world's home, the switch closed (low)


# ------------------------------------------------------------- MicroPython
WORLD_CODE = """
import json
from invtable.boards.esp32_devkitc import BOARD
from invtable.hal_sim.table import SimTable
from invtable.hal_sim.world import World, WorldError

def world_checks():
    result = {}
    w = World.from_dict({"actuator_speed_deg_s": 7.5, "actuator_lag_ms": 250, "rider_kg": 99,
                         "home_angle_deg": -57.5,
                         "imu": {"along": "-y", "normal": "+x", "offset_deg": -1.25}}, BOARD)
    result["world"] = w.to_dict()
    result["gyro"] = w.imu_gyro
    result["equal"] = World.from_dict({}, BOARD) == World.from_board(BOARD)
    errors = []
    for bad in ({"rider_kg": True}, {"actuator_speed_deg_s": 70}, {"imu": {"gyro": "+y"}},
                {"a": 1, "b": 2}, [1], {"imu": {"along": "+z"}}):
        try:
            World.from_dict(bad, BOARD)
            errors.append(None)
        except WorldError as error:
            errors.append(str(error))
    result["errors"] = errors
    table = SimTable(BOARD, seed=5, world=w)
    out = [0] * 6
    for i in range(200):
        table.actuator.drive(1000 if i < 120 else -700)
        table.step(20)
    table.imu.read(out)
    result["hardware"] = [table.physics.angle_deg, table.home.closed(), out]
    return result
"""


def test_the_world_is_portable_to_micropython(micropython):
    mark = "WORLD-RESULT "
    proc = micropython(
        textwrap.dedent(WORLD_CODE) + f"\nprint({mark!r} + json.dumps(world_checks()))\n"
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(mark))
    on_micropython = json.loads(line[len(mark) :])
    namespace = {}
    exec(textwrap.dedent(WORLD_CODE), namespace)
    on_cpython = json.loads(json.dumps(namespace["world_checks"]()))
    angle_m = on_micropython["hardware"].pop(0)
    angle_c = on_cpython["hardware"].pop(0)
    assert angle_m == pytest.approx(angle_c, abs=1e-9)
    assert on_micropython == on_cpython
    assert on_cpython["errors"][0] == "world file: rider_kg must be a number (got true)"
    assert None not in on_cpython["errors"]


def test_the_readme_example_world_file_is_valid():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index('    {"actuator_speed_deg_s"')
    text = readme[start : readme.index("}}", start) + 2]
    w = World.from_dict(json.loads(text), BOARD)
    assert (w.rider_kg, w.imu_along, w.imu_gyro) == (110.0, "-x", "-y")
