"""A session program clamped by the user's limits and the board's hard caps.

This is the one place where the three sources meet, so it is the one place
that must get the minimum right: whatever the settings say, nothing leaves
here above the board's caps.
"""


DEFAULT_MAX_INVERTED_MS = 600000  # a board file without max_inverted_ms
# What the controller runs a program field with, whatever a caller asks
# (settings are tighter still: firmware/settings.py): (low, high).
SESSION_BOUNDS = {
    "hold_ms": (0, 3600000),
    "sets": (1, 20),
    "rest_ms": (0, 3600000),
    "exit_pause_ms": (0, 600000),
}
DEFAULT_MAX_DAILY_INVERTED_MS = 1200000  # ... without max_daily_inverted_ms


def _bounded(value, low, high):
    value = int(value)
    if value < low:
        return low
    if value > high:
        return high
    return value


class Session:
    """The numbers a session runs with; every field is already within all limits."""

    def __init__(self, program, limits, board):
        self.max_angle_mdeg = _bounded(limits["max_angle_mdeg"], 0, board["max_angle_mdeg"])
        self.angle_mdeg = _bounded(program["angle_mdeg"], 0, self.max_angle_mdeg)
        speed_cap = _bounded(limits["max_speed_mdeg_s"], 100, board["max_speed_mdeg_s"])
        self.speed_mdeg_s = _bounded(program["speed_mdeg_s"], 100, speed_cap)
        self.accel_mdeg_s2 = board["max_accel_mdeg_s2"]
        # The board's hard cap on one session's inverted time (the manuals'
        # "up to 10 minutes"); a board file without one gets that.
        inverted_cap = board.get("max_inverted_ms", DEFAULT_MAX_INVERTED_MS)
        self.max_inverted_ms = _bounded(limits["max_inverted_ms"], 0, inverted_cap)
        self.hold_ms = _bounded(program["hold_ms"], *SESSION_BOUNDS["hold_ms"])
        self.sets = _bounded(program["sets"], *SESSION_BOUNDS["sets"])
        self.rest_ms = _bounded(program["rest_ms"], *SESSION_BOUNDS["rest_ms"])
        self.exit_pause_ms = _bounded(program.get("exit_pause_ms", 0),
                                      *SESSION_BOUNDS["exit_pause_ms"])
        # Rider check-ins (rider.CheckIn): 0 = off; limits without the field
        # (older callers) have none.
        check_in = limits.get("check_in_ms", 0)
        self.check_in_ms = 0 if check_in <= 0 else _bounded(check_in, 10000, 600000)
