"""Cost of every method on one pair: time per training step relative to kd, peak memory, extra parameters.

Each method runs in its own process; there its steps and kd's are timed alternately on the same data, so the
ratio holds however busy the machine is. Memory is what the method's loss, state, optimiser and steps add on
top of the loaded data and networks (CPU: resident set sampled by a thread; CUDA: peak allocated). The step is
the real one (kdbench.engine.assemble_training + train_epoch: views, contrast indices, teacher forward,
backward, SGD).

    python benchmarks/method_cost.py                      # resnet32x4 -> resnet8x4, batch 64, all methods
    python benchmarks/method_cost.py --methods kd dkd --steps 5 --out cost.md
    python benchmarks/method_cost.py --methods crd mlld mlkd --steps 7 --before-ref 8667547   # before/after

``--before-ref REF`` also times each method as it was at git ``REF`` (its module file and the data-path
modules of ``BEFORE_DATA_MODULES``, read with ``git show`` and loaded beside the current ones), interleaved
with the current code and kd step by step in the same process: one table, before and after. Step times are
medians over the timed steps (the machine may be shared); the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from kdbench import loss as loss_module
from kdbench.config import Recipe
from kdbench.data import DatasetSpec, build_data
from kdbench.data.views import view_copies
from kdbench.engine import cpu_memory
from kdbench.engine.assemble import assemble_training
from kdbench.engine.environment import resolve_device
from kdbench.engine.loop import train_epoch
from kdbench.loss import METHODS
from kdbench.models import build_model

REPO = Path(__file__).resolve().parents[1]
#: Data-path modules a "before" method also takes from the git ref: file → (module, attribute) the batches use.
BEFORE_DATA_MODULES = {"kdbench/data/contrast.py": [("kdbench.data.batches", "sample_contrast_indices")]}


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


def git_source(ref: str, path: str) -> str:
    """The text of ``path`` (relative to the repository) at git ``ref``; CalledProcessError if git cannot."""
    return subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def load_source(source: str, name: str) -> ModuleType:
    """Execute ``source`` as a fresh module called ``name``."""
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def register_before(method: str, ref: str) -> tuple[str, dict[tuple[str, str], object]]:
    """Register ``method`` as implemented at git ``ref`` under ``method@ref``; return that name and data patches.

    The method's module file is executed from ``ref`` with ``register_method`` suffixing every name it
    registers; the patches map (module, attribute) of the batches' data path to the ref's functions.
    """
    import kdbench.methods  # noqa: F401

    path = Path(inspect.getsourcefile(METHODS.get(method))).resolve().relative_to(REPO).as_posix()
    real = loss_module.register_method
    loss_module.register_method = lambda name: real(f"{name}@{ref}")
    try:
        load_source(git_source(ref, path), f"before_{Path(path).stem}")
    finally:
        loss_module.register_method = real
    patches: dict[tuple[str, str], object] = {}
    for data_path, targets in BEFORE_DATA_MODULES.items():
        module = load_source(git_source(ref, data_path), f"before_{Path(data_path).stem}")
        for module_name, attribute in targets:
            patches[(module_name, attribute)] = getattr(module, attribute)
    return f"{method}@{ref}", patches


@contextlib.contextmanager
def patched(patches: dict[tuple[str, str], object]) -> Iterator[None]:
    """Replace module attributes for the duration of the block."""
    saved = {key: getattr(sys.modules[key[0]], key[1]) for key in patches}
    for (module_name, attribute), value in patches.items():
        setattr(sys.modules[module_name], attribute, value)
    try:
        yield
    finally:
        for (module_name, attribute), value in saved.items():
            setattr(sys.modules[module_name], attribute, value)


def measure(method: str, args: argparse.Namespace) -> dict:
    """Median seconds per step of ``method`` and of kd (and of the ``--before-ref`` version), interleaved step by
    step in this process; memory; extra params.

    Memory is the growth of the process (CPU: resident set; CUDA: peak allocated) from just before the method's
    loss, heads and optimiser are built to the end of its first two steps, with the data and networks already
    loaded (the current implementation, measured before the others are built).
    """
    import kdbench.methods  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    before, patches = register_before(method, args.before_ref) if args.before_ref else (None, {})
    device = resolve_device(args.device)
    torch.manual_seed(0)
    per_class = max(2, args.train_images // args.classes)
    spec = DatasetSpec(name="synthetic", synthetic_classes=args.classes, synthetic_train_per_class=per_class,
                       synthetic_test_per_class=1)
    data = build_data(spec, 32, 3)
    train_set = data.train.to(device)
    recipe = Recipe(epochs=240, batch_size=args.batch, lr=0.05)
    names = [method, "kd", *([before] if before else [])]
    networks = {name: (build_model(args.student, args.classes).to(device),
                       build_model(args.teacher, args.classes).to(device).eval().requires_grad_(False))
                for name in names}

    def assemble(name: str):
        params = METHODS.get(name).resolve_hparams({})
        student, teacher = networks[name]
        uses_teacher = METHODS.get(name).needs_for(params).teacher
        return assemble_training(method=name, params=params, student=student,
                                 teacher=teacher if uses_teacher else None, data=data, train_set=train_set,
                                 recipe=recipe, device=device, seed=0)

    def timed_step(parts, step: int, data_patches: dict | None = None) -> float:
        with patched(data_patches or {}):
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
    cpu_memory.release_freed_memory()  # else the heap's kept free memory hides what the method adds
    with PeakResidentMemory() as resident:
        parts = assemble(method)
        timed_step(parts, 1)  # warm-up: allocations, one-time state such as CRD's Z
        method_times = [timed_step(parts, 2)]
    growth = (torch.cuda.max_memory_allocated(device) - before if device.type == "cuda"
              else resident.peak - resident.start)
    kd_parts = assemble("kd")
    timed_step(kd_parts, 1)
    kd_times = [timed_step(kd_parts, 2)]
    before_times: list[float] = []
    if before:
        before_parts = assemble(before)
        timed_step(before_parts, 1, patches)
        before_times.append(timed_step(before_parts, 2, patches))
    for step in range(3, args.steps + 2):  # interleaved, so a change in machine load hits all alike
        kd_times.append(timed_step(kd_parts, step))
        if before:
            before_times.append(timed_step(before_parts, step, patches))
        method_times.append(timed_step(parts, step))
    extra = sum(p.numel() for p in parts.loss.parameters() if p.requires_grad)
    method_step, kd_step = statistics.median(method_times), statistics.median(kd_times)
    row = {"method": method, "views": view_copies(METHODS.get(method).needs_for(params_of(method)).views),
           "step_s": method_step, "kd_step_s": kd_step, "ratio": method_step / kd_step,
           "memory_mib": growth / 2**20, "extra_params": extra, "device": str(device)}
    if before:
        before_step = statistics.median(before_times)
        row.update(before_step_s=before_step, before_ratio=before_step / kd_step)
    return row


def params_of(method: str) -> dict:
    """The method's default hyper-parameters, resolved as a run would."""
    return METHODS.get(method).resolve_hparams({})


def markdown(rows: list[dict], args: argparse.Namespace, load: tuple[str, str]) -> str:
    """The cost table as markdown (with before/after columns when ``--before-ref`` is given)."""
    threads = args.threads or torch.get_num_threads()
    lines = [f"Method cost, {args.teacher} → {args.student}, batch {args.batch}, median of {args.steps} timed steps "
             f"(interleaved with kd{' and the before version' if args.before_ref else ''}), device "
             f"{rows[0]['device'] if rows else '?'}, {threads} threads, freed memory kept between steps: "
             f"{'yes' if rows and rows[0]['keep_freed_memory'] else 'no'}. Load average (1, 5, 15 min) at the start "
             f"{load[0]}, at the end {load[1]}.", ""]
    if args.before_ref:
        lines += [f"| method | views | before ({args.before_ref}) s/step | before × kd | after s/step | after × kd | "
                  "after × kd per view | kd s/step | memory growth (MiB) | extra trainable params |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in rows:
            lines.append(f"| {row['method']} | {row['views']} | {row['before_step_s']:.3f} | "
                         f"{row['before_ratio']:.2f} | {row['step_s']:.3f} | {row['ratio']:.2f} | "
                         f"{row['ratio'] / row['views']:.2f} | {row['kd_step_s']:.3f} | {row['memory_mib']:.0f} | "
                         f"{row['extra_params']:,} |")
    else:
        lines += ["| method | views | s/step | × kd (interleaved) | memory growth (MiB) | extra trainable params |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in rows:
            lines.append(f"| {row['method']} | {row['views']} | {row['step_s']:.3f} | {row['ratio']:.2f} | "
                         f"{row['memory_mib']:.0f} | {row['extra_params']:,} |")
    return "\n".join(lines) + "\n"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


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
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                        help="CPU: let glibc page-fault large tensors afresh every step (kdbench.engine.cpu_memory)")
    parser.add_argument("--before-ref", help="git ref whose implementation of each method is timed beside the "
                        "current one (e.g. the commit before a change)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/method_cost.md"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if not args.keep_freed_memory:
            os.environ[cpu_memory.SWITCH] = "0"
        # as training does within an epoch (train_epoch), and across the timed steps, each its own train_epoch
        with cpu_memory.keep_freed_memory(resolve_device(args.device)) as kept:
            row = measure(args.one, args)
        print(json.dumps({**row, "keep_freed_memory": kept}))
        return
    import kdbench.methods  # noqa: F401

    names = args.methods or METHODS.names()
    rows = []
    load_start = load_average()
    for name in names:
        command = [sys.executable, __file__, "--one", name, *sys.argv[1:]]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"{name}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        before = (f", before {rows[-1]['before_step_s']:.3f} s/step ({rows[-1]['before_ratio']:.2f}× kd)"
                  if args.before_ref else "")
        print(f"{name}: {rows[-1]['step_s']:.3f} s/step ({rows[-1]['ratio']:.2f}× kd){before}", flush=True)
    table = markdown(rows, args, (load_start, load_average()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
