"""A teacher's given weights: a state-dict file (checksum checked first) or the model library's pretrained ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.filehash import file_sha256
from kdbench.models.pretrained import pretrained_state_dict
from kdbench.models.weights import fit_state_dict, state_dict_from_file
from kdbench.runspec import WeightsRef


def load_given_weights(weights: WeightsRef, arch: str,
                       model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict fitting ``model``, provenance) for ``weights``; WeightsError names the file and the problem."""
    if weights.pretrained:
        state, origin = pretrained_state_dict(arch)
        return fit_state_dict(origin, state, model), {"source": "pretrained", "origin": origin}
    path = Path(weights.source)
    state = state_dict_from_file(path, model, sha256=weights.sha256)
    return state, {"source": str(path), "sha256": weights.sha256 or file_sha256(path)}
