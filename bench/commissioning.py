"""Commissioning on random simulated worlds: how well it measures, and what
the session then keeps (figures for bench/run.py).

Worlds are drawn as the issue's property test draws them: actuator 4-16
deg/s, lag 50-400 ms, rider 40-160 kg, home -70..-45 deg, any of the 24
right-handed IMU mountings, mounting offset +-8 deg. Each is commissioned by
the firmware's routine (the simulated builder), its measurements compared
with the world's true values, then a 60 deg session runs on it and the
firmware's angle estimate in HOLD is compared with the true angle.
"""

from __future__ import annotations

import random

from invtable.boards.esp32_devkitc import BOARD
from invtable.firmware import commission as steps
from invtable.hal_sim import scenario
from invtable.hal_sim.world import World

WORLDS = 50
WORLD_SEED = 9
SWITCH_TRAVEL_MDEG = 1500  # hal_sim SimHomeSwitch: closes 1.5 deg above the rest angle
AXES = ("+x", "-x", "+y", "-y", "+z", "-z")
SESSION_PROGRAM = dict(
    angle_mdeg=60000, hold_ms=20000, sets=1, rest_ms=10000, speed_mdeg_s=4000, exit_pause_ms=0
)
SESSION_LIMITS = dict(max_angle_mdeg=60000, max_inverted_ms=90000, max_speed_mdeg_s=4000)
# The slowest table of the ranges, with the heaviest rider: the budget's worst case.
SLOWEST = {"actuator_speed_deg_s": 4, "actuator_lag_ms": 400, "rider_kg": 160}
EST = scenario.COLUMNS.index("angle_est_deg")
TRUE = scenario.COLUMNS.index("angle_true_deg")
STATE = scenario.COLUMNS.index("state")


def random_world(rng):
    along = rng.choice(AXES)
    normal = rng.choice([a for a in AXES if a[1] != along[1]])
    return World.from_dict(
        {
            "actuator_speed_deg_s": rng.uniform(4, 16),
            "actuator_lag_ms": rng.uniform(50, 400),
            "rider_kg": rng.uniform(40, 160),
            "home_angle_deg": rng.uniform(-70, -45),
            "imu": {"along": along, "normal": normal, "offset_deg": rng.uniform(-8, 8)},
        },
        BOARD,
    )


def errors(calib, world):
    """Commissioning's error per measured quantity (absolute; lag signed)."""
    edge = world.home_angle_mdeg + SWITCH_TRAVEL_MDEG
    speed = world.actuator_speed_mdeg_s
    return {
        "axes_ok": (calib["imu_along"], calib["imu_normal"], calib["imu_gyro"])
        == (world.imu_along, world.imu_normal, world.imu_gyro),
        "speed_permille": max(
            abs(calib["speed_down_mdeg_s"] - speed), abs(calib["speed_up_mdeg_s"] - speed)
        )
        * 1000
        / speed,
        "lag_ms": calib["lag_ms"] - world.actuator_lag_ms,
        "edge_mdeg": max(abs(calib["home_open_mdeg"] - edge), abs(calib["home_close_mdeg"] - edge)),
    }


def run_worlds(n=WORLDS):
    """Commission n random worlds and run a session on each. Returns the worst errors."""
    rng = random.Random(WORLD_SEED)
    worst = {"axes_ok": 0, "speed_permille": 0.0, "lag_min_ms": 1e9, "lag_max_ms": -1e9,
             "edge_mdeg": 0, "estimate_mdeg": 0.0, "angle_over_cap_deg": -1e9, "worlds": n,
             "failed": []}
    for i in range(n):
        world = random_world(rng)
        try:
            summary = scenario.run(
                BOARD, SESSION_PROGRAM, SESSION_LIMITS, seed=i, world=world, commission=True,
                sink=_HoldError.sink(),
            )
        except Exception as error:  # noqa: BLE001 - a figure, not a test: record it
            worst["failed"].append(f"{world.describe()}: {error}")
            continue
        e = errors(summary["commissioning"]["calibration"], world)
        worst["axes_ok"] += 1 if e["axes_ok"] else 0
        worst["speed_permille"] = max(worst["speed_permille"], e["speed_permille"])
        worst["lag_min_ms"] = min(worst["lag_min_ms"], e["lag_ms"])
        worst["lag_max_ms"] = max(worst["lag_max_ms"], e["lag_ms"])
        worst["edge_mdeg"] = max(worst["edge_mdeg"], e["edge_mdeg"])
        worst["estimate_mdeg"] = max(worst["estimate_mdeg"], _HoldError.worst * 1000)
        over = summary["max_angle_deg"] - SESSION_LIMITS["max_angle_mdeg"] / 1000
        worst["angle_over_cap_deg"] = max(worst["angle_over_cap_deg"], over)
    return worst


class _HoldError:
    """A trace sink keeping the worst |estimate - true| in HOLD."""

    worst = 0.0

    @classmethod
    def sink(cls):
        cls.worst = 0.0

        def keep(row):
            if row[STATE] == "HOLD":
                error = abs(row[EST] - row[TRUE])
                if error > cls.worst:
                    cls.worst = error

        return keep


def slowest_budget_margin_s():
    """Inverted-time budget left on the slowest world (commissioned), seconds."""
    world = World.from_dict(SLOWEST, BOARD)
    # A hold longer than the limit: the return must start early enough.
    program = dict(SESSION_PROGRAM, hold_ms=120000)
    summary = scenario.run(BOARD, program, SESSION_LIMITS, world=world, commission=True)
    return SESSION_LIMITS["max_inverted_ms"] / 1000 - summary["inverted_s"], summary


TOLERANCES = {
    "speed_permille": steps.SPEED_TOLERANCE_PERMILLE,
    "lag_ms": (-steps.LAG_UNDER_MS, steps.LAG_OVER_MS),
    "edge_mdeg": steps.ANGLE_TOLERANCE_MDEG,
    "estimate_mdeg": steps.ESTIMATE_TOLERANCE_MDEG,
}
