"""The `invtable` host command."""
