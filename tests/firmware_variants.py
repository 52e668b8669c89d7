"""Helpers of the update tests: firmware copies deploy can tell apart
(``deploy --firmware-dir``), a soft reset that shows what the board prints."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from invtable.host.deploy import FIRMWARE_DIR
from invtable.host.deploy_slots import LOADER


def firmware_copy(dest: Path, version: str, every_file: bool = False) -> Path:
    """firmware/ copied to ``dest`` with FIRMWARE_VERSION = ``version`` (what
    `info` reports); ``every_file``: a statement added to every module too,
    so that every .mpy differs (deploy compiles with -O3: no line numbers in
    the bytecode, so a comment alone would change nothing): a full copy."""
    shutil.copytree(FIRMWARE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    protocol = dest / "protocol.py"
    text, n = re.subn(r'^FIRMWARE_VERSION = "[^"]*"', f'FIRMWARE_VERSION = "{version}"',
                      protocol.read_text(), flags=re.M)
    assert n == 1
    protocol.write_text(text)
    if every_file:
        for path in dest.glob("*.py"):
            if "/" + path.name not in LOADER:  # the loader stays as it is
                path.write_text(path.read_text() + f"\n_TEST_BUILD = {version!r}\n")
    return dest


def reboot_and_read(port: str, seconds: float = 3.0, during=None) -> list[str]:
    """A soft reset at the board's REPL (Ctrl-C first, for a firmware that
    gives way at HOME) and the lines it prints in ``seconds``; ``during()``
    is called every 0.2 s meanwhile (e.g. to ask the table for its state)."""
    import time

    import serial

    with serial.Serial(port, 115200, timeout=0.1) as ser:
        ser.write(b"\r\x03\x03\x02")
        time.sleep(0.3)
        ser.read(65536)
        ser.write(b"\x04")
        out = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            out += ser.read(4096)
            if during is not None:
                during()
                time.sleep(0.1)
    return out.decode("utf-8", "replace").splitlines()
