"""Synthetic but well-formed run records for report, plot and HTML tests and benchmarks (no training)."""

from __future__ import annotations

import numpy as np

from kdbench.data.longtail import long_tailed_counts
from kdbench.tracking.record import EpochLog, EvalResult, RunRecord

#: Training terms each method logs (the engine adds total and top1).
_TERMS = {"vanilla": ["ce"], "kd": ["ce", "kd"], "dkd": ["ce", "tckd", "nckd"], "trg": ["ce", "kd", "graph"]}


def _dataset_spec(name: str, rho: float, profile: str) -> dict:
    long_tail = None if rho == 1 else {"profile": profile, "imbalance_ratio": rho}
    return {"name": name, "long_tail": long_tail, "subset_seed": 0}


def _variant(name: str, rho: float, profile: str) -> str:
    return name if rho == 1 else f"{name}-lt-{profile}-{rho:g}"


def synthetic_records(grid: str = "synthetic", pairs: tuple[str, ...] = ("resnet56->resnet20",),
                      methods: tuple[str, ...] = ("vanilla", "kd", "trg"), rhos: tuple[float, ...] = (1.0, 10.0),
                      seeds: tuple[int, ...] = (0, 1, 2), num_classes: int = 10, n_max: int = 500,
                      test_per_class: int = 100, epochs: int = 5, dataset: str = "cifar", profile: str = "exp",
                      failed: int = 0, seed: int = 0) -> list[RunRecord]:
    """Student records of a grid (plus one teacher per dataset variant and pair): accuracy rises with the class's
    training count and with the method's index, so the plots have a visible shape; ``failed`` runs fail."""
    rng = np.random.default_rng(seed)
    records: list[RunRecord] = []
    for rho in rhos:
        counts = long_tailed_counts(n_max, num_classes, rho, profile) if rho != 1 else [n_max] * num_classes
        spec_dataset = _dataset_spec(dataset, rho, profile)
        variant = _variant(dataset, rho, profile)
        for pair in pairs:
            teacher_arch, student_arch = pair.split("->")
            teacher_id = f"t-{variant}-{teacher_arch}"
            records.append(_record(grid, teacher_id, "teacher", "vanilla", "vanilla", teacher_arch, teacher_arch,
                                   variant, spec_dataset, 0, counts, 0.85, test_per_class, epochs, rng, None))
            for k, method in enumerate(methods):
                for seed_value in seeds:
                    run_id = f"s-{variant}-{pair.replace('->', '-')}-{method}-{seed_value}"
                    skill = 0.55 + 0.03 * k + 0.01 * rng.standard_normal()
                    taught = method != "vanilla"  # vanilla trains without a teacher: its pair is the student arch
                    records.append(_record(grid, run_id, "student", method.split("(")[0], method, student_arch,
                                           pair if taught else student_arch, variant, spec_dataset, seed_value,
                                           counts, skill, test_per_class, epochs, rng,
                                           teacher_id if taught else None))
    for record in records[-failed:] if failed else []:
        record.status, record.reason, record.final, record.history = "failed", "synthetic failure", None, []
    return records


def _record(grid: str, run_id: str, stage: str, method: str, label: str, arch: str, pair: str, variant: str,
            spec_dataset: dict, seed: int, counts: list[int], skill: float, test_per_class: int, epochs: int,
            rng: np.random.Generator, teacher_id: str | None) -> RunRecord:
    counts_arr = np.asarray(counts, dtype=float)
    p_correct = np.clip(skill + 0.35 * np.log(counts_arr / counts_arr.max() + 1e-9) / 5, 0.02, 0.99)
    correct = rng.binomial(test_per_class, p_correct).tolist()
    total = [test_per_class] * len(counts)
    top1 = 100.0 * sum(correct) / sum(total)
    final = EvalResult(top1=top1, top5=min(100.0, top1 + 15), balanced_acc=top1, loss=1.0,
                       num_images=sum(total), per_class_correct=correct, per_class_total=total)
    terms = _TERMS.get(method, ["ce", "kd"])
    history = []
    for epoch in range(1, epochs + 1):
        progress = epoch / epochs
        train = {term: float(2.0 * (1.2 - progress) / (i + 1)) for i, term in enumerate(terms)}
        train["total"] = float(sum(train.values()))
        train["top1"] = 100.0 * progress * skill
        history.append(EpochLog(epoch=epoch, lr=0.05, train=train, test_top1=top1 * (0.5 + 0.5 * progress),
                                test_top5=min(100.0, top1 + 15), seconds=2.0, images_per_s=500.0))
    spec = {"stage": stage, "dataset": spec_dataset, "arch": arch, "method": method, "params": {}, "seed": seed,
            "teacher": {"arch": pair.split("->")[0], "run_id": teacher_id} if teacher_id else None}
    if stage == "teacher":
        pair = arch
    teacher = ({"run_id": teacher_id, "arch": pair.split("->")[0], "sha256": "0" * 64, "top1": 80.0}
               if teacher_id else None)
    return RunRecord(run_id=run_id, grid=grid, status="done", stage=stage, method=method, label=label, arch=arch,
                     pair=pair, dataset=variant, seed=seed, subset_seed=0, spec=spec, config_sha256="0" * 64,
                     num_classes=len(counts), class_counts=list(counts), final=final, history=history,
                     student_params=1000, extra_params=0 if method in ("vanilla", "kd") else 50,
                     peak_memory_bytes=10**8, teacher=teacher)
