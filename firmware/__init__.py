# invtable firmware: portable MicroPython (ESP32) and CPython 3.11.
# Modules import each other relatively so the same files run as the package
# `firmware` on the board and as `invtable.firmware` on a PC.
