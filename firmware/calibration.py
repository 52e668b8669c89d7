"""This table's calibration: what commissioning measured, stored on the board.

The board file is the design (nominal actuator speed, IMU mounting, home
angle); the calibration is what ``invtable setup`` measured on the table that
is really there (``commission``). The firmware runs on ``effective_board``:
the board file with the measured values in place of the nominal ones. Hard
caps never loosen: the measured travel can only lower the maximum angle, and
the speed cap stays the board file's.

Stored like the settings (``storage``: write-new-then-rename, sha256), with a
schema version of its own. A file that is missing, corrupt, from a newer
firmware or out of range means "not commissioned": GO is refused until
``invtable setup`` has run.
"""

from . import storage
from .fusion import parse_axis

CALIB_FILE = "calib.json"
SCHEMA = 1

# load() status strings (stable: status and info report them).
OK = "ok"
MISSING = "missing"
CORRUPT = "corrupt"
INVALID = "invalid"  # readable, but a value is out of range
NEWER = "newer_version"  # written by a newer firmware: never misread

_AXES = "xyz"

# (field, low, high): every number a calibration holds, with its range.
INT_FIELDS = (
    ("imu_offset_mdeg", -45000, 45000),
    ("home_angle_mdeg", -89000, -10000),  # where the table rests at home
    ("home_open_mdeg", -89000, 0),  # the home switch opens leaving home here
    ("home_close_mdeg", -89000, 0),  # ...and closes coming back here
    ("speed_down_mdeg_s", 500, 50000),  # empty table, full drive, head down
    ("speed_up_mdeg_s", 500, 50000),  # empty table, full drive, towards home
    ("lag_ms", 0, 2000),  # the table's delay behind the drive
    ("travel_max_mdeg", 10000, 90000),  # the farthest the table really goes
    ("imu_gyro_bias_mdeg_s", -20000, 20000),  # gyro zero rate on the tilt axis, at rest
)
AXIS_FIELDS = ("imu_along", "imu_normal", "imu_gyro")
# The accelerometer's zero error per sensor axis, mg (0 across the bed).
BIAS_FIELD = "imu_accel_bias_mg"
BIAS_MAX_MG = 200


def axis_index_sign(spec):
    """'+x' -> (0, 1); '-z' -> (2, -1); None for anything else (fusion.parse_axis)."""
    if not isinstance(spec, str):
        return None
    try:
        return parse_axis(spec)
    except ValueError:
        return None


def axis_spec(index, sign):
    return ("+" if sign > 0 else "-") + _AXES[index]


def right_handed_gyro(along, normal):
    """The signed gyro axis of a right-handed sensor mounted with these axes:
    head-down rotation is a positive turn about normal x along."""
    ia, sa = axis_index_sign(along)
    i_n, sn = axis_index_sign(normal)
    sign = sn * sa * (1 if (i_n + 1) % 3 == ia else -1)
    return axis_spec(3 - ia - i_n, sign)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def problems(calib):
    """A list of what is wrong with a calibration dict (empty: it is fine)."""
    if not isinstance(calib, dict):
        return ["calibration is not an object"]
    out = []
    for field, low, high in INT_FIELDS:
        value = calib.get(field)
        if not _is_int(value) or value < low or value > high:
            out.append("%s must be an integer %d..%d (got %r)" % (field, low, high, value))
    bias = calib.get(BIAS_FIELD)
    if not isinstance(bias, list) or len(bias) != 3:
        out.append("%s must be a list of 3 integers" % BIAS_FIELD)
    else:
        for value in bias:
            if not _is_int(value) or value < -BIAS_MAX_MG or value > BIAS_MAX_MG:
                out.append("%s values must be integers -%d..%d mg" % (BIAS_FIELD, BIAS_MAX_MG,
                                                                        BIAS_MAX_MG))
                break
    axes = []
    for field in AXIS_FIELDS:
        parsed = axis_index_sign(calib.get(field))
        if parsed is None:
            out.append("%s must be an axis like +x or -z" % field)
        else:
            axes.append(parsed[0])
    if len(axes) == 3:
        if axes[0] == axes[1] or axes[0] == axes[2] or axes[1] == axes[2]:
            out.append("imu_along, imu_normal and imu_gyro must be three different axes")
        elif right_handed_gyro(calib["imu_along"], calib["imu_normal"]) != calib["imu_gyro"]:
            out.append("imu_gyro does not follow from imu_along and imu_normal (right hand)")
    return out


def load(fs):
    """(calibration dict or None, status)."""
    doc, status = storage.load(fs, CALIB_FILE)
    if status != storage.OK:
        return None, (MISSING if status == storage.MISSING else CORRUPT)
    if not isinstance(doc, dict) or not _is_int(doc.get("schema")):
        return None, CORRUPT
    if doc["schema"] > SCHEMA:
        return None, NEWER
    calib = doc.get("calib")
    if problems(calib):
        return None, INVALID
    return calib, OK


def save(fs, calib):
    """Store a calibration atomically. Raises ValueError if it is not valid."""
    found = problems(calib)
    if found:
        raise ValueError("; ".join(found))
    storage.save(fs, CALIB_FILE, {"schema": SCHEMA, "calib": calib})


def nominal(board, switch_travel_mdeg=1500):
    """A calibration equal to the board file: what a simulated table that is
    exactly its board file would measure (``switch_travel_mdeg``: how far
    above the rest angle its home switch opens)."""
    imu = board["imu"]
    home = board["home_angle_mdeg"]
    speed = board["actuator_speed_mdeg_s"]
    return {
        "imu_along": imu["along"],
        "imu_normal": imu["normal"],
        "imu_gyro": imu["gyro"],
        "imu_offset_mdeg": imu.get("offset_mdeg", 0),
        BIAS_FIELD: [0, 0, 0],
        "imu_gyro_bias_mdeg_s": 0,
        "home_angle_mdeg": home,
        "home_open_mdeg": home + switch_travel_mdeg,
        "home_close_mdeg": home + switch_travel_mdeg,
        "speed_down_mdeg_s": speed,
        "speed_up_mdeg_s": speed,
        "lag_ms": board.get("actuator_lag_ms", 100),
        "travel_max_mdeg": board["max_angle_mdeg"],
    }


def effective_board(board, calib):
    """The board file with this table's measured values in place of the
    nominal ones. Never looser than the board file's hard caps."""
    out = dict(board)
    imu = dict(board["imu"])
    imu["along"] = calib["imu_along"]
    imu["normal"] = calib["imu_normal"]
    imu["gyro"] = calib["imu_gyro"]
    imu["offset_mdeg"] = calib["imu_offset_mdeg"]
    imu["accel_bias_mg"] = calib[BIAS_FIELD]
    imu["gyro_bias_mdeg_s"] = calib["imu_gyro_bias_mdeg_s"]
    out["imu"] = imu
    out["home_angle_mdeg"] = calib["home_angle_mdeg"]
    out["home_open_mdeg"] = calib["home_open_mdeg"]
    out["home_close_mdeg"] = calib["home_close_mdeg"]
    down = calib["speed_down_mdeg_s"]
    up = calib["speed_up_mdeg_s"]
    out["actuator_speed_down_mdeg_s"] = down
    out["actuator_speed_up_mdeg_s"] = up
    out["actuator_speed_mdeg_s"] = down if down > up else up
    out["actuator_lag_ms"] = calib["lag_ms"]
    if calib["travel_max_mdeg"] < board["max_angle_mdeg"]:
        out["max_angle_mdeg"] = calib["travel_max_mdeg"]
    return out
