"""Simulated worlds that differ from the board file, for property tests: the
table that is really there (hal_sim/world.py), drawn by hypothesis."""

from hypothesis import strategies as st

from invtable.boards.esp32_devkitc import BOARD
from invtable.hal_sim.world import World

AXES = ("+x", "-x", "+y", "-y", "+z", "-z")


def world(**keys):
    return World.from_dict(keys, BOARD)


def mountings():
    """All 24 right-handed mountings as (along, normal)."""
    return [(a, n) for a in AXES for n in AXES if a[1] != n[1]]


@st.composite
def worlds(draw):
    """Actuator 4-16 deg/s with 50-400 ms lag, a 40-160 kg rider, home at
    -70..-45 deg, the IMU in any mounting and up to 8 deg off."""
    along, normal = draw(st.sampled_from(mountings()))
    return world(
        actuator_speed_deg_s=draw(st.floats(4, 16)),
        actuator_lag_ms=draw(st.floats(50, 400)),
        rider_kg=draw(st.floats(40, 160)),
        home_angle_deg=draw(st.floats(-70, -45)),
        imu={"along": along, "normal": normal, "offset_deg": draw(st.floats(-8, 8))},
    )
