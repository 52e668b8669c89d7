"""Words for the board's codes: what each fault and notice means, what to do.

One table for everything `invtable status`, `monitor` and `log` show: the
fault codes (firmware/controller.py's F_* constants, with those it
re-exports from imu_health, overload and rider), the notices (the
controller's ``warning``: refused GO presses and the like) and the boot
errors in status. The README's "Fault codes" tables list the same codes;
tests/test_codes.py checks both against each other and against the
firmware's sources, so a new code cannot reach a user without words.
"""

from invtable.firmware.rider import GRIP_RELEASE_MS
from invtable.firmware.settings import DEFAULT_USER

_GRIP_S = f"{GRIP_RELEASE_MS / 1000:g} s"
_MANUAL_RELEASE = "bring the rider up with the actuator's manual release or hand crank"

# code -> (what it means, what to do). Shown as "what it means: what to do", so
# neither has a colon of its own.
CODES = {
    # -- faults: latched, the session ends, the table goes home by the safest means left
    "imu_lost": (
        "the IMU cannot be read (3 failed reads in a row), so there is no trusted angle and "
        "the table returns home blind",
        "check the IMU's cable and connector, then power-cycle the board"),
    "imu_stuck": (
        "the IMU repeats the exact same sample (real sensors never do), so the table returns "
        "home blind",
        "re-seat or replace the IMU, then power-cycle the board"),
    "imu_implausible": (
        "the IMU's readings disagree with physics (spikes, impossible rates), so the table "
        "returns home blind",
        "check the IMU's mounting (loose?), its wiring and interference from the motor "
        "leads, then power-cycle the board"),
    "stall": (
        "the actuator was driven but the table hardly moved; the drive stopped, then a "
        "slow retry towards home",
        f"if the table does not come home, {_MANUAL_RELEASE}; inspect the actuator"),
    "overload": (
        "the motor driver reports over-current; the drive stopped, then a slow retry "
        "towards home",
        f"check for an obstruction; if the table does not come home, {_MANUAL_RELEASE}"),
    "home_switch_stuck_closed": (
        "the home switch is closed while the angle is far from home; the table returns on "
        "its angle and stops just above home",
        "check or replace the home switch and its wiring"),
    "home_switch_open": (
        "the angle says home but the home switch is open; the drive is off",
        "check the home switch and its wiring"),
    "crash": (
        "an error inside the control loop; the controller restarted and brought the "
        "table home",
        "report it with the `last error` of `invtable status` (a firmware bug)"),
    "watchdog": (
        "the control loop hung and the watchdog reset the board; the table was brought home",
        "report it (a firmware bug) and check the board's power supply"),
    "setup_left_away": (
        "`invtable setup` was cancelled with the table away from home; the drive is off",
        "reboot the board (it then brings the table home), or run `invtable setup` again"),
    "cannot_follow": (
        "for more than 6 s the table moved far slower than it was asked to; it returns "
        "home on its angle",
        "check the actuator's supply and load, then run `invtable setup` again"),
    # -- notices: refused GO presses
    "go_refused_stop_pressed": (
        "GO refused, STOP is held or its wire is open (STOP is wired normally closed)",
        "release STOP; if it is not pressed, check the STOP button's wiring"),
    "go_refused_fault": (
        "GO refused, a fault is latched",
        "follow the fault's advice; a reboot clears it once the cause is fixed"),
    "go_refused_not_commissioned": (
        "GO refused, the table is not commissioned",
        "run `invtable setup` on the empty table"),
    "go_refused_calibration_changed": (
        "the angle at home no longer matches commissioning",
        "run `invtable setup` again (check the IMU's mounting first)"),
    "go_refused_no_program": (
        "GO refused, the board has no program to run (its settings could not be loaded)",
        "see `last error` in `invtable status`; reboot, and report it if it stays"),
    "go_refused_not_home": (
        "GO refused, the table is not at home (upright, on the home switch)",
        "wait until it is home; if it is, check the home switch"),
    "go_refused_resting": (
        "GO refused, the rest between sets is not over",
        "wait for the rest to end, then press GO for the next set"),
    "go_refused_returning": (
        "GO pressed while the table returns home, ignored",
        "wait until the table is home"),
    "go_refused_daily_limit": (
        "GO refused, this user's time inverted for today is used up",
        "it comes back tomorrow by the board's clock (`invtable clock set` sets it), or "
        "24 h of powered-on time later if the clock was not set since the board started"),
    "go_refused_low_memory": (
        "GO refused, the board's free memory measured at home is below what a session "
        "needs to run to its end (status `heap free`)",
        "restart the board (power off and on, table at home); if it comes back, report it "
        "with `invtable status --json`"),
    "go_refused_newer_data": (
        "GO refused, a file on the board (status `newer files`) was written by a newer "
        "firmware and is kept untouched",
        "deploy that newer firmware again, or remove the file with mpremote"),
    "go_refused_grip_released": (
        "GO refused, the dead-man grip is not held",
        f"hold the grip, then press GO. A session starts only with the grip held, and the "
        f"table returns home when it is let go for more than {_GRIP_S}"),
    # -- notices: what the table did by itself
    "recovering_after_reset": (
        "the board restarted (power loss or reset) with the table away from home; it "
        "brings the table home at the user's speed and does not resume the session",
        "keep clear, and find out why it restarted (power supply, backup power)"),
    "calibration_changed": (
        "the home switch is no longer where commissioning saw it; the session ended",
        "run `invtable setup` again (check the IMU's and the home switch's mounting first)"),
    "home_not_reached": (
        "a blind return home gave up before the home switch closed; the drive is off and "
        "the table may not be home",
        f"{_MANUAL_RELEASE}; check the IMU and the home switch"),
    # -- boot errors (status `boot_errors`)
    "imu_not_found": (
        "at boot the IMU (MPU-6050) did not answer; the table is brought home blind",
        "check the IMU's wiring and power, then power-cycle the board"),
    # -- the boot loader's checks (firmware/main.py): a boot_error line at start-up; in
    # status `boot_errors` when the board then booted its other, complete firmware
    "firmware_corrupt": (
        "at start-up a file of the active firmware did not match its manifest (damaged "
        "flash or a write cut short), so it was not run; the board sounded the alarm and "
        "booted its previous complete firmware, or, with none, waits at its REPL with the "
        "drive off and the alarm on",
        "run `invtable deploy`, which rebuilds the damaged firmware"),
    "firmware_incomplete": (
        "at start-up the active firmware was not complete (a file or its manifest missing, "
        "an update that did not finish), so it was not run; the board sounded the alarm and "
        "booted its other complete firmware, or, with none, waits at its REPL with the "
        "drive off and the alarm on",
        "run `invtable deploy` again"),
    "firmware_missing": (
        "the board has no firmware (nothing deployed yet, or the first deploy did not "
        "finish); the drive is off, the alarm on, the board waits at its REPL",
        "with the table upright and nobody on it, run `invtable deploy --force-unverified`"),
}

# What the board's settings and log status (status `settings_status`,
# `log_status`, `log.read` `status`) mean while they still apply.
SETTINGS_TEXT = {
    "defaults_missing": "no settings were stored when the board started (a new board): it "
    f"began with the defaults, the one user {DEFAULT_USER} with conservative limits",
    "defaults_corrupt": "the stored settings could not be read when the board started "
    f"(damaged): it went back to the defaults, the one user {DEFAULT_USER}. Create the "
    "users and their limits again",
    "settings_newer_version": "the stored settings were written by a newer firmware: kept "
    "untouched, the board runs the defaults and saves no change",
}
# Settings statuses that say no more once a user other than the default exists
# (the board reports them until it restarts).
SETTINGS_MOOT_WITH_USERS = ("defaults_missing", "defaults_corrupt")
LOG_TEXT = {
    # "missing": no session recorded yet, nothing to say.
    "corrupt": "the session log could not be read when the board started (damaged): it "
    "starts empty, and the next session's entry replaces it",
    "newer_version": "the session log was written by a newer firmware: kept untouched, no "
    "session is added to it",
}


def explain(code):
    """'what it means: what to do' for ``code``, or None for a code without words
    (a newer firmware's)."""
    words = CODES.get(code)
    return None if words is None else f"{words[0]}: {words[1]}"
