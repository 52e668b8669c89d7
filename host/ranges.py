"""Every range the `invtable` commands check, taken from the firmware itself.

Nothing here is a copy: the settings' bounds come from firmware/settings.py's
tables (LIMIT_FIELDS, PROGRAM_FIELDS, PROGRESSION_FIELDS, max_hold_ms), the
check-in rule from firmware/rider.py, and what the controller runs a program
with (`invtable sim run`, which hands its program straight to the controller)
from firmware/program.SESSION_BOUNDS. All values are in the protocol's units (mdeg,
ms, mdeg/s, plain counts).
"""

from invtable.firmware.program import SESSION_BOUNDS
from invtable.firmware.rider import CHECK_IN_ANSWER_MS, CHECK_IN_MAX_MS, CHECK_IN_MIN_MS
from invtable.firmware.settings import (
    LIMIT_FIELDS,
    PROGRAM_FIELDS,
    PROGRESSION_FIELDS,
    max_hold_ms,
)

__all__ = ["CHECK_IN_ANSWER_MS", "CHECK_IN_MAX_MS", "CHECK_IN_MIN_MS", "max_hold_ms",
           "session_range", "setting_range"]

_SETTINGS = {name: (low, high) for table in (LIMIT_FIELDS, PROGRAM_FIELDS, PROGRESSION_FIELDS)
             for name, low, high, _default in table}


def setting_range(field):
    """(low, high) of a limit, program or progression field as the board's
    settings accept it; high is None where the bound is the board's cap (a
    limit) or the user's limit (a program's angle and speed), which only the
    board knows."""
    return _SETTINGS[field]


def session_range(field):
    """(low, high) the controller holds a program field to when it runs it
    (firmware/program.SESSION_BOUNDS), whatever the settings say."""
    return SESSION_BOUNDS[field]
