"""Recorded values as the configuration and provenance section shows them: digests, tallies over runs, the
recipe with its lr schedule, hyper-parameters, datasets, dates; 'not recorded' for what a record lacks."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from kdbench.numfmt import format_number, format_value

NOT_RECORDED = "not recorded"
SHORT_SHA = 16  # hex digits of a sha256 shown in a table (provenance.json has them whole)
VERSION_ORDER = ("python", "torch", "torchvision", "numpy", "timm", "kdbench")
# Recipe fields added after run ids were first issued, with the value older records meant (kdbench.runspec's
# _ADDED_DEFAULTS; not imported, so that a report does not load the grid schema)
RECIPE_ADDED_DEFAULTS = {"lr_scaling": "none", "lr_reference_batch": 256}
_RECIPE_KNOWN = {"epochs", "batch_size", "lr", "lr_scaling", "lr_reference_batch", "milestones", "gamma", "momentum",
                 "nesterov", "weight_decay", "precision", "augmentation", "eval_batch_size", "channels_last",
                 "compile"}


def short_sha(digest: str | None) -> str:
    """The first 16 hex digits of a sha256 and '…', or 'not recorded'."""
    if not digest:
        return NOT_RECORDED
    return digest if len(digest) <= SHORT_SHA else digest[:SHORT_SHA] + "…"


def short_commit(commit: str | None) -> str:
    """A git commit as 12 hex digits (with '+dirty' when the tree was modified), or 'not recorded'."""
    if not commit:
        return NOT_RECORDED
    head, plus, rest = commit.partition("+")
    return head[:12] + plus + rest


def tally(values: Sequence[Any], show: Callable[[Any], str] = format_value) -> str:
    """One shared value as itself; several as 'a (3 runs), b (1 run)', most frequent first; None counts as
    'not recorded'."""
    counts = Counter(json.dumps(v, sort_keys=True, default=str) if v is not None else None for v in values)
    if len(counts) == 1:
        (key, _), = counts.items()
        return NOT_RECORDED if key is None else show(json.loads(key))
    parts = []
    for key, n in sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))):
        text = NOT_RECORDED if key is None else show(json.loads(key))
        parts.append(f"{text} ({runs_word(n)})")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    """'35 s', '4.2 min' or '1.5 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def when(stamp: str) -> str:
    """An ISO timestamp as '2026-01-02 03:04:05 UTC' (as it is when it does not parse)."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    zone = " UTC" if moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0 else ""
    return moment.strftime("%Y-%m-%d %H:%M:%S") + zone


def runs_word(n: int) -> str:
    """'1 run', '3 runs'."""
    return f"{n} run{'s' if n != 1 else ''}"


def effective_lr(recipe: dict[str, Any]) -> float | None:
    """The lr of the first epoch after lr_scaling (None when the recipe has no lr)."""
    lr = recipe.get("lr")
    if lr is None:
        return None
    if recipe.get("lr_scaling") == "linear":
        return lr * recipe["batch_size"] / recipe["lr_reference_batch"]
    return lr


def lr_phases(recipe: dict[str, Any]) -> list[tuple[int, int, float]]:
    """(first epoch, last epoch, lr) of each stretch of the step schedule (MultiStepLR: the lr is multiplied by
    gamma after each milestone epoch; milestones at or after the last epoch never act)."""
    start, epochs = effective_lr(recipe), recipe.get("epochs")
    if start is None or epochs is None:
        return []
    cuts = [m for m in recipe.get("milestones") or [] if m < epochs]
    bounds = [0, *cuts, epochs]
    gamma = recipe.get("gamma", 0.1)
    return [(bounds[i] + 1, bounds[i + 1], start * gamma ** i) for i in range(len(bounds) - 1)]


def schedule_text(recipe: dict[str, Any]) -> str:
    """The lr schedule: 'constant', or '×0.1 after epochs 12, 16: epochs 1–12: 0.05; ...' (late milestones said)."""
    milestones = list(recipe.get("milestones") or [])
    phases = lr_phases(recipe)
    if not phases:
        return NOT_RECORDED
    if len(phases) == 1:
        text = "constant"
    else:
        text = (f"×{format_number(recipe.get('gamma', 0.1))} after epoch{'s' if len(phases) > 2 else ''} "
                + ", ".join(str(end) for _, end, _ in phases[:-1]) + ": "
                + "; ".join(f"epochs {a}–{b}: {format_number(lr)}" if a != b else f"epoch {a}: {format_number(lr)}"
                            for a, b, lr in phases))
    late = [m for m in milestones if m >= recipe["epochs"]]
    if late:
        text += f" (milestone{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} at or after the last epoch: " \
                "never reached)"
    return text


def recipe_cells(recipe: dict[str, Any] | None) -> dict[str, str]:
    """Setting → text of one recipe (a RunSpec's ``recipe``); every setting 'not recorded' when there is none."""
    settings = ["epochs", "batch size", "lr (as given)", "lr scaling", "lr at epoch 1", "lr schedule", "momentum",
                "weight decay", "precision", "augmentation", "eval batch size", "speed options"]
    if not recipe:
        return dict.fromkeys(settings, NOT_RECORDED)
    recipe = {**RECIPE_ADDED_DEFAULTS, **recipe}  # absent from records older than these fields: their default

    def show(name: str) -> str:
        return format_value(recipe[name]) if name in recipe else NOT_RECORDED

    linear = recipe.get("lr_scaling") == "linear"
    start = effective_lr(recipe)
    start_text = NOT_RECORDED if start is None else format_number(start) + (
        f" (= {show('lr')} × {show('batch_size')} / {show('lr_reference_batch')})" if linear else "")
    cells = {
        "epochs": show("epochs"), "batch size": show("batch_size"), "lr (as given)": show("lr"),
        "lr scaling": (f"linear, reference batch {show('lr_reference_batch')}" if linear else show("lr_scaling")),
        "lr at epoch 1": start_text, "lr schedule": schedule_text(recipe) if "epochs" in recipe else NOT_RECORDED,
        "momentum": show("momentum") + (", Nesterov" if recipe.get("nesterov") else ""),
        "weight decay": show("weight_decay"), "precision": show("precision"), "augmentation": show("augmentation"),
        "eval batch size": show("eval_batch_size"),
        "speed options": ", ".join(k for k in ("channels_last", "compile") if recipe.get(k)) or "none",
    }
    cells.update({name.replace("_", " "): format_value(value) for name, value in sorted(recipe.items())
                  if name not in _RECIPE_KNOWN})
    return cells


def params_text(params: dict[str, Any] | None) -> str:
    """'T=4, ce_weight=0.1' from a spec's resolved ``params`` (keys sorted), 'none' when empty."""
    if params is None:
        return NOT_RECORDED
    return ", ".join(f"{key}={format_value(value)}" for key, value in sorted(params.items())) or "none"


def dataset_text(spec: dict[str, Any]) -> tuple[str, str]:
    """(source, validation split) of a spec's dataset."""
    data = spec.get("dataset") or {}
    if not data:
        return NOT_RECORDED, NOT_RECORDED
    source = str(data.get("name", NOT_RECORDED))
    long_tail = data.get("long_tail")
    if long_tail:
        source += f", long-tailed ({long_tail.get('profile')}, ρ = {format_number(long_tail.get('imbalance_ratio'))})"
    if data.get("image_size"):
        source += f", {data['image_size']} px"
    if data.get("name") == "imagenet_lt":
        val = "the split files' validation set"
    elif long_tail and data.get("val_per_class"):  # long-tailed: balanced, from the images the tail discarded
        val = f"{data['val_per_class']} per class"
    elif not long_tail and data.get("val_fraction"):
        val = f"{format_number(100 * data['val_fraction'])}% of train (stratified)"
    else:
        val = "none"
    return source, val


def version_text(versions: dict[str, Any] | None, name: str) -> str | None:
    """A package's recorded version, 'not installed' when recorded as absent, None when not recorded."""
    if versions is None or name not in versions:
        return None
    return str(versions[name]) if versions[name] is not None else "not installed"
