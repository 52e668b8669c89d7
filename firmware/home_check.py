"""Home-switch consistency: does the switch agree with the angle, and with
what commissioning saw?

One small object per table (the model: Klipper's verify_heater, thresholds
as named constants with units). The switch and the IMU check each other:
  * closed while the angle says the table is more than
    ``HOME_SWITCH_FAR_MDEG`` above home: the switch lies (stuck closed);
  * open for ``HOME_OPEN_FAULT_MS`` while at rest at home by the angle: a
    switch or wiring fault;
  * at rest at home the angle must agree with the commissioned home angle
    within ``HOME_AGREE_MDEG`` (the rest position itself varies by about the
    switch's travel), and where the switch opens leaving home and closes
    coming back must agree with commissioning within ``EDGE_AGREE_MDEG``.
    Beyond either the calibration no longer describes the table
    (go_refused_calibration_changed: run setup again).
The controller decides what each finding means in its state. Nothing
allocates per tick.
"""

from .compat import const

HOME_SWITCH_FAR_MDEG = const(15000)  # switch closed this far above home = switch fault
HOME_OPEN_FAULT_MS = const(300)  # switch open at rest at home this long = switch fault
HOME_AGREE_MDEG = const(2500)
EDGE_AGREE_MDEG = const(700)
REST_CHECK_MS = const(1000)  # at rest this long before the rest check


def _off_by_more(angle_mdeg, expected_mdeg, tolerance_mdeg):
    error = angle_mdeg - expected_mdeg
    return error > tolerance_mdeg or error < -tolerance_mdeg


class HomeSwitchCheck:
    def __init__(self, home_mdeg, open_edge_mdeg=None, close_edge_mdeg=None):
        """``home_mdeg``: the angle at rest at home; the edges: where
        commissioning saw the switch open and close (None: not measured)."""
        self.home_mdeg = home_mdeg
        self.open_edge_mdeg = open_edge_mdeg
        self.close_edge_mdeg = close_edge_mdeg
        self._open_ms = 0

    def closed_far(self, closed, angle_mdeg):
        """Closed while the angle says the table is far from home."""
        return closed and angle_mdeg > self.home_mdeg + HOME_SWITCH_FAR_MDEG

    def opened_at_rest(self, closed, near_home, dt_ms):
        """True once the switch has been open for HOME_OPEN_FAULT_MS while the
        table rests at home (``near_home`` by the angle)."""
        if closed or not near_home:
            self._open_ms = 0
            return False
        self._open_ms += dt_ms
        return self._open_ms >= HOME_OPEN_FAULT_MS

    def rest_disagrees(self, angle_mdeg):
        """At rest at home, the angle is not the commissioned home angle."""
        return _off_by_more(angle_mdeg, self.home_mdeg, HOME_AGREE_MDEG)

    def edge_disagrees(self, closed, angle_mdeg):
        """The switch just closed (``closed``) or opened at ``angle_mdeg``: not
        where commissioning saw it (False when that edge was not measured)."""
        expected = self.close_edge_mdeg if closed else self.open_edge_mdeg
        if expected is None:
            return False
        return _off_by_more(angle_mdeg, expected, EDGE_AGREE_MDEG)
