# main.py: the boot loader, source at the board's root (compiled at every
# boot, and held while the firmware runs: keep it small).
#
# It runs loader.py (beside it, source), which checks the active firmware
# slot against its manifest and reports, drives off and sounds the alarm for
# one that is not complete (see loader.py); its code is let go of once it has
# decided. Only a complete slot is then put first on sys.path, and its
# firmware.start.main() builds the board, given what the loader found (slot,
# firmware version, manifest sha256, the slot it fell back from); what it
# returns runs the app (firmware/supervise.py), start.py's code let go of.
import sys

_g = {"__name__": "loader"}
try:
    with open("loader.py") as _f:
        _c = _f.read()
except OSError:
    _c = "print('{\"event\": \"boot_error\", \"code\": \"firmware_missing\", " \
        "\"message\": \"no loader.py beside main.py: deploy with invtable deploy\"}')"
exec(_c, _g)
_found = _g.get("found")
_c = _g = None
if _found is not None:
    import gc

    gc.collect()
    sys.path.insert(0, _found.pop("path"))
    from firmware.start import main as _start

    _run = _start(_found)  # builds the board; firmware.start then lets go of itself
    _start = _found = None
    gc.collect()
    if _run is not None:
        _run.run()  # the app's loop (firmware/supervise.py)
