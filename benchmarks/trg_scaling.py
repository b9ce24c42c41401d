"""TRG's loss cost against batch size B and tokens per image m, relative to the student's own training step.

For each (B, m) a fresh process measures the TRG loss (all terms: CE, KD, contextual, local graph, global
InfoNCE) forward + backward on tokens of the shape the pair really produces (resnet32x4 → resnet8x4 by default:
8×8 grid, 256-d tokens on both sides): first its peak memory growth, then its time alternated step by step with
the student's own step (resnet8x4 forward, CE, backward, SGD on a B×3×32×32 batch), so the ratio holds however
busy the machine is. One extra row runs B=512, m=16 as a single unblocked block (``block_size`` = B·m) to show
what the blockwise kNN and checkpointed InfoNCE save.

    python benchmarks/trg_scaling.py                          # B ∈ {64,128,256,512}, m ∈ {4,16,64}
    python benchmarks/trg_scaling.py --batches 64 --ms 16 --repeats 3 --out trg.md
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


def _timed(step, device: torch.device) -> float:
    """Seconds of one ``step()`` call."""
    _sync(device)
    started = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - started


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


def _trg_step(batch: int, m: int, block_size: int, args: argparse.Namespace):
    """A closure running one TRG loss forward + backward at batch ``batch`` with ``m`` tokens per image."""
    import kdbench.methods  # noqa: F401
    from kdbench.loss import METHODS, LossContext, Progress
    from kdbench.models import build_model
    from kdbench.models.taps import tap_shapes

    device = torch.device(args.device)
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

    return step


def _student_step(batch: int, args: argparse.Namespace):
    """A closure running the student's own step (forward, CE, backward, SGD) at batch ``batch``."""
    from kdbench.models import build_model

    device = torch.device(args.device)
    model = build_model(args.student, args.classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, args.classes, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def measure(batch: int, m: int, block_size: int, args: argparse.Namespace) -> dict:
    """TRG's memory growth (measured first, in this fresh process), then TRG and student steps timed alternately.

    Alternating the two step by step makes their ratio hold however busy the machine is.
    """
    torch.manual_seed(0)
    device = torch.device(args.device)
    trg = _trg_step(batch, m, block_size, args)
    memory = _memory(device, trg)
    student = _student_step(batch, args)
    student()  # warm-up
    trg_seconds, student_seconds = 0.0, 0.0
    for _ in range(args.repeats):
        trg_seconds += _timed(trg, device)
        student_seconds += _timed(student, device)
    return {"batch": batch, "m": m, "nodes": batch * m, "block_size": block_size, "memory_mib": memory,
            "seconds": trg_seconds / args.repeats, "student_seconds": student_seconds / args.repeats}


def _in_subprocess(args: argparse.Namespace, **values: int) -> dict:
    """Run one measurement in a fresh interpreter, so memory growth is not hidden by an earlier run's pool."""
    command = [sys.executable, __file__, "--one", json.dumps(values), "--student", args.student,
               "--teacher", args.teacher, "--classes", str(args.classes), "--repeats", str(args.repeats),
               "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{values} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """The scaling table as markdown."""
    lines = [f"TRG loss forward+backward vs. the student step ({args.student} forward, CE, backward, SGD), "
             f"{args.teacher} → {args.student} token shapes, device {args.device}, {torch.get_num_threads()} "
             f"threads, mean of {args.repeats} alternated repeats.", "",
             "| B | m | nodes B·m | block | TRG loss s | student step s | TRG / student | TRG peak memory MiB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['m']} | {row['nodes']:,} | {row['block_size']:,} | "
                     f"{row['seconds']:.3f} | {row['student_seconds']:.3f} | "
                     f"{row['seconds'] / row['student_seconds']:.2f} | {row['memory_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure each (B, m) in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="*", default=[64, 128, 256, 512])
    parser.add_argument("--ms", type=int, nargs="*", default=[4, 16, 64])
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=2048, help="TRG's block_size (its default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one), args=args)))
        return
    sizes = [(batch, m, args.block_size) for batch in args.batches for m in args.ms]
    if 512 in args.batches and 16 in args.ms:  # the same size as one unblocked block, for comparison
        sizes.append((512, 16, 512 * 16))
    rows = []
    for batch, m, block_size in sizes:
        rows.append(_in_subprocess(args, batch=batch, m=m, block_size=block_size))
        print(f"B={batch} m={m} block={block_size}: trg {rows[-1]['seconds']:.3f} s, student "
              f"{rows[-1]['student_seconds']:.3f} s, {rows[-1]['memory_mib']:.0f} MiB", file=sys.stderr, flush=True)
    table = markdown(rows, args)
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
