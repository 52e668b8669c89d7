"""A minimal fake board on a pty, answering docs/protocol.md for host tests.

Not the firmware: just enough of the contract (users, limits, PIN attempts,
log, telemetry, today's inverted time) to test the client and the CLI without
the simulator. Its board caps are those of the shipped board files.
"""

import json
import os
import select
import threading
import time
import tty

from invtable.firmware.settings import max_hold_ms

CAP_ANGLE = 60000
CAP_SPEED = 8000
CAP_INVERTED = 600000  # per session
CAP_DAILY = 1200000
LIMITS = {"max_angle_mdeg": (1000, CAP_ANGLE), "max_inverted_ms": (10000, CAP_INVERTED),
          "max_speed_mdeg_s": (1000, CAP_SPEED), "max_daily_inverted_ms": (10000, CAP_DAILY),
          "check_in_ms": (0, 600000)}
PROGRAM = {"angle_mdeg": (1000, "max_angle_mdeg"), "hold_ms": (10000, 600000),
           "sets": (1, 5), "rest_ms": (10000, 600000),
           "speed_mdeg_s": (1000, "max_speed_mdeg_s"), "exit_pause_ms": (0, 60000)}
PROGRESSION = {"angle_step_mdeg": (0, 5000), "hold_step_ms": (0, 60000)}


class Refused(Exception):
    def __init__(self, code, message, **details):
        super().__init__(code)
        self.error = {"code": code, "message": message, **details}


def _new_user(name):
    return {"name": name,
            "limits": {"max_angle_mdeg": 30000, "max_inverted_ms": 120000,
                       "max_speed_mdeg_s": 4000, "max_daily_inverted_ms": 600000,
                       "check_in_ms": 60000},
            "program": {"angle_mdeg": 20000, "hold_ms": 60000, "sets": 1, "rest_ms": 60000,
                        "speed_mdeg_s": 3000, "exit_pause_ms": 10000},
            "progression": {"angle_step_mdeg": 0, "hold_step_ms": 0}}


class FakeBoard:
    def __init__(self, pin="1234"):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.pin = pin
        self.fails = 0
        self.state = "HOME"
        self.angle = -60000
        self.users = {"guest": _new_user("guest")}
        self.active = "guest"
        self.daily_used = {}  # user -> inverted ms today
        self.check_in_waiting = False
        self.warning = None
        self.fault = None
        self.fault_chain = []
        self.last_end = None
        self.settings_status = "ok"
        self.log_status = "ok"
        self.micropython = "1.27"
        self.log = [{"user": "guest", "start_s": 1700000000 + 600 * i, "uptime_ms": 1000 * i,
                     "max_angle_mdeg": 15000 + 1000 * i, "inverted_ms": 30000 + 5000 * i,
                     "end": "completed", "fault": None, "daily_ms": None} for i in range(12)]
        self.rate_hz = 0
        self.requests = []
        self.garbage_before_reply = False
        self.silent = False
        self.drop_next = 0  # requests to lose on the way (no reply)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self):
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)

    def send(self, obj):
        os.write(self.master, (json.dumps(obj) + "\n").encode())

    def _run(self):
        buf = b""
        next_tm = time.monotonic()
        t_ms = 0
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if ready:
                try:
                    buf += os.read(self.master, 512)
                except OSError:
                    continue
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._handle(line)
            now = time.monotonic()
            if self.rate_hz and now >= next_tm:
                next_tm = now + 1 / self.rate_hz
                t_ms += int(1000 / self.rate_hz)
                self.send({"event": "telemetry", "t_ms": t_ms, "state": self.state,
                           "angle_mdeg": self.angle, "target_mdeg": None, "inverted_ms": 0,
                           "remaining_ms": None, "sets_done": 0, "fault": None})

    def _handle(self, line):
        if not line.strip():
            return  # empty lines are ignored, as the firmware does
        try:
            req = json.loads(line)
        except ValueError:
            self.send({"id": None, "ok": False,
                       "error": {"code": "bad_json", "message": "bad json"}})
            return
        self.requests.append(dict(req))
        if self.silent:
            return
        if self.drop_next > 0:
            self.drop_next -= 1
            return
        rid = req.pop("id", None)
        cmd = req.pop("cmd", None)
        if self.garbage_before_reply:
            os.write(self.master, b"\xff\xfe not json\n[1,2]\n")
            self.send({"event": "warning", "code": "test_notice"})
            self.send({"id": 999999, "ok": True, "data": {}})  # a stale reply
        try:
            data = getattr(self, "cmd_" + cmd.replace(".", "_"))(**req)
            self.send({"id": rid, "ok": True, "data": data})
        except Refused as r:
            self.send({"id": rid, "ok": False, "error": r.error})
        except (AttributeError, TypeError) as e:
            self.send({"id": rid, "ok": False,
                       "error": {"code": "unknown_cmd", "message": str(e)}})

    # -- helpers
    def _admin(self, pin):
        if self.fails >= 5:
            raise Refused("locked", "too many wrong PINs: locked", retry_after_ms=90000)
        if pin != self.pin:
            self.fails += 1
            left = max(0, 3 - self.fails)
            raise Refused("bad_pin", "wrong PIN", attempts_left=left,
                          retry_after_ms=0 if left else 30000)
        self.fails = 0

    def _home(self):
        if self.state != "HOME":
            raise Refused("busy", "not at HOME (state " + self.state + ")", state=self.state)

    def _user(self, name):
        if name not in self.users:
            raise Refused("not_found", "no user " + name)
        return self.users[name]

    @staticmethod
    def _check(field, value, lo, hi):
        if value < lo or value > hi:
            raise Refused("out_of_range", f"{field} must be {lo}..{hi} (got {value})",
                          allowed=[lo, hi])

    def _daily(self, name):
        limits = self.users[name]["limits"]
        return {"daily_used_ms": self.daily_used.get(name, 0),
                "daily_limit_ms": min(limits["max_daily_inverted_ms"], CAP_DAILY)}

    # -- commands
    def cmd_info(self):
        return {"firmware": "fake-1", "protocol": 1, "board": "fake", "chip": "esp32",
                "micropython": self.micropython, "caps": {"max_angle_mdeg": CAP_ANGLE,
                                                 "max_speed_mdeg_s": CAP_SPEED},
                "max_users": 8, "line_max": 512}

    def cmd_status(self):
        return {"state": self.state, "angle_mdeg": self.angle, "target_mdeg": None,
                "fault": self.fault, "fault_chain": list(self.fault_chain),
                "warning": self.warning, "user": self.active,
                "session": False, "sets_done": 0, "inverted_ms": 0,
                "inverted_limit_ms": 120000, "last_end": self.last_end, "last_error": None,
                "uptime_ms": 5000, "pin_is_default": False,
                "settings_status": self.settings_status, "log_status": self.log_status,
                "check_in_waiting": self.check_in_waiting,
                "boot_errors": [], **self._daily(self.active)}

    def cmd_stop(self):
        self.state = "RETURN" if self.state not in ("HOME", "FAULT") else self.state
        return {"state": self.state}

    def cmd_telemetry(self, rate_hz):
        self._check("rate_hz", rate_hz, 0, 10)
        self.rate_hz = rate_hz
        return {"rate_hz": rate_hz}

    def cmd_user_list(self):
        return {"users": [{"name": n, "active": n == self.active} for n in self.users],
                "max_users": 8}

    def cmd_user_get(self, name):
        return dict(self._user(name), active=name == self.active, **self._daily(name))

    def cmd_user_create(self, name, pin):
        self._admin(pin)
        self._home()
        if name in self.users:
            raise Refused("exists", "user " + name + " exists")
        self.users[name] = _new_user(name)
        return dict(self.users[name], active=False, **self._daily(name))

    def cmd_user_delete(self, name, pin):
        self._admin(pin)
        self._home()
        self._user(name)
        if len(self.users) == 1:
            raise Refused("last_user", "the only user cannot be deleted")
        del self.users[name]
        return {}

    def cmd_user_select(self, name):
        self._home()
        self._user(name)
        self.active = name
        return {"active": name}

    def cmd_program_set(self, name, **args):
        self._home()
        user = self._user(name)
        for field, value in args.items():
            lo, hi = PROGRAM[field]
            hi = user["limits"][hi] if isinstance(hi, str) else hi
            self._check(field, value, lo, hi)
        program = dict(user["program"], **args)
        # The sets' holds together fit the user's time limit (firmware.settings).
        self._check("hold_ms", program["hold_ms"], 10000,
                    max_hold_ms(user["limits"], program["sets"]))
        user["program"].update(args)
        return {"program": user["program"]}

    def cmd_limits_set(self, name, pin, **args):
        self._admin(pin)
        self._home()
        user = self._user(name)
        for field, value in args.items():
            self._check(field, value, *LIMITS[field])
        user["limits"].update(args)
        prog = user["program"]
        prog["angle_mdeg"] = min(prog["angle_mdeg"], user["limits"]["max_angle_mdeg"])
        return {"limits": user["limits"], "program": prog}

    def cmd_progression_set(self, name, pin, **args):
        self._admin(pin)
        self._home()
        user = self._user(name)
        for field, value in args.items():
            self._check(field, value, *PROGRESSION[field])
        user["progression"].update(args)
        return {"progression": user["progression"]}

    def cmd_pin_change(self, pin, new_pin):
        self._admin(pin)
        self._home()
        if new_pin == "0000" or not new_pin.isdigit():
            raise Refused("invalid_pin", "new PIN must be 4..8 digits, not the default")
        self.pin = new_pin
        return {}

    def cmd_log_read(self, start=0, count=10):
        self._check("count", count, 1, 10)
        return {"entries": self.log[start:start + count], "total": len(self.log),
                "status": self.log_status}

    def cmd_log_clear(self, pin):
        self._admin(pin)
        self._home()
        self.log = []
        return {}

    def cmd_clock_set(self, epoch_s, utc_offset_s=0):
        self._check("utc_offset_s", utc_offset_s, -50400, 50400)
        self.epoch_s = epoch_s
        self.utc_offset_s = utc_offset_s
        return {"epoch_s": epoch_s, "utc_offset_s": utc_offset_s}
