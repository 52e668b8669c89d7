"""Finding board files by name (the modules in ``invtable.boards``)."""

import importlib
import pkgutil

from invtable import boards as _boards_pkg

DEFAULT_BOARD = "esp32_devkitc"
# Modules in boards/ that are helpers, not board files.
_NOT_BOARDS = {"chips", "validate"}


def board_names():
    """Names of every board file shipped with invtable, sorted."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(_boards_pkg.__path__)
        if info.name not in _NOT_BOARDS and not info.name.startswith("_")
    )


def load_board(name):
    """The BOARD dict of board file ``name``. Raises KeyError naming the valid boards."""
    if name not in board_names():
        raise KeyError(f"unknown board {name!r}; known boards: {', '.join(board_names())}")
    return importlib.import_module(f"invtable.boards.{name}").BOARD
