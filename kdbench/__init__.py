"""kdbench: a benchmark harness for knowledge-distillation research."""

__version__ = "0.1.0"
