"""Run records (the source of truth) and the MLflow sink."""

from kdbench.tracking.record import EpochLog, EvalResult, RunRecord, read_record, write_record

__all__ = ["EvalResult", "EpochLog", "RunRecord", "read_record", "write_record"]
