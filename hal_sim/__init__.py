"""Simulated hardware: the same firmware runs on a PC against these models."""
