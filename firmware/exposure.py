"""Each user's inverted time today, on flash, so a daily cap holds across
sessions, power cuts and reboots.

"Today" follows the board clock when the host has set it (``invtable clock
set``, with its UTC offset): a calendar day. Without it (after every boot
until the host sets it again) the fallback is a rolling 24 h window of the
board's powered-on time, kept across reboots: time with the power off does
not count as passing, so the fallback never gives more than the cap.

Each session is one entry ``[day, age_ms, inverted_ms]``: ``day`` the
calendar day number (-1 without a clock), ``age_ms`` the board's powered-on
age when it was written (persisted, so it grows across boots). An entry
counts today when its calendar day is today (clock set and the entry has a
day), else while it is less than 24 h of powered-on time old.

A session reserves its whole budget when it starts (written before the
table moves) and settles to the true exposure when it is over: a power cut
in between leaves the reservation, never less than was used. A torn write
leaves the previous file (storage.save is atomic). A damaged file charges
every user the whole cap for the next 24 h (``status`` "corrupt").
Not on the tick path: called at GO and at the ends of sessions.
"""

from . import storage

EXPOSURE_FILE = "exposure.json"
SCHEMA = 1
DAY_MS = 86400000
DAY_S = 86400
NO_DAY = -1
MAX_ENTRIES = 12  # per user; the oldest are merged beyond this (conservatively)
_ALL = "*"  # entries charged to every user (a damaged file)


def day_number(epoch_s, utc_offset_s):
    """The local calendar day of a wall-clock time, or NO_DAY without one."""
    if epoch_s is None:
        return NO_DAY
    return (epoch_s + utc_offset_s) // DAY_S


class DailyExposure:
    def __init__(self, fs):
        self.fs = fs
        self.users = {}  # name -> [[day, age_ms, inverted_ms], ...]
        self.age_base_ms = 0  # the board's powered-on age at this boot
        self.status = storage.MISSING
        self._reserved = None  # (user, entry) of the session now open

    def load(self):
        data, _version, status = storage.load_versioned(self.fs, EXPOSURE_FILE, SCHEMA)
        self.users = {}
        if status == storage.NEWER:
            self.status = status  # a newer firmware's: kept untouched, GO refused
            return status
        if status == storage.OK and _valid(data):
            self.age_base_ms = data["age_ms"]
            self.users = data["users"]
        elif status != storage.MISSING:
            status = storage.CORRUPT
        self.status = status
        return status

    def charge_all_for_a_day(self, cap_ms, age_ms, day):
        """A damaged record: nobody's use today is known; charge everyone."""
        self.users[_ALL] = [[day, age_ms, cap_ms]]

    def used_ms(self, user, age_ms, day):
        total = 0
        for name in (user, _ALL):
            for entry in self.users.get(name, ()):
                if _counts(entry, age_ms, day):
                    total += entry[2]
        return total

    def reserve(self, user, budget_ms, age_ms, day):
        """A session opens with ``budget_ms`` of inverted time: charged now, on
        flash before the table moves. Raises OSError if flash fails."""
        entry = [day, age_ms, budget_ms]
        self.users.setdefault(user, []).append(entry)
        self._reserved = (user, entry)
        self.save(age_ms, day)

    def settle(self, user, inverted_ms, age_ms, day):
        """The session is over: its true exposure replaces the reservation (in
        RAM; ``save`` writes it, so the caller chooses the order of writes)."""
        reserved = self._reserved
        self._reserved = None
        if reserved is not None and reserved[0] == user:
            entry = reserved[1]
            entry[2] = inverted_ms
            entry[1] = age_ms
            if day != NO_DAY:
                entry[0] = day
        else:
            self.users.setdefault(user, []).append([day, age_ms, inverted_ms])

    def save(self, age_ms, day):
        """Prune what counts no more, write atomically (OSError on flash errors)."""
        if self.status == storage.NEWER:
            raise OSError(EXPOSURE_FILE + " was written by a newer firmware: not changed")
        for name in list(self.users):
            kept = [e for e in self.users[name] if _may_count(e, age_ms, day)]
            while len(kept) > MAX_ENTRIES:
                # Merge the two oldest into one that counts as long as either.
                a, b = kept[0], kept[1]
                kept[0:2] = [[max(a[0], b[0]), max(a[1], b[1]), a[2] + b[2]]]
            if kept:
                self.users[name] = kept
            else:
                del self.users[name]
        storage.save(self.fs, EXPOSURE_FILE,
                     {"schema": SCHEMA, "age_ms": age_ms, "users": self.users})


def _counts(entry, age_ms, day):
    if day != NO_DAY and entry[0] != NO_DAY:
        return entry[0] == day
    return age_ms - entry[1] < DAY_MS


def _may_count(entry, age_ms, day):
    """Still counted now, or could be after a reboot without a clock."""
    return age_ms - entry[1] < DAY_MS or (day != NO_DAY and entry[0] == day)


def _valid(data):
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return False
    age = data.get("age_ms")
    users = data.get("users")
    if not isinstance(age, int) or age < 0 or not isinstance(users, dict):
        return False
    for entries in users.values():
        if not isinstance(entries, list):
            return False
        for e in entries:
            if not (isinstance(e, list) and len(e) == 3):
                return False
            for v in e:
                if not isinstance(v, int):
                    return False
    return True
