"""`invtable console lock` and `invtable maintenance` against the real firmware
behind a pty (`invtable sim serve`)."""

import json
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from invtable.host.cli import main

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def port(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "invtable.host.cli", "sim", "serve",
                             "--state-dir", str(tmp_path / "flash"), "--speed", "5"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    deadline = time.monotonic() + 20
    while json.loads(invtable("status", "--port", path, "--json").output)["state"] != "HOME":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield path
    proc.terminate()
    proc.wait(10)


def invtable(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def info(port):
    return json.loads(invtable("info", "--port", port, "--json").output)


def test_the_lock_takes_effect_with_an_admin_pin_and_maintenance_opens_it(port):
    assert info(port)["console_locked"] is False  # factory PIN: nothing to protect
    assert invtable("pin", "change", "--pin", "0000", "--new-pin", "2468",
                    "--port", port).exit_code == 0
    assert info(port)["console_locked"] is True
    result = invtable("maintenance", "--pin", "1111", "--port", port)
    assert result.exit_code == 5  # a wrong PIN
    result = invtable("maintenance", "--pin", "2468", "--port", port)
    assert result.exit_code == 0 and "open for maintenance" in result.output
    result = invtable("console", "lock", "off", "--pin", "2468", "--port", port)
    assert result.exit_code == 0 and "console lock off" in result.output
    assert info(port)["console_locked"] is False
    result = invtable("console", "lock", "on", "--pin", "2468", "--port", port, "--json")
    assert json.loads(result.output)["console_locked"] is True
