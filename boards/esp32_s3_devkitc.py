# ESP32-S3-DevKitC-1 (ESP32-S3-WROOM-1, N8R8 or similar) + MPU-6050 + DRV8871.
#
# Wiring (3.3 V logic everywhere; the REPL / host link is the "USB" port,
# native USB on GPIO19/20, so those two are never used):
#   MPU-6050  VCC->3V3, GND->GND, SDA->GPIO8, SCL->GPIO9, AD0->GND (0x68).
#             Mount it on the bed frame, X axis towards the head end, Z axis out
#             of the bed surface (up when the bed is flat), as on the DevKitC board.
#   DRV8871   IN1->GPIO4 (high = towards inversion), IN2->GPIO5 (high = towards
#             home), VM = actuator supply, ILIM resistor sized for the actuator's
#             stall current. The chip has no enable pin, no current-sense and no
#             fault output: over-current is limited by the chip itself and the
#             HAL's overloaded() always reads False (stalls are caught by the
#             firmware's no-movement check). Its inputs have internal pull-downs,
#             so a floating pin (reset, boot) means coast. DRV8871 peaks at 3.6 A:
#             only for small actuators; use the BTS7960 board for larger ones.
#   GO        momentary NO button GPIO10 -> GND (internal pull-up).
#   STOP      mushroom button, NORMALLY CLOSED contact GPIO11 -> GND (internal
#             pull-up): a cut wire reads high = pressed, so the table returns.
#   HOME      micro switch at upright, GPIO12 -> GND: closed = at home.
#   Beeper    active buzzer via NPN on GPIO13; LED (external, with resistor) GPIO14.
#             (The on-board RGB LED on GPIO38/48 is addressable, not a plain LED.)
# Avoided: strapping pins 0, 3, 45, 46; UART0 43/44; USB 19/20; SPI flash and
# PSRAM 26..32 and, on octal-PSRAM modules (N8R8, N16R8), 33..37.
BOARD = {
    "name": "esp32_s3_devkitc",
    "chip": "esp32s3",
    "octal_psram": True,  # N8R8 / N16R8 modules: GPIO33..37 belong to the PSRAM
    # Control loop rate. 50 Hz = 20 ms per tick.
    "control_hz": 50,
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
    # The watchdog resets a hung loop's chip; the motor stops before: a drive
    # command lapses after 100 ms unless renewed (hal.DRIVE_DEADLINE_MS).
    "wdt_timeout_ms": 500,
    "imu": {
        "type": "mpu6050",
        "i2c_id": 0,
        "sda": 8,
        "scl": 9,
        "addr": 0x68,
        "freq_hz": 400000,
        "along": "+x",  # along the bed, towards the head end
        "normal": "+z",  # out of the bed surface
        "gyro": "+y",  # rotation axis (right-handed: +y when x=head, z=up); + = head down
        "offset_mdeg": 0,  # mounting offset, measured at install (see README)
    },
    "actuator": {
        "driver": "drv8871",
        "pwm_fwd": 4,  # DRV8871 IN1
        "pwm_rev": 5,  # DRV8871 IN2
        "pwm_hz": 20000,
    },
    "go_pin": 10,
    "stop_pin": 11,
    "home_pin": 12,
    "beeper_pin": 13,
    "led_pin": 14,
    # Optional dead-man grip: a normally-open hand switch the rider holds,
    # GPIO15 -> GND (internal pull-up; an open wire reads as released). With it
    # a session starts only with the grip held and returns home when it is let
    # go for more than 1 s. None = no grip fitted.
    "grip_pin": None,
}
