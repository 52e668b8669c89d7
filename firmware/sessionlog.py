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


class SessionLog:
    def __init__(self, fs, max_entries=MAX_ENTRIES):
        self._fs = fs
        self._max = max_entries
        self._entries = []
        self.status = self.load()

    def load(self):
        """Read flash; "ok", "missing", "corrupt" (a corrupt log starts empty
        and is replaced by the next append) or "newer_version" (kept, read-only)."""
        data, version, status = storage.load_versioned(self._fs, LOG_FILE, SCHEMA)
        entries = []
        if status == storage.OK:
            try:
                for e in data if version == 1 else data["entries"]:
                    entries.append(check_entry(e))
            except Exception:  # malformed content: as corrupt
                entries = []
                status = storage.CORRUPT
        self._entries = entries[-self._max :]
        self.status = status
        return status

    def append(self, entry):
        """Validate, add, drop the oldest beyond max_entries, save atomically."""
        entries = self._entries + [check_entry(entry)]
        if len(entries) > self._max:
            entries = entries[-self._max :]
        self._save(entries)
        self._entries = entries
        self.status = storage.OK  # a missing or corrupt log is now replaced

    def entries(self):
        """Oldest first, as copies."""
        return [dict(e) for e in self._entries]

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._save([])
        self._entries = []
        self.status = storage.OK

    def _save(self, entries):
        if self.status == storage.NEWER:
            raise ValueError(LOG_FILE + " was written by a newer firmware: not changed")
        storage.save(self._fs, LOG_FILE, {"schema": SCHEMA, "entries": entries})
