"""Re-export of :mod:`obliviate.tables` (the table formatting every command and report shares)."""

from obliviate.tables import format_html_table, format_table

__all__ = ["format_html_table", "format_table"]
