"""invtable: firmware and host tools for a motorised inversion table."""

__version__ = "0.1.0"
