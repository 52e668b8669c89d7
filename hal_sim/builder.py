"""The simulated builder: runs the firmware's commissioning on a simulated table.

``commission(sim)`` does what ``invtable setup`` asks a builder to do, on a
``scenario.Scenario`` whose board is at rest at home: it takes the rider off
(commissioning is done on an empty table), starts the firmware's routine,
taps GO when asked, holds GO through each motion step, and gives the level
reference as an inclinometer on the bed would read it at home (the true
angle, to 0.1 deg). It returns the routine's final status (``measured``,
``calibration``, ``error``).

Portable: runs under CPython and MicroPython.
"""

from ..firmware import commission as steps

INCLINOMETER_RESOLUTION_MDEG = 100
COMMISSION_MAX_MS = 900000  # a routine that has not finished in 15 simulated minutes failed


class CommissionFailed(Exception):
    """The routine did not finish, or refused (``status`` says why)."""

    def __init__(self, status):
        error = status.get("error") or {}
        super().__init__(error.get("message", "commissioning did not finish"))
        self.status = status


def _rounded(value_mdeg, step):
    if value_mdeg >= 0:
        return (value_mdeg + step // 2) // step * step
    return -((-value_mdeg + step // 2) // step * step)


def commission(sim, sink=None, max_ms=COMMISSION_MAX_MS):
    """Run commissioning on ``sim`` (a Scenario at home). Returns the final status."""
    table = sim.table
    physics = table.physics
    rider_kg = physics.rider_mass_kg
    physics.rider_mass_kg = 0.0  # an empty table
    inclinometer_mdeg = _rounded(int(physics.angle_deg * 1000), INCLINOMETER_RESOLUTION_MDEG)
    refused = sim.app.start_setup()
    if refused is not None:
        physics.rider_mass_kg = rider_kg
        raise CommissionFailed({"error": {"code": refused[0], "message": refused[1]}})
    end_ms = sim.now_ms + max_ms
    go_tapped = False
    last_step = None
    try:
        while sim.app.setup is not None and sim.now_ms < end_ms:
            setup = sim.app.setup
            step = setup.step_name
            if step != last_step:
                # Each motion step wants GO pressed anew: let go between steps.
                table.inject("go_up")
                last_step = step
            elif step == steps.GO_PRESS:
                if not go_tapped:
                    table.inject("go")
                    go_tapped = True
            elif step == steps.LEVEL:
                table.inject("go_up")
                setup.give_level(inclinometer_mdeg, "home")
            elif not table.go.pressed() and (
                step == steps.AXES or step == steps.TRAVEL_OUT or step == steps.TRAVEL_HOME
                or step == steps.JOG_HOME
            ):
                table.inject("go_down")
            sim.tick()
            if sink is not None:
                sink(sim.row())
    finally:
        table.inject("go_up")
        physics.rider_mass_kg = rider_kg
    status = sim.app.setup_last
    if status is None:
        sim.app.setup.cancel()
        sim.tick()
        status = sim.app.setup_last or {"error": {"code": "timeout"}}
        status["error"] = {"code": "timeout", "message": "commissioning did not finish"}
    if status.get("error") is not None or not status.get("saved"):
        raise CommissionFailed(status)
    return status
