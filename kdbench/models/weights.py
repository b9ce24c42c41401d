"""Weights from files: a state dict read from a weight file and fitted to a kdbench model, or a one-line error.

``state_dict_from_file(path, model)`` reads ``path`` with torch.load, weights_only=True, on the CPU (tensors
and plain containers only: unpickling never runs code from the file) and returns a state dict with exactly
``model.state_dict()``'s keys and shapes, ready for ``model.load_state_dict``. It accepts:

* a plain state dict (``torch.save(model.state_dict(), path)``; torchvision's and timm's weight files);
* a checkpoint holding it under ``"state_dict"`` or ``"model"`` beside other entries (RepDistiller's and
  mdistiller's ``ckpt_epoch_240.pth``: ``{"epoch", "model", "accuracy", "optimizer"}``);
* keys prefixed by ``module.`` (DataParallel/DDP) or ``_orig_mod.`` (torch.compile);
* for a :class:`~kdbench.models.timm_adapter.TimmModel` (``timm:<name>``, ``mobilenet_v1``), whose keys are timm's
  under ``model.``, a plain timm state dict too (and the other way round);
* BatchNorm ``num_batches_tracked`` entries missing from the file (weight files saved before PyTorch 0.4.1 have
  none): they are set to 0, as ``BatchNorm`` does itself when it loads such files.

Anything else raises :class:`WeightsError` (a ValueError) with one line naming the file: a sha256 that differs
from the one expected (checked on the file's bytes, before anything is unpickled), a file weights_only refuses
(it pickles Python objects, e.g. a whole model: the message says how to re-save its state dict), a file that is no
PyTorch file or is damaged, one that holds no state dict, keys that do not fit (the first missing and first
unexpected ones, and how many), and the first key whose shape differs.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.filehash import file_sha256

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
TIMM_PREFIX = "model."  # TimmModel keeps the bare timm model as its `model` submodule
STATE_DICT_ENTRIES = ("state_dict", "model")  # where checkpoints keep the weights, tried in this order

_CONVERT_HELP = (
    "if you trust the file, re-save its weights once as a state dict: "
    "load it once with torch.load and weights_only=False, then torch.save(obj.state_dict(), new_path) for a whole "
    "model, "
    "or torch.save(obj['model'], new_path) for a checkpoint dict (whichever entry holds the state dict)"
)


class WeightsError(ValueError):
    """A weight file that cannot give ``model`` its weights (see the module docstring for the cases)."""


def state_dict_from_file(path: str | Path, model: nn.Module, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read the weight file ``path`` and return a state dict that fits ``model`` exactly (keys, shapes).

    With ``sha256`` (64 hex digits), the file's bytes must have that digest; it is checked before unpickling.
    Raises WeightsError (one line, naming the file) when the file cannot give ``model`` its weights.
    """
    path = Path(path)
    if sha256 is not None:
        _check_sha256(path, sha256)
    state = _unwrap(path, _load(path))
    return fit_state_dict(path, state, model)


def _check_sha256(path: Path, expected: str) -> None:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", expected):
        raise ValueError(f"sha256 must be 64 hex digits, got {expected!r}")
    actual = file_sha256(path)
    if actual != expected.lower():
        raise WeightsError(f"{path}: sha256 mismatch: expected {expected.lower()}, got {actual}; not loading it")


def _load(path: Path) -> Any:
    """torch.load with weights_only=True; WeightsError for a file it refuses or cannot read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # a missing or unreadable file: the OSError names it
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            raise WeightsError(
                f"{path}: torch.load(weights_only=True) refuses it: it pickles Python objects, not only tensors "
                f"(first: {found.group(1)}; a whole model object or a checkpoint with e.g. an argparse.Namespace "
                f"in it); {_CONVERT_HELP}"
            ) from None
        raise WeightsError(f"{path}: not a PyTorch weight file torch.load can read: {_first_line(error)}") from None
    except Exception as error:  # a truncated zip, a text file, an empty file
        raise WeightsError(
            f"{path}: not a PyTorch weight file, or a damaged one: {type(error).__name__}: {_first_line(error)}"
        ) from None


def _first_line(error: BaseException) -> str:
    """The first meaningful line of an error message, without torch's advice paragraphs, at most 200 chars."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    line = match.group(1) if match else next((ln.strip() for ln in text.splitlines() if ln.strip()), "(no message)")
    return line[:200]


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _describe(obj: object) -> str:
    """What a loaded object is, for the 'not a state dict' error."""
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty dict"
        keys = list(obj)
        shown = ", ".join(repr(k) for k in keys[:6]) + (", …" if len(keys) > 6 else "")
        bad = next(((k, v) for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
        what = f"a dict with keys {shown}"
        if bad is not None:
            what += f" (the value of {bad[0]!r} is a {type(bad[1]).__name__}, not a tensor)"
        return what
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def _unwrap(path: Path, obj: Any) -> Mapping[str, torch.Tensor]:
    """The state dict in a loaded object: the object itself, or its 'state_dict'/'model' entry (nested once)."""
    current = obj
    for _ in range(3):
        if _is_state_dict(current):
            return current
        if not isinstance(current, Mapping):
            break
        entry = next((e for e in STATE_DICT_ENTRIES if isinstance(current.get(e), Mapping)), None)
        if entry is None:
            break
        current = current[entry]
    entries = " or ".join(repr(e) for e in STATE_DICT_ENTRIES)
    inner = "" if current is obj else f", whose state-dict entry holds {_describe(current)}"
    raise WeightsError(
        f"{path}: not a state dict (a mapping of names to tensors, or a checkpoint holding one under {entries}): "
        f"found {_describe(obj)}{inner}"
    )


def _common_wrapper_prefix(keys: list[str]) -> str:
    """The chain of wrapper prefixes (``module.``, ``_orig_mod.``) that every key starts with, e.g. ``module.``."""
    prefix = ""
    while keys:
        step = next((p for p in WRAPPER_PREFIXES if all(k.startswith(prefix + p) for k in keys)), None)
        if step is None:
            break
        prefix += step
    return prefix


def _all_start(keys: list[str], prefix: str) -> bool:
    return all(k.startswith(prefix) for k in keys)


def _none_start(keys: list[str], prefix: str) -> bool:
    return not any(k.startswith(prefix) for k in keys)


def _align_keys(file_keys: list[str], model_keys: list[str]) -> dict[str, str]:
    """file key → the model key it stands for, after the wrapper and ``model.`` prefixes are reconciled."""
    file_wrap, model_wrap = _common_wrapper_prefix(file_keys), _common_wrapper_prefix(model_keys)
    bare_file = [k[len(file_wrap) :] for k in file_keys]
    bare_model = [k[len(model_wrap) :] for k in model_keys]
    if _all_start(bare_model, TIMM_PREFIX) and _none_start(bare_file, TIMM_PREFIX):
        bare_file = [TIMM_PREFIX + k for k in bare_file]  # a plain timm state dict for a TimmModel
    elif _all_start(bare_file, TIMM_PREFIX) and _none_start(bare_model, TIMM_PREFIX):
        bare_file = [k[len(TIMM_PREFIX) :] for k in bare_file]  # a TimmModel's state dict for the bare timm model
    return {original: model_wrap + bare for original, bare in zip(file_keys, bare_file, strict=True)}


def fit_state_dict(path: Path | str, state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` under ``model``'s keys, in its order; WeightsError (naming ``path``, the state's origin) if keys or
    shapes do not fit."""
    expected = model.state_dict()
    names = _align_keys(list(state), list(expected))  # file key → model key
    renamed = {names[key]: value for key, value in state.items()}
    label = type(model).__name__
    for key, value in expected.items():
        if key not in renamed and key.endswith(".num_batches_tracked"):
            renamed[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in renamed]
    unexpected = [k for k in state if names[k] not in expected]  # named as in the file
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]!r})")
        raise WeightsError(f"{path}: keys do not fit {label}: {', '.join(parts)}")
    differ = [k for k in expected if tuple(renamed[k].shape) != tuple(expected[k].shape)]
    if differ:
        first = differ[0]
        more = f" (and {len(differ) - 1} more keys differ in shape)" if len(differ) > 1 else ""
        raise WeightsError(
            f"{path}: shape mismatch for {label}: {first!r} is {tuple(renamed[first].shape)} in the file, "
            f"{tuple(expected[first].shape)} in the model{more}"
        )
    return {key: renamed[key] for key in expected}
