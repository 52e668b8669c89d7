"""The small HAL devices: actuator driver, buttons, home switch, indicator,
watchdog and serial link. Each follows the contract in firmware/hal.py and
carries switches for fault injection."""

from .clock import ticks_diff


class SimActuator:
    """H-bridge driver in front of the physics' actuator."""

    def __init__(self, physics, clock=None, deadline_ms=None):
        self.physics = physics
        self.last_drive = 0  # signed permille, what the bridge outputs
        self.enabled = False  # bridge powered; off() cuts it until next drive()
        self.drive_count = 0
        # The HAL's drive deadline (firmware.hal.DRIVE_DEADLINE_MS) on the
        # simulated clock: a command not renewed within deadline_ms switches
        # the bridge off, as the board's one-shot timer does. None: commands
        # hold until changed (physics-only tests; or the drive comes from the
        # board's HAL on machine_sim pins, whose own timer does it).
        self.clock = clock if deadline_ms is not None else None
        self.deadline_ms = deadline_ms
        self._drive_at_ms = 0
        self.deadline_trips = 0

    def drive(self, permille):
        # Only small integers cross the HAL (no float on the board's hot path).
        if not isinstance(permille, int):
            raise TypeError("drive(permille) takes an int, not " + repr(permille))
        if permille > 1000:
            permille = 1000
        elif permille < -1000:
            permille = -1000
        self.last_drive = permille
        self.enabled = True
        self.drive_count += 1
        if self.clock is not None:
            self._drive_at_ms = self.clock.elapsed_ms

    def off(self):
        self.last_drive = 0
        self.enabled = False

    def overloaded(self):
        return self.physics.overload or self.physics.current_high

    def output_permille(self):
        """What actually reaches the motor this instant."""
        if not self.enabled or not self.physics.powered:
            return 0
        clock = self.clock
        if clock is not None and clock.elapsed_ms - self._drive_at_ms >= self.deadline_ms:
            self.off()
            self.deadline_trips += 1
            return 0
        return self.last_drive


class SimButton:
    """Momentary normally-open button (GO): pressed() is the raw level."""

    def __init__(self):
        self.held = False

    def press(self):
        self.held = True

    def release(self):
        self.held = False

    def pressed(self):
        return self.held


class SimStopButton:
    """STOP, wired normally closed: an open circuit reads as pressed."""

    def __init__(self):
        self.held = False
        self.wire_cut = False

    def press(self):
        self.held = True

    def release(self):
        self.held = False

    def cut_wire(self):
        self.wire_cut = True

    def repair_wire(self):
        self.wire_cut = False

    def pressed(self):
        return self.held or self.wire_cut


class SimHomeSwitch:
    """Limit switch at upright: closed while the true angle is within
    tolerance_mdeg above the home angle (or anywhere below it)."""

    def __init__(self, physics, home_angle_mdeg, tolerance_mdeg=1500):
        self.physics = physics
        self.threshold_deg = (home_angle_mdeg + tolerance_mdeg) / 1000.0
        self.stuck_open = False  # e.g. broken lever or wire: never closes
        self.stuck_closed = False  # e.g. welded contact: always closed

    def closed(self):
        if self.stuck_open:
            return False
        if self.stuck_closed:
            return True
        return self.physics.angle_deg <= self.threshold_deg


class SimIndicator:
    def __init__(self):
        self.beep = False
        self.led = False
        self.beep_count = 0  # beeper on-edges, to count alarm beeps

    def set(self, beep, led):
        beep = bool(beep)
        if beep and not self.beep:
            self.beep_count += 1
        self.beep = beep
        self.led = bool(led)


class SimWdt:
    """Hardware watchdog: running from creation, like machine.WDT."""

    def __init__(self, clock, timeout_ms=2000):
        self.clock = clock
        self.timeout_ms = timeout_ms
        self.last_feed_ticks = clock.ticks_ms()
        self.feed_count = 0
        self.missed = False  # a feed came too late: the chip had already reset

    def feed(self):
        now = self.clock.ticks_ms()
        if ticks_diff(now, self.last_feed_ticks) > self.timeout_ms:
            self.missed = True
        self.last_feed_ticks = now
        self.feed_count += 1

    def _overdue(self):
        return ticks_diff(self.clock.ticks_ms(), self.last_feed_ticks) > self.timeout_ms

    def expired(self):
        return self.missed or self._overdue()

    def reset(self):
        """After the runner has emulated the reset the watchdog causes."""
        self.missed = False
        self.last_feed_ticks = self.clock.ticks_ms()


class FixedLink:
    """The serial line in two preallocated buffers, for heap measurements:
    the firmware's side (``read_byte``, ``write_buf``) allocates nothing.
    The host's side (``host_write``, ``host_read``) runs between ticks."""

    def __init__(self, size=8192):
        self._in = bytearray(size)
        self._in_n = 0
        self._in_pos = 0
        self._out = bytearray(size)
        self._out_n = 0

    def host_write(self, data):
        if isinstance(data, str):
            data = data.encode()
        rest = self._in[self._in_pos : self._in_n]  # what is still unread, to the front
        n = len(rest) + len(data)
        if n > len(self._in):
            raise ValueError("FixedLink: host_write overflows the input buffer")
        self._in[0:n] = rest + data
        self._in_n = n
        self._in_pos = 0

    def host_read(self):
        data = bytes(self._out[: self._out_n])
        self._out_n = 0
        return data

    def pending(self):
        return self._in_n - self._in_pos

    def read_byte(self):
        if self._in_pos >= self._in_n:
            return -1
        b = self._in[self._in_pos]
        self._in_pos += 1
        return b

    def write_buf(self, buf, n):
        o = self._out_n
        if o + n > len(self._out):
            raise ValueError("FixedLink: the output buffer is full (call host_read)")
        out = self._out
        for i in range(n):
            out[o + i] = buf[i]
        self._out_n = o + n
        return n

    def write(self, data):
        if isinstance(data, str):
            data = data.encode()
        return self.write_buf(data, len(data))


class SimLink:
    """The serial line as two byte queues. Never blocks."""

    def __init__(self):
        self._to_fw = bytearray()
        self._to_fw_pos = 0
        self._to_host = bytearray()

    # Host side
    def host_write(self, data):
        if isinstance(data, str):
            data = data.encode()
        self._to_fw.extend(data)

    def host_read(self):
        """All bytes the firmware has written since the last call."""
        data = bytes(self._to_host)
        self._to_host = bytearray()
        return data

    # Firmware side (HAL contract)
    def read_byte(self):
        if self._to_fw_pos >= len(self._to_fw):
            return -1
        b = self._to_fw[self._to_fw_pos]
        self._to_fw_pos += 1
        if self._to_fw_pos == len(self._to_fw):  # drained: reuse the buffer
            self._to_fw = bytearray()
            self._to_fw_pos = 0
        return b

    def write(self, data):
        if isinstance(data, str):
            data = data.encode()
        self._to_host.extend(data)
        return len(data)

    def write_buf(self, buf, n):
        self._to_host.extend(memoryview(buf)[:n])
        return n

    def pending(self):
        """Bytes waiting for the firmware."""
        return len(self._to_fw) - self._to_fw_pos
