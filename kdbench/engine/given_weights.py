"""A teacher's given weights: a state-dict file (checksum checked first) or the model library's pretrained ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.models.pretrained import pretrained_state_dict
from kdbench.models.weights import state_dict_from_file
from kdbench.runspec import WeightsRef
from kdbench.tracking.atomic import file_sha256


def load_given_weights(weights: WeightsRef, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict fitting ``model``, provenance) for ``weights``; WeightsError names the file and the problem."""
    if weights.pretrained:
        state, origin = pretrained_state_dict(model)
        return state, {"source": "pretrained", "origin": origin}
    path = Path(weights.source)
    state = state_dict_from_file(path, model, sha256=weights.sha256)
    return state, {"source": str(path), "sha256": weights.sha256 or file_sha256(path)}
