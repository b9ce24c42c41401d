"""Cost of every method on one pair: time per training step relative to kd, peak memory, extra parameters.

Each method runs in its own process (so peak memory is its own); in that process the method's steps and kd's
steps are timed on the same data, so the ratio is robust to how busy the machine is. The step is the real one
(kdbench.engine.assemble_training + train_epoch: views, contrast indices, teacher forward, backward, SGD).

    python benchmarks/method_cost.py                      # resnet32x4 -> resnet8x4, batch 64, all methods
    python benchmarks/method_cost.py --methods kd dkd --steps 5 --out cost.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdbench.config import Recipe
from kdbench.data import DatasetSpec, build_data
from kdbench.engine.assemble import assemble_training
from kdbench.engine.environment import peak_memory_bytes, resolve_device
from kdbench.engine.loop import train_epoch
from kdbench.loss import METHODS
from kdbench.models import build_model


def measure(method: str, args: argparse.Namespace) -> dict:
    """Seconds per step of ``method`` and of kd in this process, the method's peak memory and extra parameters."""
    import kdbench.methods  # noqa: F401

    device = resolve_device(args.device)
    torch.manual_seed(0)
    per_class = max(2, args.train_images // args.classes)
    spec = DatasetSpec(name="synthetic", synthetic_classes=args.classes, synthetic_train_per_class=per_class,
                       synthetic_test_per_class=1)
    data = build_data(spec, 32, 3)
    train_set = data.train.to(device)
    recipe = Recipe(epochs=240, batch_size=args.batch, lr=0.05)

    def seconds_per_step(name: str) -> tuple[float, int]:
        student = build_model(args.student, args.classes).to(device)
        teacher = build_model(args.teacher, args.classes).to(device).eval().requires_grad_(False)
        uses_teacher = METHODS.get(name).needs_for(METHODS.get(name).resolve_hparams({})).teacher
        parts = assemble_training(method=name, params=METHODS.get(name).resolve_hparams({}), student=student,
                                  teacher=teacher if uses_teacher else None, data=data, train_set=train_set,
                                  recipe=recipe, device=device, seed=0)
        train_epoch(parts, epoch=1, max_steps=1)  # warm-up (allocations, one-time state such as CRD's Z)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        train_epoch(parts, epoch=2, max_steps=args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        extra = sum(p.numel() for p in parts.loss.parameters() if p.requires_grad)
        return (time.perf_counter() - started) / args.steps, extra

    method_step, extra = seconds_per_step(method)
    peak = peak_memory_bytes(device)
    kd_step, _ = seconds_per_step("kd")
    return {"method": method, "step_s": method_step, "kd_step_s": kd_step, "ratio": method_step / kd_step,
            "peak_mib": peak / 2**20, "extra_params": extra, "device": str(device)}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """The cost table as markdown."""
    lines = [f"Method cost, {args.teacher} → {args.student}, batch {args.batch}, {args.steps} timed steps, "
             f"device {rows[0]['device'] if rows else '?'}, {torch.get_num_threads()} threads.", "",
             "| method | s/step | × kd (same process) | peak memory (MiB) | extra trainable params |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['step_s']:.3f} | {row['ratio']:.2f} | {row['peak_mib']:.0f} | "
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
