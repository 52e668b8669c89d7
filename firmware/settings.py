"""Per-user limits, session program and progression, persisted on flash.

Plain dicts, validated here: the serial protocol sets values only through
these methods, so every setter checks types and ranges and raises
``SettingsError`` (stable ``code``, human ``message`` with the allowed range).

Rules:
- a user's limits never exceed the board's hard caps (``board`` dict:
  ``max_angle_mdeg``, ``max_speed_mdeg_s``); values above a cap are refused;
- a program must fit inside its user's limits (angle, speed, and the planned
  time inverted ``sets * hold_ms`` <= ``max_inverted_ms``); lowering a limit
  clamps the program down to fit;
- on load, stored values are clamped to the current board caps (a new board
  file can only tighten), and a corrupt file falls back to the conservative
  defaults below with one user "guest"; ``load()`` says which happened.

Units: mdeg, mdeg/s, ms. The admin PIN lives in ``auth.json`` (``auth``), not
here, so a damaged settings file cannot reset it.
"""

from . import storage
from .program import DEFAULT_MAX_DAILY_INVERTED_MS, DEFAULT_MAX_INVERTED_MS
from .rider import CHECK_IN_DEFAULT_MS, CHECK_IN_MAX_MS, CHECK_IN_MIN_MS

SETTINGS_FILE = "settings.json"
# 1: users and active only (before rider check-ins and the daily limit);
# 2: the same with "schema": 2 and the limits check_in_ms, max_daily_inverted_ms.
# Version 1 files migrate on load (the new limits take their defaults, which
# only tighten); a newer file is kept untouched and nothing is saved over it.
SCHEMA = 2
MAX_USERS = 8
NAME_MAX_LEN = 16
# A new user's name (create_user): safe to type in a shell and to read on a
# table's label. Stored names are only held to check_name's looser rule, so a
# name an older firmware accepted still loads.
NEW_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_."
NEW_NAME_RULE = ("a name is 1 to " + str(NAME_MAX_LEN) + " characters: letters a-z A-Z, digits, "
                 "space, - _ . (no space at either end)")
DEFAULT_USER = "guest"

# load() status strings (stable).
LOADED = "ok"
DEFAULTS_MISSING = "defaults_missing"
DEFAULTS_CORRUPT = "defaults_corrupt"
NEWER_VERSION = "settings_newer_version"  # defaults in RAM, the file kept, no saves

# Limits: (field, min, max, default). max None = the board's cap of that name.
LIMIT_FIELDS = (
    ("max_angle_mdeg", 1000, None, 30000),  # beginners: 15..30 deg
    ("max_inverted_ms", 10000, None, 120000),  # per session; beginners 30 s..2 min
    ("max_speed_mdeg_s", 1000, None, 4000),  # users 3..5 deg/s
    ("max_daily_inverted_ms", 10000, None, 600000),  # per day, all sessions together
    # Rider check-ins (firmware/rider.py): 0 = off, else 10..600 s; on for
    # every new user, and for users stored before check-ins existed.
    ("check_in_ms", 0, CHECK_IN_MAX_MS, CHECK_IN_DEFAULT_MS),
)
# Board caps a board file may leave out (older files): the firmware's defaults.
_CAP_DEFAULTS = {
    "max_inverted_ms": DEFAULT_MAX_INVERTED_MS,
    "max_daily_inverted_ms": DEFAULT_MAX_DAILY_INVERTED_MS,
}
# Program: max None = the user's limit (itself capped by the board).
PROGRAM_FIELDS = (
    ("angle_mdeg", 1000, None, 20000),
    ("hold_ms", 10000, 600000, 60000),  # "from one-minute sets to three"
    ("sets", 1, 5, 1),
    ("rest_ms", 10000, 600000, 60000),
    ("speed_mdeg_s", 1000, None, 3000),
    ("exit_pause_ms", 0, 60000, 10000),  # rest near horizontal on the way home
)
# Progression steps are opt-in: 0 by default, so nothing grows by itself.
PROGRESSION_FIELDS = (
    ("angle_step_mdeg", 0, 5000, 0),
    ("hold_step_ms", 0, 60000, 0),
)
_PROGRAM_LIMIT = {"angle_mdeg": "max_angle_mdeg", "speed_mdeg_s": "max_speed_mdeg_s"}


class SettingsError(Exception):
    """code: "bad_type", "out_of_range", "unknown_field", "bad_name", "newer_version",
    "not_found", "exists", "full", "last_user"."""

    def __init__(self, code, message, allowed=None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.allowed = allowed  # [min, max] for out_of_range


def _is_int(value):
    # bool is an int in CPython (not in MicroPython): refuse it on both.
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(field, value, lo, hi):
    """value, or SettingsError bad_type / out_of_range naming the range."""
    if not _is_int(value):
        raise SettingsError("bad_type", field + " must be an integer")
    if value < lo or value > hi:
        raise SettingsError(
            "out_of_range",
            field + " must be " + str(lo) + ".." + str(hi) + " (got " + str(value) + ")",
            [lo, hi],
        )
    return value


def check_name(name):
    if not isinstance(name, str):
        raise SettingsError("bad_type", "name must be a string")
    n = len(name)
    if n < 1 or n > NAME_MAX_LEN:
        raise SettingsError("bad_name", "name must be 1.." + str(NAME_MAX_LEN) + " characters")
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) > 0x7E:
            raise SettingsError("bad_name", "name must be printable ASCII")
    if name[0] == " " or name[-1] == " ":
        raise SettingsError("bad_name", "name must not start or end with a space")
    return name


def check_new_name(name):
    """check_name, and only NEW_NAME_CHARS (a new user's name); the message
    states the whole rule."""
    try:
        check_name(name)
    except SettingsError as error:
        if error.code != "bad_name":
            raise
        raise SettingsError("bad_name", NEW_NAME_RULE + " (" + error.message + ")") from None
    for ch in name:
        if ch not in NEW_NAME_CHARS:
            raise SettingsError("bad_name", NEW_NAME_RULE + "; not " + repr(ch))
    return name


def _cap(board, field):
    cap = board.get(field, _CAP_DEFAULTS.get(field))
    if not _is_int(cap) or cap < 1000:
        raise ValueError("board " + field + " must be an integer >= 1000")
    return cap


def max_hold_ms(limits, sets):
    """Longest hold that keeps sets * hold inside the user's time limit."""
    hold = limits["max_inverted_ms"] // sets
    return hold if hold < 600000 else 600000


def program_max(field, limits):
    """Upper bound of a program field under these limits."""
    if field in _PROGRAM_LIMIT:
        return limits[_PROGRAM_LIMIT[field]]
    for name, _lo, hi, _default in PROGRAM_FIELDS:
        if name == field:
            return hi
    raise SettingsError("unknown_field", "no program field " + str(field))


def clamp_program(program, limits):
    """A copy of program pulled inside limits (used when limits are lowered)."""
    p = dict(program)
    for field in _PROGRAM_LIMIT:
        hi = limits[_PROGRAM_LIMIT[field]]
        if p[field] > hi:
            p[field] = hi
    if p["hold_ms"] > limits["max_inverted_ms"]:
        p["hold_ms"] = limits["max_inverted_ms"]
    # hold >= 10 s and max_inverted >= 10 s, so at least one set always fits.
    fit = limits["max_inverted_ms"] // p["hold_ms"]
    if p["sets"] > fit:
        p["sets"] = fit
    return p


def validate_limits(limits, board):
    out = {}
    for field, lo, hi, _default in LIMIT_FIELDS:
        out[field] = check_int(field, limits[field], lo, _cap(board, field) if hi is None else hi)
    check_in = out["check_in_ms"]
    if 0 < check_in < CHECK_IN_MIN_MS:
        raise SettingsError(
            "out_of_range",
            "check_in_ms must be 0 (off) or " + str(CHECK_IN_MIN_MS) + ".." + str(CHECK_IN_MAX_MS)
            + " (got " + str(check_in) + ")",
            [CHECK_IN_MIN_MS, CHECK_IN_MAX_MS],
        )
    return out


def validate_program(program, limits):
    out = {}
    for field, lo, hi, _default in PROGRAM_FIELDS:
        if hi is None:
            hi = limits[_PROGRAM_LIMIT[field]]
        out[field] = check_int(field, program[field], lo, hi)
    check_int("hold_ms", out["hold_ms"], 10000, max_hold_ms(limits, out["sets"]))
    return out


def validate_progression(progression):
    out = {}
    for field, lo, hi, _default in PROGRESSION_FIELDS:
        out[field] = check_int(field, progression[field], lo, hi)
    return out


def default_limits(board):
    out = {}
    for field, _lo, hi, default in LIMIT_FIELDS:
        if hi is None:
            cap = _cap(board, field)
            default = default if default < cap else cap
        out[field] = default
    return out


def default_user(name, board):
    limits = default_limits(board)
    program = {}
    for field, _lo, _hi, default in PROGRAM_FIELDS:
        program[field] = default
    progression = {}
    for field, _lo, _hi, default in PROGRESSION_FIELDS:
        progression[field] = default
    return {
        "name": name,
        "limits": limits,
        "program": clamp_program(program, limits),
        "progression": progression,
    }


def copy_user(user):
    return {
        "name": user["name"],
        "limits": dict(user["limits"]),
        "program": dict(user["program"]),
        "progression": dict(user["progression"]),
    }


def _merge(current, fields, kw, what):
    """current updated with kw; unknown keys refused."""
    new = dict(current)
    for key in kw:
        known = False
        for field in fields:
            if field[0] == key:
                known = True
        if not known:
            raise SettingsError("unknown_field", "no " + what + " field " + str(key))
        new[key] = kw[key]
    return new


def parse_user(stored, board):
    """A stored user validated, with values clamped to the current board caps.
    Raises (KeyError, TypeError, SettingsError, ...) if it is not a sane user."""
    limits = {}
    for field, _lo, hi, default in LIMIT_FIELDS:
        # A field newer than the stored user (check-ins, the daily limit)
        # takes its default for new users; never looser than the board's caps.
        value = stored["limits"].get(field, default)
        if hi is None and _is_int(value) and value > _cap(board, field):
            value = _cap(board, field)
        limits[field] = value
    limits = validate_limits(limits, board)
    program = {}
    for field, _lo, _hi, _default in PROGRAM_FIELDS:
        value = stored["program"][field]
        if not _is_int(value):
            raise SettingsError("bad_type", field + " must be an integer")
        program[field] = value
    program = validate_program(clamp_program(program, limits), limits)
    progression = {}
    for field, _lo, _hi, _default in PROGRESSION_FIELDS:
        progression[field] = stored["progression"][field]
    return {
        "name": check_name(stored["name"]),
        "limits": limits,
        "program": program,
        "progression": validate_progression(progression),
    }


class Settings:
    """All users' settings. Every change is validated, saved atomically, and
    only then applied in RAM, so a failed save (OSError) changes nothing."""

    def __init__(self, fs, board):
        self._fs = fs
        self._board = board
        _cap(board, "max_angle_mdeg")
        _cap(board, "max_speed_mdeg_s")
        self.status = DEFAULTS_MISSING
        self.version = SCHEMA  # of the file loaded (older ones migrate)
        self._set_defaults()

    def _set_defaults(self):
        self._users = [default_user(DEFAULT_USER, self._board)]
        self._active = DEFAULT_USER
        # The console lock (App.console_allowed): on unless an admin turns it
        # off; it takes effect once the admin PIN is not the factory one.
        self.console_lock = True

    # -- persistence -----------------------------------------------------
    def load(self):
        """Read flash. Returns (and keeps in .status) "ok", "defaults_missing",
        "defaults_corrupt" or "settings_newer_version"."""
        data, version, status = storage.load_versioned(self._fs, SETTINGS_FILE, SCHEMA)
        if status == storage.NEWER:
            # Written by a newer firmware: never misread, never overwritten.
            self._set_defaults()
            self.version = version
            self.status = NEWER_VERSION
            return self.status
        self.version = version
        users = None
        if status == storage.OK:
            try:
                users = []
                for stored in data["users"]:
                    user = parse_user(stored, self._board)
                    if self._find(users, user["name"]) >= 0:
                        raise SettingsError("exists", "duplicate user")
                    users.append(user)
                if not users or len(users) > MAX_USERS:
                    raise SettingsError("full", "bad user count")
                active = data.get("active")
            except Exception:  # any malformed content: treat the file as corrupt
                users = None
                status = storage.CORRUPT
        if users is None:
            self._set_defaults()
            self.status = DEFAULTS_MISSING if status == storage.MISSING else DEFAULTS_CORRUPT
            return self.status
        self._users = users
        lock = data.get("console_lock", True)
        self.console_lock = lock if isinstance(lock, bool) else True
        i = self._find(users, active) if isinstance(active, str) else -1
        self._active = users[i if i >= 0 else 0]["name"]
        self.status = LOADED
        return self.status

    def save(self):
        self._commit(self._users, self._active)

    def _commit(self, users, active):
        if self.status == NEWER_VERSION:
            raise SettingsError(
                "newer_version",
                SETTINGS_FILE + " was written by a newer firmware (schema " + str(self.version)
                + "): deploy that firmware again, or remove the file to start over",
            )
        storage.save(self._fs, SETTINGS_FILE, {"schema": SCHEMA, "users": users,
                                               "active": active,
                                               "console_lock": self.console_lock})
        self._users = users
        self._active = active

    # -- lookup ----------------------------------------------------------
    @staticmethod
    def _find(users, name):
        if not isinstance(name, str):
            return -1
        key = name.lower()
        for i in range(len(users)):
            if users[i]["name"].lower() == key:
                return i
        return -1

    def _index(self, name):
        i = self._find(self._users, name)
        if i < 0:
            raise SettingsError("not_found", "no user " + repr(name))
        return i

    def list_users(self):
        return [u["name"] for u in self._users]

    def get_user(self, name):
        return copy_user(self._users[self._index(name)])

    def set_console_lock(self, on):
        """The console lock on or off (saved before it takes effect)."""
        before = self.console_lock
        self.console_lock = bool(on)
        try:
            self.save()
        except Exception:
            self.console_lock = before
            raise

    def active_name(self):
        return self._active

    def active(self):
        """(limits, program) of the active user: copies, already within the
        board caps and the user's limits."""
        user = self._users[self._index(self._active)]
        return dict(user["limits"]), dict(user["program"])

    # -- users -----------------------------------------------------------
    def create_user(self, name):
        """New user with the conservative defaults."""
        check_new_name(name)
        if self._find(self._users, name) >= 0:
            raise SettingsError("exists", "user " + repr(name) + " exists")
        if len(self._users) >= MAX_USERS:
            raise SettingsError("full", "at most " + str(MAX_USERS) + " users")
        user = default_user(name, self._board)
        self._commit(self._users + [user], self._active)
        return copy_user(user)

    def delete_user(self, name):
        i = self._index(name)
        if len(self._users) == 1:
            raise SettingsError("last_user", "cannot delete the only user")
        users = self._users[:i] + self._users[i + 1 :]
        active = self._active
        if self._find(users, active) < 0:
            active = users[0]["name"]
        self._commit(users, active)

    def select_user(self, name):
        i = self._index(name)
        self._commit(self._users, self._users[i]["name"])

    def _replace(self, i, user):
        users = list(self._users)
        users[i] = user
        self._commit(users, self._active)
        return copy_user(user)

    def set_limits(self, name, **kw):
        """Change limits (each refused above the board cap); the program is
        clamped down to fit the new limits. Returns the updated user."""
        i = self._index(name)
        user = copy_user(self._users[i])
        user["limits"] = validate_limits(
            _merge(user["limits"], LIMIT_FIELDS, kw, "limit"), self._board
        )
        user["program"] = clamp_program(user["program"], user["limits"])
        return self._replace(i, user)

    def set_program(self, name, **kw):
        """Change program fields; the result must fit the user's limits."""
        i = self._index(name)
        user = copy_user(self._users[i])
        user["program"] = validate_program(
            _merge(user["program"], PROGRAM_FIELDS, kw, "program"), user["limits"]
        )
        return self._replace(i, user)

    def set_progression(self, name, **kw):
        i = self._index(name)
        user = copy_user(self._users[i])
        user["progression"] = validate_progression(
            _merge(user["progression"], PROGRESSION_FIELDS, kw, "progression")
        )
        return self._replace(i, user)

    def apply_progression(self, name):
        """Step the program's angle and hold up by the user's progression,
        never beyond the limits (and never down). Returns the new program."""
        i = self._index(name)
        user = copy_user(self._users[i])
        p = user["program"]
        step = user["progression"]
        limits = user["limits"]
        angle = p["angle_mdeg"] + step["angle_step_mdeg"]
        top = limits["max_angle_mdeg"]
        if angle > top:
            angle = top
        hold = p["hold_ms"] + step["hold_step_ms"]
        top = max_hold_ms(limits, p["sets"])
        if hold > top:
            hold = top
        if angle <= p["angle_mdeg"] and hold <= p["hold_ms"]:
            return dict(p)
        if angle > p["angle_mdeg"]:
            p["angle_mdeg"] = angle
        if hold > p["hold_ms"]:
            p["hold_ms"] = hold
        return self._replace(i, user)["program"]
