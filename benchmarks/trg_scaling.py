"""TRG's loss cost against batch size B and tokens per image m, relative to the student's own training step.

For each (B, m) a fresh process times the TRG loss (all terms: CE, KD, contextual, local graph, global InfoNCE)
forward + backward on tokens of the shape the pair really produces (resnet32x4 → resnet8x4 by default: 8×8 grid,
256-d tokens on both sides), and its peak memory growth. The student step is resnet8x4's forward + backward + SGD
step on a B×3×32×32 batch with CE, also in a fresh process. One extra row runs B=512, m=16 with one unblocked
block (``block_size`` ≥ B·m) to show what the blockwise kNN and checkpointed InfoNCE save.

    python benchmarks/trg_scaling.py                          # B ∈ {64,128,256,512}, m ∈ {4,16,64}
    python benchmarks/trg_scaling.py --batches 64 --ms 16 --repeats 2 --out trg.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from method_cost import PeakResidentMemory  # benchmarks/ is the script's directory, so on sys.path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, repeats: int, device: torch.device) -> float:
    """Mean seconds of ``step()`` over ``repeats`` calls after one warm-up call."""
    step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return (time.perf_counter() - started) / repeats


def _memory(device: torch.device, step) -> float:
    """Peak memory growth (MiB) while ``step()`` runs once: CUDA peak allocated, CPU resident set."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with PeakResidentMemory(interval=0.001) as resident:
        step()
    return (resident.peak - resident.start) / 2**20


def measure_trg(batch: int, m: int, block_size: int, args: argparse.Namespace) -> dict:
    """Seconds and MiB of one TRG loss forward + backward at batch ``batch`` with ``m`` tokens per image."""
    import kdbench.methods  # noqa: F401
    from kdbench.loss import METHODS, LossContext, Progress
    from kdbench.models import build_model
    from kdbench.models.taps import tap_shapes

    device = torch.device(args.device)
    torch.manual_seed(0)
    taps = ("logits", "tokens")
    student_shapes = tap_shapes(build_model(args.student, args.classes), taps, (3, 32, 32))
    teacher_shapes = tap_shapes(build_model(args.teacher, args.classes), taps, (3, 32, 32))
    hparams = METHODS.get("trg").resolve_hparams({"tokens_per_image": m, "block_size": block_size})
    context = LossContext(num_classes=args.classes, student_shapes=student_shapes, teacher_shapes=teacher_shapes,
                          epochs=240)
    loss = METHODS.get("trg")(context, **hparams).to(device)
    student = {name: torch.randn(batch, *shape, device=device, requires_grad=True)
               for name, shape in student_shapes.items()}
    teacher = {name: torch.randn(batch, *shape, device=device) for name, shape in teacher_shapes.items()}
    target = {"target": torch.randint(0, args.classes, (batch,), device=device)}
    progress = Progress(epoch=1, epochs=240, step=0, steps_per_epoch=100)

    def step() -> None:
        terms = loss(student, teacher, target, progress)
        sum(terms.values()).backward()

    seconds = _timed(step, args.repeats, device)
    return {"batch": batch, "m": m, "nodes": batch * m, "block_size": block_size, "seconds": seconds,
            "memory_mib": _memory(device, step)}


def measure_student(batch: int, args: argparse.Namespace) -> dict:
    """Seconds and MiB of the student's own step (forward, CE, backward, SGD) at batch ``batch``."""
    from kdbench.models import build_model

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.student, args.classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, args.classes, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return {"batch": batch, "seconds": _timed(step, args.repeats, device), "memory_mib": _memory(device, step)}


def _in_subprocess(kind: str, args: argparse.Namespace, **values: int) -> dict:
    """Run one measurement in a fresh interpreter, so memory growth is not hidden by an earlier run's pool."""
    command = [sys.executable, __file__, "--one", json.dumps({"kind": kind, **values}),
               "--student", args.student, "--teacher", args.teacher, "--classes", str(args.classes),
               "--repeats", str(args.repeats), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {values} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(students: dict[int, dict], rows: list[dict], args: argparse.Namespace) -> str:
    """The scaling table as markdown."""
    lines = [f"TRG loss forward+backward vs. the student step, {args.teacher} → {args.student} tokens, "
             f"device {args.device}, {torch.get_num_threads()} threads, mean of {args.repeats} timed repeats.", "",
             "| B | m | nodes B·m | block | TRG loss s | student step s | TRG / student | TRG memory MiB | "
             "student memory MiB |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        student = students[row["batch"]]
        lines.append(f"| {row['batch']} | {row['m']} | {row['nodes']:,} | {row['block_size']:,} | "
                     f"{row['seconds']:.3f} | {student['seconds']:.3f} | {row['seconds'] / student['seconds']:.2f} | "
                     f"{row['memory_mib']:.0f} | {student['memory_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure the student step per B and TRG per (B, m), each in its own process, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="*", default=[64, 128, 256, 512])
    parser.add_argument("--ms", type=int, nargs="*", default=[4, 16, 64])
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=2048, help="TRG's block_size (its default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        job = json.loads(args.one)
        kind = job.pop("kind")
        result = measure_student(job["batch"], args) if kind == "student" else measure_trg(**job, args=args)
        print(json.dumps(result))
        return
    students = {}
    for batch in args.batches:
        students[batch] = _in_subprocess("student", args, batch=batch)
        print(f"student B={batch}: {students[batch]['seconds']:.3f} s", file=sys.stderr)
    rows = []
    for batch in args.batches:
        for m in args.ms:
            rows.append(_in_subprocess("trg", args, batch=batch, m=m, block_size=args.block_size))
            print(f"trg B={batch} m={m}: {rows[-1]['seconds']:.3f} s {rows[-1]['memory_mib']:.0f} MiB", file=sys.stderr)
    if 512 in args.batches and 16 in args.ms:  # the same size with one unblocked block, for comparison
        rows.append(_in_subprocess("trg", args, batch=512, m=16, block_size=512 * 16))
    table = markdown(students, rows, args)
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
