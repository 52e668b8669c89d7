"""One process owns the serial port, the others reach the board through its
local socket (host/portshare.py): against the fake board on a pty, then end to
end with `invtable monitor` holding a `sim serve` board."""

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from invtable.host import client as C
from invtable.host import portshare

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def owner(fake_board, runtime_dir):
    """The owning client with its share, pumped by a thread as the owner's loop would."""
    board = C.Client(fake_board.path, timeout=2)
    share = portshare.PortShare(board)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            share.pump()
            time.sleep(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield share
    stop.set()
    thread.join(2)
    share.close()
    board.close()


def test_a_second_process_reaches_the_board_through_the_owner(owner, fake_board):
    with pytest.raises(C.PortBusyError):
        C.Client(fake_board.path)  # the port itself is taken
    other = portshare.connect_shared(fake_board.path)
    assert other is not None and other.shared
    assert other.request("status")["state"] == "HOME"
    other.request("stop")
    assert fake_board.requests[-1]["cmd"] == "stop"
    with pytest.raises(C.ProtocolError) as error:
        other.request("user.get", name="nobody")
    assert error.value.code == "not_found"  # errors come back as the board gave them
    other.close()
    assert owner.relayed == 3


def test_the_socket_is_private_to_its_user(owner):
    folder = owner.path.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(owner.path.stat().st_mode) == 0o600
    assert folder.stat().st_uid == os.getuid()


def test_stop_jumps_the_queue():
    share = portshare.PortShare.__new__(portshare.PortShare)  # the queue alone
    share._queue = portshare.queue.PriorityQueue()
    share._lock = threading.Lock()
    share._seq = 0
    for line in (b'{"cmd":"status"}', b'{"cmd":"user.list"}', b'{"cmd":"stop"}'):
        share._enqueue(portshare._Request(line))
    assert share._queue.get_nowait()[2].line == b'{"cmd":"stop"}'


def test_events_reach_the_other_processes_too(owner, fake_board):
    other = portshare.connect_shared(fake_board.path)
    other.request("status")  # connected and served
    owner.broadcast({"event": "telemetry", "state": "HOLD"})
    assert other.next_event(timeout=2) == {"event": "telemetry", "state": "HOLD"}
    other.close()


def test_without_an_owner_there_is_nothing_to_share(fake_board, runtime_dir):
    assert portshare.connect_shared(fake_board.path) is None
    # A socket left by an owner that died is replaced, not obeyed.
    path = portshare.socket_path(fake_board.path)
    path.write_text("stale")
    board = C.Client(fake_board.path, timeout=2)
    with portshare.PortShare(board) as share:
        assert share.path == path
        with pytest.raises(C.PortBusyError):
            portshare.PortShare(board)  # a second owner of the same port
    board.close()
    assert not path.exists()


def _invtable(*args, timeout=30, env=None):
    return subprocess.run([sys.executable, "-m", "invtable.host.cli", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_stop_and_status_from_other_terminals_while_monitor_owns_the_port(tmp_path, runtime_dir):
    """As docs/cli.md shows: `invtable monitor` in one terminal, `invtable stop`
    in another; the table then returns home. Real processes, a real pty."""
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir))
    serve = subprocess.Popen([sys.executable, "-m", "invtable.host.cli", "sim", "serve",
                              "--state-dir", str(tmp_path / "flash"), "--speed", "4"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    monitor = None
    try:
        port = serve.stdout.readline().strip()
        threading.Thread(target=serve.stdout.read, daemon=True).start()
        monitor = subprocess.Popen([sys.executable, "-m", "invtable.host.cli", "monitor",
                                    "--port", port, "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env)
        lines = []
        threading.Thread(target=lambda: lines.extend(monitor.stdout), daemon=True).start()
        deadline = time.monotonic() + 20
        while not portshare.socket_path(port).exists():
            assert time.monotonic() < deadline and monitor.poll() is None, monitor.stderr.read()
            time.sleep(0.05)
        busy = C.Client  # the port itself is the monitor's
        with pytest.raises(C.PortBusyError):
            busy(port)
        serve.stdin.write("go\n")
        serve.stdin.flush()
        deadline = time.monotonic() + 30
        while True:
            status = _invtable("status", "--port", port, "--json", env=env)
            assert status.returncode == 0, status.stderr
            state = json.loads(status.stdout)["state"]
            if state == "RAMP":
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        started = time.monotonic()
        stop = _invtable("stop", "--port", port, env=env)
        stop_s = time.monotonic() - started
        assert stop.returncode == 0, stop.stderr
        assert "Traceback" not in stop.stderr
        deadline = time.monotonic() + 60
        while json.loads(_invtable("status", "--port", port, "--json", env=env).stdout)[
                "state"] != "HOME":
            assert time.monotonic() < deadline, "not home after STOP"
            time.sleep(0.3)
        data = json.loads(_invtable("status", "--port", port, "--json", env=env).stdout)
        assert data["last_end"] == "stopped"
        assert monitor.poll() is None  # the monitor ran all along...
        assert any('"RETURN"' in line for line in lines)  # ...and saw the table return
        print(f"stop through the monitor's port: {stop_s:.2f} s for the whole `invtable stop`")
    finally:
        if monitor is not None:
            monitor.terminate()
            monitor.wait(10)
        serve.terminate()
        serve.wait(10)
    assert not portshare.socket_path(port).exists()  # the monitor cleaned up


def test_a_second_monitor_watches_through_the_first(fake_board, owner):
    other = portshare.connect_shared(fake_board.path)
    other.request("status")  # served: connected
    owner.broadcast({"event": "state", "state": "RAMP"})
    assert other.next_event(timeout=2)["state"] == "RAMP"
    other.close()
