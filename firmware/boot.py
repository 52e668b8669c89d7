# boot.py: runs first at every start, before main.py.
#
# Keep it minimal: nothing here may touch the motor pins, start the watchdog
# or fail in a way that stops main.py (the boot loader: it checks the
# firmware slot, then firmware.start builds the HAL with the drive off and
# reports start-up errors). Like main.py it is replaced by deploy as a temp
# file renamed, and stays source at the root. At reset every GPIO is a floating input; the
# drive board's pull-downs keep the bridge off until main.py takes the pins.
try:
    import esp

    # No vendor (ESP-IDF) debug prints mixed into the JSON lines on the REPL port.
    esp.osdebug(None)
except Exception:  # not an ESP32 port (e.g. the simulator)
    pass
