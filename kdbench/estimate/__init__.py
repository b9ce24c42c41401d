"""Cost estimates of runs and grids: per-model FLOPs, per-method factors, dataset sizes, and the run cost model."""

from kdbench.estimate.runcost import (
    ASSUMED_TFLOPS,
    REFERENCE_GPU,
    CostModel,
    MeasuredRate,
    RunCost,
    measured_rates,
    model_cost,
)

__all__ = ["ASSUMED_TFLOPS", "REFERENCE_GPU", "CostModel", "MeasuredRate", "RunCost", "measured_rates", "model_cost"]
