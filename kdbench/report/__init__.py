"""Tables (and later statistics and plots) built from run records."""

from kdbench.report.records import load_records
from kdbench.report.summary import format_summary, summary_table

__all__ = ["format_summary", "load_records", "summary_table"]
