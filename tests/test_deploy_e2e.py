"""`invtable deploy` as people meet it: real processes on real pseudo-terminals.

A port with no MicroPython raw REPL (`invtable sim serve`) fails within
seconds; a board file for another chip is refused before anything is
written; Ctrl-C in the middle of copying leaves the firmware the board had,
running, and the next plain deploy works; the virtual board's --state-dir
keeps the deployed firmware across a restart of `sim board`.

One `sim board --state-dir` serves the whole module (a full deploy through
its plain raw REPL takes most of the time); its state dir is the board's
flash, so what the deploy wrote, or did not write, is read there directly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from sigint import restore_sigint
from test_vboard_session import SimBoardProcess, invtable_cmd, status, wait_status

from invtable.host import deploy as dep

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")

BOARDS = dep.ROOT / "boards"
# What a deploy owns on the board (the firmware also writes settings, logs...).
DEPLOYED = ("board.py", "boot.py", "main.py", "chips.py", "validate.py", "firmware",
            "invtable_manifest.json", "invtable_new")
# Sources a test changes on the board (the firmware still runs with them).
EDITED = ("/board.py", "/boot.py", "/main.py", "/chips.py", "/validate.py")
EDIT_MARK = b"\n# changed on the board\n"
FILES = len(dep.deploy_plan("esp32_devkitc"))


def deploy(port, *args, timeout=120):
    started = time.monotonic()
    proc = subprocess.run([*invtable_cmd(), "deploy", "--port", port, *args],
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def failure_line(proc) -> str:
    """The one line a failed deploy ends with."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("deploy ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def deployed_files(state_dir) -> dict[str, bytes]:
    """{path on the board: bytes} of what a deploy owns, from the flash's folder."""
    return {
        "/" + str(path.relative_to(state_dir)): path.read_bytes()
        for name in DEPLOYED
        for path in sorted([state_dir / name, *(state_dir / name).rglob("*")])
        if path.is_file()
    }


class Board:
    """The module's `sim board --state-dir`, restartable."""

    def __init__(self, tmp_path_factory):
        self.tmp = tmp_path_factory
        self.state_dir = tmp_path_factory.mktemp("flash")
        self.proc = self.start()

    def start(self) -> SimBoardProcess:
        return SimBoardProcess(self.tmp.mktemp("sim_board"), "--state-dir", str(self.state_dir))

    @property
    def port(self) -> str:
        return self.proc.port

    def restart(self) -> None:
        assert self.proc.close() == 0
        self.proc = self.start()


@pytest.fixture(scope="module")
def board(micropython_setup, tmp_path_factory):
    """A virtual ESP32 with the firmware deployed and answering at HOME."""
    made = Board(tmp_path_factory)
    try:
        seconds = made.proc.deploy()
        print(f"full deploy: {seconds:.1f} s")
        wait_status(made.port, lambda s: s["state"] == "HOME")
        yield made
    finally:
        made.proc.close()


def test_a_port_without_a_raw_repl_fails_within_seconds(sim_serve, tmp_path):
    server = sim_serve(tmp_path / "serve", 1)  # answers `status` at HOME, has no REPL
    proc, seconds = deploy(server.path)
    print(f"no raw REPL: failed after {seconds:.1f} s")
    assert proc.returncode == dep.EXIT_NO_BOARD, proc.stderr
    assert seconds < 30
    assert failure_line(proc) == (
        f"deploy failed: {server.path} answers the invtable protocol (state HOME) but gives "
        f"no MicroPython raw REPL within {dep.REPL_TIMEOUT_S:g} s: nothing can be copied there "
        "(`invtable sim serve` speaks only the protocol; deploy to a board, or to "
        "`invtable sim board`)"
    )
    assert seconds > dep.REPL_TIMEOUT_S  # it did give the REPL its time
    assert status(server.path)["state"] == "HOME"  # and the port still works


def test_a_board_file_for_another_chip_is_refused_before_anything_is_written(board):
    before = deployed_files(board.state_dir)
    assert before["/board.py"] == (BOARDS / "esp32_devkitc.py").read_bytes()
    proc, seconds = deploy(board.port, "--board", "esp32_s3_devkitc", "--force-unverified")
    assert proc.returncode == dep.EXIT_VERSION, proc.stderr
    assert failure_line(proc) == (
        "deploy failed: board file esp32_s3_devkitc is for an ESP32-S3 (esp32s3), but the "
        f"board on {board.port} is an ESP32 (esp32): it reports 'virtual esp32_devkitc with "
        "ESP32'; for this board use --board esp32_devkitc. Nothing on the board was changed; "
        "the board was reset into the firmware it has"
    )
    assert deployed_files(board.state_dir) == before
    # The query stopped the firmware; the reset started it again.
    data, _ = wait_status(board.port, lambda s: s["state"] == "HOME")
    assert data["uptime_ms"] < (seconds + 10) * 1000


def test_ctrl_c_while_copying_leaves_the_old_firmware_running_and_a_plain_deploy_works(board):
    edit = "\n".join(f"open({name!r}, 'ab').write({EDIT_MARK!r})" for name in EDITED)
    dep.mpremote(board.port, "exec", edit)
    dep.mpremote(board.port, "resume", "reset")
    wait_status(board.port, lambda s: s["state"] == "HOME")
    edited = deployed_files(board.state_dir)
    assert all(edited[name].endswith(EDIT_MARK) for name in EDITED)

    proc = subprocess.Popen([*invtable_cmd(), "deploy", "--port", board.port],
                            stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint)
    lines = []
    interrupted_at = None
    for line in proc.stderr:
        lines.append(line)
        if interrupted_at is None and line.startswith("copied /board.py"):
            proc.send_signal(signal.SIGINT)  # to deploy only, as a Ctrl-C reaches it
            interrupted_at = time.monotonic()
    assert proc.wait(30) == dep.EXIT_INTERRUPTED, "".join(lines)
    seconds = time.monotonic() - interrupted_at
    print(f"Ctrl-C while copying: ended {seconds:.1f} s later")
    assert seconds < 10
    assert f"5 to copy, {FILES - 5} unchanged" in "".join(lines)
    text = lines[-1].strip()
    assert text.startswith("deploy interrupted while copying /"), text
    assert text.endswith(": nothing on the board was changed; the board was reset into the "
                         "firmware it has"), text
    # Copied aside only: the firmware on the board is the one it had, running.
    after = deployed_files(board.state_dir)
    assert {k: v for k, v in after.items() if not k.startswith("/invtable_new/")} == edited
    assert "/invtable_new/board.py" in after
    wait_status(board.port, lambda s: s["state"] == "HOME")

    proc, seconds = deploy(board.port)  # no --force-unverified: the firmware says HOME
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"deployed esp32_devkitc to {board.port}")
    assert ": 5 copied" in proc.stdout and f"{FILES - 5} unchanged" in proc.stdout
    final = deployed_files(board.state_dir)
    assert not any(name.startswith("/invtable_new") for name in final)
    for name in EDITED:
        assert not final[name].endswith(EDIT_MARK)
    assert final["/board.py"] == (BOARDS / "esp32_devkitc.py").read_bytes()
    data = status(board.port)
    assert data["state"] == "HOME" and data["uptime_ms"] < (seconds + 10) * 1000


def test_a_locked_console_is_named_with_the_command_that_opens_it(board):
    def admin(*args, pin="4821"):
        proc = subprocess.run([*invtable_cmd(), *args, "--pin", pin, "--port", board.port],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr

    admin("pin", "change", "--new-pin", "4821", pin="0000")  # the console lock is in force
    try:
        proc, seconds = deploy(board.port)
        assert proc.returncode == dep.EXIT_FAILED, proc.stderr
        assert seconds < 30
        assert failure_line(proc) == (
            f"deploy failed: the console of {board.port} is locked (its admin PIN is set), so "
            f"mpremote cannot reach the REPL: deploy with --pin (or INVTABLE_PIN), or open "
            f"it with `invtable maintenance --port {board.port}` (admin PIN; until the board "
            "restarts) first"
        )
        admin("maintenance")
        proc, _ = deploy(board.port)
        assert proc.returncode == 0, proc.stderr
        # The deploy's reset locked it again: `deploy --pin` opens it itself.
        info = subprocess.run([*invtable_cmd(), "info", "--json", "--port", board.port],
                              capture_output=True, text=True, timeout=30)
        assert json.loads(info.stdout)["console_locked"] is True
        proc, _ = deploy(board.port, "--pin", "4821")
        assert proc.returncode == 0, proc.stderr
    finally:
        admin("console", "lock", "off")  # for what follows


def test_the_state_dir_keeps_the_deployed_firmware_across_a_restart(board, tmp_path):
    blob = bytes(range(256)) * 4
    (tmp_path / "note.bin").write_bytes(blob)
    dep.mpremote(board.port, "fs", "cp", str(tmp_path / "note.bin"), ":note.bin")
    dep.mpremote(board.port, "resume", "reset")
    deployed = deployed_files(board.state_dir)
    board.restart()
    # The restarted board boots the firmware from its kept flash: no deploy.
    data, _ = wait_status(board.port, lambda s: s["state"] == "HOME")
    assert data["uptime_ms"] < 20000
    out = dep.mpremote(board.port, "exec", f"print(open('note.bin', 'rb').read() == {blob!r})")
    assert out.stdout.strip() == "True"
    dep.mpremote(board.port, "resume", "reset")
    assert deployed_files(board.state_dir) == deployed
    proc, _ = deploy(board.port)
    assert proc.returncode == 0, proc.stderr
    assert ": 0 copied" in proc.stdout and f"{FILES} unchanged" in proc.stdout
