"""Atomic, checksummed storage of small JSON objects on flash.

File format (one file per object)::

    <64 hex chars: sha256 of body>\\n<body: JSON {"v": FORMAT_VERSION, "data": obj}>

``save`` writes ``name + ".new"`` and renames it over ``name``. The rename is
atomic on LittleFS (the ESP32 default), so a power cut at any byte leaves
either the old file or the new one under ``name``; a torn ``.new`` is ignored
and removed by the next ``load``. The checksum catches anything else (bit rot,
a hand-edited file): ``load`` then reports "corrupt" and the caller falls back
to its conservative defaults.

Versions: each kind of file carries its own ``"schema"`` number in its data
(files written before schemas existed have none: version 1). A file from a
newer firmware (a schema, or this envelope's version, above what this
firmware knows) is ``NEWER``: never misread as corrupt, never overwritten;
the caller keeps it untouched and refuses what it cannot do without it.
"""

import hashlib
import json
import sys
from binascii import hexlify

FORMAT_VERSION = 1

# load() status strings (stable: the serial protocol reports them).
OK = "ok"
MISSING = "missing"
CORRUPT = "corrupt"
NEWER = "newer_version"

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
    if not isinstance(doc, dict) or "data" not in doc or not isinstance(doc.get("v"), int):
        return None, CORRUPT
    if doc["v"] > FORMAT_VERSION:
        return None, NEWER
    if doc["v"] != FORMAT_VERSION:
        return None, CORRUPT
    return doc["data"], OK


def save(fs, name, obj):
    """Replace ``name`` with ``obj`` atomically. Raises OSError on flash errors
    (the old file is then still in place)."""
    tmp = name + TMP_SUFFIX
    fs.write_bytes(tmp, encode(obj))
    fs.rename(tmp, name)


def save_chunks(fs, name, chunks):
    """``save`` for data too large to encode at once: ``chunks`` is an
    iterable of strings whose concatenation is the data's JSON, written to
    flash as they come and hashed on the way, so at no moment is more than one
    chunk in RAM. The checksum line is written as zeros first and filled in
    once the body is written: a power cut before that leaves a ``.new`` file
    that does not check (ignored, as any torn save). What ``load`` reads back
    is the same as if the whole object had been ``save``d."""
    head = '{"v": ' + str(FORMAT_VERSION) + ', "data": '
    h = hashlib.sha256()

    def parts():
        yield _NO_DIGEST
        for chunk in _with_envelope(head, chunks):
            chunk = _buffer(chunk)
            h.update(chunk)
            yield chunk

    tmp = name + TMP_SUFFIX
    fs.write_bytes(tmp, parts())
    fs.patch_bytes(tmp, 0, hexlify(h.digest()))
    fs.rename(tmp, name)


_NO_DIGEST = b"0" * _DIGEST_HEX_LEN + b"\n"


def _with_envelope(head, chunks):
    yield head
    yield from chunks
    yield "}"


# A str as a buffer of its UTF-8 bytes: MicroPython hands a str itself to
# anything that reads a buffer (hashlib, a file), with no copy; CPython needs
# the bytes.
if sys.implementation.name == "micropython":

    def _buffer(text):
        return text

else:

    def _buffer(text):
        return text.encode()


def load_versioned(fs, name, schema):
    """(data, version, status) for a file whose data names its ``"schema"``
    (none: version 1): OK up to ``schema`` (the caller migrates older ones),
    NEWER above it, else MISSING / CORRUPT with data None."""
    data, status = load(fs, name)
    if status != OK:
        return None, 0, status
    version = data.get("schema", 1) if isinstance(data, dict) else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return None, 0, CORRUPT
    if version > schema:
        return None, version, NEWER
    return data, version, OK


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
