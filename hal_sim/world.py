"""The world: the table that is really there (see DESIGN.md, "The world, the
board and the calibration").

The board file is the design; the world is what the simulator builds: the
true actuator speed and lag, the rider's weight, where the home switch really
sits and how the IMU is really mounted. By default it is exactly the board
file (``World.from_board``); a world file (JSON, ``--world FILE.json``) says
where the real table differs (``World.from_dict``). Only hal_sim reads it:
the firmware never does, so a world that differs is what the firmware's
measurements and protections have to cope with.

World file keys, all optional (a missing key means: as the board file says):

    {"actuator_speed_deg_s": 9.5,   no-load table speed at full drive
     "actuator_lag_ms": 250,        time constant of speed behind drive
     "rider_kg": 110,               the rider's weight
     "home_angle_deg": -58,         where the table rests on the home switch
     "imu": {"along": "+x",         sensor axis along the bed, to the head
             "normal": "+z",        sensor axis out of the bed surface
             "offset_deg": 1.5}}    mounting tilt of the sensor on the bed

The gyro axis follows from along and normal (right-handed sensor). Angles in
the world are kept in mdeg like the board file's, rounded to 1 mdeg.

Portable: runs under CPython and MicroPython (the virtual board builds its
world from the same dict).
"""

import json

from .imu import parse_axis, right_handed_gyro

# A board file without actuator_lag_ms: the lag the simulator always modelled.
DEFAULT_ACTUATOR_LAG_MS = 100
DEFAULT_RIDER_KG = 80.0

# (key, low, high, unit) of the world file's numbers, in the file's units.
NUMBERS = (
    ("actuator_speed_deg_s", 0.5, 50, "deg/s"),
    ("actuator_lag_ms", 0, 2000, "ms"),
    ("rider_kg", 0, 250, "kg"),
    ("home_angle_deg", -89, -10, "deg"),
)
OFFSET_RANGE_DEG = (-45, 45)
KEYS = tuple(entry[0] for entry in NUMBERS) + ("imu",)
IMU_KEYS = ("along", "normal", "offset_deg")


class WorldError(ValueError):
    """A world file that cannot be used; the message is one line for people."""


def _fail(text):
    raise WorldError("world file: " + text)


def _shown(value):
    """A value as the world file's author wrote it (JSON), cut short if long."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_keys(d, valid, where):
    """d must be an object with only ``valid`` keys; ``where``: "" or "imu"."""
    if not isinstance(d, dict):
        name = where + " must be" if where else "must be"
        _fail("%s a JSON object {...} (got %s)" % (name, _shown(d)))
    for key in sorted(d):  # sorted: the same first complaint everywhere
        if key not in valid:
            hint = " (the gyro axis follows from along and normal)" if key == "gyro" else ""
            place = " in " + where if where else ""
            _fail(
                "unknown key %s%s; valid keys: %s%s" % (_shown(key), place, ", ".join(valid), hint)
            )


def _number(d, key, low, high, unit, name=None):
    """d[key], checked to be a number (not a bool) within [low, high]."""
    name = name or key
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail("%s must be a number (got %s)" % (name, _shown(value)))
    if not low <= value <= high:  # also refuses NaN
        _fail("%s must be %g..%g %s (got %s)" % (name, low, high, unit, _shown(value)))
    return value


def _mdeg(deg):
    return int(round(deg * 1000))


def _axis(imu, key, board_value):
    if key not in imu:
        return board_value
    value = imu[key]
    try:
        parse_axis(value)
    except ValueError:
        _fail('imu.%s must be a signed axis like "+x" or "-z" (got %s)' % (key, _shown(value)))
    return value


class World:
    """The true values of the simulated hardware (units as the board file's)."""

    def __init__(
        self,
        actuator_speed_mdeg_s,
        actuator_lag_ms,
        rider_kg,
        home_angle_mdeg,
        imu_along,
        imu_normal,
        imu_gyro,
        imu_offset_mdeg=0,
    ):
        self.actuator_speed_mdeg_s = actuator_speed_mdeg_s
        self.actuator_lag_ms = actuator_lag_ms
        self.rider_kg = float(rider_kg)
        self.home_angle_mdeg = home_angle_mdeg
        self.imu_along = imu_along
        self.imu_normal = imu_normal
        self.imu_gyro = imu_gyro
        self.imu_offset_mdeg = imu_offset_mdeg

    @classmethod
    def from_board(cls, board, rider_kg=DEFAULT_RIDER_KG):
        """Exactly what the board file describes (its gyro axis as given)."""
        imu = board["imu"]
        return cls(
            board["actuator_speed_mdeg_s"],
            board.get("actuator_lag_ms", DEFAULT_ACTUATOR_LAG_MS),
            rider_kg,
            board["home_angle_mdeg"],
            imu["along"],
            imu["normal"],
            imu["gyro"],
            imu.get("offset_mdeg", 0),
        )

    @classmethod
    def from_dict(cls, d, board):
        """The world of a world file's dict; missing keys as the board file says.
        Raises WorldError with one line naming the first problem."""
        _check_keys(d, KEYS, "")
        world = cls.from_board(board)
        for key, low, high, unit in NUMBERS:
            if key in d:
                value = _number(d, key, low, high, unit)
                if key == "actuator_speed_deg_s":
                    world.actuator_speed_mdeg_s = _mdeg(value)
                elif key == "actuator_lag_ms":
                    world.actuator_lag_ms = value
                elif key == "rider_kg":
                    world.rider_kg = float(value)
                else:
                    world.home_angle_mdeg = _mdeg(value)
        if "home_angle_deg" in d and world.home_angle_mdeg >= board["max_angle_mdeg"]:
            _fail(
                "home_angle_deg must be below the board's max angle %g deg (got %s)"
                % (board["max_angle_mdeg"] / 1000, _shown(d["home_angle_deg"]))
            )
        if "imu" in d:
            world._set_imu(d["imu"])
        return world

    def _set_imu(self, imu):
        _check_keys(imu, IMU_KEYS, "imu")
        along = _axis(imu, "along", self.imu_along)
        normal = _axis(imu, "normal", self.imu_normal)
        if along[1] == normal[1]:
            _fail(
                "imu.along %s and imu.normal %s must be different axes%s"
                % (
                    along,
                    normal,
                    ""
                    if "along" in imu and "normal" in imu
                    else " (one of them from the board file)",
                )
            )
        if "along" in imu or "normal" in imu:
            self.imu_gyro = right_handed_gyro(along, normal)
        self.imu_along = along
        self.imu_normal = normal
        if "offset_deg" in imu:
            low, high = OFFSET_RANGE_DEG
            offset = _number(imu, "offset_deg", low, high, "deg", "imu.offset_deg")
            self.imu_offset_mdeg = _mdeg(offset)

    def imu_mounting(self):
        """The sensor's true mounting, in the board file's imu form (for SimImu)."""
        return {
            "along": self.imu_along,
            "normal": self.imu_normal,
            "gyro": self.imu_gyro,
            "offset_mdeg": self.imu_offset_mdeg,
        }

    def to_dict(self):
        """The world-file form (every key; the gyro axis follows from along/normal)."""
        return {
            "actuator_speed_deg_s": self.actuator_speed_mdeg_s / 1000,
            "actuator_lag_ms": self.actuator_lag_ms,
            "rider_kg": self.rider_kg,
            "home_angle_deg": self.home_angle_mdeg / 1000,
            "imu": {
                "along": self.imu_along,
                "normal": self.imu_normal,
                "offset_deg": self.imu_offset_mdeg / 1000,
            },
        }

    def describe(self):
        """One line for people."""
        return (
            "actuator %g deg/s (lag %g ms), rider %g kg, home switch at %g deg, "
            "IMU along %s normal %s gyro %s offset %g deg"
            % (
                self.actuator_speed_mdeg_s / 1000,
                self.actuator_lag_ms,
                self.rider_kg,
                self.home_angle_mdeg / 1000,
                self.imu_along,
                self.imu_normal,
                self.imu_gyro,
                self.imu_offset_mdeg / 1000,
            )
        )

    def _values(self):
        return (
            self.actuator_speed_mdeg_s,
            self.actuator_lag_ms,
            self.rider_kg,
            self.home_angle_mdeg,
            self.imu_along,
            self.imu_normal,
            self.imu_gyro,
            self.imu_offset_mdeg,
        )

    def __eq__(self, other):
        return isinstance(other, World) and self._values() == other._values()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "World(%r, %r, %r, %r, %r, %r, %r, %r)" % self._values()
