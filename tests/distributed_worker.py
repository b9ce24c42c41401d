"""One rank of the multi-process tests (test_distributed.py): join the group the environment describes, take a
CRD and an RRD step on this rank's shard of a fixed global batch, then train the pickled runs.

    python tests/distributed_worker.py JOBS_PICKLE OUT_DIR
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from kdbench.data.batches import shard_bounds
from kdbench.engine.distributed import init_distributed
from kdbench.loss import METHODS, LossContext

GLOBAL_BATCH = 7  # odd: the two shards differ in size (4 and 3 rows)
NUM_SAMPLES = 40


class RankMarker:
    """A run observer that leaves one file per rank it is called on (only rank 0 should be)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def _mark(self, event: str) -> None:
        rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
        with open(Path(self.folder) / f"observed-{event}-rank{rank}", "a") as handle:
            handle.write("x")

    def on_start(self, run_id, run_name, spec, resumed_epoch) -> None:
        self._mark("start")

    def on_epoch(self, entry) -> None:
        self._mark("epoch")

    def on_end(self, record) -> None:
        self._mark("end")


def stateful_step(rank: int, world: int) -> dict[str, torch.Tensor]:
    """CRD's banks and Z and RRD's queue after one training step on shard ``rank`` of ``world``."""
    torch.manual_seed(0)
    f_s, f_t = torch.randn(GLOBAL_BATCH, 8), torch.randn(GLOBAL_BATCH, 6)
    index = torch.randperm(NUM_SAMPLES)[:GLOBAL_BATCH]
    contrast = torch.cat([index[:, None], torch.randint(0, NUM_SAMPLES, (GLOBAL_BATCH, 5))], dim=1)
    lo, hi = shard_bounds(GLOBAL_BATCH, rank, world)
    ctx = LossContext(num_classes=4, student_shapes={"pooled": (8,)}, teacher_shapes={"pooled": (6,)},
                      num_samples=NUM_SAMPLES)
    torch.manual_seed(1)  # the same initial banks and heads on every rank
    crd = METHODS.get("crd")(ctx, nce_k=5, feat_dim=4).train()
    rrd = METHODS.get("rrd")(ctx, queue_size=16, feat_dim=4).train()
    crd.crd_terms(f_s[lo:hi], f_t[lo:hi], index[lo:hi], contrast[lo:hi]).backward()
    rrd.rrd_terms(f_s[lo:hi], f_t[lo:hi])
    return {"memory_s": crd.memory_s, "memory_t": crd.memory_t, "z_s": crd.z_s, "z_t": crd.z_t,
            "queue": rrd.queue, "queue_ptr": rrd.queue_ptr}


def main(jobs_file: str, out_dir: str) -> None:
    """Join the group, save the stateful step's tensors and this rank's view of the runs' records."""
    out = Path(out_dir)
    info = init_distributed(torch.device("cpu"))
    torch.save(stateful_step(info.rank, info.world_size), out / f"state-rank{info.rank}.pt")
    with open(jobs_file, "rb") as handle:
        jobs = pickle.load(handle)
    records = [job().model_dump(mode="json") for job in jobs]
    (out / f"rank{info.rank}.json").write_text(json.dumps({"info": asdict(info), "records": records}))


if __name__ == "__main__":
    main(*sys.argv[1:])
