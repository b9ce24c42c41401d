"""ReportError: bad input to a report (no finished runs, mixed grids, a one-group rule...)."""

from kdbench.config_errors import ConfigError


class ReportError(ConfigError):
    """A report cannot be built from this input; the message says why and what to do (CLI exit code 2)."""
