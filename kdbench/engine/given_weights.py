"""A teacher's given weights (a state-dict file, checksum checked first, or the library's pretrained ones) and
the teacher run that only evaluates them."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.data.streaming import default_workers
from kdbench.engine.checkpoint import MODEL_NAME, save_atomic
from kdbench.engine.distributed import DistInfo
from kdbench.engine.environment import autocast_for, peak_memory_bytes, prepare_model, provenance
from kdbench.engine.evaluate import evaluate
from kdbench.engine.run_data import build_run_data, run_eval_batches
from kdbench.filehash import file_sha256
from kdbench.models import build_model
from kdbench.models.pretrained import pretrained_state_dict
from kdbench.models.weights import fit_state_dict, state_dict_from_file
from kdbench.runspec import WeightsRef
from kdbench.tracking.mlflow_sink import mlflow_run_name
from kdbench.tracking.record import RunRecord

log = logging.getLogger("kdbench")


def load_given_weights(weights: WeightsRef, arch: str,
                       model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict fitting ``model``, provenance) for ``weights``; WeightsError names the file and the problem."""
    if weights.pretrained:
        state, origin = pretrained_state_dict(arch)
        return fit_state_dict(origin, state, model), {"source": "pretrained", "origin": origin}
    path = Path(weights.source)
    state = state_dict_from_file(path, model, sha256=weights.sha256)
    return state, {"source": str(path), "sha256": weights.sha256 or file_sha256(path)}


def evaluate_given_teacher(job: Any, observers: list[Any], device: torch.device, ranks: DistInfo,
                           base_record: dict[str, Any]) -> RunRecord:
    """A teacher given by weights: load them, evaluate on test (and validation), keep them as the run's model.pt."""
    spec, recipe = job.spec, job.spec.recipe
    assert spec.weights is not None
    started = time.perf_counter()
    data = build_run_data(spec)
    workers = job.loader_workers if job.loader_workers is not None else default_workers()
    test_batches, val_batches = run_eval_batches(data, recipe, device, ranks, workers)
    model = build_model(spec.arch, data.num_classes, **spec.arch_kwargs)
    state, weights_info = load_given_weights(spec.weights, spec.arch, model)
    model.load_state_dict(state)
    model = prepare_model(model, device, recipe)
    for observer in observers:
        observer.on_start(spec.run_id, mlflow_run_name(spec.display_method, spec.pair, spec.dataset.variant, spec.seed),
                          spec.model_dump(mode="json"), 0)
    eval_args = dict(num_classes=data.num_classes, device=device, autocast=autocast_for(recipe, device), dist=ranks)
    final = evaluate(model, test_batches, **eval_args)
    final_val = evaluate(model, val_batches, **eval_args) if val_batches is not None else None
    log.info("%s%s | evaluated: test %.2f%s", job.label, spec.describe(), final.top1,
             f" val {final_val.top1:.2f}" if final_val is not None else "")
    if ranks.is_main:
        save_atomic(state, job.run_dir / MODEL_NAME)
    return RunRecord(
        status="done", num_classes=data.num_classes, class_counts=list(data.class_counts), final=final,
        final_val=final_val, student_params=sum(p.numel() for p in model.parameters()), extra_params=0,
        peak_memory_bytes=peak_memory_bytes(device),
        model_sha256=file_sha256(job.run_dir / MODEL_NAME) if ranks.is_main else None,
        provenance=provenance(device) | {"train_seconds": 0.0, "eval_seconds": time.perf_counter() - started,
                                         "weights": weights_info},
        **base_record,
    )
