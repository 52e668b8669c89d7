"""The simulated rider: hears the beeper, answers check-ins, holds the grip.

The rider knows nothing of the firmware: it listens to the beeper as a person
would. The check-in chirp (firmware/rider.py) is a burst of short beeps; any
two beeps of at most ``SHORT_BEEP_MS`` whose starts are at most
``BURST_GAP_MS`` apart are a check-in, and a conscious rider taps GO after
a random 1-5 s (``answer_ms``). The WARN beeps (250 ms), the fault alarm
(500 ms) and a notice's single beep are not. After ``faint`` the rider
answers nothing and lets go of the grip.

Portable (CPython and MicroPython); its own random stream, so a rider never
changes the IMU noise of a seeded run.
"""

from .rng import Rng

SHORT_BEEP_MS = 100
BURST_GAP_MS = 200
ANSWER_MS = (1000, 5000)


class SimRider:
    def __init__(self, seed=0, answer_ms=ANSWER_MS):
        self.rng = Rng(seed + 7919)
        self.answer_ms = answer_ms  # (shortest, longest) time to tap GO
        self.conscious = True
        self.grip_held = True  # holds the dead-man grip (when the table has one)
        self.heard = 0  # check-ins heard
        self.answered = 0
        self._beep_on = False
        self._beep_start_ms = 0
        self._last_short_start_ms = None
        self._answer_at_ms = None

    def faint(self):
        self.conscious = False
        self.grip_held = False
        self._answer_at_ms = None

    def hear(self, now_ms, beep):
        """The beeper's level at ``now_ms`` (call every simulated step)."""
        if beep and not self._beep_on:
            self._beep_on = True
            self._beep_start_ms = now_ms
        elif not beep and self._beep_on:
            self._beep_on = False
            if now_ms - self._beep_start_ms <= SHORT_BEEP_MS:
                last = self._last_short_start_ms
                if last is not None and self._beep_start_ms - last <= BURST_GAP_MS:
                    self._check_in(now_ms)
                self._last_short_start_ms = self._beep_start_ms

    def _check_in(self, now_ms):
        if not self.conscious or self._answer_at_ms is not None:
            return
        self.heard += 1
        lo, hi = self.answer_ms
        self._answer_at_ms = now_ms + int(self.rng.uniform(lo, hi))

    def taps_go(self, now_ms):
        """True once, when the rider taps GO to answer what it heard."""
        if self._answer_at_ms is None or now_ms < self._answer_at_ms:
            return False
        self._answer_at_ms = None
        if not self.conscious:
            return False
        self.answered += 1
        return True
