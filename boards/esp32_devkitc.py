# ESP32-DevKitC (ESP32-WROOM-32) + MPU-6050 IMU + BTS7960 H-bridge.
#
# Wiring (3.3 V logic everywhere):
#   MPU-6050  VCC->3V3, GND->GND, SDA->GPIO21, SCL->GPIO22, AD0->GND (0x68).
#             Mount it on the bed frame, X axis pointing towards the head end,
#             Z axis out of the bed surface (towards the rider's back side up).
#   BTS7960   RPWM->GPIO25 (drive towards inversion), LPWM->GPIO26 (towards home),
#             R_EN+L_EN->GPIO27 (bridge enable), R_IS+L_IS->GPIO36 via the
#             module's sense resistor (current sense, ADC, input only).
#   GO        momentary NO button GPIO32 -> GND (internal pull-up).
#   STOP      mushroom button, NORMALLY CLOSED contact GPIO33 -> GND (internal
#             pull-up): a cut wire reads high = pressed, so the table returns.
#   HOME      NC micro switch at upright, GPIO13 -> GND: closed = at home.
#   Beeper    active buzzer via NPN on GPIO18; LED GPIO19.
# Strapping pins (0, 2, 5, 12, 15) and UART0 (1, 3) glitch at boot and are
# never used for the motor driver.
BOARD = {
    "name": "esp32_devkitc",
    "chip": "esp32",
    # Control loop rate. 50 Hz = 20 ms per tick: fast enough for a table that
    # moves at most 10 deg/s (0.2 deg per tick), slow enough for MicroPython.
    "control_hz": 50,
    # Hardware watchdog: resets a hung loop's board. The motor stops before:
    # a drive command lapses after 100 ms unless renewed (hal.DRIVE_DEADLINE_MS),
    # at most 2 deg of travel at the 10 deg/s cap with this actuator's lag.
    "wdt_timeout_ms": 500,
    # Geometry and hard caps: the serial line can never exceed these.
    "home_angle_mdeg": -60000,  # upright loading position, at the home switch
    "max_angle_mdeg": 90000,  # mechanical end of travel (fully inverted)
    "max_speed_mdeg_s": 10000,  # hard speed cap (source documents: <= 10 deg/s)
    "max_accel_mdeg_s2": 10000,  # STOP from 10 deg/s to rest in 1 s
    "actuator_speed_mdeg_s": 12000,  # table speed at full drive, no load
    "actuator_lag_ms": 100,  # time constant of the actuator's response to drive
    "recovery_speed_mdeg_s": 2000,  # slow return when the angle is not trusted
    # Exposure caps no user's limit may exceed: inverted time per session (the
    # manuals' "up to 10 minutes") and per user per day (firmware/exposure.py).
    "max_inverted_ms": 600000,
    "max_daily_inverted_ms": 1200000,
    "imu": {
        "type": "mpu6050",
        "i2c_id": 0,
        "sda": 21,
        "scl": 22,
        "addr": 0x68,
        "freq_hz": 400000,
        # Which sensor axis (sign + axis) points where on the table:
        "along": "+x",  # along the bed, towards the head end
        "normal": "+z",  # out of the bed surface
        "gyro": "+y",  # rotation axis (right-handed: +y when x=head, z=up); + = head down
        "offset_mdeg": 0,  # mounting offset, measured at install (see README)
    },
    "actuator": {
        "driver": "bts7960",
        "pwm_fwd": 25,
        "pwm_rev": 26,
        "enable": 27,
        "sense_adc": 36,
        "pwm_hz": 20000,
        "overload_mv": 2500,  # IS voltage above which the bridge is overloaded
    },
    "go_pin": 32,
    "stop_pin": 33,
    "home_pin": 13,
    "beeper_pin": 18,
    "led_pin": 19,
    # Optional dead-man grip: a normally-open hand switch the rider holds,
    # GPIO14 -> GND (internal pull-up; an open wire reads as released). With it
    # a session starts only with the grip held and returns home when it is let
    # go for more than 1 s. None = no grip fitted.
    "grip_pin": None,
}
