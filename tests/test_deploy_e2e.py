"""`invtable deploy` as people meet it: real processes on real pseudo-terminals.

A port with no MicroPython raw REPL (`invtable sim serve`) fails within
seconds; a board file for another chip is refused before anything is
written; Ctrl-C in the middle of copying leaves the firmware the board had,
running, and the next plain deploy works; a locked console keeps mpremote
out, `deploy --pin` opens it; `deploy --check` compares and writes nothing;
a corrupted firmware file is never run (boot_error, drive off, alarm on, the
previous firmware boots if complete) and `invtable deploy` repairs it; the
virtual board's --state-dir keeps the deployed firmware across a restart of
`sim board`.

One `sim board --state-dir` serves the whole module (a full deploy through
its plain raw REPL takes most of the time); its state dir is the board's
flash, so what the deploy wrote, or did not write, is read there directly.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from firmware_variants import firmware_copy, reboot_and_read
from sigint import restore_sigint
from test_vboard_session import SimBoardProcess, invtable_cmd, status, wait_status

from invtable.host import deploy as dep

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")

BOARDS = dep.ROOT / "boards"
# What a deploy owns on the board (the firmware also writes settings, logs...),
# with the layout from before slots (which it removes).
DEPLOYED = ("fw", "boot.py", "main.py", "loader.py", "board.py", "chips.py", "validate.py",
            "firmware", "invtable_manifest.json", "invtable_new")
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
    assert before["/fw/a/board.py"] == (BOARDS / "esp32_devkitc.py").read_bytes()
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


def info(port) -> dict:
    proc = subprocess.run([*invtable_cmd(), "info", "--json", "--port", port],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_ctrl_c_while_copying_leaves_the_old_firmware_running_and_a_plain_deploy_works(
        board, tmp_path):
    new = firmware_copy(tmp_path / "fw", "0.1.0-ctrl-c", every_file=True)  # every file differs
    before = deployed_files(board.state_dir)
    running = info(board.port)["slot"]
    building = "/fw/" + ("b" if running["slot"] == "a" else "a") + "/"

    proc = subprocess.Popen([*invtable_cmd(), "deploy", "--port", board.port, "--firmware-dir",
                             str(new)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=restore_sigint)
    lines = []
    copied = 0
    interrupted_at = None
    for line in proc.stderr:
        lines.append(line)
        copied += line.startswith("copied firmware/")
        if interrupted_at is None and copied == 5:
            proc.send_signal(signal.SIGINT)  # to deploy only, as a Ctrl-C reaches it
            interrupted_at = time.monotonic()
    assert proc.wait(30) == dep.EXIT_INTERRUPTED, "".join(lines)
    seconds = time.monotonic() - interrupted_at
    print(f"Ctrl-C while copying: ended {seconds:.1f} s later")
    assert seconds < 10
    # All the modules but the loader (unchanged) and the board files, copied on the board.
    m = re.search(r"(\d+) to copy, (\d+) unchanged \((\d+) copied on the board\)",
                  "".join(lines))
    to_copy, unchanged, on_board = (int(v) for v in m.groups())
    assert to_copy + unchanged == FILES and unchanged == 3 + on_board and 3 <= on_board <= 4
    text = lines[-1].strip()
    assert text.startswith("deploy interrupted while copying firmware/"), text
    assert text.endswith(
        f": the firmware the board boots was not changed (the new one was being built in "
        f"{building.rstrip('/')}, which it does not boot); the board was reset into the "
        "firmware it has"), text
    # Built aside only: the firmware the board boots is the one it had, running.
    after = deployed_files(board.state_dir)
    assert {k: v for k, v in after.items() if not k.startswith(building)} == {
        k: v for k, v in before.items() if not k.startswith(building)}
    assert building + "firmware/__init__.mpy" in after
    assert building + "manifest.json" not in after
    wait_status(board.port, lambda s: s["state"] == "HOME")
    assert info(board.port)["slot"] == running

    proc, seconds = deploy(board.port, "--firmware-dir", str(new))  # the firmware says HOME
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"deployed esp32_devkitc to {board.port}")
    sent = int(proc.stdout.split(": ", 1)[1].split(" copied")[0])
    assert 0 < sent <= to_copy - 5  # what the interrupted one had copied stays
    now = info(board.port)
    assert now["firmware"] == "0.1.0-ctrl-c" and now["slot"]["slot"] == building[4]
    assert not now["slot"].get("fallback_code")
    data = status(board.port)
    assert data["state"] == "HOME" and data["uptime_ms"] < (seconds + 10) * 1000


def test_check_compares_and_writes_nothing(board):
    before = deployed_files(board.state_dir)
    proc, _ = deploy(board.port, "--check")
    if proc.returncode == 0:  # the board has this firmware: make it differ first
        assert "has this firmware" in proc.stdout
        dep.mpremote(board.port, "exec", "f = open('/fw/active'); s = f.read().strip(); "
                     "f.close(); open('/fw/' + s + '/validate.py', 'ab').write(b'#')")
        before = deployed_files(board.state_dir)
        dep.mpremote(board.port, "resume", "reset")
        proc, _ = deploy(board.port, "--check", "--force-unverified")
    assert proc.returncode == dep.EXIT_DIFFERENT, proc.stdout + proc.stderr
    assert "differs from what would be deployed" in proc.stdout
    assert deployed_files(board.state_dir) == before
    proc, _ = deploy(board.port, "--force-unverified")
    assert proc.returncode == 0, proc.stderr
    proc, _ = deploy(board.port, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "has this firmware (esp32_devkitc, firmware " in proc.stdout
    wait_status(board.port, lambda s: s["state"] == "HOME")  # --check resets it too


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
        # mpremote itself gets no raw REPL: the firmware ignores its Ctrl-C.
        with pytest.raises(dep.StepTimeout):
            dep.mpremote(board.port, "exec", "print(1)", timeout_s=dep.REPL_TIMEOUT_S)
        wait_status(board.port, lambda s: s["state"] == "HOME")
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


def _flip_a_byte(port, path):
    dep.mpremote(port, "exec", f"f = open({path!r}, 'r+b'); f.seek(200); b = f.read(1); "
                 f"f.seek(200); f.write(bytes([b[0] ^ 1])); f.close()")


def test_a_corrupted_firmware_is_not_run_and_deploy_repairs_it(board, tmp_path):
    new = firmware_copy(tmp_path / "fw", "0.1.0-corrupted")
    proc, _ = deploy(board.port, "--firmware-dir", str(new))
    assert proc.returncode == 0, proc.stderr
    slot = info(board.port)["slot"]
    active, previous = slot["slot"], "b" if slot["slot"] == "a" else "a"
    notes = board.proc.notes
    while not notes.empty():
        notes.get()

    # One bit of one module of the active firmware: the previous one boots.
    _flip_a_byte(board.port, f"/fw/{active}/firmware/app.mpy")
    lines = reboot_and_read(board.port, 4.0, during=lambda: board.proc.send("status"))
    errors = [json.loads(x) for x in lines if '"boot_error"' in x]
    assert [e["code"] for e in errors] == ["firmware_corrupt"], lines
    assert errors[0]["message"] == (f"fw/{active}/firmware/app.mpy does not match the manifest; "
                                    f"booting the complete firmware in fw/{previous}")
    seen = [notes.get() for _ in range(notes.qsize())]
    assert any("beeper on" in n for n in seen), seen  # the alarm, while the loader waits
    assert all("drive 0 permille" in n for n in seen if n.startswith("status:")), seen
    data, _ = wait_status(board.port, lambda s: s["state"] == "HOME")
    assert data["boot_errors"] == ["firmware_corrupt"]
    now = info(board.port)
    assert now["slot"]["slot"] == previous and now["firmware"] != "0.1.0-corrupted"
    assert now["slot"]["fallback_from"] == active
    assert now["slot"]["fallback_code"] == "firmware_corrupt"
    text = subprocess.run([*invtable_cmd(), "info", "--port", board.port], capture_output=True,
                          text=True, timeout=30).stdout
    assert f"the fallback: /fw/{active} was not run, firmware_corrupt" in " ".join(text.split())

    proc, _ = deploy(board.port, "--firmware-dir", str(new))  # repairs it
    assert proc.returncode == 0, proc.stderr
    now = info(board.port)
    assert now["firmware"] == "0.1.0-corrupted" and now["slot"]["slot"] == active
    assert "fallback_code" not in now["slot"]
    assert status(board.port)["boot_errors"] == []

    # Both slots bad: nothing runs, the drive stays off, the alarm on.
    _flip_a_byte(board.port, f"/fw/{active}/firmware/controller.mpy")
    dep.mpremote(board.port, "exec", f"import os; os.remove('/fw/{previous}/manifest.json')")
    lines = reboot_and_read(board.port, 3.0)
    errors = [json.loads(x) for x in lines if '"boot_error"' in x]
    assert [e["code"] for e in errors] == ["firmware_corrupt", "firmware_incomplete"], lines
    assert errors[1]["message"].endswith("no complete firmware: drive off, alarm on; repair it "
                                         "with invtable deploy")
    time.sleep(1.0)
    while not notes.empty():
        notes.get()
    board.proc.send("status")
    note = board.proc.wait_note("status:")
    assert "beeper on" in note and "drive 0 permille" in note, note
    assert dep._at_repl(board.port)  # waits at its REPL for deploy
    proc, _ = deploy(board.port)
    assert proc.returncode == dep.EXIT_NOT_HOME  # the firmware cannot say it is at home
    proc, _ = deploy(board.port, "--force-unverified")
    assert proc.returncode == 0, proc.stderr
    assert status(board.port)["boot_errors"] == []
    board.proc.send("status")
    assert "beeper off" in board.proc.wait_note("status:")


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
