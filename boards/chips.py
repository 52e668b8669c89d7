"""GPIO facts per chip, used by ``validate.validate_board``.

Plain data so the file also runs on the board. Sources: the ESP32 and
ESP32-S3 datasheets (pin lists, strapping pins) and the DevKitC user guides.

Keys of each chip entry:
    gpio        every GPIO number the chip has
    reserved    GPIOs wired to something that must not be touched: SPI flash,
                PSRAM, native USB. Never usable.
    octal_psram GPIOs used by octal PSRAM on modules that have it (a board
                declares ``"octal_psram": True``; unknown counts as True)
    strapping   sampled at reset to choose the boot mode: they glitch and may
                be pulled high or low at boot, and a contact holding one low
                can stop the chip from booting
    uart0       (TX, RX) of UART0, the REPL / boot log port
    input_only  GPIOs with no output driver and no internal pull resistors
    adc1        GPIOs on ADC1 (ADC2 is shared with Wi-Fi; do not rely on it)
    i2c_ids     hardware I2C controllers
"""

CHIPS = {
    # ESP32 (ESP32-WROOM-32 on the ESP32-DevKitC). GPIO 16/17 are PSRAM on
    # WROVER modules: do not use them on a WROVER board.
    "esp32": {
        "gpio": tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40)),
        "reserved": (6, 7, 8, 9, 10, 11),  # SPI flash
        "octal_psram": (),
        "strapping": (0, 2, 5, 12, 15),
        "uart0": (1, 3),
        "input_only": (34, 35, 36, 37, 38, 39),
        "adc1": (32, 33, 34, 35, 36, 37, 38, 39),
        "i2c_ids": (0, 1),
    },
    # ESP32-S3 (ESP32-S3-WROOM-1 on the ESP32-S3-DevKitC-1).
    "esp32s3": {
        "gpio": tuple(range(0, 22)) + tuple(range(26, 49)),
        # 26..32: SPI flash / quad PSRAM; 19, 20: native USB (the REPL port).
        "reserved": (19, 20, 26, 27, 28, 29, 30, 31, 32),
        "octal_psram": (33, 34, 35, 36, 37),
        "strapping": (0, 3, 45, 46),
        "uart0": (43, 44),
        "input_only": (),
        "adc1": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
        "i2c_ids": (0, 1),
    },
}


def chip_info(name):
    """The entry for a chip name, or None if the chip is unknown."""
    return CHIPS.get(name)
