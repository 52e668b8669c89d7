"""Simulated flash storage: the HAL ``fs`` contract, with power-cut injection.

Files live in a dict in RAM that stands for the flash chip. ``snapshot`` and
``restore`` let a test model a reboot: everything in RAM is lost, the flash
(this object's files) is kept. Runs under CPython and MicroPython.
"""

_ENOENT = 2
_ENOSPC = 28


def as_bytes(data):
    """The bytes ``write_bytes`` is given: bytes, or an iterable of chunks
    (bytes, or under MicroPython a str, written as its UTF-8 bytes as the
    board's files do)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in data)


class PowerLoss(BaseException):
    """The board lost power in the middle of a flash write.

    A BaseException, not an Exception: firmware cannot catch its own power
    going away, so the control loop's ``except Exception`` must not see it.
    """


class SimFlash:
    """A flat namespace of small files.

    ``write_bytes`` replaces a file the way ``open(name, "wb")`` does on the
    board: the old content is gone as soon as the write starts, so a torn write
    leaves a prefix of the new data under that name. ``rename`` is atomic (as on
    LittleFS): the target is replaced in one step, or not at all.
    """

    def __init__(self, seed=1):
        self._files = {}
        self._tear_at = None  # None: no tear armed; -1: random length; n: n bytes
        self._fail_next = False
        self._seed = (seed & 0x7FFFFFFF) or 1
        self.writes = 0  # completed write_bytes calls (flash wear, for tests)
        self.last_tear_len = None

    # -- the fs contract -------------------------------------------------
    def read_bytes(self, name):
        return self._files.get(name)

    def write_bytes(self, name, data):
        data = as_bytes(data)
        if self._fail_next:
            self._fail_next = False
            raise OSError(_ENOSPC)
        at = self._tear_at
        if at is not None:
            self._tear_at = None
            if at < 0:
                at = self._random_below(len(data) + 1)
            if at > len(data):
                at = len(data)
            self._files[name] = data[:at]
            self.last_tear_len = at
            raise PowerLoss("power lost after " + str(at) + " of " + str(len(data)) + " bytes")
        self._files[name] = data
        self.writes += 1

    def patch_bytes(self, name, offset, data):
        old = self._files.get(name)
        if old is None or offset + len(data) > len(old):
            raise OSError(_ENOENT if old is None else 22)
        data = bytes(data)
        at = self._tear_at
        if at is not None:  # a torn patch: only its first bytes reach the flash
            self._tear_at = None
            at = self._random_below(len(data) + 1) if at < 0 else min(at, len(data))
            self._files[name] = old[:offset] + data[:at] + old[offset + at :]
            self.last_tear_len = at
            raise PowerLoss("power lost after " + str(at) + " of " + str(len(data)) + " bytes")
        self._files[name] = old[:offset] + data + old[offset + len(data) :]
        self.writes += 1

    def rename(self, old, new):
        if old not in self._files:
            raise OSError(_ENOENT)
        self._files[new] = self._files.pop(old)

    def remove(self, name):
        self._files.pop(name, None)

    def names(self):
        return sorted(self._files)

    # -- fault injection and test helpers --------------------------------
    def tear_next_write(self, at_byte=None):
        """The next write stores only ``at_byte`` bytes (random if None), then
        raises PowerLoss. ``at_byte`` >= the data length stores it all and still
        loses power before the caller's next step (e.g. the rename)."""
        self._tear_at = -1 if at_byte is None else at_byte

    def fail_next_write(self):
        """The next write raises OSError (flash full) and changes nothing."""
        self._fail_next = True

    def snapshot(self):
        """The flash content (bytes are immutable, so a shallow copy is a copy)."""
        return dict(self._files)

    def restore(self, snapshot):
        """Back to a snapshot, with no fault armed: a freshly booted board."""
        self._files = dict(snapshot)
        self._tear_at = None
        self._fail_next = False

    def corrupt(self, name, offset, xor=0x01):
        """Flip bits of one byte of a stored file (bit rot / tampering)."""
        data = bytearray(self._files[name])
        data[offset] ^= xor
        self._files[name] = bytes(data)

    def _random_below(self, n):
        # Small LCG: deterministic per seed and available on every interpreter.
        self._seed = (self._seed * 1103515245 + 12345) & 0x7FFFFFFF
        return (self._seed >> 8) % n
