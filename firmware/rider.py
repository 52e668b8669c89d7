"""The rider who cannot press STOP: check-ins and the dead-man grip.

STOP needs a conscious rider; a rider who faints, panics or cannot reach it
is protected only by the inverted-time budget unless the table asks. Two
small protections (one object each, thresholds as named constants), fed by
the controller on every tick of a session's motion away from home (WARN,
RAMP, HOLD); each says when the rider no longer answers, and the controller
starts the normal ramped return:

CheckIn
    Every ``interval_ms`` of RAMP and HOLD (the user's ``check_in_ms``; 0 =
    off) the beeper chirps a short, distinctive pattern and the rider must
    tap GO within ``CHECK_IN_ANSWER_MS``. A tap confirms and starts the
    interval again; no tap ends the session with ``no_response``. So from
    the moment a rider stops answering, the return starts within
    interval + CHECK_IN_ANSWER_MS + one tick. The GO tap that confirms is
    consumed: it never starts anything else (GO must be released before a
    press counts again, ``switches.GoButton``).

Grip
    An optional normally-open hand switch the rider holds (board file
    ``grip_pin``; an open wire reads as released). Released for more than
    ``GRIP_RELEASE_MS`` while the table moves away from home ends the session
    with ``grip_released``; a session starts only with the grip held.

Integer maths; nothing allocates per tick.
"""

from .compat import const

END_NO_RESPONSE = "no_response"
END_GRIP_RELEASED = "grip_released"

CHECK_IN_ANSWER_MS = const(10000)  # the rider has this long to tap GO
CHECK_IN_MIN_MS = const(10000)  # shortest interval a user may have (0 = off)
CHECK_IN_MAX_MS = const(600000)
CHECK_IN_DEFAULT_MS = const(60000)  # new users: every 60 s
GRIP_RELEASE_MS = const(1000)  # released this long = the rider let go

# The chirp: three 60 ms beeps every 2 s while a check-in waits (WARN beeps
# 250 ms on/off, a fault 500 ms on/off: neither sounds like this).
_CHIRP_PERIOD_MS = const(2000)
_CHIRP_BEEP_MS = const(60)
_CHIRPS = const(3)


class CheckIn:
    def __init__(self):
        self.interval_ms = 0
        self.waiting = False  # a check-in is asking now
        self.asked = 0  # check-ins asked this session
        self.answered = 0
        self._since_ms = 0  # since the last answer (or the start of motion)
        self._waiting_ms = 0

    def start(self, interval_ms):
        """A session's motion begins; ``interval_ms`` 0 turns check-ins off."""
        self.interval_ms = interval_ms
        self.waiting = False
        self.asked = 0
        self.answered = 0
        self._since_ms = 0
        self._waiting_ms = 0

    def stop(self):
        """The session's motion away from home is over: nothing is asked."""
        self.waiting = False

    def update(self, dt_ms, go_pressed):
        """One tick of RAMP or HOLD. Returns True when the rider did not
        answer in time (start the return). A GO press answers a waiting
        check-in and is then used up (returns False)."""
        if self.interval_ms == 0:
            return False
        if self.waiting:
            if go_pressed:
                self.waiting = False
                self.answered += 1
                self._since_ms = 0
                return False
            self._waiting_ms += dt_ms
            return self._waiting_ms >= CHECK_IN_ANSWER_MS
        self._since_ms += dt_ms
        if self._since_ms >= self.interval_ms:
            self.waiting = True
            self.asked += 1
            self._waiting_ms = 0
        return False

    def chirp(self):
        """Beeper level for this tick while a check-in waits."""
        t = self._waiting_ms % _CHIRP_PERIOD_MS
        return t < 2 * _CHIRP_BEEP_MS * _CHIRPS and (t // _CHIRP_BEEP_MS) % 2 == 0


class Grip:
    def __init__(self):
        self._released_ms = 0

    def reset(self):
        self._released_ms = 0

    def update(self, dt_ms, held):
        """One tick of a session's motion. True once the grip has been
        released for more than GRIP_RELEASE_MS."""
        if held:
            self._released_ms = 0
            return False
        self._released_ms += dt_ms
        return self._released_ms > GRIP_RELEASE_MS
