"""Debounced switch inputs, sampled once per control tick.

Debouncing is asymmetric where safety asks for it: a STOP press acts on the
first sample (a false STOP only brings the rider home), while its release must
be stable before motion may start again. GO must be seen released before a
press counts, so a button stuck down (or held through a reset) never starts a
session by itself.
"""


class Debounced:
    """A level that changes only after ``on_ticks`` / ``off_ticks`` equal samples."""

    def __init__(self, on_ticks, off_ticks, initial=False):
        self.on_ticks = on_ticks
        self.off_ticks = off_ticks
        self.level = initial
        self.rose = False  # True for the one tick where the level went False -> True
        self._count = 0

    def update(self, raw):
        self.rose = False
        if raw == self.level:
            self._count = 0
            return self.level
        self._count += 1
        if self._count >= (self.on_ticks if raw else self.off_ticks):
            self.level = raw
            self._count = 0
            self.rose = raw
        return self.level


class GoButton:
    """GO: a deliberate press, debounced, counted only after a release."""

    def __init__(self, debounce_ticks):
        self._switch = Debounced(debounce_ticks, debounce_ticks, initial=True)
        self.pressed = False  # a new deliberate press this tick

    def update(self, raw):
        # Starting "pressed" means a button held at boot must first be released.
        self._switch.update(raw)
        self.pressed = self._switch.rose
        return self.pressed

    @property
    def held(self):
        return self._switch.level
