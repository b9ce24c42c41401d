"""Hand-written run records for report tests: real RunSpecs, chosen accuracies, no training."""

from __future__ import annotations

from kdbench.data.spec import DatasetSpec, LongTailSpec
from kdbench.recipe import Recipe
from kdbench.runspec import RunSpec, TeacherRef
from kdbench.tracking.record import BestVal, EpochLog, EvalResult, RunRecord, TeacherInfo

TEACHER, STUDENT = "resnet56", "resnet20"


def dataset(rho: float | None = None, name: str = "cifar100") -> DatasetSpec:
    """CIFAR-100 (balanced) or CIFAR-100-LT at ``rho`` (exp profile)."""
    return DatasetSpec(name=name, long_tail=LongTailSpec(imbalance_ratio=rho) if rho else None)


def _eval(top1: float, correct: list[int], total: list[int]) -> EvalResult:
    return EvalResult(top1=top1, top5=min(100.0, top1 + 20.0), balanced_acc=top1, loss=1.0,
                      num_images=sum(total), per_class_correct=correct, per_class_total=total)


def make_record(method: str, seed: int, top1: float, *, grid: str = "g", data: DatasetSpec | None = None,
                correct: list[int] | None = None, total: list[int] | None = None,
                class_counts: list[int] | None = None, best_val: float | None = None, status: str = "done",
                extra_params: int = 0, seconds: tuple[float, ...] = (2.0, 4.0), images: float = 100.0,
                stage: str = "student", teacher_run: str = "t" * 16, teacher_arch: str = TEACHER,
                student_arch: str = STUDENT, recipe: Recipe | None = None,
                params: dict | None = None) -> RunRecord:
    """A record of ``method`` (teacher arch resnet56 → student resnet20, or the teacher itself) with chosen numbers.

    ``vanilla`` students have no teacher (as kdbench's grid expansion makes them); ``best_val`` (test top-1 at
    the best validation epoch) adds a validation result; ``seconds`` gives one epoch per entry. ``teacher_arch``,
    ``student_arch``, ``recipe`` (default: the default recipe over ``len(seconds)`` epochs) and ``params``
    (default: {'tag': method} for students) change the spec.
    """
    data = data or dataset()
    uses_teacher = stage == "student" and method != "vanilla"
    default_params = {"tag": method} if stage == "student" else {}
    spec = RunSpec(stage=stage, dataset=data, arch=teacher_arch if stage == "teacher" else student_arch,
                   teacher=TeacherRef(arch=teacher_arch, run_id=teacher_run) if uses_teacher else None,
                   method="vanilla" if stage == "teacher" else method.split("(")[0],
                   params=default_params if params is None else params,
                   recipe=recipe or Recipe(epochs=len(seconds)), seed=seed,
                   label="teacher" if stage == "teacher" else method)
    correct = correct if correct is not None else [1, 1]
    total = total if total is not None else [2, 2]
    final = _eval(top1, correct, total) if status == "done" else None
    history = [EpochLog(epoch=i + 1, lr=0.1 / (i + 1), train={"ce": 1.0 / (i + 1), "kd": 0.5 / (i + 1),
                                                                "total": 1.5 / (i + 1), "top1": 50.0 + i},
                        val_top1=40.0 + i if best_val is not None else None, test_top1=top1 - (len(seconds) - 1 - i),
                        test_top5=90.0, seconds=s, images_per_s=images * (i + 1))
               for i, s in enumerate(seconds)] if status == "done" else []
    best = BestVal(epoch=len(seconds), val_top1=40.0 + len(seconds) - 1, test=_eval(best_val, correct, total)) \
        if best_val is not None and status == "done" else None
    return RunRecord(
        run_id=spec.run_id, grid=grid, status=status, reason=None if status == "done" else "RuntimeError: boom",
        stage=stage, method=spec.method, label=spec.display_method, arch=spec.arch, pair=spec.pair,
        dataset=data.variant, seed=seed, subset_seed=data.subset_seed, spec=spec.model_dump(mode="json"),
        config_sha256="0" * 64, num_classes=len(total) if status == "done" else None,
        class_counts=class_counts if class_counts is not None else [10] * len(total), final=final,
        best_val=best, history=history, student_params=1000, extra_params=extra_params,
        peak_memory_bytes=2**30, model_sha256=None,
        teacher=TeacherInfo(run_id=teacher_run, arch=teacher_arch, sha256="0" * 64, top1=72.0)
        if uses_teacher else None)
