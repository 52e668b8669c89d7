# loader.py: the boot loader's checks, run by main.py at every boot (source
# at the board's root: main.py compiles it and lets go of it once it has
# decided, so none of this code stays in the heap while the firmware runs).
# It imports nothing of the firmware.
#
# The firmware lives in complete sets, the slots fw/a and fw/b: the firmware
# package (.mpy), board.py, validate.py, chips.py and manifest.json (sha256
# and size of every other file of the slot, the firmware version, the board
# name). fw/active names the slot to run; invtable deploy builds the other
# slot, writes its manifest last, checks it, then switches fw/active (a temp
# file renamed: atomic), keeping the previous slot as the fallback.
#
# Every file of the active slot is checked against its manifest (sha256 in
# 512-byte chunks). Only a complete slot is handed to main.py (``found``),
# which puts it first on sys.path and runs its firmware.start.main(): the
# start-up is versioned with the firmware. A slot that is not complete prints
#   {"event": "boot_error", "code": ..., "message": ...}
# (firmware_incomplete: a file or the manifest missing, or no fw/active;
# firmware_corrupt: a wrong size or sha256, an unreadable manifest or
# fw/active; firmware_missing: no complete firmware and no fw/active), the
# motor pins go low and the beeper on (plain GPIO, from a board file that can
# be read), then the other slot boots if it is complete (after _ALARM_MS of
# alarm; the message says so). With no complete slot the drive stays off, the
# alarm on, and the board waits at the REPL for invtable deploy.
_FW = "fw/"
_ALARM_MS = 2000
# GPIOs never touched (as in firmware/start.py): flash/PSRAM, USB, UART0.
_NEVER = {
    "esp32": (1, 3, 6, 7, 8, 9, 10, 11),
    "esp32s3": (19, 20, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 43, 44),
}


def _hex(data):
    import binascii

    return binascii.hexlify(data).decode()


def _entry(path):
    """[sha256 hex, size] of a file as a manifest names it; None if it cannot
    be opened; a size of -1 if reading it failed."""
    import hashlib

    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except OSError:
        return None
    h = hashlib.sha256()
    n = 0
    buf = bytearray(512)
    with f:
        try:
            k = f.readinto(buf)
            while k:
                h.update(buf if k == 512 else memoryview(buf)[:k])
                n += k
                k = f.readinto(buf)
        except OSError:
            n = -1
    return [_hex(h.digest()), n]


def _manifest(slot):
    """(its bytes, the parsed manifest); OSError when there is none,
    ValueError when it is not one (or names no firmware/start)."""
    import json

    with open(_FW + slot + "/manifest.json", "rb") as f:
        raw = f.read()
    try:
        m = json.loads(raw)
        files = m["files"]
        ok = isinstance(files, dict) and ("firmware/start.mpy" in files
                                          or "firmware/start.py" in files)
    except Exception:
        ok = False
    if not ok:
        raise ValueError
    return raw, m


def _check(slot):
    """(None, what the firmware gets) if the slot is complete, else (code, why)."""
    import hashlib

    d = _FW + slot + "/"
    try:
        raw, m = _manifest(slot)
    except OSError:
        return "firmware_incomplete", d + "manifest.json missing"
    except ValueError:
        return "firmware_corrupt", d + "manifest.json unreadable"
    files = m["files"]
    for name in files:
        got = _entry(d + name)
        if got is None:
            return "firmware_incomplete", d + name + " missing"
        try:
            ok = got == list(files[name])
        except Exception:
            ok = False
        if not ok:
            return "firmware_corrupt", d + name + " does not match the manifest"
    return None, {"slot": slot, "firmware": m.get("firmware"),
                  "manifest_sha256": _hex(hashlib.sha256(raw).digest())}


def _board_ok(slot):
    """The slot's board.py is the one its manifest names (even if the slot
    is not complete)."""
    try:
        return _entry(_FW + slot + "/board.py") == list(_manifest(slot)[1]["files"]["board.py"])
    except Exception:
        return False


def _safe(order):
    """Motor pins low, beeper on: plain GPIO from the first board file that
    can be read, one its manifest vouches for first."""
    try:
        import machine

        paths = [_FW + s + "/board.py" for s in order if _board_ok(s)]
        for path in paths + [_FW + s + "/board.py" for s in order] + ["board.py"]:
            try:
                g = {}
                with open(path) as f:
                    exec(f.read(), g)
                b = g["BOARD"]
                never = _NEVER[b["chip"]]
                pins = [b["actuator"].get(k) for k in ("enable", "pwm_fwd", "pwm_rev")]
                break
            except Exception:
                pass
        else:
            return
        for pin, level in [(p, 0) for p in pins] + [(b.get("beeper_pin"), 1)]:
            if isinstance(pin, int) and pin not in never:  # enable first, beeper last
                machine.Pin(pin, machine.Pin.OUT, value=level)
    except Exception:
        pass


def _report(code, message):
    import json

    print(json.dumps({"event": "boot_error", "code": code, "message": message}))


def _pick():
    """The slot to boot (what _check gave it) or None; reports what is wrong."""
    try:
        with open(_FW + "active", "rb") as f:
            active = f.read(16).strip()
    except OSError:
        active = None
    order = ("a", "b")
    bad = []
    if active in (b"a", b"b"):
        active = active.decode()
        order = (active, "b" if active == "a" else "a")
    elif active is None:
        bad.append(("firmware_incomplete", "no " + _FW + "active"))
    else:
        bad.append(("firmware_corrupt", _FW + "active names no slot: %r" % active))
        active = ""
    found = None
    for slot in order:
        code, why = _check(slot)
        if code is None:
            found = why
            break
        bad.append((code, why))
    if not bad:
        return found
    if found is not None:
        tail = "; booting the complete firmware in %s%s" % (_FW, found["slot"])
        found["fallback_from"] = active or None
        found["fallback_code"] = bad[0][0]
    elif active is None:
        why = "; ".join(w for c, w in bad)
        bad = [("firmware_missing", "no firmware on this board (%s)" % why)]
        tail = ": drive off, alarm on; deploy it with invtable deploy"
    else:
        tail = "; no complete firmware: drive off, alarm on; repair it with invtable deploy"
    bad[-1] = (bad[-1][0], bad[-1][1] + tail)
    for code, why in bad:
        _report(code, why)
    _safe(order if found is None else (found["slot"],))
    if found is not None:
        import time

        try:
            time.sleep_ms(_ALARM_MS)
        except AttributeError:  # CPython (the tests)
            time.sleep(_ALARM_MS / 1000)
    return found


found = _pick()  # what main.py starts (None: nothing)
if found is not None:
    import os

    found["path"] = os.getcwd().rstrip("/") + "/" + _FW + found["slot"]
