"""Atomic, checksummed storage of small JSON objects on flash.

File format (one file per object)::

    <64 hex chars: sha256 of body>\\n<body: JSON {"v": FORMAT_VERSION, "data": obj}>

``save`` writes ``name + ".new"`` and renames it over ``name``. The rename is
atomic on LittleFS (the ESP32 default), so a power cut at any byte leaves
either the old file or the new one under ``name``; a torn ``.new`` is ignored
and removed by the next ``load``. The checksum catches anything else (bit rot,
a hand-edited file): ``load`` then reports "corrupt" and the caller falls back
to its conservative defaults.
"""

import hashlib
import json
from binascii import hexlify

FORMAT_VERSION = 1

# load() status strings (stable: the serial protocol reports them).
OK = "ok"
MISSING = "missing"
CORRUPT = "corrupt"

TMP_SUFFIX = ".new"
_DIGEST_HEX_LEN = 64


def _digest(body):
    return hexlify(hashlib.sha256(body).digest())


def encode(obj):
    """The bytes ``save`` writes for ``obj``."""
    body = json.dumps({"v": FORMAT_VERSION, "data": obj}).encode()
    return _digest(body) + b"\n" + body


def decode(raw):
    """(obj, status) for the bytes of a stored file (None: no file)."""
    if raw is None:
        return None, MISSING
    if raw.find(b"\n") != _DIGEST_HEX_LEN:
        return None, CORRUPT
    body = raw[_DIGEST_HEX_LEN + 1 :]
    if raw[:_DIGEST_HEX_LEN] != _digest(body):
        return None, CORRUPT
    try:
        doc = json.loads(body)
    except Exception:  # ValueError, UnicodeError: any parse failure is corruption
        return None, CORRUPT
    if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION or "data" not in doc:
        return None, CORRUPT
    return doc["data"], OK


def save(fs, name, obj):
    """Replace ``name`` with ``obj`` atomically. Raises OSError on flash errors
    (the old file is then still in place)."""
    tmp = name + TMP_SUFFIX
    fs.write_bytes(tmp, encode(obj))
    fs.rename(tmp, name)


def load(fs, name):
    """(obj, status) with status in OK, MISSING, CORRUPT; obj is None unless OK."""
    # A leftover .new is an interrupted save: the old file is authoritative.
    try:
        fs.remove(name + TMP_SUFFIX)
    except OSError:
        pass
    try:
        raw = fs.read_bytes(name)
    except OSError:
        return None, CORRUPT
    return decode(raw)
