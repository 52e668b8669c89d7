"""Bounded log of the last sessions, persisted atomically (``storage``).

Entry (all fields required)::

    {"user": str, "start_s": epoch seconds (clock set by the host) or None,
     "uptime_ms": int, "max_angle_mdeg": int, "inverted_ms": int,
     "end": one of ENDS, "fault": fault code str or None,
     "daily_ms": the user's inverted time that day, this session included,
                 or None (entries written before the daily cap)}

Not used inside the control loop: a session's entry is appended once, when it
has ended (or, at boot, for one that a reset interrupted).
"""

import json

from . import storage

LOG_FILE = "sessions.json"
# 1: a bare list of entries (before schemas and daily_ms); 2: {"schema": 2,
# "entries": [...]}. A log from a newer firmware is kept untouched: nothing
# is appended to it (status "newer_version").
SCHEMA = 2
MAX_ENTRIES = 50
ENDS = ("completed", "stopped", "limit", "fault", "interrupted", "calibration_changed",
        "no_response", "grip_released")
_TEXT_MAX_LEN = 32


def _int(entry, key, allow_none=False, lo=None):
    v = entry[key]
    if v is None and allow_none:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(key + " must be an integer")
    if lo is not None and v < lo:
        raise ValueError(key + " must be >= " + str(lo))
    return v


def _text(entry, key, allow_none=False):
    v = entry[key]
    if v is None and allow_none:
        return None
    if not isinstance(v, str) or len(v) > _TEXT_MAX_LEN:
        raise ValueError(key + " must be a string of at most " + str(_TEXT_MAX_LEN))
    return v


def check_entry(entry):
    """A clean copy of a log entry; ValueError (or KeyError) if it is not one."""
    if not isinstance(entry, dict):
        raise ValueError("entry must be a dict")
    end = entry["end"]
    if end not in ENDS:
        raise ValueError("end must be one of " + ", ".join(ENDS))
    return {
        "user": _text(entry, "user"),
        "start_s": _int(entry, "start_s", True, 0),
        "uptime_ms": _int(entry, "uptime_ms", False, 0),
        "max_angle_mdeg": _int(entry, "max_angle_mdeg"),
        "inverted_ms": _int(entry, "inverted_ms", False, 0),
        "end": end,
        "fault": _text(entry, "fault", True),
        "daily_ms": _int(dict(daily_ms=entry.get("daily_ms")), "daily_ms", True, 0),
    }


# An entry's fields, in the order the log keeps them in RAM (one tuple each).
FIELDS = ("user", "start_s", "uptime_ms", "max_angle_mdeg", "inverted_ms", "end", "fault",
          "daily_ms")


class SessionLog:
    """The last ``max_entries`` sessions: in RAM as tuples (a dict per entry
    held 50 times was about 9 KB of an ESP32's heap; tuples with shared
    strings about a third of it), saved whole, one entry encoded at a time."""

    def __init__(self, fs, max_entries=MAX_ENTRIES):
        self._fs = fs
        self._max = max_entries
        self._rows = []
        self.status = self.load()

    def load(self):
        """Read flash; "ok", "missing", "corrupt" (a corrupt log starts empty
        and is replaced by the next append) or "newer_version" (kept, read-only)."""
        data, version, status = storage.load_versioned(self._fs, LOG_FILE, SCHEMA)
        rows = []
        if status == storage.OK:
            try:
                stored = data if version == 1 else data["entries"]
                for e in stored[-self._max :]:
                    rows.append(self._row(check_entry(e), rows))
            except Exception:  # malformed content: as corrupt
                rows = []
                status = storage.CORRUPT
        self._rows = rows
        self.status = status
        return status

    @staticmethod
    def _row(entry, rows):
        """The tuple for a checked entry; a string already held by the log (a
        user's name, an end, a fault code) is shared, not kept again."""
        values = []
        for key in FIELDS:
            v = entry[key]
            if isinstance(v, str):
                v = _shared(v, rows)
            values.append(v)
        return tuple(values)

    def append(self, entry):
        """Validate, add, drop the oldest beyond max_entries, save atomically."""
        rows = self._rows + [self._row(check_entry(entry), self._rows)]
        if len(rows) > self._max:
            rows = rows[-self._max :]
        self._save(rows)
        self._rows = rows
        self.status = storage.OK  # a missing or corrupt log is now replaced

    def entries(self, start=0, count=None):
        """Oldest first, as dicts (new ones: the caller may change them);
        ``start`` and ``count`` take a slice without building the rest."""
        rows = self._rows[start:] if count is None else self._rows[start : start + count]
        return [_as_dict(row) for row in rows]

    def __len__(self):
        return len(self._rows)

    def clear(self):
        self._save([])
        self._rows = []
        self.status = storage.OK

    def _save(self, rows):
        if self.status == storage.NEWER:
            raise ValueError(LOG_FILE + " was written by a newer firmware: not changed")

        def chunks():
            yield '{"schema": ' + str(SCHEMA) + ', "entries": ['
            sep = False
            for row in rows:
                if sep:
                    yield ", "
                yield _row_json(row)
                sep = True
            yield "]}"

        storage.save_chunks(self._fs, LOG_FILE, chunks())


# One entry's JSON, in FIELDS order (what json.dumps gives for its dict): one
# string per entry, no dict built to save it (a full log's save is 50 of them,
# twice: hashed, then written).
_ROW_JSON = ('{"user": %s, "start_s": %s, "uptime_ms": %d, "max_angle_mdeg": %d, '
             '"inverted_ms": %d, "end": "%s", "fault": %s, "daily_ms": %s}')


def _row_json(row):
    user, start_s, uptime_ms, max_angle_mdeg, inverted_ms, end, fault, daily_ms = row
    return _ROW_JSON % (
        json.dumps(user), "null" if start_s is None else start_s, uptime_ms, max_angle_mdeg,
        inverted_ms, end, "null" if fault is None else json.dumps(fault),
        "null" if daily_ms is None else daily_ms)


def _as_dict(row):
    entry = {}
    for i, key in enumerate(FIELDS):
        entry[key] = row[i]
    return entry


def _shared(text, rows):
    for end in ENDS:
        if end == text:
            return end
    for row in rows:
        for v in row:
            if v == text and isinstance(v, str):
                return v
    return text
