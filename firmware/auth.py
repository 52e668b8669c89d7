"""Admin PIN: salted, iterated SHA-256, rate-limited attempts that survive reboots.

Policy:
- A fresh board (no ``auth.json``) has the factory PIN ``DEFAULT_PIN`` and
  reports ``pin_is_default``; the README tells the owner to change it. A new PIN
  is 4..8 ASCII digits (0-9, nothing else) and may not be the factory PIN.
- After ``FREE_ATTEMPTS`` wrong PINs in a row, every further wrong PIN locks
  admin commands for 30 s, doubling per failure up to 15 min. A right PIN
  resets the count.
- Time across reboots: the board has no trusted clock, so the record stores
  the lockout *remaining* in ms, counted down only while powered. A reboot
  restarts the lockout stored with the last failure in full, even one that had
  already run out (power cycling can lengthen a lockout, never shorten it).
- Every attempt is recorded as a failure (with its lockout) on flash *before*
  the PIN is compared; a right PIN then clears it. Cutting power during a check
  therefore counts as a wrong attempt. If that write fails (OSError), the
  check fails with it and the PIN is not compared.
- A corrupt ``auth.json`` (bit rot or tampering; torn writes cannot do it)
  falls back to the factory PIN, reported by ``load_status`` = "corrupt". Anyone
  able to corrupt flash already has the REPL, which is only reachable at home.
  To recover a forgotten PIN, delete ``auth.json`` over the REPL (at home).

Hashing: ``PIN_ITERATIONS`` rounds of sha256(previous + salt + pin). MicroPython
has hashlib.sha256 but no hmac/pbkdf2; a 4..8 digit PIN cannot resist an
offline search anyway, so the iterations only make the file less trivial and
the lockout is the real protection.
"""

import hashlib
from binascii import hexlify, unhexlify

from . import storage
from .compat import ticks_add, ticks_diff

AUTH_FILE = "auth.json"
AUTH_SCHEMA = 2  # 1: the same record without "schema"
DEFAULT_PIN = "0000"
PIN_MIN_LEN = 4
PIN_MAX_LEN = 8
PIN_ITERATIONS = 500
SALT_BYTES = 16
FREE_ATTEMPTS = 3
LOCK_BASE_MS = 30000
LOCK_MAX_MS = 900000
_FAILS_MAX = 99


class AuthError(Exception):
    """code: "bad_pin" (attempts_left, retry_after_ms), "locked"
    (retry_after_ms), "invalid_pin" (the new PIN is not acceptable)."""

    def __init__(self, code, message, retry_after_ms=0, attempts_left=None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.attempts_left = attempts_left


def ascii_digits(text):
    """True if ``text`` is one or more of the ASCII digits '0'..'9' only.

    Not ``str.isdigit``: under CPython it also accepts other scripts' digits
    (Arabic-Indic, Devanagari, ...) and superscripts, under MicroPython it
    does not, so the simulator and the board would disagree."""
    return bool(text) and all("0" <= ch <= "9" for ch in text)


def pin_format_ok(pin):
    return isinstance(pin, str) and PIN_MIN_LEN <= len(pin) <= PIN_MAX_LEN and ascii_digits(pin)


def hash_pin(pin, salt, iterations):
    """32-byte digest of ``iterations`` rounds of salted SHA-256."""
    tail = salt + pin.encode()
    h = hashlib.sha256(tail).digest()
    for _ in range(iterations - 1):
        h = hashlib.sha256(h + tail).digest()
    return h


def same_bytes(a, b):
    """Constant-time equality (time does not depend on where they differ)."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def lockout_ms(fails):
    """Lockout after the ``fails``-th wrong PIN in a row."""
    if fails < FREE_ATTEMPTS:
        return 0
    shift = fails - FREE_ATTEMPTS
    if shift >= 5:  # 30 s << 5 = 16 min > the cap
        return LOCK_MAX_MS
    ms = LOCK_BASE_MS << shift
    return ms if ms < LOCK_MAX_MS else LOCK_MAX_MS


class Auth:
    def __init__(self, fs, clock_ms_fn, random_bytes_fn, iterations=PIN_ITERATIONS):
        self._fs = fs
        self._clock = clock_ms_fn
        self._random = random_bytes_fn
        self._iterations = iterations
        self._lock_until = None
        rec, _version, self.load_status = storage.load_versioned(fs, AUTH_FILE, AUTH_SCHEMA)
        # A PIN record from a newer firmware is kept untouched: no PIN can be
        # checked or changed against it (a default PIN in its place would let
        # anyone in), so every admin request is refused until it is resolved.
        self.newer = self.load_status == storage.NEWER
        if self.load_status == storage.OK:
            try:
                rec = self._parse(rec)
            except Exception:  # malformed record: as corrupt
                rec = None
                self.load_status = storage.CORRUPT
        if self.load_status != storage.OK:
            rec = self._new_record(DEFAULT_PIN, True)
        self._rec = rec
        if rec["lock_ms"] > 0:
            self._lock_until = ticks_add(self._clock(), rec["lock_ms"])

    # -- record ----------------------------------------------------------
    def _new_record(self, pin, is_default):
        salt = bytes(self._random(SALT_BYTES))
        if len(salt) != SALT_BYTES:
            raise ValueError("random_bytes_fn returned the wrong length")
        return {
            "schema": AUTH_SCHEMA,
            "salt": hexlify(salt).decode(),
            "hash": hexlify(hash_pin(pin, salt, self._iterations)).decode(),
            "iter": self._iterations,
            "default": is_default,
            "fails": 0,
            "lock_ms": 0,
        }

    @staticmethod
    def _parse(rec):
        out = {
            "salt": rec["salt"],
            "hash": rec["hash"],
            "iter": rec["iter"],
            "default": rec["default"],
            "fails": rec["fails"],
            "lock_ms": rec["lock_ms"],
        }
        unhexlify(out["salt"])
        if len(unhexlify(out["hash"])) != 32:
            raise ValueError("hash")
        for key, hi in (("iter", 100000), ("fails", _FAILS_MAX), ("lock_ms", LOCK_MAX_MS)):
            v = out[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > hi:
                raise ValueError(key)
        if out["iter"] < 1 or not isinstance(out["default"], bool):
            raise ValueError("iter/default")
        return out

    def _store(self, rec):
        rec["schema"] = AUTH_SCHEMA
        storage.save(self._fs, AUTH_FILE, rec)
        self._rec = rec

    def _matches(self, pin):
        rec = self._rec
        digest = hash_pin(pin, unhexlify(rec["salt"]), rec["iter"])
        return same_bytes(digest, unhexlify(rec["hash"]))

    # -- state -----------------------------------------------------------
    @property
    def pin_is_default(self):
        return self._rec["default"]

    @property
    def fails(self):
        return self._rec["fails"]

    def retry_after_ms(self, now_ms=None):
        """ms until the next attempt is allowed (0: not locked)."""
        if self._lock_until is None:
            return 0
        if now_ms is None:
            now_ms = self._clock()
        left = ticks_diff(self._lock_until, now_ms)
        if left <= 0:
            self._lock_until = None
            return 0
        return left

    def status(self, now_ms=None):
        left = self.retry_after_ms(now_ms)
        return {
            "pin_is_default": self._rec["default"],
            "locked": left > 0,
            "retry_after_ms": left,
            "fails": self._rec["fails"],
            "load_status": self.load_status,
        }

    # -- API -------------------------------------------------------------
    def check(self, pin, now_ms=None):
        """True for the right PIN; else AuthError "locked" or "bad_pin"
        ("newer_version" when the PIN record is a newer firmware's)."""
        if self.newer:
            raise AuthError("newer_version", AUTH_FILE + " was written by a newer firmware: "
                            "deploy that firmware again, or erase the board (README)")
        if now_ms is None:
            now_ms = self._clock()
        left = self.retry_after_ms(now_ms)
        if left > 0:
            raise AuthError("locked", "too many wrong PINs: locked", retry_after_ms=left)
        fails = self._rec["fails"] + 1
        if fails > _FAILS_MAX:
            fails = _FAILS_MAX
        lock = lockout_ms(fails)
        # Record the failure first (see the module notes), then compare.
        failed = dict(self._rec)
        failed["fails"] = fails
        failed["lock_ms"] = lock
        self._store(failed)
        if pin_format_ok(pin) and self._matches(pin):
            cleared = dict(failed)
            cleared["fails"] = 0
            cleared["lock_ms"] = 0
            self._store(cleared)
            return True
        if lock:
            self._lock_until = ticks_add(now_ms, lock)
        left = FREE_ATTEMPTS - fails
        raise AuthError(
            "bad_pin",
            "wrong PIN",
            retry_after_ms=lock,
            attempts_left=left if left > 0 else 0,
        )

    def change(self, old_pin, new_pin, now_ms=None):
        """Set a new PIN after checking the old one (which counts as an attempt)."""
        if not pin_format_ok(new_pin):
            raise AuthError(
                "invalid_pin",
                "PIN must be " + str(PIN_MIN_LEN) + ".." + str(PIN_MAX_LEN) + " digits 0-9",
            )
        if new_pin == DEFAULT_PIN:
            raise AuthError("invalid_pin", "choose a PIN other than the factory PIN")
        self.check(old_pin, now_ms)
        self._store(self._new_record(new_pin, False))
        self._lock_until = None
        return True
