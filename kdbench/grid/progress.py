"""Progress of a grid: runs done, elapsed time and ETA, with the runs weighted by their estimated relative cost.

The ETA is the remaining runs' cost divided by the rate observed so far (cost of the runs finished since the
start per wall second), so it carries the machine's real speed and parallelism (several workers, Slurm arrays);
the cost model (kdbench.estimate, FLOPs only) just weighs a teacher against a student, MLKD against KD.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from kdbench.estimate.runcost import model_cost
from kdbench.progress import progress_text, rate_eta
from kdbench.runspec import RunSpec


def relative_costs(specs: Iterable[RunSpec]) -> dict[str, float]:
    """run id → the model's estimated seconds from the shipped FLOPs table (no model is built here); runs it
    cannot estimate weigh the mean of the others (1 each when none can, which makes the ETA a count of runs)."""
    found = {spec.run_id: model_cost(spec, count=False).seconds for spec in specs}
    known = [cost for cost in found.values() if cost is not None and cost > 0]
    fallback = sum(known) / len(known) if known else 1.0
    return {run_id: cost if cost is not None and cost > 0 else fallback for run_id, cost in found.items()}


class GridProgress:
    """Runs of one `kdbench run` invocation: how many are done (failed ones included), elapsed, ETA."""

    def __init__(self, specs: Iterable[RunSpec], clock=time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.costs = relative_costs(specs)
        self.finished: dict[str, bool] = {}  # run id → failed

    def add(self, specs: Iterable[RunSpec]) -> None:
        """Runs added to this invocation after it started (students retrained because their teacher was)."""
        new = [spec for spec in specs if spec.run_id not in self.costs]
        if new:
            extra = relative_costs(new)
            self.costs.update(extra)

    def drop(self, run_id: str) -> None:
        """A run that will not be trained here after all (blocked, or trained by another process)."""
        self.costs.pop(run_id, None)

    def finish(self, run_id: str, failed: bool = False) -> None:
        """A run ended (done or failed)."""
        if run_id in self.costs:
            self.finished[run_id] = failed

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the remaining runs are done at the rate observed so far; None before any run finished."""
        elapsed = (self._clock() if now is None else now) - self.started
        done = sum(self.costs[run_id] for run_id in self.finished)
        remaining = sum(cost for run_id, cost in self.costs.items() if run_id not in self.finished)
        return rate_eta(done, elapsed, remaining)

    def line(self) -> str:
        """'runs 5/44 done (1 failed), elapsed 1:23, ETA 3:10'."""
        now = self._clock()
        failed = sum(self.finished.values())
        return (f"runs {len(self.finished)}/{len(self.costs)} done" + (f" ({failed} failed)" if failed else "")
                + f", {progress_text(now - self.started, self.eta(now))}")
