"""Cost of every method on one pair: time per training step relative to kd, peak memory, extra parameters.

Each method runs in its own process; there its steps and kd's are timed alternately on the same data, so the
ratio holds however busy the machine is. Memory is what the method's loss, state, optimiser and steps add on
top of the loaded data and networks (CPU: resident set sampled by a thread; CUDA: peak allocated). The step is
the real one (kdbench.engine.assemble_training + train_epoch: views, contrast indices, teacher forward,
backward, SGD).

    python benchmarks/method_cost.py                      # resnet32x4 -> resnet8x4, batch 64, all methods
    python benchmarks/method_cost.py --methods kd dkd --steps 5 --out cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from kdbench.config import Recipe
from kdbench.data import DatasetSpec, build_data
from kdbench.engine.assemble import assemble_training
from kdbench.engine.environment import resolve_device
from kdbench.engine.loop import train_epoch
from kdbench.loss import METHODS
from kdbench.models import build_model


class PeakResidentMemory:
    """Peak resident memory of this process while the block runs, sampled every ``interval`` s by a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        """Resident set size now, in bytes (Linux /proc)."""
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self) -> PeakResidentMemory:
        self.start = self.peak = self.current()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def measure(method: str, args: argparse.Namespace) -> dict:
    """Seconds per step of ``method`` and of kd, interleaved step by step in this process; memory; extra params.

    Memory is the growth of the process (CPU: resident set; CUDA: peak allocated) from just before the method's
    loss, heads and optimiser are built to the end of its timed steps, with the data and networks already loaded.
    """
    import kdbench.methods  # noqa: F401

    device = resolve_device(args.device)
    torch.manual_seed(0)
    per_class = max(2, args.train_images // args.classes)
    spec = DatasetSpec(name="synthetic", synthetic_classes=args.classes, synthetic_train_per_class=per_class,
                       synthetic_test_per_class=1)
    data = build_data(spec, 32, 3)
    train_set = data.train.to(device)
    recipe = Recipe(epochs=240, batch_size=args.batch, lr=0.05)
    networks = {name: (build_model(args.student, args.classes).to(device),
                       build_model(args.teacher, args.classes).to(device).eval().requires_grad_(False))
                for name in (method, "kd")}

    def assemble(name: str):
        params = METHODS.get(name).resolve_hparams({})
        student, teacher = networks[name]
        uses_teacher = METHODS.get(name).needs_for(params).teacher
        return assemble_training(method=name, params=params, student=student,
                                 teacher=teacher if uses_teacher else None, data=data, train_set=train_set,
                                 recipe=recipe, device=device, seed=0)

    def timed_step(parts, step: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        train_epoch(parts, epoch=step, max_steps=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with PeakResidentMemory() as resident:
        parts = assemble(method)
        timed_step(parts, 1)  # warm-up: allocations, one-time state such as CRD's Z
        method_times = [timed_step(parts, 2)]
    growth = (torch.cuda.max_memory_allocated(device) - before if device.type == "cuda"
              else resident.peak - resident.start)
    kd_parts = assemble("kd")
    timed_step(kd_parts, 1)
    kd_times = [timed_step(kd_parts, 2)]
    for step in range(3, args.steps + 2):  # interleaved, so a change in machine load hits both alike
        method_times.append(timed_step(parts, step))
        kd_times.append(timed_step(kd_parts, step))
    extra = sum(p.numel() for p in parts.loss.parameters() if p.requires_grad)
    method_step, kd_step = sum(method_times) / len(method_times), sum(kd_times) / len(kd_times)
    return {"method": method, "step_s": method_step, "kd_step_s": kd_step, "ratio": method_step / kd_step,
            "memory_mib": growth / 2**20, "extra_params": extra, "device": str(device)}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """The cost table as markdown."""
    lines = [f"Method cost, {args.teacher} → {args.student}, batch {args.batch}, {args.steps} timed steps, "
             f"device {rows[0]['device'] if rows else '?'}, {torch.get_num_threads()} threads.", "",
             "| method | s/step | × kd (interleaved) | memory growth (MiB) | extra trainable params |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['step_s']:.3f} | {row['ratio']:.2f} | {row['memory_mib']:.0f} | "
                     f"{row['extra_params']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure each method in a subprocess and write the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=50_000, help="dataset size (CRD's memory banks)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/method_cost.md"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    import kdbench.methods  # noqa: F401

    names = args.methods or METHODS.names()
    rows = []
    for name in names:
        command = [sys.executable, __file__, "--one", name, *sys.argv[1:]]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"{name}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"{name}: {rows[-1]['step_s']:.3f} s/step ({rows[-1]['ratio']:.2f}× kd)", flush=True)
    table = markdown(rows, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
