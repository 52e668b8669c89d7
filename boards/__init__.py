"""Board files: one module per supported board, each defining ``BOARD``.

A board file is deployed to the board as ``board.py`` beside the firmware.
It is plain MicroPython (a dict of numbers and strings) so the same file is
read by the firmware on the ESP32, by the simulator and by the host tools.
"""
