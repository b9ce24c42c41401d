"""Input pipeline and training-step throughput on ImageNet-style JPEG folders: kdbench against plain PyTorch.

Table 1 (loader): images/s of kdbench's training batches of an image folder (FileImageSet → train_batches:
decode, RandomResizedCrop(224) + flip in the DataLoader workers, uint8 to the device, normalised there) per
worker count, beside a plain torchvision pipeline (ImageFolder + RandomResizedCrop + RandomHorizontalFlip +
ToTensor + Normalize in the workers, float32 to the device). The first batch of a row (worker start-up) is not
timed; a row runs for at least ``--seconds``. The file list is repeated so that no row reaches an epoch's end.

Table 2 (step): resnet18 at 224 px, cross-entropy, SGD, through kdbench's loop (assemble_training with method
"vanilla" + train_epoch(max_steps=N)) and through a bare loop (forward, CE, backward, step) on the same batches
(the same kdbench loader, or with ``--step-data memory`` the same batches replayed from the device, which leaves
the loops alone when the loader bounds the step), timed alternately in this process; the median of
``--repeats`` pairs. Variants: fp32, channels_last, bf16 autocast, torch.compile (recipe fields, applied by
prepare_model).

Every run records the 1-minute load average before it and the CPU cores that other processes used during it;
a run during which others used more than ``--busy-cores`` is measured again (``--busy-retries``).

By default the data is a synthetic ImageFolder written to a temporary folder: smooth-noise JPEGs of about
500×375 pixels at quality 90 (about 100 KB each, like ImageNet's). ``--root`` reads a real one (its train/).

    python benchmarks/input_pipeline.py --quick                     # a few minutes on a 2-core CPU
    python benchmarks/input_pipeline.py --json results/benchmarks/input_pipeline.json
    python benchmarks/input_pipeline.py --device cuda --root /data/imagenet --workers 0 4 8 16
    python benchmarks/input_pipeline.py --device cuda --no-loader --step-data memory
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from kdbench.config import Recipe
from kdbench.data import DataBundle, FileImageSet, train_batches
from kdbench.data.files import scan_image_folder
from kdbench.data.imagenet import IMAGENET_STATS
from kdbench.data.streaming import FILE_AUGMENTATION
from kdbench.engine.assemble import assemble_training
from kdbench.engine.environment import configure_device, prepare_model, resolve_device
from kdbench.engine.loop import train_epoch
from kdbench.loss import METHODS
from kdbench.models import build_model, model_names

MEAN, STD = IMAGENET_STATS
IMAGE_SIZE = 224

#: Step variants: name → (precision, channels_last, compile).
VARIANTS = {
    "fp32": ("fp32", False, False),
    "fp32+cl": ("fp32", True, False),
    "bf16": ("bf16", False, False),
    "bf16+cl": ("bf16", True, False),
    "bf16+cl+compile": ("bf16", True, True),
    "fp32+compile": ("fp32", False, True),
}
DEFAULT_VARIANTS = {"cuda": ["fp32", "fp32+cl", "bf16", "bf16+cl", "bf16+cl+compile"], "cpu": ["fp32"]}


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, user + system jiffies) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _cpu_snapshot() -> tuple[float, int, int] | None:
    """(wall time, busy jiffies of the machine incl. steal, jiffies of this process and its descendants)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    stats = {pid: _proc_stat(pid) for pid in os.listdir("/proc") if pid.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        if stat is not None:
            children.setdefault(stat[0], []).append(int(pid))
    mine, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        stat = stats.get(str(pid))
        mine += stat[1] if stat is not None else 0
        todo += children.get(pid, [])
    return time.perf_counter(), user + nice + system + irq + softirq + steal, mine


class OtherCpu:
    """Cores that other processes (and the hypervisor's steal) kept busy while the block ran; None off Linux.

    This process and its live descendants (DataLoader workers) are "ours"; a child that exits inside the block
    would count as another process, so the blocks here keep their workers alive until they end.
    """

    def __enter__(self) -> OtherCpu:
        self.cores: float | None = None
        self._start = _cpu_snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        end = _cpu_snapshot()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return
        tick = os.sysconf("SC_CLK_TCK")
        others = (end[1] - self._start[1]) - (end[2] - self._start[2])
        self.cores = max(0.0, others / tick / (end[0] - self._start[0]))


def smooth_noise_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB image of smooth noise at several scales plus grain: JPEG sizes like a photograph's."""
    pixels = np.zeros((height, width, 3), dtype=np.float32)
    for cells, amplitude in ((4, 90.0), (16, 50.0), (64, 30.0), (160, 20.0)):
        coarse = rng.normal(0.0, amplitude, size=(max(2, cells * height // width), cells, 3)).astype(np.float32)
        for channel in range(3):
            layer = Image.fromarray(coarse[..., channel], "F").resize((width, height), Image.Resampling.BICUBIC)
            pixels[..., channel] += np.asarray(layer)
    pixels += rng.normal(0.0, 13.0, size=pixels.shape).astype(np.float32) + rng.uniform(60, 190, size=3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_synthetic_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """root/train/<class>/<n>.JPEG: ``per_class`` smooth-noise JPEGs (quality 90) of about 500×375 per class."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / "train" / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            width = int(rng.integers(400, 601))
            height = int(round(width * rng.uniform(0.6, 0.9)))
            if rng.random() < 0.2:  # some portrait images
                width, height = height, width
            smooth_noise_image(rng, width, height).save(folder / f"n{label:08d}_{k}.JPEG", quality=90)
    return root


def file_set(train_root: Path, at_least: int) -> tuple[FileImageSet, list[str], dict[str, Any]]:
    """The folder as a FileImageSet whose file list is repeated to hold at least ``at_least`` images.

    Also its class names and facts: images, classes and mean JPEG size (KB, from up to 200 files).
    """
    paths, targets, classes = scan_image_folder(train_root)
    sample = paths[:: max(1, len(paths) // 200)]
    mean_kb = statistics.fmean((train_root / p.decode()).stat().st_size for p in sample) / 1000
    facts = {"images": len(paths), "classes": len(classes), "mean_kb": round(mean_kb, 1)}
    copies = max(1, -(-at_least // len(paths)))
    files = FileImageSet(train_root, np.tile(paths, copies), targets.repeat(copies), IMAGE_SIZE)
    return files, classes, facts


def bundle_for(files: FileImageSet, classes: list[str]) -> DataBundle:
    """The DataBundle assemble_training reads (classes, counts, ImageNet mean/std) for a file set."""
    return DataBundle(train=files, val=None, test=files, num_classes=len(classes), class_names=classes,
                      class_counts=files.class_counts(len(classes)), mean=MEAN, std=STD, augmentation="none",
                      train_source_indices=torch.arange(len(files)))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stream(batches: Iterator[Any], device: torch.device, seconds: float,
                max_batches: int) -> tuple[int, float, float | None]:
    """(images, seconds, others' cores) of the batches after the first (warm-up), until ``seconds`` have passed."""
    next(batches)
    synchronize(device)
    images = 0
    with OtherCpu() as others:
        started = time.perf_counter()
        for count, batch in enumerate(batches, start=1):
            target = batch["target"] if isinstance(batch, dict) else batch[1]
            images += len(target)
            if count >= max_batches or time.perf_counter() - started >= seconds:
                break
        synchronize(device)
        elapsed = time.perf_counter() - started
    return images, elapsed, others.cores


def kdbench_stream(files: FileImageSet, batch: int, workers: int, device: torch.device) -> Iterator[Any]:
    """kdbench's training batches of epoch 0 (train_batches over the file set)."""
    batches = train_batches(files, batch, seed=0, augmentation=FILE_AUGMENTATION, mean=MEAN, std=STD, device=device,
                            workers=workers)
    return batches(0)


def torchvision_folder(train_root: Path) -> Dataset:
    """torchvision's ImageFolder of the folder with the usual training transforms (float32, normalised)."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomResizedCrop(IMAGE_SIZE), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return datasets.ImageFolder(str(train_root), transform=transform)


def torchvision_stream(dataset: Dataset, batch: int, workers: int, device: torch.device,
                       length: int) -> Iterator[Any]:
    """A plain DataLoader over ``dataset`` (``length`` images drawn without replacement per pass), to the device."""
    sampler = RandomSampler(dataset, num_samples=length, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda")
    for images, targets in loader:
        yield images.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def loader_row(pipeline: str, folder: Dataset, files: FileImageSet, workers: int, args: argparse.Namespace,
               device: torch.device) -> dict[str, Any]:
    """One timed row of table 1; the stream and its workers are gone when it returns."""
    load = load_average()
    if pipeline == "kdbench":
        stream = kdbench_stream(files, args.batch, workers, device)
    else:
        stream = torchvision_stream(folder, args.batch, workers, device, len(files))
    try:
        images, seconds, others = time_stream(stream, device, args.seconds, args.max_batches)
    finally:
        getattr(stream, "close", lambda: None)()
        del stream
        gc.collect()  # the DataLoader (and its persistent workers) goes with its last reference
    return {"pipeline": pipeline, "workers": workers, "images": images, "seconds": seconds,
            "images_per_s": images / seconds, "load_before": load, "other_cores": others}


def busy(run: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether other processes used more than ``--busy-cores`` during ``run``."""
    return run["other_cores"] is not None and run["other_cores"] > args.busy_cores


def retry_while_busy(measure: Callable[[], dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """``measure()``, again (up to ``--busy-retries`` times) while other processes kept the machine busy."""
    for attempt in range(args.busy_retries + 1):
        run = measure()
        run["retries"] = attempt
        if not busy(run, args):
            break
        print(f"  busy: other processes used {run['other_cores']:.2f} cores; measuring again", flush=True)
    return run


def most_other_cores(runs: list[dict[str, Any]]) -> float | None:
    """The most cores other processes used during any of ``runs`` (None when unknown)."""
    known = [r["other_cores"] for r in runs if r["other_cores"] is not None]
    return round(max(known), 2) if known else None


def loader_table(train_root: Path, files: FileImageSet, args: argparse.Namespace,
                 device: torch.device) -> list[dict[str, Any]]:
    """Table 1: per worker count, kdbench and torchvision rows, ``--loader-repeats`` times; the median of each."""
    rows = []
    folder = torchvision_folder(train_root)
    for workers in args.workers:
        runs: dict[str, list[dict[str, Any]]] = {"kdbench": [], "torchvision": []}
        for repeat in range(args.loader_repeats):
            order = ("kdbench", "torchvision") if repeat % 2 == 0 else ("torchvision", "kdbench")
            for pipeline in order:
                measure = functools.partial(loader_row, pipeline, folder, files, workers, args, device)
                runs[pipeline].append(retry_while_busy(measure, args))
        kd = statistics.median(r["images_per_s"] for r in runs["kdbench"])
        tv = statistics.median(r["images_per_s"] for r in runs["torchvision"])
        every = [r for rs in runs.values() for r in rs]
        load, others = max(r["load_before"] for r in every), most_other_cores(every)
        rows.append({"workers": workers, "kdbench_images_per_s": kd, "torchvision_images_per_s": tv,
                     "ratio": kd / tv, "runs": runs, "max_load_before": load, "max_other_cores": others,
                     "reruns": sum(r["retries"] for r in every)})
        print(f"loader, {workers} workers: kdbench {kd:.0f} images/s, torchvision {tv:.0f} images/s "
              f"(load before ≤ {load:.2f}, other processes ≤ {others} cores)", flush=True)
    return rows


def resnet18(num_classes: int) -> tuple[nn.Module, str]:
    """kdbench's resnet18 when registered, else torchvision's; with the name of the one used."""
    if "resnet18" in model_names():
        return build_model("resnet18", num_classes), "kdbench resnet18"
    from torchvision.models import resnet18 as torchvision_resnet18

    return torchvision_resnet18(num_classes=num_classes), "torchvision resnet18"


class BareLoop:
    """A plain PyTorch training loop: forward, cross-entropy, backward, SGD step; no taps, no bookkeeping."""

    def __init__(self, model: nn.Module, recipe: Recipe, device: torch.device) -> None:
        self.model, self.device = model, device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=recipe.effective_lr, momentum=recipe.momentum,
                                         weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
        self.bf16 = recipe.precision == "bf16"

    def run(self, batches: Iterator[dict[str, torch.Tensor]], max_steps: int) -> None:
        """Train on the first ``max_steps`` batches (fetching one more, as train_epoch does)."""
        self.model.train()
        for step, batch in enumerate(batches):
            if step >= max_steps:
                break
            autocast = torch.autocast(self.device.type, torch.bfloat16) if self.bf16 else contextlib.nullcontext()
            with autocast:
                loss = F.cross_entropy(self.model(batch["input"]), batch["target"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def timed(device: torch.device, run: Callable[[], None]) -> dict[str, Any]:
    """Seconds ``run`` takes (its device work included), the load average before and others' cores during it."""
    load = load_average()
    synchronize(device)
    with OtherCpu() as others:
        started = time.perf_counter()
        run()
        synchronize(device)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "load_before": load, "other_cores": others.cores}


def replay_batches(batches: Callable[[int], Iterator[dict[str, torch.Tensor]]],
                   count: int) -> Callable[[int], Iterator[dict[str, torch.Tensor]]]:
    """``batches(epoch)`` that yields the same first ``count`` batches of epoch 0, kept on the device, every time."""
    stream = batches(0)
    kept = [batch for _, batch in zip(range(count), stream, strict=False)]
    getattr(stream, "close", lambda: None)()
    return lambda epoch: iter(kept)


def step_row(variant: str, files: FileImageSet, data: DataBundle, args: argparse.Namespace, device: torch.device,
             epoch_counter: Iterator[int]) -> dict[str, Any]:
    """Table 2 row: kdbench's loop and the bare loop on the same loader, interleaved; medians of the repeats."""
    precision, channels_last, compiled = VARIANTS[variant]
    recipe = Recipe(batch_size=args.step_batch, lr=0.1, precision=precision, channels_last=channels_last,
                    compile=compiled)
    torch.manual_seed(0)
    base, model_name = resnet18(data.num_classes)
    student = prepare_model(copy.deepcopy(base), device, recipe)
    bare = BareLoop(prepare_model(copy.deepcopy(base), device, recipe), recipe, device)
    parts = assemble_training(method="vanilla", params=METHODS.get("vanilla").resolve_hparams({}), student=student,
                              teacher=None, data=data, train_set=files, recipe=recipe, device=device, seed=0,
                              loader_workers=args.step_workers)
    steps = args.steps
    images = steps * args.step_batch
    warmup = args.warmup_steps + (2 if compiled else 0)
    if args.step_data == "memory":  # replay batches already on the device: the loops alone, without the loader
        parts.batches = replay_batches(parts.batches, max(steps, warmup) + 1)

    def kdbench_run(max_steps: int) -> Callable[[], None]:
        def run() -> None:
            train_epoch(parts, next(epoch_counter), max_steps=max_steps)
        return run

    def bare_run(max_steps: int) -> Callable[[], None]:
        def run() -> None:
            bare.run(parts.batches(next(epoch_counter)), max_steps)
        return run

    warmup_seconds = timed(device, kdbench_run(warmup))["seconds"] + timed(device, bare_run(warmup))["seconds"]

    def pair(kdbench_first: bool) -> dict[str, Any]:
        arms = [("kdbench", kdbench_run), ("bare", bare_run)]
        runs = {name: timed(device, run(steps)) for name, run in (arms if kdbench_first else arms[::-1])}
        cores = [r["other_cores"] for r in runs.values() if r["other_cores"] is not None]
        return runs | {"other_cores": max(cores) if cores else None}

    kd_runs, bare_runs = [], []
    for repeat in range(args.repeats):  # interleaved; who goes first alternates, so a drift in speed cancels
        measured = retry_while_busy(functools.partial(pair, repeat % 2 == 0), args)
        kd_runs.append(measured["kdbench"] | {"retries": measured["retries"]})
        bare_runs.append(measured["bare"] | {"retries": measured["retries"]})
    kd_times, bare_times = [r["seconds"] for r in kd_runs], [r["seconds"] for r in bare_runs]
    kd, bare_s = statistics.median(kd_times), statistics.median(bare_times)
    ratios = [b / k for k, b in zip(kd_times, bare_times, strict=True)]
    return {"variant": variant, "model": model_name, "batch": args.step_batch, "steps": steps,
            "kdbench_images_per_s": images / kd, "bare_images_per_s": images / bare_s, "ratio": bare_s / kd,
            "pair_ratios": ratios, "kdbench_seconds": kd_times, "bare_seconds": bare_times,
            "warmup_seconds": warmup_seconds, "max_load_before": max(r["load_before"] for r in kd_runs + bare_runs),
            "max_other_cores": most_other_cores(kd_runs + bare_runs), "reruns": sum(r["retries"] for r in kd_runs),
            "kdbench_runs": kd_runs, "bare_runs": bare_runs}


def step_table(files: FileImageSet, data: DataBundle, args: argparse.Namespace,
               device: torch.device) -> list[dict[str, Any]]:
    """Table 2: one row per variant."""
    rows = []
    epochs = iter(range(1, 1_000_000))
    for variant in args.variants:
        row = step_row(variant, files, data, args, device, epochs)
        gc.collect()  # the row's networks and loader workers
        rows.append(row)
        print(f"step, {variant}: kdbench {row['kdbench_images_per_s']:.1f} images/s, bare "
              f"{row['bare_images_per_s']:.1f} images/s, ratio {row['ratio']:.3f} "
              f"(load before ≤ {row['max_load_before']:.2f}, other processes ≤ {row['max_other_cores']} cores)",
              flush=True)
    return rows


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """Both tables as markdown."""
    facts, setup = result["data"], result["setup"]
    lines = [f"Input pipeline, device {setup['device']}, {setup['cpus']} CPUs, {setup['threads']} torch threads, "
             f"torch {setup['torch']}; data: {facts['source']}, {facts['images']} images of {facts['classes']} "
             f"classes, mean JPEG {facts['mean_kb']} KB. load: the highest 1-min load average before a run (this "
             "benchmark's own earlier runs included); others: the most CPU cores that other processes (and the "
             "hypervisor's steal) used during a kept run; reruns: runs measured again because others used more than "
             f"{setup['busy_cores']} cores."]
    if result["loader"]:
        lines += ["", f"Loader: batch {setup['batch']}, ≥ {setup['seconds']} s per row after one warm-up batch, "
                  f"median of {setup['loader_repeats']}.", "",
                  "| workers | kdbench (images/s) | torchvision (images/s) | kdbench / torchvision | load | others "
                  "| reruns |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in result["loader"]:
            lines.append(f"| {row['workers']} | {row['kdbench_images_per_s']:.0f} | "
                         f"{row['torchvision_images_per_s']:.0f} | {row['ratio']:.2f} | {row['max_load_before']:.2f} "
                         f"| {_cores(row['max_other_cores'])} | {row['reruns']} |")
    if result["step"]:
        first = result["step"][0]
        data_note = (f"{setup['step_workers']} loader workers (the same kdbench loader for both loops)"
                     if setup["step_data"] == "loader" else "the same batches replayed from device memory")
        lines += ["", f"Step: {first['model']} at {IMAGE_SIZE} px, vanilla CE + SGD, batch {first['batch']}, "
                  f"{first['steps']} steps per run, {data_note}, median of {setup['repeats']} interleaved pairs "
                  "(A B, B A, …).", "",
                  "| variant | kdbench loop (images/s) | bare loop (images/s) | kdbench / bare | pair ratios | load "
                  "| others | reruns |", "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
        for row in result["step"]:
            pairs = " ".join(f"{r:.3f}" for r in row["pair_ratios"])
            lines.append(f"| {row['variant']} | {row['kdbench_images_per_s']:.1f} | {row['bare_images_per_s']:.1f} "
                         f"| {row['ratio']:.3f} | {pairs} | {row['max_load_before']:.2f} | "
                         f"{_cores(row['max_other_cores'])} | {row['reruns']} |")
    skipped = result.get("skipped_variants")
    if skipped:
        lines += ["", f"Not measured on {setup['device']}: {', '.join(skipped)} (pass --variants to measure them)."]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks the step table to a few minutes on a small CPU."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--root", type=Path, help="a real ImageFolder (its train/ is read); default: synthetic")
    parser.add_argument("--classes", type=int, default=10, help="synthetic classes")
    parser.add_argument("--per-class", type=int, default=40, help="synthetic images per class")
    parser.add_argument("--workers", type=int, nargs="*",
                        help="loader worker counts (default: 0, 1, 2, 4, … and the CPU count)")
    parser.add_argument("--batch", type=int, default=64, help="loader batch size")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per loader row (at least)")
    parser.add_argument("--max-batches", type=int, default=2000, help="at most this many timed batches per row")
    parser.add_argument("--loader-repeats", type=int, help="runs per loader row (median; default 3, quick 1)")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS),
                        help="step variants (default: cuda all but fp32+compile, cpu fp32)")
    parser.add_argument("--step-batch", type=int, help="step batch size (default: 256 cuda, 32 cpu)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default: 20 cuda, 6 cpu)")
    parser.add_argument("--repeats", type=int, help="interleaved kdbench/bare pairs (median; default 5, quick 3)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps of each loop first (+2 compiled)")
    parser.add_argument("--step-workers", type=int, help="loader workers for the step table (default: CPUs - 1)")
    parser.add_argument("--step-data", choices=("loader", "memory"), default="loader",
                        help="step batches from the kdbench loader (default) or replayed from device memory")
    parser.add_argument("--busy-cores", type=float, default=0.3,
                        help="measure a run (a loader row, a step pair) again when other processes used more cores")
    parser.add_argument("--busy-retries", type=int, default=3, help="at most this many times")
    parser.add_argument("--no-loader", action="store_true", help="skip table 1")
    parser.add_argument("--no-step", action="store_true", help="skip table 2")
    parser.add_argument("--quick", action="store_true",
                        help="1 loader run per row; cpu steps: batch 16, 4 steps, 3 pairs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cpus = usable_cpus()
    cuda = device.type == "cuda"
    if args.workers is None:
        counts = [0] + [2**k for k in range(10) if 2**k < cpus] + [cpus]
        args.workers = sorted(set(counts))
    args.loader_repeats = args.loader_repeats or (1 if args.quick else 3)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.step_batch = args.step_batch or (256 if cuda else (16 if args.quick else 32))
    args.steps = args.steps or (20 if cuda else (4 if args.quick else 6))
    args.step_workers = args.step_workers if args.step_workers is not None else max(0, min(cpus - 1, 16))
    args.skipped_variants = []
    if args.variants is None:
        args.variants = DEFAULT_VARIANTS["cuda" if cuda else "cpu"]
        args.skipped_variants = [v for v in VARIANTS if v not in args.variants]
    if args.repeats < 1 or args.loader_repeats < 1:
        parser.error("--repeats and --loader-repeats must be >= 1")
    args.device = device
    return args


def main() -> None:
    """Write (or find) the image folder, measure both tables, print markdown and optionally write JSON."""
    args = parse_args()
    device: torch.device = args.device
    configure_device(device)
    with tempfile.TemporaryDirectory(prefix="kdbench-input-") as scratch:
        if args.root is None:
            started = time.perf_counter()
            root = write_synthetic_folder(Path(scratch), args.classes, args.per_class)
            source = "synthetic smooth-noise JPEGs (quality 90)"
            print(f"wrote {args.classes * args.per_class} JPEGs in {time.perf_counter() - started:.1f} s", flush=True)
        else:
            root, source = args.root.expanduser().resolve(), str(args.root)
        train_root = root / "train"
        files, classes, facts = file_set(train_root, args.batch * (args.max_batches + 2))
        facts["source"] = source
        result: dict[str, Any] = {
            "data": facts,
            "setup": {"device": str(device), "cpus": usable_cpus(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "batch": args.batch, "seconds": args.seconds,
                      "loader_repeats": args.loader_repeats, "repeats": args.repeats,
                      "step_workers": args.step_workers, "step_data": args.step_data,
                      "busy_cores": args.busy_cores},
            "loader": [] if args.no_loader else loader_table(train_root, files, args, device),
            "step": [] if args.no_step else step_table(files, bundle_for(files, classes), args, device),
            "skipped_variants": [] if args.no_step else args.skipped_variants,
        }
    table = markdown(result)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
