"""Tables (and later statistics and plots) built from run records."""

from kdbench.report.errors import ReportError
from kdbench.report.frames import ReportFrames, frames_from_records, load_frames, read_records
from kdbench.report.records import load_records
from kdbench.report.summary import format_summary, summary_table

__all__ = ["ReportError", "ReportFrames", "format_summary", "frames_from_records", "load_frames", "load_records",
           "read_records", "summary_table"]
