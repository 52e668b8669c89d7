"""Flash storage on a real directory: the HAL ``fs`` contract for ``sim serve``.

Settings, the admin PIN record and the session log written by the firmware
land in ``path`` as ordinary files, so they survive a restart of the
simulator. ``rename`` is ``os.replace`` (atomic on POSIX and Windows), as on
the board's LittleFS. CPython only (the simulator's serve loop).
"""

import os

from .flash import PowerLoss, as_bytes


class DirFlash:
    def __init__(self, path):
        self.path = os.path.abspath(path)
        os.makedirs(self.path, exist_ok=True)
        self.writes = 0
        self._tear_at = None

    def tear_next_write(self, at_byte=None):
        """The next write stores only its first ``at_byte`` bytes (half if
        None), then the board loses power (``PowerLoss``), as on SimFlash."""
        self._tear_at = -1 if at_byte is None else at_byte

    def _file(self, name):
        # One flat namespace, like the board's root: no paths, no dot files.
        if not isinstance(name, str) or not name or "/" in name or "\\" in name:
            raise OSError(22, "bad file name %r" % (name,))
        if name.startswith("."):
            raise OSError(22, "bad file name %r" % (name,))
        return os.path.join(self.path, name)

    # -- the fs contract -------------------------------------------------
    def read_bytes(self, name):
        try:
            with open(self._file(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, name, data):
        data = as_bytes(data)
        tear_at = self._tear_at
        if tear_at is not None:
            self._tear_at = None
            data = data[: len(data) // 2 if tear_at < 0 else tear_at]
        with open(self._file(name), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.writes += 1
        if tear_at is not None:
            raise PowerLoss("power lost while writing " + name)

    def patch_bytes(self, name, offset, data):
        with open(self._file(name), "r+b") as f:
            f.seek(offset)
            f.write(bytes(data))
            f.flush()
            os.fsync(f.fileno())
        self.writes += 1

    def rename(self, old, new):
        os.replace(self._file(old), self._file(new))

    def remove(self, name):
        try:
            os.remove(self._file(name))
        except FileNotFoundError:
            pass

    def names(self):
        return sorted(n for n in os.listdir(self.path) if not n.startswith("."))
