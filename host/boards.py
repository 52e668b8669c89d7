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


def board_with_grip(board):
    """A copy of ``board`` with a dead-man grip on the first GPIO the board's
    own validation accepts for it (``board`` itself if it already has one):
    for simulating a table fitted with a grip."""
    if board.get("grip_pin") is not None:
        return board
    from invtable.boards.chips import CHIPS
    from invtable.boards.validate import validate_board

    for pin in CHIPS[board["chip"]]["gpio"]:
        candidate = dict(board, grip_pin=pin)
        if not validate_board(candidate):
            return candidate
    raise ValueError(f"board {board['name']!r} has no GPIO left for a grip")
