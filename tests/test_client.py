"""The serial client (host/client.py) against a fake board on a pty."""

import json
import threading
import time
from types import SimpleNamespace

import pytest
import serial

from invtable.host import client as C

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def board(fake_board):
    return fake_board


@pytest.fixture
def cl(board):
    with C.Client(board.path, timeout=2) as client:
        yield client


def test_request_returns_data_and_ids_increment(cl, board):
    assert cl.request("info")["protocol"] == C.PROTOCOL_VERSION
    assert cl.request("user.list")["users"][0]["name"] == "guest"
    ids = [r["id"] for r in board.requests]
    assert ids[1] == ids[0] + 1 and 1 <= ids[0] <= C.ID_MAX // 2
    assert board.requests[1]["cmd"] == "user.list"


def test_each_client_starts_its_ids_somewhere_else(board):
    """Two invtable processes one after the other never send the same id for
    different requests (the board would take the second for a resend)."""
    firsts = []
    for _ in range(3):
        with C.Client(board.path, timeout=2) as client:
            client.request("info")
        firsts.append(board.requests[-1]["id"])
    assert len(set(firsts)) == 3


def test_garbage_stale_replies_and_events_are_skipped(cl, board):
    board.garbage_before_reply = True
    data = cl.request("status")
    assert data["state"] == "HOME"
    assert cl.ignored_lines >= 2  # the bad UTF-8 line and the JSON array
    event = cl.next_event(timeout=0.5)
    assert event == {"event": "warning", "code": "test_notice"}


def test_error_replies_raise_typed_exceptions(cl):
    with pytest.raises(C.OutOfRangeError) as info:
        cl.request("program.set", name="guest", angle_mdeg=45000)
    assert info.value.code == "out_of_range"
    assert info.value.allowed == [1000, 30000]
    with pytest.raises(C.BadPinError) as info:
        cl.request("user.create", name="x", pin="9999")
    assert info.value.attempts_left == 2
    with pytest.raises(C.ProtocolError) as info:
        cl.request("user.get", name="nobody")
    assert info.value.code == "not_found" and info.value.cmd == "user.get"
    for _ in range(5):
        try:
            cl.request("log.clear", pin="9999")
        except C.BadPinError:
            pass
        except C.LockedError as locked:
            assert locked.retry_after_ms == 90000
            break
    else:
        pytest.fail("never locked")


def test_busy_carries_the_state(cl, board):
    board.state = "HOLD"
    with pytest.raises(C.BusyError) as info:
        cl.request("user.select", name="guest")
    assert info.value.state == "HOLD"


def test_no_reply_times_out(board):
    board.silent = True
    with C.Client(board.path, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(C.ReplyTimeout, match="no reply to 'status'"):
            client.request("status")
        assert time.monotonic() - started < 2


def test_events_iterator_yields_telemetry_for_a_duration(cl):
    cl.request("telemetry", rate_hz=10)
    started = time.monotonic()
    seen = [e for e in cl.events(duration_s=0.6, idle_s=0.1) if e is not None]
    assert 0.55 < time.monotonic() - started < 1.5
    tele = [e for e in seen if e["event"] == "telemetry"]
    assert len(tele) >= 3
    assert {"t_ms", "state", "angle_mdeg"} <= tele[0].keys()
    cl.request("telemetry", rate_hz=0)


def test_too_long_request_is_refused_locally(cl, board):
    with pytest.raises(ValueError, match="at most 512"):
        cl.request("user.get", name="x" * 600)
    assert board.requests == []


def test_pyserial_url_loop():
    # loop:// echoes our own request back: not a reply (no "ok"), so it times out,
    # but the URL is accepted and a line written by a "board" is read.
    with C.Client("loop://", timeout=0.2) as client:
        client._serial.write(b'{"event": "boot", "firmware": "x"}\n')
        assert client.next_event(timeout=1)["event"] == "boot"


def test_port_in_use_is_reported_as_busy(board):
    with C.Client(board.path, timeout=1), pytest.raises(C.PortBusyError, match="busy"):
        C.Client(board.path, timeout=1)


def test_missing_port_is_no_board(tmp_path):
    with pytest.raises(C.NoBoardError, match="no such port"):
        C.Client(str(tmp_path / "ttyUSB9"))


def _port(device, vid, pid, description="USB serial"):
    return SimpleNamespace(device=device, vid=vid, pid=pid, description=description)


def test_discovery_picks_the_one_board():
    ports = [_port("/dev/ttyS0", None, None, "n/a"), _port("/dev/ttyUSB0", 0x10C4, 0xEA60),
             _port("/dev/ttyACM0", 0x2341, 0x0043, "Arduino")]
    assert C.discover_port(ports) == "/dev/ttyUSB0"
    for vid, pid in C.KNOWN_USB_IDS:
        assert C.discover_port([_port("/dev/x", vid, pid)]) == "/dev/x"


def test_discovery_errors_list_the_candidates():
    with pytest.raises(C.NoBoardError, match="--port"):
        C.discover_port([_port("/dev/ttyS0", None, None)])
    ports = [_port("/dev/ttyUSB0", 0x1A86, 0x7523), _port("/dev/ttyACM0", 0x303A, 0x1001)]
    with pytest.raises(C.SeveralBoardsError) as info:
        C.discover_port(ports)
    assert info.value.ports == ["/dev/ttyUSB0", "/dev/ttyACM0"]
    assert "CH340" in str(info.value) and "/dev/ttyACM0" in str(info.value)


def test_client_without_port_discovers(monkeypatch, board):
    monkeypatch.setattr(serial.tools.list_ports, "comports",
                        lambda: [_port(board.path, 0x0403, 0x6001)])
    with C.Client(None, timeout=2) as client:
        assert client.port == board.path
        assert client.request("status")["state"] == "HOME"


def test_reply_read_while_other_thread_writes_events(board):
    # Events interleaved with the reply are queued, not lost.
    with C.Client(board.path, timeout=2) as client:
        stop = threading.Event()

        def spam():
            while not stop.is_set():
                board.send({"event": "state", "state": "HOME", "from": "BOOT"})
                time.sleep(0.01)

        thread = threading.Thread(target=spam)
        thread.start()
        try:
            for _ in range(5):
                assert client.request("status")["state"] == "HOME"
        finally:
            stop.set()
            thread.join()
        assert client.drain_events()
        assert json.dumps(client.request("info"))


def test_a_request_without_a_reply_is_sent_again_with_the_same_id(cl, board):
    board.drop_next = 2  # the first two sends are lost
    assert cl.request("status", timeout=4)["state"] == "HOME"
    assert cl.sends == 3
    sent = [r["id"] for r in board.requests]
    assert len(sent) == 3 and len(set(sent)) == 1


def test_no_reply_at_all_times_out_after_resending(cl, board):
    board.silent = True
    started = time.monotonic()
    with pytest.raises(C.ReplyTimeout):
        cl.request("status", timeout=2.5)
    assert 2.4 <= time.monotonic() - started < 4
    assert cl.sends == 3  # at 0, 1 and 2 s


def test_a_request_right_after_a_long_garbage_line_succeeds_on_the_real_firmware(tmp_path):
    """6000 bytes of garbage without a newline on the line (a terminal, a
    baud-rate mix-up), then a request: the client's leading newline ends the
    garbage, the firmware answers."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "invtable.host.cli", "sim", "serve",
                             "--state-dir", str(tmp_path / "flash"), "--speed", "5"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().strip()
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        with C.Client(port, timeout=5) as client:
            client.request("status")  # the firmware is up
            client._serial.write(b"\xffgarbage " * 667)  # 6003 bytes, no newline
            client._serial.flush()
            time.sleep(0.3)
            assert client.request("status")["state"] in ("BOOT", "HOME")
            assert client.sends == 1
    finally:
        proc.terminate()
        proc.wait(10)


def test_invtable_stop_says_plainly_when_the_board_never_confirms(board):
    from click.testing import CliRunner

    from invtable.host.cli import main

    board.silent = True
    started = time.monotonic()
    result = CliRunner().invoke(main, ["stop", "--port", board.path, "--timeout", "2.5"])
    assert result.exit_code == 3, result.output
    assert "STOP NOT CONFIRMED" in result.output and "press the STOP button" in result.output
    assert "Traceback" not in result.output
    stops = [r for r in board.requests if r["cmd"] == "stop"]
    assert len(stops) == 3 and len({r["id"] for r in stops}) == 1  # sent again, same id
    assert time.monotonic() - started < 5
